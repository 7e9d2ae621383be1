//! The published Gemma 3 text-model shapes, as [`Gemma3Config`]s (for tiling plans, timing
//! predictions and benches at sizes we do not download). Values from the HF `config.json` of
//! google/gemma-3-{270m,1b-pt,4b-pt,12b-pt,27b-pt}.

use mixq_format::Gemma3Config;
use std::path::Path;

/// The sizes [`gemma3`] knows, smallest first.
pub const SIZES: [&str; 5] = ["270m", "1b", "4b", "12b", "27b"];

/// The config of a published Gemma 3 size (`270m`, `1b`, `4b`, `12b`, `27b`).
pub fn gemma3(size: &str) -> Option<Gemma3Config> {
    // (hidden, intermediate, layers, heads, kv heads, head_dim, sliding window, query_pre_attn_scalar)
    let (h, i, l, nh, nkv, hd, sw, qs) = match size.to_ascii_lowercase().as_str() {
        "270m" => (640, 2048, 18, 4, 1, 256, 512, 256),
        "1b" => (1152, 6912, 26, 4, 1, 256, 512, 256),
        "4b" => (2560, 10240, 34, 8, 4, 256, 1024, 256),
        "12b" => (3840, 15360, 48, 16, 8, 256, 1024, 256),
        "27b" => (5376, 21504, 62, 32, 16, 128, 1024, 168),
        _ => return None,
    };
    let json = format!(
        r#"{{"model_type":"gemma3_text","vocab_size":262144,"hidden_size":{h},
        "intermediate_size":{i},"num_hidden_layers":{l},"num_attention_heads":{nh},
        "num_key_value_heads":{nkv},"head_dim":{hd},"sliding_window":{sw},
        "sliding_window_pattern":6,"query_pre_attn_scalar":{qs},"torch_dtype":"bfloat16"}}"#
    );
    Gemma3Config::from_json_str(&json, Path::new(&format!("<gemma3-{size}>"))).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_size_parses() {
        for s in super::SIZES {
            let c = super::gemma3(s).unwrap();
            assert_eq!(c.layer_types.len(), c.num_hidden_layers, "{s}");
        }
        assert!(super::gemma3("2b").is_none());
    }
}
