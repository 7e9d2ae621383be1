//! bfloat16 rounding, written out so the rounding the engine model applies is explicit.
//!
//! bf16 is the upper half of an IEEE binary32: 1 sign bit, 8 exponent bits, 7 mantissa bits.
//! The AIE-ML converts fp32 accumulators to bf16 vectors with round-to-nearest-even
//! (AMD UG1529, "Floating-point Conversion": `aie::rounding_mode::conv_even`), and so do we.

/// Rounds an f32 to the nearest bf16 (ties to even), returned as the f32 it stands for.
/// NaN stays NaN (quieted); values past the largest bf16 round to infinity, as in IEEE.
#[inline]
pub fn round_bf16(x: f32) -> f32 {
    let b = x.to_bits();
    if x.is_nan() {
        return f32::from_bits((b | 0x0040_0000) & 0xffff_0000);
    }
    let lsb = (b >> 16) & 1;
    f32::from_bits(b.wrapping_add(0x7fff + lsb) & 0xffff_0000)
}

/// The 16 stored bits of the bf16 nearest to `x` (ties to even).
#[inline]
pub fn bf16_bits(x: f32) -> u16 {
    (round_bf16(x).to_bits() >> 16) as u16
}

/// The value of stored bf16 bits.
#[inline]
pub fn bf16_from_bits(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Rounds an f64 directly to the nearest bf16 (ties to even), with no intermediate f32
/// rounding (which could round twice). Used where a value is defined as "the exact result,
/// rounded once to bf16" (the softmax exponentials).
pub fn round_bf16_f64(x: f64) -> f32 {
    if !x.is_finite() || x == 0.0 {
        return round_bf16(x as f32);
    }
    let a = x.abs();
    // 2^e <= a < 2^(e+1); bf16 keeps 8 significant bits, and its smallest normal exponent
    // is -126 (below it, subnormals step in units of 2^-133).
    let e = ((a.to_bits() >> 52) as i32 - 1023).max(-126);
    let ulp = 2f64.powi(e - 7);
    // a / ulp is exact (power of two); round the significand once, ties to even.
    let r = (a / ulp).round_ties_even() * ulp;
    // past the largest finite bf16 (bits 0x7f7f) is IEEE overflow
    let v = if r > bf16_from_bits(0x7f7f) as f64 {
        f64::INFINITY
    } else {
        r
    };
    (v as f32).copysign(x as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_go_to_even() {
        // 1 + 2^-8 is exactly half way between 1 and 1 + 2^-7: ties to 1 (even mantissa).
        assert_eq!(round_bf16(1.0 + 2f32.powi(-8)), 1.0);
        // 1 + 3*2^-8 is half way between 1+2^-7 (odd) and 1+2^-6 (even): goes up.
        assert_eq!(round_bf16(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
        assert_eq!(round_bf16(-1.0 - 2f32.powi(-8)), -1.0);
        // just above half way rounds up
        assert_eq!(
            round_bf16(1.0 + 2f32.powi(-8) + 2f32.powi(-20)),
            1.0 + 2f32.powi(-7)
        );
    }

    #[test]
    fn overflow_nan_and_exact_values() {
        assert_eq!(round_bf16(f32::MAX), f32::INFINITY);
        assert!(round_bf16(f32::NAN).is_nan());
        for v in [0.0f32, -0.0, 1.0, 0.5, -3.0, 1.5e-39, 65280.0] {
            let r = round_bf16(v);
            assert_eq!(round_bf16(r), r, "idempotent at {v}");
        }
        assert_eq!(bf16_from_bits(bf16_bits(3.140625)), 3.140625);
    }

    #[test]
    fn f64_rounding_agrees_with_f32_rounding_where_f32_is_exact() {
        let mut s = 0x1234_5678u32;
        for _ in 0..100_000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let x = f32::from_bits(s);
            if !x.is_finite() {
                continue;
            }
            assert_eq!(
                round_bf16_f64(x as f64).to_bits(),
                round_bf16(x).to_bits(),
                "{x:e}"
            );
        }
    }

    #[test]
    fn f64_rounding_is_single() {
        // 1 + 2^-8 + 2^-30: f32 rounding first would give 1 + 2^-8 (a tie) and then 1.0;
        // rounded once it is above the tie and goes up.
        let x = 1.0 + 2f64.powi(-8) + 2f64.powi(-30);
        assert_eq!(round_bf16_f64(x), 1.0 + 2f32.powi(-7));
        assert_eq!(round_bf16(x as f32), 1.0);
    }
}
