#version 450
// The end of a sandwich-normed sublayer and the start of the next, in one pass per row:
//   y = y / sqrt(mean(y^2) + eps) * (1 + w)        (post-norm of the sublayer output)
//   x = x + y                                      (residual)
//   y = x / sqrt(mean(x^2) + eps) * (1 + wn)       (pre-norm of the next sublayer; has_next)
// Replaces rms_norm + add + copy + rms_norm (four commands and barriers) by one. The arithmetic
// per element is rms_norm_f32's and add_f32's, in the same order. One workgroup of 1024 per
// row with the row in registers (rownorm.glsl); with q8 (decode, has_next, d % 32 == 0) the
// new y is also written in int8 form, optionally Hadamard-rotated, for the FFN's gate/up.
// Decode runs one such workgroup on a GPU of a hundred SMs, so workgroups past `rows` (pf_groups
// of them) meanwhile prefetch the next matvec's weights into L2 (prefetch.glsl).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(push_constant) uniform Params {
    uint rows;
    uint d;
    float eps;
    uint has_next;
    uint q8;
    uint block;
    float hnorm;
    uint pf_groups;
    uint pf_n0;
    uint pf_n1;
    uint never;
} p;

layout(set = 0, binding = 0) buffer X { float x[]; };
layout(set = 0, binding = 0) buffer X4 { vec4 x4[]; };
layout(set = 0, binding = 1) buffer Y { float y[]; };
layout(set = 0, binding = 1) buffer Y4 { vec4 y4[]; };
layout(set = 0, binding = 2) readonly buffer Wt { float wt[]; };
layout(set = 0, binding = 2) readonly buffer Wt4 { vec4 wt4[]; };
// Unused (bound to wt again) without has_next.
layout(set = 0, binding = 3) readonly buffer Wn { float wn[]; };
layout(set = 0, binding = 3) readonly buffer Wn4 { vec4 wn4[]; };
// Unused (bound to Y again) without q8 / rotation.
layout(set = 0, binding = 4) writeonly buffer XQ { uint xq[]; };
layout(set = 0, binding = 5) readonly buffer S { float signs[]; };
layout(set = 0, binding = 5) readonly buffer S4 { vec4 signs4[]; };

#include "rownorm.glsl"
// Unused (bound to X) without prefetch workgroups.
#define PF_BINDING 6
#include "prefetch.glsl"

void main() {
    uint row = group_index();
    if (row >= p.rows) {
        if (row - p.rows < p.pf_groups) {
            prefetch(row - p.rows);
        }
        return;
    }
    uint t = gl_LocalInvocationID.x;
    uint base = row * p.d;
    bool vec = p.d % 4u == 0u;
    uint d4 = (p.d + 3u) / 4u;
    vec4 v[NV];
    vec4 h[NV];
    // Both norms' weights are loaded with x and y (one round of loads, not three).
    vec4 wv[NV], wnv[NV];
    float acc = 0.0;
    for (uint j = 0u; j < NV; j++) {
        uint i = t + j * WG;
        v[j] = vec4(0.0);
        h[j] = vec4(0.0);
        wv[j] = vec4(0.0);
        wnv[j] = vec4(0.0);
        if (i < d4) {
            if (vec) {
                v[j] = y4[base / 4u + i];
                h[j] = x4[base / 4u + i];
                wv[j] = wt4[i];
                wnv[j] = wn4[i];
            } else {
                for (uint c = 0u; c < 4u; c++) {
                    if (4u * i + c < p.d) {
                        v[j][c] = y[base + 4u * i + c];
                        h[j][c] = x[base + 4u * i + c];
                    }
                }
            }
        }
        acc += dot(v[j], v[j]);
    }
    float inv = 1.0 / sqrt(workgroup_sum(acc) / float(p.d) + p.eps);
    acc = 0.0;
    for (uint j = 0u; j < NV; j++) {
        uint i = t + j * WG;
        if (i < d4) {
            if (!vec) {
                for (uint c = 0u; c < 4u; c++) {
                    wv[j][c] = 4u * i + c < p.d ? wt[4u * i + c] : 0.0;
                }
            }
            v[j] = v[j] * inv * (1.0 + wv[j]);
            h[j] = h[j] + v[j];
            if (vec) {
                x4[base / 4u + i] = h[j];
                if (p.has_next == 0u) {
                    y4[base / 4u + i] = v[j];
                }
            } else {
                for (uint c = 0u; c < 4u; c++) {
                    uint k = 4u * i + c;
                    if (k < p.d) {
                        x[base + k] = h[j][c];
                        if (p.has_next == 0u) {
                            y[base + k] = v[j][c];
                        }
                    }
                }
            }
        }
        acc += dot(h[j], h[j]);
    }
    if (p.has_next == 0u) {
        return;
    }
    float inv2 = 1.0 / sqrt(workgroup_sum(acc) / float(p.d) + p.eps);
    for (uint j = 0u; j < NV; j++) {
        uint i = t + j * WG;
        if (i < d4) {
            if (vec) {
                v[j] = h[j] * inv2 * (1.0 + wnv[j]);
                y4[base / 4u + i] = v[j];
            } else {
                for (uint c = 0u; c < 4u; c++) {
                    uint k = 4u * i + c;
                    if (k < p.d) {
                        v[j][c] = h[j][c] * inv2 * (1.0 + wn[k]);
                        y[base + k] = v[j][c];
                    }
                }
            }
        }
    }
    if (p.q8 != 0u) {
        store_q8(v);
    }
}
