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

/// Index of a site in [`SITES`].
pub fn site_index(s: Site) -> usize {
    match s {
        Site::AttnInput => 0,
        Site::AttnOutput => 1,
        Site::FfnInput => 2,
        Site::FfnHidden => 3,
    }
}

/// The input width of each site.
pub fn site_width(c: &Gemma3Config, s: Site) -> usize {
    match s {
        Site::AttnInput | Site::FfnInput => c.hidden_size,
        Site::AttnOutput => c.q_dim(),
        Site::FfnHidden => c.intermediate_size,
    }
}

/// Input statistics of one layer's linear layers: one Hessian per observed site.
#[derive(Debug, Clone, Default)]
pub struct LayerStats {
    pub sites: [Option<Hessian>; 4],
}

impl LayerStats {
    pub fn get(&self, s: Site) -> Option<&Hessian> {
        self.sites[site_index(s)].as_ref()
    }
    pub fn get_mut(&mut self, s: Site) -> Option<&mut Hessian> {
        self.sites[site_index(s)].as_mut()
    }
    /// Takes a site's Hessian out (to turn it into its mean in place).
    pub fn take(&mut self, s: Site) -> Option<Hessian> {
        self.sites[site_index(s)].take()
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
    /// of each site with `want[site_index] == true`. `tick(tokens)` after each sequence.
    pub fn observe(
        &self,
        layer: &Layer<CpuWeight>,
        want: [bool; 4],
        mut tick: impl FnMut(usize),
    ) -> LayerStats {
        let mut stats = LayerStats::default();
        for (k, s) in SITES.iter().enumerate() {
            if want[k] {
                stats.sites[k] = Some(Hessian::new(site_width(self.config, *s)));
            }
        }
        let mut acts = Activations::new(self.be, self.config, self.cap);
        for (x, &n) in self.x.iter().zip(&self.lens) {
            self.run(layer, &mut acts, x, n, &mut |site, buf, n| {
                if let Some(h) = stats.get_mut(site) {
                    h.add(buf, n);
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
