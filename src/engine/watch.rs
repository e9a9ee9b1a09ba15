//! What the watchdog sees of a worker thread ([`Watch`]): the backend call it is in
//! (marked by [`begin_call`] around every call, so a call that outlives the dispatch
//! timeout can be given up on), the responders of the batches it runs, parked there
//! while they run, and the window it claims from. The worker writes it, the watchdog
//! (`supervisor.rs`) reads it; nothing here decides when to give up.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_utils::atomic::AtomicCell;

use super::batch::Answer;
use super::core::Core;
use super::job::Job;
use super::sample::KernelId;
use super::ticket::Responder;
use super::window::Window;

/// `Watch::call` of a thread the watchdog gave up on.
pub(super) const CLAIMED: u64 = u64::MAX;

/// What the watchdog sees of one worker thread. Only that thread and the watchdog
/// touch it: per backend call the worker writes `what` and `call` twice, and per batch
/// it parks and unparks the batch's responder (a swap each), all on lines no other
/// worker writes.
pub(crate) struct Watch {
    /// 0: no backend call running; [`CLAIMED`]: given up on; otherwise the number of
    /// the running call (the watchdog sees a call stuck when the same number stays).
    pub(super) call: AtomicU64,
    /// The running call's kernel index (high half) and variant (low half).
    pub(super) what: AtomicU64,
    /// The last call number the worker used.
    next: AtomicU64,
    /// The responder of the batch the worker runs alone, parked here while it runs
    /// (vacant otherwise).
    pub(super) parked: AtomicCell<Responder<Answer>>,
    /// The responders of a group the worker runs, parked here while it runs.
    pub(super) parked_group: Mutex<Vec<Responder<Answer>>>,
    /// The window the worker is claiming from (set when it takes a copy, cleared when
    /// it lets go of it: twice a window, not per batch), so that a new thread can
    /// take over the jobs a thread given up on claimed and never ran.
    pub(super) window: Mutex<Option<Arc<Window<Job>>>>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("call", &self.call.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Watch {
    pub(super) fn new() -> Self {
        Watch {
            call: AtomicU64::new(0),
            what: AtomicU64::new(0),
            next: AtomicU64::new(0),
            parked: AtomicCell::new(Responder::vacant()),
            parked_group: Mutex::new(Vec::new()),
            window: Mutex::new(None),
        }
    }
}

thread_local! {
    /// The watch of this thread, when it is a watched worker.
    pub(super) static WATCH: RefCell<Option<Arc<Watch>>> = const { RefCell::new(None) };
    /// Set once the watchdog gave up on this thread (seen when a call returns).
    pub(super) static GIVEN_UP: Cell<bool> = const { Cell::new(false) };
}

/// One backend call being watched; ends it when dropped.
#[must_use]
pub(crate) struct CallGuard {
    /// Its number; 0 when not watched.
    seq: u64,
}

/// Marks the start of a backend call of variant `variant` of kernel `kernel` on this
/// thread, for the watchdog (nothing when the thread is not a watched worker).
pub(crate) fn begin_call(core: &Core, kernel: KernelId, variant: usize) -> CallGuard {
    if core.config.dispatch_timeout.is_none() {
        return CallGuard { seq: 0 };
    }
    WATCH.with_borrow(|watch| {
        let Some(watch) = watch else {
            return CallGuard { seq: 0 };
        };
        let seq = watch.next.load(Ordering::Relaxed).wrapping_add(1).max(1);
        let seq = if seq == CLAIMED { 1 } else { seq };
        watch.next.store(seq, Ordering::Relaxed);
        let what = (u64::from(kernel.get()) << 32) | (variant as u64 & 0xffff_ffff);
        watch.what.store(what, Ordering::Relaxed);
        watch.call.store(seq, Ordering::Release);
        CallGuard { seq }
    })
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.seq == 0 {
            return;
        }
        WATCH.with_borrow(|watch| {
            if let Some(watch) = watch {
                let ended =
                    watch
                        .call
                        .compare_exchange(self.seq, 0, Ordering::AcqRel, Ordering::Acquire);
                if ended.is_err() {
                    // The watchdog claimed this call: it answered the batches.
                    GIVEN_UP.set(true);
                }
            }
        });
    }
}

/// Parks the responders of `jobs` in this thread's watch while they run (a no-op on
/// an unwatched thread), so the watchdog can answer them if the thread hangs.
pub(super) fn park(jobs: &mut [Job]) {
    WATCH.with_borrow(|watch| {
        let Some(watch) = watch else {
            return;
        };
        match jobs {
            [job] => watch
                .parked
                .store(std::mem::replace(&mut job.responder, Responder::vacant())),
            jobs => {
                let mut group = watch.parked_group.lock().unwrap_or_else(|p| p.into_inner());
                group.extend(
                    jobs.iter_mut()
                        .map(|j| std::mem::replace(&mut j.responder, Responder::vacant())),
                );
            }
        }
    });
}

/// Gives `jobs` their parked responders back. False when the watchdog gave up on this
/// thread meanwhile: it answered them, and this thread must leave them and end.
pub(super) fn unpark(jobs: &mut [Job]) -> bool {
    if GIVEN_UP.get() {
        return false;
    }
    WATCH.with_borrow(|watch| {
        let Some(watch) = watch else {
            return;
        };
        match jobs {
            [job] => job.responder = watch.parked.swap(Responder::vacant()),
            jobs => {
                let mut group = watch.parked_group.lock().unwrap_or_else(|p| p.into_inner());
                for (job, responder) in jobs.iter_mut().zip(group.drain(..)) {
                    job.responder = responder;
                }
            }
        }
    });
    true
}

/// Notes in this thread's watch the window it takes a copy of (`Some`) or lets go of
/// (`None`); a no-op on an unwatched thread.
pub(super) fn note_window(window: Option<&Arc<Window<Job>>>) {
    WATCH.with_borrow(|watch| {
        if let Some(watch) = watch {
            *lock(&watch.window) = window.map(Arc::clone);
        }
    });
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
