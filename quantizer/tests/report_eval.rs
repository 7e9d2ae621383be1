//! evaluate() of the real Gemma 3 270M against itself: the pipeline must report exactly 100 %
//! retention (PPL ratio), zero KL and full top-1 agreement. MIXQ_TEST_MODEL overrides the model.

use mixq_format::tokenizer::Tokenizer;
use mixq_quantizer::eval::{evaluate, windows, EVAL_WINDOW};
use mixq_runtime::weights::open_store;
use std::path::PathBuf;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn model_dir() -> PathBuf {
    let dir = std::env::var_os("MIXQ_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("models/gemma-3-270m"));
    assert!(
        dir.join("config.json").is_file(),
        "test model not found at {}: run `make test-model` (or set MIXQ_TEST_MODEL)",
        dir.display()
    );
    dir
}

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
