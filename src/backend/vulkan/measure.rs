//! Measurement aids of the Vulkan backend, for the benches and `photofinish devices`:
//! the device's copy bandwidth, a kernel dispatched back to back, the memory types a
//! staged buffer lands in. The engine never calls them.

use vulkano::command_buffer::{
    AutoCommandBufferBuilder, CommandBufferUsage, CopyBufferInfo, PrimaryCommandBufferAbstract,
};
use vulkano::sync::{GpuFuture, PipelineStage};

use super::dispatch::{self, Started};
use super::errors::{exec_error, vk_error};
use super::record;
use super::reuse::Role;
use super::VulkanBackend;
use crate::backend::{BackendError, BackendKind, DispatchJob, DispatchOutput, QueueId};

/// The result of [`VulkanBackend::measure_copy_bandwidth`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct CopyBandwidth {
    /// Bytes copied.
    pub bytes: u64,
    /// GPU time of the copy from timestamp queries, in nanoseconds.
    pub gpu_ns: u64,
    /// `bytes / gpu_ns`: gigabytes (10⁹ bytes) per second.
    pub gb_per_s: f64,
}

impl VulkanBackend {
    /// Times a `vkCmdCopyBuffer` of `bytes` bytes between two device-local buffers on
    /// `queue` with timestamp queries (one untimed warm-up copy first).
    pub fn measure_copy_bandwidth(
        &self,
        queue: QueueId,
        bytes: u64,
    ) -> Result<CopyBandwidth, BackendError> {
        self.measure_copy_bandwidth_repeated(queue, bytes, 1)
    }

    /// As [`measure_copy_bandwidth`](Self::measure_copy_bandwidth), with `repeats`
    /// copies (at least 1) back to back between the timestamps: `gpu_ns` is their
    /// total divided by `repeats`. A single copy of a fast device's memory lasts well
    /// under a millisecond, after the host has left the GPU idle; back-to-back copies
    /// measure it busy (the kernels bench's limit).
    pub fn measure_copy_bandwidth_repeated(
        &self,
        queue: QueueId,
        bytes: u64,
        repeats: u32,
    ) -> Result<CopyBandwidth, BackendError> {
        let repeats = repeats.max(1);
        let gpu = self.gpu(queue.device)?;
        let vk_queue = gpu
            .queues
            .get(&(queue.family, queue.index))
            .ok_or_else(|| BackendError::Unknown {
                what: format!("queue {queue}"),
            })?;
        let unsupported = |reason: String| BackendError::Unsupported {
            kernel: "copy-bandwidth".into(),
            backend: BackendKind::Vulkan,
            reason,
        };
        if bytes == 0 || bytes % 4 != 0 {
            return Err(unsupported(format!(
                "{bytes} bytes: the copy needs a non-zero multiple of 4 bytes"
            )));
        }
        let valid_bits = gpu
            .info
            .queue_families
            .get(queue.family as usize)
            .map(|f| f.timestamp_valid_bits)
            .unwrap_or(0);
        if valid_bits == 0 {
            return Err(unsupported(format!(
                "queue family {} has no timestamps",
                queue.family
            )));
        }
        let role = if gpu.unified_memory {
            Role::Unified
        } else {
            Role::Device
        };
        let src = record::buffer(gpu, role, bytes)?.buffer.slice(0..bytes);
        let dst = record::buffer(gpu, role, bytes)?.buffer.slice(0..bytes);
        let queries = record::query_pool(gpu)?;
        let device = gpu.info.index;
        let recording = |e: Box<vulkano::ValidationError>| {
            BackendError::Vulkan(format!("recording a copy: {e}"))
        };
        let mut builder = AutoCommandBufferBuilder::primary(
            gpu.commands.clone(),
            queue.family,
            CommandBufferUsage::OneTimeSubmit,
        )
        .map_err(|e| gpu.note(vk_error(device, 0, e)))?;
        builder
            .copy_buffer(CopyBufferInfo::buffers(src.clone(), dst.clone()))
            .map_err(recording)?;
        // SAFETY: a fresh or recycled pool used by this command buffer alone, reset
        // before its queries are written.
        unsafe {
            builder
                .reset_query_pool(queries.clone(), 0..2)
                .map_err(recording)?
                .write_timestamp(queries.clone(), 0, PipelineStage::BottomOfPipe)
                .map_err(recording)?;
        }
        for _ in 0..repeats {
            builder
                .copy_buffer(CopyBufferInfo::buffers(src.clone(), dst.clone()))
                .map_err(recording)?;
        }
        // SAFETY: query 1 of the pool reset above.
        unsafe {
            builder
                .write_timestamp(queries.clone(), 1, PipelineStage::BottomOfPipe)
                .map_err(recording)?;
        }
        let command = builder
            .build()
            .map_err(|e| gpu.note(vk_error(device, 0, e)))?;
        command
            .execute(vk_queue.clone())
            .map_err(|e| exec_error(device, e))?
            .then_signal_fence_and_flush()
            .map_err(|e| gpu.note(vk_error(device, 0, e)))?
            .wait(None)
            .map_err(|e| gpu.note(vk_error(device, 0, e)))?;
        let mut stamps = [0u64; 2];
        queries
            .get_results(0..2, &mut stamps, vulkano::query::QueryResultFlags::WAIT)
            .map_err(|e| gpu.note(vk_error(device, 0, e)))?;
        let gpu_ns = dispatch::ticks_to_ns(
            stamps[0],
            stamps[1],
            valid_bits,
            gpu.info.timestamp_period_ns,
        ) / u64::from(repeats);
        Ok(CopyBandwidth {
            bytes,
            gpu_ns,
            gb_per_s: if gpu_ns == 0 {
                0.0
            } else {
                bytes as f64 / gpu_ns as f64
            },
        })
    }

    /// Runs `job` once, timed, with its kernel dispatched `repeats` times (at least 1)
    /// back to back between the two timestamps, in one command buffer: `kernel_ns` is
    /// the total of all of them. The outputs are those after the last repeat (a kernel
    /// that accumulates into its output has accumulated `repeats` times). A measurement
    /// aid (the kernels bench): one dispatch per submit, as the engine runs a batch,
    /// times a sub-millisecond kernel on a GPU the host has left idle.
    pub fn dispatch_repeated(
        &self,
        job: &DispatchJob,
        repeats: u32,
    ) -> Result<DispatchOutput, BackendError> {
        match self.start(job, true, repeats)? {
            Started::Done(output) => Ok(output),
            Started::Running(job) => dispatch::finish(*job, self.timeout()),
        }
    }

    /// The memory types and heaps of `device`, one a line, and which type a device
    /// buffer of `bytes` bytes (as a large staged dispatch binds) is allocated from.
    pub fn memory_report(&self, device: usize, bytes: u64) -> Result<String, BackendError> {
        use std::fmt::Write as _;
        let gpu = self.gpu(device)?;
        let props = gpu.device.physical_device().memory_properties();
        let mut out = String::new();
        for (i, h) in props.memory_heaps.iter().enumerate() {
            let _ = writeln!(out, "heap {i}: {} MiB {:?}", h.size >> 20, h.flags);
        }
        for (i, t) in props.memory_types.iter().enumerate() {
            let _ = writeln!(
                out,
                "type {i}: heap {} {:?}",
                t.heap_index, t.property_flags
            );
        }
        let role = if gpu.unified_memory {
            Role::Unified
        } else {
            Role::Device
        };
        let pooled = record::buffer(gpu, role, bytes)?;
        let chosen = match pooled.buffer.buffer().memory() {
            vulkano::buffer::BufferMemory::Normal(m) => {
                let t = m.device_memory().memory_type_index();
                format!(
                    "type {t} ({:?}), allocation {} MiB, dedicated {}",
                    props.memory_types[t as usize].property_flags,
                    m.device_memory().allocation_size() >> 20,
                    m.device_memory().is_dedicated()
                )
            }
            other => format!("{other:?}"),
        };
        let _ = writeln!(out, "a {} MiB {role:?} buffer: {chosen}", bytes >> 20);
        Ok(out)
    }
}
