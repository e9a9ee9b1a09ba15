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

use crate::sync::{Arc, AtomicBool, Condvar, Mutex, Ordering};

use super::error::EngineError;

/// What the slot holds: nothing yet, the answer, or "already taken by the caller".
enum SlotState<T> {
    Empty,
    Full(Result<T, EngineError>),
    Taken,
}

/// The slot's state and how many waiters sleep on its condvar (both under one lock).
struct Guarded<T> {
    state: SlotState<T>,
    sleepers: u32,
}

struct Slot<T> {
    guarded: Mutex<Guarded<T>>,
    ready: Condvar,
    /// Set (after the state) once the answer is in: what a spinning waiter polls, so
    /// polls take no lock. The state under the lock stays the truth.
    filled: AtomicBool,
}

/// Creates a connected responder and ticket.
pub(crate) fn one_shot<T>() -> (Responder<T>, Ticket<T>) {
    let slot = Arc::new(Slot {
        guarded: Mutex::new(Guarded {
            state: SlotState::Empty,
            sleepers: 0,
        }),
        ready: Condvar::new(),
        filled: AtomicBool::new(false),
    });
    (
        Responder {
            slot: Some(slot.clone()),
        },
        Ticket { slot },
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
    one_shot()
}

impl<T> Responder<T> {
    /// Drops the responder without answering: only for a batch that was never
    /// accepted (its ticket was never handed out).
    pub(crate) fn disarm(mut self) {
        self.slot = None;
    }

    /// Fills the slot and wakes the waiter.
    pub fn answer(mut self, result: Result<T, EngineError>) {
        if let Some(slot) = self.slot.take() {
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

fn fill<T>(slot: &Slot<T>, result: Result<T, EngineError>) {
    // A poisoned lock only means a waiter panicked while holding it; the state is a
    // plain enum and still consistent, so carry on with it.
    let mut guarded = slot.guarded.lock().unwrap_or_else(|p| p.into_inner());
    if matches!(guarded.state, SlotState::Empty) {
        guarded.state = SlotState::Full(result);
    }
    slot.filled.store(true, Ordering::Release);
    // A waiter counts itself a sleeper under the lock before it waits, so it is either
    // counted here or will see the state just written: waking only counted sleepers
    // loses no wake-up, and a waiter that is spinning (the common case) costs the
    // answering worker no system call.
    let sleepers = guarded.sleepers;
    drop(guarded);
    if sleepers > 0 {
        slot.ready.notify_all();
    }
}

/// The caller's end: waits for the one answer of an accepted batch.
pub struct Ticket<T = super::Answer> {
    slot: Arc<Slot<T>>,
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
        let guarded = self.slot.guarded.lock().unwrap_or_else(|p| p.into_inner());
        matches!(guarded.state, SlotState::Full(_))
    }

    /// Blocks on the condvar once, counted as a sleeper so the filler wakes it.
    fn sleep<'a, G>(
        &'a self,
        mut guarded: crate::sync::MutexGuard<'a, Guarded<T>>,
        wait: G,
    ) -> crate::sync::MutexGuard<'a, Guarded<T>>
    where
        G: FnOnce(
            &'a Condvar,
            crate::sync::MutexGuard<'a, Guarded<T>>,
        ) -> crate::sync::MutexGuard<'a, Guarded<T>>,
    {
        guarded.sleepers += 1;
        let mut guarded = wait(&self.slot.ready, guarded);
        guarded.sleepers -= 1;
        guarded
    }

    /// Blocks until the answer is in and returns it.
    pub fn wait(self) -> Result<T, EngineError> {
        // Spin briefly first: a short batch answers before a parked thread would wake.
        #[cfg(not(photofinish_loom))]
        super::spin::spin_until(|| self.slot.filled.load(Ordering::Acquire).then_some(()));
        let mut guarded = self.slot.guarded.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match std::mem::replace(&mut guarded.state, SlotState::Taken) {
                SlotState::Full(result) => return result,
                SlotState::Taken => return Err(EngineError::AnswerTaken),
                SlotState::Empty => {
                    guarded.state = SlotState::Empty;
                    guarded = self.sleep(guarded, |ready, g| {
                        ready.wait(g).unwrap_or_else(|p| p.into_inner())
                    });
                }
            }
        }
    }

    /// Waits at most `timeout`. `None`: no answer yet (the ticket stays valid, wait
    /// again). `Some(result)`: the answer, which is now taken — a later wait returns
    /// [`EngineError::AnswerTaken`].
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Result<T, EngineError>> {
        let deadline = Instant::now() + timeout;
        let mut guarded = self.slot.guarded.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match std::mem::replace(&mut guarded.state, SlotState::Taken) {
                SlotState::Full(result) => return Some(result),
                SlotState::Taken => return Some(Err(EngineError::AnswerTaken)),
                SlotState::Empty => {
                    guarded.state = SlotState::Empty;
                    let now = Instant::now();
                    if now >= deadline {
                        return None;
                    }
                    guarded = self.sleep(guarded, |ready, g| {
                        ready
                            .wait_timeout(g, deadline - now)
                            .map(|(guard, _)| guard)
                            .unwrap_or_else(|p| p.into_inner().0)
                    });
                }
            }
        }
    }
}
