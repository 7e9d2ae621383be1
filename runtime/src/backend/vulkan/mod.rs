//! The Vulkan backend (ash): the whole Gemma 3 step on the GPU, recorded into one command
//! buffer per step and submitted at the sync points (`download`, `top_k`).
//!
//! - [`device`]: instance, device choice, [`list_devices`] for `mixq-run devices`.
//! - [`memory`]: memory types by intent, the weight arena (rows split to fit one binding), the
//!   activation pool.
//! - [`pipelines`]: pipelines from the SPIR-V table build.rs embeds; descriptor-set cache.
//! - [`ops`]: the command recorder (barriers, dispatch, copies, submit + wait).
//!
//! This file implements [`Backend`]: each op picks its shader (shaders/README.md lists them)
//! and records it. Activations, the residual stream and norms are f32; weights stay in their
//! stored format (F32/F16/BF16 or a .mixq quant type) and are decoded in the kernels.
//!
//! The trait's ops return no `Result`: a Vulkan error while recording or at a sync point
//! (device lost, out of device memory) panics with the error, the only option the trait leaves.

pub mod device;
pub mod memory;
pub mod ops;
pub mod pipelines;

use super::{AttnParams, Backend, RopeParams};
use crate::weights::WeightSource;
use anyhow::{bail, Result};
use ash::vk;
pub use device::{list_devices, DeviceInfo};
use device::{Device, Instance};
use memory::{split_rows, Arena, Pool, RawBuf, WeightChunk, PAD};
use mixq_format::quant::{dequantize_row, hadamard_signs, QType, Transform};
use ops::{grid, Recorder};
use std::sync::{Arc, Mutex, MutexGuard};

/// Everything device-side, shared by the backend and the buffers/weights it hands out (they
/// return memory to the pool on drop, possibly after the backend itself is gone).
pub(crate) struct Shared {
    dev: Device,
    pool: Mutex<Pool>,
    arena: Mutex<Arena>,
    rec: Mutex<Recorder>,
    /// Largest byte range one storage-buffer binding may cover.
    max_binding: u64,
    /// Decode matvecs of integer formats run on int8 activations (`*_{w}_q8`); on by default
    /// where the device has integer dot products ([`VulkanBackend::set_int8_activations`]).
    q8: std::sync::atomic::AtomicBool,
    /// Prefill matmuls run on the tensor cores (matmul_coop.comp) where the device has them;
    /// on by default ([`VulkanBackend::set_coop_matmul`]).
    coop: std::sync::atomic::AtomicBool,
    /// matmul_coop's tile: 0 picks by shape ([`coop_tile`]), i > 0 is `COOP_TILES[i - 1]`
    /// (`MIXQ_VK_COOP_TILE` = "128x64", ..., or [`VulkanBackend::set_coop_tile`]).
    coop_tile: std::sync::atomic::AtomicUsize,
    /// Defer a layer's last add_rms_norm to fuse it with the next pre-norm (on unless
    /// `MIXQ_VK_DEFER_NORM=0`; [`VulkanBackend::try_add_rms_norm`]).
    defer_norms: bool,
    /// Fold a decode step's QK-norm + RoPE and split merge into attention_f32 (on unless
    /// `MIXQ_VK_FUSE_ATTN=0`; [`VulkanBackend::try_attention`]).
    fuse_attention: bool,
    /// Dropped last: the device is destroyed in Drop, before the instance.
    instance: Instance,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: the last handle is gone; after waiting for idle no command is pending, and
        // objects are destroyed children first (recorder, pooled buffers, arena, device).
        unsafe {
            let _ = self.dev.device.device_wait_idle();
            self.rec.get_mut().unwrap().destroy(&self.dev);
            self.pool.get_mut().unwrap().destroy_all(&self.dev);
            self.arena.get_mut().unwrap().destroy(&self.dev);
            self.dev.device.destroy_device(None);
        }
        let _ = &self.instance;
    }
}

/// An f32 activation buffer in device memory (from the pool).
pub struct VkBuf {
    raw: Option<RawBuf>,
    /// f32 values requested.
    len: usize,
    shared: Arc<Shared>,
}

impl VkBuf {
    fn buffer(&self) -> vk::Buffer {
        self.raw.as_ref().unwrap().buffer
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for VkBuf {
    fn drop(&mut self) {
        if let Some(raw) = self.raw.take() {
            if let Ok(mut pool) = self.shared.pool.lock() {
                pool.give(raw);
            }
        }
    }
}

/// What a dependent step costs ([`VulkanBackend::measure_sync_costs`]).
#[derive(Debug, Clone, Copy)]
pub struct SyncCosts {
    /// Seconds per tiny dispatch in a chain with a barrier between each.
    pub dispatch: f64,
    /// Seconds per device-wide barrier inside one dispatch of `groups` workgroups (one per
    /// SM); `None` where the residency of that many is not known, or a workgroup gave up
    /// waiting (the probe's spin is bounded).
    pub grid_barrier: Option<f64>,
    pub groups: u32,
    /// "gpu timestamps" or "wall clock".
    pub how: &'static str,
}

/// A weight resident on the device: its rows in one or more buffers (see memory.rs).
pub struct VkWeight {
    qtype: QType,
    rows: usize,
    cols: usize,
    /// Bytes per device row: the stored row repacked with 16-byte aligned codes
    /// ([`DeviceRows`]).
    stride: usize,
    /// Byte offset of the codes in a device row.
    codes_at: usize,
    chunks: Vec<WeightChunk>,
    /// 1-D tensors (norm weights) decoded to f32 once, as the CPU backend does.
    vector: Option<VkBuf>,
    /// Stored as W·H: the input is rotated first (hadamard_f32.comp).
    rotation: Option<Rotation>,
}

impl VkWeight {
    /// Binding chunk `i`'s buffer and bytes, for the norms' L2 prefetch ([`Recorder::mv_log`]);
    /// no bytes of chunk 0's buffer when there is no chunk `i`.
    fn chunk_bytes(&self, i: usize) -> (vk::Buffer, u64) {
        self.chunks.get(i).map_or((self.chunks[0].buffer, 0), |c| {
            (c.buffer, (c.rows * self.stride) as u64)
        })
    }
}

/// The block Hadamard rotation a weight's input undergoes (formats/src/quant/hadamard.rs).
pub struct Rotation {
    block: usize,
    seed: u64,
    /// The per-column signs s_i = ±1.0, uploaded at load (owned by the recorder, shared by
    /// every weight of the same width and seed: [`Recorder::signs`]).
    signs: vk::Buffer,
}

/// One layer's KV cache on the device.
pub struct VkKv {
    kv_dim: usize,
    window: Option<usize>,
    len: usize,
    /// Positions the buffers hold (the ring size for sliding layers).
    cap: usize,
    k: VkBuf,
    v: VkBuf,
}

pub struct VulkanBackend {
    shared: Arc<Shared>,
    /// How weights reach device memory, for describe().
    upload_path: &'static str,
}

impl Drop for VulkanBackend {
    fn drop(&mut self) {
        // Flush so the recorder's per-step buffers go back to the pool (they hold `shared`).
        if let Ok(mut rec) = self.shared.rec.lock() {
            let _ = rec.submit_wait(&self.shared.dev);
        }
    }
}

/// Shader name of an op with one variant per weight format.
fn variant(op: &str, q: QType) -> &'static str {
    variant_act(op, q, "f32")
}

/// Shader name of an op for weight format `q` and activation kind `act` ("f32", or "q8": int8
/// activations from quantize_x_f32, integer formats only).
fn variant_act(op: &str, q: QType, act: &str) -> &'static str {
    shader_named(&format!("{op}_{}_{act}", format_tag(q)))
}

/// The weight format's part of shader names (build.rs `WEIGHT_FORMATS`).
fn format_tag(q: QType) -> &'static str {
    match q {
        QType::F32 => "f32",
        QType::F16 => "f16",
        QType::BF16 => "bf16",
        QType::I8Sym => "i8sym",
        QType::I8Asym => "i8asym",
        QType::I4Grouped => "i4grouped",
        QType::I4PerChannel => "i4perchannel",
        QType::I2Structured => "i2structured",
        QType::I4Grouped32 => "i4grouped32",
        QType::I4Grouped16 => "i4grouped16",
    }
}

/// The static name of shader `name` in build.rs's table (leak-free lookup); a missing one is a
/// build.rs/backend mismatch.
fn shader_named(name: &str) -> &'static str {
    pipelines::SHADERS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(n, _)| *n)
        .unwrap_or_else(|| panic!("shader {name} missing from build.rs's table"))
}

/// Shader name of matmul_coop for weight format `q` and tile `tile` (build.rs `COOP_TILES`).
fn coop_variant(q: QType, tile: &str) -> &'static str {
    shader_named(&format!("matmul_coop_{}_f32_{tile}", format_tag(q)))
}

/// How a weight's rows lie on the device: each stored row (formats/SPEC.md,
/// `[params][codes]`) with its params padded to 16 bytes and the row padded to 16 bytes, so
/// every row and every code array starts 16-byte aligned and matvec.comp reads codes as `uvec4`.
/// F32/F16/BF16 rows have no params: only the row end is padded.
struct DeviceRows {
    row_bytes: usize,
    params: usize,
    codes_at: usize,
    stride: usize,
}

impl DeviceRows {
    fn new(q: QType, cols: usize, row_bytes: usize) -> DeviceRows {
        let params = q.row_param_bytes(cols);
        let codes_at = params.next_multiple_of(16);
        let stride = codes_at + (row_bytes - params).next_multiple_of(16);
        DeviceRows {
            row_bytes,
            params,
            codes_at,
            stride,
        }
    }

    /// Stored rows are already the device image (no padding to add): the device can read the
    /// file's bytes as they are.
    fn same_as_stored(&self) -> bool {
        self.stride == self.row_bytes && self.codes_at == self.params
    }

    /// The device image of whole stored rows (zero padding).
    fn repack(&self, rows: &[u8]) -> Vec<u8> {
        let n = rows.len() / self.row_bytes;
        let mut out = vec![0u8; n * self.stride];
        for (src, dst) in rows
            .chunks_exact(self.row_bytes)
            .zip(out.chunks_exact_mut(self.stride))
        {
            dst[..self.params].copy_from_slice(&src[..self.params]);
            dst[self.codes_at..self.codes_at + self.row_bytes - self.params]
                .copy_from_slice(&src[self.params..]);
        }
        out
    }
}

/// Zeroed counters, one per head, for attention_f32's merge by the last split to finish
/// ([`VulkanBackend::attention_counters`]).
const COUNTERS: usize = 1024;

/// matmul_coop's tile shapes (runtime/build.rs `COOP_TILES`): (name, weight rows, tokens, k
/// per step).
const COOP_TILES: [(&str, usize, usize, usize); 4] = [
    ("128x64", 128, 64, 32),
    ("128x128s8", 128, 128, 32),
    ("64x64", 64, 64, 32),
    ("128x128", 128, 128, 32),
];

/// Workgroups a matmul_coop dispatch should have to fill the GPU: two per SM of an H100 (132
/// SMs). Smaller grids split k ([`coop_splits`]).
const COOP_MIN_GROUPS: usize = 264;

/// k splits of a matmul_coop with `groups` output tiles and `steps` k steps: doubled while the
/// grid is under [`COOP_MIN_GROUPS`] and each split keeps >= 32 steps, at most 8 (the partial
/// sums cost splits x n x rows x 8 bytes of traffic and one more dispatch).
fn coop_splits(groups: usize, steps: usize) -> usize {
    let mut splits = 1;
    while splits < 8 && groups * splits < COOP_MIN_GROUPS && steps / (2 * splits) >= 32 {
        splits *= 2;
    }
    splits
}

/// The matmul_coop tile for `n` tokens (index into [`COOP_TILES`]); `forced` > 0 overrides.
/// Measured end to end on the H100 (27B, shaders/README.md "Prefill"): 128 rows x 64 tokens
/// (8 subgroups of 32 x 32) up to 128 tokens, where 128-token tiles leave the grid too small
/// even with split k; 128 x 128 (8 subgroups of 32 x 64: each weight tile decoded once per 128
/// tokens) above.
fn coop_tile(n: usize, forced: usize) -> usize {
    if forced > 0 {
        return forced - 1;
    }
    if n <= 128 {
        0
    } else {
        1
    }
}

/// A measurement knob: `var` = "a:b:..." (u32s), read once by the caller. The values when
/// `valid` accepts them; else a warning naming what `want`s and None (the default applies).
fn env_knob(var: &str, valid: impl Fn(&[u32]) -> bool, want: &str) -> Option<Vec<u32>> {
    let s = std::env::var(var).ok()?;
    let v: Vec<u32> = s
        .split(':')
        .map(|x| x.parse())
        .collect::<Result<_, _>>()
        .unwrap_or_default();
    if valid(&v) {
        Some(v)
    } else {
        eprintln!("warning: {var}={s} ignored: want {want}");
        None
    }
}

/// "wg:rows:unroll" knobs of the matvec kernels: (wg, rows, unroll) when wg is one of `wgs`,
/// rows 1..=`rows` and unroll 1..=`unroll`.
fn env_matvec_shape(var: &str, wgs: &[u32], rows: u32, unroll: u32) -> Option<(u32, u32, u32)> {
    let want = format!("wg:rows:unroll, wg one of {wgs:?}, rows 1-{rows}, unroll 1-{unroll}");
    env_knob(
        var,
        |v| {
            v.len() == 3
                && wgs.contains(&v[0])
                && (1..=rows).contains(&v[1])
                && (1..=unroll).contains(&v[2])
        },
        &want,
    )
    .map(|v| (v[0], v[1], v[2]))
}

/// `MIXQ_VK_SG_PROBE=1` (a timing experiment, see [`SgConfig`]'s `probe`), read once.
pub fn sg_probe() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("MIXQ_VK_SG_PROBE").is_ok_and(|v| v == "1"))
}

/// Split-K of attention_f32 for `rows` (token, head) pairs whose longest key range is `span`:
/// (keys per split, splits). Aims at ~1024 workgroups (an H100 has 132 SMs; a workgroup's
/// time is a few dependent load rounds per key block, so short chunks finish sooner) with at
/// least 16 keys and at most 64 splits (attention_combine_f32's limit): a 27B decode (32 heads)
/// at 192 positions runs 12 splits of 16 keys, at 4096 positions 32 splits of 128 keys;
/// prefills with >= 1024 pairs take one workgroup per pair and skip the combine.
/// `MIXQ_VK_ATTN_WG` overrides the ~1024 workgroups aimed at (a measurement knob).
fn attention_splits(rows: usize, span: usize) -> (usize, usize) {
    static TARGET: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let target = *TARGET.get_or_init(|| {
        let valid = |v: &[u32]| v.len() == 1 && (1..=65536).contains(&v[0]);
        env_knob("MIXQ_VK_ATTN_WG", valid, "1-65536").map_or(1024, |v| v[0] as usize)
    });
    let want = (target / rows.max(1))
        .clamp(1, 64)
        .min(span.div_ceil(16))
        .max(1);
    let chunk = span.div_ceil(want).next_multiple_of(16).max(16);
    (chunk, span.div_ceil(chunk).max(1))
}

/// Which decode kernel a matvec shape is for (each has its own `MIXQ_VK_MV_*` override).
#[derive(Clone, Copy)]
enum MatvecKind {
    Plain,
    Qkv,
    Gelu,
}

/// Specialization of matvec.comp for a chunk of `rows` rows of `cols`: (workgroup size, rows
/// per workgroup, granules per step). 128 invocations when a row has at least 96 granules of
/// 16 bytes, else 64 (short rows would leave most of 128 idle); 4 rows per workgroup when that
/// still gives >= 512 workgroups (about 4 per SM on a 132-SM H100), 2 rows down to 256
/// workgroups, else 1; 2 granules per step (int8 activations only). matvec_gelu halves the
/// rows (it reads two matrices). `MIXQ_VK_MV`, `MIXQ_VK_MV_QKV`, `MIXQ_VK_MV_GELU` =
/// "wg:rows:unroll" override them (for tuning on a device).
fn matvec_shape(q: QType, cols: usize, rows: usize, kind: MatvecKind) -> (u32, u32, u32) {
    type Shape = Option<(u32, u32, u32)>;
    static OVERRIDES: std::sync::OnceLock<[Shape; 3]> = std::sync::OnceLock::new();
    let overrides = OVERRIDES.get_or_init(|| {
        ["MIXQ_VK_MV", "MIXQ_VK_MV_QKV", "MIXQ_VK_MV_GELU"]
            .map(|var| env_matvec_shape(var, &[64, 128, 256], 8, 2))
    });
    if let Some(shape) = overrides[kind as usize] {
        return shape;
    }
    let epg = match q {
        QType::F32 => 4,
        QType::F16 | QType::BF16 => 8,
        QType::I8Sym | QType::I8Asym => 16,
        QType::I4Grouped | QType::I4PerChannel | QType::I4Grouped32 | QType::I4Grouped16 => 32,
        QType::I2Structured => 64,
    };
    let wg = if cols / epg >= 96 { 128 } else { 64 };
    let per = if rows >= 4 * 512 {
        4
    } else if rows >= 2 * 256 {
        2
    } else {
        1
    };
    let per = match kind {
        MatvecKind::Gelu => (per / 2).max(1),
        _ => per,
    };
    (wg, per, 2)
}

/// Knobs of matvec_sg.comp (one subgroup per row), read once: whether to use it (on unless
/// `MIXQ_VK_SG=0`), (workgroup size, rows per subgroup, granules per lane per step) for plain,
/// q/k/v and gate/up matvecs (`MIXQ_VK_SG_{PLAIN,QKV,GELU}` = "wg:rows:unroll"), and the most
/// workgroups one dispatch launches (`MIXQ_VK_SG_CAP`; more blocks are taken grid-stride).
struct SgConfig {
    on: bool,
    shapes: [(u32, u32, u32); 3],
    cap: u32,
    /// `MIXQ_VK_SG_PROBE=1`: the kernels load each granule's codes and skip the decode and
    /// the dot products (wrong output). A timing experiment: it splits a matvec's time into
    /// what streaming the codes costs and what decoding them adds.
    probe: u32,
}

fn sg_config() -> &'static SgConfig {
    static CONFIG: std::sync::OnceLock<SgConfig> = std::sync::OnceLock::new();
    CONFIG.get_or_init(|| {
        let shape = |var: &str, default: (u32, u32, u32)| {
            env_matvec_shape(var, &[64, 128, 256, 512, 1024], 4, 4).unwrap_or(default)
        };
        SgConfig {
            on: std::env::var("MIXQ_VK_SG").map_or(true, |v| v != "0"),
            shapes: [
                // Measured on an H100 (27B decode, shaders/README.md): one row per subgroup,
                // 2 granules per lane per step (1 for gate/up, which reads two matrices).
                shape("MIXQ_VK_SG_PLAIN", (256, 1, 2)),
                shape("MIXQ_VK_SG_QKV", (256, 1, 2)),
                shape("MIXQ_VK_SG_GELU", (256, 1, 1)),
            ],
            cap: std::env::var("MIXQ_VK_SG_CAP")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1 << 16),
            probe: u32::from(sg_probe()),
        }
    })
}

/// matvec_sg.comp's dispatch for `rows` rows in all (fused: the segments' blocks summed by
/// the caller through `blocks`): (shader op prefix, spec constants, workgroups).
fn sg_dispatch(
    kind: MatvecKind,
    blocks: impl Fn(usize) -> usize,
    subgroup: u32,
) -> ([u32; 4], u32) {
    let cfg = sg_config();
    let (wg, rows, unroll) = cfg.shapes[kind as usize];
    // Rows per workgroup block, as the shader computes it (subgroups of the device's size).
    let per_block = (wg / subgroup.max(1)).max(1) * rows;
    let groups = (blocks(per_block as usize) as u32).clamp(1, cfg.cap);
    ([wg, rows, unroll, cfg.probe], groups)
}

/// Words of quantize_x_f32's output for `cols` (codes, scales per 32, sums per 16).
fn q8_len(cols: usize) -> usize {
    cols / 4 + cols / 32 + cols / 16
}

/// (source, 1, cols, Hadamard block or 0, seed or 0).
type Q8Key = (vk::Buffer, usize, usize, usize, u64);

/// Key of [`Recorder::quantized`]: (source, 1, cols, Hadamard block or 0, seed or 0).
fn q8_key(src: vk::Buffer, cols: usize, rot: Option<(usize, u64)>) -> Q8Key {
    let (block, seed) = rot.unwrap_or((0, 0));
    (src, 1, cols, block, seed)
}

/// Specialization of the row-norm kernels (rownorm.glsl): (workgroup size, vec4s per
/// invocation held in registers). 1024 invocations with the fewest vec4s that hold the row
/// (1 up to 4096 wide, 2 for the 27B's 5376; rows up to 16384): one workgroup per row is
/// latency-bound, so more invocations and fewer (unrolled) steps each win. On the H100 the
/// 27B's add_rms_norm takes 7.9 us per call at 1024 x 2 against 10.0 at 1024 x 4 (decode
/// tg64 111.7 against 108.1 / 107.4 tok/s), 11.8 before the rotation moved into shuffles,
/// 17.2 at 256 x 8 and 23+ at 128 x 16. `MIXQ_VK_NORM` = "wg:nv" overrides it; rows wider
/// than 4 x wg x nv fall back to the default.
fn norm_shape(d: usize) -> Result<[u32; 2]> {
    static SHAPE: std::sync::OnceLock<Option<[u32; 2]>> = std::sync::OnceLock::new();
    let fixed = *SHAPE.get_or_init(|| {
        let valid = |v: &[u32]| {
            v.len() == 2 && [64, 128, 256, 512, 1024].contains(&v[0]) && (1..=16).contains(&v[1])
        };
        env_knob(
            "MIXQ_VK_NORM",
            valid,
            "wg:nv, wg 64-1024 (a power of two), nv 1-16",
        )
        .map(|v| [v[0], v[1]])
    });
    if d > 16384 {
        bail!("rms norm over {d} values: the Vulkan norm kernels take rows of at most 16384");
    }
    let default = [1024, d.div_ceil(4096).max(1) as u32];
    Ok(fixed
        .filter(|s| d <= 4 * (s[0] * s[1]) as usize)
        .unwrap_or(default))
}

/// What prefetch.glsl compares its folded reads with before storing to the sink: any constant.
const PF_NEVER: u32 = 0x9e37_79b9;

/// The L2 prefetch beside a decode row norm (add_rms_norm_f32.comp): (workgroups, KiB of each
/// of the next matvec's first two weights). A norm is one workgroup, so on a discrete GPU
/// the other SMs idle while it runs; one prefetching workgroup per SM reading 2 MiB of each
/// weight moves those bytes into L2 before the matvec asks (H100, synthetic 27B optimal: decode
/// 111.8 -> 113.4 tok/s, shaders/README.md "L2 prefetch beside the norms"). More bytes lengthen
/// the norm by what the matvec saves. Off elsewhere: an iGPU's L2 is a few MB, and on a CPU
/// (lavapipe) the reads are pure cost. `MIXQ_VK_PF` = "groups:kib" overrides (groups 0: off).
fn default_prefetch(info: &device::DeviceInfo) -> (u32, u64) {
    let knob = env_knob(
        "MIXQ_VK_PF",
        |v| v.len() == 2 && v[0] <= 1024 && v[1] <= 1 << 20,
        "groups:kib, groups 0-1024, kib 0-1048576",
    );
    match knob {
        Some(v) => (v[0], v[1] as u64),
        None if info.device_type == "discrete" => (info.multiprocessors.unwrap_or(64), 2048),
        None => (0, 0),
    }
}

/// The push constants matmul.comp and matmul_coop.comp share, in their order: the chunk's
/// rows, cols, row stride, first row, the weight's rows, tokens, codes offset.
fn tile_push(w: &VkWeight, c: &WeightChunk, n: usize) -> [u32; 7] {
    [
        u(c.rows),
        u(w.cols),
        u(w.stride),
        u(c.row0),
        u(w.rows),
        u(n),
        u(w.codes_at),
    ]
}

fn f(v: f32) -> u32 {
    v.to_bits()
}

fn u(v: usize) -> u32 {
    u32::try_from(v).expect("shape exceeds u32")
}

impl VulkanBackend {
    /// Opens Vulkan device `device_index` (see [`list_devices`]), or the best one available.
    pub fn new(device_index: Option<usize>) -> Result<Self> {
        let instance = Instance::new()?;
        let dev = Device::new(&instance, device_index)?;
        let mut rec = Recorder::new(&dev)?;
        rec.prefetch = default_prefetch(&dev.info);
        let arena = Arena::new(&dev);
        let max_binding = (dev.limits.max_storage_buffer_range as u64)
            .min(memory::WEIGHT_BLOCK)
            .min(dev.info.heaps.iter().map(|h| h.0).max().unwrap_or(u64::MAX) / 4);
        // Weights go straight into device memory when it is host visible (UMA, lavapipe),
        // else through a staging buffer.
        let probe = memory::memory_type(&dev, u32::MAX, memory::MemoryUse::GpuOnly)?;
        let upload_path = if probe.1 {
            "written directly into host-visible device-local memory"
        } else {
            "copied through a host-visible staging buffer"
        };
        Ok(VulkanBackend {
            shared: Arc::new(Shared {
                dev,
                pool: Mutex::new(Pool::default()),
                arena: Mutex::new(arena),
                rec: Mutex::new(rec),
                max_binding,
                q8: std::sync::atomic::AtomicBool::new(true),
                coop: std::sync::atomic::AtomicBool::new(true),
                coop_tile: std::sync::atomic::AtomicUsize::new(
                    std::env::var("MIXQ_VK_COOP_TILE").map_or(0, |v| {
                        COOP_TILES
                            .iter()
                            .position(|t| t.0 == v)
                            .map_or(0, |i| i + 1)
                    }),
                ),
                defer_norms: std::env::var("MIXQ_VK_DEFER_NORM").map_or(true, |v| v != "0"),
                fuse_attention: std::env::var("MIXQ_VK_FUSE_ATTN").map_or(true, |v| v != "0"),
                instance,
            }),
            upload_path,
        })
    }

    /// The decode norms' L2 prefetch of the next matvec's weights: `groups` extra workgroups
    /// reading the first `kib` KiB of each of its first two weights (0 groups: off). The
    /// default depends on the device ([`default_prefetch`]); results never depend on it.
    pub fn set_prefetch(&self, groups: u32, kib: u64) {
        self.shared.rec.lock().unwrap().prefetch = (groups, kib);
    }

    /// Decode norms recorded with prefetching workgroups so far.
    pub fn prefetching_norms(&self) -> u64 {
        self.rec().prefetching_norms
    }

    /// Decode (n = 1) matvecs of integer weight formats on int8 activations: x quantized once
    /// per input, per group of 32 (quantize_x_f32), and integer dot products
    /// (shaders/README.md, "Decode"). On by default where the device supports
    /// `shaderIntegerDotProduct` and `MIXQ_VK_F32_ACT` is unset; off gives the f32-activation
    /// kernels (same results as the CPU's exact mode up to summation order).
    pub fn set_int8_activations(&self, on: bool) {
        self.shared
            .q8
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Prefill (n > 1) matmuls on the tensor cores (matmul_coop.comp: f16 products, f32 sums;
    /// shaders/README.md, "Prefill") where the device has VK_NV_cooperative_matrix; off gives
    /// the portable f32 tile kernel (matmul.comp, equal to the CPU's exact mode up to summation
    /// order). On by default; `mixq-run --vk-portable-prefill` turns it off.
    pub fn set_coop_matmul(&self, on: bool) {
        self.shared
            .coop
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether prefill matmuls run on the tensor cores now.
    pub fn coop_matmul(&self) -> bool {
        self.dev().coop && self.shared.coop.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Fixes matmul_coop's tile (a name of [`COOP_TILES`], e.g. "128x64"; None: by shape), for
    /// measurements. Errors on an unknown name.
    pub fn set_coop_tile(&self, tile: Option<&str>) -> Result<()> {
        let i = match tile {
            None => 0,
            Some(t) => match COOP_TILES.iter().position(|c| c.0 == t) {
                Some(i) => i + 1,
                None => bail!(
                    "unknown matmul_coop tile `{t}`: one of {:?}",
                    COOP_TILES.map(|c| c.0)
                ),
            },
        };
        self.shared
            .coop_tile
            .store(i, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Whether decode matvecs of integer formats run on int8 activations now.
    pub fn int8_activations(&self) -> bool {
        self.dev().int_dot && self.shared.q8.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The device's description (what `devices` prints for it).
    pub fn device_info(&self) -> &DeviceInfo {
        &self.shared.dev.info
    }

    /// (submissions, dispatches, cached descriptor sets) so far: tests check one submission
    /// per step and that descriptor sets are reused.
    pub fn counters(&self) -> (u64, u64, usize) {
        let rec = self.rec();
        (rec.submits, rec.dispatches, rec.pipelines.cached_sets())
    }

    /// Bytes of all weights resident on the device (every tensor's stored rows as placed in
    /// the weight arena, alignment padding included, or read in place from the file's memory
    /// map; norm vectors decoded to f32 not counted).
    pub fn weight_bytes(&self) -> u64 {
        let arena = self.shared.arena.lock().unwrap();
        arena.bytes + arena.imported_bytes
    }

    /// Device copy bandwidth in bytes/s: one device-local buffer of `bytes` copied to another
    /// with `vkCmdCopyBuffer`, `reps` times in one submission (after a warm-up copy), defined as
    /// **2 x bytes copied per second** (each copied byte is read once and written once), so
    /// it compares with a kernel's bytes read + written per second. Timed with GPU timestamps
    /// when the compute queue has them, else with the wall clock around submit + wait (which
    /// then includes the submission latency: use enough bytes x reps). The benchmark's
    /// bandwidth efficiency is (weight bytes read per token x tokens/s) / this figure.
    pub fn measure_copy_bandwidth(&self, bytes: usize, reps: usize) -> Result<f64> {
        Ok(self.measure_copy_bandwidth_with(bytes, reps)?.0)
    }

    /// As [`Self::measure_copy_bandwidth`] but the copy is a compute shader (copy_f32.comp:
    /// `uvec4` loads and stores, 16384 workgroups of 256, 4 loads in flight per invocation),
    /// the access pattern of the decode kernels. vkCmdCopyBuffer may take a copy-engine path
    /// that does not reach HBM bandwidth (848 GB/s measured on an H100). Same definition:
    /// 2 x bytes copied per second. `bytes` is rounded up to a multiple of 16 and capped at
    /// one storage-buffer binding (`maxStorageBufferRange`: 128 MiB on lavapipe).
    pub fn measure_shader_copy_bandwidth(&self, bytes: usize, reps: usize) -> Result<f64> {
        let dev = self.dev();
        let cap = (dev.limits.max_storage_buffer_range as u64 / 16) * 16;
        let size = ((bytes.max(16) as u64).div_ceil(16) * 16).min(cap);
        Ok(self.time_buffer_copy(size, reps, true)?.0)
    }

    /// What one dependent step costs on this device (shaders/README.md, "What a dependent
    /// step costs"): the time per dispatch of `chain` tiny dispatches (4 workgroups of 256,
    /// one add each) with a barrier between each, as every dependent decode command pays it;
    /// and, where the driver says how many workgroups are surely resident at once (one per
    /// SM: VK_NV_shader_sm_builtins), the time per device-wide barrier of `rounds` such
    /// barriers inside one dispatch, as a persistent kernel would pay it instead.
    pub fn measure_sync_costs(&self, chain: usize, rounds: usize) -> Result<SyncCosts> {
        let dev = self.dev();
        let buf = RawBuf::new(dev, 8 + 4096 + PAD, memory::MemoryUse::GpuOnly)?;
        let b = buf.buffer;
        let measured = (|| -> Result<SyncCosts> {
            let mut rec = self.rec();
            rec.update(dev, b, 0, &[0u8; 8 + 4096])?;
            let (dispatch, how) = rec.time_commands(dev, chain, false, &mut |r| {
                r.dispatch(dev, "sync_probe_f32", &[b], &[0, 0, 1024], (4, 1, 1))
            })?;
            let groups = dev.info.multiprocessors.unwrap_or(0);
            let mut grid_barrier = None;
            if groups > 0 {
                let rounds = u(rounds.max(1));
                let (secs, _) = rec.time_commands(dev, 1, true, &mut |r| {
                    r.update(dev, b, 0, &[0u8; 8])?;
                    r.dispatch(dev, "sync_probe_f32", &[b], &[1, rounds, 0], (groups, 1, 1))
                })?;
                let fail = rec.read(dev, &[(b, 4, 4)])?;
                if fail == [0, 0, 0, 0] {
                    grid_barrier = Some(secs / rounds as f64);
                }
            }
            Ok(SyncCosts {
                dispatch,
                grid_barrier,
                groups,
                how,
            })
        })();
        // SAFETY: every use above was waited for (time_commands and read submit and wait).
        unsafe { buf.destroy(dev) };
        measured
    }

    /// [`Self::measure_copy_bandwidth`] and how it was timed ("gpu timestamps" or "wall
    /// clock").
    pub fn measure_copy_bandwidth_with(
        &self,
        bytes: usize,
        reps: usize,
    ) -> Result<(f64, &'static str)> {
        let size = (bytes.max(4) as u64).div_ceil(4) * 4;
        self.time_buffer_copy(size, reps, false)
    }

    /// Bytes moved per second (read + write) copying `size` bytes between two fresh device
    /// buffers `reps` times, by the shader (`copy_f32`) or the transfer engine.
    fn time_buffer_copy(
        &self,
        size: u64,
        reps: usize,
        shader: bool,
    ) -> Result<(f64, &'static str)> {
        let dev = self.dev();
        let src = RawBuf::new(dev, size, memory::MemoryUse::GpuOnly)?;
        let dst = RawBuf::new(dev, size, memory::MemoryUse::GpuOnly)?;
        let timed = self
            .rec()
            .time_copies(dev, src.buffer, dst.buffer, size, reps.max(1), shader);
        // SAFETY: time_copies waited for its submission; nothing else uses these buffers.
        unsafe {
            src.destroy(dev);
            dst.destroy(dev);
        }
        let (secs, how) = timed?;
        Ok((2.0 * size as f64 / secs.max(1e-12), how))
    }

    /// Turns per-command GPU timestamps on or off (no-op without timestamp support: see
    /// [`Self::op_times`]). Costs one timestamp write per command while on.
    pub fn set_profiling(&self, on: bool) {
        let mut rec = self.rec();
        let _ = rec.submit_wait(self.dev());
        if let Some(p) = rec.profiler.as_mut() {
            p.enabled = on;
        }
    }

    /// GPU seconds per op kind (shader name, "copy", "update") accumulated while profiling
    /// was on, largest first. Empty when the device has no timestamps.
    pub fn op_times(&self) -> Vec<(String, f64)> {
        self.op_stats()
            .into_iter()
            .map(|(k, s, _)| (k, s))
            .collect()
    }

    /// (op kind, seconds, commands) accumulated while profiling, largest time first.
    pub fn op_stats(&self) -> Vec<(String, f64, u64)> {
        let mut rec = self.rec();
        let _ = rec.submit_wait(self.dev());
        let mut v: Vec<(String, f64, u64)> = rec
            .profiler
            .as_ref()
            .map(|p| {
                p.totals
                    .iter()
                    .map(|(k, (s, c))| (k.to_string(), *s, *c))
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }

    /// Clears the accumulated op times.
    pub fn reset_op_times(&self) {
        if let Some(p) = self.rec().profiler.as_mut() {
            p.totals.clear();
        }
    }

    /// The recorder, with whatever was deferred ([`Recorder::pending_norm`],
    /// [`Recorder::pending_qk`]; never both at once) recorded first: every op but
    /// rms_norm_into and attention goes through here before recording, reading or handing out
    /// anything.
    fn rec(&self) -> MutexGuard<'_, Recorder> {
        let mut rec = self.rec_deferred();
        if let Some(pn) = rec.pending_norm.take() {
            ok(self.record_pending(&mut rec, pn));
        }
        rec
    }

    fn record_qk_norm_rope(&self, rec: &mut Recorder, pq: ops::PendingQkNorm) -> Result<()> {
        rec.dispatch(
            self.dev(),
            "norm_rope_f32",
            &pq.buffers,
            &pq.push,
            grid(pq.groups),
        )
    }

    /// The [`COUNTERS`] counters (zeroed once; every kernel that uses them leaves them zero).
    fn attention_counters(&self, rec: &mut Recorder) -> Result<vk::Buffer> {
        if let Some(b) = &rec.attn_counters {
            return Ok(b.buffer);
        }
        let raw = self.buffer_with(rec, &[0u8; 4 * COUNTERS])?;
        let b = raw.buffer;
        rec.attn_counters = Some(raw);
        Ok(b)
    }

    /// The recorder with a deferred add_rms_norm still pending (a deferred QK-norm + RoPE is
    /// recorded: only attention takes that one, through [`Self::rec_raw`]).
    fn rec_deferred(&self) -> MutexGuard<'_, Recorder> {
        let mut rec = self.rec_raw();
        if let Some(pq) = rec.pending_qk.take() {
            ok(self.record_qk_norm_rope(&mut rec, pq));
        }
        rec
    }

    /// The recorder as it is, everything deferred still pending.
    fn rec_raw(&self) -> MutexGuard<'_, Recorder> {
        self.shared.rec.lock().expect("vulkan recorder poisoned")
    }

    fn record_pending(&self, rec: &mut Recorder, pn: ops::PendingNorm) -> Result<()> {
        self.record_add_rms_norm(rec, pn.x, pn.y, pn.w, None, pn.rows, pn.d, pn.eps, None)
    }

    fn dev(&self) -> &Device {
        &self.shared.dev
    }

    /// Whether weights stored in their device layout are read in place from the file's memory
    /// map (VK_EXT_external_memory_host) instead of copied: on UMA devices (integrated GPUs,
    /// CPU drivers), where a copy would be a second copy of the weights in the same RAM; unless
    /// `MIXQ_VK_IMPORT=0`.
    fn import_weights(&self) -> bool {
        let info = &self.dev().info;
        info.external_memory_host
            && matches!(info.device_type, "integrated" | "cpu")
            && std::env::var("MIXQ_VK_IMPORT").map_or(true, |v| v != "0")
    }

    fn try_alloc(&self, len: usize) -> Result<VkBuf> {
        let raw = self
            .shared
            .pool
            .lock()
            .unwrap()
            .take(&self.shared.dev, (len.max(1) * 4) as u64)?;
        Ok(VkBuf {
            raw: Some(raw),
            len,
            shared: self.shared.clone(),
        })
    }

    /// Writes `bytes` into a weight chunk buffer (direct or via staging).
    fn write_weight(
        &self,
        buffer: vk::Buffer,
        mapped: Option<*mut u8>,
        bytes: &[u8],
    ) -> Result<()> {
        if let Some(ptr) = mapped {
            // SAFETY: `ptr` maps at least bytes.len() bytes of this chunk's host-coherent
            // memory, which no command uses yet (the weight is being created).
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr, bytes.len()) };
            return Ok(());
        }
        const STAGE: usize = 64 << 20;
        let dev = self.dev();
        let mut rec = self.rec();
        rec.submit_wait(dev)?;
        if rec.staging.is_none() {
            rec.staging = Some(RawBuf::new(dev, STAGE as u64, memory::MemoryUse::CpuToGpu)?);
        }
        for (i, piece) in bytes.chunks(STAGE).enumerate() {
            let (sbuf, sptr) = {
                let s = rec.staging.as_ref().unwrap();
                (s.buffer, s.mapped.expect("staging is mapped"))
            };
            // SAFETY: the staging mapping holds STAGE bytes and nothing is pending on it
            // (submit_wait above and after every piece).
            unsafe { std::ptr::copy_nonoverlapping(piece.as_ptr(), sptr, piece.len()) };
            let size = piece.len().div_ceil(4) as u64 * 4;
            let region = [vk::BufferCopy {
                src_offset: 0,
                dst_offset: (i * STAGE) as u64,
                size,
            }];
            rec.copy(dev, sbuf, buffer, &region)?;
            rec.submit_wait(dev)?;
        }
        Ok(())
    }

    fn try_load_weight(&self, w: &WeightSource) -> Result<VkWeight> {
        let row_bytes = w.validate()?;
        let rotation = match w.transform {
            Transform::None => None,
            Transform::BlockHadamard { block, seed } => {
                if block > 4096 {
                    bail!(
                        "tensor `{}`: Hadamard block {block} > 4096 (hadamard_f32.comp's shared array)",
                        w.name
                    );
                }
                let signs = self.signs_buffer(w.cols, seed)?;
                Some(Rotation {
                    block: block as usize,
                    seed,
                    signs,
                })
            }
        };
        let layout = DeviceRows::new(w.qtype, w.cols, row_bytes);
        let mut chunks = Vec::new();
        for (row0, rows) in split_rows(w.rows, layout.stride, self.shared.max_binding)? {
            let range = row0 * row_bytes..(row0 + rows) * row_bytes;
            if layout.same_as_stored() && self.import_weights() {
                let part = w
                    .bytes
                    .slice(range.clone())
                    .expect("rows inside the tensor");
                let imported = self
                    .shared
                    .arena
                    .lock()
                    .unwrap()
                    .import(self.dev(), &part)?;
                if let Some(buffer) = imported {
                    chunks.push(WeightChunk { buffer, row0, rows });
                    continue;
                }
            }
            let bytes = &w.bytes[range];
            let packed = layout.repack(bytes);
            let size = packed.len() as u64 + PAD;
            let (buffer, mapped) = self.shared.arena.lock().unwrap().place(self.dev(), size)?;
            self.write_weight(buffer, mapped, &packed)?;
            chunks.push(WeightChunk { buffer, row0, rows });
        }
        let vector = if w.rows == 1 {
            let mut v = vec![0f32; w.cols];
            dequantize_row(w.qtype, &w.bytes, &mut v)?;
            let mut buf = self.try_alloc(w.cols)?;
            self.try_upload(&v, &mut buf)?;
            Some(buf)
        } else {
            None
        };
        Ok(VkWeight {
            qtype: w.qtype,
            rows: w.rows,
            cols: w.cols,
            stride: layout.stride,
            codes_at: layout.codes_at,
            chunks,
            vector,
            rotation,
        })
    }

    fn try_upload(&self, data: &[f32], buf: &mut VkBuf) -> Result<()> {
        assert!(
            data.len() <= buf.len,
            "upload of {} into {}",
            data.len(),
            buf.len
        );
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.rec().update(self.dev(), buf.buffer(), 0, &bytes)
    }

    fn try_download(&self, buf: &VkBuf, len: usize) -> Result<Vec<f32>> {
        assert!(len <= buf.len, "download of {len} from {}", buf.len);
        if len == 0 {
            return Ok(Vec::new());
        }
        let bytes = self
            .rec()
            .read(self.dev(), &[(buf.buffer(), 0, (len * 4) as u64)])?;
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    fn try_new_kv(&self, kv_dim: usize, window: Option<usize>) -> Result<VkKv> {
        let cap = window.unwrap_or(256);
        Ok(VkKv {
            kv_dim,
            window,
            len: 0,
            cap,
            k: self.try_alloc(cap * kv_dim)?,
            v: self.try_alloc(cap * kv_dim)?,
        })
    }

    fn try_embed(&self, table: &VkWeight, ids: &[u32], scale: f32, out: &mut VkBuf) -> Result<()> {
        assert!(ids.len() * table.cols <= out.len, "embed output too small");
        {
            // A new step: the last decode step's matvecs tell this one's norms what comes next.
            // A prefill's log (its last position's lm_head) is no step's order: dropped.
            let mut rec = self.rec();
            if rec.mv_log_decode && !rec.mv_log.is_empty() {
                rec.mv_prev = std::mem::take(&mut rec.mv_log);
            }
            rec.mv_log.clear();
            rec.mv_log_decode = ids.len() == 1;
        }
        for c in &table.chunks {
            // (row within the chunk, output row) of every id this chunk holds
            let pairs: Vec<u8> = ids
                .iter()
                .enumerate()
                .filter(|(_, &id)| (c.row0..c.row0 + c.rows).contains(&(id as usize)))
                .flat_map(|(i, &id)| [id - c.row0 as u32, i as u32])
                .flat_map(|v| v.to_le_bytes())
                .collect();
            if pairs.is_empty() {
                continue;
            }
            let count = pairs.len() / 8;
            let idbuf = self.try_alloc(count * 2)?;
            let mut rec = self.rec();
            rec.update(self.dev(), idbuf.buffer(), 0, &pairs)?;
            rec.dispatch(
                self.dev(),
                variant("embed", table.qtype),
                &[c.buffer, idbuf.buffer(), out.buffer()],
                &[
                    u(count),
                    u(table.cols),
                    u(table.stride),
                    f(scale),
                    u(table.codes_at),
                ],
                grid(u((count * table.cols).div_ceil(256))),
            )?;
        }
        Ok(())
    }

    /// Whether decode matvecs of format `q` over `cols` columns run on int8 activations
    /// (`*_{w}_q8`): the device has integer dot products (and `MIXQ_VK_F32_ACT` is unset), the
    /// format is an integer one and x splits into groups of 32.
    fn use_q8(&self, q: QType, cols: usize) -> bool {
        self.int8_activations()
            && cols % 32 == 0
            && matches!(
                q,
                QType::I8Sym
                    | QType::I8Asym
                    | QType::I4Grouped
                    | QType::I4PerChannel
                    | QType::I2Structured
                    | QType::I4Grouped32
                    | QType::I4Grouped16
            )
    }

    /// The int8 form (quantize_x_f32's layout) of the decode input `x` of `cols`, after the
    /// rotation `rot` if any: the cached one when the last command wrote or used it for the
    /// same key (a norm that wrote it speculatively, or the previous matvec of the same input),
    /// else rotate + quantize_x_f32 into a scratch buffer. The caller sets `valid_at` after its
    /// last use.
    fn q8_input(
        &self,
        rec: &mut Recorder,
        x: &VkBuf,
        rot: Option<&Rotation>,
        cols: usize,
    ) -> Result<vk::Buffer> {
        let key = q8_key(x.buffer(), cols, rot.map(|r| (r.block, r.seed)));
        if let Some(c) = &rec.quantized {
            if c.key == key && c.valid_at == rec.commands {
                return Ok(c.buf.buffer());
            }
        }
        let xb = match rot {
            None => x.buffer(),
            Some(r) => self.rotate(rec, r, x, 1, cols)?,
        };
        let out = self.try_alloc(q8_len(cols))?;
        rec.dispatch(
            self.dev(),
            "quantize_x_f32",
            &[xb, out.buffer()],
            &[u(cols)],
            grid(u((cols / 4).div_ceil(256))),
        )?;
        let b = out.buffer();
        rec.remember_quantized(key, out);
        Ok(b)
    }

    /// The Hadamard signs of (cols, seed) on the device, uploaded once ([`Recorder::signs`]).
    fn signs_buffer(&self, cols: usize, seed: u64) -> Result<vk::Buffer> {
        let mut rec = self.rec();
        if let Some(b) = rec.signs.get(&(cols, seed)) {
            return Ok(b.buffer);
        }
        let bytes: Vec<u8> = hadamard_signs(cols, seed)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let raw = self.buffer_with(&mut rec, &bytes)?;
        let b = raw.buffer;
        rec.signs.insert((cols, seed), raw);
        Ok(b)
    }

    /// A device-local buffer the recorder owns, holding `bytes` once the recorded update runs.
    fn buffer_with(&self, rec: &mut Recorder, bytes: &[u8]) -> Result<RawBuf> {
        let raw = RawBuf::new(
            self.dev(),
            bytes.len() as u64 + PAD,
            memory::MemoryUse::GpuOnly,
        )?;
        rec.update(self.dev(), raw.buffer, 0, bytes)?;
        Ok(raw)
    }

    /// For a norm over one row of `d` whose output feeds the matvecs described by `hint`:
    /// whether to write the int8 form too, and (xq buffer, key, block, signs) if so. Rotated
    /// only where the row fits rownorm.glsl's shared array (d <= 6144).
    fn norm_q8(
        &self,
        rec: &mut Recorder,
        out: vk::Buffer,
        rows: usize,
        d: usize,
        hint: Option<(usize, Option<(usize, u64)>)>,
    ) -> Result<Option<(VkBuf, Q8Key, u32, vk::Buffer)>> {
        if rows != 1 || d % 32 != 0 || !self.int8_activations() {
            return Ok(None);
        }
        let rot = match hint {
            Some((cols, Some((block, seed)))) if cols == d && d <= 6144 && d % block == 0 => {
                Some((block, seed))
            }
            _ => None,
        };
        let signs = match rot {
            Some((_, seed)) => match rec.signs.get(&(d, seed)) {
                Some(b) => b.buffer,
                None => return Ok(None),
            },
            None => out,
        };
        let xq = self.try_alloc(q8_len(d))?;
        Ok(Some((
            xq,
            q8_key(out, d, rot),
            rot.map_or(0, |r| u(r.0)),
            signs,
        )))
    }

    fn try_matmul(&self, w: &VkWeight, x: &VkBuf, n: usize, out: &mut VkBuf) -> Result<()> {
        assert!(
            n * w.cols <= x.len && n * w.rows <= out.len,
            "matmul shapes"
        );
        let mut rec = self.rec();
        if n > 1 && self.coop_matmul() && w.cols % 32 == 0 {
            return self.record_matmul_coop(&mut rec, w, x, n, out);
        }
        let q8 = n == 1 && self.use_q8(w.qtype, w.cols);
        let rotated = match &w.rotation {
            Some(rot) if !q8 => Some(self.rotate(&mut rec, rot, x, n, w.cols)?),
            _ => None,
        };
        let mut xb = rotated.unwrap_or(x.buffer());
        if q8 {
            xb = self.q8_input(&mut rec, x, w.rotation.as_ref(), w.cols)?;
        }
        if n == 1 {
            rec.mv_log.push([w.chunk_bytes(0), w.chunk_bytes(1)]);
        }
        for (i, c) in w.chunks.iter().enumerate() {
            if i > 0 {
                // Chunks write disjoint output rows: no barrier between them.
                rec.concurrent();
            }
            if n == 1 && q8 && sg_config().on {
                let (spec, groups) = sg_dispatch(
                    MatvecKind::Plain,
                    |per| c.rows.div_ceil(per),
                    self.dev().info.subgroup_size,
                );
                rec.dispatch_spec(
                    self.dev(),
                    variant_act("matvecsg", w.qtype, "q8"),
                    &spec,
                    &[c.buffer, xb, out.buffer()],
                    &[u(c.rows), u(w.cols), u(w.stride), u(c.row0), u(w.codes_at)],
                    grid(groups),
                )?;
            } else if n == 1 {
                let (wg, rows, unroll) = matvec_shape(w.qtype, w.cols, c.rows, MatvecKind::Plain);
                rec.dispatch_spec(
                    self.dev(),
                    variant_act("matvec", w.qtype, if q8 { "q8" } else { "f32" }),
                    &[wg, rows, unroll],
                    &[c.buffer, xb, out.buffer()],
                    &[u(c.rows), u(w.cols), u(w.stride), u(c.row0), u(w.codes_at)],
                    grid(u(c.rows.div_ceil(rows as usize))),
                )?;
            } else {
                rec.dispatch(
                    self.dev(),
                    variant("matmul", w.qtype),
                    &[c.buffer, xb, out.buffer()],
                    &tile_push(w, c, n),
                    (u(c.rows.div_ceil(64)), u(n.div_ceil(64)), 1),
                )?;
            }
        }
        if rotated.is_some() {
            // The next matmul with the same input and rotation (up_proj after gate_proj) reuses
            // it if nothing else is recorded in between.
            rec.rotated.as_mut().unwrap().valid_at = rec.commands;
        }
        if q8 {
            rec.quantized.as_mut().unwrap().valid_at = rec.commands;
        }
        Ok(())
    }

    /// Prefill on the tensor cores: x (rotated first if the weight is stored as W·H) to f16 with
    /// a power-of-two scale per token (quantize_x16_f32, shared by the matmuls of one input
    /// through `Recorder::half_input`), then matmul_coop per binding chunk.
    fn record_matmul_coop(
        &self,
        rec: &mut Recorder,
        w: &VkWeight,
        x: &VkBuf,
        n: usize,
        out: &VkBuf,
    ) -> Result<()> {
        let rot = w.rotation.as_ref().map_or((0, 0), |r| (r.block, r.seed));
        let key = (x.buffer(), n, w.cols, rot.0, rot.1);
        // f16 values from this word on: 16-byte aligned rows (cols % 32 == 0).
        let h_at = n.next_multiple_of(4);
        let cached = rec
            .half_input
            .as_ref()
            .is_some_and(|c| c.key == key && c.valid_at == rec.commands);
        if !cached {
            let src = match &w.rotation {
                Some(r) => self.rotate(rec, r, x, n, w.cols)?,
                None => x.buffer(),
            };
            let xh = self.try_alloc(h_at + n * w.cols / 2)?;
            rec.dispatch(
                self.dev(),
                "quantize_x16_f32",
                &[src, xh.buffer()],
                &[u(w.cols), u(h_at)],
                grid(u(n)),
            )?;
            rec.half_input = Some(ops::RotatedInput {
                key,
                valid_at: rec.commands,
                buf: xh,
            });
        }
        let xb = rec.half_input.as_ref().unwrap().buf.buffer();
        let forced = self
            .shared
            .coop_tile
            .load(std::sync::atomic::Ordering::Relaxed);
        let single = w.chunks.len() == 1;
        for (i, c) in w.chunks.iter().enumerate() {
            if i > 0 {
                // Chunks write disjoint output rows: no barrier between them.
                rec.concurrent();
            }
            let (tile, bm, bn, bk) = COOP_TILES[coop_tile(n, forced)];
            let groups = (c.rows.div_ceil(bm), n.div_ceil(bn));
            // Split k only for a single chunk (the partials' buffer is per dispatch).
            let splits = if single {
                coop_splits(groups.0 * groups.1, w.cols / bk)
            } else {
                1
            };
            let kchunk = (w.cols / bk).div_ceil(splits) * bk;
            let splits = w.cols.div_ceil(kchunk);
            let part = if splits > 1 {
                Some(self.try_alloc(splits * n * c.rows)?)
            } else {
                None
            };
            let dst = part.as_ref().map_or(out.buffer(), |b| b.buffer());
            rec.dispatch(
                self.dev(),
                coop_variant(w.qtype, tile),
                &[c.buffer, xb, dst],
                &[tile_push(w, c, n).as_slice(), &[u(h_at), u(kchunk)]].concat(),
                (u(groups.0), u(groups.1), u(splits)),
            )?;
            if let Some(part) = part {
                rec.dispatch(
                    self.dev(),
                    "sum_splits_f32",
                    &[part.buffer(), out.buffer()],
                    &[u(c.rows), u(n), u(splits), u(c.row0), u(w.rows)],
                    grid(u((n * c.rows).div_ceil(256))),
                )?;
                // Held until the next split matmul is recorded: a matmul recorded concurrently
                // after this one (up after gate) must not receive this buffer from the pool
                // while the sum still reads it.
                rec.split_partials = Some(part);
            }
        }
        rec.half_input.as_mut().unwrap().valid_at = rec.commands;
        Ok(())
    }

    /// Records x·H of `n` rows of `cols` into a scratch buffer and returns it, or returns the
    /// previous rotation of the same input when no command was recorded since it was used.
    fn rotate(
        &self,
        rec: &mut Recorder,
        rot: &Rotation,
        x: &VkBuf,
        n: usize,
        cols: usize,
    ) -> Result<vk::Buffer> {
        let key = (x.buffer(), n, cols, rot.block, rot.seed);
        if let Some(c) = &rec.rotated {
            if c.key == key && c.valid_at == rec.commands {
                return Ok(c.buf.buffer());
            }
        }
        let out = self.try_alloc(n * cols)?;
        rec.dispatch(
            self.dev(),
            "hadamard_f32",
            &[x.buffer(), rot.signs, out.buffer()],
            &[
                u(n),
                u(cols),
                u(rot.block),
                f(1.0 / (rot.block as f32).sqrt()),
            ],
            grid(u(n * cols / rot.block)),
        )?;
        let b = out.buffer();
        rec.rotated = Some(ops::RotatedInput {
            key,
            valid_at: rec.commands,
            buf: out,
        });
        Ok(b)
    }

    /// Whether `ws` can share one fused matvec dispatch (matvec.comp's FUSE_* variants): same
    /// format, width and input rotation, each in one binding chunk, and a device that indexes
    /// arrays of storage buffers.
    fn fusable(&self, ws: &[&VkWeight]) -> bool {
        let w0 = ws[0];
        let same_rotation = |w: &VkWeight| match (&w.rotation, &w0.rotation) {
            (None, None) => true,
            (Some(a), Some(b)) => a.block == b.block && a.seed == b.seed,
            _ => false,
        };
        self.dev().buffer_array_indexing
            && ws.iter().all(|w| {
                w.chunks.len() == 1
                    && w.qtype == w0.qtype
                    && w.cols == w0.cols
                    && w.stride == w0.stride
                    && w.codes_at == w0.codes_at
                    && same_rotation(w)
            })
    }

    /// q/k/v: one matvec3 dispatch for decode when [`Self::fusable`]; else one matmul per
    /// weight, recorded without barriers between them when they share the input rotation.
    fn try_matmul_many(
        &self,
        ws: &[&VkWeight],
        x: &VkBuf,
        n: usize,
        outs: &mut [&mut VkBuf],
    ) -> Result<()> {
        assert_eq!(ws.len(), outs.len(), "matmul_many: one output per weight");
        for (w, o) in ws.iter().zip(outs.iter()) {
            assert!(n * w.cols <= x.len && n * w.rows <= o.len, "matmul shapes");
        }
        if ws.is_empty() {
            return Ok(());
        }
        if n == 1 && ws.len() == 3 && self.fusable(ws) {
            let w0 = ws[0];
            let mut rec = self.rec();
            let q8 = self.use_q8(w0.qtype, w0.cols);
            let xb = if q8 {
                rec.qkv_hint = Some((w0.cols, w0.rotation.as_ref().map(|r| (r.block, r.seed))));
                self.q8_input(&mut rec, x, w0.rotation.as_ref(), w0.cols)?
            } else {
                match &w0.rotation {
                    None => x.buffer(),
                    Some(rot) => self.rotate(&mut rec, rot, x, 1, w0.cols)?,
                }
            };
            let total: usize = ws.iter().map(|w| w.rows).sum();
            let (name, spec, groups) = if q8 && sg_config().on {
                let (spec, groups) = sg_dispatch(
                    MatvecKind::Qkv,
                    |per| ws.iter().map(|w| w.rows.div_ceil(per)).sum(),
                    self.dev().info.subgroup_size,
                );
                (
                    variant_act("matvecsg3", w0.qtype, "q8"),
                    spec.to_vec(),
                    groups,
                )
            } else {
                let (wg, per, unroll) = matvec_shape(w0.qtype, w0.cols, total, MatvecKind::Qkv);
                let groups: usize = ws.iter().map(|w| w.rows.div_ceil(per as usize)).sum();
                let name = variant_act("matvec3", w0.qtype, if q8 { "q8" } else { "f32" });
                (name, vec![wg, per, unroll], u(groups))
            };
            let wb: Vec<vk::Buffer> = ws.iter().map(|w| w.chunks[0].buffer).collect();
            let ob: Vec<vk::Buffer> = outs.iter().map(|o| o.buffer()).collect();
            rec.mv_log
                .push([ws[0].chunk_bytes(0), ws[1].chunk_bytes(0)]);
            rec.dispatch_arrays(
                self.dev(),
                name,
                &spec,
                &[&wb, &[xb], &ob],
                &[
                    u(ws[0].rows),
                    u(w0.cols),
                    u(w0.stride),
                    0,
                    u(w0.codes_at),
                    u(ws[1].rows),
                    u(ws[2].rows),
                ],
                grid(groups),
            )?;
            if !q8 && w0.rotation.is_some() {
                rec.rotated.as_mut().unwrap().valid_at = rec.commands;
            }
            if q8 {
                rec.quantized.as_mut().unwrap().valid_at = rec.commands;
            }
            return Ok(());
        }
        let shared_input = ws.len() == 1 || self.fusable_input(ws);
        for (i, (w, out)) in ws.iter().zip(outs.iter_mut()).enumerate() {
            if i > 0 && shared_input {
                self.rec().concurrent();
            }
            self.try_matmul(w, x, n, out)?;
        }
        Ok(())
    }

    /// All of `ws` take the same input rotation (or none): after the first matmul the others
    /// only read what it read, so they need no barrier.
    fn fusable_input(&self, ws: &[&VkWeight]) -> bool {
        ws.iter().all(|w| match (&w.rotation, &ws[0].rotation) {
            (None, None) => true,
            (Some(a), Some(b)) => a.block == b.block && a.seed == b.seed,
            _ => false,
        })
    }

    /// gelu_tanh(x·gateᵀ) * (x·upᵀ): one matvec_gelu dispatch for decode when
    /// [`Self::fusable`]; else gate, up (no barrier between) and gelu_mul.
    #[allow(clippy::too_many_arguments)]
    fn try_gate_up(
        &self,
        gate_w: &VkWeight,
        up_w: &VkWeight,
        x: &VkBuf,
        n: usize,
        inter: usize,
        gate: &mut VkBuf,
        up: &mut VkBuf,
    ) -> Result<()> {
        assert!(
            gate_w.rows == inter && up_w.rows == inter && n * inter <= gate.len.min(up.len),
            "gate_up shapes"
        );
        assert!(n * gate_w.cols <= x.len, "gate_up input");
        if n == 1 && self.fusable(&[gate_w, up_w]) {
            let mut rec = self.rec();
            let q8 = self.use_q8(gate_w.qtype, gate_w.cols);
            let xb = if q8 {
                let rot = gate_w.rotation.as_ref().map(|r| (r.block, r.seed));
                rec.ffn_hint = Some((gate_w.cols, rot));
                self.q8_input(&mut rec, x, gate_w.rotation.as_ref(), gate_w.cols)?
            } else {
                match &gate_w.rotation {
                    None => x.buffer(),
                    Some(rot) => self.rotate(&mut rec, rot, x, 1, gate_w.cols)?,
                }
            };
            // Each workgroup reads ROWS rows of both matrices: half matvec's rows per group
            // keeps the loads in flight (and registers) per invocation as for one matrix.
            let (name, spec, groups) = if q8 && sg_config().on {
                let (spec, groups) = sg_dispatch(
                    MatvecKind::Gelu,
                    |per| inter.div_ceil(per),
                    self.dev().info.subgroup_size,
                );
                (
                    variant_act("matvecsg_gelu", gate_w.qtype, "q8"),
                    spec.to_vec(),
                    groups,
                )
            } else {
                let (wg, per, unroll) =
                    matvec_shape(gate_w.qtype, gate_w.cols, inter, MatvecKind::Gelu);
                let name = variant_act("matvec_gelu", gate_w.qtype, if q8 { "q8" } else { "f32" });
                (name, vec![wg, per, unroll], u(inter.div_ceil(per as usize)))
            };
            let wb = [gate_w.chunks[0].buffer, up_w.chunks[0].buffer];
            rec.mv_log
                .push([gate_w.chunk_bytes(0), up_w.chunk_bytes(0)]);
            let push = [
                u(inter),
                u(gate_w.cols),
                u(gate_w.stride),
                0,
                u(gate_w.codes_at),
                0,
                0,
            ];
            rec.dispatch_arrays(
                self.dev(),
                name,
                &spec,
                &[&wb, &[xb], &[gate.buffer()]],
                &push,
                grid(groups),
            )?;
            if !q8 && gate_w.rotation.is_some() {
                rec.rotated.as_mut().unwrap().valid_at = rec.commands;
            }
            if q8 {
                rec.quantized.as_mut().unwrap().valid_at = rec.commands;
            }
            return Ok(());
        }
        self.try_matmul(gate_w, x, n, gate)?;
        if self.fusable_input(&[gate_w, up_w]) {
            self.rec().concurrent();
        }
        self.try_matmul(up_w, x, n, up)?;
        self.elementwise("gelu_mul_f32", gate, up, n * inter)
    }

    /// rms_norm_f32 of `rows` rows of `d` from `x` into `out` (the same buffer: in place). For
    /// one row on int8 activations it also writes the int8 form of `out` for the next matvec:
    /// unrotated for the lm_head's in-place norm, as the last fused q/k/v wanted for the
    /// pre-attention norm (`qkv_input`).
    #[allow(clippy::too_many_arguments)]
    fn try_rms_norm(
        &self,
        x: vk::Buffer,
        w: &VkWeight,
        rows: usize,
        d: usize,
        eps: f32,
        out: vk::Buffer,
        qkv_input: bool,
    ) -> Result<()> {
        let wv = w.vector.as_ref().expect("norm weights are 1-D");
        if rows == 0 {
            return Ok(());
        }
        let spec = norm_shape(d)?;
        let mut rec = self.rec_deferred();
        if let Some(pn) = rec.pending_norm.take() {
            if qkv_input && pn.x == x && pn.y == out && (pn.rows, pn.d, pn.eps) == (rows, d, eps) {
                // The previous layer's end and this pre-norm: one add_rms_norm_f32.
                let hint = rec.qkv_hint;
                return self.record_add_rms_norm(
                    &mut rec,
                    x,
                    out,
                    pn.w,
                    Some(wv.buffer()),
                    rows,
                    d,
                    eps,
                    hint,
                );
            }
            self.record_pending(&mut rec, pn)?;
        }
        let hint = if qkv_input { rec.qkv_hint } else { None };
        let q8 = self.norm_q8(&mut rec, out, rows, d, hint)?;
        let (xq, block, signs) = q8.as_ref().map_or((out, 0, out), |(b, _, block, signs)| {
            (b.buffer(), *block, *signs)
        });
        rec.dispatch_spec(
            self.dev(),
            "rms_norm_f32",
            &spec,
            &[x, wv.buffer(), out, xq, signs],
            &[
                u(rows),
                u(d),
                f(eps),
                q8.is_some() as u32,
                block,
                f(1.0 / (block.max(1) as f32).sqrt()),
            ],
            grid(u(rows)),
        )?;
        if let Some((buf, key, _, _)) = q8 {
            rec.remember_quantized(key, buf);
        }
        Ok(())
    }

    /// add_rms_norm. On one row without a next norm (the end of a layer) nothing is recorded
    /// yet: the op waits in [`Recorder::pending_norm`] for the next op, and when that is the
    /// next layer's pre-norm of the same x into the same y (gemma3's run_layer), both become
    /// one add_rms_norm_f32 with has_next (one command less per layer; y's post-norm value
    /// was about to be overwritten anyway). Any other op records it first ([`Self::rec`]).
    #[allow(clippy::too_many_arguments)]
    fn try_add_rms_norm(
        &self,
        x: &mut VkBuf,
        y: &mut VkBuf,
        w: &VkWeight,
        next: Option<&VkWeight>,
        rows: usize,
        d: usize,
        eps: f32,
    ) -> Result<()> {
        let wv = w.vector.as_ref().expect("norm weights are 1-D");
        let wn = next.map(|n| n.vector.as_ref().expect("norm weights are 1-D"));
        if rows == 0 {
            return Ok(());
        }
        norm_shape(d)?;
        let mut rec = self.rec();
        if next.is_none() && rows == 1 && self.shared.defer_norms {
            rec.pending_norm = Some(ops::PendingNorm {
                x: x.buffer(),
                y: y.buffer(),
                w: wv.buffer(),
                rows,
                d,
                eps,
            });
            return Ok(());
        }
        // The new y feeds the FFN's gate/up: its int8 form as the last fused gate/up wanted.
        let hint = rec.ffn_hint;
        self.record_add_rms_norm(
            &mut rec,
            x.buffer(),
            y.buffer(),
            wv.buffer(),
            wn.map(|b| b.buffer()),
            rows,
            d,
            eps,
            hint,
        )
    }

    /// Records add_rms_norm_f32 (with the int8 form of the new y as `hint` wants, when there
    /// is a next norm).
    #[allow(clippy::too_many_arguments)]
    fn record_add_rms_norm(
        &self,
        rec: &mut Recorder,
        x: vk::Buffer,
        y: vk::Buffer,
        wv: vk::Buffer,
        wn: Option<vk::Buffer>,
        rows: usize,
        d: usize,
        eps: f32,
        hint: Option<(usize, Option<(usize, u64)>)>,
    ) -> Result<()> {
        let q8 = match wn {
            Some(_) => self.norm_q8(rec, y, rows, d, hint)?,
            None => None,
        };
        let (xq, block, signs) = q8.as_ref().map_or((y, 0, y), |(b, _, block, signs)| {
            (b.buffer(), *block, *signs)
        });
        let pf = match wn {
            Some(_) if rows == 1 => self.prefetch_next(rec)?,
            _ => None,
        };
        let (pf_groups, [(b0, n0), (b1, n1)], sink) = pf.unwrap_or((0, [(x, 0); 2], x));
        rec.dispatch_spec(
            self.dev(),
            "add_rms_norm_f32",
            &norm_shape(d)?,
            &[x, y, wv, wn.unwrap_or(wv), xq, signs, b0, b1, sink],
            &[
                u(rows),
                u(d),
                f(eps),
                wn.is_some() as u32,
                q8.is_some() as u32,
                block,
                f(1.0 / (block.max(1) as f32).sqrt()),
                pf_groups,
                n0,
                n1,
                PF_NEVER,
            ],
            grid(u(rows) + pf_groups),
        )?;
        if let Some((buf, key, _, _)) = q8 {
            rec.remember_quantized(key, buf);
        }
        Ok(())
    }

    /// What the extra workgroups of a decode norm prefetch (shaders/prefetch.glsl): (workgroups,
    /// the next matvec's first two weights or binding chunks as (buffer, 32-byte sectors), the
    /// sink), or None when off or unknown (the first decode step this backend runs).
    #[allow(clippy::type_complexity)]
    fn prefetch_next(
        &self,
        rec: &mut Recorder,
    ) -> Result<Option<(u32, [(vk::Buffer, u32); 2], vk::Buffer)>> {
        let (groups, kib) = rec.prefetch;
        let Some(next) = rec.mv_prev.get(rec.mv_log.len()).copied() else {
            return Ok(None);
        };
        if groups == 0 || kib == 0 {
            return Ok(None);
        }
        if rec.sink.is_none() {
            rec.sink = Some(self.buffer_with(rec, &[0u8; 16])?);
        }
        let sink = rec.sink.as_ref().unwrap().buffer;
        let sectors = next.map(|(b, bytes)| (b, (bytes.min(kib * 1024) / 32) as u32));
        rec.prefetching_norms += 1;
        Ok(Some((groups, sectors, sink)))
    }

    fn try_rope(&self, x: &mut VkBuf, n: usize, p: RopeParams) -> Result<()> {
        let half = p.head_dim / 2;
        assert!(n * p.heads * p.head_dim <= x.len, "rope shapes");
        let mut rec = self.rec();
        let table = self.rope_table(&mut rec, n, p)?;
        rec.dispatch(
            self.dev(),
            "rope_f32",
            &[x.buffer(), table],
            &[u(n), u(p.heads), u(half)],
            grid(u((n * p.heads * half).div_ceil(256))),
        )
    }

    /// QK-norm + RoPE of q and k: one norm_rope_f32 dispatch for both.
    #[allow(clippy::too_many_arguments)]
    fn try_qk_norm_rope(
        &self,
        q: &mut VkBuf,
        k: &mut VkBuf,
        q_norm: &VkWeight,
        k_norm: &VkWeight,
        n: usize,
        kv_heads: usize,
        p: RopeParams,
        eps: f32,
    ) -> Result<()> {
        let half = p.head_dim / 2;
        assert!(
            n * p.heads * p.head_dim <= q.len
                && n * kv_heads * p.head_dim <= k.len
                && q_norm.cols == p.head_dim
                && k_norm.cols == p.head_dim
                && p.head_dim % 2 == 0
                && p.head_dim <= 512,
            "qk_norm_rope shapes"
        );
        if n == 0 {
            return Ok(());
        }
        let mut rec = self.rec();
        let table = self.rope_table(&mut rec, n, p)?;
        let (wq, wk) = (
            q_norm.vector.as_ref().expect("norm weights are 1-D"),
            k_norm.vector.as_ref().expect("norm weights are 1-D"),
        );
        let pq = ops::PendingQkNorm {
            buffers: [q.buffer(), k.buffer(), wq.buffer(), wk.buffer(), table],
            push: [u(n), u(p.heads), u(kv_heads), u(half), f(eps)],
            groups: u(n * (p.heads + kv_heads)),
        };
        // A decode step's norm waits for the attention that reads q and k (try_attention).
        if n == 1 && self.shared.fuse_attention {
            rec.pending_qk = Some(pq);
            return Ok(());
        }
        self.record_qk_norm_rope(&mut rec, pq)
    }

    /// The cos/sin table of a batch (recorded once per command buffer and shape; every layer
    /// of a kind shares it).
    fn rope_table(&self, rec: &mut Recorder, n: usize, p: RopeParams) -> Result<vk::Buffer> {
        let half = p.head_dim / 2;
        let key = [u(p.pos0), u(n), u(half), f(p.base), f(p.scale)];
        if !rec.rope_tables.contains_key(&key) {
            // cos/sin exactly as the CPU backend computes them (f32 inv_freq, f32 sin_cos).
            let d = p.head_dim;
            let inv_freq: Vec<f32> = (0..half)
                .map(|j| 1.0 / p.base.powf((2 * j) as f32 / d as f32) / p.scale)
                .collect();
            let mut cos = Vec::with_capacity(n * half);
            let mut sin = Vec::with_capacity(n * half);
            for t in 0..n {
                let pos = (p.pos0 + t) as f32;
                for &fr in &inv_freq {
                    let (s, c) = (pos * fr).sin_cos();
                    sin.push(s);
                    cos.push(c);
                }
            }
            cos.extend(sin);
            let bytes: Vec<u8> = cos.iter().flat_map(|v| v.to_le_bytes()).collect();
            let table = self.try_alloc(2 * n * half)?;
            rec.update(self.dev(), table.buffer(), 0, &bytes)?;
            rec.rope_tables.insert(key, table);
        }
        Ok(rec.rope_tables[&key].buffer())
    }

    fn try_attention(
        &self,
        kv: &mut VkKv,
        q: &VkBuf,
        k: &VkBuf,
        v: &VkBuf,
        out: &mut VkBuf,
        p: AttnParams,
    ) -> Result<()> {
        let d = p.head_dim;
        let kv_dim = p.kv_heads * d;
        assert_eq!(kv.kv_dim, kv_dim, "KV cache width");
        assert_eq!(
            kv.len, p.pos0,
            "attention batch must start where the cache ends"
        );
        assert!(
            d <= 512 && d % 16 == 0 && p.heads % p.kv_heads == 0,
            "attention shapes (head_dim <= 512, a multiple of 16)"
        );
        let end = p.pos0 + p.n;
        // Decode on int8 activations: the merge of the splits also writes o_proj's int8 input,
        // so it runs even without a split.
        let q8 = p.n == 1 && d % 32 == 0 && self.int8_activations();
        // A deferred QK-norm + RoPE of exactly these q and k is applied inside attention_f32
        // (which then also merges its splits itself); anything else records it first.
        let pending = self.rec_raw().pending_qk.take();
        let fused = match pending {
            Some(pq)
                if q8
                    && p.heads <= COUNTERS
                    && pq.buffers[0] == q.buffer()
                    && pq.buffers[1] == k.buffer() =>
            {
                Some(pq)
            }
            Some(pq) => {
                self.record_qk_norm_rope(&mut self.rec(), pq)?;
                None
            }
            None => None,
        };
        // A linear (global) cache grows by doubling; the copy is recorded in order.
        if kv.window.is_none() && end > kv.cap {
            let cap = end.next_power_of_two();
            let (nk, nv) = (self.try_alloc(cap * kv_dim)?, self.try_alloc(cap * kv_dim)?);
            let bytes = (kv.len * kv_dim * 4) as u64;
            let mut rec = self.rec();
            if bytes > 0 {
                let region = [vk::BufferCopy {
                    src_offset: 0,
                    dst_offset: 0,
                    size: bytes,
                }];
                rec.copy(self.dev(), kv.k.buffer(), nk.buffer(), &region)?;
                rec.copy(self.dev(), kv.v.buffer(), nv.buffer(), &region)?;
            }
            kv.k = nk;
            kv.v = nv;
            kv.cap = cap;
        }
        // Split-K: spread the longest query's keys over enough workgroups (flash-decoding).
        let span = end.min(p.window.unwrap_or(usize::MAX));
        let (chunk, splits) = attention_splits(p.n * p.heads, span);
        let merge = splits > 1 || q8;
        let part = if merge {
            Some(self.try_alloc(p.n * p.heads * splits * (d + 2))?)
        } else {
            None
        };
        let part_buf = part.as_ref().map_or(out.buffer(), |b| b.buffer());
        let xq = if q8 {
            Some(self.try_alloc(q8_len(p.heads * d))?)
        } else {
            None
        };
        let xq_buf = xq.as_ref().map_or(out.buffer(), |b| b.buffer());
        let mut rec = self.rec();
        let fused_bindings = match &fused {
            Some(pq) => [
                pq.buffers[2],
                pq.buffers[3],
                pq.buffers[4],
                self.attention_counters(&mut rec)?,
                xq_buf,
            ],
            None => [out.buffer(); 5],
        };
        let (gx, gy, _) = grid(u(p.n * p.heads));
        rec.dispatch(
            self.dev(),
            "attention_f32",
            &[
                q.buffer(),
                k.buffer(),
                v.buffer(),
                kv.k.buffer(),
                kv.v.buffer(),
                out.buffer(),
                part_buf,
                fused_bindings[0],
                fused_bindings[1],
                fused_bindings[2],
                fused_bindings[3],
                fused_bindings[4],
            ],
            &[
                u(p.n),
                u(p.pos0),
                u(p.heads),
                u(p.kv_heads),
                u(d),
                u(p.window.unwrap_or(0)),
                u(kv.window.unwrap_or(0)),
                f(p.scale),
                f(p.softcap.unwrap_or(0.0)),
                u(chunk),
                u(splits),
                (p.n == 1) as u32,
                !merge as u32,
                fused.is_some() as u32,
                fused.as_ref().map_or(0, |pq| pq.push[4]), // QK-norm's eps
            ],
            (gx, gy, u(splits)),
        )?;
        // Store a prefill batch (a one-token step was stored by attention_f32); a ring keeps
        // only its last `window` positions.
        let row = (kv_dim * 4) as u64;
        let mut regions: Vec<vk::BufferCopy> = Vec::new();
        for t in (0..p.n).filter(|_| p.n > 1) {
            let pos = p.pos0 + t;
            let slot = match kv.window {
                Some(w) if end - pos > w => continue,
                Some(w) => pos % w,
                None => pos,
            };
            match regions.last_mut() {
                Some(r)
                    if r.src_offset + r.size == t as u64 * row
                        && r.dst_offset + r.size == slot as u64 * row =>
                {
                    r.size += row
                }
                _ => regions.push(vk::BufferCopy {
                    src_offset: t as u64 * row,
                    dst_offset: slot as u64 * row,
                    size: row,
                }),
            }
        }
        if !regions.is_empty() {
            rec.copy(self.dev(), k.buffer(), kv.k.buffer(), &regions)?;
            rec.concurrent();
            rec.copy(self.dev(), v.buffer(), kv.v.buffer(), &regions)?;
        }
        if merge && fused.is_none() {
            rec.dispatch(
                self.dev(),
                "attention_combine_f32",
                &[part_buf, out.buffer(), xq_buf],
                &[u(p.n * p.heads), u(d), u(splits), q8 as u32],
                grid(u(p.n * p.heads)),
            )?;
        }
        if let Some(buf) = xq {
            rec.remember_quantized(q8_key(out.buffer(), p.heads * d, None), buf);
        }
        kv.len = end;
        Ok(())
    }

    fn elementwise(&self, name: &'static str, a: &VkBuf, b: &VkBuf, len: usize) -> Result<()> {
        assert!(len <= a.len && len <= b.len, "{name}: length");
        if len == 0 {
            return Ok(());
        }
        self.rec().dispatch(
            self.dev(),
            name,
            &[a.buffer(), b.buffer()],
            &[u(len)],
            grid(u(len.div_ceil(256))),
        )
    }

    fn try_top_k(&self, x: &VkBuf, len: usize, k: usize) -> Result<Vec<(u32, f32)>> {
        let k = k.min(len);
        if k == 0 {
            return Ok(Vec::new());
        }
        if k > 64 {
            // Beyond the device kernel's k: read everything back (rare: samplers use k <= 64).
            return Ok(super::cpu::top_k(&self.try_download(x, len)?, k));
        }
        const CHUNK: usize = 4096;
        let mut count = len;
        let mut vals: Option<VkBuf> = None;
        let mut idx: Option<VkBuf> = None;
        loop {
            let groups = count.div_ceil(CHUNK);
            let (ov, oi) = (self.try_alloc(groups * k)?, self.try_alloc(groups * k)?);
            let vin = vals.as_ref().map_or(x.buffer(), |b| b.buffer());
            // Pass 1 has no index input: bind the values again (never read).
            let iin = idx.as_ref().map_or(vin, |b| b.buffer());
            self.rec().dispatch(
                self.dev(),
                "top_k_f32",
                &[vin, iin, ov.buffer(), oi.buffer()],
                &[u(count), u(k), u(idx.is_some() as usize)],
                grid(u(groups)),
            )?;
            count = groups * k;
            vals = Some(ov);
            idx = Some(oi);
            if groups == 1 {
                break;
            }
        }
        let (vals, idx) = (vals.unwrap(), idx.unwrap());
        let n = (k * 4) as u64;
        let bytes = self
            .rec()
            .read(self.dev(), &[(vals.buffer(), 0, n), (idx.buffer(), 0, n)])?;
        let (vb, ib) = bytes.split_at(k * 4);
        let no_barriers = ops::barriers_off();
        Ok(ib
            .chunks_exact(4)
            .zip(vb.chunks_exact(4))
            .map(|(i, v)| {
                let id = u32::from_le_bytes([i[0], i[1], i[2], i[3]]);
                // Without barriers (a timing experiment) the index is garbage; keep it in range
                // so the step can go on.
                let id = if no_barriers { id % len as u32 } else { id };
                (id, f32::from_le_bytes([v[0], v[1], v[2], v[3]]))
            })
            .collect())
    }
}

/// Unwraps an op's result: the trait gives ops no error channel (see the module docs).
fn ok<T>(r: Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("vulkan backend: {e:#}"))
}

impl Backend for VulkanBackend {
    fn set_profiling(&self, on: bool) {
        VulkanBackend::set_profiling(self, on)
    }

    fn copy_bandwidth(&self) -> Option<f64> {
        // 256 MiB: far beyond any GPU cache, small enough for an iGPU's heap. The higher of
        // vkCmdCopyBuffer and a compute-shader copy (the former may run on a copy-engine path
        // well below HBM bandwidth on discrete GPUs); both read + write bytes per second.
        let engine = self.measure_copy_bandwidth(256 << 20, 10).ok();
        let shader = self.measure_shader_copy_bandwidth(256 << 20, 10).ok();
        match (engine, shader) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    type Buf = VkBuf;
    type Weight = VkWeight;
    type Kv = VkKv;

    fn describe(&self) -> String {
        let info = &self.shared.dev.info;
        let arena = self.shared.arena.lock().unwrap();
        let import = if arena.imported_bytes > 0 {
            format!(
                "{:.1} MiB read in place from the file's memory map (VK_EXT_external_memory_host)",
                arena.imported_bytes as f64 / (1u64 << 20) as f64
            )
        } else if info.external_memory_host && self.import_weights() {
            "VK_EXT_external_memory_host available, no weight imported".into()
        } else if info.external_memory_host {
            "VK_EXT_external_memory_host not used (discrete memory, or MIXQ_VK_IMPORT=0)".into()
        } else {
            "no VK_EXT_external_memory_host".into()
        };
        let prefill = if self.coop_matmul() {
            "tensor cores (VK_NV_cooperative_matrix, f16 x f16 -> f32)"
        } else if info.coop_prefill {
            "portable f32 tiles (tensor cores available, turned off)"
        } else {
            "portable f32 tiles"
        };
        format!(
            "vulkan:{} {} ({}, {}): weights {} ({:.1} MiB), {import}; bindings split at {} MiB; \
             prefill matmul: {prefill}",
            info.index,
            info.name,
            info.device_type,
            info.driver,
            self.upload_path,
            arena.bytes as f64 / (1 << 20) as f64,
            self.shared.max_binding >> 20
        )
    }

    fn load_weight(&self, w: &WeightSource) -> Result<VkWeight> {
        self.try_load_weight(w)
    }

    /// GPU time per op kind while profiling is on ([`VulkanBackend::set_profiling`]).
    fn report(&self) -> Option<String> {
        let stats = self.op_stats();
        if stats.is_empty() {
            return None;
        }
        let total: f64 = stats.iter().map(|s| s.1).sum();
        let mut out = format!("vulkan GPU time {:.3} ms:", total * 1e3);
        for (k, s, c) in stats {
            out.push_str(&format!(
                "\n  {k:<28} {:>9.3} ms {:>5.1}% {c:>7} cmds {:>8.2} us/cmd",
                s * 1e3,
                100.0 * s / total.max(1e-30),
                s * 1e6 / c.max(1) as f64
            ));
        }
        Some(out)
    }

    fn reset_report(&self) {
        self.reset_op_times()
    }

    fn alloc(&self, len: usize) -> VkBuf {
        ok(self.try_alloc(len))
    }

    fn upload(&self, data: &[f32], buf: &mut VkBuf) {
        ok(self.try_upload(data, buf))
    }

    fn download(&self, buf: &VkBuf, len: usize) -> Vec<f32> {
        ok(self.try_download(buf, len))
    }

    fn new_kv(&self, kv_dim: usize, window: Option<usize>) -> VkKv {
        ok(self.try_new_kv(kv_dim, window))
    }

    fn truncate_kv(&self, kv: &mut VkKv, len: usize) {
        // As on the CPU: a ring cannot be rewound past what it overwrote; callers re-run.
        kv.len = kv.len.min(len);
    }

    fn embed(&self, table: &VkWeight, ids: &[u32], scale: f32, out: &mut VkBuf) {
        ok(self.try_embed(table, ids, scale, out))
    }

    fn rms_norm(&self, x: &mut VkBuf, w: &VkWeight, rows: usize, eps: f32) {
        assert!(rows * w.cols <= x.len, "rms_norm shapes");
        ok(self.try_rms_norm(x.buffer(), w, rows, w.cols, eps, x.buffer(), false))
    }

    fn rms_norm_into(
        &self,
        x: &VkBuf,
        w: &VkWeight,
        rows: usize,
        d: usize,
        eps: f32,
        out: &mut VkBuf,
    ) {
        assert!(
            d == w.cols && rows * d <= x.len && rows * d <= out.len,
            "rms_norm shapes"
        );
        ok(self.try_rms_norm(x.buffer(), w, rows, d, eps, out.buffer(), true))
    }

    fn add_rms_norm(
        &self,
        x: &mut VkBuf,
        y: &mut VkBuf,
        w: &VkWeight,
        next: Option<&VkWeight>,
        rows: usize,
        d: usize,
        eps: f32,
    ) {
        assert!(
            d == w.cols && next.is_none_or(|n| n.cols == d) && rows * d <= x.len.min(y.len),
            "add_rms_norm shapes"
        );
        ok(self.try_add_rms_norm(x, y, w, next, rows, d, eps))
    }

    fn qk_norm_rope(
        &self,
        q: &mut VkBuf,
        k: &mut VkBuf,
        q_norm: &VkWeight,
        k_norm: &VkWeight,
        n: usize,
        kv_heads: usize,
        p: RopeParams,
        eps: f32,
    ) {
        ok(self.try_qk_norm_rope(q, k, q_norm, k_norm, n, kv_heads, p, eps))
    }

    fn matmul_many(&self, ws: &[&VkWeight], x: &VkBuf, n: usize, outs: &mut [&mut VkBuf]) {
        ok(self.try_matmul_many(ws, x, n, outs))
    }

    fn gate_up(
        &self,
        gate_w: &VkWeight,
        up_w: &VkWeight,
        x: &VkBuf,
        n: usize,
        inter: usize,
        gate: &mut VkBuf,
        up: &mut VkBuf,
    ) {
        ok(self.try_gate_up(gate_w, up_w, x, n, inter, gate, up))
    }

    fn matmul(&self, w: &VkWeight, x: &VkBuf, n: usize, out: &mut VkBuf) {
        ok(self.try_matmul(w, x, n, out))
    }

    fn rope(&self, x: &mut VkBuf, n: usize, p: RopeParams) {
        ok(self.try_rope(x, n, p))
    }

    fn attention(
        &self,
        kv: &mut VkKv,
        q: &VkBuf,
        k: &VkBuf,
        v: &VkBuf,
        out: &mut VkBuf,
        p: AttnParams,
    ) {
        ok(self.try_attention(kv, q, k, v, out, p))
    }

    fn gelu_mul(&self, gate: &mut VkBuf, up: &VkBuf, len: usize) {
        ok(self.elementwise("gelu_mul_f32", gate, up, len))
    }

    fn add(&self, x: &mut VkBuf, y: &VkBuf, len: usize) {
        ok(self.elementwise("add_f32", x, y, len))
    }

    fn copy(&self, src: &VkBuf, src_offset: usize, dst: &mut VkBuf, len: usize) {
        assert!(
            src_offset + len <= src.len && len <= dst.len,
            "copy lengths"
        );
        if len == 0 {
            return;
        }
        let region = [vk::BufferCopy {
            src_offset: (src_offset * 4) as u64,
            dst_offset: 0,
            size: (len * 4) as u64,
        }];
        ok(self
            .rec()
            .copy(self.dev(), src.buffer(), dst.buffer(), &region))
    }

    fn top_k(&self, x: &VkBuf, len: usize, k: usize) -> Vec<(u32, f32)> {
        ok(self.try_top_k(x, len, k))
    }
}
