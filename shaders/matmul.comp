#version 450
// out[t, out_offset + r] = dot(W[r, :], x[t, :]) for a batch of tokens (prefill).
// Tiles of 32 rows x 32 tokens, 16 columns of k at a time; 16x16 invocations, 2x2 outputs each.
// Weight elements are dequantized to f32 as the tile is loaded (weights.glsl `w_elem`).
// A cooperative-matrix variant would replace the inner product over the shared tiles; it is not
// built yet (Debian's glslc rejects GL_KHR_cooperative_matrix), see shaders/README.md.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(local_size_x = 16, local_size_y = 16) in;

layout(push_constant) uniform Params {
    uint rows;       // rows of this weight chunk
    uint cols;
    uint row_bytes;
    uint out_offset; // first output column of this chunk
    uint out_stride; // output row length (all rows of the weight)
    uint n;          // tokens
} p;

layout(set = 0, binding = 0) readonly buffer W { uint w[]; };
layout(set = 0, binding = 1) readonly buffer X { float x[]; };
layout(set = 0, binding = 2) writeonly buffer O { float o[]; };

#include "weights.glsl"

const uint TM = 32u; // rows per tile
const uint TN = 32u; // tokens per tile
const uint TK = 16u;

shared float ws[TM][TK + 1u];
shared float xs[TN][TK + 1u];

void main() {
    uint tx = gl_LocalInvocationID.x; // rows
    uint ty = gl_LocalInvocationID.y; // tokens
    uint tid = ty * 16u + tx;
    uint r0 = gl_WorkGroupID.x * TM;
    uint t0 = gl_WorkGroupID.y * TN;
    float acc[2][2] = float[2][2](float[2](0.0, 0.0), float[2](0.0, 0.0));
    for (uint k0 = 0u; k0 < p.cols; k0 += TK) {
        // 512 weight and 512 activation elements per tile: two of each per invocation.
        for (uint e = tid; e < TM * TK; e += 256u) {
            uint i = e / TK, k = e % TK;
            uint r = r0 + i, kk = k0 + k;
            ws[i][k] = (r < p.rows && kk < p.cols) ? w_elem(r * p.row_bytes, kk) : 0.0;
            uint t = t0 + i;
            xs[i][k] = (t < p.n && kk < p.cols) ? x[t * p.cols + kk] : 0.0;
        }
        barrier();
        for (uint k = 0u; k < TK; k++) {
            for (uint a = 0u; a < 2u; a++) {
                float wv = ws[tx + 16u * a][k];
                for (uint b = 0u; b < 2u; b++) {
                    acc[a][b] += wv * xs[ty + 16u * b][k];
                }
            }
        }
        barrier();
    }
    for (uint a = 0u; a < 2u; a++) {
        for (uint b = 0u; b < 2u; b++) {
            uint r = r0 + tx + 16u * a, t = t0 + ty + 16u * b;
            if (r < p.rows && t < p.n) {
                o[t * p.out_stride + p.out_offset + r] = acc[a][b];
            }
        }
    }
}
