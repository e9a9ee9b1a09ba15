//! loom models of the doorbell (`engine::doorbell`): a device's workers search or sleep
//! on it, producers ring after each message, and a message is never left queued with
//! every worker asleep. A lost wake-up shows here as a worker that never returns, which
//! loom reports as a deadlock. The mailbox is a loom-visible count of queued messages.
#![cfg(photofinish_loom)]

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

use photofinish::protocol::Doorbell;

/// Takes one queued message, if any.
fn take(queued: &AtomicUsize) -> Option<()> {
    queued
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .ok()
        .map(|_| ())
}

/// A worker that waits for one message on `bell`.
fn worker(bell: &Arc<Doorbell>, queued: &Arc<AtomicUsize>) -> thread::JoinHandle<()> {
    let (bell, queued) = (Arc::clone(bell), Arc::clone(queued));
    thread::spawn(move || {
        bell.wait(|| take(&queued), || queued.load(Ordering::Acquire) > 0);
    })
}

/// Queues one message and rings.
fn send(bell: &Doorbell, queued: &AtomicUsize) {
    queued.fetch_add(1, Ordering::Release);
    bell.ring();
}

/// Two workers wait for one message each while `send_two` queues two messages and
/// rings: whichever of them searched, slept or polled first, both return, nothing is
/// left queued and nobody is still counted asleep.
fn two_workers_get_two_messages(send_two: impl FnOnce(&Arc<Doorbell>, &Arc<AtomicUsize>)) {
    let bell = Arc::new(Doorbell::new(1, std::time::Duration::ZERO));
    let queued = Arc::new(AtomicUsize::new(0));
    let workers = [worker(&bell, &queued), worker(&bell, &queued)];
    send_two(&bell, &queued);
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(
        queued.load(Ordering::Acquire),
        0,
        "a message was left queued"
    );
    assert_eq!(bell.sleeping(), 0, "a worker is still counted asleep");
}

/// The two messages come from two producers.
#[test]
fn two_workers_each_get_a_message_from_two_producers() {
    loom::model(|| {
        two_workers_get_two_messages(|bell, queued| {
            let producer = {
                let (bell, queued) = (Arc::clone(bell), Arc::clone(queued));
                thread::spawn(move || send(&bell, &queued))
            };
            send(bell, queued);
            producer.join().unwrap();
        })
    });
}

/// One producer queues two messages and rings once after both (`Mailbox::send_all`, as
/// `submit_many` does): the worker that takes the first rings on for the second, so
/// both workers return.
#[test]
fn one_ring_after_two_messages_wakes_both_workers() {
    loom::model(|| {
        two_workers_get_two_messages(|bell, queued| {
            queued.fetch_add(1, Ordering::Release);
            queued.fetch_add(1, Ordering::Release);
            bell.ring();
        })
    });
}

/// One producer queues both while a single worker of two may be searching: the
/// message the searcher leaves behind wakes the other worker (the hand-on ring).
#[test]
fn a_message_left_by_a_searcher_wakes_a_sleeper() {
    loom::model(|| {
        two_workers_get_two_messages(|bell, queued| {
            send(bell, queued);
            send(bell, queued);
        })
    });
}
