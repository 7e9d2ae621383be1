//! Distillation of the norm gains, after every tensor is quantized: the stored codes and grids
//! stay as they are, and the RMSNorm gains (F32 in every built-in recipe, 0.1 % of the 270M's
//! parameters) move to lower KL(P_ref ‖ P_quant) of the whole model's next-token distribution
//! on calibration sequences. Adam, one sequence per step, gradients through the whole model
//! (model.rs). Layer-local objectives did not carry to the logits (quantizer/README.md,
//! "Distillation with the codes fixed"); this one is measured end to end.
//!
//! Memory: both models in f32 (the student dequantized), about 8 bytes per parameter, so the
//! converter runs it only where that fits ([`fits_in_memory`]): the 270M and 1B, not the 27B.

pub mod model;
pub mod ops;

use crate::search::dequantize_rows;
use anyhow::{bail, Context, Result};
use mixq_format::quant::hadamard::{apply_hadamard_with_signs, hadamard_signs, Transform};
use mixq_format::Gemma3Config;
use mixq_runtime::weights::WeightStore;
use model::{LayerLins, Lin, Net, NormLayout, Tape};
use rayon::prelude::*;
use std::time::Instant;

/// Steps of the default distillation (one calibration sequence each): on the 270M `optimal`, 64
/// steps give KL 0.333 and 128 give 0.328, from 0.366 (quantizer/README.md), at ~3 s a step.
pub const DEFAULT_STEPS: usize = 64;
/// Tokens per distillation sequence.
pub const DEFAULT_SEQ_LEN: usize = 256;
/// Adam's step size on the gains (`w`, the gain being `1 + w`): at 64 steps, 2e-3 reached the
/// KL that 1e-3 needed 128 steps for (0.329 against 0.333 at 1e-3, 270M `optimal`).
pub const DEFAULT_LR: f32 = 2e-3;

/// Sequences on which the KL is measured before and after (the same ones both times).
pub const PROBE: usize = 4;

/// What the distillation did.
pub struct Distilled {
    /// The new gains, flat in [`NormLayout`] order.
    pub gains: Vec<f32>,
    /// Mean KL(P_ref ‖ P_quant) per token on the first [`PROBE`] sequences (calibration text),
    /// under the gains before and after.
    pub kl_before: f64,
    pub kl_after: f64,
    pub seconds: f64,
}

/// Adam (Kingma & Ba) with torch's defaults, on one flat parameter vector.
struct Adam {
    lr: f32,
    m: Vec<f32>,
    v: Vec<f32>,
    step: i32,
}

impl Adam {
    fn new(n: usize, lr: f32) -> Adam {
        Adam {
            lr,
            m: vec![0.0; n],
            v: vec![0.0; n],
            step: 0,
        }
    }
    fn update(&mut self, p: &mut [f32], g: &[f32]) {
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        self.step += 1;
        let (c1, c2) = (1.0 - b1.powi(self.step), 1.0 - b2.powi(self.step));
        for i in 0..p.len() {
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * g[i];
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * g[i] * g[i];
            p[i] -= self.lr * (self.m[i] / c1) / ((self.v[i] / c2).sqrt() + eps);
        }
    }
}

/// Mean KL(P_t ‖ P_s) over the rows of `student` (logits, `rows x vocab`) against `teacher`;
/// `student` becomes the loss's gradient with respect to the student logits, `(P_s - P_t) /
/// rows`, and `teacher` is overwritten. Two exponentials per logit, in f32 (sums in f64):
/// `KL = Σ P_t (z_t - z_s) - lse(z_t) + lse(z_s)`.
pub fn kl_and_grad(student: &mut [f32], teacher: &mut [f32], vocab: usize) -> f64 {
    let rows = student.len() / vocab;
    let kl: f64 = student
        .par_chunks_mut(vocab)
        .zip(teacher.par_chunks_mut(vocab))
        .map(|(s, t)| {
            let max = |z: &[f32]| z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let (ms, mt) = (max(s), max(t));
            let (mut ss, mut st, mut cross) = (0f64, 0f64, 0f64);
            for (sv, tv) in s.iter_mut().zip(t.iter_mut()) {
                let (es, et) = ((*sv - ms).exp(), (*tv - mt).exp());
                cross += (et * (*tv - *sv)) as f64;
                ss += es as f64;
                st += et as f64;
                *sv = es;
                *tv = et;
            }
            let (inv_s, inv_t) = ((1.0 / ss) as f32, (1.0 / st) as f32);
            let scale = 1.0 / rows as f32;
            for (sv, &tv) in s.iter_mut().zip(t.iter()) {
                *sv = (*sv * inv_s - tv * inv_t) * scale;
            }
            cross / st - (mt as f64 + st.ln()) + (ms as f64 + ss.ln())
        })
        .sum();
    kl / rows as f64
}

/// Runs `steps` Adam steps on the student's gains `g0` against the teacher's logits, one
/// sequence of `seqs` per step in turn; `on_step(step, kl)` after each (kl: the mean of the
/// last 16 steps).
#[allow(clippy::too_many_arguments)]
pub fn distill(
    student: &Net,
    teacher: &Net,
    teacher_g: &[f32],
    g0: Vec<f32>,
    seqs: &[Vec<u32>],
    steps: usize,
    lr: f32,
    mut on_step: impl FnMut(usize, f64),
) -> Result<Distilled> {
    if seqs.is_empty() {
        bail!("distillation: no calibration sequences");
    }
    let t0 = Instant::now();
    let vocab = student.config.vocab_size;
    let probe = &seqs[..seqs.len().min(PROBE)];
    let kl_on = |g: &[f32]| {
        let kl: f64 = probe
            .iter()
            .map(|ids| {
                let mut zt = teacher.forward(teacher_g, ids, None);
                let mut zs = student.forward(g, ids, None);
                kl_and_grad(&mut zs, &mut zt, vocab)
            })
            .sum();
        kl / probe.len() as f64
    };
    let kl_before = kl_on(&g0);
    let mut g = g0;
    let mut adam = Adam::new(g.len(), lr);
    let mut recent = Vec::new();
    for step in 0..steps {
        let ids = &seqs[step % seqs.len()];
        let mut zt = teacher.forward(teacher_g, ids, None);
        let mut tape: Option<Tape> = None;
        let mut zs = student.forward(&g, ids, Some(&mut tape));
        let kl = kl_and_grad(&mut zs, &mut zt, vocab);
        drop(zt);
        let grad = student.backward(&g, tape.expect("forward kept a tape"), zs);
        adam.update(&mut g, &grad);
        recent.push(kl);
        if recent.len() > 16 {
            recent.remove(0);
        }
        on_step(step + 1, recent.iter().sum::<f64>() / recent.len() as f64);
    }
    let kl_after = kl_on(&g);
    Ok(Distilled {
        gains: g,
        kl_before,
        kl_after,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Bytes the distillation holds: both models' weights in f32, plus three `seq_len x vocab`
/// logit matrices.
pub fn memory_needed(c: &Gemma3Config, seq_len: usize) -> u64 {
    let (d, f) = (c.hidden_size as u64, c.intermediate_size as u64);
    let per_layer =
        d * (c.q_dim() as u64 + 2 * c.kv_dim() as u64) + c.q_dim() as u64 * d + 3 * d * f;
    let head = if c.tie_word_embeddings {
        0
    } else {
        c.vocab_size as u64 * d
    };
    let params = c.vocab_size as u64 * d + head + c.num_hidden_layers as u64 * per_layer;
    2 * 4 * params + 3 * 4 * seq_len as u64 * c.vocab_size as u64
}

/// Memory this machine has free now (`MemAvailable`), if it says.
pub fn memory_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `None` if the distillation fits in half the available memory, else why not.
pub fn fits_in_memory(c: &Gemma3Config, seq_len: usize) -> Option<String> {
    let need = memory_needed(c, seq_len);
    let avail = memory_available()?;
    (need > avail / 2).then(|| {
        format!(
            "it holds both models in f32 ({:.1} GB), more than half of the {:.1} GB this machine has free",
            need as f64 / 1e9,
            avail as f64 / 1e9
        )
    })
}

/// A linear layer as the model multiplies it: every row dequantized, a stored block Hadamard
/// rotation undone (`W = W'·Hᵀ`, so `W·x = W'·(x·H)ᵀ`).
pub fn lin_from_stored(
    qtype: mixq_format::quant::QType,
    bytes: &[u8],
    rows: usize,
    cols: usize,
    tr: Transform,
) -> Result<Lin> {
    let rb = qtype.row_bytes(cols)?;
    if bytes.len() != rows * rb {
        bail!("{} bytes for {rows} x {cols} {}", bytes.len(), qtype.name());
    }
    let mut w = dequantize_rows(qtype, bytes, rows, cols)?;
    if let Transform::BlockHadamard { block, seed } = tr {
        // H = S·B with B symmetric: Hᵀ = B·S, so a row times Hᵀ is (row·B) ⊙ s
        let signs = hadamard_signs(cols, seed);
        let ones = vec![1f32; cols];
        w.par_chunks_mut(cols).for_each(|row| {
            apply_hadamard_with_signs(row, &ones, block as usize);
            row.iter_mut().zip(&signs).for_each(|(v, s)| *v *= s);
        });
    }
    Ok(Lin { rows, cols, w })
}

/// A model's linears, embedding and norm gains ([`NormLayout`] order) in f32, from any store:
/// the checkpoint (the teacher) or the file being written (the student).
pub fn load_net(store: &dyn WeightStore) -> Result<(Net, Vec<f32>)> {
    let c = store.config().clone();
    let lin = |name: &str| -> Result<Lin> {
        let s = store.weight(name)?;
        lin_from_stored(s.qtype, &s.bytes, s.rows, s.cols, s.transform)
            .with_context(|| format!("tensor `{name}`"))
    };
    let embed = lin("model.embed_tokens.weight")?.w;
    let lm_head = if c.tie_word_embeddings {
        None
    } else {
        Some(lin("lm_head.weight")?)
    };
    let net = net(&c, embed, lm_head, lin)?;
    let mut gains = Vec::new();
    for name in &NormLayout::new(&c).names {
        gains.extend(lin(name)?.w);
    }
    Ok((net, gains))
}

/// Builds a [`Net`] from `lin(name)` (each linear's f32 weights) and the embedding table.
pub fn net(
    config: &Gemma3Config,
    embed: Vec<f32>,
    lm_head: Option<Lin>,
    mut lin: impl FnMut(&str) -> Result<Lin>,
) -> Result<Net> {
    let mut layers = Vec::new();
    for (i, &kind) in config.layer_types.iter().enumerate() {
        let mut l = |s: &str| lin(&format!("model.layers.{i}.{s}.weight"));
        layers.push(LayerLins {
            kind,
            q: l("self_attn.q_proj")?,
            k: l("self_attn.k_proj")?,
            v: l("self_attn.v_proj")?,
            o: l("self_attn.o_proj")?,
            gate: l("mlp.gate_proj")?,
            up: l("mlp.up_proj")?,
            down: l("mlp.down_proj")?,
        });
    }
    Ok(Net {
        config: config.clone(),
        embed,
        lm_head,
        layers,
    })
}

#[cfg(test)]
mod tests;
