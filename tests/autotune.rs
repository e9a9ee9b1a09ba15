//! The autotune map: races, the paired window, trust, and concurrent use (SPEC §3).

use std::sync::Arc;
use std::thread;

use photofinish::autotune::{
    record_speculative_variant_race, AutotuneKey, AutotuneRecord, AutotuneStore,
    PairedSpeculationSample, PairedSpeculationWindow, SpecCacheKey, SpeculativeVariantKeys,
    SpeculativeVariantKind, SpeculativeVariantRace, Trust, VerdictReason, VerdictRecord,
};
use photofinish::policy::{SpeculationObservation, SpeculationVerdict};

const ADAPTER: &str = "test-adapter";

fn cache_key(shader_hash: u64) -> SpecCacheKey {
    SpecCacheKey {
        shader_hash,
        binding_sig: 0xb1d,
        workgroup_size: [64, 1, 1],
        spec_hash: 0x5bec,
    }
}

fn record(unroll: u32) -> AutotuneRecord {
    AutotuneRecord {
        workgroup_size: [64, 1, 1],
        unroll,
        tile: [16, 1, 1],
        recorded_at: "2025-01-01T00:00:00Z".into(),
    }
}

fn race(conservative: (u64, u64), speculative: (u64, u64)) -> SpeculativeVariantRace {
    SpeculativeVariantRace {
        conservative_dispatch_ns: conservative.0,
        conservative_compile_ns: conservative.1,
        speculative_dispatch_ns: speculative.0,
        speculative_compile_ns: speculative.1,
        conservative_record: record(1),
        speculative_record: record(4),
    }
}

struct Pair {
    conservative: SpecCacheKey,
    speculative: SpecCacheKey,
}

impl Pair {
    fn new() -> Self {
        Pair {
            conservative: cache_key(1),
            speculative: cache_key(2),
        }
    }

    fn keys(&self) -> SpeculativeVariantKeys<'_> {
        SpeculativeVariantKeys {
            conservative: &self.conservative,
            speculative: &self.speculative,
            adapter_id: ADAPTER,
        }
    }
}

#[test]
fn tie_goes_to_the_conservative_variant() {
    let store = AutotuneStore::default();
    let pair = Pair::new();
    // Totals 1_000 each, split differently between compile and dispatch.
    let decision =
        record_speculative_variant_race(&store, pair.keys(), race((900, 100), (400, 600)));
    assert_eq!(decision.winner, SpeculativeVariantKind::Conservative);
    assert_eq!(decision.saved_ns, 0);
    assert_eq!(
        decision.autotune_key,
        AutotuneKey::new(&pair.conservative, ADAPTER)
    );
    assert_eq!(store.get(&decision.autotune_key).map(|r| r.unroll), Some(1));
    assert!(store
        .get(&AutotuneKey::new(&pair.speculative, ADAPTER))
        .is_none());
}

#[test]
fn speculative_wins_only_when_strictly_faster_and_compile_time_counts() {
    let store = AutotuneStore::default();
    let pair = Pair::new();
    let faster = record_speculative_variant_race(&store, pair.keys(), race((1_000, 0), (999, 0)));
    assert_eq!(faster.winner, SpeculativeVariantKind::Speculative);
    assert_eq!(faster.saved_ns, 1);
    assert_eq!(store.get(&faster.autotune_key).map(|r| r.unroll), Some(4));

    // Faster dispatch, but its compile time makes the total slower.
    let slower = record_speculative_variant_race(&store, pair.keys(), race((1_000, 0), (500, 501)));
    assert_eq!(slower.winner, SpeculativeVariantKind::Conservative);
    assert_eq!(slower.saved_ns, 1);
}

#[test]
fn race_totals_do_not_overflow() {
    let store = AutotuneStore::default();
    let pair = Pair::new();
    let d = record_speculative_variant_race(
        &store,
        pair.keys(),
        race((u64::MAX, u64::MAX), (u64::MAX, u64::MAX - 1)),
    );
    assert_eq!(d.winner, SpeculativeVariantKind::Speculative);
    assert_eq!(d.saved_ns, 1);
    let d =
        record_speculative_variant_race(&store, pair.keys(), race((u64::MAX, u64::MAX), (0, 0)));
    assert_eq!(d.saved_ns, 2 * u128::from(u64::MAX));
}

fn sample(conservative_ns: u64, speculative_ns: u64, compile_ns: u64) -> PairedSpeculationSample {
    race((conservative_ns, 0), (speculative_ns, compile_ns)).into()
}

/// SPEC §3 (the seeds' contract): a paired sample is built with a struct literal of the
/// race's six fields, flat; it once wrapped them in a `race` field, so code written
/// against the seeds did not compile.
#[test]
fn paired_sample_is_built_from_the_seeds_six_flat_fields() {
    let record = AutotuneRecord {
        workgroup_size: [64, 1, 1],
        unroll: 1,
        tile: [1, 1, 1],
        recorded_at: String::new(),
    };
    let sample = PairedSpeculationSample {
        conservative_dispatch_ns: 1_000,
        speculative_dispatch_ns: 600,
        conservative_compile_ns: 0,
        speculative_compile_ns: 50,
        conservative_record: record.clone(),
        speculative_record: record,
    };
    let store = AutotuneStore::default();
    let pair = Pair::new();
    let mut window = PairedSpeculationWindow::new();
    let update = window.record_sample(&store, pair.keys(), sample.clone());
    assert_eq!(
        update.race_decision.winner,
        SpeculativeVariantKind::Speculative
    );
    assert_eq!(update.race_decision.saved_ns, 350);
    assert_eq!(update.observation.side_compile_cost_ns, 50);
    assert_eq!(PairedSpeculationSample::from(sample.clone().race()), sample);
}

#[test]
fn window_keeps_racing_until_eight_samples_then_adopts_a_clear_winner() {
    let store = AutotuneStore::default();
    let pair = Pair::new();
    let mut window = PairedSpeculationWindow::new();
    assert!(window.is_empty());
    for i in 1..=7u32 {
        // The first sample pays the speculative compile (800 ns), amortised over all.
        let compile = if i == 1 { 800 } else { 0 };
        let update = window.record_sample(&store, pair.keys(), sample(1_000, 700, compile));
        assert_eq!(update.verdict, SpeculationVerdict::KeepRacing, "sample {i}");
        assert_eq!(window.len(), i);
    }
    let update = window.record_sample(&store, pair.keys(), sample(1_000, 700, 0));
    assert_eq!(
        update.observation,
        SpeculationObservation {
            baseline_dispatches: 8,
            baseline_mean_ns: 1_000,
            speculative_dispatches: 8,
            speculative_mean_ns: 700,
            side_compile_cost_ns: 800,
        }
    );
    // effective = 700 + 800/8 = 800: saves 20% ≥ 15%.
    assert_eq!(update.verdict, SpeculationVerdict::Adopt);
    assert_eq!(
        update.race_decision.winner,
        SpeculativeVariantKind::Speculative
    );
    assert_eq!(window.verdict(), SpeculationVerdict::Adopt);
    assert_eq!(window.observation(), update.observation);
}

#[test]
fn window_rejects_a_variant_whose_compile_cost_eats_its_gain() {
    let store = AutotuneStore::default();
    let pair = Pair::new();
    let mut window = PairedSpeculationWindow::new();
    let mut last = None;
    for i in 0..10 {
        // Dispatch 900 vs 1_000, but 10 × 200 ns of compile amortised over 10 = 200.
        let update = window.record_sample(&store, pair.keys(), sample(1_000, 900, 200));
        if i < 7 {
            assert_eq!(update.verdict, SpeculationVerdict::KeepRacing);
        }
        last = Some(update);
    }
    let last = last.map(|u| (u.verdict, u.observation.side_compile_cost_ns));
    assert_eq!(last, Some((SpeculationVerdict::Reject, 2_000)));
}

#[test]
fn window_means_are_exact_floors_of_the_totals() {
    let store = AutotuneStore::default();
    let pair = Pair::new();
    let mut window = PairedSpeculationWindow::new();
    for (c, s) in [(10, 1), (11, 2), (13, 2)] {
        window.record_sample(&store, pair.keys(), sample(c, s, 0));
    }
    let obs = window.observation();
    assert_eq!((obs.baseline_mean_ns, obs.speculative_mean_ns), (11, 1));
}

#[test]
fn window_saturates_counts_and_freezes_the_arm_at_u32_max() {
    let store = AutotuneStore::default();
    let pair = Pair::new();
    let full = SpeculationObservation {
        baseline_dispatches: u32::MAX,
        baseline_mean_ns: u64::MAX,
        speculative_dispatches: u32::MAX - 1,
        speculative_mean_ns: 10,
        side_compile_cost_ns: u64::MAX - 5,
    };
    let mut window = PairedSpeculationWindow::resume(full);
    assert_eq!(window.observation(), full);
    assert_eq!(window.len(), u32::MAX - 1);

    // The speculative arm has room for one more sample, the conservative arm none.
    let update = window.record_sample(&store, pair.keys(), sample(0, 10, 100));
    assert_eq!(update.observation.baseline_dispatches, u32::MAX);
    assert_eq!(
        update.observation.baseline_mean_ns,
        u64::MAX,
        "frozen arm ignores the 0 ns sample"
    );
    assert_eq!(update.observation.speculative_dispatches, u32::MAX);
    assert_eq!(
        update.observation.side_compile_cost_ns,
        u64::MAX,
        "clamped, not wrapped"
    );
    // The race itself is still decided and stored.
    assert_eq!(
        update.race_decision.winner,
        SpeculativeVariantKind::Conservative
    );
    assert!(store.get(&update.race_decision.autotune_key).is_some());

    // Both arms frozen now: more samples change nothing and nothing panics.
    let before = window.observation();
    for _ in 0..3 {
        window.record_sample(&store, pair.keys(), sample(1, u64::MAX, u64::MAX));
    }
    assert_eq!(window.observation(), before);
    assert_eq!(window.len(), u32::MAX);
    assert_eq!(window.verdict(), SpeculationVerdict::Adopt);
}

#[test]
fn put_is_verified_and_loaded_style_trust_can_be_upgraded() {
    let store = AutotuneStore::default();
    let key = AutotuneKey::new(&cache_key(9), ADAPTER);
    assert!(store.is_empty());
    assert!(!store.mark_verified(&key), "nothing to mark");
    assert_eq!(store.put(key.clone(), record(2)), None);
    let old = store.put(key.clone(), record(3));
    assert_eq!(old.map(|r| r.unroll), Some(2));
    let entry = store.entry(&key);
    assert_eq!(
        entry.map(|e| (e.record.unroll, e.trust)),
        Some((3, Trust::Verified))
    );
    assert_eq!(store.len(), 1);
}

#[test]
fn verdicts_are_stored_per_variant_pair() {
    let store = AutotuneStore::default();
    let pair = Pair::new();
    let other_speculative = cache_key(3);
    let other = SpeculativeVariantKeys {
        speculative: &other_speculative,
        ..pair.keys()
    };
    let verdict = VerdictRecord {
        verdict: photofinish::KernelVerdict::Rejected,
        observation: SpeculationObservation::default(),
        reason: VerdictReason::Mismatch,
    };
    assert!(store.verdict(pair.keys()).is_none());
    assert!(store.set_verdict(pair.keys(), verdict.clone()).is_none());
    let stored = store.verdict(pair.keys());
    assert_eq!(
        stored.map(|s| (s.verdict, s.trust)),
        Some((verdict, Trust::Verified))
    );
    assert!(
        store.verdict(other).is_none(),
        "another speculative variant is undecided"
    );
    assert!(!store.mark_verdict_verified(other));
    assert_eq!(store.verdict_count(), 1);
}

#[test]
fn snapshot_is_the_last_published_view_and_readers_keep_it() {
    let store = AutotuneStore::default();
    let first = store.snapshot();
    assert_eq!((first.generation, first.len()), (0, 0));
    let key = AutotuneKey::new(&cache_key(5), ADAPTER);
    store.put(key.clone(), record(8));
    assert!(store.snapshot().is_empty(), "not published yet");
    let published = store.publish();
    assert_eq!(published.generation, 1);
    let seen = store.snapshot();
    assert!(Arc::ptr_eq(&published, &seen));
    assert_eq!(seen.get(&key).map(|r| r.unroll), Some(8));
    store.put(key.clone(), record(9));
    store.publish();
    // The old view is immutable: a reader holding it still sees what it saw.
    assert_eq!(seen.get(&key).map(|r| r.unroll), Some(8));
    assert_eq!(store.snapshot().get(&key).map(|r| r.unroll), Some(9));
    assert!(first.is_empty());
}

#[test]
fn four_threads_put_and_read_concurrently_and_every_put_is_visible() {
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 500;
    let store = AutotuneStore::default();
    let key_of = |t: u64, i: u64| AutotuneKey::new(&cache_key(t * 1_000_000 + i), ADAPTER);
    thread::scope(|s| {
        for t in 0..THREADS {
            let store = &store;
            s.spawn(move || {
                for i in 0..PER_THREAD {
                    let unroll = u32::try_from(t * PER_THREAD + i).unwrap_or(u32::MAX);
                    store.put(key_of(t, i), record(unroll));
                    // Our own put is visible at once; another thread's key may or may
                    // not be there yet, but if it is, it holds that thread's value.
                    assert_eq!(store.get(&key_of(t, i)).map(|r| r.unroll), Some(unroll));
                    let peer = (t + 1) % THREADS;
                    if let Some(r) = store.get(&key_of(peer, i)) {
                        assert_eq!(u64::from(r.unroll), peer * PER_THREAD + i);
                    }
                    if i % 100 == 0 {
                        store.publish();
                    }
                }
            });
        }
    });
    assert_eq!(store.len() as u64, THREADS * PER_THREAD);
    let snapshot = store.publish();
    assert_eq!(snapshot.len() as u64, THREADS * PER_THREAD);
    for t in 0..THREADS {
        for i in 0..PER_THREAD {
            let expected = t * PER_THREAD + i;
            assert_eq!(
                store.get(&key_of(t, i)).map(|r| u64::from(r.unroll)),
                Some(expected)
            );
            assert_eq!(
                snapshot.get(&key_of(t, i)).map(|r| u64::from(r.unroll)),
                Some(expected)
            );
        }
    }
}
