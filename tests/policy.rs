//! Properties of the SPEC §1 decision contract, over the public API: no input panics,
//! and the monotonicities a caller relies on (more evidence or a bigger win never flips
//! an aggressive verdict back to the conservative one).

use std::collections::BTreeSet;

use photofinish::policy::*;
use proptest::prelude::*;

/// Nanoseconds: mostly near the thresholds, sometimes anywhere, sometimes the extremes.
fn ns() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..20_000,
        2 => any::<u64>(),
        1 => Just(0u64),
        1 => Just(u64::MAX),
    ]
}

/// Counts: mostly around the small thresholds (1, 8, 24), sometimes anywhere.
fn count() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => 0u32..40,
        2 => any::<u32>(),
        1 => Just(u32::MAX),
    ]
}

fn bps() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => 0u32..12_000,
        1 => any::<u32>(),
    ]
}

fn observation() -> impl Strategy<Value = SpeculationObservation> {
    (count(), ns(), count(), ns(), ns()).prop_map(|(bd, bm, sd, sm, cc)| SpeculationObservation {
        baseline_dispatches: bd,
        baseline_mean_ns: bm,
        speculative_dispatches: sd,
        speculative_mean_ns: sm,
        side_compile_cost_ns: cc,
    })
}

fn trace_jit() -> impl Strategy<Value = TraceJitInputs> {
    (count(), bps(), ns(), ns()).prop_map(|(hits, conf, cost, miss)| TraceJitInputs {
        shader_hit_count: hits,
        prediction_confidence_bps: conf,
        speculative_spec_cost_ns: cost,
        miss_cost_ns: miss,
    })
}

fn persistent() -> impl Strategy<Value = PersistentKernelInputs> {
    (count(), ns(), ns(), ns()).prop_map(|(batch, launch, item, setup)| PersistentKernelInputs {
        batch_size: batch,
        per_launch_overhead_ns: launch,
        per_item_kernel_ns: item,
        persistent_setup_overhead_ns: setup,
    })
}

fn command_reuse() -> impl Strategy<Value = CommandReuseInputs> {
    (count(), ns(), ns(), ns()).prop_map(|(repeat, launch, record, replay)| CommandReuseInputs {
        repeat_count: repeat,
        per_launch_overhead_ns: launch,
        record_overhead_ns: record,
        replay_overhead_ns: replay,
    })
}

fn support() -> impl Strategy<Value = BindlessSupport> {
    prop_oneof![
        Just(BindlessSupport::Unsupported),
        Just(BindlessSupport::Static),
        Just(BindlessSupport::Full),
    ]
}

fn bindless() -> impl Strategy<Value = BindlessInputs> {
    (count(), support(), any::<bool>()).prop_map(|(resource_count, support, dynamic)| {
        BindlessInputs {
            resource_count,
            support,
            dynamic_indexing: dynamic,
        }
    })
}

/// One binding slot: mostly from a small range so arms often share some, sometimes the
/// extreme slot.
fn slot() -> impl Strategy<Value = u32> {
    prop_oneof![8 => 0u32..10, 1 => Just(u32::MAX)]
}

fn arm() -> impl Strategy<Value = ArmBindingSummary> {
    let slots = || prop::collection::btree_set(slot(), 0..5);
    (slots(), slots()).prop_map(|(reads, writes)| ArmBindingSummary { reads, writes })
}

fn dispatch_inputs() -> impl Strategy<Value = DispatchPolicyInputs> {
    (
        persistent(),
        arm(),
        arm(),
        prop::option::of(slot()),
        command_reuse(),
        bindless(),
        trace_jit(),
    )
        .prop_map(
            |(persistent, arm_a, arm_b, copy_dst_slot, graph, bindless, trace_jit)| {
                DispatchPolicyInputs {
                    persistent,
                    arm_a,
                    arm_b,
                    copy_dst_slot,
                    graph,
                    bindless,
                    trace_jit,
                }
            },
        )
}

fn trace_savings(decision: TraceJitDecision) -> Option<u64> {
    match decision {
        TraceJitDecision::HoldSteady => None,
        TraceJitDecision::Speculate {
            expected_savings_ns,
        } => Some(expected_savings_ns),
    }
}

/// The hazard of `a` then `b` on `slot`, straight from the definitions.
fn has_hazard(
    a: &ArmBindingSummary,
    b: &ArmBindingSummary,
    hazard: BindingHazard,
    slot: u32,
) -> bool {
    match hazard {
        BindingHazard::WriteWrite => a.writes.contains(&slot) && b.writes.contains(&slot),
        BindingHazard::ReadAfterWrite => a.writes.contains(&slot) && b.reads.contains(&slot),
        BindingHazard::WriteAfterRead => a.reads.contains(&slot) && b.writes.contains(&slot),
    }
}

proptest! {
    #[test]
    fn no_input_panics(inputs in dispatch_inputs(), obs in observation(),
                       part in ns(), whole in ns(), zero in ns()) {
        let _ = ratio_basis_points(part, whole, zero);
        let _ = decide_speculation(obs).to_string();
        let verdict = evaluate_dispatch_policy(&inputs);
        let _ = verdict.primary_execution_mode().to_string();
        for audit in verdict.aggressive_paths() {
            let _ = audit.to_string();
        }
        let _ = verdict.arm_independence.to_string();
        let _ = verdict.persistent.to_string();
        let _ = verdict.command_reuse.to_string();
        let _ = verdict.bindless.to_string();
        let _ = verdict.trace_jit.to_string();
        if let Some(slot) = inputs.copy_dst_slot {
            let _ = can_overlap_copy_with_kernel(slot, &inputs.arm_a).to_string();
        }
    }

    #[test]
    fn ratio_is_the_floor_of_the_exact_ratio(part in ns(), whole in 1u64.., zero in ns()) {
        let bps = ratio_basis_points(part, whole, zero);
        let exact = u128::from(part) * 10_000;
        let whole = u128::from(whole);
        if bps == u64::MAX {
            prop_assert!(exact >= u128::from(u64::MAX) * whole);
        } else {
            prop_assert!(u128::from(bps) * whole <= exact);
            prop_assert!(exact < (u128::from(bps) + 1) * whole);
        }
    }

    #[test]
    fn ratio_is_monotone_in_part(a in ns(), b in ns(), whole in ns()) {
        let (lo, hi) = (a.min(b), a.max(b));
        prop_assert!(ratio_basis_points(lo, whole, 0) <= ratio_basis_points(hi, whole, 0));
    }

    #[test]
    fn faster_speculative_mean_never_turns_adopt_into_anything_else(
        obs in observation(), faster in ns()
    ) {
        let faster = SpeculationObservation {
            speculative_mean_ns: faster.min(obs.speculative_mean_ns),
            ..obs
        };
        if decide_speculation(obs) == SpeculationVerdict::Adopt {
            prop_assert_eq!(decide_speculation(faster), SpeculationVerdict::Adopt);
        }
        // And the other way round: slowing down never rescues a Reject.
        if decide_speculation(faster) == SpeculationVerdict::Reject {
            prop_assert_eq!(decide_speculation(obs), SpeculationVerdict::Reject);
        }
    }

    #[test]
    fn more_dispatches_or_cheaper_compile_never_lose_an_adopt(
        obs in observation(), extra in count(), cheaper in ns()
    ) {
        prop_assume!(decide_speculation(obs) == SpeculationVerdict::Adopt);
        let more = SpeculationObservation {
            speculative_dispatches: obs.speculative_dispatches.saturating_add(extra),
            baseline_dispatches: obs.baseline_dispatches.saturating_add(extra),
            ..obs
        };
        prop_assert_eq!(decide_speculation(more), SpeculationVerdict::Adopt);
        let cheap = SpeculationObservation {
            side_compile_cost_ns: cheaper.min(obs.side_compile_cost_ns),
            ..obs
        };
        prop_assert_eq!(decide_speculation(cheap), SpeculationVerdict::Adopt);
    }

    #[test]
    fn more_hits_or_confidence_never_turn_speculate_into_hold(
        inputs in trace_jit(), more_hits in count(), more_conf in bps()
    ) {
        let before = trace_savings(decide_trace_jit_speculation(inputs));
        prop_assume!(before.is_some());
        let hotter = TraceJitInputs {
            shader_hit_count: inputs.shader_hit_count.saturating_add(more_hits),
            ..inputs
        };
        prop_assert_eq!(trace_savings(decide_trace_jit_speculation(hotter)), before);
        let surer = TraceJitInputs {
            prediction_confidence_bps: inputs.prediction_confidence_bps.saturating_add(more_conf),
            ..inputs
        };
        prop_assert!(trace_savings(decide_trace_jit_speculation(surer)) >= before);
    }

    #[test]
    fn dearer_misses_never_hold_and_dearer_compiles_never_speculate(
        inputs in trace_jit(), delta in ns()
    ) {
        let before = trace_savings(decide_trace_jit_speculation(inputs));
        let dear_miss = TraceJitInputs {
            miss_cost_ns: inputs.miss_cost_ns.saturating_add(delta),
            ..inputs
        };
        prop_assert!(trace_savings(decide_trace_jit_speculation(dear_miss)) >= before);
        let dear_compile = TraceJitInputs {
            speculative_spec_cost_ns: inputs.speculative_spec_cost_ns.saturating_add(delta),
            ..inputs
        };
        prop_assert!(trace_savings(decide_trace_jit_speculation(dear_compile)) <= before);
    }

    #[test]
    fn trace_jit_saving_is_positive_and_within_the_weighted_miss(inputs in trace_jit()) {
        if let Some(saving) = trace_savings(decide_trace_jit_speculation(inputs)) {
            let weighted = u128::from(inputs.miss_cost_ns)
                * u128::from(inputs.prediction_confidence_bps) / 10_000;
            prop_assert!(u128::from(saving) <= weighted);
            prop_assert!(saving > 0);
        }
    }

    #[test]
    fn more_batch_never_turns_persistent_into_standard(inputs in persistent(), more in count()) {
        let before = decide_persistent_kernel(inputs).savings_ns();
        let bigger = PersistentKernelInputs {
            batch_size: inputs.batch_size.saturating_add(more),
            ..inputs
        };
        prop_assert!(decide_persistent_kernel(bigger).savings_ns() >= before);
    }

    #[test]
    fn dearer_setup_never_turns_standard_into_persistent(inputs in persistent(), more in ns()) {
        let before = decide_persistent_kernel(inputs).savings_ns();
        let dearer = PersistentKernelInputs {
            persistent_setup_overhead_ns: inputs.persistent_setup_overhead_ns.saturating_add(more),
            ..inputs
        };
        prop_assert!(decide_persistent_kernel(dearer).savings_ns() <= before);
    }

    #[test]
    fn per_item_time_never_matters(inputs in persistent(), item in ns()) {
        let other = PersistentKernelInputs { per_item_kernel_ns: item, ..inputs };
        prop_assert_eq!(decide_persistent_kernel(other), decide_persistent_kernel(inputs));
    }

    #[test]
    fn more_repeats_or_cheaper_replay_never_turn_replay_into_plain(
        inputs in command_reuse(), more in count(), cheaper in ns()
    ) {
        let before = decide_command_reuse(inputs).savings_ns();
        let more_repeats = CommandReuseInputs {
            repeat_count: inputs.repeat_count.saturating_add(more),
            ..inputs
        };
        prop_assert!(decide_command_reuse(more_repeats).savings_ns() >= before);
        let cheap_replay = CommandReuseInputs {
            replay_overhead_ns: cheaper.min(inputs.replay_overhead_ns),
            ..inputs
        };
        prop_assert!(decide_command_reuse(cheap_replay).savings_ns() >= before);
    }

    #[test]
    fn dearer_recording_never_turns_plain_into_replay(inputs in command_reuse(), more in ns()) {
        let before = decide_command_reuse(inputs).savings_ns();
        let dearer = CommandReuseInputs {
            record_overhead_ns: inputs.record_overhead_ns.saturating_add(more),
            ..inputs
        };
        prop_assert!(decide_command_reuse(dearer).savings_ns() <= before);
    }

    #[test]
    fn more_resources_better_support_or_uniform_indexing_never_lose_bindless(
        inputs in bindless(), more in count()
    ) {
        prop_assume!(decide_bindless(inputs) == BindlessDecision::Bindless);
        let variants = [
            BindlessInputs {
                resource_count: inputs.resource_count.saturating_add(more),
                ..inputs
            },
            BindlessInputs { support: BindlessSupport::Full, ..inputs },
            BindlessInputs { dynamic_indexing: false, ..inputs },
        ];
        for better in variants {
            prop_assert_eq!(decide_bindless(better), BindlessDecision::Bindless);
        }
    }

    #[test]
    fn independence_matches_the_definition_and_is_symmetric(a in arm(), b in arm()) {
        let conflict = !a.writes.is_disjoint(&b.writes)
            || !a.writes.is_disjoint(&b.reads)
            || !a.reads.is_disjoint(&b.writes);
        let ab = can_dispatch_concurrently(&a, &b);
        let ba = can_dispatch_concurrently(&b, &a);
        prop_assert_eq!(ab == ArmIndependenceVerdict::Independent, !conflict);
        prop_assert_eq!(ab == ArmIndependenceVerdict::Independent,
                        ba == ArmIndependenceVerdict::Independent);
    }

    #[test]
    fn reported_hazard_is_real_first_and_lowest(a in arm(), b in arm()) {
        if let ArmIndependenceVerdict::SerializeRequired { hazard, slot } =
            can_dispatch_concurrently(&a, &b)
        {
            prop_assert!(has_hazard(&a, &b, hazard, slot));
            // No hazard earlier in the spec's order exists on any slot, and no lower
            // slot has this one.
            let order = [
                BindingHazard::WriteWrite,
                BindingHazard::ReadAfterWrite,
                BindingHazard::WriteAfterRead,
            ];
            let all_slots: BTreeSet<u32> = a.reads.iter().chain(&a.writes).copied().collect();
            for earlier in order.into_iter().take_while(|h| *h != hazard) {
                for &s in &all_slots {
                    prop_assert!(!has_hazard(&a, &b, earlier, s));
                }
            }
            for &s in all_slots.range(..slot) {
                prop_assert!(!has_hazard(&a, &b, hazard, s));
            }
        }
    }

    #[test]
    fn dropping_slots_never_breaks_independence(
        a in arm(), b in arm(), keep_reads in any::<u8>(), keep_writes in any::<u8>()
    ) {
        prop_assume!(can_dispatch_concurrently(&a, &b) == ArmIndependenceVerdict::Independent);
        // Keep the slots whose position's bit is set in the mask (arms hold < 8 slots).
        let subset = |set: &BTreeSet<u32>, mask: u8| -> BTreeSet<u32> {
            set.iter()
                .zip(0u32..)
                .filter(|(_, i)| mask.checked_shr(*i).unwrap_or(0) & 1 == 1)
                .map(|(s, _)| *s)
                .collect()
        };
        let smaller = ArmBindingSummary {
            reads: subset(&a.reads, keep_reads),
            writes: subset(&a.writes, keep_writes),
        };
        prop_assert_eq!(can_dispatch_concurrently(&smaller, &b), ArmIndependenceVerdict::Independent);
    }

    #[test]
    fn a_copy_overlaps_exactly_when_it_would_be_an_independent_writer(
        dst in slot(), arm in arm()
    ) {
        let copy = ArmBindingSummary::new([], [dst]);
        let overlap = can_overlap_copy_with_kernel(dst, &arm) == CopyOverlapDecision::Overlap;
        prop_assert_eq!(
            overlap,
            can_dispatch_concurrently(&copy, &arm) == ArmIndependenceVerdict::Independent
        );
    }

    #[test]
    fn the_bundle_is_the_rules_side_by_side(inputs in dispatch_inputs()) {
        let verdict = evaluate_dispatch_policy(&inputs);
        prop_assert_eq!(verdict.persistent, decide_persistent_kernel(inputs.persistent));
        prop_assert_eq!(verdict.arm_independence,
                        can_dispatch_concurrently(&inputs.arm_a, &inputs.arm_b));
        prop_assert_eq!(verdict.command_reuse, decide_command_reuse(inputs.graph));
        prop_assert_eq!(verdict.bindless, decide_bindless(inputs.bindless));
        prop_assert_eq!(verdict.trace_jit, decide_trace_jit_speculation(inputs.trace_jit));
        let expected_copy = inputs.copy_dst_slot.map(|dst| {
            if inputs.arm_a.touches(dst) || inputs.arm_b.touches(dst) {
                CopyOverlapDecision::Serialize
            } else {
                CopyOverlapDecision::Overlap
            }
        });
        prop_assert_eq!(verdict.copy_overlap, expected_copy);
    }

    #[test]
    fn every_aggressive_verdict_is_audited_once_in_rule_order(inputs in dispatch_inputs()) {
        let verdict = evaluate_dispatch_policy(&inputs);
        let fired = [
            verdict.persistent.savings_ns().is_some(),
            verdict.arm_independence == ArmIndependenceVerdict::Independent,
            verdict.copy_overlap == Some(CopyOverlapDecision::Overlap),
            verdict.command_reuse.savings_ns().is_some(),
            verdict.bindless == BindlessDecision::Bindless,
            trace_savings(verdict.trace_jit).is_some(),
        ];
        let rules: Vec<&str> = verdict.aggressive_paths().map(|a| a.rule()).collect();
        let expected: Vec<&str> = ["D1", "D2", "D3", "D4", "D9", "I2"]
            .into_iter()
            .zip(fired)
            .filter_map(|(rule, fired)| fired.then_some(rule))
            .collect();
        prop_assert_eq!(rules, expected);
        for audit in verdict.aggressive_paths() {
            prop_assert!(audit.to_string().starts_with(audit.rule()));
        }
    }

    #[test]
    fn primary_mode_takes_the_larger_saving_ties_to_reuse(inputs in dispatch_inputs()) {
        let verdict = evaluate_dispatch_policy(&inputs);
        let expected = match (verdict.persistent.savings_ns(), verdict.command_reuse.savings_ns()) {
            (None, None) => ExecutionMode::StandardLaunches,
            (Some(p), None) => ExecutionMode::PersistentKernel { savings_ns: p },
            (Some(p), Some(r)) if p > r => ExecutionMode::PersistentKernel { savings_ns: p },
            (_, Some(r)) => ExecutionMode::RecordAndReplay { savings_ns: r },
        };
        prop_assert_eq!(verdict.primary_execution_mode(), expected);
    }
}
