//! The model: one Gemma 3 forward pass over any backend.
pub mod gemma3;
