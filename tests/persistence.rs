//! The autotune file: round trips, stale entries after a driver change, atomic saves,
//! and loads of every kind of bad file (SPEC §3).

use std::fs;
use std::path::Path;

use photofinish::autotune::{
    AutotuneError, AutotuneKey, AutotuneRecord, AutotuneStore, DeviceIdentity, LoadMode,
    LoadOutcome, SpecCacheKey, SpeculativeVariantKeys, StaleReason, Trust, VerdictReason,
    VerdictRecord, MAX_STORE_FILE_BYTES, SCHEMA_NAME,
};
use photofinish::policy::SpeculationObservation;
use photofinish::KernelVerdict;
use proptest::prelude::*;

const ADAPTER: &str = "10de:2335 NVIDIA H200";

fn device(driver: &str) -> DeviceIdentity {
    DeviceIdentity {
        device_uuid: [7, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0xee],
        driver_version: driver.into(),
    }
}

fn cache_key(shader_hash: u64) -> SpecCacheKey {
    SpecCacheKey {
        shader_hash,
        binding_sig: u64::MAX,
        workgroup_size: [256, 1, 1],
        spec_hash: 3,
    }
}

fn record(unroll: u32) -> AutotuneRecord {
    AutotuneRecord {
        workgroup_size: [256, 1, 1],
        unroll,
        tile: [4, 4, 1],
        recorded_at: AutotuneRecord::timestamp_now(),
    }
}

fn adopted() -> VerdictRecord {
    VerdictRecord {
        verdict: KernelVerdict::Adopted,
        observation: SpeculationObservation {
            baseline_dispatches: 9,
            baseline_mean_ns: u64::MAX,
            speculative_dispatches: 8,
            speculative_mean_ns: 700,
            side_compile_cost_ns: 12,
        },
        reason: VerdictReason::Measured,
    }
}

/// A version 1 file (verdicts per kernel, before tuning keys) is read as it is, says
/// it was migrated, keeps its verdict, and is saved back as the current version.
#[test]
fn a_version_1_file_is_migrated_not_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("autotune.json");
    saved_store(&path, "d1");
    let current = format!("\"version\": {}", photofinish::autotune::SCHEMA_VERSION);
    let old = fs::read_to_string(&path)
        .expect("read")
        .replacen(&current, "\"version\": 1", 1);
    fs::write(&path, old).expect("write");
    let (store, report) =
        AutotuneStore::load(&path, &device("d1"), LoadMode::Strict).expect("version 1 is read");
    assert_eq!(report.migrated_from, Some(1));
    assert_eq!(report.verdicts, 1);
    assert_eq!(verdict_of(&store, 1, 2), Some(adopted()));
    store.save(&path).expect("save");
    assert!(fs::read_to_string(&path).expect("read").contains(&current));
    let (_, report) = AutotuneStore::load(&path, &device("d1"), LoadMode::Strict).expect("load");
    assert_eq!(report.migrated_from, None);
}

/// A store of `driver` with two records and one verdict, saved at `path`.
fn saved_store(path: &Path, driver: &str) -> AutotuneStore {
    let store = AutotuneStore::new(device(driver));
    store.put(AutotuneKey::new(&cache_key(1), ADAPTER), record(2));
    store.put(AutotuneKey::new(&cache_key(2), ADAPTER), record(8));
    let (c, s) = (cache_key(1), cache_key(2));
    let keys = SpeculativeVariantKeys {
        conservative: &c,
        speculative: &s,
        adapter_id: ADAPTER,
    };
    store.set_verdict(keys, adopted());
    store.save(path).expect("saving into a temp dir works");
    store
}

fn strict_error(path: &Path) -> AutotuneError {
    match AutotuneStore::load(path, &device("d1"), LoadMode::Strict) {
        Ok((store, report)) => panic!(
            "expected an error, loaded {} entries ({report:?})",
            store.len()
        ),
        Err(e) => e,
    }
}

fn no_temp_files_left(dir: &Path) {
    let names: Vec<_> = fs::read_dir(dir)
        .expect("temp dir readable")
        .map(|e| e.expect("dir entry").file_name())
        .collect();
    assert!(
        names.iter().all(|n| !n.to_string_lossy().contains(".tmp-")),
        "temp files left behind: {names:?}"
    );
}

#[test]
fn round_trip_keeps_records_and_verdicts_as_loaded_until_verified() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("autotune.json");
    let original = saved_store(&path, "d1");
    no_temp_files_left(dir.path());

    let (loaded, report) =
        AutotuneStore::load(&path, &device("d1"), LoadMode::Strict).expect("round trip loads");
    assert!(matches!(report.outcome, LoadOutcome::Loaded));
    assert_eq!((report.entries, report.verdicts, report.stale), (2, 1, 0));
    assert_eq!(loaded.len(), 2);
    assert!(loaded.stale().is_empty());
    for shader in [1, 2] {
        let key = AutotuneKey::new(&cache_key(shader), ADAPTER);
        let entry = loaded.entry(&key).expect("entry survives");
        assert_eq!(*entry.record, *original.get(&key).expect("original"));
        assert_eq!(entry.trust, Trust::Loaded);
    }
    let (c, s) = (cache_key(1), cache_key(2));
    let keys = SpeculativeVariantKeys {
        conservative: &c,
        speculative: &s,
        adapter_id: ADAPTER,
    };
    let verdict = loaded.verdict(keys).expect("verdict survives");
    assert_eq!((verdict.verdict, verdict.trust), (adopted(), Trust::Loaded));
    assert!(loaded.mark_verdict_verified(keys));
    assert_eq!(loaded.verdict(keys).map(|v| v.trust), Some(Trust::Verified));
    let key = AutotuneKey::new(&cache_key(1), ADAPTER);
    assert!(loaded.mark_verified(&key));
    assert_eq!(loaded.entry(&key).map(|e| e.trust), Some(Trust::Verified));
    // The load published a snapshot of what it read.
    assert_eq!(loaded.snapshot().len(), 2);

    // Saving again and loading gives the same file content (deterministic order).
    let first = fs::read(&path).expect("read");
    loaded.save(&path).expect("save again");
    assert_eq!(fs::read(&path).expect("read"), first);
}

#[test]
fn driver_change_makes_entries_stale_kept_and_reported_not_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("autotune.json");
    saved_store(&path, "d1");

    let (store, report) =
        AutotuneStore::load(&path, &device("d2"), LoadMode::Strict).expect("loads");
    assert!(store.is_empty(), "entries of the old driver are not used");
    assert!(store
        .get(&AutotuneKey::new(&cache_key(1), ADAPTER))
        .is_none());
    assert_eq!(store.verdict_count(), 0);
    assert_eq!((report.entries, report.stale), (0, 3));
    let [group] = store.stale() else {
        panic!("one stale group, got {:?}", store.stale());
    };
    assert_eq!(
        group.reason,
        StaleReason::DriverChanged { was: "d1".into() }
    );
    assert_eq!((group.entries.len(), group.verdicts.len()), (2, 1));

    // New measurements under d2 are saved beside the kept d1 entries...
    store.put(AutotuneKey::new(&cache_key(3), ADAPTER), record(16));
    store.save(&path).expect("save");
    // ...and a rollback to d1 finds the d1 entries again, with d2's now stale.
    let (rolled_back, _) =
        AutotuneStore::load(&path, &device("d1"), LoadMode::Strict).expect("loads");
    assert_eq!(rolled_back.len(), 2);
    assert!(rolled_back
        .get(&AutotuneKey::new(&cache_key(1), ADAPTER))
        .is_some());
    assert!(rolled_back
        .get(&AutotuneKey::new(&cache_key(3), ADAPTER))
        .is_none());
    let reasons: Vec<_> = rolled_back
        .stale()
        .iter()
        .map(|g| g.reason.clone())
        .collect();
    assert_eq!(
        reasons,
        vec![StaleReason::DriverChanged { was: "d2".into() }]
    );

    // Another device altogether: stale for another reason.
    let other = DeviceIdentity {
        device_uuid: [0; 16],
        driver_version: "d1".into(),
    };
    let (foreign, _) = AutotuneStore::load(&path, &other, LoadMode::Strict).expect("loads");
    assert!(foreign.is_empty());
    assert!(foreign
        .stale()
        .iter()
        .all(|g| g.reason == StaleReason::OtherDevice));
    assert_eq!(foreign.stale().len(), 2);
}

#[test]
fn missing_file_is_an_empty_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, report) = AutotuneStore::load(
        dir.path().join("none.json"),
        &device("d1"),
        LoadMode::Strict,
    )
    .expect("missing is fine");
    assert!(store.is_empty());
    assert!(matches!(report.outcome, LoadOutcome::Missing));
    assert_eq!(store.identity(), &device("d1"));
}

#[test]
fn corrupt_file_is_a_corrupt_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("autotune.json");
    fs::write(
        &path,
        b"{\"schema\": \"photofinish-autotune\", \"version\": 1, !!}",
    )
    .expect("write");
    assert!(matches!(strict_error(&path), AutotuneError::Corrupt { .. }));
    fs::write(&path, b"[1, 2, 3]").expect("write");
    assert!(matches!(strict_error(&path), AutotuneError::Corrupt { .. }));
}

#[test]
fn well_formed_json_with_bad_fields_is_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("autotune.json");
    saved_store(&path, "d1");
    let good = fs::read_to_string(&path).expect("read");
    let bad_uuid = good.replacen(&device("d1").uuid_hex(), "not-a-uuid", 1);
    fs::write(&path, bad_uuid).expect("write");
    let err = strict_error(&path);
    assert!(matches!(err, AutotuneError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("not-a-uuid"), "{err}");

    let bad_verdict = good.replacen("\"adopt\"", "\"maybe\"", 1);
    fs::write(&path, bad_verdict).expect("write");
    assert!(matches!(strict_error(&path), AutotuneError::Corrupt { .. }));
}

#[test]
fn truncated_file_is_a_truncated_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("autotune.json");
    saved_store(&path, "d1");
    let full = fs::read(&path).expect("read");
    fs::write(&path, &full[..full.len() / 2]).expect("write");
    let err = strict_error(&path);
    assert!(matches!(err, AutotuneError::Truncated { .. }), "{err}");
    fs::write(&path, b"").expect("write");
    assert!(matches!(
        strict_error(&path),
        AutotuneError::Truncated { .. }
    ));
}

#[test]
fn oversized_file_is_refused_without_reading_it_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("autotune.json");
    let file = fs::File::create(&path).expect("create");
    // Sparse: the size is over the cap without writing 16 MiB.
    file.set_len(MAX_STORE_FILE_BYTES + 1).expect("set_len");
    let err = strict_error(&path);
    assert!(matches!(err, AutotuneError::TooLarge { .. }), "{err}");
}

#[test]
fn foreign_schema_or_version_is_a_foreign_schema_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("autotune.json");
    fs::write(&path, br#"{"schema": "someone-else", "version": 1}"#).expect("write");
    assert!(matches!(
        strict_error(&path),
        AutotuneError::ForeignSchema { .. }
    ));
    fs::write(&path, br#"{"name": "package.json"}"#).expect("write");
    assert!(matches!(
        strict_error(&path),
        AutotuneError::ForeignSchema { .. }
    ));

    saved_store(&path, "d1");
    let future =
        fs::read_to_string(&path)
            .expect("read")
            .replacen("\"version\": 2", "\"version\": 3", 1);
    fs::write(&path, future).expect("write");
    let err = strict_error(&path);
    match &err {
        AutotuneError::ForeignSchema { found_version, .. } => assert_eq!(found_version, "3"),
        other => panic!("expected ForeignSchema, got {other}"),
    }
}

#[test]
fn a_directory_at_the_path_is_unreadable_and_unwritable_without_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("autotune.json");
    fs::create_dir(&path).expect("mkdir");
    fs::write(path.join("keep"), b"precious").expect("write");
    assert!(matches!(
        strict_error(&path),
        AutotuneError::NotAFile { .. }
    ));

    let store = AutotuneStore::new(device("d1"));
    store.put(AutotuneKey::new(&cache_key(1), ADAPTER), record(1));
    let err = store.save(&path).expect_err("cannot replace a directory");
    assert!(matches!(err, AutotuneError::NotAFile { .. }), "{err}");
    assert_eq!(fs::read(path.join("keep")).expect("untouched"), b"precious");
    no_temp_files_left(dir.path());
}

#[test]
fn save_into_a_missing_directory_fails_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("no-such-dir").join("autotune.json");
    let err = AutotuneStore::default()
        .save(&path)
        .expect_err("no directory");
    assert!(matches!(err, AutotuneError::Io { .. }), "{err}");
    assert!(!path.exists());
}

#[test]
fn fresh_on_error_logs_and_starts_empty_and_the_next_save_repairs_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("autotune.json");
    fs::write(&path, b"\x00\x01garbage").expect("write");
    let (store, report) =
        AutotuneStore::load(&path, &device("d1"), LoadMode::FreshOnError).expect("fresh start");
    assert!(store.is_empty());
    assert!(matches!(
        report.outcome,
        LoadOutcome::FreshStart(AutotuneError::Corrupt { .. })
    ));
    store.put(AutotuneKey::new(&cache_key(4), ADAPTER), record(4));
    store.save(&path).expect("save");
    let (again, _) = AutotuneStore::load(&path, &device("d1"), LoadMode::Strict).expect("repaired");
    assert_eq!(again.len(), 1);
}

/// A save merges with the file (issue #25, item 9): the new store's 50 records join
/// the 2 already there, and only the complete new file is left.
#[test]
fn overwriting_an_existing_file_leaves_only_the_complete_new_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("autotune.json");
    saved_store(&path, "d1");
    let store = AutotuneStore::new(device("d1"));
    for i in 0..50 {
        store.put(AutotuneKey::new(&cache_key(100 + i), ADAPTER), record(1));
    }
    store.save(&path).expect("save");
    no_temp_files_left(dir.path());
    let (loaded, _) = AutotuneStore::load(&path, &device("d1"), LoadMode::Strict).expect("load");
    assert_eq!(loaded.len(), 52);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn loading_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("autotune.json");
        fs::write(&path, &bytes).expect("write");
        let strict = AutotuneStore::load(&path, &device("d1"), LoadMode::Strict);
        // Only a document naming our schema can load; random bytes never do.
        let names_schema = bytes.windows(SCHEMA_NAME.len()).any(|w| w == SCHEMA_NAME.as_bytes());
        prop_assert!(strict.is_err() || names_schema);
        let fresh = AutotuneStore::load(&path, &device("d1"), LoadMode::FreshOnError);
        prop_assert!(fresh.is_ok());
    }

    #[test]
    fn loading_a_damaged_valid_file_never_panics(cut in 0usize..4096, flip in 0usize..4096, byte in any::<u8>()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("autotune.json");
        saved_store(&path, "d1");
        let mut bytes = fs::read(&path).expect("read");
        let at = flip % bytes.len();
        bytes[at] = byte;
        bytes.truncate(cut.min(bytes.len()));
        fs::write(&path, &bytes).expect("write");
        if let Ok((store, _)) = AutotuneStore::load(&path, &device("d1"), LoadMode::Strict) {
            // Whatever survived the damage is at most what was saved.
            prop_assert!(store.len() <= 2);
        }
    }
}

/// Regression: a save killed mid-write (tests/crash_safety.rs) left its temp file
/// behind for good. The next save sweeps temp files of processes that no longer run,
/// and never one of a live process (a concurrent save in flight).
#[cfg(target_os = "linux")]
#[test]
fn a_save_sweeps_temp_files_that_killed_saves_left_behind() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("autotune.json");
    // pid_max on Linux is at most 2^22, so this pid cannot be running.
    let orphan = dir.path().join(".autotune.json.tmp-4194305-0");
    let live = dir
        .path()
        .join(format!(".autotune.json.tmp-{}-999999", std::process::id()));
    let unrelated = dir.path().join(".other.json.tmp-4194305-0");
    for f in [&orphan, &live, &unrelated] {
        fs::write(f, b"half a file").expect("write a fake temp file");
    }
    saved_store(&path, "d1");
    assert!(!orphan.exists(), "the dead saver's temp file was swept");
    assert!(live.exists(), "a live process's temp file is left alone");
    assert!(
        unrelated.exists(),
        "another file's temp files are left alone"
    );
}

fn rejected() -> VerdictRecord {
    VerdictRecord {
        verdict: KernelVerdict::Rejected,
        ..adopted()
    }
}

/// The verdict `store` holds for the pair of shaders `(c, s)`.
fn verdict_of(store: &AutotuneStore, c: u64, s: u64) -> Option<VerdictRecord> {
    let (c, s) = (cache_key(c), cache_key(s));
    let keys = SpeculativeVariantKeys {
        conservative: &c,
        speculative: &s,
        adapter_id: ADAPTER,
    };
    store.verdict(keys).map(|v| v.verdict)
}

/// Sets the verdict on the pair of shaders `(c, s)` as measured by `store`.
fn set_verdict_of(store: &AutotuneStore, c: u64, s: u64, verdict: VerdictRecord) {
    let (c, s) = (cache_key(c), cache_key(s));
    let keys = SpeculativeVariantKeys {
        conservative: &c,
        speculative: &s,
        adapter_id: ADAPTER,
    };
    store.set_verdict(keys, verdict);
}

fn load_d1(path: &Path) -> AutotuneStore {
    AutotuneStore::load(path, &device("d1"), LoadMode::Strict)
        .expect("loads")
        .0
}

/// Regression (issue #25, item 9): two applications on one directory kept one of their
/// two verdicts, each save replacing the file with its own store. A save merges.
#[test]
fn two_stores_saving_different_verdicts_to_one_file_keep_both() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("autotune.json");
    let a = AutotuneStore::new(device("d1"));
    let b = AutotuneStore::new(device("d1"));
    set_verdict_of(&a, 1, 2, adopted());
    a.put(AutotuneKey::new(&cache_key(1), ADAPTER), record(2));
    set_verdict_of(&b, 3, 4, rejected());
    b.put(AutotuneKey::new(&cache_key(3), ADAPTER), record(4));
    a.save(&path).expect("a saves");
    b.save(&path).expect("b saves");
    a.save(&path).expect("a saves again");
    let loaded = load_d1(&path);
    assert_eq!(verdict_of(&loaded, 1, 2), Some(adopted()), "a's verdict");
    assert_eq!(verdict_of(&loaded, 3, 4), Some(rejected()), "b's verdict");
    assert_eq!(loaded.len(), 2, "both records");
    no_temp_files_left(dir.path());
}

/// The merge rule: a verdict this store measured wins over the file's; one it only
/// loaded yields to the file's (another process may have measured it since).
#[test]
fn in_a_merge_a_measured_verdict_wins_and_a_loaded_one_yields_to_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("autotune.json");
    let first = AutotuneStore::new(device("d1"));
    set_verdict_of(&first, 1, 2, adopted());
    first.save(&path).expect("save");

    let loader = load_d1(&path);
    assert_eq!(verdict_of(&loader, 1, 2), Some(adopted()));
    // Another process measures the pair again and saves: rejected now.
    let other = AutotuneStore::new(device("d1"));
    set_verdict_of(&other, 1, 2, rejected());
    other.save(&path).expect("save");
    // The loader's copy is only loaded: the file's newer verdict stays.
    loader.save(&path).expect("save");
    assert_eq!(verdict_of(&load_d1(&path), 1, 2), Some(rejected()));
    // Once the loader measures the pair itself, its verdict wins.
    set_verdict_of(&loader, 1, 2, adopted());
    loader.save(&path).expect("save");
    assert_eq!(verdict_of(&load_d1(&path), 1, 2), Some(adopted()));
}

/// Regression (issue #25, item 9): a file of a newer schema version was overwritten by
/// this older build. It is left byte for byte; the save says why; the store works on.
#[test]
fn a_file_of_a_newer_schema_version_is_never_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("autotune.json");
    saved_store(&path, "d1");
    let future =
        fs::read_to_string(&path)
            .expect("read")
            .replacen("\"version\": 2", "\"version\": 7", 1);
    fs::write(&path, &future).expect("write");

    // As the engine opens it: a logged fresh start...
    let (store, report) =
        AutotuneStore::load(&path, &device("d1"), LoadMode::FreshOnError).expect("fresh start");
    assert!(matches!(report.outcome, LoadOutcome::FreshStart(_)));
    store.put(AutotuneKey::new(&cache_key(9), ADAPTER), record(1));
    set_verdict_of(&store, 1, 2, rejected());
    // ...whose saves never replace the newer file.
    let err = store
        .save(&path)
        .expect_err("a newer file is not overwritten");
    match &err {
        AutotuneError::NewerSchema { found_version, .. } => assert_eq!(*found_version, 7),
        other => panic!("expected NewerSchema, got {other}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("autotune.json") && message.contains("newer photofinish"),
        "{message}"
    );
    assert_eq!(fs::read_to_string(&path).expect("read"), future);
    no_temp_files_left(dir.path());
    // The store keeps working in memory.
    assert_eq!(store.len(), 1);
    assert_eq!(verdict_of(&store, 1, 2), Some(rejected()));
    assert_eq!(store.publish().len(), 1);
}

/// A file that cannot be used at all is replaced by a save (as `FreshOnError`
/// promises); only a newer version of this schema is protected.
#[test]
fn a_save_replaces_a_corrupt_file_but_not_an_unreadable_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("autotune.json");
    fs::write(
        &path,
        b"{\"schema\": \"photofinish-autotune\", \"version\": 1, trunc",
    )
    .expect("write");
    let store = AutotuneStore::new(device("d1"));
    store.put(AutotuneKey::new(&cache_key(5), ADAPTER), record(5));
    store.save(&path).expect("a corrupt file is replaced");
    assert_eq!(load_d1(&path).len(), 1);
}

/// `discard_stale` drops the forgotten groups from the file, though a save merges.
#[test]
fn discard_stale_drops_the_groups_from_the_file_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("autotune.json");
    saved_store(&path, "d1");
    let (mut store, _) =
        AutotuneStore::load(&path, &device("d2"), LoadMode::Strict).expect("loads");
    assert_eq!(store.stale().len(), 1);
    store.discard_stale();
    store.put(AutotuneKey::new(&cache_key(3), ADAPTER), record(16));
    store.save(&path).expect("save");
    let (again, report) =
        AutotuneStore::load(&path, &device("d2"), LoadMode::Strict).expect("loads");
    assert_eq!((again.len(), report.stale), (1, 0), "the d1 group is gone");
}

/// Regression (issue #25, item 9): a save that fails mid-write (a full disk) must leave
/// no temporary file and the old file as it was. The disk is a 64 KiB tmpfs where this
/// test may mount one (root); in any case also a child process whose file-size limit
/// (`ulimit -f`) stops the write the same way.
#[cfg(target_os = "linux")]
#[test]
fn a_save_that_fails_mid_write_leaves_no_temp_file_and_the_old_file() {
    if let Some(path) = std::env::var_os(FULL_DISK_CHILD) {
        // The child: save a store too large for the limit, report the error.
        let err = big_store()
            .save(Path::new(&path))
            .expect_err("the file-size limit stops the write");
        println!("child-save-error: {err}");
        return;
    }
    // A tiny tmpfs, where mounting is allowed.
    let dir = tempfile::tempdir().expect("tempdir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(dir.path())
        .output()
        .is_ok_and(|o| o.status.success());
    if mounted {
        let path = dir.path().join("autotune.json");
        saved_store(&path, "d1");
        let before = fs::read(&path).expect("read");
        let err = big_store().save(&path).expect_err("the disk is full");
        let after = fs::read(&path).expect("read");
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        let _ = std::process::Command::new("umount")
            .arg(dir.path())
            .status();
        assert!(matches!(err, AutotuneError::Io { .. }), "{err}");
        assert_eq!(after, before, "the old file is intact");
        assert!(
            names.iter().all(|n| !n.to_string_lossy().contains(".tmp-")),
            "temp files left on the full disk: {names:?}"
        );
    } else {
        eprintln!("no tmpfs mount here (not root?); the file-size limit case still runs");
    }
    // A file-size limit, which needs no privilege.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("autotune.json");
    saved_store(&path, "d1");
    let before = fs::read(&path).expect("read");
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let out = std::process::Command::new("sh")
        .arg("-c")
        // SIGXFSZ ignored (inherited through exec), so the write fails with EFBIG.
        .arg("trap '' XFSZ; ulimit -f 32; exec \"$0\" \"$@\"")
        .arg(exe)
        .args([
            "--exact",
            "a_save_that_fails_mid_write_leaves_no_temp_file_and_the_old_file",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(FULL_DISK_CHILD, &path)
        .output()
        .expect("the child runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("child-save-error: could not write"),
        "{:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read(&path).expect("read"),
        before,
        "the old file is intact"
    );
    no_temp_files_left(dir.path());
}

/// Set in the environment of the child of the full-disk test: the path it saves to.
#[cfg(target_os = "linux")]
const FULL_DISK_CHILD: &str = "PHOTOFINISH_FULL_DISK_CHILD_PATH";

/// A store of about 300 KiB once saved.
#[cfg(target_os = "linux")]
fn big_store() -> AutotuneStore {
    let store = AutotuneStore::new(device("d1"));
    for i in 0..1_500 {
        store.put(AutotuneKey::new(&cache_key(1_000 + i), ADAPTER), record(3));
    }
    store
}
