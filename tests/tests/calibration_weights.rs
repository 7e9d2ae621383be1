//! The post-norm token weighting of the calibration Hessians on the real Gemma 3 270M's first
//! layer: the two projections whose outputs a post-norm divides (o_proj, down_proj) get
//! weighted Hessians and v_proj a value-weighted one of its own; the shared q/k/v and gate/up
//! input Hessians stay `Σ xᵀx`.

use mixq_calibration::driver::{post_norm_weights, SITES};
use mixq_calibration::{CalibSet, Calibrator, Sampling, TokenWeights};
use mixq_e2e::{model_dir, workspace};
use mixq_format::checkpoint::HfCheckpoint;
use mixq_format::tokenizer::Tokenizer;
use mixq_runtime::backend::cpu::CpuBackend;
use mixq_runtime::backend::Backend;
use mixq_runtime::model::gemma3::{Layer, Site};
use mixq_runtime::weights::WeightSource;

#[test]
fn post_norm_weights_only_the_projection_hessians() {
    let dir = model_dir();
    let ckpt = HfCheckpoint::open(&dir).unwrap();
    let config = ckpt.config().clone();
    let tok = Tokenizer::from_bytes(&std::fs::read(dir.join("tokenizer.json")).unwrap()).unwrap();
    let text = std::fs::read_to_string(workspace().join("models/data/calib.txt")).unwrap();
    let set = CalibSet::from_text(&tok, &text, "calib.txt", 128, 64, Sampling::Spread).unwrap();
    let be = CpuBackend::new(None).unwrap();
    let emb = ckpt.tensor("model.embed_tokens.weight").unwrap().to_f32();
    let h = config.hidden_size;
    let cal = Calibrator::new(&be, &config, &set, |id, out| {
        out.copy_from_slice(&emb[id as usize * h..(id as usize + 1) * h])
    });
    let layer = Layer::load(0, config.layer_types[0], |name| {
        let t = ckpt.tensor(&name)?;
        let cols = *t.shape.last().unwrap();
        let rows = t.shape.iter().product::<usize>() / cols;
        be.load_weight(&WeightSource::from_f32(&name, rows, cols, &t.to_f32()))
    })
    .unwrap();
    let mut uni = cal.observe(&layer, [true; 4], TokenWeights::Uniform, |_| {});
    let mut pn = cal.observe(&layer, [true; 4], TokenWeights::PostNorm, |_| {});
    for s in SITES {
        let (a, b) = (uni.take(s).unwrap(), pn.take(s).unwrap());
        assert_eq!(a.tokens, 128);
        assert_eq!(b.tokens, 128);
        let (a, b) = (a.into_mean(), b.into_mean());
        assert!(b.iter().all(|v| v.is_finite()));
        let same = a == b;
        match s {
            Site::AttnInput | Site::FfnInput => assert!(same, "{s:?} must stay uniform"),
            _ => assert!(!same, "{s:?} must be weighted"),
        }
    }
    // v_proj: its own value-weighted Hessian of the attention input, under post-norm only
    assert!(uni.values.is_none());
    let v = pn
        .values
        .take()
        .expect("post-norm keeps a v_proj Hessian")
        .into_mean();
    let attn_in = cal
        .observe(&layer, [true; 4], TokenWeights::Uniform, |_| {})
        .take(Site::AttnInput)
        .unwrap()
        .into_mean();
    assert!(v.iter().all(|x| x.is_finite()) && v != attn_in);
    // the weights themselves: larger outputs count less
    let w = post_norm_weights(&[3.0, 0.0, 1.0, 0.0], 2, 2);
    assert!(w[0] < w[1]);
}
