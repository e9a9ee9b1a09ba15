//! Running dispatch jobs: validate each job, take (or record) a slot for its shape,
//! write its inputs, submit it — all jobs are submitted before any is waited for — then
//! wait on each fence, read the timestamps and the written bindings back. The
//! recording of one job's commands (uploads, kernel, read-backs) is shared with the
//! group recording of `overlap.rs`.
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

use vulkano::command_buffer::{CommandBufferSubmitInfo, PrimaryCommandBufferAbstract, SubmitInfo};
use vulkano::query::{QueryPool, QueryResultFlags};
use vulkano::sync::fence::Fence;

use super::errors::{vk_error, vulkan_error};
use super::kernel::LoadedKernel;
use super::open::Gpu;
use super::record::{elapsed_ns, record, GroupRun, JobParts};
use super::reuse::{Slot, SlotKey};
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
    /// Submitted (alone, or in a group's command buffer): dropping it waits for its
    /// fence. A job prepared and never submitted has nothing to wait for.
    submitted: bool,
    /// The group submission that ran the job, instead of its slot's own recording
    /// (`overlap.rs`): its command buffer and fence.
    pub(super) group: Option<Arc<GroupRun>>,
    /// D3: what became of the job's staged uploads (`DispatchOutput::upload_overlapped`).
    pub(super) upload_overlapped: Option<bool>,
}

impl<'a> InFlight<'a> {
    /// The fence that signals when the job has finished: its group's, or its slot's.
    fn fence(&self) -> Option<&Fence> {
        match (&self.group, &self.slot) {
            (Some(group), _) => Some(&group.fence),
            (None, Some(slot)) => Some(&slot.fence),
            (None, None) => None,
        }
    }

    /// The job's slot copies its inputs from staging buffers (it is not in place).
    pub(super) fn staged(&self) -> bool {
        self.slot
            .as_ref()
            .is_some_and(|s| s.bindings.iter().any(|b| b.upload.is_some()))
    }

    /// The device the job runs on.
    pub(super) fn gpu(&self) -> &'a Gpu {
        self.gpu
    }

    /// The queue family the job's slot was recorded for and the queue's index in it.
    pub(super) fn queue(&self) -> (u32, u32) {
        (self.key.family, self.queue_index)
    }

    /// What a group recording needs of the job: its kernel, its shape and its slot's
    /// bindings, descriptor set and queries.
    pub(super) fn parts(&self) -> Result<JobParts<'_>, BackendError> {
        let slot = self
            .slot
            .as_ref()
            .ok_or_else(|| BackendError::Vulkan("a grouped dispatch had no slot".into()))?;
        Ok((
            &self.kernel,
            &self.key,
            &slot.bindings[..],
            &slot.set,
            slot.queries.as_ref(),
        ))
    }

    /// Marks the job submitted inside `group`'s command buffer.
    pub(super) fn submitted_in(&mut self, group: Arc<GroupRun>) {
        self.group = Some(group);
        self.submitted = true;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.submitted {
            // Only on an unwinding or failed path; the error was (or will be) reported.
            if let Some(fence) = self.fence() {
                let _ = fence.wait(None);
            }
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

/// Phase one up to the submission: validate, take or record the slot and write the
/// inputs. `timed`: the slot writes two timestamps around the kernel (where the queue
/// has them) and `finish` reads them; an untimed job answers `kernel_ns: None`.
/// `repeats` (at least 1): how many times the kernel runs back to back between the
/// timestamps. The job is then submitted by [`submit`], or inside a group's command
/// buffer (`overlap.rs`).
pub(super) fn prepare<'a>(
    gpu: &'a Gpu,
    kernel: Arc<LoadedKernel>,
    job: &DispatchJob,
    timed: bool,
    repeats: u32,
) -> Result<Started<'a>, BackendError> {
    let valid_bits = validate(gpu, &kernel, job)?;
    let timed = timed && valid_bits > 0;
    if !gpu
        .queues
        .contains_key(&(job.queue.family, job.queue.index))
    {
        return Err(BackendError::Unknown {
            what: format!("queue {} (not opened by this backend)", job.queue),
        });
    }
    if job.workgroups.contains(&0) {
        return Ok(Started::Done(DispatchOutput {
            outputs: unchanged_outputs(&kernel, job),
            kernel_ns: Some(0),
            recording_reused: None,
            upload_overlapped: None,
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
    Ok(Started::Running(Box::new(InFlight {
        gpu,
        kernel,
        key,
        slot: Some(slot),
        valid_bits,
        queue_index: job.queue.index,
        repeat,
        replayed,
        submitted: false,
        group: None,
        upload_overlapped: None,
    })))
}

/// Submits a prepared job's slot on its queue, alone.
pub(super) fn submit(job: &mut InFlight<'_>) -> Result<(), BackendError> {
    let gpu = job.gpu;
    let queue = gpu
        .queues
        .get(&job.queue())
        .ok_or_else(|| BackendError::Unknown {
            what: format!("queue {:?} (not opened by this backend)", job.queue()),
        })?;
    let Some(slot) = job.slot.as_ref() else {
        return Err(BackendError::Vulkan(
            "a dispatch was submitted twice".into(),
        ));
    };
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
    job.submitted = true;
    if let Ok(mut r) = gpu.reuse.lock() {
        r.note_submit(submit_ns);
    }
    Ok(())
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
    let Some(fence) = job.fence() else {
        return Err(BackendError::Vulkan("a dispatch was finished twice".into()));
    };
    match wait_fence(fence, timeout) {
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
    job.submitted = false;
    if job.group.is_none() {
        // SAFETY: the fence has signalled and no submission that uses it is pending.
        unsafe { slot.fence.reset() }.map_err(|e| gpu.note(vk_error(device, 0, e)))?;
    }
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
        upload_overlapped: job.upload_overlapped,
    })
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
