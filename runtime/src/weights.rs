//! Where weights come from: an HF checkpoint (the full-precision reference) or a .mixq file.
//! Both hand the backend the same [`WeightSource`]: a view of the stored bytes and their layout.

use anyhow::{bail, Context, Result};
use mixq_format::checkpoint::{DType, HfCheckpoint};
use mixq_format::quant::{QType, Transform};
use mixq_format::{Gemma3Config, SharedBytes};
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
}

impl WeightSource {
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
        })
    }

    fn tokenizer_json(&self) -> Result<Vec<u8>> {
        let p = self.tokenizer_json_path();
        std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
    }

    fn describe(&self) -> String {
        format!("HF checkpoint {}", self.dir().display())
    }
}

/// Opens a model path: an HF checkpoint directory (later also a .mixq file).
pub fn open_store(path: &Path) -> Result<Box<dyn WeightStore>> {
    if path.is_dir() {
        return Ok(Box::new(HfCheckpoint::open(path)?));
    }
    if !path.exists() {
        bail!("{}: no such file or directory", path.display());
    }
    bail!(
        "{}: not an HF checkpoint directory (a directory with config.json and *.safetensors)",
        path.display()
    )
}
