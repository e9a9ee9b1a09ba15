//! Tickets: the one-shot slot through which a worker answers a batch.
//!
//! Owns the slot protocol only: a [`Responder`] (held by whoever runs the batch) fills
//! the slot exactly once, and a [`Ticket`] (held by the caller) waits for it. A
//! responder that is dropped without answering — a worker unwinding from a panic, a
//! queue torn down — answers with [`EngineError::Unanswered`] from its `Drop`, so an
//! accepted batch can never be left without an answer. This module never decides what
//! the answer is. Its state uses `crate::sync` so the loom model in
//! `loom-tests/tests/mailbox.rs` explores it.

use std::fmt;
use std::time::{Duration, Instant};

use crate::sync::{Arc, AtomicU32, Condvar, Mutex, Ordering, UnsafeCell};

use super::error::EngineError;

/// The slot's phases, in the low two bits of its state word: no answer yet, the answer
/// is in the cell, the caller took it. The bits above count the callers asleep.
const EMPTY: u32 = 0;
const FULL: u32 = 1;
const TAKEN: u32 = 2;
const PHASE: u32 = 3;
/// One caller asleep in the state word.
const SLEEPER: u32 = 4;

/// The one-shot slot. The answer goes through `value` without a lock: the responder
/// (there is one, and it fills once) writes it while the phase is `EMPTY` and then
/// publishes `FULL`; a caller reads it only after moving the phase from `FULL` to
/// `TAKEN` itself, which one caller can. The lock and condvar are only for a caller
/// that stops spinning and sleeps: it counts itself asleep in the same word under the
/// lock, and the responder's publishing read-modify-write sees that count (and then
/// takes the lock before it notifies) or the sleeper's count sees `FULL` — so a wake-up
/// is never lost, and a spinning caller (the common case) costs the responder no lock
/// and no system call.
struct Slot<T> {
    state: AtomicU32,
    value: UnsafeCell<Option<Result<T, EngineError>>>,
    /// The batch's payload and kernel reference, handed back with the answer so that
    /// the caller's thread, which allocated the one and counted the other, also frees
    /// and uncounts them (written and read as `value` is). A worker that freed the
    /// payload would free into the caller's allocator arena from another core (with
    /// glibc's malloc a contended arena lock per batch), and one that dropped the
    /// reference would write the kernel's count, which every worker of the kernel and
    /// every producer then passes between their cores.
    home: UnsafeCell<Option<super::Home>>,
    lock: Mutex<()>,
    ready: Condvar,
}

// The value crosses from the responder's thread to the caller's, and the state
// protocol above gives one thread at a time access to it.
unsafe impl<T: Send> Send for Slot<T> {}
unsafe impl<T: Send> Sync for Slot<T> {}

impl<T> Slot<T> {
    fn phase(&self) -> u32 {
        self.state.load(Ordering::Acquire) & PHASE
    }

    /// Moves the answer out if it is in and nobody took it before: `Some` for the
    /// one caller that moves the phase from `FULL` to `TAKEN`, `AnswerTaken` for later
    /// ones, `None` while there is no answer.
    fn try_take(&self) -> Option<Result<T, EngineError>> {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            match state & PHASE {
                FULL => {}
                TAKEN => return Some(Err(EngineError::AnswerTaken)),
                _ => return None,
            }
            // FULL + 1 = TAKEN, the sleeper count kept.
            match self.state.compare_exchange_weak(
                state,
                state + 1,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                // SAFETY: only the caller that moved the phase to TAKEN reads the cell,
                // after the responder's write (its FULL released it, this acquired it);
                // nobody writes it again.
                Ok(_) => {
                    // The payload is freed (and the kernel uncounted) here, on the
                    // caller's thread, before the answer is returned: the caller then
                    // finds the engine holding no reference to its input.
                    drop(self.home.with_mut(|h| unsafe { (*h).take() }));
                    return Some(
                        self.value
                            .with_mut(|v| unsafe { (*v).take() })
                            .unwrap_or(Err(EngineError::Unanswered)),
                    );
                }
                Err(seen) => state = seen,
            }
        }
    }
}

/// Creates a connected responder and ticket whose caller busy-waits for its first
/// `busy` (spin.rs).
pub(crate) fn one_shot<T>(busy: Duration) -> (Responder<T>, Ticket<T>) {
    let slot = Arc::new(Slot {
        state: AtomicU32::new(EMPTY),
        value: UnsafeCell::new(None),
        home: UnsafeCell::new(None),
        lock: Mutex::new(()),
        ready: Condvar::new(),
    });
    (
        Responder {
            slot: Some(slot.clone()),
        },
        Ticket { slot, busy },
    )
}

/// The answering end of a ticket. Answers exactly once: by [`Responder::answer`], or
/// with [`EngineError::Unanswered`] when dropped unanswered.
pub struct Responder<T> {
    slot: Option<Arc<Slot<T>>>,
}

impl<T> fmt::Debug for Responder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("answered", &self.slot.is_none())
            .finish()
    }
}

/// [`one_shot`] for the loom models in `loom-tests/` (not part of the API).
pub fn one_shot_for_models<T>() -> (Responder<T>, Ticket<T>) {
    one_shot(Duration::ZERO)
}

impl<T> Responder<T> {
    /// Drops the responder without answering: only for a batch that was never
    /// accepted (its ticket was never handed out).
    pub(crate) fn disarm(mut self) {
        self.slot = None;
    }

    /// Fills the slot and wakes the waiter.
    pub fn answer(self, result: Result<T, EngineError>) {
        self.answer_sending_home(result, None);
    }

    /// Answers handing a batch's input bytes back with the answer, as the engine's
    /// workers hand back a batch's payload; for the loom models in `loom-tests/` (not
    /// part of the API).
    pub fn answer_sending_input_home_for_models(
        self,
        result: Result<T, EngineError>,
        input: std::sync::Arc<[u8]>,
    ) {
        let home = super::Home {
            payload: super::Payload::Input(input),
            kernel: None,
        };
        self.answer_sending_home(result, Some(home));
    }

    /// As [`answer`](Self::answer), handing `home` back with the answer: the caller
    /// that takes the answer drops it on its own thread (and a slot nobody takes drops
    /// it with itself).
    pub(crate) fn answer_sending_home(
        mut self,
        result: Result<T, EngineError>,
        home: Option<super::Home>,
    ) {
        if let Some(slot) = self.slot.take() {
            if home.is_some() {
                // SAFETY: as `fill`'s write of the value: the state is EMPTY, so no
                // caller reads the cell before `fill` publishes FULL.
                slot.home.with_mut(|h| unsafe { *h = home });
            }
            fill(&slot, result);
        }
    }
}

impl<T> Drop for Responder<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            fill(&slot, Err(EngineError::Unanswered));
        }
    }
}

/// The one fill of the slot (a responder fills once: `answer` and `drop` take its
/// slot out first).
fn fill<T>(slot: &Slot<T>, result: Result<T, EngineError>) {
    // SAFETY: the state is EMPTY (only this fill sets it FULL), so no caller reads
    // the cell until the store below publishes it.
    slot.value.with_mut(|v| unsafe { *v = Some(result) });
    // EMPTY + 1 = FULL. One read-modify-write of the word the sleepers count themselves
    // in: either it sees a sleeper, or that sleeper's count sees FULL.
    let before = slot.state.fetch_add(FULL, Ordering::AcqRel);
    if before >= SLEEPER {
        // Taking the lock means the sleeper is either before its re-read of the state
        // (and sees FULL) or already waiting (and gets this notification).
        drop(slot.lock.lock().unwrap_or_else(|p| p.into_inner()));
        slot.ready.notify_all();
    }
}

/// The caller's end: waits for the one answer of an accepted batch.
pub struct Ticket<T = super::Answer> {
    slot: Arc<Slot<T>>,
    /// How long `wait` polls with spin hints only before it yields (the engine's
    /// `EngineBuilder::busy_wait`).
    #[cfg_attr(photofinish_loom, allow(dead_code))]
    busy: Duration,
}

impl<T> fmt::Debug for Ticket<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl<T> Ticket<T> {
    /// True once the answer is in (and not yet taken).
    pub fn is_ready(&self) -> bool {
        self.slot.phase() == FULL
    }

    /// Sleeps on the condvar until the answer is in or `wait` gives up (`wait_timeout`
    /// returning with its timeout passed), counted as a sleeper so the filler wakes it.
    fn sleep<G>(&self, mut wait: G)
    where
        G: for<'a> FnMut(
            &'a Condvar,
            crate::sync::MutexGuard<'a, ()>,
        ) -> Option<crate::sync::MutexGuard<'a, ()>>,
    {
        let slot = &self.slot;
        let mut guard = slot.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut phase = slot.state.fetch_add(SLEEPER, Ordering::AcqRel) & PHASE;
        while phase == EMPTY {
            match wait(&slot.ready, guard) {
                Some(g) => {
                    guard = g;
                    phase = slot.phase();
                }
                // Timed out (`wait` gave the lock back).
                None => break,
            }
        }
        slot.state.fetch_sub(SLEEPER, Ordering::AcqRel);
    }

    /// Blocks until the answer is in and returns it.
    pub fn wait(self) -> Result<T, EngineError> {
        // Spin briefly first: a short batch answers before a parked thread would wake.
        #[cfg(not(photofinish_loom))]
        super::spin::spin_until(|| self.is_ready().then_some(()), self.busy);
        loop {
            if let Some(result) = self.slot.try_take() {
                return result;
            }
            self.sleep(|ready, g| Some(ready.wait(g).unwrap_or_else(|p| p.into_inner())));
        }
    }

    /// Waits at most `timeout`. `None`: no answer yet (the ticket stays valid, wait
    /// again). `Some(result)`: the answer, which is now taken — a later wait returns
    /// [`EngineError::AnswerTaken`].
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Result<T, EngineError>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(result) = self.slot.try_take() {
                return Some(result);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            self.sleep(|ready, g| {
                let now = Instant::now();
                (now < deadline).then(|| {
                    ready
                        .wait_timeout(g, deadline - now)
                        .map(|(guard, _)| guard)
                        .unwrap_or_else(|p| p.into_inner().0)
                })
            });
        }
    }
}
