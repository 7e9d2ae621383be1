//! mixq-quantizer: recipes, quantization algorithms, quality evaluation and the retention report.
//!
//! - [`recipe`]: which quant type each tensor gets (`optimal`, `int8`, `int4`, TOML files).
//! - [`convert`]: the layer-by-layer calibrate -> quantize -> write pipeline.
//! - [`eval`]: end-to-end quality (perplexity, KL divergence, top-1 agreement) via the runtime.
//! - [`report`]: the quality-retention report (JSON, Markdown, SVG).
//! - [`inspect`]: `inspect` and `verify` of .mixq files; [`synth`]: random-weight files of any shape.

pub mod convert;
pub mod distill;
pub mod equalize;
pub mod eval;
pub mod gptq;
pub mod head;
pub mod inspect;
pub mod recipe;
pub mod refit;
pub mod report;
pub mod rotate;
pub mod search;
pub mod synth;
