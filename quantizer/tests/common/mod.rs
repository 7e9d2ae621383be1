//! Paths the quantizer's integration tests share.

use std::path::PathBuf;

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The real Gemma 3 270M (`make test-model`), or `$MIXQ_TEST_MODEL`; a missing model fails
/// loudly with what to run.
pub fn model_dir() -> PathBuf {
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
