//! The quality-retention report: stored inside the .mixq (blob `meta.report`) and written
//! beside it as JSON, Markdown and an SVG chart of per-layer error.
//!
//! Retention is always named with its metric: `retention_ppl_pct` = PPL_ref / PPL_quant x 100,
//! measured on an evaluation text the calibration never saw.

use serde::{Deserialize, Serialize};

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
    /// 10 log10(||W||² / ||W - Q(W)||²)
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

#[derive(clap::Args)]
pub struct ReportArgs {}
pub fn run(_: ReportArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
