#version 450
// x[i] += y[i].
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(local_size_x = 256) in;

layout(push_constant) uniform Params { uint len; } p;

layout(set = 0, binding = 0) buffer X { float x[]; };
layout(set = 0, binding = 1) readonly buffer Y { float y[]; };

void main() {
    uint i = group_index() * 256u + gl_LocalInvocationID.x;
    if (i < p.len) {
        x[i] += y[i];
    }
}
