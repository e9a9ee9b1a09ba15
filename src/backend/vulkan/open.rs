//! Opening Vulkan: the loader, one instance, every physical device, and on each a
//! logical device with every queue of every compute-capable family (up to a cap).
//!
//! This module only opens and describes; it never records or submits work. What it
//! builds per device (queues, allocators, the shared pipeline cache) lives in [`Gpu`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use vulkano::command_buffer::allocator::StandardCommandBufferAllocator;
use vulkano::descriptor_set::allocator::StandardDescriptorSetAllocator;
use vulkano::device::physical::{PhysicalDevice, PhysicalDeviceType};
use vulkano::device::{
    Device, DeviceCreateInfo, DeviceExtensions, DeviceFeatures, Queue, QueueCreateInfo, QueueFlags,
};
use vulkano::instance::{Instance, InstanceCreateFlags, InstanceCreateInfo, InstanceExtensions};
use vulkano::memory::allocator::StandardMemoryAllocator;
use vulkano::memory::MemoryPropertyFlags;
use vulkano::pipeline::cache::{PipelineCache, PipelineCacheCreateInfo};
use vulkano::{Validated, Version, VulkanLibrary};

use super::errors::{vk_error, DeviceFlag};
use super::reuse::ReuseCache;
use super::VulkanOptions;
use crate::backend::{BackendError, DeviceInfo, DeviceLimits, QueueFamilyInfo, QueueId};
use crate::policy::BindlessSupport;

/// One opened device and everything shared by the work submitted to it.
pub(super) struct Gpu {
    pub(super) info: DeviceInfo,
    pub(super) device: Arc<Device>,
    /// Opened queues by (family, index within the family).
    pub(super) queues: HashMap<(u32, u32), Arc<Queue>>,
    pub(super) memory: Arc<StandardMemoryAllocator>,
    pub(super) commands: Arc<StandardCommandBufferAllocator>,
    pub(super) descriptors: Arc<StandardDescriptorSetAllocator>,
    pub(super) pipeline_cache: Arc<PipelineCache>,
    /// Every device-local memory type is host visible (lavapipe, many integrated GPUs):
    /// buffers are written and read in place, without staging copies.
    pub(super) unified_memory: bool,
    /// Slots of at most this many bytes are bound to host-cached system memory and
    /// written and read in place (0 on unified devices).
    pub(super) host_max_bytes: u64,
    /// Set once the driver reports the device lost; later calls fail fast.
    pub(super) lost: DeviceFlag,
    /// Recorded command buffers and pooled buffers, kept for reuse.
    pub(super) reuse: Mutex<ReuseCache>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("name", &self.info.name)
            .field("queues", &self.queues.len())
            .field("unified_memory", &self.unified_memory)
            .field("lost", &self.lost.is_set())
            .finish()
    }
}

/// The instance and the devices it opened, in enumeration order.
pub(super) struct Opened {
    pub(super) instance: Arc<Instance>,
    pub(super) gpus: Vec<Gpu>,
    pub(super) queues: Vec<QueueId>,
}

/// Loads the Vulkan library, creates the instance and opens the devices.
pub(super) fn open(options: &VulkanOptions) -> Result<Opened, BackendError> {
    let library = VulkanLibrary::new().map_err(|e| {
        BackendError::NoDevice(format!(
            "the Vulkan loader (libvulkan.so.1) did not load: {e}"
        ))
    })?;
    let portability = library.supported_extensions().khr_portability_enumeration;
    let instance = Instance::new(
        library.clone(),
        InstanceCreateInfo {
            flags: if portability {
                InstanceCreateFlags::ENUMERATE_PORTABILITY
            } else {
                InstanceCreateFlags::empty()
            },
            enabled_extensions: InstanceExtensions {
                khr_portability_enumeration: portability,
                ..InstanceExtensions::empty()
            },
            application_name: Some("photofinish".into()),
            max_api_version: Some(library.api_version().min(Version::V1_3)),
            ..Default::default()
        },
    )
    .map_err(|e| {
        let reason = match e {
            Validated::Error(e) => e.to_string(),
            Validated::ValidationError(v) => v.to_string(),
        };
        BackendError::NoDevice(format!("creating a Vulkan instance failed: {reason}"))
    })?;

    let physical: Vec<Arc<PhysicalDevice>> = instance
        .enumerate_physical_devices()
        .map_err(|e| BackendError::NoDevice(format!("listing Vulkan devices failed: {e}")))?
        .collect();
    let has_hardware = physical
        .iter()
        .any(|p| p.properties().device_type != PhysicalDeviceType::Cpu);

    let mut gpus = Vec::new();
    let mut failures = Vec::new();
    for p in physical {
        let software = p.properties().device_type == PhysicalDeviceType::Cpu;
        if software && has_hardware && !options.software_devices_with_hardware {
            tracing::info!(device = %p.properties().device_name, "skipping software Vulkan device: a hardware one is present");
            continue;
        }
        match open_device(gpus.len(), &p, options) {
            Ok(Some(gpu)) => gpus.push(gpu),
            Ok(None) => {
                tracing::info!(device = %p.properties().device_name, "no compute queue family; skipped")
            }
            Err(e) => {
                tracing::warn!(device = %p.properties().device_name, error = %e, "could not open Vulkan device");
                failures.push(format!("{}: {e}", p.properties().device_name));
            }
        }
    }
    if gpus.is_empty() {
        let detail = if failures.is_empty() {
            "the Vulkan loader found no device with a compute queue".to_string()
        } else {
            format!("no Vulkan device could be opened ({})", failures.join("; "))
        };
        return Err(BackendError::NoDevice(detail));
    }
    let mut queues: Vec<QueueId> = gpus
        .iter()
        .flat_map(|g| {
            g.queues.keys().map(|&(family, index)| QueueId {
                device: g.info.index,
                family,
                index,
            })
        })
        .collect();
    queues.sort();
    Ok(Opened {
        instance,
        gpus,
        queues,
    })
}

/// Opens one physical device: `Ok(None)` when it has no compute-capable family.
fn open_device(
    index: usize,
    physical: &Arc<PhysicalDevice>,
    options: &VulkanOptions,
) -> Result<Option<Gpu>, BackendError> {
    let cap = options.max_queues_per_family.max(1);
    let queue_create_infos: Vec<QueueCreateInfo> = physical
        .queue_family_properties()
        .iter()
        .enumerate()
        .filter(|(_, f)| f.queue_flags.intersects(QueueFlags::COMPUTE) && f.queue_count > 0)
        .map(|(family, f)| QueueCreateInfo {
            queue_family_index: family as u32,
            queues: vec![0.5; f.queue_count.min(cap) as usize],
            ..Default::default()
        })
        .collect();
    if queue_create_infos.is_empty() {
        return Ok(None);
    }
    let opened: HashMap<u32, u32> = queue_create_infos
        .iter()
        .map(|q| (q.queue_family_index, q.queues.len() as u32))
        .collect();

    let (device, queue_iter) = Device::new(
        physical.clone(),
        DeviceCreateInfo {
            queue_create_infos,
            enabled_extensions: DeviceExtensions {
                khr_portability_subset: physical.supported_extensions().khr_portability_subset,
                ..DeviceExtensions::empty()
            },
            enabled_features: shader_features(physical, options.robust_buffer_access),
            ..Default::default()
        },
    )
    .map_err(|e| vk_error(index, 0, e))?;

    let mut queues = HashMap::new();
    let mut next_in_family: HashMap<u32, u32> = HashMap::new();
    for queue in queue_iter {
        let family = queue.queue_family_index();
        let slot = next_in_family.entry(family).or_insert(0);
        queues.insert((family, *slot), queue);
        *slot += 1;
    }

    // SAFETY: an empty pipeline cache holds no initial data, so no driver-side data
    // needs to be trusted.
    let pipeline_cache =
        unsafe { PipelineCache::new(device.clone(), PipelineCacheCreateInfo::default()) }
            .map_err(|e| vk_error(index, 0, e))?;

    let info = describe(index, physical, &opened);
    let memory = physical.memory_properties();
    let device_local: Vec<MemoryPropertyFlags> = memory
        .memory_types
        .iter()
        .map(|t| t.property_flags)
        .filter(|f| f.intersects(MemoryPropertyFlags::DEVICE_LOCAL))
        .collect();
    let unified_memory = !options.always_stage
        && !device_local.is_empty()
        && device_local
            .iter()
            .all(|f| f.contains(MemoryPropertyFlags::HOST_VISIBLE));
    // Where device memory is host visible anyway, in place is already the rule.
    let host_max_bytes = if unified_memory {
        0
    } else {
        options.host_max_bytes
    };

    Ok(Some(Gpu {
        info,
        memory: Arc::new(StandardMemoryAllocator::new_default(device.clone())),
        commands: Arc::new(StandardCommandBufferAllocator::new(
            device.clone(),
            Default::default(),
        )),
        descriptors: Arc::new(StandardDescriptorSetAllocator::new(
            device.clone(),
            Default::default(),
        )),
        device,
        queues,
        pipeline_cache,
        unified_memory,
        host_max_bytes,
        lost: DeviceFlag::default(),
        reuse: Mutex::new(ReuseCache::new(
            options.max_cached_commands,
            options.reuse_budget_bytes,
        )),
    }))
}

/// Shader features that WGSL kernels commonly need, where the device has them; and
/// `robustBufferAccess`: a user's kernel (valid SPIR-V, but indexing past a buffer at
/// run time, which no validator can see) reads zeros and loses its stray writes instead
/// of corrupting the driver's memory (SPEC §11: no process crashes on a user's module).
fn shader_features(physical: &PhysicalDevice, robust: bool) -> DeviceFeatures {
    let api = physical.api_version();
    let mut wanted = DeviceFeatures {
        robust_buffer_access: robust,
        shader_int64: true,
        shader_int16: true,
        ..DeviceFeatures::empty()
    };
    if api >= Version::V1_1 {
        wanted.storage_buffer16_bit_access = true;
    }
    if api >= Version::V1_2 {
        wanted.shader_int8 = true;
        wanted.storage_buffer8_bit_access = true;
        // With the memory model on, vulkano requires device scope for `Device`-scoped
        // atomics (which naga emits for storage atomics): both or neither.
        wanted.vulkan_memory_model = true;
        wanted.vulkan_memory_model_device_scope = true;
        // Descriptor indexing, for D9 (bindless) where the device has it.
        wanted.runtime_descriptor_array = true;
        wanted.shader_storage_buffer_array_non_uniform_indexing = true;
        wanted.descriptor_binding_partially_bound = true;
    }
    wanted.shader_storage_buffer_array_dynamic_indexing = true;
    let mut features = wanted.intersection(physical.supported_features());
    if !features.vulkan_memory_model_device_scope {
        features.vulkan_memory_model = false;
    }
    features
}

/// The [`DeviceInfo`] of a physical device; `opened` maps family → queues opened.
fn describe(index: usize, physical: &PhysicalDevice, opened: &HashMap<u32, u32>) -> DeviceInfo {
    let p = physical.properties();
    let device_type = match p.device_type {
        PhysicalDeviceType::DiscreteGpu => "discrete",
        PhysicalDeviceType::IntegratedGpu => "integrated",
        PhysicalDeviceType::VirtualGpu => "virtual",
        PhysicalDeviceType::Cpu => "cpu",
        _ => "other",
    };
    let driver_version = match (&p.driver_name, &p.driver_info) {
        (Some(name), Some(info)) if !info.is_empty() => format!("{name} {info}"),
        (Some(name), _) => format!("{name} {}", packed_version(p.driver_version)),
        (None, _) => packed_version(p.driver_version),
    };
    let queue_families = physical
        .queue_family_properties()
        .iter()
        .enumerate()
        .map(|(i, f)| QueueFamilyInfo {
            index: i as u32,
            queue_count: f.queue_count,
            opened: opened.get(&(i as u32)).copied().unwrap_or(0),
            compute: f.queue_flags.intersects(QueueFlags::COMPUTE),
            graphics: f.queue_flags.intersects(QueueFlags::GRAPHICS),
            transfer: f.queue_flags.intersects(QueueFlags::TRANSFER),
            timestamp_valid_bits: f.timestamp_valid_bits.unwrap_or(0),
        })
        .collect();
    DeviceInfo {
        index,
        name: p.device_name.clone(),
        device_type: device_type.to_string(),
        adapter_id: format!("{:04x}:{:04x}:{}", p.vendor_id, p.device_id, p.device_name),
        device_uuid: p.device_uuid.unwrap_or([0; 16]),
        driver_version,
        timestamp_period_ns: p.timestamp_period,
        queue_families,
        bindless: bindless_support(physical.supported_features()),
        limits: DeviceLimits {
            max_workgroup_count: p.max_compute_work_group_count,
            max_workgroup_size: p.max_compute_work_group_size,
            max_workgroup_invocations: p.max_compute_work_group_invocations,
            max_storage_buffer_range: u64::from(p.max_storage_buffer_range),
            max_push_constants_size: p.max_push_constants_size,
            subgroup_size: p.subgroup_size,
        },
    }
}

/// D9's support level from the device's descriptor-indexing features (all of which
/// `shader_features` enables where supported).
fn bindless_support(features: &DeviceFeatures) -> BindlessSupport {
    if features.runtime_descriptor_array
        && features.shader_storage_buffer_array_non_uniform_indexing
        && features.descriptor_binding_partially_bound
    {
        BindlessSupport::Full
    } else if features.shader_storage_buffer_array_dynamic_indexing {
        BindlessSupport::Static
    } else {
        BindlessSupport::Unsupported
    }
}

/// A driver version in Vulkan's packed major.minor.patch form.
fn packed_version(v: u32) -> String {
    format!("{}.{}.{}", v >> 22, (v >> 12) & 0x3ff, v & 0xfff)
}
