//! The `.mixq` file: one memory-mappable file holding a quantized Gemma 3 model, its sections
//! laid out for the devices that run it. SPEC.md (beside this crate's Cargo.toml) is the
//! normative description; this module implements it.
//!
//! ```text
//! [header: 64 bytes][zero padding to 64 KiB]
//! [section 0][zero padding to 64 KiB] ... [section n-1][zero padding to 64 KiB]
//! [JSON index, to end of file]
//! ```

pub mod error;
pub mod index;
pub mod reader;
#[cfg(test)]
mod tests;
pub mod writer;

pub use error::{MixqError, Result};
pub use index::{
    Header, Index, ProfileEntry, Recipe, SectionEntry, TensorEntry, BLOB_CALIBRATION, BLOB_REPORT,
    BLOB_TOKENIZER,
};
pub use reader::{MixqFile, TensorRef, VerifyReport};
pub use writer::{FileMeta, MixqWriter};

/// The 8 magic bytes that open every `.mixq` file: "MIXQ", NUL, CR, LF, SUB (the PNG trick:
/// line-ending conversion or text-mode truncation garbles them, so a mangled copy is caught).
pub const MAGIC: [u8; 8] = *b"MIXQ\0\r\n\x1a";
/// Major format version this code reads and writes. Bumped only for structural changes.
pub const VERSION: u32 = 1;
/// Minor version of the index this code writes (additive revisions: ignorable JSON fields,
/// new quant type numbers). 1: quant type 8, I4_GROUPED32; 2: quant type 9, I4_GROUPED16.
pub const MINOR_VERSION: u32 = 2;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 64;
/// Alignment of every section's file offset (and of the end of the header block).
pub const SECTION_ALIGN: u64 = 64 * 1024;
/// Alignment of every tensor's offset inside its section.
pub const TENSOR_ALIGN: u64 = 256;
/// Largest index a reader accepts.
pub const MAX_INDEX_LEN: u64 = 64 * 1024 * 1024;

/// The smallest multiple of `align` (a power of two) that is >= `x`; `None` on overflow.
pub fn align_up(x: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    Some(x.checked_add(align - 1)? & !(align - 1))
}
