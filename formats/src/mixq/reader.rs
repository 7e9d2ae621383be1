//! The reader: memory-maps a `.mixq` file and validates it strictly before handing out any
//! byte (SPEC.md §"Validation rules", in the same order). Opening checks the header, the
//! index checksum and every bound; [`MixqFile::verify`] also checks every section's CRC.
//!
//! No number from the file sizes an allocation before it is bounded by the file's length,
//! and all offset arithmetic is checked, so a hostile file gives an error, never a panic.
//! (As with any memory map, a file truncated by another process while mapped can fault.)

use super::error::{MixqError, Result};
use super::index::{Header, Index, SectionEntry, TensorEntry};
use super::{align_up, HEADER_LEN, MAX_INDEX_LEN, SECTION_ALIGN, TENSOR_ALIGN, VERSION};
use crate::config::Gemma3Config;
use crate::profile::Device;
use crate::quant::{QType, Transform};
use memmap2::Mmap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One tensor of an open file.
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    pub name: &'a str,
    pub qtype: QType,
    /// As stored: `[rows, cols]` or `[n]`.
    pub shape: &'a [u64],
    pub rows: usize,
    pub cols: usize,
    /// The stored bytes: `rows` rows of `qtype.row_bytes(cols)` bytes.
    pub bytes: &'a [u8],
    pub transform: Transform,
    pub section: &'a str,
    pub intended_section: Option<&'a str>,
}

impl<'a> TensorRef<'a> {
    /// Bytes of row `r`.
    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.bytes.len() / self.rows;
        &self.bytes[r * rb..(r + 1) * rb]
    }
}

/// What [`MixqFile::verify`] checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub sections: usize,
    pub tensors: usize,
    /// Content bytes whose CRC was checked.
    pub bytes_checked: u64,
}

/// An open, validated `.mixq` file.
pub struct MixqFile {
    path: PathBuf,
    map: Mmap,
    header: Header,
    index: Index,
    config: Gemma3Config,
    sections: HashMap<String, usize>,
    tensors: HashMap<String, usize>,
}

impl std::fmt::Debug for MixqFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MixqFile")
            .field("path", &self.path)
            .field("sections", &self.index.sections.len())
            .field("tensors", &self.index.tensors.len())
            .finish()
    }
}

impl MixqFile {
    /// Maps and validates `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<MixqFile> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::File::open(&path).map_err(|e| MixqError::io(&path, e))?;
        // SAFETY: the map is read-only; the file is not ours to modify while mapped (see the
        // module docs).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| MixqError::io(&path, e))?;
        let (header, index, config) = validate(&map)?;
        let sections = index
            .sections
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        let tensors = index
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(MixqFile {
            path,
            map,
            header,
            index,
            config,
            sections,
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The whole index, for `inspect` and reports.
    pub fn index(&self) -> &Index {
        &self.index
    }

    pub fn config(&self) -> &Gemma3Config {
        &self.config
    }

    /// The whole mapped file (section offsets in the index are absolute).
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Every tensor, in index order.
    pub fn tensors(&self) -> impl Iterator<Item = TensorRef<'_>> + '_ {
        self.index.tensors.iter().map(|t| self.tensor_ref(t))
    }

    /// The tensor named `name` (canonical HF name).
    pub fn tensor(&self, name: &str) -> Result<TensorRef<'_>> {
        let &i = self
            .tensors
            .get(name)
            .ok_or_else(|| MixqError::NoSuchTensor { name: name.into() })?;
        Ok(self.tensor_ref(&self.index.tensors[i]))
    }

    /// Entry and content of section `name`.
    pub fn section(&self, name: &str) -> Result<(&SectionEntry, &[u8])> {
        let &i = self
            .sections
            .get(name)
            .ok_or_else(|| MixqError::NoSuchSection { name: name.into() })?;
        let s = &self.index.sections[i];
        Ok((s, self.content(s)))
    }

    /// Content of blob `name` (e.g. [`super::index::BLOB_TOKENIZER`]).
    pub fn blob(&self, name: &str) -> Result<&[u8]> {
        match self.section(name) {
            Ok((s, bytes)) if s.device == Device::Meta => Ok(bytes),
            _ => Err(MixqError::NoSuchBlob { name: name.into() }),
        }
    }

    /// Checks every section's CRC and that all padding is zero (reads the whole file).
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut bytes_checked = 0;
        let mut pad_start = HEADER_LEN as u64;
        for s in &self.index.sections {
            check_zero(
                &self.map[pad_start as usize..s.offset as usize],
                &s.name,
                pad_start,
            )?;
            let actual = crc32fast::hash(self.content(s));
            if actual != s.crc32 {
                return Err(MixqError::SectionChecksum {
                    name: s.name.clone(),
                    expected: s.crc32,
                    actual,
                });
            }
            bytes_checked += s.length;
            pad_start = s.offset + s.length;
        }
        check_zero(
            &self.map[pad_start as usize..self.header.index_offset as usize],
            "<last>",
            pad_start,
        )?;
        Ok(VerifyReport {
            sections: self.index.sections.len(),
            tensors: self.index.tensors.len(),
            bytes_checked,
        })
    }

    fn content(&self, s: &SectionEntry) -> &[u8] {
        // bounds were validated at open
        &self.map[s.offset as usize..(s.offset + s.length) as usize]
    }

    fn tensor_ref<'a>(&'a self, t: &'a TensorEntry) -> TensorRef<'a> {
        let s = &self.index.sections[self.sections[&t.section]];
        let start = (s.offset + t.offset) as usize;
        let (rows, cols) = rows_cols(&t.shape).expect("validated at open");
        TensorRef {
            name: &t.name,
            qtype: t.qtype().expect("validated at open"),
            shape: &t.shape,
            rows: rows as usize,
            cols: cols as usize,
            bytes: &self.map[start..start + t.length as usize],
            transform: t.transform,
            section: &t.section,
            intended_section: t.intended_section.as_deref(),
        }
    }
}

fn check_zero(b: &[u8], after: &str, start: u64) -> Result<()> {
    match b.iter().position(|&x| x != 0) {
        Some(i) => Err(MixqError::PaddingNotZero {
            name: after.into(),
            offset: start + i as u64,
        }),
        None => Ok(()),
    }
}

fn rows_cols(shape: &[u64]) -> Option<(u64, u64)> {
    match *shape {
        [n] if n > 0 => Some((1, n)),
        [r, c] if r > 0 && c > 0 => Some((r, c)),
        _ => None,
    }
}

fn index_err(problem: impl Into<String>) -> MixqError {
    MixqError::Index {
        problem: problem.into(),
    }
}

/// Validates a whole file image; returns its header, index and config.
pub(crate) fn validate(b: &[u8]) -> Result<(Header, Index, Gemma3Config)> {
    // 1. header
    let h = Header::parse(b)?;
    let actual_len = b.len() as u64;
    if h.file_len != actual_len {
        return Err(MixqError::FileLength {
            expected: h.file_len,
            actual: actual_len,
        });
    }
    // 2. index bounds and checksum
    if h.index_len > MAX_INDEX_LEN {
        return Err(MixqError::IndexTooLarge {
            len: h.index_len,
            max: MAX_INDEX_LEN,
        });
    }
    if h.index_offset < SECTION_ALIGN || h.index_offset.checked_add(h.index_len) != Some(actual_len)
    {
        return Err(MixqError::IndexBounds {
            offset: h.index_offset,
            len: h.index_len,
            file_len: actual_len,
        });
    }
    let json = &b[h.index_offset as usize..];
    let crc = crc32fast::hash(json);
    if crc != h.index_crc32 {
        return Err(MixqError::IndexChecksum {
            expected: h.index_crc32,
            actual: crc,
        });
    }
    // 3. index
    let index: Index =
        serde_json::from_slice(json).map_err(|source| MixqError::IndexJson { source })?;
    if index.format != "mixq" {
        return Err(MixqError::IndexFormat {
            found: index.format.clone(),
        });
    }
    if index.version != h.version || index.version != VERSION {
        return Err(MixqError::IndexVersion {
            index: index.version,
            header: h.version,
        });
    }
    if index.tensor_count != index.tensors.len() as u64 {
        return Err(MixqError::TensorCount {
            declared: index.tensor_count,
            actual: index.tensors.len() as u64,
        });
    }
    let config: Gemma3Config = match serde_json::from_value(index.config.clone()) {
        Ok(c) => c,
        // a config this build's struct cannot read: re-resolve it from the verbatim text
        Err(_) => Gemma3Config::from_json_str(&index.config_json, Path::new("<mixq index>"))
            .map_err(|e| index_err(format!("config: {e}")))?,
    };

    // 4. sections: canonical layout, in file order, inside [64 KiB, index_offset)
    let regions: HashMap<&str, &crate::profile::Region> = index
        .profile
        .regions
        .iter()
        .map(|r| (r.name.as_str(), r))
        .collect();
    let mut names = HashMap::new();
    let mut expected = SECTION_ALIGN;
    for (i, s) in index.sections.iter().enumerate() {
        if names.insert(s.name.as_str(), i).is_some() {
            return Err(MixqError::DuplicateSection {
                name: s.name.clone(),
            });
        }
        if s.length == 0 {
            return Err(MixqError::EmptySection {
                name: s.name.clone(),
            });
        }
        if s.offset % SECTION_ALIGN != 0 {
            return Err(MixqError::SectionMisaligned {
                name: s.name.clone(),
                offset: s.offset,
                align: SECTION_ALIGN,
            });
        }
        if s.offset < expected {
            return Err(MixqError::SectionOverlap {
                name: s.name.clone(),
                offset: s.offset,
                len: s.length,
                prev_end: expected,
            });
        }
        if s.offset > expected {
            return Err(MixqError::SectionGap {
                name: s.name.clone(),
                offset: s.offset,
                expected,
            });
        }
        let end = s.offset.checked_add(s.length);
        if end.is_none_or(|e| e > h.index_offset) {
            return Err(MixqError::SectionBounds {
                name: s.name.clone(),
                offset: s.offset,
                len: s.length,
                limit: h.index_offset,
            });
        }
        expected = align_up(end.expect("checked"), SECTION_ALIGN)
            .ok_or_else(|| MixqError::overflow("section end"))?;
        if let Some(budget) = s.budget {
            if s.length > budget {
                return Err(MixqError::OverBudget {
                    name: s.name.clone(),
                    len: s.length,
                    budget,
                });
            }
        }
        if s.device == Device::Meta {
            if !s.name.starts_with("meta.") {
                return Err(index_err(format!(
                    "blob section `{}` is not named meta.*",
                    s.name
                )));
            }
        } else {
            match regions.get(s.name.as_str()) {
                Some(r) if r.device == s.device && r.budget == s.budget => {}
                _ => {
                    return Err(index_err(format!(
                        "section `{}` does not match a region of profile `{}`",
                        s.name, index.profile.name
                    )))
                }
            }
        }
    }
    if expected != h.index_offset {
        return Err(MixqError::IndexPlacement {
            sections_end: expected,
            index_offset: h.index_offset,
        });
    }

    // 5. tensors
    let mut seen = HashMap::new();
    let mut spans: HashMap<&str, Vec<(u64, u64, &str)>> = HashMap::new();
    for t in &index.tensors {
        if seen.insert(t.name.as_str(), ()).is_some() {
            return Err(MixqError::DuplicateTensor {
                name: t.name.clone(),
            });
        }
        let qtype = t.qtype().ok_or_else(|| MixqError::UnknownQType {
            name: t.name.clone(),
            qtype: t.qtype,
        })?;
        let bad_shape = |problem: String| MixqError::BadShape {
            name: t.name.clone(),
            shape: t.shape.clone(),
            problem,
        };
        let (rows, cols) = rows_cols(&t.shape)
            .ok_or_else(|| bad_shape("expected 1 or 2 non-zero dimensions".into()))?;
        let expected_len = qtype
            .tensor_bytes_u64(rows, cols)
            .map_err(|e| bad_shape(e.to_string()))?;
        if t.length != expected_len {
            return Err(MixqError::TensorLength {
                name: t.name.clone(),
                qtype: qtype.name().into(),
                shape: t.shape.clone(),
                len: t.length,
                expected: expected_len,
            });
        }
        let sec = match names.get(t.section.as_str()) {
            Some(&i) if index.sections[i].device != Device::Meta => &index.sections[i],
            _ => {
                return Err(MixqError::TensorSection {
                    name: t.name.clone(),
                    section: t.section.clone(),
                })
            }
        };
        if t.offset % TENSOR_ALIGN != 0 {
            return Err(MixqError::TensorMisaligned {
                name: t.name.clone(),
                offset: t.offset,
                align: TENSOR_ALIGN,
            });
        }
        if t.offset
            .checked_add(t.length)
            .is_none_or(|e| e > sec.length)
        {
            return Err(MixqError::TensorBounds {
                name: t.name.clone(),
                section: t.section.clone(),
                offset: t.offset,
                len: t.length,
                section_len: sec.length,
            });
        }
        if t.shape.len() == 1 && t.transform != Transform::None {
            return Err(MixqError::BadTransform {
                name: t.name.clone(),
                problem: "1-D tensors take no transform".into(),
            });
        }
        t.transform
            .check(cols as usize)
            .map_err(|problem| MixqError::BadTransform {
                name: t.name.clone(),
                problem,
            })?;
        if let Some(intended) = &t.intended_section {
            if !regions.contains_key(intended.as_str()) || intended == &t.section {
                return Err(index_err(format!(
                    "tensor `{}`: intended_section `{intended}` is not another region of the profile",
                    t.name
                )));
            }
        }
        spans.entry(t.section.as_str()).or_default().push((
            t.offset,
            t.offset + t.length,
            t.name.as_str(),
        ));
    }
    for (section, mut v) in spans {
        v.sort_unstable();
        for w in v.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(MixqError::TensorOverlap {
                    name: w[1].2.into(),
                    other: w[0].2.into(),
                    section: section.into(),
                });
            }
        }
    }
    Ok((h, index, config))
}
