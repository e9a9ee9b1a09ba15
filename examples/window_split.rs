//! Where a window of batches spends its time with one producer (issue #6,
//! `engine_overhead`'s one-producer line): the producer builds a window of empty batches
//! of an adopted kernel on the CPU backend, submits it (in one `Engine::submit_many`
//! call, or with one `Engine::submit` per batch), waits until every answer is in, and
//! then takes the answers. Prints, per batch, the mean time of each of those four
//! phases, and how many of the device's workers (queues) answered a window.
//!
//! ```text
//! cargo run --release --example window_split -- [--window 64] [--rounds 3000]
//! ```
//!
//! The phases run one after the other here, so they add up; in `engine_overhead` the
//! producer takes each answer as soon as it is in, so the last two overlap there.

use std::collections::HashSet;
use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../benches/common/empty.rs"]
mod empty;

use empty::{empty_plan, engine_with_adopted_kernel};
use photofinish::backend::cpu::CpuBackend;
use photofinish::{Batch, Engine, KernelId, Ticket};

/// The time each phase took over a run, and the queues that answered each window,
/// summed.
#[derive(Default)]
struct Split {
    build: Duration,
    submit: Duration,
    drain: Duration,
    take: Duration,
    queues: usize,
}

/// Runs `rounds` windows of `window` batches, submitted in one call or one by one.
fn run(
    engine: &Engine,
    kernel: KernelId,
    window: usize,
    rounds: usize,
    many: bool,
) -> Result<Split, Box<dyn Error>> {
    let mut split = Split::default();
    for _ in 0..rounds {
        let t0 = Instant::now();
        let batches: Vec<Batch> = (0..window)
            .map(|_| Batch::with_plan(kernel, empty_plan()))
            .collect();
        let t1 = Instant::now();
        let tickets: Vec<Ticket> = if many {
            engine.submit_many(batches)?
        } else {
            batches
                .into_iter()
                .map(|b| engine.submit(b))
                .collect::<Result<_, _>>()?
        };
        let t2 = Instant::now();
        for ticket in &tickets {
            while !ticket.is_ready() {
                std::hint::spin_loop();
            }
        }
        let t3 = Instant::now();
        let mut queues = HashSet::new();
        for ticket in tickets {
            queues.insert(ticket.wait()?.queue);
        }
        let t4 = Instant::now();
        split.build += t1 - t0;
        split.submit += t2 - t1;
        split.drain += t3 - t2;
        split.take += t4 - t3;
        split.queues += queues.len();
    }
    Ok(split)
}

/// `--name value` from the command line, or `default`.
fn arg(name: &str, default: usize) -> Result<usize, Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => {
            let value = args.get(i + 1).ok_or(format!("{name} needs a value"))?;
            Ok(value.parse().map_err(|e| format!("{name} {value}: {e}"))?)
        }
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let window = arg("--window", 64)?.max(1);
    let rounds = arg("--rounds", 3000)?.max(1);
    let (engine, kernel) = engine_with_adopted_kernel(Arc::new(CpuBackend::new()?))?;
    println!(
        "window_split: {} workers (CPU backend queues), windows of {window}, {rounds} per line",
        engine.worker_count()
    );
    println!("ns per batch: build / submit / drain (until the last answer is in) / take");
    for round in 0..2 {
        for many in [true, false] {
            let split = run(&engine, kernel, window, rounds, many)?;
            let per = |d: Duration| d.as_nanos() as f64 / (rounds * window) as f64;
            println!(
                "{} (round {}): {:.0} / {:.0} / {:.0} / {:.0} = {:.0} ns; {:.1} queues a window",
                if many { "submit_many" } else { "submit     " },
                round + 1,
                per(split.build),
                per(split.submit),
                per(split.drain),
                per(split.take),
                per(split.build + split.submit + split.drain + split.take),
                split.queues as f64 / rounds as f64
            );
        }
    }
    Ok(())
}
