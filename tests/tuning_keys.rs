//! Tuning keys (SPEC §8): a verdict per kind of batch, transfer between keys, re-races
//! of rejected keys, forgetting past the bound, restarts — on the test backend, whose
//! variants report a cost of `fixed + per byte`, so the winner flips with the batch's
//! size exactly where the test says. The real backends' flipping workload is tested in
//! tests/kernels.rs.

use std::sync::Arc;

use photofinish::{
    Batch, ByteSumWorkload, Engine, EngineBuilder, Event, InjectedFault, KernelId, KernelVerdict,
    PriorSource, TestBackend, TuningKey, VerdictReason, MIN_SIZE_CLASS_BYTES,
};

const SMALL: usize = 4 << 10;
const LARGE: usize = 1 << 20;

fn key(bytes: usize) -> TuningKey {
    TuningKey::for_bytes(bytes as u64, None)
}

/// A backend whose speculative byte sum costs little to start and much per byte: it
/// wins 4 KiB batches by about 35x and loses 1 MiB ones by about 1.7x.
fn flipping_backend() -> Arc<TestBackend> {
    let backend = Arc::new(TestBackend::new(1, 2, 1));
    backend.set_kernel_cost(ByteSumWorkload::CONSERVATIVE, 50_000, 10);
    backend.set_kernel_cost(ByteSumWorkload::SPECULATIVE, 1_000, 100);
    backend
}

fn builder(backend: &Arc<TestBackend>) -> EngineBuilder {
    Engine::builder()
        .backend_instance(backend.clone())
        .without_autotune_file()
}

fn run(engine: &Engine, kernel: KernelId, bytes: usize, batches: usize) {
    for i in 0..batches {
        let input = vec![(i % 251) as u8; bytes];
        let answer = engine.submit(Batch::new(kernel, input)).unwrap().wait();
        answer.expect("every batch is answered");
    }
}

#[test]
fn a_mixed_size_run_reaches_different_verdicts_for_small_and_large_keys_in_every_run() {
    for round in 0..10 {
        let backend = flipping_backend();
        let engine = builder(&backend).build().unwrap();
        let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
        for i in 0..48 {
            let bytes = if i % 2 == 0 { SMALL } else { LARGE };
            run(&engine, k, bytes, 1);
        }
        assert_eq!(
            engine.verdict_for(k, key(SMALL)),
            Some(KernelVerdict::Adopted),
            "round {round}: the small key"
        );
        assert_eq!(
            engine.verdict_for(k, key(LARGE)),
            Some(KernelVerdict::Rejected),
            "round {round}: the large key"
        );
        let stats = engine.kernel_stats(k).unwrap();
        assert_eq!(stats.keys.len(), 2);
        assert_eq!(stats.verdict, KernelVerdict::Adopted, "some key runs it");
        engine.shutdown();
    }
}

#[test]
fn a_new_key_starts_from_its_decided_neighbour_and_pays_only_the_confirmation_races() {
    let backend = flipping_backend();
    let engine = builder(&backend).build().unwrap();
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    run(&engine, k, SMALL, 12);
    assert_eq!(
        engine.verdict_for(k, key(SMALL)),
        Some(KernelVerdict::Adopted)
    );
    let cold_races = engine.kernel_stats(k).unwrap().keys[0].races;

    // 16 KiB is two classes away: it starts from the 4 KiB verdict as a prior, and its
    // callers get conservative answers until its own races confirm it.
    let mid = 16 << 10;
    let mut raced = 0;
    for i in 0..20 {
        let answer = engine
            .submit(Batch::new(k, vec![i as u8; mid]))
            .unwrap()
            .wait()
            .unwrap();
        if answer.variant != 0 {
            assert!(
                raced >= 8,
                "the prior answered before its confirmation races"
            );
        }
        raced += usize::from(answer.raced);
    }
    let stats = engine.kernel_stats(k).unwrap();
    let mid_stats = stats.keys.iter().find(|s| s.key == key(mid)).unwrap();
    assert_eq!(mid_stats.verdict, KernelVerdict::Adopted);
    assert!(mid_stats.from_prior);
    assert_eq!(mid_stats.prior_source, Some(PriorSource::Neighbour));
    assert_eq!(mid_stats.prior_key, Some(key(SMALL)));
    assert_eq!(
        mid_stats.races,
        photofinish::policy::MIN_DISPATCHES_FOR_VERDICT,
        "a confirmed prior costs its confirmation races and no more"
    );
    assert!(mid_stats.races <= cold_races);

    // Another application key never takes this kernel's verdicts: it starts cold.
    let tagged = Batch::new(k, vec![1; SMALL]).with_tuning_key(7);
    let tagged_key = tagged.tuning_key();
    assert_eq!(tagged_key.to_string(), "4KiB/app:7");
    engine.submit(tagged).unwrap().wait().unwrap();
    let stats = engine.kernel_stats(k).unwrap();
    let tagged_stats = stats.keys.iter().find(|s| s.key == tagged_key).unwrap();
    assert!(!tagged_stats.from_prior);
    engine.shutdown();
}

#[test]
fn a_rejected_neighbour_costs_the_new_key_no_race() {
    let backend = Arc::new(TestBackend::new(1, 2, 1));
    backend.set_byte_sum_ns(1_000, 3_000);
    let engine = builder(&backend).build().unwrap();
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    run(&engine, k, SMALL, 10);
    assert_eq!(
        engine.verdict_for(k, key(SMALL)),
        Some(KernelVerdict::Rejected)
    );
    let before = backend.runs(ByteSumWorkload::SPECULATIVE);
    run(&engine, k, 8 << 10, 30);
    assert_eq!(
        backend.runs(ByteSumWorkload::SPECULATIVE),
        before,
        "the new key raced a variant its neighbour rejected"
    );
    let stats = engine.kernel_stats(k).unwrap();
    let new = stats.keys.iter().find(|s| s.key == key(8 << 10)).unwrap();
    assert_eq!(new.verdict, KernelVerdict::Rejected);
    assert_eq!(new.prior_source, Some(PriorSource::Neighbour));
    assert_eq!(new.races, 0);
    engine.shutdown();
}

#[test]
fn a_neighbour_too_far_away_transfers_nothing() {
    let backend = flipping_backend();
    let engine = builder(&backend).build().unwrap();
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    run(&engine, k, SMALL, 12);
    // 1 MiB is eight classes from 4 KiB, beyond MAX_TRANSFER_CLASSES.
    run(&engine, k, LARGE, 1);
    let stats = engine.kernel_stats(k).unwrap();
    let large = stats.keys.iter().find(|s| s.key == key(LARGE)).unwrap();
    assert!(!large.from_prior, "{large:?}");
    engine.shutdown();
}

#[test]
fn a_rejected_key_is_raced_again_and_adopts_a_variant_that_now_wins() {
    let backend = Arc::new(TestBackend::new(1, 2, 1));
    backend.set_byte_sum_ns(1_000, 3_000);
    let engine = builder(&backend).audit_period(4).build().unwrap();
    let events = engine.subscribe();
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    run(&engine, k, SMALL, 10);
    assert_eq!(engine.verdict(k), Some(KernelVerdict::Rejected));
    // The phase changes: the speculative variant now wins by 2.5x.
    backend.set_byte_sum_ns(1_000, 400);
    let mut batches = 0;
    while engine.verdict(k) != Some(KernelVerdict::Adopted) {
        assert!(batches < 200, "never re-raced");
        run(&engine, k, SMALL, 1);
        batches += 1;
    }
    let stats = engine.kernel_stats(k).unwrap();
    assert!(stats.keys[0].reraces >= 1);
    let reraced = events.try_iter().any(|e| {
        matches!(
            e,
            Event::VerdictChanged {
                reason: VerdictReason::Rerace,
                ..
            }
        )
    });
    assert!(reraced, "no re-race was published");
    engine.shutdown();
}

#[test]
fn reraces_of_a_variant_that_keeps_losing_back_off() {
    let backend = Arc::new(TestBackend::new(1, 2, 1));
    backend.set_byte_sum_ns(1_000, 3_000);
    let engine = builder(&backend).audit_period(4).build().unwrap();
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    run(&engine, k, SMALL, 600);
    let stats = engine.kernel_stats(k).unwrap();
    let key_stats = &stats.keys[0];
    // Rejected, or undecided in the middle of a re-race: never adopted.
    assert_ne!(key_stats.verdict, KernelVerdict::Adopted);
    // About 150 audit ticks: waits of 4, 8, 16, 32, 64 ticks fit four or five re-races;
    // without the backoff (a re-race every 4 ticks) there would be over 30.
    assert!(
        (2..=6).contains(&key_stats.reraces),
        "{} re-races",
        key_stats.reraces
    );
    engine.shutdown();
}

#[test]
fn a_wrong_answer_on_one_key_rejects_the_variant_on_every_key() {
    let backend = flipping_backend();
    let engine = builder(&backend).build().unwrap();
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    run(&engine, k, SMALL, 12);
    assert_eq!(
        engine.verdict_for(k, key(SMALL)),
        Some(KernelVerdict::Adopted)
    );
    backend.inject(
        ByteSumWorkload::SPECULATIVE,
        InjectedFault::CorruptOutput,
        1,
    );
    run(&engine, k, LARGE, 1);
    assert_eq!(
        engine.verdict_for(k, key(SMALL)),
        Some(KernelVerdict::Rejected)
    );
    assert_eq!(
        engine.verdict_for(k, key(LARGE)),
        Some(KernelVerdict::Rejected)
    );
    // And on a key met later, with no race.
    let before = backend.runs(ByteSumWorkload::SPECULATIVE);
    run(&engine, k, 64 << 10, 10);
    assert_eq!(backend.runs(ByteSumWorkload::SPECULATIVE), before);
    engine.shutdown();
}

#[test]
fn a_key_forgotten_past_the_bound_and_met_again_starts_from_its_stored_verdict() {
    let backend = flipping_backend();
    let engine = builder(&backend).max_keys_per_kernel(2).build().unwrap();
    let events = engine.subscribe();
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    run(&engine, k, SMALL, 12);
    run(&engine, k, LARGE, 12);
    // A third key forgets the least recently used one: 4 KiB.
    run(&engine, k, 64 << 20, 1);
    let evicted: Vec<TuningKey> = events
        .try_iter()
        .filter_map(|e| match e {
            Event::KeyEvicted { key, .. } => Some(key),
            _ => None,
        })
        .collect();
    assert_eq!(evicted, vec![key(SMALL)]);
    assert_eq!(engine.kernel_stats(k).unwrap().keys.len(), 2);
    assert_eq!(engine.verdict_for(k, key(SMALL)), None);

    // Met again: it starts from the verdict the store kept, and re-verifies it.
    run(&engine, k, SMALL, 1);
    let stats = engine.kernel_stats(k).unwrap();
    let small = stats.keys.iter().find(|s| s.key == key(SMALL)).unwrap();
    assert_eq!(small.prior_source, Some(PriorSource::File));
    run(&engine, k, SMALL, 10);
    assert_eq!(
        engine.verdict_for(k, key(SMALL)),
        Some(KernelVerdict::Adopted)
    );
    engine.shutdown();
}

#[test]
fn a_restart_reverifies_each_key_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let backend = flipping_backend();
        let engine = Engine::builder()
            .backend_instance(backend.clone())
            .autotune_dir(dir.path())
            .build()
            .unwrap();
        let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
        run(&engine, k, SMALL, 12);
        run(&engine, k, LARGE, 12);
        engine.shutdown();
    }
    let backend = flipping_backend();
    let engine = Engine::builder()
        .backend_instance(backend.clone())
        .autotune_dir(dir.path())
        .build()
        .unwrap();
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    // Both keys are back at registration, as priors.
    let stats = engine.kernel_stats(k).unwrap();
    assert_eq!(stats.keys.len(), 2, "{:?}", stats.keys);
    assert!(stats
        .keys
        .iter()
        .all(|s| s.prior_source == Some(PriorSource::File)));
    assert_eq!(
        engine.verdict_for(k, key(SMALL)),
        Some(KernelVerdict::Undecided)
    );
    assert_eq!(
        engine.verdict_for(k, key(LARGE)),
        Some(KernelVerdict::Rejected)
    );
    // The large key's rejection costs no race; the small key's adoption is re-verified.
    run(&engine, k, LARGE, 10);
    assert_eq!(backend.runs(ByteSumWorkload::SPECULATIVE), 0);
    run(&engine, k, SMALL, 10);
    assert_eq!(
        engine.verdict_for(k, key(SMALL)),
        Some(KernelVerdict::Adopted)
    );
    let stats = engine.kernel_stats(k).unwrap();
    let small = stats.keys.iter().find(|s| s.key == key(SMALL)).unwrap();
    assert_eq!(small.cache, photofinish::CacheStatus::Reverified);
    engine.shutdown();
}

#[test]
fn ten_thousand_application_keys_stay_within_the_bound() {
    let backend = Arc::new(TestBackend::new(1, 2, 1));
    backend.set_byte_sum_ns(1_000, 500);
    let engine = builder(&backend).build().unwrap();
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    let bound = photofinish::DEFAULT_MAX_KEYS_PER_KERNEL;
    let mut held = Vec::new();
    for app in 0..10_000u64 {
        let batch = Batch::new(k, vec![app as u8; 64]).with_tuning_key(app);
        engine.submit(batch).unwrap().wait().unwrap();
        if app % 1000 == 999 {
            held.push(engine.kernel_stats(k).unwrap().keys.len());
        }
    }
    assert!(held.iter().all(|&n| n == bound), "{held:?}");
    assert_eq!(
        TuningKey::for_bytes(64, Some(1)).size_class_bytes(),
        MIN_SIZE_CLASS_BYTES
    );
    engine.shutdown();
}

/// Back to back on one queue, a race's second arm finds the caches the first one
/// warmed. When the conservative arm always went first, two equal variants measured
/// the speculative one faster in every race, and ten runs of `reduce` at 4 KiB on the
/// CPU backend adopted its vec4 variant (1.2–1.5×) although the kernels take the same
/// time. The arms now take turns going first: a discount for whichever runs second
/// falls on each variant in half the races, and two equal variants are not adopted.
#[test]
fn a_second_arm_warmed_by_the_first_is_not_mistaken_for_a_faster_variant() {
    for round in 0..5 {
        // One queue: no partner, so the arms run back to back.
        let backend = Arc::new(TestBackend::new(1, 1, 1));
        backend.set_byte_sum_ns(100_000, 100_000);
        backend.set_second_job_discount(30);
        let engine = builder(&backend).build().unwrap();
        let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
        run(&engine, k, SMALL, 80);
        let stats = engine.kernel_stats(k).unwrap();
        let key_stats = &stats.keys[0];
        assert_ne!(
            key_stats.verdict,
            KernelVerdict::Adopted,
            "round {round}: an equal variant adopted after {} races ({:?}×)",
            key_stats.races,
            key_stats.speedup()
        );
        assert!(key_stats.races >= 8, "round {round}: it raced");
        engine.shutdown();
    }
}
