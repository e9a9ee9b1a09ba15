//! The bundle: every §1 rule evaluated for one dispatch, the execution mode they add up
//! to, and the aggressive paths that fired, as typed audit values the engine publishes.
//! Like the rest of `policy`, it decides and never does I/O.

use std::fmt;

use super::{
    can_dispatch_concurrently, can_overlap_copy_with_kernel, decide_bindless, decide_command_reuse,
    decide_persistent_kernel, decide_trace_jit_speculation, ArmBindingSummary,
    ArmIndependenceVerdict, BindlessDecision, BindlessInputs, CommandReuseDecision,
    CommandReuseInputs, CopyOverlapDecision, PersistentKernelDecision, PersistentKernelInputs,
    TraceJitDecision, TraceJitInputs,
};

/// Everything the §1 rules need to know about one dispatch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct DispatchPolicyInputs {
    /// D1 inputs.
    pub persistent: PersistentKernelInputs,
    /// D2: the first arm's bindings (the conservative variant in a race).
    pub arm_a: ArmBindingSummary,
    /// D2: the second arm's bindings (the speculative variant in a race).
    pub arm_b: ArmBindingSummary,
    /// D3: the destination slot of a copy queued beside the dispatch; `None` when no
    /// copy is queued.
    pub copy_dst_slot: Option<u32>,
    /// D4 inputs.
    pub graph: CommandReuseInputs,
    /// D9 inputs.
    pub bindless: BindlessInputs,
    /// I2 inputs.
    pub trace_jit: TraceJitInputs,
}

/// Every §1 verdict for one dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DispatchPolicyVerdict {
    /// D1.
    pub persistent: PersistentKernelDecision,
    /// D2, arm `a` before arm `b`.
    pub arm_independence: ArmIndependenceVerdict,
    /// D3 against both arms (Overlap only when neither touches the destination);
    /// `None` when no copy is queued.
    pub copy_overlap: Option<CopyOverlapDecision>,
    /// D4.
    pub command_reuse: CommandReuseDecision,
    /// D9.
    pub bindless: BindlessDecision,
    /// I2.
    pub trace_jit: TraceJitDecision,
}

/// How the dispatch is launched, from D1 and D4 together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExecutionMode {
    /// Neither a persistent kernel nor record-and-replay pays off.
    StandardLaunches,
    /// One persistent kernel for the batch (D1 saved more than D4).
    PersistentKernel {
        /// The D1 saving, ns.
        savings_ns: u64,
    },
    /// Record once and replay (D4 saved at least as much as D1).
    RecordAndReplay {
        /// The D4 saving, ns.
        savings_ns: u64,
    },
}

impl fmt::Display for ExecutionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExecutionMode::StandardLaunches => f.write_str("standard-launches"),
            ExecutionMode::PersistentKernel { savings_ns } => {
                PersistentKernelDecision::PersistentKernel { savings_ns }.fmt(f)
            }
            ExecutionMode::RecordAndReplay { savings_ns } => {
                CommandReuseDecision::RecordAndReplay { savings_ns }.fmt(f)
            }
        }
    }
}

/// One aggressive path a verdict fired, for the engine to publish as an audit event.
/// Display reads `<rule> <decision>`, e.g. `D1 persistent-kernel:280000`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyAudit {
    /// D1 chose a persistent kernel.
    PersistentKernel {
        /// The saving, ns.
        savings_ns: u64,
    },
    /// D2 found the arms independent: they are dispatched concurrently.
    ConcurrentArms,
    /// D3 lets the queued copy overlap the kernels.
    CopyOverlap,
    /// D4 chose record-and-replay.
    RecordAndReplay {
        /// The saving, ns.
        savings_ns: u64,
    },
    /// D9 chose bindless.
    Bindless,
    /// I2 chose to pre-specialise.
    TraceJitSpeculate {
        /// The expected saving, ns.
        expected_savings_ns: u64,
    },
}

impl PolicyAudit {
    /// The SPEC §1 rule that fired: `D1`, `D2`, `D3`, `D4`, `D9` or `I2`.
    #[must_use]
    pub fn rule(&self) -> &'static str {
        match self {
            PolicyAudit::PersistentKernel { .. } => "D1",
            PolicyAudit::ConcurrentArms => "D2",
            PolicyAudit::CopyOverlap => "D3",
            PolicyAudit::RecordAndReplay { .. } => "D4",
            PolicyAudit::Bindless => "D9",
            PolicyAudit::TraceJitSpeculate { .. } => "I2",
        }
    }
}

impl fmt::Display for PolicyAudit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.rule())?;
        match *self {
            PolicyAudit::PersistentKernel { savings_ns } => {
                PersistentKernelDecision::PersistentKernel { savings_ns }.fmt(f)
            }
            PolicyAudit::ConcurrentArms => f.write_str("concurrent-arms"),
            PolicyAudit::CopyOverlap => CopyOverlapDecision::Overlap.fmt(f),
            PolicyAudit::RecordAndReplay { savings_ns } => {
                CommandReuseDecision::RecordAndReplay { savings_ns }.fmt(f)
            }
            PolicyAudit::Bindless => BindlessDecision::Bindless.fmt(f),
            PolicyAudit::TraceJitSpeculate {
                expected_savings_ns,
            } => TraceJitDecision::Speculate {
                expected_savings_ns,
            }
            .fmt(f),
        }
    }
}

impl DispatchPolicyVerdict {
    /// Persistent kernel or record-and-replay, whichever saves more; ties go to
    /// record-and-replay; StandardLaunches when neither fired.
    ///
    /// ```
    /// use photofinish::policy::{
    ///     evaluate_dispatch_policy, CommandReuseInputs, DispatchPolicyInputs, ExecutionMode,
    ///     PersistentKernelInputs,
    /// };
    /// let inputs = DispatchPolicyInputs {
    ///     persistent: PersistentKernelInputs {
    ///         batch_size: 10,
    ///         per_launch_overhead_ns: 100,
    ///         ..Default::default()
    ///     },
    ///     graph: CommandReuseInputs {
    ///         repeat_count: 10,
    ///         per_launch_overhead_ns: 100,
    ///         ..Default::default()
    ///     },
    ///     ..Default::default()
    /// };
    /// // Both save 1000 ns: the tie goes to command reuse.
    /// assert_eq!(
    ///     evaluate_dispatch_policy(&inputs).primary_execution_mode(),
    ///     ExecutionMode::RecordAndReplay { savings_ns: 1_000 },
    /// );
    /// ```
    #[must_use]
    pub fn primary_execution_mode(&self) -> ExecutionMode {
        match (
            self.persistent.savings_ns(),
            self.command_reuse.savings_ns(),
        ) {
            (None, None) => ExecutionMode::StandardLaunches,
            (Some(persistent), Some(reuse)) if persistent > reuse => {
                ExecutionMode::PersistentKernel {
                    savings_ns: persistent,
                }
            }
            (Some(savings_ns), None) => ExecutionMode::PersistentKernel { savings_ns },
            (_, Some(savings_ns)) => ExecutionMode::RecordAndReplay { savings_ns },
        }
    }

    /// Every aggressive path this verdict fires, in rule order (D1, D2, D3, D4, D9, I2),
    /// each as an audit value for the engine's event stream. Allocates nothing.
    ///
    /// Aggressive means: a persistent kernel, concurrent dispatch of the arms, a copy
    /// overlapping the kernels, record-and-replay, bindless, or trace-JIT speculation.
    /// D1 and D4 are both reported when both fire, though
    /// [`primary_execution_mode`](Self::primary_execution_mode) picks one.
    ///
    /// ```
    /// use photofinish::policy::{evaluate_dispatch_policy, DispatchPolicyInputs, PolicyAudit};
    /// // Two arms with no bindings are independent; nothing else fires.
    /// let verdict = evaluate_dispatch_policy(&DispatchPolicyInputs::default());
    /// let fired: Vec<PolicyAudit> = verdict.aggressive_paths().collect();
    /// assert_eq!(fired, [PolicyAudit::ConcurrentArms]);
    /// assert_eq!(fired[0].to_string(), "D2 concurrent-arms");
    /// ```
    pub fn aggressive_paths(&self) -> impl Iterator<Item = PolicyAudit> {
        let persistent = self
            .persistent
            .savings_ns()
            .map(|savings_ns| PolicyAudit::PersistentKernel { savings_ns });
        let arms = (self.arm_independence == ArmIndependenceVerdict::Independent)
            .then_some(PolicyAudit::ConcurrentArms);
        let copy = (self.copy_overlap == Some(CopyOverlapDecision::Overlap))
            .then_some(PolicyAudit::CopyOverlap);
        let reuse = self
            .command_reuse
            .savings_ns()
            .map(|savings_ns| PolicyAudit::RecordAndReplay { savings_ns });
        let bindless =
            (self.bindless == BindlessDecision::Bindless).then_some(PolicyAudit::Bindless);
        let trace_jit = match self.trace_jit {
            TraceJitDecision::HoldSteady => None,
            TraceJitDecision::Speculate {
                expected_savings_ns,
            } => Some(PolicyAudit::TraceJitSpeculate {
                expected_savings_ns,
            }),
        };
        [persistent, arms, copy, reuse, bindless, trace_jit]
            .into_iter()
            .flatten()
    }
}

/// Evaluates every §1 rule for one dispatch (SPEC §1, bundle).
///
/// The queued copy (if any) is checked against both arms, since both may be running:
/// it overlaps only when neither arm touches its destination slot.
///
/// ```
/// use photofinish::policy::{
///     evaluate_dispatch_policy, ArmBindingSummary, CopyOverlapDecision, DispatchPolicyInputs,
/// };
/// let inputs = DispatchPolicyInputs {
///     arm_a: ArmBindingSummary::new([0], [1]),
///     arm_b: ArmBindingSummary::new([0], [2]),
///     copy_dst_slot: Some(2),
///     ..Default::default()
/// };
/// let verdict = evaluate_dispatch_policy(&inputs);
/// assert_eq!(verdict.copy_overlap, Some(CopyOverlapDecision::Serialize));
/// ```
#[must_use]
pub fn evaluate_dispatch_policy(inputs: &DispatchPolicyInputs) -> DispatchPolicyVerdict {
    let copy_overlap = inputs.copy_dst_slot.map(|slot| {
        match (
            can_overlap_copy_with_kernel(slot, &inputs.arm_a),
            can_overlap_copy_with_kernel(slot, &inputs.arm_b),
        ) {
            (CopyOverlapDecision::Overlap, CopyOverlapDecision::Overlap) => {
                CopyOverlapDecision::Overlap
            }
            _ => CopyOverlapDecision::Serialize,
        }
    });
    DispatchPolicyVerdict {
        persistent: decide_persistent_kernel(inputs.persistent),
        arm_independence: can_dispatch_concurrently(&inputs.arm_a, &inputs.arm_b),
        copy_overlap,
        command_reuse: decide_command_reuse(inputs.graph),
        bindless: decide_bindless(inputs.bindless),
        trace_jit: decide_trace_jit_speculation(inputs.trace_jit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{BindingHazard, BindlessSupport};

    /// Inputs on which every rule fires its aggressive path.
    fn all_aggressive() -> DispatchPolicyInputs {
        DispatchPolicyInputs {
            persistent: PersistentKernelInputs {
                batch_size: 10,
                per_launch_overhead_ns: 100,
                per_item_kernel_ns: 1,
                persistent_setup_overhead_ns: 500,
            },
            arm_a: ArmBindingSummary::new([0], [1]),
            arm_b: ArmBindingSummary::new([0], [2]),
            copy_dst_slot: Some(3),
            graph: CommandReuseInputs {
                repeat_count: 10,
                per_launch_overhead_ns: 100,
                record_overhead_ns: 200,
                replay_overhead_ns: 10,
            },
            bindless: BindlessInputs {
                resource_count: 24,
                support: BindlessSupport::Full,
                dynamic_indexing: true,
            },
            trace_jit: TraceJitInputs {
                shader_hit_count: 8,
                prediction_confidence_bps: 6_000,
                speculative_spec_cost_ns: 100,
                miss_cost_ns: 1_000,
            },
        }
    }

    #[test]
    fn every_rule_is_evaluated_with_its_own_inputs() {
        let verdict = evaluate_dispatch_policy(&all_aggressive());
        assert_eq!(
            verdict,
            DispatchPolicyVerdict {
                persistent: PersistentKernelDecision::PersistentKernel { savings_ns: 500 },
                arm_independence: ArmIndependenceVerdict::Independent,
                copy_overlap: Some(CopyOverlapDecision::Overlap),
                command_reuse: CommandReuseDecision::RecordAndReplay { savings_ns: 700 },
                bindless: BindlessDecision::Bindless,
                trace_jit: TraceJitDecision::Speculate {
                    expected_savings_ns: 500
                },
            }
        );
    }

    #[test]
    fn all_aggressive_paths_are_audited_in_rule_order() {
        let verdict = evaluate_dispatch_policy(&all_aggressive());
        let fired: Vec<String> = verdict.aggressive_paths().map(|a| a.to_string()).collect();
        assert_eq!(
            fired,
            [
                "D1 persistent-kernel:500",
                "D2 concurrent-arms",
                "D3 overlap",
                "D4 record-and-replay:700",
                "D9 bindless",
                "I2 speculate:500",
            ]
        );
    }

    #[test]
    fn conservative_verdicts_audit_nothing() {
        let inputs = DispatchPolicyInputs {
            arm_a: ArmBindingSummary::new([], [1]),
            arm_b: ArmBindingSummary::new([], [1]),
            copy_dst_slot: Some(1),
            ..DispatchPolicyInputs::default()
        };
        let verdict = evaluate_dispatch_policy(&inputs);
        assert_eq!(
            verdict.arm_independence,
            ArmIndependenceVerdict::SerializeRequired {
                hazard: BindingHazard::WriteWrite,
                slot: 1
            }
        );
        assert_eq!(verdict.copy_overlap, Some(CopyOverlapDecision::Serialize));
        assert_eq!(verdict.aggressive_paths().count(), 0);
        assert_eq!(
            verdict.primary_execution_mode(),
            ExecutionMode::StandardLaunches
        );
    }

    #[test]
    fn no_copy_queued_means_no_copy_verdict() {
        let inputs = DispatchPolicyInputs {
            copy_dst_slot: None,
            ..all_aggressive()
        };
        let verdict = evaluate_dispatch_policy(&inputs);
        assert_eq!(verdict.copy_overlap, None);
        assert!(verdict
            .aggressive_paths()
            .all(|audit| audit != PolicyAudit::CopyOverlap));
        assert_eq!(verdict.aggressive_paths().count(), 5);
    }

    #[test]
    fn copy_serializes_when_either_arm_touches_the_destination() {
        for (slot, expected) in [
            (0, CopyOverlapDecision::Serialize), // both read
            (1, CopyOverlapDecision::Serialize), // arm a writes
            (2, CopyOverlapDecision::Serialize), // arm b writes
            (3, CopyOverlapDecision::Overlap),
        ] {
            let inputs = DispatchPolicyInputs {
                copy_dst_slot: Some(slot),
                ..all_aggressive()
            };
            assert_eq!(
                evaluate_dispatch_policy(&inputs).copy_overlap,
                Some(expected),
                "slot {slot}"
            );
        }
    }

    fn mode(persistent: Option<u64>, reuse: Option<u64>) -> ExecutionMode {
        let verdict = DispatchPolicyVerdict {
            persistent: persistent.map_or(PersistentKernelDecision::StandardLaunches, |s| {
                PersistentKernelDecision::PersistentKernel { savings_ns: s }
            }),
            command_reuse: reuse.map_or(CommandReuseDecision::PlainLaunches, |s| {
                CommandReuseDecision::RecordAndReplay { savings_ns: s }
            }),
            ..evaluate_dispatch_policy(&DispatchPolicyInputs::default())
        };
        verdict.primary_execution_mode()
    }

    #[test]
    fn primary_mode_picks_the_larger_saving_and_ties_go_to_reuse() {
        assert_eq!(mode(None, None), ExecutionMode::StandardLaunches);
        assert_eq!(
            mode(Some(5), None),
            ExecutionMode::PersistentKernel { savings_ns: 5 }
        );
        assert_eq!(
            mode(None, Some(5)),
            ExecutionMode::RecordAndReplay { savings_ns: 5 }
        );
        assert_eq!(
            mode(Some(6), Some(5)),
            ExecutionMode::PersistentKernel { savings_ns: 6 }
        );
        assert_eq!(
            mode(Some(5), Some(5)),
            ExecutionMode::RecordAndReplay { savings_ns: 5 }
        );
        assert_eq!(
            mode(Some(5), Some(6)),
            ExecutionMode::RecordAndReplay { savings_ns: 6 }
        );
        assert_eq!(
            mode(Some(u64::MAX), Some(u64::MAX)),
            ExecutionMode::RecordAndReplay {
                savings_ns: u64::MAX
            }
        );
    }

    #[test]
    fn display_of_modes_and_audits() {
        assert_eq!(
            ExecutionMode::StandardLaunches.to_string(),
            "standard-launches"
        );
        assert_eq!(
            ExecutionMode::PersistentKernel { savings_ns: 3 }.to_string(),
            "persistent-kernel:3"
        );
        assert_eq!(
            ExecutionMode::RecordAndReplay { savings_ns: 4 }.to_string(),
            "record-and-replay:4"
        );
        assert_eq!(PolicyAudit::Bindless.rule(), "D9");
        assert_eq!(
            PolicyAudit::TraceJitSpeculate {
                expected_savings_ns: 1
            }
            .to_string(),
            "I2 speculate:1"
        );
    }
}
