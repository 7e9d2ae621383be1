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

#[allow(clippy::too_many_arguments)]
pub(super) fn attention(
    isa: Isa,
    team: &super::team::Team,
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
    #[cfg(target_arch = "x86_64")]
    if let (Isa::Avx512Vnni, KvData::F16(kc), KvData::F16(vc), 0) =
        (isa, &cache.k, &cache.v, d % 64)
    {
        // Work items (token, KV head, chunk of its query heads); the query heads of a chunk
        // share each K/V row load. Chunks of up to HEADS heads, smaller in decode so that
        // every participant of the team gets one.
        let pairs = p.n * p.kv_heads;
        let per = if pairs >= team.size() {
            avx512::HEADS
        } else {
            group.div_ceil(team.size()).min(avx512::HEADS)
        };
        let chunks = group.div_ceil(per);
        let items = pairs * chunks;
        let outp = avx512::Ptr(out.as_mut_ptr());
        let item = |scores: &mut Vec<f32>, i: usize| {
            let (t, kvh, c) = (i / chunks / p.kv_heads, i / chunks % p.kv_heads, i % chunks);
            let pos = p.pos0 + t;
            let first = match p.window {
                Some(w) => (pos + 1).saturating_sub(w),
                None => 0,
            };
            let at = |kp: usize| -> (bool, usize) { row(kp, kvh) };
            let keys = |j: usize| match at(first + j) {
                (true, o) => avx512::Row::F16(kc[o..o + d].as_ptr()),
                (false, o) => avx512::Row::F32(k[o..o + d].as_ptr()),
            };
            let vals = |j: usize| match at(first + j) {
                (true, o) => avx512::Row::F16(vc[o..o + d].as_ptr()),
                (false, o) => avx512::Row::F32(v[o..o + d].as_ptr()),
            };
            for h0 in (c * per..((c + 1) * per).min(group)).step_by(avx512::HEADS) {
                let hs = kvh * group + h0
                    ..kvh * group + (h0 + avx512::HEADS).min((c + 1) * per).min(group);
                let at_h = |h: usize| t * q_dim + h * d;
                let qs: Vec<*const f32> = hs
                    .clone()
                    .map(|h| q[at_h(h)..at_h(h) + d].as_ptr())
                    .collect();
                // SAFETY: (t, h) output rows are this item's only; ISA checked above; every
                // row pointer holds d values.
                unsafe {
                    let outs: Vec<*mut f32> = hs.map(|h| outp.add(at_h(h))).collect();
                    avx512::group(
                        &qs,
                        &outs,
                        pos + 1 - first,
                        &keys,
                        &vals,
                        d,
                        p.scale,
                        p.softcap,
                        scores,
                    );
                }
            }
        };
        if items == 1 {
            item(&mut Vec::new(), 0);
        } else {
            super::team::for_each_unit(team, items, Vec::new, item);
        }
    } else {
        attention_rows(isa, cache, q, &keys, &vals, out, p, &row, cdot, bdot, cdec);
    }
    #[cfg(not(target_arch = "x86_64"))]
    attention_rows(isa, cache, q, &keys, &vals, out, p, &row, cdot, bdot, cdec);
    append(kv, k, v, p);
}

/// The portable attention: one task per (token, query head), one dot per key.
#[allow(clippy::too_many_arguments)]
fn attention_rows(
    _isa: Isa,
    cache: &CpuKv,
    q: &[f32],
    keys: &Rows,
    vals: &Rows,
    out: &mut [f32],
    p: AttnParams,
    row: &(dyn Fn(usize, usize) -> (bool, usize) + Sync),
    cdot: FDot,
    bdot: FDot,
    cdec: Decode,
) {
    let d = p.head_dim;
    let group = p.heads / p.kv_heads;
    let q_dim = p.heads * d;
    let _ = cache;
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
}

/// Appends this batch to the cache; a ring keeps only its last `window` positions.
fn append(kv: &mut CpuKv, k: &[f32], v: &[f32], p: AttnParams) {
    let kv_dim = p.kv_heads * p.head_dim;
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

/// The attention kernel of the fast mode (f16 cache) on AVX-512: the query heads of a GQA group
/// read each key and value row once, 16 dimensions per vector, and the softmax uses a vector exp.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // register arrays indexed by head, as in the math
mod avx512 {
    use super::super::kernels::x86::exp16;
    use std::arch::x86_64::*;

    /// Query heads per pass: 4 heads x 64 dimensions of output accumulators fill 16 registers.
    pub const HEADS: usize = 4;

    /// The output base, shared by the tasks that write disjoint rows of it.
    #[derive(Clone, Copy)]
    pub struct Ptr(pub *mut f32);
    unsafe impl Send for Ptr {}
    unsafe impl Sync for Ptr {}

    impl Ptr {
        /// # Safety
        /// `i` is in bounds of the output.
        pub unsafe fn add(self, i: usize) -> *mut f32 {
            self.0.add(i)
        }
    }

    /// One key or value row: f16 from the cache, f32 from this batch.
    #[derive(Clone, Copy)]
    pub enum Row {
        F16(*const u16),
        F32(*const f32),
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn ld(r: Row, i: usize) -> __m512 {
        match r {
            Row::F16(p) => _mm512_cvtph_ps(_mm256_loadu_si256(p.add(i) as *const __m256i)),
            Row::F32(p) => _mm512_loadu_ps(p.add(i)),
        }
    }

    /// Attention of the query heads `qs` (at most [`HEADS`], `d` values each) over the `len`
    /// rows `keys(j)` / `vals(j)`, into `outs`. `d` is a multiple of 64.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn group(
        qs: &[*const f32],
        outs: &[*mut f32],
        len: usize,
        keys: &dyn Fn(usize) -> Row,
        vals: &dyn Fn(usize) -> Row,
        d: usize,
        scale: f32,
        softcap: Option<f32>,
        scores: &mut Vec<f32>,
    ) {
        let g = qs.len();
        debug_assert!(g <= HEADS && outs.len() == g && d.is_multiple_of(64));
        scores.resize(g * len, 0.0);
        for j in 0..len {
            let k = keys(j);
            let mut acc = [_mm512_setzero_ps(); HEADS];
            for i in (0..d).step_by(16) {
                let kv = ld(k, i);
                for h in 0..g {
                    acc[h] = _mm512_fmadd_ps(kv, _mm512_loadu_ps(qs[h].add(i)), acc[h]);
                }
            }
            for h in 0..g {
                let s = _mm512_reduce_add_ps(acc[h]) * scale;
                scores[h * len + j] = match softcap {
                    Some(c) => (s / c).tanh() * c,
                    None => s,
                };
            }
        }
        for h in 0..g {
            let sc = scores[h * len..(h + 1) * len].as_mut_ptr();
            let max = _mm512_set1_ps(
                std::slice::from_raw_parts(sc, len)
                    .iter()
                    .fold(f32::NEG_INFINITY, |m, &v| m.max(v)),
            );
            let mut sum = 0f32;
            for j in (0..len).step_by(16) {
                let m: __mmask16 = if len - j >= 16 {
                    !0
                } else {
                    (1 << (len - j)) - 1
                };
                let e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, sc.add(j)), max));
                _mm512_mask_storeu_ps(sc.add(j), m, e);
                sum += _mm512_mask_reduce_add_ps(m, e);
            }
            let inv = 1.0 / sum;
            for j in 0..len {
                *sc.add(j) *= inv;
            }
        }
        for i in (0..d).step_by(64) {
            let mut acc = [[_mm512_setzero_ps(); 4]; HEADS];
            for j in 0..len {
                let r = vals(j);
                let vv = [ld(r, i), ld(r, i + 16), ld(r, i + 32), ld(r, i + 48)];
                for h in 0..g {
                    let w = _mm512_set1_ps(*scores.get_unchecked(h * len + j));
                    for c in 0..4 {
                        acc[h][c] = _mm512_fmadd_ps(w, vv[c], acc[h][c]);
                    }
                }
            }
            for h in 0..g {
                for c in 0..4 {
                    _mm512_storeu_ps(outs[h].add(i + 16 * c), acc[h][c]);
                }
            }
        }
    }
}
