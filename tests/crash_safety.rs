//! Crash safety of the autotune file (issue #7, SPEC §3 "saves are atomic"): a child
//! process saves the store over and over, alternating two distinct large-ish contents,
//! and is SIGKILLed at random moments, many times. After every kill the file must load
//! strictly and hold exactly one of the two contents — never a mix, never a torn file.
//!
//! The child is this very test binary, re-executed with [`SAVER_ENV`] set: the test
//! function sees the variable and becomes the saver instead of the parent. No extra
//! binary, and the child runs exactly the code under test.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use photofinish::autotune::{
    AutotuneKey, AutotuneRecord, AutotuneStore, DeviceIdentity, LoadMode, LoadOutcome, SpecCacheKey,
};

/// Set in the child's environment to the path it must keep saving to.
const SAVER_ENV: &str = "PHOTOFINISH_CRASH_SAVER_PATH";
/// What the child prints once its first save is complete.
const READY: &str = "photofinish-saver-ready";
/// How many times the parent kills a saver at least.
const KILLS: usize = 40;
/// Kills that must land in the middle of a save's write: the parent keeps killing
/// (up to [`MAX_KILLS`]) until this many did. Where fsync costs little, a save is
/// mostly its serialising, before the temp file exists, and as few as 5 % of kills
/// land mid-write.
const MIN_MID_WRITE: usize = 4;
/// The most savers the parent kills.
const MAX_KILLS: usize = 400;
/// Entries in content A and content B: the same keys with other records (a save merges
/// with the file, and this store's measured records win, so each save leaves exactly
/// its own content; a mix of the two could not pass).
const ENTRIES_A: u64 = 1_500;
const ENTRIES_B: u64 = 1_500;
/// A saver that is never killed (its parent died) gives up after this long.
const CHILD_LIFETIME: Duration = Duration::from_secs(20);
/// The whole test fails rather than hangs after this long.
const WATCHDOG: Duration = Duration::from_secs(60);

fn device() -> DeviceIdentity {
    DeviceIdentity {
        device_uuid: [0xc5; 16],
        driver_version: "crash-test 1.0".into(),
    }
}

/// The two contents: `which` 0 is A (unroll 1), 1 is B (unroll 2).
fn content(which: u8) -> BTreeMap<u64, u32> {
    let (count, unroll) = match which {
        0 => (ENTRIES_A, 1),
        _ => (ENTRIES_B, 2),
    };
    (0..count).map(|i| (i, unroll)).collect()
}

fn key(shader_hash: u64) -> AutotuneKey {
    let cache_key = SpecCacheKey {
        shader_hash,
        binding_sig: shader_hash.rotate_left(17),
        workgroup_size: [64, 1, 1],
        spec_hash: 9,
    };
    AutotuneKey::new(&cache_key, "crash-test adapter")
}

fn store_of(which: u8) -> AutotuneStore {
    let store = AutotuneStore::new(device());
    for (shader_hash, unroll) in content(which) {
        let record = AutotuneRecord {
            workgroup_size: [64, 1, 1],
            unroll,
            tile: [unroll, 1, 1],
            recorded_at: "2024-01-01T00:00:00Z".into(),
        };
        store.put(key(shader_hash), record);
    }
    store
}

/// The saver child: saves A, B, A, B… to `path` until killed (or its lifetime ends).
fn run_saver(path: &Path) {
    let stores = [store_of(0), store_of(1)];
    let started = Instant::now();
    let mut n = 0usize;
    while started.elapsed() < CHILD_LIFETIME {
        let save = Instant::now();
        stores[n % 2].save(path).expect("the saver child can save");
        if n == 0 {
            // How long a save takes here, so the parent's kills span whole saves.
            println!("{READY} {}", save.elapsed().as_micros());
        }
        n += 1;
    }
}

/// Which content the file at `path` holds; panics on anything else.
fn loaded_content(path: &Path) -> u8 {
    let (store, report) = AutotuneStore::load(path, &device(), LoadMode::Strict)
        .unwrap_or_else(|e| panic!("the file must always load after a kill, got: {e}"));
    assert!(matches!(report.outcome, LoadOutcome::Loaded), "{report:?}");
    let snapshot = store.snapshot();
    let found: BTreeMap<u64, u32> = snapshot
        .entries
        .iter()
        .map(|(k, v)| (k.cache_key.shader_hash, v.record.unroll))
        .collect();
    (0..2)
        .find(|&which| found == content(which))
        .unwrap_or_else(|| {
            panic!(
                "the file is neither content A nor content B ({} entries)",
                found.len()
            )
        })
}

fn spawn_saver(path: &Path) -> Child {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    Command::new(exe)
        .args([
            "--exact",
            "sigkill_mid_save_always_leaves_the_old_or_the_new_file",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SAVER_ENV, path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("re-executing the test binary works")
}

/// Waits until the child says its first save is done, and gives how long that save
/// took (µs); `None` if it exited first.
fn wait_ready(child: &mut Child) -> Option<u64> {
    let stdout = child.stdout.take()?;
    BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| {
            let rest = line.split(READY).nth(1)?;
            Some(rest.trim().parse().unwrap_or(0))
        })
}

fn temp_files(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .expect("temp dir readable")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.to_string_lossy().contains(".tmp-"))
        .collect()
}

#[test]
fn sigkill_mid_save_always_leaves_the_old_or_the_new_file() {
    if let Some(path) = std::env::var_os(SAVER_ENV) {
        run_saver(Path::new(&path));
        return;
    }
    std::thread::spawn(|| {
        std::thread::sleep(WATCHDOG);
        eprintln!("crash-safety watchdog: the test ran past {WATCHDOG:?}");
        std::process::exit(101);
    });

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("autotune.json");
    // Seeded, so a failure replays with the same delays.
    let mut rng = fastrand::Rng::with_seed(0x5eed_c4a5);
    let mut seen = [0usize; 2];
    let mut killed_mid_write = 0usize;
    let started = Instant::now();
    let mut kills = 0;
    while kills < KILLS || (killed_mid_write < MIN_MID_WRITE && kills < MAX_KILLS) {
        let kill = kills;
        kills += 1;
        let mut child = spawn_saver(&path);
        let save_us = wait_ready(&mut child)
            .unwrap_or_else(|| panic!("saver child {kill} exited before its first save"));
        // Kills spread over the next two saves (a save reads and merges the file before
        // it writes, which takes a while in a debug build), and at least 30 ms.
        let span = save_us.saturating_mul(2).max(30_000);
        std::thread::sleep(Duration::from_micros(rng.u64(0..span)));
        child.kill().expect("SIGKILL the saver");
        let status = child.wait().expect("reap the saver");
        assert!(
            !status.success(),
            "the saver must have been killed, not finished"
        );

        seen[usize::from(loaded_content(&path))] += 1;
        // A temp file left behind means the kill landed between creating the temp file
        // and renaming it: in the middle of a save's write.
        let temps = temp_files(dir.path());
        if !temps.is_empty() {
            killed_mid_write += 1;
        }
        for temp in temps {
            fs::remove_file(temp).expect("remove the killed saver's temp file");
        }
    }
    eprintln!(
        "crash safety: {kills} kills in {:?}; file held A {} times, B {} times; \
         {killed_mid_write} kills landed mid-write",
        started.elapsed(),
        seen[0],
        seen[1]
    );
    // The kills must really land inside saves, or the test proves nothing: 5 to 45 %
    // do, as fsync is cheap or dear; none in MAX_KILLS would mean the timing broke.
    assert!(
        killed_mid_write >= MIN_MID_WRITE,
        "only {killed_mid_write} of {kills} kills landed mid-write"
    );
    assert!(
        seen[0] > 0 && seen[1] > 0,
        "both contents must be seen: {seen:?}"
    );
}
