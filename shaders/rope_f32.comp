#version 450
// NEOX (rotate-half) RoPE in place on [n, heads, head_dim]. The host supplies cos/sin per
// (token, frequency) as `table` = [cos: n x half][sin: n x half], computed exactly as the CPU
// backend does (f32 inv_freq, sin_cos of pos * inv_freq): GPU sin/cos of large arguments are
// not accurate enough on every device.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(local_size_x = 256) in;

layout(push_constant) uniform Params {
    uint n;
    uint heads;
    uint half_dim;
} p;

layout(set = 0, binding = 0) buffer X { float x[]; };
layout(set = 0, binding = 1) readonly buffer T { float table[]; };

void main() {
    uint i = group_index() * 256u + gl_LocalInvocationID.x;
    if (i >= p.n * p.heads * p.half_dim) {
        return;
    }
    uint j = i % p.half_dim;
    uint th = i / p.half_dim; // token * heads + head
    uint t = th / p.heads;
    uint a = th * 2u * p.half_dim + j;
    float c = table[t * p.half_dim + j];
    float s = table[(p.n + t) * p.half_dim + j];
    float x0 = x[a], x1 = x[a + p.half_dim];
    x[a] = x0 * c - x1 * s;
    x[a + p.half_dim] = x1 * c + x0 * s;
}
