//! What the hybrid pipeline would take on a real Phoenix laptop, by the models' numbers:
//! NPU attention from `mixq-npu`'s [`TimingModel`] (calibrated and roofline presets), FFN and
//! lm_head on the Radeon 780M iGPU from a bandwidth model, all sharing 120 GB/s of LPDDR5x.
//! **A projection, never a measurement**: no XDNA hardware and no 780M ran any of it.
//!
//! The iGPU model (ours, stated as assumptions): decode matvecs are bandwidth-bound and reach
//! [`Igpu::efficiency`] of the DRAM peak; prefill FFN is the slower of bandwidth and compute at
//! [`Igpu::flops_utilization`] of the fp16 peak; each hand-off between the NPU and the GPU
//! costs [`Igpu::handoff_s`] (a fence wait and a queue submit).
//!
//! Schedules:
//! - decode, one sequence: a chain (hybrid.rs says why): attention + hand-off + FFN + hand-off
//!   per layer, then the lm_head;
//! - decode, two concurrent sequences: the NPU runs one sequence's attention while the GPU
//!   runs the other's FFN; per token the slowest of NPU, GPU and the shared DRAM sets the pace;
//! - prefill in chunks: a two-machine flow shop (chunk c's attention of layer l waits for its
//!   own layer l-1 FFN and for chunk c-1's layer-l attention, whose KV it reads), list-scheduled.

use super::stats::WeightTally;
use anyhow::Result;
use mixq_format::quant::QType;
use mixq_format::Gemma3Config;
use mixq_npu::{AttnQTypes, NpuSpec, NpuTimeBreakdown, TimingModel};
use std::fmt;

/// The Radeon 780M (Phoenix's iGPU) as a bandwidth/compute model.
#[derive(Debug, Clone)]
pub struct Igpu {
    pub name: &'static str,
    /// Shared LPDDR5x-7500 x 128 bit (the issue): the same 120 GB/s the NPU reads from.
    pub dram_bytes_per_s: f64,
    /// Assumption: fraction of the DRAM peak a decode matvec reaches (0.75; not measured by us).
    pub efficiency: f64,
    /// 12 CUs x 64 lanes x 2 (dual issue) x 2 (FMA) x 2.7 GHz = 8.3 TFLOPS fp16 (our arithmetic
    /// from AMD's CU count and boost clock).
    pub fp16_flops: f64,
    /// Assumption: fraction of that peak a quantized GEMM reaches in prefill (0.3).
    pub flops_utilization: f64,
    /// Assumption: one NPU<->GPU hand-off (fence wait + submit), 20 us.
    pub handoff_s: f64,
}

impl Igpu {
    pub fn radeon_780m() -> Igpu {
        Igpu {
            name: "Radeon 780M (model)",
            dram_bytes_per_s: 120e9,
            efficiency: 0.75,
            fp16_flops: 12.0 * 64.0 * 2.0 * 2.0 * 2.7e9,
            flops_utilization: 0.3,
            handoff_s: 20e-6,
        }
    }
    fn read_s(&self, bytes: f64) -> f64 {
        bytes / (self.dram_bytes_per_s * self.efficiency)
    }
}

/// Weight bytes per token by part of the model.
#[derive(Debug, Clone)]
pub struct ModelBytes {
    pub attn_qtypes: AttnQTypes,
    /// True when the qtypes are the `optimal` recipe's, assumed because the loaded attention
    /// projections are not int4 tensors of an NPU bank.
    pub qtypes_assumed: bool,
    /// All layers' FFN weights (gate, up, down).
    pub ffn_bytes: f64,
    /// The lm_head (the tied embedding on Gemma 3): read whole for every token's logits.
    pub lm_head_bytes: f64,
    /// Norm vectors and the rest, read once per token.
    pub other_bytes: f64,
}

impl ModelBytes {
    /// From what the hybrid backend loaded.
    pub fn from_tally(t: &WeightTally, _cfg: &Gemma3Config) -> ModelBytes {
        let q = t.attn_qtypes;
        let (attn_qtypes, qtypes_assumed) = match q {
            [Some(q), Some(k), Some(v), Some(o)] => (AttnQTypes { q, k, v, o }, false),
            _ => (AttnQTypes::optimal(), true),
        };
        let lm = if t.lm_head_bytes > 0 {
            t.lm_head_bytes
        } else {
            t.embed_bytes
        };
        ModelBytes {
            attn_qtypes,
            qtypes_assumed,
            ffn_bytes: t.ffn_bytes as f64,
            lm_head_bytes: lm as f64,
            other_bytes: t.other_bytes as f64,
        }
    }

    /// The seed's `optimal` recipe computed from the shape alone (no file needed): q/k/v
    /// I4_GROUPED, o I4_PER_CHANNEL, gate/up I2_STRUCTURED, down I4_GROUPED, embedding (= the
    /// tied lm_head) I8_ASYM, norms f32.
    pub fn optimal_recipe(c: &Gemma3Config) -> Result<ModelBytes> {
        let (h, i) = (c.hidden_size as u64, c.intermediate_size as u64);
        let l = c.num_hidden_layers as f64;
        let ffn = 2 * QType::I2Structured.tensor_bytes_u64(i, h)?
            + QType::I4Grouped.tensor_bytes_u64(h, i)?;
        let norms = (4 * h + 2 * c.head_dim as u64) * 4;
        Ok(ModelBytes {
            attn_qtypes: AttnQTypes::optimal(),
            qtypes_assumed: false,
            ffn_bytes: ffn as f64 * l,
            lm_head_bytes: QType::I8Asym.tensor_bytes_u64(c.vocab_size as u64, h)? as f64,
            other_bytes: norms as f64 * l,
        })
    }
}

/// The decode projection of one token at a context length.
#[derive(Debug, Clone)]
pub struct Projection {
    pub config_name: String,
    pub context: usize,
    pub bytes: ModelBytes,
    pub npu_calibrated: NpuTimeBreakdown,
    pub npu_roofline: NpuTimeBreakdown,
    pub igpu: Igpu,
    pub layers: usize,
    /// Attention weights + KV bytes read per token (from the timing model).
    pub attn_bytes: f64,
    pub gpu_ffn_s: f64,
    pub gpu_lm_head_s: f64,
    pub gpu_attn_s: f64,
    pub handoffs_s: f64,
    /// NPU attention + GPU FFN, one sequence (a chain).
    pub hybrid_calibrated_s: f64,
    pub hybrid_roofline_s: f64,
    /// Everything on the iGPU.
    pub gpu_only_s: f64,
    /// Every byte once at the full 120 GB/s: no design beats it.
    pub bandwidth_roofline_s: f64,
    /// Two concurrent sequences overlapping NPU attention with GPU FFN, per token.
    pub two_sequences_calibrated_s: f64,
}

impl Projection {
    pub fn decode(cfg: &Gemma3Config, bytes: &ModelBytes, context: usize) -> Result<Projection> {
        let spec = NpuSpec::phoenix();
        let cal =
            TimingModel::calibrated(spec.clone()).predict(cfg, &bytes.attn_qtypes, context, 1)?;
        let roof = TimingModel::roofline(spec).predict(cfg, &bytes.attn_qtypes, context, 1)?;
        let g = Igpu::radeon_780m();
        let layers = cfg.num_hidden_layers;
        let attn_bytes = cal.weight_bytes + cal.kv_bytes;
        let gpu_ffn_s = g.read_s(bytes.ffn_bytes + bytes.other_bytes);
        let gpu_lm_head_s = g.read_s(bytes.lm_head_bytes);
        let gpu_attn_s = g.read_s(attn_bytes);
        let handoffs_s = 2.0 * layers as f64 * g.handoff_s;
        let all = attn_bytes + bytes.ffn_bytes + bytes.other_bytes + bytes.lm_head_bytes;
        let bw = all / g.dram_bytes_per_s;
        let hybrid_calibrated_s = cal.total_s + gpu_ffn_s + gpu_lm_head_s + handoffs_s;
        let hybrid_roofline_s = roof.total_s
            + (bytes.ffn_bytes + bytes.other_bytes + bytes.lm_head_bytes) / g.dram_bytes_per_s;
        let two = cal.total_s.max(gpu_ffn_s + gpu_lm_head_s).max(bw) + handoffs_s;
        Ok(Projection {
            config_name: format!(
                "Gemma 3 shape hidden {} x {} layers, {} heads / {} KV heads x {}",
                cfg.hidden_size,
                layers,
                cfg.num_attention_heads,
                cfg.num_key_value_heads,
                cfg.head_dim
            ),
            context,
            bytes: bytes.clone(),
            gpu_only_s: gpu_attn_s + gpu_ffn_s + gpu_lm_head_s,
            bandwidth_roofline_s: bw,
            npu_calibrated: cal,
            npu_roofline: roof,
            igpu: g,
            layers,
            attn_bytes,
            gpu_ffn_s,
            gpu_lm_head_s,
            gpu_attn_s,
            handoffs_s,
            hybrid_calibrated_s,
            hybrid_roofline_s,
            two_sequences_calibrated_s: two,
        })
    }

    /// Offloading attention to the NPU helps when the hybrid chain beats the GPU alone.
    pub fn offload_helps(&self) -> bool {
        self.hybrid_calibrated_s < self.gpu_only_s
    }
}

/// Prefill of `tokens` in chunks of `chunk`: serial chain vs NPU||GPU pipelined makespan.
#[derive(Debug, Clone)]
pub struct PrefillProjection {
    pub tokens: usize,
    pub chunk: usize,
    pub serial_s: f64,
    pub pipelined_s: f64,
    pub npu_busy_s: f64,
    pub gpu_busy_s: f64,
}

pub fn prefill(
    cfg: &Gemma3Config,
    bytes: &ModelBytes,
    tokens: usize,
    chunk: usize,
) -> Result<PrefillProjection> {
    let g = Igpu::radeon_780m();
    let tm = TimingModel::calibrated(NpuSpec::phoenix());
    let layers = cfg.num_hidden_layers;
    let chunks = tokens.div_ceil(chunk.max(1));
    let ffn_layer_bytes = (bytes.ffn_bytes + bytes.other_bytes) / layers as f64;
    let ffn_flops = 2.0 * 3.0 * (cfg.hidden_size * cfg.intermediate_size) as f64;
    // durations[j][s]: stage s of chunk j (even s: NPU attention of layer s/2; odd: GPU FFN)
    let mut dur = Vec::with_capacity(chunks);
    for j in 0..chunks {
        let n = chunk.min(tokens - j * chunk);
        let npu = tm.predict(cfg, &bytes.attn_qtypes, j * chunk + n, n)?;
        let gpu = g
            .read_s(ffn_layer_bytes)
            .max(ffn_flops * n as f64 / (g.fp16_flops * g.flops_utilization))
            + 2.0 * g.handoff_s;
        let mut d = Vec::with_capacity(2 * layers);
        for l in &npu.layers {
            d.push(l.total_s);
            d.push(gpu);
        }
        dur.push(d);
    }
    let serial_s: f64 = dur.iter().flatten().sum();
    let npu_busy_s = dur.iter().map(|d| d.iter().step_by(2).sum::<f64>()).sum();
    let gpu_busy_s = dur
        .iter()
        .map(|d| d.iter().skip(1).step_by(2).sum::<f64>())
        .sum();
    // List scheduling: repeatedly start the ready stage that can start earliest.
    let stages = 2 * layers;
    let mut end = vec![vec![f64::NAN; stages]; chunks];
    let mut next = vec![0usize; chunks];
    let mut free = [0f64; 2];
    loop {
        let mut best: Option<(f64, usize)> = None;
        for j in 0..chunks {
            let s = next[j];
            if s == stages || (j > 0 && next[j - 1] <= s) {
                continue; // done, or chunk j-1 has not finished this stage (KV order)
            }
            let mut t = free[s % 2];
            if s > 0 {
                t = t.max(end[j][s - 1]);
            }
            if j > 0 {
                t = t.max(end[j - 1][s]);
            }
            if best.is_none_or(|(bt, _)| t < bt) {
                best = Some((t, j));
            }
        }
        let Some((t, j)) = best else { break };
        let s = next[j];
        end[j][s] = t + dur[j][s];
        free[s % 2] = end[j][s];
        next[j] += 1;
    }
    let pipelined_s = end.iter().map(|e| e[stages - 1]).fold(0.0, f64::max);
    Ok(PrefillProjection {
        tokens,
        chunk,
        serial_s,
        pipelined_s,
        npu_busy_s,
        gpu_busy_s,
    })
}

impl fmt::Display for Projection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = |s: f64| s * 1e3;
        writeln!(
            f,
            "Phoenix projection (engine model + iGPU model: NOT measured, no XDNA hardware or 780M used), decode of 1 token at context {}:",
            self.context
        )?;
        writeln!(f, "  model: {}", self.config_name)?;
        writeln!(
            f,
            "  NPU attention (all layers): calibrated {:.2} ms, roofline {:.2} ms (compute {:.2} / DMA {:.2} / sync {:.2} ms calibrated)",
            m(self.npu_calibrated.total_s),
            m(self.npu_roofline.total_s),
            m(self.npu_calibrated.compute_s),
            m(self.npu_calibrated.dma_s),
            m(self.npu_calibrated.sync_s)
        )?;
        writeln!(
            f,
            "  iGPU FFN {:.2} ms + lm_head {:.2} ms + {} hand-offs {:.2} ms",
            m(self.gpu_ffn_s),
            m(self.gpu_lm_head_s),
            2 * self.layers,
            m(self.handoffs_s)
        )?;
        writeln!(
            f,
            "  per token: hybrid chain {:.2} ms (calibrated) / {:.2} ms (NPU roofline); all on the iGPU {:.2} ms; 120 GB/s bandwidth roofline {:.2} ms; two concurrent sequences overlapped {:.2} ms/token",
            m(self.hybrid_calibrated_s),
            m(self.hybrid_roofline_s),
            m(self.gpu_only_s),
            m(self.bandwidth_roofline_s),
            m(self.two_sequences_calibrated_s)
        )?;
        writeln!(
            f,
            "  by these numbers offloading attention to the NPU {} ({:.2} vs {:.2} ms per token)",
            if self.offload_helps() {
                "helps"
            } else {
                "hurts"
            },
            m(self.hybrid_calibrated_s),
            m(self.gpu_only_s)
        )?;
        let q = &self.bytes.attn_qtypes;
        let tm = TimingModel::calibrated(NpuSpec::phoenix());
        writeln!(
            f,
            "  inputs: attention q/k/v/o {}/{}/{}/{}{}; bytes per token: attention weights {:.1} MB + KV {:.1} MB, FFN {:.1} MB, lm_head {:.1} MB, other {:.1} MB",
            q.q.name(),
            q.k.name(),
            q.v.name(),
            q.o.name(),
            if self.bytes.qtypes_assumed { " (assumed: the loaded attention is not int4 in an NPU bank)" } else { "" },
            self.npu_calibrated.weight_bytes / 1e6,
            self.npu_calibrated.kv_bytes / 1e6,
            self.bytes.ffn_bytes / 1e6,
            self.bytes.lm_head_bytes / 1e6,
            self.bytes.other_bytes / 1e6
        )?;
        writeln!(
            f,
            "  inputs: NPU {} x {} tiles at {:.1} GHz, {} bf16 ops/tile/cycle, GEMV utilisation {:.2}%, GEMM {:.1}%, DRAM share {:.0}% capped at {:.0} GB/s shim, launch {:.0} us/layer, sync {:.0} us/phase",
            tm.spec.name,
            tm.spec.cores(),
            tm.spec.clock_hz / 1e9,
            tm.spec.bf16_ops_per_cycle,
            tm.gemv_utilization * 100.0,
            tm.gemm_utilization * 100.0,
            tm.dram_share * 100.0,
            tm.spec.shim_read_bytes_per_s() / 1e9,
            tm.launch_s * 1e6,
            tm.phase_sync_s * 1e6
        )?;
        writeln!(
            f,
            "  inputs: {} at {:.0}% of {:.0} GB/s (assumption), {:.1} TFLOPS fp16 at {:.0}% in prefill (assumption), {:.0} us per hand-off (assumption)",
            self.igpu.name,
            self.igpu.efficiency * 100.0,
            self.igpu.dram_bytes_per_s / 1e9,
            self.igpu.fp16_flops / 1e12,
            self.igpu.flops_utilization * 100.0,
            self.igpu.handoff_s * 1e6
        )
    }
}
