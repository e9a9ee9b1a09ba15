//! loom model of the device-load watch (`engine::contention`): a race's samples are
//! clamped only when another backend call shared its device, so two calls that overlap
//! must both see each other and a call alone must see no one. (A watch dropped by a
//! panicking call is counted out by its drop: a unit test in `contention.rs`.)
#![cfg(photofinish_loom)]

use loom::sync::atomic::{AtomicBool, Ordering};
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
fn overlapping_calls_both_report_contention() {
    loom::model(|| {
        let load = Arc::new(DeviceLoad::new());
        let first_running = Arc::new(AtomicBool::new(false));
        let second_running = Arc::new(AtomicBool::new(false));
        let first = {
            let (load, first_running, second_running) = (
                Arc::clone(&load),
                Arc::clone(&first_running),
                Arc::clone(&second_running),
            );
            thread::spawn(move || {
                let watch = load.begin();
                first_running.store(true, Ordering::Release);
                // The second call begins before this one ends: they overlap.
                wait_for(&second_running);
                watch.finish()
            })
        };
        wait_for(&first_running);
        let watch = load.begin();
        second_running.store(true, Ordering::Release);
        let second = watch.finish();
        let first = first.join().unwrap();
        assert!(first, "the first call missed the second");
        assert!(second, "the second call missed the first");
        assert_eq!(load.active(), 0);
    });
}

#[test]
fn concurrent_calls_in_any_order_are_counted_out_and_never_wrongly_alone() {
    loom::model(|| {
        let load = Arc::new(DeviceLoad::new());
        let other = {
            let load = Arc::clone(&load);
            thread::spawn(move || load.begin().finish())
        };
        let ours = load.begin().finish();
        let theirs = other.join().unwrap();
        // Whatever the interleaving, the two reports agree: either the calls overlapped
        // and both saw it, or one ended before the other began and neither did.
        assert_eq!(ours, theirs, "one call saw an overlap the other missed");
        assert_eq!(load.active(), 0);
        // A later call alone sees no one.
        assert!(!load.begin().finish());
    });
}

/// The same watch on two separate atomics (calls begun; calls running), finished by
/// reading one and then decrementing the other: a call that begins between the two
/// steps sees the finishing call still running while the finishing call missed it.
struct TwoWordLoad {
    begun: loom::sync::atomic::AtomicU64,
    running: loom::sync::atomic::AtomicU32,
}

impl TwoWordLoad {
    fn begin(&self) -> (u64, u32) {
        let ticket = self.begun.fetch_add(1, Ordering::AcqRel);
        let others = self.running.fetch_add(1, Ordering::AcqRel);
        (ticket, others)
    }

    fn finish(&self, (ticket, others): (u64, u32)) -> bool {
        let began_since = self.begun.load(Ordering::Acquire) != ticket + 1;
        self.running.fetch_sub(1, Ordering::AcqRel);
        others > 0 || began_since
    }
}

#[test]
#[should_panic(expected = "one call saw an overlap the other missed")]
fn a_two_word_watch_is_caught_disagreeing() {
    loom::model(|| {
        let load = Arc::new(TwoWordLoad {
            begun: loom::sync::atomic::AtomicU64::new(0),
            running: loom::sync::atomic::AtomicU32::new(0),
        });
        let other = {
            let load = Arc::clone(&load);
            thread::spawn(move || {
                let watch = load.begin();
                load.finish(watch)
            })
        };
        let watch = load.begin();
        let ours = load.finish(watch);
        let theirs = other.join().unwrap();
        assert_eq!(ours, theirs, "one call saw an overlap the other missed");
    });
}
