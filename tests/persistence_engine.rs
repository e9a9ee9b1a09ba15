//! Persistence wired into the engine: a second engine with the same autotune directory
//! starts from the stored verdict as a prior and re-verifies it with as many races as a
//! fresh engine needs before it adopts (SPEC §11); a contradicted
//! loaded verdict is overturned; a corrupt file is a logged fresh start, never a panic.

use std::path::Path;
use std::sync::Arc;

use photofinish::autotune::{AutotuneStore, LoadMode, LoadOutcome, Trust};
use photofinish::{
    Batch, ByteSumWorkload, CacheStatus, Engine, Event, InjectedFault, KernelId, KernelVerdict,
    PriorSource, TestBackend, VerdictReason,
};

/// A test backend where the speculative variant is twice as fast.
fn fast_speculative_backend() -> Arc<TestBackend> {
    let backend = Arc::new(TestBackend::new(1, 2, 1));
    backend.set_byte_sum_ns(1_000, 500);
    backend
}

fn engine_in(dir: &Path, backend: &Arc<TestBackend>) -> Engine {
    Engine::builder()
        .backend_instance(backend.clone())
        .autotune_dir(dir)
        .build()
        .expect("engine builds")
}

fn run_batches(engine: &Engine, k: KernelId, n: u8) {
    for i in 0..n {
        engine
            .submit(Batch::new(k, vec![i, 1, 2]))
            .unwrap()
            .wait()
            .unwrap();
    }
}

/// First run: adopt after the 8-sample window, then shut down (which saves).
fn first_run(dir: &Path) {
    let engine = engine_in(dir, &fast_speculative_backend());
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    run_batches(&engine, k, 10);
    assert_eq!(engine.verdict(k), Some(KernelVerdict::Adopted));
    let stats = engine.kernel_stats(k).unwrap();
    assert_eq!(stats.cache, CacheStatus::NotCached);
    assert_eq!(stats.verdict_at_sample, Some(7));
    let path = engine.autotune_path(0).expect("persistence on").to_owned();
    engine.shutdown();
    assert!(path.exists(), "saved at {}", path.display());
}

#[test]
fn a_second_engine_starts_from_the_stored_verdict_and_reverifies_it() {
    let dir = tempfile::tempdir().unwrap();
    first_run(dir.path());

    let backend = fast_speculative_backend();
    let engine = engine_in(dir.path(), &backend);
    assert!(matches!(
        engine.autotune_load_report(0).map(|r| &r.outcome),
        Some(LoadOutcome::Loaded)
    ));
    let events = engine.subscribe();
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    // The key's state, with its prior, is made by its first batch.
    run_batches(&engine, k, 1);
    let stats = engine.kernel_stats(k).unwrap();
    assert_eq!(stats.cache, CacheStatus::Loaded);
    assert_eq!(stats.keys.len(), 1);
    assert_eq!(stats.keys[0].prior_source, Some(PriorSource::File));
    assert_eq!(
        stats.verdict,
        KernelVerdict::Undecided,
        "a loaded verdict is not trusted before its race"
    );
    assert_eq!(
        stats.observation.baseline_dispatches, 1,
        "the window holds only this engine's samples"
    );

    // MIN_DISPATCHES_FOR_VERDICT (8) agreeing races re-verify it, with conservative
    // answers meanwhile; from then on the speculative variant runs alone.
    run_batches(&engine, k, 11);
    let stats = engine.kernel_stats(k).unwrap();
    assert_eq!(stats.verdict, KernelVerdict::Adopted);
    assert_eq!(stats.cache, CacheStatus::Reverified);
    assert_eq!(stats.verdict_at_sample, Some(7));
    assert_eq!(stats.samples.len(), 8);
    assert_eq!(backend.runs(ByteSumWorkload::CONSERVATIVE), 8);
    assert_eq!(backend.runs(ByteSumWorkload::SPECULATIVE), 12);
    let store = engine.autotune_store(0).unwrap();
    let snapshot = store.publish();
    assert_eq!(snapshot.verdicts.len(), 1);
    assert!(snapshot
        .verdicts
        .values()
        .all(|v| v.trust == Trust::Verified));
    engine.shutdown();
    let reasons: Vec<_> = events
        .try_iter()
        .filter_map(|e| match e {
            Event::VerdictChanged { to, reason, .. } => Some((to, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        reasons,
        vec![(KernelVerdict::Adopted, VerdictReason::Reverified)]
    );
}

#[test]
fn a_loaded_verdict_contradicted_by_its_race_is_overturned() {
    let dir = tempfile::tempdir().unwrap();
    first_run(dir.path());

    let backend = fast_speculative_backend();
    backend.inject(
        ByteSumWorkload::SPECULATIVE,
        InjectedFault::CorruptOutput,
        1,
    );
    let engine = engine_in(dir.path(), &backend);
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    run_batches(&engine, k, 3);
    let stats = engine.kernel_stats(k).unwrap();
    assert_eq!(stats.verdict, KernelVerdict::Rejected);
    assert_eq!(stats.cache, CacheStatus::Overturned);
    engine.shutdown();

    // The rejection was saved over the loaded adoption.
    let path = dir.path().join(
        engine
            .autotune_store(0)
            .unwrap()
            .identity()
            .store_file_name(),
    );
    let (store, _) = AutotuneStore::load(
        &path,
        engine.autotune_store(0).unwrap().identity(),
        LoadMode::Strict,
    )
    .expect("a valid file");
    let snapshot = store.publish();
    assert!(snapshot
        .verdicts
        .values()
        .all(|v| v.verdict.verdict == KernelVerdict::Rejected));
}

#[test]
fn a_corrupt_autotune_file_is_a_logged_fresh_start() {
    let dir = tempfile::tempdir().unwrap();
    let backend = fast_speculative_backend();
    // Learn the file name of this device's store, then corrupt it.
    let probe = engine_in(dir.path(), &backend);
    let path = probe.autotune_path(0).unwrap().to_owned();
    drop(probe);
    std::fs::write(&path, b"{ this is not an autotune file").unwrap();

    let engine = engine_in(dir.path(), &backend);
    assert!(matches!(
        engine.autotune_load_report(0).map(|r| &r.outcome),
        Some(LoadOutcome::FreshStart(_))
    ));
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    assert_eq!(
        engine.kernel_stats(k).unwrap().cache,
        CacheStatus::NotCached
    );
    run_batches(&engine, k, 10);
    assert_eq!(engine.verdict(k), Some(KernelVerdict::Adopted));
    let identity = engine.autotune_store(0).unwrap().identity().clone();
    engine.shutdown();
    // The next save replaced the bad file with a good one.
    let (store, report) = AutotuneStore::load(&path, &identity, LoadMode::Strict).unwrap();
    assert!(matches!(report.outcome, LoadOutcome::Loaded));
    assert_eq!(store.verdict_count(), 1);
}

#[test]
fn persistence_can_be_turned_off() {
    let engine = Engine::builder()
        .backend_instance(fast_speculative_backend())
        .autotune_dir("/nonexistent/should-not-be-used")
        .without_autotune_file()
        .build()
        .unwrap();
    assert!(engine.autotune_path(0).is_none());
    assert!(engine.autotune_load_report(0).is_none());
}
