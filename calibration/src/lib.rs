//! mixq-calibration: sample text to token batches, activation observers (per-channel second
//! moments, Hessians of every linear layer's input), and the layer-by-layer driver that feeds
//! calibration tokens through a model whose earlier layers are already quantized.
//!
//! - [`tokens`]: calibration text -> sequences of token ids (`<bos>` + text tokens).
//! - [`hessian`]: `H = Σ xᵀx` of a linear layer's input, accumulated in f64 from f32 tiles.
//! - [`driver`]: the residual stream of every calibration sequence, one layer at a time:
//!   observe a layer (full precision) to collect its four input Hessians, then advance through
//!   the layer (quantized) so the next layer sees what the quantized model will feed it.

pub mod driver;
pub mod hessian;
pub mod tokens;

pub use driver::{Calibrator, LayerStats, TokenWeights};
pub use hessian::Hessian;
pub use tokens::{CalibSet, Sampling};

/// Errors of calibration: bad text, bad sizes.
#[derive(Debug, thiserror::Error)]
pub enum CalibError {
    #[error("calibration text {source_name}: {problem}")]
    Text {
        source_name: String,
        problem: String,
    },
    #[error("calibration: {0}")]
    Tokenizer(#[from] mixq_format::FormatError),
    #[error("calibration: {problem}")]
    Shape { problem: String },
}

pub type Result<T> = std::result::Result<T, CalibError>;
