#version 450
// out[out_offset + r] = dot(W[r, :], x) for one token (decode): the kernel that bounds decode
// speed, so it is written to stream weights at memory bandwidth (shaders/README.md, "Decode").
//
// - A workgroup of WG invocations (specialization constant 0, 64 or 128) handles ROWS
//   consecutive rows (specialization constant 1: 1, 2 or 4, picked by the host so that large
//   matrices get several workgroups per SM and small ones still spread).
// - The codes of a row are read as 16-byte granules (`uvec4`; rows are 16-byte aligned on the
//   device, see weights.glsl); invocation t takes granules t, t + WG, ... of every one of the
//   ROWS rows, so each x value it loads (as vec4, from L1: x is shared by every workgroup on
//   the SM) serves ROWS rows, and ROWS independent 16-byte loads are in flight per step.
// - Reduction: subgroupAdd, then one shared-memory slot per subgroup, summed by invocation r.
// Float formats whose rows are not whole granules finish the tail element by element.
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#include "common.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint ROWS = 4u;

layout(push_constant) uniform Params {
    uint rows;       // rows of this weight chunk
    uint cols;
    uint stride;     // bytes per device row (multiple of 16)
    uint out_offset; // first output index of this chunk
    uint codes_at;   // byte offset of the codes in a row (multiple of 16)
} p;

layout(set = 0, binding = 0) readonly buffer W { uint w[]; };
layout(set = 0, binding = 0) readonly buffer W4 { uvec4 w4[]; };
layout(set = 0, binding = 1) readonly buffer X { float x[]; };
layout(set = 0, binding = 1) readonly buffer X4 { vec4 x4[]; };
layout(set = 0, binding = 2) writeonly buffer O { float o[]; };

#define WEIGHTS_GRANULES
#include "weights.glsl"

// One slot per (row, subgroup); subgroups are at least 4 wide on every device we target, so a
// 128-invocation workgroup has at most 32 subgroups.
shared float partial[4][32];

void main() {
    uint wg = gl_WorkGroupSize.x;
    uint t = gl_LocalInvocationID.x;
    uint r0 = group_index() * ROWS;
    uint nr = min(ROWS, p.rows - min(p.rows, r0)); // rows of this group (uniform)
    uint granules = (p.cols / EPG);
    float acc[4] = float[4](0.0, 0.0, 0.0, 0.0);
    for (uint g = t; g < granules; g += wg) {
        vec4 xv[EPG / 4u];
        granule_x(g, xv);
        for (uint r = 0u; r < ROWS; r++) {
            if (r < nr) {
                acc[r] += granule_dot((r0 + r) * p.stride, g, xv);
            }
        }
    }
    // The tail of float rows (cols not a multiple of EPG), one element per invocation.
    for (uint k = granules * EPG + t; k < p.cols; k += wg) {
        for (uint r = 0u; r < ROWS; r++) {
            if (r < nr) {
                acc[r] += w_elem((r0 + r) * p.stride, k) * x[k];
            }
        }
    }
    for (uint r = 0u; r < ROWS; r++) {
        float s = subgroupAdd(acc[r]);
        if (subgroupElect()) {
            partial[r][gl_SubgroupID] = s;
        }
    }
    barrier();
    if (t < nr) {
        float s = 0.0;
        for (uint i = 0u; i < gl_NumSubgroups; i++) {
            s += partial[t][i];
        }
        o[p.out_offset + r0 + t] = s;
    }
}
