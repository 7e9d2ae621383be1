//! Gemma 3 in f32 with a backward pass to the norm gains: the student (the stored weights,
//! dequantized) and the teacher (the checkpoint) of the distillation.
//!
//! The runtime's forward (runtime/src/model/gemma3.rs) is the model; this one exists because
//! the runtime has no backward. `forward_matches_the_runtime` (below) keeps the two equal.

use super::ops::{gelu_and_slope, linear, linear_back, rms_norm, rms_norm_back, Attn, Rope};
use mixq_format::{Gemma3Config, LayerKind};
use rayon::prelude::*;

/// A linear layer's weights, `rows x cols` row-major (out x in), as the model multiplies them
/// (any stored rotation undone).
pub struct Lin {
    pub rows: usize,
    pub cols: usize,
    pub w: Vec<f32>,
}

impl Lin {
    fn fwd(&self, x: &[f32], t: usize) -> Vec<f32> {
        linear(&self.w, self.rows, self.cols, x, t)
    }
    fn back(&self, dy: &[f32], t: usize, dx: &mut [f32], acc: bool) {
        linear_back(&self.w, self.rows, self.cols, dy, t, dx, acc)
    }
}

/// A decoder layer's linears, in [`mixq_runtime::model::gemma3::LINEARS`] order.
pub struct LayerLins {
    pub kind: LayerKind,
    pub q: Lin,
    pub k: Lin,
    pub v: Lin,
    pub o: Lin,
    pub gate: Lin,
    pub up: Lin,
    pub down: Lin,
}

/// The norm gains, every one in one flat vector (HF convention: the gain is `1 + w`), per layer
/// input, q, k, post-attention, pre-FFN, post-FFN, then the final norm.
pub struct NormLayout {
    pub names: Vec<String>,
    pub ranges: Vec<std::ops::Range<usize>>,
}

const LAYER_NORMS: [&str; 6] = [
    "input_layernorm",
    "self_attn.q_norm",
    "self_attn.k_norm",
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
];

impl NormLayout {
    pub fn new(c: &Gemma3Config) -> NormLayout {
        let (mut names, mut ranges, mut at) = (Vec::new(), Vec::new(), 0);
        let mut push = |name: String, len: usize| {
            names.push(name);
            ranges.push(at..at + len);
            at += len;
        };
        for i in 0..c.num_hidden_layers {
            for (k, n) in LAYER_NORMS.iter().enumerate() {
                let len = if k == 1 || k == 2 {
                    c.head_dim
                } else {
                    c.hidden_size
                };
                push(format!("model.layers.{i}.{n}.weight"), len);
            }
        }
        push("model.norm.weight".into(), c.hidden_size);
        NormLayout { names, ranges }
    }
    pub fn len(&self) -> usize {
        self.ranges.last().map_or(0, |r| r.end)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn layer(&self, i: usize, k: usize) -> std::ops::Range<usize> {
        self.ranges[i * 6 + k].clone()
    }
    fn last(&self) -> std::ops::Range<usize> {
        self.ranges.last().expect("at least the final norm").clone()
    }
}

/// The whole model in f32: the embedding table (unscaled, `vocab x hidden`, also the lm_head
/// when tied) and every layer's linears.
pub struct Net {
    pub config: Gemma3Config,
    pub embed: Vec<f32>,
    pub lm_head: Option<Lin>,
    pub layers: Vec<LayerLins>,
}

/// What the backward pass needs of one layer's forward.
struct LayerTape {
    x_in: Vec<f32>,
    q_raw: Vec<f32>,
    k_raw: Vec<f32>,
    qr: Vec<f32>,
    kr: Vec<f32>,
    v: Vec<f32>,
    p: Vec<f32>,
    ob: Vec<f32>,
    x_mid: Vec<f32>,
    gt: Vec<f32>,
    up: Vec<f32>,
    fb: Vec<f32>,
}

/// A forward pass kept for [`Net::backward`].
pub struct Tape {
    t: usize,
    layers: Vec<LayerTape>,
    x_final: Vec<f32>,
    /// The softcapped logits when the model softcaps (their derivative needs them).
    capped: Option<Vec<f32>>,
}

impl Net {
    fn attn_of(&self, kind: LayerKind, t: usize) -> (Attn, Rope) {
        let c = &self.config;
        let (base, scale, window) = match kind {
            LayerKind::Sliding => (c.rope_local_base_freq, 1.0, Some(c.sliding_window)),
            LayerKind::Full => (c.rope_theta, c.rope_scaling_factor, None),
        };
        let attn = Attn {
            t,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            scale: c.query_pre_attn_scalar.powf(-0.5),
            window,
        };
        (attn, Rope::new(c.head_dim, base, scale, t))
    }

    fn head(&self) -> (&[f32], usize) {
        match &self.lm_head {
            Some(l) => (&l.w, l.rows),
            None => (&self.embed, self.config.vocab_size),
        }
    }

    /// Logits (`t x vocab`, softcapped if the model softcaps) of `ids` at positions `0..t`
    /// under the gains `g` ([`NormLayout`]); with `tape`, what [`Net::backward`] needs.
    pub fn forward(&self, g: &[f32], ids: &[u32], tape: Option<&mut Option<Tape>>) -> Vec<f32> {
        let c = &self.config;
        let (t, d, eps) = (ids.len(), c.hidden_size, c.rms_norm_eps);
        let nl = NormLayout::new(c);
        let scale = c.embedding_scale();
        let mut x = vec![0f32; t * d];
        for (row, &id) in x.chunks_mut(d).zip(ids) {
            let e = &self.embed[id as usize * d..(id as usize + 1) * d];
            row.iter_mut().zip(e).for_each(|(o, &v)| *o = v * scale);
        }
        let keep = tape.is_some();
        let mut layers = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let gw = |k: usize| &g[nl.layer(i, k)];
            let (attn, rope) = self.attn_of(l.kind, t);
            let a = rms_norm(&x, gw(0), eps);
            let (q_raw, k_raw, v) = (l.q.fwd(&a, t), l.k.fwd(&a, t), l.v.fwd(&a, t));
            let mut qr = rms_norm(&q_raw, gw(1), eps);
            let mut kr = rms_norm(&k_raw, gw(2), eps);
            rope.apply(&mut qr, c.num_attention_heads, false);
            rope.apply(&mut kr, c.num_key_value_heads, false);
            let (o, p) = attn.forward(&qr, &kr, &v);
            let ob = l.o.fwd(&o, t);
            let mut x_mid = rms_norm(&ob, gw(3), eps);
            x_mid.iter_mut().zip(&x).for_each(|(m, &r)| *m += r);
            let f = rms_norm(&x_mid, gw(4), eps);
            let (gt, up) = (l.gate.fwd(&f, t), l.up.fwd(&f, t));
            let hdn: Vec<f32> = gt
                .par_iter()
                .zip(&up)
                .map(|(&gv, &u)| gelu_and_slope(gv).0 * u)
                .collect();
            let fb = l.down.fwd(&hdn, t);
            let mut x_out = rms_norm(&fb, gw(5), eps);
            x_out.iter_mut().zip(&x_mid).for_each(|(o, &m)| *o += m);
            if keep {
                layers.push(LayerTape {
                    x_in: x,
                    q_raw,
                    k_raw,
                    qr,
                    kr,
                    v,
                    p,
                    ob,
                    x_mid,
                    gt,
                    up,
                    fb,
                });
            }
            x = x_out;
        }
        let h = rms_norm(&x, &g[nl.last()], eps);
        let (w, vocab) = self.head();
        let mut logits = linear(w, vocab, d, &h, t);
        let mut capped = None;
        if let Some(cap) = c.final_logit_softcapping {
            logits
                .par_iter_mut()
                .for_each(|l| *l = (*l / cap).tanh() * cap);
            if keep {
                capped = Some(logits.clone());
            }
        }
        if let Some(tp) = tape {
            *tp = Some(Tape {
                t,
                layers,
                x_final: x,
                capped,
            });
        }
        logits
    }

    /// The gradient of the loss with respect to the gains `g`, given `dlogits` (the loss's
    /// gradient with respect to the logits [`Net::forward`] returned, consumed).
    pub fn backward(&self, g: &[f32], tape: Tape, mut dlogits: Vec<f32>) -> Vec<f32> {
        let c = &self.config;
        let (t, d, eps) = (tape.t, c.hidden_size, c.rms_norm_eps);
        let (heads, kvh) = (c.num_attention_heads, c.num_key_value_heads);
        let nl = NormLayout::new(c);
        let mut dg = vec![0f32; g.len()];
        if let (Some(cap), Some(capped)) = (c.final_logit_softcapping, &tape.capped) {
            dlogits
                .par_iter_mut()
                .zip(capped)
                .for_each(|(dl, &z)| *dl *= 1.0 - (z / cap) * (z / cap));
        }
        let (w, vocab) = self.head();
        let mut dh = vec![0f32; t * d];
        linear_back(w, vocab, d, &dlogits, t, &mut dh, false);
        drop(dlogits);
        let mut dx = rms_norm_back(&tape.x_final, &g[nl.last()], &dh, eps, &mut dg[nl.last()]);
        for (i, (l, lt)) in self.layers.iter().zip(tape.layers).enumerate().rev() {
            let (attn, rope) = self.attn_of(l.kind, t);
            // backward of norm k of this layer: its input gradient; its gain gradient into dg
            let mut norm_back = |k: usize, x: &[f32], dy: &[f32]| {
                let r = nl.layer(i, k);
                rms_norm_back(x, &g[r.clone()], dy, eps, &mut dg[r])
            };
            // x_out = x_mid + norm5(fb)
            let dfb = norm_back(5, &lt.fb, &dx);
            let inter = l.down.cols;
            let mut dhdn = vec![0f32; t * inter];
            l.down.back(&dfb, t, &mut dhdn, false);
            let mut dgt = vec![0f32; t * inter];
            let mut dup = vec![0f32; t * inter];
            dgt.par_iter_mut()
                .zip(dup.par_iter_mut())
                .enumerate()
                .for_each(|(j, (dgv, duv))| {
                    let (y, slope) = gelu_and_slope(lt.gt[j]);
                    *dgv = dhdn[j] * lt.up[j] * slope;
                    *duv = dhdn[j] * y;
                });
            drop(dhdn);
            let mut df = vec![0f32; t * d];
            l.gate.back(&dgt, t, &mut df, false);
            l.up.back(&dup, t, &mut df, true);
            // x_mid = x_in + norm3(ob); f = norm4(x_mid)
            let dxm = norm_back(4, &lt.x_mid, &df);
            dx.iter_mut().zip(dxm).for_each(|(a, b)| *a += b);
            let dob = norm_back(3, &lt.ob, &dx);
            let mut do_ = vec![0f32; t * l.o.cols];
            l.o.back(&dob, t, &mut do_, false);
            let (mut dqr, mut dkr, dv) = attn.backward(&lt.qr, &lt.kr, &lt.v, &lt.p, &do_);
            rope.apply(&mut dqr, heads, true);
            rope.apply(&mut dkr, kvh, true);
            let dq = norm_back(1, &lt.q_raw, &dqr);
            let dk = norm_back(2, &lt.k_raw, &dkr);
            let mut da = vec![0f32; t * d];
            l.q.back(&dq, t, &mut da, false);
            l.k.back(&dk, t, &mut da, true);
            l.v.back(&dv, t, &mut da, true);
            let dxi = norm_back(0, &lt.x_in, &da);
            dx.iter_mut().zip(dxi).for_each(|(a, b)| *a += b);
        }
        dg
    }
}
