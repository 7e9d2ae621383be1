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
//
// Fused variants (same source, built with a define; the host picks them in vulkan/mod.rs):
// - FUSE_QKV (`matvec3_{w}_f32`): three weights of one format and width applied to the same
//   x (q, k and v projections) in ONE dispatch: bindings 0 and 2 are arrays of 3 buffers; the
//   first ceil(rows/ROWS) workgroups take weight 0, the next weight 1, then weight 2. The
//   array index SEG is uniform per workgroup (needs shaderStorageBufferArrayDynamicIndexing).
// - FUSE_GELU (`matvec_gelu_{w}_f32`): gate and up (binding 0: array of 2) of the same x;
//   a workgroup computes its ROWS rows of both and writes gelu_tanh(gate) * up, so the FFN's
//   first half is one dispatch and gate/up never reach memory.
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#include "common.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint ROWS = 4u;
// Granules per invocation per step on int8 activations (1 or 2; specialization constant 2).
layout(constant_id = 2) const uint UNROLL = 2u;

layout(push_constant) uniform Params {
    uint rows;       // rows of this weight chunk (FUSE_*: of weight 0)
    uint cols;
    uint stride;     // bytes per device row (multiple of 16)
    uint out_offset; // first output index of this chunk
    uint codes_at;   // byte offset of the codes in a row (multiple of 16)
    uint rows1;      // FUSE_QKV: rows of weights 1 and 2
    uint rows2;
} p;

#if defined(FUSE_QKV)
#define NW 3
#elif defined(FUSE_GELU)
#define NW 2
#endif

#ifdef NW
layout(set = 0, binding = 0) readonly buffer W { uint w[]; } wu[NW];
layout(set = 0, binding = 0) readonly buffer W4 { uvec4 w4[]; } wg[NW];
// Which weight granule_dot / w_elem read (workgroup-uniform).
uint SEG = 0u;
#define WU(i) wu[SEG].w[i]
#define WG(i) wg[SEG].w4[i]
#else
layout(set = 0, binding = 0) readonly buffer W { uint w[]; };
layout(set = 0, binding = 0) readonly buffer W4 { uvec4 w4[]; };
#endif
#ifdef Q8X
// Q8X (`*_{w}_q8`): x as written by quantize_x_f32.comp (codes, scales, sums; weights.glsl).
layout(set = 0, binding = 1) readonly buffer XQ { uint xq[]; };
layout(set = 0, binding = 1) readonly buffer XQ4 { uvec4 xq4[]; };
// (the f32 granule functions of weights.glsl are compiled but unused)
layout(set = 0, binding = 1) readonly buffer X4 { vec4 x4[]; };
#else
layout(set = 0, binding = 1) readonly buffer X { float x[]; };
layout(set = 0, binding = 1) readonly buffer X4 { vec4 x4[]; };
#endif
#ifdef FUSE_QKV
layout(set = 0, binding = 2) writeonly buffer O { float o[]; } outs[3];
#else
layout(set = 0, binding = 2) writeonly buffer O { float o[]; };
#endif

#define WEIGHTS_GRANULES
#include "weights.glsl"

// One slot per (row, subgroup); subgroups are at least 4 wide on every device we target, so a
// 128-invocation workgroup has at most 32 subgroups. FUSE_GELU: rows 8..15 hold up's sums.
// ROWS <= 8.
shared float partial[16][32];

// As gelu_mul_f32.comp.
float gelu_tanh(float v) {
    float inner = clamp(0.7978846 * (v + 0.044715 * v * v * v), -15.0, 15.0);
    return 0.5 * v * (1.0 + tanh(inner));
}

void main() {
    uint wg_size = gl_WorkGroupSize.x;
    uint t = gl_LocalInvocationID.x;
    uint grp = group_index();
    uint rows = p.rows;
#ifdef FUSE_QKV
    uint g0 = (p.rows + ROWS - 1u) / ROWS, g1 = (p.rows1 + ROWS - 1u) / ROWS;
    if (grp >= g0 + g1) {
        SEG = 2u;
        grp -= g0 + g1;
        rows = p.rows2;
    } else if (grp >= g0) {
        SEG = 1u;
        grp -= g0;
        rows = p.rows1;
    }
#endif
    uint r0 = grp * ROWS;
    uint nr = min(ROWS, rows - min(rows, r0)); // rows of this group (uniform)
    uint granules = (p.cols / EPG);
    float acc[8] = float[8](0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
#ifdef FUSE_GELU
    float accu[8] = float[8](0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
#endif
#ifdef Q8X
    // Two granules per step, all loads before any use and no branch around them (the rows of a
    // tail workgroup past the end re-read its last row; only valid rows are stored): twice
    // the bytes in flight per invocation. The decode kernels were latency-bound with one.
    uint last = rows - 1u;
    for (uint g = t; g < granules; g += UNROLL * wg_size) {
        uint g2 = g + wg_size < granules ? g + wg_size : g;
        float keep = g + wg_size < granules ? 1.0 : 0.0;
        XG xa, xb;
        granule_x(g, xa);
        if (UNROLL > 1u) {
            granule_x(g2, xb);
        }
        for (uint r = 0u; r < ROWS; r++) {
            uint rb = min(r0 + r, last) * p.stride;
#ifdef FUSE_GELU
            SEG = 0u;
            float a0 = granule_dot(rb, g, xa);
            float a1 = UNROLL > 1u ? granule_dot(rb, g2, xb) : 0.0;
            SEG = 1u;
            float u0 = granule_dot(rb, g, xa);
            float u1 = UNROLL > 1u ? granule_dot(rb, g2, xb) : 0.0;
            acc[r] += a0 + keep * a1;
            accu[r] += u0 + keep * u1;
#else
            float a0 = granule_dot(rb, g, xa);
            float a1 = UNROLL > 1u ? granule_dot(rb, g2, xb) : 0.0;
            acc[r] += a0 + keep * a1;
#endif
        }
    }
#else
    for (uint g = t; g < granules; g += wg_size) {
        vec4 xv[EPG / 4u];
        granule_x(g, xv);
        for (uint r = 0u; r < ROWS; r++) {
            if (r < nr) {
#ifdef FUSE_GELU
                SEG = 0u;
                acc[r] += granule_dot((r0 + r) * p.stride, g, xv);
                SEG = 1u;
                accu[r] += granule_dot((r0 + r) * p.stride, g, xv);
#else
                acc[r] += granule_dot((r0 + r) * p.stride, g, xv);
#endif
            }
        }
    }
#endif
#ifndef Q8X
    // The tail of float rows (cols not a multiple of EPG), one element per invocation.
    for (uint k = granules * EPG + t; k < p.cols; k += wg_size) {
        for (uint r = 0u; r < ROWS; r++) {
            if (r < nr) {
#ifdef FUSE_GELU
                SEG = 0u;
                acc[r] += w_elem((r0 + r) * p.stride, k) * x[k];
                SEG = 1u;
                accu[r] += w_elem((r0 + r) * p.stride, k) * x[k];
#else
                acc[r] += w_elem((r0 + r) * p.stride, k) * x[k];
#endif
            }
        }
    }
#endif
    for (uint r = 0u; r < ROWS; r++) {
        float s = subgroupAdd(acc[r]);
#ifdef FUSE_GELU
        float su = subgroupAdd(accu[r]);
#endif
        if (subgroupElect()) {
            partial[r][gl_SubgroupID] = s;
#ifdef FUSE_GELU
            partial[8u + r][gl_SubgroupID] = su;
#endif
        }
    }
    barrier();
    if (t < nr) {
        float s = 0.0;
        for (uint i = 0u; i < gl_NumSubgroups; i++) {
            s += partial[t][i];
        }
#if defined(FUSE_QKV)
        outs[SEG].o[r0 + t] = s;
#elif defined(FUSE_GELU)
        float su = 0.0;
        for (uint i = 0u; i < gl_NumSubgroups; i++) {
            su += partial[8u + t][i];
        }
        o[p.out_offset + r0 + t] = gelu_tanh(s) * su;
#else
        o[p.out_offset + r0 + t] = s;
#endif
    }
}
