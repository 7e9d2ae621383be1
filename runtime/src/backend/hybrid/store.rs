//! A store that quantizes the attention projections of another store to the `optimal`
//! recipe's int4 types and places them in `npu.bank0`, as `mixq-quantize convert --profile
//! phoenix` would (round-to-nearest per block, no calibration): for tests and quality figures
//! of the NPU path when no converted `.mixq` is at hand. Other tensors pass through unchanged.

use crate::weights::{WeightSource, WeightStore};
use anyhow::{Context, Result};
use mixq_format::quant::{dequantize_row, quantize_row, QType};
use mixq_format::{Gemma3Config, SharedBytes};
use std::collections::HashMap;
use std::sync::Mutex;

pub struct NpuAttentionStore {
    inner: Box<dyn WeightStore>,
    cache: Mutex<HashMap<String, WeightSource>>,
}

impl NpuAttentionStore {
    pub fn new(inner: Box<dyn WeightStore>) -> Self {
        NpuAttentionStore {
            inner,
            cache: Mutex::new(HashMap::new()),
        }
    }
}

/// The `optimal` recipe's type for an attention projection (q/k/v I4_GROUPED, o I4_PER_CHANNEL).
fn attn_qtype(name: &str) -> Option<QType> {
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

impl WeightStore for NpuAttentionStore {
    fn config(&self) -> &Gemma3Config {
        self.inner.config()
    }

    fn weight(&self, name: &str) -> Result<WeightSource> {
        let Some(qtype) = attn_qtype(name) else {
            return self.inner.weight(name);
        };
        if let Some(w) = self.cache.lock().unwrap().get(name) {
            return Ok(w.clone());
        }
        let src = self.inner.weight(name)?;
        let rb = qtype.row_bytes(src.cols)?;
        let srb = src.qtype.row_bytes(src.cols)?;
        let mut bytes = vec![0u8; rb * src.rows];
        let mut row = vec![0f32; src.cols];
        for (r, out) in bytes.chunks_exact_mut(rb).enumerate() {
            dequantize_row(src.qtype, &src.bytes[r * srb..(r + 1) * srb], &mut row)?;
            quantize_row(qtype, &row, None, out).with_context(|| format!("quantizing `{name}`"))?;
        }
        let w = WeightSource {
            qtype,
            bytes: SharedBytes::from_vec(bytes),
            section: Some("npu.bank0".into()),
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

    /// The wrapped store's bytes (the re-quantized attention is smaller; a bound, not exact).
    fn tensor_bytes(&self) -> Option<u64> {
        self.inner.tensor_bytes()
    }

    fn describe(&self) -> String {
        format!(
            "{} with attention projections quantized to int4 in npu.bank0",
            self.inner.describe()
        )
    }
}
