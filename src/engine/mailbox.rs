//! The mailbox: how batches get from producers to a device's workers, and the
//! shutdown word that makes "every accepted batch is answered" hold across shutdown.
//!
//! Owns the [`Gate`] (a few `AtomicU64`s, each a closed bit and a number of producers
//! inside `submit`) and the per-device [`Mailbox`] (a bounded channel and the
//! [`Doorbell`] its workers wait on). It never looks inside a batch. See
//! `src/engine/README.md` for the protocol and why it cannot lose a batch.

use std::time::Duration;

use crossbeam_channel::{Receiver, SendError, Sender, TrySendError};

use crossbeam_utils::CachePadded;

use super::doorbell::Doorbell;
use crate::sync::{padded_words, AtomicU64, Condvar, Mutex, Ordering};

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
    /// `max_searching` at a time, each busy-waiting for its first `busy` (spin.rs).
    pub(crate) fn new(capacity: usize, max_searching: usize, busy: Duration) -> Self {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        Mailbox {
            tx,
            rx,
            bell: Doorbell::new(max_searching, busy),
        }
    }

    /// Queues `msg`, blocking while the mailbox is full. The mailbox holds its own
    /// receiver, so the error (the message back) cannot happen.
    pub(crate) fn send(&self, msg: T) -> Result<(), SendError<T>> {
        self.tx.send(msg)?;
        self.bell.ring();
        Ok(())
    }

    /// Queues every message of `msgs` in order and rings once at the end, so a worker
    /// taking one of them rings on for the others (doorbell.rs) and the producer pays
    /// one ring, not one per message. Where the mailbox is full it rings first, then
    /// blocks, so no message it queued waits unrung behind a blocked producer.
    pub(crate) fn send_all(&self, msgs: impl IntoIterator<Item = T>) -> Result<(), SendError<T>> {
        let mut queued = false;
        for msg in msgs {
            match self.tx.try_send(msg) {
                Ok(()) => {}
                Err(TrySendError::Full(msg)) => {
                    self.bell.ring();
                    self.tx.send(msg)?;
                }
                Err(TrySendError::Disconnected(msg)) => return Err(SendError(msg)),
            }
            queued = true;
        }
        if queued {
            self.bell.ring();
        }
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

/// Bit 63 of a gate word: set once shutdown began; no producer may enter after.
const CLOSED: u64 = 1 << 63;
/// The low bits: producers currently between `enter` and the end of their send.
const COUNT: u64 = CLOSED - 1;
/// Words in a gate made by [`Gate::new`].
pub(crate) const GATE_SHARDS: usize = 8;

/// The shutdown gate: producers `enter` before they send and leave (drop the [`Pass`])
/// after; `close_and_wait` shuts the gate and waits until every producer inside has
/// left, after which no batch can be sent any more and the stop messages can follow.
///
/// The gate is [`GATE_SHARDS`] words, each on cache lines of its own, each a closed bit
/// and a count of the producers inside through it; a producer thread enters and leaves
/// through one word (chosen once per thread), so producers on different threads do not
/// write one shared line twice per submit, as they did with a single word until
/// commit bbad666. Closing sets the closed bit in every word, one read-modify-write
/// each, and then waits for every count to drain: a producer either entered a word
/// before its closed bit was set (and is counted there) or sees the bit and is
/// refused: the single word's argument, per word (loom model:
/// `loom-tests/tests/mailbox.rs`).
///
/// The gate also says when a shutdown is over: [`shut_down_once`](Self::shut_down_once)
/// lets the caller that closed it finish the shutdown (stop and join the workers, the
/// final save) and holds every other caller until that is done (loom model:
/// `loom-tests/tests/shutdown.rs`).
#[derive(Debug)]
pub struct Gate {
    words: Box<[CachePadded<AtomicU64>]>,
    /// True once the closer's shutdown work is done (or unwound).
    lock: Mutex<bool>,
    empty: Condvar,
    finished: Condvar,
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    /// An open gate of [`GATE_SHARDS`] words with nobody inside.
    pub fn new() -> Self {
        Self::with_shards(GATE_SHARDS)
    }

    /// An open gate of `shards` words (at least one).
    pub fn with_shards(shards: usize) -> Self {
        Gate {
            words: padded_words(shards),
            lock: Mutex::new(false),
            empty: Condvar::new(),
            finished: Condvar::new(),
        }
    }

    /// Enters the gate through this thread's word: `None` once it is closed. Hold the
    /// pass while sending.
    pub fn enter(&self) -> Option<Pass<'_>> {
        self.enter_through(thread_shard())
    }

    /// Enters the gate through word `shard` (modulo the number of words): what
    /// [`enter`](Self::enter) does with the calling thread's word. The loom models
    /// place their producers on words with it.
    pub fn enter_through(&self, shard: usize) -> Option<Pass<'_>> {
        let word = &self.words[shard % self.words.len()];
        let mut current = word.load(Ordering::Acquire);
        loop {
            if current & CLOSED != 0 {
                return None;
            }
            // COUNT cannot overflow: it would take 2^63 threads inside at once.
            match word.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(Pass { gate: self, word }),
                Err(seen) => current = seen,
            }
        }
    }

    /// True once `close_and_wait` has begun.
    pub fn is_closed(&self) -> bool {
        self.words[0].load(Ordering::Acquire) & CLOSED != 0
    }

    /// Producers inside the gate right now.
    pub fn inside(&self) -> u64 {
        self.words
            .iter()
            .map(|w| w.load(Ordering::Acquire) & COUNT)
            .sum()
    }

    /// Closes the gate (idempotent) and blocks until no producer is inside. Returns
    /// true for the call that closed it (the one that set the first word's bit).
    #[cfg(photofinish_loom)]
    pub fn close_and_wait(&self) -> bool {
        let closed_first = self.close();
        self.wait_empty();
        closed_first
    }

    /// Shuts down once, however many threads call it at the same time. The caller that
    /// closes the gate waits until no producer is inside, runs `finish` (send the stop
    /// messages, join the workers, the final save) and returns true. Every other caller,
    /// concurrent or later, returns false, and only once `finish` has returned (or
    /// unwound): so each caller returns, and none before the shutdown is complete.
    ///
    /// Only the closer runs `finish`. When every caller joined whatever workers it
    /// found, a second caller could join them (holding the workers' lock) before the
    /// closer had sent the stop messages: a deadlock (issue #25).
    pub fn shut_down_once(&self, finish: impl FnOnce()) -> bool {
        if !self.close() {
            let mut finished = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            while !*finished {
                finished = self
                    .finished
                    .wait(finished)
                    .unwrap_or_else(|p| p.into_inner());
            }
            return false;
        }
        /// Marks the shutdown finished when dropped, so that a `finish` that unwinds
        /// still lets the other callers go.
        struct Finished<'a>(&'a Gate);
        impl Drop for Finished<'_> {
            fn drop(&mut self) {
                *self.0.lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
                self.0.finished.notify_all();
            }
        }
        let _finished = Finished(self);
        self.wait_empty();
        finish();
        true
    }

    /// Sets the closed bit in every word; true for the call that set the first word's.
    fn close(&self) -> bool {
        let mut closed_first = false;
        for (i, word) in self.words.iter().enumerate() {
            let was_open = word.fetch_or(CLOSED, Ordering::AcqRel) & CLOSED == 0;
            if i == 0 {
                closed_first = was_open;
            }
        }
        closed_first
    }

    /// Blocks until no producer is inside (after [`close`](Self::close)).
    fn wait_empty(&self) {
        let mut guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        while self.inside() != 0 {
            guard = self.empty.wait(guard).unwrap_or_else(|p| p.into_inner());
        }
        drop(guard);
    }

    fn leave(&self, word: &AtomicU64) {
        let before = word.fetch_sub(1, Ordering::AcqRel);
        if before == CLOSED | 1 {
            // The last producer out of a closed word: wake the closer. Taking the lock
            // first means the closer is either before its check (and will see 0 here)
            // or already waiting (and gets this notification) — never in between. A
            // producer that leaves a word before it is closed needs to wake no one: the
            // closer reads that word after closing it.
            let guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            drop(guard);
            self.empty.notify_all();
        }
    }
}

/// The gate word the calling thread enters through: threads take the next one in turn
/// the first time they submit.
fn thread_shard() -> usize {
    use std::cell::Cell;
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<Option<usize>> = const { Cell::new(None) };
    }
    SHARD.with(|shard| {
        shard.get().unwrap_or_else(|| {
            let mine = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            shard.set(Some(mine));
            mine
        })
    })
}

/// Proof of being inside the gate; leaving is dropping it.
#[derive(Debug)]
pub struct Pass<'a> {
    gate: &'a Gate,
    word: &'a AtomicU64,
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        self.gate.leave(self.word);
    }
}
