//! Row-parallel quantization without error feedback: the importance-weighted scale/min search
//! (`search`, importance = each input channel's mean square activation) and plain
//! round-to-nearest with an unweighted fit (`rtn`). Both use the format's reference fit
//! (`formats::quant::quantize_row`, SPEC.md §6.5): a 21-candidate scale grid, each refined by
//! a weighted least-squares solve of (scale, min), scored with the parameters as stored.

use anyhow::Result;
use mixq_format::quant::{dequantize_row, quantize_row, QType};
use rayon::prelude::*;

/// Quantizes `rows x cols` weights row by row (rows in parallel); `importance` has one weight
/// per column (`None` = plain squared error).
pub fn quantize_rows(
    qtype: QType,
    w: &[f32],
    rows: usize,
    cols: usize,
    importance: Option<&[f32]>,
) -> Result<Vec<u8>> {
    assert_eq!(w.len(), rows * cols);
    let rb = qtype.row_bytes(cols)?;
    let mut out = vec![0u8; rows * rb];
    out.par_chunks_mut(rb)
        .zip(w.par_chunks(cols))
        .try_for_each(|(o, src)| quantize_row(qtype, src, importance, o))?;
    Ok(out)
}

/// Round-to-nearest with min/max parameters for the asymmetric 8-bit type (the gather tables:
/// 262144 rows of the embedding, where the 21-candidate search costs minutes on two cores and
/// gains nothing measurable at 255 levels). Scale and min are rounded to f16 outward (min
/// down, scale up) so that every value of the block stays inside the code range.
pub fn quantize_rows_minmax_i8(w: &[f32], rows: usize, cols: usize) -> Result<Vec<u8>> {
    use half::f16;
    use mixq_format::quant::{pack_row, BlockParams};
    let q = QType::I8Asym;
    let rb = q.row_bytes(cols)?;
    let mut out = vec![0u8; rows * rb];
    out.par_chunks_mut(rb)
        .zip(w.par_chunks(cols))
        .try_for_each(|(o, src)| -> Result<()> {
            let mut params = Vec::with_capacity(cols / 64);
            let mut codes = vec![0u8; cols];
            for (xs, cs) in src.chunks_exact(64).zip(codes.chunks_exact_mut(64)) {
                let lo = xs.iter().fold(f32::INFINITY, |a, &v| a.min(v));
                let hi = xs.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                let mut min = f16::from_f32(lo);
                if min.to_f32() > lo {
                    min = f16::from_f32(lo - (lo.abs() * 1e-3).max(1e-7));
                }
                let mut scale = f16::from_f32((hi - min.to_f32()) / 255.0);
                if scale.to_f32() * 255.0 + min.to_f32() < hi {
                    scale = f16::from_f32(scale.to_f32() * 1.001 + 1e-8);
                }
                let p = BlockParams::I8Asym { scale, min };
                for (i, (&x, c)) in xs.iter().zip(cs.iter_mut()).enumerate() {
                    *c = p.quantize(i, x);
                }
                params.push(p);
            }
            pack_row(q, &params, &codes, o)?;
            Ok(())
        })?;
    Ok(out)
}

/// Dequantizes packed rows back to f32 (what the runtime computes with).
pub fn dequantize_rows(qtype: QType, bytes: &[u8], rows: usize, cols: usize) -> Result<Vec<f32>> {
    let rb = qtype.row_bytes(cols)?;
    let mut out = vec![0f32; rows * cols];
    out.par_chunks_mut(cols)
        .zip(bytes.par_chunks(rb))
        .try_for_each(|(o, b)| dequantize_row(qtype, b, o))?;
    Ok(out)
}

/// Importance weights from a mean-square profile: the mean square itself, floored at a small
/// fraction of its mean so that no channel is ignored entirely (a channel silent on the
/// calibration text may still carry signal on other text).
pub fn importance_from_mean_square(ms: &[f32]) -> Vec<f32> {
    let mean = ms.iter().map(|&v| v as f64).sum::<f64>() / ms.len().max(1) as f64;
    let floor = (mean * 1e-3) as f32;
    ms.iter().map(|&v| v.max(floor)).collect()
}
