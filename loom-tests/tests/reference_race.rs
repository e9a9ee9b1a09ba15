//! The reference design's race, found by the same model that passes for
//! `AdaptiveSpeculator`: a copy of the reference speculator keeps the EMA, the enabled
//! flag and the sample count in separate atomics and updates them with separate
//! operations. loom must find an interleaving that leaves (or shows a reader) a state no
//! sequential order produces; if it ever stops finding one, the model has lost its teeth
//! and `reference_design_race_is_caught` fails.
#![cfg(photofinish_loom)]

mod speculator_model;

use loom::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use photofinish::speculator::{
    AdaptiveSpeculator, RecordOutcome, SpeculationReport, SpeculatorSnapshot,
};
use speculator_model::{Design, THRESHOLD_PCT};

/// The reference design, reduced to its record path: correct sequentially, racy
/// concurrently.
struct ReferenceSpeculator {
    threshold_ppm: u32,
    ema_ppm: AtomicU32,
    enabled: AtomicBool,
    samples: AtomicU32,
}

impl Design for ReferenceSpeculator {
    fn fresh() -> Self {
        let threshold_ppm = THRESHOLD_PCT * 10_000;
        Self {
            threshold_ppm,
            ema_ppm: AtomicU32::new(threshold_ppm),
            enabled: AtomicBool::new(true),
            samples: AtomicU32::new(0),
        }
    }

    fn record(&self, report: SpeculationReport) -> Option<RecordOutcome> {
        if report.is_empty() {
            return None;
        }
        let observed = i64::from(report.commit_rate_ppm());
        self.samples.fetch_add(1, Ordering::AcqRel);
        let step = |old: u32| {
            let old = i64::from(old);
            Some((old + ((observed - old) >> 2)) as u32)
        };
        let ema = match self
            .ema_ppm
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, step)
        {
            Ok(old) | Err(old) => step(old).unwrap_or(old),
        };
        let margin = self.threshold_ppm / 4;
        if self.enabled.load(Ordering::Acquire) {
            if ema < self.threshold_ppm - margin {
                self.enabled.store(false, Ordering::Release);
            }
        } else if ema >= self.threshold_ppm + margin {
            self.enabled.store(true, Ordering::Release);
        }
        None
    }

    fn snapshot(&self) -> SpeculatorSnapshot {
        SpeculatorSnapshot {
            commit_rate_ppm: self.ema_ppm.load(Ordering::Acquire),
            enabled: self.enabled.load(Ordering::Acquire),
            samples: self.samples.load(Ordering::Acquire),
        }
    }
}

/// The copy is faithful: run sequentially it passes through exactly the states
/// `AdaptiveSpeculator` does, so the race below is the design's, not the copy's.
#[test]
fn reference_copy_matches_the_speculator_sequentially() {
    loom::model(|| {
        use speculator_model::{sequential_path, PULL_DOWN, PUSH_UP};
        for (first, second) in [(PULL_DOWN, PUSH_UP), (PUSH_UP, PULL_DOWN)] {
            assert_eq!(
                sequential_path::<ReferenceSpeculator>(first, second),
                sequential_path::<AdaptiveSpeculator>(first, second)
            );
        }
    });
}

#[test]
#[should_panic(expected = "not a sequential state")]
fn reference_design_race_is_caught() {
    loom::model(speculator_model::two_records_and_a_reader::<ReferenceSpeculator>);
}
