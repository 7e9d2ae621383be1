//! The HF checkpoint reader and tokenizer on the real Gemma 3 270M (`make test-model`).

use mixq_format::checkpoint::{expected_tensors, DType, HfCheckpoint};
use mixq_format::tokenizer::Tokenizer;
use mixq_format::LayerKind;
use std::path::PathBuf;

/// `$MIXQ_TEST_MODEL`, else `<workspace>/models/gemma-3-270m`. A missing model fails loudly:
/// a silently skipped test would let the real-model checks rot unnoticed.
fn model_dir() -> PathBuf {
    let dir = std::env::var_os("MIXQ_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/gemma-3-270m")
        });
    assert!(
        dir.join("config.json").is_file(),
        "test model not found at {}: run `make test-model` (or set MIXQ_TEST_MODEL to a Gemma 3 270M directory)",
        dir.display()
    );
    dir
}

#[test]
fn opens_gemma3_270m_with_the_expected_layout() {
    let ck = HfCheckpoint::open(&model_dir()).unwrap();
    let c = ck.config();
    assert_eq!(c.num_hidden_layers, 18);
    assert_eq!(
        (c.hidden_size, c.vocab_size, c.head_dim),
        (640, 262_144, 256)
    );
    let full: Vec<usize> = (0..18)
        .filter(|&i| c.layer_types[i] == LayerKind::Full)
        .collect();
    assert_eq!(full, vec![5, 11, 17]);
    assert!(c.tie_word_embeddings);

    // Tied: exactly the text model's tensors, no separate lm_head.
    let expected = expected_tensors(c);
    assert_eq!(expected.len(), 236);
    assert_eq!(ck.tensor_names().len(), expected.len());
    for (name, shape) in &expected {
        let t = ck.tensor(name).unwrap();
        assert_eq!((&t.shape, t.dtype), (shape, DType::BF16), "{name}");
    }
}

#[test]
fn norm_weights_and_embedding_rows_read_back() {
    let ck = HfCheckpoint::open(&model_dir()).unwrap();
    let norm = ck.tensor("model.norm.weight").unwrap().to_f32();
    assert_eq!(norm.len(), 640);
    // Gemma stores RMSNorm weights as w in x*(1+w); this checkpoint's final norm is large.
    assert_eq!(norm[..4], [6.125, 8.5625, 46.0, 144.0]);
    let (min, max) = norm
        .iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    assert_eq!((min, max), (-0.8125, 300.0));

    let emb = ck.tensor("model.embed_tokens.weight").unwrap();
    for row in [0, 2, 262_143] {
        let r = emb.row_f32(row).unwrap();
        assert_eq!(r.len(), 640);
        assert!(r.iter().all(|v| v.is_finite()), "row {row}");
    }
    assert!(emb.row_f32(2).unwrap().iter().any(|&v| v != 0.0));
    assert!(emb.row_f32(262_144).is_err());
}

#[test]
fn tokenizer_round_trips_a_prompt() {
    let dir = model_dir();
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let text = "The capital of France is";
    let ids = tok.encode(text, true).unwrap();
    assert_eq!(ids, [2, 818, 5279, 529, 7001, 563]);
    assert_eq!(tok.encode(text, false).unwrap(), ids[1..]);
    assert_eq!(tok.decode(&ids).unwrap(), text);
    assert_eq!(
        tok.decode_with(&ids, false).unwrap(),
        format!("<bos>{text}")
    );
    assert_eq!(tok.token_to_id("<end_of_turn>"), Some(106));

    // Streaming reproduces the full decode, multi-byte characters included.
    let text = "Crème brûlée, 東京 and 🦀 emoji";
    let ids = tok.encode(text, true).unwrap();
    let mut stream = tok.stream();
    let mut out = String::new();
    for &id in &ids {
        out.push_str(&stream.push(id).unwrap());
    }
    out.push_str(&stream.flush().unwrap());
    assert_eq!(out, text);
}
