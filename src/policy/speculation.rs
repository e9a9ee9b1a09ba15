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
