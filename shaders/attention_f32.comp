#version 450
// Causal GQA attention of n new tokens (positions pos0..pos0+n) over the KV cache plus the
// batch itself. One workgroup per (token, head). Keys before pos0 come from the cache (a ring
// of `ring` slots on sliding-window layers), keys of the batch straight from k/v, exactly as the
// CPU backend does. Keys are taken in blocks of 64 with an online softmax (running max and sum),
// so no score array of context length is needed; each invocation owns head_dim / 64 output
// dimensions. The host stores the batch into the cache after this dispatch.
//
// Split-K (flash-decoding): the grid's z dimension splits each query's key range into `splits`
// chunks of `chunk` keys, so a decode step over a long context runs heads x splits workgroups
// instead of one per head. With splits > 1 each workgroup writes its un-normalized partial
// (running max m, sum l, acc[head_dim]) to `part`, and attention_combine_f32 merges them.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(local_size_x = 64) in;

layout(push_constant) uniform Params {
    uint n;
    uint pos0;
    uint heads;
    uint kv_heads;
    uint head_dim;
    uint window;  // 0: none
    uint ring;    // cache slots of a ring, 0: linear cache
    float scale;
    float softcap; // 0: none
    uint chunk;    // keys per split (multiple of 64)
    uint splits;   // 1: write `o` directly
} p;

layout(set = 0, binding = 0) readonly buffer Q { float q[]; };
layout(set = 0, binding = 1) readonly buffer K4 { vec4 k4[]; };
layout(set = 0, binding = 2) readonly buffer V { float v[]; };
layout(set = 0, binding = 3) readonly buffer KC4 { vec4 kc4[]; };
layout(set = 0, binding = 4) readonly buffer VC { float vc[]; };
layout(set = 0, binding = 5) writeonly buffer O { float o[]; };
// (n * heads * splits) records of head_dim + 2 floats: m, l, acc[head_dim]. Unused (bound to
// `o` again) when splits == 1.
layout(set = 0, binding = 6) writeonly buffer Part { float part[]; };

const uint MAX_DIMS = 8u; // head_dim <= 512
shared vec4 qs4[128];
shared float sc[64];

// Start of the kv_dim-wide row holding position `pos` (in the cache or the batch).
uint kv_row(uint pos, uint kv_dim, out bool cached) {
    cached = pos < p.pos0;
    if (cached) {
        return (p.ring > 0u ? pos % p.ring : pos) * kv_dim;
    }
    return (pos - p.pos0) * kv_dim;
}

void main() {
    uint idx = group_index();
    if (idx >= p.n * p.heads) {
        return;
    }
    uint t = idx / p.heads, h = idx % p.heads;
    uint tid = gl_LocalInvocationID.x;
    uint d = p.head_dim;
    uint kv_dim = p.kv_heads * d;
    uint kvh = h / (p.heads / p.kv_heads);
    uint pos = p.pos0 + t;
    uint first = (p.window > 0u && pos + 1u > p.window) ? pos + 1u - p.window : 0u;
    uint split = gl_WorkGroupID.z;
    uint lo = first + split * p.chunk;          // this split's keys: lo ..= hi
    uint hi = min(pos, lo + p.chunk - 1u);

    for (uint i = tid; i < d / 4u; i += 64u) {
        uint b = (t * p.heads + h) * d + 4u * i;
        qs4[i] = vec4(q[b], q[b + 1u], q[b + 2u], q[b + 3u]);
    }
    barrier();

    float m = -1.0 / 0.0;
    float l = 0.0;
    float acc[MAX_DIMS];
    for (uint i = 0u; i < MAX_DIMS; i++) {
        acc[i] = 0.0;
    }
    for (uint kb = lo; kb <= hi; kb += 64u) {
        uint kp = kb + tid;
        float s = -1.0 / 0.0;
        if (kp <= hi) {
            bool cached;
            uint r = kv_row(kp, kv_dim, cached) + kvh * d;
            // q·k with 16-byte loads, four independent in flight (head_dim % 16 == 0): a
            // serial chain of scalar loads made this phase latency-bound.
            uint r4 = r / 4u;
            vec4 a0 = vec4(0.0), a1 = vec4(0.0), a2 = vec4(0.0), a3 = vec4(0.0);
            if (cached) {
                for (uint i = 0u; i < d / 4u; i += 4u) {
                    a0 += qs4[i] * kc4[r4 + i];
                    a1 += qs4[i + 1u] * kc4[r4 + i + 1u];
                    a2 += qs4[i + 2u] * kc4[r4 + i + 2u];
                    a3 += qs4[i + 3u] * kc4[r4 + i + 3u];
                }
            } else {
                for (uint i = 0u; i < d / 4u; i += 4u) {
                    a0 += qs4[i] * k4[r4 + i];
                    a1 += qs4[i + 1u] * k4[r4 + i + 1u];
                    a2 += qs4[i + 2u] * k4[r4 + i + 2u];
                    a3 += qs4[i + 3u] * k4[r4 + i + 3u];
                }
            }
            vec4 a = (a0 + a1) + (a2 + a3);
            float dotv = (a.x + a.y) + (a.z + a.w);
            s = dotv * p.scale;
            if (p.softcap > 0.0) {
                s = tanh(s / p.softcap) * p.softcap;
            }
        }
        sc[tid] = s;
        barrier();
        uint count = min(64u, hi + 1u - kb);
        float bm = m;
        for (uint j = 0u; j < count; j++) {
            bm = max(bm, sc[j]);
        }
        float corr = exp(m - bm);
        l *= corr;
        for (uint i = 0u; i < MAX_DIMS; i++) {
            acc[i] *= corr;
        }
        // Keys 8 at a time: eight independent V loads in flight per output dimension.
        uint j = 0u;
        for (; j + 8u <= count; j += 8u) {
            float e[8];
            uint r[8];
            bool cached[8];
            for (uint u = 0u; u < 8u; u++) {
                e[u] = exp(sc[j + u] - bm);
                l += e[u];
                r[u] = kv_row(kb + j + u, kv_dim, cached[u]) + kvh * d;
            }
            for (uint i = 0u; i < MAX_DIMS; i++) {
                uint dim = tid + 64u * i;
                if (dim < d) {
                    float s8 = 0.0;
                    for (uint u = 0u; u < 8u; u++) {
                        s8 += e[u] * (cached[u] ? vc[r[u] + dim] : v[r[u] + dim]);
                    }
                    acc[i] += s8;
                }
            }
        }
        for (; j < count; j++) {
            float e = exp(sc[j] - bm);
            l += e;
            bool cached;
            uint r = kv_row(kb + j, kv_dim, cached) + kvh * d;
            for (uint i = 0u; i < MAX_DIMS; i++) {
                uint dim = tid + 64u * i;
                if (dim < d) {
                    acc[i] += e * (cached ? vc[r + dim] : v[r + dim]);
                }
            }
        }
        m = bm;
        barrier();
    }
    if (p.splits == 1u) {
        for (uint i = 0u; i < MAX_DIMS; i++) {
            uint dim = tid + 64u * i;
            if (dim < d) {
                o[(t * p.heads + h) * d + dim] = acc[i] / l;
            }
        }
        return;
    }
    // An empty split (lo > pos: early tokens of a batch) leaves m = -inf, l = 0, acc = 0.
    uint rec = (idx * p.splits + split) * (d + 2u);
    if (tid == 0u) {
        part[rec] = m;
        part[rec + 1u] = l;
    }
    for (uint i = 0u; i < MAX_DIMS; i++) {
        uint dim = tid + 64u * i;
        if (dim < d) {
            part[rec + 2u + dim] = acc[i];
        }
    }
}
