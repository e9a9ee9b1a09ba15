//! One autotune directory shared by several savers (issue #25, item 9): the default
//! directory is every application's on the machine. Two processes saving different
//! verdicts to one file keep both; an engine's save keeps a verdict another store saved
//! in the same process; a file of a newer schema version is never overwritten by an
//! engine, which reports the failed save.
//!
//! The processes are this very test binary, re-executed with [`SAVER_ENV`] set, as in
//! `tests/crash_safety.rs`.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use photofinish::autotune::{
    AutotuneError, AutotuneStore, DeviceIdentity, LoadMode, SpecCacheKey, SpeculativeVariantKeys,
    VerdictReason, VerdictRecord,
};
use photofinish::policy::SpeculationObservation;
use photofinish::{Batch, ByteSumWorkload, Engine, KernelVerdict, TestBackend};

/// Set in a child's environment to `<path>;<which>`: save `which`'s verdicts to path.
const SAVER_ENV: &str = "PHOTOFINISH_SHARED_DIR_SAVER";
/// Verdicts each child adds, saving after each one.
const ROUNDS: u64 = 60;
const ADAPTER: &str = "shared-dir adapter";

fn device() -> DeviceIdentity {
    DeviceIdentity {
        device_uuid: [0x5d; 16],
        driver_version: "shared 1.0".into(),
    }
}

fn cache_key(shader_hash: u64) -> SpecCacheKey {
    SpecCacheKey {
        shader_hash,
        binding_sig: 1,
        workgroup_size: [64, 1, 1],
        spec_hash: 2,
    }
}

fn verdict(which: u64) -> VerdictRecord {
    VerdictRecord {
        verdict: if which == 0 {
            KernelVerdict::Adopted
        } else {
            KernelVerdict::Rejected
        },
        observation: SpeculationObservation {
            baseline_dispatches: 8,
            baseline_mean_ns: 1_000,
            speculative_dispatches: 8,
            speculative_mean_ns: 500,
            side_compile_cost_ns: 0,
        },
        reason: VerdictReason::Measured,
    }
}

/// The pair of saver `which`'s verdict number `i` (the two savers' pairs differ).
fn pair(which: u64, i: u64) -> (SpecCacheKey, SpecCacheKey) {
    let base = 1_000_000 * (which + 1) + 2 * i;
    (cache_key(base), cache_key(base + 1))
}

fn set(store: &AutotuneStore, which: u64, i: u64) {
    let (c, s) = pair(which, i);
    let keys = SpeculativeVariantKeys {
        conservative: &c,
        speculative: &s,
        adapter_id: ADAPTER,
    };
    store.set_verdict(keys, verdict(which));
}

fn get(store: &AutotuneStore, which: u64, i: u64) -> Option<VerdictRecord> {
    let (c, s) = pair(which, i);
    let keys = SpeculativeVariantKeys {
        conservative: &c,
        speculative: &s,
        adapter_id: ADAPTER,
    };
    store.verdict(keys).map(|v| v.verdict)
}

/// A child: its own store, one more verdict and a save per round, as fast as it can.
fn run_saver(path: &Path, which: u64) {
    let store = AutotuneStore::new(device());
    for i in 0..ROUNDS {
        set(&store, which, i);
        store.save(path).expect("the saver child can save");
    }
}

/// Regression (issue #25, item 9): two applications saving to one directory kept one
/// of their two sets of verdicts. Two processes save concurrently, each its own
/// verdicts, a save per verdict: the file ends with every verdict of both.
#[test]
fn two_processes_saving_different_verdicts_to_one_file_keep_both() {
    if let Some(spec) = std::env::var_os(SAVER_ENV) {
        let spec = spec.to_string_lossy().into_owned();
        let (path, which) = spec.rsplit_once(';').expect("path;which");
        run_saver(Path::new(path), which.parse().expect("which"));
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(device().store_file_name());
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let children: Vec<_> = (0..2u64)
        .map(|which| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "two_processes_saving_different_verdicts_to_one_file_keep_both",
                    "--test-threads=1",
                ])
                .env(SAVER_ENV, format!("{};{which}", path.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .expect("re-executing the test binary works")
        })
        .collect();
    for mut child in children {
        let status = child.wait().expect("reap the saver");
        assert!(status.success(), "a saver child failed: {status:?}");
    }
    let (store, _) = AutotuneStore::load(&path, &device(), LoadMode::Strict).expect("loads");
    let lost: Vec<(u64, u64)> = (0..2)
        .flat_map(|which| (0..ROUNDS).map(move |i| (which, i)))
        .filter(|&(which, i)| get(&store, which, i) != Some(verdict(which)))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} verdicts lost: {lost:?}",
        lost.len(),
        2 * ROUNDS
    );
    assert_eq!(store.verdict_count(), 2 * ROUNDS as usize);
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n.to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn engine_in(dir: &Path) -> Engine {
    let backend = Arc::new(TestBackend::new(1, 1, 1));
    backend.set_byte_sum_ns(1_000, 500);
    Engine::builder()
        .backend_instance(backend)
        .autotune_dir(dir)
        .build()
        .expect("engine builds")
}

/// The engine's identity of device 0, to build a store for its file.
fn identity_of(engine: &Engine) -> DeviceIdentity {
    let info = &engine.devices()[0];
    DeviceIdentity {
        device_uuid: info.device_uuid,
        driver_version: info.driver_version.clone(),
    }
}

/// Two savers in one process on one file, one of them an engine: the engine's save
/// (its saver thread, at shutdown) keeps the verdict the other store saved before it,
/// and the other store's later save keeps the engine's.
#[test]
fn an_engine_and_another_store_in_one_process_keep_each_others_verdicts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine_in(dir.path());
    let path = engine.autotune_path(0).expect("persistence on").to_owned();
    let other = AutotuneStore::new(identity_of(&engine));
    set(&other, 1, 0);
    other.save(&path).expect("the other store saves first");

    let k = engine
        .register(Arc::new(ByteSumWorkload))
        .expect("registers");
    for i in 0..12u8 {
        engine
            .submit(Batch::new(k, vec![i, 1, 2]))
            .expect("accepted")
            .wait()
            .expect("answered");
    }
    engine.shutdown();
    assert!(
        engine.autotune_save_error(0).is_none(),
        "{:?}",
        engine.autotune_save_error(0)
    );
    let (store, _) =
        AutotuneStore::load(&path, &identity_of(&engine), LoadMode::Strict).expect("loads");
    assert_eq!(
        get(&store, 1, 0),
        Some(verdict(1)),
        "the other store's verdict"
    );
    let engines = store.verdict_count();
    assert!(engines >= 2, "the engine's verdict joins it: {engines}");

    set(&other, 1, 1);
    other.save(&path).expect("the other store saves again");
    let (store, _) =
        AutotuneStore::load(&path, &identity_of(&engine), LoadMode::Strict).expect("loads");
    assert_eq!(
        store.verdict_count(),
        engines + 1,
        "the engine's verdict stays"
    );
}

/// Regression (issue #25, item 9): an engine overwrote a file of a newer schema version.
/// It leaves it byte for byte, works on in memory, and says so through
/// `Engine::autotune_save_error`.
#[test]
fn an_engine_never_overwrites_a_newer_schema_file_and_reports_the_failed_save() {
    let dir = tempfile::tempdir().expect("tempdir");
    let probe = engine_in(dir.path());
    let path = probe.autotune_path(0).expect("persistence on").to_owned();
    probe.shutdown();
    let future = r#"{"schema": "photofinish-autotune", "version": 99, "whatever": []}"#;
    fs::write(&path, future).expect("write");

    let engine = engine_in(dir.path());
    let k = engine
        .register(Arc::new(ByteSumWorkload))
        .expect("registers");
    for i in 0..12u8 {
        let answer = engine
            .submit(Batch::new(k, vec![i, 3]))
            .expect("accepted")
            .wait()
            .expect("the engine works on in memory");
        drop(answer);
    }
    engine.shutdown();
    let error = engine
        .autotune_save_error(0)
        .expect("the final save failed and says so");
    assert!(
        matches!(
            *error,
            AutotuneError::NewerSchema {
                found_version: 99,
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(fs::read_to_string(&path).expect("read"), future);
}

/// A save waits for the lock another process holds on the file (`flock(1)` here, as a
/// script sharing the directory might) and goes ahead once it is released.
#[cfg(target_os = "linux")]
#[test]
fn a_save_waits_for_the_lock_another_process_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("autotune.json");
    let lock = dir.path().join(".autotune.json.lock");
    let ready = dir.path().join("locked");
    let holder = Command::new("flock")
        .arg(&lock)
        .args(["sh", "-c", "touch \"$0\"; sleep 1"])
        .arg(&ready)
        .spawn();
    let Ok(mut holder) = holder else {
        panic!("flock(1) (util-linux) is needed by this test");
    };
    while !ready.exists() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let store = AutotuneStore::new(device());
    set(&store, 0, 0);
    let started = std::time::Instant::now();
    store
        .save(&path)
        .expect("the save goes ahead once the lock is free");
    let waited = started.elapsed();
    assert!(holder.wait().expect("reap flock").success());
    assert!(
        waited >= std::time::Duration::from_millis(500),
        "the save did not wait for the lock: {waited:?}"
    );
    let (loaded, _) = AutotuneStore::load(&path, &device(), LoadMode::Strict).expect("loads");
    assert_eq!(get(&loaded, 0, 0), Some(verdict(0)));
}
