//! Compute pipelines, created on first use from the SPIR-V table build.rs embeds, and a cache
//! of descriptor sets keyed by the buffers they bind (the model reuses the same pooled buffers
//! every step, so after the first token no descriptor set is written).
//!
//! Every pipeline binds N storage buffers at set 0, bindings 0..N in order, and takes up to
//! [`PUSH_BYTES`] of push constants (shapes and scalars).

use super::device::Device;
use anyhow::{anyhow, Context, Result};
use ash::vk;
use std::collections::HashMap;

include!(concat!(env!("OUT_DIR"), "/shaders.rs"));

/// Push-constant range of every pipeline.
pub const PUSH_BYTES: u32 = 64;

pub struct Pipeline {
    pub pipeline: vk::Pipeline,
    pub layout: vk::PipelineLayout,
    pub set_layout: vk::DescriptorSetLayout,
    /// Descriptors per binding (1, or the length of an array of buffers).
    pub counts: Vec<u32>,
}

impl Pipeline {
    /// Builds the pipeline `name` of [`SHADERS`] with one storage-buffer binding per entry of
    /// `counts` (each an array of that many buffers; 1 for a plain buffer) and the
    /// specialization constants `spec` (constant_id 0, 1, ... in order; u32 each).
    pub fn new(dev: &Device, name: &str, counts: &[u32], spec: &[u32]) -> Result<Pipeline> {
        let spv = SHADERS
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| anyhow!("shader `{name}` is not in build.rs's table"))?
            .1;
        let code = ash::util::read_spv(&mut std::io::Cursor::new(spv))
            .with_context(|| format!("shader `{name}`: bad SPIR-V"))?;
        let d = &dev.device;
        let binds: Vec<_> = (0..counts.len() as u32)
            .map(|b| {
                vk::DescriptorSetLayoutBinding::default()
                    .binding(b)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .descriptor_count(counts[b as usize])
                    .stage_flags(vk::ShaderStageFlags::COMPUTE)
            })
            .collect();
        // SAFETY: creation of objects on a live device from valid create infos; the SPIR-V was
        // produced by glslc for Vulkan 1.2 at build time.
        unsafe {
            let set_layout = d.create_descriptor_set_layout(
                &vk::DescriptorSetLayoutCreateInfo::default().bindings(&binds),
                None,
            )?;
            let ranges = [vk::PushConstantRange::default()
                .stage_flags(vk::ShaderStageFlags::COMPUTE)
                .size(PUSH_BYTES)];
            let layouts = [set_layout];
            let layout = d.create_pipeline_layout(
                &vk::PipelineLayoutCreateInfo::default()
                    .set_layouts(&layouts)
                    .push_constant_ranges(&ranges),
                None,
            )?;
            let module =
                d.create_shader_module(&vk::ShaderModuleCreateInfo::default().code(&code), None)?;
            let entries: Vec<vk::SpecializationMapEntry> = (0..spec.len() as u32)
                .map(|i| {
                    vk::SpecializationMapEntry::default()
                        .constant_id(i)
                        .offset(4 * i)
                        .size(4)
                })
                .collect();
            let data: Vec<u8> = spec.iter().flat_map(|v| v.to_le_bytes()).collect();
            let spec_info = vk::SpecializationInfo::default()
                .map_entries(&entries)
                .data(&data);
            let mut stage = vk::PipelineShaderStageCreateInfo::default()
                .stage(vk::ShaderStageFlags::COMPUTE)
                .module(module)
                .name(c"main");
            if !spec.is_empty() {
                stage = stage.specialization_info(&spec_info);
            }
            let info = [vk::ComputePipelineCreateInfo::default()
                .stage(stage)
                .layout(layout)];
            let res = d.create_compute_pipelines(vk::PipelineCache::null(), &info, None);
            d.destroy_shader_module(module, None);
            let pipeline = res.map_err(|(_, e)| anyhow!("creating pipeline `{name}`: {e}"))?[0];
            Ok(Pipeline {
                pipeline,
                layout,
                set_layout,
                counts: counts.to_vec(),
            })
        }
    }

    /// # Safety
    /// No command using the pipeline may be pending.
    pub unsafe fn destroy(&self, dev: &Device) {
        dev.device.destroy_pipeline(self.pipeline, None);
        dev.device.destroy_pipeline_layout(self.layout, None);
        dev.device
            .destroy_descriptor_set_layout(self.set_layout, None);
    }
}

/// Pipelines by (name, specialization constants) and descriptor sets by (pipeline, buffers).
pub struct Pipelines {
    by_name: HashMap<(&'static str, Vec<u32>), Pipeline>,
    pools: Vec<vk::DescriptorPool>,
    sets: HashMap<(vk::Pipeline, Vec<vk::Buffer>), vk::DescriptorSet>,
}

const SETS_PER_POOL: u32 = 1024;

impl Default for Pipelines {
    fn default() -> Self {
        Self::new()
    }
}

impl Pipelines {
    pub fn new() -> Pipelines {
        Pipelines {
            by_name: HashMap::new(),
            pools: Vec::new(),
            sets: HashMap::new(),
        }
    }

    pub fn get(
        &mut self,
        dev: &Device,
        name: &'static str,
        spec: &[u32],
        counts: &[u32],
    ) -> Result<&Pipeline> {
        let key = (name, spec.to_vec());
        if !self.by_name.contains_key(&key) {
            let p = Pipeline::new(dev, name, counts, spec)?;
            self.by_name.insert(key.clone(), p);
        }
        Ok(&self.by_name[&key])
    }

    /// The descriptor set binding `buffers` (whole buffers, in order) to pipeline `name`
    /// specialized with `spec`.
    pub fn set(
        &mut self,
        dev: &Device,
        name: &'static str,
        spec: &[u32],
        buffers: &[vk::Buffer],
    ) -> Result<(vk::Pipeline, vk::PipelineLayout, vk::DescriptorSet)> {
        let groups: Vec<&[vk::Buffer]> = buffers.iter().map(std::slice::from_ref).collect();
        self.set_arrays(dev, name, spec, &groups)
    }

    /// [`Self::set`] for pipelines whose bindings may be arrays of buffers: `bindings[i]`
    /// fills binding i (its length is the array's size, fixed per pipeline).
    pub fn set_arrays(
        &mut self,
        dev: &Device,
        name: &'static str,
        spec: &[u32],
        bindings: &[&[vk::Buffer]],
    ) -> Result<(vk::Pipeline, vk::PipelineLayout, vk::DescriptorSet)> {
        let counts: Vec<u32> = bindings.iter().map(|b| b.len() as u32).collect();
        let (pipeline, layout, set_layout) = {
            let p = self.get(dev, name, spec, &counts)?;
            assert_eq!(p.counts, counts, "pipeline `{name}` binds {:?}", p.counts);
            (p.pipeline, p.layout, p.set_layout)
        };
        let buffers: Vec<vk::Buffer> = bindings.iter().flat_map(|b| b.iter().copied()).collect();
        let key = (pipeline, buffers.clone());
        if let Some(&s) = self.sets.get(&key) {
            return Ok((pipeline, layout, s));
        }
        let d = &dev.device;
        // SAFETY: the set is allocated from our pool and written once, before any command
        // buffer uses it; cached sets are never updated again.
        let set = unsafe {
            let layouts = [set_layout];
            let mut set = self.pools.last().and_then(|&pool| {
                d.allocate_descriptor_sets(
                    &vk::DescriptorSetAllocateInfo::default()
                        .descriptor_pool(pool)
                        .set_layouts(&layouts),
                )
                .ok()
            });
            if set.is_none() {
                let sizes = [vk::DescriptorPoolSize::default()
                    .ty(vk::DescriptorType::STORAGE_BUFFER)
                    .descriptor_count(SETS_PER_POOL * 8)];
                let pool = d.create_descriptor_pool(
                    &vk::DescriptorPoolCreateInfo::default()
                        .max_sets(SETS_PER_POOL)
                        .pool_sizes(&sizes),
                    None,
                )?;
                self.pools.push(pool);
                set = Some(
                    d.allocate_descriptor_sets(
                        &vk::DescriptorSetAllocateInfo::default()
                            .descriptor_pool(pool)
                            .set_layouts(&layouts),
                    )?,
                );
            }
            let set = set.unwrap()[0];
            let infos: Vec<Vec<vk::DescriptorBufferInfo>> = bindings
                .iter()
                .map(|bs| {
                    bs.iter()
                        .map(|&b| {
                            vk::DescriptorBufferInfo::default()
                                .buffer(b)
                                .offset(0)
                                .range(vk::WHOLE_SIZE)
                        })
                        .collect()
                })
                .collect();
            let writes: Vec<_> = infos
                .iter()
                .enumerate()
                .map(|(i, info)| {
                    vk::WriteDescriptorSet::default()
                        .dst_set(set)
                        .dst_binding(i as u32)
                        .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                        .buffer_info(info)
                })
                .collect();
            d.update_descriptor_sets(&writes, &[]);
            set
        };
        self.sets.insert(key, set);
        Ok((pipeline, layout, set))
    }

    pub fn cached_sets(&self) -> usize {
        self.sets.len()
    }

    /// # Safety
    /// No command may be pending.
    pub unsafe fn destroy(&mut self, dev: &Device) {
        for p in self.by_name.values() {
            p.destroy(dev);
        }
        for &pool in &self.pools {
            dev.device.destroy_descriptor_pool(pool, None);
        }
        self.by_name.clear();
        self.pools.clear();
        self.sets.clear();
    }
}
