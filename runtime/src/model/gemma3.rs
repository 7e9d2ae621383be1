//! Gemma 3 text model: one forward pass, top to bottom, for every backend and weight type.
//!
//! Gemma 3 quirks, stated where they act:
//! - the embedding is multiplied by sqrt(hidden), rounded to the checkpoint dtype as HF does;
//! - RMSNorm scales by (1 + w), and there are four per layer ("sandwich" norms);
//! - q and k are RMS-normalised per head before RoPE;
//! - local (sliding-window) and global layers interleave, each with its own RoPE base;
//! - scores are scaled by query_pre_attn_scalar^-0.5, not head_dim^-0.5;
//! - the FFN is GELU(tanh)-gated; lm_head is the embedding (tied).

use crate::backend::{AttnParams, Backend, RopeParams};
use crate::sampling::LogitsSource;
use crate::weights::WeightStore;
use anyhow::{bail, Result};
use mixq_format::{Gemma3Config, LayerKind};

/// One decoder layer's weights, by their HF names.
pub struct Layer<W> {
    pub kind: LayerKind,
    pub input_layernorm: W,
    pub q_proj: W,
    pub k_proj: W,
    pub v_proj: W,
    pub q_norm: W,
    pub k_norm: W,
    pub o_proj: W,
    pub post_attention_layernorm: W,
    pub pre_feedforward_layernorm: W,
    pub gate_proj: W,
    pub up_proj: W,
    pub down_proj: W,
    pub post_feedforward_layernorm: W,
}

/// The linear-layer suffixes of a decoder layer, in the order they run.
pub const LINEARS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

impl<W> Layer<W> {
    /// Loads layer `i` (`model.layers.{i}.*`) through `load`, which maps a full tensor name to
    /// a bound weight.
    pub fn load(
        i: usize,
        kind: LayerKind,
        mut load: impl FnMut(String) -> Result<W>,
    ) -> Result<Self> {
        let p = format!("model.layers.{i}");
        Ok(Layer {
            kind,
            input_layernorm: load(format!("{p}.input_layernorm.weight"))?,
            q_proj: load(format!("{p}.self_attn.q_proj.weight"))?,
            k_proj: load(format!("{p}.self_attn.k_proj.weight"))?,
            v_proj: load(format!("{p}.self_attn.v_proj.weight"))?,
            q_norm: load(format!("{p}.self_attn.q_norm.weight"))?,
            k_norm: load(format!("{p}.self_attn.k_norm.weight"))?,
            o_proj: load(format!("{p}.self_attn.o_proj.weight"))?,
            post_attention_layernorm: load(format!("{p}.post_attention_layernorm.weight"))?,
            pre_feedforward_layernorm: load(format!("{p}.pre_feedforward_layernorm.weight"))?,
            gate_proj: load(format!("{p}.mlp.gate_proj.weight"))?,
            up_proj: load(format!("{p}.mlp.up_proj.weight"))?,
            down_proj: load(format!("{p}.mlp.down_proj.weight"))?,
            post_feedforward_layernorm: load(format!("{p}.post_feedforward_layernorm.weight"))?,
        })
    }
}

/// What calibration observes: the activations that feed a layer's linear layers, and the two
/// branch outputs that the post-norms divide by their RMS before the residual adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Site {
    /// Input of q/k/v_proj: the input-normed residual stream.   (n, hidden)
    AttnInput,
    /// Input of o_proj: the concatenated attention heads.       (n, heads * head_dim)
    AttnOutput,
    /// Input of gate/up_proj: the pre-FFN-normed residual.      (n, hidden)
    FfnInput,
    /// Input of down_proj: gelu(gate) * up.                     (n, intermediate)
    FfnHidden,
    /// Queries after QK-norm and RoPE.                         (n, heads * head_dim)
    Queries,
    /// Keys after QK-norm and RoPE.                            (n, kv_heads * head_dim)
    Keys,
    /// Output of o_proj, before the post-attention norm.        (n, hidden)
    AttnBranch,
    /// Output of down_proj, before the post-FFN norm.           (n, hidden)
    FfnBranch,
}

pub struct Gemma3<B: Backend> {
    pub config: Gemma3Config,
    pub backend: B,
    embed_tokens: B::Weight,
    /// Untied checkpoints only; Gemma 3 ties lm_head to the embedding.
    lm_head: Option<B::Weight>,
    layers: Vec<Layer<B::Weight>>,
    norm: B::Weight,
}

/// The state of one sequence: its KV caches and how many positions they hold.
pub struct Session<B: Backend> {
    kv: Vec<B::Kv>,
    pub pos: usize,
}

/// Activation buffers for a batch of up to `cap` tokens, reused across calls.
pub struct Activations<B: Backend> {
    pub cap: usize,
    pub x: B::Buf,    // (n, hidden) residual stream
    pub a: B::Buf,    // (n, hidden) normed input / sublayer output
    pub q: B::Buf,    // (n, heads * head_dim)
    pub k: B::Buf,    // (n, kv_heads * head_dim)
    pub v: B::Buf,    // (n, kv_heads * head_dim)
    pub attn: B::Buf, // (n, heads * head_dim)
    pub gate: B::Buf, // (n, intermediate)
    pub up: B::Buf,   // (n, intermediate)
}

impl<B: Backend> Activations<B> {
    pub fn new(be: &B, c: &Gemma3Config, cap: usize) -> Self {
        Activations {
            cap,
            x: be.alloc(cap * c.hidden_size),
            a: be.alloc(cap * c.hidden_size),
            q: be.alloc(cap * c.q_dim()),
            k: be.alloc(cap * c.kv_dim()),
            v: be.alloc(cap * c.kv_dim()),
            attn: be.alloc(cap * c.q_dim()),
            gate: be.alloc(cap * c.intermediate_size),
            up: be.alloc(cap * c.intermediate_size),
        }
    }
}

/// Which positions of a batch need logits.
pub enum Logits {
    /// Only the last position (generation).
    Last,
    /// Every position (scoring, perplexity, golden tests); rows are delivered to the callback.
    All,
}

/// Largest batch pushed through the layers at once: bounds scratch memory on long prompts.
pub const MAX_BATCH: usize = 256;
/// Rows of logits computed together when every position needs them (32 x 262k x 4 B = 32 MiB).
const LOGIT_ROWS: usize = 32;

impl<B: Backend> Gemma3<B> {
    pub fn load(store: &dyn WeightStore, backend: B) -> Result<Self> {
        let config = store.config().clone();
        let w = |name: String| -> Result<B::Weight> { backend.load_weight(&store.weight(&name)?) };
        let layers = (config.layer_types.iter().enumerate())
            .map(|(i, &kind)| Layer::load(i, kind, w))
            .collect::<Result<Vec<_>>>()?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(w("lm_head.weight".into())?)
        };
        Ok(Gemma3 {
            embed_tokens: w("model.embed_tokens.weight".into())?,
            norm: w("model.norm.weight".into())?,
            lm_head,
            layers,
            config,
            backend,
        })
    }

    pub fn backend_describe(&self) -> String {
        self.backend.describe()
    }

    pub fn new_session(&self) -> Session<B> {
        let c = &self.config;
        let kv = self
            .layers
            .iter()
            .map(|l| {
                let window = (l.kind == LayerKind::Sliding).then_some(c.sliding_window);
                self.backend.new_kv(c.kv_dim(), window)
            })
            .collect();
        Session { kv, pos: 0 }
    }

    /// Rewinds a session to its first `len` positions (chat reuses a shared prefix).
    pub fn truncate(&self, s: &mut Session<B>, len: usize) {
        for kv in &mut s.kv {
            self.backend.truncate_kv(kv, len);
        }
        s.pos = s.pos.min(len);
    }

    /// Runs `ids` through the model after the session's cached positions and returns the logits
    /// of the last position. With [`Logits::All`], `on_row(position_index, logits)` also sees
    /// every position's logits, in order.
    pub fn forward(
        &self,
        s: &mut Session<B>,
        ids: &[u32],
        which: Logits,
        mut on_row: impl FnMut(usize, &[f32]),
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let mut last = Vec::new();
        let mut done = 0;
        self.run_batches(s, ids, |scratch, n| {
            let first = match which {
                Logits::Last => n - 1,
                Logits::All => 0,
            };
            // The lm_head reads the whole embedding table: batch rows so it is read once per batch.
            for r0 in (first..n).step_by(LOGIT_ROWS) {
                let count = LOGIT_ROWS.min(n - r0);
                let logits = self.logits_of_rows(&scratch.x, r0, count);
                for (i, row) in logits.chunks_exact(c.vocab_size).enumerate() {
                    on_row(done + r0 + i, row);
                }
                last = logits[(count - 1) * c.vocab_size..].to_vec();
            }
            done += n;
        })?;
        Ok(last)
    }

    /// Runs `ids` like [`Gemma3::forward`] but leaves the last position's logits on the device:
    /// generation reads back only what its sampler needs ([`crate::sampling::Sampler::next`]).
    pub fn forward_last(&self, s: &mut Session<B>, ids: &[u32]) -> Result<LastLogits<'_, B>> {
        let (scratch, n) = self.run_batches(s, ids, |_, _| {})?;
        let buf = self.device_logits(&scratch.x, n - 1, 1);
        Ok(LastLogits { model: self, buf })
    }

    /// Checks `ids`, then runs them through the decoder stack in batches of up to
    /// [`MAX_BATCH`], calling `after(scratch, n)` with each batch's final residual stream.
    /// Returns the last batch's activations and its length.
    fn run_batches(
        &self,
        s: &mut Session<B>,
        ids: &[u32],
        mut after: impl FnMut(&Activations<B>, usize),
    ) -> Result<(Activations<B>, usize)> {
        let c = &self.config;
        if ids.is_empty() {
            bail!("forward: no tokens");
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= c.vocab_size) {
            bail!(
                "token id {bad} is outside the model's vocabulary of {}",
                c.vocab_size
            );
        }
        if s.pos + ids.len() > c.max_position_embeddings {
            bail!(
                "context full: {} + {} tokens exceed the model's {} positions",
                s.pos,
                ids.len(),
                c.max_position_embeddings
            );
        }
        let mut scratch = Activations::new(&self.backend, &self.config, ids.len().min(MAX_BATCH));
        let mut n = 0;
        for chunk in ids.chunks(MAX_BATCH) {
            self.layers_forward(s, chunk, &mut scratch);
            n = chunk.len();
            after(&scratch, n);
        }
        Ok((scratch, n))
    }

    /// The decoder stack on one batch; leaves the final residual stream in `b.x`.
    fn layers_forward(&self, s: &mut Session<B>, ids: &[u32], b: &mut Activations<B>) {
        let c = &self.config;
        debug_assert!(ids.len() <= b.cap);
        // Embedding, scaled by sqrt(hidden) in the checkpoint's dtype.       x: (n, hidden)
        self.backend
            .embed(&self.embed_tokens, ids, c.embedding_scale(), &mut b.x);
        for (layer, kv) in self.layers.iter().zip(&mut s.kv) {
            run_layer(
                &self.backend,
                c,
                layer,
                kv,
                s.pos,
                ids.len(),
                b,
                &mut |_, _, _| {},
            );
        }
        s.pos += ids.len();
    }

    /// Final norm and lm_head (the tied embedding) for `count` rows of the residual stream
    /// starting at row `r0`, read back and softcapped.                     (count, vocab)
    fn logits_of_rows(&self, x: &B::Buf, r0: usize, count: usize) -> Vec<f32> {
        let logits = self.device_logits(x, r0, count);
        let mut out = self
            .backend
            .download(&logits, count * self.config.vocab_size);
        out.iter_mut().for_each(|l| *l = self.softcap(*l));
        out
    }

    /// Final norm and lm_head for `count` rows starting at row `r0`, left on the device and
    /// not yet softcapped.                                                  (count, vocab)
    fn device_logits(&self, x: &B::Buf, r0: usize, count: usize) -> B::Buf {
        let c = &self.config;
        let be = &self.backend;
        let mut h = be.alloc(count * c.hidden_size);
        be.copy(x, r0 * c.hidden_size, &mut h, count * c.hidden_size);
        be.rms_norm(&mut h, &self.norm, count, c.rms_norm_eps);
        let mut logits = be.alloc(count * c.vocab_size);
        be.matmul(
            self.lm_head.as_ref().unwrap_or(&self.embed_tokens),
            &h,
            count,
            &mut logits,
        );
        logits
    }

    /// The final logit softcap (Gemma 2; absent from Gemma 3 checkpoints), applied on the host
    /// to what is read back.
    fn softcap(&self, l: f32) -> f32 {
        match self.config.final_logit_softcapping {
            Some(cap) => (l / cap).tanh() * cap,
            None => l,
        }
    }
}

/// The last position's logits, still on the device; read back as a [`LogitsSource`].
pub struct LastLogits<'m, B: Backend> {
    model: &'m Gemma3<B>,
    buf: B::Buf, // (vocab,) before the softcap
}

impl<B: Backend> LogitsSource for LastLogits<'_, B> {
    fn vocab(&self) -> usize {
        self.model.config.vocab_size
    }
    fn top(&self, k: usize) -> Vec<(u32, f32)> {
        let mut top = self.model.backend.top_k(&self.buf, self.vocab(), k);
        top.iter_mut()
            .for_each(|(_, l)| *l = self.model.softcap(*l));
        top
    }
    fn all(&self) -> Vec<f32> {
        let mut out = self.model.backend.download(&self.buf, self.vocab());
        out.iter_mut().for_each(|l| *l = self.model.softcap(*l));
        out
    }
    /// The softcap comes after the device ranked the raw logits and can make neighbours equal.
    fn ties_ranked(&self) -> bool {
        self.model.config.final_logit_softcapping.is_none()
    }
}

/// One decoder layer on `n` tokens at positions `pos0..pos0 + n`: reads and updates the
/// residual stream `b.x` in place and appends to the layer's KV cache. `observe` sees the input
/// of every linear layer, the attention's queries and keys and the two branch outputs
/// (calibration collects its statistics there).
#[allow(clippy::too_many_arguments)]
pub fn run_layer<B: Backend>(
    be: &B,
    c: &Gemma3Config,
    layer: &Layer<B::Weight>,
    kv: &mut B::Kv,
    pos0: usize,
    n: usize,
    b: &mut Activations<B>,
    observe: &mut dyn FnMut(Site, &B::Buf, usize),
) {
    let (hd, heads, kv_heads) = (c.head_dim, c.num_attention_heads, c.num_key_value_heads);
    let (base, rope_scale, window) = match layer.kind {
        LayerKind::Sliding => (c.rope_local_base_freq, 1.0, Some(c.sliding_window)),
        LayerKind::Full => (c.rope_theta, c.rope_scaling_factor, None),
    };

    let (d, eps) = (c.hidden_size, c.rms_norm_eps);

    // Attention block: pre-norm (x stays the residual stream).      a: (n, hidden)
    be.rms_norm_into(&b.x, &layer.input_layernorm, n, d, eps, &mut b.a);
    // Projections of the same input.        q: (n, heads*hd), k, v: (n, kv_heads*hd)
    observe(Site::AttnInput, &b.a, n);
    be.matmul_many(
        &[&layer.q_proj, &layer.k_proj, &layer.v_proj],
        &b.a,
        n,
        &mut [&mut b.q, &mut b.k, &mut b.v],
    );
    // QK-norm over each head's head_dim values, then RoPE: local base on sliding layers,
    // global base (+ linear scaling) on full layers.
    let rope = RopeParams {
        heads,
        head_dim: hd,
        pos0,
        base,
        scale: rope_scale,
    };
    be.qk_norm_rope(
        &mut b.q,
        &mut b.k,
        &layer.q_norm,
        &layer.k_norm,
        n,
        kv_heads,
        rope,
        eps,
    );
    observe(Site::Queries, &b.q, n);
    observe(Site::Keys, &b.k, n);
    // Causal GQA attention over cache + batch; sliding layers see the last `window` keys.
    let attn = AttnParams {
        n,
        pos0,
        heads,
        kv_heads,
        head_dim: hd,
        window,
        scale: c.query_pre_attn_scalar.powf(-0.5),
        softcap: c.attn_logit_softcapping,
    };
    be.attention(kv, &b.q, &b.k, &b.v, &mut b.attn, attn);
    // Output projection; post-attention norm, residual, and the FFN's pre-norm.  a: (n, hidden)
    observe(Site::AttnOutput, &b.attn, n);
    be.matmul(&layer.o_proj, &b.attn, n, &mut b.a);
    observe(Site::AttnBranch, &b.a, n);
    be.add_rms_norm(
        &mut b.x,
        &mut b.a,
        &layer.post_attention_layernorm,
        Some(&layer.pre_feedforward_layernorm),
        n,
        d,
        eps,
    );

    // FFN block: GELU(tanh)-gated, post-norm, residual.            gate: (n, inter)
    observe(Site::FfnInput, &b.a, n);
    be.gate_up(
        &layer.gate_proj,
        &layer.up_proj,
        &b.a,
        n,
        c.intermediate_size,
        &mut b.gate,
        &mut b.up,
    );
    observe(Site::FfnHidden, &b.gate, n);
    be.matmul(&layer.down_proj, &b.gate, n, &mut b.a);
    observe(Site::FfnBranch, &b.a, n);
    be.add_rms_norm(
        &mut b.x,
        &mut b.a,
        &layer.post_feedforward_layernorm,
        None,
        n,
        d,
        eps,
    );
}
