#version 450
// Merges the split-K partials of attention_f32 (attention_merge.glsl) when attention_f32 did
// not merge them itself (prefill batches split over keys): one workgroup of 64 per
// (token, head).
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#extension GL_KHR_shader_subgroup_shuffle : require
#include "common.glsl"

layout(local_size_x = 64) in;

layout(push_constant) uniform Params {
    uint rows;     // n * heads
    uint head_dim;
    uint splits;   // <= 64
    uint q8;       // write xq (rows == heads of one token)
} p;

layout(set = 0, binding = 0) readonly buffer Part { float part[]; };
layout(set = 0, binding = 1) writeonly buffer O { float o[]; };
// Unused (bound to O again) without q8.
layout(set = 0, binding = 2) writeonly buffer XQ { uint xq[]; };

#include "attention_merge.glsl"

void main() {
    uint idx = group_index();
    if (idx >= p.rows) {
        return;
    }
    merge_splits(idx, gl_LocalInvocationID.x, p.head_dim, p.splits, p.q8 != 0u, p.rows * p.head_dim);
}
