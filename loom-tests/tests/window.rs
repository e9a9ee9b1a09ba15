//! loom models of the window (`engine::window`): several batches handed to a device's
//! workers in one message, claimed a chunk at a time by one `fetch_add` on the
//! window's cursor and taken by the claimer's `Share`. Whatever the interleaving,
//! every job comes out exactly once, and a claimer that finds the window drained gets
//! `None` and nothing else.
#![cfg(photofinish_loom)]

use loom::sync::Arc;
use loom::thread;

use photofinish::protocol::{Share, Window};

/// Drains `window` through a share of this thread's own: the jobs it took.
fn drain(window: Arc<Window<u32>>) -> Vec<u32> {
    let mut share = Share::new(window);
    let mut mine = Vec::new();
    while let Some(job) = share.take() {
        mine.push(job);
    }
    mine
}

/// Two workers (each holding a copy, as from two messages) and the producer's own
/// copy drained from a third thread: three jobs, claimed `chunk` at a time, each taken
/// once in all.
fn every_job_taken_once(chunk: usize) {
    loom::model(move || {
        let window = Arc::new(Window::with_chunk(vec![10, 11, 12], chunk));
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let window = Arc::clone(&window);
                thread::spawn(move || drain(window))
            })
            .collect();
        let mut all = drain(Arc::clone(&window));
        for w in workers {
            all.extend(w.join().unwrap());
        }
        all.sort_unstable();
        assert_eq!(all, vec![10, 11, 12], "a job was lost or claimed twice");
        assert_eq!(window.unclaimed(), 0);
        assert!(window.claim().is_none());
    });
}

#[test]
fn every_job_of_a_window_is_claimed_exactly_once() {
    every_job_taken_once(1);
}

/// Chunks of two over three jobs: one claim gets two, one gets the last, a third none.
#[test]
fn every_job_of_a_window_claimed_in_chunks_is_taken_exactly_once() {
    every_job_taken_once(2);
}

/// A claimer that reads what is left sees no more than is really left for it: after
/// it takes one job, `left` never counts that job again, while the job it claimed and
/// has not taken still counts.
#[test]
fn left_never_counts_a_taken_job() {
    loom::model(|| {
        let window = Arc::new(Window::with_chunk(vec![1, 2, 3, 4], 2));
        let other = {
            let window = Arc::clone(&window);
            thread::spawn(move || Share::new(window).take())
        };
        let mut share = Share::new(Arc::clone(&window));
        let mine = share.take();
        let left_after = share.left();
        let theirs = other.join().unwrap();
        assert!(mine.is_some() && theirs.is_some(), "two claims, two jobs");
        // Its own claimed job, plus the other's chunk if that is not claimed yet.
        assert!(
            left_after == 1 || left_after == 3,
            "left counted a job this share took, or missed the one it holds claimed"
        );
        // The other share took one of its two claimed jobs and was dropped holding
        // the second: that job stays in the window, unclaimed by anyone.
        assert_eq!(window.unclaimed(), 0);
        assert_eq!(share.take(), mine.map(|m| m + 1));
    });
}
