//! The Gemma 3 text-model configuration.
//!
//! HF `config.json` comes in several dialects: a plain `Gemma3ForCausalLM` (`model_type:
//! gemma3_text`), a multimodal `Gemma3ForConditionalGeneration` whose text model sits under
//! `text_config`, Google's legacy keys (`rope_local_base_freq`, `sliding_window_pattern`) and
//! transformers 5's `rope_parameters`. We parse all of them once into [`Gemma3Config`], the
//! resolved form every other crate uses. Keys a config leaves out take transformers'
//! `Gemma3TextConfig` defaults, because published checkpoints rely on them (gemma-3-27b-it's
//! `text_config` has no `vocab_size`).

use crate::error::{FormatError, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// Attention kind of one decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerKind {
    /// Local attention over the last `sliding_window` positions, local RoPE base.
    Sliding,
    /// Global causal attention, global RoPE base (and linear scaling where configured).
    Full,
}

/// Resolved Gemma 3 text-model hyper-parameters (HF names where HF has one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gemma3Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f32,
    /// RoPE base of full-attention layers.
    pub rope_theta: f32,
    /// RoPE base of sliding-window layers.
    pub rope_local_base_freq: f32,
    /// Linear RoPE scaling factor of full-attention layers (1.0 = none); positions are divided by it.
    pub rope_scaling_factor: f32,
    pub sliding_window: usize,
    /// One entry per layer.
    pub layer_types: Vec<LayerKind>,
    /// Scores are multiplied by `query_pre_attn_scalar^-0.5`.
    pub query_pre_attn_scalar: f32,
    pub final_logit_softcapping: Option<f32>,
    pub attn_logit_softcapping: Option<f32>,
    pub tie_word_embeddings: bool,
    pub bos_token_id: u32,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: u32,
    /// The checkpoint's dtype (`bfloat16`, `float16`, `float32`): HF rounds the embedding scale to it.
    pub torch_dtype: String,
}

impl Gemma3Config {
    /// Reads and resolves `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| FormatError::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parses `config.json` text; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let root: Value = serde_json::from_str(text).map_err(|source| FormatError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let Some(root_obj) = root.as_object() else {
            return Err(FormatError::config(
                path,
                "<root>",
                "expected a JSON object",
            ));
        };
        // Multimodal checkpoints nest the text model; the dtype may sit at either level.
        let (cfg, outer) = match root_obj.get("text_config") {
            Some(tc) if tc.is_object() => (tc, Some(&root)),
            Some(_) => {
                return Err(FormatError::config(
                    path,
                    "text_config",
                    "expected an object",
                ))
            }
            None => (&root, None),
        };
        if let Some(mt) = cfg.get("model_type").and_then(Value::as_str) {
            if !matches!(mt, "gemma3_text" | "gemma3") {
                return Err(FormatError::config(
                    path,
                    "model_type",
                    format!("`{mt}` is not a Gemma 3 text model (expected gemma3_text or gemma3)"),
                ));
            }
        }
        let f = Fields { cfg, path };

        let hidden_size = f.usize_req("hidden_size")?;
        let num_hidden_layers = f.usize_req("num_hidden_layers")?;
        let num_attention_heads = f.usize_req("num_attention_heads")?;
        let num_key_value_heads = f.usize_req("num_key_value_heads")?;
        let head_dim = f.usize_or("head_dim", 256)?;
        let sliding_window = f.usize_or("sliding_window", 4096)?;

        let mut rope_theta = f.f32_or("rope_theta", 1_000_000.0)?;
        let mut rope_local_base_freq = f.f32_or("rope_local_base_freq", 10_000.0)?;
        let mut rope_scaling_factor = parse_scaling(cfg.get("rope_scaling"), path, "rope_scaling")?;
        // transformers 5 writes per-layer-type RoPE parameters instead of the legacy keys.
        if let Some(rp) = cfg.get("rope_parameters").filter(|v| !v.is_null()) {
            if let Some(full) = rp.get("full_attention") {
                if let Some(t) = full.get("rope_theta").and_then(Value::as_f64) {
                    rope_theta = t as f32;
                }
                rope_scaling_factor =
                    parse_scaling(Some(full), path, "rope_parameters.full_attention")?;
            }
            if let Some(t) = rp
                .get("sliding_attention")
                .and_then(|s| s.get("rope_theta"))
                .and_then(Value::as_f64)
            {
                rope_local_base_freq = t as f32;
            }
        }

        let layer_types = match cfg.get("layer_types").filter(|v| !v.is_null()) {
            Some(Value::Array(items)) => {
                let kinds = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match v.as_str() {
                        Some("sliding_attention") => Ok(LayerKind::Sliding),
                        Some("full_attention") => Ok(LayerKind::Full),
                        _ => Err(FormatError::config(
                            path,
                            &format!("layer_types[{i}]"),
                            format!(
                                "expected \"sliding_attention\" or \"full_attention\", found {v}"
                            ),
                        )),
                    })
                    .collect::<Result<Vec<_>>>()?;
                if kinds.len() != num_hidden_layers {
                    return Err(FormatError::config(
                        path,
                        "layer_types",
                        format!(
                            "has {} entries but num_hidden_layers is {num_hidden_layers}",
                            kinds.len()
                        ),
                    ));
                }
                kinds
            }
            Some(other) => {
                return Err(FormatError::config(
                    path,
                    "layer_types",
                    format!("expected a list, found {other}"),
                ))
            }
            None => {
                let pattern = match cfg
                    .get("sliding_window_pattern")
                    .or_else(|| cfg.get("_sliding_window_pattern"))
                {
                    Some(v) => v.as_u64().filter(|&p| p > 0).ok_or_else(|| {
                        FormatError::config(
                            path,
                            "sliding_window_pattern",
                            "expected a positive integer",
                        )
                    })? as usize,
                    None => 6,
                };
                (0..num_hidden_layers)
                    .map(|i| {
                        if (i + 1) % pattern == 0 {
                            LayerKind::Full
                        } else {
                            LayerKind::Sliding
                        }
                    })
                    .collect()
            }
        };

        let eos_token_ids = match cfg
            .get("eos_token_id")
            .or_else(|| outer.and_then(|o| o.get("eos_token_id")))
        {
            None | Some(Value::Null) => vec![1],
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_u64().map(|x| x as u32))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| FormatError::config(path, "eos_token_id", "expected integers"))?,
            Some(v) => vec![v
                .as_u64()
                .ok_or_else(|| FormatError::config(path, "eos_token_id", "expected an integer"))?
                as u32],
        };
        let torch_dtype = ["torch_dtype", "dtype"]
            .iter()
            .find_map(|k| {
                cfg.get(*k)
                    .or_else(|| outer.and_then(|o| o.get(*k)))
                    .and_then(Value::as_str)
            })
            .unwrap_or("bfloat16")
            .to_string();

        let config = Gemma3Config {
            vocab_size: f.usize_or("vocab_size", 262_208)?,
            hidden_size,
            intermediate_size: f.usize_req("intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings: f.usize_or("max_position_embeddings", 131_072)?,
            rms_norm_eps: f.f32_or("rms_norm_eps", 1e-6)?,
            rope_theta,
            rope_local_base_freq,
            rope_scaling_factor,
            sliding_window,
            layer_types,
            query_pre_attn_scalar: f.f32_or("query_pre_attn_scalar", 256.0)?,
            final_logit_softcapping: f.f32_opt("final_logit_softcapping")?,
            attn_logit_softcapping: f.f32_opt("attn_logit_softcapping")?,
            tie_word_embeddings: cfg
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            bos_token_id: f.usize_or("bos_token_id", 2)? as u32,
            eos_token_ids,
            pad_token_id: f.usize_or("pad_token_id", 0)? as u32,
            torch_dtype,
        };
        config.validate(path)?;
        Ok(config)
    }

    /// Checks the relations between fields that the forward pass relies on.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let nonzero = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("sliding_window", self.sliding_window),
        ];
        for (field, v) in nonzero {
            if v == 0 {
                return Err(FormatError::config(path, field, "must be greater than 0"));
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(FormatError::config(
                path,
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            ));
        }
        if self.head_dim % 2 != 0 {
            return Err(FormatError::config(
                path,
                "head_dim",
                "must be even for RoPE",
            ));
        }
        if !(self.rms_norm_eps > 0.0)
            || !(self.query_pre_attn_scalar > 0.0)
            || !(self.rope_scaling_factor > 0.0)
        {
            return Err(FormatError::config(
                path,
                "rms_norm_eps/query_pre_attn_scalar/rope_scaling",
                "must be positive",
            ));
        }
        // Guard against hostile sizes before anyone allocates from them.
        if self.hidden_size > 1 << 16
            || self.intermediate_size > 1 << 18
            || self.vocab_size > 1 << 20
            || self.num_hidden_layers > 1024
        {
            return Err(FormatError::config(
                path,
                "<dimensions>",
                "implausibly large for a Gemma 3 model",
            ));
        }
        if !matches!(
            self.torch_dtype.as_str(),
            "bfloat16" | "float16" | "float32"
        ) {
            return Err(FormatError::config(
                path,
                "torch_dtype",
                format!("unsupported dtype `{}`", self.torch_dtype),
            ));
        }
        Ok(())
    }

    /// `sqrt(hidden_size)` rounded to the checkpoint dtype, exactly as HF's scaled embedding does.
    pub fn embedding_scale(&self) -> f32 {
        let s = (self.hidden_size as f32).sqrt();
        match self.torch_dtype.as_str() {
            "bfloat16" => half::bf16::from_f32(s).to_f32(),
            "float16" => half::f16::from_f32(s).to_f32(),
            _ => s,
        }
    }

    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }
}

fn parse_scaling(v: Option<&Value>, path: &Path, field: &str) -> Result<f32> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(1.0);
    };
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    match kind {
        "default" => Ok(1.0),
        "linear" => v
            .get("factor")
            .and_then(Value::as_f64)
            .map(|f| f as f32)
            .ok_or_else(|| {
                FormatError::config(path, field, "linear scaling without a numeric `factor`")
            }),
        other => Err(FormatError::config(
            path,
            field,
            format!("RoPE scaling `{other}` is not supported (Gemma 3 uses linear)"),
        )),
    }
}

struct Fields<'a> {
    cfg: &'a Value,
    path: &'a Path,
}

impl Fields<'_> {
    fn get(&self, k: &str) -> Option<&Value> {
        self.cfg.get(k).filter(|v| !v.is_null())
    }
    fn usize_req(&self, k: &str) -> Result<usize> {
        match self.get(k) {
            None => Err(FormatError::config(self.path, k, "missing")),
            Some(_) => self.usize_or(k, 0),
        }
    }
    fn usize_or(&self, k: &str, default: usize) -> Result<usize> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => v.as_u64().map(|x| x as usize).ok_or_else(|| {
                FormatError::config(
                    self.path,
                    k,
                    format!("expected a non-negative integer, found {v}"),
                )
            }),
        }
    }
    fn f32_opt(&self, k: &str) -> Result<Option<f32>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.as_f64().map(|x| Some(x as f32)).ok_or_else(|| {
                FormatError::config(self.path, k, format!("expected a number, found {v}"))
            }),
        }
    }
    fn f32_or(&self, k: &str, default: f32) -> Result<f32> {
        Ok(self.f32_opt(k)?.unwrap_or(default))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Gemma3Config> {
        Gemma3Config::from_json_str(s, Path::new("config.json"))
    }

    const G270: &str = r#"{"architectures":["Gemma3ForCausalLM"],"model_type":"gemma3_text","hidden_size":640,
        "intermediate_size":2048,"num_hidden_layers":18,"num_attention_heads":4,"num_key_value_heads":1,
        "head_dim":256,"vocab_size":262144,"sliding_window":512,"rope_theta":1000000.0,
        "rope_local_base_freq":10000.0,"query_pre_attn_scalar":256,"torch_dtype":"bfloat16","eos_token_id":1}"#;

    #[test]
    fn sliding_pattern_makes_every_sixth_layer_full() {
        let c = parse(G270).unwrap();
        let full: Vec<usize> = (0..18)
            .filter(|&i| c.layer_types[i] == LayerKind::Full)
            .collect();
        assert_eq!(full, vec![5, 11, 17]);
        assert_eq!(c.embedding_scale(), 25.25);
        assert_eq!(c.eos_token_ids, vec![1]);
    }

    #[test]
    fn multimodal_text_config_with_linear_scaling_and_defaults() {
        let c = parse(
            r#"{"architectures":["Gemma3ForConditionalGeneration"],"model_type":"gemma3","torch_dtype":"bfloat16",
            "text_config":{"model_type":"gemma3_text","hidden_size":5376,"intermediate_size":21504,"num_hidden_layers":62,
            "num_attention_heads":32,"num_key_value_heads":16,"head_dim":128,"query_pre_attn_scalar":168,
            "rope_scaling":{"factor":8.0,"rope_type":"linear"},"sliding_window":1024}}"#,
        )
        .unwrap();
        assert_eq!(c.vocab_size, 262_208);
        assert_eq!(c.rope_scaling_factor, 8.0);
        assert_eq!(c.query_pre_attn_scalar, 168.0);
        assert_eq!(
            c.layer_types
                .iter()
                .filter(|k| **k == LayerKind::Full)
                .count(),
            10
        );
    }

    #[test]
    fn transformers5_rope_parameters() {
        let s = G270.replace(
            r#""rope_theta":1000000.0,"#,
            r#""rope_parameters":{"full_attention":{"rope_type":"linear","factor":8.0,"rope_theta":1000000.0},"sliding_attention":{"rope_type":"default","rope_theta":10000.0}},"#,
        );
        let c = parse(&s).unwrap();
        assert_eq!(
            (c.rope_theta, c.rope_local_base_freq, c.rope_scaling_factor),
            (1e6, 1e4, 8.0)
        );
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse(&G270.replace(r#""hidden_size":640,"#, ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hidden_size") && e.contains("missing"), "{e}");
        let e = parse(&G270.replace(r#""num_key_value_heads":1"#, r#""num_key_value_heads":3"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_key_value_heads"), "{e}");
        let e = parse(&G270.replace("gemma3_text", "llama"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("model_type"), "{e}");
        let e = parse("{not json").unwrap_err().to_string();
        assert!(e.contains("malformed JSON"), "{e}");
        let e = parse(&G270.replace(r#""head_dim":256"#, r#""head_dim":"big""#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("head_dim"), "{e}");
    }
}
