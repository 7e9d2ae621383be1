//! The command recorder: every op appends to one command buffer, separated by barriers; the
//! sync points (download, top_k, weight upload) submit it, wait on a fence and start afresh.
//!
//! One decode step is therefore one submission. Barriers are global memory barriers between
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

pub struct Recorder {
    cmd_pool: vk::CommandPool,
    cmd: vk::CommandBuffer,
    fence: vk::Fence,
    /// Commands recorded since the last submission.
    pub commands: usize,
    pub pipelines: Pipelines,
    /// Host-visible buffer the sync points copy results into.
    readback: Option<RawBuf>,
    /// Host-visible buffer weight uploads go through (discrete GPUs).
    pub staging: Option<RawBuf>,
    pub submits: u64,
    pub dispatches: u64,
    /// RoPE cos/sin tables of the current command buffer, by (pos0, n, half, base, scale) bits:
    /// every layer of a kind shares one. Dropped (returned to the pool) at each submission.
    pub rope_tables: HashMap<[u32; 5], super::VkBuf>,
    /// The last Hadamard-rotated matmul input (gate_proj and up_proj share it).
    pub rotated: Option<RotatedInput>,
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
            let cmd = d.allocate_command_buffers(
                &vk::CommandBufferAllocateInfo::default()
                    .command_pool(cmd_pool)
                    .level(vk::CommandBufferLevel::PRIMARY)
                    .command_buffer_count(1),
            )?[0];
            let fence = d.create_fence(&vk::FenceCreateInfo::default(), None)?;
            Ok(Recorder {
                cmd_pool,
                cmd,
                fence,
                commands: 0,
                pipelines: Pipelines::new(),
                readback: None,
                staging: None,
                submits: 0,
                dispatches: 0,
                rope_tables: HashMap::new(),
                rotated: None,
            })
        }
    }

    /// Begins the command buffer if needed and puts a barrier after the previous command.
    fn next_command(&mut self, dev: &Device) -> Result<()> {
        let d = &dev.device;
        // SAFETY: `cmd` is owned by this recorder and is either initial (reset after the last
        // submission) or recording.
        unsafe {
            if self.commands == 0 {
                d.begin_command_buffer(
                    self.cmd,
                    &vk::CommandBufferBeginInfo::default()
                        .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT),
                )
                .context("vkBeginCommandBuffer")?;
            } else {
                let stages =
                    vk::PipelineStageFlags::COMPUTE_SHADER | vk::PipelineStageFlags::TRANSFER;
                let barrier = [vk::MemoryBarrier::default()
                    .src_access_mask(
                        vk::AccessFlags::SHADER_WRITE | vk::AccessFlags::TRANSFER_WRITE,
                    )
                    .dst_access_mask(
                        vk::AccessFlags::SHADER_READ
                            | vk::AccessFlags::SHADER_WRITE
                            | vk::AccessFlags::TRANSFER_READ
                            | vk::AccessFlags::TRANSFER_WRITE,
                    )];
                d.cmd_pipeline_barrier(
                    self.cmd,
                    stages,
                    stages,
                    vk::DependencyFlags::empty(),
                    &barrier,
                    &[],
                    &[],
                );
            }
        }
        self.commands += 1;
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
        assert!(push.len() * 4 <= PUSH_BYTES as usize);
        let (pipeline, layout, set) = self.pipelines.set(dev, name, buffers)?;
        self.next_command(dev)?;
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
        self.next_command(dev)?;
        // SAFETY: recording; the regions lie inside both buffers (callers check lengths).
        unsafe { dev.device.cmd_copy_buffer(self.cmd, src, dst, regions) };
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
            self.next_command(dev)?;
            // SAFETY: recording; size <= 65536 and 4-byte aligned as the spec requires.
            unsafe {
                dev.device
                    .cmd_update_buffer(self.cmd, dst, offset + (i * UPDATE_MAX) as u64, piece)
            };
        }
        Ok(())
    }

    /// Submits what was recorded and waits for it. A no-op when nothing was recorded.
    pub fn submit_wait(&mut self, dev: &Device) -> Result<()> {
        if self.commands == 0 {
            return Ok(());
        }
        let d = &dev.device;
        // SAFETY: the command buffer is recording; after the fence wait nothing is pending, so
        // resetting it and the fence is allowed.
        unsafe {
            d.end_command_buffer(self.cmd)
                .context("vkEndCommandBuffer")?;
            let cmds = [self.cmd];
            let submit = [vk::SubmitInfo::default().command_buffers(&cmds)];
            d.queue_submit(dev.queue, &submit, self.fence)
                .context("vkQueueSubmit")?;
            d.wait_for_fences(&[self.fence], true, u64::MAX)
                .context("waiting for the GPU (device lost?)")?;
            d.reset_fences(&[self.fence])?;
            d.reset_command_buffer(self.cmd, vk::CommandBufferResetFlags::empty())?;
        }
        self.commands = 0;
        self.submits += 1;
        self.rope_tables.clear();
        self.rotated = None;
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

    /// # Safety
    /// Nothing may be pending (call after submit_wait / device idle).
    pub unsafe fn destroy(&mut self, dev: &Device) {
        self.rope_tables.clear();
        self.rotated = None;
        self.pipelines.destroy(dev);
        if let Some(b) = self.readback.take() {
            b.destroy(dev);
        }
        if let Some(b) = self.staging.take() {
            b.destroy(dev);
        }
        dev.device.destroy_fence(self.fence, None);
        dev.device.destroy_command_pool(self.cmd_pool, None);
    }
}
