#version 450
// gate[i] = gelu_tanh(gate[i]) * up[i].
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(local_size_x = 256) in;

layout(push_constant) uniform Params { uint len; } p;

layout(set = 0, binding = 0) buffer G { float g[]; };
layout(set = 0, binding = 1) readonly buffer U { float u[]; };

void main() {
    uint i = group_index() * 256u + gl_LocalInvocationID.x;
    if (i >= p.len) {
        return;
    }
    float v = g[i];
    // tanh saturates to +-1 in f32 beyond |15|; clamping keeps exp() inside tanh finite.
    float inner = clamp(0.7978846 * (v + 0.044715 * v * v * v), -15.0, 15.0);
    g[i] = 0.5 * v * (1.0 + tanh(inner)) * u[i];
}
