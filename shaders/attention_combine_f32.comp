#version 450
// Merges the split-K partials of attention_f32 (flash-decoding): for each (token, head),
// M = max_s m_s, L = sum_s l_s exp(m_s - M), out = sum_s acc_s exp(m_s - M) / L.
// One workgroup of 64 per (token, head), splits <= 64: invocation s reads split s's (m, l),
// subgroup/shared reductions give M and L, the weights exp(m_s - M) / L go to shared memory,
// then invocations own output dimensions and sum over splits with independent loads (a serial
// chain of dependent loads per split made this latency-bound).
// With q8 (decode, head_dim % 32 == 0) it also writes the int8 form of the whole output row
// (quantize_x_f32's layout over cols = heads * head_dim) for o_proj: a head's dims go through
// shared memory so that 8 neighbouring invocations hold a group of 32 (vec4 each).
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#extension GL_KHR_shader_subgroup_shuffle : require
#include "common.glsl"

layout(local_size_x = 64) in;

layout(push_constant) uniform Params {
    uint rows;     // n * heads
    uint head_dim;
    uint splits;   // <= 64
    uint q8;       // write xq (rows == heads of one token)
} p;

layout(set = 0, binding = 0) readonly buffer Part { float part[]; };
layout(set = 0, binding = 1) writeonly buffer O { float o[]; };
// Unused (bound to O again) without q8.
layout(set = 0, binding = 2) writeonly buffer XQ { uint xq[]; };

shared float red[8];
shared float wgt[64];
shared vec4 ov[128]; // head_dim <= 512

void main() {
    uint idx = group_index();
    if (idx >= p.rows) {
        return;
    }
    uint tid = gl_LocalInvocationID.x;
    uint d = p.head_dim;
    uint base = idx * p.splits * (d + 2u);
    // An empty split (l = 0, m = -inf) has weight 0.
    bool live = tid < p.splits && part[base + tid * (d + 2u) + 1u] > 0.0;
    float m = live ? part[base + tid * (d + 2u)] : -1.0 / 0.0;
    float l = live ? part[base + tid * (d + 2u) + 1u] : 0.0;
    float mx = subgroupMax(m);
    if (subgroupElect()) {
        red[gl_SubgroupID] = mx;
    }
    barrier();
    mx = red[0];
    for (uint i = 1u; i < gl_NumSubgroups; i++) {
        mx = max(mx, red[i]);
    }
    barrier();
    float e = live ? exp(m - mx) : 0.0;
    float ls = subgroupAdd(l * e);
    if (subgroupElect()) {
        red[gl_SubgroupID] = ls;
    }
    barrier();
    float tot = 0.0;
    for (uint i = 0u; i < gl_NumSubgroups; i++) {
        tot += red[i];
    }
    wgt[tid] = e / tot;
    barrier();
    for (uint dim = tid; dim < d; dim += 64u) {
        float a0 = 0.0, a1 = 0.0;
        uint s = 0u;
        for (; s + 2u <= p.splits; s += 2u) {
            a0 += part[base + s * (d + 2u) + 2u + dim] * wgt[s];
            a1 += part[base + (s + 1u) * (d + 2u) + 2u + dim] * wgt[s + 1u];
        }
        if (s < p.splits) {
            a0 += part[base + s * (d + 2u) + 2u + dim] * wgt[s];
        }
        o[idx * d + dim] = a0 + a1;
        if (p.q8 != 0u) {
            ov[dim / 4u][dim % 4u] = a0 + a1;
        }
    }
    if (p.q8 == 0u) {
        return;
    }
    barrier();
    uint cols = p.rows * d;
    for (uint i0 = 0u; i0 < d / 4u; i0 += 64u) {
        uint i = i0 + tid; // vec4 of this head
        vec4 v = i < d / 4u ? ov[i] : vec4(0.0);
        vec4 a4 = abs(v);
        float amax = max(max(a4.x, a4.y), max(a4.z, a4.w));
        amax = max(amax, subgroupShuffleXor(amax, 1u));
        amax = max(amax, subgroupShuffleXor(amax, 2u));
        amax = max(amax, subgroupShuffleXor(amax, 4u));
        float dq = amax / 127.0;
        float id = amax > 0.0 ? 127.0 / amax : 0.0;
        ivec4 c = clamp(ivec4(round(v * id)), ivec4(-127), ivec4(127));
        int s = c.x + c.y + c.z + c.w;
        s += subgroupShuffleXor(s, 1u);
        s += subgroupShuffleXor(s, 2u);
        if (i < d / 4u) {
            uint gi = idx * d / 4u + i; // vec4 index in the row
            uvec4 b = uvec4(c) & 0xffu;
            xq[gi] = b.x | (b.y << 8u) | (b.z << 16u) | (b.w << 24u);
            if ((gi & 7u) == 0u) {
                xq[cols / 4u + gi / 8u] = floatBitsToUint(dq);
            }
            if ((gi & 3u) == 0u) {
                xq[cols / 4u + cols / 32u + gi / 4u] = floatBitsToUint(dq * float(s));
            }
        }
    }
}
