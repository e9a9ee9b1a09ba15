//! loom models of the window (`engine::window`): several batches handed to a device's
//! workers in one message, each claimed by one `fetch_add` on the window's cursor.
//! Whatever the interleaving, every job comes out exactly once, and a claimer that
//! finds the window drained gets `None` and nothing else.
#![cfg(photofinish_loom)]

use loom::sync::Arc;
use loom::thread;

use photofinish::protocol::Window;

/// Drains `window` from this thread: the jobs it claimed.
fn drain(window: &Window<u32>) -> Vec<u32> {
    let mut mine = Vec::new();
    while let Some(job) = window.take() {
        mine.push(job);
    }
    mine
}

/// Two workers (each holding a copy, as from two messages) and the producer's own
/// copy drained from a third thread: three jobs, each claimed once in all.
#[test]
fn every_job_of_a_window_is_claimed_exactly_once() {
    loom::model(|| {
        let window = Arc::new(Window::new(vec![10, 11, 12]));
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let window = Arc::clone(&window);
                thread::spawn(move || drain(&window))
            })
            .collect();
        let mut all = drain(&window);
        for w in workers {
            all.extend(w.join().unwrap());
        }
        all.sort_unstable();
        assert_eq!(all, vec![10, 11, 12], "a job was lost or claimed twice");
        assert_eq!(window.left(), 0);
        assert!(window.take().is_none());
    });
}

/// A claimer that reads `left` sees no more than are really left for it: after it
/// claims one job, `left` never counts that job again.
#[test]
fn left_never_counts_a_claimed_job() {
    loom::model(|| {
        let window = Arc::new(Window::new(vec![1, 2]));
        let other = {
            let window = Arc::clone(&window);
            thread::spawn(move || window.take())
        };
        let mine = window.take();
        let left_after = window.left();
        let theirs = other.join().unwrap();
        assert!(mine.is_some() && theirs.is_some(), "two jobs, two claimers");
        assert!(left_after <= 1, "left counted a job this thread claimed");
        assert_eq!(window.left(), 0);
    });
}
