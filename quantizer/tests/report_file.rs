//! inspect, verify and report on a tiny .mixq written with the format's writer: sections with
//! budget and fill, every tensor, totals by class; verify passes on the file and names the
//! section of a flipped byte; the binary exits non-zero with a clear message.

use mixq_format::mixq::{FileMeta, MixqFile, MixqWriter, Recipe, BLOB_REPORT, MINOR_VERSION};
use mixq_format::profile::{plan, DeviceProfile, TensorSpec};
use mixq_format::quant::QType;
use mixq_format::Gemma3Config;
use mixq_quantizer::inspect::{inspect, render_inspection, verify};
use mixq_quantizer::report::{EndToEnd, QualityReport, SizeSummary};
use std::path::{Path, PathBuf};
use std::process::Command;

const CONFIG_JSON: &str = r#"{"model_type": "gemma3_text", "hidden_size": 128, "intermediate_size": 256,
 "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64,
 "vocab_size": 256, "max_position_embeddings": 512, "torch_dtype": "bfloat16"}"#;

fn specs() -> Vec<TensorSpec> {
    let l = |s: &str| format!("model.layers.0.{s}.weight");
    vec![
        TensorSpec::new("model.embed_tokens.weight", QType::I8Asym, &[256, 128]),
        TensorSpec::new(l("self_attn.q_proj"), QType::I4Grouped, &[128, 128]),
        TensorSpec::new(l("self_attn.k_proj"), QType::I4Grouped, &[64, 128]),
        TensorSpec::new(l("self_attn.v_proj"), QType::I4Grouped, &[64, 128]),
        TensorSpec::new(l("self_attn.o_proj"), QType::I4PerChannel, &[128, 128]),
        TensorSpec::new(l("self_attn.q_norm"), QType::I8Sym, &[64]),
        TensorSpec::new(l("self_attn.k_norm"), QType::I8Sym, &[64]),
        TensorSpec::new(l("mlp.gate_proj"), QType::I2Structured, &[256, 128]),
        TensorSpec::new(l("mlp.up_proj"), QType::I2Structured, &[256, 128]),
        TensorSpec::new(l("mlp.down_proj"), QType::I4Grouped, &[128, 256]),
        TensorSpec::new(l("input_layernorm"), QType::I8Sym, &[128]),
        TensorSpec::new("model.norm.weight", QType::F32, &[128]),
    ]
}

fn report_json() -> Vec<u8> {
    let r = QualityReport {
        model: "tiny".into(),
        recipe: "optimal".into(),
        profile: "phoenix".into(),
        end_to_end: Some(EndToEnd {
            eval_source: "eval.txt".into(),
            tokens: 100,
            ppl_ref: 10.0,
            ppl_quant: 10.5,
            retention_ppl_pct: 95.238,
            kl_mean: 0.01,
            kl_p99: 0.1,
            top1_agreement: 0.95,
            ..Default::default()
        }),
        size: SizeSummary::default(),
        ..Default::default()
    };
    serde_json::to_vec(&r).unwrap()
}

/// Writes the tiny file (phoenix profile) with deterministic bytes; returns its path.
fn write_tiny(dir: &Path, with_report: bool) -> PathBuf {
    let path = dir.join("tiny.mixq");
    let p = plan(&specs(), &DeviceProfile::phoenix()).unwrap();
    let meta = FileMeta {
        config: Gemma3Config::from_json_str(CONFIG_JSON, Path::new("test")).unwrap(),
        config_json: CONFIG_JSON.into(),
        recipe: Recipe {
            name: "optimal".into(),
            options: serde_json::Value::Null,
        },
    };
    let mut w = MixqWriter::create(&path, p.clone(), meta).unwrap();
    for (i, (spec, pl)) in p.tensors.iter().enumerate() {
        let bytes: Vec<u8> = (0..pl.length)
            .map(|k| (k as u8).wrapping_mul(31) ^ i as u8)
            .collect();
        w.write_tensor(&spec.name, &bytes).unwrap();
    }
    w.add_blob("meta.tokenizer", b"{}").unwrap();
    if with_report {
        w.add_blob(BLOB_REPORT, &report_json()).unwrap();
    }
    w.finish().unwrap()
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mixq-quantize"))
}

#[test]
fn inspect_shows_sections_tensors_and_totals() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_tiny(dir.path(), true);
    let f = MixqFile::open(&path).unwrap();
    let i = inspect(&f).unwrap();
    assert_eq!(i.tensors.len(), 12);
    let bank0 = i.sections.iter().find(|s| s.name == "npu.bank0").unwrap();
    assert_eq!(bank0.tensors, 6);
    assert_eq!(bank0.budget, Some(512 << 20));
    assert!(bank0.fill_pct.unwrap() > 0.0 && bank0.fill_pct.unwrap() < 1.0);
    assert!(i
        .sections
        .iter()
        .any(|s| s.name == "npu.bank1" && s.offset.is_none()));
    assert!(i.sections.iter().any(|s| s.name == BLOB_REPORT));
    assert!(i.spills.is_empty());
    let total: u64 = i.tensors.iter().map(|t| t.bytes).sum();
    assert_eq!(i.tensor_bytes, total);
    let qkv = i.classes.iter().find(|c| c.class == "attn_qkv").unwrap();
    assert_eq!(qkv.params, 256 * 128);
    assert_eq!(qkv.bits_per_weight, 4.5);
    let text = render_inspection(&i);
    println!("{text}");
    // the version this build writes (1.2 since I4_GROUPED16)
    let version = format!("mixq format 1.{MINOR_VERSION}");
    for needle in [
        version.as_str(),
        "npu.bank0",
        "(empty)",
        "I2_STRUCTURED",
        "model.layers.0.mlp.down_proj.weight",
        "totals by class:",
        "PPL_ref / PPL_quant",
        "no spills",
    ] {
        assert!(text.contains(needle), "inspect output lacks `{needle}`");
    }

    // The binary: text and JSON.
    let out = bin().arg("inspect").arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = bin()
        .args(["inspect", "--json"])
        .arg(&path)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tensors"].as_array().unwrap().len(), 12);
    assert_eq!(v["profile"], "phoenix");
}

#[test]
fn verify_passes_then_names_the_corrupt_section() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_tiny(dir.path(), true);
    let f = MixqFile::open(&path).unwrap();
    let v = verify(&f, false);
    assert!(v.ok());
    assert_eq!(v.sections.len(), f.index().sections.len());
    let out = bin().arg("verify").arg(&path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("OK:"));
    assert!(stdout.contains("npu.bank0"));

    // Flip one byte inside the vulkan.heap0 section.
    let heap = f
        .index()
        .sections
        .iter()
        .find(|s| s.name == "vulkan.heap0")
        .unwrap()
        .clone();
    drop(f);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[(heap.offset + heap.length / 2) as usize] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let f = MixqFile::open(&path).unwrap(); // opening does not read section content
    let v = verify(&f, false);
    assert!(!v.ok());
    let bad: Vec<&str> = v
        .sections
        .iter()
        .filter(|c| c.expected != c.actual)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(bad, ["vulkan.heap0"]);
    assert!(f.verify().is_err(), "the format's verify agrees");
    let out = bin().arg("verify").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{}{stderr}", String::from_utf8_lossy(&out.stdout));
    assert!(!out.status.success());
    assert!(
        stderr.contains("verify FAILED") && stderr.contains("vulkan.heap0"),
        "{stderr}"
    );

    // A non-zero padding byte.
    bytes[(heap.offset + heap.length / 2) as usize] ^= 0x40;
    bytes[(heap.offset + heap.length) as usize + 1] = 7;
    std::fs::write(&path, &bytes).unwrap();
    let f = MixqFile::open(&path).unwrap();
    let v = verify(&f, false);
    assert_eq!(v.bad_padding, [heap.offset + heap.length + 1]);
    assert!(!bin()
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap()
        .status
        .success());

    // A flipped index byte fails at open.
    bytes[(heap.offset + heap.length) as usize + 1] = 0;
    let last = bytes.len() - 10;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let out = bin().arg("verify").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("verify FAILED"), "{stderr}");
}

#[test]
fn report_command_shows_the_stored_report() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_tiny(dir.path(), true);
    let out = bin().arg("report").arg(&path).output().unwrap();
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(md.contains("retention (PPL ratio = PPL_ref / PPL_quant)"));
    assert!(md.contains("95.24 %"));
    assert!(
        md.contains("Placement: section `npu.bank0`"),
        "placement from the index"
    );
    let out = bin()
        .args(["report", "--json"])
        .arg(&path)
        .output()
        .unwrap();
    let r: QualityReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r.size.file_bytes, std::fs::metadata(&path).unwrap().len());

    // --eval without a reference checkpoint: a clear error.
    let eval = dir.path().join("eval.txt");
    std::fs::write(&eval, "Some text.").unwrap();
    let out = bin()
        .arg("report")
        .arg(&path)
        .arg("--eval")
        .arg(&eval)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--reference"), "{stderr}");

    // A file without a report.
    let dir2 = tempfile::tempdir().unwrap();
    let bare = write_tiny(dir2.path(), false);
    let out = bin().arg("report").arg(&bare).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("holds no quality report"), "{stderr}");
}
