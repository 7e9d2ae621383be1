//! The quant types of a `.mixq` file: fixed numbers, sizes, and the scalar reference code.
//!
//! Every 2-D weight is row-major `[out, in]`; quantization groups run along the input
//! dimension (the dot-product dimension), so one output of a matvec reads one contiguous row.
//! A row is self-contained: first the parameters of all its groups (a small contiguous array),
//! then the packed codes. SPEC.md §"Quant types" gives the byte layout of each type.
//!
//! - [`QType`]: the append-only type enum (numbers are part of the file format).
//! - [`BlockParams`], [`block_params`]: the parameters of one parameter block, and the fit
//!   that chooses them; [`BlockParams::quantize`] / [`BlockParams::dequantize`] map one value,
//!   which is what GPTQ needs (it fixes a block's parameters, then quantizes column by column).
//! - [`pack_row`] / [`unpack_row`]: codes + parameters <-> row bytes.
//! - [`quantize_row`], [`dequantize_row`], [`dot_row`]: the reference row operations every
//!   kernel is tested against.
//! - [`hadamard`]: the block Hadamard rotation of tensors stored with a transform.

mod block;
pub mod hadamard;
mod row;
#[cfg(test)]
mod tests;

pub use block::{block_params, BlockParams};
pub use hadamard::{apply_hadamard_rows, hadamard_signs, Transform};
pub use row::{dequantize_row, dot_row, pack_row, quantize_row, unpack_row};

use crate::mixq::error::{MixqError, Result};
use serde::{Deserialize, Serialize};

/// A tensor's storage type. The numbers are fixed forever: new types are appended, retired
/// numbers are never reused (ggml.h's rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
#[repr(u8)]
pub enum QType {
    /// IEEE binary32, little-endian.
    F32 = 0,
    /// IEEE binary16, little-endian.
    F16 = 1,
    /// bfloat16 (the upper half of an f32), little-endian.
    BF16 = 2,
    /// Groups of 32: one f16 scale; i8 codes in [-127, 127]; w = scale * q. 8.5 bpw.
    I8Sym = 3,
    /// Groups of 64: f16 scale + f16 min; u8 codes; w = min + scale * q. 8.5 bpw.
    I8Asym = 4,
    /// Groups of 64: f16 scale + f16 min; 4-bit codes; w = min + scale * q. 4.5 bpw.
    I4Grouped = 5,
    /// One f32 scale + f32 min per row; 4-bit codes. 4 bpw + 64 bits per row.
    I4PerChannel = 6,
    /// Super-blocks of 128 = 8 sub-groups of 16; f16 d, f16 dmin per super-block, 4-bit scale
    /// and 4-bit min code per sub-group; 2-bit codes; w = d*sc*q - dmin*m. 2.75 bpw.
    I2Structured = 7,
    /// Groups of 32: f16 scale + f16 min; 4-bit codes packed as I4_GROUPED's (chunks of 64, so
    /// each nibble plane of a chunk is one group); w = min + scale * q. 5.0 bpw.
    I4Grouped32 = 8,
    /// Groups of 16: f16 scale + f16 min; 4-bit codes packed as I4_GROUPED's (chunks of 64, so
    /// each half of a nibble plane is one group); w = min + scale * q. 6.0 bpw.
    I4Grouped16 = 9,
}

impl QType {
    /// Every type, in number order.
    pub const ALL: [QType; 10] = [
        QType::F32,
        QType::F16,
        QType::BF16,
        QType::I8Sym,
        QType::I8Asym,
        QType::I4Grouped,
        QType::I4PerChannel,
        QType::I2Structured,
        QType::I4Grouped32,
        QType::I4Grouped16,
    ];

    /// The type with this number, if this build knows it.
    pub fn from_u8(n: u8) -> Option<QType> {
        QType::ALL.get(n as usize).copied()
    }

    /// The spec's name (upper snake case), as SPEC.md and `inspect` print it.
    pub fn name(self) -> &'static str {
        match self {
            QType::F32 => "F32",
            QType::F16 => "F16",
            QType::BF16 => "BF16",
            QType::I8Sym => "I8_SYM",
            QType::I8Asym => "I8_ASYM",
            QType::I4Grouped => "I4_GROUPED",
            QType::I4PerChannel => "I4_PER_CHANNEL",
            QType::I2Structured => "I2_STRUCTURED",
            QType::I4Grouped32 => "I4_GROUPED32",
            QType::I4Grouped16 => "I4_GROUPED16",
        }
    }

    /// Parses a spec name (case-insensitive; `-` accepted for `_`).
    pub fn from_name(s: &str) -> Option<QType> {
        let s = s.to_ascii_uppercase().replace('-', "_");
        QType::ALL.into_iter().find(|q| q.name() == s)
    }

    /// Whether this type has codes and parameters (false for the float types).
    pub fn is_quantized(self) -> bool {
        !matches!(self, QType::F32 | QType::F16 | QType::BF16)
    }

    /// Elements per block: a row's length must be a multiple of it. For the grouped types this
    /// is the group; for I4_PER_CHANNEL, I4_GROUPED32 and I4_GROUPED16 the 64-element packing chunk; for
    /// I2_STRUCTURED the super-block; 1 for the float types.
    pub fn block_size(self) -> usize {
        match self {
            QType::F32 | QType::F16 | QType::BF16 => 1,
            QType::I8Sym => 32,
            QType::I8Asym
            | QType::I4Grouped
            | QType::I4PerChannel
            | QType::I4Grouped32
            | QType::I4Grouped16 => 64,
            QType::I2Structured => 128,
        }
    }

    /// Elements sharing one [`BlockParams`] in a row of `cols`: the group (or super-block),
    /// the whole row for I4_PER_CHANNEL, half (I4_GROUPED32) or a quarter (I4_GROUPED16) of a
    /// packing chunk.
    pub fn param_block(self, cols: usize) -> usize {
        match self {
            QType::I4PerChannel => cols,
            QType::I4Grouped32 => 32,
            QType::I4Grouped16 => 16,
            q => q.block_size(),
        }
    }

    /// Bytes of the parameters of one parameter block.
    pub fn param_bytes(self) -> usize {
        match self {
            QType::F32 | QType::F16 | QType::BF16 => 0,
            QType::I8Sym => 2,
            QType::I8Asym | QType::I4Grouped | QType::I4Grouped32 | QType::I4Grouped16 => 4,
            QType::I4PerChannel => 8,
            QType::I2Structured => 12,
        }
    }

    /// Nominal bits per weight, parameters included (I4_PER_CHANNEL: without its 64 bits per row).
    pub fn bits_per_weight(self) -> f64 {
        match self {
            QType::F32 => 32.0,
            QType::F16 | QType::BF16 => 16.0,
            QType::I8Sym | QType::I8Asym => 8.5,
            QType::I4Grouped => 4.5,
            QType::I4Grouped32 => 5.0,
            QType::I4Grouped16 => 6.0,
            QType::I4PerChannel => 4.0,
            QType::I2Structured => 2.75,
        }
    }

    /// Bytes of one row of `cols` elements. Errors if `cols` is 0 or not a multiple of
    /// [`block_size`](Self::block_size), or the size overflows.
    pub fn row_bytes(self, cols: usize) -> Result<usize> {
        let block = self.block_size();
        if cols == 0 || cols % block != 0 {
            return Err(MixqError::ColsNotMultiple {
                qtype: self.name(),
                cols: cols as u64,
                block: block as u64,
            });
        }
        let ovf = || MixqError::overflow(format!("{} row of {cols}", self.name()));
        let n = match self {
            QType::F32 => cols.checked_mul(4).ok_or_else(ovf)?,
            QType::F16 | QType::BF16 => cols.checked_mul(2).ok_or_else(ovf)?,
            // codes + params (no overflow: params < codes here)
            QType::I8Sym | QType::I8Asym => cols + self.row_param_bytes(cols),
            QType::I4Grouped | QType::I4Grouped32 | QType::I4Grouped16 => {
                cols / 2 + self.row_param_bytes(cols)
            }
            QType::I4PerChannel => (cols / 2).checked_add(8).ok_or_else(ovf)?,
            QType::I2Structured => (cols / 128).checked_mul(44).ok_or_else(ovf)?,
        };
        Ok(n)
    }

    /// Bytes of the parameter array at the start of a row of `cols` (codes follow it).
    pub fn row_param_bytes(self, cols: usize) -> usize {
        match self {
            // max(1): an I4_PER_CHANNEL row of 0 columns (invalid anyway) must not divide by 0
            q if q.is_quantized() => (cols / q.param_block(cols).max(1)) * q.param_bytes(),
            _ => 0,
        }
    }

    /// Bytes of a `[rows, cols]` tensor (a 1-D tensor is one row). Checked arithmetic.
    pub fn tensor_bytes(self, rows: usize, cols: usize) -> Result<usize> {
        self.row_bytes(cols)?
            .checked_mul(rows)
            .ok_or_else(|| MixqError::overflow(format!("{} tensor [{rows}, {cols}]", self.name())))
    }

    /// [`tensor_bytes`](Self::tensor_bytes) in u64 for untrusted shapes (reader side).
    pub fn tensor_bytes_u64(self, rows: u64, cols: u64) -> Result<u64> {
        let cols_us = usize::try_from(cols)
            .map_err(|_| MixqError::overflow(format!("{} row of {cols}", self.name())))?;
        let row = self.row_bytes(cols_us)? as u64;
        row.checked_mul(rows)
            .ok_or_else(|| MixqError::overflow(format!("{} tensor [{rows}, {cols}]", self.name())))
    }
}

impl std::fmt::Display for QType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl From<QType> for u8 {
    fn from(q: QType) -> u8 {
        q as u8
    }
}

impl TryFrom<u8> for QType {
    type Error = String;
    fn try_from(n: u8) -> std::result::Result<QType, String> {
        QType::from_u8(n).ok_or_else(|| format!("unknown qtype {n}"))
    }
}
