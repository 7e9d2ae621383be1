//! The quality-retention report: stored inside the .mixq (blob `meta.report`) and written
//! beside it as JSON, Markdown and an SVG chart of per-layer error.
//!
//! Retention is always named with its metric: `retention_ppl_pct` = PPL_ref / PPL_quant x 100,
//! measured on an evaluation text the calibration never saw.

//!
//! - [`markdown`]: [`render_markdown`], [`render_summary`] (the lines `convert` ends with).
//! - [`svg`]: [`render_svg`], the per-layer error chart.
//! - [`placement`]: what the placement did (fill of each section, spills), in words.
//! - [`write_files`] writes `<stem>.report.{json,md,svg}` beside the file; [`run`] is the
//!   `report` subcommand.

pub mod markdown;
pub mod placement;
pub mod svg;

pub use markdown::{
    render_end_to_end, render_markdown, render_summary, NPU_LABEL, RETENTION_METRIC,
};
pub use placement::{placement_notes, placement_notes_from_plan};
pub use svg::render_svg;

use crate::eval::{self, DEFAULT_EVAL_TOKENS};
use anyhow::{bail, Context, Result};
use mixq_format::mixq::{Index, MixqFile, BLOB_REPORT};
use mixq_format::tokenizer::Tokenizer;
use mixq_runtime::weights::{open_store, MixqStore, WeightStore};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct QualityReport {
    /// Where the model came from (checkpoint directory name).
    pub model: String,
    pub recipe: String,
    pub profile: String,
    pub calibration: CalibrationSummary,
    /// One entry per stored tensor, in file order.
    pub tensors: Vec<TensorQuality>,
    /// End-to-end figures of the CPU path (f32 activations).
    pub end_to_end: Option<EndToEnd>,
    /// End-to-end figures with the NPU engine model's arithmetic in attention (emulated).
    pub end_to_end_npu: Option<EndToEnd>,
    pub size: SizeSummary,
    /// Placement spills, emulation labels and other facts a user should see.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CalibrationSummary {
    /// The calibration text file.
    pub source: String,
    pub tokens: usize,
    pub sequences: usize,
    pub seq_len: usize,
    /// Algorithm per quant type, e.g. {"i4_grouped": "gptq", "i8_asym": "search"}.
    pub methods: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TensorQuality {
    pub name: String,
    /// embedding, attn_qkv, attn_o, ffn_gate_up, ffn_down, norm
    pub class: String,
    pub layer: Option<usize>,
    pub qtype: String,
    /// "gptq", "search", "rtn" or "none" (passthrough).
    pub method: String,
    /// ||W - Q(W)||_F / ||W||_F
    pub rel_rmse: f64,
    /// 10 log10(||W||² / ||W - Q(W)||²); +inf for an exact (passthrough) tensor, stored as JSON
    /// `null` (JSON has no infinity) and read back as +inf.
    #[serde(deserialize_with = "null_is_infinity")]
    pub snr_db: f64,
    /// Relative output error on the calibration activations, tr(E H Eᵀ) / tr(W H Wᵀ), when known.
    pub out_rel_err: Option<f64>,
    pub params: u64,
    pub bytes: u64,
    pub section: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EndToEnd {
    /// The evaluation text file (never the calibration text).
    pub eval_source: String,
    pub tokens: usize,
    pub ppl_ref: f64,
    pub ppl_quant: f64,
    /// PPL_ref / PPL_quant x 100.
    pub retention_ppl_pct: f64,
    /// KL(P_ref || P_quant) per position, natural log.
    pub kl_mean: f64,
    pub kl_p99: f64,
    /// Fraction of positions where both models' argmax agree.
    pub top1_agreement: f64,
    /// 95 % interval of `retention_ppl_pct` from the per-token NLL differences, treating tokens
    /// as independent (optimistic); `None` when unknown.
    #[serde(default)]
    pub retention_ppl_ci95: Option<(f64, f64)>,
    /// Tokens per evaluation window (`<bos>` included); 0 when unknown.
    #[serde(default)]
    pub window: usize,
    /// Number of windows (each starts with `<bos>` and a fresh KV cache); 0 when unknown.
    #[serde(default)]
    pub windows: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SizeSummary {
    pub file_bytes: u64,
    pub params: u64,
    /// Stored tensor bytes x 8 / params (scales and mins included).
    pub bits_per_weight: f64,
    pub classes: Vec<ClassSize>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClassSize {
    pub class: String,
    pub params: u64,
    pub bytes: u64,
    pub bits_per_weight: f64,
}

fn null_is_infinity<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
}

/// The tensor classes of the report, in display order.
pub const CLASSES: [&str; 8] = [
    "embedding",
    "attn_qkv",
    "attn_o",
    "ffn_gate_up",
    "ffn_down",
    "norm",
    "lm_head",
    "other",
];

/// The class of a canonical HF tensor name: `embedding`, `attn_qkv`, `attn_o`, `ffn_gate_up`,
/// `ffn_down`, `norm`, `lm_head` (untied checkpoints only) or `other`.
pub fn tensor_class(name: &str) -> &'static str {
    let tail = name.rsplit_once('.').map_or(name, |(h, _)| h);
    let last = tail.rsplit('.').next().unwrap_or(tail);
    match last {
        _ if name == "model.embed_tokens.weight" => "embedding",
        _ if name == "lm_head.weight" => "lm_head",
        "q_proj" | "k_proj" | "v_proj" => "attn_qkv",
        "o_proj" => "attn_o",
        "gate_proj" | "up_proj" => "ffn_gate_up",
        "down_proj" => "ffn_down",
        l if l.ends_with("norm") || l.ends_with("layernorm") => "norm",
        _ => "other",
    }
}

/// The layer index of `model.layers.{i}.*`.
pub fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("model.layers.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

impl SizeSummary {
    /// Params, bytes and bits per weight, in total and by class, from `(name, shape, stored
    /// bytes)` of every tensor; `file_bytes` is the whole file's length.
    pub fn from_tensors<'a>(
        tensors: impl IntoIterator<Item = (&'a str, &'a [u64], u64)>,
        file_bytes: u64,
    ) -> SizeSummary {
        let mut classes: Vec<ClassSize> = Vec::new();
        for (name, shape, bytes) in tensors {
            let class = tensor_class(name);
            let params: u64 = shape.iter().product();
            let c = match classes.iter_mut().position(|c| c.class == class) {
                Some(i) => &mut classes[i],
                None => {
                    classes.push(ClassSize {
                        class: class.into(),
                        ..Default::default()
                    });
                    classes.last_mut().expect("just pushed")
                }
            };
            c.params += params;
            c.bytes += bytes;
        }
        classes.sort_by_key(|c| CLASSES.iter().position(|&k| k == c.class));
        for c in &mut classes {
            c.bits_per_weight = bpw(c.bytes, c.params);
        }
        let params = classes.iter().map(|c| c.params).sum();
        let bytes = classes.iter().map(|c| c.bytes).sum();
        SizeSummary {
            file_bytes,
            params,
            bits_per_weight: bpw(bytes, params),
            classes,
        }
    }

    /// [`SizeSummary::from_tensors`] over a file's index.
    pub fn from_index(index: &Index, file_bytes: u64) -> SizeSummary {
        Self::from_tensors(
            index
                .tensors
                .iter()
                .map(|t| (t.name.as_str(), t.shape.as_slice(), t.length)),
            file_bytes,
        )
    }

    /// [`SizeSummary::from_tensors`] over the report's tensor entries.
    pub fn from_quality(tensors: &[TensorQuality], file_bytes: u64) -> SizeSummary {
        Self::from_tensors(
            (tensors.iter()).map(|t| (t.name.as_str(), std::slice::from_ref(&t.params), t.bytes)),
            file_bytes,
        )
    }
}

/// Stored bits per parameter (0 for no parameters).
pub fn bpw(bytes: u64, params: u64) -> f64 {
    if params == 0 {
        0.0
    } else {
        bytes as f64 * 8.0 / params as f64
    }
}

impl QualityReport {
    /// Parses the JSON of a `meta.report` blob or a `.report.json` file.
    pub fn from_json(bytes: &[u8]) -> Result<QualityReport> {
        serde_json::from_slice(bytes).context("the quality report is not valid report JSON")
    }

    /// The report stored in an open file, or `None` when the file has none (e.g. `synth` files).
    pub fn from_file(file: &MixqFile) -> Result<Option<QualityReport>> {
        match file.blob(BLOB_REPORT) {
            Ok(b) => Ok(Some(
                Self::from_json(b).with_context(|| format!("{}", file.path().display()))?,
            )),
            Err(_) => Ok(None),
        }
    }
}

/// The paths of the report files beside `mixq_path`: `<stem>.report.json`, `.md`, `.svg`.
pub fn report_paths(mixq_path: &Path) -> [PathBuf; 3] {
    ["json", "md", "svg"].map(|ext| mixq_path.with_extension(format!("report.{ext}")))
}

/// Writes the report beside the `.mixq` file as JSON, Markdown and an SVG chart (each written to
/// `<path>.tmp` and renamed into place). Returns the three paths.
pub fn write_files(report: &QualityReport, mixq_path: &Path) -> Result<Vec<PathBuf>> {
    let [json, md, svg] = report_paths(mixq_path);
    let svg_name = svg
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut markdown = render_markdown(report);
    markdown.push_str(&format!(
        "\n![Per-layer relative RMSE of the weights]({svg_name})\n"
    ));
    let json_text = serde_json::to_string_pretty(report).context("serializing the report")?;
    for (path, text) in [
        (&json, json_text),
        (&md, markdown),
        (&svg, render_svg(report)),
    ] {
        write_atomic(path, text.as_bytes())?;
    }
    Ok(vec![json, md, svg])
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// `mixq-quantize report`: show a file's quality-retention report, or recompute its end-to-end
/// figures on another text.
#[derive(clap::Args)]
pub struct ReportArgs {
    /// The .mixq file.
    pub file: PathBuf,
    /// Recompute the end-to-end figures (perplexity, retention, KL, top-1) on this text file
    /// instead of showing the stored report. Must not be the calibration text.
    #[arg(long, value_name = "TEXT")]
    pub eval: Option<PathBuf>,
    /// Predicted tokens to score with --eval (windows of 1024 tokens, each with <bos>).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_EVAL_TOKENS)]
    pub eval_tokens: usize,
    /// The full-precision HF checkpoint directory to compare with (default: the model path
    /// recorded in the report).
    #[arg(long, value_name = "HF_DIR")]
    pub reference: Option<PathBuf>,
    /// Print JSON instead of Markdown.
    #[arg(long)]
    pub json: bool,
    /// CPU threads for --eval (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// With --eval, also compute the figures with the NPU engine model's arithmetic in attention
    /// (int4 weights of the npu.bank sections, bf16 activations): what the NPU path would cost.
    /// Emulated on the host CPU; no NPU is used.
    #[arg(long, requires = "eval")]
    pub npu: bool,
}

pub fn run(a: ReportArgs) -> Result<()> {
    let store = MixqStore::open(&a.file)?;
    let file = store.file();
    let mut report = QualityReport::from_file(file)?.with_context(|| {
        format!(
            "{} holds no quality report (no `{BLOB_REPORT}` blob; `synth` files have none): \
             `mixq-quantize inspect` shows its sections and tensors",
            a.file.display()
        )
    })?;
    // The file on disk is the truth about its own size (the report is written inside it, so
    // the stored figure may predate the final index).
    report.size.file_bytes = file.bytes().len() as u64;
    if !report
        .notes
        .iter()
        .any(|n| n.starts_with(placement::PREFIX))
    {
        report.notes.extend(placement_notes(file.index()));
    }

    let Some(eval_path) = &a.eval else {
        if a.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", render_markdown(&report));
        }
        return Ok(());
    };

    check_not_calibration(eval_path, &report)?;
    let text = std::fs::read_to_string(eval_path)
        .with_context(|| format!("reading the evaluation text {}", eval_path.display()))?;
    let ref_dir = match &a.reference {
        Some(d) => d.clone(),
        None => {
            let p = PathBuf::from(&report.model);
            if !p.join("config.json").is_file() {
                bail!(
                    "--eval needs the full-precision reference checkpoint: the report records \
                     the model as `{}`, which is not a checkpoint directory here; pass \
                     --reference HF_DIR",
                    report.model
                );
            }
            p
        }
    };
    let reference: Box<dyn WeightStore> = open_store(&ref_dir)
        .with_context(|| format!("opening the reference {}", ref_dir.display()))?;
    let tok = Tokenizer::from_bytes(&store.tokenizer_json()?)?;
    let source = eval_path.display().to_string();
    let (e, e_npu) = if a.npu {
        let (e, n) = eval::evaluate_with_npu(
            reference.as_ref(),
            &store,
            &tok,
            &text,
            &source,
            a.eval_tokens,
            a.threads,
        )?;
        (e, Some(n))
    } else {
        let e = eval::evaluate(
            reference.as_ref(),
            &store,
            &tok,
            &text,
            &source,
            a.eval_tokens,
            a.threads,
        )?;
        (e, None)
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "file": a.file.display().to_string(),
                "reference": ref_dir.display().to_string(),
                "end_to_end": e,
                "end_to_end_npu_emulated": e_npu,
                "stored_end_to_end": report.end_to_end,
                "stored_end_to_end_npu_emulated": report.end_to_end_npu,
            }))?
        );
    } else {
        println!("# End-to-end figures recomputed: {}\n", a.file.display());
        println!("Reference: `{}`.\n", ref_dir.display());
        print!(
            "{}",
            render_end_to_end(&e, "Recomputed (CPU path, f32 activations)")
        );
        if let Some(e) = &e_npu {
            println!();
            print!("{}", render_end_to_end(e, NPU_LABEL));
        }
        if let Some(stored) = &report.end_to_end {
            println!();
            print!(
                "{}",
                render_end_to_end(stored, "Stored in the file (for comparison)")
            );
        }
        if let Some(stored) = &report.end_to_end_npu {
            println!();
            print!(
                "{}",
                render_end_to_end(
                    stored,
                    &format!("Stored in the file (for comparison): {NPU_LABEL}")
                )
            );
        }
    }
    Ok(())
}

/// The end-to-end figures mean nothing on the calibration text: refuse it.
fn check_not_calibration(eval: &Path, report: &QualityReport) -> Result<()> {
    let calib = Path::new(&report.calibration.source);
    let same = match (eval.canonicalize(), calib.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        bail!(
            "{} is the calibration text of this file: evaluate on a text the calibration never saw",
            eval.display()
        );
    }
    if eval.file_name().is_some() && eval.file_name() == calib.file_name() {
        eprintln!(
            "warning: {} has the same name as the calibration text `{}`: make sure they differ",
            eval.display(),
            report.calibration.source
        );
    }
    Ok(())
}

/// Per-layer error, aggregated by class: what the per-layer table and the SVG chart show.
#[derive(Debug, Clone, Default)]
pub struct PerLayer {
    /// The classes found in layer tensors, in [`CLASSES`] order (norms excluded: their error is
    /// listed per tensor).
    pub classes: Vec<&'static str>,
    /// One row per layer, in order.
    pub rows: Vec<LayerRow>,
}

#[derive(Debug, Clone)]
pub struct LayerRow {
    pub layer: usize,
    /// Per class of [`PerLayer::classes`]: the parameter-weighted mean relative RMSE of the
    /// layer's tensors of that class (`None` when the layer has none).
    pub rel_rmse: Vec<Option<f64>>,
    /// The lowest SNR (dB) of the layer's tensors, norms excluded.
    pub min_snr_db: f64,
}

/// Groups the report's layer tensors by layer and class.
pub fn per_layer(report: &QualityReport) -> PerLayer {
    let layer_tensors: Vec<&TensorQuality> = (report.tensors.iter())
        .filter(|t| t.layer.is_some() && t.class != "norm")
        .collect();
    let classes: Vec<&'static str> = CLASSES
        .iter()
        .copied()
        .filter(|c| layer_tensors.iter().any(|t| t.class == *c))
        .collect();
    let mut layers: Vec<usize> = layer_tensors.iter().filter_map(|t| t.layer).collect();
    layers.sort_unstable();
    layers.dedup();
    let rows = layers
        .into_iter()
        .map(|l| {
            let of_layer: Vec<&&TensorQuality> = layer_tensors
                .iter()
                .filter(|t| t.layer == Some(l))
                .collect();
            let rel_rmse = classes
                .iter()
                .map(|c| {
                    let ts: Vec<_> = of_layer.iter().filter(|t| t.class == *c).collect();
                    let w: f64 = ts.iter().map(|t| t.params.max(1) as f64).sum();
                    (!ts.is_empty()).then(|| {
                        ts.iter()
                            .map(|t| t.rel_rmse * t.params.max(1) as f64)
                            .sum::<f64>()
                            / w
                    })
                })
                .collect();
            let min_snr_db = of_layer
                .iter()
                .map(|t| t.snr_db)
                .fold(f64::INFINITY, f64::min);
            LayerRow {
                layer: l,
                rel_rmse,
                min_snr_db,
            }
        })
        .collect();
    PerLayer { classes, rows }
}
