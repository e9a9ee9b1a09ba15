//! What the fleet store costs the engine's callers (feature `redis`; needs
//! `redis-server` on the PATH, which it starts on a free loopback port).
//!
//! A trace where every tenth batch changes a verdict: one producer submits 4 KiB
//! batches of the test backend's byte sum, a new application key every 10 batches (each
//! key: 8 races, then adopted — one verdict change, which the fleet publishes, and one
//! fleet lookup when the key is made). The same trace runs on an engine without a fleet
//! (the baseline) and on one sharing through Redis, alternately, `ROUNDS` times each;
//! it prints the median wall time per batch of each and their ratio, and the
//! difference per verdict change. The worker's part of a verdict change is one channel
//! send, so the difference should be within the rounds' spread. Last, the cost of that
//! send alone: `try_send` of a message of the engine's offer's size (160 bytes, `Copy`)
//! on a bounded channel of 4 096, the link thread's.
//!
//! `cargo bench --features redis --bench fleet`

#[path = "../tests/support/redis.rs"]
mod redis_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use photofinish::{Batch, ByteSumWorkload, Engine, TestBackend};

const ROUNDS: usize = 9;
const KEYS: u64 = 400;
const BATCHES_PER_KEY: u64 = 10;

fn backend() -> Arc<TestBackend> {
    let backend = Arc::new(TestBackend::new(1, 2, 1));
    backend.set_kernel_cost(ByteSumWorkload::CONSERVATIVE, 50_000, 10);
    backend.set_kernel_cost(ByteSumWorkload::SPECULATIVE, 1_000, 100);
    backend
}

/// Runs the trace; returns wall nanoseconds per batch. `round` keeps every round's
/// application keys apart, so that no round starts from an earlier round's verdicts.
fn trace(url: Option<&str>, round: u64) -> f64 {
    let backend = backend();
    let builder = Engine::builder()
        .backend_instance(backend)
        .without_autotune_file()
        .without_fleet()
        .audit_period(0)
        .max_keys_per_kernel(KEYS as usize * 2);
    let builder = match url {
        Some(url) => builder.fleet(url),
        None => builder,
    };
    let engine = builder.build().expect("build");
    let k = engine
        .register(Arc::new(ByteSumWorkload))
        .expect("register");
    let input: Arc<[u8]> = vec![7u8; 4 << 10].into();
    let start = Instant::now();
    for i in 0..KEYS * BATCHES_PER_KEY {
        let app = (round << 32) | (i / BATCHES_PER_KEY);
        let batch = Batch::new(k, Arc::clone(&input)).with_tuning_key(app);
        engine
            .submit(batch)
            .expect("submit")
            .wait()
            .expect("answer");
    }
    let ns = start.elapsed().as_nanos() as f64 / (KEYS * BATCHES_PER_KEY) as f64;
    if url.is_some() {
        assert!(engine.flush_fleet(Duration::from_secs(30)), "fleet flush");
        let stats = engine.fleet().expect("fleet").stats();
        assert_eq!(stats.dropped, 0);
    }
    ns
}

/// Nanoseconds per `try_send` of a 160-byte message on a bounded channel of 4 096:
/// (into a channel nobody drains meanwhile, emptied between runs — the send alone;
/// while another thread drains it as fast as it can — sends and receives fighting
/// over the channel's lines, a bound no engine reaches: a verdict change comes at most
/// once per race).
fn send_ns() -> (f64, f64) {
    const SENDS: u64 = 4000;
    const RUNS: u64 = 250;
    let (tx, rx) = crossbeam_channel::bounded::<[u64; 20]>(4096);
    let mut alone = Duration::ZERO;
    for run in 0..RUNS {
        let start = Instant::now();
        for i in 0..SENDS {
            let _ = tx.try_send([run ^ i; 20]);
        }
        alone += start.elapsed();
        while rx.try_recv().is_ok() {}
    }
    let drain = std::thread::spawn(move || rx.iter().count());
    let start = Instant::now();
    for i in 0..SENDS * RUNS {
        let _ = tx.try_send([i; 20]);
    }
    let drained = start.elapsed();
    drop(tx);
    let _ = drain.join();
    let per = |d: Duration| d.as_nanos() as f64 / (SENDS * RUNS) as f64;
    (per(alone), per(drained))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let Some(server) = redis_support::start() else {
        return;
    };
    let url = server.url();
    // Warm-up: one of each, not counted.
    trace(None, 1000);
    trace(Some(&url), 1001);
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS as u64 {
        off.push(trace(None, 2 * round));
        on.push(trace(Some(&url), 2 * round + 1));
    }
    let spread = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        (lo, hi)
    };
    let (m_off, m_on) = (median(off.clone()), median(on.clone()));
    println!(
        "fleet/verdict-trace: {} batches, a verdict change every {BATCHES_PER_KEY}",
        KEYS * BATCHES_PER_KEY
    );
    println!(
        "  without fleet: median {m_off:.0} ns/batch (rounds {:.0}..{:.0})",
        spread(&off).0,
        spread(&off).1
    );
    println!(
        "  with fleet:    median {m_on:.0} ns/batch (rounds {:.0}..{:.0})",
        spread(&on).0,
        spread(&on).1
    );
    println!(
        "  ratio with/without {:.3}; difference per verdict change {:+.0} ns",
        m_on / m_off,
        (m_on - m_off) * BATCHES_PER_KEY as f64
    );
    let sends: Vec<(f64, f64)> = (0..5).map(|_| send_ns()).collect();
    println!(
        "fleet/worker-send: median {:.1} ns per try_send of a 160-byte offer (drained by another thread meanwhile: {:.1} ns)",
        median(sends.iter().map(|s| s.0).collect()),
        median(sends.iter().map(|s| s.1).collect())
    );
}
