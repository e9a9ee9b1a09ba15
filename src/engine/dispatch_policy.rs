//! The engine's side of the dispatch policy (SPEC §1, bundle): per batch it gathers
//! what `policy::evaluate_dispatch_policy` takes from what the engine measured (host
//! wall time of each backend call minus its kernel time as the per-launch overhead, the
//! first launch's overhead as the record/setup cost, how often the same input shape
//! repeats, the queue behind the batch, the arms' real buffer bindings), hands the
//! verdict to the race, and, once the batch has run, says which aggressive paths to
//! publish as `Event::PolicyAudit` with what the engine did about each
//! (`policy_action::PolicyAction`; only when the fired set of a kernel or the actions
//! change, not every batch).
//!
//! The engine acts on D2 (arms run concurrently on two queues only when independent)
//! and on D1: when it fires for a backlog, a worker takes several queued batches and
//! submits them in one backend call (`choose::group_size`, `race::run_group`). D4 is
//! decided again inside the Vulkan backend per shape, from the record and submit costs
//! it measures (`ReuseStats`): a shape's first run is launched plainly and taken apart,
//! a repeated shape's recording kept and replayed. D9's support level is the device's
//! (`DeviceInfo::bindless`, from its descriptor-indexing features). I2 (trace-JIT) takes
//! the prediction of the batch's queue's per-key history (`trace.rs`) and is acted on
//! by `trace_jit.rs`, which pre-specialises the predicted key's pipelines. D3 is evaluated for a
//! backend call that carries several batches (a D1 group): whether the next batch's
//! uploads write a buffer an earlier kernel of the call binds
//! ([`group_copy_inputs`]); when it says Overlap the worker asks the backend for
//! overlapped uploads (`Backend::dispatch_overlapped`: the Vulkan backend records the
//! group's staged copies beside the running kernels), and the audit says what the
//! backend did (`DispatchOutput::upload_overlapped`). D9's bindless binding is the
//! kernel author's (a variant declaring a descriptor array, which the Vulkan backend
//! loads only on a device with the descriptor indexing it needs). A single-arm run of a repeated shape
//! re-evaluates the bundle only every [`POLICY_REFRESH`]-th time. This module decides
//! nothing itself: the policy functions do.

use std::sync::Arc;

use crate::backend::{BufferArg, DispatchJob, KernelVariant};
use crate::policy::{
    evaluate_dispatch_policy, ArmBindingSummary, BindlessInputs, BindlessSupport,
    CommandReuseInputs, DispatchPolicyInputs, DispatchPolicyVerdict, PersistentKernelInputs,
    PolicyAudit, TraceJitInputs,
};

use super::policy_action::{Acts, PolicyAction};

/// A single-arm run of a repeated shape re-evaluates the bundle once in this many.
pub(crate) const POLICY_REFRESH: u32 = 64;

/// Repeats of one input shape in a row, counted per queue (`registry::Lane`): every
/// batch counts, so a count shared by the kernel's workers had every batch write the
/// kernel's lines from whichever core ran it.
#[derive(Debug, Default)]
pub(crate) struct ShapeRun {
    /// Input length of the last batch, to count repeats of the same shape.
    last_len: Option<usize>,
    /// Consecutive batches with the same input length (1 for a new shape).
    pub(crate) repeat: u32,
}

impl ShapeRun {
    /// Counts a batch of `len` input bytes against the repeat run.
    pub(crate) fn note(&mut self, len: usize) {
        if self.last_len == Some(len) {
            self.repeat = self.repeat.saturating_add(1);
        } else {
            self.last_len = Some(len);
            self.repeat = 1;
        }
    }

    /// Whether a single-arm run should evaluate the bundle: on a new shape and on every
    /// [`POLICY_REFRESH`]-th repeat of one (re-evaluating every repeat of a known shape
    /// was a measurable share of a small batch's host time).
    pub(crate) fn due_for_single_arm(&self) -> bool {
        self.repeat <= 1 || self.repeat % POLICY_REFRESH == 0
    }
}

/// What the engine measured about one kernel's launches.
#[derive(Debug, Default)]
pub(crate) struct PolicyState {
    /// Per-launch overhead (host wall − kernel time), EMA with α = 1/4.
    overhead_ns: Option<u64>,
    /// The first launch's overhead: pipeline and command-buffer set-up included.
    first_overhead_ns: Option<u64>,
    /// Kernel time, EMA with α = 1/4.
    kernel_ns: Option<u64>,
    /// The rules (`D1`, `D2`, …) of the aggressive paths published last, each with
    /// what the engine did about it.
    last_fired: Vec<(&'static str, PolicyAction)>,
}

fn ema(old: Option<u64>, new: u64) -> u64 {
    match old {
        None => new,
        Some(old) => {
            let (old, new) = (i128::from(old), i128::from(new));
            u64::try_from(old + ((new - old) >> 2)).unwrap_or(u64::MAX)
        }
    }
}

impl PolicyState {
    /// Records one backend call: its host wall time and its (slowest) kernel time.
    pub(crate) fn observe(&mut self, wall_ns: u64, kernel_ns: Option<u64>) {
        let kernel = kernel_ns.unwrap_or(0);
        let overhead = wall_ns.saturating_sub(kernel);
        self.first_overhead_ns.get_or_insert(overhead);
        self.overhead_ns = Some(ema(self.overhead_ns, overhead));
        if kernel_ns.is_some() {
            self.kernel_ns = Some(ema(self.kernel_ns, kernel));
        }
    }

    /// D1's inputs for a batch with `queued` batches waiting behind it: the launch
    /// overhead measured per call, the first call's overhead (set-up included) as the
    /// set-up of a persistent launch.
    pub(crate) fn persistent_inputs(&self, queued: usize) -> PersistentKernelInputs {
        PersistentKernelInputs {
            batch_size: u32::try_from(queued.saturating_add(1)).unwrap_or(u32::MAX),
            per_launch_overhead_ns: self.overhead_ns.unwrap_or(0),
            per_item_kernel_ns: self.kernel_ns.unwrap_or(0),
            persistent_setup_overhead_ns: self.first_overhead_ns.unwrap_or(0),
        }
    }

    /// The policy inputs for the next batch; `queued` batches wait behind it, its
    /// shape came `repeat` times in a row on its queue, and `trace_jit` is what its
    /// queue's trace-JIT history predicted after it (`trace.rs`).
    /// `copy_dst_slot`: D3's input, the destination of the next batch's uploads in the
    /// numbering of `arms` ([`group_copy_inputs`]; `None` when the backend call carries
    /// no next batch).
    pub(crate) fn inputs(
        &self,
        (queued, repeat): (usize, u32),
        (arms, copy_dst_slot): ((ArmBindingSummary, ArmBindingSummary), Option<u32>),
        (resource_count, support, dynamic_indexing): (usize, BindlessSupport, bool),
        trace_jit: TraceJitInputs,
    ) -> DispatchPolicyInputs {
        let overhead = self.overhead_ns.unwrap_or(0);
        let first = self.first_overhead_ns.unwrap_or(0);
        DispatchPolicyInputs {
            persistent: self.persistent_inputs(queued),
            arm_a: arms.0,
            arm_b: arms.1,
            // The next batch's upload destination, where the call carries one.
            copy_dst_slot,
            graph: CommandReuseInputs {
                repeat_count: repeat,
                per_launch_overhead_ns: first,
                record_overhead_ns: first,
                replay_overhead_ns: overhead,
            },
            bindless: BindlessInputs {
                resource_count: u32::try_from(resource_count).unwrap_or(u32::MAX),
                // The device's descriptor-indexing features (`DeviceInfo::bindless`).
                support,
                // Whether a variant's SPIR-V indexes a descriptor array non-uniformly.
                dynamic_indexing,
            },
            // The prediction of the batch's own key's successor, from its queue's
            // history; trace-JIT acted on the same inputs when it noted the batch.
            trace_jit,
        }
    }

    /// The audit to publish for the paths that `fired` for a batch and what the engine
    /// did about each (`acts`), or `None` when the same rules fired and the same kinds
    /// of action were taken last time (a changed saving, group size or compile count
    /// alone is not news: a backlog's groups vary batch by batch) or none fired. The
    /// comparison allocates nothing.
    pub(crate) fn audit(
        &mut self,
        fired: &[PolicyAudit],
        acts: &Acts,
    ) -> Option<(Vec<String>, Vec<PolicyAction>)> {
        let same = fired.len() == self.last_fired.len()
            && fired.iter().zip(&self.last_fired).all(|(p, (rule, did))| {
                p.rule() == *rule
                    && std::mem::discriminant(&acts.action(p)) == std::mem::discriminant(did)
            });
        if fired.is_empty() || same {
            return None;
        }
        let did: Vec<PolicyAction> = fired.iter().map(|p| acts.action(p)).collect();
        self.last_fired = fired
            .iter()
            .map(PolicyAudit::rule)
            .zip(did.clone())
            .collect();
        Some((fired.iter().map(ToString::to_string).collect(), did))
    }
}

/// The aggressive paths `verdict` fires for a batch, in rule order. `raced`: both arms
/// run (else D2 is moot).
pub(crate) fn fired(verdict: &DispatchPolicyVerdict, raced: bool) -> Vec<PolicyAudit> {
    verdict
        .aggressive_paths()
        .filter(|p| raced || *p != PolicyAudit::ConcurrentArms)
        .collect()
}

/// Numbers a call's buffers: a read-only input seen before (the same `Arc`) gets its
/// number again, every other buffer a new one.
#[derive(Default)]
struct BufferIds {
    shared: Vec<(Arc<[u8]>, u32)>,
    next: u32,
}

impl BufferIds {
    /// The number of `buffer`, bound for writing when `written`.
    fn of(&mut self, written: bool, buffer: &BufferArg) -> u32 {
        if let (BufferArg::Data(data), false) = (buffer, written) {
            if let Some(&(_, id)) = self.shared.iter().find(|(d, _)| Arc::ptr_eq(d, data)) {
                return id;
            }
            self.next += 1;
            self.shared.push((Arc::clone(data), self.next));
            return self.next;
        }
        self.next += 1;
        self.next
    }
}

/// The two arms' binding summaries over the buffers they really use: each arm's
/// written buffers are its own (the backend allocates them per job), while a read-only
/// input shared by both (the same `Arc`) is the same resource. Every distinct buffer
/// gets its own number, so the summaries alias exactly where the buffers do.
pub(crate) fn arm_summaries(
    jobs: [&DispatchJob; 2],
    variants: [&KernelVariant; 2],
) -> (ArmBindingSummary, ArmBindingSummary) {
    let mut ids = BufferIds::default();
    let mut summary = |job: &DispatchJob, variant: &KernelVariant| {
        let mut arm = ArmBindingSummary::default();
        for (binding, buffer) in variant.bindings.iter().zip(&job.buffers) {
            let id = ids.of(binding.access.writes(), buffer);
            if binding.access.reads() {
                arm.reads.insert(id);
            }
            if binding.access.writes() {
                arm.writes.insert(id);
            }
        }
        arm
    };
    let a = summary(jobs[0], variants[0]);
    let b = summary(jobs[1], variants[1]);
    (a, b)
}

/// D3's input for one backend call carrying `jobs` in order (a group; `variants[i]` is
/// job i's variant): the bindings of the kernels that run before a job's uploads, as
/// one summary, and the destination of those uploads — every buffer of a later job is
/// one (uploaded or zero-filled before its kernel). Buffers are numbered as
/// [`arm_summaries`] numbers them: a read-only input the jobs share (the same `Arc`)
/// is one resource, every other buffer the job's own (the backend gives each job
/// buffers of its own). So the destination is the first buffer of a later job that an
/// earlier kernel binds, where there is one (D3 then says serialise), else the first
/// buffer of job 1 with the summary of job 0 (overlap). `None`: fewer than two jobs.
pub(crate) fn group_copy_inputs(
    jobs: &[DispatchJob],
    variants: &[&KernelVariant],
) -> Option<(ArmBindingSummary, u32)> {
    if jobs.len() < 2 {
        return None;
    }
    let mut ids = BufferIds::default();
    let mut before = ArmBindingSummary::default();
    let mut first: Option<(ArmBindingSummary, u32)> = None;
    for (i, (job, variant)) in jobs.iter().zip(variants).enumerate() {
        let mut mine = ArmBindingSummary::default();
        for (binding, buffer) in variant.bindings.iter().zip(&job.buffers) {
            let id = ids.of(binding.access.writes(), buffer);
            if i > 0 {
                if before.touches(id) {
                    return Some((before, id));
                }
                if first.is_none() {
                    first = Some((before.clone(), id));
                }
            }
            if binding.access.reads() {
                mine.reads.insert(id);
            }
            if binding.access.writes() {
                mine.writes.insert(id);
            }
        }
        before.reads.append(&mut mine.reads);
        before.writes.append(&mut mine.writes);
    }
    first
}

/// Evaluates the bundle.
pub(crate) fn evaluate(inputs: &DispatchPolicyInputs) -> DispatchPolicyVerdict {
    evaluate_dispatch_policy(inputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BindingAccess, BindingDesc, KernelHandle, QueueId};
    use crate::policy::{can_dispatch_concurrently, ArmIndependenceVerdict};

    fn variant(access: [BindingAccess; 2]) -> KernelVariant {
        KernelVariant {
            name: "v".into(),
            spirv: None,
            entry_point: "main".into(),
            workgroup_size: [1, 1, 1],
            bindings: access
                .iter()
                .enumerate()
                .map(|(slot, &access)| BindingDesc::new(slot as u32, access))
                .collect(),
            push_constant_bytes: 0,
            items_per_invocation: 1,
            cpu: None,
        }
    }

    fn job(buffers: Vec<BufferArg>) -> DispatchJob {
        DispatchJob {
            queue: QueueId {
                device: 0,
                family: 0,
                index: 0,
            },
            kernel: KernelHandle { device: 0, id: 0 },
            buffers,
            push_constants: Vec::new(),
            workgroups: [1, 1, 1],
        }
    }

    #[test]
    fn arms_sharing_only_a_read_input_are_independent() {
        let input: Arc<[u8]> = Arc::from(vec![1u8; 16]);
        let v = variant([BindingAccess::Read, BindingAccess::Write]);
        let a = job(vec![BufferArg::Data(input.clone()), BufferArg::Zeroed(4)]);
        let b = job(vec![BufferArg::Data(input), BufferArg::Zeroed(4)]);
        let (sa, sb) = arm_summaries([&a, &b], [&v, &v]);
        assert_eq!(sa.reads, sb.reads, "the shared input is one resource");
        assert_ne!(sa.writes, sb.writes, "each arm writes its own buffer");
        assert_eq!(
            can_dispatch_concurrently(&sa, &sb),
            ArmIndependenceVerdict::Independent
        );
    }

    #[test]
    fn d3_overlaps_a_groups_uploads_unless_an_earlier_kernel_binds_their_destination() {
        use crate::policy::{can_overlap_copy_with_kernel, CopyOverlapDecision};
        let v = variant([BindingAccess::Read, BindingAccess::Write]);
        let d3 = |jobs: &[DispatchJob]| {
            let variants = vec![&v; jobs.len()];
            group_copy_inputs(jobs, &variants)
                .map(|(before, dst)| can_overlap_copy_with_kernel(dst, &before))
        };
        let data = |n: u8| BufferArg::Data(Arc::from(vec![n; 16]));
        let batch = |input: BufferArg| job(vec![input, BufferArg::Zeroed(4)]);
        // Each batch's own input and output: the next upload writes nothing a running
        // kernel binds.
        let distinct = [batch(data(1)), batch(data(2)), batch(data(3))];
        assert_eq!(d3(&distinct), Some(CopyOverlapDecision::Overlap));
        // The third batch reads the first one's input (one resource): its upload
        // would write what the first kernel reads.
        let shared = data(9);
        let aliased = [batch(shared.clone()), batch(data(2)), batch(shared)];
        assert_eq!(d3(&aliased), Some(CopyOverlapDecision::Serialize));
        // One batch: no next upload.
        assert_eq!(d3(&distinct[..1]), None);
    }

    #[test]
    fn repeats_count_the_same_shape_and_overhead_is_wall_minus_kernel() {
        let mut run = ShapeRun::default();
        for len in [10, 10, 10, 4] {
            run.note(len);
        }
        assert_eq!(run.repeat, 1);
        assert!(run.due_for_single_arm(), "a new shape is due");
        run.note(4);
        assert_eq!(run.repeat, 2);
        assert!(!run.due_for_single_arm(), "a repeat is not");
        let mut state = PolicyState::default();
        state.observe(5_000, Some(1_000));
        assert_eq!(state.first_overhead_ns, Some(4_000));
        state.observe(2_000, Some(1_000));
        assert_eq!(state.overhead_ns, Some(4_000 - 3_000 / 4));
    }
}
