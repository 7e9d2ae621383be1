//! Decode matvec speed of the two grouped int4 formats on the Vulkan device (ignored: a
//! measurement, not a check; run on a real GPU with
//! `cargo test --release -p mixq-e2e --test vulkan_int4_speed -- --ignored --nocapture`).
//!
//! I4_GROUPED32 stores 5.0 bits per weight against I4_GROUPED's 4.5 (11 % more bytes), so on
//! a bandwidth-bound decode its matvec should take about 11 % longer; more than that would be
//! the kernel's own cost. GPU time per dispatch from the backend's timestamps (200 calls
//! after 20 of warm-up); GB/s counts the stored weight bytes.
//!
//! Measured on an NVIDIA H100 (driver 580.159, the test binary built on the dev machine and
//! run there), us per matvec, I4_GROUPED -> I4_GROUPED32:
//!
//! | rows x cols | int8 activations (default) | f32 activations |
//! |---|---|---|
//! | 5376 x 21504 (27B down) | 31.6 -> 33.1 (+5.0 %; 2060 -> 2181 GB/s) | 61.1 -> 61.8 (+1.1 %) |
//! | 4096 x 5376 (27B q) | 8.3 -> 8.0 (-3.3 %) | 15.1 -> 15.6 (+3.5 %) |
//! | 2048 x 5376 (27B k/v) | 6.8 -> 6.8 (+0.3 %) | 10.9 -> 10.7 (-2.1 %) |
//! | 640 x 2048 (270M down) | 5.0 -> 4.5 (-9 %, launch-bound) | 6.0 -> 5.9 (-3.1 %) |
//!
//! So the 11 % more bytes cost at most about half that in time on the one shape large enough
//! to approach bandwidth; the smaller ones are bound by launch and latency, not bytes.

use mixq_format::quant::{quantize_row, QType};
use mixq_format::SharedBytes;
use mixq_runtime::backend::vulkan::VulkanBackend;
use mixq_runtime::backend::Backend;
use mixq_runtime::weights::WeightSource;

/// One fitted row of random values, repeated: quantize_row on every row would take minutes
/// on these shapes, and the matvec's speed does not depend on the values.
fn weight(q: QType, rows: usize, cols: usize) -> WeightSource {
    let rb = q.row_bytes(cols).unwrap();
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let vals: Vec<f32> = (0..cols)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let mut row = vec![0u8; rb];
    quantize_row(q, &vals, None, &mut row).unwrap();
    let mut bytes = Vec::with_capacity(rows * rb);
    for _ in 0..rows {
        bytes.extend_from_slice(&row);
    }
    let mut w = WeightSource::from_f32(&format!("w_{}", q.name()), rows, cols, &[]);
    w.qtype = q;
    w.bytes = SharedBytes::from_vec(bytes);
    w
}

#[test]
#[ignore]
fn int4_grouped_vs_grouped32_decode_matvec() {
    let v = VulkanBackend::new(None).expect("a Vulkan device");
    eprintln!("{}", v.describe());
    // Gemma 3 27B's down, q and k/v projections; 270M's down
    let shapes = [(5376, 21504), (4096, 5376), (2048, 5376), (640, 2048)];
    for int8 in [true, false] {
        v.set_int8_activations(int8);
        for (rows, cols) in shapes {
            let mut line = format!("{rows:>5}x{cols:<6} {}", if int8 { "q8 " } else { "f32" });
            let mut base = 0.0;
            for q in [QType::I4Grouped, QType::I4Grouped32] {
                let w = v.load_weight(&weight(q, rows, cols)).unwrap();
                let x: Vec<f32> = (0..cols)
                    .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
                    .collect();
                let mut xb = v.alloc(cols);
                v.upload(&x, &mut xb);
                let mut out = v.alloc(rows);
                for _ in 0..20 {
                    v.matmul(&w, &xb, 1, &mut out); // warm-up
                }
                let _ = v.download(&out, rows);
                v.reset_op_times();
                v.set_profiling(true);
                let reps = 200;
                for _ in 0..reps {
                    v.matmul(&w, &xb, 1, &mut out);
                }
                let _ = v.download(&out, rows);
                v.set_profiling(false);
                let stats = v.op_stats();
                let (name, secs, n) = stats
                    .iter()
                    .find(|(k, _, _)| k.starts_with("matvec"))
                    .cloned()
                    .expect("profiling timestamps");
                let us = secs / n as f64 * 1e6;
                let bytes = q.tensor_bytes(rows, cols).unwrap() as f64;
                line += &format!(
                    "  {:<13} {name:<28} {us:7.2} us {:6.0} GB/s",
                    q.name(),
                    bytes / (us * 1e-6) / 1e9
                );
                if q == QType::I4Grouped {
                    base = us;
                } else {
                    line += &format!("  ({:+.1} % time)", (us / base - 1.0) * 100.0);
                }
            }
            eprintln!("{line}");
        }
    }
}
