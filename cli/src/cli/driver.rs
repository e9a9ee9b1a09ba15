//! The driver of `photofinish run`: builds the engine, registers the chosen built-in
//! workloads, submits their batches with a bounded number in flight, checks every
//! answer against the workload's CPU reference, and turns answers and engine events
//! into the [`RunReport`]. Only public library API is used here.
//!
//! With `--sizes` a workload's batches take the sizes in turn (round-robin), each size
//! with its own pool of inputs, so one trace interleaves tuning keys (SPEC §8); every
//! sample carries its batch's key, and race samples are matched to answers per key.
//!
//! Samples are numbered in the order their answers complete. The verdict comes from the
//! engine's `VerdictChanged` events, drained after every answer. "Samples to verdict"
//! for a measured verdict is found by replaying the library's own decision rule
//! (`policy::decide_speculation`) over the paired arm times in that order (see
//! [`KernelTally::finish`]); for a mismatch it is the number of answers the driver had
//! when it saw the event.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use photofinish::autotune::AutotuneError;
use photofinish::backend::DeviceInfo;
use photofinish::kernels::{self, InputShape, Workload};
use photofinish::{
    Answer, Arm, BackendChoice, Batch, CacheStatus, Engine, EngineBuilder, EngineError, Event,
    KernelId, KernelVerdict, KeyStats, Output, PriorSource, RaceSample, Subscription, Ticket,
    TuningKey, VerdictReason,
};

use super::args::{format_bytes, RunArgs};
use super::report::{prior_words, ArmName, KernelTally, KeyReport, RunReport, Verdict};

/// Distinct inputs per kernel and size: batches cycle through them (generating
/// `--batches` inputs of `--size` each would cost more than the kernels).
const INPUT_POOL: usize = 4;

/// How long to wait on the oldest ticket before looking for any other finished one.
const ANSWER_POLL: Duration = Duration::from_micros(200);

/// Why the driver could not finish.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DriverError {
    /// The engine refused to build, register, accept or answer.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The autotune directory could not be created or takes no files.
    #[error("cannot write to the autotune directory {path}: {source}; pass a writable directory to `--autotune-file`")]
    AutotuneDir {
        /// The directory, or the file in it that could not be written.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A `--size` (or `--sizes` entry) is more than a device takes in one storage
    /// buffer.
    #[error("{option} {size} is more than device {device} ({name}) takes in one storage buffer (maxStorageBufferRange {range} bytes); the largest size this device takes is {largest}")]
    SizeOverDeviceLimit {
        /// The option: `--size` or `--sizes`.
        option: &'static str,
        /// The size asked for, formatted.
        size: String,
        /// The device's index.
        device: usize,
        /// The device's name.
        name: String,
        /// Its `max_storage_buffer_range`.
        range: u64,
        /// The largest `--size` it takes, formatted.
        largest: String,
    },
    /// `--fleet` was given to a binary built without the `redis` feature.
    #[cfg_attr(feature = "redis", allow(dead_code))]
    #[error("--fleet needs a photofinish built with the `redis` feature (cargo build -p photofinish-cli --features redis)")]
    FleetNotBuilt,
    /// A workload the options name is not built in (a bug: the options list only
    /// built-in names).
    #[error(
        "no built-in workload is called `{0}`; choose one of histogram, reduce, scan, sum, fsum"
    )]
    UnknownWorkload(String),
}

/// What `run` shows while it works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// Progress bars and the backend line on stderr.
    Bars,
    /// Nothing (for `--json`).
    Quiet,
}

/// An autotune store whose last save failed.
#[derive(Debug)]
pub(crate) struct Unsaved {
    /// Its file.
    pub(crate) path: PathBuf,
    /// Why the save failed.
    pub(crate) error: Arc<AutotuneError>,
}

/// `builder` sharing verdicts through the fleet store at `url`.
#[cfg(feature = "redis")]
fn with_fleet(builder: EngineBuilder, url: &str) -> Result<EngineBuilder, DriverError> {
    Ok(builder.fleet(url))
}

#[cfg(not(feature = "redis"))]
fn with_fleet(_: EngineBuilder, _: &str) -> Result<EngineBuilder, DriverError> {
    Err(DriverError::FleetNotBuilt)
}

/// What a run gives: the report, and the autotune stores it could not save.
#[derive(Debug)]
pub(crate) struct Ran {
    /// The report.
    pub(crate) report: RunReport,
    /// Stores whose final save failed (only with `--autotune-file`).
    pub(crate) unsaved: Vec<Unsaved>,
}

/// Runs the workloads `args` names on `choice`'s backend and reports.
pub(crate) fn run(
    args: &RunArgs,
    choice: BackendChoice,
    progress: Progress,
) -> Result<Ran, DriverError> {
    let builder = Engine::builder().backend(choice);
    // The engine keeps one autotune file per device in the directory it is given.
    let builder = match &args.autotune_file {
        Some(dir) => {
            super::check_writable_dir(dir).map_err(|(path, source)| DriverError::AutotuneDir {
                path: path.display().to_string(),
                source,
            })?;
            builder.autotune_dir(dir)
        }
        None => builder.without_autotune_file(),
    };
    let builder = match &args.fleet {
        Some(url) => with_fleet(builder, url)?,
        None => builder,
    };
    let engine = builder.build()?;
    let sizes = args.trace_sizes();
    for &size in &sizes {
        check_size(args.size_option(), size, engine.devices())?;
    }
    let events = engine.subscribe();
    let mut report = RunReport {
        backend: engine.backend_kind().to_string(),
        backend_reason: String::new(),
        devices: engine.devices().iter().map(|d| d.name.clone()).collect(),
        workers: engine.worker_count(),
        batches: args.batches,
        size_bytes: sizes[0],
        sizes_bytes: sizes.clone(),
        autotune_file: args.autotune_file.as_ref().map(|p| p.display().to_string()),
        kernels: Vec::new(),
    };
    // The engine replays its one `BackendSelected` event to every new subscriber.
    if let Ok(Event::BackendSelected { reason, .. }) = events.try_recv() {
        report.backend_reason = reason;
    }
    let bars = match progress {
        Progress::Bars => {
            // A full or closed stderr is no reason to stop (nor to panic).
            let _ = writeln!(
                std::io::stderr(),
                "photofinish: running on the {} backend ({}): {}",
                report.backend,
                report.devices.join(", "),
                report.backend_reason
            );
            MultiProgress::with_draw_target(ProgressDrawTarget::stderr())
        }
        Progress::Quiet => MultiProgress::with_draw_target(ProgressDrawTarget::hidden()),
    };

    let mut registered = Vec::new();
    for name in args.workload_names() {
        let workload =
            kernels::by_name(name).ok_or_else(|| DriverError::UnknownWorkload(name.into()))?;
        let id = engine.register(Arc::clone(&workload))?;
        let bar = bars.add(ProgressBar::new(u64::from(args.batches)));
        bar.set_style(bar_style());
        bar.set_prefix(name);
        registered.push((workload, id, bar));
    }
    for (workload, id, bar) in registered {
        let tally = run_kernel(&engine, &events, workload.as_ref(), id, args, &sizes, &bar)?;
        let kernel = tally.finish();
        bar.finish_with_message(kernel.verdict.as_str());
        report.kernels.push(kernel);
    }
    // Shutdown saves every store one last time; its outcome is the file's.
    engine.shutdown();
    let unsaved = (0..engine.devices().len())
        .filter_map(|device| {
            let error = engine.autotune_save_error(device)?;
            let path = engine.autotune_path(device)?.to_path_buf();
            Some(Unsaved { path, error })
        })
        .collect();
    Ok(Ran { report, unsaved })
}

/// Refuses a `--size` that some device cannot take in one storage buffer, before any
/// input is generated. The built-in workloads pad the input to a multiple of 16 bytes,
/// and their outputs are smaller than their inputs at any size a device limits, so the
/// largest size a device takes is its `max_storage_buffer_range` rounded down to 16.
pub(crate) fn check_size(
    option: &'static str,
    size: u64,
    devices: &[DeviceInfo],
) -> Result<(), DriverError> {
    for device in devices {
        let range = device.limits.max_storage_buffer_range;
        let largest = range / 16 * 16;
        if size.div_ceil(16).saturating_mul(16) > range {
            return Err(DriverError::SizeOverDeviceLimit {
                option,
                size: format_bytes(u128::from(size)),
                device: device.index,
                name: device.name.clone(),
                range,
                largest: format!("{} ({largest} bytes)", format_bytes(u128::from(largest))),
            });
        }
    }
    Ok(())
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// Submits one kernel's batches, at most twice the worker count in flight, the sizes
/// taken in turn, and collects answers in the order they complete.
fn run_kernel(
    engine: &Engine,
    events: &Subscription,
    workload: &dyn Workload,
    id: KernelId,
    args: &RunArgs,
    sizes: &[u64],
    bar: &ProgressBar,
) -> Result<KernelTally, DriverError> {
    let variants = workload.variants();
    let name_of = |i: usize| variants.get(i).map_or("?", |v| v.name.as_str()).to_string();
    let mut tally = KernelTally::new(workload.name(), &name_of(0), &name_of(1));
    if let Some(v) = engine.verdict(id).and_then(decided) {
        tally.started_from_cache(v);
    }
    let total = args.batches as usize;
    let pools: Vec<Vec<Input>> = sizes
        .iter()
        .enumerate()
        .map(|(at, &size)| {
            // Batches of this size: those whose turn it is in the round-robin.
            let batches = total / sizes.len() + usize::from(at < total % sizes.len());
            let first_seed = args.seed.wrapping_add((at * INPUT_POOL) as u64);
            inputs(workload, size, batches, first_seed)
        })
        .collect();
    let in_flight_max = engine.worker_count().max(1) * 2;
    let mut in_flight: Vec<(Ticket, InputAt)> = Vec::with_capacity(in_flight_max);
    let mut seen = Seen::default();
    let mut submitted = 0usize;
    while submitted < total || !in_flight.is_empty() {
        if submitted < total && in_flight.len() < in_flight_max {
            let size = submitted % sizes.len();
            let pool = &pools[size];
            let which = (submitted / sizes.len()) % pool.len();
            let batch = Batch::new(id, Arc::clone(&pool[which].input));
            let at = InputAt {
                size,
                which,
                key: batch.tuning_key(),
            };
            in_flight.push((engine.submit(batch)?, at));
            submitted += 1;
            continue;
        }
        let (answer, at) = next_answer(&mut in_flight)?;
        // The engine publishes a race's sample before it answers the batch, so drain
        // first: the sample of this answer's race is then queued.
        drain(events, id, &mut tally, &mut seen, bar);
        let reference = &pools[at.size][at.which].reference;
        collect(&mut tally, answer, reference, at.key, &mut seen.races);
        bar.inc(1);
    }
    drain(events, id, &mut tally, &mut seen, bar);
    if let Some(stats) = engine.kernel_stats(id) {
        tally.engine_facts(
            stats.verdict_at_sample.map(|i| i.saturating_add(1)),
            match stats.cache {
                CacheStatus::NotCached => None,
                CacheStatus::Reverified => Some(true),
                _ => Some(false),
            },
            &stats.cache.to_string(),
        );
        tally.window_means(stats.observation);
        let keys: Vec<KeyReport> = stats
            .keys
            .iter()
            .map(|k| {
                let reason = seen.reasons.get(&k.key).map(String::as_str);
                KeyReport::new(k, tally.samples(), reason)
            })
            .collect();
        let summary_key = busiest(&stats.keys).map(|k| k.key.to_string());
        tally.keys(Verdict::of(stats.verdict), keys, summary_key);
        let fleet = busiest(&stats.keys).filter(|k| k.prior_source == Some(PriorSource::Fleet));
        if let Some(key) = fleet {
            tally.started_from_fleet(prior_words(key));
        }
    }
    Ok(tally)
}

/// The key whose races `KernelStats`' summary fields report: the one with the most
/// races, the first of equals (`keys` is in the engine's order).
fn busiest(keys: &[KeyStats]) -> Option<&KeyStats> {
    keys.iter()
        .enumerate()
        .max_by_key(|(i, k)| (k.races, std::cmp::Reverse(*i)))
        .map(|(_, k)| k)
}

/// One generated input and its CPU reference answer.
struct Input {
    input: Arc<[u8]>,
    reference: Vec<u8>,
}

/// Where a batch in flight took its input from, and its tuning key.
#[derive(Debug, Clone, Copy)]
struct InputAt {
    /// Index into the sizes.
    size: usize,
    /// Index into that size's pool.
    which: usize,
    /// The batch's key.
    key: TuningKey,
}

/// What the events told so far: race samples not yet matched to an answer, per key,
/// and the words of each key's last verdict change.
#[derive(Debug, Default)]
struct Seen {
    races: HashMap<TuningKey, VecDeque<RaceSample>>,
    reasons: HashMap<TuningKey, String>,
}

/// The first answer to complete among `in_flight` (removed from it), with the index
/// of its input.
fn next_answer(in_flight: &mut Vec<(Ticket, InputAt)>) -> Result<(Answer, InputAt), DriverError> {
    loop {
        if let Some(at) = in_flight.iter().position(|(t, _)| t.is_ready()) {
            let (ticket, which) = in_flight.swap_remove(at);
            return Ok((ticket.wait()?, which));
        }
        let Some((oldest, which)) = in_flight.first() else {
            return Err(DriverError::Engine(EngineError::Unanswered));
        };
        let which = *which;
        if let Some(result) = oldest.wait_timeout(ANSWER_POLL) {
            in_flight.swap_remove(0);
            return Ok((result?, which));
        }
    }
}

/// Up to `INPUT_POOL` inputs of `size` bytes (no more than `batches`), cycling through
/// the workload's shapes, seeded `first_seed`, `first_seed + 1`…, each with its CPU
/// reference answer.
fn inputs(workload: &dyn Workload, size: u64, batches: usize, first_seed: u64) -> Vec<Input> {
    let shapes = workload.shapes();
    let len = usize::try_from(size).unwrap_or(usize::MAX);
    let count = INPUT_POOL.min(batches).max(1);
    (0..count)
        .map(|i| {
            let shape = shapes.get(i % shapes.len().max(1)).copied();
            let input = workload.generate(
                shape.unwrap_or(InputShape::Uniform),
                len,
                first_seed.wrapping_add(i as u64),
            );
            let reference = workload.reference(&input);
            Input {
                input: Arc::from(input),
                reference,
            }
        })
        .collect()
}

/// One answer into the tally. A raced answer takes both arms' times from the oldest
/// race sample the engine published for its key (an exact pair; with several batches
/// in flight it may be another batch's race of the same key, which does not matter
/// for the per-sample series).
fn collect(
    tally: &mut KernelTally,
    answer: Answer,
    reference: &[u8],
    key: TuningKey,
    races: &mut HashMap<TuningKey, VecDeque<RaceSample>>,
) {
    let verified = matches!(&answer.output, Output::Answer(bytes) if bytes == reference);
    let (answered_by, conservative_ns, speculative_ns) = match answer.arm {
        Arm::Conservative if answer.raced => {
            match races.get_mut(&key).and_then(VecDeque::pop_front) {
                Some(r) => (
                    ArmName::Conservative,
                    Some(r.conservative_ns),
                    Some(r.speculative_ns),
                ),
                None => (ArmName::Conservative, answer.kernel_ns, None),
            }
        }
        Arm::Conservative => (ArmName::Conservative, answer.kernel_ns, None),
        Arm::Speculative => (ArmName::Speculative, None, answer.kernel_ns),
    };
    tally.push_keyed(
        Some(key.to_string()),
        conservative_ns,
        speculative_ns,
        answered_by,
        answer.raced,
        verified,
    );
}

/// Applies every pending event about kernel `id`.
fn drain(
    events: &Subscription,
    id: KernelId,
    tally: &mut KernelTally,
    seen: &mut Seen,
    bar: &ProgressBar,
) {
    for event in events.try_iter() {
        match event {
            Event::RaceSample {
                kernel,
                key,
                sample,
                ..
            } if kernel == id => seen.races.entry(key).or_default().push_back(sample),
            Event::VerdictChanged {
                kernel,
                key,
                to,
                reason,
                ..
            } if kernel == id => {
                let verdict = decided(to).unwrap_or(Verdict::Undecided);
                seen.reasons.insert(key, reason_text(&reason, to));
                if reason == VerdictReason::Reverified {
                    tally.verdict(verdict, "re-verified", false);
                    tally.reverified();
                } else {
                    let measured = matches!(reason, VerdictReason::Measured);
                    tally.verdict(verdict, &reason_text(&reason, to), measured);
                }
                bar.set_message(format!(
                    "{key}: {} after {} samples",
                    verdict.as_str(),
                    tally.batches()
                ));
            }
            Event::MismatchCaught { kernel, .. } if kernel == id => tally.mismatch_caught(),
            _ => {}
        }
    }
}

/// The report's verdict for a decided engine verdict (`None` while undecided).
fn decided(v: KernelVerdict) -> Option<Verdict> {
    match v {
        KernelVerdict::Adopted => Some(Verdict::Adopted),
        KernelVerdict::Rejected => Some(Verdict::Rejected),
        _ => None,
    }
}

/// `to`: the verdict the change reached, which a measured reason names.
fn reason_text(reason: &VerdictReason, to: KernelVerdict) -> String {
    match reason {
        VerdictReason::Measured => match to {
            KernelVerdict::Adopted => "measured: adopt".into(),
            KernelVerdict::Rejected => "measured: reject".into(),
            _ => "measured: keepracing".into(),
        },
        VerdictReason::Mismatch => "speculative answer disagreed".into(),
        VerdictReason::SpeculativeFailed(why) => format!("speculative variant failed: {why}"),
        VerdictReason::Reverified => "from cache, re-verified".into(),
        VerdictReason::Prior => "from cache (rejected there): not raced".into(),
        VerdictReason::Inconclusive { samples } => {
            format!("inconclusive after {samples} races: saves < 15 %")
        }
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use photofinish::backend::DeviceLimits;

    fn device(index: usize, max_storage_buffer_range: u64) -> DeviceInfo {
        DeviceInfo {
            index,
            name: format!("gpu{index}"),
            device_type: "discrete".into(),
            adapter_id: "test".into(),
            device_uuid: [0; 16],
            driver_version: "1".into(),
            timestamp_period_ns: 1.0,
            queue_families: Vec::new(),
            bindless: photofinish::policy::BindlessSupport::Unsupported,
            limits: DeviceLimits {
                max_workgroup_count: [65_535; 3],
                max_workgroup_size: [1024, 1024, 64],
                max_workgroup_invocations: 1024,
                max_storage_buffer_range,
                max_push_constants_size: 128,
                subgroup_size: None,
            },
        }
    }

    /// Regression (issue #25, item 10): `--size 2GiB` on a device whose
    /// `maxStorageBufferRange` is 128 MiB generated a 2 GiB input and then failed. The
    /// size is refused before any input, with the largest size the device takes.
    #[test]
    fn a_size_over_a_devices_storage_buffer_range_is_refused_up_front() {
        let small = 128u64 << 20;
        let devices = [device(0, u64::from(u32::MAX)), device(1, small)];
        let err = check_size("--size", 2 << 30, &devices).expect_err("2GiB is over 128MiB");
        let message = err.to_string();
        assert!(
            message.contains("device 1")
                && message.contains("maxStorageBufferRange 134217728")
                && message.contains("the largest size this device takes is 128MiB"),
            "{message}"
        );
        assert!(
            check_size("--size", small, &devices).is_ok(),
            "128MiB fits exactly"
        );
        assert!(
            check_size("--size", small + 1, &devices).is_err(),
            "padded past the range"
        );
        // A range that is no multiple of 16 (lavapipe's 2^31 - 1): the input is padded
        // to 16 bytes, so the largest size is the range rounded down to 16.
        let odd = [device(0, (1 << 31) - 1)];
        let largest = ((1u64 << 31) - 1) / 16 * 16;
        assert!(check_size("--size", largest, &odd).is_ok());
        let err = check_size("--size", largest + 1, &odd).expect_err("padded past the range");
        assert!(
            err.to_string().contains(&format!("({largest} bytes)")),
            "{err}"
        );
    }
}
