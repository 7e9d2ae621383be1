//! The header and the JSON index (SPEC.md §"Header", §"Index").

use super::error::{MixqError, Result};
use super::{HEADER_LEN, MAGIC, SECTION_ALIGN, VERSION};
use crate::profile::{Device, Region};
use crate::quant::{QType, Transform};
use serde::{Deserialize, Serialize};

/// Standard blob names (each blob is a section of device `meta`).
pub const BLOB_TOKENIZER: &str = "meta.tokenizer";
pub const BLOB_CALIBRATION: &str = "meta.calibration";
pub const BLOB_REPORT: &str = "meta.report";

/// The fixed 64-byte header, little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub flags: u32,
    pub index_offset: u64,
    pub index_len: u64,
    pub index_crc32: u32,
    pub section_align: u32,
    pub file_len: u64,
}

impl Header {
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.index_offset.to_le_bytes());
        b[24..32].copy_from_slice(&self.index_len.to_le_bytes());
        b[32..36].copy_from_slice(&self.index_crc32.to_le_bytes());
        b[36..40].copy_from_slice(&self.section_align.to_le_bytes());
        b[40..48].copy_from_slice(&self.file_len.to_le_bytes());
        b
    }

    /// Parses and checks the header fields that need nothing else (magic, version, flags,
    /// alignment, reserved bytes).
    pub fn parse(b: &[u8]) -> Result<Header> {
        if b.len() < HEADER_LEN {
            return Err(MixqError::TooSmall {
                len: b.len() as u64,
            });
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let magic: [u8; 8] = b[0..8].try_into().expect("8 bytes");
        if magic != MAGIC {
            return Err(MixqError::BadMagic { found: magic });
        }
        let h = Header {
            version: u32_at(8),
            flags: u32_at(12),
            index_offset: u64_at(16),
            index_len: u64_at(24),
            index_crc32: u32_at(32),
            section_align: u32_at(36),
            file_len: u64_at(40),
        };
        if h.version != VERSION {
            return Err(MixqError::UnsupportedVersion {
                found: h.version,
                supported: VERSION,
            });
        }
        if h.flags != 0 {
            return Err(MixqError::UnknownFlags { flags: h.flags });
        }
        if h.section_align as u64 != SECTION_ALIGN {
            return Err(MixqError::BadAlignment {
                found: h.section_align,
                expected: SECTION_ALIGN as u32,
            });
        }
        if let Some(i) = (48..HEADER_LEN).find(|&i| b[i] != 0) {
            return Err(MixqError::ReservedNotZero { offset: i });
        }
        Ok(h)
    }
}

/// The quantization recipe that produced the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Recipe {
    /// e.g. `optimal`, `int8`, `int4`, or a TOML file's name.
    pub name: String,
    /// Free-form settings of the recipe (JSON object or null). The per-tensor types are the
    /// tensor table's `qtype`s; they are not repeated here.
    #[serde(default)]
    pub options: serde_json::Value,
}

/// The device profile the file was laid out for: every region, empty ones included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileEntry {
    pub name: String,
    pub regions: Vec<Region>,
}

/// One section: a 64 KiB-aligned byte range of the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionEntry {
    /// `npu.bank0`, `vulkan.heap0`, `host`, `meta.tokenizer`, ...
    pub name: String,
    pub device: Device,
    /// Absolute file offset, a multiple of 65536.
    pub offset: u64,
    /// Content length in bytes (> 0), padding excluded.
    pub length: u64,
    /// CRC-32 (IEEE) of the `length` content bytes.
    pub crc32: u32,
    /// The profile's budget for this section; `None` = unlimited.
    pub budget: Option<u64>,
}

/// One tensor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorEntry {
    /// Canonical HF name, e.g. `model.layers.3.mlp.gate_proj.weight`.
    pub name: String,
    /// [`QType`] number (kept raw so an unknown number is reported as such).
    pub qtype: u64,
    /// `[rows, cols]` or `[n]`.
    pub shape: Vec<u64>,
    pub section: String,
    /// Offset inside the section, a multiple of 256.
    pub offset: u64,
    pub length: u64,
    #[serde(default)]
    pub transform: Transform,
    /// Present when placement spilled the tensor: the region it was meant for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intended_section: Option<String>,
}

impl TensorEntry {
    pub fn qtype(&self) -> Option<QType> {
        u8::try_from(self.qtype).ok().and_then(QType::from_u8)
    }
}

/// The JSON index, written after the last section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Index {
    /// Always `"mixq"`.
    pub format: String,
    /// Equal to the header's version.
    pub version: u32,
    /// Additive changes within a major version; readers ignore fields they do not know.
    pub minor_version: u32,
    /// The Gemma 3 configuration as `Gemma3Config` serializes it (for inspection and for
    /// readers in other languages).
    pub config: serde_json::Value,
    /// The checkpoint's config.json text, verbatim (the source of truth for the config).
    pub config_json: String,
    pub recipe: Recipe,
    pub profile: ProfileEntry,
    /// In file order.
    pub sections: Vec<SectionEntry>,
    pub tensor_count: u64,
    pub tensors: Vec<TensorEntry>,
}
