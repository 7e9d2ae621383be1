//! Hugging Face checkpoint directory reader (config.json + safetensors, memory-mapped).
//!
//! A checkpoint directory holds `config.json` and either one `model.safetensors` or shards listed
//! by `model.safetensors.index.json`. Every shard is memory-mapped, so opening a 54 GB model costs
//! page-table entries, not RAM. Headers are validated as strictly as the safetensors crate does
//! (size limit, contiguous non-overlapping offsets, byte counts equal to shape x dtype, data ending
//! exactly at end of file) and then every tensor the Gemma 3 text model needs is checked against
//! the shape the config implies, so that later stages can index weights without re-checking.
//!
//! Multimodal checkpoints (`Gemma3ForConditionalGeneration`) keep the text model under a prefix;
//! names are canonicalised to the text-only form (`model.layers.{i}...`) and the vision tower and
//! projector are skipped.

use crate::config::Gemma3Config;
use crate::error::{FormatError, Result};
use memmap2::Mmap;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The safetensors crate's own limit: a larger header is either hostile or not a safetensors file.
const MAX_HEADER_SIZE: u64 = 100_000_000;

const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";

/// Element type of a checkpoint tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// The safetensors spelling (`F32`, `F16`, `BF16`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
        }
    }

    fn from_safetensors(s: &str) -> Option<Self> {
        match s {
            "F32" => Some(DType::F32),
            "F16" => Some(DType::F16),
            "BF16" => Some(DType::BF16),
            _ => None,
        }
    }
}

/// A borrowed tensor of the checkpoint; `data` points into the memory map.
pub struct TensorView<'a> {
    pub name: &'a str,
    pub dtype: DType,
    /// HF/numpy order, e.g. [out_features, in_features].
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

/// Prints the metadata only: the data may be hundreds of megabytes.
impl std::fmt::Debug for TensorView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorView")
            .field("name", &self.name)
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("bytes", &self.data.len())
            .finish()
    }
}

impl TensorView<'_> {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Converts to f32 (exact for all three dtypes).
    ///
    /// The length comes from `data`, not from `shape`: views made by [`HfCheckpoint::tensor`] have
    /// both consistent, and a hand-made inconsistent view must not make us over-allocate or read
    /// out of bounds.
    pub fn to_f32(&self) -> Vec<f32> {
        let n = self.data.len() / self.dtype.size_in_bytes();
        let mut out = vec![0.0f32; n];
        convert_to_f32(
            self.dtype,
            &self.data[..n * self.dtype.size_in_bytes()],
            &mut out,
        );
        out
    }

    /// Converts into `out`, which must hold exactly `numel()` values.
    pub fn to_f32_into(&self, out: &mut [f32]) -> Result<()> {
        let size = self.dtype.size_in_bytes();
        if self.data.len() != out.len().saturating_mul(size) || out.len() != self.numel() {
            return Err(self.err(format!(
                "to_f32_into: output holds {} values but the tensor has shape {:?} ({} bytes of {})",
                out.len(),
                self.shape,
                self.data.len(),
                self.dtype.name()
            )));
        }
        convert_to_f32(self.dtype, self.data, out);
        Ok(())
    }

    /// Row `row` of a 2-D tensor as f32, converting only that row (the embedding gather reads
    /// one row of a 262144-row table per token).
    pub fn row_f32(&self, row: usize) -> Result<Vec<f32>> {
        let cols = self.row_len()?;
        let mut out = vec![0.0f32; cols];
        self.row_f32_into(row, &mut out)?;
        Ok(out)
    }

    /// Row `row` of a 2-D tensor converted into `out` (length = number of columns).
    pub fn row_f32_into(&self, row: usize, out: &mut [f32]) -> Result<()> {
        let cols = self.row_len()?;
        if row >= self.shape[0] {
            return Err(self.err(format!("row {row} out of range for shape {:?}", self.shape)));
        }
        if out.len() != cols {
            return Err(self.err(format!(
                "row_f32_into: output holds {} values but a row has {cols}",
                out.len()
            )));
        }
        let size = self.dtype.size_in_bytes();
        let row_bytes = cols * size;
        let bytes = row
            .checked_mul(row_bytes)
            .and_then(|start| self.data.get(start..start.checked_add(row_bytes)?))
            .ok_or_else(|| {
                self.err(format!(
                    "row {row} lies beyond the tensor's {} bytes of data",
                    self.data.len()
                ))
            })?;
        convert_to_f32(self.dtype, bytes, out);
        Ok(())
    }

    fn row_len(&self) -> Result<usize> {
        match self.shape.as_slice() {
            [_, cols] => Ok(*cols),
            _ => Err(self.err(format!(
                "row access needs a 2-D tensor, shape is {:?}",
                self.shape
            ))),
        }
    }

    fn err(&self, problem: String) -> FormatError {
        FormatError::Tensor {
            name: self.name.to_string(),
            problem,
        }
    }
}

/// Little-endian bytes of `dtype` to f32. `bytes.len()` must be `out.len() * size`; callers check.
///
/// Bytes are decoded with `from_le_bytes` because mmap offsets of safetensors tensors are only
/// byte-aligned: reinterpreting them as `&[u16]` would be undefined behaviour.
fn convert_to_f32(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        // bf16 is the top half of an f32: a shift is exact, NaN payloads included.
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
            }
        }
        // Stage through an aligned buffer so half can use its vectorised (F16C) slice conversion.
        DType::F16 => {
            const CHUNK: usize = 512;
            let mut bits = [half::f16::ZERO; CHUNK];
            for (o, b) in out.chunks_mut(CHUNK).zip(bytes.chunks(CHUNK * 2)) {
                let bits = &mut bits[..o.len()];
                for (h, c) in bits.iter_mut().zip(b.chunks_exact(2)) {
                    *h = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]]));
                }
                half::slice::HalfFloatSliceExt::convert_to_f32_slice(&*bits, o);
            }
        }
    }
}

/// Canonical names and shapes of every tensor the Gemma 3 text model needs, in forward order.
/// `lm_head.weight` is listed only when the config unties it from the embedding.
pub fn expected_tensors(config: &Gemma3Config) -> Vec<(String, Vec<usize>)> {
    let (h, inter, hd) = (
        config.hidden_size,
        config.intermediate_size,
        config.head_dim,
    );
    let (q, kv) = (config.q_dim(), config.kv_dim());
    let mut out = Vec::with_capacity(3 + 13 * config.num_hidden_layers);
    out.push((
        "model.embed_tokens.weight".to_string(),
        vec![config.vocab_size, h],
    ));
    for i in 0..config.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let layer: [(&str, Vec<usize>); 13] = [
            ("input_layernorm.weight", vec![h]),
            ("self_attn.q_proj.weight", vec![q, h]),
            ("self_attn.k_proj.weight", vec![kv, h]),
            ("self_attn.v_proj.weight", vec![kv, h]),
            ("self_attn.q_norm.weight", vec![hd]),
            ("self_attn.k_norm.weight", vec![hd]),
            ("self_attn.o_proj.weight", vec![h, q]),
            ("post_attention_layernorm.weight", vec![h]),
            ("pre_feedforward_layernorm.weight", vec![h]),
            ("mlp.gate_proj.weight", vec![inter, h]),
            ("mlp.up_proj.weight", vec![inter, h]),
            ("mlp.down_proj.weight", vec![h, inter]),
            ("post_feedforward_layernorm.weight", vec![h]),
        ];
        out.extend(layer.into_iter().map(|(n, s)| (format!("{p}.{n}"), s)));
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !config.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![config.vocab_size, h]));
    }
    out
}

/// The text-model name of a stored tensor, or `None` for tensors of the vision side.
fn canonical_name(name: &str) -> Option<String> {
    const SKIPPED: [&str; 4] = [
        "vision_tower.",
        "multi_modal_projector.",
        "model.vision_tower.",
        "model.multi_modal_projector.",
    ];
    if SKIPPED.iter().any(|p| name.starts_with(p)) {
        return None;
    }
    // transformers < 4.52 wrote `language_model.model.*`, later versions `model.language_model.*`.
    for (prefix, replacement) in [
        ("language_model.model.", "model."),
        ("model.language_model.", "model."),
        ("language_model.lm_head.", "lm_head."),
    ] {
        if let Some(rest) = name.strip_prefix(prefix) {
            return Some(format!("{replacement}{rest}"));
        }
    }
    Some(name.to_string())
}

struct Shard {
    path: PathBuf,
    map: Mmap,
}

struct TensorEntry {
    shard: usize,
    /// Name as stored in the file (before canonicalisation), for error messages.
    stored_name: String,
    /// Safetensors dtype string; only F32/F16/BF16 can be viewed.
    dtype: String,
    shape: Vec<usize>,
    /// Absolute byte range in the shard's map, validated against the file length.
    start: usize,
    end: usize,
}

/// An opened HF checkpoint directory. Tensor names are canonical text-model names
/// (`model.embed_tokens.weight`, `model.layers.{i}.self_attn.q_proj.weight`, `model.norm.weight`),
/// whatever prefix the files use (`language_model.`, `model.language_model.`).
pub struct HfCheckpoint {
    dir: PathBuf,
    config: Gemma3Config,
    config_json: String,
    shards: Vec<Shard>,
    tensors: HashMap<String, TensorEntry>,
}

impl HfCheckpoint {
    /// Opens `dir`, maps its shards and checks every tensor the text model needs.
    pub fn open(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config_json =
            std::fs::read_to_string(&config_path).map_err(|e| FormatError::io(&config_path, e))?;
        let config = Gemma3Config::from_json_str(&config_json, &config_path)?;

        let single = dir.join(SINGLE_FILE);
        let index = dir.join(INDEX_FILE);
        // Same precedence as transformers: the single file wins when both exist.
        let (shard_names, weight_map) = if single.is_file() {
            (vec![SINGLE_FILE.to_string()], None)
        } else if index.is_file() {
            let (names, map) = read_index(&index, dir)?;
            (names, Some(map))
        } else {
            return Err(FormatError::Checkpoint {
                path: dir.to_path_buf(),
                problem: format!("no {SINGLE_FILE} or {INDEX_FILE} in this directory"),
            });
        };

        let mut shards = Vec::with_capacity(shard_names.len());
        let mut tensors: HashMap<String, TensorEntry> = HashMap::new();
        let mut stored_by_shard: Vec<HashSet<String>> = Vec::with_capacity(shard_names.len());
        for name in &shard_names {
            let path = dir.join(name);
            let map = map_file(&path)?;
            let entries = parse_header(&path, &map)?;
            let shard = shards.len();
            let mut stored = HashSet::with_capacity(entries.len());
            for e in entries {
                stored.insert(e.name.clone());
                let Some(canonical) = canonical_name(&e.name) else {
                    continue;
                };
                if let Some(prev) = tensors.get(&canonical) {
                    // A collision inside this shard (two prefixes of one name) has no earlier shard.
                    let prev_path = shards.get(prev.shard).map_or(&path, |s: &Shard| &s.path);
                    return Err(FormatError::Checkpoint {
                        path: path.clone(),
                        problem: format!(
                            "duplicate tensor `{canonical}`: stored as `{}` here and as `{}` in {}",
                            e.name,
                            prev.stored_name,
                            prev_path.display()
                        ),
                    });
                }
                tensors.insert(
                    canonical,
                    TensorEntry {
                        shard,
                        stored_name: e.name,
                        dtype: e.dtype,
                        shape: e.shape,
                        start: e.start,
                        end: e.end,
                    },
                );
            }
            stored_by_shard.push(stored);
            shards.push(Shard { path, map });
        }

        // The index is what loaders trust; a tensor it places in a shard that lacks it means the
        // directory was assembled from different exports.
        if let Some(weight_map) = weight_map {
            for (tensor, file) in &weight_map {
                let Some(i) = shard_names.iter().position(|n| n == file) else {
                    continue; // unreachable: shard_names is built from the weight map
                };
                if !stored_by_shard[i].contains(tensor) {
                    return Err(FormatError::Checkpoint {
                        path: index.clone(),
                        problem: format!(
                            "weight_map places tensor `{tensor}` in `{file}`, but that shard has no such tensor"
                        ),
                    });
                }
            }
        }

        let ckpt = HfCheckpoint {
            dir: dir.to_path_buf(),
            config,
            config_json,
            shards,
            tensors,
        };
        ckpt.validate_text_model()?;
        Ok(ckpt)
    }

    fn validate_text_model(&self) -> Result<()> {
        let weights_path = if self.shards.len() == 1 {
            self.shards[0].path.clone()
        } else {
            self.dir.join(INDEX_FILE)
        };
        for (name, expected) in expected_tensors(&self.config) {
            let Some(e) = self.tensors.get(&name) else {
                return Err(FormatError::MissingTensor {
                    path: weights_path,
                    name,
                });
            };
            let path = &self.shards[e.shard].path;
            if DType::from_safetensors(&e.dtype).is_none() {
                return Err(FormatError::UnsupportedDtype {
                    path: path.clone(),
                    name,
                    dtype: e.dtype.clone(),
                });
            }
            if e.shape != expected {
                return Err(FormatError::ShapeMismatch {
                    path: path.clone(),
                    name,
                    found: e.shape.clone(),
                    expected,
                });
            }
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn config(&self) -> &Gemma3Config {
        &self.config
    }
    /// Raw text of config.json, embedded verbatim in .mixq files.
    pub fn config_json(&self) -> &str {
        &self.config_json
    }

    /// A tensor by canonical name, borrowed from the memory map.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let Some((key, e)) = self.tensors.get_key_value(name) else {
            return Err(FormatError::Tensor {
                name: name.to_string(),
                problem: format!("not in checkpoint {}", self.dir.display()),
            });
        };
        let shard = &self.shards[e.shard];
        let dtype =
            DType::from_safetensors(&e.dtype).ok_or_else(|| FormatError::UnsupportedDtype {
                path: shard.path.clone(),
                name: name.to_string(),
                dtype: e.dtype.clone(),
            })?;
        Ok(TensorView {
            name: key,
            dtype,
            shape: e.shape.clone(),
            data: &shard.map[e.start..e.end],
        })
    }

    /// Whether a tensor of this canonical name is stored.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Canonical names of all stored text-model tensors, sorted.
    pub fn tensor_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Paths of the mapped safetensors files, in index order.
    pub fn shard_paths(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    pub fn tokenizer_json_path(&self) -> PathBuf {
        self.dir.join("tokenizer.json")
    }
}

/// Shard file names in first-mention order, and the weight map as (tensor, file) pairs.
type ShardIndex = (Vec<String>, Vec<(String, String)>);

/// Reads the shard index.
fn read_index(index: &Path, dir: &Path) -> Result<ShardIndex> {
    let text = std::fs::read_to_string(index).map_err(|e| FormatError::io(index, e))?;
    let root: Value = serde_json::from_str(&text).map_err(|source| FormatError::Json {
        path: index.to_path_buf(),
        source,
    })?;
    let bad = |problem: String| FormatError::Checkpoint {
        path: index.to_path_buf(),
        problem,
    };
    let Some(map) = root.get("weight_map").and_then(Value::as_object) else {
        return Err(bad("`weight_map` is missing or not an object".into()));
    };
    let mut names: Vec<String> = Vec::new();
    let mut entries = Vec::with_capacity(map.len());
    for (tensor, file) in map {
        let Some(file) = file.as_str() else {
            return Err(bad(format!(
                "weight_map[`{tensor}`]: expected a file name, found {file}"
            )));
        };
        // A hostile index must not point outside the checkpoint directory.
        if file.is_empty() || file.contains(['/', '\\']) || file == "." || file == ".." {
            return Err(bad(format!(
                "weight_map[`{tensor}`]: `{file}` is not a plain file name"
            )));
        }
        if !names.iter().any(|n| n == file) {
            if !dir.join(file).is_file() {
                return Err(bad(format!(
                    "weight_map names shard `{file}` (for tensor `{tensor}`), which does not exist in {}",
                    dir.display()
                )));
            }
            names.push(file.to_string());
        }
        entries.push((tensor.clone(), file.to_string()));
    }
    if names.is_empty() {
        return Err(bad("`weight_map` is empty".into()));
    }
    Ok((names, entries))
}

fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
    let len = file.metadata().map_err(|e| FormatError::io(path, e))?.len();
    // Checked before mapping: mapping an empty file fails with an unhelpful EINVAL.
    if len < 8 {
        return Err(FormatError::Checkpoint {
            path: path.to_path_buf(),
            problem: format!(
                "file is {len} bytes, too short for the 8-byte safetensors header length (truncated?)"
            ),
        });
    }
    // SAFETY: the map is read-only and lives as long as the checkpoint. Another process
    // truncating or rewriting the file meanwhile would be undefined behaviour; checkpoint
    // directories are inputs we never write, the same contract safetensors and candle rely on.
    unsafe { Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))
}

/// One tensor of a safetensors header, offsets already made absolute and bounds-checked.
struct HeaderEntry {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInfo {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (usize, usize),
}

/// Bits per element of every safetensors dtype (needed to validate offsets even for tensors we
/// skip or cannot convert).
fn dtype_bits(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" | "F8_E4M3FNUZ"
        | "F8_E5M2FNUZ" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" | "C64" => 64,
        _ => return None,
    })
}

/// Parses and validates a safetensors header the way `safetensors::SafeTensors::read_metadata`
/// does, with errors that name the file and the tensor.
fn parse_header(path: &Path, file: &[u8]) -> Result<Vec<HeaderEntry>> {
    let bad = |problem: String| FormatError::Checkpoint {
        path: path.to_path_buf(),
        problem,
    };
    let Some(len_bytes) = file.get(..8) else {
        return Err(bad("too short for the 8-byte header length".into()));
    };
    let mut n = [0u8; 8];
    n.copy_from_slice(len_bytes);
    let header_len = u64::from_le_bytes(n);
    if header_len > MAX_HEADER_SIZE {
        return Err(bad(format!(
            "header length {header_len} exceeds the {MAX_HEADER_SIZE}-byte limit (not a safetensors file?)"
        )));
    }
    let header_len = header_len as usize;
    let data_start = 8 + header_len;
    let Some(header) = file.get(8..data_start) else {
        return Err(bad(format!(
            "truncated: header length says {header_len} bytes but only {} follow",
            file.len() - 8
        )));
    };
    let header = std::str::from_utf8(header)
        .map_err(|e| bad(format!("safetensors header is not UTF-8: {e}")))?;
    let root: serde_json::Map<String, Value> = serde_json::from_str(header)
        .map_err(|e| bad(format!("malformed safetensors header JSON: {e}")))?;

    let data_len = file.len() - data_start;
    let mut entries = Vec::with_capacity(root.len());
    for (name, v) in root {
        if name == "__metadata__" {
            if !v.is_object() {
                return Err(bad(format!("`__metadata__` must be an object, found {v}")));
            }
            continue;
        }
        let info: RawInfo = serde_json::from_value(v)
            .map_err(|e| bad(format!("tensor `{name}`: malformed header entry: {e}")))?;
        let bits = dtype_bits(&info.dtype)
            .ok_or_else(|| bad(format!("tensor `{name}`: unknown dtype `{}`", info.dtype)))?;
        let nbits = info
            .shape
            .iter()
            .try_fold(bits, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| {
                bad(format!(
                    "tensor `{name}`: shape {:?} overflows the address space",
                    info.shape
                ))
            })?;
        if nbits % 8 != 0 {
            return Err(bad(format!(
                "tensor `{name}`: shape {:?} of {} is not a whole number of bytes",
                info.shape, info.dtype
            )));
        }
        let (start, end) = info.data_offsets;
        if end < start || end - start != nbits / 8 {
            return Err(bad(format!(
                "tensor `{name}`: data_offsets [{start}, {end}] do not hold the {} bytes that shape {:?} of {} needs",
                nbits / 8,
                info.shape,
                info.dtype
            )));
        }
        entries.push(HeaderEntry {
            name,
            dtype: info.dtype,
            shape: info.shape,
            start,
            end,
        });
    }

    // Offsets must tile the data section exactly: no gaps, no overlaps, nothing past EOF.
    entries.sort_by_key(|e| (e.start, e.end));
    let mut expected = 0usize;
    for e in &entries {
        if e.start != expected {
            return Err(bad(format!(
                "tensor `{}`: data starts at byte {} but the previous tensor ends at {expected} (gap or overlap)",
                e.name, e.start
            )));
        }
        expected = e.end;
    }
    if expected > data_len {
        let last = entries.last().map_or("", |e| e.name.as_str());
        return Err(bad(format!(
            "truncated: the header says tensor data takes {expected} bytes (through `{last}`) but the file holds only {data_len} after the header"
        )));
    }
    if expected < data_len {
        return Err(bad(format!(
            "{} unexpected bytes after the last tensor",
            data_len - expected
        )));
    }
    for e in &mut entries {
        e.start += data_start;
        e.end += data_start;
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::{Dtype as StDtype, TensorView as StView};

    /// A miniature Gemma 3: hidden 8, 2 layers, 2 heads of 4, one KV head, vocab 32.
    fn config_json(tied: bool, multimodal: bool) -> String {
        let text = format!(
            r#"{{"model_type":"gemma3_text","hidden_size":8,"intermediate_size":16,"num_hidden_layers":2,
            "num_attention_heads":2,"num_key_value_heads":1,"head_dim":4,"vocab_size":32,"sliding_window":4,
            "sliding_window_pattern":2,"tie_word_embeddings":{tied},"torch_dtype":"bfloat16"}}"#
        );
        if multimodal {
            format!(r#"{{"model_type":"gemma3","text_config":{text}}}"#)
        } else {
            text
        }
    }

    fn config(tied: bool) -> Gemma3Config {
        Gemma3Config::from_json_str(&config_json(tied, false), Path::new("config.json")).unwrap()
    }

    /// Values exactly representable in bf16 and f16, distinct per tensor and element.
    fn value(tensor: usize, i: usize) -> f32 {
        (tensor as f32) * 0.5 + (i % 64) as f32 * 0.125 - 2.0
    }

    fn encode(dtype: StDtype, vals: &[f32]) -> Vec<u8> {
        match dtype {
            StDtype::F32 => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
            StDtype::F16 => vals
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            StDtype::BF16 => vals
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
            _ => vals
                .iter()
                .flat_map(|v| (*v as f64).to_le_bytes())
                .collect(),
        }
    }

    /// Stored name, dtype, shape and bytes of every tensor of the miniature model.
    fn tensors(tied: bool, dtype: StDtype) -> Vec<(String, StDtype, Vec<usize>, Vec<u8>)> {
        expected_tensors(&config(tied))
            .into_iter()
            .enumerate()
            .map(|(t, (name, shape))| {
                let vals: Vec<f32> = (0..shape.iter().product()).map(|i| value(t, i)).collect();
                (name, dtype, shape, encode(dtype, &vals))
            })
            .collect()
    }

    fn write_st(path: &Path, tensors: &[(String, StDtype, Vec<usize>, Vec<u8>)]) {
        let views: Vec<(String, StView)> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.clone(), StView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, path).unwrap();
    }

    fn single_dir(tied: bool, t: &[(String, StDtype, Vec<usize>, Vec<u8>)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), config_json(tied, false)).unwrap();
        write_st(&dir.path().join(SINGLE_FILE), t);
        dir
    }

    /// Splits the tensors over two shards and writes the index.
    fn sharded_dir(t: &[(String, StDtype, Vec<usize>, Vec<u8>)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), config_json(true, false)).unwrap();
        let (a, b) = t.split_at(t.len() / 2);
        let names = [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        ];
        write_st(&dir.path().join(names[0]), a);
        write_st(&dir.path().join(names[1]), b);
        let mut map = serde_json::Map::new();
        for (part, file) in [(a, names[0]), (b, names[1])] {
            for (n, ..) in part {
                map.insert(n.clone(), Value::String(file.into()));
            }
        }
        let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
        std::fs::write(dir.path().join(INDEX_FILE), index.to_string()).unwrap();
        dir
    }

    fn open_err(dir: &Path) -> String {
        match HfCheckpoint::open(dir) {
            Ok(_) => panic!("expected an error opening {}", dir.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn expected_tensors_cover_the_model_in_forward_order() {
        let untied = expected_tensors(&config(false));
        assert_eq!(untied.len(), 1 + 2 * 13 + 2);
        assert_eq!(untied[0], ("model.embed_tokens.weight".into(), vec![32, 8]));
        assert_eq!(
            untied[2],
            ("model.layers.0.self_attn.q_proj.weight".into(), vec![8, 8])
        );
        assert_eq!(
            untied[3],
            ("model.layers.0.self_attn.k_proj.weight".into(), vec![4, 8])
        );
        assert_eq!(
            untied[12],
            ("model.layers.0.mlp.down_proj.weight".into(), vec![8, 16])
        );
        assert_eq!(untied.last().unwrap().0, "lm_head.weight");
        assert_eq!(expected_tensors(&config(true)).len(), 1 + 2 * 13 + 1);
    }

    #[test]
    fn single_file_bf16_opens_and_reads_exactly() {
        let t = tensors(true, StDtype::BF16);
        let dir = single_dir(true, &t);
        let ck = HfCheckpoint::open(dir.path()).unwrap();
        assert_eq!(ck.config().num_hidden_layers, 2);
        assert!(ck.config_json().contains("\"hidden_size\":8"));
        assert_eq!(ck.tensor_names().len(), t.len());
        for (idx, (name, shape)) in expected_tensors(ck.config()).iter().enumerate() {
            let v = ck.tensor(name).unwrap();
            assert_eq!(
                (&v.shape, v.dtype, v.name),
                (shape, DType::BF16, name.as_str())
            );
            let want: Vec<f32> = (0..v.numel()).map(|i| value(idx, i)).collect();
            assert_eq!(v.to_f32(), want, "{name}");
        }
        let emb = ck.tensor("model.embed_tokens.weight").unwrap();
        let all = emb.to_f32();
        for r in [0, 7, 31] {
            assert_eq!(emb.row_f32(r).unwrap(), all[r * 8..(r + 1) * 8]);
        }
        assert!(emb
            .row_f32(32)
            .unwrap_err()
            .to_string()
            .contains("row 32 out of range"));
        let e = ck
            .tensor("model.layers.9.mlp.up_proj.weight")
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.layers.9.mlp.up_proj.weight") && e.contains("not in checkpoint"));
    }

    #[test]
    fn f16_and_f32_checkpoints_read_exactly() {
        for dtype in [StDtype::F16, StDtype::F32] {
            let dir = single_dir(true, &tensors(true, dtype));
            let ck = HfCheckpoint::open(dir.path()).unwrap();
            let v = ck.tensor("model.layers.1.mlp.gate_proj.weight").unwrap();
            let idx = expected_tensors(ck.config())
                .iter()
                .position(|(n, _)| n == v.name)
                .unwrap();
            let want: Vec<f32> = (0..v.numel()).map(|i| value(idx, i)).collect();
            assert_eq!(v.to_f32(), want);
            let mut out = vec![0.0; v.numel()];
            v.to_f32_into(&mut out).unwrap();
            assert_eq!(out, want);
            assert!(v.to_f32_into(&mut out[1..]).is_err());
        }
    }

    #[test]
    fn sharded_checkpoint_with_index() {
        let t = tensors(true, StDtype::BF16);
        let dir = sharded_dir(&t);
        let ck = HfCheckpoint::open(dir.path()).unwrap();
        assert_eq!(ck.shard_paths().len(), 2);
        let last = ck.tensor("model.norm.weight").unwrap();
        assert_eq!(
            last.to_f32()[..2],
            [value(t.len() - 1, 0), value(t.len() - 1, 1)]
        );
        assert!(ck.tensor("model.embed_tokens.weight").is_ok());
    }

    #[test]
    fn multimodal_prefixes_are_stripped_and_vision_skipped() {
        for prefix in ["language_model.model.", "model.language_model."] {
            let mut t = tensors(false, StDtype::BF16);
            for (n, ..) in &mut t {
                *n = match n.strip_prefix("model.") {
                    Some(rest) => format!("{prefix}{rest}"),
                    None => format!("language_model.{n}"),
                };
            }
            // The vision side may use any dtype; it is validated for layout but never converted.
            t.push((
                "vision_tower.vision_model.x".into(),
                StDtype::I64,
                vec![3],
                vec![0; 24],
            ));
            t.push((
                "multi_modal_projector.w".into(),
                StDtype::F32,
                vec![2],
                vec![0; 8],
            ));
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("config.json"), config_json(false, true)).unwrap();
            write_st(&dir.path().join(SINGLE_FILE), &t);
            let ck = HfCheckpoint::open(dir.path()).unwrap();
            assert!(ck.contains("model.layers.1.self_attn.o_proj.weight"));
            assert!(ck.contains("lm_head.weight"));
            assert!(!ck
                .tensor_names()
                .iter()
                .any(|n| n.contains("vision") || n.contains("multi_modal")));
            assert_eq!(ck.tensor_names().len(), t.len() - 2);
        }
    }

    #[test]
    fn tensor_conversions_are_exact_for_every_bit_pattern_and_unaligned() {
        let mut bytes = vec![0u8; 1]; // odd offset: u16 loads would be unaligned
        bytes.extend((0..=u16::MAX).flat_map(|b| b.to_le_bytes()));
        for dtype in [DType::BF16, DType::F16] {
            let v = TensorView {
                name: "t",
                dtype,
                shape: vec![256, 256],
                data: &bytes[1..],
            };
            let got = v.to_f32();
            let row = v.row_f32(200).unwrap();
            for (b, x) in (0..=u16::MAX).zip(&got) {
                let want = match dtype {
                    DType::BF16 => half::bf16::from_bits(b).to_f32(),
                    _ => half::f16::from_bits(b).to_f32(),
                };
                assert!(
                    want.to_bits() == x.to_bits() || (want.is_nan() && x.is_nan()),
                    "{dtype:?} {b:#x}"
                );
            }
            assert_eq!(
                row.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                got[200 * 256..201 * 256]
                    .iter()
                    .map(|x| x.to_bits())
                    .collect::<Vec<_>>()
            );
        }
        let f: Vec<f32> = vec![1.5, -0.0, f32::MIN_POSITIVE, f32::MAX, f32::INFINITY, 1e-45];
        let mut fb = vec![0u8; 3];
        fb.extend(f.iter().flat_map(|x| x.to_le_bytes()));
        let v = TensorView {
            name: "f",
            dtype: DType::F32,
            shape: vec![2, 3],
            data: &fb[3..],
        };
        assert_eq!(v.to_f32(), f);
        assert_eq!(v.row_f32(1).unwrap(), f[3..]);
    }

    #[test]
    fn missing_tensor_is_named() {
        let mut t = tensors(true, StDtype::BF16);
        t.retain(|(n, ..)| n != "model.layers.1.self_attn.k_norm.weight");
        let dir = single_dir(true, &t);
        let e = open_err(dir.path());
        assert!(
            e.contains("model.safetensors")
                && e.contains("missing tensor `model.layers.1.self_attn.k_norm.weight`"),
            "{e}"
        );
    }

    #[test]
    fn untied_config_needs_lm_head() {
        let dir = single_dir(false, &tensors(true, StDtype::BF16));
        let e = open_err(dir.path());
        assert!(e.contains("missing tensor `lm_head.weight`"), "{e}");
    }

    #[test]
    fn wrong_shape_is_named_with_both_shapes() {
        let mut t = tensors(true, StDtype::BF16);
        let up = t
            .iter_mut()
            .find(|(n, ..)| n == "model.layers.1.mlp.up_proj.weight")
            .unwrap();
        up.2 = vec![16, 7];
        up.3.truncate(16 * 7 * 2);
        let dir = single_dir(true, &t);
        let e = open_err(dir.path());
        assert!(
            e.contains(
                "model.layers.1.mlp.up_proj.weight: shape [16, 7] but config implies [16, 8]"
            ),
            "{e}"
        );
    }

    #[test]
    fn unsupported_dtype_is_named() {
        let mut t = tensors(true, StDtype::BF16);
        let n = t
            .iter_mut()
            .find(|(n, ..)| n == "model.norm.weight")
            .unwrap();
        n.1 = StDtype::F64;
        n.3 = vec![0; 8 * 8];
        let dir = single_dir(true, &t);
        let e = open_err(dir.path());
        assert!(e.contains("`model.norm.weight` has dtype F64"), "{e}");
    }

    #[test]
    fn truncated_shard_is_reported() {
        let dir = single_dir(true, &tensors(true, StDtype::BF16));
        let p = dir.path().join(SINGLE_FILE);
        let len = std::fs::metadata(&p).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(len - 3).unwrap();
        let e = open_err(dir.path());
        assert!(
            e.contains("model.safetensors") && e.contains("truncated"),
            "{e}"
        );
        // Cut inside the header, then below the length prefix.
        f.set_len(20).unwrap();
        let e = open_err(dir.path());
        assert!(e.contains("truncated: header length says"), "{e}");
        f.set_len(5).unwrap();
        let e = open_err(dir.path());
        assert!(e.contains("too short"), "{e}");
    }

    #[test]
    fn trailing_bytes_and_bad_offsets_are_rejected() {
        let dir = single_dir(true, &tensors(true, StDtype::BF16));
        let p = dir.path().join(SINGLE_FILE);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.extend([0u8; 4]);
        std::fs::write(&p, &bytes).unwrap();
        assert!(open_err(dir.path()).contains("4 unexpected bytes"));

        let header = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
        let mut f = (header.len() as u64).to_le_bytes().to_vec();
        f.extend(header.as_bytes());
        f.extend([0u8; 12]);
        std::fs::write(&p, &f).unwrap();
        assert!(open_err(dir.path()).contains("tensor `b`: data starts at byte 4"));

        let huge = r#"{"a":{"dtype":"F32","shape":[4611686018427387904, 8],"data_offsets":[0,8]}}"#;
        let mut f = (huge.len() as u64).to_le_bytes().to_vec();
        f.extend(huge.as_bytes());
        std::fs::write(&p, &f).unwrap();
        assert!(open_err(dir.path()).contains("overflows"));

        let mut f = u64::MAX.to_le_bytes().to_vec();
        f.extend(b"{}");
        std::fs::write(&p, &f).unwrap();
        assert!(open_err(dir.path()).contains("exceeds the 100000000-byte limit"));
    }

    #[test]
    fn malformed_header_json_is_reported() {
        let dir = single_dir(true, &tensors(true, StDtype::BF16));
        let header = b"{\"a\": {not json";
        let mut f = (header.len() as u64).to_le_bytes().to_vec();
        f.extend(header);
        std::fs::write(dir.path().join(SINGLE_FILE), &f).unwrap();
        let e = open_err(dir.path());
        assert!(
            e.contains("model.safetensors") && e.contains("malformed safetensors header JSON"),
            "{e}"
        );

        let header = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"extra":1}}"#;
        let mut f = (header.len() as u64).to_le_bytes().to_vec();
        f.extend(header);
        f.extend([0u8; 4]);
        std::fs::write(dir.path().join(SINGLE_FILE), &f).unwrap();
        let e = open_err(dir.path());
        assert!(e.contains("tensor `a`: malformed header entry"), "{e}");
    }

    #[test]
    fn index_naming_a_missing_shard_is_reported() {
        let dir = sharded_dir(&tensors(true, StDtype::BF16));
        std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
        let e = open_err(dir.path());
        assert!(
            e.contains(INDEX_FILE)
                && e.contains("`model-00002-of-00002.safetensors`")
                && e.contains("does not exist"),
            "{e}"
        );
    }

    #[test]
    fn index_must_not_escape_the_directory_nor_misplace_tensors() {
        let dir = sharded_dir(&tensors(true, StDtype::BF16));
        let p = dir.path().join(INDEX_FILE);
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(
            &p,
            text.replacen("model-00001-of-00002", "../model-00001-of-00002", 1),
        )
        .unwrap();
        assert!(open_err(dir.path()).contains("is not a plain file name"));
        // Point one tensor of shard 1 at shard 2.
        let mut v: Value = serde_json::from_str(&text).unwrap();
        v["weight_map"]["model.embed_tokens.weight"] = "model-00002-of-00002.safetensors".into();
        std::fs::write(&p, v.to_string()).unwrap();
        let e = open_err(dir.path());
        assert!(
            e.contains(
                "places tensor `model.embed_tokens.weight` in `model-00002-of-00002.safetensors`"
            ),
            "{e}"
        );
    }

    #[test]
    fn duplicate_tensor_across_shards_is_reported() {
        let mut t = tensors(true, StDtype::BF16);
        let dup = t
            .iter()
            .find(|(n, ..)| n == "model.norm.weight")
            .unwrap()
            .clone();
        t.insert(0, dup); // lands in shard 1 while the original is in shard 2
        let dir = sharded_dir(&t);
        let e = open_err(dir.path());
        assert!(
            e.contains("duplicate tensor `model.norm.weight`") && e.contains("model-0000"),
            "{e}"
        );

        // The same tensor under two prefixes collides after canonicalisation.
        let mut t = tensors(true, StDtype::BF16);
        let mut dup = t
            .iter()
            .find(|(n, ..)| n == "model.norm.weight")
            .unwrap()
            .clone();
        dup.0 = "language_model.model.norm.weight".into();
        t.push(dup);
        let dir = single_dir(true, &t);
        assert!(open_err(dir.path()).contains("duplicate tensor `model.norm.weight`"));
    }

    #[test]
    fn missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = open_err(dir.path());
        assert!(e.contains("config.json"), "{e}");
        std::fs::write(dir.path().join("config.json"), config_json(true, false)).unwrap();
        let e = open_err(dir.path());
        assert!(
            e.contains("no model.safetensors or model.safetensors.index.json"),
            "{e}"
        );
    }
}
