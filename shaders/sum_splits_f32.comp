#version 450
// The split-k partial sums of matmul_coop.comp added into the matmul's output:
// out[t, out_offset + r] = sum over z of part[z][t][r]. One invocation per (t, r).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(local_size_x = 256) in;

layout(push_constant) uniform Params {
    uint rows;       // rows of the weight chunk (the partials' row length)
    uint n;          // tokens
    uint splits;
    uint out_offset;
    uint out_stride;
} p;

layout(set = 0, binding = 0) readonly buffer P { float part[]; };
layout(set = 0, binding = 1) writeonly buffer O { float o[]; };

void main() {
    uint i = group_index() * 256u + gl_LocalInvocationID.x;
    if (i >= p.n * p.rows) {
        return;
    }
    uint t = i / p.rows, r = i % p.rows;
    float s = 0.0;
    for (uint z = 0u; z < p.splits; z++) {
        s += part[z * p.n * p.rows + i];
    }
    o[t * p.out_stride + p.out_offset + r] = s;
}
