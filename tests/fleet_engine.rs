//! The engine on a fleet (SPEC §13, feature `redis`) against a real `redis-server` on
//! loopback: three host processes sharing one Redis, a verdict heard live, a hostile
//! entry, Redis killed and restarted under eight producers. On the test backend, whose
//! byte-sum variants report a cost of `fixed + per byte`, so every key's winner is
//! clear (or clearly within 15 %) and a cold host's race count per key is known.
//! Each test has a watchdog, so a hang fails it.
#![cfg(feature = "redis")]

#[path = "support/redis.rs"]
mod redis_support;
#[path = "support/watchdog.rs"]
mod watchdog;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use photofinish::autotune::VerdictReason as StoredReason;
use photofinish::fleet::{Fleet, FleetEntry};
use photofinish::kernels::Workload;
use photofinish::policy::MIN_DISPATCHES_FOR_VERDICT;
use photofinish::{
    Batch, ByteSumWorkload, Engine, EngineBuilder, Event, InjectedFault, KernelId, KernelVerdict,
    PriorSource, TestBackend, TuningKey, MAX_UNDECIDED_RACES,
};
use serde::{Deserialize, Serialize};

use redis_support::eventually;
use watchdog::watchdog;

/// A backend whose speculative byte sum costs little to start and much per byte: it
/// wins 4 KiB batches by about 35x, is within 4 % at 512 KiB (never adopted: it saves
/// less than 15 %) and loses 1 MiB ones by about 1.7x.
fn flipping_backend() -> Arc<TestBackend> {
    let backend = Arc::new(TestBackend::new(1, 2, 1));
    backend.set_kernel_cost(ByteSumWorkload::CONSERVATIVE, 50_000, 10);
    backend.set_kernel_cost(ByteSumWorkload::SPECULATIVE, 1_000, 100);
    backend
}

/// An engine on `backend` sharing verdicts through `url`, with no audits (so that a
/// key's races are exactly those its verdict cost) and no transfer between keys (so
/// that every prior is the fleet's).
fn host(backend: &Arc<TestBackend>, url: Option<&str>) -> EngineBuilder {
    let b = Engine::builder()
        .backend_instance(backend.clone())
        .without_autotune_file()
        .audit_period(0)
        .key_transfer(false)
        .without_fleet();
    match url {
        Some(url) => b.fleet(url),
        None => b,
    }
}

/// An entry another host might write: `verdict` with reason `reason`, and a window
/// that claims `count` races per arm, the speculative one a million times faster.
fn written(verdict: KernelVerdict, reason: StoredReason, count: u32) -> FleetEntry {
    FleetEntry::now(photofinish::autotune::VerdictRecord {
        verdict,
        observation: photofinish::policy::SpeculationObservation {
            baseline_dispatches: count,
            baseline_mean_ns: 1_000_000,
            speculative_dispatches: count,
            speculative_mean_ns: 1,
            side_compile_cost_ns: 0,
        },
        reason,
    })
}

/// Submits one batch of `bytes` bytes (application key `app`) and checks its answer
/// against the CPU reference; returns whether it raced and which variant answered.
fn one(
    engine: &Engine,
    kernel: KernelId,
    bytes: usize,
    app: Option<u64>,
    i: usize,
) -> (bool, usize) {
    let input = vec![(i % 251) as u8; bytes];
    let expected = ByteSumWorkload.reference(&input);
    let mut batch = Batch::new(kernel, input);
    if let Some(app) = app {
        batch = batch.with_tuning_key(app);
    }
    let answer = engine.submit(batch).unwrap().wait().expect("answered");
    assert_eq!(
        answer.output,
        photofinish::Output::Answer(expected),
        "a wrong answer reached the caller (variant {})",
        answer.variant
    );
    (answer.raced, answer.variant)
}

// ---------------------------------------------------------------------------------
// Three hosts, three processes.

/// The keys every host runs: (label, bytes, application key).
const HOST_KEYS: [(&str, usize, Option<u64>); 4] = [
    ("4KiB", 4 << 10, None),
    ("4KiB/app:7", 4 << 10, Some(7)),
    ("512KiB", 512 << 10, None),
    ("1MiB", 1 << 20, None),
];
/// Batches per key per host: more than a cold host needs to give up on a key
/// (`MAX_UNDECIDED_RACES`), so every host ends with every key decided.
const HOST_BATCHES: usize = MAX_UNDECIDED_RACES as usize + 16;

/// What one host process reports.
#[derive(Debug, Serialize, Deserialize)]
struct HostReport {
    keys: BTreeMap<String, KeyReport>,
    races: u32,
    wall_ms: f64,
    /// Answers from the speculative variant before its key had raced
    /// `MIN_DISPATCHES_FOR_VERDICT` times on this host: must be none.
    early_speculative_answers: u32,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct KeyReport {
    verdict: String,
    races: u32,
    prior_source: Option<String>,
}

/// The child's side of `three_host_processes_share_every_verdict_through_one_redis`:
/// runs one host when `PHOTOFINISH_FLEET_TEST_HOST` names a report file (the parent
/// starts this test binary again with `--exact` on this test); does nothing otherwise.
#[test]
fn fleet_host_process() {
    let Ok(out) = std::env::var("PHOTOFINISH_FLEET_TEST_HOST") else {
        return;
    };
    let url = std::env::var("PHOTOFINISH_FLEET_TEST_URL").ok();
    let _dog = watchdog("a fleet host process", Duration::from_secs(120));
    let backend = flipping_backend();
    let start = Instant::now();
    let engine = host(&backend, url.as_deref()).build().expect("build");
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    let mut raced = [0u32; HOST_KEYS.len()];
    let mut early = 0;
    for i in 0..HOST_BATCHES {
        for (n, &(_, bytes, app)) in HOST_KEYS.iter().enumerate() {
            let (r, variant) = one(&engine, k, bytes, app, i);
            if variant != 0 && raced[n] < MIN_DISPATCHES_FOR_VERDICT {
                early += 1;
            }
            raced[n] += u32::from(r);
        }
    }
    assert!(
        engine.flush_fleet(Duration::from_secs(20)),
        "verdicts not flushed to Redis"
    );
    let wall_ms = start.elapsed().as_secs_f64() * 1e3;
    let stats = engine.kernel_stats(k).unwrap();
    let mut keys = BTreeMap::new();
    for s in &stats.keys {
        keys.insert(
            s.key.to_string(),
            KeyReport {
                verdict: s.verdict.to_string(),
                races: s.races,
                prior_source: s.prior_source.map(|p| p.to_string()),
            },
        );
    }
    let report = HostReport {
        races: keys.values().map(|k| k.races).sum(),
        keys,
        wall_ms,
        early_speculative_answers: early,
    };
    engine.shutdown();
    std::fs::write(&out, serde_json::to_vec(&report).unwrap()).expect("write the report");
}

/// Starts this test binary as one host process.
fn spawn_host(out: &std::path::Path, url: Option<&str>) -> std::process::Child {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args([
        "--exact",
        "fleet_host_process",
        "--test-threads=1",
        "--nocapture",
    ])
    .env("PHOTOFINISH_FLEET_TEST_HOST", out)
    .env_remove("PHOTOFINISH_FLEET_URL");
    match url {
        Some(url) => cmd.env("PHOTOFINISH_FLEET_TEST_URL", url),
        None => cmd.env_remove("PHOTOFINISH_FLEET_TEST_URL"),
    };
    cmd.spawn().expect("start a host process")
}

fn finish(mut child: std::process::Child, out: &std::path::Path, what: &str) -> HostReport {
    let status = child.wait().expect("wait for a host process");
    assert!(status.success(), "{what} failed: {status}");
    let bytes = std::fs::read(out).unwrap_or_else(|e| panic!("{what} wrote no report: {e}"));
    serde_json::from_slice(&bytes).expect("a host report")
}

#[test]
fn three_host_processes_share_every_verdict_through_one_redis() {
    let _dog = watchdog("three hosts", Duration::from_secs(300));
    let Some(server) = redis_support::start() else {
        return;
    };
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);

    // Host 1 learns alone; hosts 2 and 3 then run side by side on what it shared. Two
    // hosts without a fleet are the baseline.
    let h1 = finish(spawn_host(&path("h1"), Some(&url)), &path("h1"), "host 1");
    let (c2, c3) = (
        spawn_host(&path("h2"), Some(&url)),
        spawn_host(&path("h3"), Some(&url)),
    );
    let (h2, h3) = (
        finish(c2, &path("h2"), "host 2"),
        finish(c3, &path("h3"), "host 3"),
    );
    let (c4, c5) = (spawn_host(&path("s2"), None), spawn_host(&path("s3"), None));
    let (s2, s3) = (
        finish(c4, &path("s2"), "solo 2"),
        finish(c5, &path("s3"), "solo 3"),
    );

    println!("host            races  wall ms   per key (races)");
    for (name, r) in [
        ("1 (learns)", &h1),
        ("2 (fleet)", &h2),
        ("3 (fleet)", &h3),
        ("2 (no fleet)", &s2),
        ("3 (no fleet)", &s3),
    ] {
        let per_key: Vec<String> = r
            .keys
            .iter()
            .map(|(k, v)| format!("{k} {} {}", v.verdict, v.races))
            .collect();
        println!(
            "{name:<14} {:>6} {:>8.1}   {}",
            r.races,
            r.wall_ms,
            per_key.join(", ")
        );
    }

    // Host 1 decided every key on its own in N2's 8 races: the clear ones, and the one
    // within 4 % too (steadily under the adoption bar: rejected as inconclusive).
    let verdicts = |r: &HostReport| -> BTreeMap<String, String> {
        r.keys
            .iter()
            .map(|(k, v)| (k.clone(), v.verdict.clone()))
            .collect()
    };
    let expected: BTreeMap<String, String> = [
        ("4KiB", "adopted"),
        ("4KiB/app:7", "adopted"),
        ("512KiB", "rejected"),
        ("1MiB", "rejected"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(verdicts(&h1), expected, "host 1: {h1:?}");
    assert!(
        h1.keys
            .values()
            .all(|k| k.races == MIN_DISPATCHES_FOR_VERDICT),
        "{h1:?}"
    );
    assert!(h1.keys.values().all(|k| k.prior_source.is_none()), "{h1:?}");

    for (name, h) in [("host 2", &h2), ("host 3", &h3)] {
        assert_eq!(
            verdicts(h),
            expected,
            "{name} ends with host 1's verdicts: {h:?}"
        );
        assert_eq!(h.early_speculative_answers, 0, "{name}: {h:?}");
        for (key, k) in &h.keys {
            assert_eq!(
                k.prior_source.as_deref(),
                Some("fleet"),
                "{name} {key}: {h:?}"
            );
            let races = if k.verdict == "adopted" {
                // Only the confirmation races, no keep-racing period.
                MIN_DISPATCHES_FOR_VERDICT
            } else {
                0
            };
            assert_eq!(k.races, races, "{name} {key}: {h:?}");
        }
        assert!(h.races < h1.races, "{name}");
    }
    for (name, s) in [("solo 2", &s2), ("solo 3", &s3)] {
        assert_eq!(verdicts(s), expected, "{name}");
        assert_eq!(
            s.races, h1.races,
            "{name}: a host without the fleet learns alone"
        );
    }
}

// ---------------------------------------------------------------------------------
// Live.

#[test]
fn a_verdict_reached_on_one_host_reaches_a_running_host_live() {
    let _dog = watchdog("live fleet", Duration::from_secs(120));
    let Some(server) = redis_support::start() else {
        return;
    };
    let (ba, bb) = (flipping_backend(), flipping_backend());
    let a = host(&ba, Some(&server.url())).build().unwrap();
    let b = host(&bb, Some(&server.url())).build().unwrap();
    let ka = a.register(Arc::new(ByteSumWorkload)).unwrap();
    let kb = b.register(Arc::new(ByteSumWorkload)).unwrap();
    let large = TuningKey::for_bytes(1 << 20, None);
    let small = TuningKey::for_bytes(4 << 10, None);

    // B has begun on the large key: undecided after three races.
    for i in 0..3 {
        one(&b, kb, 1 << 20, None, i);
    }
    assert_eq!(b.verdict_for(kb, large), Some(KernelVerdict::Undecided));

    // A decides both keys and shares them.
    for i in 0..12 {
        one(&a, ka, 1 << 20, None, i);
        one(&a, ka, 4 << 10, None, i);
    }
    assert_eq!(a.verdict_for(ka, large), Some(KernelVerdict::Rejected));
    assert_eq!(a.verdict_for(ka, small), Some(KernelVerdict::Adopted));
    assert!(a.flush_fleet(Duration::from_secs(10)));

    // B's key under way takes A's rejection while B runs, with no more races.
    assert!(
        eventually(Duration::from_secs(10), || b.verdict_for(kb, large)
            == Some(KernelVerdict::Rejected)),
        "B never heard A's rejection"
    );
    let stats = b.kernel_stats(kb).unwrap();
    let l = stats.keys.iter().find(|s| s.key == large).unwrap();
    assert_eq!(l.races, 3);
    assert_eq!(l.prior_source, Some(PriorSource::Fleet));
    let runs = bb.runs(ByteSumWorkload::SPECULATIVE);
    for i in 0..20 {
        assert_eq!(one(&b, kb, 1 << 20, None, i), (false, 0));
    }
    assert_eq!(
        bb.runs(ByteSumWorkload::SPECULATIVE),
        runs,
        "a rejected prior costs no race"
    );

    // B's first batch of the small key starts from A's adoption: confirmation races,
    // conservative answers until they are in, then the speculative variant.
    let mut raced = 0;
    for i in 0..12 {
        let (r, variant) = one(&b, kb, 4 << 10, None, i);
        if variant != 0 {
            assert!(
                raced >= MIN_DISPATCHES_FOR_VERDICT,
                "answered before confirmation"
            );
        }
        raced += u32::from(r);
    }
    let stats = b.kernel_stats(kb).unwrap();
    let s = stats.keys.iter().find(|s| s.key == small).unwrap();
    assert_eq!(
        (s.verdict, s.races),
        (KernelVerdict::Adopted, MIN_DISPATCHES_FOR_VERDICT)
    );
    assert_eq!(s.prior_source, Some(PriorSource::Fleet));

    // A decided key keeps its own verdict whatever the fleet says later (after B's
    // own confirmation is in Redis, which would otherwise overwrite the forgery).
    let small_key = b.fleet_key(kb, 1, small, 0).unwrap();
    assert!(eventually(Duration::from_secs(10), || {
        b.fleet()
            .unwrap()
            .get(&small_key)
            .is_some_and(|e| e.verdict.verdict == KernelVerdict::Adopted)
    }));
    assert!(b.flush_fleet(Duration::from_secs(10)));
    let forged = written(KernelVerdict::Rejected, StoredReason::Measured, 8);
    let other = Fleet::connect(&server.url()).unwrap();
    other.publish(&b.fleet_key(kb, 1, small, 0).unwrap(), forged);
    assert!(other.flush(Duration::from_secs(10)));
    assert!(eventually(Duration::from_secs(10), || b
        .fleet()
        .unwrap()
        .get(&b.fleet_key(kb, 1, small, 0).unwrap())
        .is_some_and(|e| e.verdict.verdict == KernelVerdict::Rejected)));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(b.verdict_for(kb, small), Some(KernelVerdict::Adopted));
}

// ---------------------------------------------------------------------------------
// Hostile entries.

#[test]
fn a_hostile_fleet_entry_marking_a_wrong_variant_adopted_never_yields_a_wrong_answer() {
    let _dog = watchdog("hostile fleet entry", Duration::from_secs(120));
    let Some(server) = redis_support::start() else {
        return;
    };
    let backend = flipping_backend();
    // The speculative variant is wrong on every batch.
    backend.inject(
        ByteSumWorkload::SPECULATIVE,
        InjectedFault::CorruptOutput,
        u64::MAX,
    );
    let engine = host(&backend, Some(&server.url())).build().unwrap();
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    let small = TuningKey::for_bytes(4 << 10, None);
    let key = engine.fleet_key(k, 1, small, 0).unwrap();

    // Another "host" claims the wrong variant was adopted, with a saturated window.
    let hostile = Fleet::connect(&server.url()).unwrap();
    let mut forged = written(KernelVerdict::Adopted, StoredReason::Measured, u32::MAX);
    forged.host = "mallory".into();
    hostile.publish(&key, forged);
    assert!(hostile.flush(Duration::from_secs(10)));
    assert!(eventually(Duration::from_secs(10), || engine
        .fleet()
        .unwrap()
        .get(&key)
        .is_some()));

    let events = engine.subscribe();
    for i in 0..40 {
        let (_, variant) = one(&engine, k, 4 << 10, None, i);
        assert_eq!(variant, 0, "batch {i}: the wrong variant answered");
    }
    assert_eq!(engine.verdict_for(k, small), Some(KernelVerdict::Rejected));
    let caught = std::iter::from_fn(|| events.try_recv().ok())
        .any(|e| matches!(e, Event::MismatchCaught { .. }));
    assert!(caught, "the mismatch was caught by a confirmation race");

    // The mismatch is shared, and it is sticky: the forger cannot put its entry back.
    assert!(engine.flush_fleet(Duration::from_secs(10)));
    assert!(eventually(Duration::from_secs(10), || hostile
        .get(&key)
        .is_some_and(|e| e.is_mismatch())));
    let again = written(KernelVerdict::Adopted, StoredReason::Measured, 8);
    hostile.publish(&key, again);
    assert!(hostile.flush(Duration::from_secs(10)));
    let fresh = Fleet::connect(&server.url()).unwrap();
    assert!(
        fresh.get(&key).is_some_and(|e| e.is_mismatch()),
        "{:?}",
        fresh.get(&key)
    );
    engine.shutdown();

    // A new host starts rejected on that key and never races it.
    let b2 = flipping_backend();
    let second = host(&b2, Some(&server.url())).build().unwrap();
    let k2 = second.register(Arc::new(ByteSumWorkload)).unwrap();
    for i in 0..10 {
        assert_eq!(one(&second, k2, 4 << 10, None, i), (false, 0));
    }
    assert_eq!(b2.runs(ByteSumWorkload::SPECULATIVE), 0);
}

#[test]
fn a_forged_adoption_of_a_slower_variant_is_overturned_and_the_overturn_shared() {
    let _dog = watchdog("forged adoption", Duration::from_secs(120));
    let Some(server) = redis_support::start() else {
        return;
    };
    let backend = flipping_backend();
    let engine = host(&backend, Some(&server.url())).build().unwrap();
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    let large = TuningKey::for_bytes(1 << 20, None);
    let key = engine.fleet_key(k, 1, large, 0).unwrap();
    let forger = Fleet::connect(&server.url()).unwrap();
    forger.publish(
        &key,
        written(KernelVerdict::Adopted, StoredReason::Measured, u32::MAX),
    );
    assert!(forger.flush(Duration::from_secs(10)));
    assert!(eventually(Duration::from_secs(10), || engine
        .fleet()
        .unwrap()
        .get(&key)
        .is_some()));
    for i in 0..30 {
        let (_, variant) = one(&engine, k, 1 << 20, None, i);
        assert_eq!(variant, 0, "the slower variant answered");
    }
    let stats = engine.kernel_stats(k).unwrap();
    let s = stats.keys.iter().find(|s| s.key == large).unwrap();
    assert_eq!(s.verdict, KernelVerdict::Rejected);
    assert_eq!(s.prior_source, Some(PriorSource::Fleet));
    assert!(
        s.races <= MIN_DISPATCHES_FOR_VERDICT,
        "overturned by its own races: {s:?}"
    );
    assert!(engine.flush_fleet(Duration::from_secs(10)));
    assert!(eventually(Duration::from_secs(10), || forger
        .get(&key)
        .is_some_and(|e| e.verdict.verdict == KernelVerdict::Rejected)));
}

// ---------------------------------------------------------------------------------
// Faults.

#[test]
fn redis_killed_and_restarted_under_eight_producers_answers_every_ticket_once() {
    let _dog = watchdog("redis restart under load", Duration::from_secs(240));
    let Some(mut server) = redis_support::start() else {
        return;
    };
    let backend = flipping_backend();
    let config = photofinish::fleet::FleetConfig {
        backoff_max: Duration::from_millis(200),
        command_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let engine = Arc::new(
        host(&backend, Some(&server.url()))
            .fleet_config(config)
            .max_keys_per_kernel(100_000)
            .build()
            .unwrap(),
    );
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    let events = engine.subscribe();
    let stop = Arc::new(AtomicBool::new(false));
    let submitted = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let producers: Vec<_> = (0..8u64)
        .map(|p| {
            let (engine, stop) = (Arc::clone(&engine), Arc::clone(&stop));
            let (submitted, answered) = (Arc::clone(&submitted), Arc::clone(&answered));
            std::thread::spawn(move || {
                // A new application key every 10 batches: a verdict change every 10.
                let mut i = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let app = (p << 32) | (i / 10);
                    let input = vec![(i % 251) as u8; 4 << 10];
                    let expected = ByteSumWorkload.reference(&input);
                    let ticket = engine
                        .submit(Batch::new(k, input).with_tuning_key(app))
                        .expect("accepted");
                    submitted.fetch_add(1, Ordering::Relaxed);
                    let answer = ticket.wait().expect("answered");
                    assert_eq!(answer.output, photofinish::Output::Answer(expected));
                    answered.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    // The producers publish thousands of race samples a second, more than a
    // subscription holds: a thread drains it and keeps the fleet's events, in order.
    let (fleet_tx, fleet_events) = crossbeam_channel::unbounded();
    let drainer = std::thread::spawn(move || {
        for e in events.iter() {
            if matches!(e, Event::FleetUnavailable { .. } | Event::FleetRestored) {
                let _ = fleet_tx.send(e);
            }
        }
    });
    let wait_for = |what: &str, f: &dyn Fn(&Event) -> bool| {
        let e = fleet_events
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no {what} event"));
        assert!(f(&e), "{e:?} came where {what} was expected");
    };
    assert!(eventually(Duration::from_secs(30), || answered
        .load(Ordering::Relaxed)
        > 400));
    server.stop();
    wait_for("FleetUnavailable", &|e| {
        matches!(e, Event::FleetUnavailable { .. })
    });
    let at_down = answered.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    let during = answered.load(Ordering::Relaxed) - at_down;
    server.restart();
    wait_for("FleetRestored", &|e| matches!(e, Event::FleetRestored));
    let at_up = answered.load(Ordering::Relaxed);
    assert!(eventually(Duration::from_secs(30), || answered
        .load(Ordering::Relaxed)
        > at_up + 400));
    stop.store(true, Ordering::Release);
    for p in producers {
        p.join().expect("a producer panicked");
    }
    assert_eq!(
        answered.load(Ordering::Relaxed),
        submitted.load(Ordering::Relaxed),
        "every ticket answered exactly once"
    );
    assert!(
        during > 0,
        "the engine stopped answering while Redis was down"
    );
    println!(
        "answered {} batches, {during} of them in the 500 ms Redis was down",
        answered.load(Ordering::Relaxed)
    );

    // Every verdict this engine reached itself — before, during and after the outage —
    // is in the restarted Redis (which came back empty).
    assert!(
        engine.flush_fleet(Duration::from_secs(30)),
        "{:?}",
        engine.fleet().unwrap().stats()
    );
    let fresh = Fleet::connect(&server.url()).unwrap();
    let stats = engine.kernel_stats(k).unwrap();
    let mut checked = 0;
    for s in stats
        .keys
        .iter()
        .filter(|s| s.verdict != KernelVerdict::Undecided)
    {
        let key = engine.fleet_key(k, 1, s.key, 0).unwrap();
        let entry = fresh
            .get(&key)
            .unwrap_or_else(|| panic!("{} lost by the restart", s.key));
        assert_eq!(entry.verdict.verdict, s.verdict, "{}", s.key);
        checked += 1;
    }
    assert!(checked > 100, "only {checked} keys decided");
    assert_eq!(engine.fleet().unwrap().stats().dropped, 0);
    engine.shutdown();
    // The drainer ends with the engine's event bus; it is not waited for.
    drop(drainer);
}

#[test]
fn a_bad_fleet_url_and_refused_credentials_are_typed_errors() {
    let _dog = watchdog("fleet errors", Duration::from_secs(60));
    let backend = flipping_backend();
    let err = host(&backend, Some("http://nowhere")).build().unwrap_err();
    assert!(
        matches!(
            err,
            photofinish::EngineError::Fleet(photofinish::fleet::FleetError::BadUrl { .. })
        ),
        "{err}"
    );
    let Some(server) = redis_support::start_with(&["--requirepass", "sesame"]) else {
        return;
    };
    let wrong = format!("redis://:nope@127.0.0.1:{}/0", server.port());
    let err = host(&backend, Some(&wrong)).build().unwrap_err();
    assert!(
        matches!(
            err,
            photofinish::EngineError::Fleet(photofinish::fleet::FleetError::AuthFailed { .. })
        ),
        "{err}"
    );
    assert!(
        !err.to_string().contains("nope"),
        "the password leaked: {err}"
    );
    // Right credentials: the engine runs on the fleet.
    let right = format!("redis://:sesame@127.0.0.1:{}/0", server.port());
    let engine = host(&backend, Some(&right)).build().unwrap();
    assert!(engine.fleet().unwrap().is_available());
}

#[test]
fn a_foreign_value_under_the_prefix_is_skipped_and_the_key_starts_cold() {
    let _dog = watchdog("foreign value", Duration::from_secs(60));
    let Some(server) = redis_support::start() else {
        return;
    };
    let backend = flipping_backend();
    let probe = host(&backend, None).build().unwrap();
    let kp = probe.register(Arc::new(ByteSumWorkload)).unwrap();
    let small = TuningKey::for_bytes(4 << 10, None);
    // The fleet key does not depend on the engine: the same kernel gives the same key.
    let key = probe.fleet_key(kp, 1, small, 0).unwrap();
    assert_eq!(
        server.command(&["SET", &key.to_string(), "not a verdict"]),
        "+OK"
    );
    let engine = host(&backend, Some(&server.url())).build().unwrap();
    assert!(engine.fleet().unwrap().stats().skipped_values >= 1);
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    for i in 0..12 {
        one(&engine, k, 4 << 10, None, i);
    }
    let stats = engine.kernel_stats(k).unwrap();
    assert_eq!(stats.keys[0].prior_source, None);
    assert_eq!(stats.keys[0].verdict, KernelVerdict::Adopted);
}
