//! Soak (issue #7): a sustained run of the engine with random kernels, random inputs
//! and injected faults, measuring throughput, latency and memory growth.
//!
//! `PHOTOFINISH_SOAK_SECS` sets the length (default 20 s, the CI size); the figures in
//! BENCHMARKS.md come from a 60 s run:
//! `PHOTOFINISH_SOAK_SECS=60 cargo test --release --test soak -- --nocapture`.
//!
//! The engine runs on the fault-injection `TestBackend` (two queue families of two
//! queues), with every built-in workload plus the test workloads registered. Each second
//! the injector arms a random fault: a panic or a driver error on a random variant, or a
//! corrupted output on a speculative one. What must hold: every accepted batch is
//! answered exactly once; every `Ok` answer equals the workload's CPU reference (a
//! corrupted output of a raced batch is never returned; an adopted variant, which runs
//! alone between audit races, may return at most one corrupted answer per corrupting
//! dispatch before its audit rejects it); the only errors are the typed
//! "failed on two queues" of a doubly-faulted batch; RSS does not grow.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use photofinish::kernels::{InputShape, Workload};
use photofinish::{
    Arm, Batch, ByteSumWorkload, Engine, EngineError, FusedByteSumWorkload, InjectedFault,
    KernelId, Output, TestBackend, Ticket,
};

/// Producer threads (the machine has two cores; the workers are threads too).
const PRODUCERS: u64 = 3;
/// Tickets a producer keeps in flight before it waits for the oldest.
const WINDOW: usize = 16;
/// The largest input a batch carries.
const MAX_INPUT: usize = 4096;

fn soak_secs() -> u64 {
    std::env::var("PHOTOFINISH_SOAK_SECS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|&s| s > 0)
        .unwrap_or(20)
}

/// The page size, from the kernel's auxiliary vector (AT_PAGESZ = 6).
fn page_size() -> u64 {
    let Ok(auxv) = std::fs::read("/proc/self/auxv") else {
        return 4096;
    };
    auxv.chunks_exact(16)
        .map(|pair| {
            let word = |b: &[u8]| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8]));
            (word(&pair[..8]), word(&pair[8..]))
        })
        .find(|&(kind, _)| kind == 6)
        .map_or(4096, |(_, value)| value)
}

/// Resident set size in bytes, from /proc/self/statm (second field, in pages).
fn rss_bytes(page: u64) -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page)
}

/// Aborts the process if `done` is not set within `limit`: a hang fails, loudly.
fn watchdog(limit: Duration) -> Arc<AtomicBool> {
    let done = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&done);
    std::thread::spawn(move || {
        let started = Instant::now();
        while !flag.load(Ordering::Acquire) {
            if started.elapsed() > limit {
                eprintln!("soak watchdog: no finish within {limit:?}: deadlock or livelock");
                std::process::abort();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    done
}

struct Kernel {
    id: KernelId,
    workload: Arc<dyn Workload>,
    variants: Vec<String>,
    shapes: Vec<InputShape>,
}

/// Latency histogram with constant memory (a growing `Vec` of samples would itself
/// look like a leak): 1 µs buckets below 10 ms, 100 µs buckets up to ~1 s.
struct Latencies(Vec<u64>);

const FINE_US: u64 = 10_000;
const COARSE_BUCKETS: u64 = 10_000;

impl Default for Latencies {
    fn default() -> Self {
        Latencies(vec![0; (FINE_US + COARSE_BUCKETS) as usize])
    }
}

impl Latencies {
    fn record(&mut self, us: u64) {
        let bucket = if us < FINE_US {
            us
        } else {
            FINE_US + ((us - FINE_US) / 100).min(COARSE_BUCKETS - 1)
        };
        self.0[bucket as usize] += 1;
    }

    fn merge(&mut self, other: &Latencies) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a += b;
        }
    }

    fn count(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The bucket's lower edge in µs at quantile `q`.
    fn percentile(&self, q: f64) -> u64 {
        let rank = ((self.count().saturating_sub(1)) as f64 * q).round() as u64;
        let mut seen = 0;
        for (bucket, &n) in self.0.iter().enumerate() {
            seen += n;
            if seen > rank {
                let bucket = bucket as u64;
                return if bucket < FINE_US {
                    bucket
                } else {
                    FINE_US + (bucket - FINE_US) * 100
                };
            }
        }
        0
    }
}

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    /// Corrupted answers of an adopted variant, returned before an audit caught it.
    unchecked_wrong: u64,
    latencies: Latencies,
}

fn settle(
    (ticket, kernel, input, submitted): (Ticket, usize, Vec<u8>, Instant),
    kernels: &[Kernel],
    tally: &mut Tally,
) {
    let result = ticket.wait();
    let micros = u64::try_from(submitted.elapsed().as_micros()).unwrap_or(u64::MAX);
    tally.latencies.record(micros);
    let k = &kernels[kernel];
    match result {
        Ok(answer) => {
            let right = answer.output == Output::Answer(k.workload.reference(&input));
            // An adopted speculative variant runs alone between audit races (SPEC §4):
            // its corrupted output can only be caught by the next audit. Anywhere else
            // — a raced batch, the conservative arm — a wrong answer is a bug.
            let unchecked = answer.arm == Arm::Speculative && !answer.raced;
            assert!(
                right || unchecked,
                "kernel {} returned a wrong answer from a checked arm ({:?}, raced {})",
                k.workload.name(),
                answer.arm,
                answer.raced
            );
            if right {
                tally.ok += 1;
            } else {
                tally.unchecked_wrong += 1;
            }
        }
        // A batch whose arm faulted on the first queue and again on the retry.
        Err(EngineError::Failed { .. }) => tally.failed += 1,
        Err(other) => panic!("kernel {}: unexpected error {other}", k.workload.name()),
    }
}

/// Injected panics are expected by the thousand: report them in one short line, and
/// leave every other panic to the default hook. (The default hook would also capture
/// a backtrace per injected panic when RUST_BACKTRACE is set, whose one-off ~100 MiB
/// of parsed debug info would read as memory growth.)
fn quiet_injected_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("injected fault") {
            eprintln!("soak: {message}");
        } else {
            default(info);
        }
    }));
}

#[test]
fn soak_random_kernels_with_injected_faults() {
    quiet_injected_panics();
    let secs = soak_secs();
    let done = watchdog(Duration::from_secs(secs * 3 + 60));
    let backend = Arc::new(TestBackend::new(1, 2, 2));
    let engine = Arc::new(
        Engine::builder()
            .backend_instance(backend.clone())
            .channel_capacity(128)
            .build()
            .expect("the engine builds on the test backend"),
    );
    let mut workloads: Vec<Arc<dyn Workload>> = photofinish::kernels::builtin();
    workloads.push(Arc::new(ByteSumWorkload));
    workloads.push(Arc::new(FusedByteSumWorkload));
    let kernels: Arc<Vec<Kernel>> = Arc::new(
        workloads
            .into_iter()
            .map(|workload| Kernel {
                id: engine
                    .register(Arc::clone(&workload))
                    .expect("built-in workloads register"),
                variants: workload.variants().into_iter().map(|v| v.name).collect(),
                shapes: workload.shapes(),
                workload,
            })
            .collect(),
    );

    let page = page_size();
    let stop = Arc::new(AtomicBool::new(false));
    let tallies = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (engine, kernels) = (Arc::clone(&engine), Arc::clone(&kernels));
            let (stop, tallies) = (Arc::clone(&stop), Arc::clone(&tallies));
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(0x50a4 + p);
                let mut tally = Tally::default();
                let mut in_flight = VecDeque::with_capacity(WINDOW);
                while !stop.load(Ordering::Relaxed) {
                    let kernel = rng.usize(..kernels.len());
                    let k = &kernels[kernel];
                    let shape = k.shapes[rng.usize(..k.shapes.len().max(1))];
                    let input = k
                        .workload
                        .generate(shape, rng.usize(1..MAX_INPUT), rng.u64(..));
                    let ticket = engine
                        .submit(Batch::new(k.id, input.clone()))
                        .expect("the engine accepts batches while running");
                    in_flight.push_back((ticket, kernel, input, Instant::now()));
                    if in_flight.len() == WINDOW {
                        if let Some(oldest) = in_flight.pop_front() {
                            settle(oldest, &kernels, &mut tally);
                        }
                    }
                }
                for entry in in_flight {
                    settle(entry, &kernels, &mut tally);
                }
                tallies.lock().expect("no producer panics").push(tally);
            })
        })
        .collect();

    // The injector: one random fault a second; RSS sampled at the same time.
    let mut rng = fastrand::Rng::with_seed(0xfa17);
    let mut rss = Vec::new();
    let mut injected = 0u64;
    let mut corrupting = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(1));
        rss.push(rss_bytes(page));
        let k = &kernels[rng.usize(..kernels.len())];
        let variant = &k.variants[rng.usize(..k.variants.len())];
        let fault = match rng.u8(..3) {
            0 => InjectedFault::Panic,
            1 => InjectedFault::Error(photofinish::backend::BackendError::Vulkan(
                "injected VK_ERROR_UNKNOWN".into(),
            )),
            _ => InjectedFault::CorruptOutput,
        };
        // A corrupted answer from the known-good variant is indistinguishable from a
        // correct one; corruption is injected into speculative variants only.
        if fault == InjectedFault::CorruptOutput && variant == &k.variants[0] {
            continue;
        }
        let times = rng.u64(1..4);
        if fault == InjectedFault::CorruptOutput {
            corrupting += times;
        }
        backend.inject(variant, fault, times);
        injected += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.join()
            .expect("a producer panicked (see its message above)");
    }
    let elapsed = started.elapsed();
    engine.shutdown();
    done.store(true, Ordering::Release);

    let tallies = std::mem::take(&mut *tallies.lock().expect("producers are done"));
    let ok: u64 = tallies.iter().map(|t| t.ok).sum();
    let failed: u64 = tallies.iter().map(|t| t.failed).sum();
    let unchecked_wrong: u64 = tallies.iter().map(|t| t.unchecked_wrong).sum();
    let mut latencies = Latencies::default();
    tallies.iter().for_each(|t| latencies.merge(&t.latencies));
    let batches = ok + failed + unchecked_wrong;
    assert_eq!(latencies.count(), batches, "every ticket answered once");
    assert!(batches > 0, "the soak ran no batches");
    // Memory: the first quarter of the run warms caches and pools; after it, RSS must
    // stay flat (the budget allows allocator noise, not a per-batch leak).
    eprintln!(
        "RSS samples (MiB): {:?}",
        rss.iter().map(|&b| b >> 20).collect::<Vec<_>>()
    );
    let warm = rss[rss.len() / 4];
    let last = rss.last().copied().unwrap_or(warm);
    let peak = rss.iter().copied().max().unwrap_or(warm);
    let growth = last.saturating_sub(warm);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    eprintln!(
        "soak: {secs} s, {batches} batches ({ok} ok, {failed} failed twice, \
         {unchecked_wrong} corrupted answers of an adopted variant before its audit), {:.0} batches/s, \
         latency p50 {} us p99 {} us, {injected} faults injected, \
         RSS after warm-up {:.1} MiB, at end {:.1} MiB, peak {:.1} MiB, growth {:.2} MiB",
        batches as f64 / elapsed.as_secs_f64(),
        latencies.percentile(0.50),
        latencies.percentile(0.99),
        mib(warm),
        mib(last),
        mib(peak),
        mib(growth),
    );
    assert!(
        growth < 16 * 1024 * 1024,
        "RSS grew {:.1} MiB after warm-up: a leak",
        mib(growth)
    );
    // Each corrupting dispatch can spoil at most one answer.
    assert!(
        unchecked_wrong <= corrupting,
        "{unchecked_wrong} wrong answers from {corrupting} corrupting dispatches"
    );
    // Faults cost at most a few batches each; nearly every batch must succeed.
    assert!(
        failed <= injected * 4,
        "{failed} failures for {injected} injected faults"
    );
}
