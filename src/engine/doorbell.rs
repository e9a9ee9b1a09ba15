//! The doorbell: how a device's workers wait for their mailbox without all of them
//! polling it, and without a producer paying for a wake-up it does not need.
//!
//! A worker that finds the mailbox empty first *searches* (polls it for a while, see
//! spin.rs) — but only while fewer than `max_searching` of the device's workers search
//! (`EngineBuilder::max_searching`); the others, and a searcher that found nothing,
//! *sleep* on the doorbell's condvar. A producer *rings* after each message it queues:
//! when somebody searches it returns at once (the searcher will find the message), when
//! nobody sleeps too (every worker is busy and polls again when done), and only
//! otherwise takes the lock and hands one sleeper a wake-up permit. A worker that takes
//! a message and sees more queued rings as well, so a message that a searcher left
//! behind wakes a sleeper.
//!
//! Why no message is left with every worker asleep: the producer's "push, fence, read
//! the counts" and the sleeper's "count myself, fence, poll" are the two halves of a
//! store-buffer pattern, so at least one side sees the other — the producer sees the
//! sleeper (and wakes it), or the sleeper sees the message (and takes it). A searcher
//! that the producer relied on polls once more after it stops searching and counts
//! itself asleep, so it sees the message too. `loom-tests/tests/doorbell.rs` explores it.
//!
//! With many workers on one device, every poll of a shared channel bounces its cache
//! lines between the pollers' cores, and each message set all pollers racing for it;
//! capping the searchers keeps that to a few, while the sleepers cost nothing.

use std::time::Duration;

use crate::sync::{fence, AtomicU64, Condvar, Mutex, Ordering};

/// One device's doorbell (see the module docs).
#[derive(Debug)]
pub struct Doorbell {
    /// The most workers that search at once.
    max_searching: u64,
    /// How long a searcher polls with spin hints only before it yields between polls
    /// (spin.rs).
    busy: Duration,
    /// The workers searching (low 32 bits, [`SEARCHER`] each) and counted asleep (high
    /// 32 bits, [`SLEEPER`] each; changed only under `permits`' lock), in one word so a
    /// ring reads both with one read-modify-write, which sees the latest counts.
    idle: AtomicU64,
    /// Wake-ups handed out and not yet taken; never more than the sleepers.
    permits: Mutex<usize>,
    bell: Condvar,
}

/// One searching worker in `Doorbell::idle`.
const SEARCHER: u64 = 1;
/// One sleeping worker in `Doorbell::idle`.
const SLEEPER: u64 = 1 << 32;

fn searching(idle: u64) -> u64 {
    idle & (SLEEPER - 1)
}

fn sleeping(idle: u64) -> u64 {
    idle >> 32
}

impl Doorbell {
    /// A doorbell with nobody searching or asleep, on which at most `max_searching`
    /// workers (at least 1) search at once, each polling with spin hints only for its
    /// first `busy` (spin.rs).
    pub fn new(max_searching: usize, busy: Duration) -> Self {
        Doorbell {
            max_searching: u64::try_from(max_searching.max(1)).unwrap_or(u64::MAX),
            busy,
            idle: AtomicU64::new(0),
            permits: Mutex::new(0),
            bell: Condvar::new(),
        }
    }

    /// Call after queueing a message: wakes one sleeper unless a worker is searching
    /// or none sleeps.
    pub fn ring(&self) {
        // Orders the caller's queueing before the reads of the counts (see the module
        // docs: the producer's half of the store-buffer pattern).
        fence(Ordering::SeqCst);
        let idle = self.idle.fetch_add(0, Ordering::SeqCst);
        if searching(idle) > 0 || sleeping(idle) == 0 {
            return;
        }
        let mut permits = self.permits.lock().unwrap_or_else(|p| p.into_inner());
        if (*permits as u64) < sleeping(self.idle.load(Ordering::SeqCst)) {
            *permits += 1;
            drop(permits);
            self.bell.notify_one();
        }
    }

    /// Returns the first value `poll` gives (a message taken from the mailbox),
    /// searching while few workers search and sleeping otherwise; then rings when
    /// `more` says messages are still queued (a searcher may have taken this one where
    /// the producer of another counted on it).
    pub fn wait<T>(&self, mut poll: impl FnMut() -> Option<T>, more: impl Fn() -> bool) -> T {
        let value = self.take(&mut poll);
        if more() {
            self.ring();
        }
        value
    }

    fn take<T>(&self, mut poll: impl FnMut() -> Option<T>) -> T {
        loop {
            if let Some(value) = poll() {
                return value;
            }
            if searching(self.idle.fetch_add(SEARCHER, Ordering::SeqCst)) < self.max_searching {
                let found = search(&mut poll, self.busy);
                self.idle.fetch_sub(SEARCHER, Ordering::SeqCst);
                if let Some(value) = found {
                    return value;
                }
            } else {
                self.idle.fetch_sub(SEARCHER, Ordering::SeqCst);
            }
            if let Some(value) = self.sleep(&mut poll) {
                return value;
            }
        }
    }

    /// Counts the caller asleep, polls once more, and sleeps until it gets a permit
    /// unless that poll found a value. `None`: woken, poll again.
    fn sleep<T>(&self, poll: &mut impl FnMut() -> Option<T>) -> Option<T> {
        let mut permits = self.permits.lock().unwrap_or_else(|p| p.into_inner());
        self.idle.fetch_add(SLEEPER, Ordering::SeqCst);
        // The sleeper's half of the store-buffer pattern: a producer that read the
        // counts before this saw nobody asleep, so its message must be visible here.
        fence(Ordering::SeqCst);
        if let Some(value) = poll() {
            let asleep = sleeping(self.idle.fetch_sub(SLEEPER, Ordering::SeqCst)) - 1;
            // Keep permits ≤ sleepers: a permit meant for this worker is not left for
            // a later sleeper to wake on for nothing.
            *permits = (*permits).min(asleep as usize);
            return Some(value);
        }
        while *permits == 0 {
            permits = self.bell.wait(permits).unwrap_or_else(|p| p.into_inner());
        }
        *permits -= 1;
        self.idle.fetch_sub(SLEEPER, Ordering::SeqCst);
        None
    }

    /// Workers asleep on the doorbell now (for tests and models).
    #[cfg(any(test, photofinish_loom))]
    pub fn sleeping(&self) -> u64 {
        sleeping(self.idle.load(Ordering::SeqCst))
    }
}

/// Polls until a value comes or the spin window has passed (spin.rs); under the loom
/// models one more poll, so they explore a searcher without its timing.
fn search<T>(poll: &mut impl FnMut() -> Option<T>, busy: Duration) -> Option<T> {
    #[cfg(not(photofinish_loom))]
    return super::spin::spin_until(poll, busy);
    #[cfg(photofinish_loom)]
    {
        let _ = busy;
        poll()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize as StdCount;
    use std::sync::Arc;

    /// Workers asleep on the bell each get one of the messages rung for them.
    #[test]
    fn every_rung_message_is_taken() {
        let bell = Arc::new(Doorbell::new(1, Duration::ZERO));
        let queued = Arc::new(StdCount::new(0));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let bell = Arc::clone(&bell);
                let queued = Arc::clone(&queued);
                std::thread::spawn(move || {
                    let take = || {
                        queued
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .ok()
                    };
                    bell.wait(take, || queued.load(Ordering::SeqCst) > 0)
                })
            })
            .collect();
        // Let them give up searching and fall asleep, then ring one message each.
        while bell.sleeping() < 4 {
            std::thread::sleep(Duration::from_millis(1));
        }
        for _ in 0..4 {
            queued.fetch_add(1, Ordering::SeqCst);
            bell.ring();
        }
        for w in workers {
            w.join().expect("a worker panicked");
        }
        assert_eq!(queued.load(Ordering::SeqCst), 0);
        assert_eq!(bell.sleeping(), 0);
    }
}
