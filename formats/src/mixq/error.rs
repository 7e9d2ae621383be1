//! Every way reading, writing or checking a `.mixq` file (and the quant-type code) can fail.
//!
//! One variant per check, so a test (or a user) can tell exactly which rule a file broke.
//! SPEC.md §"Validation rules" lists the same checks in the same order.

use std::path::PathBuf;

/// Result alias of the `.mixq` code.
pub type Result<T, E = MixqError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum MixqError {
    // === I/O ===
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    // === Header ===
    #[error("file is {len} bytes, shorter than the 64-byte header")]
    TooSmall { len: u64 },
    #[error("bad magic {found:02x?}: not a .mixq file")]
    BadMagic { found: [u8; 8] },
    #[error("format version {found} is not supported (this reader reads version {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("header flags {flags:#x} set bits this reader does not know")]
    UnknownFlags { flags: u32 },
    #[error("header section alignment {found} (expected {expected})")]
    BadAlignment { found: u32, expected: u32 },
    #[error("header reserved bytes are not zero (byte {offset})")]
    ReservedNotZero { offset: usize },
    #[error("file is {actual} bytes but the header says {expected} (truncated or appended to)")]
    FileLength { expected: u64, actual: u64 },
    #[error("index is {len} bytes, above the {max}-byte limit")]
    IndexTooLarge { len: u64, max: u64 },
    #[error("index [{offset}, +{len}) does not end exactly at end of file ({file_len})")]
    IndexBounds {
        offset: u64,
        len: u64,
        file_len: u64,
    },
    #[error("index checksum mismatch: header says {expected:#010x}, bytes give {actual:#010x}")]
    IndexChecksum { expected: u32, actual: u32 },

    // === Index ===
    #[error("index is not valid JSON for this format: {source}")]
    IndexJson { source: serde_json::Error },
    #[error("index says format `{found}`, expected `mixq`")]
    IndexFormat { found: String },
    #[error("index version {index} disagrees with header version {header}")]
    IndexVersion { index: u32, header: u32 },
    #[error("index tensor_count is {declared} but the table holds {actual} tensors")]
    TensorCount { declared: u64, actual: u64 },
    #[error("index: {problem}")]
    Index { problem: String },

    // === Sections ===
    #[error("section `{name}`: duplicate name")]
    DuplicateSection { name: String },
    #[error("section `{name}`: empty (sections must hold at least one byte)")]
    EmptySection { name: String },
    #[error("section `{name}`: offset {offset} is not a multiple of {align}")]
    SectionMisaligned {
        name: String,
        offset: u64,
        align: u64,
    },
    #[error("section `{name}` [{offset}, +{len}) overlaps the previous section, which ends at {prev_end}")]
    SectionOverlap {
        name: String,
        offset: u64,
        len: u64,
        prev_end: u64,
    },
    #[error("section `{name}` starts at {offset}; the canonical layout puts it at {expected}")]
    SectionGap {
        name: String,
        offset: u64,
        expected: u64,
    },
    #[error("section `{name}` [{offset}, +{len}) runs past the index at {limit}")]
    SectionBounds {
        name: String,
        offset: u64,
        len: u64,
        limit: u64,
    },
    #[error("sections end at {sections_end} (aligned) but the index starts at {index_offset}")]
    IndexPlacement {
        sections_end: u64,
        index_offset: u64,
    },
    #[error("section `{name}` holds {len} bytes, over its budget of {budget}")]
    OverBudget { name: String, len: u64, budget: u64 },
    #[error("section `{name}`: checksum mismatch: index says {expected:#010x}, bytes give {actual:#010x}")]
    SectionChecksum {
        name: String,
        expected: u32,
        actual: u32,
    },
    #[error("padding after section `{name}` is not zero (file offset {offset})")]
    PaddingNotZero { name: String, offset: u64 },
    #[error("no section named `{name}`")]
    NoSuchSection { name: String },
    #[error("no blob named `{name}`")]
    NoSuchBlob { name: String },

    // === Tensors ===
    #[error("tensor `{name}`: duplicate name")]
    DuplicateTensor { name: String },
    #[error("tensor `{name}`: unknown qtype {qtype}")]
    UnknownQType { name: String, qtype: u64 },
    #[error("tensor `{name}`: bad shape {shape:?} ({problem})")]
    BadShape {
        name: String,
        shape: Vec<u64>,
        problem: String,
    },
    #[error("tensor `{name}`: byte length {len} but {qtype} of shape {shape:?} takes {expected}")]
    TensorLength {
        name: String,
        qtype: String,
        shape: Vec<u64>,
        len: u64,
        expected: u64,
    },
    #[error("tensor `{name}`: section `{section}` is not a tensor section")]
    TensorSection { name: String, section: String },
    #[error("tensor `{name}`: offset {offset} in section is not a multiple of {align}")]
    TensorMisaligned {
        name: String,
        offset: u64,
        align: u64,
    },
    #[error("tensor `{name}` [{offset}, +{len}) runs past the end of section `{section}` ({section_len} bytes)")]
    TensorBounds {
        name: String,
        section: String,
        offset: u64,
        len: u64,
        section_len: u64,
    },
    #[error("tensor `{name}` overlaps tensor `{other}` in section `{section}`")]
    TensorOverlap {
        name: String,
        other: String,
        section: String,
    },
    #[error("tensor `{name}`: bad transform: {problem}")]
    BadTransform { name: String, problem: String },
    #[error("no tensor named `{name}`")]
    NoSuchTensor { name: String },

    // === Quant types ===
    #[error("{qtype}: {cols} columns is not a multiple of the block size {block}")]
    ColsNotMultiple {
        qtype: &'static str,
        cols: u64,
        block: u64,
    },
    #[error("size of {what} overflows u64")]
    Overflow { what: String },
    #[error("{qtype}: {what}: length {found}, expected {expected}")]
    BufferLength {
        qtype: &'static str,
        what: &'static str,
        found: usize,
        expected: usize,
    },
    #[error("{qtype}: {problem}")]
    QType {
        qtype: &'static str,
        problem: String,
    },

    // === Writer and placement ===
    #[error("plan: {problem}")]
    Plan { problem: String },
    #[error("writer: {problem}")]
    Writer { problem: String },
    #[error("unknown device profile `{name}` (known: phoenix, gpu, cpu)")]
    UnknownProfile { name: String },
}

impl MixqError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        MixqError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn overflow(what: impl Into<String>) -> Self {
        MixqError::Overflow { what: what.into() }
    }
}
