//! The report's renderers on a synthetic report: metric names wherever a retention figure
//! appears, emulation labels, a valid SVG with one bar group per layer, JSON round trip, the
//! files beside the .mixq, and placement notes that show the 27B spills.

use mixq_format::profile::{plan, DeviceProfile, TensorSpec};
use mixq_format::quant::QType;
use mixq_quantizer::report::*;

fn e2e(ret: f64) -> EndToEnd {
    EndToEnd {
        eval_source: "models/data/eval.txt".into(),
        tokens: 1024,
        ppl_ref: 20.0,
        ppl_quant: 20.0 / (ret / 100.0),
        retention_ppl_pct: ret,
        kl_mean: 0.05,
        kl_p99: 0.6,
        top1_agreement: 0.9,
        retention_ppl_ci95: Some((ret - 0.5, ret + 0.5)),
        window: 1024,
        windows: 2,
    }
}

fn synthetic() -> QualityReport {
    let mut tensors = vec![TensorQuality {
        name: "model.embed_tokens.weight".into(),
        class: "embedding".into(),
        layer: None,
        qtype: "I8_ASYM".into(),
        method: "search".into(),
        rel_rmse: 0.004,
        snr_db: 48.0,
        out_rel_err: None,
        params: 262144 * 640,
        bytes: 178_257_920,
        section: "host".into(),
    }];
    for l in 0..3 {
        for (n, class, q, rel) in [
            ("self_attn.q_proj", "attn_qkv", "I4_GROUPED", 0.08),
            ("self_attn.k_proj", "attn_qkv", "I4_GROUPED", 0.09),
            ("self_attn.v_proj", "attn_qkv", "I4_GROUPED", 0.07),
            ("self_attn.o_proj", "attn_o", "I4_PER_CHANNEL", 0.1),
            ("mlp.gate_proj", "ffn_gate_up", "I2_STRUCTURED", 0.3),
            ("mlp.up_proj", "ffn_gate_up", "I2_STRUCTURED", 0.32),
            ("mlp.down_proj", "ffn_down", "I4_GROUPED", 0.085),
            ("input_layernorm", "norm", "F32", 0.0),
        ] {
            tensors.push(TensorQuality {
                name: format!("model.layers.{l}.{n}.weight"),
                class: class.into(),
                layer: Some(l),
                qtype: q.into(),
                method: if rel > 0.0 { "gptq" } else { "none" }.into(),
                rel_rmse: rel * (1.0 + l as f64 * 0.1),
                snr_db: if rel > 0.0 {
                    -20.0 * rel.log10()
                } else {
                    f64::INFINITY
                },
                out_rel_err: Some(rel * rel),
                params: 640 * 1024,
                bytes: 640 * 1024 / 2,
                section: "npu.bank0".into(),
            });
        }
    }
    let size = SizeSummary::from_quality(&tensors, 300_000_000);
    QualityReport {
        model: "gemma-3-270m & <friends>".into(),
        recipe: "optimal".into(),
        profile: "phoenix".into(),
        calibration: CalibrationSummary {
            source: "models/data/calib.txt".into(),
            tokens: 4096,
            sequences: 8,
            seq_len: 512,
            methods: vec![("I4_GROUPED".into(), "gptq".into())],
        },
        tensors,
        end_to_end: Some(e2e(96.5)),
        end_to_end_npu: Some(e2e(96.1)),
        size,
        notes: vec!["Placement: section `npu.bank0` (NPU) holds 1.0 MiB.".into()],
    }
}

/// Every line that shows a retention percentage names the metric.
fn assert_metric_named(text: &str) {
    for line in text.lines() {
        let l = line.to_lowercase();
        if l.contains("retention") && line.contains('%') && !l.contains("quality-retention report")
        {
            assert!(
                line.contains("PPL_ref / PPL_quant"),
                "retention figure without its metric: {line}"
            );
        }
    }
}

#[test]
fn markdown_names_metrics_and_labels_emulation() {
    let r = synthetic();
    let md = render_markdown(&r);
    println!("{md}");
    for needle in [
        "PPL_ref / PPL_quant",
        "perplexity of the reference, PPL_ref",
        "perplexity of the quantized model, PPL_quant",
        "KL(P_ref ‖ P_quant), mean per token",
        "KL(P_ref ‖ P_quant), p99",
        "top-1 agreement",
        "96.50 %",
        "EMULATED",
        "bits per weight",
        "| attn_qkv |",
        "| ffn_gate_up |",
        "## Per-layer error",
        "`model.layers.2.mlp.down_proj.weight`",
        "∞ (exact)",
        "Placement: section `npu.bank0`",
        "not the calibration text",
    ] {
        assert!(md.contains(needle), "markdown lacks `{needle}`");
    }
    assert_metric_named(&md);
    // One per-layer row per layer.
    for l in 0..3 {
        assert!(md.lines().any(|x| x.starts_with(&format!("| {l} | "))));
    }
    let summary = render_summary(&r);
    println!("{summary}");
    assert_metric_named(&summary);
    assert!(summary.contains("bits/weight"));
    assert!(summary.contains("EMULATED"));
    assert_eq!(
        summary
            .lines()
            .filter(|l| l.contains("PPL_ref / PPL_quant"))
            .count(),
        2
    );
}

#[test]
fn markdown_without_end_to_end_says_not_measured() {
    let mut r = synthetic();
    r.end_to_end = None;
    r.end_to_end_npu = None;
    assert!(render_markdown(&r).contains("Not measured"));
    assert!(render_summary(&r).contains("not measured"));
}

#[test]
fn svg_has_one_group_per_layer() {
    let r = synthetic();
    let svg = render_svg(&r);
    assert!(svg.starts_with(r#"<svg xmlns="http://www.w3.org/2000/svg""#));
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<svg").count(), 1);
    assert_eq!(svg.matches(r#"<g class="layer""#).count(), 3);
    for l in 0..3 {
        assert!(svg.contains(&format!(r#"data-layer="{l}""#)));
    }
    assert_eq!(svg.matches("<g ").count(), svg.matches("</g>").count());
    // 4 classes (norms omitted) x 3 layers bars, each with a tooltip
    assert_eq!(svg.matches("<title>layer ").count(), 12);
    assert!(svg.contains("relative RMSE of the weights (%)"));
    assert!(svg.contains("&amp; &lt;friends&gt;"), "text is XML-escaped");
    for class in ["attn_qkv", "attn_o", "ffn_gate_up", "ffn_down"] {
        assert!(
            svg.contains(&format!(">{class}</text>")),
            "legend lacks {class}"
        );
    }
}

#[test]
fn json_round_trip_keeps_infinite_snr() {
    let r = synthetic();
    let json = serde_json::to_string(&r).unwrap();
    let back = QualityReport::from_json(json.as_bytes()).unwrap();
    let norm = back.tensors.iter().find(|t| t.class == "norm").unwrap();
    assert!(norm.snr_db.is_infinite());
    assert_eq!(
        back.end_to_end.unwrap().retention_ppl_ci95,
        Some((96.0, 97.0))
    );
    // An older report without the optional end-to-end fields still reads.
    let old = r#"{"eval_source":"e","tokens":3,"ppl_ref":1.0,"ppl_quant":1.0,"retention_ppl_pct":100.0,"kl_mean":0.0,"kl_p99":0.0,"top1_agreement":1.0}"#;
    let e: EndToEnd = serde_json::from_str(old).unwrap();
    assert_eq!((e.window, e.retention_ppl_ci95), (0, None));
}

#[test]
fn write_files_beside_the_mixq() {
    let dir = tempfile::tempdir().unwrap();
    let mixq = dir.path().join("g270.mixq");
    let paths = write_files(&synthetic(), &mixq).unwrap();
    let names: Vec<String> = paths
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["g270.report.json", "g270.report.md", "g270.report.svg"]
    );
    for p in &paths {
        assert!(std::fs::metadata(p).unwrap().len() > 100);
    }
    let md = std::fs::read_to_string(&paths[1]).unwrap();
    assert!(md.contains("](g270.report.svg)"));
    let leftovers = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "tmp")
        })
        .count();
    assert_eq!(leftovers, 0);
}

#[test]
fn size_by_class() {
    let z = SizeSummary::from_tensors(
        [
            ("model.embed_tokens.weight", &[100u64, 64][..], 6800),
            (
                "model.layers.0.self_attn.q_proj.weight",
                &[64, 64][..],
                2304,
            ),
            ("model.layers.0.self_attn.k_norm.weight", &[64][..], 68),
        ],
        65536 * 3,
    );
    let classes: Vec<&str> = z.classes.iter().map(|c| c.class.as_str()).collect();
    assert_eq!(classes, ["embedding", "attn_qkv", "norm"]);
    assert_eq!(z.classes[1].bits_per_weight, 4.5);
    assert_eq!(z.params, 6400 + 4096 + 64);
    assert_eq!(
        tensor_class("model.layers.3.mlp.up_proj.weight"),
        "ffn_gate_up"
    );
    assert_eq!(
        tensor_class("model.layers.3.post_feedforward_layernorm.weight"),
        "norm"
    );
    assert_eq!(tensor_class("model.norm.weight"), "norm");
    assert_eq!(layer_of("model.layers.17.mlp.down_proj.weight"), Some(17));
}

/// Gemma 3 tensors under the seed's `optimal` recipe (as formats' profile tests build them).
fn gemma_optimal(
    layers: usize,
    hidden: usize,
    inter: usize,
    heads: usize,
    kv: usize,
    hd: usize,
) -> Vec<TensorSpec> {
    let mut t = vec![TensorSpec::new(
        "model.embed_tokens.weight",
        QType::I8Asym,
        &[262144, hidden],
    )];
    for l in 0..layers {
        let p = |s: &str| format!("model.layers.{l}.{s}.weight");
        t.push(TensorSpec::new(
            p("self_attn.q_proj"),
            QType::I4Grouped,
            &[heads * hd, hidden],
        ));
        t.push(TensorSpec::new(
            p("self_attn.k_proj"),
            QType::I4Grouped,
            &[kv * hd, hidden],
        ));
        t.push(TensorSpec::new(
            p("self_attn.v_proj"),
            QType::I4Grouped,
            &[kv * hd, hidden],
        ));
        t.push(TensorSpec::new(
            p("self_attn.o_proj"),
            QType::I4PerChannel,
            &[hidden, heads * hd],
        ));
        t.push(TensorSpec::new(p("self_attn.q_norm"), QType::I8Sym, &[hd]));
        t.push(TensorSpec::new(p("self_attn.k_norm"), QType::I8Sym, &[hd]));
        t.push(TensorSpec::new(
            p("mlp.gate_proj"),
            QType::I2Structured,
            &[inter, hidden],
        ));
        t.push(TensorSpec::new(
            p("mlp.up_proj"),
            QType::I2Structured,
            &[inter, hidden],
        ));
        t.push(TensorSpec::new(
            p("mlp.down_proj"),
            QType::I4Grouped,
            &[hidden, inter],
        ));
        for n in [
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        ] {
            t.push(TensorSpec::new(p(n), QType::I8Sym, &[hidden]));
        }
    }
    t.push(TensorSpec::new(
        "model.norm.weight",
        QType::I8Sym,
        &[hidden],
    ));
    t
}

/// The seed's claim "attention on the NPU" does not hold for 27B: the notes say which layers
/// spill and where; the 270M fits and the notes say so.
#[test]
fn placement_notes_show_the_27b_spill() {
    let p = plan(
        &gemma_optimal(62, 5376, 21504, 32, 16, 128),
        &DeviceProfile::phoenix(),
    )
    .unwrap();
    let notes = placement_notes_from_plan(&p);
    for n in &notes {
        println!("{n}");
    }
    let has = |s: &str| notes.iter().any(|n| n.contains(s));
    assert!(has("section `npu.bank0` (NPU) holds 478.3 MiB of its 512.0 MiB budget (93.4 % full): attention of layers 0–13."));
    assert!(has("attention of layers 56–58 (102.5 MiB) did not fit `npu.bank3` and was placed in `vulkan.heap0`"));
    assert!(has(
        "attention of layers 59–61 (102.5 MiB) did not fit `npu.bank3` and was placed in `host`"
    ));
    assert!(has("FFN and norms of layers 58–61"));
    assert!(!has("no spills"));

    let small = plan(
        &gemma_optimal(18, 640, 2048, 4, 1, 256),
        &DeviceProfile::phoenix(),
    )
    .unwrap();
    let notes = placement_notes_from_plan(&small);
    assert!(notes.iter().any(|n| n.contains("(no spills)")));
    assert!(notes
        .iter()
        .any(|n| n.contains("`npu.bank0` (NPU)") && n.contains("attention of layers 0–17")));
}
