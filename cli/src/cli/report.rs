//! The report model of `photofinish run`: per kernel, every sample's arm times, the
//! verdict and when it came, the means, the speedup and how many answers were checked
//! against the CPU reference; and per tuning key of the kernel (SPEC §8) the same facts
//! for that key's batches, with the prior the key started from. The table, the JSON and the charts are all views of this
//! one model, so they always tell the same facts. Pure data: no I/O here.

use photofinish::policy::{decide_speculation, SpeculationObservation, SpeculationVerdict};
use photofinish::{CacheStatus, KernelVerdict, KeyStats, PriorSource};
use serde::{Deserialize, Serialize};

/// A kernel's verdict as the report states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Verdict {
    /// Still racing: not enough samples, or not a clear enough win yet.
    Undecided,
    /// The speculative variant won and runs alone.
    Adopted,
    /// The speculative variant lost or disagreed; the conservative one runs.
    Rejected,
}

impl Verdict {
    /// The report's verdict for the engine's.
    pub(crate) fn of(v: KernelVerdict) -> Self {
        match v {
            KernelVerdict::Adopted => Verdict::Adopted,
            KernelVerdict::Rejected => Verdict::Rejected,
            _ => Verdict::Undecided,
        }
    }

    /// The word the table prints.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Verdict::Undecided => "undecided",
            Verdict::Adopted => "adopted",
            Verdict::Rejected => "rejected",
        }
    }
}

/// Which variant produced a sample's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ArmName {
    /// The conservative variant.
    Conservative,
    /// The speculative variant.
    Speculative,
}

/// One batch as the report sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Sample {
    /// 1-based, in the order the answers came back.
    pub(crate) index: u32,
    /// Kernel time of the conservative variant, when it ran and had timestamps.
    pub(crate) conservative_ns: Option<u64>,
    /// Kernel time of the speculative variant, when it ran and had timestamps.
    pub(crate) speculative_ns: Option<u64>,
    /// Whose answer the caller got.
    pub(crate) answered_by: ArmName,
    /// True when both variants ran for this batch.
    pub(crate) raced: bool,
    /// True when the answer equalled the CPU reference.
    pub(crate) verified: bool,
    /// The batch's tuning key (`TuningKey`'s Display, e.g. `64KiB`).
    #[serde(default)]
    pub(crate) key: Option<String>,
}

/// What the run learned about one tuning key of a kernel (SPEC §8: the JSON `keys`
/// array). Races, the prior and the verdict are the engine's (`KernelStats::keys`);
/// batches and verified answers are counted over this key's batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct KeyReport {
    /// The key as `TuningKey` displays it (`4KiB`, `64KiB/app:7`).
    pub(crate) key: String,
    /// Its size class in bytes.
    pub(crate) size_class_bytes: u64,
    /// Its application key, if any.
    pub(crate) app_key: Option<u64>,
    /// The verdict on the speculative variant in play for this key.
    pub(crate) verdict: Verdict,
    /// Why, in words (empty while undecided and nothing happened).
    pub(crate) verdict_reason: String,
    /// The speculative variant in play (1 for the first).
    pub(crate) variant: usize,
    /// Races run for this key (every variant's, audits and re-races included).
    pub(crate) races: u32,
    /// True when the key started from a prior (a neighbour's, the file's or the
    /// fleet's verdict) rather than cold.
    pub(crate) from_prior: bool,
    /// Where the prior came from: `neighbour`, `file`, `fleet`, or null.
    pub(crate) prior_source: Option<String>,
    /// The neighbour key the prior came from (`neighbour` only).
    pub(crate) prior_key: Option<String>,
    /// The prior in the table's words: `-`, `neighbour 4KiB`, `from cache,
    /// re-verified`, `from fleet, re-verified`.
    pub(crate) prior: String,
    /// Times a rejected verdict of this key was raced again.
    pub(crate) reraces: u32,
    /// The key's race sample (1-based, counted among this key's race samples as the
    /// engine counts them) that decided its verdict; `None` while undecided or when
    /// the verdict was not decided by this run's measurement.
    pub(crate) samples_to_verdict: Option<u32>,
    /// Batches of this key answered.
    pub(crate) batches: u32,
    /// Of them, batches that raced both variants.
    pub(crate) raced: u32,
    /// Of them, answers equal to the CPU reference.
    pub(crate) verified: u32,
    /// Mean kernel time of the conservative variant in this key's window (the engine's
    /// paired means); without window means, over this key's samples that have one.
    pub(crate) conservative_mean_ns: Option<u64>,
    /// The same for the speculative variant.
    pub(crate) speculative_mean_ns: Option<u64>,
    /// `conservative_mean_ns / speculative_mean_ns`; null before both were timed.
    pub(crate) speedup: Option<f64>,
}

impl KeyReport {
    /// The report of `stats`'s key, counting `samples` whose key is that key.
    /// `reason` is the words of the last verdict change the run saw for the key.
    pub(crate) fn new(stats: &KeyStats, samples: &[Sample], reason: Option<&str>) -> Self {
        let key = stats.key.to_string();
        let mine = || samples.iter().filter(|s| s.key.as_deref() == Some(&key));
        let count = |f: fn(&Sample) -> bool| {
            u32::try_from(mine().filter(|s| f(s)).count()).unwrap_or(u32::MAX)
        };
        let o = &stats.observation;
        let (conservative_mean_ns, speculative_mean_ns) =
            if o.baseline_dispatches > 0 && o.speculative_dispatches > 0 {
                (Some(o.baseline_mean_ns), Some(o.speculative_mean_ns))
            } else {
                (
                    mean(mine().filter_map(|s| s.conservative_ns)),
                    mean(mine().filter_map(|s| s.speculative_ns)),
                )
            };
        let speedup = match (conservative_mean_ns, speculative_mean_ns) {
            (Some(c), Some(s)) if s > 0 && c > 0 => Some(c as f64 / s as f64),
            _ => None,
        };
        let verdict = Verdict::of(stats.verdict);
        let measured_here = stats.cache == CacheStatus::NotCached && verdict != Verdict::Undecided;
        KeyReport {
            size_class_bytes: stats.key.size_class_bytes(),
            app_key: stats.key.app_key(),
            verdict,
            verdict_reason: reason.unwrap_or_default().to_string(),
            variant: stats.variant,
            races: stats.races,
            from_prior: stats.from_prior,
            prior_source: stats.prior_source.map(|p| p.to_string()),
            prior_key: stats.prior_key.map(|k| k.to_string()),
            prior: prior_words(stats),
            reraces: stats.reraces,
            samples_to_verdict: stats
                .verdict_at_sample
                .filter(|_| measured_here)
                .map(|i| i.saturating_add(1)),
            batches: count(|_| true),
            raced: count(|s| s.raced),
            verified: count(|s| s.verified),
            conservative_mean_ns,
            speculative_mean_ns,
            speedup,
            key,
        }
    }
}

/// The prior column: `-` for a cold key; `neighbour 4KiB`; the autotune file's
/// `CacheStatus` words (`from cache, re-verified`); for the fleet the same with
/// `from fleet` (SPEC §13).
pub(crate) fn prior_words(stats: &KeyStats) -> String {
    match stats.prior_source {
        Some(PriorSource::Neighbour) => match stats.prior_key {
            Some(key) => format!("neighbour {key}"),
            None => "neighbour".to_string(),
        },
        Some(PriorSource::File) => stats.cache.to_string(),
        Some(PriorSource::Fleet) => fleet_words(stats).to_string(),
        Some(other) => other.to_string(),
        None if stats.cache != CacheStatus::NotCached => stats.cache.to_string(),
        None if stats.from_prior => "prior (another variant)".to_string(),
        None => "-".to_string(),
    }
}

/// A key whose verdict began from a fleet entry: re-verified (adopted: its
/// confirmation races agreed), overturned (this run's races rejected it), taken as it
/// was (rejected there, or heard live while the key was under way: no race after it),
/// or still being confirmed.
fn fleet_words(stats: &KeyStats) -> &'static str {
    match (stats.verdict, stats.verdict_at_sample) {
        (KernelVerdict::Adopted, _) => "from fleet, re-verified",
        (KernelVerdict::Rejected, Some(_)) => "from fleet, overturned by this run's races",
        (KernelVerdict::Rejected, None) => "from fleet (rejected there): not raced",
        _ => "from fleet, being re-verified",
    }
}

/// Everything the run learned about one kernel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct KernelReport {
    /// The workload's name (`histogram`, `reduce`, `scan`).
    pub(crate) kernel: String,
    /// The conservative variant's name.
    pub(crate) conservative_variant: String,
    /// The speculative variant's name.
    pub(crate) speculative_variant: String,
    /// The verdict at the end of the run.
    pub(crate) verdict: Verdict,
    /// Why the verdict is what it is, in words (empty while undecided).
    pub(crate) verdict_reason: String,
    /// True when the run started from a verdict stored in the autotune file.
    pub(crate) from_cache: bool,
    /// True when a verdict from the autotune file was raced again and held.
    pub(crate) reverified: bool,
    /// Where the verdict began when it began from a prior rather than cold: `"fleet"`
    /// for a verdict another host shared (`--fleet`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) prior_source: Option<String>,
    /// Samples (1-based index) at which the verdict was first seen; `None` while
    /// undecided.
    pub(crate) samples_to_verdict: Option<u32>,
    /// Batches answered.
    pub(crate) batches: u32,
    /// Batches that raced both variants.
    pub(crate) raced: u32,
    /// Answers equal to the CPU reference.
    pub(crate) verified: u32,
    /// Times the engine caught the speculative variant disagreeing (its answer was
    /// never returned).
    pub(crate) mismatches_caught: u32,
    /// Mean kernel time of the conservative variant in the races the engine's window
    /// decided on (both arms timed side by side; a race that shared the device with
    /// other work counted clamped, see the engine README); where the engine has no
    /// window means, over every sample that has a time.
    pub(crate) conservative_mean_ns: Option<u64>,
    /// The same for the speculative variant.
    pub(crate) speculative_mean_ns: Option<u64>,
    /// `conservative_mean_ns / speculative_mean_ns`; above 1 the speculative variant is
    /// faster.
    pub(crate) speedup: Option<f64>,
    /// Mean kernel time of the conservative variant over every sample of this run
    /// that has one (races and single runs alike, unclamped).
    #[serde(default)]
    pub(crate) all_samples_conservative_mean_ns: Option<u64>,
    /// The same for the speculative variant.
    #[serde(default)]
    pub(crate) all_samples_speculative_mean_ns: Option<u64>,
    /// Every sample, in answer order.
    pub(crate) samples: Vec<Sample>,
    /// One entry per tuning key the engine holds for the kernel, by application key
    /// then size (SPEC §8). The fields above are the kernel's summary.
    #[serde(default)]
    pub(crate) keys: Vec<KeyReport>,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RunReport {
    /// `vulkan` or `cpu`.
    pub(crate) backend: String,
    /// Why that backend (as the engine announced it).
    pub(crate) backend_reason: String,
    /// The devices the engine ran on.
    pub(crate) devices: Vec<String>,
    /// Worker actors (one per queue).
    pub(crate) workers: usize,
    /// Batches per workload asked for.
    pub(crate) batches: u32,
    /// Input bytes per batch (the first size of `sizes_bytes`).
    pub(crate) size_bytes: u64,
    /// Every input size of the trace, in the order batches take them (`--sizes`;
    /// `[size_bytes]` for `--size`).
    #[serde(default)]
    pub(crate) sizes_bytes: Vec<u64>,
    /// The autotune file, when one was given.
    pub(crate) autotune_file: Option<String>,
    /// One entry per kernel, in the order they ran.
    pub(crate) kernels: Vec<KernelReport>,
}

/// Collects one kernel's samples as answers come back, then computes the summary.
#[derive(Debug, Clone)]
pub(crate) struct KernelTally {
    report: KernelReport,
    /// The first verdict the engine reached by measurement (not by a mismatch).
    measured: Option<Verdict>,
    /// The engine window's (conservative, speculative) means, when it has both.
    window_means: Option<(u64, u64)>,
    /// The key the summary's races are about (the busiest), when the run had keys.
    summary_key: Option<String>,
}

impl KernelTally {
    /// An empty tally for a kernel and its two variants.
    pub(crate) fn new(kernel: &str, conservative: &str, speculative: &str) -> Self {
        KernelTally {
            report: KernelReport {
                kernel: kernel.to_string(),
                conservative_variant: conservative.to_string(),
                speculative_variant: speculative.to_string(),
                verdict: Verdict::Undecided,
                verdict_reason: String::new(),
                from_cache: false,
                prior_source: None,
                reverified: false,
                samples_to_verdict: None,
                batches: 0,
                raced: 0,
                verified: 0,
                mismatches_caught: 0,
                conservative_mean_ns: None,
                speculative_mean_ns: None,
                speedup: None,
                all_samples_conservative_mean_ns: None,
                all_samples_speculative_mean_ns: None,
                samples: Vec::new(),
                keys: Vec::new(),
            },
            measured: None,
            window_means: None,
            summary_key: None,
        }
    }

    /// Marks the kernel as started from a stored verdict.
    pub(crate) fn started_from_cache(&mut self, verdict: Verdict) {
        self.report.from_cache = true;
        self.report.verdict = verdict;
        self.report.verdict_reason = "from cache".into();
    }

    /// Adds one answered batch without a tuning key; `index` is assigned here.
    #[cfg(test)]
    pub(crate) fn push(
        &mut self,
        conservative_ns: Option<u64>,
        speculative_ns: Option<u64>,
        answered_by: ArmName,
        raced: bool,
        verified: bool,
    ) {
        self.push_keyed(
            None,
            conservative_ns,
            speculative_ns,
            answered_by,
            raced,
            verified,
        );
    }

    /// Adds one answered batch of tuning key `key`; `index` is assigned here.
    pub(crate) fn push_keyed(
        &mut self,
        key: Option<String>,
        conservative_ns: Option<u64>,
        speculative_ns: Option<u64>,
        answered_by: ArmName,
        raced: bool,
        verified: bool,
    ) {
        let r = &mut self.report;
        r.batches = r.batches.saturating_add(1);
        r.raced = r.raced.saturating_add(u32::from(raced));
        r.verified = r.verified.saturating_add(u32::from(verified));
        r.samples.push(Sample {
            index: r.batches,
            conservative_ns,
            speculative_ns,
            answered_by,
            raced,
            verified,
            key,
        });
    }

    /// The samples pushed so far.
    pub(crate) fn samples(&self) -> &[Sample] {
        &self.report.samples
    }

    /// The kernel's tuning keys (`KernelStats::keys`, as [`KeyReport`]s) and its
    /// verdict over them. With several keys the summary's verdict is the engine's
    /// over its keys, its reason counts the keys' verdicts, and its samples to verdict
    /// are the busiest key's (`summary_key`).
    pub(crate) fn keys(
        &mut self,
        verdict: Verdict,
        keys: Vec<KeyReport>,
        summary_key: Option<String>,
    ) {
        if keys.len() > 1 {
            let n = |v: Verdict| keys.iter().filter(|k| k.verdict == v).count();
            self.report.verdict = verdict;
            self.report.verdict_reason = format!(
                "over {} keys: {} adopted, {} rejected, {} undecided",
                keys.len(),
                n(Verdict::Adopted),
                n(Verdict::Rejected),
                n(Verdict::Undecided)
            );
        } else if self.report.verdict != verdict && !self.report.from_cache {
            // One key whose last verdict change was about another of its speculative
            // variants (the ladder moved on, e.g. one rejected and the next still
            // racing): the engine's summary is the kernel's verdict.
            self.report.verdict = verdict;
            self.report.verdict_reason = format!("{} (another variant in play)", verdict.as_str());
        }
        self.summary_key = summary_key;
        self.report.keys = keys;
    }

    /// Records a verdict seen after the samples pushed so far. The first decided
    /// verdict of a kernel that did not start from the cache fixes
    /// `samples_to_verdict` (refined by [`KernelTally::finish`] for a `measured` one).
    pub(crate) fn verdict(&mut self, verdict: Verdict, reason: &str, measured: bool) {
        let r = &mut self.report;
        if verdict != Verdict::Undecided && r.samples_to_verdict.is_none() && !r.from_cache {
            r.samples_to_verdict = Some(r.batches);
            if measured {
                self.measured = Some(verdict);
            }
        }
        r.verdict = verdict;
        r.verdict_reason = reason.to_string();
    }

    /// A cached verdict was raced again and held.
    pub(crate) fn reverified(&mut self) {
        self.report.reverified = true;
        self.report.verdict_reason = "from cache, re-verified".into();
    }

    /// What the engine itself reports at the end (`Engine::kernel_stats`): the race
    /// sample that decided the verdict (1-based), and whether the verdict came from
    /// the autotune file (`Some(true)`: re-verified this run) with the engine's words.
    pub(crate) fn engine_facts(
        &mut self,
        verdict_at: Option<u32>,
        cached: Option<bool>,
        words: &str,
    ) {
        if let Some(reverified) = cached {
            self.report.from_cache = true;
            self.report.reverified = reverified;
            self.report.verdict_reason = words.to_string();
            self.report.samples_to_verdict = None;
            self.measured = None;
        } else if let Some(at) = verdict_at {
            self.report.samples_to_verdict = Some(at);
            self.measured = None;
        }
    }

    /// The verdict began from a fleet entry (SPEC §13): says so, in the key table's
    /// words ([`prior_words`]).
    pub(crate) fn started_from_fleet(&mut self, words: String) {
        self.report.prior_source = Some("fleet".into());
        self.report.verdict_reason = words;
    }

    /// The means of the engine's paired window (`KernelStats::observation`): what the
    /// verdict was decided on. Ignored unless both arms have dispatches.
    pub(crate) fn window_means(&mut self, observation: SpeculationObservation) {
        if observation.baseline_dispatches > 0 && observation.speculative_dispatches > 0 {
            self.window_means = Some((
                observation.baseline_mean_ns,
                observation.speculative_mean_ns,
            ));
        }
    }

    /// The engine caught the speculative variant disagreeing.
    pub(crate) fn mismatch_caught(&mut self) {
        self.report.mismatches_caught = self.report.mismatches_caught.saturating_add(1);
    }

    /// Batches answered so far.
    pub(crate) fn batches(&self) -> u32 {
        self.report.batches
    }

    /// The summary: means over the samples that have a time, and the speedup.
    ///
    /// Answers arrive a little after the engine decides, and several are in flight at
    /// once, so for a measured verdict the sample that decided it is found by
    /// replaying the library's decision rule over the paired times in answer order;
    /// when the replay reaches the same verdict, its point is `samples_to_verdict`.
    pub(crate) fn finish(mut self) -> KernelReport {
        let summary: Vec<Sample> = match &self.summary_key {
            Some(key) => self
                .report
                .samples
                .iter()
                .filter(|s| s.key.as_ref() == Some(key))
                .cloned()
                .collect(),
            None => self.report.samples.clone(),
        };
        if let (Some(engine_verdict), Some((at, replayed))) =
            (self.measured, replay_verdict_point(&summary))
        {
            if engine_verdict == replayed {
                self.report.samples_to_verdict = Some(at);
            }
        }
        let r = &mut self.report;
        r.all_samples_conservative_mean_ns =
            mean(r.samples.iter().filter_map(|s| s.conservative_ns));
        r.all_samples_speculative_mean_ns = mean(r.samples.iter().filter_map(|s| s.speculative_ns));
        (r.conservative_mean_ns, r.speculative_mean_ns) = match self.window_means {
            Some((c, s)) => (Some(c), Some(s)),
            None => (
                r.all_samples_conservative_mean_ns,
                r.all_samples_speculative_mean_ns,
            ),
        };
        r.speedup = match (r.conservative_mean_ns, r.speculative_mean_ns) {
            (Some(c), Some(s)) if s > 0 => Some(c as f64 / s as f64),
            _ => None,
        };
        self.report
    }
}

/// Replays `decide_speculation` over the samples that have both arms' times, in
/// order: the index of the sample at which it first decides, and what.
pub(crate) fn replay_verdict_point(samples: &[Sample]) -> Option<(u32, Verdict)> {
    let (mut n, mut conservative, mut speculative) = (0u32, 0u128, 0u128);
    for s in samples {
        let (Some(c), Some(sp)) = (s.conservative_ns, s.speculative_ns) else {
            continue;
        };
        n = n.saturating_add(1);
        conservative += u128::from(c);
        speculative += u128::from(sp);
        let mean = |total: u128| u64::try_from(total / u128::from(n)).unwrap_or(u64::MAX);
        let obs = SpeculationObservation {
            baseline_dispatches: n,
            baseline_mean_ns: mean(conservative),
            speculative_dispatches: n,
            speculative_mean_ns: mean(speculative),
            side_compile_cost_ns: 0,
        };
        match decide_speculation(obs) {
            SpeculationVerdict::Adopt => return Some((s.index, Verdict::Adopted)),
            SpeculationVerdict::Reject => return Some((s.index, Verdict::Rejected)),
            SpeculationVerdict::KeepRacing => {}
        }
    }
    None
}

/// The mean of `values` (u128 sum, so no overflow); `None` for none.
fn mean(values: impl Iterator<Item = u64>) -> Option<u64> {
    let (n, total) = values.fold((0u128, 0u128), |(n, t), v| (n + 1, t + u128::from(v)));
    total.checked_div(n).and_then(|m| u64::try_from(m).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally() -> KernelTally {
        KernelTally::new("reduce", "reduce/scalar", "reduce/vec4")
    }

    #[test]
    fn means_and_speedup_come_from_the_samples_that_have_times() {
        let mut t = tally();
        t.push(Some(300), Some(100), ArmName::Conservative, true, true);
        t.push(Some(100), Some(100), ArmName::Conservative, true, true);
        t.push(None, Some(400), ArmName::Speculative, false, false);
        let r = t.finish();
        assert_eq!(r.batches, 3);
        assert_eq!(r.raced, 2);
        assert_eq!(r.verified, 2);
        assert_eq!(r.conservative_mean_ns, Some(200));
        assert_eq!(r.speculative_mean_ns, Some(200));
        assert_eq!(r.speedup, Some(1.0));
        let indices: Vec<u32> = r.samples.iter().map(|s| s.index).collect();
        assert_eq!(indices, [1, 2, 3]);
    }

    #[test]
    fn the_window_means_drive_the_table_and_every_sample_is_still_averaged() {
        let mut t = tally();
        t.push(Some(40), Some(10), ArmName::Conservative, true, true);
        // An adopted run that shared the GPU: slow, and not what the verdict saw.
        t.push(None, Some(130), ArmName::Speculative, false, true);
        t.window_means(SpeculationObservation {
            baseline_dispatches: 1,
            baseline_mean_ns: 40,
            speculative_dispatches: 1,
            speculative_mean_ns: 10,
            side_compile_cost_ns: 0,
        });
        let r = t.finish();
        assert_eq!(
            (r.conservative_mean_ns, r.speculative_mean_ns),
            (Some(40), Some(10))
        );
        assert_eq!(r.speedup, Some(4.0));
        assert_eq!(
            (
                r.all_samples_conservative_mean_ns,
                r.all_samples_speculative_mean_ns
            ),
            (Some(40), Some(70))
        );
        // A window with no speculative dispatch is ignored.
        let mut t = tally();
        t.push(Some(40), Some(10), ArmName::Conservative, true, true);
        t.window_means(SpeculationObservation {
            baseline_dispatches: 3,
            baseline_mean_ns: 1,
            speculative_dispatches: 0,
            speculative_mean_ns: 0,
            side_compile_cost_ns: 0,
        });
        assert_eq!(t.finish().speculative_mean_ns, Some(10));
    }

    #[test]
    fn no_times_means_no_speedup_rather_than_a_division_by_zero() {
        let mut t = tally();
        t.push(None, None, ArmName::Conservative, true, true);
        t.push(Some(10), Some(0), ArmName::Conservative, true, true);
        let r = t.finish();
        assert_eq!(r.conservative_mean_ns, Some(10));
        assert_eq!(r.speculative_mean_ns, Some(0));
        assert_eq!(r.speedup, None);
    }

    #[test]
    fn huge_times_do_not_overflow_the_mean() {
        let mut t = tally();
        t.push(
            Some(u64::MAX),
            Some(u64::MAX),
            ArmName::Conservative,
            true,
            true,
        );
        t.push(
            Some(u64::MAX),
            Some(u64::MAX),
            ArmName::Conservative,
            true,
            true,
        );
        let r = t.finish();
        assert_eq!(r.conservative_mean_ns, Some(u64::MAX));
        assert_eq!(r.speedup, Some(1.0));
    }

    #[test]
    fn the_first_decided_verdict_fixes_samples_to_verdict() {
        let mut t = tally();
        for _ in 0..9 {
            t.push(Some(2), Some(1), ArmName::Conservative, true, true);
        }
        t.verdict(Verdict::Undecided, "", false);
        t.verdict(Verdict::Adopted, "measured: adopt", false);
        t.push(None, Some(1), ArmName::Speculative, false, true);
        t.verdict(Verdict::Rejected, "mismatch", false);
        let r = t.finish();
        assert_eq!(r.samples_to_verdict, Some(9));
        assert_eq!(r.verdict, Verdict::Rejected);
        assert_eq!(r.verdict_reason, "mismatch");
    }

    #[test]
    fn a_cached_verdict_has_no_samples_to_verdict_and_says_re_verified() {
        let mut t = tally();
        t.started_from_cache(Verdict::Adopted);
        t.push(Some(2), Some(1), ArmName::Conservative, true, true);
        t.verdict(Verdict::Adopted, "re-verified", true);
        t.reverified();
        let r = t.finish();
        assert!(r.from_cache && r.reverified);
        assert_eq!(r.samples_to_verdict, None);
        assert_eq!(r.verdict_reason, "from cache, re-verified");
    }

    #[test]
    fn a_measured_verdict_is_placed_where_the_decision_rule_reaches_it() {
        let mut t = tally();
        // Two samples without times, then a clear 2x win: the 8th paired sample
        // (sample 10) is where `decide_speculation` adopts.
        t.push(None, None, ArmName::Conservative, true, true);
        t.push(Some(2_000), None, ArmName::Conservative, true, true);
        for _ in 0..11 {
            t.push(Some(2_000), Some(1_000), ArmName::Conservative, true, true);
        }
        // The driver saw the event late, after 13 answers.
        t.verdict(Verdict::Adopted, "measured: adopt", true);
        assert_eq!(t.finish().samples_to_verdict, Some(10));
    }

    #[test]
    fn a_replay_that_disagrees_with_the_engine_keeps_the_observed_point() {
        let mut t = tally();
        for _ in 0..9 {
            t.push(Some(1_000), Some(2_000), ArmName::Conservative, true, true);
        }
        t.verdict(Verdict::Adopted, "measured: adopt", true);
        assert_eq!(t.finish().samples_to_verdict, Some(9));
        assert_eq!(
            replay_verdict_point(&tally_samples(8, 1_000, 2_000)),
            Some((8, Verdict::Rejected))
        );
        // Within 15 %: the rule keeps racing, no point.
        assert_eq!(replay_verdict_point(&tally_samples(20, 1_000, 900)), None);
    }

    fn tally_samples(n: u32, c: u64, s: u64) -> Vec<Sample> {
        let mut t = tally();
        for _ in 0..n {
            t.push(Some(c), Some(s), ArmName::Conservative, true, true);
        }
        t.finish().samples
    }

    fn key_stats(kib: u64) -> KeyStats {
        KeyStats {
            key: photofinish::TuningKey::for_bytes(kib << 10, None),
            verdict: KernelVerdict::Adopted,
            variant: 1,
            variant_verdicts: vec![KernelVerdict::Adopted],
            races: 9,
            from_prior: false,
            prior_source: None,
            prior_key: None,
            cache: CacheStatus::NotCached,
            reraces: 0,
            samples: Vec::new(),
            verdict_at_sample: Some(7),
            observation: SpeculationObservation {
                baseline_dispatches: 9,
                baseline_mean_ns: 300,
                speculative_dispatches: 9,
                speculative_mean_ns: 100,
                side_compile_cost_ns: 0,
            },
        }
    }

    #[test]
    fn a_key_report_counts_its_own_batches_and_takes_the_engines_verdict() {
        let mut t = tally();
        for i in 0..6u64 {
            let key = if i % 2 == 0 { "4KiB" } else { "8MiB" };
            t.push_keyed(
                Some(key.into()),
                Some(300),
                Some(100),
                ArmName::Conservative,
                true,
                i != 4,
            );
        }
        let k = KeyReport::new(&key_stats(4), t.samples(), Some("measured: adopt"));
        assert_eq!((k.key.as_str(), k.size_class_bytes), ("4KiB", 4096));
        assert_eq!((k.batches, k.raced, k.verified), (3, 3, 2));
        assert_eq!(k.verdict, Verdict::Adopted);
        assert_eq!(
            k.samples_to_verdict,
            Some(8),
            "verdict_at_sample 7 is the 8th"
        );
        assert_eq!(k.speedup, Some(3.0));
        assert_eq!((k.prior.as_str(), k.prior_source.as_deref()), ("-", None));
        let value = serde_json::to_value(&k).expect("serialises");
        for field in [
            "key",
            "size_class_bytes",
            "verdict",
            "races",
            "from_prior",
            "prior_source",
            "speedup",
        ] {
            assert!(value.get(field).is_some(), "{field} in {value}");
        }
        assert_eq!(value["verdict"], "adopted");
        assert_eq!(value["prior_source"], serde_json::Value::Null);
    }

    #[test]
    fn the_prior_column_names_the_neighbour_the_file_and_the_fleet() {
        let mut s = key_stats(8 << 10);
        s.from_prior = true;
        s.prior_source = Some(PriorSource::Neighbour);
        s.prior_key = Some(photofinish::TuningKey::for_bytes(4096, None));
        assert_eq!(prior_words(&s), "neighbour 4KiB");
        s.prior_source = Some(PriorSource::File);
        s.prior_key = None;
        s.cache = CacheStatus::Reverified;
        assert_eq!(prior_words(&s), "from cache, re-verified");
        s.prior_source = Some(PriorSource::Fleet);
        assert_eq!(prior_words(&s), "from fleet, re-verified");
        let k = KeyReport::new(&s, &[], None);
        assert_eq!(k.prior_source.as_deref(), Some("fleet"));
        assert_eq!(k.samples_to_verdict, None, "not decided by this run");
    }

    /// A kernel of one key whose first speculative variant was rejected and whose
    /// next one is still racing was reported "rejected" from the last verdict change,
    /// while the engine (and the fleet) held it undecided.
    #[test]
    fn one_key_takes_the_engines_summary_over_the_last_change() {
        let mut t = KernelTally::new("reduce", "reduce/scalar", "reduce/vec4");
        t.verdict(Verdict::Rejected, "measured: reject", true);
        t.keys(Verdict::Undecided, Vec::new(), None);
        assert_eq!(t.report.verdict, Verdict::Undecided);
        assert!(t.report.verdict_reason.contains("another variant"));
    }

    #[test]
    fn the_report_round_trips_through_json() {
        let mut t = tally();
        t.push(Some(5), Some(4), ArmName::Conservative, true, true);
        t.mismatch_caught();
        let run = RunReport {
            backend: "cpu".into(),
            backend_reason: "asked for".into(),
            devices: vec!["cpu".into()],
            workers: 2,
            batches: 1,
            size_bytes: 4096,
            sizes_bytes: vec![4096],
            autotune_file: None,
            kernels: vec![t.finish()],
        };
        let text = serde_json::to_string(&run).expect("serialises");
        let back: RunReport = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, run);
        let value: serde_json::Value = serde_json::from_str(&text).expect("parses");
        assert_eq!(value["kernels"][0]["verdict"], "undecided");
        assert_eq!(value["kernels"][0]["mismatches_caught"], 1);
        assert_eq!(
            value["kernels"][0]["samples"][0]["answered_by"],
            "conservative"
        );
    }
}
