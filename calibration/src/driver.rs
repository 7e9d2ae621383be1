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

/// Index of a site in [`SITES`]; `None` for the branch outputs, which have no Hessian.
pub fn site_index(s: Site) -> Option<usize> {
    match s {
        Site::AttnInput => Some(0),
        Site::AttnOutput => Some(1),
        Site::FfnInput => Some(2),
        Site::FfnHidden => Some(3),
        Site::AttnBranch | Site::FfnBranch => None,
    }
}

/// The width of each site's activations.
pub fn site_width(c: &Gemma3Config, s: Site) -> usize {
    match s {
        Site::AttnInput | Site::FfnInput | Site::AttnBranch | Site::FfnBranch => c.hidden_size,
        Site::AttnOutput => c.q_dim(),
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
    /// among them) matter less than `Σ xᵀx` says. The other sites stay uniform.
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

/// Input statistics of one layer's linear layers: one Hessian per observed site.
#[derive(Debug, Clone, Default)]
pub struct LayerStats {
    pub sites: [Option<Hessian>; 4],
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
        let mut acts = Activations::new(self.be, self.config, self.cap);
        let hidden = self.config.hidden_size;
        // a weighted site's input waits here for its branch output, which the layer computes
        // next (sites run in order: o_proj's input, its output, down_proj's input, its output)
        let mut pending: Option<(Site, Vec<f32>)> = None;
        for (x, &n) in self.x.iter().zip(&self.lens) {
            self.run(layer, &mut acts, x, n, &mut |site, buf, n| {
                if let Some(h) = stats.get_mut(site) {
                    if weights == TokenWeights::PostNorm && branch_of(site).is_some() {
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
        for h in stats.sites.iter_mut().flatten() {
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

    #[test]
    fn only_the_projection_inputs_wait_for_a_branch() {
        assert_eq!(branch_of(Site::AttnOutput), Some(Site::AttnBranch));
        assert_eq!(branch_of(Site::FfnHidden), Some(Site::FfnBranch));
        assert_eq!(branch_of(Site::AttnInput), None);
        assert_eq!(branch_of(Site::FfnInput), None);
        assert_eq!(site_index(Site::AttnBranch), None);
    }
}
