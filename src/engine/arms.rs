//! The speculative arm's thread: a race runs its speculative arm on a helper thread of
//! the worker (one per worker thread, started at its first race and kept), so that the
//! worker can answer the race's caller as soon as the conservative arm is in and wait
//! for the speculative one with a timeout. A speculative kernel that never returns
//! holds only this helper, which the worker then abandons (detached, never joined; it
//! ends on its own if its call ever returns) and replaces at its next race. This
//! module only runs and waits; `race.rs` decides what the results mean.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::backend::{Backend, BackendError, DispatchJob, DispatchOutput};

use super::panics::panic_message;

/// A helper thread and its two channels.
struct Helper {
    jobs: Sender<DispatchJob>,
    results: Receiver<Result<DispatchOutput, BackendError>>,
    /// When the job it is running was handed to it; `None` while it is idle.
    running_since: Option<Instant>,
}

thread_local! {
    /// This worker thread's helper.
    static HELPER: RefCell<Option<Helper>> = const { RefCell::new(None) };
}

/// How a wait for the speculative arm ended.
pub(crate) enum Waited {
    /// Its result.
    Done(Result<DispatchOutput, BackendError>),
    /// Not in yet.
    Running,
    /// No arm is out (none started, or the helper was lost).
    Idle,
}

/// Hands `job` to this thread's helper (starting one if needed) and returns at once.
/// `Err`: no helper could be started (the OS refused a thread); the job comes back.
pub(crate) fn start(backend: &Arc<dyn Backend>, job: DispatchJob) -> Result<(), DispatchJob> {
    HELPER.with_borrow_mut(|slot| {
        if slot.as_ref().is_some_and(|h| h.running_since.is_some()) {
            // An arm is still out (its wait was never finished): give up on it.
            *slot = None;
        }
        if slot.is_none() {
            *slot = spawn(Arc::clone(backend));
        }
        let Some(helper) = slot.as_mut() else {
            return Err(job);
        };
        match helper.jobs.send(job) {
            Ok(()) => {
                helper.running_since = Some(Instant::now());
                Ok(())
            }
            Err(returned) => {
                *slot = None;
                Err(returned.into_inner())
            }
        }
    })
}

/// Waits up to `wait` (`None`: for ever) for the arm handed out by [`start`].
pub(crate) fn wait(wait: Option<Duration>) -> Waited {
    HELPER.with_borrow_mut(|slot| {
        let Some(helper) = slot.as_mut() else {
            return Waited::Idle;
        };
        if helper.running_since.is_none() {
            return Waited::Idle;
        }
        let got = match wait {
            Some(wait) => helper.results.recv_timeout(wait),
            None => helper
                .results
                .recv()
                .map_err(|_| RecvTimeoutError::Disconnected),
        };
        match got {
            Ok(result) => {
                helper.running_since = None;
                Waited::Done(result)
            }
            Err(RecvTimeoutError::Timeout) => Waited::Running,
            Err(RecvTimeoutError::Disconnected) => {
                *slot = None;
                Waited::Idle
            }
        }
    })
}

/// Gives up on this thread's helper and the arm it is running: the helper thread is
/// detached (never joined) and the next race starts a new one.
pub(crate) fn abandon() {
    HELPER.with_borrow_mut(|slot| *slot = None);
}

/// Starts a helper thread running `backend`'s dispatches one at a time; `None` when
/// the OS refused a thread.
fn spawn(backend: Arc<dyn Backend>) -> Option<Helper> {
    let (jobs, job_rx) = crossbeam_channel::bounded::<DispatchJob>(1);
    let (result_tx, results) = crossbeam_channel::bounded(1);
    let name = format!(
        "{}-arm",
        std::thread::current()
            .name()
            .unwrap_or("photofinish-worker")
    );
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        // Ends when its worker lets go of it (the worker ended, or gave up on it).
        while let Ok(job) = job_rx.recv() {
            let ran = catch_unwind(AssertUnwindSafe(|| {
                backend.dispatch(std::slice::from_ref(&job)).pop()
            }));
            let result = match ran {
                Ok(Some(result)) => result,
                Ok(None) => Err(BackendError::Unknown {
                    what: "result: the backend returned none for the speculative arm".into(),
                }),
                Err(panic) => Err(BackendError::Unknown {
                    what: format!(
                        "result: the backend panicked running the speculative arm ({})",
                        panic_message(panic.as_ref())
                    ),
                }),
            };
            // Let go of the job (the batch's input, which it may share with the
            // caller) before the result is out: by the time the caller has its answer
            // the engine holds no reference to the input.
            drop(job);
            if result_tx.send(result).is_err() {
                return;
            }
        }
    });
    match spawned {
        Ok(_detached) => Some(Helper {
            jobs,
            results,
            running_since: None,
        }),
        Err(e) => {
            tracing::error!(error = %e, "could not start a speculative arm's thread");
            None
        }
    }
}
