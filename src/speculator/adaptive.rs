//! The `AdaptiveSpeculator`: one lock-free word shared by every worker, holding the
//! commit-rate EMA, the enabled flag and the sample count. It decides nothing beyond its
//! own hysteresis and never blocks; the word layout and why it is linearizable are in
//! `README.md` beside this file.

use std::fmt;

use super::report::SpeculationReport;
use crate::sync::{AtomicU64, Ordering};

/// The commit-rate threshold, in percent, of [`AdaptiveSpeculator::default_threshold`].
pub const DEFAULT_THRESHOLD_PCT: u32 = 15;

/// Bits 0..32 of the word: the EMA in ppm. It always lies between the starting value
/// (the threshold, at most `u32::MAX`) and some observation (at most 10^6), so 32 bits
/// hold every value it can take.
const EMA_MASK: u64 = 0xFFFF_FFFF;
/// Bit 32: the speculator is enabled.
const ENABLED_BIT: u64 = 1 << 32;
/// Bits 33..64: the sample count.
const SAMPLES_SHIFT: u32 = 33;
/// The sample count saturates here (2^31 − 1).
pub const MAX_SAMPLES: u32 = (1 << (64 - SAMPLES_SHIFT)) - 1;

/// The speculator's three values, read together in one atomic load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpeculatorSnapshot {
    /// The exponential moving average of the commit rate, in ppm.
    pub commit_rate_ppm: u32,
    /// Whether fused speculation is currently on.
    pub enabled: bool,
    /// Non-empty reports recorded so far, saturating at [`MAX_SAMPLES`].
    pub samples: u32,
}

impl SpeculatorSnapshot {
    fn pack(self) -> u64 {
        u64::from(self.commit_rate_ppm)
            | if self.enabled { ENABLED_BIT } else { 0 }
            | (u64::from(self.samples.min(MAX_SAMPLES)) << SAMPLES_SHIFT)
    }

    fn unpack(word: u64) -> Self {
        Self {
            commit_rate_ppm: (word & EMA_MASK) as u32,
            enabled: word & ENABLED_BIT != 0,
            samples: (word >> SAMPLES_SHIFT) as u32,
        }
    }

    /// The state after one non-empty observation of `observed_ppm` at `threshold_ppm`:
    /// the EMA step, then the hysteresis, then the sample count. The whole transition is
    /// this pure function; [`AdaptiveSpeculator::record`] only installs its result.
    fn step(self, observed_ppm: u32, threshold_ppm: u32) -> Self {
        let old = i64::from(self.commit_rate_ppm);
        // α = 1/4 as a signed arithmetic shift (floors toward −∞). The result lies
        // between `old` and `observed`, both u32, so the cast back is exact.
        let ema = (old + ((i64::from(observed_ppm) - old) >> 2)) as u32;
        let margin = threshold_ppm / 4;
        let enabled = if self.enabled {
            ema >= threshold_ppm - margin
        } else {
            u64::from(ema) >= u64::from(threshold_ppm) + u64::from(margin)
        };
        Self {
            commit_rate_ppm: ema,
            enabled,
            samples: self.samples.saturating_add(1).min(MAX_SAMPLES),
        }
    }
}

/// What one [`AdaptiveSpeculator::record`] did: the state it replaced and the state it
/// installed, both exact (they are the two ends of one atomic step).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordOutcome {
    /// The state just before this record took effect.
    pub before: SpeculatorSnapshot,
    /// The state this record installed (equal to `before` for an ignored empty report).
    pub after: SpeculatorSnapshot,
}

impl RecordOutcome {
    /// `Some(now_enabled)` when this record flipped the enabled flag, so the engine can
    /// publish a "speculator toggled" event exactly once per flip.
    pub fn toggled(&self) -> Option<bool> {
        (self.before.enabled != self.after.enabled).then_some(self.after.enabled)
    }

    /// Whether the report was empty and so not counted.
    pub fn ignored(&self) -> bool {
        self.before.samples == self.after.samples && self.before == self.after
    }
}

/// Decides, from the commit rates that fused kernels report, whether fused speculation
/// is worth running. Shared by all workers (`&self` everywhere) and lock-free.
///
/// ```
/// use photofinish::speculator::{AdaptiveSpeculator, SpeculationReport};
/// let spec = AdaptiveSpeculator::default_threshold();
/// assert!(spec.should_speculate());
/// spec.record(SpeculationReport::from_counts(0, 10));
/// assert_eq!(spec.commit_rate_ppm(), 112_500);
/// let outcome = spec.record(SpeculationReport::from_counts(0, 10));
/// assert_eq!(outcome.toggled(), Some(false));
/// assert!(!spec.should_speculate());
/// ```
pub struct AdaptiveSpeculator {
    threshold_ppm: u32,
    word: AtomicU64,
}

impl AdaptiveSpeculator {
    /// A speculator that wants a commit rate of `threshold_pct` percent. It starts
    /// enabled, with the EMA at the threshold and no samples.
    pub fn new(threshold_pct: u32) -> Self {
        let threshold_ppm = threshold_pct.saturating_mul(10_000);
        let start = SpeculatorSnapshot {
            commit_rate_ppm: threshold_ppm,
            enabled: true,
            samples: 0,
        };
        Self {
            threshold_ppm,
            word: AtomicU64::new(start.pack()),
        }
    }

    /// A speculator at [`DEFAULT_THRESHOLD_PCT`].
    pub fn default_threshold() -> Self {
        Self::new(DEFAULT_THRESHOLD_PCT)
    }

    /// The threshold in ppm: `threshold_pct * 10^4`, saturating at `u32::MAX`.
    pub fn threshold_ppm(&self) -> u32 {
        self.threshold_ppm
    }

    /// The EMA, enabled flag and sample count, all from the same instant.
    pub fn snapshot(&self) -> SpeculatorSnapshot {
        SpeculatorSnapshot::unpack(self.word.load(Ordering::Acquire))
    }

    /// The EMA of the commit rate, in ppm.
    pub fn commit_rate_ppm(&self) -> u32 {
        self.snapshot().commit_rate_ppm
    }

    /// Non-empty reports recorded so far (saturating at [`MAX_SAMPLES`]).
    pub fn samples(&self) -> u32 {
        self.snapshot().samples
    }

    /// Whether fused kernels should take the speculative path now.
    pub fn should_speculate(&self) -> bool {
        self.snapshot().enabled
    }

    /// Folds one fused dispatch's report into the EMA and applies the hysteresis, as one
    /// atomic step. An empty report changes nothing and is not counted.
    pub fn record(&self, report: SpeculationReport) -> RecordOutcome {
        if report.is_empty() {
            let now = self.snapshot();
            return RecordOutcome {
                before: now,
                after: now,
            };
        }
        let observed = report.commit_rate_ppm();
        let threshold = self.threshold_ppm;
        let mut current = self.word.load(Ordering::Acquire);
        loop {
            let before = SpeculatorSnapshot::unpack(current);
            let after = before.step(observed, threshold);
            match self.word.compare_exchange_weak(
                current,
                after.pack(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return RecordOutcome { before, after },
                Err(actual) => current = actual,
            }
        }
    }
}

impl Default for AdaptiveSpeculator {
    fn default() -> Self {
        Self::default_threshold()
    }
}

impl fmt::Debug for AdaptiveSpeculator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.snapshot();
        f.debug_struct("AdaptiveSpeculator")
            .field("threshold_ppm", &self.threshold_ppm)
            .field("commit_rate_ppm", &s.commit_rate_ppm)
            .field("enabled", &s.enabled)
            .field("samples", &s.samples)
            .finish()
    }
}

#[cfg(all(test, not(photofinish_loom)))]
mod tests {
    use super::*;

    const ALL_ROLLED_BACK: SpeculationReport = SpeculationReport::from_counts(0, 16);
    const ALL_COMMITTED: SpeculationReport = SpeculationReport::from_counts(16, 0);

    /// A report whose commit rate is exactly `ppm` (10^6 tiles attempted).
    fn report_at(ppm: u32) -> SpeculationReport {
        SpeculationReport::from_counts(ppm, 1_000_000 - ppm)
    }

    #[test]
    fn starts_enabled_at_the_threshold() {
        let s = AdaptiveSpeculator::default_threshold();
        assert_eq!(s.threshold_ppm(), 150_000);
        assert_eq!(
            s.snapshot(),
            SpeculatorSnapshot {
                commit_rate_ppm: 150_000,
                enabled: true,
                samples: 0
            }
        );
        assert!(s.should_speculate());
    }

    #[test]
    fn exact_ema_steps_down_and_back_up() {
        let s = AdaptiveSpeculator::new(15);
        // 150 000 + (−150 000 >> 2) = 112 500: exactly at threshold − margin, still on.
        let first = s.record(ALL_ROLLED_BACK);
        assert_eq!(s.commit_rate_ppm(), 112_500);
        assert!(s.should_speculate());
        assert_eq!(first.toggled(), None);
        // 112 500 + (−112 500 >> 2) = 84 375 < 112 500: off.
        let second = s.record(ALL_ROLLED_BACK);
        assert_eq!(s.commit_rate_ppm(), 84_375);
        assert!(!s.should_speculate());
        assert_eq!(second.toggled(), Some(false));
        assert_eq!(second.before, first.after);
        // The enable point is threshold + margin = 187 500. From 84 375, an observation
        // of 496 871 lands on 84 375 + (412 496 >> 2) = 187 499: still off.
        let probe = AdaptiveSpeculator::new(15);
        probe.record(ALL_ROLLED_BACK);
        probe.record(ALL_ROLLED_BACK);
        let below = probe.record(report_at(496_871));
        assert_eq!(below.after.commit_rate_ppm, 187_499);
        assert!(!below.after.enabled);
        // An observation of 496 875 lands exactly on 187 500: on.
        let at = s.record(report_at(496_875));
        assert_eq!(at.after.commit_rate_ppm, 187_500);
        assert_eq!(at.toggled(), Some(true));
        assert!(s.should_speculate());
        assert_eq!(s.samples(), 3);
    }

    #[test]
    fn all_committed_climbs_by_a_quarter_of_the_gap() {
        let s = AdaptiveSpeculator::new(15);
        s.record(ALL_COMMITTED);
        // 150 000 + (850 000 >> 2) = 362 500.
        assert_eq!(s.commit_rate_ppm(), 362_500);
        // 362 500 + (637 500 >> 2) = 521 875.
        s.record(ALL_COMMITTED);
        assert_eq!(s.commit_rate_ppm(), 521_875);
        assert!(s.should_speculate());
    }

    #[test]
    fn negative_steps_floor_toward_minus_infinity() {
        let s = AdaptiveSpeculator::new(0);
        s.record(report_at(1));
        // 0 + (1 >> 2) = 0.
        assert_eq!(s.commit_rate_ppm(), 0);
        let s = AdaptiveSpeculator::new(1); // 10 000 ppm
        s.record(report_at(9_999));
        // 10 000 + (−1 >> 2) = 10 000 − 1 (arithmetic shift of −1 is −1).
        assert_eq!(s.commit_rate_ppm(), 9_999);
    }

    #[test]
    fn hysteresis_band_holds_the_flag_in_both_directions() {
        // Threshold 20 %: margin 50 000, off below 150 000, on at 250 000 or above.
        let on = SpeculatorSnapshot {
            commit_rate_ppm: 150_000,
            enabled: true,
            samples: 0,
        };
        // Observation equal to the EMA keeps it there: exactly the lower edge stays on.
        assert!(on.step(150_000, 200_000).enabled);
        assert!(!on.step(149_999, 200_000).enabled);
        let off = SpeculatorSnapshot {
            commit_rate_ppm: 250_000,
            enabled: false,
            samples: 0,
        };
        assert!(off.step(250_000, 200_000).enabled);
        assert!(!off.step(249_997, 200_000).enabled);
        // Inside the band neither state changes.
        let mid_on = SpeculatorSnapshot {
            commit_rate_ppm: 200_000,
            ..on
        };
        let mid_off = SpeculatorSnapshot {
            commit_rate_ppm: 200_000,
            ..off
        };
        assert!(mid_on.step(200_000, 200_000).enabled);
        assert!(!mid_off.step(200_000, 200_000).enabled);
    }

    #[test]
    fn empty_report_is_ignored() {
        let s = AdaptiveSpeculator::new(15);
        s.record(ALL_ROLLED_BACK);
        let before = s.snapshot();
        let outcome = s.record(SpeculationReport::empty());
        assert!(outcome.ignored());
        assert_eq!(outcome.toggled(), None);
        assert_eq!(s.snapshot(), before);
        assert_eq!(s.samples(), 1);
        assert!(!s.record(ALL_COMMITTED).ignored());
    }

    #[test]
    fn sample_count_counts_non_empty_reports_and_saturates() {
        let s = AdaptiveSpeculator::new(15);
        for i in 1..=5 {
            s.record(report_at(500_000));
            assert_eq!(s.samples(), i);
        }
        let full = SpeculatorSnapshot {
            commit_rate_ppm: 7,
            enabled: true,
            samples: MAX_SAMPLES,
        };
        assert_eq!(SpeculatorSnapshot::unpack(full.pack()), full);
        assert_eq!(full.step(7, 0).samples, MAX_SAMPLES);
    }

    #[test]
    fn threshold_zero_never_disables() {
        let s = AdaptiveSpeculator::new(0);
        assert_eq!(s.threshold_ppm(), 0);
        for _ in 0..10 {
            assert_eq!(s.record(ALL_ROLLED_BACK).toggled(), None);
        }
        assert_eq!(s.commit_rate_ppm(), 0);
        assert!(s.should_speculate());
    }

    #[test]
    fn huge_thresholds_do_not_panic() {
        // Two all-rolled-back reports take any threshold's EMA below threshold − margin.
        // From below, the EMA of all-committed reports stops at 10^6 − 3 (the shift
        // floors), so it re-enables only when threshold + margin ≤ 999 997: at 79 % but
        // not at 80 % or any larger threshold.
        for pct in [79, 80, 100, 101, 429_496, 429_497, u32::MAX] {
            let s = AdaptiveSpeculator::new(pct);
            assert_eq!(s.threshold_ppm(), pct.saturating_mul(10_000));
            assert_eq!(s.commit_rate_ppm(), s.threshold_ppm());
            s.record(ALL_ROLLED_BACK);
            s.record(ALL_ROLLED_BACK);
            assert!(!s.should_speculate(), "pct {pct}");
            let mut previous = s.commit_rate_ppm();
            for _ in 0..60 {
                s.record(ALL_COMMITTED);
                let now = s.commit_rate_ppm();
                // The EMA moves toward 10^6 and never overshoots it.
                assert!(now.abs_diff(1_000_000) <= previous.abs_diff(1_000_000));
                previous = now;
            }
            assert_eq!(s.should_speculate(), pct == 79, "pct {pct}");
        }
    }

    #[test]
    fn word_round_trips_every_field() {
        for snapshot in [
            SpeculatorSnapshot {
                commit_rate_ppm: u32::MAX,
                enabled: false,
                samples: MAX_SAMPLES,
            },
            SpeculatorSnapshot {
                commit_rate_ppm: 0,
                enabled: true,
                samples: 0,
            },
            SpeculatorSnapshot {
                commit_rate_ppm: 1_000_000,
                enabled: true,
                samples: 12_345,
            },
        ] {
            assert_eq!(SpeculatorSnapshot::unpack(snapshot.pack()), snapshot);
        }
    }

    #[test]
    fn concurrent_records_each_apply_once() {
        let s = crate::sync::Arc::new(AdaptiveSpeculator::new(15));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let s = crate::sync::Arc::clone(&s);
                crate::sync::thread::spawn(move || {
                    for _ in 0..1_000 {
                        s.record(ALL_COMMITTED);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("recording thread panicked");
        }
        // Every record observes the same rate, so any interleaving ends where a
        // sequential replay of the 2 000 records does.
        let replay = AdaptiveSpeculator::new(15);
        for _ in 0..2_000 {
            replay.record(ALL_COMMITTED);
        }
        assert_eq!(s.snapshot(), replay.snapshot());
        assert_eq!(s.samples(), 2_000);
    }
}
