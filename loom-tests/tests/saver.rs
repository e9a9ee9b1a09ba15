//! loom models of the autotune saver's request protocol (`SaveQueue`): workers set a
//! store's dirty flag (waking the saver only when they flip it), the saver clears the
//! flag *before* it saves, `flush` waits for a pass that began after it, and `stop`
//! makes one last pass. The store is modelled as a version counter: a worker bumps it
//! before it requests a save, and a save records the version it read. Property: the
//! last saved version is at least every version requested before `stop` (or before a
//! `flush` returned).
//!
//! `clearing_after_the_save_is_caught` runs the same model on a copy of the saver that
//! clears the flag *after* saving: loom must find the request it loses, or the model
//! has lost its teeth.
#![cfg(photofinish_loom)]

use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

use photofinish::protocol::SaveQueue;

/// What the models need from a saver design.
trait Design: Send + Sync + 'static {
    fn fresh() -> Self;
    fn request(&self);
    fn flush(&self);
    fn stop(&self);
    fn run(&self, save: impl FnMut());
}

impl Design for SaveQueue {
    fn fresh() -> Self {
        SaveQueue::new(1)
    }
    fn request(&self) {
        SaveQueue::request(self, 0)
    }
    fn flush(&self) {
        SaveQueue::flush(self)
    }
    fn stop(&self) {
        SaveQueue::stop(self)
    }
    fn run(&self, mut save: impl FnMut()) {
        SaveQueue::run(self, |_| save())
    }
}

/// The store's version and the version the last save read.
#[derive(Default)]
struct Store {
    version: AtomicU64,
    saved: AtomicU64,
}

impl Store {
    /// A verdict change: the store moves to a new version, returned.
    fn change(&self) -> u64 {
        self.version.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// A save: writes what the store holds now. Only the saver thread saves.
    fn save(&self) {
        let seen = self.version.load(Ordering::Acquire);
        self.saved.store(seen, Ordering::Release);
    }

    fn saved(&self) -> u64 {
        self.saved.load(Ordering::Acquire)
    }
}

/// A fresh queue and store, and the saver thread running the queue over the store.
fn with_saver<D: Design>() -> (Arc<D>, Arc<Store>, thread::JoinHandle<()>) {
    let queue = Arc::new(D::fresh());
    let store = Arc::new(Store::default());
    let saver = {
        let (queue, store) = (Arc::clone(&queue), Arc::clone(&store));
        thread::spawn(move || queue.run(|| store.save()))
    };
    (queue, store, saver)
}

/// A worker makes two verdict changes, each followed by a request; then the engine
/// stops the saver. The last pass must have saved the second change.
fn requests_before_stop_are_saved<D: Design>() {
    let (queue, store, saver) = with_saver::<D>();
    let worker = {
        let (queue, store) = (Arc::clone(&queue), Arc::clone(&store));
        thread::spawn(move || {
            let mut last = 0;
            for _ in 0..2 {
                last = store.change();
                queue.request();
            }
            last
        })
    };
    let requested = worker.join().unwrap();
    queue.stop();
    saver.join().unwrap();
    assert!(
        store.saved() >= requested,
        "version {requested} was requested before stop, but the last save wrote {}",
        store.saved()
    );
}

/// A worker changes and requests twice, then flushes: when `flush` returns, its
/// second change is saved, whatever the saver was doing.
fn flush_returns_after_every_earlier_request_is_saved<D: Design>() {
    let (queue, store, saver) = with_saver::<D>();
    let worker = {
        let (queue, store) = (Arc::clone(&queue), Arc::clone(&store));
        thread::spawn(move || {
            store.change();
            queue.request();
            let second = store.change();
            queue.request();
            queue.flush();
            assert!(
                store.saved() >= second,
                "flush returned before version {second} was saved (saved {})",
                store.saved()
            );
        })
    };
    worker.join().unwrap();
    queue.stop();
    saver.join().unwrap();
}

#[test]
fn a_request_before_stop_is_saved() {
    loom::model(requests_before_stop_are_saved::<SaveQueue>);
}

#[test]
fn flush_waits_for_every_earlier_request() {
    loom::model(flush_returns_after_every_earlier_request_is_saved::<SaveQueue>);
}

/// A flush racing `stop` returns (the saver's last pass or its end releases it).
#[test]
fn flush_during_stop_returns() {
    loom::model(|| {
        let queue = Arc::new(SaveQueue::new(1));
        let saver = {
            let queue = Arc::clone(&queue);
            thread::spawn(move || queue.run(|_| {}))
        };
        let flusher = {
            let queue = Arc::clone(&queue);
            thread::spawn(move || queue.flush())
        };
        queue.stop();
        flusher.join().unwrap();
        saver.join().unwrap();
        queue.flush();
    });
}

/// The saver as it must NOT be written: it saves a dirty store and only then clears
/// its flag, so a request made during that save finds the flag still set, does not
/// wake the saver, and is wiped by the clear. Otherwise the same as `SaveQueue`.
struct ClearAfterSave {
    dirty: AtomicBool,
    state: Mutex<(bool, bool, u64, u64)>, // wake, stop, asked, done
    work: Condvar,
    finished: Condvar,
}

impl Design for ClearAfterSave {
    fn fresh() -> Self {
        ClearAfterSave {
            dirty: AtomicBool::new(false),
            state: Mutex::new((false, false, 0, 0)),
            work: Condvar::new(),
            finished: Condvar::new(),
        }
    }

    fn request(&self) {
        if !self.dirty.swap(true, Ordering::AcqRel) {
            self.state.lock().unwrap().0 = true;
            self.work.notify_one();
        }
    }

    fn flush(&self) {
        let mut state = self.state.lock().unwrap();
        state.2 += 1;
        let round = state.2;
        self.work.notify_one();
        while state.3 < round {
            state = self.finished.wait(state).unwrap();
        }
    }

    fn stop(&self) {
        self.state.lock().unwrap().1 = true;
        self.work.notify_one();
    }

    fn run(&self, mut save: impl FnMut()) {
        loop {
            let (stop, round) = {
                let mut state = self.state.lock().unwrap();
                while !state.0 && !state.1 && state.2 == state.3 {
                    state = self.work.wait(state).unwrap();
                }
                state.0 = false;
                (state.1, state.2)
            };
            if self.dirty.load(Ordering::Acquire) {
                save();
                self.dirty.store(false, Ordering::Release);
            }
            self.state.lock().unwrap().3 = round;
            self.finished.notify_all();
            if stop {
                return;
            }
        }
    }
}

#[test]
#[should_panic(expected = "was requested before stop")]
fn clearing_after_the_save_is_caught() {
    loom::model(requests_before_stop_are_saved::<ClearAfterSave>);
}

#[test]
#[should_panic(expected = "flush returned before version")]
fn clearing_after_the_save_is_caught_by_flush() {
    loom::model(flush_returns_after_every_earlier_request_is_saved::<ClearAfterSave>);
}
