//! N2: the speculation verdict, and the basis-point ratio every rule uses.

use std::fmt;

/// Samples each arm needs before a verdict other than `KeepRacing`.
pub const MIN_DISPATCHES_FOR_VERDICT: u32 = 8;

/// The least saving, in basis points of the baseline, for which a speculative variant is
/// adopted.
pub const MIN_ADOPT_SAVINGS_BPS: u64 = 1500;

/// `floor(part * 10_000 / whole)` computed in u128 and clamped to `u64::MAX`;
/// `zero_value` when `whole == 0`.
///
/// ```
/// use photofinish::policy::ratio_basis_points;
/// assert_eq!(ratio_basis_points(3, 2, 0), 15_000);
/// assert_eq!(ratio_basis_points(u64::MAX, u64::MAX / 4, 0), 40_000);
/// assert_eq!(ratio_basis_points(1, 0, 7), 7);
/// ```
pub fn ratio_basis_points(part: u64, whole: u64, zero_value: u64) -> u64 {
    if whole == 0 {
        return zero_value;
    }
    super::clamp_to_u64(u128::from(part) * 10_000 / u128::from(whole))
}

/// What a race has seen so far: both arms' dispatch counts and mean times, and what
/// compiling the speculative variant cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SpeculationObservation {
    /// Dispatches of the conservative (baseline) variant.
    pub baseline_dispatches: u32,
    /// Mean time of a baseline dispatch, ns.
    pub baseline_mean_ns: u64,
    /// Dispatches of the speculative variant.
    pub speculative_dispatches: u32,
    /// Mean time of a speculative dispatch, ns.
    pub speculative_mean_ns: u64,
    /// Time spent compiling the speculative variant, amortised over its dispatches.
    pub side_compile_cost_ns: u64,
}

/// The N2 verdict on a speculative variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpeculationVerdict {
    /// It is faster by at least [`MIN_ADOPT_SAVINGS_BPS`]: run it alone.
    Adopt,
    /// It is not faster: run the conservative variant alone.
    Reject,
    /// Not enough evidence yet: keep racing.
    KeepRacing,
}

impl fmt::Display for SpeculationVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SpeculationVerdict::Adopt => "adopt",
            SpeculationVerdict::Reject => "reject",
            SpeculationVerdict::KeepRacing => "keep-racing",
        })
    }
}

/// The verdict on a speculative variant for one tuning key: the one verdict type of the
/// engine, its events, the autotune store, its file and the fleet store (the store and
/// the fleet keep it in [`crate::autotune::VerdictRecord`] with its evidence).
/// [`SpeculationVerdict`] is N2's answer for one window step (SPEC §1); its
/// `KeepRacing` is a key still `Undecided` (`From`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelVerdict {
    /// Not decided yet: batches race both variants.
    Undecided,
    /// The speculative variant won: it runs alone, with periodic audit races.
    Adopted,
    /// The speculative variant lost or disagreed: the conservative one runs alone.
    Rejected,
}

/// The window's verdict as the kernel's state: `KeepRacing` is undecided.
impl From<SpeculationVerdict> for KernelVerdict {
    fn from(v: SpeculationVerdict) -> Self {
        match v {
            SpeculationVerdict::Adopt => KernelVerdict::Adopted,
            SpeculationVerdict::Reject => KernelVerdict::Rejected,
            SpeculationVerdict::KeepRacing => KernelVerdict::Undecided,
        }
    }
}

impl fmt::Display for KernelVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KernelVerdict::Undecided => "undecided",
            KernelVerdict::Adopted => "adopted",
            KernelVerdict::Rejected => "rejected",
        })
    }
}

/// Decides whether a speculative variant has earned adoption (SPEC §1, N2).
///
/// ```
/// use photofinish::policy::{decide_speculation, SpeculationObservation, SpeculationVerdict};
/// let obs = SpeculationObservation {
///     baseline_dispatches: 8,
///     baseline_mean_ns: 1_000,
///     speculative_dispatches: 8,
///     speculative_mean_ns: 800,
///     side_compile_cost_ns: 0,
/// };
/// assert_eq!(decide_speculation(obs), SpeculationVerdict::Adopt);
/// ```
pub fn decide_speculation(obs: SpeculationObservation) -> SpeculationVerdict {
    if obs.baseline_dispatches < MIN_DISPATCHES_FOR_VERDICT
        || obs.speculative_dispatches < MIN_DISPATCHES_FOR_VERDICT
    {
        return SpeculationVerdict::KeepRacing;
    }
    if obs.baseline_mean_ns == 0 {
        return SpeculationVerdict::KeepRacing;
    }
    let amortized = obs.side_compile_cost_ns / u64::from(obs.speculative_dispatches.max(1));
    let effective = u128::from(obs.speculative_mean_ns) + u128::from(amortized);
    let baseline = u128::from(obs.baseline_mean_ns);
    if effective >= baseline {
        return SpeculationVerdict::Reject;
    }
    // effective < baseline <= u64::MAX, so the difference fits in u64 and the clamp
    // never bites.
    let saved = super::clamp_to_u64(baseline - effective);
    if ratio_basis_points(saved, obs.baseline_mean_ns, 0) >= MIN_ADOPT_SAVINGS_BPS {
        SpeculationVerdict::Adopt
    } else {
        SpeculationVerdict::KeepRacing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Eight dispatches each, baseline 10 000 ns, speculative 8 000 ns (a 20 % win).
    fn winning() -> SpeculationObservation {
        SpeculationObservation {
            baseline_dispatches: 8,
            baseline_mean_ns: 10_000,
            speculative_dispatches: 8,
            speculative_mean_ns: 8_000,
            side_compile_cost_ns: 0,
        }
    }

    fn with_speculative_mean(ns: u64) -> SpeculationObservation {
        SpeculationObservation {
            speculative_mean_ns: ns,
            ..winning()
        }
    }

    #[test]
    fn constants_match_the_spec() {
        assert_eq!(MIN_DISPATCHES_FOR_VERDICT, 8);
        assert_eq!(MIN_ADOPT_SAVINGS_BPS, 1500);
    }

    #[test]
    fn ratio_spec_examples() {
        assert_eq!(ratio_basis_points(3, 2, 0), 15_000);
        assert_eq!(ratio_basis_points(u64::MAX, u64::MAX / 4, 0), 40_000);
    }

    #[test]
    fn ratio_of_zero_whole_is_the_zero_value() {
        assert_eq!(ratio_basis_points(0, 0, 0), 0);
        assert_eq!(ratio_basis_points(5, 0, 123), 123);
        assert_eq!(ratio_basis_points(u64::MAX, 0, u64::MAX), u64::MAX);
    }

    #[test]
    fn ratio_floors_and_clamps() {
        assert_eq!(ratio_basis_points(1, 3, 0), 3_333);
        assert_eq!(ratio_basis_points(2, 3, 0), 6_666);
        assert_eq!(ratio_basis_points(0, 7, 9), 0);
        assert_eq!(ratio_basis_points(u64::MAX, u64::MAX, 0), 10_000);
        // u64::MAX * 10_000 / 1 does not fit u64: clamped, not wrapped.
        assert_eq!(ratio_basis_points(u64::MAX, 1, 0), u64::MAX);
        assert_eq!(
            ratio_basis_points(u64::MAX / 10_000, 1, 0),
            u64::MAX / 10_000 * 10_000
        );
    }

    #[test]
    fn both_arms_need_8_dispatches() {
        assert_eq!(decide_speculation(winning()), SpeculationVerdict::Adopt);
        let baseline_short = SpeculationObservation {
            baseline_dispatches: 7,
            ..winning()
        };
        assert_eq!(
            decide_speculation(baseline_short),
            SpeculationVerdict::KeepRacing
        );
        let speculative_short = SpeculationObservation {
            speculative_dispatches: 7,
            ..winning()
        };
        assert_eq!(
            decide_speculation(speculative_short),
            SpeculationVerdict::KeepRacing
        );
        // Short of samples wins over an otherwise certain Reject.
        let short_and_losing = SpeculationObservation {
            speculative_dispatches: 0,
            speculative_mean_ns: u64::MAX,
            ..winning()
        };
        assert_eq!(
            decide_speculation(short_and_losing),
            SpeculationVerdict::KeepRacing
        );
    }

    #[test]
    fn zero_baseline_keeps_racing() {
        let zero = SpeculationObservation {
            baseline_mean_ns: 0,
            speculative_mean_ns: 0,
            ..winning()
        };
        assert_eq!(decide_speculation(zero), SpeculationVerdict::KeepRacing);
    }

    #[test]
    fn equal_effective_cost_rejects_and_one_less_keeps_racing() {
        assert_eq!(
            decide_speculation(with_speculative_mean(10_000)),
            SpeculationVerdict::Reject
        );
        assert_eq!(
            decide_speculation(with_speculative_mean(10_001)),
            SpeculationVerdict::Reject
        );
        assert_eq!(
            decide_speculation(with_speculative_mean(9_999)),
            SpeculationVerdict::KeepRacing
        );
    }

    #[test]
    fn adopt_threshold_is_inclusive_at_1500_bps_and_keeps_racing_at_1499() {
        assert_eq!(
            decide_speculation(with_speculative_mean(8_500)),
            SpeculationVerdict::Adopt
        );
        assert_eq!(
            decide_speculation(with_speculative_mean(8_501)),
            SpeculationVerdict::KeepRacing
        );
    }

    #[test]
    fn compile_cost_is_amortised_over_speculative_dispatches() {
        // 8 000 + 4 000 / 8 = 8 500: exactly 1500 bps.
        let amortised = SpeculationObservation {
            side_compile_cost_ns: 4_000,
            ..winning()
        };
        assert_eq!(decide_speculation(amortised), SpeculationVerdict::Adopt);
        // 8 000 + 4 008 / 8 = 8 501: 1499 bps.
        let dearer = SpeculationObservation {
            side_compile_cost_ns: 4_008,
            ..winning()
        };
        assert_eq!(decide_speculation(dearer), SpeculationVerdict::KeepRacing);
        // 4 007 / 8 floors to 500.
        let floored = SpeculationObservation {
            side_compile_cost_ns: 4_007,
            ..winning()
        };
        assert_eq!(decide_speculation(floored), SpeculationVerdict::Adopt);
        // More dispatches spread the same cost thinner.
        let spread = SpeculationObservation {
            speculative_dispatches: 16,
            side_compile_cost_ns: 8_000,
            ..winning()
        };
        assert_eq!(decide_speculation(spread), SpeculationVerdict::Adopt);
        // A compile that costs more than the whole saving rejects.
        let ruinous = SpeculationObservation {
            side_compile_cost_ns: 16_000,
            ..winning()
        };
        assert_eq!(decide_speculation(ruinous), SpeculationVerdict::Reject);
    }

    #[test]
    fn extremes_are_widened_not_wrapped() {
        // speculative mean + amortised compile overflows u64: still a Reject, not a wrap
        // to a tiny effective cost.
        let overflow = SpeculationObservation {
            baseline_dispatches: u32::MAX,
            baseline_mean_ns: u64::MAX,
            speculative_dispatches: 8,
            speculative_mean_ns: u64::MAX,
            side_compile_cost_ns: u64::MAX,
        };
        assert_eq!(decide_speculation(overflow), SpeculationVerdict::Reject);
        let free = SpeculationObservation {
            speculative_mean_ns: 0,
            side_compile_cost_ns: 0,
            speculative_dispatches: u32::MAX,
            ..overflow
        };
        assert_eq!(decide_speculation(free), SpeculationVerdict::Adopt);
        let just_under = SpeculationObservation {
            speculative_mean_ns: u64::MAX - 1,
            side_compile_cost_ns: 0,
            ..overflow
        };
        assert_eq!(
            decide_speculation(just_under),
            SpeculationVerdict::KeepRacing
        );
    }

    #[test]
    fn display() {
        assert_eq!(SpeculationVerdict::Adopt.to_string(), "adopt");
        assert_eq!(SpeculationVerdict::Reject.to_string(), "reject");
        assert_eq!(SpeculationVerdict::KeepRacing.to_string(), "keep-racing");
    }
}
