#version 450
// Gemma 3's QK-norm then RoPE, in place on [n, heads, head_dim], one workgroup of 64 per
// (token, head): x = x / sqrt(mean(x^2) + eps) * (1 + w) over the head's head_dim values
// (rms_norm_f32's arithmetic), then the NEOX rotate-half with the host's cos/sin table
// (rope_f32's arithmetic and table layout). Replaces two commands (and a barrier) by one; the
// host records q's and k's without a barrier between them.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(local_size_x = 64) in;

layout(push_constant) uniform Params {
    uint n;
    uint heads;
    uint half_dim;
    float eps;
} p;

layout(set = 0, binding = 0) buffer X { float x[]; };
layout(set = 0, binding = 1) readonly buffer Wt { float wt[]; };
layout(set = 0, binding = 2) readonly buffer T { float table[]; };

shared float partial[64];

void main() {
    uint th = group_index(); // token * heads + head
    if (th >= p.n * p.heads) {
        return;
    }
    uint tid = gl_LocalInvocationID.x;
    uint hd = 2u * p.half_dim;
    uint base = th * hd;
    float acc = 0.0;
    for (uint k = tid; k < hd; k += 64u) {
        float v = x[base + k];
        acc += v * v;
    }
    partial[tid] = acc;
    barrier();
    for (uint s = 32u; s > 0u; s >>= 1u) {
        if (tid < s) {
            partial[tid] += partial[tid + s];
        }
        barrier();
    }
    float inv = 1.0 / sqrt(partial[0] / float(hd) + p.eps);
    uint t = th / p.heads;
    for (uint j = tid; j < p.half_dim; j += 64u) {
        float x0 = x[base + j] * inv * (1.0 + wt[j]);
        float x1 = x[base + j + p.half_dim] * inv * (1.0 + wt[j + p.half_dim]);
        float c = table[t * p.half_dim + j];
        float s = table[(p.n + t) * p.half_dim + j];
        x[base + j] = x0 * c - x1 * s;
        x[base + j + p.half_dim] = x1 * c + x0 * s;
    }
}
