//! Row kernels of the CPU backend: one dot product of a stored weight row with the activations,
//! for every weight type, on every instruction set we dispatch to.
//!
//! Two families:
//! - **f32 activations** (`FDot`): float weights widen in registers (bf16 is a shift, f16 goes
//!   through F16C); quantized weights are dequantized to an f32 scratch row exactly as the
//!   format's reference does (`offset + scale * q`, no FMA, so the values are bit-identical),
//!   then dotted. This is the exact path (`CpuBackend::new`), the one other backends and the
//!   golden tests compare against.
//! - **int8 activations** (`QDot`): the activations are quantized once per matmul, per block
//!   of the weight's group size, to int8 with an f32 scale ([`QAct`]), and every group becomes
//!   an integer dot product (AVX2 `vpmaddubsw`/`vpmaddwd`, AVX-512 VNNI `vpdpbusd`) scaled by
//!   `weight scale x activation scale`; asymmetric mins use the per-block activation sums.
//!   The integer sums are exact, so against the reference on the *dequantized* activations the
//!   only difference is float reassociation (tests check this); against the f32 activations
//!   the difference is the activation rounding (llama.cpp's Q8 activations make the same trade).
//!
//! Dispatch: [`Isa::detect`] once, then a function pointer per matmul (`f_dot`, `q_dot`).

#[cfg(target_arch = "x86_64")]
pub mod gemm;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
pub mod x86;

use mixq_format::quant::QType;

/// The instruction set the kernels use, detected at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX2 kernels with 256-bit AVX-512 VNNI dot products (`vpdpbusd`, needs AVX512VL).
    Avx512Vnni,
}

impl Isa {
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            let vnni = is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni");
            if avx2 && vnni {
                return Isa::Avx512Vnni;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    /// Every ISA this machine can run (for tests and benchmarks).
    pub fn available() -> Vec<Isa> {
        let best = Isa::detect();
        [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni]
            .into_iter()
            .filter(|&i| match best {
                Isa::Scalar => i == Isa::Scalar,
                Isa::Avx2 => i != Isa::Avx512Vnni,
                Isa::Avx512Vnni => true,
            })
            .collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512-vnni",
        }
    }
}

/// Dot product of one stored float row (F32/F16/BF16 bytes) with f32 activations.
pub type FDot = unsafe fn(row: &[u8], x: &[f32]) -> f32;
/// Four rows at once against one activation row (prefill: the x loads are shared).
pub type FDot4 = unsafe fn(rows: [&[u8]; 4], x: &[f32]) -> [f32; 4];
/// Dequantizes one row to f32 (bit-identical to `mixq_format::quant::dequantize_row`).
pub type Decode = unsafe fn(row: &[u8], out: &mut [f32]);
/// Dot product of one quantized row with token `t` of the quantized activations.
pub type QDot = unsafe fn(row: &[u8], a: &QAct, t: usize) -> f32;

/// The f32-dot kernel for raw float bytes (F32, F16, BF16; quantized rows are decoded to F32
/// first, so they use the F32 kernel).
pub fn f_dot(isa: Isa, q: QType) -> FDot {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        return match q {
            QType::BF16 => x86::dot_bf16,
            QType::F16 => x86::dot_f16,
            _ => x86::dot_f32,
        };
    }
    let _ = isa;
    match q {
        QType::BF16 => scalar::dot_bf16,
        QType::F16 => scalar::dot_f16,
        _ => scalar::dot_f32,
    }
}

/// The fast mode's f32-activation row kernel: [`f_dot`], on zmm where the CPU has AVX-512.
pub fn f_dot_fast(isa: Isa, q: QType) -> FDot {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        return match q {
            QType::BF16 => x86::zmm_dot_bf16,
            QType::F16 => x86::zmm_dot_f16,
            _ => x86::zmm_dot_f32,
        };
    }
    f_dot(isa, q)
}

pub fn f_dot4(isa: Isa, q: QType) -> FDot4 {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        return match q {
            QType::BF16 => x86::dot4_bf16,
            QType::F16 => x86::dot4_f16,
            _ => x86::dot4_f32,
        };
    }
    let _ = isa;
    match q {
        QType::BF16 => |r, x| r.map(|r| unsafe { scalar::dot_bf16(r, x) }),
        QType::F16 => |r, x| r.map(|r| unsafe { scalar::dot_f16(r, x) }),
        _ => |r, x| r.map(|r| unsafe { scalar::dot_f32(r, x) }),
    }
}

/// Row decoder of a type (float or quantized).
pub fn decode(isa: Isa, q: QType) -> Decode {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        return match q {
            QType::F32 => scalar::decode_f32,
            QType::BF16 => x86::decode_bf16,
            QType::F16 => x86::decode_f16,
            QType::I8Sym => x86::decode_i8sym,
            QType::I8Asym => x86::decode_i8asym,
            QType::I4Grouped => x86::decode_i4g,
            QType::I4PerChannel => x86::decode_i4pc,
            QType::I2Structured => x86::decode_i2,
            QType::I4Grouped32 => x86::decode_i4g32,
            QType::I4Grouped16 => x86::decode_i4g16,
        };
    }
    let _ = isa;
    scalar::decode(q)
}

/// The int8-activation kernel of a quantized type (None for float types).
pub fn q_dot(isa: Isa, q: QType) -> Option<QDot> {
    if !q.is_quantized() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    match isa {
        Isa::Avx2 => return Some(x86::avx2::q_dot(q)),
        Isa::Avx512Vnni => return Some(x86::vnni::q_dot(q)),
        Isa::Scalar => {}
    }
    let _ = isa;
    Some(scalar::q_dot(q))
}

/// The activation block a weight type's integer kernel wants: its group (super-block for I2).
pub fn act_block(q: QType) -> usize {
    match q {
        QType::I8Sym | QType::I4Grouped32 | QType::I4Grouped16 => 32,
        QType::I2Structured => 128,
        _ => 64,
    }
}

/// One block of activations to int8: `(scale, sum of codes)`, and the sums per 16 in `s16`.
/// Round half away from zero; `|x / d| <= 127` by construction. The AVX-512 version
/// (`x86::quantize_block`) performs the same f32 operations, so its codes are identical.
pub fn quantize_block(xs: &[f32], qs: &mut [i8], s16: &mut [i16]) -> (f32, i32) {
    let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(xs) {
        let y = v * id;
        let r = (y + 0.5f32.copysign(y)) as i32;
        let r = r.clamp(-127, 127);
        *q = r as i8;
        sum += r;
    }
    for (s, qs) in s16.iter_mut().zip(qs.chunks_exact(16)) {
        *s = qs.iter().map(|&q| q as i16).sum();
    }
    (d, sum)
}

/// Activations quantized to int8 in blocks of `blk`: `x ≈ d[b] * q[i]` for `i` in block `b`.
/// Tokens are contiguous (`n` rows of `cols`).
pub struct QAct {
    pub blk: usize,
    pub cols: usize,
    /// `n * cols` codes in [-127, 127].
    pub q: Vec<i8>,
    /// One scale per block (`n * cols / blk`, plus 8 of padding for vector loads).
    pub d: Vec<f32>,
    /// `d[b] * sum(q in block b)`: the mins' term of asymmetric types (same padding).
    pub dsum: Vec<f32>,
    /// Sum of codes per 16 elements (`n * cols / 16`): the mins of I2 sub-groups.
    pub s16: Vec<i16>,
    /// Per token, `sum_b dsum[b]`: the min term of I4_PER_CHANNEL.
    pub tot: Vec<f32>,
}

impl QAct {
    /// Quantizes `n` rows of `cols` (a multiple of `blk`, itself a multiple of 16).
    pub fn new(x: &[f32], n: usize, cols: usize, blk: usize) -> QAct {
        assert!(cols.is_multiple_of(blk) && blk.is_multiple_of(16) && x.len() >= n * cols);
        let nb = n * cols / blk;
        let mut a = QAct {
            blk,
            cols,
            q: vec![0; n * cols],
            d: vec![0.0; nb + 8],
            dsum: vec![0.0; nb + 8],
            s16: vec![0; n * cols / 16],
            tot: vec![0.0; n],
        };
        #[cfg(target_arch = "x86_64")]
        let simd = is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw");
        for (b, (xs, qs)) in x[..n * cols]
            .chunks_exact(blk)
            .zip(a.q.chunks_exact_mut(blk))
            .enumerate()
        {
            let s16 = &mut a.s16[b * blk / 16..(b + 1) * blk / 16];
            #[cfg(target_arch = "x86_64")]
            // SAFETY: features checked above; blk is a multiple of 16.
            let (d, sum) = if simd {
                unsafe { x86::quantize_block(xs, qs, s16) }
            } else {
                quantize_block(xs, qs, s16)
            };
            #[cfg(not(target_arch = "x86_64"))]
            let (d, sum) = quantize_block(xs, qs, s16);
            a.d[b] = d;
            a.dsum[b] = d * sum as f32;
            a.tot[b * blk / cols] += d * sum as f32;
        }
        a
    }

    /// The activations these codes stand for (what the integer kernels multiply exactly).
    pub fn dequantized(&self, t: usize) -> Vec<f32> {
        let q = &self.q[t * self.cols..(t + 1) * self.cols];
        let d0 = t * self.cols / self.blk;
        q.iter()
            .enumerate()
            .map(|(i, &q)| self.d[d0 + i / self.blk] * q as f32)
            .collect()
    }
}
