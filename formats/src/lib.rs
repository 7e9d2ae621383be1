//! mixq-format: everything about bytes on disk.
//!
//! - [`config`]: the Gemma 3 text-model configuration, parsed once from HF `config.json`.
//! - [`checkpoint`]: the Hugging Face checkpoint reader (safetensors, memory-mapped).
//! - [`tokenizer`]: tokenizer.json loading.

pub mod bytes;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod mixq;
pub mod profile;
pub mod quant;
pub mod tokenizer;

pub use bytes::SharedBytes;
pub use config::{Gemma3Config, LayerKind};
pub use error::{FormatError, Result};
pub use mixq::{MixqError, MixqFile, MixqWriter};
