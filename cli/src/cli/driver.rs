//! The driver of `photofinish run`: builds the engine, registers the chosen built-in
//! workloads, submits their batches with a bounded number in flight, checks every
//! answer against the workload's CPU reference, and turns answers and engine events
//! into the [`RunReport`]. Only public library API is used here.
//!
//! Samples are numbered in the order their answers complete. The verdict comes from the
//! engine's `VerdictChanged` events, drained after every answer. "Samples to verdict"
//! for a measured verdict is found by replaying the library's own decision rule
//! (`policy::decide_speculation`) over the paired arm times in that order (see
//! [`KernelTally::finish`]); for a mismatch it is the number of answers the driver had
//! when it saw the event.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use photofinish::autotune::AutotuneError;
use photofinish::backend::DeviceInfo;
use photofinish::kernels::{self, InputShape, Workload};
use photofinish::{
    Answer, Arm, BackendChoice, Batch, CacheStatus, Engine, EngineError, Event, KernelId,
    KernelVerdict, Output, RaceSample, Subscription, Ticket, VerdictReason,
};

use super::args::{format_bytes, RunArgs};
use super::report::{ArmName, KernelTally, RunReport, Verdict};

/// Distinct inputs per kernel: batches cycle through them (generating `--batches`
/// inputs of `--size` each would cost more than the kernels).
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
    /// `--size` is more than a device takes in one storage buffer.
    #[error("--size {size} is more than device {device} ({name}) takes in one storage buffer (maxStorageBufferRange {range} bytes); the largest size this device takes is {largest}")]
    SizeOverDeviceLimit {
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
    /// A workload the options name is not built in (a bug: the options list only
    /// built-in names).
    #[error("no built-in workload is called `{0}`; choose one of histogram, reduce, scan")]
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
    let engine = builder.build()?;
    check_size(args.size, engine.devices())?;
    let events = engine.subscribe();
    let mut report = RunReport {
        backend: engine.backend_kind().to_string(),
        backend_reason: String::new(),
        devices: engine.devices().iter().map(|d| d.name.clone()).collect(),
        workers: engine.worker_count(),
        batches: args.batches,
        size_bytes: args.size,
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
        let tally = run_kernel(&engine, &events, workload.as_ref(), id, args, &bar)?;
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
pub(crate) fn check_size(size: u64, devices: &[DeviceInfo]) -> Result<(), DriverError> {
    for device in devices {
        let range = device.limits.max_storage_buffer_range;
        let largest = range / 16 * 16;
        if size.div_ceil(16).saturating_mul(16) > range {
            return Err(DriverError::SizeOverDeviceLimit {
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

/// Submits one kernel's batches, at most twice the worker count in flight, and
/// collects answers in the order they complete.
fn run_kernel(
    engine: &Engine,
    events: &Subscription,
    workload: &dyn Workload,
    id: KernelId,
    args: &RunArgs,
    bar: &ProgressBar,
) -> Result<KernelTally, DriverError> {
    let variants = workload.variants();
    let name_of = |i: usize| variants.get(i).map_or("?", |v| v.name.as_str()).to_string();
    let mut tally = KernelTally::new(workload.name(), &name_of(0), &name_of(1));
    if let Some(v) = engine.verdict(id).and_then(decided) {
        tally.started_from_cache(v);
    }
    let pool = inputs(workload, args);
    let in_flight_max = engine.worker_count().max(1) * 2;
    let mut in_flight: Vec<(Ticket, usize)> = Vec::with_capacity(in_flight_max);
    let mut races: VecDeque<RaceSample> = VecDeque::new();
    let mut submitted = 0usize;
    while submitted < args.batches as usize || !in_flight.is_empty() {
        if submitted < args.batches as usize && in_flight.len() < in_flight_max {
            let which = submitted % pool.len();
            let batch = Batch::new(id, Arc::clone(&pool[which].0));
            in_flight.push((engine.submit(batch)?, which));
            submitted += 1;
            continue;
        }
        let (answer, which) = next_answer(&mut in_flight)?;
        // The engine publishes a race's sample before it answers the batch, so drain
        // first: the sample of this answer's race is then queued.
        drain(events, id, &mut tally, &mut races, bar);
        collect(&mut tally, answer, &pool[which].1, &mut races);
        bar.inc(1);
    }
    drain(events, id, &mut tally, &mut races, bar);
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
    }
    Ok(tally)
}

/// The first answer to complete among `in_flight` (removed from it), with the index
/// of its input.
fn next_answer(in_flight: &mut Vec<(Ticket, usize)>) -> Result<(Answer, usize), DriverError> {
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

/// `INPUT_POOL` inputs of `args.size` bytes, cycling through the workload's shapes,
/// each with its CPU reference answer.
fn inputs(workload: &dyn Workload, args: &RunArgs) -> Vec<(Arc<[u8]>, Vec<u8>)> {
    let shapes = workload.shapes();
    let len = usize::try_from(args.size).unwrap_or(usize::MAX);
    let count = INPUT_POOL.min(args.batches as usize).max(1);
    (0..count)
        .map(|i| {
            let shape = shapes.get(i % shapes.len().max(1)).copied();
            let input = workload.generate(
                shape.unwrap_or(InputShape::Uniform),
                len,
                args.seed.wrapping_add(i as u64),
            );
            let reference = workload.reference(&input);
            (Arc::from(input), reference)
        })
        .collect()
}

/// One answer into the tally. A raced answer takes both arms' times from the oldest
/// race sample the engine published (an exact pair; with several batches in flight it
/// may be another batch's race, which does not matter for the per-sample series).
fn collect(
    tally: &mut KernelTally,
    answer: Answer,
    reference: &[u8],
    races: &mut VecDeque<RaceSample>,
) {
    let verified = matches!(&answer.output, Output::Answer(bytes) if bytes == reference);
    let (answered_by, conservative_ns, speculative_ns) = match answer.arm {
        Arm::Conservative if answer.raced => match races.pop_front() {
            Some(r) => (
                ArmName::Conservative,
                Some(r.conservative_ns),
                Some(r.speculative_ns),
            ),
            None => (ArmName::Conservative, answer.kernel_ns, None),
        },
        Arm::Conservative => (ArmName::Conservative, answer.kernel_ns, None),
        Arm::Speculative => (ArmName::Speculative, None, answer.kernel_ns),
    };
    tally.push(
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
    races: &mut VecDeque<RaceSample>,
    bar: &ProgressBar,
) {
    for event in events.try_iter() {
        match event {
            Event::RaceSample { kernel, sample, .. } if kernel == id => races.push_back(sample),
            Event::VerdictChanged {
                kernel, to, reason, ..
            } if kernel == id => {
                let verdict = decided(to).unwrap_or(Verdict::Undecided);
                if reason == VerdictReason::Reverified {
                    tally.verdict(verdict, "re-verified", false);
                    tally.reverified();
                } else {
                    let measured = matches!(reason, VerdictReason::Measured(_));
                    tally.verdict(verdict, &reason_text(&reason), measured);
                }
                bar.set_message(format!(
                    "{} after {} samples",
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

fn reason_text(reason: &VerdictReason) -> String {
    match reason {
        VerdictReason::Measured(v) => format!("measured: {v:?}").to_lowercase(),
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
        let err = check_size(2 << 30, &devices).expect_err("2GiB is over 128MiB");
        let message = err.to_string();
        assert!(
            message.contains("device 1")
                && message.contains("maxStorageBufferRange 134217728")
                && message.contains("the largest size this device takes is 128MiB"),
            "{message}"
        );
        assert!(check_size(small, &devices).is_ok(), "128MiB fits exactly");
        assert!(
            check_size(small + 1, &devices).is_err(),
            "padded past the range"
        );
        // A range that is no multiple of 16 (lavapipe's 2^31 - 1): the input is padded
        // to 16 bytes, so the largest size is the range rounded down to 16.
        let odd = [device(0, (1 << 31) - 1)];
        let largest = ((1u64 << 31) - 1) / 16 * 16;
        assert!(check_size(largest, &odd).is_ok());
        let err = check_size(largest + 1, &odd).expect_err("padded past the range");
        assert!(
            err.to_string().contains(&format!("({largest} bytes)")),
            "{err}"
        );
    }
}
