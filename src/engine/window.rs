//! A window: several accepted batches handed to a device's workers in one hand-off
//! (`Engine::submit_many`).
//!
//! The producer puts its jobs in a [`Window`] and queues a few copies of one `Arc` to
//! it on the device's mailbox, instead of one message per batch; each worker that takes
//! a copy claims jobs from it a few at a time until none is left, so the batches still
//! spread over the device's workers while the producer pays for a few queue writes and
//! one doorbell ring per call instead of one each per batch.
//!
//! A claim is one `fetch_add` of the window's chunk on its cursor: the jobs at the
//! indices it covers belong to the caller, so every job is taken by exactly one worker;
//! a cursor past the end means the window is drained (a copy taken then is dropped).
//! A worker's [`Share`] keeps the indices it claimed and not yet taken. Each job sits
//! behind a mutex of its own that only its claimer locks, so taking it out needs no
//! `unsafe` and never waits. `loom-tests/tests/window.rs` explores the claim.
//!
//! The cursor is written by every claim of every worker of the window, one after the
//! other from core to core; claiming a chunk of jobs at once (up to [`MAX_CHUNK`], and
//! no more than leaves each copy a chunk) takes that many fewer trips of its cache
//! line, at the price of a claimed batch waiting for its claimer's earlier ones. The
//! cursor and each job's cell sit on cache lines of their own: workers claiming
//! neighbouring jobs at once would otherwise pass a shared line between their cores,
//! and the copies' reference counts (written when a worker drops its copy) would share
//! the cursor's line. Jobs left in a window when its last copy goes (none, unless a
//! worker died holding a claim) are dropped with it, and a dropped job answers its
//! ticket.
//!
//! The engine's producers keep the windows they sent (`kept_windows` in the engine
//! module) and [`refill`](Window::refill) one once every worker let go of it: the
//! next window of as many batches costs no allocation, and no worker frees the
//! producer's memory from another core.

use std::ops::{Deref, Range};

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicUsize, Mutex, Ordering};

/// The most jobs one claim takes.
pub(crate) const MAX_CHUNK: usize = 4;

/// Jobs that workers claim a chunk at a time (see the module docs).
pub struct Window<T> {
    /// The index of the next unclaimed job; past the end once drained.
    next: CachePadded<AtomicUsize>,
    /// Jobs per claim (at least 1).
    chunk: usize,
    jobs: Box<[CachePadded<Mutex<Option<T>>>]>,
}

impl<T> std::fmt::Debug for Window<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window")
            .field("jobs", &self.jobs.len())
            .field("chunk", &self.chunk)
            .field("unclaimed", &self.unclaimed())
            .finish()
    }
}

impl<T> Window<T> {
    /// A window of `jobs` for `copies` claimers: claimed in chunks of up to
    /// [`MAX_CHUNK`], and no larger than leaves each copy one.
    pub fn for_copies(jobs: Vec<T>, copies: usize) -> Self {
        let chunk = chunk_for(jobs.len(), copies);
        Self::with_chunk(jobs, chunk)
    }

    /// A window of `jobs`, none claimed, claimed `chunk` (at least 1) at a time.
    pub fn with_chunk(jobs: Vec<T>, chunk: usize) -> Self {
        Window {
            next: CachePadded::new(AtomicUsize::new(0)),
            chunk: chunk.max(1),
            jobs: jobs
                .into_iter()
                .map(|job| CachePadded::new(Mutex::new(Some(job))))
                .collect(),
        }
    }

    /// How many jobs the window holds, taken or not: a window refilled with
    /// [`refill`](Self::refill) takes exactly this many.
    pub fn cells(&self) -> usize {
        self.jobs.len()
    }

    /// Makes a drained window (every job taken, no copy left but the caller's, which
    /// `&mut` proves) a new one of `jobs` for `copies` claimers, as
    /// [`for_copies`](Self::for_copies) would, in the same memory: a producer that
    /// keeps its windows sends the next one without an allocation. Takes
    /// [`cells`](Self::cells) jobs from `jobs` (fewer if it runs out; the cells left
    /// hold none); a job a cell still held is dropped.
    pub fn refill(&mut self, jobs: impl IntoIterator<Item = T>, copies: usize) {
        let mut jobs = jobs.into_iter();
        let mut filled = 0;
        for cell in self.jobs.iter_mut() {
            let job = jobs.next();
            filled += usize::from(job.is_some());
            **cell = Mutex::new(job);
        }
        self.chunk = chunk_for(filled, copies);
        *self.next = AtomicUsize::new(0);
    }

    /// Claims the next chunk of jobs: their indices, the caller's alone to take with
    /// [`take_claimed`](Self::take_claimed); `None` once every job is claimed.
    pub fn claim(&self) -> Option<Range<usize>> {
        // The cursor only grows, by one chunk per call; it cannot wrap (that would
        // take usize::MAX / chunk calls on one window).
        let start = self.next.fetch_add(self.chunk, Ordering::AcqRel);
        let end = start.saturating_add(self.chunk).min(self.jobs.len());
        (start < end).then_some(start..end)
    }

    /// Takes the job at `index`, which the caller claimed: `None` if there is no such
    /// job or it was taken already.
    pub fn take_claimed(&self, index: usize) -> Option<T> {
        // The index is this caller's alone, so the lock is never contended; a poisoned
        // lock still holds the job (nothing panics while holding it).
        let job = self
            .jobs
            .get(index)?
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        job
    }

    /// Takes any job still in the window, claimed or not: for a claimer that takes
    /// over from one that can no longer run its claimed jobs (a worker thread given up
    /// on, `supervisor.rs`). A claimer whose claimed job was taken this way finds it
    /// gone and claims on ([`Share::take`]), so every job is still taken once.
    pub fn take_any(&self) -> Option<T> {
        self.jobs
            .iter()
            .find_map(|cell| cell.lock().unwrap_or_else(|p| p.into_inner()).take())
    }

    /// Jobs not yet claimed (a hint: others may be claiming them now).
    pub fn unclaimed(&self) -> usize {
        self.jobs
            .len()
            .saturating_sub(self.next.load(Ordering::Acquire))
    }
}

/// The chunk a window of `jobs` is claimed in by `copies` claimers: up to
/// [`MAX_CHUNK`], and no larger than leaves each copy one.
fn chunk_for(jobs: usize, copies: usize) -> usize {
    (jobs / copies.max(1)).clamp(1, MAX_CHUNK)
}

/// One claimer's copy of a window (`W`: a handle to it, e.g. an `Arc`) with the jobs
/// it claimed and has not taken yet.
#[derive(Debug)]
pub struct Share<W> {
    window: W,
    claimed: Range<usize>,
}

impl<T, W> Share<W>
where
    W: Deref<Target = Window<T>>,
{
    /// A copy of `window`, nothing claimed yet.
    pub fn new(window: W) -> Self {
        Share {
            window,
            claimed: 0..0,
        }
    }

    /// The next job: the first one this share claimed and has not taken, or the first
    /// of a chunk it claims now; `None` once the window is drained.
    pub fn take(&mut self) -> Option<T> {
        loop {
            match self.claimed.next() {
                Some(index) => {
                    if let Some(job) = self.window.take_claimed(index) {
                        return Some(job);
                    }
                    // Not reached: a claimed index is taken once, by its claimer.
                }
                None => self.claimed = self.window.claim()?,
            }
        }
    }

    /// Jobs this share may still take: those it claimed and has not taken, and those
    /// nobody claimed yet (a hint, as [`Window::unclaimed`]).
    pub fn left(&self) -> usize {
        self.claimed.len() + self.window.unclaimed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn jobs_come_out_once_in_order_then_none() {
        for chunk in [1, 2, 3, 4] {
            let mut share = Share::new(Arc::new(Window::with_chunk(vec![1, 2, 3], chunk)));
            assert_eq!(share.left(), 3);
            assert_eq!(share.take(), Some(1));
            assert_eq!(share.take(), Some(2));
            assert_eq!(share.left(), 1);
            assert_eq!(share.take(), Some(3));
            assert_eq!(share.take(), None);
            assert_eq!(share.take(), None);
            assert_eq!(share.left(), 0);
        }
    }

    /// A claim covers up to a chunk of jobs; the last one what is left; then none.
    #[test]
    fn claims_cover_a_chunk_each() {
        let window = Window::with_chunk((0..10).collect(), 4);
        assert_eq!(window.claim(), Some(0..4));
        assert_eq!(window.unclaimed(), 6);
        assert_eq!(window.claim(), Some(4..8));
        assert_eq!(window.claim(), Some(8..10));
        assert_eq!(window.claim(), None);
        assert_eq!(window.unclaimed(), 0);
        assert_eq!(window.take_claimed(9), Some(9));
        assert_eq!(window.take_claimed(9), None, "a job is taken once");
        assert_eq!(window.take_claimed(10), None);
    }

    /// The chunk leaves every copy a claim and is at most `MAX_CHUNK`.
    #[test]
    fn chunks_leave_each_copy_a_claim() {
        let chunk = |jobs: usize, copies: usize| {
            Window::for_copies((0..jobs).collect::<Vec<_>>(), copies).chunk
        };
        assert_eq!(chunk(64, 16), 4);
        assert_eq!(chunk(64, 2), MAX_CHUNK);
        assert_eq!(chunk(20, 16), 1);
        assert_eq!(chunk(2, 2), 1);
        assert_eq!(chunk(5, 0), MAX_CHUNK);
    }

    /// A drained window refilled through its only handle serves the new jobs from
    /// the start, in chunks for the new copies; a job a cell still held is dropped.
    #[test]
    fn a_refilled_window_serves_its_new_jobs_from_the_start() {
        let mut window = Arc::new(Window::with_chunk(vec![1, 2, 3, 4, 5, 6, 7, 8], 4));
        assert_eq!(window.claim(), Some(0..4));
        assert_eq!(window.take_claimed(0), Some(1));
        let only = Arc::get_mut(&mut window).expect("one handle");
        only.refill((10..20).collect::<Vec<_>>(), 4);
        assert_eq!(only.cells(), 8, "a refill keeps the window's cells");
        assert_eq!(only.chunk, 2, "8 jobs for 4 copies: chunks of 2");
        assert_eq!(only.unclaimed(), 8);
        let mut share = Share::new(Arc::clone(&window));
        let taken: Vec<_> = std::iter::from_fn(|| share.take()).collect();
        assert_eq!(taken, (10..18).collect::<Vec<_>>(), "the first 8 new jobs");
        // Fewer jobs than cells: the rest hold none and are skipped.
        drop(share);
        let only = Arc::get_mut(&mut window).expect("one handle");
        only.refill([30, 31], 1);
        let mut share = Share::new(window);
        assert_eq!(share.take(), Some(30));
        assert_eq!(share.take(), Some(31));
        assert_eq!(share.take(), None);
    }

    /// Threads claiming from one window together take every job exactly once.
    #[test]
    fn concurrent_claimers_take_each_job_once() {
        const JOBS: usize = 10_001;
        for chunk in [1, 3, MAX_CHUNK] {
            let window = Arc::new(Window::with_chunk((0..JOBS).collect(), chunk));
            let takers: Vec<_> = (0..4)
                .map(|_| {
                    let mut share = Share::new(Arc::clone(&window));
                    std::thread::spawn(move || {
                        let mut mine = Vec::new();
                        while let Some(job) = share.take() {
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
            assert_eq!(all, (0..JOBS).collect::<Vec<_>>(), "chunk {chunk}");
        }
    }
}
