//! D3 acted on: a call of several prepared jobs on one queue submitted as one command
//! buffer in which each job's staged uploads run beside the kernels of the jobs before
//! it (double-buffered staging within one submission). It decides nothing — the engine
//! asked for it (`Backend::dispatch_overlapped`) after D3 said Overlap — and reads
//! nothing back: `dispatch::finish` does, for each job, once the group's fence has
//! signalled.
//!
//! Design note. Alone, each job replays its slot's recording: uploads → kernel →
//! read-backs. The barrier before a read-back (compute → transfer) orders every
//! transfer submitted later on the queue behind the kernel, so submitted back to back,
//! job i+1's upload copies wait for job i's kernel: the uploads are serialised. The
//! group recording is
//!
//! ```text
//! uploads 0 | kernel 0 | uploads 1 | kernel 1 | … | uploads n-1 | kernel n-1 | read-backs 0..n
//! ```
//!
//! vulkano's automatic synchronisation puts, before kernel i, a barrier from the copies
//! into job i's buffers to the compute stage (a transfer → compute dependency, which
//! waits for earlier transfers, not for kernel i-1), and hoists the first-use barriers
//! of job i+1's buffers to the same place: uploads i+1, recorded after kernel i, are
//! ordered behind kernel i-1 but not behind kernel i, so they run while kernel i runs.
//! Every read-back follows a compute → transfer barrier after the last kernel. The
//! jobs' buffers are their slots' own (a slot belongs to one job at a time), so no
//! upload writes a buffer an earlier kernel of the group binds; where one did, the same
//! automatic synchronisation would order that copy behind the kernel, so the recording
//! is correct whatever it is handed. The answers are those of the jobs run one by one
//! (tests/vulkan_backend.rs compares them).
//!
//! Not done: a transfer-only queue family. The uploads share the compute queue and
//! overlap through the missing barrier only; moving them to a transfer queue would
//! take a second submission per group with a semaphore between the families and
//! queue-family ownership transfers of every buffer (or concurrent sharing), which
//! this backend does not do.

use std::sync::Arc;

use vulkano::command_buffer::{
    AutoCommandBufferBuilder, CommandBufferSubmitInfo, CommandBufferUsage,
    PrimaryCommandBufferAbstract, SubmitInfo,
};
use vulkano::sync::fence::{Fence, FenceCreateInfo};

use super::dispatch::InFlight;
use super::errors::vk_error;
use super::open::Gpu;
use super::record::{record_kernel, record_readbacks, record_uploads, Builder, GroupRun};
use crate::backend::BackendError;

/// Records `jobs` (prepared, not submitted, all on one queue of `gpu`) as one command
/// buffer with overlapped uploads and submits it. On success every job is marked
/// submitted in the group and each job after the first whose slot stages its uploads
/// says `upload_overlapped: Some(true)`. On `Err` nothing was submitted.
pub(super) fn submit_group(gpu: &Gpu, jobs: &mut [&mut InFlight<'_>]) -> Result<(), BackendError> {
    let device = gpu.info.index;
    let Some(&(family, index)) = jobs.first().map(|j| j.queue()).as_ref() else {
        return Ok(());
    };
    let queue = gpu
        .queues
        .get(&(family, index))
        .ok_or_else(|| BackendError::Unknown {
            what: format!("queue family {family} index {index}"),
        })?;
    let mut builder: Builder = AutoCommandBufferBuilder::primary(
        gpu.commands.clone(),
        family,
        CommandBufferUsage::OneTimeSubmit,
    )
    .map_err(|e| gpu.note(vk_error(device, 0, e)))?;
    for job in jobs.iter() {
        let parts = job.parts()?;
        record_uploads(&mut builder, parts)?;
        record_kernel(&mut builder, parts)?;
    }
    for job in jobs.iter() {
        record_readbacks(&mut builder, job.parts()?)?;
    }
    let command = builder
        .build()
        .map_err(|e| gpu.note(vk_error(device, 0, e)))?;
    let fence = Fence::new(gpu.device.clone(), FenceCreateInfo::default())
        .map(Arc::new)
        .map_err(|e| gpu.note(vk_error(device, 0, e)))?;
    let submit = SubmitInfo {
        command_buffers: vec![CommandBufferSubmitInfo::new(
            command.clone() as Arc<dyn PrimaryCommandBufferAbstract>
        )],
        ..Default::default()
    };
    // SAFETY: a one-time command buffer recorded just now for this queue's family. It
    // resets its slots' queries before writing them and touches only the jobs' slots'
    // buffers, each slot owned by its job alone, which the host does not touch again
    // until the fence has signalled. The fence is new, and the group that holds it
    // (and the command buffer) lives in every job until the job has waited for it
    // (`InFlight` waits on drop).
    queue
        .with(|mut q| unsafe { q.submit(std::slice::from_ref(&submit), Some(&fence)) })
        .map_err(|e| gpu.note(vk_error(device, 0, e)))?;
    let group = Arc::new(GroupRun {
        _command: command,
        fence,
    });
    let mut overlapped = 0;
    for (i, job) in jobs.iter_mut().enumerate() {
        if i > 0 && job.staged() {
            job.upload_overlapped = Some(true);
            overlapped += 1;
        }
        job.submitted_in(Arc::clone(&group));
    }
    if let Ok(mut r) = gpu.reuse.lock() {
        r.stats.overlap_groups += 1;
        r.stats.uploads_overlapped += overlapped;
    }
    Ok(())
}
