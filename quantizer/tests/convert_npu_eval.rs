//! `convert` fills the report's emulated-NPU end-to-end figures (`end_to_end_npu`) when the
//! attention is int4 in NPU banks (convert.rs's unit tests cover the plans it refuses).
//!
//! The model is the real Gemma 3 270M cut to its first two layers (one sliding, one global:
//! the config says 2 layers and the checkpoint's other tensors are ignored), so a conversion
//! with its end-to-end passes takes seconds, not the full model's minutes. Its perplexity is
//! astronomical (two layers of eighteen): this test checks the plumbing, not quality.
//! MIXQ_TEST_MODEL overrides the model.

use mixq_quantizer::convert::{convert, ConvertArgs, DEFAULT_DAMP};
use mixq_quantizer::report::QualityReport;
use std::path::{Path, PathBuf};

mod common;
use common::{model_dir, workspace};

/// The test model with `layers` layers: its config rewritten, its weights and tokenizer linked.
fn truncated_model(dir: &Path, layers: usize) -> PathBuf {
    let src = model_dir().canonicalize().unwrap();
    let out = dir.join("model");
    std::fs::create_dir_all(&out).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    cfg["num_hidden_layers"] = layers.into();
    let kinds: Vec<&str> = (0..layers)
        .map(|l| {
            if l + 1 == layers {
                "full_attention"
            } else {
                "sliding_attention"
            }
        })
        .collect();
    cfg["layer_types"] = kinds.into();
    std::fs::write(out.join("config.json"), cfg.to_string()).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::os::unix::fs::symlink(src.join(f), out.join(f)).unwrap();
    }
    out
}

fn args(model: &Path, out: &Path, recipe: &str) -> ConvertArgs {
    ConvertArgs {
        checkpoint: model.to_path_buf(),
        output: out.to_path_buf(),
        recipe: recipe.into(),
        profile: "phoenix".into(),
        calib: Some(workspace().join("models/data/calib.txt")),
        calib_tokens: 128,
        calib_seq_len: 128,
        calib_from_start: false,
        eval: Some(workspace().join("models/data/eval.txt")),
        eval_tokens: 32,
        no_eval: false,
        no_npu_eval: false,
        methods: vec![],
        damp: DEFAULT_DAMP,
        refit: false,
        hessian_weights: mixq_quantizer::convert::HessianWeights::PostNorm,
        distill_steps: 0,
        distill_seq_len: 256,
        distill_lr: mixq_quantizer::distill::DEFAULT_LR,
        threads: None,
        quiet: true,
    }
}

/// The report as stored inside the file.
fn stored_report(path: &Path) -> QualityReport {
    let f = mixq_format::mixq::MixqFile::open(path).unwrap();
    QualityReport::from_file(&f).unwrap().expect("a report")
}

#[test]
fn convert_reports_the_emulated_npu_figures() {
    let dir = tempfile::tempdir().unwrap();
    let model = truncated_model(dir.path(), 2);

    // optimal, phoenix: int4 attention in npu.bank0 -> both figure sets.
    let out = dir.path().join("optimal.mixq");
    let t0 = std::time::Instant::now();
    let rep = convert(&args(&model, &out, "optimal")).unwrap();
    println!("optimal: converted in {:.1} s", t0.elapsed().as_secs_f64());
    let cpu = rep.end_to_end.as_ref().expect("CPU figures");
    let npu = rep.end_to_end_npu.as_ref().expect("emulated NPU figures");
    println!("cpu: {cpu:?}\nnpu: {npu:?}");
    for e in [cpu, npu] {
        assert_eq!(e.tokens, 32);
        assert!(e.kl_mean.is_finite() && e.kl_mean >= 0.0);
        assert!(e.retention_ppl_pct > 0.0 && e.retention_ppl_pct.is_finite());
        assert!((0.0..=1.0).contains(&e.top1_agreement));
    }
    // Same reference run for both: the reference perplexity is the same number.
    assert_eq!(cpu.ppl_ref, npu.ppl_ref);
    // The NPU path differs from the CPU path only by bf16 rounding in attention: its figures
    // are near the CPU path's, and not bit-identical (that would mean it never ran).
    assert_ne!(cpu.ppl_quant, npu.ppl_quant);
    assert!(
        (npu.ppl_quant / cpu.ppl_quant - 1.0).abs() < 0.05,
        "PPL_quant cpu {} vs emulated NPU {}",
        cpu.ppl_quant,
        npu.ppl_quant
    );
    assert!(rep
        .notes
        .iter()
        .any(|n| n.contains("emulated NPU") && n.contains("not measured on NPU hardware")));
    let summary = mixq_quantizer::report::render_summary(&rep);
    println!("{summary}");
    assert!(summary.contains("emulated NPU"));
    // The stored report (inside the file and beside it) carries them too.
    let stored = stored_report(&out);
    assert_eq!(
        stored.end_to_end_npu.as_ref().map(|e| e.ppl_quant),
        Some(npu.ppl_quant)
    );
    let md = std::fs::read_to_string(out.with_extension("report.md")).unwrap();
    assert!(md.contains("Emulated NPU"));
}
