//! Benchmarks (ignored; run with `cargo test --release -p mixq-runtime bench_ -- --ignored
//! --nocapture --test-threads 1`).
