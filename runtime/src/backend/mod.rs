//! The few operations Gemma 3 needs, as a trait every device implements.
//!
//! This is deliberately not a graph compiler: the model in `model/gemma3.rs` calls these ops in
//! order, eagerly. A GPU backend records them into its command buffer and only waits when the
//! host reads a buffer back ([`Backend::download`] / [`Backend::top_k`]), so one decode step is
//! one submission. Activations are f32 everywhere: Gemma 3's residual stream overflows f16.
//!
//! Shapes: a `Buf` holding `n` rows of width `d` is row-major `[n, d]`. Weights are `[rows, cols]`
//! row-major (HF `[out_features, in_features]`) and `matmul` computes `out[n, rows] = x[n, cols] · Wᵀ`.

pub mod cpu;
pub mod hybrid;
pub mod vulkan;

use crate::weights::WeightSource;
use anyhow::Result;

/// Rotary embedding of one batch: token `i` of the batch sits at position `pos0 + i`.
#[derive(Debug, Clone, Copy)]
pub struct RopeParams {
    pub heads: usize,
    pub head_dim: usize,
    pub pos0: usize,
    pub base: f32,
    /// Linear scaling: positions are divided by this factor (1.0 = none).
    pub scale: f32,
}

/// Causal attention of `n` new tokens at positions `pos0..pos0 + n` over the cache plus themselves.
#[derive(Debug, Clone, Copy)]
pub struct AttnParams {
    pub n: usize,
    pub pos0: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Sliding-window layers: a query at position p sees keys at p - window + 1 ..= p.
    pub window: Option<usize>,
    /// Multiplier of q·k (Gemma 3: query_pre_attn_scalar^-0.5).
    pub scale: f32,
    pub softcap: Option<f32>,
}

pub trait Backend: Send + Sync {
    /// An f32 activation buffer resident on the device.
    type Buf;
    /// A weight bound to the device (quantized or float; the backend picks its kernel).
    type Weight;
    /// One layer's KV cache.
    type Kv;

    /// One line for logs and `devices`.
    fn describe(&self) -> String;

    fn load_weight(&self, w: &WeightSource) -> Result<Self::Weight>;
    fn alloc(&self, len: usize) -> Self::Buf;
    fn upload(&self, data: &[f32], buf: &mut Self::Buf);
    /// Reads the first `len` values back to the host (a synchronisation point).
    fn download(&self, buf: &Self::Buf, len: usize) -> Vec<f32>;
    /// A cache for `kv_dim` values per position per tensor (K and V). `window` makes it a ring
    /// buffer of that many positions, so memory stays bounded at any context length.
    fn new_kv(&self, kv_dim: usize, window: Option<usize>) -> Self::Kv;
    /// Forgets positions `>= len` (chat rewinds to a shared prefix).
    fn truncate_kv(&self, kv: &mut Self::Kv, len: usize);

    /// `out[i] = table[ids[i]] * scale`.
    fn embed(&self, table: &Self::Weight, ids: &[u32], scale: f32, out: &mut Self::Buf);
    /// In place over `rows` rows of width `w.len()`: `x / sqrt(mean(x²) + eps) * (1 + w)`.
    fn rms_norm(&self, x: &mut Self::Buf, w: &Self::Weight, rows: usize, eps: f32);
    fn matmul(&self, w: &Self::Weight, x: &Self::Buf, n: usize, out: &mut Self::Buf);
    /// NEOX-style (rotate-half) RoPE in place on `[n, heads, head_dim]`.
    fn rope(&self, x: &mut Self::Buf, n: usize, p: RopeParams);
    /// Appends `k`, `v` (`[n, kv_heads * head_dim]`) to the cache and writes `[n, heads * head_dim]`.
    fn attention(
        &self,
        kv: &mut Self::Kv,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        out: &mut Self::Buf,
        p: AttnParams,
    );
    /// `gate[i] = gelu_tanh(gate[i]) * up[i]` for the first `len` values.
    fn gelu_mul(&self, gate: &mut Self::Buf, up: &Self::Buf, len: usize);
    /// `x[i] += y[i]` for the first `len` values.
    fn add(&self, x: &mut Self::Buf, y: &Self::Buf, len: usize);
    /// Copies `len` values from `src[src_offset..]` to the start of `dst`.
    fn copy(&self, src: &Self::Buf, src_offset: usize, dst: &mut Self::Buf, len: usize);
    /// The `k` largest of the first `len` values, as (index, value), largest first.
    fn top_k(&self, x: &Self::Buf, len: usize, k: usize) -> Vec<(u32, f32)>;

    // Fused ops. Each default is the composition of the ops above that it replaces, so a
    // backend only overrides what it can do in fewer device commands (the Vulkan backend:
    // one dispatch each instead of 2 to 4, each behind a full barrier).

    /// `out = rms_norm(x)` over `rows` rows of width `d`, leaving `x` unchanged (a pre-norm
    /// without copying the residual stream first).
    fn rms_norm_into(
        &self,
        x: &Self::Buf,
        w: &Self::Weight,
        rows: usize,
        d: usize,
        eps: f32,
        out: &mut Self::Buf,
    ) {
        self.copy(x, 0, out, rows * d);
        self.rms_norm(out, w, rows, eps);
    }
    /// The end of a sandwich-normed sublayer: `y = rms_norm(y, w)`, `x += y`; then, with
    /// `next`, the next sublayer's pre-norm `y = rms_norm(x, next)`. Rows of width `d`.
    #[allow(clippy::too_many_arguments)]
    fn add_rms_norm(
        &self,
        x: &mut Self::Buf,
        y: &mut Self::Buf,
        w: &Self::Weight,
        next: Option<&Self::Weight>,
        rows: usize,
        d: usize,
        eps: f32,
    ) {
        self.rms_norm(y, w, rows, eps);
        self.add(x, y, rows * d);
        if let Some(next) = next {
            self.copy(x, 0, y, rows * d);
            self.rms_norm(y, next, rows, eps);
        }
    }
    /// `outs[i] = x · ws[i]ᵀ` for weights sharing the input `x` (q, k and v projections).
    fn matmul_many(
        &self,
        ws: &[&Self::Weight],
        x: &Self::Buf,
        n: usize,
        outs: &mut [&mut Self::Buf],
    ) {
        assert_eq!(ws.len(), outs.len(), "matmul_many: one output per weight");
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            self.matmul(w, x, n, out);
        }
    }
    /// The gated FFN's first half: `gate = gelu_tanh(x · gate_wᵀ) * (x · up_wᵀ)`, `inter`
    /// values per token; `up` is scratch.
    #[allow(clippy::too_many_arguments)]
    fn gate_up(
        &self,
        gate_w: &Self::Weight,
        up_w: &Self::Weight,
        x: &Self::Buf,
        n: usize,
        inter: usize,
        gate: &mut Self::Buf,
        up: &mut Self::Buf,
    ) {
        self.matmul(gate_w, x, n, gate);
        self.matmul(up_w, x, n, up);
        self.gelu_mul(gate, up, n * inter);
    }
    /// Gemma 3's QK-norm then RoPE: each head of `q` (`p.heads` heads) and `k` (`kv_heads`
    /// heads) RMS-normalised with `q_norm` / `k_norm`, then rotated.
    #[allow(clippy::too_many_arguments)]
    fn qk_norm_rope(
        &self,
        q: &mut Self::Buf,
        k: &mut Self::Buf,
        q_norm: &Self::Weight,
        k_norm: &Self::Weight,
        n: usize,
        kv_heads: usize,
        p: RopeParams,
        eps: f32,
    ) {
        self.rms_norm(q, q_norm, n * p.heads, eps);
        self.rms_norm(k, k_norm, n * kv_heads, eps);
        self.rope(q, n, p);
        self.rope(
            k,
            n,
            RopeParams {
                heads: kv_heads,
                ..p
            },
        );
    }

    /// A per-device time breakdown since the last [`Backend::reset_report`], for `bench`
    /// (the hybrid scheduler's: measured time per device and its Phoenix projection).
    fn report(&self) -> Option<String> {
        None
    }
    /// Starts a new accounting period for [`Backend::report`].
    fn reset_report(&self) {}
    /// Measured device-memory copy bandwidth in bytes/s (read + write counted), the roofline
    /// `bench` compares decode against; `None` where the backend cannot measure it.
    fn copy_bandwidth(&self) -> Option<f64> {
        None
    }
    /// Per-op device timing for [`Backend::report`]; off by default because timestamps after
    /// every command cost time themselves.
    fn set_profiling(&self, _on: bool) {}
}
