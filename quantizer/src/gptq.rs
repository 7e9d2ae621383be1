//! GPTQ (Frantar et al., 2022): quantize a weight matrix column by column, compensating each
//! column's rounding error on the columns not yet quantized, through the inverse Hessian of the
//! layer's calibration inputs. It minimises the output error `tr(E H Eᵀ)` instead of `‖E‖²`.
//!
//! Following the reference implementation:
//! - dead input channels (`H_ii = 0`) get `H_ii = 1` and zero weight;
//! - dampening: `H += damp · mean(diag H) · I` (default 10 %, see `convert::DEFAULT_DAMP`;
//!   raised ×10 until Cholesky succeeds);
//! - `U` = the upper Cholesky factor of `H⁻¹` (`H⁻¹ = UᵀU`), in f64;
//! - columns in blocks of 128 with lazy batch updates of the columns after the block;
//! - a parameter block's parameters (group of 64, I2 super-block of 128) are fitted when its
//!   first column comes up, on the error-compensated weights, by the importance-weighted
//!   search of `formats::quant::block_params` (importance = `diag H`); I4_PER_CHANNEL fixes the
//!   row's parameters from the whole original row first.
//!
//! Rows are independent given `U`: they are processed in tiles of [`ROW_TILE`] rows in
//! parallel, each tile stored column-major so the updates vectorise across rows.
//! Act-order (columns by decreasing `H_ii`) is not implemented: with grouped parameters it needs
//! static groups, and our groups are small.

use anyhow::{bail, Result};
use mixq_format::quant::{block_params, pack_row, BlockParams, QType};
use rayon::prelude::*;

/// Rows processed together by one task.
pub const ROW_TILE: usize = 32;
/// Columns per lazy-update block.
pub const COL_BLOCK: usize = 128;

#[derive(Debug, Clone, Copy)]
pub struct GptqOptions {
    /// Dampening as a fraction of the mean diagonal of H.
    pub damp: f64,
    /// Afterwards, refit every block's parameters for the chosen codes by least squares
    /// (src/refit.rs).
    pub refit: bool,
}

impl Default for GptqOptions {
    fn default() -> Self {
        GptqOptions {
            damp: crate::convert::DEFAULT_DAMP,
            refit: false,
        }
    }
}

/// Quantizes `w` (`rows x cols`, row-major) to `qtype` with GPTQ, given `h` (`cols x cols`,
/// row-major, symmetric: the mean of xᵀx over the calibration tokens). Returns the packed rows
/// (`rows * qtype.row_bytes(cols)` bytes).
pub fn gptq(
    qtype: QType,
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &[f64],
    opts: GptqOptions,
) -> Result<Vec<u8>> {
    if !qtype.is_quantized() {
        bail!("gptq: {} is not a quantized type", qtype.name());
    }
    assert_eq!(w.len(), rows * cols);
    assert_eq!(h.len(), cols * cols);
    // dead input channels (never active on the calibration text): zero weight, H_ii = 1
    let dead: Vec<bool> = (0..cols).map(|i| h[i * cols + i] <= 0.0).collect();
    let importance: Vec<f32> = (0..cols)
        .map(|i| if dead[i] { 1.0 } else { h[i * cols + i] as f32 })
        .collect();
    let u: Vec<f32> = {
        let u64 = inverse_upper_factor(h, cols, opts.damp)?;
        u64.iter().map(|&v| v as f32).collect()
    };
    // What the refit adds to H: GPTQ's dampening, and 1 on dead channels (their H row is 0).
    let extra: Vec<f64> = {
        let mean = importance.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
        (0..cols)
            .map(|i| opts.damp * mean + if dead[i] { 1.0 } else { 0.0 })
            .collect()
    };
    let row_bytes = qtype.row_bytes(cols)?;
    let pb = qtype.param_block(cols);
    let mut out = vec![0u8; rows * row_bytes];
    out.par_chunks_mut(ROW_TILE * row_bytes)
        .enumerate()
        .try_for_each(|(t, out_tile)| -> Result<()> {
            let r0 = t * ROW_TILE;
            let nr = out_tile.len() / row_bytes;
            // column-major tile: wt[j * nr + r]
            let mut wt = vec![0f32; cols * nr];
            for r in 0..nr {
                for j in 0..cols {
                    wt[j * nr + r] = if dead[j] { 0.0 } else { w[(r0 + r) * cols + j] };
                }
            }
            let mut params: Vec<Vec<BlockParams>> = vec![Vec::with_capacity(cols / pb); nr];
            if qtype == QType::I4PerChannel {
                for (r, p) in params.iter_mut().enumerate() {
                    let row = &w[(r0 + r) * cols..(r0 + r + 1) * cols];
                    p.push(block_params(qtype, row, Some(&importance))?);
                }
            }
            let mut codes = vec![0u8; nr * cols]; // row-major
            let mut err = vec![0f32; COL_BLOCK * nr]; // per column of the block, per row
            let mut group = vec![0f32; pb];
            for b0 in (0..cols).step_by(COL_BLOCK) {
                let b1 = (b0 + COL_BLOCK).min(cols);
                for i in b0..b1 {
                    if i % pb == 0 && qtype != QType::I4PerChannel {
                        for (r, p) in params.iter_mut().enumerate() {
                            for (k, g) in group.iter_mut().enumerate() {
                                *g = wt[(i + k) * nr + r];
                            }
                            p.push(block_params(qtype, &group, Some(&importance[i..i + pb]))?);
                        }
                    }
                    let d = u[i * cols + i];
                    let e = &mut err[(i - b0) * nr..(i - b0 + 1) * nr];
                    for r in 0..nr {
                        let x = wt[i * nr + r];
                        let p = &params[r][i / pb];
                        let c = p.quantize(i % pb, x);
                        codes[r * cols + i] = c;
                        e[r] = (x - p.dequantize(i % pb, c)) / d;
                    }
                    let e = &err[(i - b0) * nr..(i - b0 + 1) * nr];
                    let urow = &u[i * cols..(i + 1) * cols];
                    for j in i + 1..b1 {
                        let uij = urow[j];
                        let col = &mut wt[j * nr..(j + 1) * nr];
                        for (c, &er) in col.iter_mut().zip(e) {
                            *c -= er * uij;
                        }
                    }
                }
                // lazy batch update of every later column: W[:, b1..] -= Err · U[b0..b1, b1..]
                let n_blk = b1 - b0;
                for j in b1..cols {
                    let col = &mut wt[j * nr..(j + 1) * nr];
                    for k in 0..n_blk {
                        let uij = u[(b0 + k) * cols + j];
                        let e = &err[k * nr..(k + 1) * nr];
                        for (c, &er) in col.iter_mut().zip(e) {
                            *c -= er * uij;
                        }
                    }
                }
            }
            if opts.refit {
                let mut row = vec![0f32; cols];
                for (r, p) in params.iter_mut().enumerate() {
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = if dead[j] { 0.0 } else { w[(r0 + r) * cols + j] };
                    }
                    crate::refit::refit_row(
                        h,
                        &extra,
                        &row,
                        &codes[r * cols..(r + 1) * cols],
                        p,
                        pb,
                    );
                }
            }
            for (r, out_row) in out_tile.chunks_exact_mut(row_bytes).enumerate() {
                pack_row(qtype, &params[r], &codes[r * cols..(r + 1) * cols], out_row)?;
            }
            Ok(())
        })?;
    Ok(out)
}

/// The upper-triangular `U` with `(H + λI)⁻¹ = UᵀU` (row-major `n x n`), `λ = damp · mean(diag)`;
/// the dampening grows ×10 (up to 5 times) while `H + λI` is not positive definite.
///
/// With `J` the reversal permutation, `JHJ = LLᵀ` (lower Cholesky) gives `H = MMᵀ` with
/// `M = JLJ` upper, so `H⁻¹ = (M⁻¹)ᵀ M⁻¹` and `U = M⁻¹ = J L⁻¹ J`: one Cholesky and one
/// triangular inverse, no explicit inverse of H.
pub fn inverse_upper_factor(h: &[f64], n: usize, damp: f64) -> Result<Vec<f64>> {
    // a dead channel (H_ii <= 0) counts as H_ii = 1, uncoupled
    let diag = |i: usize| {
        if h[i * n + i] <= 0.0 {
            1.0
        } else {
            h[i * n + i]
        }
    };
    let mean_diag = (0..n).map(diag).sum::<f64>() / n as f64;
    let mut damp = damp;
    for _ in 0..6 {
        let lambda = damp * mean_diag;
        // reversed + dampened (peak memory: this, L⁻¹ and the caller's H; n² f64 each)
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            let (ri, row) = (n - 1 - i, &mut a[i * n..i * n + i + 1]);
            for (j, v) in row.iter_mut().enumerate() {
                let rj = n - 1 - j;
                *v = if ri == rj {
                    diag(ri)
                } else if h[ri * n + ri] <= 0.0 || h[rj * n + rj] <= 0.0 {
                    0.0
                } else {
                    h[ri * n + rj]
                };
            }
            a[i * n + i] += lambda;
        }
        if cholesky_lower(&mut a, n) {
            let mut u = lower_inverse(&a, n);
            drop(a);
            // U = J L⁻¹ J: u[i][j] = linv[n-1-i][n-1-j], i.e. the flat array reversed
            u.reverse();
            return Ok(u);
        }
        damp *= 10.0;
    }
    bail!("gptq: the Hessian is not positive definite even with dampening {damp:.1e}")
}

/// In-place lower Cholesky of the lower triangle of `a` (row-major); false if not positive
/// definite. Left-looking by blocks of 64 columns: the block's diagonal rows first, then every
/// later row in parallel, each reading the block's rows from cache.
pub fn cholesky_lower(a: &mut [f64], n: usize) -> bool {
    const NB: usize = 64;
    for k0 in (0..n).step_by(NB) {
        let k1 = (k0 + NB).min(n);
        // diagonal block rows, in order
        for i in k0..k1 {
            for j in k0..=i {
                let (ri, rj) = (i * n, j * n);
                let s = a[ri + j] - dot64(&a[ri..ri + j], &a[rj..rj + j]);
                if i == j {
                    if s <= 0.0 || !s.is_finite() {
                        return false;
                    }
                    a[ri + i] = s.sqrt();
                } else {
                    a[ri + j] = s / a[rj + j];
                }
            }
        }
        if k1 >= n {
            break;
        }
        let (head, tail) = a.split_at_mut(k1 * n);
        let head = &*head;
        tail.par_chunks_mut(n).for_each(|row| {
            for j in k0..k1 {
                let rj = &head[j * n..j * n + j];
                let s = row[j] - dot64(&row[..j], rj);
                row[j] = s / head[j * n + j];
            }
        });
    }
    // zero the strict upper triangle (callers read L as a full matrix)
    for i in 0..n {
        for v in &mut a[i * n + i + 1..(i + 1) * n] {
            *v = 0.0;
        }
    }
    true
}

/// Inverse of a lower-triangular `l` (row-major), by forward substitution on 8 columns of the
/// identity at a time (columns in parallel; each row of `l` is read once per 8 columns).
pub fn lower_inverse(l: &[f64], n: usize) -> Vec<f64> {
    const B: usize = 8;
    let batches: Vec<(usize, Vec<f64>)> = (0..n)
        .step_by(B)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|j0| {
            let nb = B.min(n - j0);
            // x[i * B + c] = column j0 + c of L⁻¹, rows j0.. (rows above are zero)
            let mut x = vec![0f64; n * B];
            for i in j0..n {
                let li = &l[i * n..(i + 1) * n];
                let mut acc = [0f64; B];
                for k in j0..i {
                    let lk = li[k];
                    let xk = &x[k * B..k * B + B];
                    for c in 0..B {
                        acc[c] += lk * xk[c];
                    }
                }
                for c in 0..nb {
                    let delta = if i == j0 + c { 1.0 } else { 0.0 };
                    x[i * B + c] = (delta - acc[c]) / li[i];
                }
            }
            (j0, x)
        })
        .collect();
    let mut inv = vec![0f64; n * n];
    for (j0, x) in batches {
        let nb = B.min(n - j0);
        for i in j0..n {
            for c in 0..nb {
                inv[i * n + j0 + c] = x[i * B + c];
            }
        }
    }
    inv
}

/// f32 dot product with 8 independent accumulators (vectorises without reassociation).
#[inline]
fn dot32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[inline]
fn dot64(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..4 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = acc[0] + acc[1] + acc[2] + acc[3];
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `tr(E H Eᵀ)` and `tr(W H Wᵀ)` for `E = W - Q` (`h` = the mean of xᵀx): the mean squared
/// output error of the layer on the calibration inputs, and its signal.
pub fn output_error(w: &[f32], q: &[f32], rows: usize, cols: usize, h: &[f32]) -> (f64, f64) {
    (0..rows)
        .into_par_iter()
        .map(|r| {
            let (wr, qr) = (&w[r * cols..(r + 1) * cols], &q[r * cols..(r + 1) * cols]);
            let e: Vec<f32> = wr.iter().zip(qr).map(|(a, b)| a - b).collect();
            let (mut se, mut sw) = (0f64, 0f64);
            for i in 0..cols {
                let hi = &h[i * cols..(i + 1) * cols];
                se += (e[i] * dot32(hi, &e)) as f64;
                sw += (wr[i] * dot32(hi, wr)) as f64;
            }
            (se, sw)
        })
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixq_format::quant::{dequantize_row, quantize_row};

    /// Deterministic pseudo-random numbers in [-1, 1).
    fn rng(seed: u64) -> impl FnMut() -> f32 {
        let mut s = seed;
        move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
    }

    /// Correlated inputs with uneven channel scales: the case GPTQ is for.
    fn problem(rows: usize, cols: usize, tokens: usize) -> (Vec<f32>, Vec<f64>) {
        let mut r = rng(7);
        let w: Vec<f32> = (0..rows * cols).map(|_| r() * 0.1).collect();
        let mut h = vec![0f64; cols * cols];
        let base: Vec<f32> = (0..8).map(|_| r()).collect();
        for t in 0..tokens {
            let x: Vec<f64> = (0..cols)
                .map(|i| {
                    let s = 1.0 + 4.0 * ((i * 7) % 13) as f32 / 13.0;
                    ((r() + base[(i + t) % 8] * 0.8) * s) as f64
                })
                .collect();
            for i in 0..cols {
                for j in 0..cols {
                    h[i * cols + j] += x[i] * x[j] / tokens as f64;
                }
            }
        }
        (w, h)
    }

    fn deq(q: QType, bytes: &[u8], rows: usize, cols: usize) -> Vec<f32> {
        let rb = q.row_bytes(cols).unwrap();
        let mut out = vec![0f32; rows * cols];
        for r in 0..rows {
            dequantize_row(
                q,
                &bytes[r * rb..(r + 1) * rb],
                &mut out[r * cols..(r + 1) * cols],
            )
            .unwrap();
        }
        out
    }

    #[test]
    fn inverse_factor_is_exact() {
        let n = 70; // crosses a Cholesky block
        let (_, h) = problem(1, n, 200);
        let u = inverse_upper_factor(&h, n, 0.0).unwrap();
        // Uᵀ U H = I
        let mut utu = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                utu[i * n + j] = (0..n).map(|k| u[k * n + i] * u[k * n + j]).sum();
            }
        }
        for i in 0..n {
            for j in 0..n {
                let v: f64 = (0..n).map(|k| utu[i * n + k] * h[k * n + j]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-8, "({i},{j}) = {v}");
            }
            for j in 0..i {
                assert_eq!(u[i * n + j], 0.0);
            }
        }
    }

    #[test]
    fn gptq_beats_rtn_on_output_error() {
        let (rows, cols) = (40, 256);
        let (w, h) = problem(rows, cols, 600);
        let hf: Vec<f32> = h.iter().map(|&v| v as f32).collect();
        for q in [QType::I4Grouped, QType::I4PerChannel, QType::I2Structured] {
            let g = gptq(q, &w, rows, cols, &h, GptqOptions::default()).unwrap();
            let rb = q.row_bytes(cols).unwrap();
            let mut rtn = vec![0u8; rows * rb];
            for r in 0..rows {
                quantize_row(
                    q,
                    &w[r * cols..(r + 1) * cols],
                    None,
                    &mut rtn[r * rb..(r + 1) * rb],
                )
                .unwrap();
            }
            let (eg, s) = output_error(&w, &deq(q, &g, rows, cols), rows, cols, &hf);
            let (er, _) = output_error(&w, &deq(q, &rtn, rows, cols), rows, cols, &hf);
            assert!(
                eg < 0.8 * er,
                "{q}: gptq {:.3e} vs rtn {:.3e} (signal {s:.3e})",
                eg,
                er
            );
        }
    }

    #[test]
    fn refit_lowers_the_output_error_of_gptq() {
        let (rows, cols) = (40, 256);
        let (w, h) = problem(rows, cols, 600);
        let hf: Vec<f32> = h.iter().map(|&v| v as f32).collect();
        for q in [QType::I4Grouped32, QType::I4PerChannel, QType::I2Structured] {
            let plain = gptq(q, &w, rows, cols, &h, GptqOptions::default()).unwrap();
            let refit = GptqOptions {
                refit: true,
                ..GptqOptions::default()
            };
            let fitted = gptq(q, &w, rows, cols, &h, refit).unwrap();
            let (ep, _) = output_error(&w, &deq(q, &plain, rows, cols), rows, cols, &hf);
            let (ef, _) = output_error(&w, &deq(q, &fitted, rows, cols), rows, cols, &hf);
            assert!(ef < ep, "{q}: refit {ef:.4e} vs gptq {ep:.4e}");
        }
    }

    #[test]
    fn identity_hessian_is_rtn() {
        // With H = I (no dampening effect on the ratios: U = I/sqrt(1+λ)), errors do not
        // propagate, so GPTQ's codes and parameters are the plain fit's.
        let (rows, cols) = (5, 128);
        let mut r = rng(3);
        let w: Vec<f32> = (0..rows * cols).map(|_| r()).collect();
        let mut h = vec![0f64; cols * cols];
        for i in 0..cols {
            h[i * cols + i] = 1.0;
        }
        for q in [QType::I4Grouped, QType::I2Structured, QType::I8Asym] {
            let g = gptq(q, &w, rows, cols, &h, GptqOptions::default()).unwrap();
            let rb = q.row_bytes(cols).unwrap();
            let mut want = vec![0u8; rows * rb];
            for k in 0..rows {
                let imp = vec![1.0f32; cols];
                quantize_row(
                    q,
                    &w[k * cols..(k + 1) * cols],
                    Some(&imp),
                    &mut want[k * rb..(k + 1) * rb],
                )
                .unwrap();
            }
            assert_eq!(g, want, "{q}");
        }
    }
}
