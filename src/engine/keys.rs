//! A kernel's state for one tuning key (SPEC §8): each speculative variant's verdict
//! and race log, the ladder of variants, the key's autotune-store names, and what the
//! public [`KeyStats`] reports of it.
//!
//! The state is plain data with its own locks; what starts a key (priors: file,
//! neighbour) lives in `priors.rs`, and what races and judges in `race.rs`.

use std::fmt;

use crate::autotune::{
    PairedSpeculationWindow, SpecCacheKey, SpeculativeVariantKeys, VerdictRecord,
};
use crate::policy::{SpeculationObservation, MIN_DISPATCHES_FOR_VERDICT};
use crate::sync::{AtomicBool, Mutex, Ordering};

use super::events::KernelVerdict;
use super::ladder::Ladder;
use super::paired::{ArmHistory, PairedRatios};
use super::sample::{CacheStatus, KernelId, RaceSample};
use super::specialise::spec_hash;
use super::tuning::TuningKey;
use super::verdict::VerdictCell;

/// Where a key's starting verdict (a prior, SPEC §11) came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PriorSource {
    /// The nearest decided key of the same kernel in this engine (SPEC §8 transfer).
    Neighbour,
    /// The autotune file: this key's own entry, or a kernel-wide entry of a file
    /// written before tuning keys.
    File,
    /// The fleet store shared by several hosts (SPEC §13).
    Fleet,
}

impl fmt::Display for PriorSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PriorSource::Neighbour => "neighbour",
            PriorSource::File => "file",
            PriorSource::Fleet => "fleet",
        })
    }
}

/// What the engine knows about one tuning key of a kernel (`KernelStats::keys`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStats {
    /// The key.
    pub key: TuningKey,
    /// The verdict on the speculative variant in play for this key.
    pub verdict: KernelVerdict,
    /// The speculative variant in play for this key.
    pub variant: usize,
    /// The verdict on every speculative variant for this key (`[0]` is variant 1's).
    pub variant_verdicts: Vec<KernelVerdict>,
    /// Races run for this key (every variant's, audits and re-races included).
    pub races: u32,
    /// True when the key started from a prior (a neighbour's, the file's or the
    /// fleet's verdict) rather than cold.
    pub from_prior: bool,
    /// Where the prior of the variant in play came from.
    pub prior_source: Option<PriorSource>,
    /// The neighbour key it came from, for [`PriorSource::Neighbour`].
    pub prior_key: Option<TuningKey>,
    /// Whether the verdict came from the autotune file and was re-verified.
    pub cache: CacheStatus,
    /// Times a rejected verdict of this key was raced again (SPEC §8 backoff).
    pub reraces: u32,
    /// The timed races of the variant in play, oldest first.
    pub samples: Vec<RaceSample>,
    /// The sample index at which the verdict last changed from a measurement.
    pub verdict_at_sample: Option<u32>,
    /// What the variant in play's paired window has seen.
    pub observation: SpeculationObservation,
}

impl KeyStats {
    /// The speculative variant's speedup over the conservative one in its window
    /// (conservative mean ÷ speculative mean); `None` before both arms were timed.
    pub fn speedup(&self) -> Option<f64> {
        let o = &self.observation;
        (o.speculative_dispatches > 0 && o.speculative_mean_ns > 0 && o.baseline_mean_ns > 0)
            .then(|| o.baseline_mean_ns as f64 / o.speculative_mean_ns as f64)
    }
}

/// A verdict a key starts from, waiting for this engine's confirmation races.
#[derive(Debug, Clone)]
pub(crate) struct Hint {
    /// The device whose store held it (for a neighbour's: the device of the key).
    pub(crate) device: usize,
    /// The verdict.
    pub(crate) verdict: VerdictRecord,
    /// Where it came from.
    pub(crate) source: PriorSource,
}

/// How a variant's verdict on a key was reached: what a neighbour may transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Basis {
    /// Not decided.
    #[default]
    None,
    /// By this key's own races (a confirmed prior counts): transfers.
    Measured,
    /// Rejected as inconclusive (no clear winner at this size): does not transfer.
    Inconclusive,
    /// Taken from a prior without a race (a rejected prior): does not transfer.
    Prior,
    /// Rejected for a wrong answer or a failure: sticky, never re-raced.
    Broken,
}

/// A key's re-race schedule of a rejected variant (SPEC §8): while rejected for its
/// timings, every `skips`-th audit tick of the kernel's batches (see
/// `Lane::audit_due`) on this key races it again for at most [`RERACE_RACES`] races;
/// each re-race that ends rejected doubles the wait, up to [`RERACE_MAX_SKIPS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rerace {
    /// Audit ticks left before the next re-race.
    pub(crate) skips: u32,
    /// Ticks to wait after the next rejection.
    pub(crate) backoff: u32,
    /// Races left of a re-race under way.
    pub(crate) left: Option<u32>,
    /// Re-races begun.
    pub(crate) count: u32,
}

/// Audit ticks before a rejected variant's first re-race (with the default audit
/// period of 64 batches: after about 256 batches of the key).
pub const RERACE_FIRST_SKIPS: u32 = 4;
/// The longest wait between re-races, in audit ticks.
pub const RERACE_MAX_SKIPS: u32 = 1024;
/// Races a re-race may take to adopt the variant before it is rejected again.
pub const RERACE_RACES: u32 = 2 * MIN_DISPATCHES_FOR_VERDICT;

impl Default for Rerace {
    fn default() -> Self {
        Rerace {
            skips: RERACE_FIRST_SKIPS,
            backoff: RERACE_FIRST_SKIPS,
            left: None,
            count: 0,
        }
    }
}

impl Rerace {
    /// Counts one audit tick of a rejected key; true when a re-race is due now.
    pub(crate) fn tick(&mut self) -> bool {
        if self.left.is_some() {
            return false;
        }
        self.skips = self.skips.saturating_sub(1);
        self.skips == 0
    }

    /// The variant was rejected (again): the next re-race waits the backoff, which
    /// doubles for the one after.
    pub(crate) fn rejected(&mut self) {
        self.left = None;
        self.skips = self.backoff;
        self.backoff = self.backoff.saturating_mul(2).min(RERACE_MAX_SKIPS);
    }

    /// The variant was adopted: the schedule starts over for a later rejection.
    pub(crate) fn adopted(&mut self) {
        *self = Rerace {
            count: self.count,
            ..Rerace::default()
        };
    }
}

/// One speculative variant's race bookkeeping on one key, behind one lock.
#[derive(Debug)]
pub(crate) struct RaceLog {
    pub(crate) window: PairedSpeculationWindow,
    pub(crate) ratios: PairedRatios,
    pub(crate) samples: Vec<RaceSample>,
    pub(crate) next_sample: u32,
    pub(crate) verdict_at_sample: Option<u32>,
    /// A prior waiting for its confirmation races.
    pub(crate) hint: Option<Hint>,
    /// The prior the key started from (kept after it was confirmed or overturned).
    pub(crate) prior: Option<(PriorSource, Option<TuningKey>)>,
    pub(crate) basis: Basis,
    pub(crate) cache: CacheStatus,
    /// Races of this variant on this key.
    pub(crate) races: u32,
    pub(crate) rerace: Rerace,
    /// The last [`ArmHistory::LEN`] raw kernel times of each arm, `[conservative,
    /// speculative]`, for clamping contended samples.
    pub(crate) history: [ArmHistory; 2],
}

impl Default for RaceLog {
    fn default() -> Self {
        RaceLog {
            window: PairedSpeculationWindow::new(),
            ratios: PairedRatios::default(),
            samples: Vec::new(),
            next_sample: 0,
            verdict_at_sample: None,
            hint: None,
            prior: None,
            basis: Basis::None,
            cache: CacheStatus::NotCached,
            races: 0,
            rerace: Rerace::default(),
            history: Default::default(),
        }
    }
}

impl RaceLog {
    /// Starts the window afresh (a re-race, a prior's confirmation): the samples of
    /// the verdict before do not vote on the next one.
    pub(crate) fn restart_window(&mut self) {
        self.window = PairedSpeculationWindow::new();
        self.ratios = PairedRatios::default();
        self.history = Default::default();
    }
}

/// One speculative variant on one key: its verdict against the conservative variant
/// and the bookkeeping of its races.
#[derive(Debug, Default)]
pub(crate) struct Candidate {
    pub(crate) verdict: VerdictCell,
    log: Mutex<RaceLog>,
}

/// A kernel's state for one tuning key.
///
/// Variant 0 is the conservative one; variants 1.. are speculative candidates, each
/// with its own verdict and race log against variant 0 on this key. One candidate is
/// *in play* at a time (batches race or run it); [`KeyState::settle`] moves play along
/// the ladder.
#[derive(Debug)]
pub(crate) struct KeyState {
    /// The kernel it belongs to.
    pub(crate) kernel: KernelId,
    pub(crate) key: TuningKey,
    /// Set when the kernel's table forgot this key (a worker's cached state is then
    /// looked up afresh).
    forgotten: AtomicBool,
    /// `candidates[v - 1]` for speculative variant `v`.
    candidates: Box<[Candidate]>,
    ladder: Ladder,
    /// Every variant's autotune key for this tuning key (`spec_hash` names the key).
    store_keys: Box<[SpecCacheKey]>,
}

impl KeyState {
    /// A cold key of a kernel whose variants have the autotune keys `variant_keys`
    /// (conservative first) and, for this key, the specialisation-constant values
    /// `values` (one list per variant; empty for a variant without constants, and
    /// where `values` is short). Each variant's `spec_hash` for the key names the key
    /// and those values.
    pub(crate) fn new(
        kernel: KernelId,
        key: TuningKey,
        variant_keys: &[SpecCacheKey],
        values: &[Vec<(u32, u32)>],
    ) -> Self {
        let key_hash = key.hash64();
        KeyState {
            kernel,
            key,
            forgotten: AtomicBool::new(false),
            candidates: variant_keys[1..]
                .iter()
                .map(|_| Candidate::default())
                .collect(),
            ladder: Ladder::new(1),
            store_keys: variant_keys
                .iter()
                .enumerate()
                .map(|(v, k)| SpecCacheKey {
                    spec_hash: spec_hash(key_hash, values.get(v).map_or(&[], Vec::as_slice)),
                    ..*k
                })
                .collect(),
        }
    }

    /// Variant `variant`'s autotune key for this tuning key.
    #[cfg(test)]
    pub(crate) fn store_key(&self, variant: usize) -> SpecCacheKey {
        self.store_keys[variant.min(self.store_keys.len() - 1)]
    }

    /// Marks the state forgotten by its kernel's table.
    pub(crate) fn forget(&self) {
        self.forgotten.store(true, Ordering::Release);
    }

    /// True once the kernel's table forgot this state.
    pub(crate) fn is_forgotten(&self) -> bool {
        self.forgotten.load(Ordering::Acquire)
    }

    /// The speculative variant in play.
    pub(crate) fn in_play(&self) -> usize {
        self.ladder.in_play()
    }

    /// How many speculative variants there are.
    pub(crate) fn speculative_count(&self) -> usize {
        self.candidates.len()
    }

    /// Speculative variant `spec`'s state (`spec` out of range reads the last one).
    pub(crate) fn candidate(&self, spec: usize) -> &Candidate {
        let i = spec.clamp(1, self.candidates.len()) - 1;
        &self.candidates[i]
    }

    /// The verdict on speculative variant `spec`.
    pub(crate) fn verdict_of(&self, spec: usize) -> KernelVerdict {
        self.candidate(spec).verdict.get()
    }

    /// The key's verdict: the one on the speculative variant in play.
    pub(crate) fn verdict(&self) -> KernelVerdict {
        self.verdict_of(self.in_play())
    }

    /// Speculative variant `spec`'s race log, even if a thread panicked while holding
    /// it (its contents are plain counters and samples, consistent at every step).
    pub(crate) fn log(&self, spec: usize) -> crate::sync::MutexGuard<'_, RaceLog> {
        self.candidate(spec)
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Moves play along the ladder after a verdict change (see `ladder`). Returns the
    /// new variant in play when it moved.
    pub(crate) fn settle(&self) -> Option<usize> {
        self.ladder.settle(
            self.candidates.len(),
            |v| self.verdict_of(v),
            |v| self.relative_cost_ppm(v),
        )
    }

    /// Speculative variant `spec`'s mean time in parts per million of the conservative
    /// mean measured in the same races (`u64::MAX` with nothing measured).
    fn relative_cost_ppm(&self, spec: usize) -> u64 {
        let o = self.log(spec).window.observation();
        if o.baseline_mean_ns == 0 || o.speculative_dispatches == 0 {
            return u64::MAX;
        }
        let ppm = u128::from(o.speculative_mean_ns) * 1_000_000 / u128::from(o.baseline_mean_ns);
        u64::try_from(ppm).unwrap_or(u64::MAX)
    }

    /// The autotune keys of the pair (conservative, `spec`) for this key on an adapter.
    pub(crate) fn pair_keys<'a>(
        &'a self,
        adapter_id: &'a str,
        spec: usize,
    ) -> SpeculativeVariantKeys<'a> {
        let spec = spec.clamp(1, self.store_keys.len() - 1);
        SpeculativeVariantKeys {
            conservative: &self.store_keys[0],
            speculative: &self.store_keys[spec],
            adapter_id,
        }
    }

    /// Races run on this key, every variant's.
    pub(crate) fn races(&self) -> u32 {
        (1..=self.speculative_count())
            .map(|v| self.log(v).races)
            .fold(0, u32::saturating_add)
    }

    /// What [`KeyStats`] reports of this key.
    pub(crate) fn stats(&self) -> KeyStats {
        let variant = self.in_play();
        let variant_verdicts = (1..=self.speculative_count())
            .map(|v| self.verdict_of(v))
            .collect();
        let races = self.races();
        let from_prior = (1..=self.speculative_count()).any(|v| self.log(v).prior.is_some());
        let log = self.log(variant);
        KeyStats {
            key: self.key,
            verdict: self.verdict_of(variant),
            variant,
            variant_verdicts,
            races,
            from_prior,
            prior_source: log.prior.map(|(s, _)| s),
            prior_key: log.prior.and_then(|(_, k)| k),
            cache: log.cache,
            reraces: log.rerace.count,
            samples: log.samples.clone(),
            verdict_at_sample: log.verdict_at_sample,
            observation: log.window.observation(),
        }
    }
}

#[cfg(all(test, not(photofinish_loom)))]
mod tests {
    use super::*;

    #[test]
    fn reraces_back_off_to_the_cap() {
        let mut r = Rerace::default();
        r.rejected();
        let mut waits = Vec::new();
        for _ in 0..12 {
            let mut ticks = 1;
            while !r.tick() {
                ticks += 1;
            }
            waits.push(ticks);
            r.left = Some(RERACE_RACES);
            r.rejected();
        }
        assert_eq!(&waits[..4], &[4, 8, 16, 32]);
        assert_eq!(*waits.last().unwrap(), RERACE_MAX_SKIPS);
    }
}
