//! loom model of concurrent `Engine::shutdown` calls (`Gate::shut_down_once`): two
//! threads shut the engine down while a producer is blocked inside `submit` on a full
//! mailbox that a worker drains. Whatever the interleaving, both shutdown calls return
//! (loom fails the model with "deadlock" if some interleaving leaves every thread
//! blocked), neither returns before the shutdown is complete (workers joined, final
//! save done), the producer's batch, when admitted, is answered, and the final save
//! comes after every answer.
//!
//! The engine is modelled by what its shutdown touches: the real gate, a bounded
//! mailbox of one message (a loom-visible `Mutex<VecDeque>` with two condvars, the
//! blocking send of the real mailbox), one worker that answers batches until it takes
//! a stop message, the workers' join handles behind a mutex as `Engine` keeps them, and
//! the final save as a flag the closer sets after the join.
//!
//! `the_old_shutdown_deadlocks` runs the same model on a copy of the shutdown before
//! issue #25 (every caller closes and waits, then joins whatever workers it finds while
//! holding their lock; only the caller that closed the gate sends the stop messages):
//! loom must find the deadlock. `a_second_caller_returning_early_is_caught` runs it on a
//! shutdown whose second caller returns at once: loom must find it returning before the
//! shutdown is complete. Either passing unnoticed would mean the model lost its teeth.
#![cfg(photofinish_loom)]

use std::collections::VecDeque;

use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread::{self, JoinHandle};

use photofinish::protocol::Gate;

enum Msg {
    Run,
    Stop,
}

/// A bounded mailbox: `send` blocks while it is full, `recv` while it is empty.
struct Mailbox {
    queue: Mutex<VecDeque<Msg>>,
    capacity: usize,
    not_full: Condvar,
    not_empty: Condvar,
}

impl Mailbox {
    fn new(capacity: usize) -> Self {
        Mailbox {
            queue: Mutex::new(VecDeque::new()),
            capacity,
            not_full: Condvar::new(),
            not_empty: Condvar::new(),
        }
    }

    fn send(&self, msg: Msg) {
        let mut queue = self.queue.lock().unwrap();
        while queue.len() >= self.capacity {
            queue = self.not_full.wait(queue).unwrap();
        }
        queue.push_back(msg);
        self.not_empty.notify_all();
    }

    fn recv(&self) -> Msg {
        let mut queue = self.queue.lock().unwrap();
        loop {
            if let Some(msg) = queue.pop_front() {
                self.not_full.notify_all();
                return msg;
            }
            queue = self.not_empty.wait(queue).unwrap();
        }
    }
}

/// What `Engine::shutdown` works on.
struct Engine {
    gate: Gate,
    mailbox: Mailbox,
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// Batches the worker answered.
    answered: AtomicUsize,
    /// The answers the final save saw (set once, by the final save).
    saved_answers: AtomicUsize,
    /// Set by the final save, after the workers are joined.
    finished: AtomicBool,
}

impl Engine {
    /// The stop messages, the join, the final save: what the closer does.
    fn stop_join_and_save(&self) {
        let mut workers = self.workers.lock().unwrap();
        for _ in workers.iter() {
            self.mailbox.send(Msg::Stop);
        }
        for handle in workers.drain(..) {
            handle.join().unwrap();
        }
        drop(workers);
        self.saved_answers
            .store(self.answered.load(Ordering::Acquire), Ordering::Release);
        self.finished.store(true, Ordering::Release);
    }
}

/// `Engine::shutdown` as it is.
fn shutdown(engine: &Engine) {
    engine.gate.shut_down_once(|| engine.stop_join_and_save());
}

/// `Engine::shutdown` before issue #25: every caller closes and waits for the
/// producers, then takes the workers' lock and joins; only the closer sends the stops
/// and saves.
fn old_shutdown(engine: &Engine) {
    let closed_now = engine.gate.close_and_wait();
    let mut workers = engine.workers.lock().unwrap();
    if closed_now {
        for _ in workers.iter() {
            engine.mailbox.send(Msg::Stop);
        }
    }
    for handle in workers.drain(..) {
        handle.join().unwrap();
    }
    drop(workers);
    if closed_now {
        engine
            .saved_answers
            .store(engine.answered.load(Ordering::Acquire), Ordering::Release);
        engine.finished.store(true, Ordering::Release);
    }
}

/// A shutdown whose callers other than the closer return at once.
fn early_return_shutdown(engine: &Engine) {
    if engine.gate.is_closed() {
        return;
    }
    shutdown(engine);
}

/// Two shutdown calls (the main thread and one more) race a producer blocked on the
/// full mailbox while the worker drains it. `check_complete`: each call, once it
/// returns, asserts that the shutdown is complete (off for the old shutdown, whose
/// model looks for its deadlock alone).
fn two_closers_and_a_blocked_producer(shutdown: fn(&Engine), check_complete: bool) {
    let returned = move |engine: &Engine| {
        assert!(
            !check_complete || engine.finished.load(Ordering::Acquire),
            "a shutdown call returned before the shutdown was complete"
        );
    };
    loom::model(move || {
        let engine = Arc::new(Engine {
            gate: Gate::with_shards(1),
            mailbox: Mailbox::new(1),
            workers: Mutex::new(Vec::new()),
            answered: AtomicUsize::new(0),
            saved_answers: AtomicUsize::new(usize::MAX),
            finished: AtomicBool::new(false),
        });
        // A batch accepted earlier fills the mailbox: the producer blocks until the
        // worker takes it.
        engine.mailbox.send(Msg::Run);
        let worker = {
            let engine = Arc::clone(&engine);
            thread::spawn(move || loop {
                match engine.mailbox.recv() {
                    Msg::Run => {
                        engine.answered.fetch_add(1, Ordering::AcqRel);
                    }
                    Msg::Stop => return,
                }
            })
        };
        engine.workers.lock().unwrap().push(worker);
        let producer = {
            let engine = Arc::clone(&engine);
            thread::spawn(move || match engine.gate.enter_through(0) {
                Some(_pass) => {
                    engine.mailbox.send(Msg::Run);
                    true
                }
                None => false,
            })
        };
        let closer = {
            let engine = Arc::clone(&engine);
            thread::spawn(move || {
                shutdown(&engine);
                returned(&engine);
            })
        };
        shutdown(&engine);
        returned(&engine);
        closer.join().unwrap();
        let admitted = producer.join().unwrap();
        let expected = 1 + usize::from(admitted);
        assert_eq!(
            engine.answered.load(Ordering::Acquire),
            expected,
            "an accepted batch went unanswered"
        );
        assert_eq!(
            engine.saved_answers.load(Ordering::Acquire),
            expected,
            "the final save came before an answer"
        );
    });
}

#[test]
fn concurrent_shutdowns_with_a_producer_blocked_on_a_full_mailbox_all_return() {
    two_closers_and_a_blocked_producer(shutdown, true);
}

#[test]
#[should_panic(expected = "deadlock")]
fn the_old_shutdown_deadlocks() {
    two_closers_and_a_blocked_producer(old_shutdown, false);
}

#[test]
#[should_panic(expected = "returned before the shutdown was complete")]
fn a_second_caller_returning_early_is_caught() {
    two_closers_and_a_blocked_producer(early_return_shutdown, true);
}
