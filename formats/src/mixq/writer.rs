//! The streaming writer: the plan fixes every offset up front, tensors arrive in any order
//! and are written in place; blobs are appended after the tensor sections; `finish` writes the
//! index and then the header, fsyncs, and renames `<out>.tmp` to `<out>`.
//!
//! Peak memory is the tensor being written: checksums are accumulated while tensors arrive in
//! offset order; a section that received a tensor out of order is re-read once at `finish`.

use super::error::{MixqError, Result};
#[cfg(test)]
use super::index::Index;
use super::index::{Header, ProfileEntry, Recipe, SectionEntry, TensorEntry};
use super::{align_up, HEADER_LEN, MINOR_VERSION, SECTION_ALIGN, VERSION};
use crate::config::Gemma3Config;
use crate::profile::{Device, Placement, Plan};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Everything about the model the index records besides tensors and blobs.
#[derive(Debug, Clone)]
pub struct FileMeta {
    pub config: Gemma3Config,
    /// The checkpoint's config.json text, verbatim.
    pub config_json: String,
    pub recipe: Recipe,
}

struct SectionState {
    entry: SectionEntry,
    hasher: crc32fast::Hasher,
    /// Bytes fed to `hasher` so far (the section prefix [0, cursor) is hashed).
    cursor: u64,
    /// A tensor arrived out of order: re-read the section at finish.
    reread: bool,
}

/// Writes one `.mixq` file. Dropping it without [`finish`](Self::finish) deletes the
/// temporary file.
pub struct MixqWriter {
    file: File,
    tmp_path: PathBuf,
    out_path: PathBuf,
    meta: FileMeta,
    plan: Plan,
    sections: Vec<SectionState>,
    /// tensor name -> (index in plan.tensors, section index, written)
    tensors: HashMap<String, (usize, usize, bool)>,
    /// Aligned end of the last section so far.
    end: u64,
    finished: bool,
}

fn werr(problem: impl Into<String>) -> MixqError {
    MixqError::Writer {
        problem: problem.into(),
    }
}

impl MixqWriter {
    /// Creates `<path>.tmp` laid out by `plan` (from [`crate::profile::plan`]).
    pub fn create(path: impl AsRef<Path>, plan: Plan, meta: FileMeta) -> Result<MixqWriter> {
        let out_path = path.as_ref().to_path_buf();
        let mut tmp = out_path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp_path = PathBuf::from(tmp);
        // read access too: sections written out of order are re-read for their checksum
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp_path)
            .map_err(|e| MixqError::io(&tmp_path, e))?;

        let mut sections = Vec::new();
        let mut section_of = HashMap::new();
        let mut end = SECTION_ALIGN;
        for rf in plan.regions.iter().filter(|r| r.used > 0) {
            if rf.region.device == Device::Meta {
                return Err(werr(format!("region `{}` has device meta", rf.region.name)));
            }
            section_of.insert(rf.region.name.clone(), sections.len());
            sections.push(SectionState {
                entry: SectionEntry {
                    name: rf.region.name.clone(),
                    device: rf.region.device,
                    offset: end,
                    length: rf.used,
                    crc32: 0,
                    budget: rf.region.budget,
                },
                hasher: crc32fast::Hasher::new(),
                cursor: 0,
                reread: false,
            });
            end = end
                .checked_add(rf.used)
                .and_then(|e| align_up(e, SECTION_ALIGN))
                .ok_or_else(|| MixqError::overflow("file layout"))?;
        }
        let mut tensors = HashMap::new();
        for (i, (spec, pl)) in plan.tensors.iter().enumerate() {
            let s = *section_of
                .get(&pl.section)
                .ok_or_else(|| werr(format!("tensor `{}` placed in empty region", spec.name)))?;
            tensors.insert(spec.name.clone(), (i, s, false));
        }
        file.set_len(end).map_err(|e| MixqError::io(&tmp_path, e))?;
        Ok(MixqWriter {
            file,
            tmp_path,
            out_path,
            meta,
            plan,
            sections,
            tensors,
            end,
            finished: false,
        })
    }

    /// The plan being executed.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Writes tensor `name`'s stored bytes (exactly its planned length) at its final offset.
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let (pl, s) = self.put(name, bytes, false)?;
        // checksum on the fly while tensors come in offset order (gaps are zero padding)
        let sec = &mut self.sections[s];
        if !sec.reread && pl.offset >= sec.cursor {
            let gap = (pl.offset - sec.cursor) as usize;
            sec.hasher.update(&vec![0u8; gap]);
            sec.hasher.update(bytes);
            sec.cursor = pl.offset + pl.length;
        } else {
            sec.reread = true;
        }
        Ok(())
    }

    /// Replaces the bytes of a tensor already written (a later phase of the converter tuned
    /// it); its section's checksum is then recomputed from the file in [`MixqWriter::finish`].
    pub fn rewrite_tensor(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let (_, s) = self.put(name, bytes, true)?;
        self.sections[s].reread = true;
        Ok(())
    }

    /// Checks `bytes` against `name`'s plan and whether it was written before (`again`), writes
    /// them at the tensor's offset and marks it written; returns its placement and section.
    fn put(&mut self, name: &str, bytes: &[u8], again: bool) -> Result<(Placement, usize)> {
        let (i, s, written) = self
            .tensors
            .get_mut(name)
            .ok_or_else(|| werr(format!("tensor `{name}` is not in the plan")))?;
        match (*written, again) {
            (true, false) => return Err(werr(format!("tensor `{name}` written twice"))),
            (false, true) => {
                return Err(werr(format!(
                    "tensor `{name}` rewritten before it was written"
                )))
            }
            _ => {}
        }
        let pl = self.plan.tensors[*i].1.clone();
        if bytes.len() as u64 != pl.length {
            return Err(werr(format!(
                "tensor `{name}`: {} bytes given, {} planned",
                bytes.len(),
                pl.length
            )));
        }
        let s = *s;
        self.file
            .write_all_at(bytes, self.sections[s].entry.offset + pl.offset)
            .map_err(|e| MixqError::io(&self.tmp_path, e))?;
        *written = true;
        Ok((pl, s))
    }

    /// Appends a blob (tokenizer.json, calibration summary, quality report, ...) as its own
    /// section; `name` starts with `meta.` (see [`super::index::BLOB_TOKENIZER`]).
    pub fn add_blob(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        if !name.starts_with("meta.") || name.len() <= 5 {
            return Err(werr(format!(
                "blob name `{name}` must be `meta.<something>`"
            )));
        }
        if self.sections.iter().any(|s| s.entry.name == name) {
            return Err(MixqError::DuplicateSection { name: name.into() });
        }
        if bytes.is_empty() {
            return Err(MixqError::EmptySection { name: name.into() });
        }
        let offset = self.end;
        self.file
            .write_all_at(bytes, offset)
            .map_err(|e| MixqError::io(&self.tmp_path, e))?;
        self.end = offset
            .checked_add(bytes.len() as u64)
            .and_then(|e| align_up(e, SECTION_ALIGN))
            .ok_or_else(|| MixqError::overflow("file layout"))?;
        self.sections.push(SectionState {
            entry: SectionEntry {
                name: name.into(),
                device: Device::Meta,
                offset,
                length: bytes.len() as u64,
                crc32: crc32fast::hash(bytes),
                budget: None,
            },
            hasher: crc32fast::Hasher::new(),
            cursor: bytes.len() as u64,
            reread: false,
        });
        Ok(())
    }

    /// Checks every planned tensor was written, completes the checksums, writes the index and
    /// the header, fsyncs and renames into place. Returns the final path.
    pub fn finish(mut self) -> Result<PathBuf> {
        let mut missing: Vec<&str> = self
            .tensors
            .iter()
            .filter(|(_, v)| !v.2)
            .map(|(k, _)| k.as_str())
            .collect();
        if !missing.is_empty() {
            missing.sort();
            return Err(werr(format!(
                "{} planned tensors never written, first `{}`",
                missing.len(),
                missing[0]
            )));
        }
        let mut buf = vec![0u8; 1 << 20];
        for sec in &mut self.sections {
            if sec.entry.device == Device::Meta {
                continue;
            }
            if sec.reread {
                let mut h = crc32fast::Hasher::new();
                let mut pos = 0u64;
                while pos < sec.entry.length {
                    let n = (sec.entry.length - pos).min(buf.len() as u64) as usize;
                    self.file
                        .read_exact_at(&mut buf[..n], sec.entry.offset + pos)
                        .map_err(|e| MixqError::io(&self.tmp_path, e))?;
                    h.update(&buf[..n]);
                    pos += n as u64;
                }
                sec.entry.crc32 = h.finalize();
            } else {
                debug_assert_eq!(sec.cursor, sec.entry.length);
                sec.entry.crc32 = sec.hasher.clone().finalize();
            }
        }
        let index = IndexOut {
            format: "mixq",
            version: VERSION,
            minor_version: MINOR_VERSION,
            config: &self.meta.config,
            config_json: &self.meta.config_json,
            recipe: &self.meta.recipe,
            profile: ProfileEntry {
                name: self.plan.profile.clone(),
                regions: self.plan.regions.iter().map(|r| r.region.clone()).collect(),
            },
            sections: self.sections.iter().map(|s| s.entry.clone()).collect(),
            tensor_count: self.plan.tensors.len() as u64,
            tensors: self
                .plan
                .tensors
                .iter()
                .map(|(spec, pl)| TensorEntry {
                    name: spec.name.clone(),
                    qtype: spec.qtype as u64,
                    shape: spec.shape.iter().map(|&d| d as u64).collect(),
                    section: pl.section.clone(),
                    offset: pl.offset,
                    length: pl.length,
                    transform: spec.transform,
                    intended_section: pl.intended_section.clone(),
                })
                .collect(),
        };
        let json = serde_json::to_vec(&index).map_err(|e| werr(format!("index: {e}")))?;
        let index_offset = self.end;
        let header = Header {
            version: VERSION,
            flags: 0,
            index_offset,
            index_len: json.len() as u64,
            index_crc32: crc32fast::hash(&json),
            section_align: SECTION_ALIGN as u32,
            file_len: index_offset + json.len() as u64,
        };
        let io = |e| MixqError::io(&self.tmp_path, e);
        self.file.write_all_at(&json, index_offset).map_err(io)?;
        self.file.set_len(header.file_len).map_err(io)?;
        // The header goes last: until it is written the file has no magic and never opens.
        self.file.sync_all().map_err(io)?;
        self.file.write_all_at(&header.to_bytes(), 0).map_err(io)?;
        debug_assert_eq!(HEADER_LEN, 64);
        self.file.sync_all().map_err(io)?;
        std::fs::rename(&self.tmp_path, &self.out_path)
            .map_err(|e| MixqError::io(&self.out_path, e))?;
        if let Some(dir) = self.out_path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            // make the rename durable; not every filesystem lets a directory be fsynced
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.finished = true;
        Ok(self.out_path.clone())
    }
}

/// [`Index`] as written: the config serialized straight from its struct, so its key order is
/// the struct's whatever serde_json features the build unifies (a `Value` would be sorted or
/// not depending on `preserve_order`). Same fields, same order as [`Index`].
#[derive(serde::Serialize)]
struct IndexOut<'a> {
    format: &'static str,
    version: u32,
    minor_version: u32,
    config: &'a Gemma3Config,
    config_json: &'a str,
    recipe: &'a Recipe,
    profile: ProfileEntry,
    sections: Vec<SectionEntry>,
    tensor_count: u64,
    tensors: Vec<TensorEntry>,
}

#[cfg(test)]
const _: fn(Index) = |i| {
    // keep IndexOut's fields in step with Index's
    let Index {
        format: _,
        version: _,
        minor_version: _,
        config: _,
        config_json: _,
        recipe: _,
        profile: _,
        sections: _,
        tensor_count: _,
        tensors: _,
    } = i;
};

impl Drop for MixqWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}
