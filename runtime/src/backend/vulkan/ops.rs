//! The command recorder: every op appends to a command buffer, separated by barriers; the
//! sync points (download, top_k, weight upload) submit it, wait on a fence and start afresh.
//!
//! A step is one *synchronisation* (one wait), but long steps are cut into several submissions
//! of [`Recorder::flush_every`] commands each, submitted as soon as they are recorded: the GPU
//! starts the first layers while the host still records the last ones (a 27B decode step
//! records ~700 commands, milliseconds of host time the GPU would otherwise sit idle for).
//! Each continuation buffer starts with the same global barrier, which orders it after
//! everything submitted before it on the queue. Barriers are global memory barriers between
//! consecutive commands (compute and transfer, writes before reads and writes): Gemma's step is
//! a chain in which nearly every op reads the previous op's output, so finer tracking would
//! buy little.

use super::device::Device;
use super::memory::{MemoryUse, RawBuf};
use super::pipelines::{Pipelines, PUSH_BYTES};
use anyhow::{Context, Result};
use ash::vk;
use std::collections::HashMap;

/// Largest payload of one vkCmdUpdateBuffer.
const UPDATE_MAX: usize = 65536;
/// Commands per submission within a step unless `MIXQ_VK_FLUSH` says otherwise (0: one
/// submission per step). Not while profiling (the timestamps of a step share one query pool).
const FLUSH_EVERY: usize = 64;
/// Timestamps per command buffer when profiling (one per command, plus the start); commands
/// past it go unmeasured. A 27B decode step records ~1,000 commands.
const QUERIES: u32 = 8192;

/// GPU timestamps: one after every command while profiling (consecutive commands are separated
/// by full barriers, so the difference of two timestamps is the time of one command).
pub struct Profiler {
    pool: vk::QueryPool,
    /// Nanoseconds per timestamp tick.
    period_ns: f64,
    /// Timestamps are taken after each command.
    pub enabled: bool,
    /// Kind of each command measured in the current command buffer (query i + 1 ends it).
    marks: Vec<&'static str>,
    /// Seconds and count per kind since the last reset.
    pub totals: HashMap<&'static str, (f64, u64)>,
}

pub struct Recorder {
    cmd_pool: vk::CommandPool,
    /// The command buffer being recorded (begun when `recording`) and its fence.
    cmd: vk::CommandBuffer,
    fence: vk::Fence,
    recording: bool,
    /// Submitted, not yet waited for.
    in_flight: Vec<(vk::CommandBuffer, vk::Fence)>,
    /// Reset, ready for reuse.
    spare: Vec<(vk::CommandBuffer, vk::Fence)>,
    /// Commands recorded since the last wait (all submissions of the step).
    pub commands: usize,
    /// Commands in `cmd`.
    in_cmd: usize,
    /// Commands per submission within a step (0: no early submissions).
    pub flush_every: usize,
    pub pipelines: Pipelines,
    /// Host-visible buffer the sync points copy results into.
    readback: Option<RawBuf>,
    /// Host-visible buffer weight uploads go through (discrete GPUs).
    pub staging: Option<RawBuf>,
    /// Synchronisations (submit + wait) so far; a step's early submissions are not counted.
    pub submits: u64,
    pub dispatches: u64,
    /// RoPE cos/sin tables of the current command buffer, by (pos0, n, half, base, scale) bits:
    /// every layer of a kind shares one. Dropped (returned to the pool) at each submission.
    pub rope_tables: HashMap<[u32; 5], super::VkBuf>,
    /// The last Hadamard-rotated matmul input (gate_proj and up_proj share it).
    pub rotated: Option<RotatedInput>,
    /// The last int8-quantized decode input, key (source, 1, cols, block, seed) with the
    /// Hadamard rotation applied first (block 0: none): written by quantize_x_f32 or by the
    /// norm that produced the source (rownorm.glsl); the matvecs of one input share it.
    pub quantized: Option<RotatedInput>,
    /// The last f16 prefill input of matmul_coop (quantize_x16_f32), key (source, n, cols,
    /// block, seed) like `quantized`: q/k/v and gate/up share one.
    pub half_input: Option<RotatedInput>,
    /// The partial sums of the last split-k matmul_coop (vulkan/mod.rs `record_matmul_coop`).
    pub split_partials: Option<super::VkBuf>,
    /// Hadamard signs by (cols, seed), for the weights' rotations and the norms that rotate
    /// their int8 output. Live as long as the recorder.
    pub signs: HashMap<(usize, u64), RawBuf>,
    /// What the last fused q/k/v (`qkv`) and gate/up (`ffn`) decode matvecs wanted as input:
    /// (cols, Hadamard (block, seed) or none). The norms that feed them (rms_norm_into,
    /// add_rms_norm) write that int8 form speculatively; the matvec checks the key and falls
    /// back to quantize_x_f32 when it does not match (first layer of the first step).
    pub qkv_hint: Option<(usize, Option<(usize, u64)>)>,
    pub ffn_hint: Option<(usize, Option<(usize, u64)>)>,
    /// Present when the queue has timestamps (`timestampComputeAndGraphics` or valid bits).
    pub profiler: Option<Profiler>,
    /// A layer's last add_rms_norm, waiting to be fused with the next pre-norm.
    pub pending_norm: Option<PendingNorm>,
    /// A decode step's QK-norm + RoPE, waiting to be fused into the attention that follows.
    pub pending_qk: Option<PendingQkNorm>,
    /// One zeroed counter per head for attention_f32's fused merge (each dispatch leaves them
    /// zero again). Live as long as the recorder.
    pub attn_counters: Option<RawBuf>,
    /// The decode matvecs of the current step in call order: their first two weights' (fused
    /// q/k/v, gate/up) or binding chunks' buffers and byte lengths. A norm recorded before the
    /// i-th of a step prefetches entry i of the previous step's list into L2
    /// (vulkan/mod.rs `prefetch_next`); a step begins at its embedding gather.
    pub mv_log: Vec<[(vk::Buffer, u64); 2]>,
    pub mv_prev: Vec<[(vk::Buffer, u64); 2]>,
    /// The step being logged is a decode step (one token).
    pub mv_log_decode: bool,
    /// The L2 prefetch beside decode norms: (workgroups, KiB of each of the next matvec's
    /// first two weights); (0, _) is off. vulkan/mod.rs `default_prefetch`.
    pub prefetch: (u32, u64),
    /// Norms recorded with prefetching workgroups so far.
    pub prefetching_norms: u64,
    /// The word the prefetching workgroups may store to (never in practice). Live as long as
    /// the recorder.
    pub sink: Option<RawBuf>,
    /// The next command needs no barrier before it ([`Self::concurrent`]).
    no_barrier: bool,
    /// A copy or update was recorded since the last barrier (or the buffer continues earlier
    /// submissions): the next barrier waits for the transfer stage too.
    transfer_since_barrier: bool,
    /// `MIXQ_VK_BARRIER=all`: every barrier names compute and transfer on both sides.
    all_stages: bool,
    /// `MIXQ_VK_BARRIER=none`: no barrier between two dispatches. Wrong results; only a timing
    /// bound of what any scheme that hides the dependencies (persistent kernels, flags) could
    /// win. `mixq-run bench` says so when it is set.
    no_compute_barriers: bool,
}

/// An add_rms_norm without a next norm not recorded yet (vulkan/mod.rs `try_add_rms_norm`).
pub struct PendingNorm {
    pub x: vk::Buffer,
    pub y: vk::Buffer,
    /// The post-norm weights (f32 vector).
    pub w: vk::Buffer,
    pub rows: usize,
    pub d: usize,
    pub eps: f32,
}

/// A norm_rope_f32 dispatch not recorded yet (vulkan/mod.rs `try_qk_norm_rope`): its
/// bindings (q, k, w_q, w_k, cos/sin table), push constants and workgroups.
pub struct PendingQkNorm {
    pub buffers: [vk::Buffer; 5],
    pub push: [u32; 5],
    pub groups: u32,
}

/// A rotated copy of an activation buffer, valid while no other command is recorded after the
/// matmul that used it (any later command may have written the source).
pub struct RotatedInput {
    /// (source buffer, rows, cols, block, seed)
    pub key: (vk::Buffer, usize, usize, usize, u64),
    /// `Recorder::commands` right after the last use.
    pub valid_at: usize,
    pub buf: super::VkBuf,
}

/// A primary command buffer of `pool` and an unsignalled fence for its submissions.
fn new_command_buffer(
    dev: &Device,
    pool: vk::CommandPool,
) -> Result<(vk::CommandBuffer, vk::Fence)> {
    // SAFETY: plain object creation on a live device.
    unsafe {
        let cmd = dev.device.allocate_command_buffers(
            &vk::CommandBufferAllocateInfo::default()
                .command_pool(pool)
                .level(vk::CommandBufferLevel::PRIMARY)
                .command_buffer_count(1),
        )?[0];
        let fence = dev
            .device
            .create_fence(&vk::FenceCreateInfo::default(), None)?;
        Ok((cmd, fence))
    }
}

/// `MIXQ_VK_BARRIER=none` (a timing experiment, see [`Recorder`]'s `no_compute_barriers`),
/// read once.
pub fn barriers_off() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var("MIXQ_VK_BARRIER").is_ok_and(|v| v == "none"))
}

/// Workgroup grid for `groups` one-dimensional groups: (x, y) with x <= 65535
/// (shaders flatten it with common.glsl's group_index()).
pub fn grid(groups: u32) -> (u32, u32, u32) {
    if groups <= 65535 {
        (groups.max(1), 1, 1)
    } else {
        (65535, groups.div_ceil(65535), 1)
    }
}

impl Recorder {
    /// Records `buf` as the int8 form of the input `key`, valid from the command just recorded.
    pub fn remember_quantized(
        &mut self,
        key: (vk::Buffer, usize, usize, usize, u64),
        buf: super::VkBuf,
    ) {
        self.quantized = Some(RotatedInput {
            key,
            valid_at: self.commands,
            buf,
        });
    }

    pub fn new(dev: &Device) -> Result<Recorder> {
        let d = &dev.device;
        // SAFETY: plain object creation on a live device.
        unsafe {
            let cmd_pool = d.create_command_pool(
                &vk::CommandPoolCreateInfo::default()
                    .queue_family_index(dev.queue_family)
                    .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER),
                None,
            )?;
            let (cmd, fence) = new_command_buffer(dev, cmd_pool)?;
            let flush_every = std::env::var("MIXQ_VK_FLUSH")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(FLUSH_EVERY);
            let profiler = if dev.timestamp_bits > 0 {
                let pool = d.create_query_pool(
                    &vk::QueryPoolCreateInfo::default()
                        .query_type(vk::QueryType::TIMESTAMP)
                        .query_count(QUERIES),
                    None,
                )?;
                Some(Profiler {
                    pool,
                    period_ns: dev.limits.timestamp_period as f64,
                    enabled: false,
                    marks: Vec::new(),
                    totals: HashMap::new(),
                })
            } else {
                None
            };
            Ok(Recorder {
                profiler,
                cmd_pool,
                cmd,
                fence,
                recording: false,
                in_flight: Vec::new(),
                spare: Vec::new(),
                commands: 0,
                in_cmd: 0,
                flush_every,
                pipelines: Pipelines::new(),
                readback: None,
                staging: None,
                submits: 0,
                dispatches: 0,
                rope_tables: HashMap::new(),
                rotated: None,
                quantized: None,
                half_input: None,
                split_partials: None,
                signs: HashMap::new(),
                qkv_hint: None,
                ffn_hint: None,
                pending_norm: None,
                pending_qk: None,
                attn_counters: None,
                mv_log: Vec::new(),
                mv_prev: Vec::new(),
                mv_log_decode: false,
                prefetch: (0, 0),
                prefetching_norms: 0,
                sink: None,
                no_barrier: false,
                transfer_since_barrier: true,
                all_stages: std::env::var("MIXQ_VK_BARRIER").is_ok_and(|v| v == "all"),
                no_compute_barriers: barriers_off(),
            })
        }
    }

    /// Lets the next command run concurrently with the commands recorded since the last
    /// barrier: the caller promises it neither reads nor writes what they write, and writes
    /// nothing they read (q, k and v projections of one input; the two KV-cache stores).
    /// Saves one barrier (a drain of the GPU: ~2-5 us on a discrete GPU) per use.
    pub fn concurrent(&mut self) {
        self.no_barrier = true;
    }

    /// Begins the command buffer if needed and puts a barrier after the previous command
    /// (unless [`Self::concurrent`] was called since). `transfer`: the next command is a copy
    /// or update, not a dispatch. The barrier names the transfer stage only where a transfer
    /// is on either side of it (a compute-to-compute barrier is the common case, and the
    /// cheaper one on NVIDIA: measured in shaders/README.md).
    fn next_command(&mut self, dev: &Device, transfer: bool) -> Result<()> {
        let profiling = self.profiler.as_ref().is_some_and(|p| p.enabled);
        // The first submission of a step is short, so the GPU starts after a few commands
        // rather than after `flush_every` of them.
        let first = self.in_flight.is_empty();
        let limit = if first {
            self.flush_every.min(8)
        } else {
            self.flush_every
        };
        if self.recording && self.flush_every > 0 && self.in_cmd >= limit && !profiling {
            self.submit(dev)?;
        }
        let mut skip = std::mem::take(&mut self.no_barrier)
            || (self.no_compute_barriers && !transfer && !self.transfer_since_barrier);
        let d = &dev.device;
        // SAFETY: `cmd` is owned by this recorder and is either initial (reset after the last
        // submission) or recording.
        unsafe {
            if !self.recording {
                d.begin_command_buffer(
                    self.cmd,
                    &vk::CommandBufferBeginInfo::default()
                        .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT),
                )
                .context("vkBeginCommandBuffer")?;
                self.recording = true;
                self.in_cmd = 0;
                // A continuation of the step: barrier against the submissions before it.
                skip = self.commands == 0;
                self.transfer_since_barrier = true;
            }
            if self.commands == 0 {
                if let Some(p) = self.profiler.as_mut().filter(|p| p.enabled) {
                    d.cmd_reset_query_pool(self.cmd, p.pool, 0, QUERIES);
                    d.cmd_write_timestamp(
                        self.cmd,
                        vk::PipelineStageFlags::BOTTOM_OF_PIPE,
                        p.pool,
                        0,
                    );
                    p.marks.clear();
                }
            }
            if !skip {
                let (mut src, mut src_access) = (
                    vk::PipelineStageFlags::COMPUTE_SHADER,
                    vk::AccessFlags::SHADER_WRITE,
                );
                if self.transfer_since_barrier || self.all_stages {
                    src |= vk::PipelineStageFlags::TRANSFER;
                    src_access |= vk::AccessFlags::TRANSFER_WRITE;
                }
                let (mut dst, mut dst_access) = (
                    vk::PipelineStageFlags::COMPUTE_SHADER,
                    vk::AccessFlags::SHADER_READ | vk::AccessFlags::SHADER_WRITE,
                );
                if transfer || self.all_stages {
                    dst |= vk::PipelineStageFlags::TRANSFER;
                    dst_access |= vk::AccessFlags::TRANSFER_READ | vk::AccessFlags::TRANSFER_WRITE;
                }
                let barrier = [vk::MemoryBarrier::default()
                    .src_access_mask(src_access)
                    .dst_access_mask(dst_access)];
                d.cmd_pipeline_barrier(
                    self.cmd,
                    src,
                    dst,
                    vk::DependencyFlags::empty(),
                    &barrier,
                    &[],
                    &[],
                );
            }
        }
        if !skip {
            self.transfer_since_barrier = false;
        }
        self.transfer_since_barrier |= transfer;
        self.commands += 1;
        self.in_cmd += 1;
        Ok(())
    }

    /// Ends and submits the command buffer being recorded (no wait) and takes a fresh one.
    fn submit(&mut self, dev: &Device) -> Result<()> {
        let d = &dev.device;
        // SAFETY: `cmd` is recording; the next one is reset (spare) or new.
        unsafe {
            d.end_command_buffer(self.cmd)
                .context("vkEndCommandBuffer")?;
            let cmds = [self.cmd];
            let submit = [vk::SubmitInfo::default().command_buffers(&cmds)];
            d.queue_submit(dev.queue, &submit, self.fence)
                .context("vkQueueSubmit")?;
        }
        self.in_flight.push((self.cmd, self.fence));
        (self.cmd, self.fence) = match self.spare.pop() {
            Some(c) => c,
            None => new_command_buffer(dev, self.cmd_pool)?,
        };
        self.recording = false;
        Ok(())
    }

    /// Ends the command just recorded with a timestamp when profiling.
    fn mark(&mut self, dev: &Device, kind: &'static str) {
        if let Some(p) = self.profiler.as_mut().filter(|p| p.enabled) {
            let q = p.marks.len() as u32 + 1;
            if q < QUERIES {
                // SAFETY: recording; query q was reset at the start of this command buffer.
                unsafe {
                    dev.device.cmd_write_timestamp(
                        self.cmd,
                        vk::PipelineStageFlags::BOTTOM_OF_PIPE,
                        p.pool,
                        q,
                    )
                };
                p.marks.push(kind);
            }
        }
    }

    /// Adds the timestamps of the command buffer that just finished to the totals.
    fn collect(&mut self, dev: &Device) -> Result<()> {
        let Some(p) = self.profiler.as_mut() else {
            return Ok(());
        };
        if p.marks.is_empty() {
            return Ok(());
        }
        let mut ts = vec![0u64; p.marks.len() + 1];
        // SAFETY: the queries were written by the command buffer whose fence we waited on.
        unsafe {
            dev.device.get_query_pool_results(
                p.pool,
                0,
                &mut ts,
                vk::QueryResultFlags::TYPE_64 | vk::QueryResultFlags::WAIT,
            )
        }
        .context("vkGetQueryPoolResults")?;
        for (i, kind) in p.marks.drain(..).enumerate() {
            let secs = ts[i + 1].saturating_sub(ts[i]) as f64 * p.period_ns * 1e-9;
            let e = p.totals.entry(kind).or_insert((0.0, 0));
            e.0 += secs;
            e.1 += 1;
        }
        Ok(())
    }

    /// Records one dispatch of pipeline `name` over `buffers` (bindings 0.. in order).
    pub fn dispatch(
        &mut self,
        dev: &Device,
        name: &'static str,
        buffers: &[vk::Buffer],
        push: &[u32],
        groups: (u32, u32, u32),
    ) -> Result<()> {
        self.dispatch_spec(dev, name, &[], buffers, push, groups)
    }

    /// [`Self::dispatch`] of the pipeline specialized with `spec` (constant_id 0, 1, ...).
    pub fn dispatch_spec(
        &mut self,
        dev: &Device,
        name: &'static str,
        spec: &[u32],
        buffers: &[vk::Buffer],
        push: &[u32],
        groups: (u32, u32, u32),
    ) -> Result<()> {
        let arrays: Vec<&[vk::Buffer]> = buffers.iter().map(std::slice::from_ref).collect();
        self.dispatch_arrays(dev, name, spec, &arrays, push, groups)
    }

    /// [`Self::dispatch_spec`] of a pipeline whose bindings may be arrays of buffers
    /// (`bindings[i]` fills binding i).
    pub fn dispatch_arrays(
        &mut self,
        dev: &Device,
        name: &'static str,
        spec: &[u32],
        bindings: &[&[vk::Buffer]],
        push: &[u32],
        groups: (u32, u32, u32),
    ) -> Result<()> {
        assert!(push.len() * 4 <= PUSH_BYTES as usize);
        let (pipeline, layout, set) = self.pipelines.set_arrays(dev, name, spec, bindings)?;
        self.next_command(dev, false)?;
        let d = &dev.device;
        let bytes: Vec<u8> = push.iter().flat_map(|v| v.to_le_bytes()).collect();
        // SAFETY: the command buffer is recording; pipeline, layout and set are alive and
        // compatible (made together by Pipelines).
        unsafe {
            d.cmd_bind_pipeline(self.cmd, vk::PipelineBindPoint::COMPUTE, pipeline);
            d.cmd_bind_descriptor_sets(
                self.cmd,
                vk::PipelineBindPoint::COMPUTE,
                layout,
                0,
                &[set],
                &[],
            );
            d.cmd_push_constants(self.cmd, layout, vk::ShaderStageFlags::COMPUTE, 0, &bytes);
            d.cmd_dispatch(self.cmd, groups.0, groups.1, groups.2);
        }
        self.mark(dev, name);
        self.dispatches += 1;
        Ok(())
    }

    /// Records buffer-to-buffer copies (byte offsets and sizes).
    pub fn copy(
        &mut self,
        dev: &Device,
        src: vk::Buffer,
        dst: vk::Buffer,
        regions: &[vk::BufferCopy],
    ) -> Result<()> {
        if regions.is_empty() {
            return Ok(());
        }
        self.next_command(dev, true)?;
        // SAFETY: recording; the regions lie inside both buffers (callers check lengths).
        unsafe { dev.device.cmd_copy_buffer(self.cmd, src, dst, regions) };
        self.mark(dev, "copy");
        Ok(())
    }

    /// Records host data into `dst` at byte `offset` (the data travels in the command buffer).
    pub fn update(
        &mut self,
        dev: &Device,
        dst: vk::Buffer,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        assert!(data.len() % 4 == 0 && offset % 4 == 0);
        for (i, piece) in data.chunks(UPDATE_MAX).enumerate() {
            self.next_command(dev, true)?;
            // SAFETY: recording; size <= 65536 and 4-byte aligned as the spec requires.
            unsafe {
                dev.device
                    .cmd_update_buffer(self.cmd, dst, offset + (i * UPDATE_MAX) as u64, piece)
            };
            self.mark(dev, "update");
        }
        Ok(())
    }

    /// Submits what was recorded and waits for it. A no-op when nothing was recorded.
    pub fn submit_wait(&mut self, dev: &Device) -> Result<()> {
        if self.commands == 0 {
            return Ok(());
        }
        if self.recording {
            self.submit(dev)?;
        }
        let d = &dev.device;
        let fences: Vec<vk::Fence> = self.in_flight.iter().map(|c| c.1).collect();
        // SAFETY: after the fence wait nothing is pending, so resetting the submitted command
        // buffers and their fences is allowed.
        unsafe {
            d.wait_for_fences(&fences, true, u64::MAX)
                .context("waiting for the GPU (device lost?)")?;
            d.reset_fences(&fences)?;
            for &(c, _) in &self.in_flight {
                d.reset_command_buffer(c, vk::CommandBufferResetFlags::empty())?;
            }
        }
        self.spare.append(&mut self.in_flight);
        self.commands = 0;
        self.no_barrier = false;
        self.submits += 1;
        self.collect(dev)?;
        self.rope_tables.clear();
        self.rotated = None;
        self.quantized = None;
        self.half_input = None;
        self.split_partials = None;
        Ok(())
    }

    /// Copies byte ranges (src buffer, offset, size) into the readback buffer, submits, waits,
    /// and returns the bytes, concatenated.
    pub fn read(&mut self, dev: &Device, parts: &[(vk::Buffer, u64, u64)]) -> Result<Vec<u8>> {
        let total: u64 = parts.iter().map(|p| p.2).sum();
        if self.readback.as_ref().is_none_or(|r| r.size < total) {
            self.submit_wait(dev)?;
            if let Some(old) = self.readback.take() {
                // SAFETY: nothing is pending after submit_wait.
                unsafe { old.destroy(dev) };
            }
            self.readback = Some(RawBuf::new(
                dev,
                total.max(1 << 20).next_power_of_two(),
                MemoryUse::GpuToCpu,
            )?);
        }
        let rb = self.readback.as_ref().unwrap().buffer;
        let mut at = 0;
        for &(src, offset, size) in parts {
            let region = [vk::BufferCopy {
                src_offset: offset,
                dst_offset: at,
                size,
            }];
            self.copy(dev, src, rb, &region)?;
            at += size;
        }
        self.submit_wait(dev)?;
        let ptr = self
            .readback
            .as_ref()
            .unwrap()
            .mapped
            .expect("readback is mapped");
        let mut out = vec![0u8; total as usize];
        // SAFETY: the mapping covers `size >= total` bytes and the GPU finished writing them
        // (fence waited); the memory is host-coherent.
        unsafe { std::ptr::copy_nonoverlapping(ptr, out.as_mut_ptr(), total as usize) };
        Ok(out)
    }

    /// Seconds one `vkCmdCopyBuffer` of `size` bytes from `src` to `dst` takes, averaged over
    /// `reps` copies in one command buffer (after one unmeasured warm-up copy): see
    /// [`Self::time_commands`]. Returns (seconds per copy, "gpu timestamps" | "wall clock").
    pub fn time_copies(
        &mut self,
        dev: &Device,
        src: vk::Buffer,
        dst: vk::Buffer,
        size: u64,
        reps: usize,
        via_shader: bool,
    ) -> Result<(f64, &'static str)> {
        let region = [vk::BufferCopy {
            src_offset: 0,
            dst_offset: 0,
            size,
        }];
        // via_shader: copy_f32.comp, 16-byte loads/stores, grid-stride with 4 in flight per
        // invocation (size must then be a multiple of 16).
        let n = (size / 16) as u32;
        let groups = grid(n.div_ceil(1024).clamp(1, 16384));
        self.time_commands(dev, reps, !via_shader, &mut |rec| {
            if via_shader {
                rec.dispatch(dev, "copy_f32", &[src, dst], &[n], groups)
            } else {
                rec.copy(dev, src, dst, &region)
            }
        })
    }

    /// Seconds the commands `one` records take, averaged over `reps` calls in one command
    /// buffer after one unmeasured warm-up call: GPU timestamps around the calls when the
    /// queue has them, else the wall clock around submit + wait (which then includes the
    /// submission latency). `transfer`: `one` starts with a copy or update. Returns (seconds
    /// per call, "gpu timestamps" | "wall clock").
    pub fn time_commands(
        &mut self,
        dev: &Device,
        reps: usize,
        transfer: bool,
        one: &mut dyn FnMut(&mut Self) -> Result<()>,
    ) -> Result<(f64, &'static str)> {
        self.submit_wait(dev)?;
        one(self)?;
        self.submit_wait(dev)?;
        let profiling = self.profiler.as_ref().is_some_and(|p| p.enabled);
        if let Some(p) = self.profiler.as_mut() {
            p.enabled = false;
        }
        let pool = self.profiler.as_ref().map(|p| (p.pool, p.period_ns));
        // Begins the command buffer (the commands below each get their barrier).
        self.next_command(dev, transfer)?;
        let d = &dev.device;
        if let Some((qp, _)) = pool {
            // SAFETY: recording; queries 0 and 1 are reset before they are written.
            unsafe {
                d.cmd_reset_query_pool(self.cmd, qp, 0, 2);
                d.cmd_write_timestamp(self.cmd, vk::PipelineStageFlags::TOP_OF_PIPE, qp, 0);
            }
        }
        // A long chain must not be cut into submissions: the timestamps share one buffer.
        let flush = std::mem::replace(&mut self.flush_every, 0);
        let mut recorded = Ok(());
        for _ in 0..reps.max(1) {
            recorded = one(self);
            if recorded.is_err() {
                break;
            }
        }
        self.flush_every = flush;
        if let Some((qp, _)) = pool {
            // SAFETY: as above.
            unsafe {
                d.cmd_write_timestamp(self.cmd, vk::PipelineStageFlags::BOTTOM_OF_PIPE, qp, 1)
            };
        }
        let t0 = std::time::Instant::now();
        let waited = self.submit_wait(dev);
        let wall = t0.elapsed().as_secs_f64();
        if let Some(p) = self.profiler.as_mut() {
            p.enabled = profiling;
        }
        recorded?;
        waited?;
        let reps = reps.max(1) as f64;
        match pool {
            Some((qp, period_ns)) => {
                let mut ts = [0u64; 2];
                // SAFETY: the command buffer that wrote both queries has finished.
                unsafe {
                    d.get_query_pool_results(
                        qp,
                        0,
                        &mut ts,
                        vk::QueryResultFlags::TYPE_64 | vk::QueryResultFlags::WAIT,
                    )
                }
                .context("vkGetQueryPoolResults")?;
                let secs = ts[1].saturating_sub(ts[0]) as f64 * period_ns * 1e-9;
                Ok((secs / reps, "gpu timestamps"))
            }
            None => Ok((wall / reps, "wall clock")),
        }
    }

    /// # Safety
    /// Nothing may be pending (call after submit_wait / device idle).
    pub unsafe fn destroy(&mut self, dev: &Device) {
        self.rope_tables.clear();
        self.rotated = None;
        self.quantized = None;
        self.half_input = None;
        self.split_partials = None;
        self.pipelines.destroy(dev);
        for (_, b) in self.signs.drain() {
            b.destroy(dev);
        }
        if let Some(b) = self.attn_counters.take() {
            b.destroy(dev);
        }
        if let Some(b) = self.sink.take() {
            b.destroy(dev);
        }
        if let Some(b) = self.readback.take() {
            b.destroy(dev);
        }
        if let Some(b) = self.staging.take() {
            b.destroy(dev);
        }
        if let Some(p) = self.profiler.take() {
            dev.device.destroy_query_pool(p.pool, None);
        }
        dev.device.destroy_fence(self.fence, None);
        for (_, f) in self.spare.drain(..).chain(self.in_flight.drain(..)) {
            dev.device.destroy_fence(f, None);
        }
        dev.device.destroy_command_pool(self.cmd_pool, None);
    }
}
