#version 450
// The f16 input of the cooperative-matrix prefill matmul (matmul_coop.comp): each token's row
// of `cols` f32 values times a power of two s_t, rounded to f16, and 1/s_t. Gemma 3's
// activations can exceed f16's range (65504; down_proj's input gelu(gate) * up especially), so
// s_t = 2^(15 - e) with max|x_t| = f * 2^e, f in [0.5, 1): the largest scaled value is below
// 2^15 and every value keeps f16's 11-bit precision (only values under 2^-29 max|x_t| reach f16
// subnormals). Scaling by a power of two is exact; the matmul multiplies its f32 sums by 1/s_t.
//
// Output (32-bit words): [0, n) the f32 factors 1/s_t; from word `h_at` (n rounded up to a
// multiple of 4, so rows are 16-byte aligned when cols % 8 == 0) the f16 values, token-major,
// two per word in element order. One workgroup of 256 per token: max|x| by subgroup and shared
// reductions, then one vec4 load and one 8-byte store per 4 elements (cols % 4 == 0).
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#include "common.glsl"

layout(local_size_x = 256) in;

layout(push_constant) uniform Params {
    uint cols;
    uint h_at; // first word of the f16 values
} p;

layout(set = 0, binding = 0) readonly buffer X4 { vec4 x4[]; };
layout(set = 0, binding = 1) writeonly buffer S { float inv[]; };
layout(set = 0, binding = 1) writeonly buffer H { uvec2 h2[]; };

shared float part[256];

void main() {
    uint t = group_index();
    uint c4 = p.cols / 4u;
    uint base = t * c4;
    float m = 0.0;
    for (uint i = gl_LocalInvocationID.x; i < c4; i += 256u) {
        vec4 a = abs(x4[base + i]);
        m = max(m, max(max(a.x, a.y), max(a.z, a.w)));
    }
    m = subgroupMax(m);
    if (subgroupElect()) {
        part[gl_SubgroupID] = m;
    }
    barrier();
    m = 0.0;
    for (uint s = 0u; s < gl_NumSubgroups; s++) {
        m = max(m, part[s]);
    }
    int sh = 0;
    if (m > 0.0 && m < 3.0e38) {
        int e;
        frexp(m, e);
        sh = clamp(15 - e, -100, 100);
    }
    float scale = ldexp(1.0, sh);
    if (gl_LocalInvocationID.x == 0u) {
        inv[t] = ldexp(1.0, -sh);
    }
    uint hb = p.h_at / 2u + base;
    for (uint i = gl_LocalInvocationID.x; i < c4; i += 256u) {
        vec4 v = x4[base + i] * scale;
        h2[hb + i] = uvec2(packHalf2x16(v.xy), packHalf2x16(v.zw));
    }
}
