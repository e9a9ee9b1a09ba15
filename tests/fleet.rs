//! The fleet store against a real `redis-server` on loopback (feature `redis`): sharing
//! at connect and live, the sticky mismatch, foreign values, typed errors, Redis
//! stopped, restarted and slow. Each test has a watchdog, so a hang fails it.
#![cfg(feature = "redis")]

#[path = "support/redis.rs"]
mod redis_support;
#[path = "support/watchdog.rs"]
mod watchdog;

use std::time::{Duration, Instant};

use photofinish::autotune::{VerdictReason, VerdictRecord};
use photofinish::fleet::{
    DeviceModel, Fleet, FleetConfig, FleetEntry, FleetError, FleetKey, FleetStatus,
};
use photofinish::policy::SpeculationObservation;
use photofinish::KernelVerdict;

use redis_support::eventually;
use watchdog::watchdog;

fn key(tuning: u64) -> FleetKey {
    FleetKey {
        device: DeviceModel {
            vendor_id: 0x10de,
            device_id: 0x2335,
            name: "NVIDIA H200".into(),
        },
        driver_version: "570.86.15".into(),
        shader_hash: 0x51,
        binding_sig: 0xb1,
        conservative: 0x51,
        speculative: 0x52,
        tuning_key: tuning,
        tuning_key_display: format!("{tuning}KiB"),
    }
}

fn entry(verdict: KernelVerdict, reason: VerdictReason, count: u32) -> FleetEntry {
    FleetEntry {
        verdict: VerdictRecord {
            verdict,
            observation: SpeculationObservation {
                baseline_dispatches: count,
                baseline_mean_ns: 2_000,
                speculative_dispatches: count,
                speculative_mean_ns: 1_000,
                side_compile_cost_ns: 0,
            },
            reason,
        },
        host: "host-a".into(),
        unix_time: 1_765_000_000,
    }
}

fn adopted(count: u32) -> FleetEntry {
    entry(KernelVerdict::Adopted, VerdictReason::Measured, count)
}

fn mismatch() -> FleetEntry {
    entry(KernelVerdict::Rejected, VerdictReason::Mismatch, 1)
}

fn quick() -> FleetConfig {
    FleetConfig {
        backoff_max: Duration::from_millis(500),
        ..FleetConfig::default()
    }
}

#[test]
fn an_entry_published_by_one_client_is_seen_by_another_at_connect_and_live() {
    let _dog = watchdog("fleet sharing", Duration::from_secs(60));
    let Some(server) = redis_support::start() else {
        return;
    };
    let a = Fleet::connect(&server.url()).expect("connect a");
    assert!(a.is_available());
    a.publish(&key(1), adopted(12));
    assert_eq!(
        a.get(&key(1)),
        Some(adopted(12)),
        "a reads its own write at once"
    );
    assert!(a.flush(Duration::from_secs(10)), "{:?}", a.stats());
    assert_eq!(a.stats().written, 1);

    // At connect: b's copy is read from Redis.
    let b = Fleet::connect(&server.url()).expect("connect b");
    assert_eq!(b.get(&key(1)), Some(adopted(12)));
    assert!(server
        .command(&["GET", &key(1).to_string()])
        .starts_with('$'));

    // Live: pub/sub brings a's next write to b while both run.
    a.publish(&key(2), adopted(9));
    assert!(
        eventually(Duration::from_secs(10), || b.get(&key(2)).is_some()),
        "b never heard of key 2"
    );
    assert_eq!(b.get(&key(2)), Some(adopted(9)));

    // A forged window is clamped when read from the fleet.
    a.publish(&key(3), adopted(u32::MAX));
    assert!(eventually(Duration::from_secs(10), || b
        .get(&key(3))
        .is_some()));
    let o = b.get(&key(3)).expect("key 3").verdict.observation;
    assert_eq!((o.baseline_dispatches, o.speculative_dispatches), (64, 64));
}

#[test]
fn a_mismatch_in_redis_is_never_overwritten() {
    let _dog = watchdog("sticky mismatch", Duration::from_secs(60));
    let Some(server) = redis_support::start() else {
        return;
    };
    let b = Fleet::connect(&server.url()).expect("connect b");
    let a = Fleet::connect(&server.url()).expect("connect a");
    a.publish(&key(1), mismatch());
    assert!(a.flush(Duration::from_secs(10)));
    let stored = server.command(&["GET", &key(1).to_string()]);
    assert!(stored.starts_with('$'), "{stored}");
    // c reads the mismatch at connect; its own measured write is refused locally and
    // then by the script inside Redis.
    let c = Fleet::connect(&server.url()).expect("connect c");
    assert_eq!(
        c.get(&key(1)),
        Some(mismatch()),
        "c read the mismatch at connect"
    );
    c.publish(&key(1), adopted(64));
    assert_eq!(
        c.get(&key(1)),
        Some(mismatch()),
        "the local copy keeps the mismatch"
    );
    assert!(c.flush(Duration::from_secs(10)));
    assert_eq!(c.stats().refused_sticky, 1, "{:?}", c.stats());
    assert!(eventually(Duration::from_secs(10), || b.get(&key(1))
        == Some(mismatch())));

    // And inside Redis, against a client that never saw the mismatch.
    server.command(&["DEL", &key(2).to_string()]);
    let d = Fleet::connect(&server.url()).expect("connect d");
    let mismatch_json = r#"{"verdict":"rejected","reason":"mismatch","window":{"conservative_count":1,"conservative_mean_ns":1,"speculative_count":1,"speculative_mean_ns":1},"host":"elsewhere","unix_time":1}"#;
    assert_eq!(
        server.command(&["SET", &key(2).to_string(), mismatch_json]),
        "+OK"
    );
    assert_eq!(d.get(&key(2)), None, "no announcement: d does not know");
    d.publish(&key(2), adopted(8));
    assert!(d.flush(Duration::from_secs(10)));
    assert_eq!(d.stats().refused_sticky, 1, "{:?}", d.stats());
    let got = d.get(&key(2)).expect("d re-read the key");
    assert!(got.is_mismatch(), "{got:?}");
    assert_eq!(got.host, "elsewhere");
    let raw = server.command(&["GET", &key(2).to_string()]);
    assert!(raw.starts_with('$'), "{raw}");

    // A mismatch may follow a measured verdict.
    d.publish(&key(3), adopted(8));
    d.publish(&key(3), mismatch());
    assert!(d.flush(Duration::from_secs(10)));
    let e = Fleet::connect(&server.url()).expect("connect e");
    assert_eq!(e.get(&key(3)), Some(mismatch()));
}

#[test]
fn a_foreign_value_under_the_prefix_is_skipped_not_fatal() {
    let _dog = watchdog("foreign values", Duration::from_secs(60));
    let Some(server) = redis_support::start() else {
        return;
    };
    let prefix = photofinish::fleet::fleet_key_prefix();
    let junk_key = format!("{prefix}somebody-else");
    server.command(&["SET", &junk_key, "not json at all"]);
    server.command(&["SET", &format!("{prefix}x:y"), "{\"verdict\":\"adopted\"}"]);
    server.command(&["HSET", &format!("{prefix}hash"), "f", "v"]);
    let a = Fleet::connect(&server.url()).expect("connect a");
    a.publish(&key(1), adopted(10));
    assert!(a.flush(Duration::from_secs(10)));

    let b = Fleet::connect(&server.url()).expect("connect b");
    assert!(b.is_available());
    assert_eq!(b.get(&key(1)), Some(adopted(10)));
    assert_eq!(b.entries().len(), 1, "only our entry: {:?}", b.entries());
    assert!(b.stats().skipped_values >= 3, "{:?}", b.stats());

    // Live: a foreign announcement is skipped too.
    let before = b.stats().skipped_values;
    server.command(&["PUBLISH", &photofinish::fleet::fleet_channel(), &junk_key]);
    assert!(eventually(Duration::from_secs(10), || b
        .stats()
        .skipped_values
        > before));
    assert!(b.is_available());
}

#[test]
fn bad_url_auth_failure_and_unreachable_are_typed_errors() {
    let _dog = watchdog("typed errors", Duration::from_secs(60));
    for url in [
        "",
        "nonsense",
        "http://127.0.0.1:1",
        "redis+cluster://",
        "redis://a:1,",
    ] {
        match Fleet::connect(url) {
            Err(FleetError::BadUrl { detail, .. }) => assert!(!detail.is_empty()),
            other => panic!("{url:?}: {other:?}"),
        }
    }

    // Nothing listens on a port of a server we stopped.
    let Some(mut server) = redis_support::start_with(&["--requirepass", "hunter2x"]) else {
        return;
    };
    let port = server.port();
    match Fleet::connect(&format!("redis://127.0.0.1:{port}/0")) {
        Err(e @ FleetError::AuthFailed { .. }) => {
            assert!(e.to_string().contains("password"), "{e}")
        }
        other => panic!("no password: {other:?}"),
    }
    match Fleet::connect(&format!("redis://:not-it-9@127.0.0.1:{port}/0")) {
        Err(e @ FleetError::AuthFailed { .. }) => {
            assert!(
                !e.to_string().contains("not-it-9"),
                "password redacted: {e}"
            )
        }
        other => panic!("wrong password: {other:?}"),
    }
    let ok =
        Fleet::connect(&format!("redis://:hunter2x@127.0.0.1:{port}/0")).expect("right password");
    assert!(ok.is_available());
    drop(ok);

    server.stop();
    let url = format!("redis://127.0.0.1:{port}/0");
    let strict = FleetConfig {
        require_available: true,
        ..quick()
    };
    assert!(matches!(
        Fleet::connect_with(&url, strict),
        Err(FleetError::Unreachable { .. })
    ));
    let started = Instant::now();
    let lenient = Fleet::connect_with(&url, quick()).expect("a client that reconnects");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(!lenient.is_available());
    assert!(matches!(
        lenient.statuses().recv_timeout(Duration::from_secs(5)),
        Ok(FleetStatus::Unavailable { .. })
    ));
}

#[test]
fn redis_stopped_and_restarted_mid_run_loses_no_write_and_never_blocks() {
    let _dog = watchdog("redis restart", Duration::from_secs(90));
    let Some(mut server) = redis_support::start() else {
        return;
    };
    let a = Fleet::connect_with(&server.url(), quick()).expect("connect a");
    let statuses = a.statuses();
    a.publish(&key(0), adopted(10));
    assert!(a.flush(Duration::from_secs(10)));

    server.stop();
    match statuses.recv_timeout(Duration::from_secs(10)) {
        Ok(FleetStatus::Unavailable { reason }) => assert!(!reason.is_empty()),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(!a.is_available());

    let mut slowest = Duration::ZERO;
    for t in 1..=100u64 {
        let started = Instant::now();
        a.publish(&key(t), adopted(10));
        assert_eq!(a.get(&key(t)), Some(adopted(10)));
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(50),
        "a publish took {slowest:?}"
    );
    assert!(
        !a.flush(Duration::from_millis(200)),
        "nothing can be written while down"
    );

    // Same port, empty (no persistence): a's kept writes and its earlier one come back.
    server.restart();
    assert_eq!(
        statuses.recv_timeout(Duration::from_secs(20)),
        Ok(FleetStatus::Restored)
    );
    assert!(a.flush(Duration::from_secs(20)), "{:?}", a.stats());
    let b = Fleet::connect(&server.url()).expect("connect b");
    for t in 0..=100u64 {
        assert_eq!(b.get(&key(t)), Some(adopted(10)), "key {t}");
    }
    assert_eq!(a.stats().dropped, 0);

    // Live again after the restart: the subscription was renewed.
    b.publish(&key(500), adopted(3));
    assert!(eventually(Duration::from_secs(10), || a
        .get(&key(500))
        .is_some()));
}

#[test]
fn a_slow_redis_never_blocks_publish_or_get() {
    let _dog = watchdog("slow redis", Duration::from_secs(60));
    let Some(server) = redis_support::start() else {
        return;
    };
    let a = Fleet::connect(&server.url()).expect("connect a");
    a.publish(&key(1), adopted(10));
    assert!(a.flush(Duration::from_secs(10)));

    let sleeper = server.send_detached(&["DEBUG", "SLEEP", "2"]);
    std::thread::sleep(Duration::from_millis(200));
    // The fleet thread is stuck behind the sleeping server now.
    let mut slowest = Duration::ZERO;
    for t in 2..50u64 {
        let started = Instant::now();
        a.publish(&key(t), adopted(10));
        let _ = a.get(&key(1));
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(50),
        "slowest call {slowest:?}"
    );
    sleeper.join().expect("sleeper");
    assert!(a.flush(Duration::from_secs(15)), "{:?}", a.stats());
    let b = Fleet::connect(&server.url()).expect("connect b");
    assert_eq!(b.get(&key(49)), Some(adopted(10)));
}

#[test]
fn a_single_node_redis_cluster_shares_entries_through_the_cluster_client() {
    let _dog = watchdog("cluster", Duration::from_secs(60));
    let Some(server) = redis_support::start_with(&[
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        // A lone node knows no address of its own to put in CLUSTER SLOTS.
        "--cluster-announce-ip",
        "127.0.0.1",
    ]) else {
        return;
    };
    assert_eq!(
        server.command(&["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]),
        "+OK"
    );
    assert!(
        // CLUSTERDOWN until the node has taken its slots.
        eventually(Duration::from_secs(20), || {
            server.command(&["SET", "photofinish-probe", "1"]) == "+OK"
        }),
        "the one-node cluster never came up"
    );
    let url = format!("redis+cluster://127.0.0.1:{}", server.port());
    let a = Fleet::connect(&url).expect("connect a");
    assert!(a.is_available(), "{:?}", a.statuses().try_recv());
    a.publish(&key(1), adopted(10));
    assert!(a.flush(Duration::from_secs(10)), "{:?}", a.stats());
    let b = Fleet::connect(&url).expect("connect b");
    assert_eq!(
        b.get(&key(1)),
        Some(adopted(10)),
        "read by scanning the primaries"
    );
    a.publish(&key(2), mismatch());
    assert!(eventually(Duration::from_secs(10), || b
        .get(&key(2))
        .is_some()));
    b.publish(&key(2), adopted(10));
    assert!(b.flush(Duration::from_secs(10)));
    assert_eq!(b.stats().refused_sticky, 1, "{:?}", b.stats());
}
