// Helpers of the row-norm kernels (rms_norm_f32, add_rms_norm_f32): one workgroup of WG
// invocations per row, each invocation owning the vec4s t, t + WG, ... of the row in
// registers (NV of them: rows up to 4 * NV * WG wide), subgroup reductions, and the optional
// int8 output of the row for the decode matvecs (the format of quantize_x_f32.comp, optionally
// after the block Hadamard rotation of hadamard_f32.comp), so no quantize_x / hadamard
// dispatch and barrier is needed between a norm and the matvec that reads its output.
//
// The including shader declares `XQ { uint xq[]; }`, `S { float signs[]; }`,
// `S4 { vec4 signs4[]; }` and push constants with `d`, `q8`, `block`, `hnorm`.
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#extension GL_KHR_shader_subgroup_shuffle : require

// Workgroup size and vec4s per invocation are specialization constants (the host picks them:
// `norm_shape` in vulkan/mod.rs); arrays sized by NV stay in registers.
layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint NV = 4u;
#define WG gl_WorkGroupSize.x

// One slot per subgroup (subgroups are at least 8 wide on every device we target: <= 128).
#define Q8_DST xq
#include "q8_store.glsl"

shared float red[128];
// The row for the Hadamard rotation (the host rotates here only when d <= 6144: with red[],
// 25 KB of the 32 KB lavapipe allows).
shared float hs[6144];

// Sum of v over the workgroup, in every invocation.
float workgroup_sum(float v) {
    float s = subgroupAdd(v);
    if (subgroupElect()) {
        red[gl_SubgroupID] = s;
    }
    barrier();
    float tot = 0.0;
    for (uint i = gl_SubgroupInvocationID; i < gl_NumSubgroups; i += gl_SubgroupSize) {
        tot += red[i];
    }
    tot = subgroupAdd(tot);
    barrier(); // red is reused by the next call
    return tot;
}

// Writes the int8 form of the row held in v (vec4 index t + j * WG) into xq, exactly as
// quantize_x_f32.comp does (same scale, rounding and sums, so the same bits): codes, one scale
// per 32 elements, d * sum(q) per 16. A group of 32 is 8 consecutive invocations (WG % 8 == 0,
// subgroups >= 8), reduced with shuffles. With p.block > 0 the row is first rotated: x * signs,
// fast Walsh-Hadamard transform per block in shared memory, * hnorm (hadamard_f32's order of
// operations). Called by every invocation (uniform control flow for the barriers/shuffles).
void store_q8(vec4 v[NV]) {
    uint t = gl_LocalInvocationID.x;
    uint d4 = p.d / 4u;
    uint lanes = p.block / 4u; // invocations per Hadamard block
    if (p.block >= 4u && lanes <= gl_SubgroupSize) {
        // A block is `lanes` neighbouring invocations of one subgroup (vec4 index i and lane
        // agree mod lanes: WG % lanes == 0): the two in-vec4 stages in registers, the others
        // by shuffles; stages in hadamard_f32's order (h = 1, 2, 4, ...), so the same bits.
        for (uint j = 0u; j < NV; j++) {
            uint i = t + j * WG;
            vec4 x = i < d4 ? v[j] * signs4[i] : vec4(0.0);
            x = vec4(x.x + x.y, x.x - x.y, x.z + x.w, x.z - x.w);
            x = vec4(x.x + x.z, x.y + x.w, x.x - x.z, x.y - x.w);
            for (uint m = 1u; m < lanes; m <<= 1u) {
                vec4 o = subgroupShuffleXor(x, m);
                x = (gl_SubgroupInvocationID & m) == 0u ? x + o : o - x;
            }
            v[j] = x * p.hnorm;
        }
    } else if (p.block > 0u) {
        for (uint j = 0u; j < NV; j++) {
            uint i = t + j * WG;
            if (i < d4) {
                for (uint c = 0u; c < 4u; c++) {
                    hs[4u * i + c] = v[j][c] * signs[4u * i + c];
                }
            }
        }
        barrier();
        uint hb = p.block / 2u;
        for (uint h = 1u; h < p.block; h <<= 1u) {
            for (uint q = t; q < p.d / 2u; q += WG) {
                uint r = q % hb;
                uint i = (q / hb) * p.block + (r / h) * 2u * h + (r % h);
                float a = hs[i], b = hs[i + h];
                hs[i] = a + b;
                hs[i + h] = a - b;
            }
            barrier();
        }
        for (uint j = 0u; j < NV; j++) {
            uint i = t + j * WG;
            if (i < d4) {
                for (uint c = 0u; c < 4u; c++) {
                    v[j][c] = hs[4u * i + c] * p.hnorm;
                }
            }
        }
    }
    for (uint j = 0u; j < NV; j++) {
        uint i = t + j * WG;
        store_q8_vec4(i, v[j], p.d, i < d4);
    }
}
