//! The decision contract: pure functions from numbers to verdicts (SPEC §1).
//!
//! Everything here is arithmetic: no I/O, no allocation on the hot path, no panics for
//! any input. Every product is computed in u128 and clamped only at the end, never with
//! saturating arithmetic that could silently change a decision.

mod speculation;

pub use speculation::{
    decide_speculation, ratio_basis_points, SpeculationObservation, SpeculationVerdict,
    MIN_ADOPT_SAVINGS_BPS, MIN_DISPATCHES_FOR_VERDICT,
};
