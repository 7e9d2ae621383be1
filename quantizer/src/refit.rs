//! Least-squares refit of a row's block parameters after GPTQ has chosen its codes.
//!
//! GPTQ fits each block's parameters once, when the block's first column comes up, on weights
//! that later columns' error compensation has not reached yet, and then keeps them. With the
//! codes fixed, every block's dequantized values are linear in its two parameters (`w = α·a +
//! β·b`: scale and min for the int4/int8 types, `d` and `dmin` for I2_STRUCTURED, whose 4-bit
//! sub-scales stay), so the parameters that minimise the row's output error `(w − ŵ)ᵀ H (w −
//! ŵ)` against the original row solve a small linear system: two unknowns per block, coupled
//! through `H`. (The torch lab, `scripts/quant_lab.py` method `gptqls`, showed +4 points on
//! 2-bit gate/up and +0.2 on int4, before this was built.)
//!
//! Cost: `3 x cols²` multiply-adds per row for the normal equations (every block pair is
//! coupled: a band of neighbouring blocks alone raised the true error on test Hessians) and
//! `(2 x blocks)³ / 3` for the Cholesky: about 2.7 s more per layer at 270M on 2 cores, but
//! hours at 27B (`3 x rows x cols²` per tensor, six times GPTQ's own updates).

use crate::gptq::cholesky_lower;
use half::f16;
use mixq_format::quant::BlockParams;

/// The two basis values of element `i` of block `p` with code `code`: its dequantized value
/// is `α·a + β·b` for the block's current `(α, β)` ([`coords`]).
fn basis(p: &BlockParams, i: usize, code: u8) -> (f64, f64) {
    match *p {
        BlockParams::I8Sym { .. } => ((code as i8) as f64, 0.0),
        BlockParams::I2Structured { scales, .. } => {
            let s = scales[i / 16];
            (((s & 15) as f64) * code as f64, -((s >> 4) as f64))
        }
        _ => (code as f64, 1.0),
    }
}

/// The block's `(α, β)`.
fn coords(p: &BlockParams) -> (f64, f64) {
    match *p {
        BlockParams::I8Sym { scale } => (scale.to_f64(), 0.0),
        BlockParams::I8Asym { scale, min }
        | BlockParams::I4Grouped { scale, min }
        | BlockParams::I4Grouped32 { scale, min }
        | BlockParams::I4Grouped16 { scale, min } => (scale.to_f64(), min.to_f64()),
        BlockParams::I4PerChannel { scale, min } => (scale as f64, min as f64),
        BlockParams::I2Structured { d, dmin, .. } => (d.to_f64(), dmin.to_f64()),
    }
}

/// `p` with `(α, β)` (stored at the type's precision); `None` where they do not fit it.
fn with_coords(p: &BlockParams, a: f64, b: f64) -> Option<BlockParams> {
    let h = |v: f64| {
        let x = f16::from_f64(v);
        x.is_finite().then_some(x)
    };
    if !a.is_finite() || !b.is_finite() {
        return None;
    }
    Some(match *p {
        BlockParams::I8Sym { .. } => BlockParams::I8Sym { scale: h(a)? },
        BlockParams::I8Asym { .. } => BlockParams::I8Asym {
            scale: h(a)?,
            min: h(b)?,
        },
        BlockParams::I4Grouped { .. } => BlockParams::I4Grouped {
            scale: h(a)?,
            min: h(b)?,
        },
        BlockParams::I4Grouped32 { .. } => BlockParams::I4Grouped32 {
            scale: h(a)?,
            min: h(b)?,
        },
        BlockParams::I4Grouped16 { .. } => BlockParams::I4Grouped16 {
            scale: h(a)?,
            min: h(b)?,
        },
        BlockParams::I4PerChannel { .. } => BlockParams::I4PerChannel {
            scale: a as f32,
            min: b as f32,
        },
        BlockParams::I2Structured { scales, .. } => BlockParams::I2Structured {
            d: h(a)?,
            dmin: h(b)?,
            scales,
        },
    })
}

/// Refits `params` (the row's blocks of `pb` columns, all coupled) for the fixed `codes`,
/// minimising `(w − ŵ)ᵀ (H + diag(extra)) (w − ŵ)`. `h` is `cols x cols` row-major; `extra[k]` is the
/// dampening GPTQ added (plus 1 on dead channels, whose `H` row is zero). Blocks whose new
/// parameters do not fit the type keep theirs.
pub fn refit_row(
    h: &[f64],
    extra: &[f64],
    w: &[f32],
    codes: &[u8],
    params: &mut [BlockParams],
    pb: usize,
) {
    let cols = w.len();
    let nb = params.len();
    debug_assert_eq!(nb * pb, cols);
    let n = 2 * nb;
    let (mut a, mut b) = (vec![0f64; cols], vec![0f64; cols]);
    for k in 0..cols {
        (a[k], b[k]) = basis(&params[k / pb], k % pb, codes[k]);
    }
    let wd: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    // Normal equations: unknowns (α, β) of block g at 2g, 2g + 1.
    let mut nm = vec![0f64; n * n];
    let mut y = vec![0f64; n];
    for g in 0..nb {
        for k in g * pb..(g + 1) * pb {
            let hrow = &h[k * cols..(k + 1) * cols];
            let (ak, bk) = (a[k], b[k]);
            for g2 in 0..nb {
                let (j0, j1) = (g2 * pb, (g2 + 1) * pb);
                let (mut ta, mut tb, mut tw) = (0f64, 0f64, 0f64);
                for j in j0..j1 {
                    ta += hrow[j] * a[j];
                    tb += hrow[j] * b[j];
                    tw += hrow[j] * wd[j];
                }
                if (j0..j1).contains(&k) {
                    ta += extra[k] * a[k];
                    tb += extra[k] * b[k];
                    tw += extra[k] * wd[k];
                }
                nm[2 * g * n + 2 * g2] += ak * ta;
                nm[2 * g * n + 2 * g2 + 1] += ak * tb;
                nm[(2 * g + 1) * n + 2 * g2] += bk * ta;
                nm[(2 * g + 1) * n + 2 * g2 + 1] += bk * tb;
                y[2 * g] += ak * tw;
                y[2 * g + 1] += bk * tw;
            }
        }
    }
    // A small ridge towards the current parameters: a block whose codes are all equal (or
    // whose b is zero, I8_SYM) leaves its two unknowns undetermined.
    let mean_diag = (0..n).map(|i| nm[i * n + i]).sum::<f64>() / n as f64;
    let mu = 1e-6 * mean_diag.max(f64::MIN_POSITIVE);
    for (g, p) in params.iter().enumerate() {
        let (al, be) = coords(p);
        for (i, v) in [(2 * g, al), (2 * g + 1, be)] {
            nm[i * n + i] += mu;
            y[i] += mu * v;
        }
    }
    if !solve_spd(&mut nm, &mut y, n) {
        return;
    }
    for (g, p) in params.iter_mut().enumerate() {
        if let Some(q) = with_coords(p, y[2 * g], y[2 * g + 1]) {
            *p = q;
        }
    }
}

/// Solves the symmetric positive definite `a x = y` in place (`a` becomes its Cholesky
/// factor, `y` the solution); false if `a` is not positive definite.
fn solve_spd(a: &mut [f64], y: &mut [f64], n: usize) -> bool {
    if !cholesky_lower(a, n) {
        return false;
    }
    // L z = y, then Lᵀ x = z
    for i in 0..n {
        let s: f64 = (0..i).map(|k| a[i * n + k] * y[k]).sum();
        y[i] = (y[i] - s) / a[i * n + i];
    }
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|k| a[k * n + i] * y[k]).sum();
        y[i] = (y[i] - s) / a[i * n + i];
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixq_format::quant::{block_params, QType};

    fn rng(seed: u64) -> impl FnMut() -> f64 {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        }
    }

    /// H = XᵀX of random inputs with uneven channel scales.
    fn hessian(cols: usize, seed: u64) -> Vec<f64> {
        let tokens = 4 * cols;
        let mut r = rng(seed);
        let x: Vec<f64> = (0..tokens)
            .flat_map(|_| {
                (0..cols)
                    .map(|j| r() * (0.2 + j as f64 / cols as f64))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut h = vec![0f64; cols * cols];
        for t in 0..tokens {
            let row = &x[t * cols..(t + 1) * cols];
            for i in 0..cols {
                for j in 0..cols {
                    h[i * cols + j] += row[i] * row[j];
                }
            }
        }
        h
    }

    fn err(h: &[f64], w: &[f32], p: &[BlockParams], codes: &[u8], pb: usize) -> f64 {
        let cols = w.len();
        let e: Vec<f64> = (0..cols)
            .map(|k| w[k] as f64 - p[k / pb].dequantize(k % pb, codes[k]) as f64)
            .collect();
        (0..cols)
            .map(|i| e[i] * (0..cols).map(|j| h[i * cols + j] * e[j]).sum::<f64>())
            .sum()
    }

    #[test]
    fn refit_lowers_the_output_error_for_every_affine_type() {
        for (q, cols) in [
            (QType::I4Grouped32, 256),
            (QType::I4Grouped, 256),
            (QType::I2Structured, 512),
            (QType::I4PerChannel, 128),
            (QType::I8Asym, 256),
        ] {
            let h = hessian(cols, q as u64);
            let mut r = rng(7 + q as u64);
            let w: Vec<f32> = (0..cols).map(|_| r() as f32).collect();
            let pb = q.param_block(cols);
            let mut params: Vec<BlockParams> = w
                .chunks(pb)
                .map(|c| block_params(q, c, None).unwrap())
                .collect();
            let codes: Vec<u8> = (0..cols)
                .map(|k| params[k / pb].quantize(k % pb, w[k]))
                .collect();
            let before = err(&h, &w, &params, &codes, pb);
            let extra = vec![0.0; cols];
            refit_row(&h, &extra, &w, &codes, &mut params, pb);
            let after = err(&h, &w, &params, &codes, pb);
            assert!(after < before, "{}: {after} !< {before}", q.name());
        }
    }

    #[test]
    fn solve_spd_solves() {
        let n = 9;
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            a[i * n + i] = 4.0;
            if i + 1 < n {
                a[i * n + i + 1] = -1.0;
                a[(i + 1) * n + i] = -1.0;
            }
        }
        let y: Vec<f64> = (0..n).map(|i| i as f64 - 3.0).collect();
        let mut x = y.clone();
        assert!(solve_spd(&mut a.clone(), &mut x, n));
        for i in 0..n {
            let ax: f64 = (0..n).map(|j| a[i * n + j] * x[j]).sum();
            assert!((ax - y[i]).abs() < 1e-9);
        }
        a[0] = -1.0;
        assert!(!solve_spd(&mut a, &mut x, n));
    }
}
