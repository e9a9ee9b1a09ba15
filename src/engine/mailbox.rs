//! The mailbox: how batches get from producers to a device's workers, and the
//! shutdown word that makes "every accepted batch is answered" hold across shutdown.
//!
//! Owns the [`Gate`] (one `AtomicU64`: a closed bit and the number of producers
//! inside `submit`) and the per-device [`Mailbox`] (a bounded channel and the
//! [`Doorbell`] its workers wait on). It never looks inside a batch. See
//! `src/engine/README.md` for the protocol and why it cannot lose a batch.

use crossbeam_channel::{Receiver, SendError, Sender, TrySendError};

use super::doorbell::Doorbell;
use crate::sync::{AtomicU64, Condvar, Mutex, Ordering};

/// One device's mailbox: a bounded MPMC channel its producers send to and its workers
/// take from, and the doorbell the workers wait on (see doorbell.rs). Every send
/// rings; a worker's `recv` searches or sleeps on the bell, never in the channel.
pub(crate) struct Mailbox<T> {
    tx: Sender<T>,
    rx: Receiver<T>,
    bell: Doorbell,
}

impl<T> std::fmt::Debug for Mailbox<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox")
            .field("queued", &self.rx.len())
            .field("bell", &self.bell)
            .finish()
    }
}

impl<T> Mailbox<T> {
    /// An empty mailbox of `capacity` messages whose workers search it at most
    /// `max_searching` at a time.
    pub(crate) fn new(capacity: usize, max_searching: usize) -> Self {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        Mailbox {
            tx,
            rx,
            bell: Doorbell::new(max_searching),
        }
    }

    /// Queues `msg`, blocking while the mailbox is full. The mailbox holds its own
    /// receiver, so the error (the message back) cannot happen.
    pub(crate) fn send(&self, msg: T) -> Result<(), SendError<T>> {
        self.tx.send(msg)?;
        self.bell.ring();
        Ok(())
    }

    /// Queues `msg` unless the mailbox is full.
    pub(crate) fn try_send(&self, msg: T) -> Result<(), TrySendError<T>> {
        self.tx.try_send(msg)?;
        self.bell.ring();
        Ok(())
    }

    /// Takes the next message, waiting on the doorbell while there is none.
    pub(crate) fn recv(&self) -> T {
        self.bell
            .wait(|| self.rx.try_recv().ok(), || !self.rx.is_empty())
    }

    /// Takes the next message if one is queued.
    pub(crate) fn try_recv(&self) -> Option<T> {
        self.rx.try_recv().ok()
    }

    /// Messages queued now.
    pub(crate) fn len(&self) -> usize {
        self.rx.len()
    }
}

/// Bit 63 of the gate word: set once shutdown began; no producer may enter after.
const CLOSED: u64 = 1 << 63;
/// The low bits: producers currently between `enter` and the end of their send.
const COUNT: u64 = CLOSED - 1;

/// The shutdown word: producers `enter` before they send and leave (drop the [`Pass`])
/// after; `close_and_wait` shuts the gate and waits until every producer inside has
/// left, after which no batch can be sent any more and the stop messages can follow.
#[derive(Debug)]
pub struct Gate {
    word: AtomicU64,
    lock: Mutex<()>,
    empty: Condvar,
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    /// An open gate with nobody inside.
    pub fn new() -> Self {
        Gate {
            word: AtomicU64::new(0),
            lock: Mutex::new(()),
            empty: Condvar::new(),
        }
    }

    /// Enters the gate: `None` once it is closed. Hold the pass while sending.
    pub fn enter(&self) -> Option<Pass<'_>> {
        let mut current = self.word.load(Ordering::Acquire);
        loop {
            if current & CLOSED != 0 {
                return None;
            }
            // COUNT cannot overflow: it would take 2^63 threads inside at once.
            match self.word.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(Pass { gate: self }),
                Err(seen) => current = seen,
            }
        }
    }

    /// True once `close_and_wait` has begun.
    pub fn is_closed(&self) -> bool {
        self.word.load(Ordering::Acquire) & CLOSED != 0
    }

    /// Producers inside the gate right now.
    pub fn inside(&self) -> u64 {
        self.word.load(Ordering::Acquire) & COUNT
    }

    /// Closes the gate (idempotent) and blocks until no producer is inside. Returns
    /// true for the call that closed it.
    pub fn close_and_wait(&self) -> bool {
        let before = self.word.fetch_or(CLOSED, Ordering::AcqRel);
        let mut guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        while self.word.load(Ordering::Acquire) & COUNT != 0 {
            guard = self.empty.wait(guard).unwrap_or_else(|p| p.into_inner());
        }
        drop(guard);
        before & CLOSED == 0
    }

    fn leave(&self) {
        let before = self.word.fetch_sub(1, Ordering::AcqRel);
        if before == CLOSED | 1 {
            // The last producer out of a closed gate: wake the closer. Taking the lock
            // first means the closer is either before its check (and will see 0) or
            // already waiting (and gets this notification) — never in between.
            let guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            drop(guard);
            self.empty.notify_all();
        }
    }
}

/// Proof of being inside the gate; leaving is dropping it.
#[derive(Debug)]
pub struct Pass<'a> {
    gate: &'a Gate,
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        self.gate.leave();
    }
}
