//! Incoherence processing: the block Hadamard rotation of a linear layer's input dimension
//! (SPEC.md §6.8). The file stores `W' = W·H`; the runtime feeds it `x' = x·H`, so the product
//! is unchanged. Rotating spreads a row's outliers over each block, which is what lets a 2-bit
//! grid represent it (QuIP#). The calibration Hessian moves with it: `x' = xH` gives
//! `H_x' = Hᵀ H_x H`.

use anyhow::Result;
use mixq_format::quant::apply_hadamard_rows;
use mixq_format::quant::hadamard::{apply_hadamard_with_signs, hadamard_signs};

/// `W·H` for `rows x cols` weights (rows rotated in place).
pub fn rotate_weights(w: &mut [f32], cols: usize, block: usize, seed: u64) -> Result<()> {
    apply_hadamard_rows(w, cols, block, seed)?;
    Ok(())
}

/// `Hᵀ · hx · H` for a symmetric `cols x cols` Hessian (f64 throughout): rotate every row
/// (`hx·H`), then every column (rows of the transpose, which is the same matrix up to symmetry).
pub fn rotate_hessian(hx: &[f64], cols: usize, block: usize, seed: u64) -> Vec<f64> {
    let signs: Vec<f64> = hadamard_signs(cols, seed)
        .iter()
        .map(|&s| s as f64)
        .collect();
    let mut a = hx.to_vec();
    for row in a.chunks_exact_mut(cols) {
        apply_hadamard_with_signs(row, &signs, block);
    }
    // a = hx·H; its transpose is Hᵀ·hx (hx symmetric); rotate rows of the transpose.
    let mut t = vec![0f64; cols * cols];
    for i in 0..cols {
        for j in 0..cols {
            t[j * cols + i] = a[i * cols + j];
        }
    }
    for row in t.chunks_exact_mut(cols) {
        apply_hadamard_with_signs(row, &signs, block);
    }
    // t = (Hᵀ·hx)·H, symmetric up to rounding: symmetrise exactly
    for i in 0..cols {
        for j in 0..i {
            let v = 0.5 * (t[i * cols + j] + t[j * cols + i]);
            t[i * cols + j] = v;
            t[j * cols + i] = v;
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_hessian_keeps_the_output_error() {
        // e H eᵀ = (eR) (RᵀHR) (eR)ᵀ for an orthogonal R.
        let (cols, block, seed) = (16, 8, 5);
        let x: Vec<f32> = (0..10 * cols)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3)
            .collect();
        let mut h = vec![0f64; cols * cols];
        for t in 0..10 {
            for i in 0..cols {
                for j in 0..cols {
                    h[i * cols + j] += x[t * cols + i] as f64 * x[t * cols + j] as f64;
                }
            }
        }
        let e: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.7).sin()).collect();
        let quad = |h: &[f64], e: &[f32]| -> f64 {
            (0..cols)
                .map(|i| {
                    (0..cols)
                        .map(|j| e[i] as f64 * h[i * cols + j] * e[j] as f64)
                        .sum::<f64>()
                })
                .sum()
        };
        let hr = rotate_hessian(&h, cols, block, seed);
        let mut er = e.clone();
        rotate_weights(&mut er, cols, block, seed).unwrap();
        let (a, b) = (quad(&h, &e), quad(&hr, &er));
        assert!((a - b).abs() < 1e-4 * a.abs(), "{a} vs {b}");
    }
}
