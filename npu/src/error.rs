//! Errors of the NPU crate: one enum, each variant with the context needed to act on it.

/// Result alias of this crate.
pub type Result<T, E = NpuError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum NpuError {
    // === Shapes and types ===
    #[error("{op}: weight type {qtype} is not supported by the W4ABF16 NPU kernels (only I4_GROUPED, I4_GROUPED32 and I4_PER_CHANNEL)")]
    UnsupportedQType {
        op: &'static str,
        qtype: &'static str,
    },
    #[error("{op}: {what} has length {found}, expected {expected}")]
    Length {
        op: &'static str,
        what: &'static str,
        found: usize,
        expected: usize,
    },
    #[error("{op}: {problem}")]
    Shape { op: &'static str, problem: String },

    // === Tiling ===
    #[error("layer {layer} {what}: does not fit the {capacity}-byte {memory} even at the smallest tile ({need} bytes needed)")]
    DoesNotFit {
        layer: usize,
        what: String,
        memory: &'static str,
        capacity: u64,
        need: u64,
    },

    // === Placement ===
    #[error("tensor `{name}`: {problem}")]
    Placement { name: String, problem: String },

    // === Formats ===
    #[error(transparent)]
    Format(#[from] mixq_format::mixq::MixqError),
}
