//! The background saver: the one thread that writes autotune stores to disk, so a
//! worker never blocks on a file.
//!
//! Owns the save-request protocol ([`SaveQueue`]): one dirty flag per device store,
//! set by workers when a verdict changes (cheap, never blocks on I/O, never fails), and
//! the `photofinish-saver` thread that clears a flag *before* saving that store, so a
//! request arriving during a save causes another save and is never lost. A burst of
//! requests while a save runs coalesces into one more save. It never decides what to
//! save or when a verdict changes, and it never looks inside a store; it keeps each
//! store's last save error, which `Engine::autotune_save_error` reports (a failed save
//! is also logged at `warn`, never silent, never fatal). The protocol uses
//! `crate::sync`, so `loom-tests/tests/saver.rs` models it; the design note is in
//! `src/engine/README.md` ("Background saver").

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::thread::JoinHandle;

use crate::autotune::AutotuneError;
use crate::sync::{AtomicBool, Condvar, Mutex, MutexGuard, Ordering};

use super::error::EngineError;

/// The saver thread's name.
pub(crate) const THREAD_NAME: &str = "photofinish-saver";

/// What the saver and the threads talking to it share, under [`SaveQueue::state`].
#[derive(Debug, Default)]
struct State {
    /// A store became dirty since the saver last looked.
    wake: bool,
    /// `stop` was called: one last pass, then the saver exits.
    stop: bool,
    /// Flush rounds asked for so far (each `flush` call takes the next number).
    asked: u64,
    /// Every flush round up to this one is done: a pass that began after it was asked
    /// for has finished.
    done: u64,
    /// The saver's loop has returned (or unwound): nothing will be saved any more.
    ended: bool,
}

/// The save-request protocol between workers (requesters), the saver thread (which
/// runs [`SaveQueue::run`]) and the engine handle (`flush`, `stop`).
///
/// - `request(store)`: `swap(true)` on the store's dirty flag; only the call that flips
///   it false → true takes the lock to wake the saver. A thousand requests between two
///   passes make one save.
/// - The saver waits until woken, stopped or asked to flush, then makes a pass: for
///   each store, `swap(false)` *then* save, so a request made while that save runs
///   leaves the flag set and gets a pass of its own.
/// - `flush`: takes the next round number and waits until a pass that began after it
///   has finished. The saver is one thread, so every save started earlier is over too.
/// - `stop`: the saver makes one last pass and exits; a request made before `stop` is
///   saved by it.
#[derive(Debug)]
pub struct SaveQueue {
    dirty: Vec<AtomicBool>,
    state: Mutex<State>,
    /// The saver waits here for work.
    work: Condvar,
    /// `flush` callers wait here for their round.
    finished: Condvar,
    /// Per store, the error of its last save (`None`: it succeeded, or none ran). Not
    /// part of the protocol: only the saver writes it, callers read it.
    last_error: Vec<Mutex<Option<std::sync::Arc<AutotuneError>>>>,
}

impl SaveQueue {
    /// A queue for `stores` stores (indices `0..stores`), none dirty.
    pub fn new(stores: usize) -> Self {
        SaveQueue {
            dirty: (0..stores).map(|_| AtomicBool::new(false)).collect(),
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            finished: Condvar::new(),
            last_error: (0..stores).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// Records the outcome of a save of `store` to `path` (an unknown index is ignored).
    /// A failure is logged at `warn`, naming the file and the fix; the same failure
    /// again, save after save, only at `debug`.
    pub fn record(
        &self,
        store: usize,
        path: Option<&std::path::Path>,
        outcome: Result<(), AutotuneError>,
    ) {
        let Some(slot) = self.last_error.get(store) else {
            return;
        };
        // A plain value, consistent even if a holder panicked.
        let mut last = slot.lock().unwrap_or_else(|p| p.into_inner());
        let error = outcome.err().map(std::sync::Arc::new);
        if let Some(error) = &error {
            let again = last
                .as_ref()
                .is_some_and(|old| old.to_string() == error.to_string());
            let path = path.map(|p| p.display().to_string()).unwrap_or_default();
            if again {
                tracing::debug!(store, %path, %error, "could not save the autotune store, again");
            } else {
                tracing::warn!(store, %path, %error, "could not save the autotune store");
            }
        }
        *last = error;
    }

    /// The error of the last save of `store`; `None` when it succeeded or none ran.
    pub fn last_error(&self, store: usize) -> Option<std::sync::Arc<AutotuneError>> {
        let slot = self.last_error.get(store)?;
        slot.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding this lock, and every field is valid on its own:
        // a poisoned lock still holds a consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks for `store` to be saved. Never blocks on I/O and never fails: it sets a
    /// flag, and only the request that finds the flag clear wakes the saver (a short
    /// lock, never held across a save). An unknown index is ignored.
    pub fn request(&self, store: usize) {
        let Some(flag) = self.dirty.get(store) else {
            return;
        };
        if !flag.swap(true, Ordering::AcqRel) {
            self.state().wake = true;
            self.work.notify_one();
        }
    }

    /// Asks for every store to be saved.
    pub fn request_all(&self) {
        (0..self.dirty.len()).for_each(|store| self.request(store));
    }

    /// Blocks until every save requested before this call has run (saved or failed),
    /// or returns at once when the saver has stopped.
    pub fn flush(&self) {
        let mut state = self.state();
        if state.ended {
            return;
        }
        state.asked += 1;
        let round = state.asked;
        self.work.notify_one();
        while state.done < round && !state.ended {
            state = self.finished.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Tells the saver to make one last pass and exit (idempotent).
    pub fn stop(&self) {
        self.state().stop = true;
        self.work.notify_one();
    }

    /// The saver's loop: waits for requests and saves each dirty store with `save`
    /// (its index), until [`SaveQueue::stop`]. A `save` that panics is logged and the
    /// loop goes on; the flag it cleared stays clear (the next request saves again).
    pub fn run(&self, mut save: impl FnMut(usize)) {
        let _ended = Ended(self);
        loop {
            let (stop, round) = {
                let mut state = self.state();
                while !state.wake && !state.stop && state.asked == state.done {
                    state = self.work.wait(state).unwrap_or_else(|p| p.into_inner());
                }
                state.wake = false;
                (state.stop, state.asked)
            };
            for (store, flag) in self.dirty.iter().enumerate() {
                // Clear first: a request from now on sets the flag again and gets
                // another pass, even while this save runs.
                if flag.swap(false, Ordering::AcqRel) {
                    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| save(store))) {
                        let reason = super::panics::panic_message(panic.as_ref());
                        tracing::error!(
                            store,
                            %reason,
                            "saving an autotune store panicked; the saver goes on"
                        );
                    }
                }
            }
            self.state().done = round;
            self.finished.notify_all();
            if stop {
                return;
            }
        }
    }
}

/// Marks the saver ended when its loop returns or unwinds, and wakes every flusher.
struct Ended<'a>(&'a SaveQueue);

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        self.0.state().ended = true;
        self.0.finished.notify_all();
    }
}

/// Starts the saver thread, which runs `run`: the engine's loop over its save queue
/// ([`SaveQueue::run`], saving each store it is asked to).
pub(crate) fn spawn(run: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, EngineError> {
    std::thread::Builder::new()
        .name(THREAD_NAME.to_owned())
        .spawn(run)
        .map_err(|e| EngineError::Spawn {
            thread: THREAD_NAME.to_owned(),
            reason: e.to_string(),
        })
}

#[cfg(all(test, not(photofinish_loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::time::Duration;

    /// A saver thread whose every save reports on `started` and then waits for a
    /// go-ahead on the returned sender, counting saves per store.
    struct Held {
        queue: Arc<SaveQueue>,
        saves: Arc<Vec<AtomicUsize>>,
        started: mpsc::Receiver<usize>,
        go: mpsc::Sender<()>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Held {
        fn new(stores: usize) -> Self {
            let queue = Arc::new(SaveQueue::new(stores));
            let saves: Arc<Vec<AtomicUsize>> =
                Arc::new((0..stores).map(|_| AtomicUsize::new(0)).collect());
            let (started_tx, started) = mpsc::channel();
            let (go, go_rx) = mpsc::channel::<()>();
            let thread = {
                let queue = Arc::clone(&queue);
                let saves = Arc::clone(&saves);
                std::thread::spawn(move || {
                    queue.run(|store| {
                        let _ = started_tx.send(store);
                        // Dropped sender (test over): save at once.
                        let _ = go_rx.recv();
                        saves[store].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    })
                })
            };
            Held {
                queue,
                saves,
                started,
                go,
                thread: Some(thread),
            }
        }

        fn saves(&self, store: usize) -> usize {
            self.saves[store].load(std::sync::atomic::Ordering::SeqCst)
        }

        fn next_save(&self) -> usize {
            self.started
                .recv_timeout(Duration::from_secs(10))
                .expect("the saver starts a save")
        }
    }

    impl Drop for Held {
        fn drop(&mut self) {
            self.queue.stop();
            let (go, _) = mpsc::channel();
            drop(std::mem::replace(&mut self.go, go));
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    #[test]
    fn a_burst_of_requests_during_a_save_coalesces_into_one_more_save() {
        let held = Held::new(2);
        held.queue.request(0);
        assert_eq!(held.next_save(), 0);
        // The first save is running (held); a thousand requests arrive meanwhile.
        for _ in 0..1000 {
            held.queue.request(0);
        }
        held.go.send(()).unwrap();
        assert_eq!(
            held.next_save(),
            0,
            "the requests during the save get a save"
        );
        held.go.send(()).unwrap();
        held.queue.flush();
        assert_eq!(held.saves(0), 2, "1001 requests, 2 saves");
        assert_eq!(held.saves(1), 0, "a store nobody asked for is not saved");
    }

    #[test]
    fn flush_waits_for_the_save_in_progress_and_returns_after_stop() {
        let held = Held::new(1);
        held.queue.request(0);
        assert_eq!(held.next_save(), 0);
        let flusher = {
            let queue = Arc::clone(&held.queue);
            let saves = Arc::clone(&held.saves);
            std::thread::spawn(move || {
                queue.flush();
                saves[0].load(std::sync::atomic::Ordering::SeqCst)
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            !flusher.is_finished(),
            "flush returned before the save ended"
        );
        held.go.send(()).unwrap();
        assert_eq!(
            flusher.join().unwrap(),
            1,
            "flush saw the save it waited for"
        );
        held.queue.stop();
        // Wait for the loop to end; from then on a flush must not block.
        for _ in 0..1000 {
            if held.queue.state().ended {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(held.queue.state().ended, "the saver stopped");
        held.queue.flush();
    }

    #[test]
    fn a_panicking_save_does_not_stop_the_saver() {
        let queue = Arc::new(SaveQueue::new(1));
        let calls = Arc::new(AtomicUsize::new(0));
        let saver = {
            let queue = Arc::clone(&queue);
            let calls = Arc::clone(&calls);
            std::thread::spawn(move || {
                queue.run(|_| {
                    if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                        panic!("injected: the first save panics");
                    }
                })
            })
        };
        queue.request(0);
        queue.flush();
        queue.request(0);
        queue.flush();
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
        queue.stop();
        saver.join().expect("the saver's loop survived the panic");
    }

    #[test]
    fn a_request_before_stop_is_saved_by_the_last_pass() {
        let queue = Arc::new(SaveQueue::new(3));
        let saved = Arc::new(Mutex::new(Vec::new()));
        queue.request(2);
        queue.request(0);
        queue.request(7); // unknown: ignored
        queue.stop();
        {
            let saved = Arc::clone(&saved);
            queue.run(move |store| saved.lock().unwrap().push(store));
        }
        assert_eq!(*saved.lock().unwrap(), vec![0, 2]);
    }
}
