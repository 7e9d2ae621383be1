//! Parameters of one parameter block, and the importance-weighted fit that chooses them.
//!
//! The fit minimises `sum_i imp_i * (w_i - deq(quant(w_i)))^2` over a small grid of candidate
//! scales, each refined by a weighted least-squares solve for (scale, min) given the codes
//! (the idea of ggml's `make_qkx2_quants`). Every candidate is scored with the parameters as
//! stored (f16-rounded where the type stores f16), so the chosen error is the real one.

use super::QType;
use crate::mixq::error::{MixqError, Result};
use half::f16;

/// Parameters of one parameter block (see [`QType::param_block`]), as stored in the file.
/// One variant per quantized [`QType`], named after it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BlockParams {
    /// w = scale * q, q in [-127, 127] (the code byte is q's two's complement).
    I8Sym { scale: f16 },
    /// w = min + scale * q, q in 0..=255.
    I8Asym { scale: f16, min: f16 },
    /// w = min + scale * q, q in 0..=15.
    I4Grouped { scale: f16, min: f16 },
    /// The block is the whole row: w = min + scale * q, q in 0..=15.
    I4PerChannel { scale: f32, min: f32 },
    /// Sub-group s (elements 16s..16s+15) has sc = scales[s] & 15, m = scales[s] >> 4;
    /// w = (d*sc)*q - (dmin*m), q in 0..=3.
    I2Structured { d: f16, dmin: f16, scales: [u8; 8] },
    /// w = min + scale * q, q in 0..=15 (a group of 32).
    I4Grouped32 { scale: f16, min: f16 },
    /// w = min + scale * q, q in 0..=15 (a group of 16).
    I4Grouped16 { scale: f16, min: f16 },
}

impl BlockParams {
    /// The type these parameters belong to.
    pub fn qtype(&self) -> QType {
        match self {
            BlockParams::I8Sym { .. } => QType::I8Sym,
            BlockParams::I8Asym { .. } => QType::I8Asym,
            BlockParams::I4Grouped { .. } => QType::I4Grouped,
            BlockParams::I4PerChannel { .. } => QType::I4PerChannel,
            BlockParams::I2Structured { .. } => QType::I2Structured,
            BlockParams::I4Grouped32 { .. } => QType::I4Grouped32,
            BlockParams::I4Grouped16 { .. } => QType::I4Grouped16,
        }
    }

    /// The parameters of a type stored as one f16 (scale, min) pair per block (I8_ASYM,
    /// I4_GROUPED, I4_GROUPED32, I4_GROUPED16); None for the other types.
    pub fn f16_affine(q: QType, scale: f16, min: f16) -> Option<BlockParams> {
        Some(match q {
            QType::I8Asym => BlockParams::I8Asym { scale, min },
            QType::I4Grouped => BlockParams::I4Grouped { scale, min },
            QType::I4Grouped32 => BlockParams::I4Grouped32 { scale, min },
            QType::I4Grouped16 => BlockParams::I4Grouped16 { scale, min },
            _ => return None,
        })
    }

    /// Effective (scale, offset) of element `i` of the block: w = offset + scale * q
    /// (for I8_SYM, q is the signed code and offset is 0). Computed in f32 exactly as here.
    #[inline]
    pub fn affine(&self, i: usize) -> (f32, f32) {
        match *self {
            BlockParams::I8Sym { scale } => (scale.to_f32(), 0.0),
            BlockParams::I8Asym { scale, min }
            | BlockParams::I4Grouped { scale, min }
            | BlockParams::I4Grouped32 { scale, min }
            | BlockParams::I4Grouped16 { scale, min } => (scale.to_f32(), min.to_f32()),
            BlockParams::I4PerChannel { scale, min } => (scale, min),
            BlockParams::I2Structured { d, dmin, scales } => {
                let b = scales[i / 16];
                let sc = (b & 15) as f32;
                let m = (b >> 4) as f32;
                (d.to_f32() * sc, -(dmin.to_f32() * m))
            }
        }
    }

    /// The code of value `x` at position `i` of the block: round((x - offset) / scale)
    /// (ties away from zero), clamped to the type's code range; 0 when the scale is 0.
    #[inline]
    pub fn quantize(&self, i: usize, x: f32) -> u8 {
        let (scale, offset) = self.affine(i);
        if scale == 0.0 {
            return 0;
        }
        let q = ((x - offset) / scale).round();
        match self {
            BlockParams::I8Sym { .. } => (q.clamp(-127.0, 127.0) as i8) as u8,
            _ => q.clamp(0.0, code_max(self.qtype()) as f32) as u8,
        }
    }

    /// The value code `code` at position `i` of the block stands for: offset + scale * q.
    #[inline]
    pub fn dequantize(&self, i: usize, code: u8) -> f32 {
        let (scale, offset) = self.affine(i);
        match self {
            BlockParams::I8Sym { .. } => scale * (code as i8) as f32,
            _ => offset + scale * code as f32,
        }
    }
}

/// Largest code of a quantized type (for I8_SYM the largest magnitude).
pub(crate) fn code_max(q: QType) -> u8 {
    match q {
        QType::I8Asym => 255,
        QType::I4Grouped | QType::I4PerChannel | QType::I4Grouped32 | QType::I4Grouped16 => 15,
        QType::I2Structured => 3,
        QType::I8Sym => 127,
        _ => 0,
    }
}

/// The largest f16 not above `v`.
fn f16_floor(v: f32) -> f16 {
    let h = f16::from_f32(v);
    if h.to_f32() <= v {
        return h;
    }
    let b = h.to_bits();
    f16::from_bits(match b {
        0x0000 => 0x8001,
        b if b & 0x8000 != 0 => b + 1,
        b => b - 1,
    })
}

/// Fits the parameters of one parameter block of `qtype` to `x` (the block's weights),
/// minimising the `importance`-weighted squared error (plain squared error when `None`).
/// `x.len()` must equal `qtype.param_block(cols)`: the group, the super-block, or (for
/// I4_PER_CHANNEL) the whole row.
pub fn block_params(qtype: QType, x: &[f32], importance: Option<&[f32]>) -> Result<BlockParams> {
    if let Some(imp) = importance {
        if imp.len() != x.len() {
            return Err(MixqError::BufferLength {
                qtype: qtype.name(),
                what: "importance",
                found: imp.len(),
                expected: x.len(),
            });
        }
    }
    let need_len = match qtype {
        QType::I4PerChannel => None,
        q => Some(q.param_block(x.len())),
    };
    if let Some(n) = need_len {
        if x.len() != n {
            return Err(MixqError::BufferLength {
                qtype: qtype.name(),
                what: "parameter block",
                found: x.len(),
                expected: n,
            });
        }
    } else if x.is_empty() || x.len() % 64 != 0 {
        return Err(MixqError::ColsNotMultiple {
            qtype: qtype.name(),
            cols: x.len() as u64,
            block: 64,
        });
    }
    if x.iter().any(|v| !v.is_finite()) {
        return Err(MixqError::QType {
            qtype: qtype.name(),
            problem: "weights contain NaN or infinity".into(),
        });
    }
    let weight = |i: usize| importance.map_or(1.0, |imp| imp[i].max(0.0));
    Ok(match qtype {
        QType::I8Sym => fit_sym(x, &weight),
        QType::I8Asym | QType::I4Grouped | QType::I4Grouped32 | QType::I4Grouped16 => {
            let (s, m) = fit_asym(x, &weight, code_max(qtype), true, false);
            best_f16_asym(qtype, x, &weight, s, m)
        }
        QType::I4PerChannel => {
            let (scale, min) = fit_asym(x, &weight, 15, false, false);
            BlockParams::I4PerChannel { scale, min }
        }
        QType::I2Structured => fit_structured(x, &weight),
        q => {
            return Err(MixqError::QType {
                qtype: q.name(),
                problem: "float types have no block parameters".into(),
            })
        }
    })
}

/// Weighted squared error of the block under `p`.
fn block_error(x: &[f32], w: &dyn Fn(usize) -> f32, p: &BlockParams) -> f64 {
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let d = v - p.dequantize(i, p.quantize(i, v));
            w(i) as f64 * (d as f64) * (d as f64)
        })
        .sum()
}

fn fit_sym(x: &[f32], w: &dyn Fn(usize) -> f32) -> BlockParams {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    if amax == 0.0 {
        return BlockParams::I8Sym { scale: f16::ZERO };
    }
    let mut best = BlockParams::I8Sym {
        scale: f16::from_f32(amax / 127.0),
    };
    let mut best_err = block_error(x, w, &best);
    // Shrinking the scale trades clipping of the largest weight for finer steps elsewhere.
    for k in 1..=10 {
        let p = BlockParams::I8Sym {
            scale: f16::from_f32(amax / 127.0 * (1.0 - 0.01 * k as f32)),
        };
        let e = block_error(x, w, &p);
        if e < best_err {
            best_err = e;
            best = p;
        }
    }
    best
}

/// Stores the f32 fit as f16: the min rounded to nearest, or rounded down to at most the
/// block's smallest weight (so it is not clipped), whichever scores better.
fn best_f16_asym(q: QType, x: &[f32], w: &dyn Fn(usize) -> f32, s: f32, m: f32) -> BlockParams {
    let lo = x.iter().fold(f32::INFINITY, |a, &v| a.min(v));
    let make = |scale: f16, min: f16| {
        BlockParams::f16_affine(q, scale, min).expect("block_params calls this for f16 pairs only")
    };
    let cands = [
        make(f16::from_f32(s), f16::from_f32(m)),
        make(f16::from_f32(s), f16_floor(m.min(lo))),
    ];
    let e0 = block_error(x, w, &cands[0]);
    let e1 = block_error(x, w, &cands[1]);
    if e1 < e0 {
        cands[1]
    } else {
        cands[0]
    }
}

/// Weighted fit of w ~ min + scale*q, q in 0..=nmax. Returns (scale, min) in f32.
/// `round16`: score candidates with f16-rounded params. `min_le_zero`: constrain min <= 0.
fn fit_asym(
    x: &[f32],
    w: &dyn Fn(usize) -> f32,
    nmax: u8,
    round16: bool,
    min_le_zero: bool,
) -> (f32, f32) {
    let nmax_f = nmax as f32;
    let mut lo = x.iter().fold(f32::INFINITY, |a, &v| a.min(v));
    let hi = x.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    if min_le_zero {
        lo = lo.min(0.0);
    }
    if hi <= lo {
        return (0.0, lo);
    }
    let stored = |v: f32| {
        if round16 {
            f16::from_f32(v).to_f32()
        } else {
            v
        }
    };
    let score = |s: f32, m: f32| -> f64 {
        let (s, m) = (stored(s), stored(m));
        x.iter()
            .enumerate()
            .map(|(i, &v)| {
                let q = if s == 0.0 {
                    0.0
                } else {
                    ((v - m) / s).round().clamp(0.0, nmax_f)
                };
                let d = v - (m + s * q);
                w(i) as f64 * (d as f64) * (d as f64)
            })
            .sum()
    };
    let mut best = ((hi - lo) / nmax_f, lo);
    let mut best_err = score(best.0, best.1);
    // Candidate inverse scales around nmax / range (ggml: rmin -1, rdelta 0.1, 20 steps).
    // Each candidate's codes get a least-squares (scale, min), solved both with the
    // importance weights and uniformly; every solution is scored with the weights.
    for step in 0..=20 {
        let iscale = (nmax_f - 1.0 + 0.1 * step as f32) / (hi - lo);
        for uniform in [false, true] {
            let (mut sw, mut swq, mut swq2, mut swx, mut swqx) = (0f64, 0f64, 0f64, 0f64, 0f64);
            for (i, &v) in x.iter().enumerate() {
                let q = ((v - lo) * iscale).round().clamp(0.0, nmax_f) as f64;
                let wi = if uniform { 1.0 } else { w(i) as f64 };
                sw += wi;
                swq += wi * q;
                swq2 += wi * q * q;
                swx += wi * v as f64;
                swqx += wi * q * v as f64;
            }
            let det = sw * swq2 - swq * swq;
            if det <= 0.0 {
                continue;
            }
            let mut s = (sw * swqx - swq * swx) / det;
            let mut m = (swq2 * swx - swq * swqx) / det;
            if min_le_zero && m > 0.0 {
                m = 0.0;
                if swq2 <= 0.0 {
                    continue;
                }
                s = swqx / swq2;
            }
            if s <= 0.0 || !s.is_finite() || !m.is_finite() {
                continue;
            }
            let e = score(s as f32, m as f32);
            if e < best_err {
                best_err = e;
                best = (s as f32, m as f32);
            }
        }
    }
    best
}

/// I2_STRUCTURED: fit each sub-group of 16 (min <= 0), then quantize the sub-group scales and
/// mins to 4 bits against the super-block's d and dmin.
fn fit_structured(x: &[f32], w: &dyn Fn(usize) -> f32) -> BlockParams {
    let mut sub = [(0f32, 0f32); 8];
    for (s, slot) in sub.iter_mut().enumerate() {
        let xs = &x[16 * s..16 * s + 16];
        let ws = |i: usize| w(16 * s + i);
        *slot = fit_asym(xs, &ws, 3, false, true);
    }
    let smax = sub.iter().fold(0f32, |a, &(s, _)| a.max(s));
    let mmax = sub.iter().fold(0f32, |a, &(_, m)| a.max(-m));
    let build = |dscale: f32| {
        let d = f16::from_f32(smax / 15.0 * dscale);
        let dmin = f16::from_f32(mmax / 15.0);
        let (df, dminf) = (d.to_f32(), dmin.to_f32());
        let mut scales = [0u8; 8];
        for (s, &(sc, m)) in sub.iter().enumerate() {
            let qs = if df > 0.0 {
                (sc / df).round().clamp(0.0, 15.0) as u8
            } else {
                0
            };
            // round the min up (more negative offset) so the smallest weights are not clipped
            let qm = if dminf > 0.0 {
                (-m / dminf).round().clamp(0.0, 15.0) as u8
            } else {
                0
            };
            scales[s] = qs | (qm << 4);
        }
        BlockParams::I2Structured { d, dmin, scales }
    };
    let mut best = build(1.0);
    let mut best_err = block_error(x, w, &best);
    for k in [0.9f32, 0.95, 1.05, 1.1] {
        let p = build(k);
        let e = block_error(x, w, &p);
        if e < best_err {
            best_err = e;
            best = p;
        }
    }
    best
}
