#version 450
// Causal GQA attention of n new tokens (positions pos0..pos0+n) over the KV cache plus the
// batch itself. One workgroup of 64 per (token, head) (and split, below). Keys before pos0
// come from the cache (a ring of `ring` slots on sliding-window layers), keys of the batch
// straight from k/v, exactly as the CPU backend does. Keys are taken in blocks of 16 with an
// online softmax (running max and sum), so no score array of context length is needed: four
// invocations score one key (a quarter of head_dim each, all its 16-byte loads issued at once,
// then two subgroup shuffles), so a block costs one round of K loads rather than a chain of
// head_dim / 16 (decode attention was latency-bound); each invocation owns head_dim / 64
// output dimensions of the V accumulation. For a prefill the host stores the batch into the cache after this dispatch; for
// one token (`store`) the first workgroup of each KV head's query group writes the token's k
// and v into its cache slot itself (no other workgroup reads that slot: its own position comes
// from k/v, and a ring slot it reuses held a position outside the window), saving two copy
// commands per layer.
//
// Split-K (flash-decoding): the grid's z dimension splits each query's key range into `splits`
// chunks of `chunk` keys, so a decode step over a long context runs heads x splits workgroups
// instead of one per head. With splits > 1 each workgroup writes its un-normalized partial
// (running max m, sum l, acc[head_dim]) to `part`, and attention_combine_f32 merges them.
//
// `fused` (decode, one token) folds two more dispatches in, each of which cost a barrier and a
// launch (~5 us on the H100, 62 layers per token): Gemma 3's QK-norm and RoPE of the query
// head and of the new key (norm_rope_f32's arithmetic) are applied as they are loaded — q and
// k arrive raw from the projections, every workgroup normalizes what it reads and the storing
// workgroup writes the normalized key into the cache — and the last split of a head to finish
// merges the partials itself (attention_merge.glsl, with o_proj's int8 input): each split
// counts itself in `cnt[head]` after writing its partial, and the one that sees splits - 1
// merges and resets the counter for the next layer.
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require
#extension GL_KHR_shader_subgroup_arithmetic : require
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
    uint chunk;    // keys per split
    uint splits;
    uint store;    // n == 1: write k, v into the cache slot of pos0
    uint direct;   // write `o` (splits == 1), else the partials for attention_combine_f32
    uint fused;    // n == 1: QK-norm + RoPE here, merge by the last split (header)
    float eps;     // QK-norm's
} p;

layout(set = 0, binding = 0) readonly buffer Q { float q[]; };
layout(set = 0, binding = 1) readonly buffer K4 { vec4 k4[]; };
layout(set = 0, binding = 1) readonly buffer K { float k[]; };
layout(set = 0, binding = 2) readonly buffer V { float v[]; };
layout(set = 0, binding = 3) buffer KC4 { vec4 kc4[]; };
layout(set = 0, binding = 4) buffer VC { float vc[]; };
layout(set = 0, binding = 5) writeonly buffer O { float o[]; };
// (n * heads * splits) records of head_dim + 2 floats: m, l, acc[head_dim]. Unused (bound to
// `o` again) when direct. Coherent: with `fused` another workgroup's records are read.
layout(set = 0, binding = 6) coherent buffer Part { float part[]; };
// `fused` only (else bound to `o` again): QK-norm weights, the cos/sin table of the position
// (norm_rope_f32's layout with n = 1), a zeroed counter per head, o_proj's int8 input.
layout(set = 0, binding = 7) readonly buffer Wq { float wq[]; };
layout(set = 0, binding = 8) readonly buffer Wk { float wk[]; };
layout(set = 0, binding = 9) readonly buffer T { float table[]; };
layout(set = 0, binding = 10) coherent buffer Cnt { uint cnt[]; };
layout(set = 0, binding = 11) writeonly buffer XQ { uint xq[]; };

#include "attention_merge.glsl"

const uint MAX_DIMS = 8u; // head_dim <= 512
const uint BLOCK = 16u;   // keys per block, 4 invocations each
shared vec4 qs4[128];
shared float sc[BLOCK];
shared vec4 knew4[128]; // fused: the new key, normalized and rotated
shared float nred[16];
shared bool last_split;

#include "norm_rope.glsl"
#define STORE_QS(j, v) qs4[(j) / 4u][(j) % 4u] = (v)
#define STORE_KNEW(j, v) knew4[(j) / 4u][(j) % 4u] = (v)

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

    bool fused = p.fused != 0u;
    if (fused) {
        NORM_ROPE(q, h * d, wq, tid, d, p.eps, 0u, 1u, STORE_QS)
        NORM_ROPE(k, kvh * d, wk, tid, d, p.eps, 0u, 1u, STORE_KNEW)
        barrier();
    } else {
        for (uint i = tid; i < d / 4u; i += 64u) {
            uint b = (t * p.heads + h) * d + 4u * i;
            qs4[i] = vec4(q[b], q[b + 1u], q[b + 2u], q[b + 3u]);
        }
    }
    if (p.store != 0u && split == 0u && h % (p.heads / p.kv_heads) == 0u) {
        uint slot = p.ring > 0u ? p.pos0 % p.ring : p.pos0;
        for (uint i = tid; i < d / 4u; i += 64u) {
            kc4[(slot * kv_dim + kvh * d) / 4u + i] = fused ? knew4[i] : k4[(kvh * d) / 4u + i];
        }
        for (uint i = tid; i < d; i += 64u) {
            vc[slot * kv_dim + kvh * d + i] = v[kvh * d + i];
        }
    }
    barrier();

    float m = -1.0 / 0.0;
    float l = 0.0;
    float acc[MAX_DIMS];
    for (uint i = 0u; i < MAX_DIMS; i++) {
        acc[i] = 0.0;
    }
    uint key = tid / 4u, quarter = tid % 4u;
    uint d16 = d / 16u; // vec4s of a key per invocation (head_dim % 16 == 0)
    for (uint kb = lo; kb <= hi; kb += BLOCK) {
        uint kp = kb + key;
        float dotv = 0.0;
        if (kp <= hi) {
            bool cached;
            uint r4 = (kv_row(kp, kv_dim, cached) + kvh * d) / 4u + quarter * d16;
            uint q4 = quarter * d16;
            // Constant trip count: unrolled, every load of the key's quarter in flight at once.
            vec4 a = vec4(0.0);
            if (cached) {
                for (uint j = 0u; j < 32u; j++) {
                    if (j < d16) {
                        a += qs4[q4 + j] * kc4[r4 + j];
                    }
                }
            } else if (fused) {
                for (uint j = 0u; j < 32u; j++) {
                    if (j < d16) {
                        a += qs4[q4 + j] * knew4[q4 + j];
                    }
                }
            } else {
                for (uint j = 0u; j < 32u; j++) {
                    if (j < d16) {
                        a += qs4[q4 + j] * k4[r4 + j];
                    }
                }
            }
            dotv = (a.x + a.y) + (a.z + a.w);
        }
        // The key's four quarters are neighbouring invocations (subgroups are >= 8 wide).
        dotv += subgroupShuffleXor(dotv, 1u);
        dotv += subgroupShuffleXor(dotv, 2u);
        if (quarter == 0u) {
            float s = -1.0 / 0.0;
            if (kp <= hi) {
                s = dotv * p.scale;
                if (p.softcap > 0.0) {
                    s = tanh(s / p.softcap) * p.softcap;
                }
            }
            sc[key] = s;
        }
        barrier();
        uint count = min(BLOCK, hi + 1u - kb);
        float bm = m;
        for (uint j = 0u; j < count; j++) {
            bm = max(bm, sc[j]);
        }
        float corr = exp(m - bm);
        l *= corr;
        for (uint i = 0u; i < MAX_DIMS; i++) {
            acc[i] *= corr;
        }
        // Cached keys come first in a block, then keys of the batch: two loops, each reading
        // one buffer (a per-key choice of buffer compiled to branches that serialised the
        // loads), 8 keys at a time (eight independent V loads in flight per dimension).
        uint ncached = kb < p.pos0 ? min(count, p.pos0 - kb) : 0u;
        for (uint i = 0u; i < MAX_DIMS; i++) {
            uint dim = tid + 64u * i;
            if (dim < d) {
                uint j = 0u;
                float s = 0.0;
                for (; j + 8u <= ncached; j += 8u) {
                    float s8 = 0.0;
                    for (uint u = 0u; u < 8u; u++) {
                        uint kp = kb + j + u;
                        uint row = (p.ring > 0u ? kp % p.ring : kp) * kv_dim + kvh * d;
                        s8 += exp(sc[j + u] - bm) * vc[row + dim];
                    }
                    s += s8;
                }
                for (; j < ncached; j++) {
                    uint kp = kb + j;
                    uint row = (p.ring > 0u ? kp % p.ring : kp) * kv_dim + kvh * d;
                    s += exp(sc[j] - bm) * vc[row + dim];
                }
                for (; j < count; j++) {
                    uint row = (kb + j - p.pos0) * kv_dim + kvh * d;
                    s += exp(sc[j] - bm) * v[row + dim];
                }
                acc[i] += s;
            }
        }
        for (uint j = 0u; j < count; j++) {
            l += exp(sc[j] - bm);
        }
        m = bm;
        barrier();
    }
    if (p.direct != 0u) {
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
    if (!fused) {
        return;
    }
    // Publish the partial, then count this split; the last one merges.
    memoryBarrierBuffer();
    barrier();
    if (tid == 0u) {
        last_split = atomicAdd(cnt[idx], 1u) == p.splits - 1u;
    }
    barrier();
    if (!last_split) {
        return;
    }
    if (tid == 0u) {
        cnt[idx] = 0u;
    }
    memoryBarrierBuffer();
    merge_splits(idx, tid, d, p.splits, true, p.heads * d);
}
