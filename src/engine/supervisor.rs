//! Worker actors and their supervisor: one named OS thread per queue, pulling batches
//! from its device's mailbox until it takes a stop message.
//!
//! The supervisor runs the worker loop under `catch_unwind`. The batch a worker is
//! running sits in a slot the supervisor owns, so when the worker panics (or a backend
//! call fails) the supervisor still holds it: it restarts the worker, retries the batch
//! once on another queue of the device, answers it either way, and publishes
//! `WorkerRestarted`. A lost device does not stop its workers: they keep draining the
//! mailbox, so no producer ever blocks on a mailbox nobody reads, and move each batch
//! (and the one in flight when the device was lost) to a queue of another live device
//! that has the kernel loaded, running it there themselves; only when no such device is
//! left is a batch answered with `DeviceLost`. This module decides nothing about what to run.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::backend::QueueId;

use super::error::EngineError;
use super::events::Event;
use super::mailbox::Mailbox;
use super::race::{self, Fault};
use super::window::{Share, Window};
use super::{Answer, Core, Job, Msg};

/// Starts the supervised worker of `queue`.
pub(crate) fn spawn(core: Arc<Core>, queue: QueueId) -> Result<JoinHandle<()>, EngineError> {
    let name = format!(
        "photofinish-d{}f{}q{}",
        queue.device, queue.family, queue.index
    );
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || supervise(&core, queue))
        .map_err(|e| EngineError::Spawn {
            thread: name,
            reason: e.to_string(),
        })
}

fn supervise(core: &Core, queue: QueueId) {
    let mailbox = &core.devices[queue.device].mailbox;
    let mut in_flight: Vec<Job> = Vec::new();
    // The window the worker is claiming batches from, with those it claimed and has
    // not run, kept across a restart so that they and the window's remaining batches
    // are still run when every other copy is gone.
    let mut window: Option<Share<Arc<Window<Job>>>> = None;
    loop {
        let run = catch_unwind(AssertUnwindSafe(|| {
            worker_loop(core, queue, mailbox, &mut in_flight, &mut window)
        }));
        match run {
            Ok(()) => return,
            Err(panic) => {
                let reason = format!("worker panicked: {}", panic_message(panic.as_ref()));
                tracing::error!(%queue, %reason, "restarting worker");
                restart(core, queue, std::mem::take(&mut in_flight), reason);
            }
        }
    }
}

/// The actor: runs batches until a stop message (or a closed mailbox).
///
/// A batch comes from a `Run` message or is claimed from a window (window.rs): a
/// worker that takes a window claims from it until it is drained before it takes
/// another message, so a window's batches are all run before the stop messages queued
/// behind its copies are all taken. Under a backlog it takes several batches at once
/// (as many as `race::group_size` allows: D1 fired and no idle worker of the device
/// would take them) and runs them as one group; a stop message met while taking them
/// ends the loop after the group.
fn worker_loop(
    core: &Core,
    queue: QueueId,
    mailbox: &Mailbox<Msg>,
    in_flight: &mut Vec<Job>,
    window: &mut Option<Share<Arc<Window<Job>>>>,
) {
    let mut stopping = false;
    while !stopping {
        let first = match claim(window) {
            Some(job) => job,
            // Searches briefly before sleeping, if few of the device's workers search
            // (see doorbell.rs): a worker that just finished a batch takes the next one
            // without a wake-up.
            None => match mailbox.recv() {
                Msg::Run(job) => job,
                Msg::Window(w) => {
                    *window = Some(Share::new(w));
                    continue;
                }
                Msg::Stop => return,
            },
        };
        let queued = window.as_ref().map_or_else(|| mailbox.len(), |w| w.left());
        let want = race::group_size(core, queue, &first, queued);
        in_flight.push(first);
        while in_flight.len() < want {
            if window.is_some() {
                match claim(window) {
                    Some(job) => in_flight.push(job),
                    None => break,
                }
                continue;
            }
            match mailbox.try_recv() {
                Some(Msg::Run(job)) => in_flight.push(job),
                Some(Msg::Window(w)) => *window = Some(Share::new(w)),
                Some(Msg::Stop) => {
                    stopping = true;
                    break;
                }
                None => break,
            }
        }
        if in_flight.len() == 1 {
            // One batch (no backlog): no group and no list of results to allocate.
            let result = {
                let _busy = core.occupy(queue);
                race::run(core, queue, &in_flight[0])
            };
            if let Some(job) = in_flight.pop() {
                respond(core, queue, job, result);
            }
            continue;
        }
        let results = {
            let _busy = core.occupy(queue);
            race::run_group(core, queue, in_flight)
        };
        for (job, result) in in_flight.drain(..).zip(results) {
            respond(core, queue, job, result);
        }
    }
    // A stop message is taken only with no window in hand (a window is claimed dry
    // before the next message is taken), so nothing is left behind here.
    debug_assert!(window.is_none());
}

/// Answers `job` with its run's result, or settles its fault.
fn respond(core: &Core, queue: QueueId, job: Job, result: Result<Answer, Fault>) {
    match result {
        Ok(answer) => job.answer(Ok(answer)),
        Err(fault) => settle(core, queue, job, fault, true),
    }
}

/// Takes the next batch of the window in hand (claiming a chunk when none claimed is
/// left); lets go of a drained window.
fn claim(window: &mut Option<Share<Arc<Window<Job>>>>) -> Option<Job> {
    let job = window.as_mut()?.take();
    if job.is_none() {
        *window = None;
    }
    job
}

/// Answers a job whose run on `queue` failed: with the error, or (once) by a retry.
fn settle(core: &Core, queue: QueueId, job: Job, fault: Fault, may_retry: bool) {
    match fault {
        Fault::Input(e) => job.answer(Err(e)),
        Fault::DeviceLost { device, detail } => {
            core.mark_lost(device, detail);
            relocate(core, device, job);
        }
        Fault::Backend(reason) if may_retry => {
            tracing::error!(%queue, %reason, "backend call failed; restarting worker");
            restart(core, queue, vec![job], reason);
        }
        Fault::Backend(reason) => job.fail(reason),
    }
}

/// Restarts the worker of `queue`: retries each of its in-flight jobs once on another
/// queue of the device (answering each whatever happens) and publishes
/// `WorkerRestarted`.
fn restart(core: &Core, queue: QueueId, jobs: Vec<Job>, reason: String) {
    // Published before the retry answers the batch, so a caller that sees its answer
    // can already see the restart.
    core.bus.publish(Event::WorkerRestarted {
        queue,
        reason,
        retried: !jobs.is_empty(),
    });
    for job in jobs {
        let other = core.retry_queue(queue);
        let run = catch_unwind(AssertUnwindSafe(|| {
            let _busy = core.occupy(other);
            race::run(core, other, &job)
        }));
        match run {
            Ok(Ok(answer)) => job.answer(Ok(answer)),
            Ok(Err(fault)) => settle(core, other, job, fault, false),
            Err(panic) => {
                let reason = format!("worker panicked: {}", panic_message(panic.as_ref()));
                job.fail(reason);
            }
        }
    }
}

/// Moves a batch off lost `device`: runs it on a queue of another live device that has
/// the kernel loaded (the least busy queue of the least loaded such device), from this
/// thread, answering it whatever happens; `DeviceLost` when no such device is left.
/// Each hop marks one more device lost, so this ends.
fn relocate(core: &Core, device: usize, job: Job) {
    let Some(target) = core.relocation_queue(&job.kernel) else {
        job.answer(Err(EngineError::DeviceLost { device }));
        return;
    };
    tracing::warn!(kernel = %job.kernel.name, from = device, to = %target, "moving a batch off a lost device");
    let run = catch_unwind(AssertUnwindSafe(|| {
        let _busy = core.occupy(target);
        race::run(core, target, &job)
    }));
    match run {
        Ok(Ok(answer)) => job.answer(Ok(answer)),
        Ok(Err(fault)) => settle(core, target, job, fault, false),
        Err(panic) => {
            let reason = format!("worker panicked: {}", panic_message(panic.as_ref()));
            job.fail(reason);
        }
    }
}

/// The text of a panic's payload.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_string()
    }
}
