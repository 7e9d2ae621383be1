//! Safety: the `unsafe fn`s take rows of the byte size their type and `x.len()` imply.
//!
//! Portable kernels: the fallback where no SIMD kernel applies, and the integer arithmetic the
//! SIMD kernels must reproduce (their integer sums are identical; only the f32 accumulation
//! order differs).

#![allow(clippy::missing_safety_doc)] // the contract is in the module doc

use super::{Decode, QAct, QDot};
use half::f16;
use mixq_format::quant::QType;

#[inline]
fn h(b: &[u8], o: usize) -> f32 {
    f16::from_le_bytes([b[o], b[o + 1]]).to_f32()
}

#[inline]
fn f(b: &[u8], o: usize) -> f32 {
    f32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// Dot product with 8 independent accumulators so the compiler keeps several lanes busy.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

pub unsafe fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
    let mut w = vec![0f32; x.len()];
    decode_f32(row, &mut w);
    dot(&w, x)
}

pub unsafe fn dot_bf16(row: &[u8], x: &[f32]) -> f32 {
    let mut w = vec![0f32; x.len()];
    decode_bf16(row, &mut w);
    dot(&w, x)
}

pub unsafe fn dot_f16(row: &[u8], x: &[f32]) -> f32 {
    let mut w = vec![0f32; x.len()];
    decode_f16(row, &mut w);
    dot(&w, x)
}

pub unsafe fn decode_f32(row: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(row.chunks_exact(4)) {
        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// bf16 is the top half of an f32: widening is a shift, exact.
pub unsafe fn decode_bf16(row: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(row.chunks_exact(2)) {
        *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
    }
}

pub unsafe fn decode_f16(row: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(row.chunks_exact(2)) {
        *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
    }
}

unsafe fn decode_quant(q: QType, row: &[u8], out: &mut [f32]) {
    mixq_format::quant::dequantize_row(q, row, out).expect("row size validated at load")
}

pub fn decode(q: QType) -> Decode {
    match q {
        QType::F32 => decode_f32,
        QType::BF16 => decode_bf16,
        QType::F16 => decode_f16,
        QType::I8Sym => |r, o| unsafe { decode_quant(QType::I8Sym, r, o) },
        QType::I8Asym => |r, o| unsafe { decode_quant(QType::I8Asym, r, o) },
        QType::I4Grouped => |r, o| unsafe { decode_quant(QType::I4Grouped, r, o) },
        QType::I4PerChannel => |r, o| unsafe { decode_quant(QType::I4PerChannel, r, o) },
        QType::I2Structured => |r, o| unsafe { decode_quant(QType::I2Structured, r, o) },
        QType::I4Grouped32 => |r, o| unsafe { decode_quant(QType::I4Grouped32, r, o) },
        QType::I4Grouped16 => |r, o| unsafe { decode_quant(QType::I4Grouped16, r, o) },
    }
}

pub fn q_dot(q: QType) -> QDot {
    match q {
        QType::I8Sym => q_i8sym,
        QType::I8Asym => q_i8asym,
        QType::I4Grouped => q_i4g,
        QType::I4PerChannel => q_i4pc,
        QType::I2Structured => q_i2,
        QType::I4Grouped32 => q_i4g32,
        QType::I4Grouped16 => q_i4g16,
        _ => unreachable!("float types have no integer kernel"),
    }
}

/// (codes of token t, first block index of token t)
#[inline]
fn act(a: &QAct, t: usize) -> (&[i8], usize) {
    (&a.q[t * a.cols..(t + 1) * a.cols], t * a.cols / a.blk)
}

/// I8_SYM: groups of 32, `w = s * q` (q signed): `sum_g s_g d_g sum(q w)`.
pub unsafe fn q_i8sym(row: &[u8], a: &QAct, t: usize) -> f32 {
    let (x, b0) = act(a, t);
    let g = a.cols / 32;
    let codes = &row[2 * g..];
    let mut acc = 0f32;
    for i in 0..g {
        let s: i32 = (0..32)
            .map(|j| codes[32 * i + j] as i8 as i32 * x[32 * i + j] as i32)
            .sum();
        acc += h(row, 2 * i) * a.d[b0 + i] * s as f32;
    }
    acc
}

/// Groups of `n` (= the activation block) with f16 (scale, min) and codes `code(row, k)`:
/// `s d sum(q c) + m dsum`.
#[inline]
unsafe fn q_asym(
    row: &[u8],
    a: &QAct,
    t: usize,
    n: usize,
    code: impl Fn(&[u8], usize) -> i32,
) -> f32 {
    let (x, b0) = act(a, t);
    let g = a.cols / n;
    let (mut acc, mut accm) = (0f32, 0f32);
    for i in 0..g {
        let s: i32 = (0..n)
            .map(|j| code(row, n * i + j) * x[n * i + j] as i32)
            .sum();
        acc += h(row, 4 * i) * a.d[b0 + i] * s as f32;
        accm += h(row, 4 * i + 2) * a.dsum[b0 + i];
    }
    acc + accm
}

pub unsafe fn q_i8asym(row: &[u8], a: &QAct, t: usize) -> f32 {
    let p = 4 * a.cols / 64;
    q_asym(row, a, t, 64, |r, k| r[p + k] as i32)
}

/// 4-bit code `k` of a codes region: chunk of 64 in 32 bytes, low nibble j, high nibble j+32.
#[inline]
fn nib(codes: &[u8], k: usize) -> i32 {
    ((codes[k / 64 * 32 + k % 32] >> (4 * ((k % 64) / 32))) & 15) as i32
}

pub unsafe fn q_i4g(row: &[u8], a: &QAct, t: usize) -> f32 {
    let p = 4 * a.cols / 64;
    q_asym(row, a, t, 64, |r, k| nib(&r[p..], k))
}

/// I4_GROUPED32: the same nibbles, one (scale, min) per 32 (activation blocks of 32).
pub unsafe fn q_i4g32(row: &[u8], a: &QAct, t: usize) -> f32 {
    let p = 4 * a.cols / 32;
    q_asym(row, a, t, 32, |r, k| nib(&r[p..], k))
}

/// I4_GROUPED16: the same nibbles, one (scale, min) per 16, activation blocks of 32 (two
/// groups share a block's scale): `d_b sum_g s_g sum16(q c) + d_b sum_g m_g sum16(q)`.
pub unsafe fn q_i4g16(row: &[u8], a: &QAct, t: usize) -> f32 {
    let (x, b0) = act(a, t);
    let p = 4 * a.cols / 16;
    let groups = a.cols / 16;
    let s16 = &a.s16[t * groups..(t + 1) * groups];
    let mut acc = 0f32;
    for (g, &sum) in s16.iter().enumerate() {
        let s: i32 = (16 * g..16 * g + 16)
            .map(|k| nib(&row[p..], k) * x[k] as i32)
            .sum();
        let dx = a.d[b0 + g / 2];
        acc += h(row, 4 * g) * dx * s as f32 + h(row, 4 * g + 2) * dx * sum as f32;
    }
    acc
}

/// I4_PER_CHANNEL: one f32 (scale, min) per row: `scale sum_b d_b sum(q c) + min tot`.
pub unsafe fn q_i4pc(row: &[u8], a: &QAct, t: usize) -> f32 {
    let (x, b0) = act(a, t);
    let codes = &row[8..];
    let mut acc = 0f32;
    for b in 0..a.cols / a.blk {
        let s: i32 = (b * a.blk..(b + 1) * a.blk)
            .map(|k| nib(codes, k) * x[k] as i32)
            .sum();
        acc += a.d[b0 + b] * s as f32;
    }
    f(row, 0) * acc + f(row, 4) * a.tot[t]
}

/// I2_STRUCTURED super-blocks of 128 (activation blocks of 128 too):
/// `d dx sum_s sc_s sum16(q c) - dmin dx sum_s m_s sum16(q)`.
pub unsafe fn q_i2(row: &[u8], a: &QAct, t: usize) -> f32 {
    let (x, b0) = act(a, t);
    let nsb = a.cols / 128;
    let codes = &row[12 * nsb..];
    let s16 = &a.s16[t * a.cols / 16..];
    let mut acc = 0f32;
    for sb in 0..nsb {
        let p = &row[12 * sb..12 * sb + 12];
        let (mut si, mut sm) = (0i32, 0i32);
        for s in 0..8 {
            let (sc, m) = ((p[4 + s] & 15) as i32, (p[4 + s] >> 4) as i32);
            let mut d = 0i32;
            for j in 0..16 {
                let k = 16 * s + j;
                let c = (codes[32 * sb + k % 32] >> (2 * (k / 32))) & 3;
                d += c as i32 * x[128 * sb + k] as i32;
            }
            si += sc * d;
            sm += m * s16[8 * sb + s] as i32;
        }
        let dx = a.d[b0 + sb];
        acc += h(p, 0) * dx * si as f32 - h(p, 2) * dx * sm as f32;
    }
    acc
}
