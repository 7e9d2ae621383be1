//! The calibration driver: the residual stream of every calibration sequence, advanced one
//! decoder layer at a time.
//!
//! For layer `i` the converter calls [`Calibrator::observe`] with the layer's full-precision
//! weights (the four input Hessians of its linear layers, measured on inputs produced by the
//! already-quantized layers `0..i`), quantizes the layer, then calls [`Calibrator::advance`]
//! with the quantized weights (bound exactly as the runtime binds them), so layer `i + 1` is
//! calibrated on what the quantized model will really feed it. Memory: the residual stream of
//! all sequences (`tokens x hidden` f32) plus the Hessians; no weights are held here.

use crate::{CalibSet, Hessian};
use mixq_format::{Gemma3Config, LayerKind};
use mixq_runtime::backend::cpu::{CpuBackend, CpuWeight};
use mixq_runtime::backend::Backend;
use mixq_runtime::model::gemma3::{run_layer, Activations, Layer, Site};

/// The four observation sites, in the order they run.
pub const SITES: [Site; 4] = [
    Site::AttnInput,
    Site::AttnOutput,
    Site::FfnInput,
    Site::FfnHidden,
];

/// Index of a site in [`SITES`]; `None` for the sites without a Hessian of their own (queries,
/// keys, branch outputs).
pub fn site_index(s: Site) -> Option<usize> {
    match s {
        Site::AttnInput => Some(0),
        Site::AttnOutput => Some(1),
        Site::FfnInput => Some(2),
        Site::FfnHidden => Some(3),
        Site::Queries | Site::Keys | Site::AttnBranch | Site::FfnBranch => None,
    }
}

/// The width of each site's activations.
pub fn site_width(c: &Gemma3Config, s: Site) -> usize {
    match s {
        Site::AttnInput | Site::FfnInput | Site::AttnBranch | Site::FfnBranch => c.hidden_size,
        Site::AttnOutput | Site::Queries => c.q_dim(),
        Site::Keys => c.kv_dim(),
        Site::FfnHidden => c.intermediate_size,
    }
}

/// How calibration tokens count in the Hessians.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenWeights {
    /// Every token alike: `H = Σ xᵀx`, GPTQ's own objective.
    Uniform,
    /// o_proj's and down_proj's input tokens weighted by `1 / mean(y_t²)` of the projection's
    /// output `y_t`. Gemma 3 divides each branch output by its RMS (the post-attention and
    /// post-FFN norms) before adding it to the residual, so an output error at token `t` reaches
    /// the model scaled by `1 / rms(y_t)`: tokens with large branch outputs (the `<bos>` sink
    /// among them) matter less than `Σ xᵀx` says. v_proj gets its own Hessian
    /// ([`LayerStats::values`]): key position `s` weighted by `Σ_h Σ_t a_hts² / mean(o_t²)`,
    /// the attention its value feeds (the output at `t` is `Σ_s a_ts v_s`), each output then
    /// divided by the post-attention norm. The other sites stay uniform.
    PostNorm,
}

impl TokenWeights {
    pub fn name(self) -> &'static str {
        match self {
            TokenWeights::Uniform => "uniform",
            TokenWeights::PostNorm => "post-norm",
        }
    }
}

/// The branch output that weights a site's tokens under [`TokenWeights::PostNorm`].
fn branch_of(s: Site) -> Option<Site> {
    match s {
        Site::AttnOutput => Some(Site::AttnBranch),
        Site::FfnHidden => Some(Site::FfnBranch),
        _ => None,
    }
}

/// `1 / mean(y_t²)` per token of `y` (`n` rows of `width`), each mean floored at 1e-3 of the
/// batch's mean so a (near-)zero output cannot take over the Hessian.
pub fn post_norm_weights(y: &[f32], n: usize, width: usize) -> Vec<f32> {
    let ms: Vec<f64> = y[..n * width]
        .chunks_exact(width)
        .map(|r| r.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / width as f64)
        .collect();
    let floor = 1e-3 * ms.iter().sum::<f64>() / n.max(1) as f64;
    ms.iter()
        .map(|&m| (1.0 / m.max(floor).max(f64::MIN_POSITIVE)) as f32)
        .collect()
}

/// Per key position `s` of one sequence (queries `q`, keys `k` after QK-norm and RoPE, from
/// position 0): `Σ_h Σ_t a_hts² · out_w[t]`, where `a_h` is head `h`'s softmax attention
/// (causal, within `window`) and `out_w` weights each output position.
pub fn value_weights(
    c: &Gemma3Config,
    q: &[f32],
    k: &[f32],
    n: usize,
    window: Option<usize>,
    out_w: &[f32],
) -> Vec<f32> {
    use rayon::prelude::*;
    let (d, heads, kv_heads) = (c.head_dim, c.num_attention_heads, c.num_key_value_heads);
    let (q_dim, kv_dim, group) = (heads * d, kv_heads * d, heads / kv_heads.max(1));
    let scale = c.query_pre_attn_scalar.powf(-0.5);
    let w = (0..n * heads)
        .into_par_iter()
        .fold(
            || (vec![0f64; n], Vec::new()),
            |(mut acc, mut sc): (Vec<f64>, Vec<f32>), idx| {
                let (t, h) = (idx / heads, idx % heads);
                let first = window.map_or(0, |w| (t + 1).saturating_sub(w));
                let qh = &q[t * q_dim + h * d..t * q_dim + (h + 1) * d];
                let kvh = h / group;
                sc.clear();
                for s in first..=t {
                    let kr = &k[s * kv_dim + kvh * d..s * kv_dim + (kvh + 1) * d];
                    let l = qh.iter().zip(kr).map(|(a, b)| a * b).sum::<f32>() * scale;
                    sc.push(
                        c.attn_logit_softcapping
                            .map_or(l, |cap| (l / cap).tanh() * cap),
                    );
                }
                let max = sc.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let sum: f64 = sc.iter().map(|&l| ((l - max) as f64).exp()).sum();
                for (s, &l) in (first..=t).zip(sc.iter()) {
                    let a = ((l - max) as f64).exp() / sum;
                    acc[s] += a * a * out_w[t] as f64;
                }
                (acc, sc)
            },
        )
        .map(|(acc, _)| acc)
        .reduce(
            || vec![0f64; n],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        );
    w.into_iter().map(|v| v as f32).collect()
}

/// Input statistics of one layer's linear layers: one Hessian per observed site, and under
/// [`TokenWeights::PostNorm`] v_proj's own (the attention input, value-weighted).
#[derive(Debug, Clone, Default)]
pub struct LayerStats {
    pub sites: [Option<Hessian>; 4],
    pub values: Option<Hessian>,
}

impl LayerStats {
    pub fn get(&self, s: Site) -> Option<&Hessian> {
        self.sites[site_index(s)?].as_ref()
    }
    pub fn get_mut(&mut self, s: Site) -> Option<&mut Hessian> {
        self.sites[site_index(s)?].as_mut()
    }
    /// Takes a site's Hessian out (to turn it into its mean in place).
    pub fn take(&mut self, s: Site) -> Option<Hessian> {
        self.sites[site_index(s)?].take()
    }
}

pub struct Calibrator<'a> {
    be: &'a CpuBackend,
    config: &'a Gemma3Config,
    /// Residual stream per sequence: (len, hidden).
    x: Vec<Vec<f32>>,
    lens: Vec<usize>,
    cap: usize,
}

impl<'a> Calibrator<'a> {
    /// Starts from the embedding: `embed_row(id, out)` writes the (stored, dequantized)
    /// embedding row of token `id`; it is multiplied by the config's embedding scale as the
    /// runtime does.
    pub fn new(
        be: &'a CpuBackend,
        config: &'a Gemma3Config,
        set: &CalibSet,
        mut embed_row: impl FnMut(u32, &mut [f32]),
    ) -> Self {
        let h = config.hidden_size;
        let scale = config.embedding_scale();
        let x = set
            .sequences
            .iter()
            .map(|s| {
                let mut x = vec![0f32; s.len() * h];
                for (row, &id) in x.chunks_exact_mut(h).zip(s) {
                    embed_row(id, row);
                    row.iter_mut().for_each(|v| *v *= scale);
                }
                x
            })
            .collect();
        let lens: Vec<usize> = set.sequences.iter().map(|s| s.len()).collect();
        let cap = lens.iter().copied().max().unwrap_or(1);
        Calibrator {
            be,
            config,
            x,
            lens,
            cap,
        }
    }

    /// Tokens over all sequences.
    pub fn tokens(&self) -> usize {
        self.lens.iter().sum()
    }

    pub fn sequences(&self) -> usize {
        self.lens.len()
    }

    /// Runs `layer` over every sequence without changing the stream, accumulating the Hessian
    /// of each site with `want[site_index] == true`, its tokens weighted by `weights`.
    /// `tick(tokens)` after each sequence.
    pub fn observe(
        &self,
        layer: &Layer<CpuWeight>,
        want: [bool; 4],
        weights: TokenWeights,
        mut tick: impl FnMut(usize),
    ) -> LayerStats {
        let mut stats = LayerStats::default();
        for (k, s) in SITES.iter().enumerate() {
            if want[k] {
                stats.sites[k] = Some(Hessian::new(site_width(self.config, *s)));
            }
        }
        let weighted = weights == TokenWeights::PostNorm;
        if weighted && want[0] {
            stats.values = Some(Hessian::new(self.config.hidden_size));
        }
        let window = (layer.kind == LayerKind::Sliding).then_some(self.config.sliding_window);
        let mut acts = Activations::new(self.be, self.config, self.cap);
        let hidden = self.config.hidden_size;
        // v_proj's input, queries and keys of the sequence, until o_proj's output arrives
        let (mut v_in, mut qs, mut ks) = (Vec::new(), Vec::new(), Vec::new());
        // a weighted site's input waits here for its branch output, which the layer computes
        // next (sites run in order: o_proj's input, its output, down_proj's input, its output)
        let mut pending: Option<(Site, Vec<f32>)> = None;
        for (x, &n) in self.x.iter().zip(&self.lens) {
            self.run(layer, &mut acts, x, n, &mut |site, buf, n| {
                if stats.values.is_some() {
                    let w = site_width(self.config, site);
                    match site {
                        Site::AttnInput => v_in = buf[..n * w].to_vec(),
                        Site::Queries => qs = buf[..n * w].to_vec(),
                        Site::Keys => ks = buf[..n * w].to_vec(),
                        Site::AttnBranch => {
                            let ow = post_norm_weights(buf, n, hidden);
                            let vw = value_weights(self.config, &qs, &ks, n, window, &ow);
                            if let Some(h) = stats.values.as_mut() {
                                h.add_weighted(&v_in, n, &vw);
                            }
                        }
                        _ => {}
                    }
                }
                if let Some(h) = stats.get_mut(site) {
                    if weighted && branch_of(site).is_some() {
                        let w = site_width(self.config, site);
                        pending = Some((site, buf[..n * w].to_vec()));
                    } else {
                        h.add(buf, n);
                    }
                }
                if let Some((s, xs)) = pending.take_if(|(s, _)| branch_of(*s) == Some(site)) {
                    let tw = post_norm_weights(buf, n, hidden);
                    if let Some(h) = stats.get_mut(s) {
                        h.add_weighted(&xs, n, &tw);
                    }
                }
            });
            tick(n);
        }
        for h in stats.sites.iter_mut().chain([&mut stats.values]).flatten() {
            h.finish();
        }
        stats
    }

    /// Advances every sequence's residual stream through `layer` (normally the quantized
    /// layer). `tick(tokens)` after each sequence.
    pub fn advance(&mut self, layer: &Layer<CpuWeight>, mut tick: impl FnMut(usize)) {
        let mut acts = Activations::new(self.be, self.config, self.cap);
        let h = self.config.hidden_size;
        let mut xs = std::mem::take(&mut self.x);
        for (x, &n) in xs.iter_mut().zip(&self.lens) {
            self.run(layer, &mut acts, x, n, &mut |_, _, _| {});
            x.copy_from_slice(&acts.x[..n * h]);
            tick(n);
        }
        self.x = xs;
    }

    /// The current residual stream of sequence `s`: (len, hidden).
    pub fn stream(&self, s: usize) -> &[f32] {
        &self.x[s]
    }

    fn run(
        &self,
        layer: &Layer<CpuWeight>,
        acts: &mut Activations<CpuBackend>,
        x: &[f32],
        n: usize,
        observe: &mut dyn FnMut(Site, &Vec<f32>, usize),
    ) {
        let c = self.config;
        acts.x[..x.len()].copy_from_slice(x);
        let window = (layer.kind == LayerKind::Sliding).then_some(c.sliding_window);
        let mut kv = self.be.new_kv(c.kv_dim(), window);
        run_layer(self.be, c, layer, &mut kv, 0, n, acts, observe);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_norm_weights_are_inverse_mean_squares_with_a_floor() {
        // rows: mean squares 4, 1, 0 (floored at 1e-3 of the mean 5/3)
        let y = [2.0f32, -2.0, 1.0, 1.0, 0.0, 0.0];
        let w = post_norm_weights(&y, 3, 2);
        assert!((w[0] - 0.25).abs() < 1e-6);
        assert!((w[1] - 1.0).abs() < 1e-6);
        assert!((w[2] - 1.0 / (1e-3 * 5.0 / 3.0)).abs() < 1e-2);
    }

    fn tiny_config(window: usize) -> Gemma3Config {
        let json = format!(
            r#"{{"model_type":"gemma3_text","vocab_size":64,"hidden_size":8,
            "intermediate_size":16,"num_hidden_layers":2,"num_attention_heads":2,
            "num_key_value_heads":1,"head_dim":4,"sliding_window":{window},
            "sliding_window_pattern":2,"query_pre_attn_scalar":4}}"#
        );
        Gemma3Config::from_json_str(&json, std::path::Path::new("<tiny>")).unwrap()
    }

    #[test]
    fn value_weights_sum_squared_attention_per_key() {
        let c = tiny_config(2);
        let n = 4;
        // zero queries: uniform attention over the visible keys
        let q = vec![0f32; n * 2 * 4];
        let k: Vec<f32> = (0..n * 4).map(|i| (i as f32 * 0.7).sin()).collect();
        let ow = [1.0f32, 2.0, 1.0, 0.5];
        // causal: query t sees t + 1 keys, each with weight 1 / (t + 1); two heads
        let want = |s: usize, window: Option<usize>| -> f32 {
            (s..n)
                .filter(|&t| window.is_none_or(|w| t - s < w))
                .map(|t| {
                    let seen = window.map_or(t + 1, |w| (t + 1).min(w));
                    2.0 * ow[t] / (seen * seen) as f32
                })
                .sum()
        };
        for window in [None, Some(2)] {
            let w = value_weights(&c, &q, &k, n, window, &ow);
            for (s, &got) in w.iter().enumerate() {
                assert!(
                    (got - want(s, window)).abs() < 1e-5,
                    "{window:?} key {s}: {got} vs {}",
                    want(s, window)
                );
            }
        }
    }

    #[test]
    fn only_the_projection_inputs_wait_for_a_branch() {
        assert_eq!(branch_of(Site::AttnOutput), Some(Site::AttnBranch));
        assert_eq!(branch_of(Site::FfnHidden), Some(Site::FfnBranch));
        assert_eq!(branch_of(Site::AttnInput), None);
        assert_eq!(branch_of(Site::FfnInput), None);
        assert_eq!(site_index(Site::AttnBranch), None);
    }
}
