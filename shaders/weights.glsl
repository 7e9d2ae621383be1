// Weight decoding, one definition per weight format, selected by a -D define from build.rs.
//
// The weight buffer is bound as raw 32-bit words (`W`, binding 0) so every format, including the
// packed .mixq quant rows whose length is not a multiple of 4 bytes, is read without 8/16-bit
// storage features. A row starts at byte `row * p.row_bytes` (always even: see SPEC.md); rows of
// the quant types follow formats/SPEC.md §"Quant types": [params of every block][codes].
//
// Each format defines:
//   float w_elem(uint rb, uint k)          element k of the row starting at byte rb (tiles, embed)
//   float row_dot(uint rb, uint xb, uint t, uint nt)
//                                          this invocation's share (t of nt) of dot(row, x[xb..]),
//                                          reading 32-bit words so that neighbouring invocations
//                                          read neighbouring words (coalesced)
// Both need `p.cols` and the buffers W (uint w[]) and X (float x[]) declared before inclusion.

// The 32-bit word at byte address a (any alignment; a word past the end is padding, see memory.rs).
uint u32_at(uint a) {
    uint i = a >> 2u;
    uint s = (a & 3u) * 8u;
    if (s == 0u) {
        return w[i];
    }
    return (w[i] >> s) | (w[i + 1u] << (32u - s));
}

// The 16-bit value at an even byte address.
uint u16_at(uint a) {
    return (w[a >> 2u] >> ((a & 2u) * 8u)) & 0xffffu;
}

uint byte_at(uint a) {
    return (w[a >> 2u] >> ((a & 3u) * 8u)) & 0xffu;
}

float half_at(uint a) {
    return unpackHalf2x16(u16_at(a)).x;
}

#if defined(W_F32)
float w_elem(uint rb, uint k) {
    return uintBitsToFloat(u32_at(rb + 4u * k));
}
float row_dot(uint rb, uint xb, uint t, uint nt) {
    float acc = 0.0;
    for (uint k = t; k < p.cols; k += nt) {
        acc += uintBitsToFloat(u32_at(rb + 4u * k)) * x[xb + k];
    }
    return acc;
}
#elif defined(W_F16) || defined(W_BF16)
#if defined(W_F16)
vec2 unpack2(uint v) {
    return unpackHalf2x16(v);
}
float w_elem(uint rb, uint k) {
    return half_at(rb + 2u * k);
}
#else
// bf16 is the top half of an f32: widening is a shift, exact.
vec2 unpack2(uint v) {
    return vec2(uintBitsToFloat(v << 16u), uintBitsToFloat(v & 0xffff0000u));
}
float w_elem(uint rb, uint k) {
    return uintBitsToFloat(u16_at(rb + 2u * k) << 16u);
}
#endif
float row_dot(uint rb, uint xb, uint t, uint nt) {
    float acc = 0.0;
    uint words = p.cols / 2u;
    for (uint j = t; j < words; j += nt) {
        vec2 v = unpack2(u32_at(rb + 4u * j));
        acc += v.x * x[xb + 2u * j] + v.y * x[xb + 2u * j + 1u];
    }
    // An odd column count leaves one element after the last whole word.
    if ((p.cols & 1u) == 1u && t == 0u) {
        acc += w_elem(rb, p.cols - 1u) * x[xb + p.cols - 1u];
    }
    return acc;
}
#elif defined(W_I8_SYM)
// Groups of 32: f16 scale per group; codes are i8; w = scale * q.
float w_elem(uint rb, uint k) {
    uint cb = rb + (p.cols / 32u) * 2u;
    int q = int(byte_at(cb + k) << 24u) >> 24;
    return half_at(rb + 2u * (k / 32u)) * float(q);
}
float row_dot(uint rb, uint xb, uint t, uint nt) {
    uint cb = rb + (p.cols / 32u) * 2u;
    float acc = 0.0;
    for (uint j = t; j < p.cols / 4u; j += nt) {
        int c = int(u32_at(cb + 4u * j));
        uint k = 4u * j;
        float s = float(bitfieldExtract(c, 0, 8)) * x[xb + k]
                + float(bitfieldExtract(c, 8, 8)) * x[xb + k + 1u]
                + float(bitfieldExtract(c, 16, 8)) * x[xb + k + 2u]
                + float(bitfieldExtract(c, 24, 8)) * x[xb + k + 3u];
        acc += half_at(rb + 2u * (k / 32u)) * s;
    }
    return acc;
}
#elif defined(W_I8_ASYM)
// Groups of 64: f16 scale, f16 min per group; codes are u8; w = min + scale * q.
float w_elem(uint rb, uint k) {
    uint cb = rb + (p.cols / 64u) * 4u;
    vec2 sm = unpackHalf2x16(u32_at(rb + 4u * (k / 64u)));
    return sm.y + sm.x * float(byte_at(cb + k));
}
float row_dot(uint rb, uint xb, uint t, uint nt) {
    uint cb = rb + (p.cols / 64u) * 4u;
    float acc = 0.0;
    for (uint j = t; j < p.cols / 4u; j += nt) {
        uint c = u32_at(cb + 4u * j);
        uint k = 4u * j;
        vec4 xv = vec4(x[xb + k], x[xb + k + 1u], x[xb + k + 2u], x[xb + k + 3u]);
        vec4 q = vec4(c & 0xffu, (c >> 8u) & 0xffu, (c >> 16u) & 0xffu, c >> 24u);
        vec2 sm = unpackHalf2x16(u32_at(rb + 4u * (k / 64u)));
        acc += sm.x * dot(q, xv) + sm.y * (xv.x + xv.y + xv.z + xv.w);
    }
    return acc;
}
#elif defined(W_I4_GROUPED) || defined(W_I4_PER_CHANNEL)
// 4-bit codes in chunks of 64 elements / 32 bytes: byte j holds element j (low nibble) and
// j + 32 (high nibble). I4_GROUPED: f16 (scale, min) per group of 64; I4_PER_CHANNEL: one f32
// scale and f32 min per row. w = min + scale * q.
#if defined(W_I4_GROUPED)
uint codes_at(uint rb) { return rb + (p.cols / 64u) * 4u; }
vec2 params_of(uint rb, uint chunk) { return unpackHalf2x16(u32_at(rb + 4u * chunk)); }
#else
uint codes_at(uint rb) { return rb + 8u; }
vec2 params_of(uint rb, uint chunk) {
    return vec2(uintBitsToFloat(u32_at(rb)), uintBitsToFloat(u32_at(rb + 4u)));
}
#endif
float w_elem(uint rb, uint k) {
    uint b = byte_at(codes_at(rb) + (k / 64u) * 32u + (k % 32u));
    uint q = ((k % 64u) < 32u) ? (b & 15u) : (b >> 4u);
    vec2 sm = params_of(rb, k / 64u);
    return sm.y + sm.x * float(q);
}
float row_dot(uint rb, uint xb, uint t, uint nt) {
    uint cb = codes_at(rb);
    float acc = 0.0;
    for (uint j = t; j < p.cols / 8u; j += nt) {
        uint c = u32_at(cb + 4u * j);
        uint chunk = j / 8u;
        uint k = chunk * 64u + 4u * (j % 8u);
        vec4 xl = vec4(x[xb + k], x[xb + k + 1u], x[xb + k + 2u], x[xb + k + 3u]);
        vec4 xh = vec4(x[xb + k + 32u], x[xb + k + 33u], x[xb + k + 34u], x[xb + k + 35u]);
        vec4 ql = vec4(c & 15u, (c >> 8u) & 15u, (c >> 16u) & 15u, (c >> 24u) & 15u);
        vec4 qh = vec4((c >> 4u) & 15u, (c >> 12u) & 15u, (c >> 20u) & 15u, c >> 28u);
        vec2 sm = params_of(rb, chunk);
        acc += sm.x * (dot(ql, xl) + dot(qh, xh)) + sm.y * dot(xl + xh, vec4(1.0));
    }
    return acc;
}
#elif defined(W_I2_STRUCTURED)
// Super-blocks of 128, 12 bytes of params each: f16 d, f16 dmin, 8 bytes of (sc | m << 4) per
// sub-group of 16. Codes: chunks of 128 elements / 32 bytes; byte j holds elements j, j+32,
// j+64, j+96 in bits 0-1, 2-3, 4-5, 6-7. w = d*sc*q - dmin*m.
float w_elem(uint rb, uint k) {
    uint sb = k / 128u;
    uint i = k % 128u;
    uint cb = rb + (p.cols / 128u) * 12u;
    uint q = (byte_at(cb + sb * 32u + (i % 32u)) >> (2u * (i / 32u))) & 3u;
    vec2 dd = unpackHalf2x16(u32_at(rb + 12u * sb));
    uint s = byte_at(rb + 12u * sb + 4u + i / 16u);
    return dd.x * float(s & 15u) * float(q) - dd.y * float(s >> 4u);
}
float row_dot(uint rb, uint xb, uint t, uint nt) {
    uint cb = rb + (p.cols / 128u) * 12u;
    float acc = 0.0;
    for (uint j = t; j < p.cols / 16u; j += nt) {
        uint c = u32_at(cb + 4u * j);
        uint sb = j / 8u;
        uint wi = j % 8u;
        uint k = sb * 128u + 4u * wi;
        vec2 dd = unpackHalf2x16(u32_at(rb + 12u * sb));
        uint scales0 = u32_at(rb + 12u * sb + 4u);
        uint scales1 = u32_at(rb + 12u * sb + 8u);
        for (uint s = 0u; s < 4u; s++) {
            uint kk = k + 32u * s;
            vec4 xv = vec4(x[xb + kk], x[xb + kk + 1u], x[xb + kk + 2u], x[xb + kk + 3u]);
            uint sh = 2u * s;
            vec4 q = vec4((c >> sh) & 3u, (c >> (sh + 8u)) & 3u, (c >> (sh + 16u)) & 3u,
                          (c >> (sh + 24u)) & 3u);
            uint sg = wi / 4u + 2u * s;
            uint sc = ((sg < 4u ? scales0 : scales1) >> (8u * (sg % 4u))) & 0xffu;
            acc += dd.x * float(sc & 15u) * dot(q, xv) - dd.y * float(sc >> 4u) * dot(xv, vec4(1.0));
        }
    }
    return acc;
}
#else
#error "define one W_<format>"
#endif
