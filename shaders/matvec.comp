#version 450
// out[out_offset + r] = dot(W[r, :], x) for one token (decode). 4 rows per workgroup, 64
// invocations per row striding over the row's 32-bit words (coalesced), then a shared-memory
// tree reduction. Variants per weight format: weights.glsl.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(local_size_x = 64, local_size_y = 4) in;

layout(push_constant) uniform Params {
    uint rows;       // rows of this weight chunk
    uint cols;
    uint row_bytes;  // bytes per stored row
    uint out_offset; // first output index of this chunk
    uint x_offset;   // first x element
} p;

layout(set = 0, binding = 0) readonly buffer W { uint w[]; };
layout(set = 0, binding = 1) readonly buffer X { float x[]; };
layout(set = 0, binding = 2) writeonly buffer O { float o[]; };

#include "weights.glsl"

shared float partial[4][64];

void main() {
    uint t = gl_LocalInvocationID.x;
    uint ly = gl_LocalInvocationID.y;
    uint r = group_index() * 4u + ly;
    float acc = 0.0;
    if (r < p.rows) {
        acc = row_dot(r * p.row_bytes, p.x_offset, t, 64u);
    }
    partial[ly][t] = acc;
    barrier();
    for (uint s = 32u; s > 0u; s >>= 1u) {
        if (t < s) {
            partial[ly][t] += partial[ly][t + s];
        }
        barrier();
    }
    if (t == 0u && r < p.rows) {
        o[p.out_offset + r] = partial[ly][0];
    }
}
