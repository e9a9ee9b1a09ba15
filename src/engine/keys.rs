//! A kernel's state for one tuning key (SPEC §8): each speculative variant's verdict
//! and race log, the ladder of variants, the key's autotune-store names, and what the
//! public [`KeyStats`] reports of it.
//!
//! The state is plain data with its own locks; what starts a key (priors: file,
//! neighbour) lives in `priors.rs`, and what races and judges in `race.rs`.

use std::fmt;

use crate::autotune::{
    KernelVerdict as StoredKernelVerdict, PairedSpeculationWindow, SpecCacheKey,
    SpeculativeVariantKeys,
};
use crate::policy::{
    SpeculationObservation, SpeculationVerdict, MIN_ADOPT_SAVINGS_BPS, MIN_DISPATCHES_FOR_VERDICT,
};
use crate::sync::{AtomicBool, Mutex, Ordering};

use super::events::KernelVerdict;
use super::ladder::Ladder;
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
    pub(crate) verdict: StoredKernelVerdict,
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
