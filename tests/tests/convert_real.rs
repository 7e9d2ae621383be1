//! End to end: `convert` the real Gemma 3 270M with a small calibration budget, open the file
//! with the runtime, and check that greedy generation still knows the capital of France.
//! Bad inputs fail with clear errors and leave no output file behind.

use mixq_e2e::{model_dir, workspace};
use mixq_format::tokenizer::Tokenizer;
use mixq_quantizer::convert::{convert, ConvertArgs};
use mixq_runtime::backend::cpu::CpuBackend;
use mixq_runtime::weights::{MixqStore, WeightStore};
use mixq_runtime::{Gemma3, Logits};
use std::path::{Path, PathBuf};

fn args(out: &Path, recipe: &str) -> ConvertArgs {
    ConvertArgs {
        checkpoint: model_dir(),
        output: out.to_path_buf(),
        recipe: recipe.into(),
        profile: "phoenix".into(),
        calib: Some(workspace().join("models/data/calib.txt")),
        calib_tokens: 256,
        calib_seq_len: 256,
        calib_from_start: false,
        eval: None,
        eval_tokens: 64,
        no_eval: true,
        no_npu_eval: true,
        methods: vec![],
        damp: mixq_quantizer::convert::DEFAULT_DAMP,
        refit: false,
        hessian_weights: mixq_quantizer::convert::HessianWeights::PostNorm,
        threads: None,
        quiet: true,
    }
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mixq-convert-real-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn greedy(path: &Path, prompt: &str, n: usize) -> String {
    let store = MixqStore::open(path).unwrap();
    let tok = Tokenizer::from_bytes(&store.tokenizer_json().unwrap()).unwrap();
    let model = Gemma3::load(&store, CpuBackend::new(None).unwrap()).unwrap();
    let mut s = model.new_session();
    let mut ids = tok.encode(prompt, true).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let logits = model
            .forward(&mut s, &ids, Logits::Last, |_, _| {})
            .unwrap();
        let next = (0..logits.len())
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
            .unwrap() as u32;
        out.push(next);
        ids = vec![next];
    }
    tok.decode(&out).unwrap()
}

#[test]
fn int8_and_int4_conversions_keep_paris() {
    let dir = tmpdir("ok");
    for recipe in ["int8", "int4"] {
        let out = dir.join(format!("{recipe}.mixq"));
        let report = convert(&args(&out, recipe)).unwrap();
        assert!(out.is_file());
        assert!(!dir.join(format!("{recipe}.mixq.tmp")).exists());
        assert_eq!(report.recipe, recipe);
        assert_eq!(report.calibration.tokens, 256);
        assert!(report.tensors.iter().all(|t| t.rel_rmse < 0.5), "{recipe}");
        // The f32 model continues " the capital of the country of France. It is ..."
        // (tests/golden/capital.json). 16 tokens: with this test's 256 calibration tokens the
        // int4 recipe (I4_GROUPED32) continues " the capital of the country. It is the
        // largest city in France." (France is token 13), I4_GROUPED " Paris. ..."; at the
        // converter's default (thousands of tokens) int4 is the better of the two on every measure
        // (quantizer/README.md), so one greedy sample decides little either way.
        let text = greedy(&out, "The capital of France is", 16);
        assert!(
            text.contains("Paris") || text.contains("France"),
            "{recipe}: greedy continuation {text:?}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn compact_fits_the_tied_embedding_as_the_lm_head() {
    let dir = tmpdir("compact");
    let out = dir.join("compact.mixq");
    let report = convert(&args(&out, "compact")).unwrap();
    let emb = report
        .tensors
        .iter()
        .find(|t| t.name == "model.embed_tokens.weight")
        .unwrap();
    // Fitted after the layers against the lm_head input's Hessian: GPTQ, with an output error.
    assert_eq!(
        (emb.qtype.as_str(), emb.method.as_str()),
        ("I4_GROUPED32", "gptq")
    );
    let out_err = emb
        .out_rel_err
        .expect("the head fit measures its output error");
    assert!(out_err > 0.0 && out_err < 0.05, "output error {out_err}");
    assert!(emb.rel_rmse < 0.5);
    let text = greedy(&out, "The capital of France is", 16);
    assert!(
        text.contains("Paris") || text.contains("France"),
        "compact: greedy continuation {text:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_inputs_fail_clearly_and_leave_nothing() {
    let dir = tmpdir("bad");
    let out = dir.join("x.mixq");
    let err = |a: ConvertArgs| format!("{:#}", convert(&a).unwrap_err());

    let e = err(args(&out, "int3"));
    assert!(e.contains("optimal, int8, int4, compact"), "{e}");

    let mut a = args(&out, "int8");
    a.checkpoint = dir.join("no-such-model");
    assert!(err(a).contains("not a checkpoint directory"));

    let mut a = args(&out, "int8");
    a.calib = Some(dir.join("missing.txt"));
    assert!(err(a).contains("calibration text"));

    let short = dir.join("short.txt");
    std::fs::write(&short, "Too short.").unwrap();
    let mut a = args(&out, "int8");
    a.calib = Some(short);
    assert!(err(a).contains("too short"));

    let mut a = args(&out, "int8");
    a.no_eval = false;
    a.eval = a.calib.clone();
    assert!(err(a).contains("never saw"));

    let mut a = args(&dir.join("no/such/dir/x.mixq"), "int8");
    a.calib_tokens = 64;
    assert!(err(a).contains("does not exist"));

    let mut a = args(&out, "optimal");
    a.profile = "tpu".into();
    assert!(err(a).contains("phoenix, gpu, cpu"));

    assert!(!out.exists() && !dir.join("x.mixq.tmp").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
