//! Two models on the same tokens, position by position: the next-token distributions of a
//! prompt (KL, top-1 agreement, largest logit difference) and their greedy continuations. The
//! tests of a cheaper arithmetic (the emulated NPU's bf16, the CPU's int8 activations) against
//! an exact path use it.
//!
//! Both models run in lockstep over chunks of [`CHUNK`] prompt positions, so only one chunk
//! of the reference's logits is held (64 x 262144 x 4 B = 64 MiB for Gemma 3), never a
//! whole prompt's. Greedy decoding stops at the first step where the two disagree: beyond it
//! the models see different prefixes and nothing is comparable.

use mixq_runtime::backend::Backend;
use mixq_runtime::{Gemma3, Logits};

/// Prompt positions per lockstep step.
pub const CHUNK: usize = 64;

/// Prompts longer than this are compared at every [`LONG_STRIDE`]-th position: the lm_head of
/// all 700 positions of the long golden prompt would be most of a test's time.
pub const LONG_PROMPT: usize = 256;
pub const LONG_STRIDE: usize = 64;

/// The `stride` argument of [`compare`] for a prompt.
pub fn stride(ids: &[u32]) -> usize {
    if ids.len() > LONG_PROMPT {
        LONG_STRIDE
    } else {
        1
    }
}

/// What [`compare`] measured on one prompt.
#[derive(Debug, Clone, Default)]
pub struct Comparison {
    /// KL(P_ref || P_test) in nats at every compared position: the prompt's (every position,
    /// or every `stride`-th), then every greedy step up to and including the first
    /// disagreement.
    pub kl: Vec<f64>,
    /// Positions where both argmaxes agree.
    pub top1_agree: usize,
    /// The largest |logit_ref - logit_test| over all positions and the whole vocabulary.
    pub max_abs_diff: f32,
    /// (token position, reference top-2 margin) where the argmaxes differ.
    pub disagreements: Vec<(usize, f32)>,
    /// Greedy tokens of both models (the test's stop at the first difference).
    pub greedy_ref: Vec<u32>,
    pub greedy_test: Vec<u32>,
    /// The reference's top1 - top2 logit at each greedy step.
    pub margins_ref: Vec<f32>,
    /// The first greedy step where the tokens differ.
    pub first_diff: Option<usize>,
}

impl Comparison {
    pub fn positions(&self) -> usize {
        self.kl.len()
    }

    pub fn kl_mean(&self) -> f64 {
        self.kl.iter().sum::<f64>() / self.kl.len().max(1) as f64
    }

    pub fn kl_max(&self) -> f64 {
        self.kl.iter().cloned().fold(0.0, f64::max)
    }

    /// Compares the logits of token position `pos` (prompt positions, then the greedy tokens').
    fn push(&mut self, pos: usize, r: &[f32], t: &[f32]) {
        self.kl.push(kl(r, t));
        let ((ir, v1, v2), (it, _, _)) = (top2(r), top2(t));
        if ir == it {
            self.top1_agree += 1;
        } else {
            self.disagreements.push((pos, v1 - v2));
        }
        let d = r
            .iter()
            .zip(t)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        self.max_abs_diff = self.max_abs_diff.max(d);
    }

    /// One line of figures, for `--nocapture` output and the issue notes.
    pub fn summary(&self) -> String {
        let greedy = match self.first_diff {
            None => format!("{} greedy tokens identical", self.greedy_ref.len()),
            Some(i) => format!(
                "greedy identical for {i} tokens, then differs (reference margin there {:.3})",
                self.margins_ref[i]
            ),
        };
        let widest = self
            .disagreements
            .iter()
            .map(|d| d.1)
            .fold(None, |m: Option<f32>, x| Some(m.map_or(x, |m| m.max(x))));
        let widest = widest.map_or(String::new(), |m| {
            format!(" (widest reference margin at a difference {m:.3})")
        });
        format!(
            "{} positions: KL mean {:.2e}, max {:.2e}; top-1 agreement {}/{}{widest}; max |logit diff| {:.3}; {greedy}",
            self.positions(),
            self.kl_mean(),
            self.kl_max(),
            self.top1_agree,
            self.positions(),
            self.max_abs_diff
        )
    }

    /// The acceptance rule: mean and max KL under their bounds, and every argmax difference
    /// (at a prompt position or a greedy step) where the reference's top-2 margin is a
    /// near-tie (below `near_tie` logits), i.e. where rounding may legitimately flip it.
    pub fn check(&self, label: &str, kl_mean_max: f64, kl_max_max: f64, near_tie: f32) {
        assert!(
            self.kl_mean() < kl_mean_max,
            "{label}: mean KL {:.3e} >= {kl_mean_max:.1e}",
            self.kl_mean()
        );
        assert!(
            self.kl_max() < kl_max_max,
            "{label}: max KL {:.3e} >= {kl_max_max:.1e}",
            self.kl_max()
        );
        for &(pos, margin) in &self.disagreements {
            assert!(
                margin < near_tie,
                "{label}: argmax differs at position {pos} where the reference's top-2 margin is {margin:.3} (not a near-tie < {near_tie})"
            );
        }
        if let Some(i) = self.first_diff {
            assert!(
                self.margins_ref[i] < near_tie,
                "{label}: greedy differs at step {i} where the reference margin is {:.3} (not a near-tie < {near_tie})",
                self.margins_ref[i]
            );
        }
    }
}

/// Runs `ids` through both models, comparing the logits of every `stride`-th prompt position
/// (1: every position; otherwise the last of each `stride` tokens, so the lm_head, 63 % of
/// the 270M's work per position, runs once per `stride` tokens), then up to `greedy` greedy
/// steps while their tokens agree.
pub fn compare<A: Backend, B: Backend>(
    reference: &Gemma3<A>,
    test: &Gemma3<B>,
    ids: &[u32],
    stride: usize,
    greedy: usize,
) -> Comparison {
    let vocab = reference.config.vocab_size;
    assert_eq!(
        test.config.vocab_size, vocab,
        "the models disagree on the vocabulary"
    );
    let mut c = Comparison::default();
    let (mut sr, mut st) = (reference.new_session(), test.new_session());
    let (mut lr, mut lt) = (Vec::new(), Vec::new());
    let mut rows: Vec<f32> = Vec::new();
    if stride <= 1 {
        for (ci, chunk) in ids.chunks(CHUNK).enumerate() {
            rows.clear();
            lr = reference
                .forward(&mut sr, chunk, Logits::All, |_, l| {
                    rows.extend_from_slice(l)
                })
                .expect("reference forward");
            lt = test
                .forward(&mut st, chunk, Logits::All, |i, l| {
                    c.push(ci * CHUNK + i, &rows[i * vocab..(i + 1) * vocab], l)
                })
                .expect("test forward");
        }
    } else {
        for (ci, chunk) in ids.chunks(stride).enumerate() {
            lr = reference
                .forward(&mut sr, chunk, Logits::Last, |_, _| {})
                .expect("reference forward");
            lt = test
                .forward(&mut st, chunk, Logits::Last, |_, _| {})
                .expect("test forward");
            c.push(ci * stride + chunk.len() - 1, &lr, &lt);
        }
    }
    for step in 0..greedy {
        let ((tr, v1, v2), (tt, _, _)) = (top2(&lr), top2(&lt));
        c.greedy_ref.push(tr);
        c.greedy_test.push(tt);
        c.margins_ref.push(v1 - v2);
        if tr != tt {
            c.first_diff = Some(step);
            break;
        }
        if step + 1 == greedy {
            break;
        }
        lr = reference
            .forward(&mut sr, &[tr], Logits::Last, |_, _| {})
            .expect("reference forward");
        lt = test
            .forward(&mut st, &[tt], Logits::Last, |_, _| {})
            .expect("test forward");
        c.push(ids.len() + step, &lr, &lt);
    }
    c
}

/// log Σ exp(l), in f64.
fn log_sum_exp(l: &[f32]) -> f64 {
    let m = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    m + l.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
}

/// KL(P || Q) in nats from two logit rows.
pub fn kl(p: &[f32], q: &[f32]) -> f64 {
    let (zp, zq) = (log_sum_exp(p), log_sum_exp(q));
    let s: f64 = (p.iter().zip(q))
        .map(|(&a, &b)| {
            let lp = a as f64 - zp;
            lp.exp() * (lp - (b as f64 - zq))
        })
        .sum();
    // Exact arithmetic gives s >= 0; rounding can leave a few 1e-12 below.
    s.max(0.0)
}

/// The argmax (the first on ties, as `top_k`), its logit, and the runner-up's logit.
pub fn top2(l: &[f32]) -> (u32, f32, f32) {
    let (mut i1, mut v1, mut v2) = (0usize, f32::NEG_INFINITY, f32::NEG_INFINITY);
    for (i, &x) in l.iter().enumerate() {
        if x > v1 {
            (i1, v2, v1) = (i, v1, x);
        } else if x > v2 {
            v2 = x;
        }
    }
    (i1 as u32, v1, v2)
}
