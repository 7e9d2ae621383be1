#version 450
// out[t, out_offset + r] = dot(W[r, :], x[t, :]) for a batch of tokens (prefill).
//
// Tiles of 64 rows x 64 tokens, 16 columns of k at a time, in shared memory; 16x16 invocations
// with 4x4 outputs each (register blocking: per k, 4 weight and 4 activation values from shared
// memory feed 16 FMAs). Invocation (tx, ty) owns rows tx + 16a and tokens ty + 16b, so reads of
// a shared row are broadcast or conflict-free. Weight elements are dequantized to f32 as the
// tile is loaded (weights.glsl `w_elem`), so every format shares this kernel. This is the
// portable path: plain f32 FMAs, no 16-bit or cooperative-matrix features (shaders/README.md
// says how a cooperative-matrix variant would slot in).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(local_size_x = 16, local_size_y = 16) in;

layout(push_constant) uniform Params {
    uint rows;       // rows of this weight chunk
    uint cols;
    uint stride;     // bytes per device row (weights.glsl)
    uint out_offset; // first output column of this chunk
    uint out_stride; // output row length (all rows of the weight)
    uint n;          // tokens
    uint codes_at;
} p;

layout(set = 0, binding = 0) readonly buffer W { uint w[]; };
layout(set = 0, binding = 1) readonly buffer X { float x[]; };
layout(set = 0, binding = 2) writeonly buffer O { float o[]; };

#include "weights.glsl"

const uint TM = 64u; // rows per tile
const uint TN = 64u; // tokens per tile
const uint TK = 16u;

shared float ws[TM][TK + 1u];
shared float xs[TN][TK + 1u];

void main() {
    uint tx = gl_LocalInvocationID.x; // rows
    uint ty = gl_LocalInvocationID.y; // tokens
    uint tid = ty * 16u + tx;
    uint r0 = gl_WorkGroupID.x * TM;
    uint t0 = gl_WorkGroupID.y * TN;
    float acc[4][4];
    for (uint a = 0u; a < 4u; a++) {
        for (uint b = 0u; b < 4u; b++) {
            acc[a][b] = 0.0;
        }
    }
    for (uint k0 = 0u; k0 < p.cols; k0 += TK) {
        // 1024 weight and 1024 activation elements per tile: four of each per invocation,
        // 16 neighbouring invocations on one row's 16 neighbouring columns.
        for (uint e = tid; e < TM * TK; e += 256u) {
            uint i = e / TK, k = e % TK;
            uint r = r0 + i, kk = k0 + k;
            ws[i][k] = (r < p.rows && kk < p.cols) ? w_elem(r * p.stride, kk) : 0.0;
            uint t = t0 + i;
            xs[i][k] = (t < p.n && kk < p.cols) ? x[t * p.cols + kk] : 0.0;
        }
        barrier();
        for (uint k = 0u; k < TK; k++) {
            float wv[4], xv[4];
            for (uint a = 0u; a < 4u; a++) {
                wv[a] = ws[tx + 16u * a][k];
                xv[a] = xs[ty + 16u * a][k];
            }
            for (uint a = 0u; a < 4u; a++) {
                for (uint b = 0u; b < 4u; b++) {
                    acc[a][b] += wv[a] * xv[b];
                }
            }
        }
        barrier();
    }
    for (uint a = 0u; a < 4u; a++) {
        for (uint b = 0u; b < 4u; b++) {
            uint r = r0 + tx + 16u * a, t = t0 + ty + 16u * b;
            if (r < p.rows && t < p.n) {
                o[t * p.out_stride + p.out_offset + r] = acc[a][b];
            }
        }
    }
}
