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
//!
//! With a dispatch timeout (`EngineBuilder::dispatch_timeout`) a watchdog thread,
//! `photofinish-watchdog`, watches every worker's backend calls. A kernel cannot be
//! stopped (CPU kernel code runs on the worker's own thread), so a worker whose call
//! outlives the timeout is given up on: the watchdog answers its batches
//! `DispatchTimedOut` through their responders, which the worker parks in its [`Watch`]
//! while it runs them, retires the variant that hung, starts a new thread for the
//! queue, which takes the queue's work and its stop message, and detaches the stuck
//! one (never joined; if its call ever returns it sees that it was given up on and
//! ends without touching its batches). `Engine::shutdown` joins whichever thread
//! serves each queue at the time, so it returns within about the timeout even while a
//! kernel loops.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::backend::QueueId;

use super::batch::Answer;
use super::choose::group_size;
use super::core::Core;
use super::dispatch::Fault;
use super::error::EngineError;
use super::events::Event;
use super::job::{Job, Msg};
use super::judge::{judge_pending, retire_hung};
use super::mailbox::Mailbox;
use super::panics::panic_message;
use super::policy_action::GroupRefusal;
use super::race;
use super::ticket::Responder;
use super::watch::{note_window, park, unpark, Watch, CLAIMED, WATCH};
use super::window::{Share, Window};

/// One queue's worker as the engine and the watchdog see it: the thread serving the
/// queue now (a new one after the watchdog gave up on one) and its watch.
#[derive(Debug)]
pub(crate) struct QueueWorker {
    queue: QueueId,
    current: Mutex<Current>,
}

#[derive(Debug)]
struct Current {
    /// `None` once joined.
    handle: Option<JoinHandle<()>>,
    watch: Arc<Watch>,
}

/// The engine's handle on one queue's worker (see [`QueueWorker`]).
#[derive(Debug)]
pub(crate) struct WorkerHandle {
    worker: Arc<QueueWorker>,
    /// A watchdog may replace the thread: join whichever serves the queue.
    watched: bool,
}

impl WorkerHandle {
    /// Waits for the queue's worker to end: the thread serving the queue when it ends
    /// (with a watchdog, one that was given up on is never waited for: its
    /// replacement is).
    pub(crate) fn join(self) -> std::thread::Result<()> {
        loop {
            let mut current = lock(&self.worker.current);
            let done = match &current.handle {
                None => return Ok(()),
                Some(handle) => !self.watched || handle.is_finished(),
            };
            if done {
                let handle = current.handle.take();
                drop(current);
                return handle.map_or(Ok(()), JoinHandle::join);
            }
            drop(current);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The shared worker, for the watchdog.
    pub(crate) fn worker(&self) -> Arc<QueueWorker> {
        Arc::clone(&self.worker)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts the supervised worker of `queue`.
pub(crate) fn spawn(core: Arc<Core>, queue: QueueId) -> Result<WorkerHandle, EngineError> {
    let watched = core.config.dispatch_timeout.is_some();
    let watch = Arc::new(Watch::new());
    let handle = start_thread(core, queue, Arc::clone(&watch), None)?;
    Ok(WorkerHandle {
        worker: Arc::new(QueueWorker {
            queue,
            current: Mutex::new(Current {
                handle: Some(handle),
                watch,
            }),
        }),
        watched,
    })
}

/// Starts a thread serving `queue`, watched through `watch`; it first runs every job
/// left in `leftover`, the window of a thread given up on.
fn start_thread(
    core: Arc<Core>,
    queue: QueueId,
    watch: Arc<Watch>,
    leftover: Option<Arc<Window<Job>>>,
) -> Result<JoinHandle<()>, EngineError> {
    let name = format!(
        "photofinish-d{}f{}q{}",
        queue.device, queue.family, queue.index
    );
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            if core.config.dispatch_timeout.is_some() {
                WATCH.with_borrow_mut(|w| *w = Some(watch));
            }
            if let Some(window) = leftover {
                take_over(&core, queue, &window);
            }
            supervise(&core, queue);
        })
        .map_err(|e| EngineError::Spawn {
            thread: name,
            reason: e.to_string(),
        })
}

/// Starts the watchdog thread of an engine whose workers are `workers`, with dispatch
/// timeout `timeout`. It ends by itself once every worker has ended and been joined
/// (after shutdown), or when the engine is gone.
pub(crate) fn spawn_watchdog(
    core: &Arc<Core>,
    workers: Vec<Arc<QueueWorker>>,
    timeout: Duration,
) -> Result<(), EngineError> {
    let core = Arc::downgrade(core);
    let name = "photofinish-watchdog".to_string();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || watchdog(&core, &workers, timeout))
        .map(drop)
        .map_err(|e| EngineError::Spawn {
            thread: name,
            reason: e.to_string(),
        })
}

/// The watchdog's loop: every tick (an eighth of the timeout, 1–250 ms) it reads each
/// worker's running call; a call it has seen running for the whole timeout is given up
/// on ([`give_up`]). A call is thus given up on between the timeout and the timeout
/// plus two ticks after it began, never before.
fn watchdog(core: &Weak<Core>, workers: &[Arc<QueueWorker>], timeout: Duration) {
    let tick = (timeout / 8).clamp(Duration::from_millis(1), Duration::from_millis(250));
    let mut seen: Vec<Option<(u64, Instant)>> = vec![None; workers.len()];
    loop {
        std::thread::sleep(tick);
        let Some(core) = core.upgrade() else {
            return;
        };
        let mut live = false;
        for (worker, seen) in workers.iter().zip(seen.iter_mut()) {
            let watch = {
                let current = lock(&worker.current);
                match &current.handle {
                    Some(handle) if !handle.is_finished() => Arc::clone(&current.watch),
                    _ => {
                        *seen = None;
                        continue;
                    }
                }
            };
            live = true;
            let call = watch.call.load(Ordering::Acquire);
            if call == 0 || call == CLAIMED {
                *seen = None;
                continue;
            }
            match *seen {
                Some((same, since)) if same == call => {
                    if since.elapsed() >= timeout {
                        give_up(&core, worker, &watch, call, timeout);
                        *seen = None;
                    }
                }
                _ => *seen = Some((call, Instant::now())),
            }
        }
        if !live {
            return;
        }
    }
}

/// Gives up on `worker`'s thread, stuck in backend call `call` for `timeout`: claims
/// the call (unless it just ended), retires the variant that hung, answers the batches
/// it parked `DispatchTimedOut`, publishes `WorkerRestarted` and starts a new thread
/// for the queue; the stuck one is detached.
fn give_up(core: &Arc<Core>, worker: &QueueWorker, watch: &Watch, call: u64, timeout: Duration) {
    if watch
        .call
        .compare_exchange(call, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return;
    }
    let queue = worker.queue;
    let what = watch.what.load(Ordering::Acquire);
    let kernel = core.registry.get(core.registry.id((what >> 32) as u32));
    let variant = (what & 0xffff_ffff) as usize;
    let error = match &kernel {
        // Retired before the batches are answered, so a caller that sees its error
        // sees the variant retired.
        Some(kernel) => retire_hung(core, kernel, variant, queue.device, timeout),
        None => EngineError::DispatchTimedOut {
            kernel: format!("#{}", what >> 32),
            variant: format!("#{variant}"),
            after: timeout,
        },
    };
    let reason = format!("worker given up on: {error}");
    tracing::error!(%queue, %reason, "starting a new worker for the queue");
    core.bus.publish(Event::WorkerRestarted {
        queue,
        reason,
        retried: false,
    });
    let mut responders = vec![watch.parked.swap(Responder::vacant())];
    responders.append(&mut lock(&watch.parked_group));
    for responder in responders {
        if !responder.is_vacant() {
            responder.answer(Err(error.clone()));
        }
    }
    let leftover = lock(&watch.window).take();
    let fresh = Arc::new(Watch::new());
    let started = start_thread(Arc::clone(core), queue, Arc::clone(&fresh), leftover);
    let mut current = lock(&worker.current);
    match started {
        Ok(handle) => {
            current.watch = fresh;
            // The stuck thread's handle is dropped: detached, never joined.
            current.handle = Some(handle);
        }
        Err(e) => {
            // No thread for the queue: the device's other workers drain its mailbox
            // (one stop message stays unread, harmlessly).
            tracing::error!(%queue, error = %e, "could not start a new worker for the queue");
            current.handle = None;
        }
    }
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
            Err(_) if !unpark(&mut in_flight) => return,
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
/// (as many as `choose::group_size` allows: D1 fired and no idle worker of the device
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
                    note_window(Some(&w));
                    *window = Some(Share::new(w));
                    continue;
                }
                Msg::Stop => return,
            },
        };
        let queued = window.as_ref().map_or_else(|| mailbox.len(), |w| w.left());
        let (want, alone) = match group_size(core, queue, &first, queued) {
            Ok(n) => (n, GroupRefusal::NoBacklog),
            Err(why) => (1, why),
        };
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
                Some(Msg::Window(w)) => {
                    note_window(Some(&w));
                    *window = Some(Share::new(w));
                }
                Some(Msg::Stop) => {
                    stopping = true;
                    break;
                }
                None => break,
            }
        }
        park(in_flight);
        if in_flight.len() == 1 {
            // One batch (no backlog): no group and no list of results to allocate.
            let result = {
                let _busy = core.occupy(queue);
                race::run(core, queue, &in_flight[0], alone)
            };
            if !unpark(in_flight) {
                // Given up on by the watchdog, which answered the batch.
                in_flight.clear();
                return;
            }
            if let Some(job) = in_flight.pop() {
                respond(core, queue, job, result);
            }
            judge_pending(core);
            continue;
        }
        let results = {
            let _busy = core.occupy(queue);
            race::run_group(core, queue, in_flight)
        };
        if !unpark(in_flight) {
            in_flight.clear();
            return;
        }
        for (job, result) in in_flight.drain(..).zip(results) {
            respond(core, queue, job, result);
        }
        judge_pending(core);
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
        note_window(None);
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
    for mut job in jobs {
        let other = core.retry_queue(queue);
        let Some(run) = run_parked(core, other, &mut job) else {
            return;
        };
        match run {
            Ok(Ok(answer)) => job.answer(Ok(answer)),
            Ok(Err(fault)) => settle(core, other, job, fault, false),
            Err(panic) => {
                let reason = format!("worker panicked: {}", panic_message(panic.as_ref()));
                job.fail(reason);
            }
        }
        judge_pending(core);
    }
}

/// Runs every job left in `window`, whose claimer was given up on (claimed and not run
/// by it, or not claimed yet), one at a time, answering each.
fn take_over(core: &Core, queue: QueueId, window: &Window<Job>) {
    while let Some(mut job) = window.take_any() {
        let Some(run) = run_parked(core, queue, &mut job) else {
            return;
        };
        match run {
            Ok(result) => respond(core, queue, job, result),
            Err(panic) => {
                let reason = format!("worker panicked: {}", panic_message(panic.as_ref()));
                job.fail(reason);
            }
        }
        judge_pending(core);
    }
}

/// Runs `job` on `queue` from this thread under `catch_unwind`, its responder parked
/// for the watchdog; `None` when the watchdog gave up on this thread meanwhile (it
/// answered the job, which is left as it is).
fn run_parked(
    core: &Core,
    queue: QueueId,
    job: &mut Job,
) -> Option<std::thread::Result<Result<Answer, Fault>>> {
    park(std::slice::from_mut(job));
    let run = catch_unwind(AssertUnwindSafe(|| {
        let _busy = core.occupy(queue);
        race::run(core, queue, job, GroupRefusal::NoBacklog)
    }));
    unpark(std::slice::from_mut(job)).then_some(run)
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
    let mut job = job;
    let Some(run) = run_parked(core, target, &mut job) else {
        return;
    };
    match run {
        Ok(Ok(answer)) => job.answer(Ok(answer)),
        Ok(Err(fault)) => settle(core, target, job, fault, false),
        Err(panic) => {
            let reason = format!("worker panicked: {}", panic_message(panic.as_ref()));
            job.fail(reason);
        }
    }
    judge_pending(core);
}
