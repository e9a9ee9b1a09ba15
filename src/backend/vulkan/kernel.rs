//! Loading a kernel variant: validate its SPIR-V and declared layout up front, then
//! build a compute pipeline through the device's shared pipeline cache.
//!
//! Every check that a caller's mistake can fail happens here, before the driver sees
//! the module, and comes back as a typed [`BackendError`]: SPIR-V that SPIRV-Tools'
//! validator refuses (`InvalidSpirv`, see `validate.rs`; checked before vulkano parses
//! the module), a missing entry point (`InvalidSpirv`), declared bindings or push
//! constants that differ from what the shader reflects (`BindingMismatch`), and a
//! workgroup size beyond the device's limits (`DispatchTooLarge`). Nothing is
//! submitted to a queue.
//!
//! Everything vulkano does with the module (parsing, reflection, pipeline creation)
//! runs under one `catch_unwind`: the validator is what keeps malformed modules away
//! from it, and a panic vulkano still has on a module the validator accepted is the
//! load's `InvalidSpirv`, not a panic in the caller's thread.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use vulkano::descriptor_set::layout::{
    DescriptorSetLayout, DescriptorSetLayoutBinding, DescriptorSetLayoutCreateInfo, DescriptorType,
};
use vulkano::pipeline::compute::ComputePipelineCreateInfo;
use vulkano::pipeline::layout::{PipelineLayoutCreateInfo, PushConstantRange};
use vulkano::pipeline::{ComputePipeline, PipelineLayout, PipelineShaderStageCreateInfo};
use vulkano::shader::spirv::{ExecutionMode, ExecutionModel, Instruction, Spirv};
use vulkano::shader::{ShaderModule, ShaderModuleCreateInfo, ShaderStages, SpecializationConstant};
use vulkano::{Validated, VulkanError};

use super::errors::vk_error;
use super::open::Gpu;
use super::validate;
use crate::backend::{BackendError, BindingAccess, BindingDesc, KernelHandle, KernelVariant};
use crate::policy::BindlessSupport;

/// A variant loaded on one device.
#[derive(Debug)]
pub(super) struct LoadedKernel {
    pub(super) handle: KernelHandle,
    pub(super) name: String,
    pub(super) bindings: Vec<BindingDesc>,
    pub(super) push_constant_bytes: u32,
    pub(super) pipeline: Arc<ComputePipeline>,
}

/// What makes two loads "the same variant": everything the pipeline is built from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct VariantKey {
    device: usize,
    name: String,
    spirv: Arc<[u32]>,
    entry_point: String,
    workgroup_size: [u32; 3],
    bindings: Vec<BindingDesc>,
    push_constant_bytes: u32,
    /// The specialisation constants' values, sorted by id: one pipeline per set.
    constants: Vec<(u32, u32)>,
}

impl VariantKey {
    pub(super) fn new(
        device: usize,
        variant: &KernelVariant,
        spirv: &Arc<[u32]>,
        constants: &[(u32, u32)],
    ) -> Self {
        let mut constants = constants.to_vec();
        constants.sort_unstable();
        VariantKey {
            constants,
            device,
            name: variant.name.clone(),
            spirv: spirv.clone(),
            entry_point: variant.entry_point.clone(),
            workgroup_size: variant.workgroup_size,
            bindings: variant.bindings.clone(),
            push_constant_bytes: variant.push_constant_bytes,
        }
    }
}

/// Validates `variant` and builds its pipeline on `gpu`, specialised with `constants`
/// ((id, value) pairs); `handle` is the handle it gets.
pub(super) fn load(
    gpu: &Gpu,
    variant: &KernelVariant,
    (spirv, constants): (&[u32], &[(u32, u32)]),
    handle: KernelHandle,
) -> Result<LoadedKernel, BackendError> {
    let name = variant.name.as_str();
    check_declared(gpu, variant)?;
    // Before vulkano or the driver sees a word of it.
    validate::validate(gpu.device.api_version(), spirv).map_err(|reason| {
        BackendError::InvalidSpirv {
            kernel: name.to_string(),
            reason,
        }
    })?;
    // What the validator cannot know: the device's workgroup memory limit.
    let limit = u64::from(
        gpu.device
            .physical_device()
            .properties()
            .max_compute_shared_memory_size,
    );
    match validate::workgroup_bytes(spirv) {
        Some(bytes) if bytes <= limit => {}
        Some(bytes) => {
            return Err(BackendError::DispatchTooLarge {
                kernel: name.to_string(),
                reason: format!(
                    "the shader declares {bytes} bytes of workgroup memory, the device \
                     allows {limit} (maxComputeSharedMemorySize)"
                ),
            })
        }
        None => {
            return Err(BackendError::InvalidSpirv {
                kernel: name.to_string(),
                reason: "the size of its workgroup variables cannot be worked out (an array \
                         length that is a specialization constant?); give them constant sizes"
                    .into(),
            })
        }
    }
    catch_unwind(AssertUnwindSafe(|| {
        build(gpu, variant, (spirv, constants), handle)
    }))
    .unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        Err(BackendError::InvalidSpirv {
            kernel: name.to_string(),
            reason: format!(
                "vulkano panicked on a module SPIRV-Tools' validator accepted ({what}); \
                     please report it with the module"
            ),
        })
    })
}

/// Parses and reflects `spirv` (which passed the validator) and builds its pipeline,
/// specialised with `constants`.
fn build(
    gpu: &Gpu,
    variant: &KernelVariant,
    (spirv, constants): (&[u32], &[(u32, u32)]),
    handle: KernelHandle,
) -> Result<LoadedKernel, BackendError> {
    let name = variant.name.as_str();
    let invalid = |reason: String| BackendError::InvalidSpirv {
        kernel: name.to_string(),
        reason,
    };
    let mismatch = |reason: String| BackendError::BindingMismatch {
        kernel: name.to_string(),
        reason,
    };

    let parsed = Spirv::new(spirv).map_err(|e| invalid(e.to_string()))?;
    check_entry_point(&parsed, variant).map_err(|e| match e {
        EntryError::Missing(reason) => invalid(reason),
        EntryError::Workgroup(shader) => BackendError::WorkgroupMismatch {
            kernel: name.to_string(),
            declared: variant.workgroup_size,
            shader,
        },
    })?;

    // SAFETY: SPIRV-Tools' validator accepted the module for the device's Vulkan
    // version (`load`), which is what `vkCreateShaderModule` requires of valid usage;
    // vulkano also checks it against the device's features before handing it to the
    // driver.
    let module =
        unsafe { ShaderModule::new(gpu.device.clone(), ShaderModuleCreateInfo::new(spirv)) }
            .map_err(|e| match e {
                Validated::ValidationError(v) => invalid(v.to_string()),
                Validated::Error(e) => vk_error(gpu.info.index, 0, Validated::Error(e)),
            })?;
    let specialised = module
        .specialize(
            specialisation(&module, constants)
                .map_err(invalid)?
                .into_iter()
                .collect(),
        )
        .map_err(|v| invalid(v.to_string()))?;
    let entry = specialised
        .entry_point_with_execution(&variant.entry_point, ExecutionModel::GLCompute)
        .ok_or_else(|| {
            invalid(format!(
                "no compute entry point named `{}`",
                variant.entry_point
            ))
        })?;
    check_reflected_layout(variant, &entry).map_err(mismatch)?;

    let set_layout = DescriptorSetLayout::new(
        gpu.device.clone(),
        DescriptorSetLayoutCreateInfo {
            bindings: crate::backend::descriptor_counts(&variant.bindings)
                .map_err(mismatch)?
                .into_iter()
                .map(|(slot, count)| {
                    (
                        slot,
                        DescriptorSetLayoutBinding {
                            stages: ShaderStages::COMPUTE,
                            descriptor_count: count,
                            ..DescriptorSetLayoutBinding::descriptor_type(
                                DescriptorType::StorageBuffer,
                            )
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>(),
            ..Default::default()
        },
    )
    .map_err(|e| layout_error(gpu, name, e))?;
    let push_constant_ranges = if variant.push_constant_bytes > 0 {
        vec![PushConstantRange {
            stages: ShaderStages::COMPUTE,
            offset: 0,
            size: variant.push_constant_bytes,
        }]
    } else {
        Vec::new()
    };
    let layout = PipelineLayout::new(
        gpu.device.clone(),
        PipelineLayoutCreateInfo {
            set_layouts: vec![set_layout],
            push_constant_ranges,
            ..Default::default()
        },
    )
    .map_err(|e| layout_error(gpu, name, e))?;
    let pipeline = ComputePipeline::new(
        gpu.device.clone(),
        Some(gpu.pipeline_cache.clone()),
        ComputePipelineCreateInfo::stage_layout(PipelineShaderStageCreateInfo::new(entry), layout),
    )
    .map_err(|e| match e {
        // The layout was checked against the shader above, so what the pipeline still
        // refuses is a layout detail or something the device lacks.
        Validated::ValidationError(v) if !v.to_string().contains("layout") => {
            BackendError::Unsupported {
                kernel: name.to_string(),
                backend: crate::backend::BackendKind::Vulkan,
                reason: format!("the device cannot run this shader: {v}"),
            }
        }
        e => layout_error(gpu, name, e),
    })?;

    Ok(LoadedKernel {
        handle,
        name: name.to_string(),
        bindings: variant.bindings.clone(),
        push_constant_bytes: variant.push_constant_bytes,
        pipeline,
    })
}

/// The values of `constants` ((id, value) pairs) typed as `module` declares each
/// constant: a 32-bit word read as a `uint`, an `int`'s bits, a `float`'s bits or a
/// `bool` (non-zero). `Err` names a constant the module does not have, or one of a
/// type a 32-bit word cannot give.
fn specialisation(
    module: &ShaderModule,
    constants: &[(u32, u32)],
) -> Result<Vec<(u32, SpecializationConstant)>, String> {
    let declared = module.specialization_constants();
    constants
        .iter()
        .map(|&(id, value)| {
            let typed = match declared.get(&id) {
                None => {
                    let mut ids: Vec<u32> = declared.keys().copied().collect();
                    ids.sort_unstable();
                    return Err(format!(
                        "it has no specialisation constant {id} (it declares {ids:?})"
                    ));
                }
                Some(SpecializationConstant::U32(_)) => SpecializationConstant::U32(value),
                Some(SpecializationConstant::I32(_)) => {
                    SpecializationConstant::I32(i32::from_ne_bytes(value.to_ne_bytes()))
                }
                Some(SpecializationConstant::F32(_)) => {
                    SpecializationConstant::F32(f32::from_bits(value))
                }
                Some(SpecializationConstant::Bool(_)) => SpecializationConstant::Bool(value != 0),
                Some(other) => {
                    return Err(format!(
                        "specialisation constant {id} is a {other:?}; only 32-bit and bool constants can be set"
                    ))
                }
            };
            Ok((id, typed))
        })
        .collect()
}

/// A layout or pipeline the device refused: validation → `BindingMismatch`.
fn layout_error(gpu: &Gpu, kernel: &str, e: Validated<VulkanError>) -> BackendError {
    match e {
        Validated::ValidationError(v) => BackendError::BindingMismatch {
            kernel: kernel.to_string(),
            reason: v.to_string(),
        },
        Validated::Error(e) => vk_error(gpu.info.index, 0, Validated::Error(e)),
    }
}

/// The declared bindings, push constants and workgroup size, against the device limits.
fn check_declared(gpu: &Gpu, variant: &KernelVariant) -> Result<(), BackendError> {
    let limits = &gpu.info.limits;
    let too_large = |reason: String| BackendError::DispatchTooLarge {
        kernel: variant.name.clone(),
        reason,
    };
    let mismatch = |reason: String| BackendError::BindingMismatch {
        kernel: variant.name.clone(),
        reason,
    };
    let counts = crate::backend::descriptor_counts(&variant.bindings).map_err(mismatch)?;
    if counts.iter().any(|&(_, n)| n > 1) {
        // D9: a descriptor array needs descriptor indexing; a non-uniform index into
        // one needs it in full.
        let needs = if variant.indexes_descriptors_non_uniformly() {
            BindlessSupport::Full
        } else {
            BindlessSupport::Static
        };
        let has = gpu.info.bindless;
        let enough = match needs {
            BindlessSupport::Full => has == BindlessSupport::Full,
            _ => has != BindlessSupport::Unsupported,
        };
        if !enough {
            return Err(BackendError::Unsupported {
                kernel: variant.name.clone(),
                backend: crate::backend::BackendKind::Vulkan,
                reason: format!(
                    "it binds a descriptor array, which needs {needs} descriptor indexing; the device has {has} (give this device a variant with one binding per buffer)"
                ),
            });
        }
    }
    if variant.push_constant_bytes % 4 != 0 {
        return Err(mismatch(format!(
            "push constants are declared as {} bytes; Vulkan needs a multiple of 4",
            variant.push_constant_bytes
        )));
    }
    if variant.push_constant_bytes > limits.max_push_constants_size {
        return Err(too_large(format!(
            "{} bytes of push constants, the device allows {} (maxPushConstantsSize)",
            variant.push_constant_bytes, limits.max_push_constants_size
        )));
    }
    let wg = variant.workgroup_size;
    if wg.contains(&0) {
        return Err(mismatch(format!(
            "workgroup size {wg:?} has a zero dimension"
        )));
    }
    for (axis, (&n, &max)) in wg.iter().zip(&limits.max_workgroup_size).enumerate() {
        if n > max {
            return Err(too_large(format!(
                "workgroup size {n} in {} is above maxComputeWorkGroupSize {max}",
                ["x", "y", "z"][axis]
            )));
        }
    }
    let invocations = wg.iter().map(|&n| u64::from(n)).product::<u64>();
    if invocations > u64::from(limits.max_workgroup_invocations) {
        return Err(too_large(format!(
            "workgroup size {wg:?} is {invocations} invocations, above \
             maxComputeWorkGroupInvocations {}",
            limits.max_workgroup_invocations
        )));
    }
    Ok(())
}

enum EntryError {
    Missing(String),
    /// The shader's `LocalSize`, which the variant's declaration differs from.
    Workgroup([u32; 3]),
}

/// The entry point exists as a compute entry point and its `LocalSize` (where the
/// module states it as literals) is the declared workgroup size.
fn check_entry_point(spirv: &Spirv, variant: &KernelVariant) -> Result<(), EntryError> {
    let mut names = Vec::new();
    let mut id = None;
    for inst in spirv.entry_points() {
        if let Instruction::EntryPoint {
            execution_model,
            entry_point,
            name,
            ..
        } = inst
        {
            if *execution_model == ExecutionModel::GLCompute {
                if name == &variant.entry_point {
                    id = Some(*entry_point);
                }
                names.push(name.clone());
            }
        }
    }
    let Some(id) = id else {
        return Err(EntryError::Missing(format!(
            "no compute entry point named `{}` (the module has: {})",
            variant.entry_point,
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )));
    };
    for inst in spirv.execution_modes() {
        if let Instruction::ExecutionMode {
            entry_point,
            mode:
                ExecutionMode::LocalSize {
                    x_size,
                    y_size,
                    z_size,
                },
        } = inst
        {
            let local = [*x_size, *y_size, *z_size];
            if *entry_point == id && local != variant.workgroup_size {
                return Err(EntryError::Workgroup(local));
            }
        }
    }
    Ok(())
}

/// The shader's reflected descriptor bindings and push constants, against the variant.
fn check_reflected_layout(
    variant: &KernelVariant,
    entry: &vulkano::shader::EntryPoint,
) -> Result<(), String> {
    let info = entry.info();
    let mut used: Vec<(u32, u32)> = info
        .descriptor_binding_requirements
        .keys()
        .copied()
        .collect();
    used.sort();
    for (set, binding) in &used {
        if *set != 0 {
            return Err(format!(
                "the shader uses descriptor set {set} (binding {binding}); only set 0 is supported"
            ));
        }
        let Some(declared) = variant.bindings.iter().find(|b| b.slot == *binding) else {
            return Err(format!(
                "the shader uses binding {binding}, which the variant does not declare \
                 (declared: {:?})",
                variant.bindings.iter().map(|b| b.slot).collect::<Vec<_>>()
            ));
        };
        let req = &info.descriptor_binding_requirements[&(*set, *binding)];
        if !req
            .descriptor_types
            .contains(&DescriptorType::StorageBuffer)
        {
            return Err(format!(
                "binding {binding} is a {:?} in the shader; only storage buffers are supported",
                req.descriptor_types
            ));
        }
        let declared_count = variant
            .bindings
            .iter()
            .filter(|b| b.slot == *binding)
            .count();
        if let Some(count) = req.descriptor_count {
            if count as usize != declared_count {
                return Err(format!(
                    "binding {binding} is an array of {count} descriptors in the shader, the variant declares {declared_count}"
                ));
            }
        }
        let writes = req.descriptors.values().any(|d| !d.memory_write.is_empty());
        if writes && declared.access == BindingAccess::Read {
            return Err(format!(
                "the shader writes binding {binding}, which the variant declares read-only"
            ));
        }
    }
    for b in &variant.bindings {
        if !used.contains(&(0, b.slot)) {
            return Err(format!(
                "binding {} is declared but the shader's entry point `{}` does not use it",
                b.slot, variant.entry_point
            ));
        }
    }
    let shader_bytes = info
        .push_constant_requirements
        .as_ref()
        .map(|r| r.offset + r.size)
        .unwrap_or(0);
    if shader_bytes != variant.push_constant_bytes {
        return Err(format!(
            "the shader uses {shader_bytes} bytes of push constants, the variant declares {}",
            variant.push_constant_bytes
        ));
    }
    Ok(())
}
