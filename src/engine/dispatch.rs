//! Dispatching and timing: a batch's dispatch job for a variant (its plan made by the
//! workload's host code, the variant loaded on the queue's device), one backend call
//! for one job or a group, counted on its device's load and watched by the watchdog,
//! its kernel times and host wall time fed to the dispatch policy, and a race's
//! speculative arm handed to the worker's arm thread and waited for. It judges no
//! answer and changes no verdict: what a result means is `judge.rs`'s.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::{BackendError, DispatchJob, DispatchOutput, QueueId};
use crate::kernels::{DispatchPlan, WorkloadError};

use super::arms;
use super::batch::{Output, Payload};
use super::choose::single_timed;
use super::contention::{Call, Watch};
use super::core::Core;
use super::error::EngineError;
use super::events::Event;
use super::job::Job;
use super::panics::panic_message;
use super::registry::Kernel;
use super::sample::Arm;
use super::tuning::TuningKey;
use super::watch;

/// Why a batch did not produce an answer on this queue.
#[derive(Debug)]
pub(crate) enum Fault {
    /// The batch itself is at fault: answer it with this error, no retry.
    Input(EngineError),
    /// The backend failed (driver error, out of memory, a broken reply): the
    /// supervisor restarts the worker and retries the batch once on another queue.
    Backend(String),
    /// The device was lost.
    DeviceLost {
        /// The device.
        device: usize,
        /// What the driver said.
        detail: String,
    },
}

/// Runs host code of `kernel`'s variant `variant` (its workload's `plan`, `answer` or
/// `speculation_report`, named by `what`). A speculative variant's host code is run
/// under `catch_unwind`: a panic there is that variant's failure (an `Err` that rejects
/// it, while the batch gets the conservative answer), never the worker's. The
/// conservative variant's host code runs as it is: its panic is the worker's, which the
/// supervisor retries once on another queue.
pub(super) fn host_code<T>(
    kernel: &Kernel,
    variant: usize,
    what: &'static str,
    code: impl FnOnce() -> Result<T, EngineError>,
) -> Result<T, EngineError> {
    caught(
        variant,
        what,
        || kernel.workload().map_or("(pair)", |w| w.name()),
        code,
    )
}

/// [`host_code`] with the workload's name asked only when a panic is reported.
fn caught<T>(
    variant: usize,
    what: &'static str,
    workload: impl FnOnce() -> &'static str,
    code: impl FnOnce() -> Result<T, EngineError>,
) -> Result<T, EngineError> {
    if variant == 0 {
        return code();
    }
    catch_unwind(AssertUnwindSafe(code)).unwrap_or_else(|panic| {
        let reason = format!(
            "its host code panicked in `{what}`: {}",
            panic_message(panic.as_ref())
        );
        Err(EngineError::Workload(WorkloadError::BadOutput {
            workload: workload(),
            variant,
            reason,
        }))
    })
}

/// The dispatch job of `variant` for this batch on `queue`, and whether the variant had
/// to be loaded on the queue's device for it.
pub(super) fn make_job(
    core: &Core,
    kernel: &Kernel,
    (variant, key): (usize, &TuningKey),
    queue: QueueId,
    payload: &Payload,
) -> Result<(DispatchJob, bool), EngineError> {
    let plan = match (payload, kernel.workload()) {
        // The batch's `Arc` itself where the workload can bind it: no copy of the input.
        (Payload::Input(input), Some(workload)) => host_code(kernel, variant, "plan", || {
            Ok(workload.plan_shared(variant, input)?)
        })?,
        (Payload::Plan(plan), _) => (**plan).clone(),
        (Payload::Items(plan, items), _) => {
            let workgroups = kernel.variants[variant]
                .workgroups_for_items(*items, u32::MAX)
                .map_err(|source| EngineError::Plan {
                    kernel: kernel.name.clone(),
                    source,
                })?;
            DispatchPlan {
                workgroups,
                ..(**plan).clone()
            }
        }
        (Payload::Input(_), None) => {
            return Err(EngineError::WrongPayload {
                kernel: kernel.name.clone(),
                expected: "a dispatch plan",
                fix: "`Batch::with_plan(kernel, plan)`",
            })
        }
    };
    let (handle, ready) = kernel
        .handle_for(core.backend.as_ref(), queue.device, variant, key)
        .map_err(|source| EngineError::Backend {
            kernel: kernel.name.clone(),
            source,
        })?;
    if let Some(ns) = ready.compiled_ns {
        kernel.trace.note_miss(ns);
    }
    if ready.first_use_of_pre {
        kernel.trace.note_outcome(true);
        core.bus.publish(Event::PreSpecialisationOutcome {
            kernel: kernel.id,
            key: Some(*key),
            variant: kernel.variants[variant].name.clone(),
            device: queue.device,
            constants: kernel.spec_values(variant, key),
            used: true,
        });
    }
    Ok((plan.into_job(queue, handle), ready.compiled_ns.is_some()))
}

/// The canonical output of `variant` from its dispatch output.
pub(super) fn finish(
    kernel: &Kernel,
    variant: usize,
    input: Option<&[u8]>,
    outputs: Vec<Vec<u8>>,
) -> Result<Output, EngineError> {
    match (input, kernel.workload()) {
        (Some(input), Some(workload)) => host_code(kernel, variant, "answer", || {
            Ok(Output::Answer(workload.answer(variant, input, &outputs)?))
        }),
        _ => Ok(Output::Buffers(outputs.into())),
    }
}

/// A workload batch's input (`None` for a pair's plan).
pub(super) fn input_of(payload: &Payload) -> Option<&Arc<[u8]>> {
    match payload {
        Payload::Input(input) => Some(input),
        Payload::Plan(_) | Payload::Items(..) => None,
    }
}

/// How a backend call is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Measure {
    /// No kernel times, no wall time (the backend may skip its timestamps).
    Untimed,
    /// Kernel times and the call's host wall time.
    Timed,
    /// Timed, and watched for other calls on the device meanwhile: a race's arms.
    Race,
}

impl Measure {
    /// A single-arm run: timed when `timed`.
    pub(super) fn single(timed: bool) -> Self {
        if timed {
            Measure::Timed
        } else {
            Measure::Untimed
        }
    }

    pub(super) fn timed(self) -> bool {
        self != Measure::Untimed
    }
}

/// Dispatches the jobs in one call and checks that one result came back per job. The
/// call's host wall time minus its slowest kernel time is the launch overhead the
/// dispatch policy learns (from timed calls only: an untimed call's wall time holds an
/// unknown kernel time). The flag (`Measure::Race` only): another backend call ran on
/// the device meanwhile.
fn dispatch(
    core: &Core,
    (kernel, variant): (&Kernel, usize),
    jobs: &[DispatchJob],
    measure: Measure,
) -> Result<(Vec<Result<DispatchOutput, BackendError>>, bool), Fault> {
    let timed = measure.timed();
    let (results, wall_ns, contended) =
        timed_dispatch(core, (kernel, variant), (jobs, false), measure);
    let kernel_ns = results
        .iter()
        .filter_map(|r| r.as_ref().ok().and_then(|o| o.kernel_ns))
        .max();
    if timed {
        if let Some(mut policy) = kernel.try_policy() {
            policy.observe(wall_ns, kernel_ns);
        }
    }
    check_count(&results, jobs).map_err(Fault::Backend)?;
    Ok((results, contended))
}

/// One backend call, counted on its first job's queue (see `contention`): its results,
/// its host wall time in nanoseconds (0, unmeasured, when untimed), and (for
/// `Measure::Race`) whether another backend call ran on the same device at some moment
/// during it. The call is watched as variant `variant` of `kernel` (see
/// `watch::begin_call`): past the dispatch timeout the watchdog gives up on it.
/// `overlap`: D3 let the jobs' uploads overlap (see [`dispatch_group`]).
fn timed_dispatch(
    core: &Core,
    (kernel, variant): (&Kernel, usize),
    (jobs, overlap): (&[DispatchJob], bool),
    measure: Measure,
) -> (Vec<Result<DispatchOutput, BackendError>>, u64, bool) {
    enum Counted<'a> {
        Call(Call<'a>),
        Watch(Watch<'a>),
    }
    let counted = jobs.first().and_then(|j| {
        let (load, index) = core.device_load(j.queue)?;
        Some(match measure {
            Measure::Race => Counted::Watch(load.watch(index)),
            Measure::Untimed | Measure::Timed => Counted::Call(load.begin(index)),
        })
    });
    let call = watch::begin_call(core, kernel.id, variant);
    let (results, wall_ns) = if overlap {
        let started = measure.timed().then(std::time::Instant::now);
        let results = core.backend.dispatch_overlapped(jobs, measure.timed());
        let wall_ns = started.map_or(0, |s| {
            u64::try_from(s.elapsed().as_nanos()).unwrap_or(u64::MAX)
        });
        (results, wall_ns)
    } else if measure.timed() {
        let started = std::time::Instant::now();
        let results = core.backend.dispatch(jobs);
        let wall_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        (results, wall_ns)
    } else {
        // Nobody reads an untimed call's wall time: no clock.
        (core.backend.dispatch_untimed(jobs), 0)
    };
    drop(call);
    let contended = match counted {
        Some(Counted::Watch(watch)) => watch.finish(),
        Some(Counted::Call(call)) => {
            call.finish();
            false
        }
        None => false,
    };
    (results, wall_ns, contended)
}

/// `Err` (the reason) unless the backend returned one result per job.
fn check_count<T>(results: &[T], jobs: &[DispatchJob]) -> Result<(), String> {
    if results.len() == jobs.len() {
        Ok(())
    } else {
        Err(format!(
            "the backend returned {} results for {} jobs",
            results.len(),
            jobs.len()
        ))
    }
}

/// One backend call for one job (see [`dispatch`]).
pub(super) fn dispatch_one(
    core: &Core,
    kernel: (&Kernel, usize),
    job: DispatchJob,
    measure: Measure,
) -> Result<(Result<DispatchOutput, BackendError>, bool), Fault> {
    let (mut results, contended) = dispatch(core, kernel, std::slice::from_ref(&job), measure)?;
    let result = results
        .pop()
        .ok_or_else(|| Fault::Backend("the backend returned no result".into()))?;
    Ok((result, contended))
}

/// One backend call for the grouped jobs; each kernel's policy learns its share of the
/// call's host time. `overlap`: D3 let each job's uploads run beside the earlier jobs'
/// kernels (`Backend::dispatch_overlapped`). `Err`: the backend broke its contract
/// (the reason).
pub(super) fn dispatch_group(
    core: &Core,
    queue: QueueId,
    jobs: &[Job],
    grouped: &[(usize, Arm, usize)],
    (dispatch_jobs, overlap): (&[DispatchJob], bool),
) -> Result<Vec<Result<DispatchOutput, BackendError>>, String> {
    if dispatch_jobs.is_empty() {
        return Ok(Vec::new());
    }
    // Timed when the group's first kernel is due a timed run; then each kernel of the
    // group learns its share of the call.
    let timed = grouped
        .first()
        .is_some_and(|&(i, _, _)| single_timed(jobs[i].kernel.lane(queue)));
    // Watched as the group's first batch's variant (a hang blames it).
    let first = grouped
        .first()
        .map(|&(i, arm, spec)| (&*jobs[i].kernel, arm.variant(spec)));
    let Some(first) = first else {
        return Ok(Vec::new());
    };
    let measure = Measure::single(timed);
    let (results, wall_ns, _) = timed_dispatch(core, first, (dispatch_jobs, overlap), measure);
    check_count(&results, dispatch_jobs)?;
    if timed {
        let share = wall_ns / dispatch_jobs.len() as u64;
        for (&(i, _, _), result) in grouped.iter().zip(&results) {
            let kernel_ns = result.as_ref().ok().and_then(|o| o.kernel_ns);
            if let Some(mut policy) = jobs[i].kernel.try_policy() {
                policy.observe(share, kernel_ns);
            }
        }
    }
    Ok(results)
}

/// How the speculative arm of a race ended.
pub(super) enum SpecArm {
    Ran(DispatchOutput, QueueId),
    Failed(Result<BackendError, EngineError>),
}

/// A race's speculative arm on its way: not yet handed out (its job), handed to the
/// arm thread (`out`), or ended (`ended`: failed before it ran, or ran here).
pub(super) struct SpecRun {
    job: Option<DispatchJob>,
    ended: Option<SpecArm>,
    out: bool,
    /// The queue it runs on.
    pub(super) queue: QueueId,
    /// When it was handed out.
    pub(super) since: Instant,
}

impl SpecRun {
    pub(super) fn new(spec: Result<DispatchJob, EngineError>, queue: QueueId) -> Self {
        let (job, ended) = match spec {
            Ok(job) => (Some(job), None),
            Err(e) => (None, Some(SpecArm::Failed(Err(e)))),
        };
        SpecRun {
            job,
            ended,
            out: false,
            queue,
            since: Instant::now(),
        }
    }

    /// Hands the arm to this worker's arm thread, on `on` (or the job's own queue);
    /// where no arm thread can be started, runs it here.
    pub(super) fn hand_out(
        &mut self,
        core: &Core,
        kernel: &Kernel,
        spec: usize,
        on: Option<QueueId>,
    ) {
        let Some(mut job) = self.job.take() else {
            return;
        };
        if let Some(queue) = on {
            job.queue = queue;
        }
        self.queue = job.queue;
        self.since = Instant::now();
        match arms::start(&core.backend, job) {
            Ok(()) => self.out = true,
            Err(job) => {
                self.ended = Some(
                    match dispatch_one(core, (kernel, spec), job, Measure::Race) {
                        Ok((result, _)) => spec_result(result, self.queue),
                        Err(Fault::Backend(reason)) => SpecArm::Failed(Ok(BackendError::Unknown {
                            what: format!("result: {reason}"),
                        })),
                        Err(_) => SpecArm::Failed(Ok(BackendError::Unknown {
                            what: "result of the speculative arm".into(),
                        })),
                    },
                )
            }
        }
    }

    /// The arm's end, waiting up to `grace` for one handed out; `None`: still running.
    pub(super) fn take(&mut self, grace: Duration) -> Option<SpecArm> {
        if let Some(ended) = self.ended.take() {
            return Some(ended);
        }
        if !self.out {
            return Some(SpecArm::Failed(Ok(BackendError::Unknown {
                what: "speculative arm: it was never run".into(),
            })));
        }
        match arms::wait(Some(grace)) {
            arms::Waited::Done(result) => Some(spec_result(result, self.queue)),
            arms::Waited::Running => None,
            arms::Waited::Idle => Some(SpecArm::Failed(Ok(BackendError::Unknown {
                what: "speculative arm: its thread was lost".into(),
            }))),
        }
    }

    /// Lets the arm go unjudged (the batch failed): waits `grace` for one handed out,
    /// then gives up on its thread.
    pub(super) fn discard(mut self, grace: Duration) {
        if self.out && self.take(grace).is_none() {
            arms::abandon();
        }
    }
}

/// How a speculative arm that was dispatched ended.
pub(super) fn spec_result(result: Result<DispatchOutput, BackendError>, queue: QueueId) -> SpecArm {
    match result {
        Ok(out) => SpecArm::Ran(out, queue),
        Err(e) => SpecArm::Failed(Ok(e)),
    }
}

#[cfg(all(test, not(photofinish_loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_backend_that_returns_the_wrong_number_of_results_broke_its_contract() {
        let jobs: Vec<DispatchJob> = Vec::new();
        assert_eq!(check_count::<u8>(&[], &jobs), Ok(()));
        let reason = check_count(&[1u8], &jobs).expect_err("one result for no job");
        assert_eq!(reason, "the backend returned 1 results for 0 jobs");
    }

    #[test]
    fn only_a_timed_single_arm_run_reads_the_clock() {
        assert_eq!(Measure::single(true), Measure::Timed);
        assert_eq!(Measure::single(false), Measure::Untimed);
        assert!(Measure::Timed.timed());
        assert!(Measure::Race.timed(), "a race's arms are always timed");
        assert!(!Measure::Untimed.timed());
    }

    #[test]
    fn a_speculative_variants_host_code_panic_is_its_failure_not_the_workers() {
        let mut named = false;
        let result: Result<u32, EngineError> = caught(
            1,
            "plan",
            || {
                named = true;
                "sum"
            },
            || panic!("no plan for this input"),
        );
        match result {
            Err(EngineError::Workload(WorkloadError::BadOutput {
                workload,
                variant,
                reason,
            })) => {
                assert_eq!((workload, variant), ("sum", 1));
                assert!(reason.contains("panicked in `plan`"), "{reason}");
                assert!(reason.contains("no plan for this input"), "{reason}");
            }
            other => panic!("expected the variant's failure, got {other:?}"),
        }
        assert!(named);
        // What it returns passes through, and the name is not asked for.
        let ok: Result<u32, EngineError> = caught(2, "answer", || unreachable!(), || Ok(7));
        assert_eq!(ok.ok(), Some(7));
    }

    #[test]
    fn the_conservative_variants_host_code_panic_is_the_workers() {
        let unwound = std::panic::catch_unwind(|| {
            let _: Result<u32, EngineError> =
                caught(0, "plan", || "sum", || panic!("conservative"));
        });
        assert!(
            unwound.is_err(),
            "the panic was caught for the conservative variant"
        );
    }

    #[test]
    fn a_pairs_plan_is_not_an_input() {
        let input: Arc<[u8]> = vec![1, 2, 3].into();
        let payload = Payload::Input(Arc::clone(&input));
        assert_eq!(input_of(&payload).map(|i| &i[..]), Some(&[1u8, 2, 3][..]));
        let plan = Payload::Plan(Box::new(crate::kernels::DispatchPlan {
            buffers: Vec::new(),
            push_constants: Vec::new(),
            workgroups: [1, 1, 1],
        }));
        assert!(input_of(&plan).is_none());
    }

    #[test]
    fn a_speculative_arm_that_could_not_be_made_has_ended_failed() {
        let queue = QueueId {
            device: 0,
            family: 0,
            index: 0,
        };
        let error = EngineError::ShutDown;
        let mut arm = SpecRun::new(Err(error), queue);
        assert!(matches!(
            arm.take(Duration::ZERO),
            Some(SpecArm::Failed(Err(EngineError::ShutDown)))
        ));
        // Taken once; a second take finds it never run.
        assert!(matches!(
            arm.take(Duration::ZERO),
            Some(SpecArm::Failed(Ok(BackendError::Unknown { .. })))
        ));
    }
}
