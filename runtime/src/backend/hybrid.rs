//! The hybrid scheduler: attention on the NPU engine, everything else on a device backend `G`
//! (the CPU backend for `--device npu+cpu`, the Vulkan backend for `npu+vulkan`).
//!
//! **The NPU here is the engine model of `mixq-npu`, run on the host CPU.** No XDNA hardware
//! exists on any machine this project reaches; the NPU's share is computed with the NPU's
//! arithmetic (W4ABF16 projections, bf16 attention: `npu/README.md`) and its time is a
//! projection of the timing model, never a measurement.
//!
//! # What runs where (the seed's pipeline)
//!
//! | Work | Where |
//! | --- | --- |
//! | q/k/v/o projections whose tensors the file put in `npu.bank*` with an int4 type | NPU engine (W4ABF16) |
//! | QK-norm and RoPE of q/k produced by the NPU | NPU side (host f32, as the CPU backend; rounded to bf16 at attention input) |
//! | attention: QK^T, softmax, PV over the bf16 KV cache | NPU engine, chunked and merged as the tiling plan says |
//! | embedding, residual-stream norms, FFN, residual adds, lm_head, top-k | `G` |
//! | sampling | host (generate.rs reads the logits back) |
//!
//! Projections the file did not place in an NPU bank (an HF checkpoint, a `gpu`-profile file)
//! run on `G`; attention itself always runs on the NPU engine.
//!
//! Residual-stream norms run on `G`, not on the CPU as the seed draws it: with `G` = CPU they
//! are on the CPU anyway; with `G` = GPU the residual stream lives on the GPU, and a CPU norm
//! would add a download and an upload per norm (four per layer) to a chain that already pays
//! one hand-off in each direction per layer.
//!
//! # Data follows residency
//!
//! A [`HybridBuf`] holds `G`'s buffer and a host copy, and knows which is current. An NPU op
//! reads the host copy (downloading from `G` only if `G` wrote last) and writes the host copy;
//! a `G` op uploads a host-only buffer first. So one layer on `npu+vulkan` costs one download
//! (the normed input of q/k/v) and one upload (o_proj's output), and with `G` = CPU both are
//! memcpys.
//!
//! # Why single-stream decode is a chain
//!
//! Layer l's attention needs layer l's normed input, which needs layer l-1's FFN output, which
//! needs layer l-1's attention: every op of a decode step depends on the one before, so the
//! NPU and the GPU take turns and never overlap. Overlap needs two independent work items:
//! chunks of a prefill (chunk c's attention of layer l can run while chunk c-1's FFN of layer
//! l runs; the KV cache orders chunks per layer) or concurrent sequences. On this machine the
//! "NPU" and `G` are the same CPU cores, so running them concurrently would measure nothing;
//! [`projection`] computes both schedules from the timing model instead.

pub mod projection;
pub mod stats;
pub mod store;

use super::{AttnParams, Backend, RopeParams};
use crate::weights::WeightSource;
use anyhow::{anyhow, bail, Result};
use mixq_format::quant::hadamard::apply_hadamard_with_signs;
use mixq_format::quant::{dequantize_row, hadamard_signs, QType, Transform};
use mixq_format::{Gemma3Config, LayerKind, SharedBytes};
use mixq_npu::bf16::{bf16_bits, bf16_from_bits};
use mixq_npu::{AttnDims, AttnQTypes, FunctionalExecutor, NpuSpec, TilingPlan};
use rayon::prelude::*;
use stats::{Stats, Timer, WeightTally};
use std::cell::{Cell, Ref, RefCell, RefMut};
use std::sync::Mutex;

/// Which copy of a [`HybridBuf`] is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Residency {
    /// Only `G`'s buffer (the host copy is stale).
    Dev,
    /// Both agree on the first `usize` values.
    Both(usize),
    /// The host copy's first `usize` values are newer than `G`'s buffer.
    Host(usize),
}

/// An activation buffer: `G`'s buffer plus the host copy the NPU engine reads and writes.
pub struct HybridBuf<B> {
    dev: RefCell<B>,
    host: RefCell<Vec<f32>>,
    state: Cell<Residency>,
}

/// An int4 tensor of an `npu.bank*` section, read by the NPU engine in place.
pub struct NpuWeight {
    pub qtype: QType,
    pub rows: usize,
    pub cols: usize,
    bytes: SharedBytes,
    /// Signs and block of the Hadamard rotation the input undergoes (rotated tensors only).
    rotation: Option<(Vec<f32>, usize)>,
}

pub enum HybridWeight<W> {
    Npu(NpuWeight),
    /// A `G` weight; `host` holds 1-D tensors (norm weights) decoded for NPU-side QK-norm.
    Dev {
        w: W,
        host: Option<Vec<f32>>,
    },
}

/// One layer's KV cache, host-side in bf16 as the NPU engine reads it (a ring of `window`
/// positions on sliding layers, the CPU backend's semantics).
pub struct HybridKv {
    kv_dim: usize,
    window: Option<usize>,
    len: usize,
    k: Vec<u16>,
    v: Vec<u16>,
}

impl HybridKv {
    fn slot(&self, pos: usize) -> usize {
        match self.window {
            Some(w) => pos % w,
            None => pos,
        }
    }
}

/// The scheduler: a [`Backend`] that sends attention to the NPU engine and the rest to `G`.
pub struct HybridBackend<G: Backend> {
    pub g: G,
    name: &'static str,
    config: Gemma3Config,
    spec: NpuSpec,
    exec: FunctionalExecutor,
    /// The attention dimensions of one sliding and one full layer (for the tiling plan).
    dims_sliding: Option<AttnDims>,
    dims_full: Option<AttnDims>,
    pub stats: Stats,
    tally: Mutex<WeightTally>,
}

impl<G: Backend> HybridBackend<G> {
    /// `name` is how `G` is called in reports (`cpu`, `vulkan`); `config` is the model's (the
    /// tiling plan and the timing projection need its shape).
    pub fn new(g: G, name: &'static str, config: &Gemma3Config) -> Result<Self> {
        let dims = |kind| -> Result<Option<AttnDims>> {
            match config.layer_types.iter().position(|&k| k == kind) {
                Some(l) => Ok(Some(AttnDims::from_config(config, l)?)),
                None => Ok(None),
            }
        };
        if config.attn_logit_softcapping.is_some() {
            bail!("the NPU engine's attention has no logit soft-capping (Gemma 3 uses none)");
        }
        Ok(HybridBackend {
            g,
            name,
            config: config.clone(),
            spec: NpuSpec::phoenix(),
            exec: FunctionalExecutor::new(),
            dims_sliding: dims(LayerKind::Sliding)?,
            dims_full: dims(LayerKind::Full)?,
            stats: Stats::default(),
            tally: Mutex::new(WeightTally::default()),
        })
    }

    pub fn config(&self) -> &Gemma3Config {
        &self.config
    }

    /// What was loaded where (bytes by class and device), for reports and the projection.
    pub fn tally(&self) -> WeightTally {
        self.tally.lock().unwrap().clone()
    }

    /// The host copy of `buf`'s first `len` values, downloading from `G` if `G` wrote last.
    fn host_view<'a>(&self, buf: &'a HybridBuf<G::Buf>, len: usize) -> Ref<'a, Vec<f32>> {
        let fresh = match buf.state.get() {
            Residency::Dev => false,
            Residency::Both(n) | Residency::Host(n) => n >= len,
        };
        if !fresh {
            if let Residency::Host(_) = buf.state.get() {
                // never happens in the model's op order; keep the newer values anyway
                self.sync_to_dev(buf);
            }
            let t = Timer::start();
            let data = self.g.download(&buf.dev.borrow(), len);
            self.stats.download(len, t);
            *buf.host.borrow_mut() = data;
            buf.state.set(Residency::Both(len));
        }
        buf.host.borrow()
    }

    /// Uploads a host-only buffer so that `G` sees its current values.
    fn sync_to_dev(&self, buf: &HybridBuf<G::Buf>) {
        if let Residency::Host(n) = buf.state.get() {
            let t = Timer::start();
            self.g
                .upload(&buf.host.borrow()[..n], &mut buf.dev.borrow_mut());
            self.stats.upload(n, t);
            buf.state.set(Residency::Both(n));
        }
    }

    /// `G`'s buffer, current, for reading.
    fn dev<'a>(&self, buf: &'a HybridBuf<G::Buf>) -> Ref<'a, G::Buf> {
        self.sync_to_dev(buf);
        buf.dev.borrow()
    }

    /// `G`'s buffer, current, for writing: afterwards only `G`'s copy is current.
    fn dev_mut<'a>(&self, buf: &'a HybridBuf<G::Buf>) -> RefMut<'a, G::Buf> {
        self.sync_to_dev(buf);
        buf.state.set(Residency::Dev);
        buf.dev.borrow_mut()
    }

    /// Stores an NPU result in the host copy (uploaded when `G` next needs it).
    fn set_host(&self, buf: &HybridBuf<G::Buf>, data: Vec<f32>) {
        let n = data.len();
        let mut h = buf.host.borrow_mut();
        if h.len() < n {
            h.resize(n, 0.0);
        }
        h[..n].copy_from_slice(&data);
        buf.state.set(Residency::Host(n));
    }

    fn attn_dims(&self, window: Option<usize>) -> &AttnDims {
        let d = if window.is_some() {
            self.dims_sliding.as_ref()
        } else {
            self.dims_full.as_ref()
        };
        d.expect("attention on a layer kind the config has")
    }

    /// y = x W^T on the NPU engine (W4ABF16), rows split across host threads (every output row
    /// is computed by one "tile" exactly as the executor defines it, so the split changes
    /// nothing).
    fn npu_matmul(&self, w: &NpuWeight, x: &[f32], n: usize) -> Vec<f32> {
        let mut x = x[..n * w.cols].to_vec();
        if let Some((signs, block)) = &w.rotation {
            for row in x.chunks_exact_mut(w.cols) {
                apply_hadamard_with_signs(row, signs, *block);
            }
        }
        let rb = w.qtype.row_bytes(w.cols).expect("validated at load");
        const ROWS: usize = 64;
        let parts: Vec<Vec<f32>> = w
            .bytes
            .par_chunks(ROWS * rb)
            .map(|chunk| {
                let rows = chunk.len() / rb;
                self.exec
                    .matmul_w4abf16(w.qtype, chunk, rows, w.cols, &x, n)
                    .expect("shapes validated at load")
            })
            .collect();
        let mut y = vec![0f32; n * w.rows];
        for (p, part) in parts.iter().enumerate() {
            let rows = part.len() / n;
            for t in 0..n {
                y[t * w.rows + p * ROWS..t * w.rows + p * ROWS + rows]
                    .copy_from_slice(&part[t * rows..(t + 1) * rows]);
            }
        }
        y
    }
}

/// RMSNorm `x * (1 + w)` over rows of `w.len()`, f64 sums (the CPU backend's arithmetic).
fn host_rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    x.par_chunks_mut(d).for_each(|row| {
        let ms = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / d as f64;
        let inv = (1.0 / (ms + eps as f64).sqrt()) as f32;
        for (v, &g) in row.iter_mut().zip(w) {
            *v = *v * inv * (1.0 + g);
        }
    });
}

fn is_attn_proj(name: &str) -> bool {
    ["q_proj", "k_proj", "v_proj", "o_proj"]
        .iter()
        .any(|p| name.ends_with(&format!("self_attn.{p}.weight")))
}

impl<G: Backend> Backend for HybridBackend<G> {
    type Buf = HybridBuf<G::Buf>;
    type Weight = HybridWeight<G::Weight>;
    type Kv = HybridKv;

    fn describe(&self) -> String {
        format!(
            "npu+{}: attention on the Phoenix NPU engine model (emulated on the host CPU; no XDNA hardware), \
             the rest on {}",
            self.name,
            self.g.describe()
        )
    }

    fn load_weight(&self, w: &WeightSource) -> Result<Self::Weight> {
        let on_npu = w
            .section
            .as_deref()
            .is_some_and(|s| s.starts_with("npu.bank"))
            && mixq_npu::exec::W4_QTYPES.contains(&w.qtype);
        self.tally.lock().unwrap().add(w, on_npu);
        if on_npu {
            let want = w.qtype.tensor_bytes(w.rows, w.cols)?;
            if w.bytes.len() != want {
                bail!(
                    "tensor `{}`: {} bytes, but {}x{} {} needs {want}",
                    w.name,
                    w.bytes.len(),
                    w.rows,
                    w.cols,
                    w.qtype.name()
                );
            }
            let rotation = match w.transform {
                Transform::None => None,
                Transform::BlockHadamard { block, seed } => {
                    w.transform
                        .check(w.cols)
                        .map_err(|e| anyhow!("tensor `{}`: {e}", w.name))?;
                    Some((hadamard_signs(w.cols, seed), block as usize))
                }
            };
            return Ok(HybridWeight::Npu(NpuWeight {
                qtype: w.qtype,
                rows: w.rows,
                cols: w.cols,
                bytes: w.bytes.clone(),
                rotation,
            }));
        }
        if is_attn_proj(&w.name)
            && w.section
                .as_deref()
                .is_some_and(|s| s.starts_with("npu.bank"))
        {
            bail!(
                "tensor `{}` is in {} as {}: the NPU engine reads int4 (I4_GROUPED, I4_GROUPED32, I4_PER_CHANNEL) only",
                w.name,
                w.section.as_deref().unwrap_or("?"),
                w.qtype.name()
            );
        }
        let host = if w.rows == 1 {
            let mut v = vec![0f32; w.cols];
            dequantize_row(w.qtype, &w.bytes, &mut v)?;
            Some(v)
        } else {
            None
        };
        Ok(HybridWeight::Dev {
            w: self.g.load_weight(w)?,
            host,
        })
    }

    fn alloc(&self, len: usize) -> Self::Buf {
        HybridBuf {
            dev: RefCell::new(self.g.alloc(len)),
            host: RefCell::new(Vec::new()),
            state: Cell::new(Residency::Dev),
        }
    }

    fn upload(&self, data: &[f32], buf: &mut Self::Buf) {
        self.g.upload(data, &mut self.dev_mut(buf));
    }

    fn download(&self, buf: &Self::Buf, len: usize) -> Vec<f32> {
        match buf.state.get() {
            Residency::Both(n) | Residency::Host(n) if n >= len => {
                buf.host.borrow()[..len].to_vec()
            }
            _ => {
                let t = Timer::start();
                let v = self.g.download(&self.dev(buf), len);
                self.stats.dev(t);
                v
            }
        }
    }

    fn new_kv(&self, kv_dim: usize, window: Option<usize>) -> HybridKv {
        let slots = window.unwrap_or(0);
        HybridKv {
            kv_dim,
            window,
            len: 0,
            k: vec![0; slots * kv_dim],
            v: vec![0; slots * kv_dim],
        }
    }

    fn truncate_kv(&self, kv: &mut HybridKv, len: usize) {
        kv.len = kv.len.min(len);
    }

    fn embed(&self, table: &Self::Weight, ids: &[u32], scale: f32, out: &mut Self::Buf) {
        let t = Timer::start();
        self.g
            .embed(dev_w(table), ids, scale, &mut self.dev_mut(out));
        self.stats.dev(t);
    }

    fn rms_norm(&self, x: &mut Self::Buf, w: &Self::Weight, rows: usize, eps: f32) {
        // QK-norm of q/k the NPU produced stays on the NPU side (timing model phase
        // `qk_norm_rope`); every other norm runs where the residual stream lives, on G.
        if let (Residency::Host(n), HybridWeight::Dev { host: Some(wv), .. }) = (x.state.get(), w) {
            if n >= rows * wv.len() {
                let t = Timer::start();
                host_rms_norm(&mut x.host.borrow_mut()[..rows * wv.len()], wv, eps);
                self.stats.npu_elementwise(t);
                return;
            }
        }
        let t = Timer::start();
        self.g.rms_norm(&mut self.dev_mut(x), dev_w(w), rows, eps);
        self.stats.dev(t);
    }

    fn matmul(&self, w: &Self::Weight, x: &Self::Buf, n: usize, out: &mut Self::Buf) {
        match w {
            HybridWeight::Npu(nw) => {
                let xs = self.host_view(x, n * nw.cols);
                let t = Timer::start();
                let y = self.npu_matmul(nw, &xs, n);
                self.stats.npu_matmul(t, nw, n);
                drop(xs);
                self.set_host(out, y);
            }
            HybridWeight::Dev { w, .. } => {
                let t = Timer::start();
                let xd = self.dev(x);
                self.g.matmul(w, &xd, n, &mut self.dev_mut(out));
                self.stats.dev(t);
            }
        }
    }

    fn rope(&self, x: &mut Self::Buf, n: usize, p: RopeParams) {
        let len = n * p.heads * p.head_dim;
        if let Residency::Host(h) = x.state.get() {
            if h >= len {
                let t = Timer::start();
                super::cpu::rope(&mut x.host.borrow_mut()[..len], p);
                self.stats.npu_elementwise(t);
                return;
            }
        }
        let t = Timer::start();
        self.g.rope(&mut self.dev_mut(x), n, p);
        self.stats.dev(t);
    }

    fn attention(
        &self,
        kv: &mut HybridKv,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        out: &mut Self::Buf,
        p: AttnParams,
    ) {
        let d = p.head_dim;
        let kv_dim = p.kv_heads * d;
        let q_dim = p.heads * d;
        assert!(p.softcap.is_none(), "NPU attention: no logit soft-capping");
        assert_eq!(kv.kv_dim, kv_dim, "KV cache width");
        assert_eq!(
            kv.len, p.pos0,
            "attention batch must start where the cache ends"
        );
        let (qh, kh, vh) = (
            self.host_view(q, p.n * q_dim),
            self.host_view(k, p.n * kv_dim),
            self.host_view(v, p.n * kv_dim),
        );
        let t = Timer::start();
        let plan = TilingPlan::for_layer(
            &self.spec,
            self.attn_dims(p.window),
            &AttnQTypes::optimal(),
            p.n,
        )
        .expect("every Gemma 3 shape has an attention plan");
        // The positions any query of the batch sees, oldest first, as one linear K and V:
        // cached positions from the bf16 ring, the batch's own from k/v (a ring smaller than
        // the batch would otherwise have overwritten keys an earlier query needs).
        let first_of = |pos: usize| match p.window {
            Some(w) => (pos + 1).saturating_sub(w),
            None => 0,
        };
        let lo = first_of(p.pos0);
        let hi = p.pos0 + p.n;
        let mut kl = Vec::with_capacity((hi - lo) * kv_dim);
        let mut vl = Vec::with_capacity((hi - lo) * kv_dim);
        for pos in lo..p.pos0 {
            let s = kv.slot(pos) * kv_dim;
            kl.extend(kv.k[s..s + kv_dim].iter().map(|&b| bf16_from_bits(b)));
            vl.extend(kv.v[s..s + kv_dim].iter().map(|&b| bf16_from_bits(b)));
        }
        kl.extend_from_slice(&kh[..p.n * kv_dim]);
        vl.extend_from_slice(&vh[..p.n * kv_dim]);
        let qs: &[f32] = &qh;
        let (kl, vl) = (&kl[..], &vl[..]);
        let rows: Vec<Vec<f32>> = (0..p.n)
            .into_par_iter()
            .map(|t| {
                let pos = p.pos0 + t;
                let (a, b) = (first_of(pos) - lo, pos + 1 - lo);
                self.exec
                    .attention_bf16(
                        &qs[t * q_dim..(t + 1) * q_dim],
                        &kl[a * kv_dim..b * kv_dim],
                        &vl[a * kv_dim..b * kv_dim],
                        b - a,
                        p.heads,
                        p.kv_heads,
                        d,
                        p.scale,
                        plan.attention.partition(b - a),
                    )
                    .expect("attention shapes")
            })
            .collect();
        // Append this batch in bf16; a ring keeps only its last `window` positions.
        for t in 0..p.n {
            let pos = p.pos0 + t;
            if kv.window.is_some_and(|w| hi - pos > w) {
                continue;
            }
            let s = kv.slot(pos) * kv_dim;
            if kv.window.is_none() && kv.k.len() < s + kv_dim {
                kv.k.resize(s + kv_dim, 0);
                kv.v.resize(s + kv_dim, 0);
            }
            for (dst, &x) in kv.k[s..s + kv_dim].iter_mut().zip(&kh[t * kv_dim..]) {
                *dst = bf16_bits(x);
            }
            for (dst, &x) in kv.v[s..s + kv_dim].iter_mut().zip(&vh[t * kv_dim..]) {
                *dst = bf16_bits(x);
            }
        }
        kv.len = hi;
        self.stats
            .npu_attention(t, p.n, hi, self.config.num_hidden_layers);
        drop((qh, kh, vh));
        self.set_host(out, rows.concat());
    }

    fn gelu_mul(&self, gate: &mut Self::Buf, up: &Self::Buf, len: usize) {
        let t = Timer::start();
        let u = self.dev(up);
        self.g.gelu_mul(&mut self.dev_mut(gate), &u, len);
        self.stats.dev(t);
    }

    fn add(&self, x: &mut Self::Buf, y: &Self::Buf, len: usize) {
        let t = Timer::start();
        let yd = self.dev(y);
        self.g.add(&mut self.dev_mut(x), &yd, len);
        self.stats.dev(t);
    }

    fn copy(&self, src: &Self::Buf, src_offset: usize, dst: &mut Self::Buf, len: usize) {
        let t = Timer::start();
        let s = self.dev(src);
        self.g.copy(&s, src_offset, &mut self.dev_mut(dst), len);
        self.stats.dev(t);
    }

    fn top_k(&self, x: &Self::Buf, len: usize, k: usize) -> Vec<(u32, f32)> {
        let t = Timer::start();
        let r = self.g.top_k(&self.dev(x), len, k);
        self.stats.dev(t);
        r
    }

    fn report(&self) -> Option<String> {
        Some(stats::report(self))
    }

    fn reset_report(&self) {
        self.stats.reset();
        self.g.reset_report();
    }
}

/// `store` on `npu+cpu`: what the quality report scores for its NPU figures
/// (`QualityReport::end_to_end_npu`: pass this model as the quantized side of
/// `mixq_quantizer::eval::evaluate_models`).
pub fn load_npu_cpu(
    store: &dyn crate::weights::WeightStore,
    threads: Option<usize>,
) -> Result<crate::Gemma3<HybridBackend<super::cpu::CpuBackend>>> {
    let be = HybridBackend::new(super::cpu::CpuBackend::new(threads)?, "cpu", store.config())?;
    crate::Gemma3::load(store, be)
}

fn dev_w<W>(w: &HybridWeight<W>) -> &W {
    match w {
        HybridWeight::Dev { w, .. } => w,
        HybridWeight::Npu(_) => panic!("an NPU-bank tensor used outside a projection"),
    }
}

#[cfg(test)]
mod tests;
