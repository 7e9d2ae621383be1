#version 450
// out[t, :] = x[t, :]·H with H = S·blockdiag(H_b/sqrt(b)) (formats/src/quant/hadamard.rs): the
// activation rotation of a tensor stored as W·H. One workgroup per (token, block): the block is
// loaded into shared memory times the signs, transformed in place by the fast Walsh-Hadamard
// transform (log2(b) stages of b/2 butterflies, a barrier between stages), scaled by 1/sqrt(b)
// and stored. The arithmetic is the CPU backend's, operation for operation (x*s, then a+b / a-b
// in Sylvester order, then *norm), so the result is bit-identical.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(local_size_x = 64) in;

layout(push_constant) uniform Params {
    uint n;      // tokens
    uint cols;
    uint block;  // power of two, <= 4096, divides cols
    float norm;  // 1/sqrt(block), computed by the host as the CPU does
} p;

layout(set = 0, binding = 0) readonly buffer X { float x[]; };
layout(set = 0, binding = 1) readonly buffer S { float signs[]; };
layout(set = 0, binding = 2) writeonly buffer O { float o[]; };

shared float s[4096];

void main() {
    uint blocks = p.cols / p.block;
    uint g = group_index();
    if (g >= p.n * blocks) {
        return;
    }
    uint tid = gl_LocalInvocationID.x;
    uint k0 = (g % blocks) * p.block;
    uint base = (g / blocks) * p.cols + k0;
    for (uint i = tid; i < p.block; i += 64u) {
        s[i] = x[base + i] * signs[k0 + i];
    }
    barrier();
    uint half_b = p.block / 2u;
    for (uint h = 1u; h < p.block; h <<= 1u) {
        for (uint q = tid; q < half_b; q += 64u) {
            uint i = (q / h) * 2u * h + (q % h);
            float a = s[i], b = s[i + h];
            s[i] = a + b;
            s[i + h] = a - b;
        }
        barrier();
    }
    for (uint i = tid; i < p.block; i += 64u) {
        o[base + i] = s[i] * p.norm;
    }
}
