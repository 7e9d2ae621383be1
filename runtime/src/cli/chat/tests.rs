//! The chat turn logic on the real 270M checkpoint (`make test-model`): KV reuse across turns
//! and a context that fills up.

use super::*;
use mixq_runtime::backend::cpu::CpuBackend;
use mixq_runtime::sampling::SamplerConfig;
use mixq_runtime::weights::open_store;
use mixq_runtime::Logits;

fn load() -> (Gemma3<CpuBackend>, Tokenizer) {
    let dir = std::env::var_os("MIXQ_TEST_MODEL").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/gemma-3-270m"),
        std::path::PathBuf::from,
    );
    let store = open_store(&dir)
        .unwrap_or_else(|e| panic!("{}: {e:#} (run `make test-model`)", dir.display()));
    let tok = Tokenizer::from_bytes(&store.tokenizer_json().unwrap()).unwrap();
    let model = Gemma3::load(store.as_ref(), CpuBackend::new(None).unwrap()).unwrap();
    (model, tok)
}

fn greedy(max_tokens: usize, eos: &[u32]) -> GenerateOptions {
    let mut stop_ids = eos.to_vec();
    stop_ids.push(chat::END_OF_TURN);
    GenerateOptions {
        max_tokens,
        sampler: SamplerConfig {
            temperature: 0.0,
            ..SamplerConfig::default()
        },
        stop_ids,
        stop_strings: Vec::new(),
    }
}

fn argmax(v: &[f32]) -> u32 {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap() as u32
}

#[test]
fn second_turn_prefills_only_its_own_tokens() {
    let (model, tok) = load();
    let opts = greedy(6, &model.config.eos_token_ids);
    let mut conv = Conversation::new(Some("Answer in one word.".into()), 4096);
    let mut s = model.new_session();

    let r1 = conv
        .turn(
            &model,
            &mut s,
            &tok,
            "What colour is the sky?",
            &opts,
            |_| {},
            &|| false,
        )
        .unwrap();
    let first = tok
        .encode("<start_of_turn>user\nAnswer in one word.\n\nWhat colour is the sky?<end_of_turn>\n<start_of_turn>model\n", true)
        .unwrap();
    assert_eq!(r1.prefilled, first.len());
    assert_eq!(&conv.fed()[..first.len()], &first[..]);
    assert_eq!(s.pos, conv.fed().len());
    let after1 = conv.fed().to_vec();

    let r2 = conv
        .turn(&model, &mut s, &tok, "And grass?", &opts, |_| {}, &|| false)
        .unwrap();
    let second = tok
        .encode(
            "<end_of_turn>\n<start_of_turn>user\nAnd grass?<end_of_turn>\n<start_of_turn>model\n",
            false,
        )
        .unwrap();
    // Only the new turn went through prefill; the first turn stayed in the cache untouched.
    assert_eq!(r2.prefilled, second.len());
    assert_eq!(r2.dropped, 0);
    assert_eq!(&conv.fed()[..after1.len()], &after1[..]);
    assert_eq!(
        &conv.fed()[after1.len()..after1.len() + second.len()],
        &second[..]
    );
    assert_eq!(s.pos, conv.fed().len());
    assert_eq!(conv.exchanges(), 2);

    // The reused cache gives the same next token as reading the whole conversation afresh.
    let upto = after1.len() + second.len();
    let mut fresh = model.new_session();
    let logits = model
        .forward(&mut fresh, &conv.fed()[..upto], Logits::Last, |_, _| {})
        .unwrap();
    let next = argmax(&logits);
    match r2.generation.generated_ids.first() {
        Some(&t) => assert_eq!(t, next),
        None => assert!(opts.stop_ids.contains(&next)),
    }
}

#[test]
fn a_full_context_drops_the_oldest_exchanges_and_never_fails() {
    let (model, tok) = load();
    let opts = greedy(24, &model.config.eos_token_ids);
    let limit = 100;
    let mut conv = Conversation::new(None, limit);
    let mut s = model.new_session();
    let mut dropped = 0;
    for i in 0..5 {
        let msg = format!("Tell me a long story about ship number {i} on the sea.");
        let r = conv
            .turn(&model, &mut s, &tok, &msg, &opts, |_| {}, &|| false)
            .unwrap();
        dropped += r.dropped;
        assert!(s.pos <= limit, "turn {i}: {} positions > {limit}", s.pos);
        assert_eq!(s.pos, conv.fed().len());
        if r.dropped > 0 {
            // After a restart the kept history is read again from <bos>.
            assert_eq!(Some(conv.fed()[0]), tok.bos_id());
            assert!(r.prefilled > 0 && r.prefilled <= conv.fed().len());
        }
    }
    assert!(
        dropped > 0,
        "five turns of ~45 tokens never filled a 100-token context"
    );

    // A message that cannot fit even alone is refused, and nothing changes.
    let (fed, pos, n) = (conv.fed().to_vec(), s.pos, conv.exchanges());
    let long = "word ".repeat(200);
    let err = conv
        .turn(&model, &mut s, &tok, &long, &opts, |_| {}, &|| false)
        .unwrap_err();
    assert!(format!("{err:#}").contains("context holds 100"), "{err:#}");
    assert_eq!((conv.fed(), s.pos, conv.exchanges()), (&fed[..], pos, n));
}

#[test]
fn an_interrupted_reply_is_kept_and_closed() {
    let (model, tok) = load();
    let opts = greedy(50, &model.config.eos_token_ids);
    let mut conv = Conversation::new(None, 4096);
    let mut s = model.new_session();
    // "Ctrl-C" after the third token.
    let n = std::cell::Cell::new(0);
    let r = conv
        .turn(
            &model,
            &mut s,
            &tok,
            "Count from one to twenty.",
            &opts,
            |_| {},
            &|| {
                n.set(n.get() + 1);
                n.get() > 3
            },
        )
        .unwrap();
    // (A base model may also end its reply before the third token.)
    if r.generation.stop == StopReason::Interrupted {
        assert_eq!(r.generation.generated_ids.len(), 3);
    }
    assert_eq!(s.pos, conv.fed().len());
    // The next turn closes the partial reply with <end_of_turn> and goes on.
    let before = conv.fed().len();
    conv.turn(&model, &mut s, &tok, "Go on.", &opts, |_| {}, &|| true)
        .unwrap();
    assert_eq!(conv.fed()[before], chat::END_OF_TURN);
}
