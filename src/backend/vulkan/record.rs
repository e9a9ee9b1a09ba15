//! Recording a slot (`reuse.rs`): its buffers (from the size-class pool or newly
//! allocated, in place or staged), its descriptor set, its timestamp queries and its
//! command buffer, uploads → kernel → read-backs. The three parts are recorded by
//! functions of their own, which the group recording of `overlap.rs` calls in another
//! order. It submits nothing.

use std::sync::Arc;
use std::time::Instant;

use vulkano::buffer::{Buffer, BufferCreateInfo, BufferUsage, Subbuffer};
use vulkano::command_buffer::{
    AutoCommandBufferBuilder, CommandBufferUsage, CopyBufferInfo, PrimaryAutoCommandBuffer,
};
use vulkano::descriptor_set::{DescriptorSet, WriteDescriptorSet};
use vulkano::memory::allocator::{AllocationCreateInfo, MemoryTypeFilter};
use vulkano::pipeline::{Pipeline, PipelineBindPoint};
use vulkano::query::{QueryPool, QueryPoolCreateInfo, QueryType};
use vulkano::sync::fence::{Fence, FenceCreateInfo};
use vulkano::sync::PipelineStage;

use super::errors::{alloc_error, vk_error};
use super::kernel::LoadedKernel;
use super::open::Gpu;
use super::reuse::{size_class, Pooled, Role, Slot, SlotBinding, SlotKey};
use crate::backend::{padded_len, BackendError};

/// Allocates (or takes from the pool) a buffer of `role` for `bytes` bytes.
pub(super) fn buffer(gpu: &Gpu, role: Role, bytes: u64) -> Result<Pooled, BackendError> {
    let class = size_class(bytes);
    if let Some(b) = gpu
        .reuse
        .lock()
        .ok()
        .and_then(|mut r| r.take_buffer(role, class))
    {
        return Ok(b);
    }
    let storage =
        BufferUsage::STORAGE_BUFFER | BufferUsage::TRANSFER_SRC | BufferUsage::TRANSFER_DST;
    let (usage, memory_type_filter) = match role {
        Role::Device => (storage, MemoryTypeFilter::PREFER_DEVICE),
        Role::Unified => (
            storage,
            MemoryTypeFilter::PREFER_DEVICE | MemoryTypeFilter::HOST_RANDOM_ACCESS,
        ),
        Role::Host => (
            storage,
            MemoryTypeFilter::PREFER_HOST | MemoryTypeFilter::HOST_RANDOM_ACCESS,
        ),
        Role::Upload => (
            BufferUsage::TRANSFER_SRC,
            MemoryTypeFilter::PREFER_HOST | MemoryTypeFilter::HOST_SEQUENTIAL_WRITE,
        ),
        Role::Readback => (
            BufferUsage::TRANSFER_DST,
            MemoryTypeFilter::PREFER_HOST | MemoryTypeFilter::HOST_RANDOM_ACCESS,
        ),
    };
    let buffer: Subbuffer<[u8]> = Buffer::new_slice(
        gpu.memory.clone(),
        BufferCreateInfo {
            usage,
            ..Default::default()
        },
        AllocationCreateInfo {
            memory_type_filter,
            ..Default::default()
        },
        class,
    )
    .map_err(|e| gpu.note(alloc_error(gpu.info.index, class, e)))?;
    if let Ok(mut r) = gpu.reuse.lock() {
        r.stats.buffers_allocated += 1;
    }
    Ok(Pooled { role, buffer })
}

/// A two-query timestamp pool, from the pool or new.
pub(super) fn query_pool(gpu: &Gpu) -> Result<Arc<QueryPool>, BackendError> {
    if let Some(q) = gpu.reuse.lock().ok().and_then(|mut r| r.take_query_pool()) {
        return Ok(q);
    }
    QueryPool::new(
        gpu.device.clone(),
        QueryPoolCreateInfo {
            query_count: 2,
            ..QueryPoolCreateInfo::query_type(QueryType::Timestamp)
        },
    )
    .map_err(|e| gpu.note(vk_error(gpu.info.index, 0, e)))
}

/// The buffers of a slot for `key`: all in place in `role`'s memory (written and read
/// by the host directly), or (`None`) device-local with staging buffers.
fn slot_bindings(
    gpu: &Gpu,
    kernel: &LoadedKernel,
    key: &SlotKey,
    in_place: Option<Role>,
) -> Result<Vec<SlotBinding>, BackendError> {
    let mut bindings = Vec::with_capacity(key.buffers.len());
    for (&(len, uploaded), desc) in key.buffers.iter().zip(&kernel.bindings) {
        let bound = padded_len(len);
        let binding = if let Some(role) = in_place {
            SlotBinding {
                len,
                device: buffer(gpu, role, bound)?,
                upload: None,
                readback: None,
            }
        } else {
            SlotBinding {
                len,
                device: buffer(gpu, Role::Device, bound)?,
                upload: if uploaded {
                    Some(buffer(gpu, Role::Upload, bound)?)
                } else {
                    None
                },
                readback: if desc.access.writes() {
                    Some(buffer(gpu, Role::Readback, bound)?)
                } else {
                    None
                },
            }
        };
        bindings.push(binding);
    }
    Ok(bindings)
}

/// Records a slot for `key`: buffers, descriptor set, timestamps (if `key.timed`) and
/// the command buffer.
pub(super) fn record(
    gpu: &Gpu,
    kernel: &LoadedKernel,
    key: &SlotKey,
) -> Result<Slot, BackendError> {
    let device = gpu.info.index;
    let total: u64 = key.buffers.iter().map(|&(len, _)| padded_len(len)).sum();
    let in_place = if gpu.unified_memory {
        Some(Role::Unified)
    } else if total <= gpu.host_max_bytes {
        Some(Role::Host)
    } else {
        None
    };
    let bindings = match in_place {
        Some(role) => match slot_bindings(gpu, kernel, key, Some(role)) {
            Ok(b) => b,
            // No host memory left to bind: stage this slot instead.
            Err(_) if role != Role::Unified => slot_bindings(gpu, kernel, key, None)?,
            Err(e) => return Err(e),
        },
        None => slot_bindings(gpu, kernel, key, None)?,
    };
    let queries = if key.timed {
        Some(query_pool(gpu)?)
    } else {
        None
    };

    let layout = kernel.pipeline.layout().clone();
    let set_layout = layout.set_layouts().first().cloned().ok_or_else(|| {
        BackendError::Vulkan(format!(
            "kernel `{}` has no descriptor set layout",
            kernel.name
        ))
    })?;
    let set = DescriptorSet::new(
        gpu.descriptors.clone(),
        set_layout,
        bindings.iter().zip(&kernel.bindings).map(|(b, desc)| {
            // A plain binding is element 0 of its slot; an array's buffers each their own.
            WriteDescriptorSet::buffer_array(
                desc.slot,
                desc.index,
                [b.device.buffer.clone().slice(0..padded_len(b.len))],
            )
        }),
        [],
    )
    .map_err(|e| gpu.note(vk_error(device, 0, e)))?;

    let recording_since = Instant::now();
    let mut builder = AutoCommandBufferBuilder::primary(
        gpu.commands.clone(),
        key.family,
        CommandBufferUsage::MultipleSubmit,
    )
    .map_err(|e| gpu.note(vk_error(device, 0, e)))?;
    let parts = (kernel, key, &bindings[..], &set, queries.as_ref());
    record_uploads(&mut builder, parts)?;
    record_kernel(&mut builder, parts)?;
    record_readbacks(&mut builder, parts)?;
    let command = builder
        .build()
        .map_err(|e| gpu.note(vk_error(device, 0, e)))?;
    let record_ns = elapsed_ns(recording_since);
    if let Ok(mut r) = gpu.reuse.lock() {
        r.note_record(record_ns);
        r.stats.recorded += 1;
        r.stats.in_place += u64::from(
            bindings
                .iter()
                .all(|b| b.upload.is_none() && b.readback.is_none()),
        );
    }
    Ok(Slot {
        command,
        bindings,
        set,
        queries,
        fence: new_fence(gpu)?,
    })
}

/// What recording one job's commands reads: its kernel, its shape, its slot's
/// bindings, descriptor set and timestamp queries.
pub(super) type JobParts<'a> = (
    &'a LoadedKernel,
    &'a SlotKey,
    &'a [SlotBinding],
    &'a Arc<DescriptorSet>,
    Option<&'a Arc<QueryPool>>,
);

/// The builder every recording of this backend uses.
pub(super) type Builder = AutoCommandBufferBuilder<PrimaryAutoCommandBuffer>;

fn recording(kernel: &LoadedKernel) -> impl Fn(Box<vulkano::ValidationError>) -> BackendError + '_ {
    move |e| BackendError::Vulkan(format!("recording `{}`: {e}", kernel.name))
}

/// Records a job's uploads: each uploaded binding copied from its staging buffer, each
/// zero-filled one filled (an in-place binding is written by the host instead).
pub(super) fn record_uploads(
    builder: &mut Builder,
    parts: JobParts<'_>,
) -> Result<(), BackendError> {
    let (kernel, key, bindings, _, _) = parts;
    let recording = recording(kernel);
    for (b, &(_, uploaded)) in bindings.iter().zip(&key.buffers) {
        let target = b.device.buffer.clone().slice(0..padded_len(b.len));
        match (&b.upload, uploaded) {
            (Some(upload), _) => {
                let source = upload.buffer.clone().slice(0..padded_len(b.len));
                builder
                    .copy_buffer(CopyBufferInfo::buffers(source, target))
                    .map_err(&recording)?;
            }
            (None, false) => {
                builder
                    .fill_buffer(target.reinterpret::<[u32]>(), 0)
                    .map_err(&recording)?;
            }
            (None, true) => {} // in place: written by the host before each submit
        }
    }
    Ok(())
}

/// Records a job's kernel: the pipeline, its descriptor set and push constants, and
/// `key.repeats` dispatches between the two timestamps (where the slot has queries).
pub(super) fn record_kernel(
    builder: &mut Builder,
    parts: JobParts<'_>,
) -> Result<(), BackendError> {
    let (kernel, key, _, set, queries) = parts;
    let recording = recording(kernel);
    if let Some(q) = queries {
        // SAFETY: the two queries belong to this slot alone, which one dispatch owns at
        // a time, and are reset by this same command buffer before they are written.
        unsafe {
            builder
                .reset_query_pool(q.clone(), 0..2)
                .map_err(&recording)?;
            builder
                .write_timestamp(q.clone(), 0, PipelineStage::BottomOfPipe)
                .map_err(&recording)?;
        }
    }
    let layout = kernel.pipeline.layout().clone();
    builder
        .bind_pipeline_compute(kernel.pipeline.clone())
        .map_err(&recording)?
        .bind_descriptor_sets(PipelineBindPoint::Compute, layout.clone(), 0, set.clone())
        .map_err(&recording)?;
    for (i, word) in key.push_constants.chunks_exact(4).enumerate() {
        let word = u32::from_ne_bytes([word[0], word[1], word[2], word[3]]);
        builder
            .push_constants(layout.clone(), (i * 4) as u32, word)
            .map_err(&recording)?;
    }
    // Repeats write the same bindings, so the builder puts a barrier between them (as
    // between two kernels of one stream elsewhere).
    for _ in 0..key.repeats {
        // SAFETY: the pipeline's layout was checked against the shader's reflected
        // layout at load, every binding is bound to a buffer of the size the job asked
        // for, the push constants cover the declared range and the group counts are
        // within maxComputeWorkGroupCount. What the shader does inside its buffers is
        // the kernel author's contract (as for any Vulkan compute shader).
        unsafe {
            builder.dispatch(key.workgroups).map_err(&recording)?;
        }
    }
    if let Some(q) = queries {
        // SAFETY: query 1 of this slot's pool, reset above in this command buffer.
        unsafe {
            builder
                .write_timestamp(q.clone(), 1, PipelineStage::BottomOfPipe)
                .map_err(&recording)?;
        }
    }
    Ok(())
}

/// Records a job's read-backs: each written binding copied to its staging buffer.
pub(super) fn record_readbacks(
    builder: &mut Builder,
    parts: JobParts<'_>,
) -> Result<(), BackendError> {
    let (kernel, _, bindings, _, _) = parts;
    for b in bindings {
        if let Some(readback) = &b.readback {
            let bound = padded_len(b.len);
            builder
                .copy_buffer(CopyBufferInfo::buffers(
                    b.device.buffer.clone().slice(0..bound),
                    readback.buffer.clone().slice(0..bound),
                ))
                .map_err(recording(kernel))?;
        }
    }
    Ok(())
}

/// A new unsignalled fence for a slot.
fn new_fence(gpu: &Gpu) -> Result<Arc<Fence>, BackendError> {
    Fence::new(gpu.device.clone(), FenceCreateInfo::default())
        .map(Arc::new)
        .map_err(|e| gpu.note(vk_error(gpu.info.index, 0, e)))
}

/// One group submission: its command buffer (kept alive until the jobs finish) and
/// the fence it signals. Every job of the group holds it; nobody resets the fence.
pub(super) struct GroupRun {
    pub(super) _command: Arc<PrimaryAutoCommandBuffer>,
    pub(super) fence: Arc<Fence>,
}

/// Nanoseconds since `since`.
pub(super) fn elapsed_ns(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
