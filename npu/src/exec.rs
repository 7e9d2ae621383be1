//! The functional executor: what the NPU kernels compute, bit for bit, run on the host.
//!
//! # W4ABF16 semantics (the definition this module implements)
//!
//! AMD's NPU LLM flow on Ryzen AI uses 4-bit weights with bf16 activations ("UINT4 weights,
//! BFP16 activations", AMD's published Quark/OGA NPU models); the AIE-ML vector unit has bf16 x
//! bf16 multipliers with fp32 accumulator lanes (`accfloat`) and no int4 x bf16 multiply, so a
//! W4ABF16 kernel dequantizes int4 codes to bf16 in the tile and runs bf16 MACs. Exactly:
//!
//! 1. **Activations**: x_k is rounded to bf16, round-to-nearest-even (RNE).
//! 2. **Weight parameters** are used at their stored precision: each parameter block's scale
//!    and min (f16 for I4_GROUPED and I4_GROUPED32, exact in fp32; f32 for I4_PER_CHANNEL;
//!    `formats/src/quant`).
//! 3. **Dequantization**: w = bf16( fp32( fp32(s * q) + m ) ), rounding to nearest even at each
//!    step (for an f16 scale the product is exact). A block has only 16 possible weights, so
//!    the kernel builds this 16-entry table once per parameter block (64 weights, 32 for
//!    I4_GROUPED32, or a whole I4_PER_CHANNEL row) in emulated fp32 (the AIE-ML has no fp32 multiplier; UG1603
//!    "Floating-Point Operations") and then looks codes up: the fp32 work is 16 ops per block.
//!    Design choice, measured: rounding the parameters to bf16 first (as AMD's own W4ABF16
//!    models store bf16 scales) made an I4_PER_CHANNEL matvec 10x worse (nmse 5e-4 against
//!    the f32 reference, from the coherent error of a rounded per-row min) for no speed gain.
//! 4. **Products** w * x of two bf16 are exact in fp32 (8 + 8 significant bits).
//! 5. **Accumulation**: one fp32 accumulator per output, starting at 0, adding the products in
//!    increasing k, each add rounded to fp32 (RNE). Assumption: the AIE-ML MAC tree adds a
//!    group of 8 products in order into the accumulator lane (mlir-aie `aie_kernels/aie2/mv.cc`
//!    accumulates 8 columns per step into `accfloat`); a tree order would change only the last
//!    bits. Every output row lives on one tile, so no cross-tile reduction reorders k.
//! 6. **Output**: kept in fp32, not rounded to bf16: the open toolchain's bf16 matvec kernel
//!    (`mv.cc`, combo `bfloat16 -> float, accfloat`) writes fp32. The consumer rounds it to
//!    bf16 when it becomes an activation again (steps 1 / attention).
//!
//! Not modelled: subnormal flushing (Gemma activations are never subnormal in practice) and
//! fp32 overflow (gives infinity, as IEEE does).
//!
//! # Attention semantics (one query token, one kernel per KV head group)
//!
//! 1. q' = bf16(fp32(q * scale)) (the 1/sqrt(query_pre_attn_scalar) is folded into q);
//!    K and V are bf16 (the KV cache is stored in bf16; rounding is applied on input).
//! 2. The visible positions are cut into chunks of `kv_chunk` (the tiling plan's L1 chunk);
//!    per chunk: s_j = fp32 dot(q', k_j) accumulated in increasing d as in the matvec;
//!    m = max s_j; p_j = bf16(exp(fp32(s_j - m))) with exp evaluated in f64 and rounded once to
//!    bf16 (Assumption: the kernel's exp is accurate to bf16; mlir-aie's LUT-based bf16 exp may
//!    differ by an ulp); l = fp32 sum of p_j in increasing j; a_d = fp32 sum of p_j * v_jd in
//!    increasing j.
//! 3. Chunk states (m, l, a) merge in chunk order within a partition (the chunks one tile
//!    processes), then partitions merge in order: m = max(mA, mB), alpha = fp32(exp(mA - m)),
//!    beta = fp32(exp(mB - m)), l = fp32(fp32(lA*alpha) + fp32(lB*beta)), same for each a_d.
//! 4. out_d = fp32(a_d * fp32(1 / l)), fp32 output.

use crate::bf16::{round_bf16, round_bf16_f64};
use crate::error::{NpuError, Result};
use mixq_format::quant::QType;

/// How the visible KV positions of one head are split: chunks of `kv_chunk` positions (one
/// L1 buffer), `chunks_per_partition` consecutive chunks per tile. From
/// [`AttnTiling::partition`](crate::tiling::AttnTiling::partition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnPartition {
    pub kv_chunk: usize,
    pub chunks_per_partition: usize,
}

impl AttnPartition {
    /// Everything in one chunk on one tile (the plain softmax order).
    pub fn single(n_pos: usize) -> AttnPartition {
        AttnPartition {
            kv_chunk: n_pos.max(1),
            chunks_per_partition: 1,
        }
    }
}

/// Independent accumulators the host runs side by side in a matmul (one AVX-512 register of
/// f32): an emulation speed choice, not an NPU property.
const LANES: usize = 16;
/// The same for attention scores (positions of one KV chunk).
const ATT_LANES: usize = 8;

/// Runs the NPU's share with the NPU's arithmetic, on the host. Stateless.
#[derive(Debug, Clone, Copy, Default)]
pub struct FunctionalExecutor;

/// IEEE binary16 bits to f32 (exact).
fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // subnormal: m * 2^-24, exact in f32
            let v = m as f32 * 2f32.powi(-24);
            return if sign != 0 { -v } else { v };
        }
        (31, 0) => sign | 0x7f80_0000,
        (31, m) => sign | 0x7fc0_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// The weight types the W4ABF16 kernels read.
pub const W4_QTYPES: [QType; 4] = [
    QType::I4Grouped,
    QType::I4Grouped32,
    QType::I4Grouped16,
    QType::I4PerChannel,
];

pub(crate) fn check_w4(op: &'static str, qtype: QType) -> Result<()> {
    if W4_QTYPES.contains(&qtype) {
        return Ok(());
    }
    Err(NpuError::UnsupportedQType {
        op,
        qtype: qtype.name(),
    })
}

/// The (scale, min) of parameter block `b` of a row's parameter region, as stored (step 2).
#[inline]
fn block_params_bf16(qtype: QType, params: &[u8], b: usize) -> (f32, f32) {
    let (s, m) = match qtype {
        QType::I4Grouped | QType::I4Grouped32 | QType::I4Grouped16 => {
            let o = 4 * b;
            (
                f16_to_f32(u16::from_le_bytes([params[o], params[o + 1]])),
                f16_to_f32(u16::from_le_bytes([params[o + 2], params[o + 3]])),
            )
        }
        _ => (
            f32::from_le_bytes([params[0], params[1], params[2], params[3]]),
            f32::from_le_bytes([params[4], params[5], params[6], params[7]]),
        ),
    };
    (s, m)
}

/// The 16 bf16 weights codes 0..15 of a block dequantize to (step 3).
#[inline]
fn block_lut(s: f32, m: f32) -> [f32; 16] {
    let mut lut = [0f32; 16];
    for (q, w) in lut.iter_mut().enumerate() {
        let t: f32 = s * q as f32; // fp32, rounded
        *w = round_bf16(t + m);
    }
    lut
}

/// One stored row's bf16 weights (step 3) into `w`; `pbytes` = the row's parameter bytes.
/// Every int4 type packs 64 elements per 32 code bytes (element j in the low nibble of byte j,
/// j + 32 in the high nibble), so each 16-byte half of a chunk lies inside one parameter block
/// per nibble plane: the block of its first element (`param_block`: 64, 32, 16 or the whole
/// row). A plane's 16-entry table is rebuilt only when its block changes.
fn dequantize_bf16(qtype: QType, row: &[u8], pbytes: usize, w: &mut [f32]) {
    let (params, codes) = row.split_at(pbytes);
    let pb = qtype.param_block(w.len());
    // (block, table) of the low and the high nibbles
    let mut tables = [(usize::MAX, [0f32; 16]); 2];
    for (c, (o, bytes)) in w
        .chunks_exact_mut(64)
        .zip(codes.chunks_exact(32))
        .enumerate()
    {
        for h in 0..2 {
            for (plane, first) in [(0, 64 * c + 16 * h), (1, 64 * c + 32 + 16 * h)] {
                let b = first / pb;
                if tables[plane].0 != b {
                    let (s, m) = block_params_bf16(qtype, params, b);
                    tables[plane] = (b, block_lut(s, m));
                }
            }
            let (lo, hi) = (&tables[0].1, &tables[1].1);
            for j in 16 * h..16 * h + 16 {
                o[j] = lo[(bytes[j] & 15) as usize];
                o[j + 32] = hi[(bytes[j] >> 4) as usize];
            }
        }
    }
}

impl FunctionalExecutor {
    pub fn new() -> FunctionalExecutor {
        FunctionalExecutor
    }

    /// The bf16 weights a tile computes with for one stored row (`cols` elements).
    pub fn dequantize_row_bf16(&self, qtype: QType, row: &[u8], cols: usize) -> Result<Vec<f32>> {
        check_w4("dequantize_row_bf16", qtype)?;
        let rb = qtype.row_bytes(cols)?;
        if row.len() != rb {
            return Err(NpuError::Length {
                op: "dequantize_row_bf16",
                what: "row bytes",
                found: row.len(),
                expected: rb,
            });
        }
        let mut out = vec![0f32; cols];
        dequantize_bf16(qtype, row, qtype.row_param_bytes(cols), &mut out);
        Ok(out)
    }

    /// y = W x with W4ABF16 semantics (module docs). `weight` is the tensor's bytes as stored in
    /// its `.mixq` section: `rows` rows of `qtype.row_bytes(cols)` bytes (I4_GROUPED, I4_GROUPED32 or
    /// I4_PER_CHANNEL). `x` has `cols` elements (already rotated if the tensor was stored with a
    /// Hadamard transform). Returns `rows` fp32 outputs.
    pub fn matvec_w4abf16(
        &self,
        qtype: QType,
        weight: &[u8],
        rows: usize,
        cols: usize,
        x: &[f32],
    ) -> Result<Vec<f32>> {
        self.matmul_w4abf16(qtype, weight, rows, cols, x, 1)
    }

    /// Y = X W^T for `tokens` activation rows `xs` (`tokens * cols`, token-major); returns
    /// `tokens * rows`, token-major. Every output is computed exactly as by
    /// [`matvec_w4abf16`](Self::matvec_w4abf16): a GEMM tile keeps one fp32 accumulator per
    /// output and walks k in increasing order, so batching does not change the arithmetic.
    pub fn matmul_w4abf16(
        &self,
        qtype: QType,
        weight: &[u8],
        rows: usize,
        cols: usize,
        xs: &[f32],
        tokens: usize,
    ) -> Result<Vec<f32>> {
        const OP: &str = "matmul_w4abf16";
        check_w4(OP, qtype)?;
        let rb = qtype.row_bytes(cols)?;
        let want = rb.checked_mul(rows).ok_or_else(|| NpuError::Shape {
            op: OP,
            problem: format!("[{rows}, {cols}] overflows"),
        })?;
        if weight.len() != want {
            return Err(NpuError::Length {
                op: OP,
                what: "weight bytes",
                found: weight.len(),
                expected: want,
            });
        }
        if xs.len() != tokens * cols {
            return Err(NpuError::Length {
                op: OP,
                what: "activations",
                found: xs.len(),
                expected: tokens * cols,
            });
        }
        // step 1: activations to bf16
        let xb: Vec<f32> = xs.iter().map(|&v| round_bf16(v)).collect();
        let pbytes = qtype.row_param_bytes(cols);
        // step 3: one row's bf16 weights
        let dequantize = |row: &[u8], w: &mut [f32]| dequantize_bf16(qtype, row, pbytes, w);
        // steps 4-5: exact products, sequential fp32 adds in increasing k, one accumulator per
        // output. One chain of dependent adds is latency-bound on the host, so LANES chains
        // run side by side (over tokens in a GEMM, over rows in a GEMV): each lane is still
        // its own output's sequential sum, so the arithmetic is the definition's, bit for bit.
        let mut y = vec![0f32; tokens * rows];
        let mut w = vec![0f32; cols];
        if tokens >= LANES / 2 {
            // lanes over tokens: activations k-major, tokens padded to a whole lane block
            let tp = tokens.next_multiple_of(LANES);
            let mut xt = vec![0f32; cols * tp];
            for (t, x) in xb.chunks_exact(cols).enumerate() {
                for (k, &v) in x.iter().enumerate() {
                    xt[k * tp + t] = v;
                }
            }
            for (r, row) in weight.chunks_exact(rb).enumerate() {
                dequantize(row, &mut w);
                for t0 in (0..tokens).step_by(LANES) {
                    let mut acc = [0f32; LANES];
                    for (k, &wk) in w.iter().enumerate() {
                        let xk: &[f32; LANES] = xt[k * tp + t0..k * tp + t0 + LANES]
                            .try_into()
                            .expect("a whole lane block");
                        for l in 0..LANES {
                            acc[l] += wk * xk[l];
                        }
                    }
                    for (l, &a) in acc.iter().enumerate().take(tokens - t0) {
                        y[(t0 + l) * rows + r] = a;
                    }
                }
            }
        } else {
            // lanes over rows: LANES rows' weights k-major
            let mut wt = vec![0f32; cols * LANES];
            let row_block = LANES * rb;
            for (blk, rows_bytes) in weight.chunks(row_block).enumerate() {
                let r0 = blk * LANES;
                let nr = rows_bytes.len() / rb;
                for (i, row) in rows_bytes.chunks_exact(rb).enumerate() {
                    dequantize(row, &mut w);
                    for (k, &v) in w.iter().enumerate() {
                        wt[k * LANES + i] = v;
                    }
                }
                for (t, x) in xb.chunks_exact(cols).enumerate() {
                    let mut acc = [0f32; LANES];
                    for (k, &xk) in x.iter().enumerate() {
                        let wk: &[f32; LANES] = wt[k * LANES..(k + 1) * LANES]
                            .try_into()
                            .expect("a whole lane block");
                        for l in 0..LANES {
                            acc[l] += wk[l] * xk;
                        }
                    }
                    y[t * rows + r0..t * rows + r0 + nr].copy_from_slice(&acc[..nr]);
                }
            }
        }
        Ok(y)
    }

    /// Attention of one query token over `n_pos` visible positions (module docs).
    /// `q`: `n_heads * head_dim`; `k`, `v`: `n_pos * n_kv_heads * head_dim`, position-major
    /// (oldest first), the positions this query may see (the caller applies the sliding
    /// window). `scale` multiplies the scores (Gemma 3: `query_pre_attn_scalar^-0.5`).
    /// Returns `n_heads * head_dim` fp32.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_bf16(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        n_pos: usize,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        scale: f32,
        part: AttnPartition,
    ) -> Result<Vec<f32>> {
        const OP: &str = "attention_bf16";
        if n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) || head_dim == 0 {
            return Err(NpuError::Shape {
                op: OP,
                problem: format!("{n_heads} heads, {n_kv_heads} KV heads, head_dim {head_dim}"),
            });
        }
        if n_pos == 0 || part.kv_chunk == 0 || part.chunks_per_partition == 0 {
            return Err(NpuError::Shape {
                op: OP,
                problem: format!("{n_pos} positions, partition {part:?}"),
            });
        }
        let kv = n_kv_heads * head_dim;
        for (what, found, expected) in [
            ("q", q.len(), n_heads * head_dim),
            ("k", k.len(), n_pos * kv),
            ("v", v.len(), n_pos * kv),
        ] {
            if found != expected {
                return Err(NpuError::Length {
                    op: OP,
                    what,
                    found,
                    expected,
                });
            }
        }
        let kb: Vec<f32> = k.iter().map(|&x| round_bf16(x)).collect();
        let vb: Vec<f32> = v.iter().map(|&x| round_bf16(x)).collect();
        let group = n_heads / n_kv_heads;
        let n_chunks = n_pos.div_ceil(part.kv_chunk);
        let n_parts = n_chunks.div_ceil(part.chunks_per_partition);
        let mut out = vec![0f32; n_heads * head_dim];
        for h in 0..n_heads {
            let g = h / group;
            let qb: Vec<f32> = q[h * head_dim..(h + 1) * head_dim]
                .iter()
                .map(|&x| round_bf16(x * scale))
                .collect();
            let chunk = |c: usize| -> State {
                let j0 = c * part.kv_chunk;
                let j1 = (j0 + part.kv_chunk).min(n_pos);
                // Scores of ATT_LANES positions side by side (independent sequential sums,
                // as in the matmul); a short last block repeats its last position.
                let mut s = Vec::with_capacity(j1 - j0);
                for jb in (j0..j1).step_by(ATT_LANES) {
                    let rows: [&[f32]; ATT_LANES] = std::array::from_fn(|l| {
                        let j = (jb + l).min(j1 - 1);
                        &kb[j * kv + g * head_dim..j * kv + (g + 1) * head_dim]
                    });
                    let mut acc = [0f32; ATT_LANES];
                    for (d, &a) in qb.iter().enumerate() {
                        for l in 0..ATT_LANES {
                            acc[l] += a * rows[l][d];
                        }
                    }
                    s.extend_from_slice(&acc[..ATT_LANES.min(j1 - jb)]);
                }
                let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let p: Vec<f32> = s
                    .iter()
                    .map(|&sj| round_bf16_f64(((sj - m) as f64).exp()))
                    .collect();
                let mut l = 0f32;
                for &pj in &p {
                    l += pj;
                }
                let mut a = vec![0f32; head_dim];
                for (i, &pj) in p.iter().enumerate() {
                    let j = j0 + i;
                    let vr = &vb[j * kv + g * head_dim..j * kv + (g + 1) * head_dim];
                    for (ad, vd) in a.iter_mut().zip(vr) {
                        *ad += pj * vd;
                    }
                }
                State { m, l, a }
            };
            let mut total: Option<State> = None;
            for p in 0..n_parts {
                let c0 = p * part.chunks_per_partition;
                let c1 = (c0 + part.chunks_per_partition).min(n_chunks);
                let mut st: Option<State> = None;
                for c in c0..c1 {
                    let cs = chunk(c);
                    st = Some(match st {
                        None => cs,
                        Some(s) => s.merge(cs),
                    });
                }
                let st = st.expect("a partition holds at least one chunk");
                total = Some(match total {
                    None => st,
                    Some(t) => t.merge(st),
                });
            }
            let t = total.expect("at least one partition");
            let inv = 1.0f32 / t.l;
            for (o, ad) in out[h * head_dim..(h + 1) * head_dim].iter_mut().zip(&t.a) {
                *o = ad * inv;
            }
        }
        Ok(out)
    }
}

/// Online-softmax state of one head over some positions: max score, sum of exponentials,
/// unnormalised output.
struct State {
    m: f32,
    l: f32,
    a: Vec<f32>,
}

impl State {
    fn merge(self, b: State) -> State {
        let m = self.m.max(b.m);
        let alpha = ((self.m - m) as f64).exp() as f32;
        let beta = ((b.m - m) as f64).exp() as f32;
        let l = self.l * alpha + b.l * beta;
        let a = self
            .a
            .iter()
            .zip(&b.a)
            .map(|(x, y)| x * alpha + y * beta)
            .collect();
        State { m, l, a }
    }
}

#[cfg(test)]
mod tests;
