//! Instance, physical-device choice and the logical device with its one compute queue.
//!
//! [`list_devices`] describes every Vulkan device for `mixq-run devices`; [`Device::new`]
//! opens one (the first discrete GPU, else integrated, else virtual, else CPU emulation, or the
//! index the user gave).

use anyhow::{anyhow, bail, Context, Result};
use ash::vk;
use std::ffi::CStr;

/// What `mixq-run devices` prints about one Vulkan device.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub index: usize,
    pub name: String,
    /// "discrete", "integrated", "virtual", "cpu" or "other".
    pub device_type: &'static str,
    /// Driver name and version string (e.g. "llvmpipe", "Mesa 22.3.6").
    pub driver: String,
    pub api_version: (u32, u32, u32),
    /// (size in bytes, device-local) per memory heap.
    pub heaps: Vec<(u64, bool)>,
    pub subgroup_size: u32,
    pub shader_float16: bool,
    pub shader_int8: bool,
    pub storage_buffer_8bit: bool,
    /// VK_KHR_cooperative_matrix is listed (no kernel uses it: Debian's glslc cannot compile
    /// GL_KHR_cooperative_matrix; shaders/README.md, "Prefill").
    pub cooperative_matrix: bool,
    /// VK_NV_cooperative_matrix is listed.
    pub cooperative_matrix_nv: bool,
    /// The tensor-core prefill matmul (matmul_coop.comp) can run: VK_NV_cooperative_matrix with
    /// its feature, a 16x16x16 f16 x f16 -> f32 subgroup shape for compute shaders,
    /// `shaderFloat16` and 32-wide subgroups.
    pub coop_prefill: bool,
    pub external_memory_host: bool,
    pub max_storage_buffer_range: u64,
    /// Streaming multiprocessors, where the driver says (VK_NV_shader_sm_builtins): how many
    /// workgroups are surely resident at once ([`super::VulkanBackend::measure_sync_costs`]).
    pub multiprocessors: Option<u32>,
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (ma, mi, pa) = self.api_version;
        write!(
            f,
            "vulkan:{} {} ({}, {}, Vulkan {ma}.{mi}.{pa}), heaps [",
            self.index, self.name, self.device_type, self.driver
        )?;
        for (i, (size, local)) in self.heaps.iter().enumerate() {
            let sep = if i > 0 { ", " } else { "" };
            let kind = if *local { "device-local" } else { "host" };
            write!(
                f,
                "{sep}{:.1} GiB {kind}",
                *size as f64 / (1u64 << 30) as f64
            )?;
        }
        let yes = |b: bool| if b { "yes" } else { "no" };
        write!(
            f,
            "], subgroup {}, float16 {}, int8 {}, 8-bit storage {}, cooperative matrix KHR {} \
             NV {}, external_memory_host {}, prefill matmul {}",
            self.subgroup_size,
            yes(self.shader_float16),
            yes(self.shader_int8),
            yes(self.storage_buffer_8bit),
            yes(self.cooperative_matrix),
            yes(self.cooperative_matrix_nv),
            yes(self.external_memory_host),
            if self.coop_prefill {
                "tensor cores (NV cooperative matrix, f16 16x16x16)"
            } else {
                "portable f32 tiles"
            }
        )?;
        if let Some(sm) = self.multiprocessors {
            write!(f, ", {sm} SMs")?;
        }
        Ok(())
    }
}

/// The loader and instance. Dropped last (after every device object).
pub struct Instance {
    pub entry: ash::Entry,
    pub instance: ash::Instance,
}

impl Instance {
    pub fn new() -> Result<Self> {
        // SAFETY: loading the system Vulkan loader runs its initialisation code; that is the
        // documented way to use it and nothing else is loaded here.
        let entry = unsafe { ash::Entry::load() }.map_err(|e| {
            anyhow!(
                "no Vulkan loader ({e}): install libvulkan1 and a driver (`make setup`, or \
                 `apt-get install libvulkan1 mesa-vulkan-drivers` for the lavapipe CPU driver)"
            )
        })?;
        let app = vk::ApplicationInfo::default()
            .application_name(c"mixq")
            .api_version(vk::API_VERSION_1_2);
        let info = vk::InstanceCreateInfo::default().application_info(&app);
        // SAFETY: the create info and everything it points to outlive the call.
        let instance = unsafe { entry.create_instance(&info, None) }
            .context("vkCreateInstance (is a Vulkan driver installed? `make setup`)")?;
        Ok(Instance { entry, instance })
    }

    pub fn physical_devices(&self) -> Result<Vec<vk::PhysicalDevice>> {
        // SAFETY: the instance is alive.
        let devs = unsafe { self.instance.enumerate_physical_devices() }
            .context("vkEnumeratePhysicalDevices")?;
        Ok(devs)
    }

    /// Everything `devices` shows about `pd`.
    pub fn info(&self, index: usize, pd: vk::PhysicalDevice) -> DeviceInfo {
        let inst = &self.instance;
        // SAFETY: `pd` comes from this instance; the chained structs live on this stack frame.
        unsafe {
            let exts = device_extensions(inst, pd);
            let has = |name: &CStr| exts.iter().any(|e| e.as_c_str() == name);
            let mut driver = vk::PhysicalDeviceDriverProperties::default();
            let mut subgroup = vk::PhysicalDeviceSubgroupProperties::default();
            let mut sm = vk::PhysicalDeviceShaderSMBuiltinsPropertiesNV::default();
            let sm_builtins = has(ash::nv::shader_sm_builtins::NAME);
            let mut props2 = vk::PhysicalDeviceProperties2::default()
                .push_next(&mut driver)
                .push_next(&mut subgroup);
            if sm_builtins {
                props2 = props2.push_next(&mut sm);
            }
            inst.get_physical_device_properties2(pd, &mut props2);
            let props = props2.properties;
            let mut f12 = vk::PhysicalDeviceVulkan12Features::default();
            let mut f2 = vk::PhysicalDeviceFeatures2::default().push_next(&mut f12);
            inst.get_physical_device_features2(pd, &mut f2);
            let mem = inst.get_physical_device_memory_properties(pd);
            let heaps = mem.memory_heaps[..mem.memory_heap_count as usize]
                .iter()
                .map(|h| (h.size, h.flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL)))
                .collect();
            let v = props.api_version;
            let nv_coop = has(ash::nv::cooperative_matrix::NAME);
            let coop_prefill = nv_coop
                && f12.shader_float16 == vk::TRUE
                && subgroup.subgroup_size == 32
                && self.nv_coop_f16_16x16x16(pd);
            DeviceInfo {
                index,
                name: cstr(&props.device_name),
                device_type: match props.device_type {
                    vk::PhysicalDeviceType::DISCRETE_GPU => "discrete",
                    vk::PhysicalDeviceType::INTEGRATED_GPU => "integrated",
                    vk::PhysicalDeviceType::VIRTUAL_GPU => "virtual",
                    vk::PhysicalDeviceType::CPU => "cpu",
                    _ => "other",
                },
                driver: format!(
                    "{} {}",
                    cstr(&driver.driver_name),
                    cstr(&driver.driver_info)
                ),
                api_version: (
                    vk::api_version_major(v),
                    vk::api_version_minor(v),
                    vk::api_version_patch(v),
                ),
                heaps,
                subgroup_size: subgroup.subgroup_size,
                shader_float16: f12.shader_float16 == vk::TRUE,
                shader_int8: f12.shader_int8 == vk::TRUE,
                storage_buffer_8bit: f12.storage_buffer8_bit_access == vk::TRUE,
                cooperative_matrix: has(c"VK_KHR_cooperative_matrix"),
                cooperative_matrix_nv: nv_coop,
                coop_prefill,
                external_memory_host: has(ash::ext::external_memory_host::NAME),
                max_storage_buffer_range: props.limits.max_storage_buffer_range as u64,
                multiprocessors: (sm_builtins && sm.shader_sm_count > 0)
                    .then_some(sm.shader_sm_count),
            }
        }
    }
}

impl Instance {
    /// Whether `pd` (which lists VK_NV_cooperative_matrix) has the feature on for compute
    /// shaders and the shape matmul_coop.comp uses: 16x16x16, f16 A and B, f32 C and D,
    /// subgroup scope.
    fn nv_coop_f16_16x16x16(&self, pd: vk::PhysicalDevice) -> bool {
        let inst = &self.instance;
        // SAFETY: `pd` belongs to this instance, which lists the extension for it; the chained
        // structs and the output vector live on this stack frame, sized by the first call.
        unsafe {
            let mut feat = vk::PhysicalDeviceCooperativeMatrixFeaturesNV::default();
            let mut f2 = vk::PhysicalDeviceFeatures2::default().push_next(&mut feat);
            inst.get_physical_device_features2(pd, &mut f2);
            let mut props = vk::PhysicalDeviceCooperativeMatrixPropertiesNV::default();
            let mut p2 = vk::PhysicalDeviceProperties2::default().push_next(&mut props);
            inst.get_physical_device_properties2(pd, &mut p2);
            if feat.cooperative_matrix != vk::TRUE
                || !props
                    .cooperative_matrix_supported_stages
                    .contains(vk::ShaderStageFlags::COMPUTE)
            {
                return false;
            }
            let nv = ash::nv::cooperative_matrix::Instance::new(&self.entry, inst);
            let get = nv.fp().get_physical_device_cooperative_matrix_properties_nv;
            let mut count = 0u32;
            if get(pd, &mut count, std::ptr::null_mut()) != vk::Result::SUCCESS {
                return false;
            }
            let mut shapes = vec![vk::CooperativeMatrixPropertiesNV::default(); count as usize];
            if get(pd, &mut count, shapes.as_mut_ptr()) != vk::Result::SUCCESS {
                return false;
            }
            shapes.iter().take(count as usize).any(|s| {
                (s.m_size, s.n_size, s.k_size) == (16, 16, 16)
                    && s.a_type == vk::ComponentTypeNV::FLOAT16
                    && s.b_type == vk::ComponentTypeNV::FLOAT16
                    && s.c_type == vk::ComponentTypeNV::FLOAT32
                    && s.d_type == vk::ComponentTypeNV::FLOAT32
                    && s.scope == vk::ScopeNV::SUBGROUP
            })
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: every child object (the Device) is dropped before the Instance (field order
        // of VulkanBackend and list_devices' scope).
        unsafe { self.instance.destroy_instance(None) };
    }
}

fn cstr(chars: &[std::ffi::c_char]) -> String {
    // SAFETY: Vulkan fills these fixed arrays with NUL-terminated strings.
    unsafe { CStr::from_ptr(chars.as_ptr()) }
        .to_string_lossy()
        .trim()
        .to_string()
}

fn device_extensions(inst: &ash::Instance, pd: vk::PhysicalDevice) -> Vec<std::ffi::CString> {
    // SAFETY: `pd` belongs to `inst`.
    let props = unsafe { inst.enumerate_device_extension_properties(pd) }.unwrap_or_default();
    props
        .iter()
        .map(|p| {
            // SAFETY: extension_name is NUL-terminated.
            unsafe { CStr::from_ptr(p.extension_name.as_ptr()) }.to_owned()
        })
        .collect()
}

/// Every Vulkan device of this machine, in the loader's order (the index `--device vulkan:N`
/// takes). Errors if there is no Vulkan loader or driver at all.
pub fn list_devices() -> Result<Vec<DeviceInfo>> {
    let inst = Instance::new()?;
    let pds = inst.physical_devices()?;
    Ok(pds
        .iter()
        .enumerate()
        .map(|(i, &pd)| inst.info(i, pd))
        .collect())
}

/// The logical device and its compute queue.
pub struct Device {
    pub pd: vk::PhysicalDevice,
    pub info: DeviceInfo,
    pub device: ash::Device,
    pub queue: vk::Queue,
    pub queue_family: u32,
    pub memory: vk::PhysicalDeviceMemoryProperties,
    pub limits: vk::PhysicalDeviceLimits,
    pub min_import_alignment: u64,
    /// VK_EXT_external_memory_host's functions, where the extension is enabled (weights may
    /// then be imported from host memory: memory.rs `Arena::import`).
    pub host_memory: Option<ash::ext::external_memory_host::Device>,
    /// Valid bits of the compute queue's timestamps (0: no timestamps on this queue).
    pub timestamp_bits: u32,
    /// `shaderStorageBufferArrayDynamicIndexing` is enabled: shaders may index arrays of
    /// storage buffers with a workgroup-uniform value (the fused q/k/v matvec does).
    pub buffer_array_indexing: bool,
    /// `shaderIntegerDotProduct` (Vulkan 1.3 / VK_KHR_shader_integer_dot_product) is enabled:
    /// the int8-activation decode kernels (`matvec*_{w}_q8`, shaders/README.md) may run.
    pub int_dot: bool,
    /// VK_NV_cooperative_matrix and `shaderFloat16` are enabled ([`DeviceInfo::coop_prefill`]):
    /// prefill matmuls may run matmul_coop.comp.
    pub coop: bool,
}

impl Device {
    /// Opens device `index` (see [`list_devices`]), or picks the best one: discrete, then
    /// integrated, then virtual, then CPU emulation (lavapipe).
    pub fn new(inst: &Instance, index: Option<usize>) -> Result<Self> {
        let pds = inst.physical_devices()?;
        if pds.is_empty() {
            bail!(
                "no Vulkan device found: install a driver (`make setup` installs Mesa's lavapipe \
                 CPU driver: `apt-get install mesa-vulkan-drivers`)"
            );
        }
        let infos: Vec<DeviceInfo> = pds
            .iter()
            .enumerate()
            .map(|(i, &pd)| inst.info(i, pd))
            .collect();
        let rank = |t: &str| match t {
            "discrete" => 0,
            "integrated" => 1,
            "virtual" => 2,
            "cpu" => 3,
            _ => 4,
        };
        let index = match index {
            Some(i) if i < pds.len() => i,
            Some(i) => bail!(
                "vulkan:{i}: there are only {} Vulkan devices (see `mixq-run devices`)",
                pds.len()
            ),
            None => (0..pds.len())
                .min_by_key(|&i| (rank(infos[i].device_type), i))
                .unwrap(),
        };
        let pd = pds[index];
        let info = infos[index].clone();
        if info.api_version < (1, 2, 0) {
            bail!("vulkan:{index} {}: Vulkan 1.2 is required", info.name);
        }
        let ii = &inst.instance;
        // SAFETY: `pd` belongs to this instance; all create infos outlive the calls.
        unsafe {
            let families = ii.get_physical_device_queue_family_properties(pd);
            let queue_family = families
                .iter()
                .position(|f| f.queue_flags.contains(vk::QueueFlags::COMPUTE))
                .ok_or_else(|| anyhow!("vulkan:{index} {}: no compute queue", info.name))?
                as u32;
            let prio = [1.0f32];
            let qinfo = [vk::DeviceQueueCreateInfo::default()
                .queue_family_index(queue_family)
                .queue_priorities(&prio)];
            let mut exts = Vec::new();
            if info.external_memory_host {
                exts.push(ash::ext::external_memory_host::NAME.as_ptr());
            }
            let supported = ii.get_physical_device_features(pd);
            let buffer_array_indexing =
                supported.shader_storage_buffer_array_dynamic_indexing == vk::TRUE;
            let features = vk::PhysicalDeviceFeatures::default()
                .shader_storage_buffer_array_dynamic_indexing(buffer_array_indexing);
            // Integer dot products (OpSDotKHR / OpSUDotKHR, DP4A on NVIDIA): core in 1.3,
            // else the KHR extension.
            let dev_exts = device_extensions(ii, pd);
            let dot_ext = c"VK_KHR_shader_integer_dot_product";
            let dot_core = info.api_version >= (1, 3, 0);
            let dot_avail = dot_core || dev_exts.iter().any(|e| e.as_c_str() == dot_ext);
            let mut int_dot = false;
            if dot_avail {
                let mut fd = vk::PhysicalDeviceShaderIntegerDotProductFeatures::default();
                let mut f2 = vk::PhysicalDeviceFeatures2::default().push_next(&mut fd);
                ii.get_physical_device_features2(pd, &mut f2);
                int_dot = fd.shader_integer_dot_product == vk::TRUE
                    && std::env::var_os("MIXQ_VK_F32_ACT").is_none();
            }
            if int_dot && !dot_core {
                exts.push(dot_ext.as_ptr());
            }
            let mut dot_feat = vk::PhysicalDeviceShaderIntegerDotProductFeatures::default()
                .shader_integer_dot_product(true);
            // Tensor-core prefill (matmul_coop.comp): the NV extension (Debian's glslc has no
            // GL_KHR_cooperative_matrix) and f16 arithmetic in shaders.
            let coop = info.coop_prefill;
            if coop {
                exts.push(ash::nv::cooperative_matrix::NAME.as_ptr());
            }
            let mut coop_feat =
                vk::PhysicalDeviceCooperativeMatrixFeaturesNV::default().cooperative_matrix(true);
            let mut f16_feat =
                vk::PhysicalDeviceShaderFloat16Int8Features::default().shader_float16(true);
            let mut create = vk::DeviceCreateInfo::default()
                .queue_create_infos(&qinfo)
                .enabled_extension_names(&exts)
                .enabled_features(&features);
            if int_dot {
                create = create.push_next(&mut dot_feat);
            }
            if coop {
                create = create.push_next(&mut coop_feat).push_next(&mut f16_feat);
            }
            let device = ii
                .create_device(pd, &create, None)
                .with_context(|| format!("vkCreateDevice on {}", info.name))?;
            let queue = device.get_device_queue(queue_family, 0);
            let memory = ii.get_physical_device_memory_properties(pd);
            let limits = ii.get_physical_device_properties(pd).limits;
            let mut host_props = vk::PhysicalDeviceExternalMemoryHostPropertiesEXT::default();
            if info.external_memory_host {
                let mut p2 = vk::PhysicalDeviceProperties2::default().push_next(&mut host_props);
                ii.get_physical_device_properties2(pd, &mut p2);
            }
            let timestamp_bits = families[queue_family as usize].timestamp_valid_bits;
            Ok(Device {
                pd,
                timestamp_bits,
                buffer_array_indexing,
                int_dot,
                coop,
                min_import_alignment: host_props.min_imported_host_pointer_alignment.max(1),
                host_memory: info
                    .external_memory_host
                    .then(|| ash::ext::external_memory_host::Device::new(ii, &device)),
                info,
                device,
                queue,
                queue_family,
                memory,
                limits,
            })
        }
    }
}
