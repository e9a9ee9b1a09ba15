//! The paired test on top of N2 and the arm-time clamp: what each agreeing race of a
//! speculative variant feeds besides its paired window (`keys::RaceLog`).

use crate::policy::{SpeculationVerdict, MIN_ADOPT_SAVINGS_BPS, MIN_DISPATCHES_FOR_VERDICT};

/// The paired test on top of N2 (SPEC §8: variants within noise are never adopted).
///
/// Each agreeing race adds `r = ln(conservative ÷ speculative)` of the times that fed
/// the window. N2 (`decide_speculation`, unchanged) reads the window's means; this
/// reads the races' paired ratios, whose mean and spread say whether the speculative
/// variant is faster race by race or only on average:
/// - N2 says Adopt: taken only when `t = mean(r) ÷ (sd(r) ÷ √n)` ≥ [`CONFIRM_T`]
///   (the speculative variant is faster beyond the races' own noise); otherwise keep
///   racing — so a variant within noise reaches Reject or, after
///   `MAX_UNDECIDED_RACES`, Inconclusive, never Adopt;
/// - N2 says Reject: taken unless `t` ≥ [`CONFIRM_T`] (a few outliers made the
///   speculative mean the larger although it won race by race): then keep racing;
/// - N2 says KeepRacing (the variant wins by less than its bar so far): the caller
///   rejects it as inconclusive once the ratios' excess over the bar has
///   `t ≤ −CONFIRM_T` ([`PairedRatios::under_the_bar`]) rather than racing it to
///   `MAX_UNDECIDED_RACES`: a variant within noise of the conservative one, or faster
///   by less than the bar, stops costing races after about eight of them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct PairedRatios {
    n: u32,
    sum: f64,
    sum_sq: f64,
}

/// N2's adoption bar as a paired ratio: `ln(conservative ÷ speculative)` of a variant
/// that saves exactly `MIN_ADOPT_SAVINGS_BPS` of the conservative time.
fn adoption_bar_ratio() -> f64 {
    let kept = 10_000 - MIN_ADOPT_SAVINGS_BPS.min(9_999);
    (10_000.0 / kept as f64).ln()
}

/// The t statistic the paired test needs to call one variant faster (about a 0.5 %
/// one-sided level for normal ratios; N2's eight races or more come first).
pub const CONFIRM_T: f64 = 3.0;

impl PairedRatios {
    /// Adds one race's fed times.
    pub(crate) fn feed(&mut self, conservative_ns: u64, speculative_ns: u64) {
        let r = (conservative_ns.max(1) as f64).ln() - (speculative_ns.max(1) as f64).ln();
        self.n = self.n.saturating_add(1);
        self.sum += r;
        self.sum_sq += r * r;
    }

    /// The paired t statistic; `None` with fewer than two races.
    pub(crate) fn t(&self) -> Option<f64> {
        self.t_against(0.0)
    }

    /// The t statistic of the mean ratio's excess over `bar`; `None` with fewer than
    /// two races.
    fn t_against(&self, bar: f64) -> Option<f64> {
        if self.n < 2 {
            return None;
        }
        let n = f64::from(self.n);
        let mean = self.sum / n;
        let var = ((self.sum_sq - n * mean * mean) / (n - 1.0)).max(0.0);
        let se = (var / n).sqrt();
        let excess = mean - bar;
        Some(if se > 0.0 {
            excess / se
        } else if excess > 0.0 {
            f64::INFINITY
        } else if excess < 0.0 {
            f64::NEG_INFINITY
        } else {
            0.0
        })
    }

    /// True when the races say, beyond their noise, that the speculative variant
    /// saves less than N2's adoption bar (`MIN_ADOPT_SAVINGS_BPS`), from
    /// `MIN_DISPATCHES_FOR_VERDICT` races on: N2 would keep racing it to
    /// `MAX_UNDECIDED_RACES` and reject it as inconclusive, and this says so early.
    pub(crate) fn under_the_bar(&self) -> bool {
        self.n >= MIN_DISPATCHES_FOR_VERDICT
            && self
                .t_against(adoption_bar_ratio())
                .is_some_and(|t| t <= -CONFIRM_T)
    }

    /// True when the races say the speculative variant is faster beyond their noise.
    pub(crate) fn clearly_faster(&self) -> bool {
        self.t().is_some_and(|t| t >= CONFIRM_T)
    }

    /// N2's window verdict with the paired test on top (see the type's docs).
    pub(crate) fn confirm(&self, n2: SpeculationVerdict) -> SpeculationVerdict {
        match n2 {
            SpeculationVerdict::Adopt if !self.clearly_faster() => SpeculationVerdict::KeepRacing,
            SpeculationVerdict::Reject if self.clearly_faster() => SpeculationVerdict::KeepRacing,
            other => other,
        }
    }
}

/// Recent raw kernel times of one arm.
///
/// A race's arms share the GPU with whatever other workers run at that moment, so now
/// and then an arm's time is inflated many-fold by a heavy kernel on another queue (on
/// an H200: an 11 µs arm measured at 1.4 ms next to a 35 ms global-atomics histogram).
/// The paired window decides on means, which one such sample can swing. So a sample
/// taken while another backend call ran on the device (`contention`) has each arm's
/// time clamped to [`ArmHistory::CLAMP`] × the median of that arm's recent times
/// before it feeds the window: it still counts and a slow run still weighs, but a
/// disturbance cannot outvote the rest. A race alone on its device feeds its times as
/// measured — a variant's own occasional slow runs are part of its cost (on lavapipe,
/// one queue, no race is ever contended). Kept samples (`KernelStats::samples`) are raw.
#[derive(Debug, Default, Clone)]
pub(crate) struct ArmHistory {
    recent: std::collections::VecDeque<u64>,
}

impl ArmHistory {
    /// Raw times kept per arm.
    pub(crate) const LEN: usize = 16;
    /// Times needed before clamping starts.
    pub(crate) const MIN_FOR_MEDIAN: usize = 3;
    /// The most a contended sample may weigh, in medians.
    pub(crate) const CLAMP: u64 = 4;

    /// The median of the recent times, once there are [`Self::MIN_FOR_MEDIAN`].
    pub(crate) fn median(&self) -> Option<u64> {
        if self.recent.len() < Self::MIN_FOR_MEDIAN {
            return None;
        }
        let mut sorted: Vec<u64> = self.recent.iter().copied().collect();
        sorted.sort_unstable();
        Some(sorted[sorted.len() / 2])
    }

    /// Records `ns` and returns what feeds the window: `ns` itself, or for a
    /// `contended` sample `ns` clamped against the times recorded before it.
    pub(crate) fn feed(&mut self, ns: u64, contended: bool) -> u64 {
        let fed = match self.median() {
            Some(median) if contended => ns.min(median.saturating_mul(Self::CLAMP).max(1)),
            _ => ns,
        };
        if self.recent.len() == Self::LEN {
            self.recent.pop_front();
        }
        self.recent.push_back(ns);
        fed
    }
}

#[cfg(all(test, not(photofinish_loom)))]
mod tests {
    use super::*;

    fn ratios(pairs: &[(u64, u64)]) -> PairedRatios {
        let mut r = PairedRatios::default();
        for &(c, s) in pairs {
            r.feed(c, s);
        }
        r
    }

    #[test]
    fn a_clear_speedup_is_confirmed_and_noise_is_not() {
        let clear = ratios(&[(150, 100), (160, 98), (140, 103), (155, 99), (148, 101)]);
        assert_eq!(
            clear.confirm(SpeculationVerdict::Adopt),
            SpeculationVerdict::Adopt
        );
        // Two equal variants whose means happen to differ by 20 %: no adoption.
        let noise = ratios(&[(200, 100), (100, 150), (180, 100), (100, 120), (150, 100)]);
        assert_eq!(
            noise.confirm(SpeculationVerdict::Adopt),
            SpeculationVerdict::KeepRacing
        );
        assert_eq!(
            noise.confirm(SpeculationVerdict::Reject),
            SpeculationVerdict::Reject
        );
    }

    #[test]
    fn a_variant_within_noise_is_under_the_bar_after_eight_races_and_a_fast_one_never() {
        // Equal variants, a few per cent of noise either way.
        let equal = [(100, 103), (104, 100), (99, 101), (102, 98), (100, 102)];
        let mut r = ratios(&equal);
        assert!(!r.under_the_bar(), "five races are fewer than N2's eight");
        for &(c, s) in &equal[..3] {
            r.feed(c, s);
        }
        assert!(r.under_the_bar(), "eight races within 4 % of each other");
        // 10 % faster, steadily: a real gain, but under the 15 % bar.
        let modest = ratios(&[(110, 100), (111, 100), (109, 100), (110, 101)].repeat(2));
        assert!(modest.under_the_bar());
        // 1.5x faster with noise: never under the bar.
        let fast = ratios(&[(150, 100), (130, 100), (170, 100), (140, 105)].repeat(4));
        assert!(!fast.under_the_bar());
        // Equal on average but too noisy to say: keep racing.
        let noisy = ratios(&[(200, 100), (100, 190), (180, 100), (100, 170)].repeat(2));
        assert!(!noisy.under_the_bar());
    }

    #[test]
    fn an_outlier_cannot_reject_a_variant_that_won_every_race() {
        // The speculative mean is the larger (one 50x outlier), yet it won nine of ten.
        let mut pairs = vec![(200, 100); 9];
        pairs.push((200, 10_000));
        let mut r = ratios(&pairs);
        assert_eq!(
            r.confirm(SpeculationVerdict::Reject),
            SpeculationVerdict::Reject
        );
        // With a steadier record the outlier does not decide.
        for _ in 0..20 {
            r.feed(200, 101);
        }
        assert_eq!(
            r.confirm(SpeculationVerdict::Reject),
            SpeculationVerdict::KeepRacing
        );
    }

    #[test]
    fn identical_times_are_never_clearly_faster() {
        let r = ratios(&[(100, 100); 20]);
        assert_eq!(r.t(), Some(0.0));
        assert!(!r.clearly_faster());
    }
}

#[cfg(all(test, not(photofinish_loom)))]
mod history_tests {
    use super::ArmHistory;

    #[test]
    fn a_contended_outlier_is_clamped_to_four_medians_and_kept_raw() {
        let mut h = ArmHistory::default();
        for ns in [11_000, 10_800, 11_200] {
            assert_eq!(h.feed(ns, true), ns, "no median yet");
        }
        assert_eq!(h.feed(1_408_576, true), 4 * 11_000);
        // The raw time was kept: the median of [10.8, 11, 11.2, 1408.6] µs is 11.2 µs.
        assert_eq!(h.feed(50_000, true), 44_800);
        assert_eq!(h.feed(12_000, true), 12_000, "an ordinary time passes");
    }

    #[test]
    fn an_uncontended_sample_feeds_as_measured() {
        let mut h = ArmHistory::default();
        for ns in [11_000, 10_800, 11_200] {
            h.feed(ns, false);
        }
        assert_eq!(h.feed(1_408_576, false), 1_408_576);
    }

    #[test]
    fn only_the_last_sixteen_times_count() {
        let mut h = ArmHistory::default();
        for _ in 0..16 {
            h.feed(1_000, true);
        }
        for _ in 0..16 {
            h.feed(100_000, true);
        }
        assert_eq!(
            h.feed(150_000, true),
            150_000,
            "the old regime is forgotten"
        );
    }
}
