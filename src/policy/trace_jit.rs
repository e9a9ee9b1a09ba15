//! I2: trace-JIT pre-specialisation — whether to compile a specialised variant of a hot
//! shader shape ahead of the dispatch that would need it.

use std::fmt;

/// Hits a shader shape needs before it counts as hot.
pub const TRACE_JIT_HOT_SHAPE_THRESHOLD: u32 = 8;

/// The least prediction confidence, in basis points, for which pre-specialisation is
/// considered.
pub const TRACE_JIT_MIN_CONFIDENCE_BPS: u32 = 6_000;

/// What the trace recorder knows about one shader shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TraceJitInputs {
    /// How often this shape has been dispatched.
    pub shader_hit_count: u32,
    /// How sure the predictor is that the shape comes again, in basis points.
    pub prediction_confidence_bps: u32,
    /// What compiling the specialised variant ahead of time costs, ns.
    pub speculative_spec_cost_ns: u64,
    /// What a miss costs (compiling it on demand, on the critical path), ns.
    pub miss_cost_ns: u64,
}

/// The I2 verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TraceJitDecision {
    /// Do not pre-specialise.
    HoldSteady,
    /// Pre-specialise: the confidence-weighted miss cost exceeds the compile cost.
    Speculate {
        /// Weighted miss cost minus compile cost, ns (clamped to `u64::MAX`).
        expected_savings_ns: u64,
    },
}

impl fmt::Display for TraceJitDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceJitDecision::HoldSteady => f.write_str("hold-steady"),
            TraceJitDecision::Speculate {
                expected_savings_ns,
            } => write!(f, "speculate:{expected_savings_ns}"),
        }
    }
}

/// Decides whether to pre-specialise a shader shape (SPEC §1, I2).
///
/// HoldSteady when the shape has fewer than [`TRACE_JIT_HOT_SHAPE_THRESHOLD`] hits, the
/// confidence is below [`TRACE_JIT_MIN_CONFIDENCE_BPS`], or a miss costs nothing.
/// Otherwise `weighted = miss_cost * confidence / 10_000` (u128): HoldSteady when
/// `weighted <= spec_cost`, else Speculate with `weighted - spec_cost`. The comparison is
/// made on the widened value; only the reported saving is clamped to `u64::MAX`.
///
/// ```
/// use photofinish::policy::{decide_trace_jit_speculation, TraceJitDecision, TraceJitInputs};
/// let inputs = TraceJitInputs {
///     shader_hit_count: 8,
///     prediction_confidence_bps: 8_000,
///     speculative_spec_cost_ns: 500,
///     miss_cost_ns: 1_000,
/// };
/// let decision = decide_trace_jit_speculation(inputs);
/// assert_eq!(decision, TraceJitDecision::Speculate { expected_savings_ns: 300 });
/// assert_eq!(decision.to_string(), "speculate:300");
/// ```
#[must_use]
pub fn decide_trace_jit_speculation(inputs: TraceJitInputs) -> TraceJitDecision {
    if inputs.shader_hit_count < TRACE_JIT_HOT_SHAPE_THRESHOLD
        || inputs.prediction_confidence_bps < TRACE_JIT_MIN_CONFIDENCE_BPS
        || inputs.miss_cost_ns == 0
    {
        return TraceJitDecision::HoldSteady;
    }
    let weighted =
        u128::from(inputs.miss_cost_ns) * u128::from(inputs.prediction_confidence_bps) / 10_000;
    let spec_cost = u128::from(inputs.speculative_spec_cost_ns);
    if weighted <= spec_cost {
        return TraceJitDecision::HoldSteady;
    }
    TraceJitDecision::Speculate {
        expected_savings_ns: super::clamp_to_u64(weighted - spec_cost),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hot, confident, and a miss worth 10× the compile: Speculate with room to spare.
    fn hot() -> TraceJitInputs {
        TraceJitInputs {
            shader_hit_count: TRACE_JIT_HOT_SHAPE_THRESHOLD,
            prediction_confidence_bps: 10_000,
            speculative_spec_cost_ns: 100,
            miss_cost_ns: 1_000,
        }
    }

    fn speculate(ns: u64) -> TraceJitDecision {
        TraceJitDecision::Speculate {
            expected_savings_ns: ns,
        }
    }

    #[test]
    fn constants_match_the_spec() {
        assert_eq!(TRACE_JIT_HOT_SHAPE_THRESHOLD, 8);
        assert_eq!(TRACE_JIT_MIN_CONFIDENCE_BPS, 6_000);
    }

    #[test]
    fn hit_threshold_is_inclusive_at_8_and_holds_at_7() {
        assert_eq!(decide_trace_jit_speculation(hot()), speculate(900));
        let cold = TraceJitInputs {
            shader_hit_count: 7,
            ..hot()
        };
        assert_eq!(
            decide_trace_jit_speculation(cold),
            TraceJitDecision::HoldSteady
        );
        let never = TraceJitInputs {
            shader_hit_count: 0,
            ..hot()
        };
        assert_eq!(
            decide_trace_jit_speculation(never),
            TraceJitDecision::HoldSteady
        );
    }

    #[test]
    fn confidence_threshold_is_inclusive_at_6000_and_holds_at_5999() {
        let at = TraceJitInputs {
            prediction_confidence_bps: 6_000,
            ..hot()
        };
        // 1000 * 6000 / 10000 = 600; 600 - 100 = 500.
        assert_eq!(decide_trace_jit_speculation(at), speculate(500));
        let below = TraceJitInputs {
            prediction_confidence_bps: 5_999,
            ..hot()
        };
        assert_eq!(
            decide_trace_jit_speculation(below),
            TraceJitDecision::HoldSteady
        );
    }

    #[test]
    fn zero_miss_cost_holds_even_with_free_compile() {
        let free = TraceJitInputs {
            miss_cost_ns: 0,
            speculative_spec_cost_ns: 0,
            ..hot()
        };
        assert_eq!(
            decide_trace_jit_speculation(free),
            TraceJitDecision::HoldSteady
        );
    }

    #[test]
    fn weighted_equal_to_spec_cost_holds_and_one_more_speculates() {
        // weighted = 1000 * 10000 / 10000 = 1000.
        let equal = TraceJitInputs {
            speculative_spec_cost_ns: 1_000,
            ..hot()
        };
        assert_eq!(
            decide_trace_jit_speculation(equal),
            TraceJitDecision::HoldSteady
        );
        let one_less_cost = TraceJitInputs {
            speculative_spec_cost_ns: 999,
            ..hot()
        };
        assert_eq!(decide_trace_jit_speculation(one_less_cost), speculate(1));
        let one_more_miss = TraceJitInputs {
            speculative_spec_cost_ns: 1_000,
            miss_cost_ns: 1_001,
            ..hot()
        };
        assert_eq!(decide_trace_jit_speculation(one_more_miss), speculate(1));
    }

    #[test]
    fn weighted_cost_is_floored() {
        // 3 * 6000 / 10000 = 1.8 → 1, which does not beat a cost of 1.
        let floored = TraceJitInputs {
            prediction_confidence_bps: 6_000,
            miss_cost_ns: 3,
            speculative_spec_cost_ns: 1,
            ..hot()
        };
        assert_eq!(
            decide_trace_jit_speculation(floored),
            TraceJitDecision::HoldSteady
        );
        let free = TraceJitInputs {
            speculative_spec_cost_ns: 0,
            ..floored
        };
        assert_eq!(decide_trace_jit_speculation(free), speculate(1));
    }

    #[test]
    fn extremes_do_not_overflow() {
        let max = TraceJitInputs {
            shader_hit_count: u32::MAX,
            prediction_confidence_bps: u32::MAX,
            speculative_spec_cost_ns: 0,
            miss_cost_ns: u64::MAX,
        };
        assert_eq!(decide_trace_jit_speculation(max), speculate(u64::MAX));
        // The weighted cost exceeds u64::MAX, so it still beats the largest compile
        // cost: the decision is made before clamping.
        let max_cost = TraceJitInputs {
            speculative_spec_cost_ns: u64::MAX,
            ..max
        };
        assert_eq!(decide_trace_jit_speculation(max_cost), speculate(u64::MAX));
        // Full confidence: weighted == miss cost exactly, no saving over an equal cost.
        let exact = TraceJitInputs {
            prediction_confidence_bps: 10_000,
            ..max_cost
        };
        assert_eq!(
            decide_trace_jit_speculation(exact),
            TraceJitDecision::HoldSteady
        );
    }

    #[test]
    fn display_matches_the_spec() {
        assert_eq!(TraceJitDecision::HoldSteady.to_string(), "hold-steady");
        assert_eq!(speculate(42).to_string(), "speculate:42");
        assert_eq!(
            speculate(u64::MAX).to_string(),
            format!("speculate:{}", u64::MAX)
        );
    }
}
