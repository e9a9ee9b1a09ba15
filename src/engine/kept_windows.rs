//! The windows a thread sent with `submit_many`, kept for its next ones, and the list
//! it gathers a window's jobs in: a window is one block of a cache-padded cell per
//! batch (8 KiB for 64), and sending each in a new one cost the producer an
//! allocation of the allocator's large sizes per call — with glibc, a sweep of every
//! small block freed since the last one (`malloc_consolidate`) — and left its free to
//! whichever worker let go of it last, from another core. A kept window is used again
//! once every worker let go of it (its jobs all taken), for a call with as many
//! batches. At most [`MAX`] are kept per thread, of at most
//! [`MAX_CELLS`] batches each; they are freed when the thread ends.
//!
//! Under loom nothing is kept (a model's window belongs to one execution).
//!
//! A thread-local cache of allocations only: it never decides where a window goes.

use std::sync::Arc;

use super::job::Job;
use super::window::Window;

/// The most windows a thread keeps.
#[cfg(not(photofinish_loom))]
pub(super) const MAX: usize = 4;
/// The largest window kept (a larger one is freed as before).
#[cfg(not(photofinish_loom))]
pub(super) const MAX_CELLS: usize = 1024;

#[cfg(not(photofinish_loom))]
#[derive(Default)]
struct Kept {
    windows: Vec<Arc<Window<Job>>>,
    jobs: Vec<Job>,
}

#[cfg(not(photofinish_loom))]
thread_local! {
    static KEPT: std::cell::RefCell<Kept> = std::cell::RefCell::new(Kept::default());
}

/// An empty list to gather a window's jobs in (the thread's kept one, if any).
#[cfg(not(photofinish_loom))]
pub(super) fn jobs() -> Vec<Job> {
    KEPT.try_with(|kept| {
        kept.try_borrow_mut()
            .map(|mut kept| std::mem::take(&mut kept.jobs))
            .unwrap_or_default()
    })
    .unwrap_or_default()
}

/// A window of `jobs` (which it empties) for `copies` claimers: a kept one of as
/// many cells that every worker let go of, refilled, or a new one.
#[cfg(not(photofinish_loom))]
pub(super) fn window(jobs: &mut Vec<Job>, copies: usize) -> Arc<Window<Job>> {
    let found = KEPT
        .try_with(|kept| {
            let mut kept = kept.try_borrow_mut().ok()?;
            // A count of one is this thread's copy alone (no weak references are
            // made); `get_mut` below confirms it.
            let free = kept
                .windows
                .iter()
                .position(|w| w.cells() == jobs.len() && Arc::strong_count(w) == 1)?;
            // `remove`, not `swap_remove`: the others stay oldest first.
            Some(kept.windows.remove(free))
        })
        .ok()
        .flatten();
    if let Some(mut window) = found {
        if let Some(cells) = Arc::get_mut(&mut window) {
            cells.refill(jobs.drain(..), copies);
            return window;
        }
    }
    Arc::new(Window::for_copies(std::mem::take(jobs), copies))
}

/// Keeps a copy of `window`, which was just sent, and the emptied list its jobs
/// were gathered in, for this thread's next calls (the oldest kept window makes
/// room).
#[cfg(not(photofinish_loom))]
pub(super) fn keep(window: Arc<Window<Job>>, jobs: Vec<Job>) {
    if window.cells() <= MAX_CELLS {
        let _ = KEPT.try_with(|kept| {
            if let Ok(mut kept) = kept.try_borrow_mut() {
                if kept.windows.len() == MAX {
                    kept.windows.remove(0);
                }
                kept.windows.push(window);
            }
        });
    }
    keep_jobs(jobs);
}

/// The addresses of the windows this thread keeps, oldest first.
#[cfg(all(test, not(photofinish_loom)))]
pub(super) fn kept() -> Vec<usize> {
    KEPT.with_borrow(|kept| {
        kept.windows
            .iter()
            .map(|w| Arc::as_ptr(w) as usize)
            .collect()
    })
}

/// True once every worker let go of this thread's kept windows.
#[cfg(all(test, not(photofinish_loom)))]
pub(super) fn all_free() -> bool {
    KEPT.with_borrow(|kept| kept.windows.iter().all(|w| Arc::strong_count(w) == 1))
}

/// Keeps the emptied list a call gathered its jobs in.
#[cfg(not(photofinish_loom))]
pub(super) fn keep_jobs(jobs: Vec<Job>) {
    let _ = KEPT.try_with(|kept| {
        if let Ok(mut kept) = kept.try_borrow_mut() {
            if jobs.is_empty() && jobs.capacity() <= MAX_CELLS {
                kept.jobs = jobs;
            }
        }
    });
}

/// Under loom: an empty list.
#[cfg(photofinish_loom)]
pub(super) fn jobs() -> Vec<Job> {
    Vec::new()
}

/// Under loom: a new window.
#[cfg(photofinish_loom)]
pub(super) fn window(jobs: &mut Vec<Job>, copies: usize) -> Arc<Window<Job>> {
    Arc::new(Window::for_copies(std::mem::take(jobs), copies))
}

/// Under loom: nothing is kept.
#[cfg(photofinish_loom)]
pub(super) fn keep(window: Arc<Window<Job>>, jobs: Vec<Job>) {
    drop((window, jobs));
}

/// Under loom: nothing is kept.
#[cfg(photofinish_loom)]
pub(super) fn keep_jobs(jobs: Vec<Job>) {
    drop(jobs);
}
