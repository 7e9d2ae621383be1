//! Row operations: pack/unpack, quantize, dequantize and the reference dot product.
//!
//! Row layout (SPEC.md §"Quant types"): `[params of every block][codes]`.
//! - 8-bit codes: one byte per element, in order.
//! - 4-bit codes: chunks of 64 elements in 32 bytes; byte j of a chunk holds element j in its
//!   low nibble and element j+32 in its high nibble (for I4_GROUPED32: the low nibbles are
//!   one group, the high nibbles the next; for I4_GROUPED16 each half of a nibble plane).
//! - 2-bit codes: chunks of 128 elements in 32 bytes; byte j of a chunk holds elements j, j+32,
//!   j+64, j+96 in bits 0-1, 2-3, 4-5, 6-7.

use super::block::{block_params, BlockParams};
use super::QType;
use crate::mixq::error::{MixqError, Result};
use half::{bf16, f16};

fn check_len(q: QType, what: &'static str, found: usize, expected: usize) -> Result<()> {
    if found != expected {
        return Err(MixqError::BufferLength {
            qtype: q.name(),
            what,
            found,
            expected,
        });
    }
    Ok(())
}

/// (byte index in the codes region, bit shift) of element `k`.
#[inline]
fn code_pos(q: QType, k: usize) -> (usize, u32) {
    match q {
        QType::I4Grouped | QType::I4PerChannel | QType::I4Grouped32 | QType::I4Grouped16 => {
            (k / 64 * 32 + k % 32, 4 * ((k % 64) / 32) as u32)
        }
        QType::I2Structured => (k / 128 * 32 + k % 32, 2 * ((k % 128) / 32) as u32),
        _ => (k, 0),
    }
}

#[inline]
fn code_mask(q: QType) -> u8 {
    match q {
        QType::I4Grouped | QType::I4PerChannel | QType::I4Grouped32 | QType::I4Grouped16 => 0x0f,
        QType::I2Structured => 0x03,
        _ => 0xff,
    }
}

fn f16_at(b: &[u8], o: usize) -> f16 {
    f16::from_le_bytes([b[o], b[o + 1]])
}

fn f32_at(b: &[u8], o: usize) -> f32 {
    f32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// Parameters of block `b` from a row's parameter region.
fn read_params(q: QType, params: &[u8], b: usize) -> BlockParams {
    let o = b * q.param_bytes();
    match q {
        QType::I8Sym => BlockParams::I8Sym {
            scale: f16_at(params, o),
        },
        QType::I8Asym | QType::I4Grouped | QType::I4Grouped32 | QType::I4Grouped16 => {
            BlockParams::f16_affine(q, f16_at(params, o), f16_at(params, o + 2))
                .expect("an f16 (scale, min) type")
        }
        QType::I4PerChannel => BlockParams::I4PerChannel {
            scale: f32_at(params, o),
            min: f32_at(params, o + 4),
        },
        QType::I2Structured => {
            let mut scales = [0u8; 8];
            scales.copy_from_slice(&params[o + 4..o + 12]);
            BlockParams::I2Structured {
                d: f16_at(params, o),
                dmin: f16_at(params, o + 2),
                scales,
            }
        }
        _ => unreachable!("float types have no parameters"),
    }
}

fn write_params(p: &BlockParams, out: &mut [u8]) {
    match *p {
        BlockParams::I8Sym { scale } => out[..2].copy_from_slice(&scale.to_le_bytes()),
        BlockParams::I8Asym { scale, min }
        | BlockParams::I4Grouped { scale, min }
        | BlockParams::I4Grouped32 { scale, min }
        | BlockParams::I4Grouped16 { scale, min } => {
            out[..2].copy_from_slice(&scale.to_le_bytes());
            out[2..4].copy_from_slice(&min.to_le_bytes());
        }
        BlockParams::I4PerChannel { scale, min } => {
            out[..4].copy_from_slice(&scale.to_le_bytes());
            out[4..8].copy_from_slice(&min.to_le_bytes());
        }
        BlockParams::I2Structured { d, dmin, scales } => {
            out[..2].copy_from_slice(&d.to_le_bytes());
            out[2..4].copy_from_slice(&dmin.to_le_bytes());
            out[4..12].copy_from_slice(&scales);
        }
    }
}

/// Writes one row from its block parameters (`cols / param_block` of them, in order) and one
/// code per element (`codes.len() == cols`; I8_SYM codes are q's two's-complement byte, other
/// codes must be within the type's range). `out.len()` must be `qtype.row_bytes(cols)`.
/// This is the GPTQ primitive: fix each block's parameters, choose codes column by column,
/// then pack.
pub fn pack_row(qtype: QType, params: &[BlockParams], codes: &[u8], out: &mut [u8]) -> Result<()> {
    if !qtype.is_quantized() {
        return Err(MixqError::QType {
            qtype: qtype.name(),
            problem: "float types have no codes; use quantize_row".into(),
        });
    }
    let cols = codes.len();
    check_len(qtype, "row bytes", out.len(), qtype.row_bytes(cols)?)?;
    let pb = qtype.param_block(cols);
    check_len(qtype, "block parameters", params.len(), cols / pb)?;
    let (pregion, cregion) = out.split_at_mut(qtype.row_param_bytes(cols));
    for (b, p) in params.iter().enumerate() {
        if p.qtype() != qtype {
            return Err(MixqError::QType {
                qtype: qtype.name(),
                problem: format!("block {b} holds {} parameters", p.qtype()),
            });
        }
        let n = qtype.param_bytes();
        write_params(p, &mut pregion[b * n..b * n + n]);
    }
    let mask = code_mask(qtype);
    if mask == 0xff {
        cregion.copy_from_slice(codes);
        if qtype == QType::I8Sym {
            if let Some(k) = codes.iter().position(|&c| c == 0x80) {
                return Err(MixqError::QType {
                    qtype: qtype.name(),
                    problem: format!("code -128 at element {k} (range is -127..=127)"),
                });
            }
        }
        return Ok(());
    }
    cregion.fill(0);
    for (k, &c) in codes.iter().enumerate() {
        if c > mask {
            return Err(MixqError::QType {
                qtype: qtype.name(),
                problem: format!("code {c} at element {k} is out of range 0..={mask}"),
            });
        }
        let (byte, shift) = code_pos(qtype, k);
        cregion[byte] |= c << shift;
    }
    Ok(())
}

/// Reads one row back into its block parameters and codes (`codes.len() == cols`).
pub fn unpack_row(qtype: QType, row: &[u8], codes: &mut [u8]) -> Result<Vec<BlockParams>> {
    if !qtype.is_quantized() {
        return Err(MixqError::QType {
            qtype: qtype.name(),
            problem: "float types have no codes; use dequantize_row".into(),
        });
    }
    let cols = codes.len();
    check_len(qtype, "row bytes", row.len(), qtype.row_bytes(cols)?)?;
    let (pregion, cregion) = row.split_at(qtype.row_param_bytes(cols));
    let params = (0..cols / qtype.param_block(cols))
        .map(|b| read_params(qtype, pregion, b))
        .collect();
    let mask = code_mask(qtype);
    for (k, c) in codes.iter_mut().enumerate() {
        let (byte, shift) = code_pos(qtype, k);
        *c = (cregion[byte] >> shift) & mask;
    }
    Ok(params)
}

/// Quantizes one row `src` into `out` (`qtype.row_bytes(src.len())` bytes), fitting each
/// block's parameters to minimise the `importance`-weighted squared error (`importance`, if
/// given, has one non-negative weight per column, e.g. the input's mean square activation).
/// Float types are converted (round to nearest even).
pub fn quantize_row(
    qtype: QType,
    src: &[f32],
    importance: Option<&[f32]>,
    out: &mut [u8],
) -> Result<()> {
    let cols = src.len();
    check_len(qtype, "row bytes", out.len(), qtype.row_bytes(cols)?)?;
    if let Some(imp) = importance {
        check_len(qtype, "importance", imp.len(), cols)?;
    }
    match qtype {
        QType::F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(src) {
                o.copy_from_slice(&v.to_le_bytes());
            }
            return Ok(());
        }
        QType::F16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&f16::from_f32(*v).to_le_bytes());
            }
            return Ok(());
        }
        QType::BF16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&bf16::from_f32(*v).to_le_bytes());
            }
            return Ok(());
        }
        _ => {}
    }
    let pb = qtype.param_block(cols);
    let mut params = Vec::with_capacity(cols / pb);
    let mut codes = vec![0u8; cols];
    for (b, (xs, cs)) in src
        .chunks_exact(pb)
        .zip(codes.chunks_exact_mut(pb))
        .enumerate()
    {
        let imp = importance.map(|imp| &imp[b * pb..(b + 1) * pb]);
        let p = block_params(qtype, xs, imp)?;
        for (i, (&x, c)) in xs.iter().zip(cs.iter_mut()).enumerate() {
            *c = p.quantize(i, x);
        }
        params.push(p);
    }
    pack_row(qtype, &params, &codes, out)
}

/// Dequantizes one row: `out.len()` is the column count, `row.len()` its row bytes.
pub fn dequantize_row(qtype: QType, row: &[u8], out: &mut [f32]) -> Result<()> {
    let cols = out.len();
    check_len(qtype, "row bytes", row.len(), qtype.row_bytes(cols)?)?;
    match qtype {
        QType::F32 => {
            for (o, b) in out.iter_mut().zip(row.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        QType::F16 => {
            for (o, b) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        QType::BF16 => {
            for (o, b) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        _ => {
            let mut codes = vec![0u8; cols];
            let params = unpack_row(qtype, row, &mut codes)?;
            let pb = qtype.param_block(cols);
            for (k, (o, &c)) in out.iter_mut().zip(&codes).enumerate() {
                *o = params[k / pb].dequantize(k % pb, c);
            }
        }
    }
    Ok(())
}

/// Reference dot product of one stored row with `x` (`x.len()` = columns), f32 accumulation.
/// Quantized types use the factored form kernels use: per run of elements sharing (scale,
/// offset), `scale * sum(q*x) + offset * sum(x)`.
pub fn dot_row(qtype: QType, row: &[u8], x: &[f32]) -> Result<f32> {
    let cols = x.len();
    check_len(qtype, "row bytes", row.len(), qtype.row_bytes(cols)?)?;
    if !qtype.is_quantized() {
        let mut w = vec![0f32; cols];
        dequantize_row(qtype, row, &mut w)?;
        return Ok(w.iter().zip(x).map(|(a, b)| a * b).sum());
    }
    let mut codes = vec![0u8; cols];
    let params = unpack_row(qtype, row, &mut codes)?;
    let pb = qtype.param_block(cols);
    // elements sharing one (scale, offset): the sub-group for I2, else the parameter block
    let run = if qtype == QType::I2Structured { 16 } else { pb };
    let mut acc = 0f32;
    for (r, (xs, cs)) in x.chunks_exact(run).zip(codes.chunks_exact(run)).enumerate() {
        let k0 = r * run;
        let (scale, offset) = params[k0 / pb].affine(k0 % pb);
        let (mut sqx, mut sx) = (0f32, 0f32);
        for (&xv, &c) in xs.iter().zip(cs) {
            let q = if qtype == QType::I8Sym {
                (c as i8) as f32
            } else {
                c as f32
            };
            sqx += q * xv;
            sx += xv;
        }
        acc += scale * sqx + offset * sx;
    }
    Ok(acc)
}
