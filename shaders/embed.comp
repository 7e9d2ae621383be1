#version 450
// out[dst, :] = table[row, :] * scale for each (row, dst) pair of this table chunk.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(local_size_x = 256) in;

layout(push_constant) uniform Params {
    uint count;     // (row, dst) pairs
    uint cols;
    uint stride;    // bytes per device row (weights.glsl)
    float scale;
    uint codes_at;
} p;

layout(set = 0, binding = 0) readonly buffer W { uint w[]; };
layout(set = 0, binding = 1) readonly buffer Ids { uvec2 ids[]; };
layout(set = 0, binding = 2) writeonly buffer O { float o[]; };

#include "weights.glsl"

void main() {
    uint i = group_index() * 256u + gl_LocalInvocationID.x;
    if (i >= p.count * p.cols) {
        return;
    }
    uint pair = i / p.cols, k = i % p.cols;
    uvec2 id = ids[pair];
    o[id.y * p.cols + k] = w_elem(id.x * p.stride, k) * p.scale;
}
