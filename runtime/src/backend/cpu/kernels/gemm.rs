//! Prefill GEMM for quantized weights against int8 activations (AVX-512 VNNI on zmm).
//!
//! The row kernels ([`super::QDot`]) redo the weight unpacking and the per-group float work for
//! every (row, token) pair, and each `vpdpbusd` lane sums 4 elements of *one* row, so a group's
//! 16 lanes must be scaled before they can be summed: a float multiply-add per 64 MACs.
//! Here a tile of [`TILE`] = 16 rows is unpacked once into u8 codes laid out *row-interleaved*,
//! `[cols / 4][16 rows][4 elements]`, so one zmm holds 4 consecutive elements of 16 rows and
//! `vpdpbusd` against 4 activation bytes broadcast to every lane accumulates 16 row sums at
//! once. The per-group scale then costs 4 vector ops per 16 rows x 64 elements (1024 MACs),
//! and each unpacked tile serves every token of the batch ([`TB`] tokens per register block).
//!
//! Every type reduces to `w = S * u + M` with unsigned codes `u`, per activation block `g`:
//! `sum_k w x = S_g d_g sum(u q) + M_g dsum_g` (`d`, `dsum` from [`QAct`]):
//! - I8_ASYM, I4_GROUPED, I4_GROUPED32: `S`, `M` are the group's scale and min (I4_GROUPED32:
//!   activation blocks of 32, one per nibble plane of a 64-element chunk).
//! - I4_GROUPED16: the same per group of 16, two groups per activation block of 32, so the
//!   mins' `dsum` is `d_b sum16(q)` from [`QAct::s16`].
//! - I4_PER_CHANNEL: the row's scale and min in every group.
//! - I8_SYM: `u = c + 128`, `M = -128 S`.
//! - I2_STRUCTURED: the 4-bit sub-scale is folded into the code (`u = q sc <= 45`), `S = d`,
//!   and the sub-group mins, `-dmin sum_s m_s sum16(q)`, come from a `vpdpwssd` of the mins
//!   against the activation sums per 16 ([`QAct::s16`]).
//!
//! The integer sums are the scalar kernels' exactly; only the f32 accumulation order differs.

#![allow(clippy::missing_safety_doc)] // callers check the ISA (Isa::Avx512Vnni) and shapes
#![allow(clippy::needless_range_loop)] // register arrays indexed by token / row, as in the math

use super::QAct;
use half::f16;
use mixq_format::quant::QType;
use std::arch::x86_64::*;

/// Rows per tile: one zmm of i32 / f32 lanes.
pub const TILE: usize = 16;
/// Tokens per register block: 8 i32 and 8 f32 accumulators, each unpacked load feeds 8 dots.
const TB: usize = 8;

/// One tile of up to [`TILE`] rows of one weight, unpacked (reused across tiles by a thread).
pub struct Tile {
    qtype: QType,
    cols: usize,
    blk: usize,
    /// Elements per `(S, M)`: the activation block, or 16 for I4_GROUPED16.
    grp: usize,
    /// u8 codes, `[cols / 4][TILE][4]`; rows past the weight's end are zero.
    codes: Vec<u8>,
    /// Per group of `grp`: `TILE` scales `S`, then `TILE` offsets `M` (I2: `-dmin`).
    sm: Vec<f32>,
    /// I2 only, per super-block: sub-group mins in pairs, `[4][TILE][2]` i16 (the `vpdpwssd`
    /// layout: lane r holds `(m_2p, m_2p+1)` of row r).
    m16: Vec<i16>,
    /// Scratch: the unpacked codes of the tile's rows, row-major `[TILE][cols]`.
    rows: Vec<u8>,
}

fn h(b: &[u8], o: usize) -> f32 {
    f16::from_le_bytes([b[o], b[o + 1]]).to_f32()
}

fn f(b: &[u8], o: usize) -> f32 {
    f32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

impl Tile {
    pub fn new(qtype: QType, cols: usize) -> Tile {
        let blk = super::act_block(qtype);
        let grp = if qtype == QType::I4Grouped16 { 16 } else { blk };
        let groups = cols / grp;
        Tile {
            qtype,
            cols,
            blk,
            grp,
            codes: vec![0; cols * TILE],
            sm: vec![0.0; groups * 2 * TILE],
            m16: if qtype == QType::I2Structured {
                vec![0; groups * 8 * TILE]
            } else {
                Vec::new()
            },
            rows: vec![0; TILE * cols],
        }
    }

    /// Whether this scratch tile serves weights of type `q` and width `cols`.
    pub fn fits(&self, q: QType, cols: usize) -> bool {
        self.qtype == q && self.cols == cols
    }

    /// Unpacks `rows` (at most [`TILE`], each a stored row of this type and width).
    pub fn pack<'r>(&mut self, rows: impl ExactSizeIterator<Item = &'r [u8]>) {
        assert!(rows.len() <= TILE);
        // Lanes past `rows.len()` keep stale values: lanes never mix, and their outputs are
        // not stored.
        for (r, row) in rows.enumerate() {
            self.unpack_row(r, row);
        }
        // SAFETY: callers of this module run on AVX-512 (module doc).
        unsafe { self.interleave() };
    }

    /// `rows` `[row][k]` -> `codes` `[k / 4][row][k % 4]`: a 16 x 16 transpose of dwords per
    /// 64 columns.
    #[target_feature(enable = "avx512f")]
    unsafe fn interleave(&mut self) {
        let cols = self.cols;
        let full = cols / 64 * 64;
        for c in (0..full).step_by(64) {
            let mut v = [_mm512_setzero_si512(); TILE];
            for (r, x) in v.iter_mut().enumerate() {
                *x = _mm512_loadu_si512(self.rows.as_ptr().add(r * cols + c) as *const _);
            }
            transpose16(&mut v);
            for (k, x) in v.iter().enumerate() {
                _mm512_storeu_si512(self.codes.as_mut_ptr().add(c * TILE + k * 64) as *mut _, *x);
            }
        }
        for k4 in full / 4..cols / 4 {
            for r in 0..TILE {
                let (o, i) = ((k4 * TILE + r) * 4, r * cols + 4 * k4);
                self.codes[o..o + 4].copy_from_slice(&self.rows[i..i + 4]);
            }
        }
    }

    /// Codes of one row into row `r` of `self.rows`, its parameters into lane `r` of `sm` /
    /// `m16`.
    fn unpack_row(&mut self, r: usize, row: &[u8]) {
        let cols = self.cols;
        let groups = cols / self.grp;
        let (sm, out) = (&mut self.sm, &mut self.rows[r * cols..(r + 1) * cols]);
        let mut set = |g: usize, s: f32, m: f32| {
            sm[g * 2 * TILE + r] = s;
            sm[(g * 2 + 1) * TILE + r] = m;
        };
        match self.qtype {
            QType::I8Asym => {
                // SAFETY: AVX-512 (module doc); the row holds 2 * groups f16 parameters.
                unsafe { pairs_f16(row, groups, &mut set) };
                out.copy_from_slice(&row[4 * groups..4 * groups + cols]);
            }
            QType::I8Sym => {
                for g in 0..groups {
                    let s = h(row, 2 * g);
                    set(g, s, -128.0 * s);
                }
                for (o, &c) in out.iter_mut().zip(&row[2 * groups..]) {
                    *o = c ^ 0x80;
                }
            }
            QType::I4Grouped | QType::I4PerChannel | QType::I4Grouped32 | QType::I4Grouped16 => {
                let (p, per_row) = match self.qtype {
                    QType::I4PerChannel => (8, Some((f(row, 0), f(row, 4)))),
                    _ => (4 * groups, None),
                };
                match per_row {
                    Some((s, m)) => (0..groups).for_each(|g| set(g, s, m)),
                    // SAFETY: as above.
                    None => unsafe { pairs_f16(row, groups, &mut set) },
                }
                // SAFETY: AVX-512 (module doc); cols / 2 code bytes, cols output bytes.
                unsafe { nibbles(&row[p..p + cols / 2], out) };
            }
            QType::I2Structured => {
                let codes = &row[12 * groups..];
                for sb in 0..groups {
                    let p = &row[12 * sb..12 * sb + 12];
                    set(sb, h(p, 0), -h(p, 2));
                    for s in 0..8 {
                        let m = p[4 + s] >> 4;
                        self.m16[((sb * 4 + s / 2) * TILE + r) * 2 + s % 2] = m as i16;
                    }
                    // SAFETY: AVX-512 (module doc); 32 code bytes, 128 output bytes.
                    unsafe {
                        crumbs(
                            &codes[32 * sb..32 * sb + 32],
                            &p[4..12],
                            &mut out[128 * sb..128 * sb + 128],
                        )
                    };
                }
            }
            q => unreachable!("{} has no integer GEMM", q.name()),
        }
    }
}

/// A row's interleaved f16 `(scale, min)` pairs of `groups` groups, 8 groups per conversion.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn pairs_f16(row: &[u8], groups: usize, set: &mut impl FnMut(usize, f32, f32)) {
    debug_assert!(row.len() >= 4 * groups);
    let mut buf = [0f32; 16];
    for g0 in (0..groups).step_by(8) {
        let m = (groups - g0).min(8);
        let mask: __mmask16 = ((1u32 << (2 * m)) - 1) as u16;
        let v = _mm256_maskz_loadu_epi16(mask, row.as_ptr().add(4 * g0) as *const i16);
        _mm512_storeu_ps(buf.as_mut_ptr(), _mm512_cvtph_ps(v));
        for j in 0..m {
            set(g0 + j, buf[2 * j], buf[2 * j + 1]);
        }
    }
}

/// 4-bit chunks (32 bytes: element j low nibble, j + 32 high nibble) to one byte per code.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn nibbles(codes: &[u8], out: &mut [u8]) {
    debug_assert!(out.len() == 2 * codes.len() && codes.len().is_multiple_of(32));
    let sh = _mm512_inserti64x4::<1>(_mm512_setzero_si512(), _mm256_set1_epi16(4));
    let m15 = _mm512_set1_epi8(15);
    for (i, c) in codes.chunks_exact(32).enumerate() {
        let v = _mm512_broadcast_i64x4(_mm256_loadu_si256(c.as_ptr() as *const __m256i));
        let q = _mm512_and_si512(_mm512_srlv_epi16(v, sh), m15);
        _mm512_storeu_si512(out.as_mut_ptr().add(64 * i) as *mut _, q);
    }
}

/// One I2 super-block: 32 code bytes (elements j, j+32, j+64, j+96 in bit pairs) to 128 bytes
/// `q * sc`, the 4-bit sub-scale of each 16 elements applied by a byte shuffle of the table
/// `[0, sc, 2 sc, 3 sc]` (one table per 128-bit lane = one sub-group).
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn crumbs(codes: &[u8], sc_m: &[u8], out: &mut [u8]) {
    debug_assert!(codes.len() == 32 && sc_m.len() == 8 && out.len() == 128);
    let v = _mm256_loadu_si256(codes.as_ptr() as *const __m256i);
    let m3 = _mm256_set1_epi8(3);
    let tbl = |s: u8| -> i32 {
        let s = (s & 15) as i32;
        s << 8 | (2 * s) << 16 | (3 * s) << 24
    };
    for k in 0..4 {
        let q = _mm256_and_si256(_mm256_srlv_epi16(v, _mm256_set1_epi16(2 * k as i16)), m3);
        let t = _mm256_setr_epi32(tbl(sc_m[2 * k]), 0, 0, 0, tbl(sc_m[2 * k + 1]), 0, 0, 0);
        let y = _mm256_shuffle_epi8(t, q);
        _mm256_storeu_si256(out.as_mut_ptr().add(32 * k) as *mut __m256i, y);
    }
}

/// Transposes 16 x 16 dwords in place (`v[r]` lane `k` becomes `v[k]` lane `r`): 32- and
/// 64-bit interleaves within 128-bit lanes, then two rounds of 128-bit lane shuffles.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(v: &mut [__m512i; TILE]) {
    let mut t = [_mm512_setzero_si512(); TILE];
    for p in 0..8 {
        t[2 * p] = _mm512_unpacklo_epi32(v[2 * p], v[2 * p + 1]);
        t[2 * p + 1] = _mm512_unpackhi_epi32(v[2 * p], v[2 * p + 1]);
    }
    // u[4q + j], lane L: rows 4q..4q + 3 of column 4L + j
    let mut u = [_mm512_setzero_si512(); TILE];
    for q in 0..4 {
        let (a, b, c, d) = (t[4 * q], t[4 * q + 1], t[4 * q + 2], t[4 * q + 3]);
        u[4 * q] = _mm512_unpacklo_epi64(a, c);
        u[4 * q + 1] = _mm512_unpackhi_epi64(a, c);
        u[4 * q + 2] = _mm512_unpacklo_epi64(b, d);
        u[4 * q + 3] = _mm512_unpackhi_epi64(b, d);
    }
    for j in 0..4 {
        let lo0 = _mm512_shuffle_i32x4::<0x44>(u[j], u[4 + j]);
        let hi0 = _mm512_shuffle_i32x4::<0xEE>(u[j], u[4 + j]);
        let lo1 = _mm512_shuffle_i32x4::<0x44>(u[8 + j], u[12 + j]);
        let hi1 = _mm512_shuffle_i32x4::<0xEE>(u[8 + j], u[12 + j]);
        v[j] = _mm512_shuffle_i32x4::<0x88>(lo0, lo1);
        v[4 + j] = _mm512_shuffle_i32x4::<0xDD>(lo0, lo1);
        v[8 + j] = _mm512_shuffle_i32x4::<0x88>(hi0, hi1);
        v[12 + j] = _mm512_shuffle_i32x4::<0xDD>(hi0, hi1);
    }
}

/// `out[t * ld + i] = sum_k w[i, k] x[t, k]` for the tile's `nr` rows and tokens `0..n` of `a`
/// (quantized with this type's block).
pub unsafe fn gemm_tile(tile: &Tile, nr: usize, a: &QAct, n: usize, out: *mut f32, ld: usize) {
    debug_assert!(a.blk == tile.blk && a.cols == tile.cols && nr <= TILE);
    let mut t0 = 0;
    while t0 < n {
        let m = (n - t0).min(TB);
        let o = out.add(t0 * ld);
        match m {
            8 => block::<8>(tile, nr, a, t0, o, ld),
            7 => block::<7>(tile, nr, a, t0, o, ld),
            6 => block::<6>(tile, nr, a, t0, o, ld),
            5 => block::<5>(tile, nr, a, t0, o, ld),
            4 => block::<4>(tile, nr, a, t0, o, ld),
            3 => block::<3>(tile, nr, a, t0, o, ld),
            2 => block::<2>(tile, nr, a, t0, o, ld),
            _ => block::<1>(tile, nr, a, t0, o, ld),
        }
        t0 += m;
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn block<const T: usize>(
    tile: &Tile,
    nr: usize,
    a: &QAct,
    t0: usize,
    out: *mut f32,
    ld: usize,
) {
    let acc = if tile.qtype == QType::I2Structured {
        block_i2::<T>(tile, a, t0)
    } else {
        block_affine::<T>(tile, a, t0)
    };
    let mask: __mmask16 = if nr >= TILE { !0 } else { (1u16 << nr) - 1 };
    for (t, v) in acc.iter().enumerate() {
        _mm512_mask_storeu_ps(out.add(t * ld), mask, *v);
    }
}

/// Integer sums of one activation block for `T` tokens: `B / 4` steps of one unpacked zmm
/// against 4 broadcast activation bytes per token.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn isums<const T: usize>(w: *const u8, steps: usize, x: [*const u8; T]) -> [__m512i; T] {
    let mut acc = [_mm512_setzero_si512(); T];
    for kk in 0..steps {
        let wv = _mm512_loadu_si512(w.add(kk * 64) as *const _);
        for t in 0..T {
            let xv = _mm512_set1_epi32(std::ptr::read_unaligned(x[t].add(4 * kk) as *const i32));
            acc[t] = _mm512_dpbusd_epi32(acc[t], wv, xv);
        }
    }
    acc
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn block_affine<const T: usize>(tile: &Tile, a: &QAct, t0: usize) -> [__m512; T] {
    let (cols, blk, grp) = (tile.cols, tile.blk, tile.grp);
    let (groups, blocks) = (cols / grp, cols / blk);
    if grp != blk {
        // groups of 16, two per activation block
        return block_pairs::<T>(tile, a, t0);
    }
    let xq = a.q.as_ptr() as *const u8;
    let mut facc = [_mm512_setzero_ps(); T];
    // one (S, M) per activation block from here on
    for g in 0..groups {
        let x: [*const u8; T] = std::array::from_fn(|t| xq.add((t0 + t) * cols + g * grp));
        let acc = isums::<T>(tile.codes.as_ptr().add(g * grp * TILE), grp / 4, x);
        let sm = tile.sm.as_ptr().add(g * 2 * TILE);
        let (s, m) = (_mm512_loadu_ps(sm), _mm512_loadu_ps(sm.add(TILE)));
        for t in 0..T {
            let b = (t0 + t) * blocks + g;
            let (d, ds) = (*a.d.get_unchecked(b), *a.dsum.get_unchecked(b));
            let y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[t]), s);
            facc[t] = _mm512_fmadd_ps(y, _mm512_set1_ps(d), facc[t]);
            facc[t] = _mm512_fmadd_ps(m, _mm512_set1_ps(ds), facc[t]);
        }
    }
    facc
}

/// [`block_affine`] for groups of 16 (I4_GROUPED16), two per activation block of 32: both
/// groups' terms share the block's `d`, so they are summed first, `d (S0 s0 + S1 s1 + M0 q0 +
/// M1 q1)` with `q` the codes' sums per 16, and `d` is applied once per block instead of the
/// scale and min once per group (7 vector ops per 16 rows x 32 elements instead of 8, and 3
/// broadcasts instead of 4).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn block_pairs<const T: usize>(tile: &Tile, a: &QAct, t0: usize) -> [__m512; T] {
    let (cols, blk) = (tile.cols, tile.blk);
    let blocks = cols / blk;
    let xq = a.q.as_ptr() as *const u8;
    let mut facc = [_mm512_setzero_ps(); T];
    for b in 0..blocks {
        let x: [*const u8; T] = std::array::from_fn(|t| xq.add((t0 + t) * cols + b * blk));
        let codes = tile.codes.as_ptr().add(b * blk * TILE);
        let acc0 = isums::<T>(codes, 4, x);
        let acc1 = isums::<T>(codes.add(16 * TILE), 4, x.map(|p| p.add(16)));
        let sm = tile.sm.as_ptr().add(2 * b * 2 * TILE);
        let (s0, m0) = (_mm512_loadu_ps(sm), _mm512_loadu_ps(sm.add(TILE)));
        let (s1, m1) = (
            _mm512_loadu_ps(sm.add(2 * TILE)),
            _mm512_loadu_ps(sm.add(3 * TILE)),
        );
        for t in 0..T {
            let d = *a.d.get_unchecked((t0 + t) * blocks + b);
            let q = a.s16.as_ptr().add((t0 + t) * cols / 16 + 2 * b);
            let mut y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc0[t]), s0);
            y = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc1[t]), s1, y);
            y = _mm512_fmadd_ps(m0, _mm512_set1_ps(*q as f32), y);
            y = _mm512_fmadd_ps(m1, _mm512_set1_ps(*q.add(1) as f32), y);
            facc[t] = _mm512_fmadd_ps(y, _mm512_set1_ps(d), facc[t]);
        }
    }
    facc
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn block_i2<const T: usize>(tile: &Tile, a: &QAct, t0: usize) -> [__m512; T] {
    let cols = tile.cols;
    let nsb = cols / 128;
    let xq = a.q.as_ptr() as *const u8;
    let s16 = a.s16.as_ptr();
    let mut facc = [_mm512_setzero_ps(); T];
    for sb in 0..nsb {
        let x: [*const u8; T] = std::array::from_fn(|t| xq.add((t0 + t) * cols + sb * 128));
        let acc = isums::<T>(tile.codes.as_ptr().add(sb * 128 * TILE), 32, x);
        // sum_s m_s sum16(q) per row, as i32 (|.| <= 8 * 15 * 16 * 127)
        let mut mins = [_mm512_setzero_si512(); T];
        for p in 0..4 {
            let mv = _mm512_loadu_si512(tile.m16.as_ptr().add((sb * 4 + p) * TILE * 2) as *const _);
            for t in 0..T {
                let sv = std::ptr::read_unaligned(
                    s16.add((t0 + t) * cols / 16 + 8 * sb + 2 * p) as *const i32
                );
                mins[t] = _mm512_dpwssd_epi32(mins[t], mv, _mm512_set1_epi32(sv));
            }
        }
        let sm = tile.sm.as_ptr().add(sb * 2 * TILE);
        let (s, m) = (_mm512_loadu_ps(sm), _mm512_loadu_ps(sm.add(TILE)));
        for t in 0..T {
            let y = _mm512_fmadd_ps(
                _mm512_cvtepi32_ps(mins[t]),
                m,
                _mm512_mul_ps(_mm512_cvtepi32_ps(acc[t]), s),
            );
            let dx = *a.d.get_unchecked((t0 + t) * nsb + sb);
            facc[t] = _mm512_fmadd_ps(y, _mm512_set1_ps(dx), facc[t]);
        }
    }
    facc
}

/// One tile of up to [`TILE`] rows of a float weight (F32 / F16 / BF16), widened to f32 and
/// interleaved `[cols][TILE]`: one zmm is one column of 16 rows, and an FMA against one
/// activation broadcast to every lane is 16 MACs. The activations stay f32.
pub struct FTile {
    qtype: QType,
    cols: usize,
    /// `[cols][TILE]` f32.
    w: Vec<f32>,
    /// Scratch: the tile's rows widened, `[TILE][cols]`.
    rows: Vec<f32>,
}

impl FTile {
    pub fn new(qtype: QType, cols: usize) -> FTile {
        FTile {
            qtype,
            cols,
            w: vec![0.0; cols * TILE],
            rows: vec![0.0; cols * TILE],
        }
    }

    pub fn fits(&self, q: QType, cols: usize) -> bool {
        self.qtype == q && self.cols == cols
    }

    /// Widens and interleaves `rows` (at most [`TILE`] stored rows of this type and width).
    pub fn pack<'r>(&mut self, rows: impl ExactSizeIterator<Item = &'r [u8]>) {
        assert!(rows.len() <= TILE);
        let (cols, dec) = (self.cols, super::decode(super::Isa::Avx512Vnni, self.qtype));
        for (r, row) in rows.enumerate() {
            // SAFETY: AVX-512 implies the AVX2 decoders' features; the row holds `cols` values.
            unsafe { dec(row, &mut self.rows[r * cols..(r + 1) * cols]) };
        }
        // SAFETY: callers of this module run on AVX-512 (module doc).
        unsafe { self.interleave() };
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn interleave(&mut self) {
        let cols = self.cols;
        let full = cols / 16 * 16;
        for c in (0..full).step_by(16) {
            let mut v = [_mm512_setzero_si512(); TILE];
            for (r, x) in v.iter_mut().enumerate() {
                *x = _mm512_castps_si512(_mm512_loadu_ps(self.rows.as_ptr().add(r * cols + c)));
            }
            transpose16(&mut v);
            for (k, x) in v.iter().enumerate() {
                _mm512_storeu_ps(
                    self.w.as_mut_ptr().add((c + k) * TILE),
                    _mm512_castsi512_ps(*x),
                );
            }
        }
        for k in full..cols {
            for r in 0..TILE {
                self.w[k * TILE + r] = self.rows[r * cols + k];
            }
        }
    }
}

/// `out[t * ld + i] = sum_k w[i, k] x[t * cols + k]` for the tile's `nr` rows, tokens `0..n`.
pub unsafe fn fgemm_tile(tile: &FTile, nr: usize, x: &[f32], n: usize, out: *mut f32, ld: usize) {
    debug_assert!(x.len() >= n * tile.cols && nr <= TILE);
    let mut t0 = 0;
    while t0 < n {
        let m = (n - t0).min(TB);
        let o = out.add(t0 * ld);
        match m {
            8 => fblock::<8>(tile, nr, x, t0, o, ld),
            7 => fblock::<7>(tile, nr, x, t0, o, ld),
            6 => fblock::<6>(tile, nr, x, t0, o, ld),
            5 => fblock::<5>(tile, nr, x, t0, o, ld),
            4 => fblock::<4>(tile, nr, x, t0, o, ld),
            3 => fblock::<3>(tile, nr, x, t0, o, ld),
            2 => fblock::<2>(tile, nr, x, t0, o, ld),
            _ => fblock::<1>(tile, nr, x, t0, o, ld),
        }
        t0 += m;
    }
}

#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn fblock<const T: usize>(
    tile: &FTile,
    nr: usize,
    x: &[f32],
    t0: usize,
    out: *mut f32,
    ld: usize,
) {
    let cols = tile.cols;
    let xs: [*const f32; T] = std::array::from_fn(|t| x.as_ptr().add((t0 + t) * cols));
    let w = tile.w.as_ptr();
    let mut acc = [_mm512_setzero_ps(); T];
    for k in 0..cols {
        let wv = _mm512_loadu_ps(w.add(k * TILE));
        for t in 0..T {
            acc[t] = _mm512_fmadd_ps(wv, _mm512_set1_ps(*xs[t].add(k)), acc[t]);
        }
    }
    let mask: __mmask16 = if nr >= TILE { !0 } else { (1u16 << nr) - 1 };
    for (t, v) in acc.iter().enumerate() {
        _mm512_mask_storeu_ps(out.add(t * ld), mask, *v);
    }
}
