use super::model::{Lin, Net, NormLayout};
use super::*;
use mixq_format::quant::apply_hadamard_rows;
use mixq_runtime::backend::cpu::CpuBackend;
use mixq_runtime::model::gemma3::{Gemma3, Logits};
use mixq_runtime::weights::{WeightSource, WeightStore};
use std::collections::HashMap;

fn tiny_config(window: usize, softcap: bool) -> Gemma3Config {
    let cap = if softcap {
        r#","final_logit_softcapping":5.0"#
    } else {
        ""
    };
    let json = format!(
        r#"{{"model_type":"gemma3_text","vocab_size":40,"hidden_size":16,
        "intermediate_size":24,"num_hidden_layers":2,"num_attention_heads":2,
        "num_key_value_heads":1,"head_dim":8,"sliding_window":{window},
        "sliding_window_pattern":2,"query_pre_attn_scalar":8{cap}}}"#
    );
    Gemma3Config::from_json_str(&json, std::path::Path::new("<tiny>")).unwrap()
}

fn values(n: usize, seed: f32, amp: f32) -> Vec<f32> {
    (0..n)
        .map(|i| amp * ((i as f32 + 1.0) * seed).sin())
        .collect()
}

/// Every tensor of a random tiny model, by HF name: `(rows, cols, values)`.
fn tiny_tensors(c: &Gemma3Config) -> HashMap<String, (usize, usize, Vec<f32>)> {
    let (d, f, q, kv, hd) = (
        c.hidden_size,
        c.intermediate_size,
        c.q_dim(),
        c.kv_dim(),
        c.head_dim,
    );
    let mut t = HashMap::new();
    let mut seed = 0.37f32;
    let mut put = |name: String, rows: usize, cols: usize, amp: f32| {
        seed += 0.131;
        t.insert(name, (rows, cols, values(rows * cols, seed, amp)));
    };
    put("model.embed_tokens.weight".into(), c.vocab_size, d, 0.5);
    put("model.norm.weight".into(), 1, d, 0.2);
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        for (n, r, cols) in [
            ("self_attn.q_proj", q, d),
            ("self_attn.k_proj", kv, d),
            ("self_attn.v_proj", kv, d),
            ("self_attn.o_proj", d, q),
            ("mlp.gate_proj", f, d),
            ("mlp.up_proj", f, d),
            ("mlp.down_proj", d, f),
        ] {
            put(format!("{p}.{n}.weight"), r, cols, 0.4);
        }
        for n in [
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        ] {
            put(format!("{p}.{n}.weight"), 1, d, 0.2);
        }
        put(format!("{p}.self_attn.q_norm.weight"), 1, hd, 0.2);
        put(format!("{p}.self_attn.k_norm.weight"), 1, hd, 0.2);
    }
    t
}

fn tiny_net(c: &Gemma3Config, t: &HashMap<String, (usize, usize, Vec<f32>)>) -> (Net, Vec<f32>) {
    let embed = t["model.embed_tokens.weight"].2.clone();
    let net = net(c, embed, None, |n| {
        let (rows, cols, w) = &t[n];
        Ok(Lin {
            rows: *rows,
            cols: *cols,
            w: w.clone(),
        })
    })
    .unwrap();
    let nl = NormLayout::new(c);
    let g = nl.names.iter().flat_map(|n| t[n].2.clone()).collect();
    (net, g)
}

struct MemStore(Gemma3Config, HashMap<String, (usize, usize, Vec<f32>)>);

impl WeightStore for MemStore {
    fn config(&self) -> &Gemma3Config {
        &self.0
    }
    fn weight(&self, name: &str) -> anyhow::Result<WeightSource> {
        let (r, c, v) = &self.1[name];
        Ok(WeightSource::from_f32(name, *r, *c, v))
    }
    fn tokenizer_json(&self) -> anyhow::Result<Vec<u8>> {
        Ok(Vec::new())
    }
    fn describe(&self) -> String {
        "tiny".into()
    }
}

/// The teacher of the tests: the same model with other gains.
fn teacher_gains(g: &[f32]) -> Vec<f32> {
    g.iter()
        .enumerate()
        .map(|(i, v)| v + 0.3 * ((i as f32) * 0.71).cos())
        .collect()
}

/// The distillation's forward is the runtime's: same logits on a random tiny model, with a
/// sliding window shorter than the sequence.
#[test]
fn forward_matches_the_runtime() {
    let c = tiny_config(3, false);
    let t = tiny_tensors(&c);
    let (net, g) = tiny_net(&c, &t);
    let ids: Vec<u32> = vec![2, 7, 1, 33, 5, 9, 12];
    let ours = net.forward(&g, &ids, None);
    let model = Gemma3::load(&MemStore(c.clone(), t), CpuBackend::new(Some(2)).unwrap()).unwrap();
    let mut s = model.new_session();
    let mut theirs = Vec::new();
    model
        .forward(&mut s, &ids, Logits::All, |_, row| {
            theirs.extend_from_slice(row)
        })
        .unwrap();
    assert_eq!(ours.len(), theirs.len());
    let worst = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let scale = theirs.iter().map(|v| v.abs()).fold(0f32, f32::max);
    assert!(
        worst < 1e-4 * scale.max(1.0),
        "max |diff| {worst} (logits up to {scale})"
    );
}

/// The backward pass's gain gradient equals central finite differences of the KL loss, with a
/// sliding window and the final softcap in play.
#[test]
fn gain_gradient_matches_finite_differences() {
    let c = tiny_config(3, true);
    let t = tiny_tensors(&c);
    let (net, g) = tiny_net(&c, &t);
    let gt = teacher_gains(&g);
    let ids: Vec<u32> = vec![2, 7, 1, 33, 5, 9];
    let zt = net.forward(&gt, &ids, None);
    let loss = |g: &[f32]| {
        let mut z = net.forward(g, &ids, None);
        kl_and_grad(&mut z, &mut zt.clone(), c.vocab_size)
    };
    let mut tape = None;
    let mut z = net.forward(&g, &ids, Some(&mut tape));
    kl_and_grad(&mut z, &mut zt.clone(), c.vocab_size);
    let grad = net.backward(&g, tape.unwrap(), z);
    let nl = NormLayout::new(&c);
    // one element of every norm
    for (name, r) in nl.names.iter().zip(&nl.ranges) {
        let i = r.start + r.len() / 3;
        let h = 2e-3f32;
        let (mut gp, mut gm) = (g.clone(), g.clone());
        gp[i] += h;
        gm[i] -= h;
        let fd = (loss(&gp) - loss(&gm)) / (2.0 * h as f64);
        let an = grad[i] as f64;
        assert!(
            (fd - an).abs() <= 1e-2 * fd.abs().max(an.abs()) + 1e-5,
            "{name}[{}]: finite differences {fd:.6e}, backward {an:.6e}",
            i - r.start
        );
    }
}

/// A rotated, quantized tensor comes back as the weights the model multiplies: `W'·Hᵀ`.
#[test]
fn stored_rotation_is_undone() {
    let (rows, cols, block, seed) = (3, 16, 8, 11);
    let w = values(rows * cols, 0.53, 1.0);
    let mut stored = w.clone();
    apply_hadamard_rows(&mut stored, cols, block, seed).unwrap();
    let bytes: Vec<u8> = stored.iter().flat_map(|v| v.to_le_bytes()).collect();
    let tr = Transform::BlockHadamard {
        block: block as u32,
        seed,
    };
    let lin = lin_from_stored(mixq_format::quant::QType::F32, &bytes, rows, cols, tr).unwrap();
    for (a, b) in lin.w.iter().zip(&w) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
}

/// The KL and its gradient against a direct f64 evaluation of `Σ p_t (log p_t - log p_s)`.
#[test]
fn kl_matches_its_definition() {
    let (rows, vocab) = (3, 50);
    let s = values(rows * vocab, 0.31, 4.0);
    let t = values(rows * vocab, 0.17, 6.0);
    let mut g = s.clone();
    let kl = kl_and_grad(&mut g, &mut t.clone(), vocab);
    let mut want = 0f64;
    for r in 0..rows {
        let lsm = |z: &[f32]| {
            let lse = z.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
            z.iter().map(|&v| v as f64 - lse).collect::<Vec<f64>>()
        };
        let (ls, lt) = (
            lsm(&s[r * vocab..(r + 1) * vocab]),
            lsm(&t[r * vocab..(r + 1) * vocab]),
        );
        for j in 0..vocab {
            want += lt[j].exp() * (lt[j] - ls[j]) / rows as f64;
            let dz = (ls[j].exp() - lt[j].exp()) / rows as f64;
            assert!(
                (g[r * vocab + j] as f64 - dz).abs() < 1e-6,
                "gradient [{r}][{j}]"
            );
        }
    }
    assert!((kl - want).abs() < 1e-5 * want, "{kl} vs {want}");
}

/// A few steps lower the loss against a teacher the student can reach.
#[test]
fn distillation_lowers_the_kl() {
    let c = tiny_config(3, false);
    let t = tiny_tensors(&c);
    let (net, g) = tiny_net(&c, &t);
    let gt = teacher_gains(&g);
    let seqs = vec![vec![2u32, 7, 1, 33, 5, 9], vec![4u32, 8, 15, 16, 23, 39]];
    let r = distill(&net, &net, &gt, g, &seqs, 80, 1e-2, |_, _| {}).unwrap();
    assert!(
        r.kl_after < 0.5 * r.kl_before,
        "KL {} -> {}",
        r.kl_before,
        r.kl_after
    );
}

/// Where a distillation step's time goes on the real 270M (checkpoint as both teacher and
/// student): `cargo test --release -p mixq-quantizer --lib distill_step_timing -- --ignored
/// --nocapture`.
#[test]
#[ignore = "timing; needs models/gemma-3-270m (make test-model)"]
fn distill_step_timing() {
    use std::time::Instant;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/gemma-3-270m");
    let ckpt = mixq_format::checkpoint::HfCheckpoint::open(&dir).unwrap();
    let (net, g) = load_net(&ckpt).unwrap();
    let ids: Vec<u32> = (0..256).map(|i| 2 + (i * 7919) % 200_000).collect();
    for _ in 0..2 {
        let t = Instant::now();
        let mut zt = net.forward(&g, &ids, None);
        let t_teacher = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut tape = None;
        let mut zs = net.forward(&g, &ids, Some(&mut tape));
        let t_student = t.elapsed().as_secs_f64();
        let t = Instant::now();
        kl_and_grad(&mut zs, &mut zt, net.config.vocab_size);
        let t_kl = t.elapsed().as_secs_f64();
        let t = Instant::now();
        net.backward(&g, tape.unwrap(), zs);
        let t_back = t.elapsed().as_secs_f64();
        eprintln!("teacher {t_teacher:.3} s, student {t_student:.3} s, kl {t_kl:.3} s, backward {t_back:.3} s");
    }
}
