#version 450
// The end of a sandwich-normed sublayer and the start of the next, in one pass per row:
//   y = y / sqrt(mean(y^2) + eps) * (1 + w)        (post-norm of the sublayer output)
//   x = x + y                                      (residual)
//   y = x / sqrt(mean(x^2) + eps) * (1 + wn)       (pre-norm of the next sublayer; has_next)
// Replaces rms_norm + add + copy + rms_norm (four commands and barriers) by one. The arithmetic
// per element is rms_norm_f32's and add_f32's, in the same order. One workgroup per row.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(local_size_x = 256) in;

layout(push_constant) uniform Params {
    uint rows;
    uint d;
    float eps;
    uint has_next;
} p;

layout(set = 0, binding = 0) buffer X { float x[]; };
layout(set = 0, binding = 1) buffer Y { float y[]; };
layout(set = 0, binding = 2) readonly buffer Wt { float wt[]; };
// Unused (bound to wt again) without has_next.
layout(set = 0, binding = 3) readonly buffer Wn { float wn[]; };

shared float partial[256];

// Sum of `v` over the workgroup (every invocation gets it).
float workgroup_sum(float v) {
    uint t = gl_LocalInvocationID.x;
    partial[t] = v;
    barrier();
    for (uint s = 128u; s > 0u; s >>= 1u) {
        if (t < s) {
            partial[t] += partial[t + s];
        }
        barrier();
    }
    float total = partial[0];
    barrier(); // partial is reused by the next call
    return total;
}

void main() {
    uint row = group_index();
    if (row >= p.rows) {
        return;
    }
    uint t = gl_LocalInvocationID.x;
    uint base = row * p.d;
    float acc = 0.0;
    for (uint k = t; k < p.d; k += 256u) {
        float v = y[base + k];
        acc += v * v;
    }
    float inv = 1.0 / sqrt(workgroup_sum(acc) / float(p.d) + p.eps);
    acc = 0.0;
    for (uint k = t; k < p.d; k += 256u) {
        float yn = y[base + k] * inv * (1.0 + wt[k]);
        float h = x[base + k] + yn;
        x[base + k] = h;
        y[base + k] = yn;
        acc += h * h;
    }
    if (p.has_next == 0u) {
        return;
    }
    float inv2 = 1.0 / sqrt(workgroup_sum(acc) / float(p.d) + p.eps);
    for (uint k = t; k < p.d; k += 256u) {
        y[base + k] = x[base + k] * inv2 * (1.0 + wn[k]);
    }
}
