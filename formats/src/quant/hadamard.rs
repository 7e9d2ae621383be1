//! The block Hadamard rotation of a tensor's input dimension (incoherence processing).
//!
//! A tensor stored with [`Transform::BlockHadamard`] holds W' = W·H instead of W, where
//! H = S·B: S = diag(s_0..s_{cols-1}) with signs s_i = ±1 from the seeded generator below, and
//! B = blockdiag(H_b/√b, …) with H_b the Sylvester Hadamard matrix of size b
//! (H_b[i][j] = (-1)^popcount(i & j)). H is orthogonal, so W'·(x·H)ᵀ = W·xᵀ: the runtime rotates
//! the activation row with the same function before the matvec. Rotating spreads outliers
//! over a block, which is what lets INT2 codes represent the weights (QuIP#).
//!
//! Sign generator: splitmix64 seeded with `seed`; element i takes the i-th output z_i
//! (i = 0, 1, …) and s_i = -1 if z_i's bit 0 is 1, else +1.

use crate::mixq::error::{MixqError, Result};
use serde::{Deserialize, Serialize};

/// How a tensor's stored values relate to the model's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Transform {
    /// Stored as is.
    #[default]
    None,
    /// Stored W' = W·H (see the module docs); the runtime applies x' = x·H to the input.
    BlockHadamard { block: u32, seed: u64 },
}

impl Transform {
    /// The spec's one-byte code: 0 none, 1 block Hadamard.
    pub fn code(&self) -> u8 {
        match self {
            Transform::None => 0,
            Transform::BlockHadamard { .. } => 1,
        }
    }

    /// Checks the transform against a row length: the block is a power of two >= 2 that
    /// divides `cols`.
    pub fn check(&self, cols: usize) -> std::result::Result<(), String> {
        match *self {
            Transform::None => Ok(()),
            Transform::BlockHadamard { block, .. } => {
                let b = block as usize;
                if b < 2 || !b.is_power_of_two() {
                    Err(format!("block {block} is not a power of two >= 2"))
                } else if cols % b != 0 {
                    Err(format!("block {block} does not divide the {cols} columns"))
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// One step of splitmix64 (Steele, Lea, Flood 2014), as in Java's SplittableRandom.
#[inline]
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The sign diagonal s_0..s_{cols-1} as ±1.0.
pub fn hadamard_signs(cols: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..cols)
        .map(|_| {
            if splitmix64(&mut state) & 1 == 1 {
                -1.0
            } else {
                1.0
            }
        })
        .collect()
}

/// The element types the transform runs in: f32 for weights and activations, f64 for the
/// quantizer's Hessians.
pub trait HadamardScalar:
    Copy + std::ops::Add<Output = Self> + std::ops::Sub<Output = Self> + std::ops::MulAssign
{
    /// 1/√block, computed in this type.
    fn inv_sqrt(block: usize) -> Self;
}

impl HadamardScalar for f32 {
    fn inv_sqrt(block: usize) -> f32 {
        1.0 / (block as f32).sqrt()
    }
}

impl HadamardScalar for f64 {
    fn inv_sqrt(block: usize) -> f64 {
        1.0 / (block as f64).sqrt()
    }
}

/// x ← x·B for one row, given precomputed `signs` (x ← (x ⊙ s)·B); `block` a power of two.
pub fn apply_hadamard_with_signs<T: HadamardScalar>(x: &mut [T], signs: &[T], block: usize) {
    debug_assert_eq!(x.len(), signs.len());
    for (v, &s) in x.iter_mut().zip(signs) {
        *v *= s;
    }
    let norm = T::inv_sqrt(block);
    for chunk in x.chunks_exact_mut(block) {
        // in-place fast Walsh-Hadamard transform (natural / Sylvester order)
        let mut h = 1;
        while h < block {
            for i in (0..block).step_by(2 * h) {
                for j in i..i + h {
                    let (a, b) = (chunk[j], chunk[j + h]);
                    chunk[j] = a + b;
                    chunk[j + h] = a - b;
                }
            }
            h *= 2;
        }
        for v in chunk.iter_mut() {
            *v *= norm;
        }
    }
}

/// Rotates every row of `x` (rows of `cols` elements, back to back): row ← row·H with
/// H = S·blockdiag(H_block/√block). The quantizer applies it to weight rows, the runtime to
/// activation rows, with the tensor's `block` and `seed`.
pub fn apply_hadamard_rows(x: &mut [f32], cols: usize, block: usize, seed: u64) -> Result<()> {
    let t = Transform::BlockHadamard {
        block: u32::try_from(block).unwrap_or(0),
        seed,
    };
    t.check(cols).map_err(|problem| MixqError::QType {
        qtype: "hadamard",
        problem,
    })?;
    if x.len() % cols != 0 {
        return Err(MixqError::QType {
            qtype: "hadamard",
            problem: format!("{} values are not whole rows of {cols}", x.len()),
        });
    }
    let signs = hadamard_signs(cols, seed);
    for row in x.chunks_exact_mut(cols) {
        apply_hadamard_with_signs(row, &signs, block);
    }
    Ok(())
}
