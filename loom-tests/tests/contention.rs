//! loom model of the device-load watch (`engine::contention`): a race's samples are
//! clamped only when another backend call shared its device, so a watched call must
//! see every call that overlaps it, on its own queue or another, and a call alone must
//! see no one. (A call or watch dropped by a panicking call is counted out by its drop:
//! a unit test in `contention.rs`.)
#![cfg(photofinish_loom)]

use loom::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use loom::sync::Arc;
use loom::thread;

use photofinish::protocol::DeviceLoad;

/// Spins (yielding to loom) until `flag` is set.
fn wait_for(flag: &AtomicBool) {
    while !flag.load(Ordering::Acquire) {
        thread::yield_now();
    }
}

#[test]
fn overlapping_watched_calls_on_two_queues_both_report_contention() {
    loom::model(|| {
        let load = Arc::new(DeviceLoad::new(2));
        let first_running = Arc::new(AtomicBool::new(false));
        let second_running = Arc::new(AtomicBool::new(false));
        let first = {
            let (load, first_running, second_running) = (
                Arc::clone(&load),
                Arc::clone(&first_running),
                Arc::clone(&second_running),
            );
            thread::spawn(move || {
                let watch = load.watch(0);
                first_running.store(true, Ordering::Release);
                // The second call begins before this one ends: they overlap.
                wait_for(&second_running);
                watch.finish()
            })
        };
        wait_for(&first_running);
        let watch = load.watch(1);
        second_running.store(true, Ordering::Release);
        let second = watch.finish();
        let first = first.join().unwrap();
        assert!(first, "the first call missed the second");
        assert!(second, "the second call missed the first");
        assert_eq!(load.active(), 0);
    });
}

/// Runs a watched call on `queue` (an unwatched one when `watched` is false) whose
/// "kernel" is the stretch between two read-modify-writes of `inside`; returns whether
/// another call was inside at the same time, and what the watch reported (false for an
/// unwatched call).
fn call(load: &DeviceLoad, inside: &AtomicU32, queue: usize, watched: bool) -> (bool, bool) {
    let run = || {
        let before = inside.fetch_add(1, Ordering::SeqCst);
        let after = inside.fetch_sub(1, Ordering::SeqCst);
        before > 0 || after > 1
    };
    if watched {
        let watch = load.watch(queue);
        let overlapped = run();
        (overlapped, watch.finish())
    } else {
        let counted = load.begin(queue);
        let overlapped = run();
        counted.finish();
        (overlapped, false)
    }
}

/// Two calls in any interleaving, on two queues or one: a watched call whose kernel
/// overlapped the other's always reports contention, and both are counted out.
fn no_overlap_is_missed(queues: [usize; 2], other_watched: bool) {
    loom::model(move || {
        let load = Arc::new(DeviceLoad::new(2));
        let inside = Arc::new(AtomicU32::new(0));
        let other = {
            let (load, inside) = (Arc::clone(&load), Arc::clone(&inside));
            thread::spawn(move || call(&load, &inside, queues[1], other_watched))
        };
        let (overlapped, reported) = call(&load, &inside, queues[0], true);
        let (their_overlap, their_report) = other.join().unwrap();
        assert!(
            !overlapped || reported,
            "our watch missed an overlapping call"
        );
        assert!(
            !(other_watched && their_overlap) || their_report,
            "their watch missed our call"
        );
        assert_eq!(load.active(), 0);
        // A later call alone sees no one.
        assert!(!load.watch(queues[0]).finish());
    });
}

#[test]
fn a_watch_misses_no_overlapping_call_on_another_queue() {
    no_overlap_is_missed([0, 1], false);
}

#[test]
fn two_watches_on_two_queues_miss_no_overlap() {
    no_overlap_is_missed([0, 1], true);
}

#[test]
fn a_watch_misses_no_overlapping_call_on_its_own_queue() {
    no_overlap_is_missed([1, 1], false);
}
