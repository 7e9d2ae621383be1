//! Kernel and backend tests. Every kernel is checked against the format's scalar reference
//! (`dequantize_row`, `dot_row`) on random rows.
//!
//! Tolerances, and why:
//! - Decoders: bit-identical to `dequantize_row` (same f32 operations in the same order).
//! - f32-activation dots: both sides multiply the same f32 values; only the summation order
//!   differs, so |got - want| <= 1e-5 * sum|w x| (f32 reassociation over <= 4096 terms is a few
//!   ulps of the absolute sum).
//! - int8-activation dots: the integer sums are exact, so against `dot_row` on the *dequantized*
//!   activations the same 1e-5 * sum|w x| bound holds; SIMD and scalar integer kernels agree to
//!   that bound too. Against the f32 activations the error is the activation rounding
//!   (half a step of amax/127 per element): we check <= 2e-2 * sum|w x| and print the figure.
//! - f16 KV cache vs f32: attention outputs within 2e-3 relative to the output norm (f16 has
//!   11 significant bits: 2^-11 ≈ 5e-4 per stored value).

use super::kernels::{self, Isa, QAct};
use super::*;
use mixq_format::quant::{dequantize_row, dot_row, quantize_row};

/// Deterministic pseudo-random values in [-1, 1) (xorshift).
pub(super) fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 23) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// `rows x cols` random weights stored as `q`, as a row-major byte tensor.
pub(super) fn quantized(q: QType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let rb = q.row_bytes(cols).unwrap();
    let mut out = vec![0u8; rows * rb];
    let w = rand_vec(rows * cols, seed);
    for (r, o) in out.chunks_exact_mut(rb).enumerate() {
        // some rows with an outlier, so groups have different scales
        let mut row = w[r * cols..(r + 1) * cols].to_vec();
        if r % 3 == 0 {
            row[r % cols] *= 8.0;
        }
        quantize_row(q, &row, None, o).unwrap();
    }
    out
}

fn abs_dot(w: &[f32], x: &[f32]) -> f32 {
    w.iter().zip(x).map(|(a, b)| (a * b).abs()).sum()
}

const COLS: [usize; 3] = [128, 640, 2048];

#[test]
fn decoders_are_bit_identical_to_the_reference() {
    for isa in Isa::available() {
        for q in QType::ALL {
            for cols in COLS {
                let rb = q.row_bytes(cols).unwrap();
                let bytes = quantized(q, 5, cols, cols as u64 + q as u64);
                for row in bytes.chunks_exact(rb) {
                    let (mut got, mut want) = (vec![0f32; cols], vec![0f32; cols]);
                    unsafe { kernels::decode(isa, q)(row, &mut got) };
                    dequantize_row(q, row, &mut want).unwrap();
                    let same = got
                        .iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{} {}: decode differs", isa.name(), q.name());
                }
            }
        }
    }
}

#[test]
fn float_dots_match_the_reference() {
    for isa in Isa::available() {
        for q in [QType::F32, QType::F16, QType::BF16] {
            for cols in [37, 640, 2048] {
                let rb = q.row_bytes(cols).unwrap();
                let bytes = quantized(q, 4, cols, 3);
                let x = rand_vec(cols, 4);
                let rows: Vec<&[u8]> = bytes.chunks_exact(rb).collect();
                let four =
                    unsafe { kernels::f_dot4(isa, q)([rows[0], rows[1], rows[2], rows[3]], &x) };
                for (i, row) in rows.iter().enumerate() {
                    let mut w = vec![0f32; cols];
                    dequantize_row(q, row, &mut w).unwrap();
                    let want = dot_row(q, row, &x).unwrap();
                    let tol = 1e-5 * abs_dot(&w, &x);
                    let got = unsafe { kernels::f_dot(isa, q)(row, &x) };
                    let fast = unsafe { kernels::f_dot_fast(isa, q)(row, &x) };
                    assert!(
                        (fast - want).abs() <= tol,
                        "{} {} {cols} fast: {fast} vs {want}",
                        isa.name(),
                        q.name()
                    );
                    assert!(
                        (got - want).abs() <= tol,
                        "{} {} {cols}: {got} vs {want}",
                        isa.name(),
                        q.name()
                    );
                    assert!(
                        (four[i] - want).abs() <= tol,
                        "{} {} dot4: {} vs {want}",
                        isa.name(),
                        q.name(),
                        four[i]
                    );
                }
            }
        }
    }
}

#[test]
fn integer_dots_match_the_reference_on_dequantized_activations() {
    for isa in Isa::available() {
        for q in QType::ALL.into_iter().filter(|q| q.is_quantized()) {
            for cols in COLS {
                let rb = q.row_bytes(cols).unwrap();
                let bytes = quantized(q, 6, cols, 7 + cols as u64);
                let n = 3;
                // activations with a spread of magnitudes, one large outlier
                let mut x = rand_vec(n * cols, 11);
                x[5] = 40.0;
                let a = QAct::new(&x, n, cols, kernels::act_block(q));
                let f = kernels::q_dot(isa, q).unwrap();
                let mut worst = 0f32;
                for t in 0..n {
                    let xh = a.dequantized(t);
                    let xt = &x[t * cols..(t + 1) * cols];
                    for row in bytes.chunks_exact(rb) {
                        let mut w = vec![0f32; cols];
                        dequantize_row(q, row, &mut w).unwrap();
                        let got = unsafe { f(row, &a, t) };
                        let want = dot_row(q, row, &xh).unwrap();
                        let mag = abs_dot(&w, &xh);
                        assert!(
                            (got - want).abs() <= 1e-5 * mag,
                            "{} {} cols {cols} t {t}: {got} vs {want} (|wx| {mag})",
                            isa.name(),
                            q.name()
                        );
                        let exact = dot_row(q, row, xt).unwrap();
                        let rel = (got - exact).abs() / abs_dot(&w, xt);
                        worst = worst.max(rel);
                        assert!(
                            rel <= 2e-2,
                            "{} {}: activation rounding {rel}",
                            isa.name(),
                            q.name()
                        );
                    }
                }
                if cols == 640 {
                    eprintln!(
                        "{} {}: int8 activations, worst |err| / sum|wx| = {worst:.2e}",
                        isa.name(),
                        q.name()
                    );
                }
            }
        }
    }
}

fn weight(q: QType, rows: usize, cols: usize, seed: u64) -> WeightSource {
    // built from from_f32 so that fields added to WeightSource keep their defaults
    let mut w = WeightSource::from_f32("w", 1, 1, &[0.0]);
    w.qtype = q;
    w.rows = rows;
    w.cols = cols;
    w.bytes = SharedBytes::from_vec(quantized(q, rows, cols, seed));
    w
}

/// Every type x mode x ISA: matmul (decode n = 1 and prefill n > 1, rows not a multiple of the
/// tile or chunk) against per-row reference dots.
#[test]
fn matmul_every_type_mode_and_isa() {
    let (rows, cols) = (70, 256);
    for isa in Isa::available() {
        for int8 in [false, true] {
            let be = CpuBackend::with_options(CpuOptions {
                int8_activations: int8,
                isa: Some(isa),
                ..CpuOptions::exact(Some(2))
            })
            .unwrap();
            for q in QType::ALL {
                let src = weight(q, rows, cols, q as u64 + 1);
                let w = be.load_weight(&src).unwrap();
                for n in [1, 3, 37] {
                    let x = rand_vec(n * cols, 100 + n as u64);
                    let mut out = vec![0f32; n * rows];
                    be.matmul(&w, &x, n, &mut out);
                    let a = QAct::new(&x, n, cols, kernels::act_block(q));
                    for t in 0..n {
                        let xt = if int8 && q.is_quantized() {
                            a.dequantized(t)
                        } else {
                            x[t * cols..(t + 1) * cols].to_vec()
                        };
                        for r in 0..rows {
                            let row = &src.bytes[r * w.row_bytes..(r + 1) * w.row_bytes];
                            let want = dot_row(q, row, &xt).unwrap();
                            let mut wr = vec![0f32; cols];
                            dequantize_row(q, row, &mut wr).unwrap();
                            let got = out[t * rows + r];
                            assert!(
                                (got - want).abs() <= 1e-5 * abs_dot(&wr, &xt),
                                "{} int8={int8} {} n={n} t={t} r={r}: {got} vs {want}",
                                isa.name(),
                                q.name()
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn matmul_batched_equals_per_token() {
    let be = CpuBackend::new(Some(2)).unwrap();
    let (rows, cols, n) = (5, 12, 3);
    let src = WeightSource::from_f32(
        "w",
        rows,
        cols,
        &(0..rows * cols)
            .map(|i| (i as f32 * 0.37).sin())
            .collect::<Vec<_>>(),
    );
    let w = be.load_weight(&src).unwrap();
    let x: Vec<f32> = (0..n * cols).map(|i| (i as f32 * 0.11).cos()).collect();
    let mut out = vec![0.0; n * rows];
    be.matmul(&w, &x, n, &mut out);
    for t in 0..n {
        let mut o1 = vec![0.0; rows];
        be.matmul(&w, &x[t * cols..(t + 1) * cols].to_vec(), 1, &mut o1);
        for (a, b) in out[t * rows..(t + 1) * rows].iter().zip(&o1) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
        }
    }
}

#[test]
fn bf16_rows_widen_exactly() {
    let vals = [1.0f32, -2.5, 0.15625, 3.0e-3];
    let bytes: Vec<u8> = vals
        .iter()
        .flat_map(|v| half::bf16::from_f32(*v).to_bits().to_le_bytes())
        .collect();
    for isa in Isa::available() {
        let mut out = [0.0; 4];
        unsafe { kernels::decode(isa, QType::BF16)(&bytes, &mut out) };
        for (o, v) in out.iter().zip(vals) {
            assert_eq!(*o, half::bf16::from_f32(v).to_f32());
        }
    }
}

/// Runs `n` tokens of attention in one batch and then in pieces, returning both outputs.
fn attention_runs(
    be: &CpuBackend,
    window: Option<usize>,
    split: usize,
) -> (Vec<f32>, Vec<f32>, CpuKv) {
    attention_runs_shaped(be, window, split, (2, 1, 4, 11))
}

/// [`attention_runs`] with `(heads, kv_heads, head_dim, tokens)`.
fn attention_runs_shaped(
    be: &CpuBackend,
    window: Option<usize>,
    split: usize,
    (heads, kv_heads, d, n): (usize, usize, usize, usize),
) -> (Vec<f32>, Vec<f32>, CpuKv) {
    let q = rand_vec(n * heads * d, 1);
    let k = rand_vec(n * kv_heads * d, 2);
    let v = rand_vec(n * kv_heads * d, 3);
    let params = |n, pos0| AttnParams {
        n,
        pos0,
        heads,
        kv_heads,
        head_dim: d,
        window,
        scale: 0.5,
        softcap: None,
    };
    let (qd, kd) = (heads * d, kv_heads * d);
    let mut batched = vec![0.0; n * qd];
    let mut kv = be.new_kv(kd, window);
    be.attention(&mut kv, &q, &k, &v, &mut batched, params(n, 0));
    let mut kv = be.new_kv(kd, window);
    // `split` tokens in a batch, then one at a time through the cache.
    let mut pieces = vec![0.0; n * qd];
    let s = |b: &Vec<f32>, w: usize, a: usize, e: usize| b[a * w..e * w].to_vec();
    let mut out = vec![0.0; split * qd];
    be.attention(
        &mut kv,
        &s(&q, qd, 0, split),
        &s(&k, kd, 0, split),
        &s(&v, kd, 0, split),
        &mut out,
        params(split, 0),
    );
    pieces[..split * qd].copy_from_slice(&out);
    for t in split..n {
        let mut o = vec![0.0; qd];
        be.attention(
            &mut kv,
            &s(&q, qd, t, t + 1),
            &s(&k, kd, t, t + 1),
            &s(&v, kd, t, t + 1),
            &mut o,
            params(1, t),
        );
        pieces[t * qd..(t + 1) * qd].copy_from_slice(&o);
    }
    (batched, pieces, kv)
}

/// Prefill in one batch and token-by-token decode must give the same attention output,
/// including when the batch is longer than the ring of a sliding-window layer.
#[test]
fn sliding_ring_matches_batched_attention() {
    let be = CpuBackend::new(Some(2)).unwrap();
    let window = 4;
    let (batched, pieces, kv) = attention_runs(&be, Some(window), 3);
    assert_eq!(&pieces[..3 * 8], &batched[..3 * 8]);
    for (t, (a, b)) in pieces.iter().zip(&batched).enumerate() {
        assert!((a - b).abs() < 1e-6, "value {t}: {a} vs {b}");
    }
    assert_eq!(
        kv.bytes_allocated(),
        2 * window * 4 * 4,
        "ring stays bounded"
    );
}

/// The f16 cache: same ring semantics, outputs within f16 rounding of the f32 cache.
#[test]
fn f16_kv_matches_f32_kv() {
    let exact = CpuBackend::new(Some(2)).unwrap();
    let fast = CpuBackend::fast(Some(2)).unwrap();
    for window in [Some(4), None] {
        let (want, _, _) = attention_runs(&exact, window, 3);
        let (batched, pieces, kv) = attention_runs(&fast, window, 3);
        // the batch's own keys are used at full precision: one batch is exact
        assert_eq!(batched, want);
        let norm = want.iter().map(|v| v * v).sum::<f32>().sqrt();
        let err = pieces
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f32>()
            .sqrt();
        assert!(
            err <= 2e-3 * norm,
            "{window:?}: f16 cache error {err} vs norm {norm}"
        );
        if let Some(w) = window {
            assert_eq!(
                kv.bytes_allocated(),
                2 * w * 4 * 2,
                "f16 ring stays bounded"
            );
        }
    }
}

/// The fast mode's attention kernel (AVX-512, head_dim a multiple of 64; GQA groups of 4 and
/// of 6, which takes two passes) against the exact mode's, batched and through the f16 cache.
#[test]
fn fast_attention_matches_exact() {
    let exact = CpuBackend::new(Some(2)).unwrap();
    let fast = CpuBackend::fast(Some(2)).unwrap();
    for shape in [(4, 1, 256, 21), (12, 2, 64, 9), (2, 2, 128, 5)] {
        for window in [Some(4), Some(16), None] {
            let (want, _, _) = attention_runs_shaped(&exact, window, 3, shape);
            let (batched, pieces, _) = attention_runs_shaped(&fast, window, 3, shape);
            let norm = want.iter().map(|v| v * v).sum::<f32>().sqrt();
            let err = |got: &[f32]| {
                got.iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f32>()
                    .sqrt()
            };
            // batched: f32 keys on both sides, only the exp and summation order differ
            assert!(
                err(&batched) <= 1e-5 * norm,
                "{shape:?} {window:?}: batched {} vs norm {norm}",
                err(&batched)
            );
            assert!(
                err(&pieces) <= 2e-3 * norm,
                "{shape:?} {window:?}: f16 cache {} vs norm {norm}",
                err(&pieces)
            );
        }
    }
}

#[test]
fn top_k_orders_and_breaks_ties_by_index() {
    assert_eq!(top_k(&[0.5, 3.0, 3.0, -1.0], 1), vec![(1, 3.0)]);
    assert_eq!(
        top_k(&[0.5, 2.0, 2.0, -1.0, 3.0], 3),
        vec![(4, 3.0), (1, 2.0), (2, 2.0)]
    );
}

/// The GEMM (tiles of 16 rows, blocks of 8 tokens) against the scalar integer kernels, which
/// the test above ties to the reference: partial tiles (rows not a multiple of 16), token
/// tails (n not a multiple of 8), and every quantized type at the Gemma widths.
#[cfg(target_arch = "x86_64")]
#[test]
fn gemm_matches_the_scalar_integer_kernels() {
    use kernels::gemm::{gemm_tile, Tile, TILE};
    if !Isa::available().contains(&Isa::Avx512Vnni) {
        eprintln!("no AVX-512 VNNI: GEMM not tested");
        return;
    }
    for q in QType::ALL.into_iter().filter(|q| q.is_quantized()) {
        for (rows, cols) in [(37, 128), (16, 640), (5, 2048), (33, 256), (19, 160usize)] {
            if !cols.is_multiple_of(kernels::act_block(q)) || q.row_bytes(cols).is_err() {
                continue; // 160 = 2.5 chunks: I8_SYM only (a 32-column tail after 64-chunks)
            }
            let rb = q.row_bytes(cols).unwrap();
            let bytes = quantized(q, rows, cols, 13 + rows as u64 + q as u64);
            for n in [1, 7, 8, 13, 20] {
                let mut x = rand_vec(n * cols, 17 + n as u64);
                x[3] = -25.0;
                let a = QAct::new(&x, n, cols, kernels::act_block(q));
                let mut out = vec![f32::NAN; n * rows];
                let mut tile = Tile::new(q, cols);
                for r0 in (0..rows).step_by(TILE) {
                    let nr = (rows - r0).min(TILE);
                    tile.pack(bytes[r0 * rb..(r0 + nr) * rb].chunks_exact(rb));
                    unsafe { gemm_tile(&tile, nr, &a, n, out.as_mut_ptr().add(r0), rows) };
                }
                let f = kernels::scalar::q_dot(q);
                for t in 0..n {
                    let xh = a.dequantized(t);
                    for r in 0..rows {
                        let row = &bytes[r * rb..(r + 1) * rb];
                        let mut w = vec![0f32; cols];
                        dequantize_row(q, row, &mut w).unwrap();
                        let want = unsafe { f(row, &a, t) };
                        let got = out[t * rows + r];
                        assert!(
                            (got - want).abs() <= 1e-5 * abs_dot(&w, &xh),
                            "{} {rows}x{cols} n={n} t={t} r={r}: {got} vs {want}",
                            q.name()
                        );
                    }
                }
            }
        }
    }
}

/// The vector GELU (exp-based tanh) against the libm one, including a scalar tail.
#[cfg(target_arch = "x86_64")]
#[test]
fn vector_gelu_matches_tanh_gelu() {
    if !Isa::available().contains(&Isa::Avx512Vnni) {
        return;
    }
    let n = 1003;
    let x: Vec<f32> = (0..n).map(|i| (i as f32 - 500.0) * 0.03).collect();
    let u = rand_vec(n, 5);
    let mut g = x.clone();
    unsafe { kernels::x86::gelu_mul(&mut g, &u) };
    for i in 0..n {
        let want = gelu_tanh(x[i]) * u[i];
        assert!(
            (g[i] - want).abs() <= 2e-6 * (x[i] * u[i]).abs() + 1e-7,
            "x = {}: {} vs {want}",
            x[i],
            g[i]
        );
    }
}

/// The float GEMM (fast-mode prefill on F32 / F16 / BF16 weights) against the reference dots:
/// partial tiles, token tails, and widths that are not a multiple of 16.
#[cfg(target_arch = "x86_64")]
#[test]
fn float_gemm_matches_the_reference() {
    use kernels::gemm::{fgemm_tile, FTile, TILE};
    if !Isa::available().contains(&Isa::Avx512Vnni) {
        return;
    }
    for q in [QType::F32, QType::F16, QType::BF16] {
        for (rows, cols) in [(37, 37), (16, 640), (5, 2048), (33, 20)] {
            let rb = q.row_bytes(cols).unwrap();
            let bytes = quantized(q, rows, cols, 3 + rows as u64);
            for n in [1, 7, 8, 13] {
                let x = rand_vec(n * cols, 23 + n as u64);
                let mut out = vec![f32::NAN; n * rows];
                let mut tile = FTile::new(q, cols);
                for r0 in (0..rows).step_by(TILE) {
                    let nr = (rows - r0).min(TILE);
                    tile.pack(bytes[r0 * rb..(r0 + nr) * rb].chunks_exact(rb));
                    unsafe { fgemm_tile(&tile, nr, &x, n, out.as_mut_ptr().add(r0), rows) };
                }
                for t in 0..n {
                    let xt = &x[t * cols..(t + 1) * cols];
                    for r in 0..rows {
                        let row = &bytes[r * rb..(r + 1) * rb];
                        let mut w = vec![0f32; cols];
                        dequantize_row(q, row, &mut w).unwrap();
                        let want = dot_row(q, row, xt).unwrap();
                        let got = out[t * rows + r];
                        assert!(
                            (got - want).abs() <= 1e-5 * abs_dot(&w, xt),
                            "{} {rows}x{cols} n={n} t={t} r={r}: {got} vs {want}",
                            q.name()
                        );
                    }
                }
            }
        }
    }
}

/// The AVX-512 activation quantizer gives the portable one's codes, scales and sums exactly.
#[cfg(target_arch = "x86_64")]
#[test]
fn vector_activation_quantizer_is_exact() {
    if !Isa::available().contains(&Isa::Avx512Vnni) {
        return;
    }
    for blk in [16, 32, 64, 128] {
        let mut x = rand_vec(8 * blk, blk as u64);
        x[3] = 300.0;
        x[blk + 5] = -0.5; // ties and a block of small values
        x[2 * blk..3 * blk].fill(0.0);
        for xs in x.chunks_exact(blk) {
            let (mut q0, mut q1) = (vec![0i8; blk], vec![0i8; blk]);
            let (mut s0, mut s1) = (vec![0i16; blk / 16], vec![0i16; blk / 16]);
            let a = kernels::quantize_block(xs, &mut q0, &mut s0);
            let b = unsafe { kernels::x86::quantize_block(xs, &mut q1, &mut s1) };
            assert_eq!(a.0.to_bits(), b.0.to_bits());
            assert_eq!((a.1, &q0, &s0), (b.1, &q1, &s1));
        }
    }
}

/// The fused QK-norm + RoPE (one sin/cos table for q and k) equals the ops it replaces.
#[test]
fn qk_norm_rope_equals_its_parts() {
    let be = CpuBackend::fast(Some(2)).unwrap();
    let (heads, kv_heads, d) = (4, 1, 256);
    for n in [1, 37] {
        let p = RopeParams {
            heads,
            head_dim: d,
            pos0: 5,
            base: 10000.0,
            scale: 1.0,
        };
        let (q0, k0) = (rand_vec(n * heads * d, 1), rand_vec(n * kv_heads * d, 2));
        let norm = |s| {
            be.load_weight(&WeightSource::from_f32("n", 1, d, &rand_vec(d, s)))
                .unwrap()
        };
        let (qn, kn) = (norm(3), norm(4));
        let (mut q, mut k) = (q0.clone(), k0.clone());
        be.qk_norm_rope(&mut q, &mut k, &qn, &kn, n, kv_heads, p, 1e-6);
        let (mut q1, mut k1) = (q0, k0);
        be.rms_norm(&mut q1, &qn, n * heads, 1e-6);
        be.rms_norm(&mut k1, &kn, n * kv_heads, 1e-6);
        be.rope(&mut q1, n, p);
        be.rope(
            &mut k1,
            n,
            RopeParams {
                heads: kv_heads,
                ..p
            },
        );
        assert_eq!((q, k), (q1, k1));
    }
}
