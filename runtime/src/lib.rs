//! mixq-runtime: the Gemma 3 model, its backends, generation and the chat template.
//!
//! - [`weights`]: where weights come from (HF checkpoint, .mixq file).
//! - [`backend`]: the few ops Gemma 3 needs, per device ([`backend::cpu`]).
//! - [`model::gemma3`]: the forward pass.
//! - [`sampling`], [`generate`], [`chat`]: turning logits into text.

pub mod backend;
pub mod chat;
pub mod generate;
pub mod model;
pub mod sampling;
pub mod weights;

pub use model::gemma3::{Gemma3, LastLogits, Logits, Session};
