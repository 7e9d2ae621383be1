#version 450
// Over rows of width d: out = x / sqrt(mean(x^2) + eps) * (1 + w), w decoded to f32 at load.
// In place when the host binds the same buffer as x and out (each element is read and written
// by the same invocation, after the reduction); out-of-place saves the forward pass a copy.
// One workgroup of 1024 per row, the row in registers (rownorm.glsl): one round of loads, a
// subgroup reduction (the sum of squares in f32; the CPU reference sums in f64, within ~1e-7
// relative at these widths), one round of stores. With q8 (decode, d % 32 == 0) it also
// writes the int8 form of out (optionally Hadamard-rotated) for the next matvec.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(push_constant) uniform Params {
    uint rows;
    uint d;
    float eps;
    uint q8;     // write xq (rows == 1)
    uint block;  // Hadamard block of the int8 output, 0: none
    float hnorm; // 1/sqrt(block)
} p;

layout(set = 0, binding = 0) readonly buffer X { float x[]; };
layout(set = 0, binding = 0) readonly buffer X4 { vec4 x4[]; };
layout(set = 0, binding = 1) readonly buffer Wt { float wt[]; };
layout(set = 0, binding = 1) readonly buffer Wt4 { vec4 wt4[]; };
layout(set = 0, binding = 2) writeonly buffer O { float o[]; };
layout(set = 0, binding = 2) writeonly buffer O4 { vec4 o4[]; };
// Unused (bound to O again) without q8 / rotation.
layout(set = 0, binding = 3) writeonly buffer XQ { uint xq[]; };
layout(set = 0, binding = 4) readonly buffer S { float signs[]; };
layout(set = 0, binding = 4) readonly buffer S4 { vec4 signs4[]; };

#include "rownorm.glsl"

void main() {
    uint row = group_index();
    if (row >= p.rows) {
        return;
    }
    uint t = gl_LocalInvocationID.x;
    uint base = row * p.d;
    bool vec = p.d % 4u == 0u;
    uint d4 = (p.d + 3u) / 4u;
    vec4 v[NV];
    // The weights are loaded with x (one round of loads, not one after the reduction).
    vec4 wv[NV];
    float acc = 0.0;
    for (uint j = 0u; j < NV; j++) {
        uint i = t + j * WG;
        v[j] = vec4(0.0);
        wv[j] = vec4(0.0);
        if (i < d4) {
            if (vec) {
                v[j] = x4[base / 4u + i];
                wv[j] = wt4[i];
            } else {
                for (uint c = 0u; c < 4u; c++) {
                    if (4u * i + c < p.d) {
                        v[j][c] = x[base + 4u * i + c];
                    }
                }
            }
        }
        acc += dot(v[j], v[j]);
    }
    float inv = 1.0 / sqrt(workgroup_sum(acc) / float(p.d) + p.eps);
    for (uint j = 0u; j < NV; j++) {
        uint i = t + j * WG;
        if (i < d4) {
            if (vec) {
                v[j] = v[j] * inv * (1.0 + wv[j]);
                o4[base / 4u + i] = v[j];
            } else {
                for (uint c = 0u; c < 4u; c++) {
                    uint k = 4u * i + c;
                    if (k < p.d) {
                        v[j][c] = v[j][c] * inv * (1.0 + wt[k]);
                        o[base + k] = v[j][c];
                    }
                }
            }
        }
    }
    if (p.q8 != 0u) {
        store_q8(v);
    }
}
