use super::projection::{prefill, ModelBytes, Projection};
use super::*;
use crate::backend::cpu::CpuBackend;

fn tiny_config(window: usize) -> Gemma3Config {
    let json = format!(
        r#"{{"model_type":"gemma3_text","vocab_size":64,"hidden_size":64,
        "intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":2,
        "num_key_value_heads":1,"head_dim":64,"sliding_window":{window},
        "sliding_window_pattern":2,"query_pre_attn_scalar":64}}"#
    );
    Gemma3Config::from_json_str(&json, std::path::Path::new("<tiny>")).unwrap()
}

/// Prefill in one batch and token-by-token decode give the same NPU attention output (the
/// bf16 ring holds the same values the batch read from k/v), including a batch longer than
/// the sliding window.
#[test]
fn sliding_ring_prefill_equals_decode() {
    let cfg = tiny_config(3);
    let h = HybridBackend::new(CpuBackend::new(Some(2)).unwrap(), "cpu", &cfg).unwrap();
    let (n, heads, kvh, d) = (7, 2, 1, 64);
    let f = |i: usize, s: f32| ((i as f32) * s).sin();
    let q: Vec<f32> = (0..n * heads * d).map(|i| f(i, 0.37)).collect();
    let k: Vec<f32> = (0..n * kvh * d).map(|i| f(i, 0.11)).collect();
    let v: Vec<f32> = (0..n * kvh * d).map(|i| f(i, 0.23)).collect();
    let p = |n, pos0| AttnParams {
        n,
        pos0,
        heads,
        kv_heads: kvh,
        head_dim: d,
        window: Some(3),
        scale: 0.125,
        softcap: None,
    };
    let buf = |data: &[f32]| {
        let mut b = h.alloc(data.len());
        h.upload(data, &mut b);
        b
    };
    let mut kv = h.new_kv(kvh * d, Some(3));
    let mut out = h.alloc(n * heads * d);
    h.attention(&mut kv, &buf(&q), &buf(&k), &buf(&v), &mut out, p(n, 0));
    let batched = h.download(&out, n * heads * d);
    let mut kv = h.new_kv(kvh * d, Some(3));
    for t in 0..n {
        let mut o = h.alloc(heads * d);
        let (qd, kd) = (heads * d, kvh * d);
        h.attention(
            &mut kv,
            &buf(&q[t * qd..(t + 1) * qd]),
            &buf(&k[t * kd..(t + 1) * kd]),
            &buf(&v[t * kd..(t + 1) * kd]),
            &mut o,
            p(1, t),
        );
        assert_eq!(
            h.download(&o, qd),
            &batched[t * qd..(t + 1) * qd],
            "token {t}"
        );
    }
}

/// The closing note's figures: Gemma 3 27B on Phoenix, optimal recipe
/// (`cargo test -p mixq-runtime phoenix_27b -- --nocapture` prints them).
#[test]
fn phoenix_27b_projection() {
    let cfg = mixq_npu::shapes::gemma3("27b").unwrap();
    let bytes = ModelBytes::optimal_recipe(&cfg).unwrap();
    for ctx in [1, 4096] {
        let p = Projection::decode(&cfg, &bytes, ctx).unwrap();
        eprintln!("{p}");
        assert!(p.bandwidth_roofline_s <= p.gpu_only_s);
        assert!(p.bandwidth_roofline_s <= p.hybrid_roofline_s);
    }
    let pf = prefill(&cfg, &bytes, 512, 128).unwrap();
    eprintln!(
        "prefill {} tokens in chunks of {}: serial {:.1} ms, pipelined {:.1} ms (NPU busy {:.1}, GPU busy {:.1})",
        pf.tokens,
        pf.chunk,
        pf.serial_s * 1e3,
        pf.pipelined_s * 1e3,
        pf.npu_busy_s * 1e3,
        pf.gpu_busy_s * 1e3
    );
    assert!(pf.pipelined_s <= pf.serial_s + 1e-12);
    assert!(pf.pipelined_s >= pf.npu_busy_s.max(pf.gpu_busy_s) - 1e-12);
}
