//! Turning logits into the next token: greedy at temperature 0, otherwise repetition penalty,
//! temperature, then top-k, top-p and min-p filters, then a draw from a seeded generator (so a
//! given seed reproduces a run exactly).

use crate::backend::cpu::top_k;

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

    /// Picks the next token. `history` is every token so far (prompt and generated).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let c = &self.config;
        let penalised;
        let logits = if c.repetition_penalty != 1.0 {
            let mut l = logits.to_vec();
            let start = history.len().saturating_sub(c.repetition_window);
            let mut seen = history[start..].to_vec();
            seen.sort_unstable();
            seen.dedup();
            for &t in &seen {
                if let Some(v) = l.get_mut(t as usize) {
                    *v = if *v > 0.0 {
                        *v / c.repetition_penalty
                    } else {
                        *v * c.repetition_penalty
                    };
                }
            }
            penalised = l;
            &penalised[..]
        } else {
            logits
        };
        if c.temperature <= 0.0 {
            return top_k(logits, 1)[0].0;
        }
        // Candidates, largest first. Without a top-k limit, keep enough to cover top-p mass.
        let k = if c.top_k == 0 { logits.len() } else { c.top_k };
        let cand = top_k(logits, k);
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
}
