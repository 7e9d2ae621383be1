//! Turning logits into the next token: greedy at temperature 0, otherwise repetition penalty,
//! temperature, then top-k, top-p and min-p filters, then a draw from a seeded generator (so a
//! given seed reproduces a run exactly).
//!
//! The logits of a decode step sit on the device; reading all 262k of them back costs more host
//! time than the sampling itself. [`Sampler::next`] is the one place that decides what to read:
//! the `k` largest when they fix the choice (greedy, top-k <= [`MAX_TOP`]), the whole vocabulary
//! otherwise, and always the same token as [`Sampler::sample`] on the full logits.

use crate::backend::cpu::top_k;
use std::cmp::Ordering;

/// The largest `k` a [`LogitsSource::top`] is asked for: the device top-k kernel's limit
/// (shaders/top_k_f32.comp); beyond it a top-k reads everything back anyway.
pub const MAX_TOP: usize = 64;

/// The logits of one position, wherever they live: the sampler reads only what it needs.
pub trait LogitsSource {
    /// Vocabulary size.
    fn vocab(&self) -> usize;
    /// The `k` largest (token, logit), largest first, equal values by lower token id.
    fn top(&self, k: usize) -> Vec<(u32, f32)>;
    /// Every logit.
    fn all(&self) -> Vec<f32>;
    /// False when the values went through a transform after they were ranked that can make
    /// distinct logits equal (the final softcap's tanh): then a token outside `top` may tie
    /// the last one with a lower id.
    fn ties_ranked(&self) -> bool;
}

/// Logits already on the host (tests, and the reference the device path must match).
impl LogitsSource for [f32] {
    fn vocab(&self) -> usize {
        self.len()
    }
    fn top(&self, k: usize) -> Vec<(u32, f32)> {
        top_k(self, k)
    }
    fn all(&self) -> Vec<f32> {
        self.to_vec()
    }
    fn ties_ranked(&self) -> bool {
        true
    }
}

#[derive(Debug, Clone)]
pub struct SamplerConfig {
    pub temperature: f32,
    /// 0 = no limit.
    pub top_k: usize,
    /// 1.0 = off.
    pub top_p: f32,
    /// 0.0 = off. Drops tokens whose probability is below min_p x the top token's.
    pub min_p: f32,
    /// 1.0 = off. Divides positive (multiplies negative) logits of tokens already seen.
    pub repetition_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repetition_window: usize,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            repetition_window: 64,
            seed: 0,
        }
    }
}

/// splitmix64: tiny, fast, and the same stream on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

pub struct Sampler {
    pub config: SamplerConfig,
    rng: Rng,
}

impl Sampler {
    pub fn new(config: SamplerConfig) -> Self {
        let rng = Rng::new(config.seed);
        Sampler { config, rng }
    }

    /// Picks the next token, reading back only what this configuration needs
    /// ([`Sampler::top_needed`]); falls back to every logit when the `k` largest cannot be shown
    /// to fix the choice. Always the token [`Sampler::sample`] picks on the full logits.
    pub fn next<L: LogitsSource + ?Sized>(&mut self, logits: &L, history: &[u32]) -> u32 {
        if let Some(k) = self.top_needed(logits.ties_ranked()) {
            let top = logits.top(k);
            if let Some(cand) = self.candidates(top, logits.vocab(), logits.ties_ranked(), history)
            {
                return self.draw(&cand);
            }
        }
        self.sample(&logits.all(), history)
    }

    /// Picks the next token from the full logits. `history` is every token so far (prompt and
    /// generated).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let penalised;
        let logits = if self.config.repetition_penalty != 1.0 {
            let mut l = logits.to_vec();
            for t in self.penalised_tokens(history) {
                if let Some(v) = l.get_mut(t as usize) {
                    *v = self.penalise(*v);
                }
            }
            penalised = l;
            &penalised[..]
        } else {
            logits
        };
        let cand = top_k(logits, self.kept(logits.len()));
        self.draw(&cand)
    }

    /// How many of the largest penalised logits the draw looks at: 1 when greedy, top-k (0 =
    /// every token) otherwise.
    fn kept(&self, vocab: usize) -> usize {
        let c = &self.config;
        match (c.temperature <= 0.0, c.top_k) {
            (true, _) => 1,
            (false, 0) => vocab,
            (false, k) => k.min(vocab),
        }
    }

    /// How many of the largest raw logits to read back, or `None` when the draw may need any
    /// token (no top-k limit, or one beyond [`MAX_TOP`]; a penalty below 1 that can lift a
    /// token from anywhere into the lead). `ties_ranked` as [`LogitsSource::ties_ranked`].
    ///
    /// Why that is exact: [`Sampler::draw`] only ever sees the `k` largest penalised logits
    /// (temperature, min-p and top-p act on those `k`, renormalised among themselves), so those
    /// `k` tokens in order, with their values, fix the draw for a given generator state. With
    /// no penalty they are the `k` largest raw logits. A penalty above 1 only lowers the
    /// penalised tokens' logits and a softcap can merge values at the boundary, so then we read
    /// [`MAX_TOP`] for a margin: [`Sampler::candidates`] checks that what it picks beats every
    /// token it did not read.
    pub fn top_needed(&self, ties_ranked: bool) -> Option<usize> {
        let c = &self.config;
        let k = if c.temperature <= 0.0 { 1 } else { c.top_k };
        let penalty = c.repetition_penalty != 1.0;
        let lowers = c.repetition_penalty > 1.0; // false for NaN too
        if k == 0 || k > MAX_TOP || (penalty && !lowers) {
            return None;
        }
        Some(if penalty || !ties_ranked { MAX_TOP } else { k })
    }

    /// The candidates [`Sampler::sample`] would draw from, built from the largest logits
    /// `top` (raw-ranked, largest first); `None` when a token outside `top` could be among them.
    ///
    /// Every unread token's final logit is <= the last of `top` (`bound`): it ranked below it,
    /// and the softcap and a penalty above 1 never raise a value. So the `k` best of `top`
    /// (re-ranked after the penalty, in [`top_k`]'s order) are the full top-k when the k-th is
    /// strictly above `bound`. Equal to `bound` is enough only when nothing moved after the
    /// ranking (no penalty, `ties_ranked`): equal logits are ranked by lower id, so unread
    /// ties come after; except for zero, which the device compares as +0 == -0 where the host
    /// orders -0 below +0. NaN in `top` falls back; a NaN that was never read cannot be seen.
    fn candidates(
        &self,
        mut top: Vec<(u32, f32)>,
        vocab: usize,
        ties_ranked: bool,
        history: &[u32],
    ) -> Option<Vec<(u32, f32)>> {
        let c = &self.config;
        let k = self.kept(vocab);
        let bound = top.last()?.1;
        if top.iter().any(|(_, v)| v.is_nan()) {
            return None;
        }
        let penalty = c.repetition_penalty != 1.0;
        if penalty {
            if c.repetition_penalty <= 1.0 {
                return None;
            }
            let seen = self.penalised_tokens(history);
            for (t, v) in &mut top {
                if seen.binary_search(t).is_ok() {
                    *v = self.penalise(*v);
                }
            }
        }
        top.sort_by(|a, b| rank(*a, *b));
        let exact = top.len() >= vocab
            || (top.len() >= k && {
                let kth = top[k - 1].1;
                kth > bound || (ties_ranked && !penalty && kth == bound && kth != 0.0)
            });
        exact.then(|| {
            top.truncate(k);
            top
        })
    }

    /// The distinct tokens the repetition penalty applies to, sorted.
    fn penalised_tokens(&self, history: &[u32]) -> Vec<u32> {
        let start = history.len().saturating_sub(self.config.repetition_window);
        let mut seen = history[start..].to_vec();
        seen.sort_unstable();
        seen.dedup();
        seen
    }

    fn penalise(&self, v: f32) -> f32 {
        let p = self.config.repetition_penalty;
        if v > 0.0 {
            v / p
        } else {
            v * p
        }
    }

    /// The draw among `cand` (the largest penalised logits, largest first): the first one when
    /// greedy, otherwise temperature, min-p, top-p and one number from the generator.
    fn draw(&mut self, cand: &[(u32, f32)]) -> u32 {
        let c = &self.config;
        if c.temperature <= 0.0 {
            return cand[0].0;
        }
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand
            .iter()
            .map(|&(_, l)| ((l - max) / c.temperature).exp())
            .collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        let mut keep = probs.len();
        if c.min_p > 0.0 {
            let floor = c.min_p * probs[0];
            keep = probs.iter().take_while(|&&p| p >= floor).count().max(1);
        }
        if c.top_p < 1.0 {
            let mut acc = 0.0;
            let n = probs[..keep]
                .iter()
                .position(|&p| {
                    acc += p;
                    acc >= c.top_p
                })
                .map_or(keep, |i| i + 1);
            keep = keep.min(n);
        }
        let total: f32 = probs[..keep].iter().sum();
        let mut r = self.rng.next_f32() * total;
        for (i, &p) in probs[..keep].iter().enumerate() {
            if r < p {
                return cand[i].0;
            }
            r -= p;
        }
        cand[keep - 1].0
    }
}

/// [`top_k`]'s order: larger value first (IEEE total order), then lower token id.
fn rank(a: (u32, f32), b: (u32, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_zero_is_argmax() {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 0.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&[0.1, 3.0, 2.9, -1.0], &[]), 1);
    }

    #[test]
    fn repetition_penalty_can_change_the_argmax() {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 0.0,
            repetition_penalty: 1.5,
            ..Default::default()
        });
        assert_eq!(s.sample(&[0.1, 3.0, 2.9, -1.0], &[1]), 2);
    }

    #[test]
    fn filters_restrict_the_draw_and_seed_reproduces() {
        let logits: Vec<f32> = (0..100).map(|i| -(i as f32) * 0.05).collect();
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 5,
            top_p: 1.0,
            min_p: 0.0,
            seed: 7,
            ..Default::default()
        };
        let draws = |cfg: &SamplerConfig| {
            let mut s = Sampler::new(cfg.clone());
            (0..200).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
        };
        let a = draws(&cfg);
        assert!(a.iter().all(|&t| t < 5), "top-k 5 keeps ids 0..5");
        assert!(a.iter().any(|&t| t != 0), "sampling is not greedy");
        assert_eq!(a, draws(&cfg));
        // top-p 0.3 over 5 near-equal tokens keeps the first two.
        let b = draws(&SamplerConfig {
            top_p: 0.3,
            ..cfg.clone()
        });
        assert!(b.iter().all(|&t| t < 2), "{b:?}");
        // min-p 0.99 keeps only the top token.
        let m = draws(&SamplerConfig { min_p: 0.99, ..cfg });
        assert!(m.iter().all(|&t| t == 0));
    }

    /// Logits as the Vulkan backend hands them over: `top` ranks by IEEE comparison (+0 == -0),
    /// equal values by lower id, as shaders/top_k_f32.comp does; full reads are counted.
    struct Device<'a> {
        logits: &'a [f32],
        ties_ranked: bool,
        full_reads: std::cell::Cell<usize>,
    }

    impl<'a> Device<'a> {
        fn new(logits: &'a [f32]) -> Self {
            Device {
                logits,
                ties_ranked: true,
                full_reads: 0.into(),
            }
        }
    }

    impl LogitsSource for Device<'_> {
        fn vocab(&self) -> usize {
            self.logits.len()
        }
        fn top(&self, k: usize) -> Vec<(u32, f32)> {
            let mut v: Vec<(u32, f32)> = (0..).zip(self.logits.iter().copied()).collect();
            v.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
            v.truncate(k);
            v
        }
        fn all(&self) -> Vec<f32> {
            self.full_reads.set(self.full_reads.get() + 1);
            self.logits.to_vec()
        }
        fn ties_ranked(&self) -> bool {
            self.ties_ranked
        }
    }

    /// 300 decode steps of fresh logits (some values repeated, so ties occur) through
    /// [`Sampler::sample`] on everything and [`Sampler::next`] on a device; both must pick the
    /// same tokens from the same seed. Returns how many steps `next` read everything.
    fn full_reads_when_matching(cfg: SamplerConfig) -> usize {
        let mut gen = Rng::new(11);
        let (mut full, mut dev) = (Sampler::new(cfg.clone()), Sampler::new(cfg.clone()));
        let (mut hist_full, mut hist_dev) = (vec![5u32, 9, 5], vec![5u32, 9, 5]);
        let mut reads = 0;
        for step in 0..300 {
            let logits: Vec<f32> = (0..1000)
                .map(|_| ((gen.next_f32() * 8.0 - 4.0) * 16.0).round() / 16.0)
                .collect();
            let device = Device::new(&logits);
            let (a, b) = (
                full.sample(&logits, &hist_full),
                dev.next(&device, &hist_dev),
            );
            assert_eq!(a, b, "step {step} of {cfg:?}");
            hist_full.push(a);
            hist_dev.push(b);
            reads += device.full_reads.get();
        }
        reads
    }

    #[test]
    fn top_k_reads_pick_the_full_samplers_tokens() {
        let greedy = SamplerConfig {
            temperature: 0.0,
            ..Default::default()
        };
        // Greedy and top-k <= 64 never read the whole vocabulary.
        assert_eq!(full_reads_when_matching(greedy.clone()), 0);
        assert_eq!(full_reads_when_matching(SamplerConfig::default()), 0);
        let wide = SamplerConfig {
            temperature: 1.5,
            top_k: 64,
            top_p: 1.0,
            min_p: 0.0,
            seed: 3,
            ..Default::default()
        };
        assert_eq!(full_reads_when_matching(wide.clone()), 0);
        // A penalty above 1 works from 64 candidates (falling back where they do not decide).
        let penalised = SamplerConfig {
            repetition_penalty: 1.5,
            ..greedy.clone()
        };
        assert!(full_reads_when_matching(penalised) < 300);
        full_reads_when_matching(SamplerConfig {
            repetition_penalty: 1.3,
            top_k: 8,
            ..SamplerConfig::default()
        });
        // No top-k limit, a top-k beyond the device's, a penalty below 1: everything, always.
        for cfg in [
            SamplerConfig {
                top_k: 0,
                ..wide.clone()
            },
            SamplerConfig {
                top_k: 100,
                ..wide.clone()
            },
            SamplerConfig {
                repetition_penalty: 0.8,
                ..greedy
            },
        ] {
            assert_eq!(full_reads_when_matching(cfg), 300);
        }
    }

    #[test]
    fn ties_and_zeros_at_the_boundary_fall_back() {
        let greedy = || {
            Sampler::new(SamplerConfig {
                temperature: 0.0,
                ..Default::default()
            })
        };
        // The host ranks +0 above -0, the device calls them equal and takes the lower id.
        let mut zeros = vec![-1.0f32; 16];
        (zeros[3], zeros[7]) = (-0.0, 0.0);
        let device = Device::new(&zeros);
        assert_eq!(device.top(1), vec![(3, -0.0)]);
        assert_eq!(greedy().next(&device, &[]), 7);
        assert_eq!(device.full_reads.get(), 1);
        // Equal logits across the top-3 boundary: unread ties have higher ids, so the three
        // read are the full sampler's three.
        let mut ties = vec![-1.0f32; 40];
        for i in [30, 2, 20, 10] {
            ties[i] = 5.0;
        }
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 3,
            seed: 1,
            ..Default::default()
        };
        let (mut full, mut dev) = (Sampler::new(cfg.clone()), Sampler::new(cfg.clone()));
        let device = Device::new(&ties);
        for _ in 0..50 {
            assert_eq!(dev.next(&device, &[]), full.sample(&ties, &[]));
        }
        assert_eq!(device.full_reads.get(), 0);
        // All logits equal: the top-3 read decides (unread ties have higher ids), unless a
        // softcap came after the ranking and may have merged distinct values: then even a
        // 64-wide read cannot tell, and everything is read.
        let flat = vec![5.0f32; 100];
        let capped = Device {
            ties_ranked: false,
            ..Device::new(&flat)
        };
        for source in [Device::new(&flat), capped] {
            assert_eq!(
                Sampler::new(cfg.clone()).next(&source, &[]),
                Sampler::new(cfg.clone()).sample(&flat, &[])
            );
            assert_eq!(source.full_reads.get(), usize::from(!source.ties_ranked));
        }
    }
}
