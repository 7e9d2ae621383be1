// Shared helpers of the mixq compute shaders (included by every .comp).
//
// Large 1-D grids are launched as (x, y) workgroup grids because groupCountX is limited to
// 65535 on many devices; group_index() flattens them again (the host splits in ops.rs).

uint group_index() {
    return gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x;
}
