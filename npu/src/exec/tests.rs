//! The executor against independent f64 references of the defined semantics (exact), and
//! against the CPU reference arithmetic (close).

use super::*;
use crate::bf16::round_bf16_f64;
use mixq_format::quant::{dot_row, quantize_row, unpack_row};

/// Deterministic generator (xorshift64*), values roughly N(0, 1) by summing uniforms.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.uniform()).sum::<f32>() - 2.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * scale).collect()
    }
}

fn quantized(qtype: QType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let rb = qtype.row_bytes(cols).unwrap();
    let mut out = vec![0u8; rows * rb];
    for r in 0..rows {
        // a few outlier columns, as real projections have
        let mut w = rng.vec(cols, 0.02);
        w[r % cols] *= 8.0;
        quantize_row(qtype, &w, None, &mut out[r * rb..(r + 1) * rb]).unwrap();
    }
    out
}

fn r32(x: f64) -> f64 {
    x as f32 as f64
}
fn rbf(x: f64) -> f64 {
    round_bf16_f64(x) as f64
}

/// The W4ABF16 definition, in f64 with every rounding written out; codes and parameters read
/// through formats' `unpack_row` (not the executor's own nibble decoding).
fn reference_matvec(qtype: QType, weight: &[u8], rows: usize, cols: usize, x: &[f32]) -> Vec<f32> {
    let rb = qtype.row_bytes(cols).unwrap();
    let pb = qtype.param_block(cols);
    (0..rows)
        .map(|r| {
            let mut codes = vec![0u8; cols];
            let params = unpack_row(qtype, &weight[r * rb..(r + 1) * rb], &mut codes).unwrap();
            let mut acc = 0f64;
            for k in 0..cols {
                let (s, m) = params[k / pb].affine(k % pb);
                let (s, m) = (s as f64, m as f64);
                let w = rbf(r32(r32(s * codes[k] as f64) + m));
                let xk = rbf(x[k] as f64);
                acc = r32(acc + w * xk);
            }
            acc as f32
        })
        .collect()
}

#[test]
fn matvec_matches_the_defined_semantics_exactly() {
    let ex = FunctionalExecutor::new();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for qtype in [
        QType::I4Grouped,
        QType::I4PerChannel,
        QType::I4Grouped32,
        QType::I4Grouped16,
    ] {
        // hidden sizes of Gemma 3 270M, 1B, 27B; 4096 = 27B's q_dim
        for (rows, cols) in [(24usize, 640usize), (16, 1152), (8, 5376), (8, 4096)] {
            let w = quantized(qtype, rows, cols, &mut rng);
            let x = rng.vec(cols, 3.0);
            let y = ex.matvec_w4abf16(qtype, &w, rows, cols, &x).unwrap();
            let r = reference_matvec(qtype, &w, rows, cols, &x);
            for i in 0..rows {
                assert_eq!(
                    y[i].to_bits(),
                    r[i].to_bits(),
                    "{qtype} [{rows},{cols}] row {i}: {} vs {}",
                    y[i],
                    r[i]
                );
            }
        }
    }
}

#[test]
fn matvec_is_close_to_the_cpu_reference_dot() {
    // The NPU arithmetic (bf16 activations, bf16 weights) differs from formats' f32 dot_row
    // only by bf16 rounding: about 2^-9 relative per element, averaging down.
    let ex = FunctionalExecutor::new();
    let mut rng = Rng(7);
    for qtype in [
        QType::I4Grouped,
        QType::I4PerChannel,
        QType::I4Grouped32,
        QType::I4Grouped16,
    ] {
        let (rows, cols) = (32, 2560);
        let w = quantized(qtype, rows, cols, &mut rng);
        let x = rng.vec(cols, 1.0);
        let y = ex.matvec_w4abf16(qtype, &w, rows, cols, &x).unwrap();
        let rb = qtype.row_bytes(cols).unwrap();
        let (mut num, mut den) = (0f64, 0f64);
        for r in 0..rows {
            let c = dot_row(qtype, &w[r * rb..(r + 1) * rb], &x).unwrap() as f64;
            num += (y[r] as f64 - c).powi(2);
            den += c * c;
        }
        let nmse = num / den;
        println!("{qtype}: nmse of W4ABF16 vs CPU f32 dot = {nmse:.3e}");
        assert!(nmse < 2e-5, "{qtype}: nmse {nmse}");
    }
}

/// Batching changes nothing: small batches (lanes over rows) and large ones (lanes over
/// tokens, with a partial lane block) give every output bit-exactly as the definition.
#[test]
fn matmul_equals_per_token_matvec() {
    let ex = FunctionalExecutor::new();
    let mut rng = Rng(11);
    let (rows, cols) = (12, 1152);
    for tokens in [5, 21] {
        let w = quantized(QType::I4Grouped, rows, cols, &mut rng);
        let xs = rng.vec(tokens * cols, 1.0);
        let y = ex
            .matmul_w4abf16(QType::I4Grouped, &w, rows, cols, &xs, tokens)
            .unwrap();
        for t in 0..tokens {
            let x = &xs[t * cols..(t + 1) * cols];
            let yt = ex
                .matvec_w4abf16(QType::I4Grouped, &w, rows, cols, x)
                .unwrap();
            assert_eq!(&y[t * rows..(t + 1) * rows], &yt[..], "{tokens} tokens");
            let r = reference_matvec(QType::I4Grouped, &w, rows, cols, x);
            let (yb, rb): (Vec<u32>, Vec<u32>) = (
                yt.iter().map(|v| v.to_bits()).collect(),
                r.iter().map(|v| v.to_bits()).collect(),
            );
            assert_eq!(yb, rb, "{tokens} tokens, token {t}");
        }
    }
}

#[test]
fn dequantized_row_is_what_matvec_uses() {
    let ex = FunctionalExecutor::new();
    let mut rng = Rng(5);
    let cols = 640;
    let w = quantized(QType::I4PerChannel, 1, cols, &mut rng);
    let wb = ex
        .dequantize_row_bf16(QType::I4PerChannel, &w, cols)
        .unwrap();
    assert!(
        wb.iter().all(|&v| crate::bf16::round_bf16(v) == v),
        "weights are bf16 values"
    );
    // a one-hot x picks out each weight exactly
    for k in [0usize, 31, 32, 63, 64, 639] {
        let mut x = vec![0f32; cols];
        x[k] = 1.0;
        let y = ex
            .matvec_w4abf16(QType::I4PerChannel, &w, 1, cols, &x)
            .unwrap();
        assert_eq!(y[0], wb[k], "k = {k}");
    }
}

#[test]
fn f16_parameters_decode_like_formats() {
    // every f16 bit pattern as an I4_GROUPED scale, read by formats and by the executor
    let cols = 64;
    let mut row = vec![0u8; QType::I4Grouped.row_bytes(cols).unwrap()];
    let mut codes = vec![0u8; cols];
    for h in 0..=u16::MAX {
        row[..2].copy_from_slice(&h.to_le_bytes());
        let p = unpack_row(QType::I4Grouped, &row, &mut codes).unwrap();
        let (s, _) = p[0].affine(0);
        let mine = f16_to_f32(h);
        assert!(
            s.to_bits() == mine.to_bits() || (s.is_nan() && mine.is_nan()),
            "{h:#06x}: {s} vs {mine}"
        );
    }
}

#[test]
fn errors_are_reported_not_panicked() {
    let ex = FunctionalExecutor::new();
    let w = vec![0u8; QType::I8Sym.row_bytes(64).unwrap()];
    let e = ex
        .matvec_w4abf16(QType::I8Sym, &w, 1, 64, &[0.0; 64])
        .unwrap_err();
    assert!(e.to_string().contains("I8_SYM"), "{e}");
    let w = vec![0u8; QType::I4Grouped.row_bytes(64).unwrap() - 1];
    assert!(ex
        .matvec_w4abf16(QType::I4Grouped, &w, 1, 64, &[0.0; 64])
        .is_err());
    let w = vec![0u8; QType::I4Grouped.row_bytes(64).unwrap()];
    assert!(ex
        .matvec_w4abf16(QType::I4Grouped, &w, 1, 64, &[0.0; 63])
        .is_err());
    assert!(ex
        .matvec_w4abf16(QType::I4Grouped, &w, 1, 60, &[0.0; 60])
        .is_err());
    assert!(ex
        .attention_bf16(
            &[0.0; 8],
            &[],
            &[],
            0,
            2,
            1,
            4,
            1.0,
            AttnPartition::single(1)
        )
        .is_err());
}

/// The attention definition in f64 with every rounding written out, structured differently
/// from the executor (scores of all positions first, then chunk by chunk).
#[allow(clippy::too_many_arguments)]
fn reference_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n_pos: usize,
    n_heads: usize,
    n_kv: usize,
    hd: usize,
    scale: f32,
    part: AttnPartition,
) -> Vec<f32> {
    let kvd = n_kv * hd;
    let mut out = vec![0f32; n_heads * hd];
    for h in 0..n_heads {
        let g = h / (n_heads / n_kv);
        let qb: Vec<f64> = (0..hd)
            .map(|d| rbf(r32(q[h * hd + d] as f64 * scale as f64)))
            .collect();
        let s: Vec<f64> = (0..n_pos)
            .map(|j| {
                let mut acc = 0f64;
                for d in 0..hd {
                    acc = r32(acc + qb[d] * rbf(k[j * kvd + g * hd + d] as f64));
                }
                acc
            })
            .collect();
        // chunk states
        let states: Vec<(f64, f64, Vec<f64>)> = (0..n_pos)
            .step_by(part.kv_chunk)
            .map(|j0| {
                let j1 = (j0 + part.kv_chunk).min(n_pos);
                let m = s[j0..j1].iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let p: Vec<f64> = (j0..j1).map(|j| rbf(r32(s[j] - m).exp())).collect();
                let l = p.iter().fold(0f64, |a, &x| r32(a + x));
                let a = (0..hd)
                    .map(|d| {
                        (j0..j1).fold(0f64, |acc, j| {
                            r32(acc + p[j - j0] * rbf(v[j * kvd + g * hd + d] as f64))
                        })
                    })
                    .collect();
                (m, l, a)
            })
            .collect();
        let merge = |x: (f64, f64, Vec<f64>), y: (f64, f64, Vec<f64>)| {
            let m = x.0.max(y.0);
            let (al, be) = (r32(r32(x.0 - m).exp()), r32(r32(y.0 - m).exp()));
            let l = r32(r32(x.1 * al) + r32(y.1 * be));
            let a =
                x.2.iter()
                    .zip(&y.2)
                    .map(|(p, q)| r32(r32(p * al) + r32(q * be)))
                    .collect();
            (m, l, a)
        };
        let parts: Vec<(f64, f64, Vec<f64>)> = states
            .chunks(part.chunks_per_partition)
            .map(|c| c.iter().cloned().reduce(merge).unwrap())
            .collect();
        let (_, l, a) = parts.into_iter().reduce(merge).unwrap();
        let inv = r32(1.0 / l);
        for d in 0..hd {
            out[h * hd + d] = r32(a[d] * inv) as f32;
        }
    }
    out
}

#[test]
fn attention_matches_the_defined_semantics_exactly() {
    let ex = FunctionalExecutor::new();
    let mut rng = Rng(0xABCD);
    // (heads, kv heads, head_dim): 270M/1B style 4:1 x 256, 27B style 2:1 x 128
    for (nh, nkv, hd) in [(4usize, 1usize, 256usize), (4, 2, 128)] {
        for n_pos in [1usize, 7, 64, 300] {
            let q = rng.vec(nh * hd, 1.0);
            let k = rng.vec(n_pos * nkv * hd, 1.0);
            let v = rng.vec(n_pos * nkv * hd, 1.0);
            let scale = 1.0 / (hd as f32).sqrt();
            for part in [
                AttnPartition::single(n_pos),
                AttnPartition {
                    kv_chunk: 32,
                    chunks_per_partition: 1,
                },
                AttnPartition {
                    kv_chunk: 16,
                    chunks_per_partition: 3,
                },
            ] {
                let y = ex
                    .attention_bf16(&q, &k, &v, n_pos, nh, nkv, hd, scale, part)
                    .unwrap();
                let r = reference_attention(&q, &k, &v, n_pos, nh, nkv, hd, scale, part);
                for i in 0..y.len() {
                    assert_eq!(
                        y[i].to_bits(),
                        r[i].to_bits(),
                        "{nh}/{nkv}x{hd} n={n_pos} {part:?} [{i}]: {} vs {}",
                        y[i],
                        r[i]
                    );
                }
            }
        }
    }
}

#[test]
fn attention_is_close_to_exact_softmax_attention() {
    let ex = FunctionalExecutor::new();
    let mut rng = Rng(99);
    let (nh, nkv, hd, n_pos) = (8usize, 4usize, 128usize, 200usize);
    let q = rng.vec(nh * hd, 1.0);
    let k = rng.vec(n_pos * nkv * hd, 1.0);
    let v = rng.vec(n_pos * nkv * hd, 1.0);
    let scale = 168f32.powf(-0.5);
    let y = ex
        .attention_bf16(
            &q,
            &k,
            &v,
            n_pos,
            nh,
            nkv,
            hd,
            scale,
            AttnPartition {
                kv_chunk: 64,
                chunks_per_partition: 2,
            },
        )
        .unwrap();
    let (mut num, mut den) = (0f64, 0f64);
    for h in 0..nh {
        let g = h / (nh / nkv);
        let s: Vec<f64> = (0..n_pos)
            .map(|j| {
                (0..hd)
                    .map(|d| q[h * hd + d] as f64 * k[j * nkv * hd + g * hd + d] as f64)
                    .sum::<f64>()
                    * scale as f64
            })
            .collect();
        let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
        let z: f64 = e.iter().sum();
        for d in 0..hd {
            let o: f64 = (0..n_pos)
                .map(|j| e[j] * v[j * nkv * hd + g * hd + d] as f64)
                .sum::<f64>()
                / z;
            num += (y[h * hd + d] as f64 - o).powi(2);
            den += o * o;
        }
    }
    println!("attention nmse vs exact f64 = {:.3e}", num / den);
    assert!(num / den < 1e-4);
}

/// Host speed of the emulation (not an NPU figure): `cargo test -p mixq-npu --release
/// emulation_speed -- --ignored --nocapture`.
#[test]
#[ignore]
fn emulation_speed() {
    let ex = FunctionalExecutor::new();
    let mut rng = Rng(5);
    let (rows, cols) = (1024, 640);
    let w = quantized(QType::I4Grouped, rows, cols, &mut rng);
    for tokens in [1, 4, 64] {
        let xs = rng.vec(tokens * cols, 1.0);
        let t = std::time::Instant::now();
        let reps = 20;
        for _ in 0..reps {
            ex.matmul_w4abf16(QType::I4Grouped, &w, rows, cols, &xs, tokens)
                .unwrap();
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "[{rows}x{cols}] x {tokens} tokens: {:.2} ms, {:.2} GMAC/s",
            s * 1e3,
            (rows * cols * tokens) as f64 / s / 1e9
        );
    }
}
