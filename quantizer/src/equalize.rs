//! Channel equalization (the AWQ idea, Lin et al. 2023), folded into Gemma 3's RMSNorm gains.
//!
//! A linear layer's error on an input channel matters in proportion to that channel's
//! activation, and Gemma 3's norm gains `(1 + w)` span -1 .. 584, so a few input channels
//! carry most of the signal. Scaling channel `j` of the weights by `s_j` and of the input by
//! `1 / s_j` leaves the product unchanged but gives the important channels more of each
//! group's grid. The input of q/k/v is `norm(x) * (1 + w_in)` and that of gate/up
//! `norm(x) * (1 + w_ffn)`: both gains are stored as F32, so `1 / s` folds into them exactly
//! (`w' = (1 + w) / s - 1`) and the runtime does nothing new.
//!
//! `s_j = (mean x_j² / geomean)^(α/2)`; α is chosen per layer and site from [`ALPHAS`] by the
//! calibration output error `Σ tr(E H Eᵀ) / tr(W H Wᵀ)` of the site's tensors after
//! quantization with their real method (GPTQ included), so α = 0 (no scaling) is always a
//! candidate and the choice can never be worse than not equalizing on the calibration text.
//! The o and down projections are not equalized: their inputs come from attention and the
//! GELU gate, where a scale would have to fold into quantized rows.

use crate::convert::quantize_tensor;
use crate::gptq::GptqOptions;
use crate::recipe::TensorChoice;
use crate::report::TensorQuality;
use anyhow::{ensure, Result};

/// The exponents tried; measured on Gemma 3 270M (quantizer/README.md).
pub const ALPHAS: [f64; 3] = [0.0, 0.25, 0.5];

/// Scales beyond this factor from the geometric mean are clamped (a dead channel must not
/// blow up its weights' group).
const MAX_RATIO: f64 = 1e3;

/// One tensor of a site: its choice, `rows x cols` f32 weights.
pub struct Member<'a> {
    pub choice: &'a TensorChoice,
    pub weights: &'a [f32],
    pub rows: usize,
}

/// What [`equalize_site`] chose: α, the per-channel scales (`1 / s` goes into the norm), and
/// every member's stored bytes and quality, in member order.
pub struct Equalized {
    pub alpha: f64,
    pub scales: Vec<f32>,
    pub tensors: Vec<(Vec<u8>, TensorQuality)>,
}

/// Channel scales for exponent `alpha` from the mean Hessian `h` (`n x n`), normalized to a
/// geometric mean of 1.
pub fn channel_scales(h: &[f64], n: usize, alpha: f64) -> Vec<f32> {
    let d: Vec<f64> = (0..n).map(|j| h[j * n + j].max(0.0)).collect();
    let floor = d.iter().sum::<f64>() / n as f64 * 1e-6 + f64::MIN_POSITIVE;
    let log: Vec<f64> = d
        .iter()
        .map(|&v| (v.max(floor)).ln() * alpha / 2.0)
        .collect();
    let mean = log.iter().sum::<f64>() / n as f64;
    let lim = MAX_RATIO.ln();
    log.iter()
        .map(|&l| (l - mean).clamp(-lim, lim).exp() as f32)
        .collect()
}

/// `W · diag(s)`: column `j` of the `cols`-wide rows times `s[j]`.
pub fn scale_columns(w: &[f32], cols: usize, s: &[f32]) -> Vec<f32> {
    w.chunks(cols)
        .flat_map(|row| row.iter().zip(s).map(|(a, b)| a * b))
        .collect()
}

/// `diag(1/s) · H · diag(1/s)`: the Hessian of the scaled input `x / s`.
pub fn scale_hessian(h: &[f64], n: usize, s: &[f32]) -> Vec<f64> {
    let inv: Vec<f64> = s.iter().map(|&v| 1.0 / v as f64).collect();
    let mut out = h.to_vec();
    for (i, row) in out.chunks_mut(n).enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v *= inv[i] * inv[j];
        }
    }
    out
}

/// Folds `1 / s` into a Gemma RMSNorm weight (the gain is `1 + w`).
pub fn fold_into_norm(norm: &mut [f32], s: &[f32]) {
    for (w, &s) in norm.iter_mut().zip(s) {
        *w = (1.0 + *w) / s - 1.0;
    }
}

/// Quantizes the members of one site (they share the input, hence `h`, `n` = their columns)
/// for every α and keeps the α whose summed relative output error is lowest.
pub fn equalize_site(
    members: &[Member],
    h: &[f64],
    n: usize,
    alphas: &[f64],
    opts: GptqOptions,
) -> Result<Equalized> {
    ensure!(h.len() == n * n, "site Hessian is not {n} x {n}");
    let mut best: Option<(f64, Equalized)> = None;
    for &alpha in alphas {
        let s = channel_scales(h, n, alpha);
        let hs = scale_hessian(h, n, &s);
        let mut tensors = Vec::with_capacity(members.len());
        let mut err = 0.0;
        for m in members {
            ensure!(
                m.weights.len() == m.rows * n,
                "{}: {} weights for {} x {n}",
                m.choice.name,
                m.weights.len(),
                m.rows
            );
            let w = scale_columns(m.weights, n, &s);
            let (bytes, q) = quantize_tensor(m.choice, &w, m.rows, n, Some(&hs), opts)?;
            // a tensor without statistics has no output error: it cannot steer α
            err += q.out_rel_err.unwrap_or(0.0);
            tensors.push((bytes, q));
        }
        if best.as_ref().map_or(true, |(e, _)| err < *e) {
            best = Some((
                err,
                Equalized {
                    alpha,
                    scales: s,
                    tensors,
                },
            ));
        }
    }
    best.map(|(_, e)| e)
        .ok_or_else(|| anyhow::anyhow!("no exponent to try"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_keep_the_product_and_fold_exactly() {
        let n = 4;
        // diag 1, 4, 16, 64 -> alpha 1 scales 1, 2, 4, 8 before normalization
        let mut h = vec![0.0; n * n];
        for (j, d) in [1.0, 4.0, 16.0, 64.0].iter().enumerate() {
            h[j * n + j] = *d;
        }
        let s = channel_scales(&h, n, 1.0);
        let g: f64 = s.iter().map(|&v| (v as f64).ln()).sum::<f64>() / n as f64;
        assert!(g.abs() < 1e-6, "geometric mean 1");
        assert!((s[1] / s[0] - 2.0).abs() < 1e-5 && (s[3] / s[0] - 8.0).abs() < 1e-4);
        assert_eq!(channel_scales(&h, n, 0.0), vec![1.0; 4]);

        // W x == (W diag s)(x / s), and the norm fold divides the gain by s
        let w = [0.5f32, -1.0, 2.0, 0.25, 1.0, 1.0, -3.0, 0.5];
        let x = [1.0f32, 2.0, -1.0, 4.0];
        let ws = scale_columns(&w, n, &s);
        for r in 0..2 {
            let a: f32 = (0..n).map(|j| w[r * n + j] * x[j]).sum();
            let b: f32 = (0..n).map(|j| ws[r * n + j] * x[j] / s[j]).sum();
            assert!((a - b).abs() < 1e-5);
        }
        let mut norm = vec![0.0f32, 1.0, -0.5, 583.0];
        let gains: Vec<f32> = norm.iter().map(|w| 1.0 + w).collect();
        fold_into_norm(&mut norm, &s);
        for j in 0..n {
            assert!(((1.0 + norm[j]) * s[j] - gains[j]).abs() < 1e-3 * gains[j].abs().max(1.0));
        }
        // the scaled Hessian is the Hessian of x / s
        let hs = scale_hessian(&h, n, &s);
        for j in 0..n {
            let want = h[j * n + j] / (s[j] as f64 * s[j] as f64);
            assert!((hs[j * n + j] - want).abs() < 1e-9 * want.max(1.0));
        }
    }

    #[test]
    fn dead_channels_are_clamped() {
        let n = 3;
        let mut h = vec![0.0; n * n];
        h[0] = 1.0;
        h[4] = 1.0; // channel 2 never fires
        let s = channel_scales(&h, n, 1.0);
        assert!(s.iter().all(|v| v.is_finite() && *v > 0.0));
        assert!(s.iter().all(|&v| (v as f64) <= MAX_RATIO * 1.0001));
    }
}
