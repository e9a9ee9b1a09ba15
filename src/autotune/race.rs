//! Races between a conservative and a speculative variant: one sample's winner (stored
//! in the autotune map), and the paired window that turns many samples into an N2
//! verdict through `policy::decide_speculation`. The verdict rule itself lives in
//! `policy`; this module only keeps the running sums and never does I/O.

use crate::policy::{decide_speculation, SpeculationObservation, SpeculationVerdict};

use super::key::{AutotuneKey, AutotuneRecord, SpeculativeVariantKeys};
use super::store::AutotuneStore;

/// Which side of a race: the conservative variant or the speculative one. The engine
/// calls it [`Arm`](crate::Arm) (the same type): which arm ran, which arm won.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpeculativeVariantKind {
    /// The conservative (known good) variant, variant 0.
    Conservative,
    /// The speculative variant.
    Speculative,
}

/// One race between the two variants: what each cost and what each ran with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeculativeVariantRace {
    /// Dispatch time of the conservative variant, ns.
    pub conservative_dispatch_ns: u64,
    /// Dispatch time of the speculative variant, ns.
    pub speculative_dispatch_ns: u64,
    /// Compile time of the conservative variant charged to this race, ns (0 once cached).
    pub conservative_compile_ns: u64,
    /// Compile time of the speculative variant charged to this race, ns (0 once cached).
    pub speculative_compile_ns: u64,
    /// The tuning the conservative variant ran with.
    pub conservative_record: AutotuneRecord,
    /// The tuning the speculative variant ran with.
    pub speculative_record: AutotuneRecord,
}

impl SpeculativeVariantRace {
    /// Compile plus dispatch of the conservative side, ns (u128: never overflows).
    pub fn conservative_total_ns(&self) -> u128 {
        u128::from(self.conservative_compile_ns) + u128::from(self.conservative_dispatch_ns)
    }

    /// Compile plus dispatch of the speculative side, ns (u128: never overflows).
    pub fn speculative_total_ns(&self) -> u128 {
        u128::from(self.speculative_compile_ns) + u128::from(self.speculative_dispatch_ns)
    }

    /// The speculative side wins only when strictly faster; a tie goes to the
    /// conservative side.
    pub fn winner(&self) -> SpeculativeVariantKind {
        if self.speculative_total_ns() < self.conservative_total_ns() {
            SpeculativeVariantKind::Speculative
        } else {
            SpeculativeVariantKind::Conservative
        }
    }
}

/// The outcome of [`record_speculative_variant_race`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeculativeVariantDecision {
    /// Which side won.
    pub winner: SpeculativeVariantKind,
    /// How much less the winner's total was than the loser's, ns (0 on a tie).
    pub saved_ns: u128,
    /// The key the winner's record was stored under.
    pub autotune_key: AutotuneKey,
}

/// Decides one race and stores the winner's record under the winner's key.
pub fn record_speculative_variant_race(
    store: &AutotuneStore,
    keys: SpeculativeVariantKeys<'_>,
    race: SpeculativeVariantRace,
) -> SpeculativeVariantDecision {
    let saved_ns = race
        .conservative_total_ns()
        .abs_diff(race.speculative_total_ns());
    let winner = race.winner();
    let (cache_key, record) = match winner {
        SpeculativeVariantKind::Speculative => (keys.speculative, race.speculative_record),
        SpeculativeVariantKind::Conservative => (keys.conservative, race.conservative_record),
    };
    let autotune_key = AutotuneKey::new(cache_key, keys.adapter_id);
    store.put(autotune_key.clone(), record);
    SpeculativeVariantDecision {
        winner,
        saved_ns,
        autotune_key,
    }
}

/// One sample of a paired window: a race of the two variants on the same batch. Its
/// fields are a race's, flat (SPEC §3: built with a struct literal);
/// [`PairedSpeculationSample::race`] and `From<SpeculativeVariantRace>` convert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairedSpeculationSample {
    /// Dispatch time of the conservative variant, ns.
    pub conservative_dispatch_ns: u64,
    /// Dispatch time of the speculative variant, ns.
    pub speculative_dispatch_ns: u64,
    /// Compile time of the conservative variant charged to this sample, ns.
    pub conservative_compile_ns: u64,
    /// Compile time of the speculative variant charged to this sample, ns.
    pub speculative_compile_ns: u64,
    /// The tuning the conservative variant ran with.
    pub conservative_record: AutotuneRecord,
    /// The tuning the speculative variant ran with.
    pub speculative_record: AutotuneRecord,
}

impl PairedSpeculationSample {
    /// The sample as a race.
    pub fn race(self) -> SpeculativeVariantRace {
        SpeculativeVariantRace {
            conservative_dispatch_ns: self.conservative_dispatch_ns,
            speculative_dispatch_ns: self.speculative_dispatch_ns,
            conservative_compile_ns: self.conservative_compile_ns,
            speculative_compile_ns: self.speculative_compile_ns,
            conservative_record: self.conservative_record,
            speculative_record: self.speculative_record,
        }
    }
}

impl From<SpeculativeVariantRace> for PairedSpeculationSample {
    fn from(race: SpeculativeVariantRace) -> Self {
        PairedSpeculationSample {
            conservative_dispatch_ns: race.conservative_dispatch_ns,
            speculative_dispatch_ns: race.speculative_dispatch_ns,
            conservative_compile_ns: race.conservative_compile_ns,
            speculative_compile_ns: race.speculative_compile_ns,
            conservative_record: race.conservative_record,
            speculative_record: race.speculative_record,
        }
    }
}

/// What one [`PairedSpeculationWindow::record_sample`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairedSpeculationUpdate {
    /// The sample's own race (its winner is now in the store).
    pub race_decision: SpeculativeVariantDecision,
    /// The N2 verdict on the window so far.
    pub verdict: SpeculationVerdict,
    /// The observation the verdict was taken on.
    pub observation: SpeculationObservation,
}

/// A running mean of dispatch times: a count and an exact total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct RunningMean {
    count: u32,
    total_ns: u128,
}

impl RunningMean {
    /// Adds a sample; false (and nothing changes) once the count is `u32::MAX`.
    fn add(&mut self, ns: u64) -> bool {
        let Some(count) = self.count.checked_add(1) else {
            return false;
        };
        self.count = count;
        // At most u32::MAX samples of at most u64::MAX each: below 2^96, no overflow.
        self.total_ns += u128::from(ns);
        true
    }

    /// floor(total / count); 0 when empty. Never above the largest sample, so it fits.
    fn mean_ns(&self) -> u64 {
        if self.count == 0 {
            return 0;
        }
        u64::try_from(self.total_ns / u128::from(self.count)).unwrap_or(u64::MAX)
    }
}

/// The paired timing window of one conservative/speculative pair: every sample races
/// both variants, and the running means feed `policy::decide_speculation`.
///
/// Overflow: the sums are u128 and cannot overflow. The counts are u32; once an arm
/// has `u32::MAX` samples, further samples for that arm are not counted (its count,
/// total and mean stay frozen), and once the speculative arm is frozen its compile
/// times are no longer added to the side-compile cost either. The race of every sample
/// is still decided and its winner stored. The side-compile cost is reported clamped
/// to `u64::MAX`. Nothing panics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PairedSpeculationWindow {
    conservative: RunningMean,
    speculative: RunningMean,
    side_compile_ns: u128,
}

impl PairedSpeculationWindow {
    /// An empty window.
    pub fn new() -> Self {
        Self::default()
    }

    /// A window that carries on from `observation` (e.g. a loaded verdict's): counts,
    /// means and side-compile cost as given, so that
    /// `resume(obs).observation() == obs`.
    pub fn resume(observation: SpeculationObservation) -> Self {
        let arm = |count: u32, mean: u64| RunningMean {
            count,
            total_ns: u128::from(count) * u128::from(mean),
        };
        Self {
            conservative: arm(
                observation.baseline_dispatches,
                observation.baseline_mean_ns,
            ),
            speculative: arm(
                observation.speculative_dispatches,
                observation.speculative_mean_ns,
            ),
            side_compile_ns: u128::from(observation.side_compile_cost_ns),
        }
    }

    /// Paired samples: the smaller of the two arms' counts.
    pub fn len(&self) -> u32 {
        self.conservative.count.min(self.speculative.count)
    }

    /// True when no paired sample has been recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the window has seen, as `decide_speculation` takes it.
    pub fn observation(&self) -> SpeculationObservation {
        SpeculationObservation {
            baseline_dispatches: self.conservative.count,
            baseline_mean_ns: self.conservative.mean_ns(),
            speculative_dispatches: self.speculative.count,
            speculative_mean_ns: self.speculative.mean_ns(),
            side_compile_cost_ns: u64::try_from(self.side_compile_ns).unwrap_or(u64::MAX),
        }
    }

    /// The N2 verdict on what the window has seen.
    pub fn verdict(&self) -> SpeculationVerdict {
        decide_speculation(self.observation())
    }

    /// Records one sample: decides and stores its race, adds both dispatch times to
    /// the means and the speculative compile time to the side-compile cost, and
    /// returns the verdict so far. Storing a changed verdict is the caller's job
    /// (`AutotuneStore::set_verdict`).
    pub fn record_sample(
        &mut self,
        store: &AutotuneStore,
        keys: SpeculativeVariantKeys<'_>,
        sample: PairedSpeculationSample,
    ) -> PairedSpeculationUpdate {
        let race = sample.race();
        self.conservative.add(race.conservative_dispatch_ns);
        if self.speculative.add(race.speculative_dispatch_ns) {
            self.side_compile_ns += u128::from(race.speculative_compile_ns);
        }
        let race_decision = record_speculative_variant_race(store, keys, race);
        let observation = self.observation();
        PairedSpeculationUpdate {
            race_decision,
            verdict: decide_speculation(observation),
            observation,
        }
    }
}
