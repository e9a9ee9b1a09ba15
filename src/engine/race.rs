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
//!
//! This file runs a batch start to answer; what it runs is `choose.rs`'s choice, the
//! backend calls and their timing are `dispatch.rs`'s, and what an arm says of its
//! variant is `judge.rs`'s.

use std::sync::Arc;

use crate::backend::{BackendError, DispatchJob, DispatchOutput, QueueId};
use crate::policy::{can_overlap_copy_with_kernel, CopyOverlapDecision};

use super::batch::Answer;
use super::choose::{
    begin, consult_policy, first_arm_patience, publish_audit, single_timed, speculative_goes_first,
    Choice, Consulted, JUDGE_GRACE,
};
use super::core::Core;
use super::dispatch::{
    dispatch_group, dispatch_one, finish, input_of, make_job, Fault, Measure, SpecRun,
};
use super::dispatch_policy;
use super::error::EngineError;
use super::events::VerdictReason;
use super::job::Job;
use super::judge::{
    classify_run, judge, judge_later, judge_pending, note_speculative_run, Pending, Timed,
};
use super::keys::KeyState;
use super::lane::Lane;
use super::policy_action::{Acts, GroupRefusal, UploadsDone};
use super::priors;
use super::record::reject_everywhere;
use super::sample::Arm;
use super::trace_jit;
use super::tuning::TuningKey;

/// Runs `job` on `queue` and returns its answer; `alone`: why it was not grouped with
/// others of a backlog (what a `PolicyAudit` says of D1).
pub(crate) fn run(
    core: &Core,
    queue: QueueId,
    job: &Job,
    alone: GroupRefusal,
) -> Result<Answer, Fault> {
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
            let due = policy_due.then_some(alone);
            match single(core, queue, (job, &state), lane, arm, spec, due) {
                Err(fault) => after_single_fault(core, queue, (job, &state), arm, spec, fault),
                ok => ok,
            }
        }
        Choice::Race { audit, spec } => race(core, queue, (job, &state), lane, audit, spec),
    };
    priors::done_with(state);
    result
}

/// A single-arm run of `job`, counted on `lane` (`queue`'s); `policy_due` (why the
/// batch runs alone): evaluate the dispatch policy for it and publish what it did.
fn single(
    core: &Core,
    queue: QueueId,
    (job, state): (&Job, &KeyState),
    lane: &Lane,
    arm: Arm,
    spec: usize,
    policy_due: Option<GroupRefusal>,
) -> Result<Answer, Fault> {
    let variant = arm.variant(spec);
    let (dj, pre) = prepare_single(core, queue, (job, state), lane, variant)?;
    let consulted = policy_due.map(|alone| {
        let c = consult_policy(
            core,
            &job.kernel,
            (queue, lane),
            [&dj, &dj],
            (None, None),
            0,
        );
        (c, alone)
    });
    let timed = single_timed(lane);
    let (out, _) = dispatch_one(core, (&job.kernel, variant), dj, Measure::single(timed))?;
    if let Some((Consulted { fired, .. }, alone)) = consulted {
        let acts = Acts {
            group: Err(alone),
            concurrent: false,
            recording_reused: out.as_ref().ok().and_then(|o| o.recording_reused),
            descriptor_array: job.kernel.variants[variant].declares_descriptor_array(),
            pre_specialised: pre,
            uploads: UploadsDone::default(),
        };
        publish_audit(core, &job.kernel, &fired, &acts);
    }
    complete_single(core, queue, job, arm, spec, out)
}

/// The dispatch job of a single-arm run of `job` on `queue`, with trace-JIT told about
/// it in `lane` (`queue`'s), and what trace-JIT pre-specialised (see `trace_jit::note`).
fn prepare_single(
    core: &Core,
    queue: QueueId,
    (job, state): (&Job, &KeyState),
    lane: &Lane,
    variant: usize,
) -> Result<(DispatchJob, Option<(TuningKey, usize)>), Fault> {
    let kernel = &job.kernel;
    let (dj, compiled) =
        make_job(core, kernel, (variant, &state.key), queue, &job.payload).map_err(Fault::Input)?;
    let pre = trace_jit::note(core, (kernel, state), lane, compiled);
    Ok((dj, pre))
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
    let mut pre = None;
    for (i, job) in jobs.iter().enumerate() {
        if core.is_lost(queue.device) || job.kernel.disabled.get().is_some() {
            results[i] = Some(run(core, queue, job, GroupRefusal::NoBacklog));
            continue;
        }
        let state = priors::state_for(core, &job.kernel, job.tuning_key());
        let (choice, due, lane) = begin(core, queue, job, &state);
        match choice {
            Choice::Single { arm, spec } => {
                policy_due |= due;
                match prepare_single(core, queue, (job, &state), lane, arm.variant(spec)) {
                    Ok((dj, noted)) => {
                        if grouped.is_empty() {
                            pre = noted;
                        }
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
    // D3, for every group: the next batch's uploads overlap the running kernels unless
    // an earlier kernel of the call binds what they write.
    let variants: Vec<_> = grouped
        .iter()
        .map(|&(i, arm, spec)| &jobs[i].kernel.variants[arm.variant(spec)])
        .collect();
    let copy = dispatch_policy::group_copy_inputs(&dispatch_jobs, &variants);
    let overlap = copy.as_ref().is_some_and(|(before, dst)| {
        can_overlap_copy_with_kernel(*dst, before) == CopyOverlapDecision::Overlap
    });
    let consulted = match (grouped.first(), dispatch_jobs.first(), policy_due) {
        (Some(&(first, arm, spec)), Some(dj), true) => {
            let kernel = &jobs[first].kernel;
            let lane = kernel.lane(queue);
            let taken = jobs.len() - 1;
            let c = consult_policy(core, kernel, (queue, lane), [dj, dj], (None, copy), taken);
            Some((c.fired, kernel, arm.variant(spec)))
        }
        _ => None,
    };
    match dispatch_group(core, queue, jobs, &grouped, (&dispatch_jobs, overlap)) {
        Ok(outs) => {
            if let Some((fired, kernel, variant)) = consulted {
                // The group's size is what the backend call really carried.
                let acts = Acts {
                    group: Ok(dispatch_jobs.len()),
                    concurrent: false,
                    recording_reused: outs
                        .first()
                        .and_then(|o| o.as_ref().ok())
                        .and_then(|o| o.recording_reused),
                    descriptor_array: kernel.variants[variant].declares_descriptor_array(),
                    pre_specialised: pre,
                    uploads: UploadsDone::of(&outs),
                };
                publish_audit(core, kernel, &fired, &acts);
            }
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
                None,
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
    let key = &state.key;
    let (cons, cons_compiled) =
        make_job(core, kernel, (0, key), queue, &job.payload).map_err(Fault::Input)?;
    let spec = make_job(core, kernel, (spec_variant, key), queue, &job.payload);
    let compiled = cons_compiled || spec.as_ref().is_ok_and(|(_, c)| *c);
    let pre = trace_jit::note(core, (kernel, state), lane, compiled);
    let spec = spec.map(|(job, _)| job);
    // D2: the arms share a moment on two queues only when their buffers are
    // independent; otherwise they run back to back.
    let consulted = match &spec {
        Ok(spec) => consult_policy(
            core,
            kernel,
            (queue, lane),
            [&cons, spec],
            (Some(spec_variant), None),
            0,
        ),
        Err(_) => Consulted::default(),
    };
    let concurrent = consulted.independent
        && !core
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
    // Back to back, the arms take turns going first (`speculative_goes_first`).
    let mut spec_first = None;
    if partner.as_ref().and_then(|p| p.id()).is_none() {
        let log = state.log(spec_variant);
        if speculative_goes_first(log.races) {
            let cons_ns = log.history[0].median().unwrap_or(0);
            drop(log);
            arm.hand_out(core, kernel, spec_variant, None);
            spec_first = Some(arm.take(first_arm_patience(cons_ns)));
        }
    }
    let cons_call = dispatch_one(core, (kernel, 0), cons, Measure::Race);
    // Back to back on our queue (a no-op when already handed out).
    arm.hand_out(core, kernel, spec_variant, None);
    if let Ok((out, _)) = &cons_call {
        let variants = [&kernel.variants[0], &kernel.variants[spec_variant]];
        let acts = Acts {
            group: Err(if audit {
                GroupRefusal::AuditRace
            } else {
                GroupRefusal::KernelUndecided
            }),
            concurrent: partner.as_ref().and_then(|p| p.id()).is_some(),
            recording_reused: out.as_ref().ok().and_then(|o| o.recording_reused),
            descriptor_array: variants.iter().any(|v| v.declares_descriptor_array()),
            pre_specialised: pre,
            uploads: UploadsDone::default(),
        };
        publish_audit(core, kernel, &consulted.fired, &acts);
    }
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
            arm.discard(JUDGE_GRACE);
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
            judge_later(pending);
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
