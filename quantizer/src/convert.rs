//! `mixq-quantize convert`: HF checkpoint -> calibrated mixed-precision `.mixq` file.
//!
//! Pipeline (peak memory: one layer's f32 weights, the calibration residual stream, four
//! Hessians; never the whole model):
//! 1. Open the checkpoint (memory-mapped), resolve the recipe into one [`TensorChoice`] per
//!    tensor, place them with the device profile, and create `<out>.tmp` with every offset
//!    fixed ([`MixqWriter`]).
//! 2. Tokenize the calibration text (`--calib`, never the evaluation text) into sequences.
//! 3. Embedding: quantized in row chunks; the calibration tokens' rows are dequantized from the
//!    stored bytes to start the residual stream (what the runtime will gather).
//! 4. Each layer `i`: load its f32 weights; run it at full precision over the calibration
//!    stream produced by the already-quantized layers `0..i` and accumulate the Hessian
//!    `H = Σ xᵀx` of each linear layer's input; quantize each tensor by its method (GPTQ /
//!    importance-weighted search / plain); write it; bind the stored bytes exactly as the
//!    runtime does and advance the stream through the quantized layer.
//! 5. Final norm (and an untied lm_head); end-to-end evaluation of the finished tensors
//!    against the checkpoint on `--eval`, on the CPU path and (unless `--no-npu-eval`, or the
//!    attention is not int4 in NPU banks) on the emulated NPU path; tokenizer, calibration summary and report embedded;
//!    index and header written; `<out>.tmp` renamed to `<out>`. Any error before that deletes
//!    the temporary file: a partial `OUT.mixq` never exists.
//!
//! At 27B (hidden 5376, intermediate 21504, 62 layers) the largest buffers are the mean
//! Hessian of the down projection's input (21504² x 8 B = 3.7 GB; each site's mean is made in
//! place and dropped after its last tensor), GPTQ's reversed copy and its triangular inverse
//! (3.7 GB each, then a 1.8 GB f32 copy of the factor), one layer's f32 weights (about
//! 1.7 GB) and the calibration stream (tokens x 5376 x 4 B: 176 MB at 8192 tokens): about
//! 13-14 GB at the peak, under 16 GB. See quantizer/README.md.

use crate::distill;
use crate::equalize;
use crate::eval::{self, DEFAULT_EVAL_TOKENS};
use crate::gptq::{gptq, output_error, GptqOptions};
use crate::head;
use crate::recipe::{self, Method, Recipe, TensorChoice};
use crate::report::{self, CalibrationSummary, QualityReport, SizeSummary, TensorQuality};
use crate::rotate::{rotate_hessian, rotate_weights};
use crate::search::{
    dequantize_rows, importance_from_mean_square, quantize_rows, quantize_rows_minmax_i8,
};
use anyhow::{anyhow, bail, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use mixq_calibration::TokenWeights;
use mixq_calibration::{CalibSet, Calibrator, Sampling};
use mixq_format::checkpoint::{expected_tensors, HfCheckpoint};
use mixq_format::mixq::{self as mixqfmt, FileMeta, MixqWriter};
use mixq_format::profile::{self, DeviceProfile, Plan, TensorSpec};
use mixq_format::quant::{dequantize_row, QType, Transform};
use mixq_format::tokenizer::Tokenizer;
use mixq_format::{Gemma3Config, SharedBytes};
use mixq_runtime::backend::cpu::CpuBackend;
use mixq_runtime::backend::Backend;
use mixq_runtime::model::gemma3::{Layer, Site};
use mixq_runtime::weights::{WeightSource, WeightStore};
use rayon::prelude::*;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Calibration tokens by default: 16 sequences of 512, spread over the text. Against 4096,
/// `optimal` keeps 70.2 % instead of 66.6 % (PPL ratio) and int4's KL drops 8 %, on 8192
/// evaluation tokens (quantizer/README.md); 16384 gains about one point more on `optimal` for
/// twice the time. The observe pass and the Hessians cost time linearly in tokens (about 2 s
/// per layer per 4096 tokens at 270M on 2 cores).
pub const DEFAULT_CALIB_TOKENS: usize = 8192;
/// GPTQ dampening (fraction of the mean Hessian diagonal). 0.1, not the paper's 0.01: with a
/// few thousand calibration tokens the Hessians of 2048-wide inputs are nearly singular and
/// 0.01 over-fits them (optimal recipe: 60.1 % retention at 0.01, 65.8 % at 0.1).
pub const DEFAULT_DAMP: f64 = 0.1;
/// Tokens per calibration sequence (`<bos>` included).
pub const DEFAULT_SEQ_LEN: usize = 512;

#[derive(clap::Args, Debug, Clone)]
pub struct ConvertArgs {
    /// The Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json).
    pub checkpoint: PathBuf,
    /// The .mixq file to write (written as <OUT>.tmp, renamed when complete).
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
    /// Recipe: optimal, int8, int4, compact, or a path to a TOML recipe file.
    #[arg(long, default_value = "optimal")]
    pub recipe: String,
    /// Device profile that places tensors into sections: phoenix, gpu or cpu.
    #[arg(long, default_value = "phoenix")]
    pub profile: String,
    /// Calibration text (default: models/data/calib.txt beside the checkpoint). Never the
    /// evaluation text.
    #[arg(long, value_name = "FILE")]
    pub calib: Option<PathBuf>,
    /// Calibration tokens (in sequences of --calib-seq-len, each starting with <bos>, taken at
    /// evenly spaced points of the calibration text).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CALIB_TOKENS)]
    pub calib_tokens: usize,
    /// Tokens per calibration sequence.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SEQ_LEN)]
    pub calib_seq_len: usize,
    /// Take the calibration sequences one after another from the start of the text, instead of
    /// spread evenly over all of it (the default: a calibration file is usually several sources
    /// in a row). Reproduces files converted before the spread.
    #[arg(long)]
    pub calib_from_start: bool,
    /// Evaluation text for the end-to-end retention figures (default: models/data/eval.txt
    /// beside the checkpoint).
    #[arg(long, value_name = "FILE")]
    pub eval: Option<PathBuf>,
    /// Predicted tokens of the evaluation text to score.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_EVAL_TOKENS)]
    pub eval_tokens: usize,
    /// Skip the end-to-end evaluation (the report then has tensor figures only).
    #[arg(long)]
    pub no_eval: bool,
    /// Skip the end-to-end figures of the emulated NPU path (the NPU engine model's
    /// arithmetic in attention: int4 weights of the npu.bank sections, bf16 activations,
    /// computed on the host CPU). They cost one more model's forward passes over the
    /// evaluation text (the reference runs once for both); --no-eval skips them too.
    #[arg(long)]
    pub no_npu_eval: bool,
    /// Override the method of one quant type, e.g. `--method i4_grouped=search` (repeatable;
    /// methods: gptq, search, rtn).
    #[arg(long = "method", value_name = "TYPE=METHOD")]
    pub methods: Vec<String>,
    /// GPTQ dampening, as a fraction of the mean diagonal of the Hessian.
    #[arg(long, default_value_t = DEFAULT_DAMP)]
    pub damp: f64,
    /// After GPTQ, refit every block's scale/min (I2_STRUCTURED: d/dmin) for the chosen codes
    /// by least squares against the calibration Hessian. Lowers each tensor's calibration
    /// error, not the end-to-end figures (quantizer/README.md); costs 3 x rows x cols²
    /// multiply-adds per tensor: fine at 270M, hours at 27B.
    #[arg(long)]
    pub refit: bool,
    /// How calibration tokens count in the Hessians: `post-norm` weights o_proj's and
    /// down_proj's tokens by 1 / mean square of the projection's output, which Gemma 3's
    /// post-norms divide by before the residual add, and v_proj's key positions by the squared
    /// attention they receive; `uniform` is GPTQ's plain Σ xᵀx.
    #[arg(long, value_enum, default_value_t = HessianWeights::PostNorm)]
    pub hessian_weights: HessianWeights,
    /// After quantizing, distill the RMSNorm gains for this many steps (one calibration
    /// sequence each): the stored codes stay, the F32 norm gains move to lower KL(P_ref ‖
    /// P_quant) of the whole model on calibration text (src/distill). Needs both models in f32
    /// in memory (about 2.3 GB at 270M): skipped, with a note, where they do not fit in half the
    /// free memory. 0 turns it off.
    #[arg(long, value_name = "N", default_value_t = distill::DEFAULT_STEPS)]
    pub distill_steps: usize,
    /// Tokens per distillation sequence (each from <bos>, spread over the calibration text).
    #[arg(long, value_name = "N", default_value_t = distill::DEFAULT_SEQ_LEN)]
    pub distill_seq_len: usize,
    /// Adam's step size for the norm gains' distillation.
    #[arg(long, value_name = "LR", default_value_t = distill::DEFAULT_LR)]
    pub distill_lr: f32,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// No progress bars (logs only).
    #[arg(long)]
    pub quiet: bool,
}

/// `--hessian-weights`: the CLI's names for [`TokenWeights`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HessianWeights {
    Uniform,
    PostNorm,
}

impl From<HessianWeights> for TokenWeights {
    fn from(h: HessianWeights) -> TokenWeights {
        match h {
            HessianWeights::Uniform => TokenWeights::Uniform,
            HessianWeights::PostNorm => TokenWeights::PostNorm,
        }
    }
}

pub fn run(a: ConvertArgs) -> Result<()> {
    let report = convert(&a)?;
    print!("{}", report::render_summary(&report));
    Ok(())
}

/// The sample texts the setup fetches live in `models/data/` beside `models/<checkpoint>`.
fn default_text(checkpoint: &Path, file: &str) -> PathBuf {
    let beside = checkpoint
        .parent()
        .map(|p| p.join("data").join(file))
        .filter(|p| p.exists());
    beside.unwrap_or_else(|| Path::new("models/data").join(file))
}

/// Runs the whole conversion; returns the report (also embedded and written beside the file).
pub fn convert(a: &ConvertArgs) -> Result<QualityReport> {
    let t_start = Instant::now();
    // ---- inputs, checked before any work
    if !a.checkpoint.is_dir() {
        bail!(
            "{}: not a checkpoint directory (expected config.json, *.safetensors, tokenizer.json)",
            a.checkpoint.display()
        );
    }
    let ckpt = HfCheckpoint::open(&a.checkpoint)
        .with_context(|| format!("opening checkpoint {}", a.checkpoint.display()))?;
    let config = ckpt.config().clone();
    let recipe = Recipe::load(&a.recipe)?;
    let dprofile = DeviceProfile::by_name(&a.profile)
        .map_err(|_| anyhow!("unknown profile `{}` (valid: phoenix, gpu, cpu)", a.profile))?;
    let overrides = a
        .methods
        .iter()
        .map(|s| {
            let (t, m) = s.split_once('=').ok_or_else(|| {
                anyhow!("--method `{s}`: expected TYPE=METHOD, e.g. i4_grouped=search")
            })?;
            Ok((recipe::parse_qtype(t)?, Method::from_name(m)?))
        })
        .collect::<Result<Vec<_>>>()?;
    let calib_path = a
        .calib
        .clone()
        .unwrap_or_else(|| default_text(&a.checkpoint, "calib.txt"));
    let calib_text = std::fs::read_to_string(&calib_path).with_context(|| {
        format!(
            "reading the calibration text {} (give one with --calib FILE)",
            calib_path.display()
        )
    })?;
    let eval_path = a
        .eval
        .clone()
        .unwrap_or_else(|| default_text(&a.checkpoint, "eval.txt"));
    let eval_text = if a.no_eval {
        None
    } else {
        if same_file(&calib_path, &eval_path) {
            bail!(
                "the calibration and evaluation texts are the same file ({}): retention must be measured on text the calibration never saw",
                eval_path.display()
            );
        }
        Some(std::fs::read_to_string(&eval_path).with_context(|| {
            format!(
                "reading the evaluation text {} (give one with --eval FILE, or --no-eval)",
                eval_path.display()
            )
        })?)
    };
    let tok_path = ckpt.tokenizer_json_path();
    let tok_json =
        std::fs::read(&tok_path).with_context(|| format!("reading {}", tok_path.display()))?;
    let tok = Tokenizer::from_bytes_named(&tok_json, &tok_path)?;
    let calib = CalibSet::from_text(
        &tok,
        &calib_text,
        &calib_path.display().to_string(),
        a.calib_tokens,
        a.calib_seq_len,
        if a.calib_from_start {
            Sampling::Start
        } else {
            Sampling::Spread
        },
    )?;

    // ---- the plan: types, methods, transforms, placement
    let tensors = expected_tensors(&config);
    let choices = recipe.resolve(&config, &tensors, &overrides)?;
    let specs: Vec<TensorSpec> = choices
        .iter()
        .map(|c| TensorSpec {
            name: c.name.clone(),
            qtype: c.qtype,
            shape: c.shape.clone(),
            transform: c.transform,
        })
        .collect();
    let plan = profile::plan(&specs, &dprofile)?;
    let methods = methods_by_type(&choices);
    let meta = FileMeta {
        config: config.clone(),
        config_json: ckpt.config_json().to_string(),
        recipe: mixqfmt::Recipe {
            name: recipe.name.clone(),
            options: serde_json::json!({
                "rules": recipe.rules,
                "methods": methods.iter().cloned().collect::<HashMap<_, _>>(),
                "gptq_damp": a.damp,
                "gptq_refit": a.refit,
                "hessian_weights": TokenWeights::from(a.hessian_weights).name(),
                "calib_tokens": calib.tokens(),
                "calib_seq_len": calib.seq_len,
                "calib_sampling": calib.sampling.name(),
                "distill_steps": a.distill_steps,
                "distill_seq_len": a.distill_seq_len,
                "distill_lr": a.distill_lr,
            }),
        },
    };
    if !(a.distill_lr.is_finite() && a.distill_lr > 0.0) {
        bail!(
            "--distill-lr {}: expected a positive step size, e.g. 2e-3",
            a.distill_lr
        );
    }
    if a.distill_steps > 0 && a.distill_seq_len < 2 {
        bail!(
            "--distill-seq-len {}: a sequence needs at least 2 tokens",
            a.distill_seq_len
        );
    }
    if let Some(dir) = a.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            bail!("output directory {} does not exist", dir.display());
        }
    }
    let mut writer = MixqWriter::create(&a.output, plan.clone(), meta)
        .with_context(|| format!("creating {}", a.output.display()))?;

    let be = CpuBackend::new(a.threads)?;
    let bars = Bars::new(a.quiet);
    bars.log(format!(
        "converting {} ({} layers, hidden {}, vocab {}) with recipe `{}` on profile `{}`; calibration: {} tokens in {} sequences of {} from {}",
        a.checkpoint.display(),
        config.num_hidden_layers,
        config.hidden_size,
        config.vocab_size,
        recipe.name,
        dprofile.name,
        calib.tokens(),
        calib.sequences.len(),
        calib.seq_len,
        calib_path.display()
    ));
    for (t, m) in &methods {
        bars.log(format!("  {t}: {m}"));
    }

    let choice_of: HashMap<&str, &TensorChoice> =
        choices.iter().map(|c| (c.name.as_str(), c)).collect();
    let mut quality: HashMap<String, TensorQuality> = HashMap::new();
    let section_of: HashMap<&str, &str> = plan
        .tensors
        .iter()
        .map(|(s, p)| (s.name.as_str(), p.section.as_str()))
        .collect();

    // ---- embedding (also the tied lm_head)
    let emb_name = "model.embed_tokens.weight";
    let emb = choice_of[emb_name];
    // A tied table fitted to the lm_head's input (src/head.rs) is written after the layers;
    // until then the calibration stream starts from its int8 min/max form (a second or two,
    // where a 4-bit search of the whole table takes a minute; the stream only needs values
    // close to the table's).
    let fit_head =
        config.tie_word_embeddings && emb.qtype.is_quantized() && emb.method != Method::Rtn;
    let stream = if fit_head {
        TensorChoice {
            qtype: QType::I8Asym,
            method: Method::Rtn,
            ..emb.clone()
        }
    } else {
        emb.clone()
    };
    let (emb_bytes, mut q) = quantize_table(&ckpt, &stream, &bars, "embedding")?;
    if !fit_head {
        writer.write_tensor(emb_name, &emb_bytes)?;
        q.section = section_of[emb_name].to_string();
        quality.insert(emb_name.into(), q);
    }
    let h = config.hidden_size;
    let emb_rb = stream.qtype.row_bytes(h)?;
    let mut calibrator = Calibrator::new(&be, &config, &calib, |id, out| {
        let id = id as usize;
        dequantize_row(
            stream.qtype,
            &emb_bytes[id * emb_rb..(id + 1) * emb_rb],
            out,
        )
        .expect("row size checked");
    });
    drop(emb_bytes);

    // ---- layers
    let n_layers = config.num_hidden_layers;
    let layer_bar = bars.bar(
        n_layers as u64,
        "layers",
        "{msg:12} {bar:30} {pos}/{len} layers [{elapsed_precise} < {eta_precise}]",
    );
    let pass_bar = bars.bar(0, "", "{msg:12} {bar:30} {pos}/{len} tokens");
    let opts = GptqOptions {
        damp: a.damp,
        refit: a.refit,
    };
    // (layer, norm, α) of every equalized site, for the report's notes
    let mut equalized: Vec<(usize, String, f64)> = Vec::new();
    for (i, &kind) in config.layer_types.iter().enumerate() {
        layer_bar.set_message(format!("layer {i}"));
        let t_layer = Instant::now();
        // f32 weights of this layer only
        let names: Vec<String> = tensors
            .iter()
            .filter(|(n, _)| recipe::layer_of(n) == Some(i))
            .map(|(n, _)| n.clone())
            .collect();
        let mut weights: HashMap<String, (usize, usize, Vec<f32>)> = names
            .iter()
            .map(|n| {
                let t = ckpt.tensor(n)?;
                let (r, c) = rows_cols(&t.shape);
                Ok((n.clone(), (r, c, t.to_f32())))
            })
            .collect::<Result<_>>()?;
        let fp = Layer::load(i, kind, |name| {
            let (r, c, v) = &weights[&name];
            be.load_weight(&WeightSource::from_f32(&name, *r, *c, v))
        })?;
        pass_bar.reset();
        pass_bar.set_length(calibrator.tokens() as u64);
        pass_bar.set_message("observe");
        let mut stats = calibrator.observe(&fp, [true; 4], a.hessian_weights.into(), |n| {
            pass_bar.inc(n as u64)
        });
        drop(fp);
        let t_observe = t_layer.elapsed().as_secs_f64();
        pass_bar.set_message("quantize");
        let mut stored: HashMap<String, (QType, Vec<u8>, Transform)> = HashMap::new();
        // channel equalization of the norm-fed sites (src/equalize.rs): their linears are
        // quantized here, and the norm's gain is rescaled before the loop below stores it
        let mut done: Vec<String> = Vec::new();
        for (site, norm) in [
            (Site::AttnInput, "input_layernorm"),
            (Site::FfnInput, "pre_feedforward_layernorm"),
        ] {
            let norm = format!("model.layers.{i}.{norm}.weight");
            let members: Vec<&String> = names.iter().filter(|n| site_of(n) == Some(site)).collect();
            let foldable = choice_of
                .get(norm.as_str())
                .is_some_and(|c| c.qtype == QType::F32 && weights.contains_key(&norm));
            if members.is_empty()
                || !foldable
                || !members.iter().all(|n| choice_of[n.as_str()].equalize)
            {
                continue;
            }
            let Some(hs) = stats.take(site) else { continue };
            let hm = hs.into_mean();
            let cols = weights[members[0].as_str()].1;
            let ms: Vec<equalize::Member> = members
                .iter()
                .map(|n| {
                    let (rows, _, w) = &weights[n.as_str()];
                    equalize::Member {
                        choice: choice_of[n.as_str()],
                        weights: w,
                        rows: *rows,
                    }
                })
                .collect();
            let eq = equalize::equalize_site(&ms, &hm, cols, &equalize::ALPHAS, opts)?;
            drop(ms);
            let norm_w = &mut weights.get_mut(&norm).expect("checked above").2;
            equalize::fold_into_norm(norm_w, &eq.scales);
            equalized.push((i, norm.clone(), eq.alpha));
            for (name, (bytes, mut q)) in members.into_iter().zip(eq.tensors) {
                let c = choice_of[name.as_str()];
                q.section = section_of[name.as_str()].to_string();
                writer.write_tensor(name, &bytes)?;
                quality.insert(name.clone(), q);
                stored.insert(name.clone(), (c.qtype, bytes, c.transform));
                done.push(name.clone());
            }
        }
        // each site's mean Hessian, made in place when first needed and dropped after the
        // last tensor that reads it (at 27B the down projection's is 3.7 GB)
        let mut means: HashMap<Site, Vec<f64>> = HashMap::new();
        // v_proj's value-weighted Hessian (--hessian-weights post-norm)
        let values_mean = stats.values.take().map(|h| h.into_mean());
        for (k, name) in names.iter().enumerate() {
            if done.contains(name) {
                continue;
            }
            let c = choice_of[name.as_str()];
            let (r, cols, w) = &weights[name];
            let site = site_of(name);
            if let Some(s) = site {
                if let std::collections::hash_map::Entry::Vacant(e) = means.entry(s) {
                    if let Some(hs) = stats.take(s) {
                        e.insert(hs.into_mean());
                    }
                }
            }
            let hm = match values_mean.as_deref() {
                Some(v) if name.ends_with("self_attn.v_proj.weight") => Some(v),
                _ => site.and_then(|s| means.get(&s)).map(|v| v.as_slice()),
            };
            let (bytes, mut q) = quantize_tensor(c, w, *r, *cols, hm, opts)?;
            if let Some(s) = site {
                if !names[k + 1..].iter().any(|n| site_of(n) == Some(s)) {
                    means.remove(&s);
                }
            }
            q.section = section_of[name.as_str()].to_string();
            writer.write_tensor(name, &bytes)?;
            quality.insert(name.clone(), q);
            stored.insert(name.clone(), (c.qtype, bytes, c.transform));
        }
        drop(stats);
        drop(weights);
        let t_q = t_layer.elapsed().as_secs_f64() - t_observe;
        // advance through the layer as stored
        let ql = Layer::load(i, kind, |name| {
            let (qt, bytes, tr) = &stored[&name];
            let shape = &choice_of[name.as_str()].shape;
            let (r, c) = rows_cols(shape);
            be.load_weight(&stored_source(&name, *qt, r, c, bytes.clone(), *tr))
        })?;
        pass_bar.reset();
        pass_bar.set_message("advance");
        calibrator.advance(&ql, |n| pass_bar.inc(n as u64));
        layer_bar.inc(1);
        let t_all = t_layer.elapsed().as_secs_f64();
        if bars.multi.is_none() {
            bars.log(format!(
                "layer {i}: observe {t_observe:.1} s, quantize {t_q:.1} s, advance {:.1} s",
                t_all - t_observe - t_q
            ));
        }
    }
    pass_bar.finish_and_clear();
    layer_bar.finish();

    // ---- the tied embedding, fitted as the lm_head
    if fit_head {
        let t0 = Instant::now();
        let norm_w = ckpt.tensor("model.norm.weight")?.to_f32();
        let hm = head::head_hessian(&calibrator, &norm_w, config.rms_norm_eps);
        let (rows, cols) = rows_cols(&emb.shape);
        let bar = bars.bar(
            rows as u64,
            "lm_head fit",
            "{msg:12} {bar:30} {pos}/{len} rows [{elapsed_precise} < {eta_precise}]",
        );
        let table = ckpt.tensor(emb_name)?;
        let row = |r: usize| table.row_f32(r).map_err(anyhow::Error::from);
        let (bytes, s) = head::fit_table(emb, rows, cols, row, &hm, opts, &bar)?;
        bar.finish();
        writer.write_tensor(emb_name, &bytes)?;
        let out_rel = s.out_e / s.out_s.max(f64::MIN_POSITIVE);
        let mut q = self::quality(
            emb,
            rows * cols,
            s.se,
            s.sw,
            Some(out_rel),
            emb.method.name(),
        );
        q.section = section_of[emb_name].to_string();
        quality.insert(emb_name.into(), q);
        bars.log(format!(
            "embedding fitted as the tied lm_head ({}): {rows} rows in {:.1} s",
            emb.method.name(),
            t0.elapsed().as_secs_f64()
        ));
    }
    drop(calibrator);

    // ---- the rest: final norm, an untied lm_head
    for c in &choices {
        if quality.contains_key(&c.name) {
            continue;
        }
        let (bytes, mut q) = if c.shape.len() == 2 && c.shape[0] > 4096 {
            quantize_table(&ckpt, c, &bars, "lm_head")?
        } else {
            let t = ckpt.tensor(&c.name)?;
            let (r, cols) = rows_cols(&t.shape);
            quantize_tensor(c, &t.to_f32(), r, cols, None, opts)?
        };
        q.section = section_of[c.name.as_str()].to_string();
        writer.write_tensor(&c.name, &bytes)?;
        quality.insert(c.name.clone(), q);
    }
    let t_quant = t_start.elapsed().as_secs_f64();
    bars.log(format!("quantized in {t_quant:.1} s"));

    // ---- the norm gains, distilled end to end with every code fixed
    let distill_note = if a.distill_steps == 0 {
        None
    } else if let Some(why) = distill_blocker(&choices, &config, a.distill_seq_len) {
        bars.log(format!("distillation skipped: {why}"));
        Some(format!("norm gains not distilled: {why}"))
    } else {
        let seqs = CalibSet::from_text(
            &tok,
            &calib_text,
            &calib_path.display().to_string(),
            a.distill_steps.min(DISTILL_SEQS) * a.distill_seq_len,
            a.distill_seq_len,
            Sampling::Spread,
        )?
        .sequences;
        let store = TmpStore::open(&a.output, &plan, &config, &tok_json)?;
        let (student, g0) = distill::load_net(&store)?;
        let (teacher, g_ref) = distill::load_net(&ckpt)?;
        let bar = bars.bar(
            a.distill_steps as u64,
            "distill",
            "{msg:12} {bar:30} {pos}/{len} steps [{elapsed_precise} < {eta_precise}]",
        );
        let t0 = Instant::now();
        let r = distill::distill(
            &student,
            &teacher,
            &g_ref,
            g0,
            &seqs,
            a.distill_steps,
            a.distill_lr,
            |step, kl| {
                bar.set_message(format!("KL {kl:.4}"));
                bar.inc(1);
                if bars.multi.is_none() && (step % 16 == 0 || step == a.distill_steps) {
                    bars.log(format!(
                        "distill step {step}/{}: calibration KL {kl:.4} (last 16 steps) [{:.0} s]",
                        a.distill_steps,
                        t0.elapsed().as_secs_f64()
                    ));
                }
            },
        )?;
        bar.finish();
        drop((student, teacher, store));
        let layout = distill::model::NormLayout::new(&config);
        for (name, range) in layout.names.iter().zip(&layout.ranges) {
            let g = &r.gains[range.clone()];
            let bytes: Vec<u8> = g.iter().flat_map(|v| v.to_le_bytes()).collect();
            writer.rewrite_tensor(name, &bytes)?;
            // error of the gain (1 + w) against the checkpoint's
            let gain = |w: &[f32]| w.iter().map(|v| 1.0 + v).collect::<Vec<f32>>();
            let (se, sw) = error_sums(&gain(&g_ref[range.clone()]), &gain(g));
            let c = choice_of[name.as_str()];
            let section = quality[name].section.clone();
            let mut q = self::quality(c, g.len(), se, sw, None, "distilled");
            q.section = section;
            quality.insert(name.clone(), q);
        }
        let line = format!(
            "norm gains distilled end to end ({} steps of one {}-token calibration sequence, {} sequences; codes and grids unchanged): KL(ref‖quant) on {} of those calibration sequences {:.4} before, {:.4} after; took {:.1} s (--distill-steps 0 skips it); the norms' rows give the relative change of their gains (1 + w) from the checkpoint's",
            a.distill_steps,
            a.distill_seq_len,
            seqs.len(),
            distill::PROBE.min(seqs.len()),
            r.kl_before,
            r.kl_after,
            r.seconds
        );
        bars.log(line.clone());
        Some(line)
    };

    // ---- report
    let tensors_q: Vec<TensorQuality> = plan
        .tensors
        .iter()
        .map(|(s, _)| quality.remove(&s.name).expect("every tensor quantized"))
        .collect();
    let mut notes = report::placement_notes_from_plan(&plan);
    notes.push(format!(
        "calibration: {} tokens ({} sequences of up to {}, each from <bos>, {}) of {}; evaluation text never used for calibration",
        calib.tokens(),
        calib.sequences.len(),
        calib.seq_len,
        calib.sampling.describe(),
        calib_path.display()
    ));
    if a.hessian_weights == HessianWeights::PostNorm {
        notes.push(
            "GPTQ Hessians of o_proj and down_proj weight each calibration token by 1/mean(y²) of \
             the projection's output y, which the post-norm divides by before the residual add; \
             v_proj's weight each key position by the squared attention it receives over \
             mean(o²) at each query (--hessian-weights uniform: every token alike)"
                .into(),
        );
    }
    if !equalized.is_empty() {
        let list: Vec<String> = equalized
            .iter()
            .map(|(i, n, a)| format!("{i}.{}={a}", n.rsplit('.').nth(1).unwrap_or(n)))
            .collect();
        notes.push(format!(
            "channel equalization folded into the norms; α per layer (0 = none): {}",
            list.join(" ")
        ));
    }
    notes.extend(distill_note);
    notes.push(format!("quantization took {t_quant:.1} s"));
    let mut rep = QualityReport {
        model: a.checkpoint.display().to_string(),
        recipe: recipe.name.clone(),
        profile: dprofile.name.clone(),
        calibration: CalibrationSummary {
            source: calib_path.display().to_string(),
            tokens: calib.tokens(),
            sequences: calib.sequences.len(),
            seq_len: calib.seq_len,
            methods: methods.clone(),
        },
        tensors: tensors_q,
        end_to_end: None,
        end_to_end_npu: None,
        size: SizeSummary::default(),
        notes,
    };

    // ---- end to end, on the finished tensors in <out>.tmp (the file is not renamed yet)
    if let Some(text) = &eval_text {
        let store = TmpStore::open(&a.output, &plan, &config, &tok_json)?;
        let source = eval_path.display().to_string();
        let npu_blocker = npu_eval_blocker(&plan, &dprofile.name);
        if let (false, Some(why)) = (a.no_npu_eval, &npu_blocker) {
            rep.notes
                .push(format!("no emulated-NPU end-to-end figures: {why}"));
        }
        if a.no_npu_eval || npu_blocker.is_some() {
            let e = eval::evaluate(&ckpt, &store, &tok, text, &source, a.eval_tokens, a.threads)?;
            rep.end_to_end = Some(e);
        } else {
            let t = Instant::now();
            let (e, e_npu) = eval::evaluate_with_npu(
                &ckpt,
                &store,
                &tok,
                text,
                &source,
                a.eval_tokens,
                a.threads,
            )?;
            rep.end_to_end = Some(e);
            rep.end_to_end_npu = Some(e_npu);
            rep.notes.push(format!(
                "end-to-end figures of the emulated NPU path: the NPU engine model's arithmetic in attention \
                 (int4 weights of the npu.bank sections, bf16 activations, bf16 KV cache) computed on the host CPU, \
                 not measured on NPU hardware; evaluation of both paths took {:.1} s (--no-npu-eval skips this one)",
                t.elapsed().as_secs_f64()
            ));
        }
    }

    // ---- blobs, index, header, rename
    let calib_json = serde_json::to_vec_pretty(&serde_json::json!({
        "summary": rep.calibration,
        "text_tokens": calib.text_tokens,
        "gptq_damp": a.damp,
        "gptq_refit": a.refit,
        "hessian_weights": TokenWeights::from(a.hessian_weights).name(),
    }))?;
    writer.add_blob(mixqfmt::BLOB_TOKENIZER, &tok_json)?;
    writer.add_blob(mixqfmt::BLOB_CALIBRATION, &calib_json)?;
    // file size is known only after the report blob: estimate with the report itself, then fix
    let tensor_bytes: u64 = plan.tensors.iter().map(|(_, p)| p.length).sum();
    rep.size = SizeSummary::from_tensors(
        plan.tensors
            .iter()
            .map(|(s, p)| {
                (
                    s.name.as_str(),
                    s.shape.iter().map(|&d| d as u64).collect::<Vec<_>>(),
                    p.length,
                )
            })
            .collect::<Vec<_>>()
            .iter()
            .map(|(n, s, l)| (*n, s.as_slice(), *l)),
        tensor_bytes,
    );
    let report_json = serde_json::to_vec(&rep)?;
    writer.add_blob(mixqfmt::BLOB_REPORT, &report_json)?;
    let path = writer.finish()?;
    rep.size.file_bytes = std::fs::metadata(&path)?.len();
    let files = report::write_files(&rep, &path)?;
    bars.log(format!(
        "wrote {} in {:.1} s; report: {}",
        path.display(),
        t_start.elapsed().as_secs_f64(),
        files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(rep)
}

/// Distillation sequences at most (the lab's 64 x 256 tokens: four times the text gave the
/// same KL, quantizer/README.md).
const DISTILL_SEQS: usize = 64;

/// Why the norm gains cannot be distilled here, if they cannot: they must be stored as F32
/// (the recipe's choice), and both models must fit in memory in f32.
fn distill_blocker(
    choices: &[TensorChoice],
    config: &Gemma3Config,
    seq_len: usize,
) -> Option<String> {
    let names = distill::model::NormLayout::new(config).names;
    if let Some(c) = choices
        .iter()
        .find(|c| names.contains(&c.name) && c.qtype != QType::F32)
    {
        return Some(format!(
            "`{}` is stored as {}, not F32",
            c.name,
            c.qtype.name()
        ));
    }
    distill::fits_in_memory(config, seq_len)
}

/// Why the emulated NPU path cannot run this plan, if it cannot: the NPU engine model reads
/// the attention projections of the `npu.bank*` sections, and only as int4.
fn npu_eval_blocker(plan: &Plan, profile: &str) -> Option<String> {
    let on_npu: Vec<&TensorSpec> = (plan.tensors.iter())
        .filter(|(s, p)| is_attn_proj(&s.name) && p.section.starts_with("npu.bank"))
        .map(|(s, _)| s)
        .collect();
    if on_npu.is_empty() {
        return Some(format!(
            "the `{profile}` profile puts no attention projection in an NPU bank"
        ));
    }
    on_npu
        .iter()
        .find(|s| {
            !matches!(
                s.qtype,
                QType::I4Grouped | QType::I4Grouped32 | QType::I4Grouped16 | QType::I4PerChannel
            )
        })
        .map(|s| {
            format!(
                "`{}` is {} in an NPU bank, and the NPU engine model reads int4 attention weights only (I4_GROUPED, I4_GROUPED32, I4_GROUPED16, I4_PER_CHANNEL)",
                s.name,
                s.qtype.name()
            )
        })
}

fn is_attn_proj(name: &str) -> bool {
    ["q_proj", "k_proj", "v_proj", "o_proj"]
        .iter()
        .any(|p| name.ends_with(&format!("self_attn.{p}.weight")))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// (type name, method) pairs in type order, for the report and the recipe options.
fn methods_by_type(choices: &[TensorChoice]) -> Vec<(String, String)> {
    let mut m: Vec<(QType, Vec<Method>)> = Vec::new();
    for c in choices {
        match m.iter_mut().find(|(q, _)| *q == c.qtype) {
            Some((_, v)) => {
                if !v.contains(&c.method) {
                    v.push(c.method)
                }
            }
            None => m.push((c.qtype, vec![c.method])),
        }
    }
    m.sort_by_key(|(q, _)| *q);
    m.into_iter()
        .map(|(q, v)| {
            (
                q.name().to_ascii_lowercase(),
                v.iter().map(|m| m.name()).collect::<Vec<_>>().join("+"),
            )
        })
        .collect()
}

fn rows_cols(shape: &[usize]) -> (usize, usize) {
    match shape {
        [n] => (1, *n),
        [r, c] => (*r, *c),
        _ => (0, 0),
    }
}

/// The observation site feeding a linear layer.
fn site_of(name: &str) -> Option<Site> {
    let tail = name.strip_suffix(".weight")?;
    Some(match tail.rsplit('.').next()? {
        "q_proj" | "k_proj" | "v_proj" => Site::AttnInput,
        "o_proj" => Site::AttnOutput,
        "gate_proj" | "up_proj" => Site::FfnInput,
        "down_proj" => Site::FfnHidden,
        _ => return None,
    })
}

/// A stored tensor as the runtime binds it.
fn stored_source(
    name: &str,
    qtype: QType,
    rows: usize,
    cols: usize,
    bytes: Vec<u8>,
    transform: Transform,
) -> WeightSource {
    let mut s = WeightSource::from_f32(name, rows, cols, &[]);
    s.qtype = qtype;
    s.bytes = SharedBytes::from_vec(bytes);
    s.transform = transform;
    s
}

/// Quantizes one tensor (`rows x cols` f32) by its choice; `hess` is the mean Hessian of its
/// input (linear layers only). Returns the stored bytes and the tensor's quality figures.
pub fn quantize_tensor(
    c: &TensorChoice,
    w: &[f32],
    rows: usize,
    cols: usize,
    hess: Option<&[f64]>,
    opts: GptqOptions,
) -> Result<(Vec<u8>, TensorQuality)> {
    let mut w = w.to_vec();
    let mut h: Option<Cow<[f64]>> = hess.map(Cow::Borrowed);
    if let Transform::BlockHadamard { block, seed } = c.transform {
        rotate_weights(&mut w, cols, block as usize, seed)?;
        if let Some(hm) = &h {
            h = Some(Cow::Owned(rotate_hessian(hm, cols, block as usize, seed)));
        }
    }
    let importance = h.as_ref().map(|hm| {
        let ms: Vec<f32> = (0..cols).map(|i| hm[i * cols + i] as f32).collect();
        importance_from_mean_square(&ms)
    });
    let bytes = if !c.qtype.is_quantized() {
        quantize_rows(c.qtype, &w, rows, cols, None)?
    } else {
        match (c.method, &h) {
            (Method::Gptq, Some(hm)) => gptq(c.qtype, &w, rows, cols, hm, opts)
                .with_context(|| format!("GPTQ of {}", c.name))?,
            (Method::Gptq, None) | (Method::Search, _) => {
                quantize_rows(c.qtype, &w, rows, cols, importance.as_deref())?
            }
            (Method::Rtn, _) => quantize_rows(c.qtype, &w, rows, cols, None)?,
        }
    };
    let deq = dequantize_rows(c.qtype, &bytes, rows, cols)?;
    let (se, sw) = error_sums(&w, &deq);
    let out_rel_err = h.as_ref().map(|hm| {
        let hf: Vec<f32> = hm.iter().map(|&v| v as f32).collect();
        let (e, s) = output_error(&w, &deq, rows, cols, &hf);
        e / s.max(f64::MIN_POSITIVE)
    });
    let method = if c.qtype.is_quantized() {
        match (c.method, &h) {
            (Method::Gptq, None) => Method::Search,
            (m, _) => m,
        }
        .name()
    } else {
        "none"
    };
    Ok((bytes, quality(c, rows * cols, se, sw, out_rel_err, method)))
}

/// (Σ (w − q)², Σ w²) over a tensor and its dequantized form: the relative RMSE's parts.
pub(crate) fn error_sums(w: &[f32], deq: &[f32]) -> (f64, f64) {
    w.par_iter()
        .zip(deq)
        .map(|(&a, &b)| (((a - b) as f64).powi(2), (a as f64).powi(2)))
        .reduce(|| (0.0, 0.0), |x, y| (x.0 + y.0, x.1 + y.1))
}

fn quality(
    c: &TensorChoice,
    params: usize,
    se: f64,
    sw: f64,
    out_rel_err: Option<f64>,
    method: &str,
) -> TensorQuality {
    let bytes = c
        .qtype
        .tensor_bytes(rows_cols(&c.shape).0, rows_cols(&c.shape).1)
        .unwrap_or(0);
    TensorQuality {
        name: c.name.clone(),
        class: report::tensor_class(&c.name).into(),
        layer: recipe::layer_of(&c.name),
        qtype: c.qtype.name().into(),
        method: method.into(),
        rel_rmse: (se / sw.max(f64::MIN_POSITIVE)).sqrt(),
        snr_db: if se == 0.0 {
            f64::INFINITY
        } else {
            10.0 * (sw / se).log10()
        },
        out_rel_err,
        params: params as u64,
        bytes: bytes as u64,
        section: String::new(),
    }
}

/// Quantizes a large `[vocab, hidden]` table (embedding, untied lm_head) in row chunks,
/// without calibration statistics (search with uniform importance). Returns the stored bytes.
fn quantize_table(
    ckpt: &HfCheckpoint,
    c: &TensorChoice,
    bars: &Bars,
    label: &str,
) -> Result<(Vec<u8>, TensorQuality)> {
    let t0 = Instant::now();
    let t = ckpt.tensor(&c.name)?;
    let (rows, cols) = rows_cols(&t.shape);
    let rb = c.qtype.row_bytes(cols)?;
    let mut out = vec![0u8; rows * rb];
    const CHUNK: usize = 4096;
    let bar = bars.bar(
        rows as u64,
        label,
        "{msg:12} {bar:30} {pos}/{len} rows [{elapsed_precise} < {eta_precise}]",
    );
    let (mut se, mut sw) = (0f64, 0f64);
    for (k, o) in out.chunks_mut(CHUNK * rb).enumerate() {
        let r0 = k * CHUNK;
        let n = o.len() / rb;
        let (e, s) = o
            .par_chunks_mut(rb)
            .enumerate()
            .map(|(j, ob)| -> Result<(f64, f64)> {
                let src = t.row_f32(r0 + j)?;
                // no activation statistics for a gather table: min/max RTN at 8 bits (fast),
                // the unweighted search otherwise
                let q = if c.qtype == QType::I8Asym && c.method != Method::Search {
                    quantize_rows_minmax_i8(&src, 1, cols)?
                } else {
                    quantize_rows(c.qtype, &src, 1, cols, None)?
                };
                ob.copy_from_slice(&q);
                let mut d = vec![0f32; cols];
                dequantize_row(c.qtype, ob, &mut d)?;
                Ok(src.iter().zip(&d).fold((0.0, 0.0), |(e, s), (&a, &b)| {
                    (e + ((a - b) as f64).powi(2), s + (a as f64).powi(2))
                }))
            })
            .try_reduce(|| (0.0, 0.0), |x, y| Ok((x.0 + y.0, x.1 + y.1)))?;
        se += e;
        sw += s;
        bar.inc(n as u64);
    }
    bar.finish();
    bars.log(format!(
        "{label}: {rows} rows in {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
    let method = if c.qtype.is_quantized() {
        c.method.name()
    } else {
        "none"
    };
    Ok((out, quality(c, rows * cols, se, sw, None, method)))
}

/// Progress bars (indicatif), or nothing with `--quiet`.
struct Bars {
    multi: Option<MultiProgress>,
}

impl Bars {
    fn new(quiet: bool) -> Bars {
        Bars {
            multi: (!quiet).then(MultiProgress::new),
        }
    }
    fn bar(&self, len: u64, msg: &str, template: &str) -> ProgressBar {
        match &self.multi {
            Some(m) => {
                let b = m.add(ProgressBar::new(len));
                b.set_style(ProgressStyle::with_template(template).expect("static template"));
                b.set_message(msg.to_string());
                b
            }
            None => ProgressBar::hidden(),
        }
    }
    fn log(&self, line: String) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(line);
            }
            None => eprintln!("{line}"),
        }
    }
}

/// The finished tensors of `<out>.tmp`, read through a memory map before the file is
/// renamed: the end-to-end evaluation runs the exact stored bytes. Offsets follow SPEC.md §4
/// (sections in plan order, from 65536, each at the aligned end of the previous one) and §10
/// (the writer's `<out>.tmp`).
struct TmpStore {
    config: Gemma3Config,
    tokenizer: Vec<u8>,
    map: SharedBytes,
    tensors: HashMap<String, (QType, usize, usize, usize, usize, Transform, String)>,
}

impl TmpStore {
    fn open(out: &Path, plan: &Plan, config: &Gemma3Config, tok_json: &[u8]) -> Result<TmpStore> {
        let mut tmp = out.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let f = std::fs::File::open(&tmp).with_context(|| format!("opening {}", tmp.display()))?;
        // SAFETY: read-only map of our own temporary file, which nothing truncates while mapped
        let map = unsafe { memmap2::Mmap::map(&f) }
            .with_context(|| format!("mapping {}", tmp.display()))?;
        let mut section_offset = HashMap::new();
        let mut at = mixqfmt::SECTION_ALIGN;
        for r in plan.regions.iter().filter(|r| r.used > 0) {
            section_offset.insert(r.region.name.clone(), at);
            at = mixqfmt::align_up(at + r.used, mixqfmt::SECTION_ALIGN).expect("layout fits");
        }
        let mut tensors = HashMap::new();
        for (s, p) in &plan.tensors {
            let (r, c) = rows_cols(&s.shape);
            let start = (section_offset[&p.section] + p.offset) as usize;
            tensors.insert(
                s.name.clone(),
                (
                    s.qtype,
                    r,
                    c,
                    start,
                    p.length as usize,
                    s.transform,
                    p.section.clone(),
                ),
            );
        }
        if (at as usize) > map.len() {
            bail!("{}: shorter than its planned sections", tmp.display());
        }
        Ok(TmpStore {
            config: config.clone(),
            tokenizer: tok_json.to_vec(),
            map: SharedBytes::from_mmap(map),
            tensors,
        })
    }
}

impl WeightStore for TmpStore {
    fn config(&self) -> &Gemma3Config {
        &self.config
    }
    fn weight(&self, name: &str) -> Result<WeightSource> {
        let (q, r, c, start, len, tr, section) = self
            .tensors
            .get(name)
            .ok_or_else(|| anyhow!("tensor `{name}` is not in the file being written"))?;
        let mut s = WeightSource::from_f32(name, *r, *c, &[]);
        s.qtype = *q;
        s.bytes = self
            .map
            .slice(*start..*start + *len)
            .ok_or_else(|| anyhow!("tensor `{name}` outside the file"))?;
        s.transform = *tr;
        // The hybrid backend puts the tensors of `npu.bank*` sections on the NPU engine.
        s.section = Some(section.clone());
        Ok(s)
    }
    fn tokenizer_json(&self) -> Result<Vec<u8>> {
        Ok(self.tokenizer.clone())
    }
    fn describe(&self) -> String {
        "the file being written".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gemma_plan(attn: QType, profile: &DeviceProfile) -> Plan {
        let json = r#"{"model_type":"gemma3_text","vocab_size":256,"hidden_size":64,
            "intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":2,
            "num_key_value_heads":1,"head_dim":64,"sliding_window":16,
            "sliding_window_pattern":2,"query_pre_attn_scalar":64}"#;
        let cfg = Gemma3Config::from_json_str(json, Path::new("<tiny>")).unwrap();
        let specs: Vec<TensorSpec> = expected_tensors(&cfg)
            .into_iter()
            .map(|(name, shape)| {
                let q = if shape.len() == 1 {
                    QType::F32
                } else if is_attn_proj(&name) {
                    attn
                } else {
                    QType::I8Asym
                };
                TensorSpec::new(name, q, &shape)
            })
            .collect();
        profile::plan(&specs, profile).unwrap()
    }

    #[test]
    fn the_npu_evaluation_needs_int4_attention_in_npu_banks() {
        let phoenix = DeviceProfile::phoenix();
        for q in [QType::I4Grouped, QType::I4Grouped32, QType::I4Grouped16] {
            assert_eq!(npu_eval_blocker(&gemma_plan(q, &phoenix), "phoenix"), None);
        }
        let e = npu_eval_blocker(&gemma_plan(QType::I8Asym, &phoenix), "phoenix").unwrap();
        assert!(e.contains("I8_ASYM") && e.contains("int4"), "{e}");
        let e =
            npu_eval_blocker(&gemma_plan(QType::I4Grouped, &DeviceProfile::gpu()), "gpu").unwrap();
        assert!(e.contains("`gpu` profile puts no attention"), "{e}");
    }
}
