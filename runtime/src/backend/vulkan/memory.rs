//! Device memory: memory-type choice by intent, a bump arena for weights, a pool for
//! activation buffers, and host-visible buffers for staging and readback.
//!
//! - Weights never move once loaded: they are placed into large blocks (at most
//!   [`WEIGHT_BLOCK`] bytes, a quarter of the smallest device-local heap on small UMA heaps),
//!   and a tensor larger than one storage-buffer binding is split by rows into several
//!   buffers ([`split_rows`]): lavapipe and many iGPUs bind at most 128 MiB, and Gemma's
//!   262144 x 640 embedding is 335 MB in bf16.
//! - On UMA devices a tensor whose stored rows are already the device layout is not copied at
//!   all: the pages of the file's memory map around it are imported
//!   (VK_EXT_external_memory_host, [`Arena::import`]) and the buffer bound at its offset, so a
//!   laptop holds one copy of those weights, in the page cache. .mixq sections are 64 KiB
//!   aligned and tensors 256-aligned for this (formats/SPEC.md). Rows that need padding
//!   (I2_STRUCTURED at 5376 columns, I4_GROUPED at 640) are copied.
//! - Activations come from a pool keyed by size class (powers of two): the model allocates its
//!   scratch per forward call, so after the first token every `alloc` is a free-list pop.
//!   Reusing a buffer inside a command buffer is safe because every command is separated by a
//!   full compute/transfer barrier (ops.rs) and the host touches memory only after a fence wait.

use super::device::Device;
use anyhow::{anyhow, bail, Context, Result};
use ash::vk;
use mixq_format::SharedBytes;
use std::collections::HashMap;

/// Largest weight block (one vkAllocateMemory).
pub const WEIGHT_BLOCK: u64 = 256 << 20;
/// Every buffer gets this much slack after its data: weights.glsl's `u32_at` may read the word
/// after the last one.
pub const PAD: u64 = 16;

/// What a piece of memory is for; picks the memory type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryUse {
    /// Read and written by shaders only; device-local.
    GpuOnly,
    /// Written by the host, copied to the device (staging).
    CpuToGpu,
    /// Written by the device, read by the host (readback).
    GpuToCpu,
}

/// A memory type index for `usage` among `type_bits`: required flags first, preferred after.
pub fn memory_type(dev: &Device, type_bits: u32, usage: MemoryUse) -> Result<(u32, bool)> {
    let m = &dev.memory;
    let (required, preferred) = match usage {
        MemoryUse::GpuOnly => (
            vk::MemoryPropertyFlags::empty(),
            vk::MemoryPropertyFlags::DEVICE_LOCAL,
        ),
        MemoryUse::CpuToGpu => (
            vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT,
            vk::MemoryPropertyFlags::empty(),
        ),
        MemoryUse::GpuToCpu => (
            vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT,
            vk::MemoryPropertyFlags::HOST_CACHED,
        ),
    };
    let candidates = || {
        (0..m.memory_type_count).filter(move |&i| {
            type_bits & (1 << i) != 0
                && m.memory_types[i as usize].property_flags.contains(required)
        })
    };
    let pick = candidates()
        .find(|&i| {
            m.memory_types[i as usize]
                .property_flags
                .contains(preferred)
        })
        .or_else(|| candidates().next())
        .ok_or_else(|| anyhow!("no memory type for {usage:?} (type bits {type_bits:#x})"))?;
    // Host writes need no flush only on coherent memory; other types go through staging.
    let host_visible = m.memory_types[pick as usize]
        .property_flags
        .contains(vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT);
    Ok((pick, host_visible))
}

/// A buffer with its own memory (activations, staging, readback, KV caches).
#[derive(Debug)]
pub struct RawBuf {
    pub buffer: vk::Buffer,
    pub memory: vk::DeviceMemory,
    /// Usable bytes (the buffer's size; PAD included).
    pub size: u64,
    /// Host pointer for host-visible memory.
    pub mapped: Option<*mut u8>,
}

// SAFETY: the raw pointer is a persistent mapping of device memory owned by this RawBuf; it is
// only dereferenced while the pool/recorder mutexes serialise access.
unsafe impl Send for RawBuf {}
unsafe impl Sync for RawBuf {}

const USAGE: vk::BufferUsageFlags = vk::BufferUsageFlags::from_raw(
    vk::BufferUsageFlags::STORAGE_BUFFER.as_raw()
        | vk::BufferUsageFlags::TRANSFER_SRC.as_raw()
        | vk::BufferUsageFlags::TRANSFER_DST.as_raw(),
);

impl RawBuf {
    /// Creates a buffer of `size` bytes with dedicated memory for `usage`.
    pub fn new(dev: &Device, size: u64, usage: MemoryUse) -> Result<RawBuf> {
        let d = &dev.device;
        // SAFETY: plain object creation on a live device; on error everything made is freed.
        unsafe {
            let buffer = d
                .create_buffer(
                    &vk::BufferCreateInfo::default().size(size).usage(USAGE),
                    None,
                )
                .context("vkCreateBuffer")?;
            let req = d.get_buffer_memory_requirements(buffer);
            let (ty, host_visible) = memory_type(dev, req.memory_type_bits, usage)?;
            let memory = match d.allocate_memory(
                &vk::MemoryAllocateInfo::default()
                    .allocation_size(req.size)
                    .memory_type_index(ty),
                None,
            ) {
                Ok(m) => m,
                Err(e) => {
                    d.destroy_buffer(buffer, None);
                    bail!("vkAllocateMemory of {size} bytes ({usage:?}): {e}");
                }
            };
            d.bind_buffer_memory(buffer, memory, 0)
                .context("vkBindBufferMemory")?;
            let mapped = if host_visible && usage != MemoryUse::GpuOnly {
                Some(
                    d.map_memory(memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty())
                        .context("vkMapMemory")? as *mut u8,
                )
            } else {
                None
            };
            Ok(RawBuf {
                buffer,
                memory,
                size,
                mapped,
            })
        }
    }

    /// # Safety
    /// No command that uses the buffer may be pending, and it must not be used afterwards.
    pub unsafe fn destroy(&self, dev: &Device) {
        dev.device.destroy_buffer(self.buffer, None);
        dev.device.free_memory(self.memory, None);
    }
}

/// Free activation buffers by size class.
#[derive(Default)]
pub struct Pool {
    free: HashMap<u64, Vec<RawBuf>>,
    /// Every buffer ever made (for destruction at the end).
    pub live: usize,
    pub bytes: u64,
}

/// The size class of a request: the next power of two (at least 256 bytes) plus PAD.
pub fn size_class(bytes: u64) -> u64 {
    bytes.max(256).next_power_of_two() + PAD
}

impl Pool {
    pub fn take(&mut self, dev: &Device, bytes: u64) -> Result<RawBuf> {
        let class = size_class(bytes);
        if let Some(b) = self.free.get_mut(&class).and_then(|v| v.pop()) {
            return Ok(b);
        }
        let b = RawBuf::new(dev, class, MemoryUse::GpuOnly)?;
        self.live += 1;
        self.bytes += class;
        Ok(b)
    }

    pub fn give(&mut self, b: RawBuf) {
        self.free.entry(b.size).or_default().push(b);
    }

    /// # Safety
    /// Every buffer must have been returned and no command may be pending.
    pub unsafe fn destroy_all(&mut self, dev: &Device) {
        for (_, v) in self.free.drain() {
            for b in v {
                b.destroy(dev);
            }
        }
    }
}

/// One row range of a weight, bound as one storage buffer.
#[derive(Debug, Clone, Copy)]
pub struct WeightChunk {
    pub buffer: vk::Buffer,
    pub row0: usize,
    pub rows: usize,
}

/// Splits `rows` rows of `row_bytes` so each piece fits one binding of `max_bytes`.
pub fn split_rows(rows: usize, row_bytes: usize, max_bytes: u64) -> Result<Vec<(usize, usize)>> {
    let per = ((max_bytes.saturating_sub(PAD)) / row_bytes.max(1) as u64) as usize;
    if per == 0 {
        bail!("one row of {row_bytes} bytes exceeds the device's storage-buffer range");
    }
    Ok((0..rows)
        .step_by(per)
        .map(|r0| (r0, per.min(rows - r0)))
        .collect())
}

/// Weights placed back to back in large blocks; freed only with the device.
pub struct Arena {
    blocks: Vec<(vk::DeviceMemory, u64, Option<*mut u8>)>,
    /// Offset of the free space in the last block.
    used: u64,
    buffers: Vec<vk::Buffer>,
    block_size: u64,
    pub bytes: u64,
    /// Weights were written straight into host-visible device-local memory (UMA).
    pub direct_write: bool,
    /// Host memory imported with VK_EXT_external_memory_host, and the owner of those pages
    /// (the file's memory map), kept alive as long as the import.
    imports: Vec<(vk::DeviceMemory, SharedBytes)>,
    /// Weight bytes read in place from imported pages (no copy).
    pub imported_bytes: u64,
}

// SAFETY: the mapped pointers belong to the arena's own allocations, written under its mutex.
unsafe impl Send for Arena {}

impl Arena {
    pub fn new(dev: &Device) -> Arena {
        // Small device-local heaps (UMA carve-outs) get smaller blocks.
        let smallest_local = dev.memory.memory_heaps[..dev.memory.memory_heap_count as usize]
            .iter()
            .filter(|h| h.flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL))
            .map(|h| h.size)
            .min()
            .unwrap_or(WEIGHT_BLOCK * 4);
        Arena {
            blocks: Vec::new(),
            used: 0,
            buffers: Vec::new(),
            block_size: WEIGHT_BLOCK.min(smallest_local / 4).max(16 << 20),
            bytes: 0,
            direct_write: false,
            imports: Vec::new(),
            imported_bytes: 0,
        }
    }

    /// Places a buffer of `size` bytes. Returns the buffer and, when its memory is host
    /// visible, a pointer to write the data straight into.
    pub fn place(&mut self, dev: &Device, size: u64) -> Result<(vk::Buffer, Option<*mut u8>)> {
        let d = &dev.device;
        // SAFETY: object creation on a live device; the buffer is bound inside a block that
        // lives as long as the arena.
        unsafe {
            let buffer = d
                .create_buffer(
                    &vk::BufferCreateInfo::default().size(size).usage(USAGE),
                    None,
                )
                .context("vkCreateBuffer (weight)")?;
            self.buffers.push(buffer);
            let req = d.get_buffer_memory_requirements(buffer);
            let align = req.alignment.max(256);
            let mut offset = self.used.div_ceil(align) * align;
            let fits = self.blocks.last().is_some_and(|b| offset + req.size <= b.1);
            if !fits {
                let (ty, host_visible) =
                    memory_type(dev, req.memory_type_bits, MemoryUse::GpuOnly)?;
                let bsize = self.block_size.max(req.size);
                let memory = d
                    .allocate_memory(
                        &vk::MemoryAllocateInfo::default()
                            .allocation_size(bsize)
                            .memory_type_index(ty),
                        None,
                    )
                    .with_context(|| {
                        format!(
                            "allocating a {} MiB weight block ({} MiB of weights so far)",
                            bsize >> 20,
                            self.bytes >> 20
                        )
                    })?;
                let mapped = if host_visible {
                    Some(
                        d.map_memory(memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty())
                            .context("vkMapMemory (weights)")? as *mut u8,
                    )
                } else {
                    None
                };
                self.blocks.push((memory, bsize, mapped));
                offset = 0;
            }
            let (memory, _, mapped) = *self.blocks.last().unwrap();
            d.bind_buffer_memory(buffer, memory, offset)
                .context("vkBindBufferMemory (weight)")?;
            self.used = offset + req.size;
            self.bytes += size;
            Ok((buffer, mapped.map(|p| p.add(offset as usize))))
        }
    }

    /// A weight buffer over `bytes` of a memory-mapped file, read by the device in place
    /// (VK_EXT_external_memory_host): the pages around `bytes` plus [`PAD`] are imported and the
    /// buffer bound at `bytes`' offset in them. Only where the import lands in device-local
    /// memory (UMA: the iGPU reads system memory anyway; on a discrete GPU imported pages sit
    /// behind PCIe) and the alignments work out; `Ok(None)` otherwise, or when the driver
    /// refuses the pages (the caller copies instead).
    pub fn import(&mut self, dev: &Device, bytes: &SharedBytes) -> Result<Option<vk::Buffer>> {
        let (Some(ext), Some((map, start))) = (&dev.host_memory, bytes.mapping()) else {
            return Ok(None);
        };
        let align = dev.min_import_alignment.max(4096) as usize;
        let base = map.as_ptr() as usize;
        // The mapping covers whole pages; the import may not reach past them.
        let map_end = base + map.len().div_ceil(4096) * 4096;
        let first = base + start;
        let lo = first / align * align;
        let hi = (first + bytes.len() + PAD as usize).div_ceil(align) * align;
        if lo < base || hi > map_end {
            return Ok(None);
        }
        let d = &dev.device;
        let handle = vk::ExternalMemoryHandleTypeFlags::HOST_ALLOCATION_EXT;
        // SAFETY: [lo, hi) lies inside the live mapping `bytes` shares, which the arena keeps
        // (a clone of `bytes`) as long as the memory; everything made is freed on failure.
        unsafe {
            let mut props = vk::MemoryHostPointerPropertiesEXT::default();
            let got = (ext.fp().get_memory_host_pointer_properties_ext)(
                ext.device(),
                handle,
                lo as *const std::ffi::c_void,
                &mut props,
            );
            if got != vk::Result::SUCCESS {
                return Ok(None);
            }
            let mut external = vk::ExternalMemoryBufferCreateInfo::default().handle_types(handle);
            let buffer = d
                .create_buffer(
                    &vk::BufferCreateInfo::default()
                        .size(bytes.len() as u64 + PAD)
                        .usage(USAGE)
                        .push_next(&mut external),
                    None,
                )
                .context("vkCreateBuffer (imported weight)")?;
            let req = d.get_buffer_memory_requirements(buffer);
            let offset = (first - lo) as u64;
            let m = &dev.memory;
            let ty = (0..m.memory_type_count).find(|&i| {
                req.memory_type_bits & props.memory_type_bits & (1 << i) != 0
                    && m.memory_types[i as usize]
                        .property_flags
                        .contains(vk::MemoryPropertyFlags::DEVICE_LOCAL)
            });
            let Some(ty) = ty.filter(|_| offset.is_multiple_of(req.alignment.max(1))) else {
                d.destroy_buffer(buffer, None);
                return Ok(None);
            };
            let mut import = vk::ImportMemoryHostPointerInfoEXT::default()
                .handle_type(handle)
                .host_pointer(lo as *mut _);
            let memory = match d.allocate_memory(
                &vk::MemoryAllocateInfo::default()
                    .allocation_size((hi - lo) as u64)
                    .memory_type_index(ty)
                    .push_next(&mut import),
                None,
            ) {
                Ok(m) => m,
                Err(_) => {
                    d.destroy_buffer(buffer, None);
                    return Ok(None);
                }
            };
            if d.bind_buffer_memory(buffer, memory, offset).is_err() {
                d.destroy_buffer(buffer, None);
                d.free_memory(memory, None);
                return Ok(None);
            }
            self.buffers.push(buffer);
            self.imports.push((memory, bytes.clone()));
            self.imported_bytes += bytes.len() as u64;
            Ok(Some(buffer))
        }
    }

    /// # Safety
    /// No command may be pending and no weight buffer may be used afterwards.
    pub unsafe fn destroy(&mut self, dev: &Device) {
        for b in self.buffers.drain(..) {
            dev.device.destroy_buffer(b, None);
        }
        // The imported pages' owners (memory maps) drop after their memory objects.
        for (m, _owner) in self.imports.drain(..) {
            dev.device.free_memory(m, None);
        }
        for (m, _, _) in self.blocks.drain(..) {
            dev.device.free_memory(m, None);
        }
    }
}
