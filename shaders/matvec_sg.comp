#version 450
// Decode matvec on int8 activations with one SUBGROUP per row (or ROWS rows) instead of one
// workgroup per ROWS rows (matvec.comp): lanes stride the row's 16-byte granules, a
// subgroupAdd ends the row, and no shared memory or workgroup barrier is involved. Each
// workgroup of WG invocations takes blocks of (subgroups x ROWS) consecutive rows, grid-stride
// (the host launches at most a few workgroups per SM), so a workgroup streams many rows
// without relaunching: matvec.comp's many tiny workgroups (down to 64 invocations and one
// granule each) spent much of their life starting, reducing and retiring.
// Same bindings, push constants and fused variants (FUSE_QKV, FUSE_GELU) as matvec.comp's
// Q8X kernels (`matvecsg*_{w}_q8`); the weight index SEG is uniform per block, hence per
// workgroup.
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#include "common.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint ROWS = 1u;   // rows per subgroup per block (<= 4)
layout(constant_id = 2) const uint UNROLL = 2u; // granules per lane per step (1 to 4)
// 1: load each granule's codes and skip the decode (wrong output; MIXQ_VK_SG_PROBE, a timing
// experiment splitting streaming from decoding)
layout(constant_id = 3) const uint PROBE = 0u;

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
uint SEG = 0u;
#define WU(i) wu[SEG].w[i]
#define WG(i) wg[SEG].w4[i]
#else
layout(set = 0, binding = 0) readonly buffer W { uint w[]; };
layout(set = 0, binding = 0) readonly buffer W4 { uvec4 w4[]; };
#endif
layout(set = 0, binding = 1) readonly buffer XQ { uint xq[]; };
layout(set = 0, binding = 1) readonly buffer XQ4 { uvec4 xq4[]; };
layout(set = 0, binding = 1) readonly buffer X4 { vec4 x4[]; };
#ifdef FUSE_QKV
layout(set = 0, binding = 2) writeonly buffer O { float o[]; } outs[3];
#else
layout(set = 0, binding = 2) writeonly buffer O { float o[]; };
#endif

#define WEIGHTS_GRANULES
#include "weights.glsl"

float gelu_tanh(float v) {
    float inner = clamp(0.7978846 * (v + 0.044715 * v * v * v), -15.0, 15.0);
    return 0.5 * v * (1.0 + tanh(inner));
}

float dot_or_probe(uint rb, uint g, XG x) {
    if (PROBE != 0u) {
        uvec4 c = WG(((rb + p.codes_at) >> 4u) + g);
        // keeps the load; a tiny value so nothing overflows
        return uintBitsToFloat((c.x ^ c.y ^ c.z ^ c.w) & 0x007fffffu);
    }
    return granule_dot(rb, g, x);
}

void main() {
    uint lane = gl_SubgroupInvocationID;
    uint width = gl_SubgroupSize;
    uint per_block = gl_NumSubgroups * ROWS;
    uint nb0 = (p.rows + per_block - 1u) / per_block;
#ifdef FUSE_QKV
    uint nb1 = (p.rows1 + per_block - 1u) / per_block;
    uint nb2 = (p.rows2 + per_block - 1u) / per_block;
    uint blocks = nb0 + nb1 + nb2;
#else
    uint blocks = nb0;
#endif
    uint granules = p.cols / EPG;
    uint groups = gl_NumWorkGroups.x * gl_NumWorkGroups.y;
    for (uint blk = group_index(); blk < blocks; blk += groups) {
        uint b = blk;
        uint rows = p.rows;
#ifdef FUSE_QKV
        SEG = 0u;
        if (b >= nb0 + nb1) {
            SEG = 2u;
            b -= nb0 + nb1;
            rows = p.rows2;
        } else if (b >= nb0) {
            SEG = 1u;
            b -= nb0;
            rows = p.rows1;
        }
#endif
        uint r0 = b * per_block + gl_SubgroupID * ROWS;
        uint last = rows - 1u;
        float acc[4] = float[4](0.0, 0.0, 0.0, 0.0);
#ifdef FUSE_GELU
        float accu[4] = float[4](0.0, 0.0, 0.0, 0.0);
#endif
        for (uint g = lane; g < granules; g += UNROLL * width) {
            // Granules g, g + width, ...: all loads of a step are issued before their sums,
            // so a lane keeps UNROLL x 16 bytes per row in flight. Past the row's end a lane
            // repeats granule g and drops it (keep = 0).
            XG xs[UNROLL];
            float keep[UNROLL];
            uint gu[UNROLL];
            for (uint u = 0u; u < UNROLL; u++) {
                uint h = g + u * width;
                keep[u] = h < granules ? 1.0 : 0.0;
                gu[u] = h < granules ? h : g;
                granule_x(gu[u], xs[u]);
            }
            for (uint r = 0u; r < ROWS; r++) {
                uint rb = min(r0 + r, last) * p.stride;
                for (uint u = 0u; u < UNROLL; u++) {
#ifdef FUSE_GELU
                    SEG = 0u;
                    float a = dot_or_probe(rb, gu[u], xs[u]);
                    SEG = 1u;
                    float b = dot_or_probe(rb, gu[u], xs[u]);
                    acc[r] += keep[u] * a;
                    accu[r] += keep[u] * b;
#else
                    acc[r] += keep[u] * dot_or_probe(rb, gu[u], xs[u]);
#endif
                }
            }
        }
        for (uint r = 0u; r < ROWS; r++) {
            float s = subgroupAdd(acc[r]);
#ifdef FUSE_GELU
            float su = subgroupAdd(accu[r]);
#endif
            if (lane == 0u && r0 + r < rows) {
#if defined(FUSE_QKV)
                outs[SEG].o[r0 + r] = s;
#elif defined(FUSE_GELU)
                o[p.out_offset + r0 + r] = gelu_tanh(s) * su;
#else
                o[p.out_offset + r0 + r] = s;
#endif
            }
        }
    }
}
