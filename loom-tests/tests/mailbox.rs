//! loom models of the engine's mailbox protocol: the gate words (closed bit + producers
//! inside) that `shutdown` waits on, and the ticket's one-shot slot. Together they are
//! why every accepted batch gets exactly one answer, even across shutdown.
#![cfg(photofinish_loom)]

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use std::future::Future;

use photofinish::protocol::{one_shot, Gate};
use photofinish::EngineError;

/// A producer enters, "sends" (bumps the mailbox), leaves; the closer shuts the gate
/// and then reads the mailbox. Whatever the interleaving: a producer either got in
/// (and its send is visible to the closer once `close_and_wait` returns) or was
/// refused — never in between, and `close_and_wait` never misses a wake-up. The
/// producers enter through the gate words in `shards` of a gate of `words` words.
fn shutdown_sees_every_send(words: usize, shards: [usize; 2]) {
    loom::model(move || {
        let gate = Arc::new(Gate::with_shards(words));
        let mailbox = Arc::new(AtomicUsize::new(0));
        let producers: Vec<_> = shards
            .into_iter()
            .map(|shard| {
                let gate = Arc::clone(&gate);
                let mailbox = Arc::clone(&mailbox);
                thread::spawn(move || match gate.enter_through(shard) {
                    Some(_pass) => {
                        mailbox.fetch_add(1, Ordering::Relaxed);
                        true
                    }
                    None => false,
                })
            })
            .collect();
        assert!(gate.close_and_wait());
        let seen_at_close = mailbox.load(Ordering::Relaxed);
        assert_eq!(gate.inside(), 0);
        for shard in 0..words {
            assert!(
                gate.enter_through(shard).is_none(),
                "a closed gate admits nobody"
            );
        }
        let admitted = producers
            .into_iter()
            .map(|p| p.join().unwrap())
            .filter(|&a| a)
            .count();
        assert_eq!(seen_at_close, admitted, "a send slipped past shutdown");
        assert!(
            !gate.close_and_wait(),
            "closing twice reports the first close only"
        );
    });
}

#[test]
fn shutdown_sees_every_send_of_an_admitted_producer() {
    shutdown_sees_every_send(1, [0, 0]);
}

#[test]
fn shutdown_sees_every_send_through_two_gate_words() {
    shutdown_sees_every_send(2, [0, 1]);
}

/// The worker answers while the caller waits: the caller gets exactly that answer, and
/// the slot is freed once by whichever end lets go of it last (the slot's lifetime has
/// no reference count: `free` fails the model on a second free or a use after it).
#[test]
fn ticket_gets_the_answer_exactly_once() {
    loom::model(|| {
        let (responder, ticket) = one_shot::<u32>();
        let probe = ticket.probe_for_models();
        let worker = thread::spawn(move || responder.answer(Ok(7)));
        assert_eq!(ticket.wait(), Ok(7));
        worker.join().unwrap();
        assert!(probe.freed(), "the slot was never freed");
    });
}

/// A batch's payload goes back with its answer (freed on the caller's thread): once
/// the caller has the answer, the engine holds no reference to the input, in every
/// interleaving of the answer with the caller's spin and sleep.
#[test]
fn ticket_hands_the_input_back_with_the_answer() {
    loom::model(|| {
        let input: std::sync::Arc<[u8]> = std::sync::Arc::from(vec![1u8, 2]);
        let sent = std::sync::Arc::clone(&input);
        let (responder, ticket) = one_shot::<u32>();
        let worker =
            thread::spawn(move || responder.answer_sending_input_home_for_models(Ok(7), sent));
        assert_eq!(ticket.wait(), Ok(7));
        assert_eq!(std::sync::Arc::strong_count(&input), 1);
        worker.join().unwrap();
    });
}

/// A responder dropped without answering (a worker unwinding) still answers.
#[test]
fn dropped_responder_answers_with_an_error() {
    loom::model(|| {
        let (responder, ticket) = one_shot::<u32>();
        let probe = ticket.probe_for_models();
        let worker = thread::spawn(move || drop(responder));
        assert_eq!(ticket.wait(), Err(EngineError::Unanswered));
        worker.join().unwrap();
        assert!(probe.freed(), "the slot was never freed");
    });
}

/// A caller that lets go of its ticket while the worker answers: whichever lets go
/// last frees the slot, once, with the answer and the input nobody took.
#[test]
fn ticket_dropped_while_answered_is_freed_once_with_its_answer() {
    loom::model(|| {
        let input: std::sync::Arc<[u8]> = std::sync::Arc::from(vec![1u8, 2]);
        let sent = std::sync::Arc::clone(&input);
        let (responder, ticket) = one_shot::<u32>();
        let probe = ticket.probe_for_models();
        let worker =
            thread::spawn(move || responder.answer_sending_input_home_for_models(Ok(7), sent));
        drop(ticket);
        worker.join().unwrap();
        assert!(probe.freed(), "the slot was never freed");
        assert_eq!(std::sync::Arc::strong_count(&input), 1, "the input leaked");
    });
}

/// A caller whose timed wait sleeps (or gives up) while the worker answers, and which
/// then lets go of the ticket, the answer taken or not: the wake-up is not lost, the
/// answer is taken at most once, and the slot is freed once after both let go — also
/// when the worker is still notifying the sleeper as the caller lets go.
#[test]
fn timed_wait_then_drop_while_answered_frees_the_slot_once() {
    loom::model(|| {
        let (responder, ticket) = one_shot::<u32>();
        let probe = ticket.probe_for_models();
        let worker = thread::spawn(move || responder.answer(Ok(7)));
        let first = ticket.wait_timeout(std::time::Duration::from_millis(1));
        if let Some(answer) = first {
            assert_eq!(answer, Ok(7));
            assert_eq!(
                ticket.wait_timeout(std::time::Duration::ZERO),
                Some(Err(EngineError::AnswerTaken))
            );
        }
        drop(ticket);
        worker.join().unwrap();
        assert!(probe.freed(), "the slot was never freed");
    });
}

/// The ticket awaited as a `Future` while the worker answers: the poll either sees the
/// answer or registers its waker where the filler finds it (the `WAKER` bit in the
/// state word), so the future completes with exactly that answer — loom's `block_on`
/// fails the model on a lost wake-up (it would wait for ever) — and the slot is freed
/// once.
#[test]
fn an_awaited_ticket_is_woken_with_its_answer() {
    loom::model(|| {
        let (responder, ticket) = one_shot::<u32>();
        let probe = ticket.probe_for_models();
        let worker = thread::spawn(move || responder.answer(Ok(7)));
        assert_eq!(loom::future::block_on(ticket), Ok(7));
        worker.join().unwrap();
        assert!(probe.freed(), "the slot was never freed");
    });
}

/// A ticket polled once (its waker registered), then dropped before the worker
/// answers: the answer and the waker are dropped with the slot, freed once.
#[test]
fn a_polled_ticket_dropped_before_its_answer_frees_its_slot_once() {
    loom::model(|| {
        let (responder, mut ticket) = one_shot::<u32>();
        let probe = ticket.probe_for_models();
        let worker = thread::spawn(move || responder.answer(Ok(7)));
        let waker = futures_noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let polled = std::pin::Pin::new(&mut ticket).poll(&mut cx);
        assert!(matches!(
            polled,
            std::task::Poll::Ready(Ok(7)) | std::task::Poll::Pending
        ));
        drop(ticket);
        worker.join().unwrap();
        assert!(probe.freed(), "the slot was never freed");
    });
}

/// A waker that does nothing.
fn futures_noop_waker() -> std::task::Waker {
    std::task::Waker::noop().clone()
}
