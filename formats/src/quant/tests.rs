//! Quant-type tests: sizes, round-trip error bounds, dot agreement, GPTQ primitive agreement,
//! golden bytes (pin the layout), and the Hadamard transform. Deterministic: every random
//! number comes from splitmix64 with a fixed seed.

use super::hadamard::splitmix64;
use super::*;
use half::f16;

/// Deterministic pseudo-random numbers.
struct Rng(u64);
impl Rng {
    fn uniform(&mut self) -> f32 {
        (splitmix64(&mut self.0) >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Roughly normal (sum of 4 uniforms), with rare outliers like real weights.
    fn weight(&mut self) -> f32 {
        let s: f32 = (0..4).map(|_| self.uniform()).sum::<f32>() - 2.0;
        if self.uniform() < 0.005 {
            s * 8.0
        } else {
            s
        }
    }
    fn row(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.weight() * scale).collect()
    }
}

const QUANTIZED: [QType; 7] = [
    QType::I8Sym,
    QType::I8Asym,
    QType::I4Grouped,
    QType::I4PerChannel,
    QType::I2Structured,
    QType::I4Grouped32,
    QType::I4Grouped16,
];

fn roundtrip(q: QType, src: &[f32], imp: Option<&[f32]>) -> (Vec<u8>, Vec<f32>) {
    let mut bytes = vec![0u8; q.row_bytes(src.len()).unwrap()];
    quantize_row(q, src, imp, &mut bytes).unwrap();
    let mut out = vec![0f32; src.len()];
    dequantize_row(q, &bytes, &mut out).unwrap();
    (bytes, out)
}

fn rel_rmse(a: &[f32], b: &[f32]) -> f64 {
    let err: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let pow: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
    (err / pow).sqrt()
}

#[test]
fn numbers_and_names_are_fixed() {
    let expect = [
        (0, "F32"),
        (1, "F16"),
        (2, "BF16"),
        (3, "I8_SYM"),
        (4, "I8_ASYM"),
        (5, "I4_GROUPED"),
        (6, "I4_PER_CHANNEL"),
        (7, "I2_STRUCTURED"),
        (8, "I4_GROUPED32"),
        (9, "I4_GROUPED16"),
    ];
    for (n, name) in expect {
        let q = QType::from_u8(n).unwrap();
        assert_eq!(q as u8, n);
        assert_eq!(q.name(), name);
        assert_eq!(QType::from_name(name), Some(q));
    }
    assert_eq!(QType::from_u8(10), None);
    assert_eq!(serde_json::to_string(&QType::I4Grouped).unwrap(), "5");
    assert_eq!(serde_json::to_string(&QType::I4Grouped32).unwrap(), "8");
    assert_eq!(serde_json::to_string(&QType::I4Grouped16).unwrap(), "9");
    assert!(serde_json::from_str::<QType>("10").is_err());
    assert_eq!(QType::from_name("i4-grouped32"), Some(QType::I4Grouped32));
}

#[test]
fn sizes_of_gemma_shapes() {
    // cols of every Gemma 3 size (270M: 640; 1B: 1152; 4B: 2560; 12B: 3840; 27B: 5376, ...)
    for cols in [
        640usize, 1024, 1152, 2048, 2560, 3840, 4096, 5376, 6912, 10240, 15360, 21504,
    ] {
        for q in QType::ALL {
            let rb = q.row_bytes(cols).unwrap();
            let bits = rb as f64 * 8.0 / cols as f64;
            let expect = q.bits_per_weight()
                + if q == QType::I4PerChannel {
                    64.0 / cols as f64
                } else {
                    0.0
                };
            assert!(
                (bits - expect).abs() < 1e-9,
                "{q} {cols}: {bits} vs {expect}"
            );
            // every row starts 4-byte aligned when the tensor is
            assert_eq!(rb % 4, 0, "{q} {cols}");
        }
    }
    assert_eq!(QType::I4Grouped.row_bytes(640).unwrap(), 320 + 40);
    assert_eq!(QType::I4Grouped32.row_bytes(640).unwrap(), 320 + 80);
    assert_eq!(QType::I4Grouped32.row_param_bytes(640), 80);
    assert_eq!(QType::I4Grouped16.row_bytes(640).unwrap(), 320 + 160);
    assert_eq!(QType::I4PerChannel.row_param_bytes(640), 8);
    assert_eq!(QType::I2Structured.row_bytes(640).unwrap(), 5 * 44);
    assert_eq!(QType::I4PerChannel.row_bytes(640).unwrap(), 328);
    assert_eq!(QType::I8Sym.tensor_bytes(1, 256).unwrap(), 256 + 16);
}

#[test]
fn bad_sizes_are_errors() {
    // I4_GROUPED32: groups of 32, but rows are whole 64-element packing chunks
    for q in [QType::I4Grouped, QType::I4Grouped32, QType::I4Grouped16] {
        assert!(matches!(
            q.row_bytes(96),
            Err(MixqError::ColsNotMultiple { block: 64, .. })
        ));
    }
    assert!(block_params(QType::I4Grouped32, &[0.0; 64], None).is_err());
    assert!(block_params(QType::I4Grouped16, &[0.0; 32], None).is_err());
    assert!(matches!(
        QType::I2Structured.row_bytes(192),
        Err(MixqError::ColsNotMultiple { block: 128, .. })
    ));
    assert!(QType::F32.row_bytes(0).is_err());
    assert!(matches!(
        QType::F32.tensor_bytes(usize::MAX / 2, 64),
        Err(MixqError::Overflow { .. })
    ));
    assert!(matches!(
        QType::F32.tensor_bytes_u64(u64::MAX, u64::MAX),
        Err(MixqError::Overflow { .. })
    ));
    let mut out = vec![0u8; 10];
    assert!(matches!(
        quantize_row(QType::I8Sym, &[0.0; 32], None, &mut out),
        Err(MixqError::BufferLength { .. })
    ));
    let mut out = vec![0u8; QType::I4Grouped.row_bytes(64).unwrap()];
    let mut bad = vec![0.0f32; 64];
    bad[3] = f32::NAN;
    assert!(quantize_row(QType::I4Grouped, &bad, None, &mut out).is_err());
}

#[test]
fn roundtrip_error_bounds() {
    let mut rng = Rng(1);
    for cols in [640usize, 1152] {
        let src = rng.row(cols, 0.02);
        for q in QType::ALL {
            let (bytes, deq) = roundtrip(q, &src, None);
            let r = rel_rmse(&src, &deq);
            let bound = match q {
                QType::F32 => 0.0,
                QType::F16 => 1e-3,
                QType::BF16 => 4e-3,
                QType::I8Sym | QType::I8Asym => 0.012,
                QType::I4Grouped => 0.13,
                QType::I4Grouped32 => 0.11,
                QType::I4Grouped16 => 0.10,
                // one range per row: the 8x outliers of the test rows cost most here
                QType::I4PerChannel => 0.45,
                QType::I2Structured => 0.32,
            };
            assert!(
                r <= bound,
                "{q} cols {cols}: relative RMSE {r:.4} > {bound}"
            );
            if !q.is_quantized() {
                continue;
            }
            // per element: values inside the representable range are within half a step
            let mut codes = vec![0u8; cols];
            let params = unpack_row(q, &bytes, &mut codes).unwrap();
            let pb = q.param_block(cols);
            for (k, (&w, &d)) in src.iter().zip(&deq).enumerate() {
                let p = &params[k / pb];
                let (scale, offset) = p.affine(k % pb);
                let (lo, hi) = match q {
                    QType::I8Sym => (-127.0 * scale, 127.0 * scale),
                    _ => (offset, offset + scale * super::block::code_max(q) as f32),
                };
                if w >= lo && w <= hi {
                    assert!(
                        (w - d).abs() <= scale / 2.0 + 1e-6,
                        "{q} element {k}: w {w} deq {d} scale {scale}"
                    );
                }
            }
        }
    }
}

#[test]
fn i8_is_near_lossless() {
    let mut rng = Rng(2);
    let src = rng.row(2048, 1.0);
    for q in [QType::I8Sym, QType::I8Asym] {
        let (_, deq) = roundtrip(q, &src, None);
        let r = rel_rmse(&src, &deq);
        assert!(r < 0.012, "{q}: {r}");
    }
}

#[test]
fn dot_row_matches_dequantized_dot() {
    let mut rng = Rng(3);
    for cols in [640usize, 1152, 5376] {
        let src = rng.row(cols, 0.05);
        let x = rng.row(cols, 1.0);
        for q in QType::ALL {
            let (bytes, deq) = roundtrip(q, &src, None);
            let want: f64 = deq
                .iter()
                .zip(&x)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum();
            let mag: f64 = deq
                .iter()
                .zip(&x)
                .map(|(a, b)| (*a as f64 * *b as f64).abs())
                .sum();
            let got = dot_row(q, &bytes, &x).unwrap() as f64;
            assert!(
                (got - want).abs() <= 1e-4 * mag.max(1e-12),
                "{q} cols {cols}: {got} vs {want} (magnitude {mag})"
            );
        }
    }
}

#[test]
fn gptq_primitive_agrees_with_quantize_row() {
    let mut rng = Rng(4);
    let cols = 1152;
    let src = rng.row(cols, 0.03);
    for q in QUANTIZED {
        let pb = q.param_block(cols);
        let mut params = Vec::new();
        let mut codes = vec![0u8; cols];
        for (b, xs) in src.chunks_exact(pb).enumerate() {
            let p = block_params(q, xs, None).unwrap();
            for (i, &x) in xs.iter().enumerate() {
                codes[b * pb + i] = p.quantize(i, x);
                // dequantize(quantize(x)) is what the GPTQ error update uses
                let d = p.dequantize(i, codes[b * pb + i]);
                assert!(d.is_finite());
            }
            params.push(p);
        }
        let mut packed = vec![0u8; q.row_bytes(cols).unwrap()];
        pack_row(q, &params, &codes, &mut packed).unwrap();
        let (direct, _) = roundtrip(q, &src, None);
        assert_eq!(packed, direct, "{q}");
        let mut back = vec![0u8; cols];
        assert_eq!(unpack_row(q, &packed, &mut back).unwrap(), params, "{q}");
        assert_eq!(back, codes, "{q}");
    }
}

#[test]
fn importance_lowers_weighted_error() {
    let mut rng = Rng(5);
    let cols = 640;
    let src = rng.row(cols, 0.02);
    // a few input channels carry most of the activation energy
    let imp: Vec<f32> = (0..cols)
        .map(|i| if i % 16 == 3 { 100.0 } else { 0.1 })
        .collect();
    for q in [
        QType::I4Grouped,
        QType::I2Structured,
        QType::I4PerChannel,
        QType::I4Grouped32,
        QType::I4Grouped16,
    ] {
        let werr = |deq: &[f32]| -> f64 {
            src.iter()
                .zip(deq)
                .zip(&imp)
                .map(|((a, b), w)| (*w as f64) * ((a - b) as f64).powi(2))
                .sum()
        };
        let (_, plain) = roundtrip(q, &src, None);
        let (_, weighted) = roundtrip(q, &src, Some(&imp));
        assert!(werr(&weighted) <= werr(&plain), "{q}");
    }
}

#[test]
fn degenerate_rows() {
    for q in QUANTIZED {
        let (_, deq) = roundtrip(q, &[0.0; 256], None);
        assert!(deq.iter().all(|&v| v == 0.0), "{q} zeros");
        let (_, deq) = roundtrip(q, &[0.5; 256], None);
        assert!(
            deq.iter().all(|&v| (v - 0.5).abs() < 1e-3),
            "{q} constant: {deq:?}"
        );
    }
}

/// Golden bytes: hand-chosen parameters and codes packed into one row. Pins every type's
/// byte layout (parameter order, nibble and 2-bit order) independently of the fitting code.
#[test]
fn golden_layouts() {
    let h = |v: f32| f16::from_f32(v);
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();

    // I8_SYM, 32 columns: scale 0.5, codes q_k = k - 16 (two's complement)
    let codes: Vec<u8> = (0..32).map(|k| ((k as i8) - 16) as u8).collect();
    let mut row = vec![0u8; 34];
    pack_row(
        QType::I8Sym,
        &[BlockParams::I8Sym { scale: h(0.5) }],
        &codes,
        &mut row,
    )
    .unwrap();
    assert_eq!(
        hex(&row),
        "0038f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff000102030405060708090a0b0c0d0e0f"
    );
    let mut w = vec![0f32; 32];
    dequantize_row(QType::I8Sym, &row, &mut w).unwrap();
    assert_eq!((w[0], w[16], w[31]), (-8.0, 0.0, 7.5));

    // I8_ASYM, 64 columns: scale 0.25, min -1.0, codes k
    let codes: Vec<u8> = (0..64).collect();
    let mut row = vec![0u8; 68];
    let p = BlockParams::I8Asym {
        scale: h(0.25),
        min: h(-1.0),
    };
    pack_row(QType::I8Asym, &[p], &codes, &mut row).unwrap();
    assert_eq!(hex(&row[..8]), "0034 00bc 0001 0203".replace(' ', ""));
    dequantize_row(QType::I8Asym, &row, &mut vec![0f32; 64]).unwrap();

    // I4_GROUPED, 64 columns: code of element k is k % 16; byte j = e_j | e_{j+32} << 4
    let codes: Vec<u8> = (0..64).map(|k| (k % 16) as u8).collect();
    let mut row = vec![0u8; 36];
    let p = BlockParams::I4Grouped {
        scale: h(1.0),
        min: h(-8.0),
    };
    pack_row(QType::I4Grouped, &[p], &codes, &mut row).unwrap();
    assert_eq!(
        hex(&row),
        "003c00c8\
         00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
    );
    let mut w = vec![0f32; 64];
    dequantize_row(QType::I4Grouped, &row, &mut w).unwrap();
    assert_eq!((w[0], w[1], w[33], w[63]), (-8.0, -7.0, -7.0, 7.0));

    // I4_GROUPED32, 64 columns, the same codes: group 0 (elements 0..31, the low nibbles)
    // scale 1, min -8; group 1 (32..63, the high nibbles) scale 0.5, min 2
    let p = [
        BlockParams::I4Grouped32 {
            scale: h(1.0),
            min: h(-8.0),
        },
        BlockParams::I4Grouped32 {
            scale: h(0.5),
            min: h(2.0),
        },
    ];
    let mut row = vec![0u8; 40];
    pack_row(QType::I4Grouped32, &p, &codes, &mut row).unwrap();
    assert_eq!(
        hex(&row),
        "003c00c8\
         00380040\
         00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
    );
    dequantize_row(QType::I4Grouped32, &row, &mut w).unwrap();
    assert_eq!(
        (w[0], w[31], w[32], w[33], w[63]),
        (-8.0, 7.0, 2.0, 2.5, 9.5)
    );

    // I4_GROUPED16, 64 columns, the same codes: groups of 16 in element order, so group 1
    // (elements 16..31) is the second half of the low nibbles and group 2 (32..47) the first
    // half of the high nibbles; scales 1, 0.5, 2, 0.25 and mins -8, 2, 0, 1
    let p: Vec<BlockParams> = [(1.0, -8.0), (0.5, 2.0), (2.0, 0.0), (0.25, 1.0)]
        .map(|(s, m)| BlockParams::I4Grouped16 {
            scale: h(s),
            min: h(m),
        })
        .to_vec();
    let mut row = vec![0u8; 48];
    pack_row(QType::I4Grouped16, &p, &codes, &mut row).unwrap();
    assert_eq!(
        hex(&row),
        "003c00c8\
         00380040\
         00400000\
         0034003c\
         00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
    );
    dequantize_row(QType::I4Grouped16, &row, &mut w).unwrap();
    assert_eq!(
        (w[0], w[15], w[16], w[31], w[32], w[47], w[48], w[63]),
        (-8.0, 7.0, 2.0, 9.5, 0.0, 30.0, 1.0, 4.75)
    );

    // I4_PER_CHANNEL, 64 columns: f32 scale 0.5, f32 min -4.0; codes 15 - k % 16
    let codes: Vec<u8> = (0..64).map(|k| 15 - (k % 16) as u8).collect();
    let mut row = vec![0u8; 40];
    let p = BlockParams::I4PerChannel {
        scale: 0.5,
        min: -4.0,
    };
    pack_row(QType::I4PerChannel, &[p], &codes, &mut row).unwrap();
    assert_eq!(
        hex(&row),
        "0000003f000080c0\
         ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"
    );

    // I2_STRUCTURED, 128 columns: d 0.5, dmin 0.25, sub-group s has sc = s+1, m = s;
    // codes of element k: (k / 32) (so byte j = 0 | 1<<2 | 2<<4 | 3<<6 = 0xe4)
    let codes: Vec<u8> = (0..128).map(|k| (k / 32) as u8).collect();
    let scales: [u8; 8] = std::array::from_fn(|s| (s as u8 + 1) | ((s as u8) << 4));
    let p = BlockParams::I2Structured {
        d: h(0.5),
        dmin: h(0.25),
        scales,
    };
    let mut row = vec![0u8; 44];
    pack_row(QType::I2Structured, &[p], &codes, &mut row).unwrap();
    assert_eq!(
        hex(&row[..12]),
        "0038003401122334455667 78".replace(' ', "")
    );
    assert!(row[12..].iter().all(|&b| b == 0xe4));
    let mut w = vec![0f32; 128];
    dequantize_row(QType::I2Structured, &row, &mut w).unwrap();
    // element 0: sub-group 0 (sc 1, m 0), q 0 -> 0; element 40: sub-group 2 (sc 3, m 2), q 1
    // -> 0.5*3*1 - 0.25*2 = 1.0; element 127: sub-group 7 (sc 8, m 7), q 3 -> 12 - 1.75
    assert_eq!((w[0], w[40], w[127]), (0.0, 1.0, 10.25));
}

#[test]
fn pack_rejects_out_of_range_codes() {
    let p = BlockParams::I4Grouped {
        scale: f16::ONE,
        min: f16::ZERO,
    };
    let mut row = vec![0u8; 36];
    let mut codes = vec![0u8; 64];
    codes[5] = 16;
    assert!(pack_row(QType::I4Grouped, &[p], &codes, &mut row).is_err());
    let mut codes = vec![0u8; 32];
    codes[0] = 0x80;
    let mut row = vec![0u8; 34];
    let p = BlockParams::I8Sym { scale: f16::ONE };
    assert!(pack_row(QType::I8Sym, &[p], &codes, &mut row).is_err());
    // parameters of another type
    let p = BlockParams::I8Asym {
        scale: f16::ONE,
        min: f16::ZERO,
    };
    let mut row = vec![0u8; 36];
    assert!(pack_row(QType::I4Grouped, &[p], &[0u8; 64], &mut row).is_err());
}

#[test]
fn splitmix64_and_signs_are_pinned() {
    let mut s = 0u64;
    // reference values of splitmix64 seeded with 0
    assert_eq!(splitmix64(&mut s), 0xE220_A839_7B1D_CDAF);
    assert_eq!(splitmix64(&mut s), 0x6E78_9E6A_A1B9_65F4);
    let signs = hadamard_signs(8, 0);
    // bit 0 of 0x..af is 1 -> -1; of 0x..f4 is 0 -> +1
    assert_eq!(&signs[..2], &[-1.0, 1.0]);
}

#[test]
fn hadamard_preserves_dot_products() {
    let mut rng = Rng(6);
    let cols = 640;
    let (block, seed) = (128, 42);
    let w = rng.row(cols * 3, 1.0);
    let x = rng.row(cols, 1.0);
    let mut wr = w.clone();
    apply_hadamard_rows(&mut wr, cols, block, seed).unwrap();
    let mut xr = x.clone();
    apply_hadamard_rows(&mut xr, cols, block, seed).unwrap();
    for r in 0..3 {
        let a: f32 = w[r * cols..][..cols]
            .iter()
            .zip(&x)
            .map(|(a, b)| a * b)
            .sum();
        let b: f32 = wr[r * cols..][..cols]
            .iter()
            .zip(&xr)
            .map(|(a, b)| a * b)
            .sum();
        assert!(
            (a - b).abs() < 1e-3 * (1.0 + a.abs()),
            "row {r}: {a} vs {b}"
        );
    }
    // norm preserved
    let n0: f32 = x.iter().map(|v| v * v).sum();
    let n1: f32 = xr.iter().map(|v| v * v).sum();
    assert!((n0 - n1).abs() < 1e-3 * n0);
    // 2-point example: x = [1, 0], s = [-1, +1] (seed 0) -> [-1, 0]·H_2/√2 = [-1, -1]/√2
    let mut v = [1.0f32, 0.0];
    apply_hadamard_rows(&mut v, 2, 2, 0).unwrap();
    let r = std::f32::consts::FRAC_1_SQRT_2;
    assert!((v[0] + r).abs() < 1e-6 && (v[1] + r).abs() < 1e-6, "{v:?}");
    // bad blocks
    assert!(apply_hadamard_rows(&mut [0.0; 640], 640, 256, 0).is_err());
    assert!(apply_hadamard_rows(&mut [0.0; 640], 640, 96, 0).is_err());
}

#[test]
fn transform_json() {
    let t = Transform::BlockHadamard {
        block: 128,
        seed: u64::MAX,
    };
    let s = serde_json::to_string(&t).unwrap();
    assert_eq!(
        s,
        r#"{"kind":"block_hadamard","block":128,"seed":18446744073709551615}"#
    );
    assert_eq!(serde_json::from_str::<Transform>(&s).unwrap(), t);
    assert_eq!(
        serde_json::to_string(&Transform::None).unwrap(),
        r#"{"kind":"none"}"#
    );
}
