// Weight decoding, one definition per weight format, selected by a -D define from build.rs.
//
// Device row layout (the host repacks each stored row at load, mod.rs `repack_rows`): a row of a
// .mixq quant type is stored as formats/SPEC.md lays it out, `[params of every block][codes]`,
// with the params padded to a multiple of 16 bytes and the row padded to a multiple of 16 bytes
// (`p.stride`). Codes start at byte `p.codes_at` of the row (0 for F32/F16/BF16). So every row
// start and every code array is 16-byte aligned, and the decode kernel reads codes as `uvec4`
// (16-byte loads) whatever `cols` is; the padding costs < 2.5% on Gemma's shapes (0 on most).
//
// The weight buffer is bound as raw 32-bit words (`W`, binding 0; matvec.comp also binds it as
// `uvec4 w4[]`), so no 8/16-bit storage feature is needed.
//
// Each format defines:
//   float w_elem(uint rb, uint k)       element k of the row starting at byte rb (tiles, embed)
// and, when WEIGHTS_GRANULES is defined (matvec.comp):
//   EPG                                 elements per 16-byte granule of codes
//   void granule_x(uint g, out vec4 xv[EPG / 4])
//                                       the x values granule g multiplies (from `x4`)
//   float granule_dot(uint rb, uint g, vec4 xv[EPG / 4])
//                                       dot of granule g of the row at rb with xv
// w_elem needs `p.cols`, `p.codes_at` and `w[]` declared before inclusion.
//
// Weight words are read through WU(i) (32-bit word i) and WG(i) (16-byte granule i): `w[i]`
// and `w4[i]` unless the including shader defines them first (matvec.comp's fused variants
// read one of several bound weights: `wu[SEG].w[i]`).
#ifndef WU
#define WU(i) w[i]
#endif
#ifndef WG
#define WG(i) w4[i]
#endif

uint u16_at(uint a) {
    return (WU(a >> 2u) >> ((a & 2u) * 8u)) & 0xffffu;
}

uint byte_at(uint a) {
    return (WU(a >> 2u) >> ((a & 3u) * 8u)) & 0xffu;
}

float half_at(uint a) {
    return unpackHalf2x16(u16_at(a)).x;
}

// The signed bytes of a 32-bit word as floats.
vec4 i8x4(uint c) {
    ivec4 v = ivec4(int(c << 24u), int(c << 16u), int(c << 8u), int(c)) >> 24;
    return vec4(v);
}

vec4 u8x4(uint c) {
    return vec4(c & 0xffu, (c >> 8u) & 0xffu, (c >> 16u) & 0xffu, c >> 24u);
}


#if defined(WEIGHTS_GRANULES) && defined(Q8X)
// Int8 activations (matvec*_{w}_q8, quantize_x_f32.comp): x arrives as signed bytes per group
// of 32 with an f32 scale (XD) and f32 sums per 16 elements (XS); integer dot products of 4
// bytes (OpSDotKHR / OpSUDotKHR through GL_EXT_spirv_intrinsics: Debian's glslc lacks
// GL_EXT_integer_dot_product; DP4A on NVIDIA) replace the per-element int->float conversions
// that made the f32 path ALU-bound.
#extension GL_EXT_spirv_intrinsics : require
spirv_instruction(extensions = ["SPV_KHR_integer_dot_product"], capabilities = [6019, 6018], id = 4450)
int sdot4_(uint a, uint b, spirv_literal int fmt);
spirv_instruction(extensions = ["SPV_KHR_integer_dot_product"], capabilities = [6019, 6018], id = 4452)
int sudot4_(uint a, uint b, spirv_literal int fmt);
// signed bytes of a . signed bytes of b
#define SDOT(a, b) sdot4_(a, b, 0)
// signed bytes of a . unsigned bytes of b
#define SUDOT(a, b) sudot4_(a, b, 0)
#define XD(i) uintBitsToFloat(xq[p.cols / 4u + (i)])
#define XS(i) uintBitsToFloat(xq[p.cols / 4u + p.cols / 32u + (i)])
// Exact int -> float for |v| < 2^22 without a conversion instruction (quarter rate or less on
// NVIDIA): an integer add and a float subtract.
float i2f(int v) {
    return uintBitsToFloat(uint(v + 0x4B400000)) - 12582912.0;
}
#endif

#if defined(W_F32)
const uint EPG = 4u;
float w_elem(uint rb, uint k) {
    return uintBitsToFloat(WU((rb >> 2u) + k));
}
#ifdef WEIGHTS_GRANULES
void granule_x(uint g, out vec4 xv[1]) {
    xv[0] = x4[g];
}
float granule_dot(uint rb, uint g, vec4 xv[1]) {
    return dot(uintBitsToFloat(WG((rb >> 4u) + g)), xv[0]);
}
#endif

#elif defined(W_F16) || defined(W_BF16)
const uint EPG = 8u;
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
#ifdef WEIGHTS_GRANULES
void granule_x(uint g, out vec4 xv[2]) {
    xv[0] = x4[2u * g];
    xv[1] = x4[2u * g + 1u];
}
float granule_dot(uint rb, uint g, vec4 xv[2]) {
    uvec4 c = WG((rb >> 4u) + g);
    return dot(vec4(unpack2(c.x), unpack2(c.y)), xv[0])
         + dot(vec4(unpack2(c.z), unpack2(c.w)), xv[1]);
}
#endif

#elif defined(W_I8_SYM)
// Groups of 32: f16 scale per group; codes are i8; w = scale * q.
const uint EPG = 16u;
float w_elem(uint rb, uint k) {
    int q = int(byte_at(rb + p.codes_at + k) << 24u) >> 24;
    return half_at(rb + 2u * (k / 32u)) * float(q);
}
#ifdef WEIGHTS_GRANULES
void granule_x(uint g, out vec4 xv[4]) {
    for (uint i = 0u; i < 4u; i++) xv[i] = x4[4u * g + i];
}
float granule_dot(uint rb, uint g, vec4 xv[4]) {
    uvec4 c = WG(((rb + p.codes_at) >> 4u) + g);
    float s = dot(i8x4(c.x), xv[0]) + dot(i8x4(c.y), xv[1])
            + dot(i8x4(c.z), xv[2]) + dot(i8x4(c.w), xv[3]);
    return half_at(rb + 2u * (g / 2u)) * s;
}
#ifdef Q8X
struct XG { uvec4 q; float d; };
void granule_x(uint g, out XG xg) {
    xg.q = xq4[g];
    xg.d = XD(g / 2u);
}
float granule_dot(uint rb, uint g, XG xg) {
    uvec4 c = WG(((rb + p.codes_at) >> 4u) + g);
    int s = SDOT(xg.q.x, c.x) + SDOT(xg.q.y, c.y) + SDOT(xg.q.z, c.z) + SDOT(xg.q.w, c.w);
    return half_at(rb + 2u * (g / 2u)) * xg.d * i2f(s);
}
#endif
#endif

#elif defined(W_I8_ASYM)
// Groups of 64: f16 scale, f16 min per group; codes are u8; w = min + scale * q.
const uint EPG = 16u;
float w_elem(uint rb, uint k) {
    vec2 sm = unpackHalf2x16(WU((rb >> 2u) + k / 64u));
    // precise: no FMA contraction, so the value is bit-identical to the CPU's min + scale * q.
    precise float w = sm.y + sm.x * float(byte_at(rb + p.codes_at + k));
    return w;
}
#ifdef WEIGHTS_GRANULES
void granule_x(uint g, out vec4 xv[4]) {
    for (uint i = 0u; i < 4u; i++) xv[i] = x4[4u * g + i];
}
float granule_dot(uint rb, uint g, vec4 xv[4]) {
    uvec4 c = WG(((rb + p.codes_at) >> 4u) + g);
    vec2 sm = unpackHalf2x16(WU((rb >> 2u) + g / 4u));
    float s = dot(u8x4(c.x), xv[0]) + dot(u8x4(c.y), xv[1])
            + dot(u8x4(c.z), xv[2]) + dot(u8x4(c.w), xv[3]);
    vec4 xs = xv[0] + xv[1] + xv[2] + xv[3];
    return sm.x * s + sm.y * (xs.x + xs.y + xs.z + xs.w);
}
#ifdef Q8X
struct XG { uvec4 q; float d; float s; };
void granule_x(uint g, out XG xg) {
    xg.q = xq4[g];
    xg.d = XD(g / 2u);
    xg.s = XS(g);
}
float granule_dot(uint rb, uint g, XG xg) {
    uvec4 c = WG(((rb + p.codes_at) >> 4u) + g);
    vec2 sm = unpackHalf2x16(WU((rb >> 2u) + g / 4u));
    int s = SUDOT(xg.q.x, c.x) + SUDOT(xg.q.y, c.y) + SUDOT(xg.q.z, c.z) + SUDOT(xg.q.w, c.w);
    return sm.x * xg.d * i2f(s) + sm.y * xg.s;
}
#endif
#endif

#elif defined(W_I4_GROUPED) || defined(W_I4_PER_CHANNEL) || defined(W_I4_GROUPED32) \
    || defined(W_I4_GROUPED16)
// 4-bit codes in chunks of 64 elements / 32 bytes: byte j holds element j (low nibble) and
// j + 32 (high nibble). w = min + scale * q with: I4_GROUPED an f16 (scale, min) per group of
// 64; I4_GROUPED32 one per group of 32, so the low nibbles of chunk c are group 2c and the high
// nibbles group 2c + 1 (SPEC.md §6.9); I4_GROUPED16 one per group of 16 (each half of a nibble
// plane, so one granule's low and high nibbles are one group each); I4_PER_CHANNEL one f32
// scale and f32 min per row.
const uint EPG = 32u;
#if defined(W_I4_PER_CHANNEL)
vec2 params_of(uint rb, uint k) {
    return vec2(uintBitsToFloat(WU(rb >> 2u)), uintBitsToFloat(WU((rb >> 2u) + 1u)));
}
#else
#if defined(W_I4_GROUPED32)
const uint GROUP = 32u;
#elif defined(W_I4_GROUPED16)
const uint GROUP = 16u;
#else
const uint GROUP = 64u;
#endif
// (scale, min) of element k: one 32-bit word per group
vec2 params_of(uint rb, uint k) { return unpackHalf2x16(WU((rb >> 2u) + k / GROUP)); }
#endif
float w_elem(uint rb, uint k) {
    uint b = byte_at(rb + p.codes_at + (k / 64u) * 32u + (k % 32u));
    uint q = ((k % 64u) < 32u) ? (b & 15u) : (b >> 4u);
    vec2 sm = params_of(rb, k);
    precise float w = sm.y + sm.x * float(q);
    return w;
}
#ifdef WEIGHTS_GRANULES
// Granule g: bytes 16h..16h+15 of chunk g/2 (h = g%2): elements 64c+16h+(0..15) in the low
// nibbles, the same +32 in the high nibbles. k0: its first element.
uint granule_k0(uint g) { return (g / 2u) * 64u + (g % 2u) * 16u; }
void granule_x(uint g, out vec4 xv[8]) {
    uint k4 = granule_k0(g) / 4u; // in vec4 units
    for (uint i = 0u; i < 4u; i++) {
        xv[i] = x4[k4 + i];
        xv[4u + i] = x4[k4 + 8u + i];
    }
}
float granule_dot(uint rb, uint g, vec4 xv[8]) {
    uvec4 c = WG(((rb + p.codes_at) >> 4u) + g);
    uint k0 = granule_k0(g);
    // low and high nibbles' (scale, min): the same pair unless I4_GROUPED32 or I4_GROUPED16
    vec2 ml = params_of(rb, k0), mh = params_of(rb, k0 + 32u);
    float sl = 0.0, sh = 0.0;
    vec4 xl = vec4(0.0), xh = vec4(0.0);
    for (uint i = 0u; i < 4u; i++) {
        uint v = c[i];
        vec4 lo = vec4(v & 15u, (v >> 8u) & 15u, (v >> 16u) & 15u, (v >> 24u) & 15u);
        vec4 hi = vec4((v >> 4u) & 15u, (v >> 12u) & 15u, (v >> 20u) & 15u, v >> 28u);
        sl += dot(lo, xv[i]);
        sh += dot(hi, xv[4u + i]);
        xl += xv[i];
        xh += xv[4u + i];
    }
    return ml.x * sl + mh.x * sh + ml.y * (xl.x + xl.y + xl.z + xl.w)
         + mh.y * (xh.x + xh.y + xh.z + xh.w);
}
#ifdef Q8X
// lo: the low nibbles' 16 x values (group 2c of 32), hi: the high nibbles' (group 2c + 1);
// s: the sums of the 16 of each.
struct XG { uvec4 lo; uvec4 hi; vec2 d; vec2 s; };
void granule_x(uint g, out XG xg) {
    uint c = g / 2u, h = g % 2u;
    xg.lo = xq4[4u * c + h];
    xg.hi = xq4[4u * c + 2u + h];
    xg.d = vec2(XD(2u * c), XD(2u * c + 1u) * 0.0625);
    xg.s = vec2(XS(4u * c + h), XS(4u * c + 2u + h));
}
// The high nibbles are taken in place (c & 0xf0f0f0f0 = 16 q, still an unsigned byte), not
// shifted down: one integer op less per word on NVIDIA's half-rate integer pipe, which the
// 4-bit kernels keep busy; xg.d.y carries the exact 1/16 (granule_x).
float granule_dot(uint rb, uint g, XG xg) {
    uvec4 c = WG(((rb + p.codes_at) >> 4u) + g);
    const uint m = 0x0f0f0f0fu, mh = 0xf0f0f0f0u;
    int il = SUDOT(xg.lo.x, c.x & m) + SUDOT(xg.lo.y, c.y & m)
           + SUDOT(xg.lo.z, c.z & m) + SUDOT(xg.lo.w, c.w & m);
    int ih = SUDOT(xg.hi.x, c.x & mh) + SUDOT(xg.hi.y, c.y & mh)
           + SUDOT(xg.hi.z, c.z & mh) + SUDOT(xg.hi.w, c.w & mh);
    // |ih| <= 16 * 240 * 127: exact through i2f.
#if defined(W_I4_GROUPED32) || defined(W_I4_GROUPED16)
    // one (scale, min) per nibble plane: words 2c and 2c + 1 of the row's parameters (for
    // I4_GROUPED16 words 4c + h and 4c + 2 + h)
    uint k0 = granule_k0(g);
    vec2 ml = params_of(rb, k0), mh2 = params_of(rb, k0 + 32u);
    return ml.x * xg.d.x * i2f(il) + mh2.x * xg.d.y * i2f(ih) + ml.y * xg.s.x + mh2.y * xg.s.y;
#else
    vec2 sm = params_of(rb, granule_k0(g));
    return sm.x * (xg.d.x * i2f(il) + xg.d.y * i2f(ih)) + sm.y * (xg.s.x + xg.s.y);
#endif
}
#endif
#endif

#elif defined(W_I2_STRUCTURED)
// Super-blocks of 128, 12 bytes of params each: f16 d, f16 dmin, 8 bytes of (sc | m << 4) per
// sub-group of 16. Codes: chunks of 128 elements / 32 bytes; byte j holds elements j, j+32,
// j+64, j+96 in bits 0-1, 2-3, 4-5, 6-7. w = d*sc*q - dmin*m.
const uint EPG = 64u;
float w_elem(uint rb, uint k) {
    uint sb = k / 128u;
    uint i = k % 128u;
    uint q = (byte_at(rb + p.codes_at + sb * 32u + (i % 32u)) >> (2u * (i / 32u))) & 3u;
    vec2 dd = unpackHalf2x16(WU((rb + 12u * sb) >> 2u));
    uint s = byte_at(rb + 12u * sb + 4u + i / 16u);
    precise float w = dd.x * float(s & 15u) * float(q) - dd.y * float(s >> 4u);
    return w;
}
#ifdef WEIGHTS_GRANULES
// Granule g: bytes 16h..16h+15 of chunk g/2 (h = g%2); bit pair s of those bytes holds elements
// 128c + 32s + 16h + (0..15): sub-group 2s + h, one (sc, m) each.
void granule_x(uint g, out vec4 xv[16]) {
    uint k4 = (g / 2u) * 32u + (g % 2u) * 4u;
    for (uint s = 0u; s < 4u; s++) {
        for (uint i = 0u; i < 4u; i++) {
            xv[4u * s + i] = x4[k4 + 8u * s + i];
        }
    }
}
float granule_dot(uint rb, uint g, vec4 xv[16]) {
    uvec4 c = WG(((rb + p.codes_at) >> 4u) + g);
    uint sb = g / 2u, h = g % 2u;
    uint pw = (rb + 12u * sb) >> 2u;
    vec2 dd = unpackHalf2x16(WU(pw));
    uint s01 = WU(pw + 1u), s23 = WU(pw + 2u);
    float acc = 0.0;
    for (uint s = 0u; s < 4u; s++) {
        uint sh = 2u * s;
        float dq = 0.0;
        vec4 xs = vec4(0.0);
        for (uint i = 0u; i < 4u; i++) {
            uint v = c[i] >> sh;
            vec4 q = vec4(v & 3u, (v >> 8u) & 3u, (v >> 16u) & 3u, (v >> 24u) & 3u);
            dq += dot(q, xv[4u * s + i]);
            xs += xv[4u * s + i];
        }
        // sub-group 2s + h: byte (2s + h) of the 8 sc_m bytes
        uint sg = 2u * s + h;
        uint sc = ((sg < 4u ? s01 : s23) >> (8u * (sg % 4u))) & 0xffu;
        acc += dd.x * float(sc & 15u) * dq - dd.y * float(sc >> 4u) * (xs.x + xs.y + xs.z + xs.w);
    }
    return acc;
}
#ifdef Q8X
// Bit pair s of the granule: x group 4c + s (16 of its 32 values: half h), sums 8c + 2s + h.
struct XG { uvec4 q[4]; vec4 d; vec4 s; };
// xg.d[s] carries the exact 4^-s of the bit pair taken in place (granule_dot).
void granule_x(uint g, out XG xg) {
    uint c = g / 2u, h = g % 2u;
    for (uint s = 0u; s < 4u; s++) {
        xg.q[s] = xq4[8u * c + 2u * s + h];
        xg.d[s] = XD(4u * c + s) * (s == 0u ? 1.0 : s == 1u ? 0.25 : s == 2u ? 0.0625 : 0.015625);
        xg.s[s] = XS(8u * c + 2u * s + h);
    }
}
float granule_dot(uint rb, uint g, XG xg) {
    uvec4 c = WG(((rb + p.codes_at) >> 4u) + g);
    uint sb = g / 2u, h = g % 2u;
    uint pw = (rb + 12u * sb) >> 2u;
    vec2 dd = unpackHalf2x16(WU(pw));
    // (sc | m << 4) of sub-group 2s + h: byte h (s = 0) and 2 + h (s = 1) of word 1, the same
    // of word 2 for s = 2, 3.
    uint sa = WU(pw + 1u) >> (8u * h), sz = WU(pw + 2u) >> (8u * h);
    float ad = 0.0, am = 0.0;
    for (uint s = 0u; s < 4u; s++) {
        // Bit pair s in place: (c & m) holds 4^s q per byte (<= 192, still an unsigned
        // byte), so no shift per word (one integer op less on NVIDIA's half-rate integer
        // pipe, which this 2-bit kernel keeps busy); xg.d[s] carries the exact 4^-s.
        uint m = 0x03030303u << (2u * s);
        int is = SUDOT(xg.q[s].x, c.x & m) + SUDOT(xg.q[s].y, c.y & m)
               + SUDOT(xg.q[s].z, c.z & m) + SUDOT(xg.q[s].w, c.w & m);
        uint scm = ((s < 2u ? sa : sz) >> (16u * (s & 1u))) & 0xffu;
        // |is| <= 16 * 192 * 127, sc <= 15: both exact through i2f (|v| < 2^22), the
        // product in float.
        ad += xg.d[s] * (i2f(is) * i2f(int(scm & 15u)));
        am += xg.s[s] * i2f(int(scm >> 4u));
    }
    return dd.x * ad - dd.y * am;
}
#endif
#endif

#else
#error "define one W_<format>"
#endif
