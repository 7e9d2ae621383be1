//! Where weights come from: an HF checkpoint (the full-precision reference) or a .mixq file.
//! Both hand the backend the same [`WeightSource`]: a view of the stored bytes and their layout.

use anyhow::{bail, Context, Result};
use mixq_format::checkpoint::{DType, HfCheckpoint};
use mixq_format::quant::{QType, Transform};
use mixq_format::{Gemma3Config, MixqFile, SharedBytes};
use std::path::Path;

/// One stored tensor: `rows x cols` values (1-D tensors are one row), encoded as `qtype`
/// (formats/SPEC.md), possibly stored rotated (`transform`).
#[derive(Debug, Clone)]
pub struct WeightSource {
    pub name: String,
    pub qtype: QType,
    pub rows: usize,
    pub cols: usize,
    pub bytes: SharedBytes,
    pub transform: Transform,
    /// The .mixq section holding it (`npu.bank0`, `vulkan.heap0`, `host`); `None` outside .mixq files.
    /// The hybrid scheduler puts tensors of `npu.bank*` sections on the NPU engine.
    pub section: Option<String>,
}

impl WeightSource {
    /// Checks the byte length against the type and shape, and the transform against the row
    /// length; returns the bytes per stored row. Every backend calls this before binding.
    pub fn validate(&self) -> Result<usize> {
        let row_bytes = self.qtype.row_bytes(self.cols)?;
        if self.rows.checked_mul(row_bytes) != Some(self.bytes.len()) {
            bail!(
                "tensor `{}`: {} bytes, but {}x{} {} needs {}x{row_bytes}",
                self.name,
                self.bytes.len(),
                self.rows,
                self.cols,
                self.qtype.name(),
                self.rows
            );
        }
        self.transform
            .check(self.cols)
            .map_err(|e| anyhow::anyhow!("tensor `{}`: {e}", self.name))?;
        Ok(row_bytes)
    }

    /// An f32 tensor held in memory (the quantizer's layer-at-a-time weights).
    pub fn from_f32(name: &str, rows: usize, cols: usize, values: &[f32]) -> Self {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        WeightSource {
            name: name.to_string(),
            qtype: QType::F32,
            rows,
            cols,
            bytes: SharedBytes::from_vec(bytes),
            transform: Transform::None,
            section: None,
        }
    }
}

/// A model file the runtime can run.
pub trait WeightStore {
    fn config(&self) -> &Gemma3Config;
    fn weight(&self, name: &str) -> Result<WeightSource>;
    /// tokenizer.json contents.
    fn tokenizer_json(&self) -> Result<Vec<u8>>;
    /// Where the weights came from, for logs.
    fn describe(&self) -> String;
    /// Bytes of all stored weight tensors: what one decode step reads (the tied embedding is
    /// read whole by the lm_head).
    fn tensor_bytes(&self) -> Option<u64> {
        None
    }
}

impl WeightStore for HfCheckpoint {
    fn config(&self) -> &Gemma3Config {
        HfCheckpoint::config(self)
    }

    fn weight(&self, name: &str) -> Result<WeightSource> {
        let t = self.tensor(name)?;
        let qtype = match t.dtype {
            DType::F32 => QType::F32,
            DType::F16 => QType::F16,
            DType::BF16 => QType::BF16,
        };
        let (rows, cols) = match t.shape.as_slice() {
            [c] => (1, *c),
            [r, c] => (*r, *c),
            s => bail!("tensor `{name}`: expected 1-D or 2-D, found shape {s:?}"),
        };
        Ok(WeightSource {
            name: name.to_string(),
            qtype,
            rows,
            cols,
            bytes: SharedBytes::from_vec(t.data.to_vec()),
            transform: Transform::None,
            section: None,
        })
    }

    fn tokenizer_json(&self) -> Result<Vec<u8>> {
        let p = self.tokenizer_json_path();
        std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
    }

    fn describe(&self) -> String {
        format!("HF checkpoint {}", self.dir().display())
    }

    fn tensor_bytes(&self) -> Option<u64> {
        Some(
            self.tensor_names()
                .iter()
                .filter_map(|n| self.tensor(n).ok())
                .map(|t| t.data.len() as u64)
                .sum(),
        )
    }
}

/// A .mixq file. Tensors are views into a memory map of the file: opening reads the header
/// and index only, and pages of weights are read when a kernel first touches them.
pub struct MixqStore {
    file: MixqFile,
    map: SharedBytes,
}

impl MixqStore {
    pub fn open(path: &Path) -> Result<Self> {
        let file = MixqFile::open(path)?;
        // A second read-only map of the same (validated) file shares the page cache; it gives
        // us reference-counted views that outlive borrows of `file`.
        let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: read-only map of a file we do not modify; see MixqFile::open for the caveat.
        let map = unsafe { memmap2::Mmap::map(&f) }
            .with_context(|| format!("mapping {}", path.display()))?;
        if map.len() != file.bytes().len() {
            bail!("{}: file changed while opening", path.display());
        }
        Ok(MixqStore {
            file,
            map: SharedBytes::from_mmap(map),
        })
    }

    pub fn file(&self) -> &MixqFile {
        &self.file
    }
}

impl WeightStore for MixqStore {
    fn config(&self) -> &Gemma3Config {
        self.file.config()
    }

    fn weight(&self, name: &str) -> Result<WeightSource> {
        let t = self.file.tensor(name)?;
        let offset = t.bytes.as_ptr() as usize - self.file.bytes().as_ptr() as usize;
        let bytes = self
            .map
            .slice(offset..offset + t.bytes.len())
            .context("tensor outside the file")?;
        Ok(WeightSource {
            name: name.to_string(),
            qtype: t.qtype,
            rows: t.rows,
            cols: t.cols,
            bytes,
            transform: t.transform,
            section: Some(t.section.to_string()),
        })
    }

    fn tokenizer_json(&self) -> Result<Vec<u8>> {
        Ok(self.file.blob("meta.tokenizer")?.to_vec())
    }

    fn describe(&self) -> String {
        format!(
            "{} ({} recipe)",
            self.file.path().display(),
            self.file.index().recipe.name
        )
    }

    fn tensor_bytes(&self) -> Option<u64> {
        Some(self.file.tensors().map(|t| t.bytes.len() as u64).sum())
    }
}

/// Opens a model path: an HF checkpoint directory or a .mixq file.
pub fn open_store(path: &Path) -> Result<Box<dyn WeightStore>> {
    if path.is_dir() {
        return Ok(Box::new(HfCheckpoint::open(path)?));
    }
    if !path.exists() {
        bail!("{}: no such file or directory", path.display());
    }
    Ok(Box::new(MixqStore::open(path)?))
}
