//! The KV cache and causal attention with sliding windows and GQA.
//!
//! Keys and values are stored in f16 (fast mode: half the bytes each decode step reads; the
//! conversion is F16C) or f32 (exact mode). Sliding-window layers keep a ring of `window`
//! positions, so their memory is bounded at any context length; global layers grow.

use super::kernels::{decode, f_dot, Decode, FDot, Isa};
use super::AttnParams;
use half::f16;
use mixq_format::quant::QType;
use rayon::prelude::*;

/// Storage of one tensor (K or V) of the cache: `slots * kv_dim` values.
pub(super) enum KvData {
    F32(Vec<f32>),
    F16(Vec<u16>),
}

impl KvData {
    fn len(&self) -> usize {
        match self {
            KvData::F32(v) => v.len(),
            KvData::F16(v) => v.len(),
        }
    }

    fn resize(&mut self, n: usize) {
        match self {
            KvData::F32(v) => v.resize(n, 0.0),
            KvData::F16(v) => v.resize(n, 0),
        }
    }

    fn write(&mut self, at: usize, src: &[f32]) {
        match self {
            KvData::F32(v) => v[at..at + src.len()].copy_from_slice(src),
            KvData::F16(v) => {
                for (o, &x) in v[at..at + src.len()].iter_mut().zip(src) {
                    *o = f16::from_f32(x).to_bits();
                }
            }
        }
    }

    /// Raw little-endian bytes of `len` values from `at` (F32 or F16 by `qtype`).
    fn bytes(&self, at: usize, len: usize) -> &[u8] {
        match self {
            KvData::F32(v) => as_bytes(&v[at..at + len]),
            KvData::F16(v) => as_bytes(&v[at..at + len]),
        }
    }

    fn qtype(&self) -> QType {
        match self {
            KvData::F32(_) => QType::F32,
            KvData::F16(_) => QType::F16,
        }
    }
}

/// Little-endian bytes of a slice of plain numbers (x86-64 and aarch64 are little-endian; the
/// kernels read these bytes exactly as they read f32/f16 weights).
pub(super) fn as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    #[cfg(target_endian = "big")]
    compile_error!("the CPU kernels assume a little-endian machine");
    // SAFETY: f32/u16 have no padding; the byte view lives as long as the borrow.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

pub struct CpuKv {
    kv_dim: usize,
    /// Ring size for sliding-window layers; `None` grows with the context.
    window: Option<usize>,
    /// Positions stored so far (the next token's position).
    pub(super) len: usize,
    pub(super) k: KvData,
    pub(super) v: KvData,
}

impl CpuKv {
    pub(super) fn new(kv_dim: usize, window: Option<usize>, f16: bool) -> CpuKv {
        let n = window.unwrap_or(0) * kv_dim;
        let data = || {
            if f16 {
                KvData::F16(vec![0; n])
            } else {
                KvData::F32(vec![0.0; n])
            }
        };
        CpuKv {
            kv_dim,
            window,
            len: 0,
            k: data(),
            v: data(),
        }
    }

    fn slot(&self, pos: usize) -> usize {
        match self.window {
            Some(w) => pos % w,
            None => pos,
        }
    }

    pub(super) fn truncate(&mut self, len: usize) {
        // A ring has overwritten what lay more than `window` back; rewinding past that would
        // read stale slots, so callers re-run the prompt instead (the chat session knows this).
        self.len = self.len.min(len);
    }

    /// Bytes of the cache in use (K and V), for memory figures.
    pub fn bytes_allocated(&self) -> usize {
        let per = match self.k {
            KvData::F32(_) => 4,
            KvData::F16(_) => 2,
        };
        2 * self.k.len() * per
    }
}

/// Where one key (or value) row comes from: the cache (f16/f32 bytes) or this batch (f32).
struct Rows<'a> {
    cache: &'a KvData,
    batch: &'a [f32],
}

pub(super) fn attention(
    isa: Isa,
    kv: &mut CpuKv,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
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
    let (cdot, bdot): (FDot, FDot) = (f_dot(isa, cache.k.qtype()), f_dot(isa, QType::F32));
    let cdec: Decode = decode(isa, cache.v.qtype());
    let keys = Rows {
        cache: &cache.k,
        batch: &k[..p.n * kv_dim],
    };
    let vals = Rows {
        cache: &cache.v,
        batch: &v[..p.n * kv_dim],
    };
    // Keys before pos0 come from the cache, keys of this batch straight from `k`: a ring
    // smaller than the batch would otherwise overwrite keys an earlier query still needs.
    // (With an f16 cache, the batch's own keys are therefore used at full precision.)
    let row = |pos: usize, kvh: usize| -> (bool, usize) {
        if pos < p.pos0 {
            (true, cache.slot(pos) * kv_dim + kvh * d)
        } else {
            (false, (pos - p.pos0) * kv_dim + kvh * d)
        }
    };
    let q_dim = p.heads * d;
    out[..p.n * q_dim]
        .par_chunks_mut(d)
        .enumerate()
        .for_each_init(
            || (Vec::new(), vec![0f32; d]),
            |(scores, vrow), (idx, o)| {
                let (t, h) = (idx / p.heads, idx % p.heads);
                let pos = p.pos0 + t;
                let first = match p.window {
                    Some(w) => (pos + 1).saturating_sub(w),
                    None => 0,
                };
                let qh = &q[t * q_dim + h * d..t * q_dim + (h + 1) * d];
                let kvh = h / group;
                scores.clear();
                for kp in first..=pos {
                    let (cached, at) = row(kp, kvh);
                    // SAFETY: the ISA was detected; rows hold d values.
                    let s = unsafe {
                        if cached {
                            cdot(keys.cache.bytes(at, d), qh)
                        } else {
                            bdot(as_bytes(&keys.batch[at..at + d]), qh)
                        }
                    } * p.scale;
                    scores.push(match p.softcap {
                        Some(c) => (s / c).tanh() * c,
                        None => s,
                    });
                }
                let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0f32;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                o.fill(0.0);
                for (kp, s) in (first..=pos).zip(scores.iter()) {
                    let w = s / sum;
                    let (cached, at) = row(kp, kvh);
                    let vr: &[f32] = if cached {
                        // SAFETY: as above.
                        unsafe { cdec(vals.cache.bytes(at, d), vrow) };
                        vrow
                    } else {
                        &vals.batch[at..at + d]
                    };
                    for (o, &vv) in o.iter_mut().zip(vr) {
                        *o += w * vv;
                    }
                }
            },
        );
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
            // grow geometrically: a long context appends one position per step
            let n = (s + kv_dim).max(2 * kv.k.len());
            kv.k.resize(n);
            kv.v.resize(n);
        }
        kv.k.write(s, &k[t * kv_dim..(t + 1) * kv_dim]);
        kv.v.write(s, &v[t * kv_dim..(t + 1) * kv_dim]);
    }
    kv.len = p.pos0 + p.n;
}
