//! End-to-end quality of a quantized model against its full-precision reference, on an
//! evaluation text the calibration never saw: perplexity of both models, retention
//! (PPL_ref / PPL_quant), KL(P_ref || P_quant) per position (mean and p99) and top-1 agreement.
//!
//! How the text is scored:
//! - The text is tokenized without BOS and cut into windows of [`EVAL_WINDOW`] tokens; each
//!   window gets its own `<bos>` and a fresh KV cache, and every position predicts the next token
//!   of its window. 1024 > Gemma 3's 512-token sliding window, so the global layers see context
//!   that the local layers cannot: a quantization error that only shows at long range counts.
//! - Scoring stops after `max_tokens` predicted tokens ([`DEFAULT_EVAL_TOKENS`] in `convert`).
//! - Both models run in lockstep over chunks of [`CHUNK`] positions: the reference's
//!   log-probabilities of one chunk (64 x vocab x 4 B = 64 MiB for Gemma 3's 262144 tokens) are
//!   kept until the quantized model has scored the same positions, never a window's worth.
//!
//! All sums are in f64. Perplexity is exp(mean next-token NLL) in nats.

use crate::report::EndToEnd;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use mixq_format::tokenizer::Tokenizer;
use mixq_runtime::backend::cpu::CpuBackend;
use mixq_runtime::backend::hybrid::load_npu_cpu;
use mixq_runtime::backend::Backend;
use mixq_runtime::weights::WeightStore;
use mixq_runtime::{Gemma3, Logits};

/// Tokens per evaluation window, `<bos>` included.
pub const EVAL_WINDOW: usize = 1024;
/// Positions scored per lockstep step.
pub const CHUNK: usize = 64;
/// Predicted tokens scored by `convert` unless told otherwise. Cost, measured on the 2-core
/// development machine with the 270M model: 0.16 CPU-seconds per token for both models
/// together (forward passes including the 262144-wide lm_head, log-softmax and KL), so about
/// 1.5 to 2 minutes of wall time on two idle cores, plus a few seconds to load both models; at
/// load 11 (other builds sharing the cores) it took 2.1 tokens/s, 8 minutes. Statistical caveat:
/// 1024 tokens of one text; the report prints a 95 % interval of the retention figure that
/// treats tokens as independent (optimistic, neighbouring tokens are correlated): differences
/// smaller than that interval are noise.
pub const DEFAULT_EVAL_TOKENS: usize = 1024;

/// Scores `text` with both stores (each run on the CPU backend, f32 activations).
///
/// `reference` is the full-precision checkpoint, `quantized` the model under test (usually a
/// `.mixq` store); `tok` tokenizes the text; `source_name` is recorded as the evaluation source.
pub fn evaluate(
    reference: &dyn WeightStore,
    quantized: &dyn WeightStore,
    tok: &Tokenizer,
    text: &str,
    source_name: &str,
    max_tokens: usize,
    threads: Option<usize>,
) -> Result<EndToEnd> {
    check_compatible(reference, quantized)?;
    let r = Gemma3::load(reference, CpuBackend::new(threads)?)
        .with_context(|| format!("loading the reference {}", reference.describe()))?;
    let q = Gemma3::load(quantized, CpuBackend::new(threads)?)
        .with_context(|| format!("loading the quantized model {}", quantized.describe()))?;
    evaluate_models(&r, &q, tok, text, source_name, max_tokens)
}

/// [`evaluate`] on two already loaded models (any backends).
pub fn evaluate_models<B1: Backend, B2: Backend>(
    reference: &Gemma3<B1>,
    quantized: &Gemma3<B2>,
    tok: &Tokenizer,
    text: &str,
    source_name: &str,
    max_tokens: usize,
) -> Result<EndToEnd> {
    let (e, _) = score::<B1, B2, B2>(
        reference,
        quantized,
        None,
        tok,
        text,
        source_name,
        max_tokens,
    )?;
    Ok(e)
}

/// [`evaluate`] of `quantized` twice in one pass over the text: on the CPU path and on the
/// NPU engine model's arithmetic in attention (`--device npu+cpu`: int4 projections of the
/// `npu.bank*` sections and attention with bf16 activations, emulated on the host CPU). The
/// reference runs once for both, so the NPU figures cost one more model's forward passes,
/// not two. Returns (CPU figures, emulated-NPU figures).
pub fn evaluate_with_npu(
    reference: &dyn WeightStore,
    quantized: &dyn WeightStore,
    tok: &Tokenizer,
    text: &str,
    source_name: &str,
    max_tokens: usize,
    threads: Option<usize>,
) -> Result<(EndToEnd, EndToEnd)> {
    check_compatible(reference, quantized)?;
    let r = Gemma3::load(reference, CpuBackend::new(threads)?)
        .with_context(|| format!("loading the reference {}", reference.describe()))?;
    let q = Gemma3::load(quantized, CpuBackend::new(threads)?)
        .with_context(|| format!("loading the quantized model {}", quantized.describe()))?;
    let n = load_npu_cpu(quantized, threads).with_context(|| {
        format!(
            "loading {} on the NPU engine model (npu+cpu)",
            quantized.describe()
        )
    })?;
    let (e, e_npu) = score(&r, &q, Some(&n), tok, text, source_name, max_tokens)?;
    Ok((e, e_npu.expect("scored with the NPU model")))
}

/// The lockstep scoring of [`evaluate_models`], with an optional second quantized model
/// scored against the same reference rows.
fn score<B1: Backend, B2: Backend, B3: Backend>(
    reference: &Gemma3<B1>,
    quantized: &Gemma3<B2>,
    second: Option<&Gemma3<B3>>,
    tok: &Tokenizer,
    text: &str,
    source_name: &str,
    max_tokens: usize,
) -> Result<(EndToEnd, Option<EndToEnd>)> {
    let vocab = reference.config.vocab_size;
    for v in std::iter::once(quantized.config.vocab_size).chain(second.map(|m| m.config.vocab_size))
    {
        if v != vocab {
            bail!("the models disagree on the vocabulary: {vocab} vs {v} tokens");
        }
    }
    let windows = windows(tok, text, reference.config.bos_token_id, max_tokens)?;
    let scored: usize = windows.iter().map(|w| w.len() - 1).sum();

    let bar = ProgressBar::new(scored as u64);
    let models = if second.is_some() {
        "reference + quantized on the CPU and on the emulated NPU"
    } else {
        "both models"
    };
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "evaluating {{bar:30}} {{pos}}/{{len}} tokens, {models} [{{elapsed_precise}} < {{eta_precise}}]"
        ))
        .expect("static template"),
    );
    let mut acc = Accumulator::default();
    let mut acc2 = Accumulator::default();
    let mut ref_lp = vec![0f32; CHUNK * vocab];
    let mut q_row = vec![0f32; vocab];
    for w in &windows {
        let (inputs, targets) = (&w[..w.len() - 1], &w[1..]);
        let mut sr = reference.new_session();
        let mut sq = quantized.new_session();
        let mut s2 = second.map(|m| m.new_session());
        for (c, chunk) in inputs.chunks(CHUNK).enumerate() {
            let tgt = &targets[c * CHUNK..c * CHUNK + chunk.len()];
            // Reference: keep this chunk's log-probabilities, score its NLL and argmax.
            let mut ref_nll = vec![0f64; chunk.len()];
            let mut ref_top = vec![0u32; chunk.len()];
            reference.forward(&mut sr, chunk, Logits::All, |i, logits| {
                let row = &mut ref_lp[i * vocab..(i + 1) * vocab];
                ref_top[i] = log_softmax(logits, row);
                ref_nll[i] = -row[tgt[i] as usize] as f64;
            })?;
            // Quantized: same positions, compared with the reference's rows.
            let mut score_row = |acc: &mut Accumulator, i: usize, logits: &[f32]| {
                let q_top = log_softmax(logits, &mut q_row);
                let p_row = &ref_lp[i * vocab..(i + 1) * vocab];
                acc.push(Position {
                    nll_ref: ref_nll[i],
                    nll_quant: -q_row[tgt[i] as usize] as f64,
                    kl: kl(p_row, &q_row),
                    agree: q_top == ref_top[i],
                });
            };
            quantized.forward(&mut sq, chunk, Logits::All, |i, logits| {
                score_row(&mut acc, i, logits)
            })?;
            if let (Some(m), Some(s)) = (second, s2.as_mut()) {
                m.forward(s, chunk, Logits::All, |i, logits| {
                    score_row(&mut acc2, i, logits)
                })?;
            }
            bar.inc(chunk.len() as u64);
        }
    }
    bar.finish_and_clear();
    let finish = |acc: Accumulator| {
        let mut e = acc.finish(source_name);
        e.window = EVAL_WINDOW;
        e.windows = windows.len();
        e
    };
    let e2 = second.map(|_| finish(acc2));
    Ok((finish(acc), e2))
}

/// Both stores describe the same architecture (the quantized file came from the reference).
fn check_compatible(reference: &dyn WeightStore, quantized: &dyn WeightStore) -> Result<()> {
    let (a, b) = (reference.config(), quantized.config());
    let same = a.vocab_size == b.vocab_size
        && a.hidden_size == b.hidden_size
        && a.num_hidden_layers == b.num_hidden_layers
        && a.intermediate_size == b.intermediate_size;
    if !same {
        bail!(
            "{} and {} are different models (vocab {}/{}, hidden {}/{}, layers {}/{})",
            reference.describe(),
            quantized.describe(),
            a.vocab_size,
            b.vocab_size,
            a.hidden_size,
            b.hidden_size,
            a.num_hidden_layers,
            b.num_hidden_layers
        );
    }
    Ok(())
}

/// The text's tokens as windows `[<bos>, t_0, .., t_k]` of at most [`EVAL_WINDOW`] tokens,
/// holding `max_tokens` predicted tokens in all (fewer if the text is shorter).
pub fn windows(tok: &Tokenizer, text: &str, bos: u32, max_tokens: usize) -> Result<Vec<Vec<u32>>> {
    if max_tokens == 0 {
        bail!("the evaluation needs at least one token (--eval-tokens 0 given)");
    }
    let ids = tok.encode(text, false)?;
    let ids: Vec<u32> = ids.into_iter().filter(|&t| t != bos).collect();
    if ids.is_empty() {
        bail!("the evaluation text is empty");
    }
    let take = ids.len().min(max_tokens);
    Ok(ids[..take]
        .chunks(EVAL_WINDOW - 1)
        .map(|c| std::iter::once(bos).chain(c.iter().copied()).collect())
        .collect())
}

/// Writes `log_softmax(logits)` into `out` and returns the argmax (first on ties).
fn log_softmax(logits: &[f32], out: &mut [f32]) -> u32 {
    let (mut top, mut max) = (0usize, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        if l > max {
            (top, max) = (i, l);
        }
    }
    let sum: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
    let log_z = max as f64 + sum.ln();
    for (o, &l) in out.iter_mut().zip(logits) {
        *o = (l as f64 - log_z) as f32;
    }
    top as u32
}

/// KL(P || Q) = Σ p (log p − log q) in nats, from two log-probability rows.
fn kl(lp: &[f32], lq: &[f32]) -> f64 {
    let s: f64 = lp
        .iter()
        .zip(lq)
        .map(|(&a, &b)| a.exp() as f64 * (a as f64 - b as f64))
        .sum();
    // Exact arithmetic gives s >= 0; rounding can leave a few 1e-12 below.
    s.max(0.0)
}

struct Position {
    nll_ref: f64,
    nll_quant: f64,
    kl: f64,
    agree: bool,
}

#[derive(Default)]
struct Accumulator {
    nll_ref: Vec<f64>,
    nll_quant: Vec<f64>,
    kl: Vec<f64>,
    agree: usize,
}

impl Accumulator {
    fn push(&mut self, p: Position) {
        self.nll_ref.push(p.nll_ref);
        self.nll_quant.push(p.nll_quant);
        self.kl.push(p.kl);
        self.agree += p.agree as usize;
    }

    fn finish(mut self, source: &str) -> EndToEnd {
        let n = self.kl.len();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (mr, mq) = (mean(&self.nll_ref), mean(&self.nll_quant));
        // Retention = exp(−mean(d)), d = NLL_quant − NLL_ref per token; its 95 % interval from
        // the standard error of mean(d), treating tokens as independent (optimistic: neighbouring
        // tokens of one text are correlated).
        let d: Vec<f64> = (self.nll_quant.iter().zip(&self.nll_ref))
            .map(|(q, r)| q - r)
            .collect();
        let md = mean(&d);
        let ci = (n > 1).then(|| {
            let var = d.iter().map(|x| (x - md).powi(2)).sum::<f64>() / (n - 1) as f64;
            let se = (var / n as f64).sqrt();
            (
                (-(md + 1.96 * se)).exp() * 100.0,
                (-(md - 1.96 * se)).exp() * 100.0,
            )
        });
        self.kl.sort_by(f64::total_cmp);
        EndToEnd {
            eval_source: source.to_string(),
            tokens: n,
            ppl_ref: mr.exp(),
            ppl_quant: mq.exp(),
            retention_ppl_pct: (mr - mq).exp() * 100.0,
            kl_mean: mean(&self.kl),
            kl_p99: percentile(&self.kl, 0.99),
            top1_agreement: self.agree as f64 / n as f64,
            retention_ppl_ci95: ci,
            ..Default::default()
        }
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_and_kl() {
        let logits = [1.0f32, 2.0, 3.0, 3.0];
        let mut lp = [0f32; 4];
        assert_eq!(log_softmax(&logits, &mut lp), 2);
        let z: f64 = lp.iter().map(|&x| (x as f64).exp()).sum();
        assert!((z - 1.0).abs() < 1e-6);
        assert_eq!(kl(&lp, &lp), 0.0);
        let mut lq = [0f32; 4];
        log_softmax(&[3.0, 2.0, 1.0, 0.0], &mut lq);
        assert!(kl(&lp, &lq) > 0.1);
    }

    #[test]
    fn percentile_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(|x| x as f64).collect();
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[5.0], 0.99), 5.0);
    }
}
