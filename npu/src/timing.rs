//! The timing model: predicted NPU time of the attention block, per layer and per token.
//!
//! Each step of a layer (q, k, v projections; q/k-norm + RoPE; attention; o projection) is one
//! phase on the array. A phase's time is `max(compute, dma) + sync`: weight and KV streams
//! are double-buffered (tiling.rs), so compute and DMA overlap and the slower one sets the
//! pace. Per layer add one host launch.
//!
//! - **compute** = ops / (tiles used x bf16 ops per tile per cycle x clock x utilisation).
//!   W4ABF16 runs bf16 MACs (256 ops/tile/cycle on AIE-ML), so bf16 is the peak that applies.
//!   Utilisation is calibrated, not derived: a batch-1 GEMV on one core was measured at
//!   ~0.4 GOPS (0.16% of 256 GOPS) and a 16-core GEMM at ~265 GOPS (6.5% of 4096 GOPS) (the
//!   measurements the issue cites; we assume they are bf16-class). For `n` activation rows
//!   per weight tile (tokens x query heads per KV head) utilisation rises linearly from the
//!   GEMV figure at n = 1 to the GEMM figure at n = `gemm_saturation_rows` (64, the GEMM tile
//!   the open toolchain's examples use). Element-wise work (exp, norms, RoPE) runs at
//!   `elementwise_per_cycle` elements per tile per cycle (Assumption: 4, a 16-lane bf16 vector
//!   op taking ~4 issue slots with its LUT lookups).
//! - **dma** = bytes / NPU read bandwidth, where the NPU reads at `dram_share` x 120 GB/s,
//!   capped by its shim DMA ceiling (4 columns x 2 channels x 4 B x clock = 32 GB/s on
//!   Phoenix); and no tile can receive faster than its 2 input streams (8 GB/s).
//! - **sync**: `launch_s` per layer (one XRT run per layer, because the iGPU's FFN sits
//!   between two layers' attention; Assumption 50 us: a host->firmware->host command round
//!   trip through the amdxdna mailbox, unmeasured by us) and `phase_sync_s` per phase
//!   (Assumption 2 us: lock hand-over between phases and draining the pipeline).
//!
//! Two presets bracket reality: [`TimingModel::calibrated`] (the published measurements) and
//! [`TimingModel::roofline`] (100% utilisation, the whole DRAM, no overheads: a lower bound
//! that only physics sets).

use crate::error::Result;
use crate::spec::NpuSpec;
use crate::tiling::{AttnDims, AttnQTypes, Proj, TilingPlan};
use mixq_format::{Gemma3Config, LayerKind};

/// Parameters of the timing model (all public: a variant is a struct update away).
#[derive(Debug, Clone, PartialEq)]
pub struct TimingModel {
    pub label: &'static str,
    pub spec: NpuSpec,
    /// Fraction of the bf16 peak a batch-1 GEMV reaches per tile.
    pub gemv_utilization: f64,
    /// Fraction of the bf16 peak a large GEMM reaches per tile.
    pub gemm_utilization: f64,
    /// Activation rows per weight tile at which the GEMM figure is reached.
    pub gemm_saturation_rows: usize,
    /// Element-wise ops (exp, norm, RoPE) per tile per cycle.
    pub elementwise_per_cycle: f64,
    /// Share of the DRAM bandwidth the NPU gets while CPU and iGPU also run.
    pub dram_share: f64,
    /// Host launch + completion per layer, seconds.
    pub launch_s: f64,
    /// Synchronisation per phase, seconds.
    pub phase_sync_s: f64,
}

/// One phase of a layer.
#[derive(Debug, Clone, PartialEq)]
pub struct OpTime {
    pub name: &'static str,
    /// Arithmetic ops (a MAC counts 2).
    pub ops: f64,
    /// Bytes moved between DRAM and the array.
    pub bytes: f64,
    pub tiles: usize,
    pub compute_s: f64,
    pub dma_s: f64,
    /// `max(compute, dma) + phase sync`.
    pub time_s: f64,
}

/// One layer's attention block.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerTime {
    pub layer: usize,
    pub kind: LayerKind,
    pub ops: Vec<OpTime>,
    pub weight_bytes: f64,
    pub kv_bytes: f64,
    pub compute_s: f64,
    pub dma_s: f64,
    pub sync_s: f64,
    pub total_s: f64,
}

/// The attention blocks of a whole model for one step (a decode token or a prefill chunk).
#[derive(Debug, Clone, PartialEq)]
pub struct NpuTimeBreakdown {
    pub model: &'static str,
    pub tokens: usize,
    /// Positions in the KV cache after this step.
    pub context_len: usize,
    pub layers: Vec<LayerTime>,
    pub ops: f64,
    pub weight_bytes: f64,
    pub kv_bytes: f64,
    /// Sums over layers of each phase's compute / DMA time (phases overlap the two).
    pub compute_s: f64,
    pub dma_s: f64,
    pub sync_s: f64,
    pub total_s: f64,
    pub per_token_s: f64,
    /// All bytes at the full 120 GB/s: what no NPU design can beat.
    pub dram_floor_s: f64,
}

impl TimingModel {
    /// The published measurements: GEMV 0.4 GOPS on one core, GEMM 265 GOPS on 16 cores;
    /// half the DRAM bandwidth; 50 us launch per layer, 2 us per phase.
    pub fn calibrated(spec: NpuSpec) -> TimingModel {
        // measured on Phoenix (1 GHz x 256 bf16 ops per tile); kept as fractions of the peak,
        // so a faster clock (Hawk Point) scales them
        let gemv = 0.4e9 / (1.0e9 * 256.0);
        let gemm = 265e9 / (16.0 * 1.0e9 * 256.0);
        TimingModel {
            label: "calibrated (published GEMV/GEMM measurements)",
            spec,
            gemv_utilization: gemv,
            gemm_utilization: gemm,
            gemm_saturation_rows: 64,
            elementwise_per_cycle: 4.0,
            dram_share: 0.5,
            launch_s: 50e-6,
            phase_sync_s: 2e-6,
        }
    }

    /// The physical lower bound: every MAC slot busy, the whole DRAM, no overheads.
    pub fn roofline(spec: NpuSpec) -> TimingModel {
        TimingModel {
            label: "roofline (100% utilisation, whole DRAM, no overheads)",
            spec,
            gemv_utilization: 1.0,
            gemm_utilization: 1.0,
            gemm_saturation_rows: 1,
            elementwise_per_cycle: 16.0,
            dram_share: 1.0,
            launch_s: 0.0,
            phase_sync_s: 0.0,
        }
    }

    /// Bytes per second the NPU reads from DRAM.
    pub fn read_bytes_per_s(&self) -> f64 {
        (self.dram_share * self.spec.dram_bytes_per_s).min(self.spec.shim_read_bytes_per_s())
    }

    /// Utilisation for `rows` activation rows per weight tile.
    pub fn utilization(&self, rows: usize) -> f64 {
        if rows <= 1 || self.gemm_saturation_rows <= 1 {
            return if rows <= 1 {
                self.gemv_utilization
            } else {
                self.gemm_utilization
            };
        }
        let f = ((rows - 1) as f64 / (self.gemm_saturation_rows - 1) as f64).min(1.0);
        self.gemv_utilization + (self.gemm_utilization - self.gemv_utilization) * f
    }

    fn phase(
        &self,
        name: &'static str,
        ops: f64,
        rows: usize,
        elementwise: f64,
        bytes: f64,
        tiles: usize,
    ) -> OpTime {
        let s = &self.spec;
        let tiles = tiles.max(1);
        let mac = ops
            / (tiles as f64 * s.bf16_ops_per_cycle as f64 * s.clock_hz * self.utilization(rows));
        let ew = elementwise / (tiles as f64 * self.elementwise_per_cycle * s.clock_hz);
        let dma = (bytes / self.read_bytes_per_s())
            .max(bytes / tiles as f64 / s.core_stream_bytes_per_s());
        let compute_s = if ops > 0.0 { mac } else { 0.0 } + ew;
        OpTime {
            name,
            ops,
            bytes,
            tiles,
            compute_s,
            dma_s: dma,
            time_s: compute_s.max(dma) + self.phase_sync_s,
        }
    }

    /// One layer's attention block for `tokens` new tokens ending at `context_len` positions.
    pub fn predict_layer(
        &self,
        dims: &AttnDims,
        qtypes: &AttnQTypes,
        context_len: usize,
        tokens: usize,
    ) -> Result<LayerTime> {
        let plan = TilingPlan::for_layer(&self.spec, dims, qtypes, tokens)?;
        let t = tokens as f64;
        let mut ops = Vec::new();
        let mut weight_bytes = 0.0;
        for p in [Proj::Q, Proj::K, Proj::V] {
            let pt = plan.proj(p);
            let w = pt.weight_bytes() as f64;
            weight_bytes += w;
            let bytes = w + t * (pt.cols * 2 + pt.rows * 4) as f64;
            ops.push(self.phase(
                p.name(),
                2.0 * (pt.rows * pt.cols) as f64 * t,
                tokens,
                0.0,
                bytes,
                pt.cores,
            ));
        }
        // q/k RMSNorm + RoPE on q and k, then K and V appended to the bf16 cache
        let (qd, kvd) = (dims.q_dim() as f64, dims.kv_dim() as f64);
        ops.push(self.phase(
            "qk_norm_rope",
            0.0,
            tokens,
            t * (qd + kvd) * 6.0,
            t * kvd * 2.0 * 2.0,
            self.spec.cores() as usize,
        ));
        // attention: token i of the chunk sits at position context_len - tokens + i
        let start = context_len.saturating_sub(tokens);
        let vis: Vec<usize> = (0..tokens).map(|i| dims.visible(start + i)).collect();
        let vis_sum: f64 = vis.iter().map(|&v| v as f64).sum();
        let vis_max = *vis.iter().max().unwrap_or(&1);
        let a = &plan.attention;
        let q_tiles = tokens.div_ceil(a.q_tokens_per_tile) as f64;
        let kv_bytes = q_tiles * vis_max as f64 * kvd * 2.0 * 2.0;
        let attn_ops = 2.0 * 2.0 * dims.n_heads as f64 * dims.head_dim as f64 * vis_sum;
        let exp_elems = dims.n_heads as f64 * vis_sum;
        ops.push(self.phase(
            "attention",
            attn_ops,
            a.q_tokens_per_tile * a.q_per_kv,
            exp_elems,
            kv_bytes + t * (qd * 2.0 + qd * 4.0),
            a.cores_used(vis_max),
        ));
        let po = plan.proj(Proj::O);
        weight_bytes += po.weight_bytes() as f64;
        ops.push(self.phase(
            "o_proj",
            2.0 * (po.rows * po.cols) as f64 * t,
            tokens,
            0.0,
            po.weight_bytes() as f64 + t * (po.cols * 2 + po.rows * 4) as f64,
            po.cores,
        ));
        let compute_s = ops.iter().map(|o| o.compute_s).sum();
        let dma_s = ops.iter().map(|o| o.dma_s).sum();
        let sync_s = self.launch_s + ops.len() as f64 * self.phase_sync_s;
        let total_s = ops.iter().map(|o| o.time_s).sum::<f64>() + self.launch_s;
        Ok(LayerTime {
            layer: dims.layer,
            kind: dims.kind,
            ops,
            weight_bytes,
            kv_bytes,
            compute_s,
            dma_s,
            sync_s,
            total_s,
        })
    }

    /// Every layer's attention block for one step: `tokens` new tokens (1 = decode), the KV
    /// cache holding `context_len` positions after the step. Same `qtypes` for every layer.
    pub fn predict(
        &self,
        cfg: &Gemma3Config,
        qtypes: &AttnQTypes,
        context_len: usize,
        tokens: usize,
    ) -> Result<NpuTimeBreakdown> {
        let context_len = context_len.max(tokens);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            layers.push(self.predict_layer(
                &AttnDims::from_config(cfg, l)?,
                qtypes,
                context_len,
                tokens,
            )?);
        }
        let sum = |f: &dyn Fn(&LayerTime) -> f64| layers.iter().map(f).sum::<f64>();
        let ops = sum(&|l| l.ops.iter().map(|o| o.ops).sum());
        let bytes = sum(&|l| l.ops.iter().map(|o| o.bytes).sum());
        let total_s = sum(&|l| l.total_s);
        Ok(NpuTimeBreakdown {
            model: self.label,
            tokens,
            context_len,
            ops,
            weight_bytes: sum(&|l| l.weight_bytes),
            kv_bytes: sum(&|l| l.kv_bytes),
            compute_s: sum(&|l| l.compute_s),
            dma_s: sum(&|l| l.dma_s),
            sync_s: sum(&|l| l.sync_s),
            total_s,
            per_token_s: total_s / tokens as f64,
            dram_floor_s: bytes / self.spec.dram_bytes_per_s,
            layers,
        })
    }
}

impl std::fmt::Display for NpuTimeBreakdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{}: {} token(s) at context {}: {:.2} ms per step, {:.2} ms per token",
            self.model,
            self.tokens,
            self.context_len,
            self.total_s * 1e3,
            self.per_token_s * 1e3
        )?;
        writeln!(
            f,
            "  {:.2} GOP; weights {:.1} MB, KV {:.1} MB; compute {:.2} ms, DMA {:.2} ms, sync {:.2} ms; DRAM floor {:.2} ms",
            self.ops / 1e9,
            self.weight_bytes / 1e6,
            self.kv_bytes / 1e6,
            self.compute_s * 1e3,
            self.dma_s * 1e3,
            self.sync_s * 1e3,
            self.dram_floor_s * 1e3
        )?;
        if let Some(l) = self.layers.first() {
            write!(f, "  layer {} ({:?}):", l.layer, l.kind)?;
            for o in &l.ops {
                write!(
                    f,
                    " {} {:.1} us ({})",
                    o.name,
                    o.time_s * 1e6,
                    if o.compute_s >= o.dma_s {
                        "compute"
                    } else {
                        "DMA"
                    }
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
