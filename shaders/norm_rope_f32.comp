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

shared float nred[16];

#include "norm_rope.glsl"

#define STORE_Q(j, v) q[base + (j)] = (v)
#define STORE_K(j, v) k[base + (j)] = (v)

void main() {
    uint g = group_index();
    uint nq = p.n * p.heads;
    if (g >= nq + p.n * p.kv_heads) {
        return;
    }
    uint tid = gl_LocalInvocationID.x;
    uint hd = 2u * p.half_dim; // <= 512 (4 pairs per invocation)
    if (g < nq) {
        uint base = g * hd;
        NORM_ROPE(q, base, wq, tid, hd, p.eps, g / p.heads, p.n, STORE_Q)
    } else {
        uint base = (g - nq) * hd;
        NORM_ROPE(k, base, wk, tid, hd, p.eps, (g - nq) / p.kv_heads, p.n, STORE_K)
    }
}
