//! Choosing what runs for a batch, before anything runs: which arm or arms (from the
//! verdict of its tuning key on the variant in play, the lane's audit and timing
//! ticks), in which order a back-to-back race's arms go and how long a caller waits
//! for a speculative arm that went first, whether the arms may share a moment on two
//! queues (the dispatch policy's D2), and how many queued batches one backend call
//! takes (D1). It dispatches nothing and judges nothing; `race.rs` acts on its choices.

use std::time::Duration;

use crate::backend::{DispatchJob, QueueId};
use crate::policy::{
    decide_persistent_kernel, ArmBindingSummary, ArmIndependenceVerdict, PersistentKernelDecision,
    PersistentKernelInputs, PolicyAudit,
};
use crate::speculator::{resolve_fused_path, FusedSupport, SpeculationMode};

use super::batch::payload_len;
use super::core::Core;
use super::dispatch_policy;
use super::events::{Event, KernelVerdict, VerdictReason};
use super::job::Job;
use super::keys::KeyState;
use super::lane::Lane;
use super::policy_action::{Acts, GroupRefusal};
use super::record::{reject_on, rerace_due};
use super::registry::Kernel;
use super::sample::Arm;

/// What to run for one batch; `spec` is the speculative variant in play when it was
/// chosen (the batch keeps it even if play moves on meanwhile).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Choice {
    /// One arm alone.
    Single { arm: Arm, spec: usize },
    /// Both arms; `audit` when the variant was already adopted.
    Race { audit: bool, spec: usize },
}

/// One single-arm run in this many on each queue is timed (see `single_timed`).
pub const TIMED_SINGLE_PERIOD: u64 = 16;

/// How long a race's caller waits for the speculative arm once the conservative arm
/// is in (see `race::race`).
pub(crate) const JUDGE_GRACE: Duration = Duration::from_millis(100);

/// The longest kernel (mean of its timed runs) whose backlog is grouped.
pub(crate) const GROUP_MAX_KERNEL_NS: u64 = 20_000;

/// Counts the batch's shape for the dispatch policy and chooses what to run for it.
/// The flag: a single-arm run of it should evaluate the policy bundle (a new shape, or
/// a periodic refresh; see `due_for_single_arm`), counted on `queue`'s lane, which is
/// returned for the rest of the batch's counts.
pub(super) fn begin<'j>(
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

/// Chooses what to run for a batch of `kernel` on tuning key `state`, from its verdict
/// on the variant in play and the lane's ticks (see [`decide`]). A variant broken on
/// another key while this one was being made is rejected here too first.
fn choose(core: &Core, lane: &Lane, kernel: &Kernel, state: &KeyState, device: usize) -> Choice {
    let spec = state.in_play();
    let mut verdict = state.verdict_of(spec);
    if verdict != KernelVerdict::Rejected && kernel.is_broken(spec) {
        reject_on(core, kernel, state, spec, device, VerdictReason::Mismatch);
        verdict = KernelVerdict::Rejected;
    }
    let mut facts = LaneFacts {
        core,
        lane,
        kernel,
        state,
        spec,
        device,
    };
    let fused = kernel.fused(spec) == Some(true);
    let probe_mode = core.config.mode == SpeculationMode::Auto;
    decide(verdict, fused, probe_mode, spec, &mut facts)
}

/// What [`decide`] asks as it goes. Each question is asked at most once per batch and
/// only when the answer matters: the audit tick counts the batches it is asked for.
pub(super) trait Facts {
    /// The fused path is off now (the shared speculator's say, under the engine's
    /// speculation mode).
    fn fused_path_off(&mut self) -> bool;
    /// The lane's audit tick: one batch in `audit_period` of the queue's is due an
    /// audit (or, for a rejected variant, a re-race check; for a fused kernel whose
    /// fused path is off, a probe race).
    fn audit_due(&mut self) -> bool;
    /// The rejected variant is due a re-race on this key.
    fn rerace_due(&mut self) -> bool;
    /// Every batch of an adopted variant is checked (`Verify::Always`).
    fn verify_always(&mut self) -> bool;
}

/// The facts of a real batch: its queue's lane, its key and the engine's speculator.
struct LaneFacts<'a> {
    core: &'a Core,
    lane: &'a Lane,
    kernel: &'a Kernel,
    state: &'a KeyState,
    spec: usize,
    device: usize,
}

impl Facts for LaneFacts<'_> {
    fn fused_path_off(&mut self) -> bool {
        let core = self.core;
        !resolve_fused_path(core.config.mode, &core.speculator, &FusedSupport::Supported)
            .unwrap_or(false)
    }

    fn audit_due(&mut self) -> bool {
        self.lane.audit_due(self.core.config.audit_period)
    }

    fn rerace_due(&mut self) -> bool {
        rerace_due(self.core, self.kernel, self.state, self.spec, self.device)
    }

    fn verify_always(&mut self) -> bool {
        self.core.config.verify_always
    }
}

/// What to run for a batch whose variant in play `spec` has `verdict`: an undecided
/// variant races; an adopted one runs alone, with an audit race when the tick says
/// so; a rejected one runs conservatively, racing again when the tick and its key's
/// re-race schedule say so. `fused`: the variant writes a counter tail; while the
/// speculator has its fused path off, it runs conservatively (prefilter + serial
/// confirm), with a probe race on the audit tick in `probe_mode` (`Auto`), which keeps
/// feeding the speculator so it can switch the fused path back on when commit rates
/// recover.
pub(super) fn decide(
    verdict: KernelVerdict,
    fused: bool,
    probe_mode: bool,
    spec: usize,
    facts: &mut impl Facts,
) -> Choice {
    if verdict != KernelVerdict::Rejected && fused && facts.fused_path_off() {
        let probe = probe_mode && facts.audit_due();
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
    let arm = match verdict {
        KernelVerdict::Undecided => return Choice::Race { audit: false, spec },
        KernelVerdict::Rejected if facts.audit_due() && facts.rerace_due() => {
            return Choice::Race { audit: false, spec }
        }
        KernelVerdict::Rejected => Arm::Conservative,
        KernelVerdict::Adopted if facts.verify_always() || facts.audit_due() => {
            return Choice::Race { audit: true, spec }
        }
        KernelVerdict::Adopted => Arm::Speculative,
    };
    Choice::Single { arm, spec }
}

/// Back to back, the arms of a race take turns going first, by the parity of the key's
/// races of the variant: the speculative arm goes first after an odd number. Whatever
/// else the machine does at a fixed moment of the workers' cycle — an application
/// thread woken by the answer, the next batch's upload — then falls on each arm in
/// half the races instead of always on the same one, where it would bias every sample
/// of a run the same way.
pub(super) fn speculative_goes_first(races: u32) -> bool {
    races % 2 == 1
}

/// How long a caller waits for a speculative arm that went first: going first, it
/// delays the caller's answer by its time, so it is waited for at most
/// [`JUDGE_GRACE`] plus twice the conservative arm's recent median (a slower or hung
/// one then runs on beside the conservative arm, judged when it ends, as one still
/// running after the conservative arm is).
pub(super) fn first_arm_patience(conservative_median_ns: u64) -> Duration {
    JUDGE_GRACE + Duration::from_nanos(conservative_median_ns.saturating_mul(2))
}

/// Whether this single-arm run of `kernel` is timed: the first and then one in
/// [`TIMED_SINGLE_PERIOD`]. The others go to the backend untimed (`Answer::kernel_ns`
/// `None` where the backend skips timing): an adopted or rejected kernel's runs feed no
/// verdict, and on an H200 the two timestamps of a timed run cost 5.3 µs of a tiny
/// kernel's 27 µs round trip. The timed ones keep the dispatch policy's launch
/// overhead and kernel time current.
/// Counted per queue (`lane::Lane`): the first run on each queue is timed.
pub(super) fn single_timed(lane: &Lane) -> bool {
    lane.single_due(TIMED_SINGLE_PERIOD)
}

/// How many batches to run in one backend call on `queue`, `first` included, when
/// `queued` more wait in the device's mailbox: `Err` (one batch, and why) unless
/// `first`'s kernel is decided (a single-arm run) and D1 says the backlog's launch
/// overheads outweigh the set-up of a persistent launch; then the backlog beyond what
/// the device's idle workers take, at most `max_group` (`EngineBuilder::max_group`).
/// With no backlog, or grouping off, it reads nothing.
pub(crate) fn group_size(
    core: &Core,
    queue: QueueId,
    first: &Job,
    queued: usize,
) -> Result<usize, GroupRefusal> {
    if core.config.max_group <= 1 {
        return Err(GroupRefusal::GroupingOff);
    }
    if queued == 0 {
        return Err(GroupRefusal::NoBacklog);
    }
    let decided = first
        .kernel
        .key_state(&first.tuning_key())
        .is_some_and(|state| state.verdict() != KernelVerdict::Undecided);
    if !decided {
        return Err(GroupRefusal::KernelUndecided);
    }
    let spare = queued.saturating_sub(core.idle_queues(queue));
    if spare == 0 {
        return Err(GroupRefusal::NoBacklog);
    }
    let Some(inputs) = first
        .kernel
        .try_policy()
        .map(|p| p.persistent_inputs(queued))
    else {
        return Err(GroupRefusal::NotWorthIt);
    };
    group_for(spare, core.config.max_group, inputs)
}

/// The group for a backlog of which `spare` batches are beyond what idle workers take:
/// `spare + 1` (at most `max_group`) when D1 says a persistent launch pays for the
/// backlog and the kernel is short and launch-bound, `Err` (why not) otherwise. Only
/// such a kernel is grouped: a group's batches wait for the whole group's answers,
/// which costs a long kernel's callers latency and saves it little.
fn group_for(
    spare: usize,
    max_group: usize,
    inputs: PersistentKernelInputs,
) -> Result<usize, GroupRefusal> {
    let launch_bound = inputs.per_item_kernel_ns <= inputs.per_launch_overhead_ns
        && inputs.per_item_kernel_ns <= GROUP_MAX_KERNEL_NS;
    match decide_persistent_kernel(inputs) {
        PersistentKernelDecision::PersistentKernel { .. } if launch_bound => {
            Ok((spare + 1).min(max_group))
        }
        PersistentKernelDecision::PersistentKernel { .. } => Err(GroupRefusal::NotLaunchBound),
        PersistentKernelDecision::StandardLaunches => Err(GroupRefusal::NotWorthIt),
    }
}

/// Evaluates the dispatch policy for this batch (`race`: both arms run, the
/// speculative one being that variant): whether the arms may run concurrently (D2) and
/// the aggressive paths that fired, which the caller publishes with what it did about
/// them once the batch has run ([`publish_audit`]).
/// A single-arm run calls it only when `begin` said it is due: for a repeat of the
/// shape it was evaluated for, nothing the bundle reads but the backlog has changed,
/// and the backlog is read afresh for every group. The shape's repeat count is read
/// from `lane`, `queue`'s. `taken`: batches taken with this one from the backlog (a
/// group's others, which the mailbox no longer counts, nor does it count a window's).
/// `copy`: D3's input for a group (`dispatch_policy::group_copy_inputs`), whose
/// summary stands for the single arm.
pub(super) fn consult_policy(
    core: &Core,
    kernel: &Kernel,
    (queue, lane): (QueueId, &Lane),
    jobs: [&DispatchJob; 2],
    (race, copy): (Option<usize>, Option<(ArmBindingSummary, u32)>),
    taken: usize,
) -> Consulted {
    let (arms, copy_dst) = match (race, copy) {
        (Some(spec), _) => (
            dispatch_policy::arm_summaries(jobs, [&kernel.variants[0], &kernel.variants[spec]]),
            None,
        ),
        (None, Some((before, dst))) => ((before, Default::default()), Some(dst)),
        (None, None) => (
            (
                dispatch_policy::arm_summaries(jobs, [&kernel.variants[0], &kernel.variants[0]]).0,
                Default::default(),
            ),
            None,
        ),
    };
    let queued = core
        .devices
        .get(queue.device)
        .map_or(0, |d| d.mailbox.len())
        .max(taken);
    let resources = kernel.variants[0].bindings.len();
    let bindless = core
        .backend
        .devices()
        .get(queue.device)
        .map_or(Default::default(), |d| d.bindless);
    let dynamic = kernel.indexes_non_uniformly;
    let (repeat, trace_jit) = {
        let history = lane.history();
        (history.shapes.repeat, history.trace.last_inputs)
    };
    let inputs = kernel.policy().inputs(
        (queued, repeat),
        (arms, copy_dst),
        (resources, bindless, dynamic),
        trace_jit,
    );
    let verdict = dispatch_policy::evaluate(&inputs);
    Consulted {
        independent: verdict.arm_independence == ArmIndependenceVerdict::Independent,
        fired: dispatch_policy::fired(&verdict, race.is_some()),
    }
}

/// What [`consult_policy`] found for a batch.
#[derive(Debug, Default)]
pub(super) struct Consulted {
    /// D2: the arms' buffers are independent.
    pub(super) independent: bool,
    /// The aggressive paths that fired, in rule order.
    pub(super) fired: Vec<PolicyAudit>,
}

/// Publishes `fired` (from [`consult_policy`]) as `Event::PolicyAudit` with what the
/// engine did about each (`acts`, gathered as the batch ran), when the rules or the
/// actions differ from those published last for `kernel`.
pub(super) fn publish_audit(core: &Core, kernel: &Kernel, fired: &[PolicyAudit], acts: &Acts) {
    if fired.is_empty() {
        return;
    }
    let Some((fired, did)) = kernel.policy().audit(fired, acts) else {
        return;
    };
    tracing::debug!(kernel = %kernel.name, ?fired, ?did, "dispatch policy paths or actions changed");
    core.bus.publish(Event::PolicyAudit {
        kernel: kernel.id,
        fired,
        did,
    });
}

#[cfg(all(test, not(photofinish_loom)))]
mod tests {
    use super::*;

    /// Facts with fixed answers that record which were asked, in order.
    struct Told {
        fused_path_off: bool,
        audit_due: bool,
        rerace_due: bool,
        verify_always: bool,
        asked: Vec<&'static str>,
    }

    impl Told {
        fn new(fused_path_off: bool, audit_due: bool, rerace_due: bool) -> Self {
            Told {
                fused_path_off,
                audit_due,
                rerace_due,
                verify_always: false,
                asked: Vec::new(),
            }
        }
    }

    impl Facts for Told {
        fn fused_path_off(&mut self) -> bool {
            self.asked.push("fused");
            self.fused_path_off
        }
        fn audit_due(&mut self) -> bool {
            self.asked.push("audit");
            self.audit_due
        }
        fn rerace_due(&mut self) -> bool {
            self.asked.push("rerace");
            self.rerace_due
        }
        fn verify_always(&mut self) -> bool {
            self.asked.push("verify");
            self.verify_always
        }
    }

    const SPEC: usize = 2;

    fn single(arm: Arm) -> Choice {
        Choice::Single { arm, spec: SPEC }
    }

    fn race(audit: bool) -> Choice {
        Choice::Race { audit, spec: SPEC }
    }

    #[test]
    fn an_undecided_variant_races_without_spending_the_audit_tick() {
        for audit_due in [false, true] {
            let mut told = Told::new(false, audit_due, true);
            let choice = decide(KernelVerdict::Undecided, false, true, SPEC, &mut told);
            assert_eq!(choice, race(false));
            assert!(told.asked.is_empty(), "asked {:?}", told.asked);
        }
    }

    #[test]
    fn an_adopted_variant_runs_alone_and_races_as_an_audit_on_the_tick() {
        let mut told = Told::new(false, false, false);
        let choice = decide(KernelVerdict::Adopted, false, true, SPEC, &mut told);
        assert_eq!(choice, single(Arm::Speculative));
        assert_eq!(told.asked, ["verify", "audit"]);
        let mut told = Told::new(false, true, false);
        let choice = decide(KernelVerdict::Adopted, false, true, SPEC, &mut told);
        assert_eq!(choice, race(true));
        assert_eq!(
            told.asked,
            ["verify", "audit"],
            "the tick is counted once a batch"
        );
    }

    #[test]
    fn under_verify_always_every_batch_of_an_adopted_variant_is_an_audit_race() {
        let mut told = Told::new(false, false, false);
        told.verify_always = true;
        let choice = decide(KernelVerdict::Adopted, false, true, SPEC, &mut told);
        assert_eq!(choice, race(true));
        // A rejected variant still runs conservatively, re-raced on its schedule.
        let mut told = Told::new(false, false, true);
        told.verify_always = true;
        let choice = decide(KernelVerdict::Rejected, false, true, SPEC, &mut told);
        assert_eq!(choice, single(Arm::Conservative));
    }

    #[test]
    fn a_rejected_variant_races_again_only_on_the_tick_and_its_rerace_schedule() {
        let mut told = Told::new(false, false, true);
        let choice = decide(KernelVerdict::Rejected, false, true, SPEC, &mut told);
        assert_eq!(choice, single(Arm::Conservative));
        assert_eq!(told.asked, ["audit"], "no re-race check off the tick");
        let mut told = Told::new(false, true, false);
        let choice = decide(KernelVerdict::Rejected, false, true, SPEC, &mut told);
        assert_eq!(choice, single(Arm::Conservative));
        assert_eq!(told.asked, ["audit", "rerace"]);
        let mut told = Told::new(false, true, true);
        let choice = decide(KernelVerdict::Rejected, false, true, SPEC, &mut told);
        assert_eq!(choice, race(false));
    }

    #[test]
    fn a_fused_kernel_with_its_fused_path_off_runs_conservatively_probing_in_auto() {
        for verdict in [KernelVerdict::Undecided, KernelVerdict::Adopted] {
            // Not `Auto`: never a probe, and the tick is left alone.
            let mut told = Told::new(true, true, true);
            let choice = decide(verdict, true, false, SPEC, &mut told);
            assert_eq!(choice, single(Arm::Conservative));
            assert_eq!(told.asked, ["fused"]);
            // `Auto`: a probe race on the tick, an audit when the variant is adopted.
            let mut told = Told::new(true, true, true);
            let choice = decide(verdict, true, true, SPEC, &mut told);
            assert_eq!(choice, race(verdict == KernelVerdict::Adopted));
            let mut told = Told::new(true, false, true);
            let choice = decide(verdict, true, true, SPEC, &mut told);
            assert_eq!(choice, single(Arm::Conservative));
        }
    }

    #[test]
    fn a_fused_kernel_with_its_fused_path_on_is_chosen_by_its_verdict() {
        let mut told = Told::new(false, false, false);
        let choice = decide(KernelVerdict::Adopted, true, true, SPEC, &mut told);
        assert_eq!(choice, single(Arm::Speculative));
        assert_eq!(told.asked, ["fused", "verify", "audit"]);
        // A rejected variant's fused path is not asked about.
        let mut told = Told::new(true, false, false);
        let choice = decide(KernelVerdict::Rejected, true, true, SPEC, &mut told);
        assert_eq!(choice, single(Arm::Conservative));
        assert_eq!(told.asked, ["audit"]);
    }

    #[test]
    fn back_to_back_arms_take_turns_going_first() {
        let firsts: Vec<bool> = (0..6).map(speculative_goes_first).collect();
        assert_eq!(firsts, [false, true, false, true, false, true]);
    }

    #[test]
    fn a_speculative_arm_that_goes_first_is_waited_for_the_grace_and_twice_the_median() {
        assert_eq!(first_arm_patience(0), JUDGE_GRACE);
        assert_eq!(
            first_arm_patience(1_000_000),
            JUDGE_GRACE + Duration::from_millis(2)
        );
        assert_eq!(
            first_arm_patience(u64::MAX),
            JUDGE_GRACE + Duration::from_nanos(u64::MAX)
        );
    }

    fn inputs(overhead_ns: u64, kernel_ns: u64, setup_ns: u64) -> PersistentKernelInputs {
        PersistentKernelInputs {
            batch_size: 8,
            per_launch_overhead_ns: overhead_ns,
            per_item_kernel_ns: kernel_ns,
            persistent_setup_overhead_ns: setup_ns,
        }
    }

    #[test]
    fn a_short_launch_bound_backlog_is_grouped_up_to_the_limit() {
        // Eight launches of 10 µs overhead outweigh a 20 µs set-up.
        let cheap = inputs(10_000, 5_000, 20_000);
        assert_eq!(group_for(3, 8, cheap), Ok(4));
        assert_eq!(group_for(20, 8, cheap), Ok(8), "at most max_group");
    }

    #[test]
    fn a_long_or_kernel_bound_or_costly_to_set_up_backlog_is_not_grouped() {
        let not_bound = Err(GroupRefusal::NotLaunchBound);
        // Kernel time above the launch overhead: not launch-bound.
        assert_eq!(group_for(3, 8, inputs(10_000, 15_000, 20_000)), not_bound);
        // Launch-bound but longer than GROUP_MAX_KERNEL_NS.
        let long = GROUP_MAX_KERNEL_NS + 1;
        assert_eq!(group_for(3, 8, inputs(long * 2, long, 20_000)), not_bound);
        // The set-up outweighs the launches.
        assert_eq!(
            group_for(3, 8, inputs(10_000, 5_000, 10_000_000)),
            Err(GroupRefusal::NotWorthIt)
        );
    }
}
