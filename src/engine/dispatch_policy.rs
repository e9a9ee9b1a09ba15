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
//! by `trace_jit.rs`, which pre-specialises the predicted key's pipelines. D3 (uploads travel
//! inside each job's command buffer: no separate copy to overlap) is evaluated and
//! audited ("serialised: overlapped uploads not implemented") but has nothing to act on
//! in this version; D9's bindless binding is the
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
    pub(crate) fn inputs(
        &self,
        (queued, repeat): (usize, u32),
        arms: (ArmBindingSummary, ArmBindingSummary),
        (resource_count, support, dynamic_indexing): (usize, BindlessSupport, bool),
        trace_jit: TraceJitInputs,
    ) -> DispatchPolicyInputs {
        let overhead = self.overhead_ns.unwrap_or(0);
        let first = self.first_overhead_ns.unwrap_or(0);
        DispatchPolicyInputs {
            persistent: self.persistent_inputs(queued),
            arm_a: arms.0,
            arm_b: arms.1,
            // Uploads travel inside the dispatch; no separate copy is queued.
            copy_dst_slot: None,
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

/// The two arms' binding summaries over the buffers they really use: each arm's
/// written buffers are its own (the backend allocates them per job), while a read-only
/// input shared by both (the same `Arc`) is the same resource. Every distinct buffer
/// gets its own number, so the summaries alias exactly where the buffers do.
pub(crate) fn arm_summaries(
    jobs: [&DispatchJob; 2],
    variants: [&KernelVariant; 2],
) -> (ArmBindingSummary, ArmBindingSummary) {
    let mut shared: Vec<(Arc<[u8]>, u32)> = Vec::new();
    let mut next = 0u32;
    let mut summary = |job: &DispatchJob, variant: &KernelVariant| {
        let mut arm = ArmBindingSummary::default();
        for (binding, buffer) in variant.bindings.iter().zip(&job.buffers) {
            let id = match buffer {
                BufferArg::Data(data) if !binding.access.writes() => {
                    match shared.iter().find(|(d, _)| Arc::ptr_eq(d, data)) {
                        Some(&(_, id)) => id,
                        None => {
                            next += 1;
                            shared.push((Arc::clone(data), next));
                            next
                        }
                    }
                }
                _ => {
                    next += 1;
                    next
                }
            };
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
