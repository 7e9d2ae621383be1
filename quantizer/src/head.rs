//! The tied embedding fitted as the lm_head it also is.
//!
//! Gemma 3 ties `lm_head` to `model.embed_tokens`: one `[vocab, hidden]` table gathers the
//! input rows and scores every token at the output. With `method = "gptq"` (or `"search"`) on
//! the embedding, the table is fitted to the lm_head's input, the final-norm output of the
//! calibration stream after the last (quantized) layer: GPTQ with that Hessian, or the
//! importance-weighted search with its diagonal. The logits error `(W − Q)·x` is what the
//! report's perplexity and KL measure, and at 4 bits it dominates: on the 270M the whole-table
//! round-to-nearest I4_GROUPED32 costs 5.5 points of retention (quantizer/README.md). The
//! gather side sees the same rows; GPTQ's compensation moves their error into directions the
//! final hidden states rarely take, which the first layer's input does not care about either
//! way (measured end to end, not assumed: README).
//!
//! Until the layers are done, the calibration stream starts from an int8 min/max form of the
//! table (convert.rs); only the written table is fitted.

use crate::convert::error_sums;
use crate::gptq::{gptq, output_error, GptqOptions};
use crate::recipe::{Method, TensorChoice};
use crate::search::{dequantize_rows, importance_from_mean_square, quantize_rows};
use anyhow::{Context, Result};
use indicatif::ProgressBar;
use mixq_calibration::{Calibrator, Hessian};
use rayon::prelude::*;

/// Rows fitted per batch (GPTQ is row-independent given H; a batch bounds memory at 27B:
/// 4096 x 5376 f32 = 88 MB).
const CHUNK: usize = 4096;

/// The final RMSNorm of Gemma 3 on rows of `w.len()`: `x / sqrt(mean(x²) + eps) * (1 + w)`.
pub fn final_norm_rows(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    for row in x.chunks_exact_mut(d) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for (v, g) in row.iter_mut().zip(w) {
            *v *= inv * (1.0 + g);
        }
    }
}

/// The mean Hessian of the lm_head's input over the calibration tokens: the stream after the
/// last layer through the final norm ([`final_norm_rows`]).
pub fn head_hessian(calib: &Calibrator, norm_w: &[f32], eps: f32) -> Vec<f64> {
    let d = norm_w.len();
    let mut h = Hessian::new(d);
    for s in 0..calib.sequences() {
        let mut x = calib.stream(s).to_vec();
        final_norm_rows(&mut x, norm_w, eps);
        h.add(&x, x.len() / d);
    }
    h.into_mean()
}

/// Squared error, squared weights, output error and its reference (`tr(E H Eᵀ)`,
/// `tr(W H Wᵀ)`) summed over the table.
#[derive(Default)]
pub struct Sums {
    pub se: f64,
    pub sw: f64,
    pub out_e: f64,
    pub out_s: f64,
}

/// Quantizes the `[rows, cols]` table `c` against the mean Hessian `hm` of the lm_head input,
/// in row batches (`row(r)` reads row r in f32, e.g. from the checkpoint): GPTQ for
/// `Method::Gptq`, the importance-weighted search (diag H) otherwise. Returns the stored bytes
/// and the error sums.
pub fn fit_table(
    c: &TensorChoice,
    rows: usize,
    cols: usize,
    row: impl Fn(usize) -> Result<Vec<f32>> + Sync,
    hm: &[f64],
    opts: GptqOptions,
    bar: &ProgressBar,
) -> Result<(Vec<u8>, Sums)> {
    let rb = c.qtype.row_bytes(cols)?;
    let diag: Vec<f32> = (0..cols).map(|i| hm[i * cols + i] as f32).collect();
    let importance = importance_from_mean_square(&diag);
    let hf: Vec<f32> = hm.iter().map(|&v| v as f32).collect();
    let mut out = Vec::with_capacity(rows * rb);
    let mut sums = Sums::default();
    for r0 in (0..rows).step_by(CHUNK) {
        let n = CHUNK.min(rows - r0);
        let w: Vec<f32> = (r0..r0 + n)
            .into_par_iter()
            .map(&row)
            .collect::<Result<Vec<_>>>()?
            .concat();
        let bytes = match c.method {
            Method::Gptq => gptq(c.qtype, &w, n, cols, hm, opts)
                .with_context(|| format!("GPTQ of {} rows {r0}..", c.name))?,
            _ => quantize_rows(c.qtype, &w, n, cols, Some(&importance))?,
        };
        let deq = dequantize_rows(c.qtype, &bytes, n, cols)?;
        let (se, sw) = error_sums(&w, &deq);
        let (oe, os) = output_error(&w, &deq, n, cols, &hf);
        sums.se += se;
        sums.sw += sw;
        sums.out_e += oe;
        sums.out_s += os;
        out.extend_from_slice(&bytes);
        bar.inc(n as u64);
    }
    Ok((out, sums))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_norm_and_its_hessian_by_hand() {
        // (2, 0, 0, 0): mean square 1, so times (1 + w) = (4, 0, 0, 0);
        // (1, 1, 1, 1): mean square 1 -> (2, 1, 1, 0.5).
        let w = [1.0f32, 0.0, 0.0, -0.5];
        let mut x = vec![2.0f32, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
        final_norm_rows(&mut x, &w, 0.0);
        assert_eq!(x, vec![4.0, 0.0, 0.0, 0.0, 2.0, 1.0, 1.0, 0.5]);
        let mut h = Hessian::new(4);
        h.add(&x, 2);
        let h = h.into_mean();
        // mean over the two tokens of x_i x_j
        assert!((h[0] - 10.0).abs() < 1e-9, "{}", h[0]);
        assert!((h[3] - 0.5).abs() < 1e-9, "{}", h[3]);
        assert!((h[15] - 0.125).abs() < 1e-9, "{}", h[15]);
    }

    /// A table whose lm_head input has strongly correlated channels: GPTQ against that
    /// Hessian leaves a smaller output error than the importance-weighted search, which only
    /// sees its diagonal, and both store rows of the type's size.
    #[test]
    fn gptq_fits_the_head_better_than_the_search_on_correlated_inputs() {
        use mixq_format::quant::QType;
        let (rows, cols) = (96usize, 64usize);
        let mut seed = 7u64;
        let mut rnd = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let w: Vec<f32> = (0..rows * cols).map(|_| rnd()).collect();
        // Inputs x = A z with a random mixing A: H = E[x xᵀ] far from diagonal.
        let a: Vec<f32> = (0..cols * cols).map(|_| rnd()).collect();
        let mut h = Hessian::new(cols);
        let n = 512;
        let mut xs = vec![0f32; n * cols];
        for t in 0..n {
            let z: Vec<f32> = (0..cols).map(|_| rnd()).collect();
            for i in 0..cols {
                xs[t * cols + i] = (0..cols).map(|j| a[i * cols + j] * z[j]).sum();
            }
        }
        h.add(&xs, n);
        let hm = h.into_mean();
        let choice = |m: &str| TensorChoice {
            name: "model.embed_tokens.weight".into(),
            qtype: QType::I4Grouped32,
            method: Method::from_name(m).unwrap(),
            shape: vec![rows, cols],
            transform: mixq_format::quant::Transform::None,
            equalize: false,
        };
        let row = |r: usize| Ok(w[r * cols..(r + 1) * cols].to_vec());
        let bar = ProgressBar::hidden();
        let opts = GptqOptions {
            damp: 0.1,
            refit: false,
        };
        let (bg, g) = fit_table(&choice("gptq"), rows, cols, row, &hm, opts, &bar).unwrap();
        let (bs, s) = fit_table(&choice("search"), rows, cols, row, &hm, opts, &bar).unwrap();
        let rb = QType::I4Grouped32.row_bytes(cols).unwrap();
        assert_eq!((bg.len(), bs.len()), (rows * rb, rows * rb));
        assert_eq!(g.out_s, s.out_s);
        assert!(
            g.out_e < 0.8 * s.out_e,
            "GPTQ output error {} vs search {}",
            g.out_e,
            s.out_e
        );
        // The search fits the weights themselves better (what GPTQ gives up for the output).
        assert!(s.se < g.se);
    }
}
