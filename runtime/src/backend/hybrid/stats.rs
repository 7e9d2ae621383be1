//! Per-device time accounting of the hybrid scheduler, and its report for `bench`.
//!
//! What the numbers are: wall-clock time on this machine inside each kind of call. The "NPU
//! engine" column is the host CPU computing the NPU's arithmetic: it says how slow the
//! emulation is, nothing about a real NPU (the projection below is the timing model's). For
//! a GPU `G`, ops are recorded into a command buffer and run at sync points, so `G`'s column
//! holds recording time plus the waits at the downloads the NPU hand-offs force: GPU time is
//! only visible where the host waits for it.

use super::projection::{self, ModelBytes};
use super::{HybridBackend, NpuWeight};
use crate::backend::Backend;
use crate::weights::WeightSource;
use mixq_format::quant::QType;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

pub struct Timer(Instant);

impl Timer {
    pub fn start() -> Timer {
        Timer(Instant::now())
    }
    fn ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

#[derive(Default)]
pub struct Stats {
    pub npu_matmul_ns: AtomicU64,
    pub npu_matmul_calls: AtomicU64,
    pub npu_attn_ns: AtomicU64,
    pub npu_attn_calls: AtomicU64,
    pub npu_elem_ns: AtomicU64,
    pub dev_ns: AtomicU64,
    pub down_ns: AtomicU64,
    pub down_n: AtomicU64,
    pub down_bytes: AtomicU64,
    pub up_ns: AtomicU64,
    pub up_n: AtomicU64,
    pub up_bytes: AtomicU64,
    /// Sum over attention calls of the batch size, divided by the layer count: tokens.
    pub attn_tokens: AtomicU64,
    pub layers: AtomicU64,
    /// Positions in the KV cache after the last attention call.
    pub context: AtomicU64,
}

impl Stats {
    pub fn npu_matmul(&self, t: Timer, _w: &NpuWeight, _n: usize) {
        self.npu_matmul_ns.fetch_add(t.ns(), Relaxed);
        self.npu_matmul_calls.fetch_add(1, Relaxed);
    }
    pub fn npu_attention(&self, t: Timer, n: usize, context: usize, layers: usize) {
        self.npu_attn_ns.fetch_add(t.ns(), Relaxed);
        self.npu_attn_calls.fetch_add(1, Relaxed);
        self.attn_tokens.fetch_add(n as u64, Relaxed);
        self.layers.store(layers as u64, Relaxed);
        self.context.store(context as u64, Relaxed);
    }
    pub fn npu_elementwise(&self, t: Timer) {
        self.npu_elem_ns.fetch_add(t.ns(), Relaxed);
    }
    pub fn dev(&self, t: Timer) {
        self.dev_ns.fetch_add(t.ns(), Relaxed);
    }
    pub fn download(&self, len: usize, t: Timer) {
        self.down_ns.fetch_add(t.ns(), Relaxed);
        self.down_n.fetch_add(1, Relaxed);
        self.down_bytes.fetch_add(4 * len as u64, Relaxed);
    }
    pub fn upload(&self, len: usize, t: Timer) {
        self.up_ns.fetch_add(t.ns(), Relaxed);
        self.up_n.fetch_add(1, Relaxed);
        self.up_bytes.fetch_add(4 * len as u64, Relaxed);
    }
    pub fn reset(&self) {
        for a in [
            &self.npu_matmul_ns,
            &self.npu_matmul_calls,
            &self.npu_attn_ns,
            &self.npu_attn_calls,
            &self.npu_elem_ns,
            &self.dev_ns,
            &self.down_ns,
            &self.down_n,
            &self.down_bytes,
            &self.up_ns,
            &self.up_n,
            &self.up_bytes,
            &self.attn_tokens,
        ] {
            a.store(0, Relaxed);
        }
    }
    /// Tokens that went through the layers since the last reset.
    pub fn tokens(&self) -> u64 {
        self.attn_tokens.load(Relaxed) / self.layers.load(Relaxed).max(1)
    }
}

/// Bytes of the loaded weights by class and device.
#[derive(Debug, Clone, Default)]
pub struct WeightTally {
    pub attn_npu_bytes: u64,
    pub attn_dev_bytes: u64,
    pub ffn_bytes: u64,
    pub embed_bytes: u64,
    pub lm_head_bytes: u64,
    pub other_bytes: u64,
    /// The types of q/k/v/o as loaded onto the NPU (last seen), for the timing model.
    pub attn_qtypes: [Option<QType>; 4],
}

impl WeightTally {
    pub fn add(&mut self, w: &WeightSource, on_npu: bool) {
        let b = w.bytes.len() as u64;
        let n = &w.name;
        let proj = ["q_proj", "k_proj", "v_proj", "o_proj"]
            .iter()
            .position(|p| n.ends_with(&format!("self_attn.{p}.weight")));
        if let Some(i) = proj {
            if on_npu {
                self.attn_npu_bytes += b;
                self.attn_qtypes[i] = Some(w.qtype);
            } else {
                self.attn_dev_bytes += b;
            }
        } else if n.contains(".mlp.") {
            self.ffn_bytes += b;
        } else if n == "model.embed_tokens.weight" {
            self.embed_bytes += b;
        } else if n == "lm_head.weight" {
            self.lm_head_bytes += b;
        } else {
            self.other_bytes += b;
        }
    }
}

fn ms(ns: &AtomicU64) -> f64 {
    ns.load(Relaxed) as f64 / 1e6
}

/// The hybrid backend's report: measured per-device time on this machine, then the timing
/// model's Phoenix projection for this model's shape at the current context.
pub fn report<G: Backend>(h: &HybridBackend<G>) -> String {
    let s = &h.stats;
    let tally = h.tally();
    let mut o = String::new();
    let tokens = s.tokens();
    let _ = writeln!(
        o,
        "per-device wall time on this machine over {tokens} token(s) (the NPU engine is the host CPU emulating the NPU's arithmetic: its time is the emulation's, not an NPU's):"
    );
    let (mm, at, el) = (ms(&s.npu_matmul_ns), ms(&s.npu_attn_ns), ms(&s.npu_elem_ns));
    let _ = writeln!(
        o,
        "  npu engine (emulated): {:9.1} ms = projections {:.1} ({} calls) + attention {:.1} ({} calls) + qk-norm/RoPE {:.1}",
        mm + at + el,
        mm,
        s.npu_matmul_calls.load(Relaxed),
        at,
        s.npu_attn_calls.load(Relaxed),
        el
    );
    let _ = writeln!(
        o,
        "  {:<21} {:9.1} ms{}",
        format!("{}:", h.name),
        ms(&s.dev_ns),
        if h.name == "cpu" {
            ""
        } else {
            " (recording + waiting at sync points: GPU time is only visible where the host waits)"
        }
    );
    let _ = writeln!(
        o,
        "  hand-offs:             {:9.1} ms = {} downloads ({:.2} MB, incl. waiting for queued {} work) + {} uploads ({:.2} MB)",
        ms(&s.down_ns) + ms(&s.up_ns),
        s.down_n.load(Relaxed),
        s.down_bytes.load(Relaxed) as f64 / 1e6,
        h.name,
        s.up_n.load(Relaxed),
        s.up_bytes.load(Relaxed) as f64 / 1e6
    );
    let _ = writeln!(
        o,
        "  weights: NPU banks {:.1} MB (attention projections); {} {:.1} MB (attention not in an NPU bank {:.1}, FFN {:.1}, embedding {:.1}, other {:.1})",
        tally.attn_npu_bytes as f64 / 1e6,
        h.name,
        (tally.attn_dev_bytes + tally.ffn_bytes + tally.embed_bytes + tally.lm_head_bytes + tally.other_bytes) as f64 / 1e6,
        tally.attn_dev_bytes as f64 / 1e6,
        tally.ffn_bytes as f64 / 1e6,
        tally.embed_bytes as f64 / 1e6,
        tally.other_bytes as f64 / 1e6,
    );
    if let Some(r) = h.g.report() {
        let _ = writeln!(o, "  {} backend's own report:", h.name);
        for line in r.lines() {
            let _ = writeln!(o, "    {line}");
        }
    }
    let context = (s.context.load(Relaxed) as usize).max(1);
    let bytes = ModelBytes::from_tally(&tally, h.config());
    match projection::Projection::decode(h.config(), &bytes, context) {
        Ok(p) => o.push_str(&p.to_string()),
        Err(e) => {
            let _ = writeln!(o, "Phoenix projection unavailable: {e:#}");
        }
    }
    o
}
