//! Built-in workloads: each a conservative and at least one speculative variant (WGSL
//! in `shaders/`, compiled to SPIR-V at build time, plus CPU code for the CPU backend),
//! a CPU reference and generators of realistic inputs.
//!
//! A workload turns an input into dispatch plans (one per variant) and a variant's raw
//! outputs back into the canonical answer, so the engine can race variants and compare
//! their answers byte for byte. This module never touches a device or a queue.

use crate::backend::{BufferArg, KernelVariant};

/// How a variant is to be dispatched for one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchPlan {
    /// One buffer per binding of the variant, in binding order.
    pub buffers: Vec<BufferArg>,
    /// Push constant bytes.
    pub push_constants: Vec<u8>,
    /// Workgroups in x, y, z.
    pub workgroups: [u32; 3],
}

/// The shape of a generated input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputShape {
    /// Values spread evenly (histogram: every bin; scan: rare matches).
    Uniform,
    /// Values concentrated on few values (histogram: few hot bins).
    Skewed,
    /// Scan: sparse matches of the pattern.
    SparseMatches,
    /// Scan: dense matches of the pattern.
    DenseMatches,
}

/// Why a workload could not plan or finish a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WorkloadError {
    /// The input cannot be processed by this workload.
    #[error("workload `{workload}`: bad input: {reason}")]
    BadInput {
        /// The workload.
        workload: &'static str,
        /// Why.
        reason: String,
    },
    /// A variant's outputs are malformed (e.g. a missing or misaligned counter tail).
    #[error("workload `{workload}`, variant {variant}: malformed output: {reason}")]
    BadOutput {
        /// The workload.
        workload: &'static str,
        /// The variant index.
        variant: usize,
        /// Why.
        reason: String,
    },
    /// No such variant.
    #[error("workload `{workload}` has no variant {variant}")]
    NoSuchVariant {
        /// The workload.
        workload: &'static str,
        /// The index asked for.
        variant: usize,
    },
}

/// A built-in workload. Variant 0 is the conservative one; 1.. are speculative.
pub trait Workload: Send + Sync + std::fmt::Debug + 'static {
    /// Short name: `"histogram"`, `"reduce"`, `"scan"`.
    fn name(&self) -> &'static str;

    /// Every variant, conservative first.
    fn variants(&self) -> Vec<KernelVariant>;

    /// The dispatch plan of variant `variant` for `input`.
    fn plan(&self, variant: usize, input: &[u8]) -> Result<DispatchPlan, WorkloadError>;

    /// Turns variant `variant`'s written bindings into the canonical answer, which must
    /// equal [`Workload::reference`] for a correct variant.
    fn answer(
        &self,
        variant: usize,
        input: &[u8],
        outputs: &[Vec<u8>],
    ) -> Result<Vec<u8>, WorkloadError>;

    /// The CPU reference answer.
    fn reference(&self, input: &[u8]) -> Vec<u8>;

    /// A realistic input of about `len` bytes.
    fn generate(&self, shape: InputShape, len: usize, seed: u64) -> Vec<u8>;

    /// For a fused speculative variant that writes the 8-byte counter tail: the tail
    /// parsed from its outputs (committed vs rolled-back tiles), which the engine feeds
    /// to the shared `AdaptiveSpeculator`. `None` for variants without a tail.
    fn speculation_report(
        &self,
        variant: usize,
        outputs: &[Vec<u8>],
    ) -> Option<crate::speculator::SpeculationReport> {
        let _ = (variant, outputs);
        None
    }
}
