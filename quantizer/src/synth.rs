//! `mixq-quantize synth`: a valid .mixq file with random weights of an exact Gemma 3 shape, for
//! benchmarks at 27B scale without a 54 GB download.
//!
//! Quantizing 27 billion random floats would take hours on a laptop, and the values mean
//! nothing anyway. Instead a few dozen template rows per (type, row length) are quantized
//! properly from Gaussian values (so scales, mins and codes are realistic and every kernel
//! does real work), and each tensor is filled by cycling them in a scrambled order. The file is
//! written at disk speed. Its tokenizer is a four-token placeholder unless `--tokenizer` names
//! a real tokenizer.json: benchmarks feed token ids directly.

use crate::recipe::Recipe;
use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mixq_format::checkpoint::expected_tensors;
use mixq_format::mixq::index::Recipe as IndexRecipe;
use mixq_format::mixq::{FileMeta, MixqWriter};
use mixq_format::profile::{plan, DeviceProfile, TensorSpec};
use mixq_format::quant::{quantize_row, QType};
use mixq_format::Gemma3Config;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// gemma3-270m, gemma3-1b, gemma3-4b, gemma3-12b or gemma3-27b.
    #[arg(long)]
    pub shape: String,
    /// Recipe: optimal (default), int8, int4, or a TOML recipe file.
    #[arg(long, default_value = "optimal")]
    pub recipe: String,
    /// Device profile for placement: phoenix, gpu or cpu.
    #[arg(long, default_value = "phoenix")]
    pub profile: String,
    /// Output .mixq file.
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// Embed this tokenizer.json instead of the placeholder.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// The HF config.json of each published Gemma 3 size (text model).
pub fn shape_config_json(shape: &str) -> Result<String> {
    // (hidden, intermediate, layers, heads, kv_heads, head_dim, vocab, sliding_window,
    //  query_pre_attn_scalar, rope linear factor of global layers)
    let (h, i, l, nh, kv, hd, vocab, sw, qpas, factor) = match shape {
        "gemma3-270m" => (640, 2048, 18, 4, 1, 256, 262_144, 512, 256, None),
        "gemma3-1b" => (1152, 6912, 26, 4, 1, 256, 262_144, 512, 256, None),
        "gemma3-4b" => (2560, 10240, 34, 8, 4, 256, 262_208, 1024, 256, Some(8.0)),
        "gemma3-12b" => (3840, 15360, 48, 16, 8, 256, 262_208, 1024, 256, Some(8.0)),
        "gemma3-27b" => (5376, 21504, 62, 32, 16, 128, 262_208, 1024, 168, Some(8.0)),
        other => bail!("unknown shape `{other}`: expected gemma3-270m, gemma3-1b, gemma3-4b, gemma3-12b or gemma3-27b"),
    };
    let scaling = match factor {
        Some(f) => format!(r#"{{"rope_type": "linear", "factor": {f:.1}}}"#),
        None => "null".into(),
    };
    Ok(format!(
        r#"{{"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "_synthetic": "{shape}",
  "hidden_size": {h}, "intermediate_size": {i}, "num_hidden_layers": {l}, "num_attention_heads": {nh},
  "num_key_value_heads": {kv}, "head_dim": {hd}, "vocab_size": {vocab}, "sliding_window": {sw},
  "sliding_window_pattern": 6, "query_pre_attn_scalar": {qpas}, "rope_theta": 1000000.0,
  "rope_local_base_freq": 10000.0, "rope_scaling": {scaling}, "max_position_embeddings": 131072,
  "rms_norm_eps": 1e-06, "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": true,
  "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0, "torch_dtype": "bfloat16"}}"#
    ))
}

/// A valid tokenizer.json with four tokens, for files whose benchmarks feed ids directly.
const PLACEHOLDER_TOKENIZER: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
"normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
"model":{"type":"WordLevel","vocab":{"<pad>":0,"<eos>":1,"<bos>":2,"<unk>":3},"unk_token":"<unk>"}}"#;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Approximately standard normal (sum of 4 uniforms, rescaled): cheap and bounded.
    fn gauss(&mut self) -> f32 {
        let s: f32 = (0..4)
            .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32)
            .sum();
        (s - 2.0) * 1.732
    }
}

const TEMPLATES: usize = 64;

/// Quantized template rows for one (type, row length, scale).
fn templates(
    qtype: QType,
    cols: usize,
    std: f32,
    offset: f32,
    rng: &mut Rng,
) -> Result<Vec<Vec<u8>>> {
    let row_bytes = qtype.row_bytes(cols)?;
    (0..TEMPLATES)
        .map(|_| {
            let src: Vec<f32> = (0..cols).map(|_| offset + std * rng.gauss()).collect();
            let mut out = vec![0u8; row_bytes];
            match qtype {
                QType::F32 => out = src.iter().flat_map(|v| v.to_le_bytes()).collect(),
                QType::F16 => {
                    out = src
                        .iter()
                        .flat_map(|v| half::f16::from_f32(*v).to_bits().to_le_bytes())
                        .collect()
                }
                QType::BF16 => {
                    out = src
                        .iter()
                        .flat_map(|v| half::bf16::from_f32(*v).to_bits().to_le_bytes())
                        .collect()
                }
                q => quantize_row(q, &src, None, &mut out)?,
            }
            Ok(out)
        })
        .collect()
}

pub fn run(a: SynthArgs) -> Result<()> {
    let config_json = shape_config_json(&a.shape)?;
    let config = Gemma3Config::from_json_str(&config_json, Path::new(&a.shape))?;
    let recipe = Recipe::load(&a.recipe)?;
    let profile = DeviceProfile::by_name(&a.profile)?;
    let tokenizer = match &a.tokenizer {
        Some(p) => std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        None => PLACEHOLDER_TOKENIZER.as_bytes().to_vec(),
    };
    mixq_format::tokenizer::Tokenizer::from_bytes(&tokenizer).context("the tokenizer to embed")?;

    let specs: Vec<TensorSpec> = recipe
        .resolve(&config, &expected_tensors(&config), &[])?
        .into_iter()
        .map(|c| {
            let mut s = TensorSpec::new(c.name, c.qtype, &c.shape);
            s.transform = c.transform;
            s
        })
        .collect();
    let plan = plan(&specs, &profile)?;
    // Summarise spills per (intended, actual) section: a 27B file spills hundreds of tensors.
    let mut spills: Vec<((String, String), (usize, u64))> = Vec::new();
    for (spec, place) in plan.spills() {
        let key = (
            place.intended_section.clone().unwrap_or_default(),
            place.section.clone(),
        );
        let bytes = spec.bytes()?;
        match spills.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = (v.0 + 1, v.1 + bytes),
            None => spills.push((key, (1, bytes))),
        }
    }
    for ((from, to), (n, bytes)) in &spills {
        eprintln!("note: {n} tensors ({:.2} GB) do not fit {from}'s budget; placed in {to} (see `mixq-quantize inspect`)", *bytes as f64 / 1e9);
    }
    let meta = FileMeta {
        config: config.clone(),
        config_json,
        recipe: IndexRecipe {
            name: recipe.name.clone(),
            options: serde_json::json!({ "synthetic": true, "seed": a.seed }),
        },
    };
    let mut writer = MixqWriter::create(&a.output, plan, meta)?;

    let total: u64 = specs.iter().map(|s| s.bytes().unwrap_or(0)).sum();
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template(
            "{msg:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_message("synth");
    let mut rng = Rng(a.seed);
    let mut cache: HashMap<(QType, usize, bool), Vec<Vec<u8>>> = HashMap::new();
    for spec in &specs {
        let (rows, cols) = spec.rows_cols()?;
        let is_norm = spec.shape.len() == 1;
        // Norm weights near 0 (the model scales by 1 + w); matrices with Gemma-like spread.
        let t = match cache.entry((spec.qtype, cols, is_norm)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let (std, offset) = if is_norm { (0.1, 0.0) } else { (0.03, 0.0) };
                e.insert(templates(spec.qtype, cols, std, offset, &mut rng)?)
            }
        };
        let row_bytes = t[0].len();
        let mut bytes = Vec::with_capacity(rows * row_bytes);
        let start = rng.next() as usize;
        for r in 0..rows {
            // A scrambled walk over the templates, so neighbouring rows differ.
            bytes.extend_from_slice(&t[(start.wrapping_add(r.wrapping_mul(7919))) % TEMPLATES]);
        }
        writer.write_tensor(&spec.name, &bytes)?;
        bar.inc(bytes.len() as u64);
    }
    writer.add_blob("meta.tokenizer", &tokenizer)?;
    let out = writer.finish()?;
    bar.finish_and_clear();
    let size = std::fs::metadata(&out)?.len();
    let params: u64 = specs
        .iter()
        .map(|s| s.shape.iter().product::<usize>() as u64)
        .sum();
    println!(
        "wrote {} ({}, recipe {}, profile {}): {:.2} GB, {:.2} bits per weight over {:.2}B parameters (random weights: for benchmarks only)",
        out.display(),
        a.shape,
        recipe.name,
        profile.name,
        size as f64 / 1e9,
        size as f64 * 8.0 / params as f64,
        params as f64 / 1e9
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_parses_to_the_published_dimensions() {
        for (shape, layers, full) in [
            ("gemma3-270m", 18, 3),
            ("gemma3-1b", 26, 4),
            ("gemma3-4b", 34, 5),
            ("gemma3-12b", 48, 8),
            ("gemma3-27b", 62, 10),
        ] {
            let c =
                Gemma3Config::from_json_str(&shape_config_json(shape).unwrap(), Path::new(shape))
                    .unwrap();
            assert_eq!(c.num_hidden_layers, layers, "{shape}");
            assert_eq!(
                c.layer_types
                    .iter()
                    .filter(|k| **k == mixq_format::LayerKind::Full)
                    .count(),
                full,
                "{shape}"
            );
        }
        let c =
            Gemma3Config::from_json_str(&shape_config_json("gemma3-27b").unwrap(), Path::new("x"))
                .unwrap();
        assert_eq!(
            (c.query_pre_attn_scalar, c.rope_scaling_factor, c.head_dim),
            (168.0, 8.0, 128)
        );
        assert!(shape_config_json("gemma3-2b")
            .unwrap_err()
            .to_string()
            .contains("gemma3-27b"));
    }

    #[test]
    fn placeholder_tokenizer_loads() {
        mixq_format::tokenizer::Tokenizer::from_bytes(PLACEHOLDER_TOKENIZER.as_bytes()).unwrap();
    }
}
