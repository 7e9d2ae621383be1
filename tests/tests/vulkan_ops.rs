//! Every Vulkan op against the CPU reference backend (llama.cpp test-backend-ops style): each op
//! x each weight format, small random shapes with a fixed seed, compared by
//! nmse = sum((vk - cpu)^2) / sum(cpu^2).
//!
//! Runs on lavapipe in CI (`make setup` installs it). With no Vulkan device at all these tests
//! FAIL: a silently skipped GPU test would let the backend rot unnoticed.
//!
//! Tolerances, and why:
//! - NMSE_F32 = 1e-10 for every op with a reduction (matmul/matvec for every weight format,
//!   rms_norm, attention): both sides decode weights exactly the same way (bit-identical f32
//!   weights) and accumulate in f32, only in a different order (CPU: 8 running lanes; GPU:
//!   64-way strided partial sums + tree, or 16-wide tiles; rms_norm: f64 vs f32 tree). Each
//!   reordered f32 sum is off by a few ulps relative to its magnitude (~1e-7), i.e. nmse
//!   ~1e-14; 1e-10 leaves 4 orders of margin while any indexing or decode bug gives nmse ~1.
//! - Exact equality for data movement (embed, copy, KV stores via attention decode) and
//!   for top_k (indices and values).
//! - NMSE_Q8 = 1e-4 for decode matvecs of integer formats on int8 activations (the Vulkan
//!   default where the device has integer dot products; `vk()` turns it off so that the
//!   NMSE_F32 tests above check the f32 kernels, and `*_int8_activations` tests check it):
//!   x is rounded to 8 bits per group of 32 (step max|x|/127, error uniform in +-step/2), so
//!   each product carries a relative error of ~1/(127 sqrt 12) of the group's largest |x|:
//!   nmse ~1e-5 on random data (measured 2e-6 to 3e-5 on lavapipe), while a decode bug gives
//!   ~1. gate_up on int8 activations: 3 x NMSE_Q8, since gelu(gate) * up carries the errors of
//!   two products (measured 3.5e-5 to 1.1e-4).
//! - NMSE_F16 = 1e-5 for prefill matmuls on the tensor cores (matmul_coop.comp, only on GPUs
//!   with VK_NV_cooperative_matrix; `vk()` turns it off): x and the decoded weights are rounded
//!   to f16 (relative error uniform in +-2^-11, rms ~2.8e-4 each), products and sums are f32,
//!   so nmse ~2 x (2.8e-4)^2 ~ 1.6e-7; a tiling or decode bug gives ~1.
//! - NMSE_ELEM = 1e-12 for element-wise ops (add, gelu_mul, rope): one to a few roundings per
//!   element; GPU tanh/fma may differ by an ulp.

use mixq_format::quant::{quantize_row, QType, Transform};
use mixq_format::SharedBytes;
use mixq_runtime::backend::cpu::CpuBackend;
use mixq_runtime::backend::vulkan::VulkanBackend;
use mixq_runtime::backend::{AttnParams, Backend, RopeParams};
use mixq_runtime::weights::WeightSource;

const NMSE_F32: f64 = 1e-10;
const NMSE_ELEM: f64 = 1e-12;
const NMSE_Q8: f64 = 1e-4;
const NMSE_F16: f64 = 1e-5;

/// The f32-activation kernels (int8 activations off, prefill on the portable f32 tiles):
/// results match the CPU's exact mode.
fn vk() -> VulkanBackend {
    let v = vk_default();
    v.set_int8_activations(false);
    v.set_coop_matmul(false);
    v
}

/// The backend as the CLI gets it (int8 decode activations where supported).
fn vk_default() -> VulkanBackend {
    VulkanBackend::new(None).unwrap_or_else(|e| {
        panic!(
            "no usable Vulkan device ({e:#}). The Vulkan tests need one: `make setup` installs \
             Mesa's lavapipe CPU driver (apt-get install mesa-vulkan-drivers libvulkan1)"
        )
    })
}

fn cpu() -> CpuBackend {
    CpuBackend::new(Some(2)).unwrap()
}

/// Deterministic values in [-1, 1) (splitmix-style hash of the index and seed).
fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let mut z = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ seed.wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 31)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 29;
            (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn nmse(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let (mut e, mut s) = (0f64, 0f64);
    for (g, w) in got.iter().zip(want) {
        e += ((g - w) as f64).powi(2);
        s += (*w as f64).powi(2);
    }
    e / s.max(1e-30)
}

fn weight(q: QType, rows: usize, cols: usize, seed: u64) -> WeightSource {
    let vals = rand_vec(rows * cols, seed);
    let rb = q.row_bytes(cols).unwrap();
    let mut bytes = vec![0u8; rows * rb];
    for r in 0..rows {
        quantize_row(
            q,
            &vals[r * cols..(r + 1) * cols],
            None,
            &mut bytes[r * rb..(r + 1) * rb],
        )
        .unwrap();
    }
    // from_f32, then the stored fields: robust to fields WeightSource gains later.
    let mut w = WeightSource::from_f32(&format!("w_{}", q.name()), rows, cols, &[]);
    w.qtype = q;
    w.bytes = SharedBytes::from_vec(bytes);
    w
}

/// Uploads `data` to a fresh buffer of each backend.
/// [`weight`] stored as W·H (block Hadamard of 128 with signs from `hseed`).
fn hadamard_weight(q: QType, rows: usize, cols: usize, seed: u64, hseed: u64) -> WeightSource {
    let mut w = weight(q, rows, cols, seed);
    w.transform = Transform::BlockHadamard {
        block: 128,
        seed: hseed,
    };
    w
}

fn bufs(
    c: &CpuBackend,
    v: &VulkanBackend,
    data: &[f32],
) -> (Vec<f32>, <VulkanBackend as Backend>::Buf) {
    let mut cb = c.alloc(data.len());
    c.upload(data, &mut cb);
    let mut vb = v.alloc(data.len());
    v.upload(data, &mut vb);
    (cb, vb)
}

fn check(what: &str, got: &[f32], want: &[f32], tol: f64) {
    let e = nmse(got, want);
    assert!(e <= tol, "{what}: nmse {e:e} > {tol:e}");
}

#[test]
fn matmul_every_weight_format_decode_and_prefill() {
    let (c, v) = (cpu(), vk());
    // 70 rows: not a multiple of the 4-row matvec groups or 32-row tiles; 256 columns: two
    // I2_STRUCTURED super-blocks, four 64-groups.
    let (rows, cols) = (70, 256);
    for q in QType::ALL {
        let w = weight(q, rows, cols, q as u64 + 1);
        let (cw, vw) = (c.load_weight(&w).unwrap(), v.load_weight(&w).unwrap());
        for n in [1, 3, 37] {
            let x = rand_vec(n * cols, 100 + n as u64);
            let (cx, vx) = bufs(&c, &v, &x);
            let (mut co, mut vo) = (c.alloc(n * rows), v.alloc(n * rows));
            c.matmul(&cw, &cx, n, &mut co);
            v.matmul(&vw, &vx, n, &mut vo);
            check(
                &format!("matmul {} n={n}", q.name()),
                &v.download(&vo, n * rows),
                &co,
                NMSE_F32,
            );
        }
    }
}

/// Weights whose stored rows are already the device layout, given as bytes of a memory-mapped
/// file, are read in place on UMA devices (VK_EXT_external_memory_host; lavapipe counts as
/// one): the matvec gives bit for bit what the same weight copied from a Vec gives. The
/// tensor sits mid-page (256-aligned, as in a .mixq section) so the import covers the pages
/// around it.
#[test]
fn weights_read_in_place_from_a_memory_map() {
    let v = vk();
    let (rows, cols) = (300, 640);
    let dir = std::env::temp_dir().join(format!("mixq-vk-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for q in [QType::I4Grouped32, QType::I8Asym, QType::BF16] {
        let owned = weight(q, rows, cols, 7);
        let at = 65536 + 256;
        let mut file = vec![0xA5u8; at];
        file.extend_from_slice(&owned.bytes);
        file.extend_from_slice(&[0x5Au8; 100]);
        let path = dir.join(format!("{}.bin", q.name()));
        std::fs::write(&path, &file).unwrap();
        // SAFETY: the file is ours and nobody modifies it while mapped.
        let map = unsafe { memmap2::Mmap::map(&std::fs::File::open(&path).unwrap()) }.unwrap();
        let mut mapped = weight(q, rows, cols, 7);
        mapped.bytes = SharedBytes::from_mmap(map)
            .slice(at..at + owned.bytes.len())
            .unwrap();
        assert_eq!(&*mapped.bytes, &*owned.bytes);
        let (wo, wm) = (
            v.load_weight(&owned).unwrap(),
            v.load_weight(&mapped).unwrap(),
        );
        let x = rand_vec(cols, 11);
        let mut xb = v.alloc(cols);
        v.upload(&x, &mut xb);
        let (mut oo, mut om) = (v.alloc(rows), v.alloc(rows));
        v.matmul(&wo, &xb, 1, &mut oo);
        v.matmul(&wm, &xb, 1, &mut om);
        assert_eq!(
            v.download(&om, rows),
            v.download(&oo, rows),
            "{}: in place vs copied",
            q.name()
        );
    }
    let info = v.device_info();
    let uma = matches!(info.device_type, "integrated" | "cpu");
    if info.external_memory_host && uma {
        let d = v.describe();
        assert!(d.contains("read in place"), "{d}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Prefill on the tensor cores (matmul_coop.comp) against the CPU's exact matmul: every weight
/// format, every tile shape, token and row counts that leave partial tiles, a token of zeros,
/// tokens whose values overflow f16 unscaled (quantize_x16_f32's per-token scale), and a
/// Hadamard-rotated gate/up pair sharing one f16 input. Where the device has no
/// VK_NV_cooperative_matrix (lavapipe) it checks that the portable kernel is the one chosen.
#[test]
fn matmul_coop_prefill() {
    let (c, v) = (cpu(), vk_default());
    if !v.device_info().coop_prefill {
        assert!(!v.coop_matmul(), "no cooperative matrix: portable prefill");
        assert!(v.describe().contains("prefill matmul: portable"));
        return;
    }
    assert!(v.coop_matmul(), "{}", v.device_info());
    let (rows, cols) = (200, 384);
    let tiles = [
        None,
        Some("128x64"),
        Some("128x128s8"),
        Some("64x64"),
        Some("128x128"),
    ];
    for tile in tiles {
        v.set_coop_tile(tile).unwrap();
        for q in QType::ALL {
            let w = weight(q, rows, cols, q as u64 + 7);
            let (cw, vw) = (c.load_weight(&w).unwrap(), v.load_weight(&w).unwrap());
            for n in [2, 37, 130] {
                let mut x = rand_vec(n * cols, 700 + n as u64);
                x[..cols].iter_mut().for_each(|a| *a = 0.0);
                x[cols..2 * cols].iter_mut().for_each(|a| *a *= 3.0e5);
                let (cx, vx) = bufs(&c, &v, &x);
                let (mut co, mut vo) = (c.alloc(n * rows), v.alloc(n * rows));
                c.matmul(&cw, &cx, n, &mut co);
                v.matmul(&vw, &vx, n, &mut vo);
                let got = v.download(&vo, n * rows);
                let what = format!("coop matmul {} n={n} tile {tile:?}", q.name());
                assert!(got[..rows].iter().all(|&a| a == 0.0), "{what}: zero token");
                check(&what, &got, &co, NMSE_F16);
                // The large token alone (its error would hide in the others' otherwise).
                let (a, b) = (rows, 2 * rows);
                check(&format!("{what} large"), &got[a..b], &co[a..b], NMSE_F16);
            }
        }
    }
    v.set_coop_tile(None).unwrap();
    // Long rows on a small grid split k (4 splits of 33 steps here: an odd step count per split)
    // and sum the partials in a second dispatch.
    let cols_k = 4224;
    for q in [QType::I4Grouped, QType::I2Structured, QType::I8Asym] {
        let w = weight(q, rows, cols_k, q as u64 + 17);
        let (cw, vw) = (c.load_weight(&w).unwrap(), v.load_weight(&w).unwrap());
        for n in [37, 130] {
            let x = rand_vec(n * cols_k, 900 + n as u64);
            let (cx, vx) = bufs(&c, &v, &x);
            let (mut co, mut vo) = (c.alloc(n * rows), v.alloc(n * rows));
            c.matmul(&cw, &cx, n, &mut co);
            let (_, d0, _) = v.counters();
            v.matmul(&vw, &vx, n, &mut vo);
            let (_, d1, _) = v.counters();
            assert_eq!(d1 - d0, 3, "f16 input, split matmul, sum of the splits");
            let what = format!("split-k coop matmul {} n={n}", q.name());
            check(&what, &v.download(&vo, n * rows), &co, NMSE_F16);
        }
    }
    let q = QType::I2Structured;
    let mk = |s: u64| hadamard_weight(q, rows, cols, s, 5);
    let (wg, wu) = (mk(61), mk(62));
    let (cg, vg) = (c.load_weight(&wg).unwrap(), v.load_weight(&wg).unwrap());
    let (cu, vu) = (c.load_weight(&wu).unwrap(), v.load_weight(&wu).unwrap());
    let n = 37;
    let x = rand_vec(n * cols, 77);
    let (cx, vx) = bufs(&c, &v, &x);
    let (dispatches, [gate, up]) =
        gate_up_pair(&c, &v, [(&cg, &vg), (&cu, &vu)], &cx, &vx, n, rows);
    assert_eq!(dispatches, 4, "rotation + f16 input once, then gate and up");
    check("coop rotated gate", &gate.1, &gate.0, NMSE_F16);
    check("coop rotated up", &up.1, &up.0, NMSE_F16);
}

/// One output as the CPU and the device computed it.
type CpuAndDevice = (Vec<f32>, Vec<f32>);

/// Gate then up of one input on both backends, as a layer runs them: the device dispatches the
/// pair took, and (CPU, device) outputs of each.
fn gate_up_pair(
    c: &CpuBackend,
    v: &VulkanBackend,
    ws: [(
        &<CpuBackend as Backend>::Weight,
        &<VulkanBackend as Backend>::Weight,
    ); 2],
    cx: &<CpuBackend as Backend>::Buf,
    vx: &<VulkanBackend as Backend>::Buf,
    n: usize,
    rows: usize,
) -> (u64, [CpuAndDevice; 2]) {
    let (_, d0, _) = v.counters();
    let outs = ws.map(|(cw, vw)| {
        let (mut co, mut vo) = (c.alloc(n * rows), v.alloc(n * rows));
        c.matmul(cw, cx, n, &mut co);
        v.matmul(vw, vx, n, &mut vo);
        (co, vo)
    });
    let (_, d1, _) = v.counters();
    (
        d1 - d0,
        outs.map(|(co, vo)| (co, v.download(&vo, n * rows))),
    )
}

/// Tensors stored as W·H (Transform::BlockHadamard): the GPU rotates the input (hadamard_f32)
/// before the matmul, bit-identically to the CPU, so the same NMSE_F32 applies. gate/up-style
/// pairs (same input, same rotation) rotate once; a write to the input in between forces a new
/// rotation.
#[test]
fn matmul_hadamard_rotated_inputs() {
    let (c, v) = (cpu(), vk());
    let (rows, cols) = (70, 384);
    for q in [QType::I2Structured, QType::I4Grouped, QType::I4Grouped32] {
        for (block, seed) in [(128u32, 7u64), (64, 99)] {
            let mk = |s: u64| {
                let mut w = weight(q, rows, cols, s);
                w.transform = Transform::BlockHadamard { block, seed };
                w
            };
            let (wg, wu) = (mk(q as u64 + 40), mk(q as u64 + 41));
            let (cg, vg) = (c.load_weight(&wg).unwrap(), v.load_weight(&wg).unwrap());
            let (cu, vu) = (c.load_weight(&wu).unwrap(), v.load_weight(&wu).unwrap());
            for n in [1, 5, 37] {
                let x: Vec<f32> = rand_vec(n * cols, 300 + n as u64)
                    .iter()
                    .map(|a| a * 30.0)
                    .collect();
                let (mut cx, mut vx) = bufs(&c, &v, &x);
                let what = format!("rotated {} block={block} n={n}", q.name());
                let (dispatches, [gate, up]) =
                    gate_up_pair(&c, &v, [(&cg, &vg), (&cu, &vu)], &cx, &vx, n, rows);
                assert_eq!(dispatches, 3, "{what}: one rotation for gate and up");
                check(&what, &gate.1, &gate.0, NMSE_F32);
                check(&what, &up.1, &up.0, NMSE_F32);
                let (mut co2, mut vo2) = (c.alloc(n * rows), v.alloc(n * rows));
                // The input changes: the cached rotation must not be reused.
                let y = rand_vec(n * cols, 500 + n as u64);
                let (cy, vy) = bufs(&c, &v, &y);
                c.add(&mut cx, &cy, n * cols);
                v.add(&mut vx, &vy, n * cols);
                c.matmul(&cu, &cx, n, &mut co2);
                v.matmul(&vu, &vx, n, &mut vo2);
                check(
                    &format!("{what} after a write"),
                    &v.download(&vo2, n * rows),
                    &co2,
                    NMSE_F32,
                );
            }
        }
    }
}

/// Decode matvec at the row counts that select 1, 2 and 4 rows per workgroup and 64 or 128
/// invocations (matvec_shape in vulkan/mod.rs), for every weight format.
#[test]
fn matvec_workgroup_shapes() {
    let (c, v) = (cpu(), vk());
    for q in QType::ALL {
        for (rows, cols) in [(2051, 128), (515, 1536), (300, 6144)] {
            let w = weight(q, rows, cols, q as u64 + rows as u64);
            let (cw, vw) = (c.load_weight(&w).unwrap(), v.load_weight(&w).unwrap());
            let x = rand_vec(cols, 77);
            let (cx, vx) = bufs(&c, &v, &x);
            let (mut co, mut vo) = (c.alloc(rows), v.alloc(rows));
            c.matmul(&cw, &cx, 1, &mut co);
            v.matmul(&vw, &vx, 1, &mut vo);
            check(
                &format!("matvec {} {rows}x{cols}", q.name()),
                &v.download(&vo, rows),
                &co,
                NMSE_F32,
            );
        }
    }
}

#[test]
fn matvec_odd_columns_f16_bf16_f32() {
    let (c, v) = (cpu(), vk());
    for q in [QType::F32, QType::F16, QType::BF16] {
        let (rows, cols) = (9, 37);
        let w = weight(q, rows, cols, 7);
        let (cw, vw) = (c.load_weight(&w).unwrap(), v.load_weight(&w).unwrap());
        for n in [1, 2] {
            let x = rand_vec(n * cols, 8);
            let (cx, vx) = bufs(&c, &v, &x);
            let (mut co, mut vo) = (c.alloc(n * rows), v.alloc(n * rows));
            c.matmul(&cw, &cx, n, &mut co);
            v.matmul(&vw, &vx, n, &mut vo);
            check(
                &format!("odd cols {} n={n}", q.name()),
                &v.download(&vo, n * rows),
                &co,
                NMSE_F32,
            );
        }
    }
}

#[test]
fn embed_every_weight_format_is_exact() {
    let (c, v) = (cpu(), vk());
    let (rows, cols) = (50, 128);
    let ids = [3u32, 0, 49, 3, 17];
    for q in QType::ALL {
        let w = weight(q, rows, cols, 30 + q as u64);
        let (cw, vw) = (c.load_weight(&w).unwrap(), v.load_weight(&w).unwrap());
        let (mut co, mut vo) = (c.alloc(ids.len() * cols), v.alloc(ids.len() * cols));
        c.embed(&cw, &ids, 25.25, &mut co);
        v.embed(&vw, &ids, 25.25, &mut vo);
        assert_eq!(v.download(&vo, ids.len() * cols), co, "embed {}", q.name());
    }
}

#[test]
fn rms_norm_rows() {
    let (c, v) = (cpu(), vk());
    for (d, rows) in [(256, 7), (640, 3), (1000, 2)] {
        let w = WeightSource::from_f32("norm", 1, d, &rand_vec(d, 5));
        let (cw, vw) = (c.load_weight(&w).unwrap(), v.load_weight(&w).unwrap());
        // residual-stream-like magnitudes (hundreds)
        let x: Vec<f32> = rand_vec(rows * d, 6).iter().map(|a| a * 300.0).collect();
        let (mut cx, mut vx) = bufs(&c, &v, &x);
        c.rms_norm(&mut cx, &cw, rows, 1e-6);
        v.rms_norm(&mut vx, &vw, rows, 1e-6);
        check(
            &format!("rms_norm d={d}"),
            &v.download(&vx, rows * d),
            &cx,
            NMSE_F32,
        );
    }
}

#[test]
fn rope_local_and_scaled_global() {
    let (c, v) = (cpu(), vk());
    for (pos0, base, scale) in [(0, 10_000.0, 1.0), (1234, 1_000_000.0, 8.0)] {
        let (n, heads, d) = (5, 3, 64);
        let x = rand_vec(n * heads * d, 9);
        let (mut cx, mut vx) = bufs(&c, &v, &x);
        let p = RopeParams {
            heads,
            head_dim: d,
            pos0,
            base,
            scale,
        };
        c.rope(&mut cx, n, p);
        v.rope(&mut vx, n, p);
        check(
            &format!("rope pos0={pos0}"),
            &v.download(&vx, n * heads * d),
            &cx,
            NMSE_ELEM,
        );
    }
}

#[test]
fn gelu_mul_add_copy() {
    let (c, v) = (cpu(), vk());
    let len = 3000;
    let g: Vec<f32> = rand_vec(len, 11).iter().map(|a| a * 8.0).collect();
    let up = rand_vec(len, 12);
    let (mut cg, mut vg) = bufs(&c, &v, &g);
    let (cu, vu) = bufs(&c, &v, &up);
    c.gelu_mul(&mut cg, &cu, len);
    v.gelu_mul(&mut vg, &vu, len);
    check("gelu_mul", &v.download(&vg, len), &cg, NMSE_ELEM);
    c.add(&mut cg, &cu, len - 5);
    v.add(&mut vg, &vu, len - 5);
    check("add", &v.download(&vg, len), &cg, NMSE_ELEM);
    // copy is exact against the device's own source (gelu may differ from the CPU by an ulp).
    let mut vd = v.alloc(100);
    v.copy(&vg, 123, &mut vd, 100);
    assert_eq!(v.download(&vd, 100), v.download(&vg, len)[123..223], "copy");
}

/// Prefill then token-by-token decode through a ring smaller than the prefill, and a growing
/// global cache, with and without softcapping: the CPU backend's exact semantics.
#[test]
fn attention_prefill_then_decode_ring_and_global() {
    let (c, v) = (cpu(), vk());
    let (heads, kv_heads, d) = (4, 2, 64);
    let (qd, kd) = (heads * d, kv_heads * d);
    for (window, softcap) in [(Some(6), None), (None, Some(50.0)), (None, None)] {
        let mut ckv = c.new_kv(kd, window);
        let mut vkv = v.new_kv(kd, window);
        // 11-token prefill, then 300 single tokens for the global cache to grow past 256.
        let steps: Vec<(usize, usize)> = match window {
            Some(_) => vec![(0, 11), (11, 1), (12, 1), (13, 3), (16, 1)],
            None => std::iter::once((0, 11))
                .chain((11..300).map(|p| (p, 1)))
                .collect(),
        };
        for (pos0, n) in steps {
            let seed = pos0 as u64 * 3;
            let q = rand_vec(n * qd, seed + 1);
            let k: Vec<f32> = rand_vec(n * kd, seed + 2).iter().map(|a| a * 4.0).collect();
            let vv = rand_vec(n * kd, seed + 3);
            let (cq, vq) = bufs(&c, &v, &q);
            let (ck, vk_) = bufs(&c, &v, &k);
            let (cv, vv_) = bufs(&c, &v, &vv);
            let (mut co, mut vo) = (c.alloc(n * qd), v.alloc(n * qd));
            let p = AttnParams {
                n,
                pos0,
                heads,
                kv_heads,
                head_dim: d,
                window,
                scale: 0.125,
                softcap,
            };
            c.attention(&mut ckv, &cq, &ck, &cv, &mut co, p);
            v.attention(&mut vkv, &vq, &vk_, &vv_, &mut vo, p);
            // Decode steps of the long run: check every 50th to keep lavapipe quick.
            if n > 1 || pos0 % 50 == 0 || window.is_some() {
                check(
                    &format!("attention window={window:?} softcap={softcap:?} pos0={pos0} n={n}"),
                    &v.download(&vo, n * qd),
                    &co,
                    NMSE_F32,
                );
            }
        }
    }
}

/// Split-K attention (flash-decoding: attention_f32 partials + attention_combine_f32): a
/// prefill whose early tokens leave later splits empty, then decode over ~500 keys in up to
/// 8 splits, for Gemma 3's head_dim 256, a GQA shape and a sliding window.
#[test]
fn attention_split_k() {
    let (c, v) = (cpu(), vk());
    for (heads, kv_heads, d, window) in
        [(1, 1, 256, None), (8, 2, 128, None), (2, 1, 64, Some(300))]
    {
        let (qd, kd) = (heads * d, kv_heads * d);
        let mut ckv = c.new_kv(kd, window);
        let mut vkv = v.new_kv(kd, window);
        let steps = [(0, 100), (100, 400), (500, 1), (501, 1), (502, 3)];
        for (pos0, n) in steps {
            let seed = pos0 as u64 * 7 + heads as u64;
            let q = rand_vec(n * qd, seed + 1);
            let k: Vec<f32> = rand_vec(n * kd, seed + 2).iter().map(|a| a * 3.0).collect();
            let vv = rand_vec(n * kd, seed + 3);
            let (cq, vq) = bufs(&c, &v, &q);
            let (ck, vk_) = bufs(&c, &v, &k);
            let (cv, vv_) = bufs(&c, &v, &vv);
            let (mut co, mut vo) = (c.alloc(n * qd), v.alloc(n * qd));
            let p = AttnParams {
                n,
                pos0,
                heads,
                kv_heads,
                head_dim: d,
                window,
                scale: 1.0 / (d as f32).sqrt(),
                softcap: None,
            };
            c.attention(&mut ckv, &cq, &ck, &cv, &mut co, p);
            v.attention(&mut vkv, &vq, &vk_, &vv_, &mut vo, p);
            check(
                &format!("split-K attention heads={heads} d={d} pos0={pos0} n={n}"),
                &v.download(&vo, n * qd),
                &co,
                NMSE_F32,
            );
        }
    }
}

#[test]
fn top_k_on_device_matches_cpu() {
    let (c, v) = (cpu(), vk());
    // 10000: three 4096-candidate workgroups, the last partial; ties at the top.
    let mut x = rand_vec(10_000, 21);
    x[17] = 5.0;
    x[9000] = 5.0;
    x[4096] = 4.0;
    x[5] = f32::NEG_INFINITY;
    let (cx, vx) = bufs(&c, &v, &x);
    for k in [1, 2, 5, 40, 64, 100] {
        assert_eq!(
            v.top_k(&vx, 10_000, k),
            c.top_k(&cx, 10_000, k),
            "top_k k={k}"
        );
    }
    assert_eq!(v.top_k(&vx, 7, 64), c.top_k(&cx, 7, 64), "k > len");
    // Many passes: 300000 values -> 74 workgroups -> 2 -> 1.
    let big = rand_vec(300_000, 22);
    let (cb, vb) = bufs(&c, &v, &big);
    assert_eq!(
        v.top_k(&vb, 300_000, 64),
        c.top_k(&cb, 300_000, 64),
        "top_k 300000"
    );
}

/// Ops record into one command buffer; only the sync points submit.
#[test]
fn one_submission_per_sync_point_and_cached_descriptor_sets() {
    let v = vk();
    let w = weight(QType::BF16, 64, 128, 3);
    let vw = v.load_weight(&w).unwrap();
    let mut x = v.alloc(128);
    v.upload(&rand_vec(128, 1), &mut x);
    let mut o = v.alloc(64);
    let mut acc = v.alloc(64);
    let mut run = || {
        for _ in 0..10 {
            v.matmul(&vw, &x, 1, &mut o);
            v.add(&mut acc, &o, 64);
        }
        v.top_k(&acc, 64, 3)
    };
    let _ = run();
    let (s0, d0, sets0) = v.counters();
    let _ = run();
    let (s1, d1, sets1) = v.counters();
    assert_eq!(s1 - s0, 1, "one submission per step");
    assert!(d1 - d0 >= 11);
    assert_eq!(sets1, sets0, "descriptor sets are reused across steps");
}

/// The benchmark's figures: copy bandwidth (2 x bytes copied per second), resident weight
/// bytes, and per-kind GPU times while profiling.
#[test]
fn copy_bandwidth_weight_bytes_and_op_times() {
    let v = vk();
    let (bw, how) = v.measure_copy_bandwidth_with(8 << 20, 4).unwrap();
    eprintln!("copy bandwidth {:.2} GB/s ({how})", bw / 1e9);
    assert!(bw.is_finite() && bw > 1e6, "copy bandwidth {bw}");
    // The compute-shader copy (copy_f32), an odd size: rounded up to 16 bytes.
    let sbw = v.measure_shader_copy_bandwidth((8 << 20) + 4, 4).unwrap();
    eprintln!("shader copy bandwidth {:.2} GB/s", sbw / 1e9);
    assert!(sbw.is_finite() && sbw > 1e6, "shader copy bandwidth {sbw}");
    // Larger than one binding on lavapipe (128 MiB): capped, not out of bounds.
    let big = v.measure_shader_copy_bandwidth(256 << 20, 1).unwrap();
    assert!(big.is_finite() && big > 1e6);
    let before = v.weight_bytes();
    let w = weight(QType::I4Grouped, 64, 256, 3);
    let vw = v.load_weight(&w).unwrap();
    assert!(
        v.weight_bytes() - before >= w.bytes.len() as u64,
        "weight bytes"
    );
    v.set_profiling(true);
    let mut x = v.alloc(256);
    v.upload(&rand_vec(256, 1), &mut x);
    let mut o = v.alloc(64);
    v.matmul(&vw, &x, 1, &mut o);
    let _ = v.download(&o, 64);
    let times = v.op_times();
    eprintln!("{times:?}");
    if v.device_info().name.contains("llvmpipe") {
        // lavapipe has timestamps: the matvec must show up.
        assert!(times
            .iter()
            .any(|(k, s)| k.starts_with("matvec_i4grouped") && *s >= 0.0));
    }
    v.set_profiling(false);
    v.reset_op_times();
    assert!(v.op_times().is_empty());
}

/// The fused projections (matvec.comp's FUSE_QKV / FUSE_GELU variants for decode; separate
/// matmuls without barriers between them otherwise) against the CPU backend's default
/// compositions, for every weight format, with and without an input rotation, plus a q/k/v
/// triple of mixed formats (not fusable: three matvecs).
#[test]
fn fused_qkv_and_gate_up() {
    fused_cases(&vk(), false);
}

fn is_int(q: QType) -> bool {
    !matches!(q, QType::F32 | QType::F16 | QType::BF16)
}

/// The fused decode ops on int8 activations (matvec3 / matvec_gelu `_q8`: one quantize_x_f32
/// dispatch more, shared by the fused weights).
#[test]
fn fused_qkv_and_gate_up_int8_activations() {
    let v = vk_default();
    assert!(v.int8_activations(), "lavapipe has shaderIntegerDotProduct");
    // The prefill cases compare with NMSE_F32: the portable matmul (matmul_coop_prefill
    // checks the tensor-core one).
    v.set_coop_matmul(false);
    fused_cases(&v, true);
}

/// Decode matvec of every integer format on int8 activations, at the shapes of
/// matvec_workgroup_shapes (1/2/4 rows per workgroup, 64/128 invocations) and with several
/// binding chunks' worth of rows sharing one quantized input.
#[test]
fn matvec_int8_activations() {
    let (c, v) = (cpu(), vk_default());
    assert!(v.int8_activations());
    for q in QType::ALL.into_iter().filter(|&q| is_int(q)) {
        // 320 columns: a width that is no multiple of 128, which the 4-bit and 8-bit formats
        // allow (I2 needs 128-wide super-blocks).
        for (rows, cols) in [(70, 256), (2051, 128), (515, 1536), (300, 6144), (33, 320)] {
            if q == QType::I2Structured && cols % 128 != 0 {
                continue;
            }
            let w = weight(q, rows, cols, q as u64 + rows as u64);
            let (cw, vw) = (c.load_weight(&w).unwrap(), v.load_weight(&w).unwrap());
            // Large and small magnitudes mixed: per-group scales must follow them.
            let x: Vec<f32> = rand_vec(cols, 77)
                .iter()
                .enumerate()
                .map(|(i, a)| a * if (i / 32) % 3 == 0 { 50.0 } else { 0.1 })
                .collect();
            let (cx, vx) = bufs(&c, &v, &x);
            let (mut co, mut vo) = (c.alloc(rows), v.alloc(rows));
            let (_, d0, _) = v.counters();
            c.matmul(&cw, &cx, 1, &mut co);
            v.matmul(&vw, &vx, 1, &mut vo);
            let (_, d1, _) = v.counters();
            assert_eq!(d1 - d0, 2, "{}: quantize + matvec", q.name());
            check(
                &format!("q8 matvec {} {rows}x{cols}", q.name()),
                &v.download(&vo, rows),
                &co,
                NMSE_Q8,
            );
        }
    }
}

fn fused_cases(v: &VulkanBackend, q8: bool) {
    let c = cpu();
    let cases: Vec<(QType, usize, Option<(u32, u64)>)> = QType::ALL
        .iter()
        .map(|&q| (q, 256, None))
        .chain([
            (QType::F16, 250, None),
            (QType::I2Structured, 384, Some((128, 7))),
            (QType::I4Grouped, 384, Some((64, 3))),
        ])
        .collect();
    for (q, cols, rot) in cases {
        let mk = |rows: usize, s: u64| {
            let mut w = weight(q, rows, cols, s);
            if let Some((block, seed)) = rot {
                w.transform = Transform::BlockHadamard { block, seed };
            }
            w
        };
        // 70 / 20 / 44 rows: segments that end mid-workgroup.
        let ws = [mk(70, 1), mk(20, 2), mk(44, 3)];
        let cw: Vec<_> = ws.iter().map(|w| c.load_weight(w).unwrap()).collect();
        let vw: Vec<_> = ws.iter().map(|w| v.load_weight(w).unwrap()).collect();
        let (cg, cu) = (
            c.load_weight(&mk(90, 4)).unwrap(),
            c.load_weight(&mk(90, 5)).unwrap(),
        );
        let (vg, vu) = (
            v.load_weight(&mk(90, 4)).unwrap(),
            v.load_weight(&mk(90, 5)).unwrap(),
        );
        for n in [1, 3] {
            let what = format!("{} cols={cols} rot={rot:?} n={n}", q.name());
            let x: Vec<f32> = rand_vec(n * cols, 60 + n as u64)
                .iter()
                .map(|a| a * 4.0)
                .collect();
            let (cx, vx) = bufs(&c, &v, &x);
            let mut co: Vec<_> = ws.iter().map(|w| c.alloc(n * w.rows)).collect();
            let mut vo: Vec<_> = ws.iter().map(|w| v.alloc(n * w.rows)).collect();
            let (_, d0, _) = v.counters();
            c.matmul_many(
                &[&cw[0], &cw[1], &cw[2]],
                &cx,
                n,
                &mut co.iter_mut().collect::<Vec<_>>(),
            );
            v.matmul_many(
                &[&vw[0], &vw[1], &vw[2]],
                &vx,
                n,
                &mut vo.iter_mut().collect::<Vec<_>>(),
            );
            let (_, d1, _) = v.counters();
            let q8n = q8 && n == 1 && is_int(q);
            let tol = if q8n { NMSE_Q8 } else { NMSE_F32 };
            if n == 1 {
                let want = 1 + rot.is_some() as u64 + q8n as u64;
                assert_eq!(d1 - d0, want, "{what}: q/k/v in one dispatch");
            }
            for (i, w) in ws.iter().enumerate() {
                check(
                    &format!("matmul_many {what} weight {i}"),
                    &v.download(&vo[i], n * w.rows),
                    &co[i],
                    tol,
                );
            }
            let (mut cgo, mut cuo) = (c.alloc(n * 90), c.alloc(n * 90));
            let (mut vgo, mut vuo) = (v.alloc(n * 90), v.alloc(n * 90));
            let (_, d0, _) = v.counters();
            c.gate_up(&cg, &cu, &cx, n, 90, &mut cgo, &mut cuo);
            v.gate_up(&vg, &vu, &vx, n, 90, &mut vgo, &mut vuo);
            let (_, d1, _) = v.counters();
            if n == 1 {
                let want = 1 + rot.is_some() as u64 + q8n as u64;
                assert_eq!(d1 - d0, want, "{what}: gate/up/gelu in one dispatch");
            }
            check(
                &format!("gate_up {what}"),
                &v.download(&vgo, n * 90),
                &cgo,
                if q8n { 3.0 * NMSE_Q8 } else { NMSE_F32 },
            );
        }
    }
    // Mixed formats: three matvecs, same results.
    let ws = [
        weight(QType::I4Grouped, 40, 256, 8),
        weight(QType::I8Sym, 24, 256, 9),
        weight(QType::I4Grouped, 24, 256, 10),
    ];
    let cw: Vec<_> = ws.iter().map(|w| c.load_weight(w).unwrap()).collect();
    let vw: Vec<_> = ws.iter().map(|w| v.load_weight(w).unwrap()).collect();
    let x = rand_vec(256, 77);
    let (cx, vx) = bufs(&c, &v, &x);
    let mut co: Vec<_> = ws.iter().map(|w| c.alloc(w.rows)).collect();
    let mut vo: Vec<_> = ws.iter().map(|w| v.alloc(w.rows)).collect();
    c.matmul_many(
        &[&cw[0], &cw[1], &cw[2]],
        &cx,
        1,
        &mut co.iter_mut().collect::<Vec<_>>(),
    );
    v.matmul_many(
        &[&vw[0], &vw[1], &vw[2]],
        &vx,
        1,
        &mut vo.iter_mut().collect::<Vec<_>>(),
    );
    for (i, w) in ws.iter().enumerate() {
        check(
            &format!("matmul_many mixed weight {i}"),
            &v.download(&vo[i], w.rows),
            &co[i],
            if q8 { NMSE_Q8 } else { NMSE_F32 },
        );
    }
}

/// rms_norm_into, add_rms_norm (with and without the next pre-norm) and qk_norm_rope against
/// the CPU backend's default compositions (copy + rms_norm, rms_norm + add (+ copy + rms_norm),
/// rms_norm x2 + rope x2).
#[test]
fn fused_norms() {
    let (c, v) = (cpu(), vk());
    for (d, rows) in [(256, 3), (640, 2), (1000, 1)] {
        let nw = |s: u64| WeightSource::from_f32("norm", 1, d, &rand_vec(d, s));
        let (w1, w2) = (nw(21), nw(22));
        let (cw1, vw1) = (c.load_weight(&w1).unwrap(), v.load_weight(&w1).unwrap());
        let (cw2, vw2) = (c.load_weight(&w2).unwrap(), v.load_weight(&w2).unwrap());
        let x: Vec<f32> = rand_vec(rows * d, 23).iter().map(|a| a * 300.0).collect();
        let y: Vec<f32> = rand_vec(rows * d, 24).iter().map(|a| a * 50.0).collect();
        let (mut cx, mut vx) = bufs(&c, &v, &x);
        let (mut cy, mut vy) = bufs(&c, &v, &y);
        let (mut ca, mut va) = (c.alloc(rows * d), v.alloc(rows * d));
        c.rms_norm_into(&cx, &cw1, rows, d, 1e-6, &mut ca);
        v.rms_norm_into(&vx, &vw1, rows, d, 1e-6, &mut va);
        check(
            &format!("rms_norm_into d={d}"),
            &v.download(&va, rows * d),
            &ca,
            NMSE_F32,
        );
        check(
            &format!("rms_norm_into keeps x d={d}"),
            &v.download(&vx, rows * d),
            &x,
            0.0,
        );
        for next in [Some((&cw2, &vw2)), None] {
            let what = format!("add_rms_norm d={d} next={}", next.is_some());
            c.add_rms_norm(&mut cx, &mut cy, &cw1, next.map(|n| n.0), rows, d, 1e-6);
            v.add_rms_norm(&mut vx, &mut vy, &vw1, next.map(|n| n.1), rows, d, 1e-6);
            check(
                &format!("{what} x"),
                &v.download(&vx, rows * d),
                &cx,
                NMSE_F32,
            );
            check(
                &format!("{what} y"),
                &v.download(&vy, rows * d),
                &cy,
                NMSE_F32,
            );
        }
    }
    for (hd, pos0) in [(64, 0), (256, 77)] {
        let (n, heads, kv_heads) = (3, 4, 2);
        let (wq, wk) = (
            WeightSource::from_f32("q_norm", 1, hd, &rand_vec(hd, 31)),
            WeightSource::from_f32("k_norm", 1, hd, &rand_vec(hd, 32)),
        );
        let (cwq, vwq) = (c.load_weight(&wq).unwrap(), v.load_weight(&wq).unwrap());
        let (cwk, vwk) = (c.load_weight(&wk).unwrap(), v.load_weight(&wk).unwrap());
        let q: Vec<f32> = rand_vec(n * heads * hd, 33)
            .iter()
            .map(|a| a * 20.0)
            .collect();
        let k: Vec<f32> = rand_vec(n * kv_heads * hd, 34)
            .iter()
            .map(|a| a * 20.0)
            .collect();
        let (mut cq, mut vq) = bufs(&c, &v, &q);
        let (mut ck, mut vk_) = bufs(&c, &v, &k);
        let p = RopeParams {
            heads,
            head_dim: hd,
            pos0,
            base: 10_000.0,
            scale: 1.0,
        };
        c.qk_norm_rope(&mut cq, &mut ck, &cwq, &cwk, n, kv_heads, p, 1e-6);
        v.qk_norm_rope(&mut vq, &mut vk_, &vwq, &vwk, n, kv_heads, p, 1e-6);
        let what = format!("qk_norm_rope hd={hd}");
        check(
            &format!("{what} q"),
            &v.download(&vq, n * heads * hd),
            &cq,
            NMSE_F32,
        );
        check(
            &format!("{what} k"),
            &v.download(&vk_, n * kv_heads * hd),
            &ck,
            NMSE_F32,
        );
    }
}

/// Decode on int8 activations with the quantization folded into the producers: the norms write
/// the int8 form of their output (Hadamard-rotated when the gate/up that read it are stored
/// rotated) and attention's combine pass writes o_proj's, so the matvecs after them need no
/// quantize_x_f32 / hadamard_f32 dispatch once the backend has seen which rotation they want
/// (the first call falls back). Results against the CPU backend's exact composition.
#[test]
fn norms_and_attention_write_int8_inputs() {
    let (c, v) = (cpu(), vk_default());
    assert!(v.int8_activations());
    let d = 256;
    let nw = |s: u64| WeightSource::from_f32("norm", 1, d, &rand_vec(d, s));
    let (w1, w2) = (nw(41), nw(42));
    let (cw1, vw1) = (c.load_weight(&w1).unwrap(), v.load_weight(&w1).unwrap());
    let (cw2, vw2) = (c.load_weight(&w2).unwrap(), v.load_weight(&w2).unwrap());
    let qkv = [
        weight(QType::I4Grouped, 64, d, 43),
        weight(QType::I4Grouped, 32, d, 44),
        weight(QType::I4Grouped, 32, d, 45),
    ];
    let cq: Vec<_> = qkv.iter().map(|w| c.load_weight(w).unwrap()).collect();
    let vq: Vec<_> = qkv.iter().map(|w| v.load_weight(w).unwrap()).collect();
    let rotated = |s: u64| hadamard_weight(QType::I2Structured, 96, d, s, 9);
    let (g, up) = (rotated(46), rotated(47));
    let (cg, cu) = (c.load_weight(&g).unwrap(), c.load_weight(&up).unwrap());
    let (vg, vu) = (v.load_weight(&g).unwrap(), v.load_weight(&up).unwrap());
    let down = weight(QType::I8Sym, 40, 96, 48);
    let (c_down, v_down) = (c.load_weight(&down).unwrap(), v.load_weight(&down).unwrap());
    let dispatches = |v: &VulkanBackend| v.counters().1;
    for round in 0..2 {
        let x: Vec<f32> = rand_vec(d, 50 + round).iter().map(|a| a * 30.0).collect();
        let y: Vec<f32> = rand_vec(d, 60 + round).iter().map(|a| a * 5.0).collect();
        let (mut cx, mut vx) = bufs(&c, &v, &x);
        let (mut cy, mut vy) = bufs(&c, &v, &y);
        // Pre-norm, then q/k/v of its output.
        let (mut ca, mut va) = (c.alloc(d), v.alloc(d));
        let mut co: Vec<_> = qkv.iter().map(|w| c.alloc(w.rows)).collect();
        let mut vo: Vec<_> = qkv.iter().map(|w| v.alloc(w.rows)).collect();
        c.rms_norm_into(&cx, &cw1, 1, d, 1e-6, &mut ca);
        c.matmul_many(
            &[&cq[0], &cq[1], &cq[2]],
            &ca,
            1,
            &mut co.iter_mut().collect::<Vec<_>>(),
        );
        let d0 = dispatches(&v);
        v.rms_norm_into(&vx, &vw1, 1, d, 1e-6, &mut va);
        v.matmul_many(
            &[&vq[0], &vq[1], &vq[2]],
            &va,
            1,
            &mut vo.iter_mut().collect::<Vec<_>>(),
        );
        // The norm wrote the (unrotated) int8 input: norm, matvec3.
        assert_eq!(dispatches(&v) - d0, 2, "round {round}: norm + q/k/v");
        check("norm output", &v.download(&va, d), &ca, NMSE_F32);
        for (i, w) in qkv.iter().enumerate() {
            check(
                &format!("round {round}: q/k/v {i} from the norm's int8 output"),
                &v.download(&vo[i], w.rows),
                &co[i],
                NMSE_Q8,
            );
        }
        // Post-norm + residual + pre-FFN norm, then the rotated gate/up of its output.
        let (mut cgo, mut cuo) = (c.alloc(96), c.alloc(96));
        let (mut vgo, mut vuo) = (v.alloc(96), v.alloc(96));
        c.add_rms_norm(&mut cx, &mut cy, &cw1, Some(&cw2), 1, d, 1e-6);
        c.gate_up(&cg, &cu, &cy, 1, 96, &mut cgo, &mut cuo);
        let d0 = dispatches(&v);
        v.add_rms_norm(&mut vx, &mut vy, &vw1, Some(&vw2), 1, d, 1e-6);
        v.gate_up(&vg, &vu, &vy, 1, 96, &mut vgo, &mut vuo);
        // Round 0: norm, hadamard, quantize_x, matvec_gelu; round 1: norm, matvec_gelu.
        let want = if round == 0 { 4 } else { 2 };
        assert_eq!(dispatches(&v) - d0, want, "round {round}: norm + gate/up");
        // down_proj of the gate/up output: quantize_x_f32, then the matvec (shaders/README.md
        // says why gate/up does not write the int8 form itself).
        let (mut cdo, mut vdo) = (c.alloc(40), v.alloc(40));
        c.matmul(&c_down, &cgo, 1, &mut cdo);
        let d0 = dispatches(&v);
        v.matmul(&v_down, &vgo, 1, &mut vdo);
        assert_eq!(dispatches(&v) - d0, 2, "round {round}: down_proj");
        check("add_rms_norm x", &v.download(&vx, d), &cx, NMSE_F32);
        check("add_rms_norm y", &v.download(&vy, d), &cy, NMSE_F32);
        check(
            &format!("round {round}: gate/up from the norm's rotated int8 output"),
            &v.download(&vgo, 96),
            &cgo,
            3.0 * NMSE_Q8,
        );
        check(
            &format!("round {round}: down_proj of gate/up's output"),
            &v.download(&vdo, 40),
            &cdo,
            3.0 * NMSE_Q8,
        );

        // A layer's end (no next norm) then the next pre-norm of the same x into the same y:
        // one dispatch (the first is deferred and fused), same x and y.
        c.add_rms_norm(&mut cx, &mut cy, &cw2, None, 1, d, 1e-6);
        c.rms_norm_into(&cx, &cw1, 1, d, 1e-6, &mut cy);
        let d0 = dispatches(&v);
        v.add_rms_norm(&mut vx, &mut vy, &vw2, None, 1, d, 1e-6);
        v.rms_norm_into(&vx, &vw1, 1, d, 1e-6, &mut vy);
        assert_eq!(
            dispatches(&v) - d0,
            1,
            "round {round}: layer end + pre-norm"
        );
        check("layer end x", &v.download(&vx, d), &cx, NMSE_F32);
        check("next pre-norm y", &v.download(&vy, d), &cy, NMSE_F32);
        // Deferred, then something else reads x: recorded before it.
        c.add_rms_norm(&mut cx, &mut cy, &cw2, None, 1, d, 1e-6);
        v.add_rms_norm(&mut vx, &mut vy, &vw2, None, 1, d, 1e-6);
        check("deferred layer end x", &v.download(&vx, d), &cx, NMSE_F32);
        check("deferred layer end y", &v.download(&vy, d), &cy, NMSE_F32);
    }
    // QK-norm + RoPE, attention decode (split-K), then o_proj on its output: the norm, RoPE
    // and merge run inside attention_f32, and no quantize_x.
    let (heads, kv_heads, hd) = (4, 2, 64);
    let o = weight(QType::I4PerChannel, 48, heads * hd, 48);
    let (c_o, v_o) = (c.load_weight(&o).unwrap(), v.load_weight(&o).unwrap());
    let (wq, wk) = (
        WeightSource::from_f32("q_norm", 1, hd, &rand_vec(hd, 61)),
        WeightSource::from_f32("k_norm", 1, hd, &rand_vec(hd, 62)),
    );
    let (cwq, vwq) = (c.load_weight(&wq).unwrap(), v.load_weight(&wq).unwrap());
    let (cwk, vwk) = (c.load_weight(&wk).unwrap(), v.load_weight(&wk).unwrap());
    let mut ckv = c.new_kv(kv_heads * hd, None);
    let mut vkv = v.new_kv(kv_heads * hd, None);
    for (pos0, n) in [(0, 40), (40, 1), (41, 1), (42, 1)] {
        let q: Vec<f32> = rand_vec(n * heads * hd, 70 + pos0 as u64)
            .iter()
            .map(|a| a * 20.0)
            .collect();
        let k: Vec<f32> = rand_vec(n * kv_heads * hd, 80 + pos0 as u64)
            .iter()
            .map(|a| a * 20.0)
            .collect();
        let vv = rand_vec(n * kv_heads * hd, 90 + pos0 as u64);
        let (mut cq, mut vq) = bufs(&c, &v, &q);
        let (mut ck, mut vk_) = bufs(&c, &v, &k);
        let (cv, vv_) = bufs(&c, &v, &vv);
        let (mut ca, mut va) = (c.alloc(n * heads * hd), v.alloc(n * heads * hd));
        let p = AttnParams {
            n,
            pos0,
            heads,
            kv_heads,
            head_dim: hd,
            window: None,
            scale: 0.125,
            softcap: None,
        };
        let rope = RopeParams {
            heads,
            head_dim: hd,
            pos0,
            base: 10_000.0,
            scale: 1.0,
        };
        c.qk_norm_rope(&mut cq, &mut ck, &cwq, &cwk, n, kv_heads, rope, 1e-6);
        c.attention(&mut ckv, &cq, &ck, &cv, &mut ca, p);
        let d0 = dispatches(&v);
        v.qk_norm_rope(&mut vq, &mut vk_, &vwq, &vwk, n, kv_heads, rope, 1e-6);
        v.attention(&mut vkv, &vq, &vk_, &vv_, &mut va, p);
        if n > 1 {
            continue;
        }
        let (mut cout, mut vout) = (c.alloc(48), v.alloc(48));
        c.matmul(&c_o, &ca, 1, &mut cout);
        v.matmul(&v_o, &va, 1, &mut vout);
        assert_eq!(
            dispatches(&v) - d0,
            2,
            "attention (with QK-norm, RoPE, merge), o_proj matvec"
        );
        check(
            &format!("attention pos0={pos0}"),
            &v.download(&va, heads * hd),
            &ca,
            NMSE_F32,
        );
        check(
            &format!("o_proj from attention's int8 output pos0={pos0}"),
            &v.download(&vout, 48),
            &cout,
            NMSE_Q8,
        );
    }
}

/// add_rms_norm's rotated int8 output for Hadamard blocks of at most 4 x the subgroup size
/// (rownorm.glsl's shuffle path; lavapipe's subgroups are 8 wide, so blocks of 16 and 32 here,
/// 128 in the test above goes through shared memory on lavapipe and shuffles on NVIDIA).
#[test]
fn norm_rotation_by_subgroup_shuffles() {
    let (c, v) = (cpu(), vk_default());
    let d = 256;
    for block in [16, 32] {
        let nw = |s: u64| WeightSource::from_f32("norm", 1, d, &rand_vec(d, s));
        let (w1, w2) = (nw(51), nw(52));
        let (cw1, vw1) = (c.load_weight(&w1).unwrap(), v.load_weight(&w1).unwrap());
        let (cw2, vw2) = (c.load_weight(&w2).unwrap(), v.load_weight(&w2).unwrap());
        let rotated = |s: u64| {
            let mut w = weight(QType::I4Grouped, 64, d, s);
            w.transform = Transform::BlockHadamard { block, seed: 5 };
            w
        };
        let (g, up) = (rotated(53), rotated(54));
        let (cg, cu) = (c.load_weight(&g).unwrap(), c.load_weight(&up).unwrap());
        let (vg, vu) = (v.load_weight(&g).unwrap(), v.load_weight(&up).unwrap());
        for round in 0..2 {
            let x: Vec<f32> = rand_vec(d, 55 + round).iter().map(|a| a * 30.0).collect();
            let y: Vec<f32> = rand_vec(d, 65 + round).iter().map(|a| a * 5.0).collect();
            let (mut cx, mut vx) = bufs(&c, &v, &x);
            let (mut cy, mut vy) = bufs(&c, &v, &y);
            let (mut cgo, mut cuo) = (c.alloc(64), c.alloc(64));
            let (mut vgo, mut vuo) = (v.alloc(64), v.alloc(64));
            c.add_rms_norm(&mut cx, &mut cy, &cw1, Some(&cw2), 1, d, 1e-6);
            c.gate_up(&cg, &cu, &cy, 1, 64, &mut cgo, &mut cuo);
            let d0 = v.counters().1;
            v.add_rms_norm(&mut vx, &mut vy, &vw1, Some(&vw2), 1, d, 1e-6);
            v.gate_up(&vg, &vu, &vy, 1, 64, &mut vgo, &mut vuo);
            let want = if round == 0 { 4 } else { 2 };
            assert_eq!(v.counters().1 - d0, want, "block {block} round {round}");
            check(
                &format!("block {block} round {round}: gate/up from the shuffled rotation"),
                &v.download(&vgo, 64),
                &cgo,
                3.0 * NMSE_Q8,
            );
        }
    }
}

/// Prefill matmul speed on Gemma 3 27B shapes (27B `optimal` formats), per kernel and tile:
/// GPU time per call from the profiler and TFLOP/s. For a GPU (`--ignored --nocapture`); weight
/// rows are 256 quantized random rows repeated, which costs the kernels the same as distinct
/// rows.
#[test]
#[ignore]
fn matmul_prefill_speed_27b_shapes() {
    let v = vk_default();
    println!("{}", v.device_info());
    let shapes = [
        ("q", QType::I4Grouped, 4096, 5376),
        ("k", QType::I4Grouped, 2048, 5376),
        ("o", QType::I4PerChannel, 5376, 4096),
        ("gate", QType::I2Structured, 21504, 5376),
        ("down", QType::I4Grouped, 5376, 21504),
    ];
    let coop = v.device_info().coop_prefill;
    let mut kernels: Vec<(&str, bool, Option<&str>)> = Vec::new();
    if coop {
        kernels.extend([
            ("coop auto", true, None),
            ("coop 128x64", true, Some("128x64")),
            ("coop 128x128s8", true, Some("128x128s8")),
            ("coop 64x64", true, Some("64x64")),
            ("coop 128x128", true, Some("128x128")),
        ]);
    }
    // Last per shape: on the H100 the first coop timings after a long portable run read
    // several times slower (cause not found; bench --profile does not show it), and they still
    // do for the next shape's first kernels.
    kernels.push(("portable", false, None));
    for (name, q, rows, cols) in shapes {
        let base = weight(q, 256, cols, 3);
        let rb = q.row_bytes(cols).unwrap();
        let mut bytes = Vec::with_capacity(rows * rb);
        for r in 0..rows {
            bytes.extend_from_slice(&base.bytes[(r % 256) * rb..(r % 256 + 1) * rb]);
        }
        let mut w = WeightSource::from_f32(name, rows, cols, &[]);
        w.qtype = q;
        w.bytes = mixq_format::SharedBytes::from_vec(bytes);
        let vw = v.load_weight(&w).unwrap();
        for n in [128usize, 512] {
            let x = rand_vec(n * cols, 9);
            let mut vx = v.alloc(n * cols);
            v.upload(&x, &mut vx);
            let mut vo = v.alloc(n * rows);
            for &(kname, on, tile) in &kernels {
                if !on && n > 128 {
                    continue;
                }
                v.set_coop_matmul(on);
                v.set_coop_tile(tile).unwrap();
                // Warm-up long enough for the GPU to leave its idle clocks.
                let reps = if on { 20 } else { 3 };
                for _ in 0..reps {
                    v.matmul(&vw, &vx, n, &mut vo);
                }
                v.download(&vo, 1);
                v.set_profiling(true);
                v.reset_op_times();
                for _ in 0..reps {
                    v.matmul(&vw, &vx, n, &mut vo);
                }
                let stats = v.op_stats();
                v.set_profiling(false);
                let mm: f64 = stats
                    .iter()
                    .filter(|s| s.0.starts_with("matmul"))
                    .map(|s| s.1)
                    .sum::<f64>()
                    / reps as f64;
                let all: f64 = stats.iter().map(|s| s.1).sum::<f64>() / reps as f64;
                let flops = 2.0 * (rows * cols * n) as f64;
                println!(
                    "{name:>5} {:<13} {rows:>5}x{cols:<5} n={n:<4} {kname:<13} matmul {:8.1} us {:6.1} TFLOP/s, with input prep {:8.1} us",
                    q.name(),
                    mm * 1e6,
                    flops / mm / 1e12,
                    all * 1e6
                );
            }
        }
    }
    v.set_coop_matmul(true);
    v.set_coop_tile(None).unwrap();
}
