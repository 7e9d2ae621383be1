//! The hybrid scheduler (`--device npu+cpu`, `npu+vulkan`) on the real Gemma 3 270M against
//! the CPU-only path. **The NPU is the engine model emulated on the host**: no XDNA hardware.
//!
//! Both sides run the same weights: the checkpoint with its attention projections quantized
//! to the `optimal` recipe's int4 types in `npu.bank0` ([`NpuAttentionStore`], what `convert
//! --profile phoenix` places there). The CPU path computes them in f32; the hybrid path runs
//! them with the NPU's W4ABF16 arithmetic (bf16 activations, fp32 accumulation) and attention
//! over a bf16 KV cache. So the two differ only by the bf16 arithmetic, and we report how much:
//! KL(P_cpu || P_npu) of the next-token distribution at every position of a prompt, and the
//! greedy tokens, which must agree until the first step whose CPU top-2 margin is a near-tie.
//!
//! Bounds (measured values printed with --nocapture; measured on the 2-core dev machine:
//! KL mean 9.9e-5, max 5.1e-4 over 26 positions, top-1 agreement 26/26; 12 identical greedy
//! tokens; npu+vulkan vs npu+cpu max |logit diff| 4.8e-2):
//! - mean KL over the prompt below KL_MEAN_MAX (10x the measured), every position below KL_MAX;
//! - greedy: identical, or the first difference at a step whose top1 - top2 logit margin on
//!   the CPU path is below NEAR_TIE;
//! - npu+vulkan (lavapipe) vs npu+cpu: same argmax at every prompt position and max |logit
//!   difference| below VK_TOL (they share the NPU engine's host code; G's f32 ops differ in
//!   summation order, and a bf16 rounding at an NPU input can flip on such a difference:
//!   one bf16 ulp is 2^-8 relative, so flips move logits far more than f32 reordering's
//!   ~5e-5 between the plain CPU and Vulkan backends). lavapipe is slow: prompt + 2 tokens.

use mixq_e2e::model_dir;
use mixq_format::tokenizer::Tokenizer;
use mixq_runtime::backend::cpu::{top_k, CpuBackend};
use mixq_runtime::backend::hybrid::store::NpuAttentionStore;
use mixq_runtime::backend::hybrid::HybridBackend;
use mixq_runtime::backend::vulkan::VulkanBackend;
use mixq_runtime::backend::Backend;
use mixq_runtime::weights::{open_store, WeightStore};
use mixq_runtime::{Gemma3, Logits};

const KL_MEAN_MAX: f64 = 1e-3;
const KL_MAX: f64 = 5e-3;
const NEAR_TIE: f32 = 0.5;
const VK_TOL: f32 = 0.25;

const KL_PROMPT: &str = "The quick brown fox jumps over the lazy dog. Paris is the capital of France, and Berlin is the capital of Germany.";

fn log_softmax(l: &[f32]) -> Vec<f64> {
    let m = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let s: f64 = l.iter().map(|&x| (x as f64 - m).exp()).sum();
    let ls = s.ln() + m;
    l.iter().map(|&x| x as f64 - ls).collect()
}

fn kl(p: &[f32], q: &[f32]) -> f64 {
    let (lp, lq) = (log_softmax(p), log_softmax(q));
    lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum()
}

fn all_logits<B: Backend>(m: &Gemma3<B>, ids: &[u32]) -> Vec<Vec<f32>> {
    let mut rows = Vec::new();
    let mut s = m.new_session();
    m.forward(&mut s, ids, Logits::All, |_, l| rows.push(l.to_vec()))
        .unwrap();
    rows
}

/// Greedy tokens and the top1 - top2 margin at each step.
fn greedy<B: Backend>(m: &Gemma3<B>, ids: &[u32], n: usize) -> (Vec<u32>, Vec<f32>) {
    let mut s = m.new_session();
    let mut logits = m.forward(&mut s, ids, Logits::Last, |_, _| {}).unwrap();
    let (mut out, mut margins) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t2 = top_k(&logits, 2);
        out.push(t2[0].0);
        margins.push(t2[0].1 - t2[1].1);
        logits = m
            .forward(&mut s, &[t2[0].0], Logits::Last, |_, _| {})
            .unwrap();
    }
    (out, margins)
}

#[test]
fn gemma3_270m_npu_hybrid_matches_cpu() {
    let store = NpuAttentionStore::new(open_store(&model_dir()).unwrap());
    let tok = Tokenizer::from_bytes(&store.tokenizer_json().unwrap()).unwrap();
    let cfg = store.config().clone();
    let cpu = Gemma3::load(&store, CpuBackend::new(None).unwrap()).unwrap();
    let npu = Gemma3::load(
        &store,
        HybridBackend::new(CpuBackend::new(None).unwrap(), "cpu", &cfg).unwrap(),
    )
    .unwrap();
    eprintln!("{}", npu.backend.describe());
    let tally = npu.backend.tally();
    assert!(
        tally.attn_npu_bytes > 0 && tally.attn_dev_bytes == 0,
        "every attention projection must be on the NPU engine: {tally:?}"
    );

    // KL of the next-token distributions over a short prompt.
    let ids = tok.encode(KL_PROMPT, true).unwrap();
    let (rc, rn) = (all_logits(&cpu, &ids), all_logits(&npu, &ids));
    let kls: Vec<f64> = rc.iter().zip(&rn).map(|(a, b)| kl(a, b)).collect();
    let mean = kls.iter().sum::<f64>() / kls.len() as f64;
    let max = kls.iter().cloned().fold(0.0, f64::max);
    let agree = rc
        .iter()
        .zip(&rn)
        .filter(|(a, b)| top_k(a, 1)[0].0 == top_k(b, 1)[0].0)
        .count();
    eprintln!(
        "npu+cpu vs cpu over {} positions: KL mean {mean:.2e}, max {max:.2e}; top-1 agreement {agree}/{}",
        kls.len(),
        kls.len()
    );
    assert!(mean < KL_MEAN_MAX, "mean KL {mean} >= {KL_MEAN_MAX}");
    assert!(
        max < KL_MAX,
        "max KL {max} >= {KL_MAX} (per position: {kls:?})"
    );

    // Greedy tokens on the golden prompt.
    let ids = tok.encode("The capital of France is", true).unwrap();
    let (gc, margins) = greedy(&cpu, &ids, 12);
    let (gn, _) = greedy(&npu, &ids, 12);
    eprintln!("cpu:     {gc:?} {:?}", tok.decode(&gc).unwrap());
    eprintln!("npu+cpu: {gn:?} {:?}", tok.decode(&gn).unwrap());
    eprintln!("cpu margins: {margins:.3?}");
    if let Some(i) = gc.iter().zip(&gn).position(|(a, b)| a != b) {
        assert!(
            margins[i] < NEAR_TIE,
            "greedy differs at step {i} where the CPU margin is {} (not a near-tie < {NEAR_TIE})",
            margins[i]
        );
        eprintln!(
            "greedy differs first at step {i} (near-tie, margin {})",
            margins[i]
        );
    }
    eprintln!("{}", npu.backend.report().unwrap());
}

#[test]
fn gemma3_270m_npu_vulkan_matches_npu_cpu() {
    let store = NpuAttentionStore::new(open_store(&model_dir()).unwrap());
    let tok = Tokenizer::from_bytes(&store.tokenizer_json().unwrap()).unwrap();
    let cfg = store.config().clone();
    let vk = VulkanBackend::new(None).unwrap_or_else(|e| {
        panic!("no usable Vulkan device ({e:#}): `make setup` installs Mesa's lavapipe")
    });
    let nv = Gemma3::load(&store, HybridBackend::new(vk, "vulkan", &cfg).unwrap()).unwrap();
    let nc = Gemma3::load(
        &store,
        HybridBackend::new(CpuBackend::new(None).unwrap(), "cpu", &cfg).unwrap(),
    )
    .unwrap();
    let ids = tok.encode("The capital of France is", true).unwrap();
    let (rc, rv) = (all_logits(&nc, &ids), all_logits(&nv, &ids));
    let mut worst = 0f32;
    for (pos, (a, b)) in rc.iter().zip(&rv).enumerate() {
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        worst = worst.max(d);
        assert_eq!(
            top_k(a, 1)[0].0,
            top_k(b, 1)[0].0,
            "argmax at position {pos}"
        );
    }
    eprintln!(
        "npu+vulkan vs npu+cpu: max |logit diff| {worst:.2e} over {} positions",
        rc.len()
    );
    assert!(worst < VK_TOL, "max |logit diff| {worst} >= {VK_TOL}");
    let (gc, _) = greedy(&nc, &ids, 2);
    let (gv, _) = greedy(&nv, &ids, 2);
    assert_eq!(gc, gv, "2 greedy tokens (decode through the bf16 KV cache)");
    eprintln!("{}", nv.backend.report().unwrap());
}
