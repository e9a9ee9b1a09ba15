//! Running one batch: choose the arm(s) from the kernel's verdict, dispatch (in a race
//! the conservative arm on the worker's thread and the speculative one on the worker's
//! arm thread, on an idle partner queue at the same time when one exists, back to back
//! on the worker's own queue otherwise), join the two arms, compare their answers and
//! feed the paired window.
//!
//! The caller always gets an answer from a variant the engine trusts for that batch:
//! the conservative one in a race. A speculative answer that differs is discarded,
//! reported and rejects the variant at once; so does a panic in the speculative
//! variant's host code (its workload's `plan`, `answer` or `speculation_report`). A
//! batch the conservative variant refuses too is the batch's fault and changes no
//! verdict. This module never blocks on a channel but the arm thread's, and never
//! answers a ticket itself; the worker does.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::{BackendError, DispatchJob, DispatchOutput, KernelVariant, QueueId};
use crate::kernels::{DispatchPlan, WorkloadError};
use crate::policy::{decide_persistent_kernel, ArmIndependenceVerdict, PersistentKernelDecision};
use crate::speculator::{resolve_fused_path, FusedSupport, SpeculationMode};

use super::arms;
use super::contention::{Call, Watch};
use super::dispatch_policy;
use super::error::EngineError;
use super::events::{Event, KernelVerdict, VerdictReason};
use super::keys::KeyState;
use super::priors;
use super::record::{self, reject_everywhere, reject_on, rerace_due, ArmTimes};
use super::registry::{Arm, Kernel, Lane};
use super::supervisor::{self, panic_message};
use super::trace;
use super::{Answer, Core, Job, Output, Payload};

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

/// What to run for one batch; `spec` is the speculative variant in play when it was
/// chosen (the batch keeps it even if play moves on meanwhile).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Choice {
    /// One arm alone.
    Single { arm: Arm, spec: usize },
    /// Both arms; `audit` when the variant was already adopted.
    Race { audit: bool, spec: usize },
}

/// Runs `job` on `queue` and returns its answer.
pub(crate) fn run(core: &Core, queue: QueueId, job: &Job) -> Result<Answer, Fault> {
    if core.is_lost(queue.device) {
        return Err(Fault::DeviceLost {
            device: queue.device,
            detail: "lost before this batch ran".into(),
        });
    }
    if let Some(hung) = job.kernel.disabled.get() {
        return Err(Fault::Input(hung.clone()));
    }
    let state = priors::state_for(core, &job.kernel, job.tuning_key());
    let (choice, policy_due, lane) = begin(core, queue, job, &state);
    let result = match choice {
        // An adopted variant that refuses a batch the conservative one may take is no
        // longer trusted, and the batch runs conservatively.
        Choice::Single { arm, spec } => {
            match single(core, queue, (job, &state), lane, arm, spec, policy_due) {
                Err(fault) => after_single_fault(core, queue, (job, &state), arm, spec, fault),
                ok => ok,
            }
        }
        Choice::Race { audit, spec } => race(core, queue, (job, &state), lane, audit, spec),
    };
    priors::done_with(state);
    result
}

/// Counts the batch's shape for the dispatch policy and chooses what to run for it.
/// The flag: a single-arm run of it should evaluate the policy bundle (a new shape, or
/// a periodic refresh; see `due_for_single_arm`), counted on `queue`'s lane, which is
/// returned for the rest of the batch's counts.
fn begin<'j>(
    core: &Core,
    queue: QueueId,
    job: &'j Job,
    state: &KeyState,
) -> (Choice, bool, &'j Lane) {
    let lane = job.kernel.lane(queue);
    let policy_due = {
        let mut history = lane.history();
        history.shapes.note(payload_len(&job.payload));
        history.shapes.due_for_single_arm()
    };
    (
        choose(core, lane, &job.kernel, state, queue.device),
        policy_due,
        lane,
    )
}

fn choose(core: &Core, lane: &Lane, kernel: &Kernel, state: &KeyState, device: usize) -> Choice {
    let spec = state.in_play();
    let mut verdict = state.verdict_of(spec);
    if verdict != KernelVerdict::Rejected && kernel.is_broken(spec) {
        // Broken on another key while this one was being made: rejected here too.
        reject_on(core, kernel, state, spec, device, VerdictReason::Mismatch);
        verdict = KernelVerdict::Rejected;
    }
    if verdict != KernelVerdict::Rejected && kernel.fused(spec) == Some(true) {
        let fused =
            resolve_fused_path(core.config.mode, &core.speculator, &FusedSupport::Supported)
                .unwrap_or(false);
        if !fused {
            // Fused path off: prefilter + serial confirm, i.e. the conservative variant.
            // In `Auto` a periodic probe race keeps feeding the speculator, so it can
            // switch the fused path back on when commit rates recover.
            let probe = core.config.mode == SpeculationMode::Auto
                && lane.audit_due(core.config.audit_period);
            return if probe {
                Choice::Race {
                    audit: verdict == KernelVerdict::Adopted,
                    spec,
                }
            } else {
                Choice::Single {
                    arm: Arm::Conservative,
                    spec,
                }
            };
        }
    }
    let arm = match verdict {
        KernelVerdict::Undecided => return Choice::Race { audit: false, spec },
        KernelVerdict::Rejected
            if lane.audit_due(core.config.audit_period)
                && rerace_due(core, kernel, state, spec, device) =>
        {
            return Choice::Race { audit: false, spec }
        }
        KernelVerdict::Rejected => Arm::Conservative,
        KernelVerdict::Adopted if lane.audit_due(core.config.audit_period) => {
            return Choice::Race { audit: true, spec }
        }
        KernelVerdict::Adopted => Arm::Speculative,
    };
    Choice::Single { arm, spec }
}

/// Feeds a run of speculative variant `spec`'s counter tail (if it writes one) to the
/// shared speculator, and publishes a toggle.
/// `Err`: the workload's `speculation_report` panicked (the variant is then rejected by
/// the caller, as for any failure of its host code).
fn note_speculative_run(
    core: &Core,
    kernel: &Kernel,
    spec: usize,
    outputs: &[Vec<u8>],
) -> Result<(), EngineError> {
    let Some(workload) = kernel.workload() else {
        return Ok(());
    };
    let report = host_code(kernel, spec, "speculation_report", || {
        Ok(workload.speculation_report(spec, outputs))
    })?;
    match report {
        Some(report) => {
            kernel.set_fused(spec, true);
            let outcome = core.speculator.record(report);
            if let Some(enabled) = outcome.toggled() {
                tracing::info!(
                    enabled,
                    commit_rate_ppm = outcome.after.commit_rate_ppm,
                    "speculator toggled"
                );
                core.bus.publish(Event::SpeculatorToggled {
                    enabled,
                    commit_rate_ppm: u64::from(outcome.after.commit_rate_ppm),
                });
            }
        }
        None => kernel.set_fused(spec, false),
    }
    Ok(())
}

/// Runs host code of `kernel`'s variant `variant` (its workload's `plan`, `answer` or
/// `speculation_report`, named by `what`). A speculative variant's host code is run
/// under `catch_unwind`: a panic there is that variant's failure (an `Err` that rejects
/// it, while the batch gets the conservative answer), never the worker's. The
/// conservative variant's host code runs as it is: its panic is the worker's, which the
/// supervisor retries once on another queue.
fn host_code<T>(
    kernel: &Kernel,
    variant: usize,
    what: &'static str,
    code: impl FnOnce() -> Result<T, EngineError>,
) -> Result<T, EngineError> {
    if variant == 0 {
        return code();
    }
    catch_unwind(AssertUnwindSafe(code)).unwrap_or_else(|panic| {
        let workload = kernel.workload().map_or("(pair)", |w| w.name());
        let reason = format!(
            "its host code panicked in `{what}`: {}",
            panic_message(panic.as_ref())
        );
        Err(EngineError::Workload(WorkloadError::BadOutput {
            workload,
            variant,
            reason,
        }))
    })
}

/// The dispatch job of `variant` for this batch on `queue`, and whether the variant had
/// to be loaded on the queue's device for it.
fn make_job(
    core: &Core,
    kernel: &Kernel,
    variant: usize,
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
    let (handle, loaded) = kernel
        .handle(core.backend.as_ref(), queue.device, variant)
        .map_err(|source| EngineError::Backend {
            kernel: kernel.name.clone(),
            source,
        })?;
    Ok((plan.into_job(queue, handle), loaded.is_some()))
}

/// The canonical output of `variant` from its dispatch output.
fn finish(
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
fn input_of(payload: &Payload) -> Option<&Arc<[u8]>> {
    match payload {
        Payload::Input(input) => Some(input),
        Payload::Plan(_) | Payload::Items(..) => None,
    }
}

/// Sorts a backend error of variant `variant`'s run on `device` into the batch's fault,
/// the backend's, or the device's. A dispatch the backend gave up on after the dispatch
/// timeout (`TimedOut`: the device is still running it) retires the variant, marks the
/// device lost (its queue runs that kernel for good) and is the batch's
/// `DispatchTimedOut`.
fn classify_run(
    core: &Core,
    kernel: &Kernel,
    variant: usize,
    device: usize,
    err: BackendError,
) -> Fault {
    if let BackendError::TimedOut { after, .. } = &err {
        let after = *after;
        let error = retire_hung(core, kernel, variant, device, after);
        core.mark_lost(device, err.to_string());
        return Fault::Input(error);
    }
    classify(kernel, err)
}

/// Retires variant `variant` of `kernel`, which did not return within the dispatch
/// timeout `after` on `device`, and returns the error its batch gets: a speculative
/// variant is rejected (stored like a mismatch, so a loaded verdict does not bring it
/// back); a conservative one disables the kernel, whose later batches get the same
/// error at once (each would hold a thread for good otherwise).
pub(crate) fn retire_hung(
    core: &Core,
    kernel: &Kernel,
    variant: usize,
    device: usize,
    after: Duration,
) -> EngineError {
    let error = EngineError::DispatchTimedOut {
        kernel: kernel.name.clone(),
        variant: kernel
            .variants
            .get(variant)
            .map_or_else(|| format!("#{variant}"), |v| v.name.clone()),
        after,
    };
    tracing::error!(kernel = %kernel.name, variant, ?after, "a dispatch did not return within the dispatch timeout; its variant is retired");
    if variant == 0 {
        let _ = kernel.disabled.set(error.clone());
    } else {
        reject_everywhere(
            core,
            kernel,
            variant,
            device,
            VerdictReason::SpeculativeFailed(format!(
                "did not return within the dispatch timeout ({after:?})"
            )),
        );
    }
    error
}

/// Sorts a backend error into the batch's fault, the backend's, or the device's.
fn classify(kernel: &Kernel, err: BackendError) -> Fault {
    match err {
        BackendError::DeviceLost { device, detail } => Fault::DeviceLost { device, detail },
        BackendError::OutOfDeviceMemory { .. }
        | BackendError::Vulkan(_)
        | BackendError::TimedOut { .. }
        | BackendError::Unknown { .. } => Fault::Backend(err.to_string()),
        other => Fault::Input(EngineError::Backend {
            kernel: kernel.name.clone(),
            source: other,
        }),
    }
}

/// How a backend call is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Measure {
    /// No kernel times, no wall time (the backend may skip its timestamps).
    Untimed,
    /// Kernel times and the call's host wall time.
    Timed,
    /// Timed, and watched for other calls on the device meanwhile: a race's arms.
    Race,
}

impl Measure {
    /// A single-arm run: timed when `timed`.
    fn single(timed: bool) -> Self {
        if timed {
            Measure::Timed
        } else {
            Measure::Untimed
        }
    }

    fn timed(self) -> bool {
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
    let (results, wall_ns, contended) = timed_dispatch(core, (kernel, variant), jobs, measure);
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
/// `supervisor::begin_call`): past the dispatch timeout the watchdog gives up on it.
fn timed_dispatch(
    core: &Core,
    (kernel, variant): (&Kernel, usize),
    jobs: &[DispatchJob],
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
    let call = supervisor::begin_call(core, kernel.id, variant);
    let (results, wall_ns) = if measure.timed() {
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

fn dispatch_one(
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

/// Evaluates the dispatch policy for this batch (`race`: both arms run, the
/// speculative one being that variant), publishes its aggressive paths when they
/// changed for this kernel, and says whether the arms may run concurrently (D2).
/// A single-arm run calls it only when `begin` said it is due: for a repeat of the
/// shape it was evaluated for, nothing the bundle reads but the backlog has changed,
/// and the backlog is read afresh for every group. The shape's repeat count is read
/// from `lane`, `queue`'s.
fn consult_policy(
    core: &Core,
    kernel: &Kernel,
    queue: QueueId,
    lane: &Lane,
    jobs: [&DispatchJob; 2],
    race: Option<usize>,
) -> bool {
    let arms = match race {
        Some(spec) => {
            dispatch_policy::arm_summaries(jobs, [&kernel.variants[0], &kernel.variants[spec]])
        }
        None => (
            dispatch_policy::arm_summaries(jobs, [&kernel.variants[0], &kernel.variants[0]]).0,
            Default::default(),
        ),
    };
    let queued = core
        .devices
        .get(queue.device)
        .map_or(0, |d| d.mailbox.len());
    let resources = kernel.variants[0].bindings.len();
    let bindless = core
        .backend
        .devices()
        .get(queue.device)
        .map_or(Default::default(), |d| d.bindless);
    let dynamic = kernel
        .variants
        .iter()
        .any(KernelVariant::indexes_descriptors_non_uniformly);
    let repeat = lane.history().shapes.repeat;
    let (verdict, fired) = {
        let mut state = kernel.policy();
        let inputs = state.inputs(queued, repeat, arms, (resources, bindless, dynamic));
        let verdict = dispatch_policy::evaluate(&inputs);
        let fired = state.audit(&verdict, race.is_some());
        (verdict, fired)
    };
    if let Some(fired) = fired {
        tracing::debug!(kernel = %kernel.name, ?fired, "dispatch policy paths changed");
        core.bus.publish(Event::PolicyAudit {
            kernel: kernel.id,
            fired,
        });
    }
    verdict.arm_independence == ArmIndependenceVerdict::Independent
}

/// A single-arm run of `job`, counted on `lane` (`queue`'s); `policy_due`: evaluate the
/// dispatch policy for it.
fn single(
    core: &Core,
    queue: QueueId,
    (job, state): (&Job, &KeyState),
    lane: &Lane,
    arm: Arm,
    spec: usize,
    policy_due: bool,
) -> Result<Answer, Fault> {
    let variant = arm.variant(spec);
    let dj = prepare_single(core, queue, (job, state), lane, variant)?;
    if policy_due {
        consult_policy(core, &job.kernel, queue, lane, [&dj, &dj], None);
    }
    let timed = single_timed(lane);
    let (out, _) = dispatch_one(core, (&job.kernel, variant), dj, Measure::single(timed))?;
    complete_single(core, queue, job, arm, spec, out)
}

/// Whether this single-arm run of `kernel` is timed: the first and then one in
/// [`TIMED_SINGLE_PERIOD`]. The others go to the backend untimed (`Answer::kernel_ns`
/// `None` where the backend skips timing): an adopted or rejected kernel's runs feed no
/// verdict, and on an H200 the two timestamps of a timed run cost 5.3 µs of a tiny
/// kernel's 27 µs round trip. The timed ones keep the dispatch policy's launch
/// overhead and kernel time current.
/// Counted per queue (`registry::Lane`): the first run on each queue is timed.
fn single_timed(lane: &Lane) -> bool {
    lane.single_due(TIMED_SINGLE_PERIOD)
}

/// The dispatch job of a single-arm run of `job` on `queue`, with trace-JIT told about
/// it in `lane` (`queue`'s).
fn prepare_single(
    core: &Core,
    queue: QueueId,
    (job, state): (&Job, &KeyState),
    lane: &Lane,
    variant: usize,
) -> Result<DispatchJob, Fault> {
    let kernel = &job.kernel;
    let (dj, loaded) =
        make_job(core, kernel, variant, queue, &job.payload).map_err(Fault::Input)?;
    trace::note(
        core,
        (kernel, state),
        lane,
        queue.device,
        trace::shape_of(&dj),
        loaded,
    );
    Ok(dj)
}

/// The answer of a single-arm run from its dispatch result.
fn complete_single(
    core: &Core,
    queue: QueueId,
    job: &Job,
    arm: Arm,
    spec: usize,
    out: Result<DispatchOutput, BackendError>,
) -> Result<Answer, Fault> {
    let kernel = &job.kernel;
    let variant = arm.variant(spec);
    let out = out.map_err(|e| classify_run(core, kernel, variant, queue.device, e))?;
    if arm == Arm::Speculative {
        note_speculative_run(core, kernel, spec, &out.outputs).map_err(Fault::Input)?;
    }
    let kernel_ns = out.kernel_ns;
    let input = input_of(&job.payload).map(|i| &i[..]);
    let output = finish(kernel, variant, input, out.outputs).map_err(Fault::Input)?;
    Ok(Answer {
        output,
        arm,
        variant,
        raced: false,
        kernel_ns,
        queue,
    })
}

/// One single-arm run in this many on each queue is timed (see `single_timed`).
pub const TIMED_SINGLE_PERIOD: u64 = 16;

/// The longest kernel (mean of its timed runs) whose backlog is grouped.
pub(crate) const GROUP_MAX_KERNEL_NS: u64 = 20_000;

/// How many batches to run in one backend call on `queue`, `first` included, when
/// `queued` more wait in the device's mailbox: 1 unless `first`'s kernel is decided (a single-arm run) and D1 says the
/// backlog's launch overheads outweigh the set-up of a persistent launch; then the
/// backlog beyond what the device's idle workers take, at most `max_group`
/// (`EngineBuilder::max_group`). With grouping off (the default) it reads nothing.
pub(crate) fn group_size(core: &Core, queue: QueueId, first: &Job, queued: usize) -> usize {
    if queued == 0 || core.config.max_group <= 1 {
        return 1;
    }
    let decided = first
        .kernel
        .key_state(&first.tuning_key())
        .is_some_and(|state| state.verdict() != KernelVerdict::Undecided);
    if !decided {
        return 1;
    }
    let spare = queued.saturating_sub(core.idle_queues(queue));
    if spare == 0 {
        return 1;
    }
    let Some(inputs) = first
        .kernel
        .try_policy()
        .map(|p| p.persistent_inputs(queued))
    else {
        return 1;
    };
    // Only a short, launch-bound kernel is grouped: a group's batches wait for the
    // whole group's answers, which costs a long kernel's callers latency and saves it
    // little.
    let launch_bound = inputs.per_item_kernel_ns <= inputs.per_launch_overhead_ns
        && inputs.per_item_kernel_ns <= GROUP_MAX_KERNEL_NS;
    match decide_persistent_kernel(inputs) {
        PersistentKernelDecision::PersistentKernel { .. } if launch_bound => {
            (spare + 1).min(core.config.max_group)
        }
        _ => 1,
    }
}

/// Runs a group of batches taken from the mailbox together (see [`group_size`]) and
/// returns one result per job, in order. Every single-arm batch of the group goes to
/// the backend in one call on `queue` — submitted back to back, waited for together —
/// so the group pays one round trip instead of one per batch; a batch that races runs
/// on its own, as in [`run`]. The dispatch policy is consulted once for the group.
/// A batch taken alone goes through [`run`] instead (the worker's loop decides), with
/// no list of results to allocate.
pub(crate) fn run_group(core: &Core, queue: QueueId, jobs: &[Job]) -> Vec<Result<Answer, Fault>> {
    let mut results: Vec<Option<Result<Answer, Fault>>> = jobs.iter().map(|_| None).collect();
    let mut grouped: Vec<(usize, Arm, usize)> = Vec::with_capacity(jobs.len());
    let mut dispatch_jobs: Vec<DispatchJob> = Vec::with_capacity(jobs.len());
    let mut states: Vec<Arc<KeyState>> = Vec::with_capacity(jobs.len());
    let mut policy_due = false;
    for (i, job) in jobs.iter().enumerate() {
        if core.is_lost(queue.device) || job.kernel.disabled.get().is_some() {
            results[i] = Some(run(core, queue, job));
            continue;
        }
        let state = priors::state_for(core, &job.kernel, job.tuning_key());
        let (choice, due, lane) = begin(core, queue, job, &state);
        match choice {
            Choice::Single { arm, spec } => {
                policy_due |= due;
                match prepare_single(core, queue, (job, &state), lane, arm.variant(spec)) {
                    Ok(dj) => {
                        grouped.push((i, arm, spec));
                        dispatch_jobs.push(dj);
                        states.push(state);
                    }
                    Err(fault) => {
                        results[i] = Some(after_single_fault(
                            core,
                            queue,
                            (job, &state),
                            arm,
                            spec,
                            fault,
                        ))
                    }
                }
            }
            Choice::Race { audit, spec } => {
                results[i] = Some(race(core, queue, (job, &state), lane, audit, spec))
            }
        }
    }
    if let (Some(&(first, _, _)), Some(dj), true) =
        (grouped.first(), dispatch_jobs.first(), policy_due)
    {
        let kernel = &jobs[first].kernel;
        consult_policy(core, kernel, queue, kernel.lane(queue), [dj, dj], None);
    }
    match dispatch_group(core, queue, jobs, &grouped, &dispatch_jobs) {
        Ok(outs) => {
            for ((&(i, arm, spec), out), state) in grouped.iter().zip(outs).zip(&states) {
                let result = complete_single(core, queue, &jobs[i], arm, spec, out);
                results[i] = Some(match result {
                    Err(fault) => {
                        after_single_fault(core, queue, (&jobs[i], state), arm, spec, fault)
                    }
                    ok => ok,
                });
            }
        }
        Err(reason) => {
            for &(i, _, _) in &grouped {
                results[i] = Some(Err(Fault::Backend(reason.clone())));
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Fault::Backend("a grouped batch was not run".into()))))
        .collect()
}

/// A single-arm run's fault: an adopted speculative variant that refused the batch is
/// rejected and the batch runs conservatively (as in [`run`]); anything else stands.
fn after_single_fault(
    core: &Core,
    queue: QueueId,
    (job, state): (&Job, &KeyState),
    arm: Arm,
    spec: usize,
    fault: Fault,
) -> Result<Answer, Fault> {
    match (arm, fault) {
        // Already retired, and the device gave up on (see `classify_run`).
        (Arm::Speculative, Fault::Input(e @ EngineError::DispatchTimedOut { .. })) => {
            Err(Fault::Input(e))
        }
        (Arm::Speculative, Fault::Input(e)) => {
            // The conservative variant first: a batch it refuses too is the batch's
            // fault, answered with its error, and changes no verdict.
            let lane = job.kernel.lane(queue);
            let answer = single(
                core,
                queue,
                (job, state),
                lane,
                Arm::Conservative,
                spec,
                false,
            )?;
            reject_everywhere(
                core,
                &job.kernel,
                spec,
                queue.device,
                VerdictReason::SpeculativeFailed(e.to_string()),
            );
            Ok(answer)
        }
        (_, fault) => Err(fault),
    }
}

/// One backend call for the grouped jobs; each kernel's policy learns its share of the
/// call's host time. `Err`: the backend broke its contract (the reason).
fn dispatch_group(
    core: &Core,
    queue: QueueId,
    jobs: &[Job],
    grouped: &[(usize, Arm, usize)],
    dispatch_jobs: &[DispatchJob],
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
    let (results, wall_ns, _) = timed_dispatch(core, first, dispatch_jobs, Measure::single(timed));
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

/// Bytes a batch carries.
pub(crate) fn payload_len(payload: &Payload) -> usize {
    match payload {
        Payload::Input(input) => input.len(),
        Payload::Plan(plan) | Payload::Items(plan, _) => {
            plan.buffers.iter().map(|b| b.len() as usize).sum()
        }
    }
}

/// How the speculative arm of a race ended.
enum SpecArm {
    Ran(DispatchOutput, QueueId),
    Failed(Result<BackendError, EngineError>),
}

/// How long a race's caller waits for the speculative arm once the conservative arm
/// is in (see [`race`]).
pub(crate) const JUDGE_GRACE: Duration = Duration::from_millis(100);

/// Runs both arms of `job` on `queue` and judges them; `audit`: the variant is already
/// adopted. Trace-JIT and the dispatch policy count on `lane`, `queue`'s.
///
/// The conservative arm runs on this thread; the speculative one on this worker's arm
/// thread (`arms.rs`) — on an idle partner queue at the same time when the arms are
/// independent, after the conservative one on `queue` otherwise. Once the conservative
/// answer is in, the speculative arm gets [`JUDGE_GRACE`] more: if it is in by then it
/// is judged before the caller is answered (so a caller that sees its answer sees the
/// race's verdict, as it always did for arms of similar length); otherwise the caller
/// is answered now and the arm is judged when it finishes ([`judge_pending`], which
/// the worker calls right after answering), or, past the dispatch timeout, retired. A
/// speculative kernel that never returns thus holds its caller for the grace only.
fn race(
    core: &Core,
    queue: QueueId,
    (job, state): (&Job, &Arc<KeyState>),
    lane: &Lane,
    audit: bool,
    spec_variant: usize,
) -> Result<Answer, Fault> {
    // An arm still out from an earlier batch (the worker was interrupted before it
    // judged it) is judged first.
    judge_pending(core);
    let kernel = &job.kernel;
    let (cons, cons_loaded) =
        make_job(core, kernel, 0, queue, &job.payload).map_err(Fault::Input)?;
    let spec = make_job(core, kernel, spec_variant, queue, &job.payload);
    let loaded = cons_loaded || spec.as_ref().is_ok_and(|(_, l)| *l);
    trace::note(
        core,
        (kernel, state),
        lane,
        queue.device,
        trace::shape_of(&cons),
        loaded,
    );
    let spec = spec.map(|(job, _)| job);
    // D2: the arms share a moment on two queues only when their buffers are
    // independent; otherwise they run back to back.
    let concurrent = match &spec {
        Ok(spec) => consult_policy(core, kernel, queue, lane, [&cons, spec], Some(spec_variant)),
        Err(_) => false,
    } && !core
        .devices
        .get(queue.device)
        .is_some_and(|d| d.shares_cores);
    let partner = if concurrent {
        core.borrow_partner(queue)
    } else {
        None
    };

    let mut arm = SpecRun::new(spec, queue);
    if let Some(partner_queue) = partner.as_ref().and_then(|p| p.id()) {
        // At the same time on the partner queue.
        arm.hand_out(core, kernel, spec_variant, Some(partner_queue));
    }
    // Back to back, the arms take turns going first (by the parity of the key's races
    // of this variant): whatever else the machine does at a fixed moment of the
    // workers' cycle — an application thread woken by the answer, the next batch's
    // upload — then falls on each arm in half the races instead of always on the same
    // one, where it would bias every sample of a run the same way.
    // Going first, the speculative arm delays the caller's answer by its time: it is
    // waited for at most `JUDGE_GRACE` plus twice the conservative arm's recent median
    // (a slower or hung one then runs on beside the conservative arm, judged when it
    // ends, as one still running after the conservative arm is).
    let mut spec_first = None;
    if partner.as_ref().and_then(|p| p.id()).is_none() {
        let log = state.log(spec_variant);
        if log.races % 2 == 1 {
            let cons_ns = log.history[0].median().unwrap_or(0);
            drop(log);
            arm.hand_out(core, kernel, spec_variant, None);
            let patience = JUDGE_GRACE + Duration::from_nanos(cons_ns.saturating_mul(2));
            spec_first = Some(arm.take(patience));
        }
    }
    let cons_call = dispatch_one(core, (kernel, 0), cons, Measure::Race);
    // Back to back on our queue (a no-op when already handed out).
    arm.hand_out(core, kernel, spec_variant, None);
    let cons_result = cons_call.and_then(|(result, contended)| {
        let out = result.map_err(|e| classify_run(core, kernel, 0, queue.device, e))?;
        let input = input_of(&job.payload).map(|i| &i[..]);
        let ns = out.kernel_ns;
        let output = finish(kernel, 0, input, out.outputs).map_err(Fault::Input)?;
        Ok((output, Timed { ns, contended }))
    });
    let (output, cons_time) = match cons_result {
        Ok(done) => done,
        Err(fault) => {
            // The batch fails, and its speculative arm says nothing of the variant.
            arm.discard();
            return Err(fault);
        }
    };
    let spec_queue = arm.queue;
    let input = input_of(&job.payload);
    let spec_arm = match spec_first {
        Some(Some(done)) => Some(done),
        _ => arm.take(JUDGE_GRACE),
    };
    match spec_arm {
        Some(spec_arm) => judge(
            core,
            (kernel, state, input.map(|i| &i[..])),
            queue,
            audit,
            &output,
            cons_time,
            (spec_variant, spec_arm),
        ),
        None => {
            // Still running: answer now, judge later.
            let pending = Pending {
                kernel: Arc::clone(kernel),
                state: Arc::clone(state),
                input: input.cloned(),
                queue,
                spec_queue,
                audit,
                cons: output.clone(),
                cons_time,
                spec: spec_variant,
                since: arm.since,
            };
            PENDING.with_borrow_mut(|p| *p = Some(pending));
        }
    }
    drop(partner);
    Ok(Answer {
        output,
        arm: Arm::Conservative,
        variant: 0,
        raced: true,
        kernel_ns: cons_time.ns,
        queue,
    })
}

/// A race's speculative arm on its way: not yet handed out (its job), handed to the
/// arm thread (`out`), or ended (`ended`: failed before it ran, or ran here).
struct SpecRun {
    job: Option<DispatchJob>,
    ended: Option<SpecArm>,
    out: bool,
    /// The queue it runs on.
    queue: QueueId,
    /// When it was handed out.
    since: Instant,
}

impl SpecRun {
    fn new(spec: Result<DispatchJob, EngineError>, queue: QueueId) -> Self {
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
    fn hand_out(&mut self, core: &Core, kernel: &Kernel, spec: usize, on: Option<QueueId>) {
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
    fn take(&mut self, grace: Duration) -> Option<SpecArm> {
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

    /// Lets the arm go unjudged (the batch failed): waits the grace for one handed
    /// out, then gives up on its thread.
    fn discard(mut self) {
        if self.out && self.take(JUDGE_GRACE).is_none() {
            arms::abandon();
        }
    }
}

/// A race whose caller was answered before its speculative arm finished: what judging
/// that arm needs. Kept by the worker's thread until [`judge_pending`].
struct Pending {
    kernel: Arc<Kernel>,
    /// The batch's tuning key.
    state: Arc<KeyState>,
    /// The batch's input (a workload's), held until the arm is judged.
    input: Option<Arc<[u8]>>,
    queue: QueueId,
    spec_queue: QueueId,
    audit: bool,
    cons: Output,
    cons_time: Timed,
    spec: usize,
    /// When the arm was handed out.
    since: Instant,
}

thread_local! {
    /// This worker thread's race whose speculative arm is still out, if any.
    static PENDING: std::cell::RefCell<Option<Pending>> = const { std::cell::RefCell::new(None) };
}

/// Judges this thread's race whose caller was answered before its speculative arm
/// finished (a no-op when there is none): waits for the arm until the dispatch timeout
/// (counted from when it was handed out; for ever with the timeout off), then judges it
/// as the race would have; an arm still running then is retired (`retire_hung`) and
/// its thread abandoned. Every race is judged exactly once: here or in [`race`].
pub(crate) fn judge_pending(core: &Core) {
    let Some(p) = PENDING.with_borrow_mut(Option::take) else {
        return;
    };
    let timeout = core.config.dispatch_timeout;
    let left = timeout.map(|t| t.saturating_sub(p.since.elapsed()));
    let spec_arm = match arms::wait(left) {
        arms::Waited::Done(result) => spec_result(result, p.spec_queue),
        arms::Waited::Running => {
            arms::abandon();
            retire_hung(
                core,
                &p.kernel,
                p.spec,
                p.queue.device,
                timeout.unwrap_or_default(),
            );
            return;
        }
        arms::Waited::Idle => SpecArm::Failed(Ok(BackendError::Unknown {
            what: "speculative arm: its thread was lost".into(),
        })),
    };
    judge(
        core,
        (&p.kernel, &p.state, p.input.as_deref()),
        p.queue,
        p.audit,
        &p.cons,
        p.cons_time,
        (p.spec, spec_arm),
    );
}

fn spec_result(result: Result<DispatchOutput, BackendError>, queue: QueueId) -> SpecArm {
    match result {
        Ok(out) => SpecArm::Ran(out, queue),
        Err(e) => SpecArm::Failed(Ok(e)),
    }
}

/// The conservative arm's kernel time, and whether another backend call shared the
/// device with the race.
#[derive(Debug, Clone, Copy)]
struct Timed {
    ns: Option<u64>,
    contended: bool,
}

/// The race join's verdict half: compares the answer of speculative variant `spec`
/// with the conservative one and feeds that variant's window. Never changes what the
/// caller gets.
fn judge(
    core: &Core,
    (kernel, state, input): (&Kernel, &KeyState, Option<&[u8]>),
    queue: QueueId,
    audit: bool,
    cons: &Output,
    cons_time: Timed,
    (spec, arm): (usize, SpecArm),
) {
    let device = queue.device;
    match arm {
        SpecArm::Failed(Ok(BackendError::DeviceLost { device, detail })) => {
            core.mark_lost(device, detail);
        }
        SpecArm::Failed(Ok(e @ BackendError::TimedOut { .. })) => {
            // Retired and the device given up on; no sample.
            classify_run(core, kernel, spec, device, e);
        }
        SpecArm::Failed(Ok(e)) => match classify(kernel, e) {
            Fault::Input(e) => {
                reject_everywhere(
                    core,
                    kernel,
                    spec,
                    device,
                    VerdictReason::SpeculativeFailed(e.to_string()),
                );
            }
            // A driver hiccup on the speculative arm says nothing about the variant.
            other => {
                tracing::warn!(kernel = %kernel.name, ?other, "speculative arm failed; no sample")
            }
        },
        SpecArm::Failed(Err(e)) => {
            reject_everywhere(
                core,
                kernel,
                spec,
                device,
                VerdictReason::SpeculativeFailed(e.to_string()),
            );
        }
        SpecArm::Ran(out, spec_queue) => {
            if let Err(e) = note_speculative_run(core, kernel, spec, &out.outputs) {
                reject_everywhere(
                    core,
                    kernel,
                    spec,
                    device,
                    VerdictReason::SpeculativeFailed(e.to_string()),
                );
                return;
            }
            let spec_ns = out.kernel_ns;
            let spec_output = match finish(kernel, spec, input, out.outputs) {
                Ok(o) => o,
                Err(e) => {
                    reject_everywhere(
                        core,
                        kernel,
                        spec,
                        device,
                        VerdictReason::SpeculativeFailed(e.to_string()),
                    );
                    return;
                }
            };
            if let Err(detail) = kernel.agreement.compare(cons, &spec_output) {
                tracing::warn!(kernel = %kernel.name, %spec_queue, audit, %detail, "speculative variant disagreed; rejected");
                core.bus.publish(Event::MismatchCaught {
                    kernel: kernel.id,
                    name: kernel.name.clone(),
                    variant: spec,
                    key: state.key,
                    queue: spec_queue,
                    audit,
                    detail,
                });
                reject_everywhere(core, kernel, spec, device, VerdictReason::Mismatch);
                return;
            }
            let (Some(c_ns), Some(s_ns)) = (cons_time.ns, spec_ns) else {
                // No timestamps on this queue: agreement is checked, timing is not.
                return;
            };
            let times = ArmTimes {
                conservative_ns: c_ns,
                speculative_ns: s_ns,
                contended: cons_time.contended,
            };
            record::record_race(core, (kernel, state), spec, (queue, spec_queue), times);
        }
    }
}
