//! The CPU backend: SIMD kernels chosen at run time, weights read in place from the memory
//! map (a `CpuWeight` is a view, nothing is copied at load).
//!
//! Two modes:
//! - [`CpuBackend::new`]: **exact**. f32 activations; quantized rows are dequantized in
//!   registers bit-identically to the format's reference; f32 KV cache. Every other backend and
//!   the golden tests compare against this mode. Rows in parallel through rayon.
//! - [`CpuBackend::fast`]: what `mixq-run` should use. Activations are quantized per group to
//!   int8 for integer dot products against quantized weights, and the KV cache is f16. The
//!   difference from exact mode is activation/KV rounding only (tests bound it; the benchmark
//!   reports KL divergence on the real model). On AVX-512 VNNI: prefill (4+ tokens) runs a
//!   GEMM that unpacks each tile of 16 weight rows once for all tokens (`kernels/gemm.rs`; float
//!   weights get an f32 one), decode the row kernels; q/k/v and gate/up share one fork-join,
//!   and matmuls run on a spinning team (`team.rs`) instead of rayon.
//!
//! Layout: `kernels/` (row kernels per type and ISA and the GEMM, checked against the
//! format's scalar reference), `kv.rs` (cache + attention), `team.rs` (fork-join for the
//! matmuls), `tests.rs`, `bench.rs` (ignored benchmarks; `bench_files` times real files).

#[cfg(test)]
mod bench;
pub mod kernels;
mod kv;
mod team;
#[cfg(test)]
mod tests;

use super::{AttnParams, Backend, RopeParams};
use crate::weights::WeightSource;
use anyhow::{bail, Result};
use kernels::{Isa, QAct};
pub use kv::CpuKv;
use mixq_format::quant::hadamard::apply_hadamard_with_signs;
use mixq_format::quant::{hadamard_signs, QType, Transform};
use mixq_format::SharedBytes;
use rayon::prelude::*;
use std::borrow::Cow;

/// How the CPU backend computes.
#[derive(Debug, Clone, Copy)]
pub struct CpuOptions {
    /// Rayon threads (`None`: one per core). The global pool is created once per process.
    pub threads: Option<usize>,
    /// Quantize activations to int8 for integer dot products against quantized weights.
    pub int8_activations: bool,
    /// Store the KV cache in f16 instead of f32.
    pub kv_f16: bool,
    /// Force an instruction set (`None`: the best this CPU has). Tests and benchmarks only.
    pub isa: Option<Isa>,
}

impl CpuOptions {
    /// The exact mode: f32 activations and KV cache.
    pub fn exact(threads: Option<usize>) -> Self {
        CpuOptions {
            threads,
            int8_activations: false,
            kv_f16: false,
            isa: None,
        }
    }

    /// The fast mode: int8 activations against quantized weights, f16 KV cache.
    pub fn fast(threads: Option<usize>) -> Self {
        CpuOptions {
            int8_activations: true,
            kv_f16: true,
            ..Self::exact(threads)
        }
    }
}

pub struct CpuBackend {
    threads: usize,
    isa: Isa,
    opts: CpuOptions,
    prof: Profile,
    /// Runs the matmuls (see `team.rs`: rayon's injection from outside the pool costs two
    /// thread wake-ups per matmul, and decode runs ~90 of them per token).
    team: team::Team,
}

/// Wall time per op while `bench --profile` asks for it (every op is synchronous on the CPU,
/// so the caller's clock is the op's time).
#[derive(Default)]
struct Profile {
    on: std::sync::atomic::AtomicBool,
    ops: std::sync::Mutex<std::collections::BTreeMap<String, (f64, u64)>>,
}

/// Records the time from its creation to its drop under its name (profiling on only).
struct ProfScope<'a>(Option<(&'a Profile, String, std::time::Instant)>);

impl Drop for ProfScope<'_> {
    fn drop(&mut self) {
        if let Some((p, name, t)) = self.0.take() {
            let mut ops = p.ops.lock().unwrap();
            let e = ops.entry(name).or_default();
            e.0 += t.elapsed().as_secs_f64();
            e.1 += 1;
        }
    }
}

impl Profile {
    fn scope(&self, name: impl FnOnce() -> String) -> ProfScope<'_> {
        use std::sync::atomic::Ordering::Relaxed;
        ProfScope(
            self.on
                .load(Relaxed)
                .then(|| (self, name(), std::time::Instant::now())),
        )
    }
}

impl CpuBackend {
    /// The exact mode (see the module doc).
    pub fn new(threads: Option<usize>) -> Result<Self> {
        Self::with_options(CpuOptions::exact(threads))
    }

    /// The fast mode (see the module doc).
    pub fn fast(threads: Option<usize>) -> Result<Self> {
        Self::with_options(CpuOptions::fast(threads))
    }

    pub fn with_options(opts: CpuOptions) -> Result<Self> {
        let threads = opts.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        // The global pool may already exist (tests, a second model); its size then stays.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global();
        let best = Isa::detect();
        let isa = match opts.isa {
            Some(i) if !Isa::available().contains(&i) => {
                bail!("instruction set {} is not available on this CPU", i.name())
            }
            Some(i) => i,
            None => best,
        };
        let threads = rayon::current_num_threads().min(threads);
        Ok(CpuBackend {
            threads,
            team: team::Team::new(threads),
            isa,
            opts,
            prof: Profile::default(),
        })
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn options(&self) -> CpuOptions {
        self.opts
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
    fn row(&self, r: usize) -> &[u8] {
        &self.bytes[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    pub fn qtype(&self) -> QType {
        self.qtype
    }

    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
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

/// Dot product with 8 independent accumulators (portable; the kernels have SIMD versions).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    kernels::scalar::dot(a, b)
}

fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
}

/// Vectors up to this length are processed on the calling thread (a decode step's norms,
/// RoPE and GELU): a fork-join costs more than the work.
const SERIAL_LEN: usize = 16384;

/// `f` over matching chunks of `a` and `b` of `chunk` values, in parallel only when there is
/// more than one chunk: a decode step's vectors are too small to repay a fork-join.
fn par_or_serial(
    a: &mut [f32],
    b: &[f32],
    chunk: usize,
    f: impl Fn(&mut [f32], &[f32]) + Sync + Send,
) {
    if a.len() <= chunk {
        f(a, b);
    } else {
        a.par_chunks_mut(chunk)
            .zip(b.par_chunks(chunk))
            .for_each(|(a, b)| f(a, b));
    }
}

/// A pointer to the output that row tasks write disjoint elements of.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// # Safety
    /// `i` is in bounds of the output.
    unsafe fn at(self, i: usize) -> *mut f32 {
        self.0.add(i)
    }

    /// # Safety
    /// `i` is in bounds of the output and no other task writes it.
    unsafe fn write(self, i: usize, v: f32) {
        *self.0.add(i) = v;
    }
}

/// Rows per rayon task: enough tasks to balance (8 per thread), a multiple of the 4-row tile.
fn row_chunk(rows: usize, threads: usize) -> usize {
    (rows / (threads * 8)).clamp(4, 1024).next_multiple_of(4)
}

impl CpuBackend {
    /// `out[t, r] = f(r0.., t)` over row chunks in parallel; `tile(r0, nrows, t, dst)` fills
    /// `dst[..nrows]` for rows `r0..r0 + nrows` (at most 4) and token `t`.
    fn for_rows<S: Send>(
        &self,
        rows: usize,
        n: usize,
        out: &mut [f32],
        init: impl Fn() -> S + Sync + Send,
        tile: impl Fn(&mut S, usize, usize, usize, &mut [f32; 4]) + Sync + Send,
        prepare: impl Fn(&mut S, usize, usize) + Sync + Send,
    ) {
        assert!(out.len() >= n * rows);
        let out = OutPtr(out.as_mut_ptr());
        let chunk = row_chunk(rows, self.threads);
        (0..rows.div_ceil(chunk))
            .into_par_iter()
            .for_each_init(init, |s, c| {
                let (a, b) = (c * chunk, ((c + 1) * chunk).min(rows));
                let mut r0 = a;
                while r0 < b {
                    let nr = (b - r0).min(4);
                    prepare(s, r0, nr);
                    for t in 0..n {
                        let mut dst = [0f32; 4];
                        tile(s, r0, nr, t, &mut dst);
                        for (i, &v) in dst[..nr].iter().enumerate() {
                            // SAFETY: (t, r0 + i) is written by this task only; in bounds above.
                            unsafe { out.write(t * rows + r0 + i, v) };
                        }
                    }
                    r0 += nr;
                }
            });
    }
}

/// Smallest batch the GEMM takes: below it, packing a tile costs more than the row kernels'
/// per-token unpacking it saves.
const GEMM_MIN_TOKENS: usize = 4;

impl CpuBackend {
    /// Whether the float GEMM (fast mode, prefill) runs on this CPU.
    fn float_gemm(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return self.isa == Isa::Avx512Vnni;
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// Prefill on float weights: tiles of 16 rows widened to f32 once, every token against
    /// them (`x` already rotated; `out` holds `n * rows`).
    #[cfg(target_arch = "x86_64")]
    fn float_gemm_matmul(&self, w: &CpuWeight, x: &[f32], n: usize, out: &mut [f32]) {
        use kernels::gemm::{fgemm_tile, FTile, TILE};
        let (rows, cols) = (w.rows, w.cols);
        let tiles = rows.div_ceil(TILE);
        let per_unit = (tiles / (self.threads * 4)).max(1);
        let outp = OutPtr(out.as_mut_ptr());
        let (bytes, rb): (&[u8], usize) = (&w.bytes, w.row_bytes);
        team::for_each_unit(
            &self.team,
            tiles.div_ceil(per_unit),
            || FTile::new(w.qtype, cols),
            |tile, u| {
                for tr in (u * per_unit * TILE..((u + 1) * per_unit * TILE).min(rows)).step_by(TILE)
                {
                    let nr = (rows - tr).min(TILE);
                    tile.pack(bytes[tr * rb..(tr + nr) * rb].chunks_exact(rb));
                    // SAFETY: AVX-512 checked by float_gemm; rows tr..tr + nr of every token
                    // are this unit's only.
                    unsafe { fgemm_tile(tile, nr, x, n, outp.at(tr), rows) };
                }
            },
        );
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn float_gemm_matmul(&self, _: &CpuWeight, _: &[f32], _: usize, _: &mut [f32]) {
        unreachable!("float_gemm is false")
    }
}

/// A thread's scratch tile for the GEMM.
#[cfg(target_arch = "x86_64")]
type Scratch = Option<kernels::gemm::Tile>;
#[cfg(not(target_arch = "x86_64"))]
type Scratch = Option<()>;

impl CpuBackend {
    /// The int8-activation path for weights sharing the input `x` (`n` tokens): each distinct
    /// input (rotation, activation block) is quantized once, and every weight's rows go to one
    /// parallel loop, so q/k/v or gate/up cost one fork-join instead of one each.
    fn int8_matmuls(&self, ws: &[&CpuWeight], x: &[f32], n: usize, outs: &mut [&mut [f32]]) {
        let _p = self.prof.scope(|| {
            let names: Vec<String> = ws
                .iter()
                .map(|w| format!("{} {}x{}", w.qtype.name(), w.rows, w.cols))
                .collect();
            format!("matmul n={} {}", n.min(2), names.join(" + "))
        });
        assert_eq!(ws.len(), outs.len());
        let mut acts: Vec<QAct> = Vec::new();
        let mut act_of = Vec::with_capacity(ws.len());
        for (i, w) in ws.iter().enumerate() {
            assert!(outs[i].len() >= n * w.rows && x.len() >= n * w.cols);
            let blk = kernels::act_block(w.qtype);
            let same = (0..i).find(|&j| {
                let v = ws[j];
                v.cols == w.cols && kernels::act_block(v.qtype) == blk && v.rotation == w.rotation
            });
            act_of.push(match same {
                Some(j) => act_of[j],
                None => {
                    acts.push(QAct::new(&w.input(&x[..n * w.cols]), n, w.cols, blk));
                    acts.len() - 1
                }
            });
        }
        let outs: Vec<OutPtr> = outs.iter_mut().map(|o| OutPtr(o.as_mut_ptr())).collect();
        #[cfg(target_arch = "x86_64")]
        let gemm = self.isa == Isa::Avx512Vnni && n >= GEMM_MIN_TOKENS;
        #[cfg(not(target_arch = "x86_64"))]
        let gemm = false;
        // Work units (weight, first row, end row): whole tiles for the GEMM, row chunks for the
        // row kernels; about 4 (GEMM) or 8 units per thread so both threads finish together.
        let total: usize = ws.iter().map(|w| w.rows).sum();
        let per_unit = if gemm {
            (total / (self.threads * 4)).max(1).next_multiple_of(16)
        } else {
            (total / (self.threads * 8)).clamp(16, 1024)
        };
        let units: Vec<(usize, usize, usize)> = (ws.iter().enumerate())
            .flat_map(|(j, w)| {
                (0..w.rows)
                    .step_by(per_unit)
                    .map(move |r0| (j, r0, (r0 + per_unit).min(w.rows)))
            })
            .collect();
        let isa = self.isa;
        team::for_each_unit(
            &self.team,
            units.len(),
            || -> Scratch { None },
            |tile, u| {
                let (j, r0, r1) = units[u];
                let (w, a, out) = (ws[j], &acts[act_of[j]], outs[j]);
                let bytes: &[u8] = &w.bytes;
                let rb = w.row_bytes;
                #[cfg(target_arch = "x86_64")]
                if gemm {
                    use kernels::gemm::{gemm_tile, Tile, TILE};
                    let tile = match tile {
                        Some(t) if Tile::fits(t, w.qtype, w.cols) => t,
                        _ => tile.insert(Tile::new(w.qtype, w.cols)),
                    };
                    for t0 in (r0..r1).step_by(TILE) {
                        let nr = (r1 - t0).min(TILE);
                        tile.pack(bytes[t0 * rb..(t0 + nr) * rb].chunks_exact(rb));
                        // SAFETY: ISA checked above; rows t0..t0 + nr of every token belong
                        // to this unit only; out holds n * rows values.
                        unsafe { gemm_tile(tile, nr, a, n, out.0.add(t0), w.rows) };
                    }
                    return;
                }
                let _ = tile;
                let f = kernels::q_dot(isa, w.qtype).expect("quantized type");
                for r in r0..r1 {
                    let row = &bytes[r * rb..(r + 1) * rb];
                    for t in 0..n {
                        // SAFETY: ISA detected, row sizes validated at load; (t, r) is this
                        // unit's only.
                        unsafe { out.write(t * w.rows + r, f(row, a, t)) };
                    }
                }
            },
        );
    }
}

impl Backend for CpuBackend {
    type Buf = Vec<f32>;
    type Weight = CpuWeight;
    type Kv = CpuKv;

    fn describe(&self) -> String {
        format!(
            "cpu ({} threads, {} kernels, {} activations, {} KV cache)",
            self.threads,
            self.isa.name(),
            if self.opts.int8_activations {
                "int8"
            } else {
                "f32"
            },
            if self.opts.kv_f16 { "f16" } else { "f32" }
        )
    }

    fn load_weight(&self, w: &WeightSource) -> Result<CpuWeight> {
        let row_bytes = w.validate()?;
        let rotation = match w.transform {
            Transform::None => None,
            Transform::BlockHadamard { block, seed } => {
                Some((hadamard_signs(w.cols, seed), block as usize))
            }
        };
        let vector = (w.rows == 1).then(|| {
            let mut v = vec![0.0; w.cols];
            // SAFETY: ISA detected; the size was checked above.
            unsafe { kernels::decode(self.isa, w.qtype)(&w.bytes, &mut v) };
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
        let _p = self.prof.scope(|| "download".into());
        buf[..len].to_vec()
    }

    fn new_kv(&self, kv_dim: usize, window: Option<usize>) -> CpuKv {
        CpuKv::new(kv_dim, window, self.opts.kv_f16)
    }

    fn truncate_kv(&self, kv: &mut CpuKv, len: usize) {
        kv.truncate(len);
    }

    fn embed(&self, table: &CpuWeight, ids: &[u32], scale: f32, out: &mut Vec<f32>) {
        let _p = self.prof.scope(|| "embed".into());
        let d = table.cols;
        let dec = kernels::decode(self.isa, table.qtype);
        for (i, &id) in ids.iter().enumerate() {
            let row = &mut out[i * d..(i + 1) * d];
            // SAFETY: ISA detected; row sizes validated at load.
            unsafe { dec(table.row(id as usize), row) };
            row.iter_mut().for_each(|x| *x *= scale);
        }
    }

    fn rms_norm(&self, x: &mut Vec<f32>, w: &CpuWeight, rows: usize, eps: f32) {
        let _p = self.prof.scope(|| format!("rms_norm rows={}", rows.min(2)));
        let w = w.vector.as_deref().expect("norm weights are 1-D");
        let d = w.len();
        let norm = |row: &mut [f32]| {
            // Accumulate in f64: the residual stream reaches values in the thousands.
            let ms = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / d as f64;
            let inv = (1.0 / (ms + eps as f64).sqrt()) as f32;
            for (v, &g) in row.iter_mut().zip(w) {
                *v = *v * inv * (1.0 + g);
            }
        };
        if rows * d <= SERIAL_LEN {
            x[..rows * d].chunks_mut(d).for_each(norm);
        } else {
            x[..rows * d].par_chunks_mut(d).for_each(norm);
        }
    }

    #[allow(clippy::needless_range_loop)]
    fn matmul(&self, w: &CpuWeight, x: &Vec<f32>, n: usize, out: &mut Vec<f32>) {
        let (rows, cols, isa) = (w.rows, w.cols, self.isa);
        if w.qtype.is_quantized() && self.opts.int8_activations {
            self.int8_matmuls(&[w], &x[..n * cols], n, &mut [&mut out[..n * rows]]);
            return;
        }
        let _p = self
            .prof
            .scope(|| format!("matmul n={} {} {rows}x{cols}", n.min(2), w.qtype.name()));
        let x = w.input(&x[..n * cols]);
        let x = &x[..];
        let out = &mut out[..n * rows];
        let xt = |t: usize| &x[t * cols..(t + 1) * cols];
        // SAFETY (all kernel calls below): the ISA was detected, row sizes validated at load,
        // activations hold n * cols values.
        if !w.qtype.is_quantized() && self.opts.int8_activations && n < GEMM_MIN_TOKENS {
            // Decode on float weights (the HF checkpoint): one row per call, on the team.
            let f = kernels::f_dot_fast(isa, w.qtype);
            let per_unit = (rows / (self.threads * 8)).clamp(16, 1024);
            let outp = OutPtr(out.as_mut_ptr());
            let (bytes, rb): (&[u8], usize) = (&w.bytes, w.row_bytes);
            team::for_each_unit(
                &self.team,
                rows.div_ceil(per_unit),
                || (),
                |_, u| {
                    for r in u * per_unit..((u + 1) * per_unit).min(rows) {
                        for t in 0..n {
                            // SAFETY: as above; (t, r) is this unit's only.
                            unsafe {
                                outp.write(t * rows + r, f(&bytes[r * rb..(r + 1) * rb], xt(t)))
                            };
                        }
                    }
                },
            );
        } else if !w.qtype.is_quantized() && self.opts.int8_activations && self.float_gemm() {
            self.float_gemm_matmul(w, x, n, out);
        } else if !w.qtype.is_quantized() {
            // Float weights widen in registers; 4 rows share each activation load.
            let (f1, f4) = (kernels::f_dot(isa, w.qtype), kernels::f_dot4(isa, w.qtype));
            self.for_rows(
                rows,
                n,
                out,
                || (),
                |_, r0, nr, t, dst| {
                    if nr == 4 {
                        *dst = unsafe { f4([0, 1, 2, 3].map(|i| w.row(r0 + i)), xt(t)) };
                    } else {
                        for i in 0..nr {
                            dst[i] = unsafe { f1(w.row(r0 + i), xt(t)) };
                        }
                    }
                },
                |_, _, _| {},
            );
        } else {
            // Exact quantized path: decode a 4-row tile once (bit-identical to the reference),
            // reuse it for every token.
            let dec = kernels::decode(isa, w.qtype);
            let (f1, f4) = (
                kernels::f_dot(isa, QType::F32),
                kernels::f_dot4(isa, QType::F32),
            );
            self.for_rows(
                rows,
                n,
                out,
                || vec![0f32; 4 * cols],
                |tile, _, nr, t, dst| {
                    let r = |i: usize| kv::as_bytes(&tile[i * cols..(i + 1) * cols]);
                    if nr == 4 {
                        *dst = unsafe { f4([r(0), r(1), r(2), r(3)], xt(t)) };
                    } else {
                        for i in 0..nr {
                            dst[i] = unsafe { f1(r(i), xt(t)) };
                        }
                    }
                },
                |tile, r0, nr| {
                    for i in 0..nr {
                        unsafe { dec(w.row(r0 + i), &mut tile[i * cols..(i + 1) * cols]) };
                    }
                },
            );
        }
    }

    fn matmul_many(&self, ws: &[&CpuWeight], x: &Vec<f32>, n: usize, outs: &mut [&mut Vec<f32>]) {
        assert_eq!(ws.len(), outs.len(), "matmul_many: one output per weight");
        if self.opts.int8_activations && ws.iter().all(|w| w.qtype.is_quantized()) {
            let mut o: Vec<&mut [f32]> = (outs.iter_mut().zip(ws))
                .map(|(o, w)| &mut o[..n * w.rows])
                .collect();
            self.int8_matmuls(ws, x, n, &mut o);
        } else {
            for (w, out) in ws.iter().zip(outs.iter_mut()) {
                self.matmul(w, x, n, out);
            }
        }
    }

    fn gate_up(
        &self,
        gate_w: &CpuWeight,
        up_w: &CpuWeight,
        x: &Vec<f32>,
        n: usize,
        inter: usize,
        gate: &mut Vec<f32>,
        up: &mut Vec<f32>,
    ) {
        self.matmul_many(&[gate_w, up_w], x, n, &mut [&mut *gate, &mut *up]);
        self.gelu_mul(gate, up, n * inter);
    }

    fn qk_norm_rope(
        &self,
        q: &mut Vec<f32>,
        k: &mut Vec<f32>,
        q_norm: &CpuWeight,
        k_norm: &CpuWeight,
        n: usize,
        kv_heads: usize,
        p: RopeParams,
        eps: f32,
    ) {
        self.rms_norm(q, q_norm, n * p.heads, eps);
        self.rms_norm(k, k_norm, n * kv_heads, eps);
        let _p = self.prof.scope(|| "rope".into());
        // one sin/cos table for q and k (same positions)
        let tab = RopeTable::new(p, n);
        rope_with(&mut q[..n * p.heads * p.head_dim], p.heads, &tab);
        rope_with(&mut k[..n * kv_heads * p.head_dim], kv_heads, &tab);
    }

    fn rope(&self, x: &mut Vec<f32>, n: usize, p: RopeParams) {
        let _p = self.prof.scope(|| "rope".into());
        rope(&mut x[..n * p.heads * p.head_dim], p);
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
        let _p = self.prof.scope(|| format!("attention n={}", p.n.min(2)));
        kv::attention(self.isa, &self.team, kv, q, k, v, out, p);
    }

    fn gelu_mul(&self, gate: &mut Vec<f32>, up: &Vec<f32>, len: usize) {
        let _p = self.prof.scope(|| "gelu_mul".into());
        #[cfg(target_arch = "x86_64")]
        if self.opts.int8_activations && self.isa == Isa::Avx512Vnni {
            // SAFETY: the ISA was detected.
            par_or_serial(&mut gate[..len], &up[..len], SERIAL_LEN, |g, u| unsafe {
                kernels::x86::gelu_mul(g, u)
            });
            return;
        }
        par_or_serial(&mut gate[..len], &up[..len], SERIAL_LEN, |g, u| {
            for (g, &u) in g.iter_mut().zip(u) {
                *g = gelu_tanh(*g) * u;
            }
        });
    }

    fn add(&self, x: &mut Vec<f32>, y: &Vec<f32>, len: usize) {
        let _p = self.prof.scope(|| "add".into());
        for (a, b) in x[..len].iter_mut().zip(&y[..len]) {
            *a += b;
        }
    }

    fn copy(&self, src: &Vec<f32>, src_offset: usize, dst: &mut Vec<f32>, len: usize) {
        let _p = self.prof.scope(|| "copy".into());
        dst[..len].copy_from_slice(&src[src_offset..src_offset + len]);
    }

    fn report(&self) -> Option<String> {
        let ops = self.prof.ops.lock().unwrap();
        if ops.is_empty() {
            return None;
        }
        let total: f64 = ops.values().map(|v| v.0).sum();
        let mut rows: Vec<_> = ops.iter().collect();
        rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
        let mut out = format!(
            "cpu ops, wall time (n=2 stands for any batch > 1): {:.1} ms\n",
            total * 1e3
        );
        for (name, (t, calls)) in rows {
            out += &format!(
                "  {:>9.2} ms {:>5.1}% {calls:>7} calls {:>9.1} us/call  {name}\n",
                t * 1e3,
                100.0 * t / total,
                t * 1e6 / *calls as f64
            );
        }
        Some(out)
    }

    fn reset_report(&self) {
        self.prof.ops.lock().unwrap().clear();
    }

    fn set_profiling(&self, on: bool) {
        self.prof.on.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    fn top_k(&self, x: &Vec<f32>, len: usize, k: usize) -> Vec<(u32, f32)> {
        let _p = self.prof.scope(|| "top_k".into());
        top_k(&x[..len], k)
    }
}

/// The `k` largest values as (index, value), largest first; ties keep the lower index first.
pub fn top_k(x: &[f32], k: usize) -> Vec<(u32, f32)> {
    if k == 1 && !x.is_empty() {
        // greedy decoding, every token: one pass instead of an index vector of the vocabulary
        let mut best = 0;
        for (i, v) in x.iter().enumerate().skip(1) {
            if v.total_cmp(&x[best]).is_gt() {
                best = i;
            }
        }
        return vec![(best as u32, x[best])];
    }
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

/// NEOX (rotate-half) RoPE in place on rows of `[heads, head_dim]`, token `t` at position
/// `pos0 + t`; inv_freq in f32 as HF computes it. The hybrid backend runs the same arithmetic.
pub fn rope(x: &mut [f32], p: RopeParams) {
    let n = x.len() / (p.heads * p.head_dim);
    rope_with(x, p.heads, &RopeTable::new(p, n));
}

/// `sin` and `cos` of every (position, frequency) of a batch: Gemma's q and k share them.
struct RopeTable {
    half: usize,
    sin: Vec<f32>,
    cos: Vec<f32>,
}

impl RopeTable {
    fn new(p: RopeParams, n: usize) -> RopeTable {
        let d = p.head_dim;
        let half = d / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|j| 1.0 / p.base.powf((2 * j) as f32 / d as f32) / p.scale)
            .collect();
        let (sin, cos) = (0..n)
            .flat_map(|t| {
                let pos = (p.pos0 + t) as f32;
                inv_freq.iter().map(move |&f| (pos * f).sin_cos())
            })
            .unzip();
        RopeTable { half, sin, cos }
    }
}

/// RoPE on rows of `heads` heads by a precomputed table.
fn rope_with(x: &mut [f32], heads: usize, tab: &RopeTable) {
    let half = tab.half;
    let d = 2 * half;
    let per_token = |(t, tok): (usize, &mut [f32])| {
        let (sin, cos) = (
            &tab.sin[t * half..(t + 1) * half],
            &tab.cos[t * half..(t + 1) * half],
        );
        for head in tok.chunks_exact_mut(d) {
            let (a, b) = head.split_at_mut(half);
            for j in 0..half {
                let (x0, x1) = (a[j], b[j]);
                a[j] = x0 * cos[j] - x1 * sin[j];
                b[j] = x1 * cos[j] + x0 * sin[j];
            }
        }
    };
    if x.len() <= SERIAL_LEN {
        x.chunks_mut(heads * d).enumerate().for_each(per_token);
    } else {
        x.par_chunks_mut(heads * d).enumerate().for_each(per_token);
    }
}
