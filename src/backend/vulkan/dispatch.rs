//! Running dispatch jobs: validate each job, take (or record) a slot for its shape,
//! write its inputs, submit it — all jobs are submitted before any is waited for — then
//! wait on each fence, read the timestamps and the written bindings back.
//!
//! Submission. A slot's recorded command buffer goes to `vkQueueSubmit` directly
//! (`QueueGuard::submit`) with the slot's own fence, not through vulkano's `GpuFuture`
//! chain: the slot is owned by exactly one dispatch from before its inputs are written
//! until after its fence has signalled and its outputs were read, so the per-resource
//! access tracking the futures do on every submit guards nothing here and costs host
//! time on every batch. Completion is polled (`vkGetFenceStatus`) for up to
//! [`FENCE_SPIN`] before blocking in `vkWaitForFences`: a small kernel finishes well
//! inside that window, and a blocked wait adds a thread wake-up to its latency.
//!
//! Timestamps. Both stamps are written at `BottomOfPipe`: the first after the uploads
//! (copies, zero fills) and the second after the dispatch. A bottom-of-pipe stamp is
//! written once every earlier command on the queue has finished, so the interval is the
//! kernel alone — not the uploads before it, and not an earlier job still running on
//! the same queue (a top-of-pipe start stamp would count both where a single queue is
//! shared, as on lavapipe). Ticks are masked to the family's valid bits and scaled by
//! the device's timestamp period.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vulkano::buffer::{Buffer, BufferCreateInfo, BufferUsage, Subbuffer};
use vulkano::command_buffer::{
    AutoCommandBufferBuilder, CommandBufferSubmitInfo, CommandBufferUsage, CopyBufferInfo,
    PrimaryCommandBufferAbstract, SubmitInfo,
};
use vulkano::descriptor_set::{DescriptorSet, WriteDescriptorSet};
use vulkano::memory::allocator::{AllocationCreateInfo, MemoryTypeFilter};
use vulkano::pipeline::{Pipeline, PipelineBindPoint};
use vulkano::query::{QueryPool, QueryPoolCreateInfo, QueryResultFlags, QueryType};
use vulkano::sync::fence::{Fence, FenceCreateInfo};
use vulkano::sync::PipelineStage;

use super::errors::{alloc_error, vk_error, vulkan_error};
use super::kernel::LoadedKernel;
use super::open::Gpu;
use super::reuse::{size_class, Pooled, Role, Slot, SlotBinding, SlotKey};
use crate::backend::{
    check_buffers, padded_len, BackendError, BufferArg, DispatchJob, DispatchOutput,
};
use crate::policy::CommandReuseDecision;

/// How long a finishing dispatch polls its fence before it blocks on it (a constant:
/// the environment variable that once set it only served to measure the poll).
pub(super) const FENCE_SPIN: std::time::Duration = std::time::Duration::from_micros(200);

/// A job after submission: what is needed to finish it.
pub(super) struct InFlight<'a> {
    gpu: &'a Gpu,
    kernel: Arc<LoadedKernel>,
    key: SlotKey,
    /// The submitted slot; `None` once finished. Dropping an unfinished job waits for
    /// its fence first, so the GPU never runs on freed buffers.
    slot: Option<Slot>,
    valid_bits: u32,
    /// The queue's index within its family (`key.family`), to find it again.
    queue_index: u32,
    /// How many times the job's shape has been dispatched, this one included (D4).
    repeat: u32,
    /// The slot's command buffer was recorded for an earlier dispatch (a replay).
    replayed: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            // Only on an unwinding or failed path; the error was (or will be) reported.
            let _ = slot.fence.wait(None);
        }
    }
}

/// A job after the first phase: finished already (empty dispatch), or on the GPU.
pub(super) enum Started<'a> {
    Done(DispatchOutput),
    Running(Box<InFlight<'a>>),
}

/// Checks a job against its kernel and device. Returns the queue family's timestamp
/// valid bits.
pub(super) fn validate(
    gpu: &Gpu,
    kernel: &LoadedKernel,
    job: &DispatchJob,
) -> Result<u32, BackendError> {
    let name = || kernel.name.clone();
    check_buffers(
        &kernel.name,
        &kernel.bindings,
        &job.buffers,
        gpu.info.limits.max_storage_buffer_range,
    )?;
    if job.push_constants.len() != kernel.push_constant_bytes as usize {
        return Err(BackendError::BindingMismatch {
            kernel: name(),
            reason: format!(
                "the job passes {} bytes of push constants, the kernel declares {}",
                job.push_constants.len(),
                kernel.push_constant_bytes
            ),
        });
    }
    let max = gpu.info.limits.max_workgroup_count;
    for axis in 0..3 {
        if job.workgroups[axis] > max[axis] {
            return Err(BackendError::DispatchTooLarge {
                kernel: name(),
                reason: format!(
                    "{} workgroups in {}, above maxComputeWorkGroupCount {}",
                    job.workgroups[axis],
                    ["x", "y", "z"][axis],
                    max[axis]
                ),
            });
        }
    }
    gpu.info
        .queue_families
        .get(job.queue.family as usize)
        .map(|f| f.timestamp_valid_bits)
        .ok_or_else(|| BackendError::Unknown {
            what: format!("queue {}", job.queue),
        })
}

/// The outputs of an empty dispatch: every written binding as it went in.
fn unchanged_outputs(kernel: &LoadedKernel, job: &DispatchJob) -> Vec<Vec<u8>> {
    kernel
        .bindings
        .iter()
        .zip(&job.buffers)
        .filter(|(b, _)| b.access.writes())
        .map(|(_, arg)| match arg {
            BufferArg::Data(d) => d.to_vec(),
            BufferArg::Zeroed(n) => vec![0; *n as usize],
        })
        .collect()
}

/// Phase one: validate, take or record the slot, write inputs and submit. `timed`:
/// the slot writes two timestamps around the kernel (where the queue has them) and
/// `finish` reads them; an untimed job answers `kernel_ns: None`. `repeats` (at least
/// 1): how many times the kernel runs back to back between the timestamps.
pub(super) fn start<'a>(
    gpu: &'a Gpu,
    kernel: Arc<LoadedKernel>,
    job: &DispatchJob,
    timed: bool,
    repeats: u32,
) -> Result<Started<'a>, BackendError> {
    let valid_bits = validate(gpu, &kernel, job)?;
    let timed = timed && valid_bits > 0;
    let queue = gpu
        .queues
        .get(&(job.queue.family, job.queue.index))
        .ok_or_else(|| BackendError::Unknown {
            what: format!("queue {} (not opened by this backend)", job.queue),
        })?;
    if job.workgroups.contains(&0) {
        return Ok(Started::Done(DispatchOutput {
            outputs: unchanged_outputs(&kernel, job),
            kernel_ns: Some(0),
            recording_reused: None,
        }));
    }
    let key = SlotKey {
        kernel: kernel.handle.id,
        family: job.queue.family,
        buffers: job
            .buffers
            .iter()
            .map(|b| (b.len(), matches!(b, BufferArg::Data(_))))
            .collect(),
        workgroups: job.workgroups,
        push_constants: job.push_constants.clone(),
        timed,
        repeats: repeats.max(1),
    };
    let (cached, repeat) = match gpu.reuse.lock() {
        Ok(mut r) => (r.take_slot(&key), r.note_seen(&key)),
        Err(_) => (None, 1),
    };
    let replayed = cached.is_some();
    let slot = match cached {
        Some(slot) => slot,
        None => record(gpu, &kernel, &key)?,
    };
    write_inputs(gpu, &slot, job)?;
    let command: Arc<dyn PrimaryCommandBufferAbstract> = slot.command.clone();
    let submit = SubmitInfo {
        command_buffers: vec![CommandBufferSubmitInfo::new(command)],
        ..Default::default()
    };
    // SAFETY: the command buffer was recorded for this queue's family with
    // `MultipleSubmit` and is not pending (its slot is ours alone, and a slot goes back
    // to the cache only after its fence signalled). It resets its own queries before
    // writing them and touches only the slot's buffers, which no other dispatch uses
    // and which the host does not touch again until the fence has signalled. The
    // fence is unsignalled (new, or reset after its last wait) and lives in the slot,
    // which outlives the submission (`InFlight` waits on drop).
    let submitted = Instant::now();
    queue
        .with(|mut q| unsafe { q.submit(std::slice::from_ref(&submit), Some(&slot.fence)) })
        .map_err(|e| gpu.note(vk_error(gpu.info.index, 0, e)))?;
    let submit_ns = elapsed_ns(submitted);
    if let Ok(mut r) = gpu.reuse.lock() {
        r.note_submit(submit_ns);
    }
    Ok(Started::Running(Box::new(InFlight {
        gpu,
        kernel,
        key,
        slot: Some(slot),
        valid_bits,
        queue_index: job.queue.index,
        repeat,
        replayed,
    })))
}

/// Waits for `fence`: polls it for up to [`FENCE_SPIN`], then blocks. The clock is read
/// every eighth poll: read at every one, it took more of the loop's time than the
/// fence's status did (profile of submit_overhead on an H200 host,
/// docs/journal/2026-11-22-h200-10-busy-wait.md), and a poll that comes later notices
/// the fence later.
/// `timeout` (`None`: for ever) bounds the whole wait, spin included: past it the wait
/// answers `VulkanError::Timeout`.
fn wait_fence(fence: &Fence, timeout: Option<Duration>) -> Result<(), vulkano::VulkanError> {
    let start = std::time::Instant::now();
    let spin = FENCE_SPIN;
    let mut polls = 0u32;
    loop {
        if fence.is_signaled()? {
            return Ok(());
        }
        std::hint::spin_loop();
        polls = polls.wrapping_add(1);
        if polls % 8 == 0 {
            let waited = start.elapsed();
            if waited >= spin {
                return fence.wait(timeout.map(|t| t.saturating_sub(waited)));
            }
        }
    }
}

/// Gives up on a job whose fence did not signal within the dispatch timeout. The
/// device is still running its kernel, and no Vulkan call stops a running dispatch, so
/// nothing it uses may be freed or reset, and its queue never becomes idle: the job
/// (its slot's buffers, descriptor set, command buffer and fence, and the kernel's
/// pipeline) is leaked, and so is one reference to its queue — a dropped `Queue`
/// waits for the queue to go idle, and the queue holds the device, whose destruction
/// with a dispatch running would be undefined — so dropping the backend later neither
/// hangs nor frees what the kernel still uses. The device is marked lost: every later
/// job on it would queue behind the kernel that never ends (a driver that resets a
/// hung GPU reports the device lost anyway).
fn abandon(job: InFlight<'_>, queue: Option<Arc<vulkano::device::Queue>>) {
    job.gpu.lost.set();
    std::mem::forget(queue);
    std::mem::forget(job);
}

/// A new unsignalled fence for a slot.
fn new_fence(gpu: &Gpu) -> Result<Arc<Fence>, BackendError> {
    Fence::new(gpu.device.clone(), FenceCreateInfo::default())
        .map(Arc::new)
        .map_err(|e| gpu.note(vk_error(gpu.info.index, 0, e)))
}

/// Phase two: wait for the fence, read the kernel time and the written bindings, and
/// return the slot for reuse.
/// `timeout` (`None`: for ever) bounds the fence wait; past it the job is abandoned
/// (see [`abandon`]) and answered `BackendError::TimedOut`.
pub(super) fn finish(
    mut job: InFlight<'_>,
    timeout: Option<Duration>,
) -> Result<DispatchOutput, BackendError> {
    let gpu = job.gpu;
    let device = gpu.info.index;
    let Some(slot) = job.slot.as_ref() else {
        return Err(BackendError::Vulkan("a dispatch was finished twice".into()));
    };
    match wait_fence(&slot.fence, timeout) {
        Ok(()) => {}
        Err(vulkano::VulkanError::Timeout) => {
            let kernel = job.kernel.name.clone();
            let queue = gpu.queues.get(&(job.key.family, job.queue_index)).cloned();
            tracing::error!(%kernel, device, ?timeout, "a dispatch outlived the dispatch timeout; giving up on its device");
            abandon(job, queue);
            return Err(BackendError::TimedOut {
                kernel,
                after: timeout.unwrap_or_default(),
            });
        }
        Err(e) => return Err(gpu.note(vulkan_error(device, 0, e))),
    }
    // Finished: nothing of the slot is in use by the GPU any more.
    let Some(slot) = job.slot.take() else {
        return Err(BackendError::Vulkan("a dispatch was finished twice".into()));
    };
    // SAFETY: the fence has signalled and no submission that uses it is pending.
    unsafe { slot.fence.reset() }.map_err(|e| gpu.note(vk_error(device, 0, e)))?;
    let (kernel, valid_bits) = (&job.kernel, job.valid_bits);

    let kernel_ns = match &slot.queries {
        Some(queries) => Some(read_kernel_ns(gpu, queries, valid_bits)?),
        None => None,
    };
    let mut outputs = Vec::new();
    for (binding, desc) in slot.bindings.iter().zip(&kernel.bindings) {
        if !desc.access.writes() {
            continue;
        }
        let source = binding.readback.as_ref().unwrap_or(&binding.device);
        let guard = source
            .buffer
            .read()
            .map_err(|e| BackendError::Vulkan(format!("reading back a result: {e}")))?;
        outputs.push(guard[..binding.len as usize].to_vec());
    }
    let mut kept = false;
    if let Ok(mut reuse) = gpu.reuse.lock() {
        // D4: keep the recording for the shape's next run, or launch it plainly (take
        // the slot apart) when the shape is too rare to pay its recording back.
        match reuse.command_reuse(job.repeat) {
            CommandReuseDecision::RecordAndReplay { .. } => {
                reuse.put_slot(job.key.clone(), slot);
                kept = true;
            }
            CommandReuseDecision::PlainLaunches => reuse.retire_slot(slot),
        }
    }
    Ok(DispatchOutput {
        outputs,
        kernel_ns,
        recording_reused: Some(job.replayed || kept),
    })
}

/// Nanoseconds since `since`.
fn elapsed_ns(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Nanoseconds between the two stamps of `queries`.
fn read_kernel_ns(gpu: &Gpu, queries: &QueryPool, valid_bits: u32) -> Result<u64, BackendError> {
    let mut stamps = [0u64; 2];
    queries
        .get_results(0..2, &mut stamps, QueryResultFlags::WAIT)
        .map_err(|e| gpu.note(vk_error(gpu.info.index, 0, e)))?;
    Ok(ticks_to_ns(
        stamps[0],
        stamps[1],
        valid_bits,
        gpu.info.timestamp_period_ns,
    ))
}

/// The interval between two timestamps of `valid_bits` bits, in nanoseconds.
pub(super) fn ticks_to_ns(start: u64, end: u64, valid_bits: u32, period_ns: f32) -> u64 {
    let mask = if valid_bits >= 64 {
        u64::MAX
    } else {
        (1u64 << valid_bits) - 1
    };
    let ticks = (end & mask).wrapping_sub(start & mask) & mask;
    (ticks as f64 * f64::from(period_ns)).round() as u64
}

/// Writes a job's uploaded bindings into the slot's host-visible buffers.
fn write_inputs(gpu: &Gpu, slot: &Slot, job: &DispatchJob) -> Result<(), BackendError> {
    for (binding, arg) in slot.bindings.iter().zip(&job.buffers) {
        let BufferArg::Data(data) = arg else { continue };
        let target = binding.upload.as_ref().unwrap_or(&binding.device);
        let bound = padded_len(binding.len) as usize;
        let mut guard = target.buffer.write().map_err(|e| {
            BackendError::Vulkan(format!(
                "writing an input on device {}: {e}",
                gpu.info.index
            ))
        })?;
        guard[..data.len()].copy_from_slice(data);
        guard[data.len()..bound].fill(0);
    }
    Ok(())
}

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
fn record(gpu: &Gpu, kernel: &LoadedKernel, key: &SlotKey) -> Result<Slot, BackendError> {
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

    let recording = |e: Box<vulkano::ValidationError>| {
        BackendError::Vulkan(format!("recording `{}`: {e}", kernel.name))
    };
    let recording_since = Instant::now();
    let mut builder = AutoCommandBufferBuilder::primary(
        gpu.commands.clone(),
        key.family,
        CommandBufferUsage::MultipleSubmit,
    )
    .map_err(|e| gpu.note(vk_error(device, 0, e)))?;
    for (b, &(_, uploaded)) in bindings.iter().zip(&key.buffers) {
        let target = b.device.buffer.clone().slice(0..padded_len(b.len));
        match (&b.upload, uploaded) {
            (Some(upload), _) => {
                let source = upload.buffer.clone().slice(0..padded_len(b.len));
                builder
                    .copy_buffer(CopyBufferInfo::buffers(source, target))
                    .map_err(recording)?;
            }
            (None, false) => {
                builder
                    .fill_buffer(target.reinterpret::<[u32]>(), 0)
                    .map_err(recording)?;
            }
            (None, true) => {} // in place: written by the host before each submit
        }
    }
    if let Some(q) = &queries {
        // SAFETY: the two queries belong to this slot alone, which one dispatch owns at
        // a time, and are reset by this same command buffer before they are written.
        unsafe {
            builder
                .reset_query_pool(q.clone(), 0..2)
                .map_err(recording)?;
            builder
                .write_timestamp(q.clone(), 0, PipelineStage::BottomOfPipe)
                .map_err(recording)?;
        }
    }
    builder
        .bind_pipeline_compute(kernel.pipeline.clone())
        .map_err(recording)?
        .bind_descriptor_sets(PipelineBindPoint::Compute, layout.clone(), 0, set)
        .map_err(recording)?;
    for (i, word) in key.push_constants.chunks_exact(4).enumerate() {
        let word = u32::from_ne_bytes([word[0], word[1], word[2], word[3]]);
        builder
            .push_constants(layout.clone(), (i * 4) as u32, word)
            .map_err(recording)?;
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
            builder.dispatch(key.workgroups).map_err(recording)?;
        }
    }
    if let Some(q) = &queries {
        // SAFETY: query 1 of this slot's pool, reset above in this command buffer.
        unsafe {
            builder
                .write_timestamp(q.clone(), 1, PipelineStage::BottomOfPipe)
                .map_err(recording)?;
        }
    }
    for b in &bindings {
        if let Some(readback) = &b.readback {
            let bound = padded_len(b.len);
            builder
                .copy_buffer(CopyBufferInfo::buffers(
                    b.device.buffer.clone().slice(0..bound),
                    readback.buffer.clone().slice(0..bound),
                ))
                .map_err(recording)?;
        }
    }
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
        queries,
        fence: new_fence(gpu)?,
    })
}

impl Gpu {
    /// Passes `e` through, remembering a lost device so later calls fail fast.
    pub(super) fn note(&self, e: BackendError) -> BackendError {
        if matches!(e, BackendError::DeviceLost { .. }) {
            self.lost.set();
        }
        e
    }

    /// Fails fast when the device was lost earlier.
    pub(super) fn check_alive(&self) -> Result<(), BackendError> {
        if self.lost.is_set() {
            Err(BackendError::DeviceLost {
                device: self.info.index,
                detail: "lost earlier in this process".into(),
            })
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_masked_to_their_valid_bits_and_scaled() {
        assert_eq!(ticks_to_ns(100, 350, 64, 1.0), 250);
        assert_eq!(ticks_to_ns(100, 350, 64, 2.5), 625);
        // A 32-bit counter that wrapped, with garbage above the valid bits.
        let start = 0xabcd_0000_ffff_fff0;
        let end = 0x1234_0000_0000_0010;
        assert_eq!(ticks_to_ns(start, end, 32, 1.0), 0x20);
        assert_eq!(ticks_to_ns(start, end, 32, 1.5), 48);
    }

    #[test]
    fn bindings_are_bound_in_whole_words() {
        assert_eq!(padded_len(1), 4);
        assert_eq!(padded_len(4), 4);
        assert_eq!(padded_len(10), 12);
    }
}
