// The split-K merge of attention partials (flash-decoding), shared by attention_combine_f32
// (its own dispatch) and attention_f32 (the last split of a head to finish merges in place,
// saving that dispatch in decode). For (token, head) `idx` with records of head_dim + 2 floats
// (m, l, acc[head_dim]) in `part`: M = max_s m_s, L = sum_s l_s exp(m_s - M),
// out = sum_s acc_s exp(m_s - M) / L. A workgroup of 64, splits <= 64: invocation s reads
// split s's (m, l), subgroup/shared reductions give M and L, the weights exp(m_s - M) / L go
// to shared memory, then invocations own output dimensions and sum over splits with
// independent loads (a serial chain of dependent loads per split was latency-bound).
// With `q8` (decode, head_dim % 32 == 0) it also writes this head's part of the int8 form of
// the output row (quantize_x_f32's layout over `cols` = heads * head_dim) for o_proj: the
// head's dims go through shared memory so that 8 neighbouring invocations hold a group of 32
// (vec4 each).
// The includer declares `part` (readable), `o`, `xq` (uint[]) and includes common.glsl and
// the subgroup basic/arithmetic/shuffle extensions.

#define Q8_DST xq
#include "q8_store.glsl"

shared float merge_red[8];
shared float merge_wgt[64];
shared vec4 merge_ov[128]; // head_dim <= 512

void merge_splits(uint idx, uint tid, uint d, uint splits, bool q8, uint cols) {
    uint base = idx * splits * (d + 2u);
    // An empty split (l = 0, m = -inf) has weight 0.
    bool live = tid < splits && part[base + tid * (d + 2u) + 1u] > 0.0;
    float m = live ? part[base + tid * (d + 2u)] : -1.0 / 0.0;
    float l = live ? part[base + tid * (d + 2u) + 1u] : 0.0;
    float mx = subgroupMax(m);
    if (subgroupElect()) {
        merge_red[gl_SubgroupID] = mx;
    }
    barrier();
    mx = merge_red[0];
    for (uint i = 1u; i < gl_NumSubgroups; i++) {
        mx = max(mx, merge_red[i]);
    }
    barrier();
    float e = live ? exp(m - mx) : 0.0;
    float ls = subgroupAdd(l * e);
    if (subgroupElect()) {
        merge_red[gl_SubgroupID] = ls;
    }
    barrier();
    float tot = 0.0;
    for (uint i = 0u; i < gl_NumSubgroups; i++) {
        tot += merge_red[i];
    }
    merge_wgt[tid] = e / tot;
    barrier();
    for (uint dim = tid; dim < d; dim += 64u) {
        float a0 = 0.0, a1 = 0.0;
        uint s = 0u;
        for (; s + 2u <= splits; s += 2u) {
            a0 += part[base + s * (d + 2u) + 2u + dim] * merge_wgt[s];
            a1 += part[base + (s + 1u) * (d + 2u) + 2u + dim] * merge_wgt[s + 1u];
        }
        if (s < splits) {
            a0 += part[base + s * (d + 2u) + 2u + dim] * merge_wgt[s];
        }
        o[idx * d + dim] = a0 + a1;
        if (q8) {
            merge_ov[dim / 4u][dim % 4u] = a0 + a1;
        }
    }
    if (!q8) {
        return;
    }
    barrier();
    for (uint i0 = 0u; i0 < d / 4u; i0 += 64u) {
        uint i = i0 + tid; // vec4 of this head
        bool inside = i < d / 4u;
        store_q8_vec4(idx * d / 4u + i, inside ? merge_ov[i] : vec4(0.0), cols, inside);
    }
}
