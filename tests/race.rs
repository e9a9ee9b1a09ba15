//! Race samples for reports: every timed, agreeing race is published as
//! `Event::RaceSample` with both arms' kernel times, and `Engine::kernel_stats` keeps
//! them with the index of the sample that decided the verdict.

use std::sync::Arc;

use photofinish::policy::SpeculationVerdict;
use photofinish::{
    Batch, ByteSumWorkload, Engine, Event, KernelVerdict, PolicyAction, TestBackend,
};

/// An engine on a `TestBackend` of one device with `families` one-queue families whose
/// byte-sum variants take `[conservative, speculative]` ns, the byte-sum kernel
/// registered, and a subscription taken before it was.
fn timed_engine(
    families: u32,
    [conservative, speculative]: [u64; 2],
    audit_period: u64,
) -> (
    Arc<TestBackend>,
    Engine,
    photofinish::KernelId,
    photofinish::Subscription,
) {
    let backend = Arc::new(TestBackend::new(1, families, 1));
    backend.set_byte_sum_ns(conservative, speculative);
    let engine = Engine::builder()
        .backend_instance(backend.clone())
        .audit_period(audit_period)
        .build()
        .unwrap();
    let events = engine.subscribe();
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    (backend, engine, k, events)
}

/// Runs `n` batches of the byte-sum kernel one at a time.
fn run_batches(engine: &Engine, k: photofinish::KernelId, n: usize) {
    for i in 0..n {
        engine
            .submit(Batch::new(k, vec![i as u8; 5]))
            .unwrap()
            .wait()
            .unwrap();
    }
}

#[test]
fn every_race_sample_is_published_and_kept_with_the_deciding_index() {
    let (_backend, engine, k, events) =
        timed_engine(2, [1_000, 700], photofinish::DEFAULT_AUDIT_PERIOD);
    run_batches(&engine, k, 12);
    engine.shutdown();
    let samples: Vec<_> = events
        .try_iter()
        .filter_map(|e| match e {
            Event::RaceSample {
                kernel,
                sample,
                window_verdict,
                ..
            } => Some((kernel, sample, window_verdict)),
            _ => None,
        })
        .collect();
    assert_eq!(samples.len(), 8, "races stop once adopted");
    for (i, (kernel, sample, verdict)) in samples.iter().enumerate() {
        assert_eq!(*kernel, k);
        assert_eq!(sample.index, i as u32);
        assert_eq!(
            (sample.conservative_ns, sample.speculative_ns),
            (1_000, 700)
        );
        let want = if i == 7 {
            SpeculationVerdict::Adopt
        } else {
            SpeculationVerdict::KeepRacing
        };
        assert_eq!(*verdict, want, "sample {i}");
    }
    let stats = engine.kernel_stats(k).unwrap();
    assert_eq!(stats.verdict, KernelVerdict::Adopted);
    assert_eq!(stats.verdict_at_sample, Some(7));
    assert_eq!(
        stats.samples,
        samples.iter().map(|s| s.1).collect::<Vec<_>>()
    );
    assert_eq!(stats.observation.speculative_mean_ns, 700);
}

#[test]
fn policy_audits_are_published_when_the_fired_rules_or_actions_change_not_every_batch() {
    let backend = Arc::new(TestBackend::new(1, 2, 1));
    let engine = Engine::builder()
        .backend_instance(backend.clone())
        .build()
        .unwrap();
    let events = engine.subscribe();
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    for i in 0..40u8 {
        engine
            .submit(Batch::new(k, vec![i; 7]))
            .unwrap()
            .wait()
            .unwrap();
    }
    engine.shutdown();
    let audits: Vec<(Vec<String>, Vec<PolicyAction>)> = events
        .try_iter()
        .filter_map(|e| match e {
            Event::PolicyAudit { kernel, fired, did } => {
                assert_eq!(kernel, k);
                assert_eq!(fired.len(), did.len(), "one action per fired path");
                Some((fired, did))
            }
            _ => None,
        })
        .collect();
    // The first race's arms write their own buffers: D2 fires and is audited.
    assert!(
        audits
            .first()
            .is_some_and(|(f, _)| f.iter().any(|p| p == "D2 concurrent-arms")),
        "{audits:?}"
    );
    assert!(
        audits.len() < 40 / 2,
        "rate-limited to changes, got {}: {audits:?}",
        audits.len()
    );
    for pair in audits.windows(2) {
        let news = |(f, did): &(Vec<String>, Vec<PolicyAction>)| {
            let rules: Vec<String> = f.iter().map(|p| p[..2].to_string()).collect();
            (rules, did.clone())
        };
        assert_ne!(news(&pair[0]), news(&pair[1]), "published without a change");
    }
}

/// The reasons of every verdict change published so far.
fn verdict_reasons(events: &photofinish::Subscription) -> Vec<photofinish::VerdictReason> {
    events
        .try_iter()
        .filter_map(|e| match e {
            Event::VerdictChanged { reason, .. } => Some(reason),
            _ => None,
        })
        .collect()
}

#[test]
fn a_variant_steadily_faster_by_less_than_the_adoption_margin_stops_racing_after_eight_races() {
    // 5 % faster in every race: not slower, but short of MIN_ADOPT_SAVINGS_BPS (15 %),
    // so the window says keep racing for ever; the paired test sees the gain is under
    // the bar beyond any noise as soon as N2 has its eight races.
    let (_backend, engine, k, events) =
        timed_engine(1, [10_000, 9_500], photofinish::DEFAULT_AUDIT_PERIOD);
    run_batches(&engine, k, photofinish::MAX_UNDECIDED_RACES as usize + 20);
    let stats = engine.kernel_stats(k).unwrap();
    assert_eq!(stats.verdict, KernelVerdict::Rejected);
    let eight = photofinish::policy::MIN_DISPATCHES_FOR_VERDICT;
    assert_eq!(
        stats.samples.len(),
        eight as usize,
        "racing stopped at eight"
    );
    assert_eq!(stats.verdict_at_sample, Some(eight - 1));
    assert_eq!(
        verdict_reasons(&events),
        vec![photofinish::VerdictReason::Inconclusive { samples: eight }]
    );
}

#[test]
fn a_variant_too_noisy_to_place_against_the_adoption_margin_stops_racing_after_the_budget() {
    // 7.5 % faster on average, at 1.43x or 0.87x by turns: the paired test can say
    // neither that it clears the 15 % bar nor that it falls short, so it races until
    // MAX_UNDECIDED_RACES and is rejected as inconclusive.
    let (backend, engine, k, events) =
        timed_engine(1, [10_000, 7_000], photofinish::DEFAULT_AUDIT_PERIOD);
    for i in 0..photofinish::MAX_UNDECIDED_RACES as usize + 20 {
        let speculative = if i % 2 == 0 { 7_000 } else { 11_500 };
        backend.set_kernel_ns(ByteSumWorkload::SPECULATIVE, speculative);
        run_batches(&engine, k, 1);
    }
    let stats = engine.kernel_stats(k).unwrap();
    assert_eq!(stats.verdict, KernelVerdict::Rejected);
    assert_eq!(
        stats.samples.len(),
        photofinish::MAX_UNDECIDED_RACES as usize,
        "racing stopped at the budget"
    );
    assert_eq!(
        stats.verdict_at_sample,
        Some(photofinish::MAX_UNDECIDED_RACES - 1)
    );
    assert_eq!(
        verdict_reasons(&events),
        vec![photofinish::VerdictReason::Inconclusive {
            samples: photofinish::MAX_UNDECIDED_RACES
        }]
    );
}

#[test]
fn audits_of_an_adopted_variant_are_not_bound_by_the_race_budget() {
    let (backend, engine, k, _events) = timed_engine(1, [10_000, 7_000], 1);
    run_batches(&engine, k, 8);
    assert_eq!(engine.verdict(k), Some(KernelVerdict::Adopted));
    // Drift: the speculative variant is now only 5 % faster. Its window (still well
    // ahead on average) keeps it adopted; past the budget nothing rejects it.
    backend.set_kernel_ns(ByteSumWorkload::SPECULATIVE, 9_500);
    run_batches(&engine, k, photofinish::MAX_UNDECIDED_RACES as usize + 20);
    assert_eq!(engine.verdict(k), Some(KernelVerdict::Adopted));
    assert!(
        engine.kernel_stats(k).unwrap().samples.len() > photofinish::MAX_UNDECIDED_RACES as usize,
        "every batch was an audit race"
    );
}
