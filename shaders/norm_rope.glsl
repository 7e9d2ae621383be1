// Gemma 3's QK-norm then RoPE of one head's head_dim values, by a workgroup of 64: each
// invocation holds the pairs (j, j + head_dim / 2) for j = tid + 64 i (head_dim <= 512).
// x = x / sqrt(mean(x^2) + eps) * (1 + w) over the head (rms_norm_f32's arithmetic), then the
// NEOX rotate-half with the host's cos/sin table of n positions (cos of position t at
// table[t * half + j], sin at table[(n + t) * half + j]; rope_f32's layout). Shared by
// norm_rope_f32 (in place, prefill) and attention_f32 (into shared memory, decode).
//
// NORM_ROPE(SRC, at, W, tid, d, eps, t, n, STORE): reads SRC[at ..< at + d], norm weights W,
// writes through STORE(j, value) (a macro of the includer: GLSL cannot pass buffers or shared
// arrays). The includer declares `shared float nred[16]` and the buffer `table`, and enables
// GL_KHR_shader_subgroup_arithmetic.
#define NORM_ROPE(SRC, at, W, tid, d, eps, t, n, STORE)                                 \
    {                                                                                  \
        uint hf = (d) / 2u;                                                            \
        float v0[4], v1[4];                                                            \
        float ss = 0.0;                                                                \
        for (uint i = 0u; i < 4u; i++) {                                               \
            uint j = (tid) + 64u * i;                                                  \
            v0[i] = j < hf ? SRC[(at) + j] : 0.0;                                      \
            v1[i] = j < hf ? SRC[(at) + j + hf] : 0.0;                                 \
            ss += v0[i] * v0[i] + v1[i] * v1[i];                                       \
        }                                                                              \
        ss = subgroupAdd(ss);                                                          \
        if (subgroupElect()) {                                                         \
            nred[gl_SubgroupID] = ss;                                                  \
        }                                                                              \
        barrier();                                                                     \
        float tot = 0.0;                                                               \
        for (uint i = 0u; i < gl_NumSubgroups; i++) {                                  \
            tot += nred[i];                                                            \
        }                                                                              \
        barrier();                                                                     \
        float inv = 1.0 / sqrt(tot / float(d) + (eps));                                \
        for (uint i = 0u; i < 4u; i++) {                                               \
            uint j = (tid) + 64u * i;                                                  \
            if (j < hf) {                                                              \
                float x0 = v0[i] * inv * (1.0 + W[j]);                                 \
                float x1 = v1[i] * inv * (1.0 + W[j + hf]);                            \
                float c = table[(t) * hf + j];                                         \
                float sn = table[((n) + (t)) * hf + j];                                \
                STORE(j, x0 * c - x1 * sn);                                            \
                STORE(j + hf, x1 * c + x0 * sn);                                       \
            }                                                                          \
        }                                                                              \
    }
