//! Stress on the CPU backend: 8 producer threads × 20 000 tiny `reduce` batches, every
//! ticket answered exactly once with the reference answer, then shutdown under load. A watchdog aborts the process
//! with a message instead of letting a deadlock hang the test run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use photofinish::backend::cpu::CpuBackend;
use photofinish::kernels::{Reduce, Workload};
use photofinish::{Batch, Engine, EngineError, Output};

#[path = "support/watchdog.rs"]
mod watchdog;
use watchdog::watchdog;

const PRODUCERS: u64 = 8;
const BATCHES_PER_PRODUCER: u64 = 20_000;
/// Tickets a producer keeps in flight before it waits for the oldest.
const WINDOW: usize = 64;

fn input_for(producer: u64, i: u64) -> Vec<u8> {
    let n = (i % 13) as usize;
    (0..n)
        .map(|j| (producer * 31 + i + j as u64) as u8)
        .collect()
}

/// A CPU-backend engine with `queues` queues (so `queues` workers).
fn engine(queues: usize) -> Arc<Engine> {
    engine_with(queues, Engine::builder())
}

/// [`engine`] from `builder`.
fn engine_with(queues: usize, builder: photofinish::EngineBuilder) -> Arc<Engine> {
    let backend = CpuBackend::with_threads(queues).expect("the CPU backend opens");
    Arc::new(
        builder
            .backend_instance(Arc::new(backend))
            .without_autotune_file()
            .channel_capacity(256)
            .build()
            .expect("engine builds"),
    )
}

#[test]
fn eight_producers_every_ticket_answered_exactly_once() {
    let done = watchdog("stress: 8 x 20 000 batches", Duration::from_secs(120));
    let engine = engine(4);
    let k = engine.register(Arc::new(Reduce)).unwrap();
    let answered = Arc::new(AtomicU64::new(0));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let engine = Arc::clone(&engine);
            let answered = Arc::clone(&answered);
            std::thread::Builder::new()
                .name(format!("producer-{p}"))
                .spawn(move || {
                    let mut in_flight = std::collections::VecDeque::with_capacity(WINDOW);
                    let check = |(ticket, input): (photofinish::Ticket, Vec<u8>)| {
                        let answer = ticket.wait().expect("no batch fails");
                        assert_eq!(answer.output, Output::Answer(Reduce.reference(&input)));
                        answered.fetch_add(1, Ordering::Relaxed);
                    };
                    for i in 0..BATCHES_PER_PRODUCER {
                        let input = input_for(p, i);
                        let ticket = engine.submit(Batch::new(k, input.clone())).unwrap();
                        in_flight.push_back((ticket, input));
                        if in_flight.len() == WINDOW {
                            check(in_flight.pop_front().unwrap());
                        }
                    }
                    in_flight.into_iter().for_each(check);
                })
                .unwrap()
        })
        .collect();
    for p in producers {
        p.join().expect("producer panicked");
    }
    engine.shutdown();
    assert_eq!(
        answered.load(Ordering::Relaxed),
        PRODUCERS * BATCHES_PER_PRODUCER
    );
    let _ = done.send(());
}

#[test]
fn shutdown_under_load_answers_every_accepted_batch() {
    let done = watchdog("stress: shutdown under load", Duration::from_secs(60));
    let engine = engine(2);
    let k = engine.register(Arc::new(Reduce)).unwrap();
    let start = Arc::new(Barrier::new(PRODUCERS as usize + 1));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let engine = Arc::clone(&engine);
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                let mut accepted = Vec::new();
                for i in 0.. {
                    let input = input_for(p, i);
                    match engine.submit(Batch::new(k, input.clone())) {
                        Ok(ticket) => accepted.push((ticket, input)),
                        Err(EngineError::ShutDown) => break,
                        Err(e) => panic!("unexpected submit error: {e}"),
                    }
                }
                // Shutdown returned only after draining, but this thread may see the
                // refusal before it returns, so wait (each answer exactly once).
                let n = accepted.len() as u64;
                for (ticket, input) in accepted {
                    let answer = ticket.wait().expect("accepted batch answered");
                    assert_eq!(answer.output, Output::Answer(Reduce.reference(&input)));
                }
                n
            })
        })
        .collect();
    start.wait();
    // Let the producers fill the mailbox, then shut down while they still submit.
    let mut warm = Vec::new();
    for i in 0..2_000 {
        warm.push(engine.submit(Batch::new(k, input_for(99, i))).unwrap());
    }
    engine.shutdown();
    for t in warm {
        assert!(t.is_ready(), "shutdown returned before draining");
    }
    let total: u64 = producers.into_iter().map(|p| p.join().unwrap()).sum();
    assert!(total > 0);
    let _ = done.send(());
}

/// Bursts with pauses longer than a worker's search window, on 8 workers of which one
/// searches at a time: between bursts the workers fall asleep on the mailbox's
/// doorbell, and every burst must wake enough of them to be answered — a lost wake-up
/// would leave a batch queued with every worker asleep, and the watchdog fire.
#[test]
fn bursts_wake_workers_asleep_on_the_doorbell() {
    let done = watchdog("stress: bursts after pauses", Duration::from_secs(60));
    bursts_after_pauses(engine(8));
    let _ = done.send(());
}

/// The same with the workers and callers busy-waiting before they yield and park
/// (`EngineBuilder::busy_wait`, on by default only where cores are spare): a waiter
/// that busy-waits must still fall asleep and be woken.
#[test]
fn bursts_wake_busy_waiting_workers() {
    let done = watchdog(
        "stress: bursts after pauses, busy waits",
        Duration::from_secs(60),
    );
    bursts_after_pauses(engine_with(
        8,
        Engine::builder().busy_wait(photofinish::DEFAULT_BUSY_WAIT),
    ));
    let _ = done.send(());
}

/// Three producers submit bursts with pauses between, longer than a waiter's poll
/// window; every answer is checked.
fn bursts_after_pauses(engine: Arc<Engine>) {
    const BURSTS: u64 = 200;
    const BURST: u64 = 24;
    let k = engine.register(Arc::new(Reduce)).unwrap();
    let producers: Vec<_> = (0..3)
        .map(|p| {
            let engine = Arc::clone(&engine);
            std::thread::spawn(move || {
                for b in 0..BURSTS {
                    let tickets: Vec<_> = (0..BURST)
                        .map(|i| {
                            let input = input_for(p, b * BURST + i);
                            let ticket = engine.submit(Batch::new(k, input.clone())).unwrap();
                            (ticket, input)
                        })
                        .collect();
                    for (ticket, input) in tickets {
                        let answer = ticket.wait().expect("no batch fails");
                        assert_eq!(answer.output, Output::Answer(Reduce.reference(&input)));
                    }
                    // Longer than the workers' search window (100 µs): they sleep.
                    std::thread::sleep(Duration::from_micros(300 + 200 * p));
                }
            })
        })
        .collect();
    for p in producers {
        p.join().expect("producer panicked");
    }
    engine.shutdown();
}
