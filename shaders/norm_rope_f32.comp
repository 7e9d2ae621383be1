#version 450
// Gemma 3's QK-norm then RoPE, in place on q [n, heads, head_dim] and k [n, kv_heads,
// head_dim] in ONE dispatch: one workgroup of 64 per (token, head) of q, then per (token, head)
// of k. x = x / sqrt(mean(x^2) + eps) * (1 + w) over the head's head_dim values (rms_norm_f32's
// arithmetic), then the NEOX rotate-half with the host's cos/sin table (rope_f32's arithmetic
// and table layout). Replaces four commands (norm and rope of q and k) by one.
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#include "common.glsl"

layout(local_size_x = 64) in;

layout(push_constant) uniform Params {
    uint n;
    uint heads;
    uint kv_heads;
    uint half_dim;
    float eps;
} p;

layout(set = 0, binding = 0) buffer Q { float q[]; };
layout(set = 0, binding = 1) buffer K { float k[]; };
layout(set = 0, binding = 2) readonly buffer Wq { float wq[]; };
layout(set = 0, binding = 3) readonly buffer Wk { float wk[]; };
layout(set = 0, binding = 4) readonly buffer T { float table[]; };

shared float red[16];

// x: the q or k buffer, w: its norm weight. A macro: GLSL cannot pass buffers.
#define NORM_ROPE(X, W, HEADS)                                                         \
    {                                                                                  \
        uint base = th * hd;                                                           \
        uint t = th / HEADS;                                                           \
        float v0[4], v1[4];                                                            \
        float acc = 0.0;                                                               \
        for (uint i = 0u; i < 4u; i++) {                                               \
            uint j = tid + 64u * i;                                                    \
            v0[i] = 0.0;                                                               \
            v1[i] = 0.0;                                                               \
            if (j < p.half_dim) {                                                      \
                v0[i] = X[base + j];                                                   \
                v1[i] = X[base + j + p.half_dim];                                      \
            }                                                                          \
            acc += v0[i] * v0[i] + v1[i] * v1[i];                                      \
        }                                                                              \
        float s = subgroupAdd(acc);                                                    \
        if (subgroupElect()) {                                                         \
            red[gl_SubgroupID] = s;                                                    \
        }                                                                              \
        barrier();                                                                     \
        float tot = 0.0;                                                               \
        for (uint i = 0u; i < gl_NumSubgroups; i++) {                                  \
            tot += red[i];                                                             \
        }                                                                              \
        float inv = 1.0 / sqrt(tot / float(hd) + p.eps);                               \
        for (uint i = 0u; i < 4u; i++) {                                               \
            uint j = tid + 64u * i;                                                    \
            if (j < p.half_dim) {                                                      \
                float x0 = v0[i] * inv * (1.0 + W[j]);                                 \
                float x1 = v1[i] * inv * (1.0 + W[j + p.half_dim]);                    \
                float c = table[t * p.half_dim + j];                                   \
                float sn = table[(p.n + t) * p.half_dim + j];                          \
                X[base + j] = x0 * c - x1 * sn;                                        \
                X[base + j + p.half_dim] = x1 * c + x0 * sn;                           \
            }                                                                          \
        }                                                                              \
    }

void main() {
    uint g = group_index();
    uint nq = p.n * p.heads;
    if (g >= nq + p.n * p.kv_heads) {
        return;
    }
    uint tid = gl_LocalInvocationID.x;
    uint hd = 2u * p.half_dim; // <= 512 (4 pairs per invocation)
    if (g < nq) {
        uint th = g;
        NORM_ROPE(q, wq, p.heads)
    } else {
        uint th = g - nq;
        NORM_ROPE(k, wk, p.kv_heads)
    }
}
