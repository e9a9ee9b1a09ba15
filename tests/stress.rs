//! Stress on the CPU backend: 8 producer threads × 20 000 tiny `reduce` batches, every
//! ticket answered exactly once with the reference answer, then shutdown under load;
//! the same with the batches submitted in windows (`submit_many`); bursts after pauses
//! that put the workers to sleep; several threads shutting down at once while producers
//! are blocked on a full mailbox. A watchdog aborts the process with a message instead
//! of letting a deadlock hang the test run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use photofinish::backend::cpu::CpuBackend;
use photofinish::kernels::{Reduce, Workload};
use photofinish::{
    Batch, ByteSumWorkload, Engine, EngineError, KernelId, Output, TestBackend, Ticket,
};

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
    shutdown_under_load("stress: shutdown under load", |engine, k, p, i| {
        let input = input_for(p, i);
        let ticket = engine.submit(Batch::new(k, input.clone()))?;
        Ok(vec![(ticket, input)])
    });
}

/// What a producer of [`shutdown_under_load`] submits at its `i`-th step: the tickets
/// with their inputs, or the refusal.
type Step = fn(&Engine, KernelId, u64, u64) -> Result<Vec<(Ticket, Vec<u8>)>, EngineError>;

/// Eight producers submit with `step` until they are refused while the main thread
/// fills the mailbox and shuts down once each producer has had a step accepted: every
/// batch accepted before the refusal is answered with the reference answer, and
/// shutdown returns only after draining.
fn shutdown_under_load(label: &'static str, step: Step) {
    let done = watchdog(label, Duration::from_secs(60));
    let engine = engine(2);
    let k = engine.register(Arc::new(Reduce)).unwrap();
    let start = Arc::new(Barrier::new(PRODUCERS as usize + 1));
    // Producers with a step accepted: the shutdown waits for all of them, so it lands
    // while they submit however the threads are scheduled (on a loaded machine the main
    // thread could fill its share before any producer ran).
    let submitting = Arc::new(AtomicU64::new(0));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let engine = Arc::clone(&engine);
            let start = Arc::clone(&start);
            let submitting = Arc::clone(&submitting);
            std::thread::spawn(move || {
                start.wait();
                let mut accepted = Vec::new();
                for i in 0.. {
                    match step(&engine, k, p, i) {
                        Ok(tickets) => {
                            if i == 0 {
                                submitting.fetch_add(1, Ordering::Relaxed);
                            }
                            accepted.extend(tickets)
                        }
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
    for i in 0.. {
        warm.extend(step(&engine, k, 99, i).unwrap());
        if warm.len() >= 2_000 && submitting.load(Ordering::Relaxed) == PRODUCERS {
            break;
        }
    }
    engine.shutdown();
    for (t, _) in warm {
        assert!(t.is_ready(), "shutdown returned before draining");
    }
    let total: u64 = producers.into_iter().map(|p| p.join().unwrap()).sum();
    assert!(
        total >= PRODUCERS,
        "{total} batches accepted from the producers"
    );
    let _ = done.send(());
}

/// Bursts with pauses longer than a worker's search window, on 8 workers of which one
/// searches at a time: between bursts the workers fall asleep on the mailbox's
/// doorbell, and every burst must wake enough of them to be answered — a lost wake-up
/// would leave a batch queued with every worker asleep, and the watchdog fire.
#[test]
fn bursts_wake_workers_asleep_on_the_doorbell() {
    let done = watchdog("stress: bursts after pauses", Duration::from_secs(60));
    bursts_after_pauses(engine(8), false);
    let _ = done.send(());
}

/// The same with each burst submitted in one `submit_many`: one ring for the whole
/// burst, which the workers that take its copies must pass on to the sleepers.
#[test]
fn windows_after_pauses_wake_workers_asleep_on_the_doorbell() {
    let done = watchdog("stress: windows after pauses", Duration::from_secs(60));
    bursts_after_pauses(engine(8), true);
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
    bursts_after_pauses(
        engine_with(
            8,
            Engine::builder().busy_wait(photofinish::DEFAULT_BUSY_WAIT),
        ),
        false,
    );
    let _ = done.send(());
}

/// Three producers submit bursts with pauses between, longer than a waiter's poll
/// window (each burst in one `submit_many` where `windowed`); every answer is checked.
fn bursts_after_pauses(engine: Arc<Engine>, windowed: bool) {
    const BURSTS: u64 = 200;
    const BURST: u64 = 24;
    let k = engine.register(Arc::new(Reduce)).unwrap();
    let producers: Vec<_> = (0..3)
        .map(|p| {
            let engine = Arc::clone(&engine);
            std::thread::spawn(move || {
                for b in 0..BURSTS {
                    let inputs: Vec<_> = (0..BURST).map(|i| input_for(p, b * BURST + i)).collect();
                    let batches = inputs.iter().map(|input| Batch::new(k, input.clone()));
                    let tickets: Vec<_> = if windowed {
                        engine.submit_many(batches).unwrap()
                    } else {
                        batches.map(|batch| engine.submit(batch).unwrap()).collect()
                    };
                    let tickets = tickets.into_iter().zip(inputs);
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

/// Eight producers submit windows of 1 to 64 batches (`submit_many`) mixed with single
/// submits, on 4 workers and a mailbox of 256 (so windows' copies meet a full mailbox):
/// every ticket is answered exactly once with the reference answer.
#[test]
fn windows_from_eight_producers_every_ticket_answered_exactly_once() {
    let done = watchdog("stress: windows from 8 producers", Duration::from_secs(120));
    let engine = engine(4);
    let k = engine.register(Arc::new(Reduce)).unwrap();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let engine = Arc::clone(&engine);
            std::thread::spawn(move || {
                let mut answered = 0u64;
                let mut i = 0u64;
                while i < BATCHES_PER_PRODUCER {
                    // Window sizes cycle through 1..=64; every eighth is single submits.
                    let size = (1 + (i * 7 + p) % 64).min(BATCHES_PER_PRODUCER - i);
                    let inputs: Vec<_> = (i..i + size).map(|j| input_for(p, j)).collect();
                    let batches = inputs.iter().map(|input| Batch::new(k, input.clone()));
                    let tickets: Vec<_> = if (i / 64 + p) % 8 == 0 {
                        batches.map(|batch| engine.submit(batch).unwrap()).collect()
                    } else {
                        engine.submit_many(batches).unwrap()
                    };
                    assert_eq!(tickets.len() as u64, size);
                    for (ticket, input) in tickets.into_iter().zip(inputs) {
                        let answer = ticket.wait().expect("no batch fails");
                        assert_eq!(answer.output, Output::Answer(Reduce.reference(&input)));
                        answered += 1;
                    }
                    i += size;
                }
                answered
            })
        })
        .collect();
    let total: u64 = producers
        .into_iter()
        .map(|p| p.join().expect("producer panicked"))
        .sum();
    engine.shutdown();
    assert_eq!(total, PRODUCERS * BATCHES_PER_PRODUCER);
    let _ = done.send(());
}

/// Shutdown while eight producers submit windows of 1 to 40 batches: every window
/// accepted before the refusal is answered in full.
#[test]
fn shutdown_under_load_answers_every_accepted_window() {
    shutdown_under_load("stress: shutdown under windows", |engine, k, p, w| {
        let inputs: Vec<_> = (0..1 + w % 40).map(|j| input_for(p, w * 64 + j)).collect();
        let batches = inputs.iter().map(|input| Batch::new(k, input.clone()));
        Ok(engine
            .submit_many(batches)?
            .into_iter()
            .zip(inputs)
            .collect())
    });
}

/// Issue #25: four threads calling `shutdown` while eight producers were blocked inside
/// `submit` on a full mailbox hung within a few tries: a caller that had not closed the
/// gate joined the workers (holding them) before the one that had closed it sent the
/// stop messages, and that one waited for the workers for ever. Each round pauses the
/// backend so that the producers block on a mailbox of two, starts four shutdowns
/// together, then lets the workers drain: every shutdown returns (the watchdog aborts
/// otherwise), none before every batch accepted is answered, and each such batch gets
/// one answer, the reference answer.
#[test]
fn concurrent_shutdowns_with_producers_blocked_on_a_full_mailbox_all_return() {
    const ROUNDS: usize = 100;
    const CLOSERS: usize = 4;
    let done = watchdog(
        "stress: 4 concurrent shutdowns, 8 producers blocked on a full mailbox",
        Duration::from_secs(120),
    );
    for _ in 0..ROUNDS {
        let backend = Arc::new(TestBackend::new(1, 2, 1));
        let engine = Arc::new(
            Engine::builder()
                .backend_instance(backend.clone())
                .without_autotune_file()
                .channel_capacity(2)
                .build()
                .expect("engine builds"),
        );
        let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
        backend.pause();
        // Every batch accepted so far, with its input.
        let accepted = Arc::new(std::sync::Mutex::new(Vec::<(Ticket, Vec<u8>)>::new()));
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let engine = Arc::clone(&engine);
                let accepted = Arc::clone(&accepted);
                std::thread::spawn(move || {
                    for i in 0.. {
                        let input = input_for(p, i);
                        match engine.submit(Batch::new(k, input.clone())) {
                            Ok(ticket) => accepted.lock().unwrap().push((ticket, input)),
                            Err(EngineError::ShutDown) => break,
                            Err(e) => panic!("unexpected submit error: {e}"),
                        }
                    }
                })
            })
            .collect();
        // The workers hold a batch or two each on the paused backend, the mailbox fills,
        // and the producers block inside `submit`.
        std::thread::sleep(Duration::from_millis(5));
        let start = Arc::new(Barrier::new(CLOSERS + 1));
        let closers: Vec<_> = (0..CLOSERS)
            .map(|_| {
                let engine = Arc::clone(&engine);
                let start = Arc::clone(&start);
                let accepted = Arc::clone(&accepted);
                std::thread::spawn(move || {
                    start.wait();
                    engine.shutdown();
                    // Whichever call this was, the shutdown is complete: every batch
                    // accepted is answered.
                    for (ticket, _) in accepted.lock().unwrap().iter() {
                        assert!(
                            ticket.is_ready(),
                            "a shutdown call returned before every accepted batch was answered"
                        );
                    }
                })
            })
            .collect();
        start.wait();
        std::thread::sleep(Duration::from_millis(1));
        backend.resume();
        for closer in closers {
            closer.join().expect("closer panicked");
        }
        for producer in producers {
            producer.join().expect("producer panicked");
        }
        let accepted = std::mem::take(&mut *accepted.lock().unwrap());
        assert!(
            !accepted.is_empty(),
            "no batch was accepted before the shutdown"
        );
        // A ticket takes its one answer: the reference answer.
        for (ticket, input) in accepted {
            let answer = ticket.wait().expect("accepted batch answered");
            assert_eq!(
                answer.output,
                Output::Answer(ByteSumWorkload.reference(&input))
            );
        }
    }
    let _ = done.send(());
}
