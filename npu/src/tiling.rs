//! The tiling plan: how one layer's attention block maps onto the Phoenix array.
//!
//! # Projections (q, k, v, o): y = W x, W `[rows, cols]` in a W4 layout
//!
//! A `.mixq` row is self-contained and contiguous (`[params][codes]`, formats/src/quant), so
//! the plan splits **rows**: tile i of the 16 gets one contiguous row range, which is one
//! contiguous byte range of the tensor in its `npu.bank*` section. Every output is then
//! reduced on one tile, in increasing k (the executor's accumulation order holds).
//!
//! - Decode (1 token, GEMV): the activation x (`cols` bf16) is resident in each tile's data
//!   memory for the whole projection; weight rows stream through two buffers of
//!   `rows_per_block` rows (ping-pong: the DMA fills one while the core computes on the
//!   other); outputs leave in two small fp32 buffers. Each column's memory tile holds x once
//!   (broadcast to its 4 cores) and double-buffers the column's weight blocks from the shim.
//! - Prefill chunk (T tokens, GEMM): tiles of `rows_per_block` weight rows x
//!   `tokens_per_tile` tokens x `k_tile` columns; the fp32 accumulator tile stays in data
//!   memory across the k loop (so k order is unchanged); x and W tiles are double-buffered.
//!
//! # Attention (QK^T, softmax, PV) over the bf16 KV cache
//!
//! The unit of work is one KV head with its `q_per_kv` query heads (GQA: K and V are read once
//! for the group). With at least as many KV heads as tiles, tiles take whole heads; with fewer
//! (Gemma 3 270M/1B: 1 KV head; 4B: 4; 12B/27B: 8/16), each head's visible positions are split
//! into `cores / n_kv_heads` partitions of consecutive chunks, one per tile, and the partial
//! softmax states merge in partition order (exec.rs defines the arithmetic). K and V stream
//! through double-buffered chunks of `kv_chunk` positions.
//!
//! # What cannot fit, reported in [`TilingPlan::not_fitting`]
//!
//! The array holds 16 x 64 KB + 4 x 512 KB = 3 MB. A Gemma 3 layer's attention weights are
//! 0.84 MiB (270M) to 34 MiB (27B) in W4: only 270M and 1B layers (0.84, 1.52 MiB) would fit one at a time, and no
//! model does, so weights stream from DRAM (the `npu.bank*` sections) every token; the KV cache
//! always streams.

use crate::error::{NpuError, Result};
use crate::exec::AttnPartition;
use crate::spec::NpuSpec;
use mixq_format::profile::Placement;
use mixq_format::quant::QType;
use mixq_format::{Gemma3Config, LayerKind};
use std::ops::Range;

/// One attention projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proj {
    Q,
    K,
    V,
    O,
}

impl Proj {
    pub const ALL: [Proj; 4] = [Proj::Q, Proj::K, Proj::V, Proj::O];

    pub fn name(self) -> &'static str {
        match self {
            Proj::Q => "q_proj",
            Proj::K => "k_proj",
            Proj::V => "v_proj",
            Proj::O => "o_proj",
        }
    }

    /// The HF tensor name in layer `layer` (the `.mixq` index keeps HF names).
    pub fn hf_name(self, layer: usize) -> String {
        format!("model.layers.{layer}.self_attn.{}.weight", self.name())
    }
}

/// The attention dimensions of one layer, from the config.
#[derive(Debug, Clone, PartialEq)]
pub struct AttnDims {
    pub layer: usize,
    pub hidden: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub kind: LayerKind,
    /// Sliding-window length for [`LayerKind::Sliding`] layers.
    pub window: Option<usize>,
    /// Score scale, `query_pre_attn_scalar^-0.5`.
    pub scale: f32,
}

impl AttnDims {
    pub fn from_config(cfg: &Gemma3Config, layer: usize) -> Result<AttnDims> {
        let kind = *cfg.layer_types.get(layer).ok_or_else(|| NpuError::Shape {
            op: "AttnDims::from_config",
            problem: format!("layer {layer} of {}", cfg.num_hidden_layers),
        })?;
        Ok(AttnDims {
            layer,
            hidden: cfg.hidden_size,
            n_heads: cfg.num_attention_heads,
            n_kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            kind,
            window: (kind == LayerKind::Sliding).then_some(cfg.sliding_window),
            scale: cfg.query_pre_attn_scalar.powf(-0.5),
        })
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Positions a query at position `pos` (0-based) sees.
    pub fn visible(&self, pos: usize) -> usize {
        let n = pos + 1;
        self.window.map_or(n, |w| n.min(w))
    }

    /// `[rows, cols]` of a projection's weight.
    pub fn shape(&self, p: Proj) -> (usize, usize) {
        match p {
            Proj::Q => (self.q_dim(), self.hidden),
            Proj::K | Proj::V => (self.kv_dim(), self.hidden),
            Proj::O => (self.hidden, self.q_dim()),
        }
    }
}

/// The storage types of a layer's four projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnQTypes {
    pub q: QType,
    pub k: QType,
    pub v: QType,
    pub o: QType,
}

impl AttnQTypes {
    /// The seed recipe (`--recipe optimal`): q/k/v I4_GROUPED, o I4_PER_CHANNEL.
    pub fn optimal() -> AttnQTypes {
        AttnQTypes {
            q: QType::I4Grouped,
            k: QType::I4Grouped,
            v: QType::I4Grouped,
            o: QType::I4PerChannel,
        }
    }

    pub fn uniform(q: QType) -> AttnQTypes {
        AttnQTypes {
            q,
            k: q,
            v: q,
            o: q,
        }
    }

    pub fn get(&self, p: Proj) -> QType {
        match p {
            Proj::Q => self.q,
            Proj::K => self.k,
            Proj::V => self.v,
            Proj::O => self.o,
        }
    }
}

/// Bytes of one compute tile's data memory a kernel uses (all buffers, both halves of every
/// double buffer), against the usable capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct L1Budget {
    pub activations: u64,
    pub weights: u64,
    pub outputs: u64,
    pub scratch: u64,
    pub total: u64,
    pub capacity: u64,
}

impl L1Budget {
    fn new(activations: u64, weights: u64, outputs: u64, scratch: u64, capacity: u64) -> L1Budget {
        L1Budget {
            activations,
            weights,
            outputs,
            scratch,
            total: activations + weights + outputs + scratch,
            capacity,
        }
    }

    pub fn fits(&self) -> bool {
        self.total <= self.capacity
    }
}

/// GEMV (one token) or GEMM (a prefill chunk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TileMode {
    Gemv,
    Gemm,
}

/// How one projection is split over the tiles.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjTiling {
    pub proj: Proj,
    pub qtype: QType,
    pub rows: usize,
    pub cols: usize,
    /// `qtype.row_bytes(cols)`: the stride of rows in the section.
    pub row_bytes: usize,
    pub tokens: usize,
    pub mode: TileMode,
    /// Tiles used (fewer than 16 only when there are fewer rows).
    pub cores: usize,
    /// Rows per tile (the last tile may get fewer).
    pub rows_per_core: usize,
    /// Rows per weight buffer (two buffers).
    pub rows_per_block: usize,
    /// Columns per tile step (`cols` for GEMV).
    pub k_tile: usize,
    /// Tokens per GEMM tile (1 for GEMV).
    pub tokens_per_tile: usize,
    pub l1: L1Budget,
    /// Bytes staged in each column's memory tile.
    pub mem_tile_bytes: u64,
}

impl ProjTiling {
    /// Rows of tile `core` (row-major over columns: tile = column * 4 + row).
    pub fn core_rows(&self, core: usize) -> Range<usize> {
        let r0 = (core * self.rows_per_core).min(self.rows);
        r0..((core + 1) * self.rows_per_core).min(self.rows)
    }

    /// Bytes of the whole weight (what streams from DRAM per use).
    pub fn weight_bytes(&self) -> u64 {
        (self.rows * self.row_bytes) as u64
    }
}

/// How attention is split over the tiles.
#[derive(Debug, Clone, PartialEq)]
pub struct AttnTiling {
    pub n_kv_heads: usize,
    pub q_per_kv: usize,
    pub head_dim: usize,
    /// Positions per K/V buffer (two buffers each for K and V).
    pub kv_chunk: usize,
    /// Query tokens per tile (1 in decode).
    pub q_tokens_per_tile: usize,
    pub l1: L1Budget,
    pub mem_tile_bytes: u64,
    /// Tiles available.
    pub cores: usize,
}

impl AttnTiling {
    /// Partitions per KV head: the tiles left once every head has one.
    pub fn parts_per_head(&self) -> usize {
        (self.cores / self.n_kv_heads).max(1)
    }

    /// How `visible` positions of one head are cut into chunks and per-tile partitions; pass
    /// it to [`FunctionalExecutor::attention_bf16`](crate::FunctionalExecutor::attention_bf16).
    pub fn partition(&self, visible: usize) -> AttnPartition {
        let chunks = visible.max(1).div_ceil(self.kv_chunk);
        AttnPartition {
            kv_chunk: self.kv_chunk,
            chunks_per_partition: chunks.div_ceil(self.parts_per_head()),
        }
    }

    /// Tiles busy for `visible` positions.
    pub fn cores_used(&self, visible: usize) -> usize {
        let p = self.partition(visible);
        let parts = visible
            .max(1)
            .div_ceil(p.kv_chunk)
            .div_ceil(p.chunks_per_partition);
        (self.n_kv_heads * parts).min(self.cores)
    }
}

/// Where a tensor's bytes are in the `.mixq` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorLocation {
    /// `npu.bank0`..`npu.bank3`, or where placement spilled it.
    pub section: String,
    /// Offset inside the section.
    pub offset: u64,
    pub length: u64,
}

impl From<&Placement> for TensorLocation {
    fn from(p: &Placement) -> TensorLocation {
        TensorLocation {
            section: p.section.clone(),
            offset: p.offset,
            length: p.length,
        }
    }
}

/// One shim DMA read: a contiguous byte range of a section into one tile's row range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmaTransfer {
    pub proj: Proj,
    /// Destination tile (column = core / 4, row = core % 4).
    pub core: usize,
    pub rows: Range<usize>,
    pub section: String,
    pub offset: u64,
    pub length: u64,
    /// False when placement spilled the tensor out of the NPU banks: still readable (the NPU
    /// reads host DRAM through the IOMMU), but outside the memory budgeted for the NPU.
    pub from_npu_bank: bool,
}

/// The plan of one layer's attention block.
#[derive(Debug, Clone, PartialEq)]
pub struct TilingPlan {
    pub dims: AttnDims,
    pub tokens: usize,
    /// In [`Proj::ALL`] order.
    pub projections: Vec<ProjTiling>,
    pub attention: AttnTiling,
    /// The layer's four weights, bytes.
    pub layer_weight_bytes: u64,
    /// The used array's on-chip data memory, bytes.
    pub on_chip_bytes: u64,
    /// What does not fit on chip and therefore streams (plain sentences).
    pub not_fitting: Vec<String>,
}

const MIB: f64 = 1024.0 * 1024.0;

impl TilingPlan {
    /// Plans layer `dims.layer` for `tokens` tokens per step (1 = decode, more = a prefill
    /// chunk). Errors: a weight type the W4ABF16 kernels cannot read, or a buffer set that
    /// does not fit a tile's data memory even at the smallest tile.
    pub fn for_layer(
        spec: &NpuSpec,
        dims: &AttnDims,
        qtypes: &AttnQTypes,
        tokens: usize,
    ) -> Result<TilingPlan> {
        if tokens == 0 {
            return Err(NpuError::Shape {
                op: "TilingPlan::for_layer",
                problem: "0 tokens".into(),
            });
        }
        let mut projections = Vec::with_capacity(4);
        for p in Proj::ALL {
            projections.push(plan_proj(spec, dims, p, qtypes.get(p), tokens)?);
        }
        let attention = plan_attention(spec, dims, tokens)?;
        let layer_weight_bytes: u64 = projections.iter().map(|p| p.weight_bytes()).sum();
        let on_chip_bytes = spec.on_chip_bytes();
        let mut not_fitting = Vec::new();
        if layer_weight_bytes > on_chip_bytes {
            not_fitting.push(format!(
                "layer {} attention weights ({:.2} MiB) exceed the array's {:.2} MiB on-chip memory: they stream from DRAM (npu.bank*) every step",
                dims.layer,
                layer_weight_bytes as f64 / MIB,
                on_chip_bytes as f64 / MIB
            ));
        } else {
            not_fitting.push(format!(
                "layer {} attention weights ({:.2} MiB) would fit the {:.2} MiB on chip, but not with the other layers' weights: they stream from DRAM every step",
                dims.layer,
                layer_weight_bytes as f64 / MIB,
                on_chip_bytes as f64 / MIB
            ));
        }
        not_fitting.push(format!(
            "the KV cache ({} bytes per position per layer in bf16) streams in chunks of {} positions",
            dims.kv_dim() * 4,
            attention.kv_chunk
        ));
        if tokens > 1 {
            let x = (tokens * dims.hidden.max(dims.q_dim()) * 2) as u64;
            if x > spec.core_usable_bytes() {
                not_fitting.push(format!(
                    "the chunk's activations ({tokens} x {} bf16 = {x} bytes) exceed a tile's data memory: GEMM tiles of {} tokens x {} columns",
                    dims.hidden.max(dims.q_dim()),
                    projections[0].tokens_per_tile,
                    projections[0].k_tile
                ));
            }
        }
        Ok(TilingPlan {
            dims: dims.clone(),
            tokens,
            projections,
            attention,
            layer_weight_bytes,
            on_chip_bytes,
            not_fitting,
        })
    }

    pub fn proj(&self, p: Proj) -> &ProjTiling {
        &self.projections[Proj::ALL.iter().position(|&q| q == p).expect("all four")]
    }

    /// The shim DMA reads that feed the projections from the file: for each projection and
    /// tile, the contiguous bytes of its rows. `locations` gives each projection's place in
    /// the `.mixq` (from the index / placement plan); a length that disagrees with the
    /// projection's shape and type is an error.
    pub fn dma_plan(&self, locations: &[(Proj, TensorLocation)]) -> Result<Vec<DmaTransfer>> {
        let mut out = Vec::new();
        for t in &self.projections {
            let name = t.proj.hf_name(self.dims.layer);
            let loc = locations
                .iter()
                .find(|(p, _)| *p == t.proj)
                .map(|(_, l)| l)
                .ok_or_else(|| NpuError::Placement {
                    name: name.clone(),
                    problem: "no location given".into(),
                })?;
            if loc.length != t.weight_bytes() {
                return Err(NpuError::Placement {
                    name,
                    problem: format!(
                        "{} bytes in `{}`, but [{}, {}] {} is {} bytes",
                        loc.length,
                        loc.section,
                        t.rows,
                        t.cols,
                        t.qtype,
                        t.weight_bytes()
                    ),
                });
            }
            for core in 0..t.cores {
                let rows = t.core_rows(core);
                if rows.is_empty() {
                    continue;
                }
                out.push(DmaTransfer {
                    proj: t.proj,
                    core,
                    offset: loc.offset + (rows.start * t.row_bytes) as u64,
                    length: (rows.len() * t.row_bytes) as u64,
                    rows,
                    section: loc.section.clone(),
                    from_npu_bank: loc.section.starts_with("npu.bank"),
                });
            }
        }
        Ok(out)
    }
}

impl std::fmt::Display for TilingPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = &self.dims;
        writeln!(
            f,
            "layer {} ({:?}), {} token(s): hidden {}, {} heads / {} KV heads x {}",
            d.layer, d.kind, self.tokens, d.hidden, d.n_heads, d.n_kv_heads, d.head_dim
        )?;
        for t in &self.projections {
            writeln!(
                f,
                "  {:6} [{:5}, {:5}] {:14} {:?}: {:2} tiles x {:4} rows, blocks of {:2} rows x {:4} cols x {:2} tok; L1 {:5}/{} B (x {}, W {}, y {}), mem tile {} B",
                t.proj.name(), t.rows, t.cols, t.qtype.name(), t.mode, t.cores, t.rows_per_core,
                t.rows_per_block, t.k_tile, t.tokens_per_tile, t.l1.total, t.l1.capacity,
                t.l1.activations, t.l1.weights, t.l1.outputs, t.mem_tile_bytes
            )?;
        }
        let a = &self.attention;
        writeln!(
            f,
            "  attention: {} KV heads x {} q heads, {} partitions per head, KV chunks of {} positions, {} query token(s) per tile; L1 {}/{} B, mem tile {} B",
            a.n_kv_heads, a.q_per_kv, a.parts_per_head(), a.kv_chunk, a.q_tokens_per_tile,
            a.l1.total, a.l1.capacity, a.mem_tile_bytes
        )?;
        for n in &self.not_fitting {
            writeln!(f, "  does not fit: {n}")?;
        }
        Ok(())
    }
}

fn plan_proj(
    spec: &NpuSpec,
    dims: &AttnDims,
    p: Proj,
    qtype: QType,
    tokens: usize,
) -> Result<ProjTiling> {
    crate::exec::check_w4("TilingPlan::for_layer", qtype)?;
    let (rows, cols) = dims.shape(p);
    let row_bytes = qtype.row_bytes(cols)?;
    let n = spec.cores() as usize;
    let rows_per_core = rows.div_ceil(n);
    let cores = rows.div_ceil(rows_per_core);
    let cap = spec.core_usable_bytes();
    let per_col = spec.compute_rows as u64;
    let mk = |rows_per_block: usize, k_tile: usize, tokens_per_tile: usize, mode: TileMode| {
        // weight bytes of a [rows_per_block, k_tile] tile: codes + params (a whole row's
        // for I4_PER_CHANNEL)
        let wtile = match mode {
            TileMode::Gemv => rows_per_block * row_bytes,
            TileMode::Gemm => rows_per_block * (k_tile / 2 + qtype.row_param_bytes(k_tile)),
        } as u64;
        let x = (tokens_per_tile * k_tile * 2) as u64;
        let (x_l1, x_mem) = match mode {
            TileMode::Gemv => (x, x),         // resident, one copy per column
            TileMode::Gemm => (2 * x, 2 * x), // double-buffered
        };
        let y = (2 * rows_per_block * tokens_per_tile * 4) as u64;
        let l1 = L1Budget::new(x_l1, 2 * wtile, y, 0, cap);
        let mem = x_mem + 2 * per_col * wtile;
        ProjTiling {
            proj: p,
            qtype,
            rows,
            cols,
            row_bytes,
            tokens,
            mode,
            cores,
            rows_per_core,
            rows_per_block,
            k_tile,
            tokens_per_tile,
            l1,
            mem_tile_bytes: mem,
        }
    };
    let fits = |t: &ProjTiling| t.l1.fits() && t.mem_tile_bytes <= spec.mem_tile_bytes;
    if tokens == 1 {
        for r in (1..=rows_per_core.min(32)).rev() {
            let t = mk(r, cols, 1, TileMode::Gemv);
            if fits(&t) {
                return Ok(t);
            }
        }
        let t = mk(1, cols, 1, TileMode::Gemv);
        return Err(NpuError::DoesNotFit {
            layer: dims.layer,
            what: format!("{} GEMV (x of {cols} bf16 + two rows)", p.name()),
            memory: "compute-tile data memory",
            capacity: cap,
            need: t.l1.total,
        });
    }
    let mut tt = tokens.min(64);
    loop {
        for mt in [64usize, 32, 16, 8, 4, 2, 1] {
            if mt > rows_per_core.max(1) && mt > 1 {
                continue;
            }
            for kt in [512usize, 256, 128, 64] {
                if kt > cols {
                    continue;
                }
                let t = mk(mt, kt, tt, TileMode::Gemm);
                if fits(&t) {
                    return Ok(t);
                }
            }
        }
        if tt == 1 {
            break;
        }
        tt /= 2;
    }
    let t = mk(1, 64, 1, TileMode::Gemm);
    Err(NpuError::DoesNotFit {
        layer: dims.layer,
        what: format!("{} GEMM tile", p.name()),
        memory: "compute-tile data memory",
        capacity: cap,
        need: t.l1.total,
    })
}

fn plan_attention(spec: &NpuSpec, dims: &AttnDims, tokens: usize) -> Result<AttnTiling> {
    let cap = spec.core_usable_bytes();
    let g = dims.n_heads / dims.n_kv_heads;
    let hd = dims.head_dim;
    let mk = |tq: usize, c: usize| {
        let rows = (tq * g) as u64; // query rows on the tile
        let q = rows * hd as u64 * 2;
        let kv = 2 * 2 * (c * hd * 2) as u64; // K and V, two buffers each
        let scores = rows * c as u64 * (4 + 2); // fp32 scores + bf16 p
        let acc = rows * (hd as u64 * 4 + 8); // fp32 a + (m, l)
        let l1 = L1Budget::new(q, kv, acc, scores, cap);
        AttnTiling {
            n_kv_heads: dims.n_kv_heads,
            q_per_kv: g,
            head_dim: hd,
            kv_chunk: c,
            q_tokens_per_tile: tq,
            l1,
            mem_tile_bytes: spec.compute_rows as u64 * kv,
            cores: spec.cores() as usize,
        }
    };
    let mut tq = tokens.min(16);
    loop {
        for c in [256usize, 128, 64, 32, 16] {
            let t = mk(tq, c);
            if t.l1.fits() && t.mem_tile_bytes <= spec.mem_tile_bytes {
                return Ok(t);
            }
        }
        if tq == 1 {
            break;
        }
        tq /= 2;
    }
    Err(NpuError::DoesNotFit {
        layer: dims.layer,
        what: format!("attention ({g} query heads x {hd}, 16-position KV chunks)"),
        memory: "compute-tile data memory",
        capacity: cap,
        need: mk(1, 16).l1.total,
    })
}

#[cfg(test)]
mod tests;
