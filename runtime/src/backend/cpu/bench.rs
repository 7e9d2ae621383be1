//! Benchmarks, ignored by default. Run (release, one test at a time so they don't share cores):
//!
//! ```text
//! cargo test --release -p mixq-runtime --lib bench_ -- --ignored --nocapture --test-threads 1
//! ```
//!
//! - `bench_read_bandwidth`: the roofline, a 512 MiB streaming read on all threads.
//! - `bench_matvec`: GB/s of weight bytes per type, mode and ISA for the Gemma 3 270M shapes,
//!   cycling over enough copies that every call streams from DRAM (as decode does).
//! - `bench_decode_270m`: tokens/s of the real 270M (bf16 checkpoint, and in-memory int4 and
//!   optimal stores quantized from it), plus KL(exact || fast) on a prompt.

use super::kernels::Isa;
use super::tests::rand_vec;
use super::*;
use mixq_format::quant::quantize_row;
use std::time::Instant;

const THREADS: usize = 2;

/// Random codes with valid parameters (speed does not depend on the values, but NaN/denormal
/// parameters could), `rows x cols` of `q`.
fn bench_bytes(q: QType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let rb = q.row_bytes(cols).unwrap();
    let mut proto = vec![0u8; rb];
    quantize_row(q, &rand_vec(cols, seed), None, &mut proto).unwrap();
    let pb = q.row_param_bytes(cols);
    let noise: Vec<u8> = rand_vec(rb, seed + 1)
        .iter()
        .map(|v| (v * 127.0) as i8 as u8)
        .collect();
    let mut out = Vec::with_capacity(rows * rb);
    for r in 0..rows {
        let mut row = proto.clone();
        if q.is_quantized() {
            // rotate the codes so rows differ; I8_SYM codes must avoid -128
            let k = r % (rb - pb);
            row[pb..].rotate_left(k);
            if q != QType::I8Sym {
                row[pb..]
                    .iter_mut()
                    .zip(&noise[pb..])
                    .for_each(|(c, n)| *c ^= n & if q == QType::I8Asym { 0xff } else { 0 });
            }
        }
        out.extend_from_slice(&row);
    }
    out
}

fn weight_of(be: &CpuBackend, q: QType, rows: usize, cols: usize, bytes: Vec<u8>) -> CpuWeight {
    let mut w = WeightSource::from_f32("w", 1, 1, &[0.0]);
    w.qtype = q;
    w.rows = rows;
    w.cols = cols;
    w.bytes = SharedBytes::from_vec(bytes);
    be.load_weight(&w).unwrap()
}

#[test]
#[ignore]
fn bench_read_bandwidth() {
    let _ = CpuBackend::new(Some(THREADS)).unwrap();
    let buf = vec![1u64; 64 << 20]; // 512 MiB
    for _ in 0..2 {
        let t = Instant::now();
        let reps = 5;
        let mut s = 0u64;
        for _ in 0..reps {
            s = s.wrapping_add(
                buf.par_chunks(1 << 16)
                    .map(|c| {
                        let mut a = [0u64; 8];
                        for w in c.chunks_exact(8) {
                            for i in 0..8 {
                                a[i] = a[i].wrapping_add(w[i]);
                            }
                        }
                        a.iter().fold(0u64, |x, y| x.wrapping_add(*y))
                    })
                    .reduce(|| 0, |a, b| a.wrapping_add(b)),
            );
        }
        let gb = (reps * buf.len() * 8) as f64 / 1e9;
        eprintln!(
            "read bandwidth, {THREADS} threads: {:.1} GB/s (checksum {s})",
            gb / t.elapsed().as_secs_f64()
        );
    }
}

/// Seconds per call of `f`, repeated for at least `min_s`.
fn time(min_s: f64, mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    let mut n = 0;
    while t.elapsed().as_secs_f64() < min_s {
        f();
        n += 1;
    }
    t.elapsed().as_secs_f64() / n as f64
}

#[test]
#[ignore]
fn bench_matvec() {
    let shapes = [(640, 2048), (2048, 640), (1024, 640), (262144, 640)];
    let types = [
        QType::BF16,
        QType::I8Sym,
        QType::I8Asym,
        QType::I4Grouped,
        QType::I4Grouped32,
        QType::I4PerChannel,
        QType::I2Structured,
    ];
    eprintln!("matvec (n=1), {THREADS} threads, DRAM-streaming (copies cycled > 256 MB); GB/s of weight bytes, and GFLOP-equivalent us/call");
    for (rows, cols) in shapes {
        for q in types {
            if rows == 262144 && !matches!(q, QType::I8Asym | QType::I4Grouped | QType::BF16) {
                continue;
            }
            let bytes = bench_bytes(q, rows, cols, 5);
            let size = bytes.len();
            let copies = (256usize << 20).div_ceil(size).max(1);
            let mut line = format!("{rows:>6}x{cols:<5} {:<15}", q.name());
            for isa in Isa::available() {
                for int8 in [false, true] {
                    if (int8 && !q.is_quantized()) || (isa == Isa::Scalar && (rows > 4096 || int8))
                    {
                        continue;
                    }
                    let be = CpuBackend::with_options(CpuOptions {
                        int8_activations: int8,
                        isa: Some(isa),
                        ..CpuOptions::exact(Some(THREADS))
                    })
                    .unwrap();
                    let ws: Vec<CpuWeight> = (0..copies)
                        .map(|_| weight_of(&be, q, rows, cols, bytes.clone()))
                        .collect();
                    let x = rand_vec(cols, 9);
                    let mut out = vec![0f32; rows];
                    let mut i = 0;
                    let s = time(0.3, || {
                        be.matmul(&ws[i % copies], &x, 1, &mut out);
                        i += 1;
                    });
                    let mode = if !q.is_quantized() {
                        "f32"
                    } else if int8 {
                        "i8act"
                    } else {
                        "f32act"
                    };
                    line += &format!(
                        "  {}/{mode}: {:>5.1} GB/s {:>7.0} us",
                        isa.name(),
                        size as f64 / s / 1e9,
                        s * 1e6
                    );
                }
            }
            eprintln!("{line}");
        }
    }
}

#[test]
#[ignore]
fn bench_matmul_prefill() {
    let (rows, cols, n) = (2048, 640, 128);
    for q in [
        QType::BF16,
        QType::I8Asym,
        QType::I4Grouped,
        QType::I4Grouped32,
        QType::I4Grouped16,
        QType::I4PerChannel,
        QType::I2Structured,
    ] {
        for int8 in [false, true] {
            if int8 && !q.is_quantized() {
                continue;
            }
            let be = CpuBackend::with_options(CpuOptions {
                int8_activations: int8,
                ..CpuOptions::exact(Some(THREADS))
            })
            .unwrap();
            let w = weight_of(&be, q, rows, cols, bench_bytes(q, rows, cols, 3));
            let x = rand_vec(n * cols, 4);
            let mut out = vec![0f32; n * rows];
            let s = time(0.5, || be.matmul(&w, &x, n, &mut out));
            eprintln!(
                "prefill matmul {rows}x{cols} n={n} {:<15} {}: {:.1} GMAC/s",
                q.name(),
                if int8 { "i8act" } else { "f32act" },
                (rows * cols * n) as f64 / s / 1e9
            );
        }
    }
}

#[test]
#[ignore]
fn bench_float_kernels_hot() {
    let cols = 640;
    for q in [QType::F32, QType::BF16, QType::F16] {
        let bytes = bench_bytes(q, 4, cols, 1);
        let rb = q.row_bytes(cols).unwrap();
        let rows: Vec<&[u8]> = bytes.chunks_exact(rb).collect();
        let x = rand_vec(cols, 2);
        for isa in Isa::available() {
            let (f1, f4) = (kernels::f_dot(isa, q), kernels::f_dot4(isa, q));
            let mut s = 0f32;
            let t1 = time(0.2, || {
                for _ in 0..1000 {
                    s += unsafe { f1(std::hint::black_box(rows[0]), &x) };
                }
            });
            let t4 = time(0.2, || {
                for _ in 0..1000 {
                    s += unsafe {
                        f4(
                            std::hint::black_box([rows[0], rows[1], rows[2], rows[3]]),
                            &x,
                        )
                    }[0];
                }
            });
            eprintln!(
                "{} {}: dot {:.1} ns/row, dot4 {:.1} ns/row ({s})",
                q.name(),
                isa.name(),
                t1 * 1e6,
                t4 * 1e6 / 4.0
            );
        }
    }
}

/// An HF checkpoint quantized in memory by a built-in recipe (what `mixq-quantize convert`
/// writes, without calibration: plain `quantize_row`). Tied embedding stored once.
struct QuantStore {
    inner: Box<dyn crate::weights::WeightStore>,
    recipe: &'static str,
    cache: std::sync::Mutex<std::collections::HashMap<String, WeightSource>>,
}

impl QuantStore {
    fn qtype(&self, name: &str, rows: usize) -> QType {
        let lin = |suffix: &str| name.ends_with(suffix);
        if rows == 1 {
            return QType::I8Sym;
        }
        if name == "model.embed_tokens.weight" || name == "lm_head.weight" {
            return QType::I8Asym;
        }
        match self.recipe {
            "int4" => QType::I4Grouped32,
            "int8" => QType::I8Asym,
            _ if lin("o_proj.weight") => QType::I4PerChannel,
            _ if lin("gate_proj.weight") || lin("up_proj.weight") => QType::I2Structured,
            _ => QType::I4Grouped,
        }
    }
}

impl crate::weights::WeightStore for QuantStore {
    fn config(&self) -> &mixq_format::Gemma3Config {
        self.inner.config()
    }
    fn weight(&self, name: &str) -> Result<WeightSource> {
        if let Some(w) = self.cache.lock().unwrap().get(name) {
            return Ok(w.clone());
        }
        let src = self.inner.weight(name)?;
        let q = self.qtype(name, src.rows);
        let mut vals = vec![0f32; src.rows * src.cols];
        let dec = kernels::decode(Isa::detect(), src.qtype);
        let rb = src.qtype.row_bytes(src.cols)?;
        let qb = q.row_bytes(src.cols)?;
        let mut bytes = vec![0u8; src.rows * qb];
        vals.par_chunks_mut(src.cols)
            .zip(bytes.par_chunks_mut(qb))
            .enumerate()
            .for_each(|(r, (v, o))| {
                unsafe { dec(&src.bytes[r * rb..(r + 1) * rb], v) };
                quantize_row(q, v, None, o).unwrap();
            });
        let mut w = src.clone();
        w.qtype = q;
        w.bytes = SharedBytes::from_vec(bytes);
        self.cache.lock().unwrap().insert(name.into(), w.clone());
        Ok(w)
    }
    fn tokenizer_json(&self) -> Result<Vec<u8>> {
        self.inner.tokenizer_json()
    }
    fn describe(&self) -> String {
        format!(
            "{} quantized in memory ({})",
            self.inner.describe(),
            self.recipe
        )
    }
}

fn model_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/gemma-3-270m")
}

/// Prompt of `n` tokens from the sample text (no tokenizer needed: ids cycle a fixed pattern
/// of ordinary vocabulary ids, which is all a speed measurement needs).
fn prompt(n: usize) -> Vec<u32> {
    let mut ids = vec![2u32];
    ids.extend((1..n).map(|i| 1000 + ((i * 7919) % 50000) as u32));
    ids
}

/// (prefill tokens/s of `np` tokens, decode tokens/s over `nd` greedy steps)
fn speed(m: &crate::Gemma3<CpuBackend>, np: usize, nd: usize) -> (f64, f64) {
    let ids = prompt(np);
    let mut s = m.new_session();
    let t = Instant::now();
    let mut logits = m
        .forward(&mut s, &ids, crate::Logits::Last, |_, _| {})
        .unwrap();
    let pre = np as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..nd {
        let next = top_k(&logits, 1)[0].0;
        logits = m
            .forward(&mut s, &[next], crate::Logits::Last, |_, _| {})
            .unwrap();
    }
    (pre, nd as f64 / t.elapsed().as_secs_f64())
}

/// Mean KL(p_exact || p_fast) over the positions of a prompt, and greedy agreement.
fn compare(
    a: &crate::Gemma3<CpuBackend>,
    b: &crate::Gemma3<CpuBackend>,
    n: usize,
    greedy: usize,
) -> (f64, f64, usize) {
    let ids = prompt(n);
    let rows = |m: &crate::Gemma3<CpuBackend>| {
        let mut out = Vec::new();
        let mut s = m.new_session();
        m.forward(&mut s, &ids, crate::Logits::All, |_, l| {
            out.push(l.to_vec())
        })
        .unwrap();
        out
    };
    let logp = |l: &[f32]| {
        let max = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = max + l.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        l.iter().map(|&v| v as f64 - lse).collect::<Vec<f64>>()
    };
    let (ra, rb) = (rows(a), rows(b));
    let (mut kl, mut klmax) = (0.0, 0f64);
    for (x, y) in ra.iter().zip(&rb) {
        let (px, py) = (logp(x), logp(y));
        let k: f64 = px.iter().zip(&py).map(|(p, q)| p.exp() * (p - q)).sum();
        kl += k;
        klmax = klmax.max(k);
    }
    // greedy continuation from the prompt's first 16 tokens
    let gen = |m: &crate::Gemma3<CpuBackend>| {
        let mut s = m.new_session();
        let mut l = m
            .forward(&mut s, &ids[..16], crate::Logits::Last, |_, _| {})
            .unwrap();
        let mut out = Vec::new();
        for _ in 0..greedy {
            let t = top_k(&l, 1)[0].0;
            out.push(t);
            l = m
                .forward(&mut s, &[t], crate::Logits::Last, |_, _| {})
                .unwrap();
        }
        out
    };
    let (ga, gb) = (gen(a), gen(b));
    let same = ga.iter().zip(&gb).take_while(|(x, y)| x == y).count();
    (kl / ra.len() as f64, klmax, same)
}

#[test]
#[ignore]
fn bench_decode_270m() {
    let dir = model_dir();
    let exact = || CpuBackend::new(Some(THREADS)).unwrap();
    let fast = || CpuBackend::fast(Some(THREADS)).unwrap();
    let hf = crate::weights::open_store(&dir).unwrap();
    for recipe in ["bf16", "int4", "optimal"] {
        let store: Box<dyn crate::weights::WeightStore> = if recipe == "bf16" {
            crate::weights::open_store(&dir).unwrap()
        } else {
            let t = Instant::now();
            let s = QuantStore {
                inner: crate::weights::open_store(&dir).unwrap(),
                recipe,
                cache: Default::default(),
            };
            // quantize everything once (shared by both modes)
            let _ = crate::Gemma3::load(&s, exact()).unwrap();
            eprintln!(
                "{recipe}: quantized in memory in {:.1} s",
                t.elapsed().as_secs_f64()
            );
            Box::new(s)
        };
        let me = crate::Gemma3::load(store.as_ref(), exact()).unwrap();
        let mf = crate::Gemma3::load(store.as_ref(), fast()).unwrap();
        for (mode, m) in [("exact", &me), ("fast", &mf)] {
            let (pre, dec) = speed(m, 128, 32);
            eprintln!("{recipe:>8} {mode:>5}: prefill {pre:6.1} tok/s (128-token prompt), decode {dec:5.1} tok/s ({THREADS} threads)");
        }
        let (kl, klmax, same) = compare(&me, &mf, 128, 32);
        eprintln!("{recipe:>8}: KL(exact || fast) mean {kl:.2e} max {klmax:.2e} over 128 positions; greedy agrees for {same}/32 tokens");
        let _ = &hf;
    }
}

/// Prefill (128) and decode (64) tokens/s of `.mixq` files or checkpoints, fast mode, median
/// (min .. max) of `MIXQ_BENCH_REPS` (5) runs after a warm-up: `MIXQ_BENCH_FILES=a.mixq,b.mixq cargo test ... bench_files`. The
/// figure `mixq-run bench` gives, without the CLI (tokenizer, sampler) around it.
/// `MIXQ_BENCH_PROFILE=1` adds one run with per-op wall times, `MIXQ_BENCH_KL=1` the
/// divergence of the fast mode from the exact one.
#[test]
#[ignore]
fn bench_files() {
    let files = std::env::var("MIXQ_BENCH_FILES").unwrap_or_default();
    let (np, nd) = (128, 64);
    let reps = std::env::var("MIXQ_BENCH_REPS").map_or(5, |r| r.parse().unwrap());
    for f in files.split(',').filter(|f| !f.is_empty()) {
        let store = crate::weights::open_store(std::path::Path::new(f)).unwrap();
        let m = crate::Gemma3::load(&*store, CpuBackend::fast(Some(THREADS)).unwrap()).unwrap();
        speed(&m, np, nd);
        let mut runs: Vec<(f64, f64)> = (0..reps).map(|_| speed(&m, np, nd)).collect();
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let mut pp: Vec<f64> = runs.iter().map(|r| r.0).collect();
        let mut tg: Vec<f64> = runs.iter_mut().map(|r| r.1).collect();
        eprintln!(
            "{f}: pp{np} {:.1} t/s ({:.1} .. {:.1}), tg{nd} {:.2} t/s ({:.2} .. {:.2})",
            med(&mut pp),
            pp[0],
            pp[reps - 1],
            med(&mut tg),
            tg[0],
            tg[reps - 1]
        );
        if std::env::var_os("MIXQ_BENCH_KL").is_some() {
            let exact = crate::Gemma3::load(&*store, CpuBackend::new(Some(THREADS)).unwrap());
            let (kl, klmax, same) = compare(&exact.unwrap(), &m, 128, 32);
            eprintln!("  KL(exact || fast) mean {kl:.2e} max {klmax:.2e} over 128 positions; greedy agrees for {same}/32 tokens");
        }
        if std::env::var_os("MIXQ_BENCH_PROFILE").is_some() {
            m.backend.reset_report();
            m.backend.set_profiling(true);
            speed(&m, np, nd);
            m.backend.set_profiling(false);
            eprintln!("{}", m.backend.report().unwrap_or_default());
        }
    }
}

/// The int8-activation row kernels with the weights hot in L2 (one thread): instruction cost
/// alone, which decode hides behind DRAM only if it is low enough.
#[cfg(target_arch = "x86_64")]
#[test]
#[ignore]
fn bench_int_kernels_hot() {
    use super::kernels::x86;
    let (rows, cols) = (512, 640);
    for q in [
        QType::I8Asym,
        QType::I4Grouped,
        QType::I4Grouped32,
        QType::I4PerChannel,
        QType::I2Structured,
    ] {
        let a =
            super::kernels::QAct::new(&rand_vec(cols, 3), 1, cols, super::kernels::act_block(q));
        let rb = q.row_bytes(cols).unwrap();
        let bytes = bench_bytes(q, rows, cols, 9);
        for (name, f) in [("avx2", x86::avx2::q_dot(q)), ("vnni", x86::vnni::q_dot(q))] {
            let mut sink = 0f32;
            let s = time(0.3, || {
                for r in bytes.chunks_exact(rb) {
                    sink += unsafe { f(r, &a, 0) };
                }
            });
            eprintln!(
                "{:<15} {name:<5} {:6.1} ns/row  {:5.1} GB/s (sink {sink:.1})",
                q.name(),
                s * 1e9 / rows as f64,
                (rows * rb) as f64 / s / 1e9
            );
        }
    }
}
