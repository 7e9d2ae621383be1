#version 450
// out[t, out_offset + r] = dot(W[r, :], x[t, :]) for a batch of tokens (prefill) on the
// tensor cores: GL_NV_cooperative_matrix, f16 x f16 products summed in f32 (shaders/README.md,
// "Prefill"). The portable kernel is matmul.comp; the host picks this one where the device has
// VK_NV_cooperative_matrix with 16x16x16 f16/f32 subgroup matrices and 32-wide subgroups.
//
// Tile: BM weight rows x BN tokens per workgroup, WM x WN subgroups, each owning FM x FN
// fragments of 16 x 16 outputs (f32 accumulators for the whole k range). k goes in steps of
// BK = 32 through shared memory as f16: every invocation decodes 8 consecutive weights of a row
// at a time from one 8- or 16-byte load (w8_fetch / w8_half below, one per weight format, from
// the device row layout of weights.glsl), not one byte per element. Raw words are fetched into
// registers two steps ahead of their use, so global loads overlap the tensor-core work (one
// shared buffer, two barriers per step). Small grids split k over gl_WorkGroupID.z (partial
// sums, added by sum_splits_f32.comp), so that short prompts still fill the GPU.
//
// x arrives as f16 already, scaled per token by a power of two (quantize_x16_f32.comp: Gemma's
// activations overflow f16), with the inverse factors in front; the f32 sums are multiplied back
// as they are written. Outputs pass through a 16 x 16 shared scratch per subgroup so that partial
// tiles (rows or tokens past the end) are cut off per element.
#extension GL_GOOGLE_include_directive : require
#extension GL_NV_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_EXT_control_flow_attributes : require

// Tile shape (build.rs passes one set per variant).
#ifndef WM
#define WM 4
#define WN 2
#define FM 2
#define FN 2
#endif
#ifndef BK
#define BK 32
#endif

const uint BM = WM * FM * 16u; // weight rows per tile
const uint BN = WN * FN * 16u; // tokens per tile
// BK: k per step (32 or 64). f16 per shared row: BK + 8 (80 or 144 bytes), so the 16-byte
// row segments a fragment load reads from 8 consecutive rows fall in distinct banks.
const uint LDS = BK + 8u;
const uint UPR = BK / 8u; // 8-element units per row and step
const uint NT = WM * WN * 32u;
// 8-element units per step and invocation (must divide evenly: build.rs's shapes do).
const uint WU_N = BM * UPR / NT;
const uint XU_N = BN * UPR / NT;

layout(local_size_x = WM * WN * 32) in;

layout(push_constant) uniform Params {
    uint rows;       // rows of this weight chunk
    uint cols;       // a multiple of BK
    uint stride;     // bytes per device row (weights.glsl)
    uint out_offset; // first output column of this chunk
    uint out_stride; // output row length (all rows of the weight)
    uint n;          // tokens
    uint codes_at;
    uint h_at;       // first word of x's f16 values (quantize_x16_f32.comp)
    uint kchunk;     // k per split (a multiple of BK): workgroup z takes [z kchunk, + kchunk)
} p;

layout(set = 0, binding = 0) readonly buffer W { uint w[]; };
layout(set = 0, binding = 0) readonly buffer W2 { uvec2 w2[]; };
layout(set = 0, binding = 0) readonly buffer W4 { uvec4 w4[]; };
layout(set = 0, binding = 1) readonly buffer XS { float xinv[]; };
layout(set = 0, binding = 1) readonly buffer XH { uvec4 xh4[]; };
// With splits (gl_NumWorkGroups.z > 1): the f32 partial sums, [z][t][r] (rows of this chunk),
// which sum_splits_f32.comp adds into the real output.
layout(set = 0, binding = 2) writeonly buffer O { float o[]; };

shared float16_t ws[BM * LDS];
shared float16_t xs[BN * LDS];
shared float cs[WM * WN * 256u];

uvec4 pack8(vec4 a, vec4 b) {
    return uvec4(packHalf2x16(a.xy), packHalf2x16(a.zw), packHalf2x16(b.xy), packHalf2x16(b.zw));
}

// The integer formats decode without a single int -> float conversion (quarter rate on NVIDIA,
// and two per weight were what bounded this kernel): byte b < 256 placed in the mantissa of
// f16 1024 (0x6400 | b) is exactly 1024 + b, so (that - off) * s + m on packed f16 pairs
// (HFMA2) gives the weight. c.x holds elements 0..3 (byte i = element i), c.y 4..7.
uvec2 b4_f16(uint c) {
    return uvec2((c & 0xffu) | ((c << 8u) & 0xff0000u),
                 ((c >> 16u) & 0xffu) | ((c >> 8u) & 0xff0000u)) | 0x64006400u;
}
uint affine2(uint h, float16_t off, f16vec2 s, f16vec2 m) {
    return packFloat2x16(fma(unpackFloat2x16(h) - off, s, m));
}
uvec4 affine8(uvec2 c, float16_t off, float16_t s, float16_t m) {
    uvec2 a = b4_f16(c.x), b = b4_f16(c.y);
    f16vec2 s2 = f16vec2(s), m2 = f16vec2(m);
    return uvec4(affine2(a.x, off, s2, m2), affine2(a.y, off, s2, m2),
                 affine2(b.x, off, s2, m2), affine2(b.y, off, s2, m2));
}

// Per format: WRaw, the raw words of elements k..k+7 (k % 8 == 0) of the row at byte rb and
// their parameters; w8_fetch loads them; w8_half decodes them to 8 f16 (4 packed pairs).
// Formulas as formats/SPEC.md (and weights.glsl's w_elem): the float formats are converted, the
// integer ones computed in f16 by affine8 (params rounded to f16 first: the weight carries up to
// two f16 roundings, inside the f16 tolerance of the products anyway).
#if defined(W_F32)
struct WRaw { uvec4 a; uvec4 b; };
WRaw w8_fetch(uint rb, uint k) {
    uint g = (rb >> 4u) + k / 4u;
    return WRaw(w4[g], w4[g + 1u]);
}
uvec4 w8_half(WRaw r, uint k) {
    return pack8(uintBitsToFloat(r.a), uintBitsToFloat(r.b));
}

#elif defined(W_F16)
struct WRaw { uvec4 a; };
WRaw w8_fetch(uint rb, uint k) {
    return WRaw(w4[(rb >> 4u) + k / 8u]);
}
uvec4 w8_half(WRaw r, uint k) {
    return r.a;
}

#elif defined(W_BF16)
// bf16 is the top half of an f32 (values beyond f16's range become inf: no Gemma weight is).
struct WRaw { uvec4 a; };
WRaw w8_fetch(uint rb, uint k) {
    return WRaw(w4[(rb >> 4u) + k / 8u]);
}
vec2 bf2(uint v) {
    return vec2(uintBitsToFloat(v << 16u), uintBitsToFloat(v & 0xffff0000u));
}
uvec4 w8_half(WRaw r, uint k) {
    return pack8(vec4(bf2(r.a.x), bf2(r.a.y)), vec4(bf2(r.a.z), bf2(r.a.w)));
}

#elif defined(W_I8_SYM)
// Groups of 32: f16 scale per group (two per params word); i8 codes.
struct WRaw { uvec2 c; uint s; };
WRaw w8_fetch(uint rb, uint k) {
    return WRaw(w2[((rb + p.codes_at) >> 3u) + k / 8u], w[(rb >> 2u) + k / 64u]);
}
uvec4 w8_half(WRaw r, uint k) {
    // Signed codes with the sign bit flipped are q + 128 as unsigned bytes.
    float16_t d = unpackFloat2x16(r.s)[(k / 32u) & 1u];
    return affine8(r.c ^ 0x80808080u, float16_t(1152.0), d, float16_t(0.0));
}

#elif defined(W_I8_ASYM)
// Groups of 64: f16 (scale, min) per group in one word; u8 codes.
struct WRaw { uvec2 c; uint sm; };
WRaw w8_fetch(uint rb, uint k) {
    return WRaw(w2[((rb + p.codes_at) >> 3u) + k / 8u], w[(rb >> 2u) + k / 64u]);
}
uvec4 w8_half(WRaw r, uint k) {
    f16vec2 sm = unpackFloat2x16(r.sm);
    return affine8(r.c, float16_t(1024.0), sm.x, sm.y);
}

#elif defined(W_I4_GROUPED) || defined(W_I4_PER_CHANNEL) || defined(W_I4_GROUPED32) \
    || defined(W_I4_GROUPED16)
// Chunks of 64 elements in 32 bytes: byte j holds element j (low nibble) and j + 32 (high).
// Elements k..k+7 are one nibble of 8 consecutive bytes. I4_GROUPED: f16 (scale, min) per 64;
// I4_GROUPED32: per 32 (a chunk's low nibbles are one group, its high nibbles the next);
// I4_GROUPED16: per 16 (k..k+7 never straddle two);
// I4_PER_CHANNEL: f32 scale and f32 min per row.
struct WRaw { uvec2 c; vec2 sm; };
WRaw w8_fetch(uint rb, uint k) {
    uint i = k % 64u;
    uvec2 c = w2[((rb + p.codes_at) >> 3u) + (k / 64u) * 4u + (i % 32u) / 8u];
#if defined(W_I4_GROUPED)
    vec2 sm = unpackHalf2x16(w[(rb >> 2u) + k / 64u]);
#elif defined(W_I4_GROUPED32)
    vec2 sm = unpackHalf2x16(w[(rb >> 2u) + k / 32u]);
#elif defined(W_I4_GROUPED16)
    vec2 sm = unpackHalf2x16(w[(rb >> 2u) + k / 16u]);
#else
    vec2 sm = vec2(uintBitsToFloat(w[rb >> 2u]), uintBitsToFloat(w[(rb >> 2u) + 1u]));
#endif
    return WRaw(c, sm);
}
uvec4 w8_half(WRaw r, uint k) {
    uint sh = (k % 64u) < 32u ? 0u : 4u;
    uvec2 q = (r.c >> sh) & 0x0f0f0f0fu;
    return affine8(q, float16_t(1024.0), float16_t(r.sm.x), float16_t(r.sm.y));
}

#elif defined(W_I2_STRUCTURED)
// Super-blocks of 128 with 12 bytes of params (f16 d, f16 dmin, 8 x (sc | m << 4) per 16);
// chunks of 128 elements in 32 bytes, byte j holding elements j, j+32, j+64, j+96 in bit pairs
// 0..3. Elements k..k+7 are one bit pair of 8 consecutive bytes, in one sub-group of 16.
struct WRaw { uvec2 c; uint dd; uint scw; };
WRaw w8_fetch(uint rb, uint k) {
    uint sb = k / 128u, i = k % 128u;
    uint pw = (rb + 12u * sb) >> 2u;
    uvec2 c = w2[((rb + p.codes_at) >> 3u) + sb * 4u + (i % 32u) / 8u];
    return WRaw(c, w[pw], w[pw + 1u + (i / 16u) / 4u]);
}
uvec4 w8_half(WRaw r, uint k) {
    uint i = k % 128u;
    uvec2 q = (r.c >> (2u * (i / 32u))) & 0x03030303u;
    vec2 dd = unpackHalf2x16(r.dd);
    uint sc = (r.scw >> (8u * ((i / 16u) % 4u))) & 0xffu;
    float a = dd.x * float(sc & 15u), m = dd.y * float(sc >> 4u);
    return affine8(q, float16_t(1024.0), float16_t(a), float16_t(-m));
}

#else
#error "define one W_<format>"
#endif

// Set at the start of main.
uint tid, r0, t0, xh;

// Raw words of the step at k into registers. Rows and tokens past the end are clamped to the
// last one (always a valid address, no branch between the load and its register), and zeroed
// by stage().
void fetch(out WRaw wr[WU_N], out uvec4 xr[XU_N], uint k) {
    [[unroll]] for (uint j = 0u; j < WU_N; j++) {
        uint u = tid + NT * j, r = min(r0 + u / UPR, p.rows - 1u);
        wr[j] = w8_fetch(r * p.stride, k + 8u * (u % UPR));
    }
    [[unroll]] for (uint j = 0u; j < XU_N; j++) {
        uint u = tid + NT * j, t = min(t0 + u / UPR, p.n - 1u);
        xr[j] = xh4[xh + (t * p.cols + k) / 8u + u % UPR];
    }
}

// The step at k, decoded to f16, into the shared tiles.
void stage(WRaw wr[WU_N], uvec4 xr[XU_N], uint k) {
    [[unroll]] for (uint j = 0u; j < WU_N; j++) {
        uint u = tid + NT * j;
        uvec4 h = r0 + u / UPR < p.rows ? w8_half(wr[j], k + 8u * (u % UPR)) : uvec4(0u);
        uint at = (u / UPR) * LDS + 8u * (u % UPR);
        [[unroll]] for (uint e = 0u; e < 4u; e++) {
            f16vec2 v = unpackFloat2x16(h[e]);
            ws[at + 2u * e] = v.x;
            ws[at + 2u * e + 1u] = v.y;
        }
    }
    [[unroll]] for (uint j = 0u; j < XU_N; j++) {
        uint u = tid + NT * j;
        uvec4 h = t0 + u / UPR < p.n ? xr[j] : uvec4(0u);
        uint at = (u / UPR) * LDS + 8u * (u % UPR);
        [[unroll]] for (uint e = 0u; e < 4u; e++) {
            f16vec2 v = unpackFloat2x16(h[e]);
            xs[at + 2u * e] = v.x;
            xs[at + 2u * e + 1u] = v.y;
        }
    }
}

// The products of the staged step (a macro: the accumulators stay in main's registers).
#define MMA_STEP()                                                                            \
    [[unroll]] for (uint kk = 0u; kk < BK; kk += 16u) {                                       \
        fcoopmatNV<16, gl_ScopeSubgroup, 16, 16> a[FN];                                       \
        fcoopmatNV<16, gl_ScopeSubgroup, 16, 16> b[FM];                                       \
        [[unroll]] for (uint i = 0u; i < FN; i++) {                                           \
            coopMatLoadNV(a[i], xs, ((sgt * FN + i) * 16u) * LDS + kk, LDS, false);           \
        }                                                                                     \
        [[unroll]] for (uint j = 0u; j < FM; j++) {                                           \
            coopMatLoadNV(b[j], ws, ((sgr * FM + j) * 16u) * LDS + kk, LDS, true);            \
        }                                                                                     \
        [[unroll]] for (uint i = 0u; i < FN; i++) {                                           \
            [[unroll]] for (uint j = 0u; j < FM; j++) {                                       \
                acc[i][j] = coopMatMulAddNV(a[i], b[j], acc[i][j]);                           \
            }                                                                                 \
        }                                                                                     \
    }

void main() {
    tid = gl_LocalInvocationID.x;
    uint sg = tid / 32u;
    uint lane = tid % 32u;
    uint sgr = sg % WM, sgt = sg / WM;
    r0 = gl_WorkGroupID.x * BM;
    t0 = gl_WorkGroupID.y * BN;
    xh = p.h_at / 4u;
    uint kb = gl_WorkGroupID.z * p.kchunk, ke = min(p.cols, kb + p.kchunk);

    fcoopmatNV<32, gl_ScopeSubgroup, 16, 16> acc[FN][FM];
    [[unroll]] for (uint i = 0u; i < FN; i++) {
        [[unroll]] for (uint j = 0u; j < FM; j++) {
            acc[i][j] = fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>(0.0);
        }
    }

    // Two register sets, two steps ahead: the loads of steps k + 2 BK and k + 3 BK are in
    // flight while step k and k + BK are multiplied (DRAM latency is several steps' work).
    // Unit u of a step: row (or token) u / UPR, elements 8 (u % UPR) .. + 7 of the step.
    WRaw wa[WU_N], wb[WU_N];
    uvec4 xa[XU_N], xb[XU_N];
    fetch(wa, xa, kb);
    if (kb + BK < ke) {
        fetch(wb, xb, kb + BK);
    }
    for (uint k0 = kb; k0 < ke; k0 += 2u * BK) {
        stage(wa, xa, k0);
        barrier();
        if (k0 + 2u * BK < ke) {
            fetch(wa, xa, k0 + 2u * BK);
        }
        MMA_STEP()
        barrier();
        if (k0 + BK < ke) {
            stage(wb, xb, k0 + BK);
            barrier();
            if (k0 + 3u * BK < ke) {
                fetch(wb, xb, k0 + 3u * BK);
            }
            MMA_STEP()
            barrier();
        }
    }

    // Fragment (i, j): tokens t0 + (sgt FN + i) 16 + 0..15 (matrix rows), weight rows
    // r0 + (sgr FM + j) 16 + 0..15 (matrix columns).
    uint cb = sg * 256u;
    bool split = gl_NumWorkGroups.z > 1u;
    [[unroll]] for (uint i = 0u; i < FN; i++) {
        [[unroll]] for (uint j = 0u; j < FM; j++) {
            coopMatStoreNV(acc[i][j], cs, cb, 16u, false);
            subgroupMemoryBarrierShared();
            subgroupBarrier();
            [[unroll]] for (uint e = 0u; e < 8u; e++) {
                uint idx = e * 32u + lane;
                uint t = t0 + (sgt * FN + i) * 16u + idx / 16u;
                uint r = r0 + (sgr * FM + j) * 16u + idx % 16u;
                if (t < p.n && r < p.rows) {
                    float v = cs[cb + idx] * xinv[t];
                    if (split) {
                        o[(gl_WorkGroupID.z * p.n + t) * p.rows + r] = v;
                    } else {
                        o[t * p.out_stride + p.out_offset + r] = v;
                    }
                }
            }
            subgroupBarrier();
        }
    }
}
