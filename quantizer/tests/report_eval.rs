//! evaluate() of the real Gemma 3 270M against itself: the pipeline must report exactly 100 %
//! retention (PPL ratio), zero KL and full top-1 agreement. MIXQ_TEST_MODEL overrides the model.

use mixq_format::tokenizer::Tokenizer;
use mixq_quantizer::eval::{evaluate, windows, EVAL_WINDOW};
use mixq_runtime::weights::open_store;

mod common;
use common::{model_dir, workspace};

fn eval_text() -> String {
    let p = workspace().join("models/data/eval.txt");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn model_against_itself_retains_everything() {
    let store = open_store(&model_dir()).unwrap();
    let tok = Tokenizer::from_bytes(&store.tokenizer_json().unwrap()).unwrap();
    let t0 = std::time::Instant::now();
    let e = evaluate(
        store.as_ref(),
        store.as_ref(),
        &tok,
        &eval_text(),
        "eval.txt",
        64,
        None,
    )
    .unwrap();
    println!("{e:?} in {:.1} s", t0.elapsed().as_secs_f64());
    assert_eq!(e.tokens, 64);
    assert_eq!(e.windows, 1);
    assert_eq!(e.retention_ppl_pct, 100.0);
    assert_eq!(e.ppl_ref, e.ppl_quant);
    assert!(
        e.kl_mean < 1e-9 && e.kl_p99 < 1e-9,
        "KL {} / {}",
        e.kl_mean,
        e.kl_p99
    );
    assert_eq!(e.top1_agreement, 1.0);
    // A real text under a real model: perplexity well above 1 and far below the vocabulary.
    assert!(
        e.ppl_ref > 2.0 && e.ppl_ref < 500.0,
        "PPL_ref {}",
        e.ppl_ref
    );
    let (lo, hi) = e.retention_ppl_ci95.unwrap();
    assert_eq!((lo, hi), (100.0, 100.0));
}

#[test]
fn windows_hold_bos_and_the_token_budget() {
    let store = open_store(&model_dir()).unwrap();
    let tok = Tokenizer::from_bytes(&store.tokenizer_json().unwrap()).unwrap();
    let bos = store.config().bos_token_id;
    let text = eval_text();
    let w = windows(&tok, &text, bos, 3000).unwrap();
    assert_eq!(w.len(), 3);
    assert!(w.iter().all(|w| w[0] == bos && w.len() <= EVAL_WINDOW));
    assert_eq!(w[0].len(), EVAL_WINDOW);
    assert_eq!(w.iter().map(|w| w.len() - 1).sum::<usize>(), 3000);
    assert!(windows(&tok, "", bos, 10).is_err());
    assert!(windows(&tok, &text, bos, 0).is_err());
}

/// Timing of the evaluation on this machine (not run by default):
/// `MIXQ_EVAL_TOKENS=256 cargo test -p mixq-quantizer --test report_eval -- --ignored --nocapture`.
#[test]
#[ignore]
fn eval_timing() {
    use mixq_runtime::backend::cpu::CpuBackend;
    use mixq_runtime::Gemma3;
    let n: usize = std::env::var("MIXQ_EVAL_TOKENS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let store = open_store(&model_dir()).unwrap();
    let tok = Tokenizer::from_bytes(&store.tokenizer_json().unwrap()).unwrap();
    let t0 = std::time::Instant::now();
    let a = Gemma3::load(store.as_ref(), CpuBackend::new(None).unwrap()).unwrap();
    let b = Gemma3::load(store.as_ref(), CpuBackend::new(None).unwrap()).unwrap();
    let load = t0.elapsed().as_secs_f64();
    let t1 = std::time::Instant::now();
    let e =
        mixq_quantizer::eval::evaluate_models(&a, &b, &tok, &eval_text(), "eval.txt", n).unwrap();
    let s = t1.elapsed().as_secs_f64();
    println!(
        "load both: {load:.1} s; {} tokens, both models: {s:.1} s ({:.2} tokens/s); PPL {:.3}",
        e.tokens,
        e.tokens as f64 / s,
        e.ppl_ref
    );
}

/// `report FILE --eval TEXT` end to end: a `.mixq` holding the checkpoint's own bf16 bytes
/// (no quantization) must retain exactly 100 % against the checkpoint; the calibration text is
/// refused as evaluation text; inspect and verify accept the file.
#[test]
fn report_eval_of_an_exact_copy_is_100_percent() {
    use mixq_format::checkpoint::{expected_tensors, DType, HfCheckpoint};
    use mixq_format::mixq::{FileMeta, MixqWriter, Recipe, BLOB_REPORT, BLOB_TOKENIZER};
    use mixq_format::profile::{plan, DeviceProfile, TensorSpec};
    use mixq_format::quant::QType;
    use mixq_quantizer::report::{CalibrationSummary, QualityReport};

    let model = model_dir();
    let ck = HfCheckpoint::open(&model).unwrap();
    let names = expected_tensors(ck.config());
    let specs: Vec<TensorSpec> = names
        .iter()
        .map(|(name, shape)| {
            let q = match ck.tensor(name).unwrap().dtype {
                DType::BF16 => QType::BF16,
                DType::F16 => QType::F16,
                DType::F32 => QType::F32,
            };
            TensorSpec::new(name.clone(), q, shape)
        })
        .collect();
    let p = plan(&specs, &DeviceProfile::cpu()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("copy.mixq");
    let meta = FileMeta {
        config: ck.config().clone(),
        config_json: ck.config_json().to_string(),
        recipe: Recipe {
            name: "copy".into(),
            options: serde_json::Value::Null,
        },
    };
    let mut w = MixqWriter::create(&path, p, meta).unwrap();
    for (name, _) in &names {
        w.write_tensor(name, ck.tensor(name).unwrap().data).unwrap();
    }
    w.add_blob(
        BLOB_TOKENIZER,
        &std::fs::read(ck.tokenizer_json_path()).unwrap(),
    )
    .unwrap();
    let calib = workspace().join("models/data/calib.txt");
    let report = QualityReport {
        model: model.display().to_string(),
        recipe: "copy".into(),
        profile: "cpu".into(),
        calibration: CalibrationSummary {
            source: calib.display().to_string(),
            ..Default::default()
        },
        ..Default::default()
    };
    w.add_blob(BLOB_REPORT, &serde_json::to_vec(&report).unwrap())
        .unwrap();
    let path = w.finish().unwrap();

    let bin = env!("CARGO_BIN_EXE_mixq-quantize");
    let eval = workspace().join("models/data/eval.txt");
    let out = std::process::Command::new(bin)
        .arg("report")
        .arg(&path)
        .arg("--eval")
        .arg(&eval)
        .args(["--eval-tokens", "32", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("{v:#}");
    let e = &v["end_to_end"];
    assert_eq!(e["tokens"], 32);
    assert_eq!(e["retention_ppl_pct"], 100.0);
    assert_eq!(e["kl_mean"], 0.0);
    assert_eq!(e["top1_agreement"], 1.0);

    let out = std::process::Command::new(bin)
        .arg("report")
        .arg(&path)
        .arg("--eval")
        .arg(&calib)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("calibration text"));

    for cmd in ["inspect", "verify"] {
        let out = std::process::Command::new(bin)
            .arg(cmd)
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
