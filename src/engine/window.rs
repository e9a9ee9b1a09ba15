//! A window: several accepted batches handed to a device's workers in one hand-off
//! (`Engine::submit_many`).
//!
//! The producer puts its jobs in a [`Window`] and queues a few copies of one `Arc` to
//! it on the device's mailbox, instead of one message per batch; each worker that takes
//! a copy claims jobs from it one at a time until none is left, so the batches still
//! spread over the device's workers while the producer pays for a few queue writes and
//! one doorbell ring per call instead of one each per batch.
//!
//! The claim is one `fetch_add` on the window's cursor: the job at the index it returns
//! belongs to the caller, so every job is taken by exactly one worker; a cursor past
//! the end means the window is drained (a copy taken then is dropped). Each job sits
//! behind a mutex of its own that only its claimer locks, so taking it out needs no
//! `unsafe` and never waits. `loom-tests/tests/window.rs` explores the claim.
//!
//! The cursor and each job's cell sit on cache lines of their own: workers claiming
//! neighbouring jobs at once would otherwise pass a shared line between their cores
//! for every claim, and the copies' reference counts (written when a worker drops its
//! copy) would share the cursor's line.

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicUsize, Mutex, Ordering};

/// Jobs that workers claim one at a time (see the module docs).
pub struct Window<T> {
    /// The index of the next unclaimed job; past the end once drained.
    next: CachePadded<AtomicUsize>,
    jobs: Box<[CachePadded<Mutex<Option<T>>>]>,
}

impl<T> std::fmt::Debug for Window<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window")
            .field("jobs", &self.jobs.len())
            .field("left", &self.left())
            .finish()
    }
}

impl<T> Window<T> {
    /// A window of `jobs`, none claimed.
    pub fn new(jobs: Vec<T>) -> Self {
        Window {
            next: CachePadded::new(AtomicUsize::new(0)),
            jobs: jobs
                .into_iter()
                .map(|job| CachePadded::new(Mutex::new(Some(job))))
                .collect(),
        }
    }

    /// Claims the next job: `None` once every job is claimed.
    pub fn take(&self) -> Option<T> {
        // The cursor only grows, by one per call; it cannot wrap (that would take
        // usize::MAX calls on one window).
        let index = self.next.fetch_add(1, Ordering::AcqRel);
        let slot = self.jobs.get(index)?;
        // The index is this caller's alone, so the lock is never contended; a poisoned
        // lock still holds the job (nothing panics while holding it).
        let job = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        job
    }

    /// Jobs not yet claimed (a hint: others may be claiming them now).
    pub fn left(&self) -> usize {
        self.jobs
            .len()
            .saturating_sub(self.next.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn jobs_come_out_once_in_order_then_none() {
        let window = Window::new(vec![1, 2, 3]);
        assert_eq!(window.left(), 3);
        assert_eq!(window.take(), Some(1));
        assert_eq!(window.take(), Some(2));
        assert_eq!(window.left(), 1);
        assert_eq!(window.take(), Some(3));
        assert_eq!(window.take(), None);
        assert_eq!(window.take(), None);
        assert_eq!(window.left(), 0);
    }

    /// Threads claiming from one window together take every job exactly once.
    #[test]
    fn concurrent_claimers_take_each_job_once() {
        const JOBS: usize = 10_000;
        let window = Arc::new(Window::new((0..JOBS).collect()));
        let takers: Vec<_> = (0..4)
            .map(|_| {
                let window = Arc::clone(&window);
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    while let Some(job) = window.take() {
                        mine.push(job);
                    }
                    mine
                })
            })
            .collect();
        let mut all: Vec<usize> = takers
            .into_iter()
            .flat_map(|t| t.join().expect("a claimer panicked"))
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..JOBS).collect::<Vec<_>>());
    }
}
