#version 450
// Merges the split-K partials of attention_f32 (flash-decoding): for each (token, head),
// M = max_s m_s, L = sum_s l_s exp(m_s - M), out = sum_s acc_s exp(m_s - M) / L.
// One workgroup of 64 per (token, head); invocations own output dimensions.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(local_size_x = 64) in;

layout(push_constant) uniform Params {
    uint rows;     // n * heads
    uint head_dim;
    uint splits;
} p;

layout(set = 0, binding = 0) readonly buffer Part { float part[]; };
layout(set = 0, binding = 1) writeonly buffer O { float o[]; };

void main() {
    uint idx = group_index();
    if (idx >= p.rows) {
        return;
    }
    uint d = p.head_dim;
    uint base = idx * p.splits * (d + 2u);
    float mx = -1.0 / 0.0;
    for (uint s = 0u; s < p.splits; s++) {
        mx = max(mx, part[base + s * (d + 2u)]);
    }
    float l = 0.0;
    for (uint s = 0u; s < p.splits; s++) {
        uint r = base + s * (d + 2u);
        if (part[r + 1u] > 0.0) {
            l += part[r + 1u] * exp(part[r] - mx);
        }
    }
    for (uint dim = gl_LocalInvocationID.x; dim < d; dim += 64u) {
        float a = 0.0;
        for (uint s = 0u; s < p.splits; s++) {
            uint r = base + s * (d + 2u);
            if (part[r + 1u] > 0.0) {
                a += part[r + 2u + dim] * exp(part[r] - mx);
            }
        }
        o[idx * d + dim] = a / l;
    }
}
