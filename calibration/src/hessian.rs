//! The Hessian of a linear layer's reconstruction error: `H = Σ_t x_tᵀ x_t` over every
//! calibration token `t` of the layer's input `x_t` (width `dim`).
//!
//! GPTQ minimises `tr(E H Eᵀ)` for the weight error `E`, and `diag(H) / tokens` is the mean
//! square activation of each input channel: the importance weights of the scale search.
//!
//! Accumulation: each batch of `n` tokens is transposed to `(dim, n)` and the upper triangle
//! of `xᵀx` is computed as f32 dot products of length `n` (four rows at a time, so each loaded
//! column feeds four dots), rows in parallel; each batch's f32 result is added into an f64 sum,
//! so rounding does not grow with the number of tokens.

use rayon::prelude::*;

#[derive(Debug, Clone)]
pub struct Hessian {
    pub dim: usize,
    /// Row-major `(dim, dim)`, upper triangle only until [`Hessian::finish`] mirrors it.
    sum: Vec<f64>,
    /// Tokens accumulated.
    pub tokens: usize,
    mirrored: bool,
}

/// Rows of H computed together (each loaded input column feeds this many dot products).
const TILE: usize = 4;

impl Hessian {
    pub fn new(dim: usize) -> Hessian {
        Hessian {
            dim,
            sum: vec![0.0; dim * dim],
            tokens: 0,
            mirrored: false,
        }
    }

    /// Adds `n` tokens: `x` is row-major `(n, dim)` (only its first `n * dim` values are read).
    pub fn add(&mut self, x: &[f32], n: usize) {
        let d = self.dim;
        assert!(!self.mirrored, "Hessian::add after finish");
        assert!(
            x.len() >= n * d,
            "Hessian::add: {} values < {n} x {d}",
            x.len()
        );
        if n == 0 {
            return;
        }
        // (dim, n): each channel's values over the batch, contiguous.
        let mut xt = vec![0f32; d * n];
        for (t, row) in x[..n * d].chunks_exact(d).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                xt[i * n + t] = v;
            }
        }
        let xt = &xt;
        self.sum
            .par_chunks_mut(TILE * d)
            .enumerate()
            .for_each(|(bi, hrows)| {
                let i0 = bi * TILE;
                let rows = hrows.len() / d;
                let a: Vec<&[f32]> = (0..rows)
                    .map(|r| &xt[(i0 + r) * n..(i0 + r + 1) * n])
                    .collect();
                for j in i0..d {
                    let b = &xt[j * n..(j + 1) * n];
                    let dots = dots4(&a, b);
                    for r in 0..rows {
                        if j >= i0 + r {
                            hrows[r * d + j] += dots[r] as f64;
                        }
                    }
                }
            });
        self.tokens += n;
    }

    /// Adds `n` tokens with weights `w` (one per token): `Σ w_t x_tᵀ x_t`. Counted as `n`
    /// tokens, so [`Hessian::mean`] is the weighted sum over the token count.
    pub fn add_weighted(&mut self, x: &[f32], n: usize, w: &[f32]) {
        let d = self.dim;
        assert!(
            w.len() >= n,
            "Hessian::add_weighted: {} weights < {n}",
            w.len()
        );
        let mut xs = x[..n * d].to_vec();
        for (row, &wt) in xs.chunks_exact_mut(d).zip(w) {
            let r = wt.max(0.0).sqrt();
            row.iter_mut().for_each(|v| *v *= r);
        }
        self.add(&xs, n);
    }

    /// Adds another accumulator of the same width.
    pub fn merge(&mut self, other: &Hessian) {
        assert_eq!(self.dim, other.dim);
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            *a += b;
        }
        self.tokens += other.tokens;
    }

    /// Mirrors the upper triangle into the lower one; call once, after the last `add`.
    pub fn finish(&mut self) {
        if self.mirrored {
            return;
        }
        let d = self.dim;
        for i in 0..d {
            for j in 0..i {
                self.sum[i * d + j] = self.sum[j * d + i];
            }
        }
        self.mirrored = true;
    }

    /// `H / tokens` (the mean of `xᵀx`), full symmetric, row-major.
    pub fn mean(&mut self) -> Vec<f64> {
        self.finish();
        let s = 1.0 / self.tokens.max(1) as f64;
        self.sum.iter().map(|v| v * s).collect()
    }

    /// [`Hessian::mean`] without a copy: the sum becomes the mean in place.
    pub fn into_mean(mut self) -> Vec<f64> {
        self.finish();
        let s = 1.0 / self.tokens.max(1) as f64;
        self.sum.iter_mut().for_each(|v| *v *= s);
        self.sum
    }

    /// Mean square activation of each input channel: `diag(H) / tokens`.
    pub fn mean_square(&self) -> Vec<f32> {
        let s = 1.0 / self.tokens.max(1) as f64;
        (0..self.dim)
            .map(|i| (self.sum[i * self.dim + i] * s) as f32)
            .collect()
    }

    /// The raw sum, row-major (upper triangle only before [`Hessian::finish`]).
    pub fn raw(&self) -> &[f64] {
        &self.sum
    }
}

/// Up to four dot products `a[r] · b` at once, each with 8 f32 accumulators.
#[inline]
fn dots4(a: &[&[f32]], b: &[f32]) -> [f32; TILE] {
    let n = b.len();
    let mut acc = [[0f32; 8]; TILE];
    let full = n / 8 * 8;
    let rows = a.len();
    if rows == TILE {
        let (a0, a1, a2, a3) = (a[0], a[1], a[2], a[3]);
        for k in (0..full).step_by(8) {
            let bb = &b[k..k + 8];
            for l in 0..8 {
                acc[0][l] += a0[k + l] * bb[l];
                acc[1][l] += a1[k + l] * bb[l];
                acc[2][l] += a2[k + l] * bb[l];
                acc[3][l] += a3[k + l] * bb[l];
            }
        }
    } else {
        for (r, ar) in a.iter().enumerate() {
            for k in (0..full).step_by(8) {
                for l in 0..8 {
                    acc[r][l] += ar[k + l] * b[k + l];
                }
            }
        }
    }
    let mut out = [0f32; TILE];
    for r in 0..rows {
        let mut s: f32 = acc[r].iter().sum();
        for k in full..n {
            s += a[r][k] * b[k];
        }
        out[r] = s;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], n: usize, d: usize) -> Vec<f64> {
        let mut h = vec![0f64; d * d];
        for t in 0..n {
            for i in 0..d {
                for j in 0..d {
                    h[i * d + j] += x[t * d + i] as f64 * x[t * d + j] as f64;
                }
            }
        }
        h
    }

    #[test]
    fn weighted_tokens_scale_their_outer_products() {
        let (d, n) = (6, 5);
        let x: Vec<f32> = (0..n * d).map(|i| ((i as f32) * 1.37).cos()).collect();
        let w = [0.5f32, 2.0, 0.0, 1.0, 4.0];
        let mut h = Hessian::new(d);
        h.add_weighted(&x, n, &w);
        assert_eq!(h.tokens, n);
        let got = h.mean();
        for i in 0..d {
            for j in 0..d {
                let want: f64 = (0..n)
                    .map(|t| w[t] as f64 * x[t * d + i] as f64 * x[t * d + j] as f64)
                    .sum::<f64>()
                    / n as f64;
                assert!(
                    (got[i * d + j] - want).abs() < 1e-5,
                    "({i},{j}): {} vs {want}",
                    got[i * d + j]
                );
            }
        }
    }

    #[test]
    fn matches_naive_over_batches_and_odd_sizes() {
        // d not a multiple of the tile, n not a multiple of 8, two batches.
        let (d, n1, n2) = (13, 21, 6);
        let x: Vec<f32> = (0..(n1 + n2) * d)
            .map(|i| ((i as f32) * 0.731).sin() * (1.0 + (i % 5) as f32))
            .collect();
        let mut h = Hessian::new(d);
        h.add(&x[..n1 * d], n1);
        h.add(&x[n1 * d..], n2);
        assert_eq!(h.tokens, n1 + n2);
        let ms = h.mean_square();
        let got = h.mean();
        let want = naive(&x, n1 + n2, d);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let w = w / (n1 + n2) as f64;
            assert!(
                (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                "element {i}: {g} vs {w}"
            );
        }
        for i in 0..d {
            assert!((ms[i] as f64 - got[i * d + i]).abs() < 1e-5 * got[i * d + i].max(1.0));
        }
        // symmetric
        for i in 0..d {
            for j in 0..d {
                assert_eq!(got[i * d + j], got[j * d + i]);
            }
        }
    }
}
