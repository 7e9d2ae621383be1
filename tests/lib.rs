//! Shared helpers of the end-to-end tests: where the test model and the golden fixtures are,
//! and [`compare`]: two models position by position (KL, top-1, greedy).

pub mod compare;

use mixq_runtime::backend::hybrid::store::RtnStore;
use mixq_runtime::weights::{open_store, MixqStore, WeightStore};
use std::path::PathBuf;

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `$MIXQ_TEST_MODEL`, else `<workspace>/models/gemma-3-270m`. A missing model fails loudly:
/// a silently skipped test would let the real-model checks rot unnoticed.
pub fn model_dir() -> PathBuf {
    let dir = std::env::var_os("MIXQ_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("models/gemma-3-270m"));
    assert!(
        dir.join("config.json").is_file(),
        "test model not found at {}: run `make test-model` (or set MIXQ_TEST_MODEL to a Gemma 3 270M directory)",
        dir.display()
    );
    dir
}

/// The quantized model the comparison tests (npu_hybrid, cpu_fast_vs_exact) run:
/// `$MIXQ_TEST_MIXQ`, a converted `--profile phoenix` file (e.g. `make demo`'s), if set; else
/// the test model quantized by round to nearest like one ([`RtnStore::phoenix_int4`]), which
/// costs seconds instead of a conversion's minutes.
pub fn quantized_store() -> Box<dyn WeightStore> {
    match std::env::var_os("MIXQ_TEST_MIXQ") {
        Some(p) => Box::new(
            MixqStore::open(std::path::Path::new(&p))
                .unwrap_or_else(|e| panic!("MIXQ_TEST_MIXQ={}: {e:#}", p.to_string_lossy())),
        ),
        None => Box::new(RtnStore::phoenix_int4(open_store(&model_dir()).unwrap())),
    }
}

/// One transformers reference fixture (tests/golden/<name>.json, written by scripts/make_golden.py).
#[derive(serde::Deserialize)]
pub struct Golden {
    pub name: String,
    pub prompt: String,
    pub add_special_tokens: bool,
    pub prompt_ids: Vec<u32>,
    /// `[position][20]`
    pub top_ids: Vec<Vec<u32>>,
    pub top_logits: Vec<Vec<f32>>,
    pub prompt_mean_nll: f64,
    pub greedy_ids: Vec<u32>,
    pub greedy_text: String,
    /// top1 - top2 logit at each greedy step.
    pub greedy_margins: Vec<f32>,
}

/// Every prompt fixture, in name order.
pub fn goldens() -> Vec<Golden> {
    let dir = workspace().join("tests/golden");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && !p
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("trace")
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "expected at least 4 golden fixtures in {}",
        dir.display()
    );
    files
        .iter()
        .map(|p| {
            serde_json::from_slice(&std::fs::read(p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        })
        .collect()
}
