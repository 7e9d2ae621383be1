//! The CPU backend: rayon across rows, weights read in place from the memory map.
//!
//! This is the reference implementation every other backend is tested against, so it favours
//! plain loops the compiler vectorises over hand-written intrinsics.

use super::{AttnParams, Backend, RopeParams};
use crate::weights::WeightSource;
use anyhow::{anyhow, bail, Result};
use mixq_format::quant::hadamard::apply_hadamard_with_signs;
use mixq_format::quant::{dequantize_row, hadamard_signs, QType, Transform};
use mixq_format::SharedBytes;
use rayon::prelude::*;
use std::borrow::Cow;

pub struct CpuBackend {
    threads: usize,
}

impl CpuBackend {
    pub fn new(threads: Option<usize>) -> Result<Self> {
        let threads = threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        // The global pool may already exist (tests, a second model); its size then stays.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global();
        Ok(CpuBackend {
            threads: rayon::current_num_threads().min(threads),
        })
    }
}

pub struct CpuWeight {
    qtype: QType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    bytes: SharedBytes,
    /// 1-D tensors (norm weights) are decoded once: they are tiny and read on every row.
    vector: Option<Vec<f32>>,
    /// Signs and block of the Hadamard rotation the input undergoes (rotated tensors only).
    rotation: Option<(Vec<f32>, usize)>,
}

impl CpuWeight {
    fn row_into(&self, r: usize, out: &mut [f32]) {
        decode(
            self.qtype,
            &self.bytes[r * self.row_bytes..(r + 1) * self.row_bytes],
            out,
        );
    }

    /// The activations this weight multiplies: rotated by H when the tensor is stored as W·H.
    fn input<'x>(&self, x: &'x [f32]) -> Cow<'x, [f32]> {
        match &self.rotation {
            None => Cow::Borrowed(x),
            Some((signs, block)) => {
                let mut r = x.to_vec();
                for row in r.chunks_exact_mut(self.cols) {
                    apply_hadamard_with_signs(row, signs, *block);
                }
                Cow::Owned(r)
            }
        }
    }
}

/// Decodes one stored row to f32: float types widen exactly, quantized types go through the
/// format's reference dequantisation (the SIMD kernels are checked against it).
fn decode(qtype: QType, bytes: &[u8], out: &mut [f32]) {
    match qtype {
        QType::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        // bf16 is the top half of an f32: widening is a shift, exact.
        QType::BF16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
            }
        }
        QType::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        // Sizes were validated at load, so the reference decoder cannot fail here.
        q => dequantize_row(q, bytes, out).expect("row size validated at load"),
    }
}

/// Dot product with 8 independent accumulators so the compiler keeps several SIMD lanes busy.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

pub struct CpuKv {
    kv_dim: usize,
    /// Ring size for sliding-window layers; `None` grows with the context.
    window: Option<usize>,
    /// Positions stored so far (the next token's position).
    len: usize,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl CpuKv {
    fn slot(&self, pos: usize) -> usize {
        match self.window {
            Some(w) => pos % w,
            None => pos,
        }
    }
    fn key(&self, pos: usize) -> &[f32] {
        let s = self.slot(pos) * self.kv_dim;
        &self.k[s..s + self.kv_dim]
    }
    fn value(&self, pos: usize) -> &[f32] {
        let s = self.slot(pos) * self.kv_dim;
        &self.v[s..s + self.kv_dim]
    }
}

fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
}

impl Backend for CpuBackend {
    type Buf = Vec<f32>;
    type Weight = CpuWeight;
    type Kv = CpuKv;

    fn describe(&self) -> String {
        format!("cpu ({} threads, f32 reference kernels)", self.threads)
    }

    fn load_weight(&self, w: &WeightSource) -> Result<CpuWeight> {
        let row_bytes = w.qtype.row_bytes(w.cols)?;
        if w.rows.checked_mul(row_bytes) != Some(w.bytes.len()) {
            bail!(
                "tensor `{}`: {} bytes, but {}x{} {} needs {}x{row_bytes}",
                w.name,
                w.bytes.len(),
                w.rows,
                w.cols,
                w.qtype.name(),
                w.rows
            );
        }
        let rotation = match w.transform {
            Transform::None => None,
            Transform::BlockHadamard { block, seed } => {
                w.transform
                    .check(w.cols)
                    .map_err(|e| anyhow!("tensor `{}`: {e}", w.name))?;
                Some((hadamard_signs(w.cols, seed), block as usize))
            }
        };
        let vector = (w.rows == 1).then(|| {
            let mut v = vec![0.0; w.cols];
            decode(w.qtype, &w.bytes, &mut v);
            v
        });
        Ok(CpuWeight {
            qtype: w.qtype,
            rows: w.rows,
            cols: w.cols,
            row_bytes,
            bytes: w.bytes.clone(),
            vector,
            rotation,
        })
    }

    fn alloc(&self, len: usize) -> Vec<f32> {
        vec![0.0; len]
    }

    fn upload(&self, data: &[f32], buf: &mut Vec<f32>) {
        buf[..data.len()].copy_from_slice(data);
    }

    fn download(&self, buf: &Vec<f32>, len: usize) -> Vec<f32> {
        buf[..len].to_vec()
    }

    fn new_kv(&self, kv_dim: usize, window: Option<usize>) -> CpuKv {
        let slots = window.unwrap_or(0);
        CpuKv {
            kv_dim,
            window,
            len: 0,
            k: vec![0.0; slots * kv_dim],
            v: vec![0.0; slots * kv_dim],
        }
    }

    fn truncate_kv(&self, kv: &mut CpuKv, len: usize) {
        // A ring has overwritten what lay more than `window` back; rewinding past that would
        // read stale slots, so callers re-run the prompt instead (the chat session knows this).
        kv.len = kv.len.min(len);
    }

    fn embed(&self, table: &CpuWeight, ids: &[u32], scale: f32, out: &mut Vec<f32>) {
        let d = table.cols;
        for (i, &id) in ids.iter().enumerate() {
            let row = &mut out[i * d..(i + 1) * d];
            table.row_into(id as usize, row);
            row.iter_mut().for_each(|x| *x *= scale);
        }
    }

    fn rms_norm(&self, x: &mut Vec<f32>, w: &CpuWeight, rows: usize, eps: f32) {
        let w = w.vector.as_deref().expect("norm weights are 1-D");
        let d = w.len();
        x[..rows * d].par_chunks_mut(d).for_each(|row| {
            // Accumulate in f64: the residual stream reaches values in the thousands.
            let ms = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / d as f64;
            let inv = (1.0 / (ms + eps as f64).sqrt()) as f32;
            for (v, &g) in row.iter_mut().zip(w) {
                *v = *v * inv * (1.0 + g);
            }
        });
    }

    fn matmul(&self, w: &CpuWeight, x: &Vec<f32>, n: usize, out: &mut Vec<f32>) {
        let (rows, cols) = (w.rows, w.cols);
        let x = w.input(&x[..n * cols]);
        let x = &x[..];
        if n == 1 {
            out[..rows].par_chunks_mut(64).enumerate().for_each_init(
                || vec![0.0; cols],
                |row, (chunk, o)| {
                    for (j, o) in o.iter_mut().enumerate() {
                        w.row_into(chunk * 64 + j, row);
                        *o = dot(row, x);
                    }
                },
            );
            return;
        }
        // Decode each weight row once and reuse it for all n tokens; results land transposed.
        let mut out_t = vec![0.0f32; rows * n];
        out_t.par_chunks_mut(n).enumerate().for_each_init(
            || vec![0.0; cols],
            |row, (r, o)| {
                w.row_into(r, row);
                for (t, o) in o.iter_mut().enumerate() {
                    *o = dot(row, &x[t * cols..(t + 1) * cols]);
                }
            },
        );
        for r in 0..rows {
            for t in 0..n {
                out[t * rows + r] = out_t[r * n + t];
            }
        }
    }

    fn rope(&self, x: &mut Vec<f32>, n: usize, p: RopeParams) {
        let d = p.head_dim;
        let half = d / 2;
        // inv_freq in f32 as HF computes it: 1 / base^(2j/d), then divided by the linear factor.
        let inv_freq: Vec<f32> = (0..half)
            .map(|j| 1.0 / p.base.powf((2 * j) as f32 / d as f32) / p.scale)
            .collect();
        x[..n * p.heads * d]
            .par_chunks_mut(p.heads * d)
            .enumerate()
            .for_each(|(t, tok)| {
                let pos = (p.pos0 + t) as f32;
                let (sin, cos): (Vec<f32>, Vec<f32>) =
                    inv_freq.iter().map(|&f| (pos * f).sin_cos()).unzip();
                for head in tok.chunks_exact_mut(d) {
                    let (a, b) = head.split_at_mut(half);
                    for j in 0..half {
                        let (x0, x1) = (a[j], b[j]);
                        a[j] = x0 * cos[j] - x1 * sin[j];
                        b[j] = x1 * cos[j] + x0 * sin[j];
                    }
                }
            });
    }

    fn attention(
        &self,
        kv: &mut CpuKv,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        out: &mut Vec<f32>,
        p: AttnParams,
    ) {
        let d = p.head_dim;
        let kv_dim = p.kv_heads * d;
        let group = p.heads / p.kv_heads;
        assert_eq!(kv.kv_dim, kv_dim, "KV cache width");
        assert_eq!(
            kv.len, p.pos0,
            "attention batch must start where the cache ends"
        );
        let cache: &CpuKv = kv;
        // Keys before pos0 come from the cache, keys of this batch straight from `k`: a ring
        // smaller than the batch would otherwise overwrite keys an earlier query still needs.
        let key = |pos: usize| {
            if pos < p.pos0 {
                cache.key(pos)
            } else {
                &k[(pos - p.pos0) * kv_dim..(pos - p.pos0 + 1) * kv_dim]
            }
        };
        let value = |pos: usize| {
            if pos < p.pos0 {
                cache.value(pos)
            } else {
                &v[(pos - p.pos0) * kv_dim..(pos - p.pos0 + 1) * kv_dim]
            }
        };
        let q_dim = p.heads * d;
        out[..p.n * q_dim]
            .par_chunks_mut(d)
            .enumerate()
            .for_each(|(idx, o)| {
                let (t, h) = (idx / p.heads, idx % p.heads);
                let pos = p.pos0 + t;
                let first = match p.window {
                    Some(w) => (pos + 1).saturating_sub(w),
                    None => 0,
                };
                let qh = &q[t * q_dim + h * d..t * q_dim + (h + 1) * d];
                let kvh = h / group;
                let mut scores: Vec<f32> = (first..=pos)
                    .map(|kp| {
                        let s = dot(qh, &key(kp)[kvh * d..(kvh + 1) * d]) * p.scale;
                        match p.softcap {
                            Some(c) => (s / c).tanh() * c,
                            None => s,
                        }
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0f32;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                o.fill(0.0);
                for (kp, s) in (first..=pos).zip(&scores) {
                    let w = s / sum;
                    for (o, &vv) in o.iter_mut().zip(&value(kp)[kvh * d..(kvh + 1) * d]) {
                        *o += w * vv;
                    }
                }
            });
        // Append this batch; a ring keeps only its last `window` positions.
        for t in 0..p.n {
            let pos = p.pos0 + t;
            if let Some(w) = kv.window {
                if p.pos0 + p.n - pos > w {
                    continue;
                }
            }
            let s = kv.slot(pos) * kv_dim;
            if kv.window.is_none() && kv.k.len() < s + kv_dim {
                kv.k.resize(s + kv_dim, 0.0);
                kv.v.resize(s + kv_dim, 0.0);
            }
            kv.k[s..s + kv_dim].copy_from_slice(&k[t * kv_dim..(t + 1) * kv_dim]);
            kv.v[s..s + kv_dim].copy_from_slice(&v[t * kv_dim..(t + 1) * kv_dim]);
        }
        kv.len = p.pos0 + p.n;
    }

    fn gelu_mul(&self, gate: &mut Vec<f32>, up: &Vec<f32>, len: usize) {
        gate[..len]
            .par_chunks_mut(4096)
            .zip(up[..len].par_chunks(4096))
            .for_each(|(g, u)| {
                for (g, &u) in g.iter_mut().zip(u) {
                    *g = gelu_tanh(*g) * u;
                }
            });
    }

    fn add(&self, x: &mut Vec<f32>, y: &Vec<f32>, len: usize) {
        for (a, b) in x[..len].iter_mut().zip(&y[..len]) {
            *a += b;
        }
    }

    fn copy(&self, src: &Vec<f32>, src_offset: usize, dst: &mut Vec<f32>, len: usize) {
        dst[..len].copy_from_slice(&src[src_offset..src_offset + len]);
    }

    fn top_k(&self, x: &Vec<f32>, len: usize, k: usize) -> Vec<(u32, f32)> {
        top_k(&x[..len], k)
    }
}

/// The `k` largest values as (index, value), largest first; ties keep the lower index first.
pub fn top_k(x: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(x.len());
    let mut idx: Vec<u32> = (0..x.len() as u32).collect();
    let cmp = |a: &u32, b: &u32| x[*b as usize].total_cmp(&x[*a as usize]).then(a.cmp(b));
    if k < x.len() && k > 0 {
        idx.select_nth_unstable_by(k - 1, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx.truncate(k);
    idx.into_iter().map(|i| (i, x[i as usize])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weight(rows: usize, cols: usize, vals: &[f32]) -> CpuWeight {
        let src = WeightSource::from_f32("w", rows, cols, vals);
        CpuBackend::new(Some(2)).unwrap().load_weight(&src).unwrap()
    }

    #[test]
    fn matmul_batched_equals_per_token() {
        let be = CpuBackend::new(Some(2)).unwrap();
        let (rows, cols, n) = (5, 12, 3);
        let w = weight(
            rows,
            cols,
            &(0..rows * cols)
                .map(|i| (i as f32 * 0.37).sin())
                .collect::<Vec<_>>(),
        );
        let x: Vec<f32> = (0..n * cols).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut out = vec![0.0; n * rows];
        be.matmul(&w, &x, n, &mut out);
        for t in 0..n {
            let mut o1 = vec![0.0; rows];
            be.matmul(&w, &x[t * cols..(t + 1) * cols].to_vec(), 1, &mut o1);
            assert_eq!(&out[t * rows..(t + 1) * rows], &o1[..]);
        }
    }

    #[test]
    fn bf16_rows_widen_exactly() {
        let vals = [1.0f32, -2.5, 0.15625, 3.0e-3];
        let bytes: Vec<u8> = vals
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_bits().to_le_bytes())
            .collect();
        let mut out = [0.0; 4];
        decode(QType::BF16, &bytes, &mut out);
        for (o, v) in out.iter().zip(vals) {
            assert_eq!(*o, half::bf16::from_f32(v).to_f32());
        }
    }

    /// Prefill in one batch and token-by-token decode must give the same attention output,
    /// including when the batch is longer than the ring of a sliding-window layer.
    #[test]
    fn sliding_ring_matches_batched_attention() {
        let be = CpuBackend::new(Some(2)).unwrap();
        let (heads, kv_heads, d, n, window) = (2, 1, 4, 11, 4);
        let q: Vec<f32> = (0..n * heads * d)
            .map(|i| (i as f32 * 0.31).sin())
            .collect();
        let k: Vec<f32> = (0..n * kv_heads * d)
            .map(|i| (i as f32 * 0.17).cos())
            .collect();
        let v: Vec<f32> = (0..n * kv_heads * d)
            .map(|i| (i as f32 * 0.07).sin())
            .collect();
        let params = |n, pos0| AttnParams {
            n,
            pos0,
            heads,
            kv_heads,
            head_dim: d,
            window: Some(window),
            scale: 0.5,
            softcap: None,
        };
        let mut batched = vec![0.0; n * heads * d];
        let mut kv = be.new_kv(kv_heads * d, Some(window));
        be.attention(&mut kv, &q, &k, &v, &mut batched, params(n, 0));
        let mut kv = be.new_kv(kv_heads * d, Some(window));
        // 3 tokens in a batch, then one at a time through the ring.
        let (qd, kd) = (heads * d, kv_heads * d);
        let mut out = vec![0.0; 3 * qd];
        be.attention(
            &mut kv,
            &q[..3 * qd].to_vec(),
            &k[..3 * kd].to_vec(),
            &v[..3 * kd].to_vec(),
            &mut out,
            params(3, 0),
        );
        assert_eq!(&out[..], &batched[..3 * qd]);
        for t in 3..n {
            let mut o = vec![0.0; qd];
            let s = |b: &Vec<f32>, w: usize| b[t * w..(t + 1) * w].to_vec();
            be.attention(
                &mut kv,
                &s(&q, qd),
                &s(&k, kd),
                &s(&v, kd),
                &mut o,
                params(1, t),
            );
            for (a, b) in o.iter().zip(&batched[t * qd..(t + 1) * qd]) {
                assert!((a - b).abs() < 1e-6, "position {t}: {a} vs {b}");
            }
        }
        assert_eq!(kv.k.len(), window * kd, "ring stays bounded");
    }

    #[test]
    fn top_k_orders_and_breaks_ties_by_index() {
        assert_eq!(
            top_k(&[0.5, 2.0, 2.0, -1.0, 3.0], 3),
            vec![(4, 3.0), (1, 2.0), (2, 2.0)]
        );
    }
}

/// What the CPU offers the kernels, for `mixq-run devices`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CpuFeatures {
    pub threads: usize,
    pub simd: Vec<&'static str>,
}

pub fn features() -> CpuFeatures {
    let mut simd = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        for (name, on) in [
            ("sse4.1", is_x86_feature_detected!("sse4.1")),
            ("avx2", is_x86_feature_detected!("avx2")),
            ("fma", is_x86_feature_detected!("fma")),
            ("f16c", is_x86_feature_detected!("f16c")),
            ("avx512f", is_x86_feature_detected!("avx512f")),
            ("avx512bw", is_x86_feature_detected!("avx512bw")),
            ("avx512vnni", is_x86_feature_detected!("avx512vnni")),
            ("avxvnni", is_x86_feature_detected!("avxvnni")),
        ] {
            if on {
                simd.push(name);
            }
        }
    }
    #[cfg(target_arch = "aarch64")]
    simd.push("neon");
    if simd.is_empty() {
        simd.push("none (scalar kernels)");
    }
    CpuFeatures {
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        simd,
    }
}
