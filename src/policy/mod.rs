//! The decision contract: pure functions from numbers to verdicts (SPEC §1).
//!
//! Everything here is arithmetic: no I/O, no allocation on the hot path, no panics for
//! any input. Every product is computed in u128 and clamped only at the end, never with
//! saturating arithmetic that could silently change a decision: comparisons that decide
//! a verdict are made on the widened values, and only a reported saving is clamped to
//! `u64::MAX`.
//!
//! One file per rule: N2 (`speculation`), I2 (`trace_jit`), D1 (`persistent`), D2
//! (`independence`), D3 (`copy_overlap`), D4 (`command_reuse`), D9 (`bindless`), and the
//! `bundle` that evaluates them together and lists the aggressive paths that fired, for
//! the engine to publish as audit events; and `agreement`, how two answers are compared
//! (SPEC §9). This module must never do I/O or hold state.

mod agreement;
mod bindless;
mod bundle;
mod command_reuse;
mod copy_overlap;
mod independence;
mod persistent;
mod speculation;
mod trace_jit;

pub use agreement::{Agreement, CustomAgreement, Disagreement, FloatElem};
pub use bindless::{
    decide_bindless, BindlessDecision, BindlessInputs, BindlessSupport,
    BINDLESS_RESOURCE_COUNT_THRESHOLD,
};
pub use bundle::{
    evaluate_dispatch_policy, DispatchPolicyInputs, DispatchPolicyVerdict, ExecutionMode,
    PolicyAudit,
};
pub use command_reuse::{decide_command_reuse, CommandReuseDecision, CommandReuseInputs};
pub use copy_overlap::{can_overlap_copy_with_kernel, CopyOverlapDecision};
pub use independence::{
    can_dispatch_concurrently, ArmBindingSummary, ArmIndependenceVerdict, BindingHazard,
};
pub use persistent::{decide_persistent_kernel, PersistentKernelDecision, PersistentKernelInputs};
pub use speculation::{
    decide_speculation, ratio_basis_points, KernelVerdict, SpeculationObservation,
    SpeculationVerdict, MIN_ADOPT_SAVINGS_BPS, MIN_DISPATCHES_FOR_VERDICT,
};
pub use trace_jit::{
    decide_trace_jit_speculation, TraceJitDecision, TraceJitInputs, TRACE_JIT_HOT_SHAPE_THRESHOLD,
    TRACE_JIT_MIN_CONFIDENCE_BPS,
};

/// Clamps a widened result to `u64::MAX`. Only ever applied to a reported quantity,
/// never to a value a decision is still to be made on.
fn clamp_to_u64(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

/// The shared shape of D1 and D4: paying `fixed_cost_ns` once saves `per_unit_ns` on
/// each of `count` units. Returns the net saving when it is worth it: `count > 1`,
/// `per_unit_ns > 0` and `count * per_unit_ns > fixed_cost_ns` (product in u128), the
/// saving being that product minus the fixed cost, clamped to `u64::MAX`.
fn amortized_saving(count: u32, per_unit_ns: u64, fixed_cost_ns: u64) -> Option<u64> {
    if count <= 1 || per_unit_ns == 0 {
        return None;
    }
    let gross = u128::from(count) * u128::from(per_unit_ns);
    let fixed = u128::from(fixed_cost_ns);
    if gross <= fixed {
        return None;
    }
    Some(clamp_to_u64(gross - fixed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamp_to_u64_passes_small_values_and_clamps_large_ones() {
        assert_eq!(clamp_to_u64(0), 0);
        assert_eq!(clamp_to_u64(u128::from(u64::MAX)), u64::MAX);
        assert_eq!(clamp_to_u64(u128::from(u64::MAX) + 1), u64::MAX);
        assert_eq!(clamp_to_u64(u128::MAX), u64::MAX);
    }

    #[test]
    fn amortized_saving_needs_more_than_one_unit() {
        assert_eq!(amortized_saving(0, 100, 0), None);
        assert_eq!(amortized_saving(1, 100, 0), None);
        assert_eq!(amortized_saving(2, 100, 0), Some(200));
    }

    #[test]
    fn amortized_saving_needs_a_per_unit_saving() {
        assert_eq!(amortized_saving(u32::MAX, 0, 0), None);
        assert_eq!(amortized_saving(u32::MAX, 1, 0), Some(u64::from(u32::MAX)));
    }

    #[test]
    fn amortized_saving_breaks_even_at_equality() {
        assert_eq!(amortized_saving(4, 25, 100), None);
        assert_eq!(amortized_saving(4, 25, 99), Some(1));
        assert_eq!(amortized_saving(4, 26, 100), Some(4));
    }

    #[test]
    fn amortized_saving_widens_then_clamps() {
        // u32::MAX * u64::MAX overflows u64 but not u128; the fixed cost u64::MAX is
        // still below the product, so the saving is reported, clamped.
        assert_eq!(
            amortized_saving(u32::MAX, u64::MAX, u64::MAX),
            Some(u64::MAX)
        );
        // Exactly u64::MAX gross against u64::MAX fixed: no saving.
        assert_eq!(amortized_saving(1, u64::MAX, u64::MAX), None);
        assert_eq!(amortized_saving(2, u64::MAX, u64::MAX), Some(u64::MAX));
    }
}
