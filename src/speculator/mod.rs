//! The adaptive speculator and the counter tail (SPEC §2).
//!
//! This module owns the state that every worker shares to decide whether fused
//! prefilter/confirm kernels take their speculative path: [`AdaptiveSpeculator`], one
//! lock-free atomic word holding the commit-rate EMA, the enabled flag and the sample
//! count. It also owns the pure parts around it: [`SpeculationReport`] and the 8-byte
//! counter tail a fused kernel writes, and [`resolve_fused_path`], which turns a
//! [`SpeculationMode`] into "fused or not".
//!
//! It must never block, allocate on the record path, do I/O, or split the speculator's
//! three values over more than one atomic: the design note in `src/speculator/README.md`
//! explains the word layout and why `record` is linearizable, and the loom models in
//! `loom-tests/tests/speculator.rs` and `loom-tests/tests/reference_race.rs` check it.

mod adaptive;
mod mode;
mod report;

pub use adaptive::{
    AdaptiveSpeculator, RecordOutcome, SpeculatorSnapshot, DEFAULT_THRESHOLD_PCT, MAX_SAMPLES,
};
pub use mode::{resolve_fused_path, FusedSupport, SpeculationMode, SpeculatorError};
pub use report::{
    encode_counter_tail, parse_counter_tail, split_counter_tail, SpeculationReport,
    COUNTER_TAIL_BYTES,
};
