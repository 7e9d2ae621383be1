//! A store that re-quantizes some tensors of another store by round to nearest per block (each
//! block's min/max range; no calibration, no search), for tests and quality figures when no
//! converted `.mixq` is at hand:
//! - [`RtnStore::phoenix_int4`]: a `.mixq`-like model, every linear int4 and the attention
//!   projections in `npu.bank0` as `mixq-quantize convert --profile phoenix` places them (the
//!   hybrid and the CPU fast-vs-exact end-to-end tests);
//! - [`RtnStore::new`] with any rule.
//!
//! Other tensors pass through unchanged.

use crate::weights::{WeightSource, WeightStore};
use anyhow::{bail, Context, Result};
use half::f16;
use mixq_format::quant::{dequantize_row, pack_row, BlockParams, QType};
use mixq_format::{Gemma3Config, SharedBytes};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::Mutex;

/// What to do with one tensor: its new type and, if given, the section it claims to be in.
pub type RtnRule = Box<dyn Fn(&str) -> Option<(QType, Option<&'static str>)>>;

pub struct RtnStore {
    inner: Box<dyn WeightStore>,
    rule: RtnRule,
    /// How the rule changes the model, for `describe`.
    what: String,
    cache: Mutex<HashMap<String, WeightSource>>,
}

impl RtnStore {
    /// Tensors for which `rule` names a type are quantized to it (1-D tensors never are).
    pub fn new(inner: Box<dyn WeightStore>, what: &str, rule: RtnRule) -> Self {
        RtnStore {
            inner,
            rule,
            what: what.to_string(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// [`phoenix_int4_rule`]: every linear quantized, attention in `npu.bank0`.
    pub fn phoenix_int4(inner: Box<dyn WeightStore>) -> Self {
        Self::new(
            inner,
            "the int4 recipe's types (o_proj I4_PER_CHANNEL, embedding I8_ASYM), attention in npu.bank0",
            Box::new(phoenix_int4_rule),
        )
    }
}

/// A `.mixq`-like model without a conversion: the `int4` recipe's types as they were before
/// I4_GROUPED32 (every linear I4_GROUPED, the embedding = tied lm_head I8_ASYM, norms as
/// stored; the tests' measured figures are for these) except o_proj, which is
/// I4_PER_CHANNEL as in the `optimal` recipe; the attention projections in `npu.bank0`,
/// where `--profile phoenix` places them.
pub fn phoenix_int4_rule(name: &str) -> Option<(QType, Option<&'static str>)> {
    if let Some(q) = attn_qtype(name) {
        return Some((q, Some("npu.bank0")));
    }
    if name == "model.embed_tokens.weight" {
        return Some((QType::I8Asym, None));
    }
    ["gate_proj", "up_proj", "down_proj"]
        .iter()
        .any(|p| name.ends_with(&format!("mlp.{p}.weight")))
        .then_some((QType::I4Grouped, None))
}

/// Round to nearest with each block's min and max as its range: no search, so the 262144-row
/// embedding table takes a second, not minutes (`quantize_row`'s importance-weighted fit).
/// Affine types only (I8_ASYM, I4_GROUPED, I4_GROUPED32, I4_GROUPED16, I4_PER_CHANNEL).
fn quantize_row_minmax(qtype: QType, x: &[f32], out: &mut [u8]) -> Result<()> {
    let levels = match qtype {
        QType::I8Asym => 255.0,
        QType::I4Grouped | QType::I4Grouped32 | QType::I4Grouped16 | QType::I4PerChannel => 15.0,
        q => bail!(
            "{}: round-to-nearest store supports I8_ASYM, I4_GROUPED, I4_GROUPED32, I4_GROUPED16 and I4_PER_CHANNEL",
            q.name()
        ),
    };
    let pb = qtype.param_block(x.len());
    let mut params = Vec::with_capacity(x.len() / pb);
    let mut codes = vec![0u8; x.len()];
    for (xs, cs) in x.chunks_exact(pb).zip(codes.chunks_exact_mut(pb)) {
        let lo = xs.iter().fold(f32::INFINITY, |a, &v| a.min(v));
        let hi = xs.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
        let p = if qtype == QType::I4PerChannel {
            BlockParams::I4PerChannel {
                scale: (hi - lo) / levels,
                min: lo,
            }
        } else {
            // The stored f16 min must not exceed the block's minimum (codes start at 0).
            let mut min = f16::from_f32(lo);
            if min.to_f32() > lo {
                min = f16::from_f32(lo - (lo.abs() * 1e-3).max(1e-7));
            }
            let scale = f16::from_f32((hi - min.to_f32()) / levels);
            BlockParams::f16_affine(qtype, scale, min).expect("an f16 (scale, min) type")
        };
        for (i, (&v, c)) in xs.iter().zip(cs.iter_mut()).enumerate() {
            *c = p.quantize(i, v);
        }
        params.push(p);
    }
    Ok(pack_row(qtype, &params, &codes, out)?)
}

/// The `optimal` recipe's type for an attention projection (q/k/v I4_GROUPED, o I4_PER_CHANNEL).
pub fn attn_qtype(name: &str) -> Option<QType> {
    if name.ends_with("self_attn.o_proj.weight") {
        Some(QType::I4PerChannel)
    } else if ["q_proj", "k_proj", "v_proj"]
        .iter()
        .any(|p| name.ends_with(&format!("self_attn.{p}.weight")))
    {
        Some(QType::I4Grouped)
    } else {
        None
    }
}

impl WeightStore for RtnStore {
    fn config(&self) -> &Gemma3Config {
        self.inner.config()
    }

    fn weight(&self, name: &str) -> Result<WeightSource> {
        let Some((qtype, section)) = (self.rule)(name) else {
            return self.inner.weight(name);
        };
        if let Some(w) = self.cache.lock().unwrap().get(name) {
            return Ok(w.clone());
        }
        let src = self.inner.weight(name)?;
        if src.rows == 1 {
            return Ok(src);
        }
        let rb = qtype.row_bytes(src.cols)?;
        let srb = src.qtype.row_bytes(src.cols)?;
        let mut bytes = vec![0u8; rb * src.rows];
        // Rows in parallel: the embedding table alone is 262144 rows.
        bytes
            .par_chunks_mut(rb)
            .enumerate()
            .try_for_each_init(
                || vec![0f32; src.cols],
                |row, (r, out)| -> Result<()> {
                    dequantize_row(src.qtype, &src.bytes[r * srb..(r + 1) * srb], row)?;
                    quantize_row_minmax(qtype, row, out)
                },
            )
            .with_context(|| format!("quantizing `{name}` to {}", qtype.name()))?;
        let w = WeightSource {
            qtype,
            bytes: SharedBytes::from_vec(bytes),
            section: section.map(String::from).or(src.section.clone()),
            ..src
        };
        self.cache
            .lock()
            .unwrap()
            .insert(name.to_string(), w.clone());
        Ok(w)
    }

    fn tokenizer_json(&self) -> Result<Vec<u8>> {
        self.inner.tokenizer_json()
    }

    /// The wrapped store's bytes (re-quantized tensors are smaller; a bound, not exact).
    fn tensor_bytes(&self) -> Option<u64> {
        self.inner.tensor_bytes()
    }

    fn describe(&self) -> String {
        format!(
            "{} with {} (round to nearest)",
            self.inner.describe(),
            self.what
        )
    }
}
