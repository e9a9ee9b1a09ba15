//! Built-in workloads: each a conservative and at least one speculative variant (WGSL
//! in `shaders/`, compiled to SPIR-V at build time, plus CPU code for the CPU backend),
//! a CPU reference and generators of realistic inputs.
//!
//! A workload turns an input into dispatch plans (one per variant) and a variant's raw
//! outputs back into the canonical answer, so the engine can race variants and compare
//! their answers byte for byte. This module never touches a device or a queue.
//!
//! Shared conventions of the built-in workloads: inputs are bytes, at most
//! [`MAX_INPUT_BYTES`]; the input buffer is the input zero padded to a whole number of
//! 16-byte vectors (never empty, since Vulkan has no empty buffers) and the true length
//! travels in the push constants; binding 0 is the input (read), binding 1 the output
//! (written); every shader declares `@workgroup_size(256)` and loops grid-stride, so it
//! is correct for any workgroup count (plans cap x at [`MAX_WORKGROUPS_X`]); an empty
//! input plans zero workgroups, an empty dispatch.

use std::sync::Arc;

use crate::backend::{
    BindingAccess, BindingDesc, BufferArg, CpuKernelFn, DispatchJob, KernelHandle, KernelVariant,
    QueueId,
};

mod fsum;
mod histogram;
mod reduce;
mod scan;
mod sum;

pub use fsum::FSum;
pub use histogram::{Histogram, LANES_WORKGROUPS};
pub use reduce::{Reduce, WIDE_WORKGROUPS};
pub use scan::{Scan, DEFAULT_PATTERN, MAX_PATTERN_BYTES, SCAN_SLOT_CAPACITY, SCAN_TILE_BYTES};
pub use sum::{Sum, SUM_GRID_WORKGROUPS};

/// The largest input a built-in workload accepts (2 GiB): byte positions and counts stay
/// well inside `u32` in the shaders.
pub const MAX_INPUT_BYTES: usize = 1 << 31;

/// The most workgroups a plan asks for in x: Vulkan's guaranteed
/// `maxComputeWorkGroupCount[0]`. Larger inputs are covered by the shaders' grid-stride
/// loops.
pub const MAX_WORKGROUPS_X: u32 = 65_535;

/// The workgroup size every built-in shader declares.
pub const WORKGROUP_SIZE: u32 = 256;

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

impl DispatchPlan {
    /// A plan of `buffers` over `workgroups`, with no push constants.
    pub fn new(buffers: Vec<BufferArg>, workgroups: [u32; 3]) -> Self {
        DispatchPlan {
            buffers,
            push_constants: Vec::new(),
            workgroups,
        }
    }

    /// A plan of `buffers` with no workgroup count of its own, for a batch by items
    /// ([`Batch::for_items`](crate::Batch::for_items)), whose variants each dispatch
    /// the workgroups they need.
    pub fn from_buffers(buffers: Vec<BufferArg>) -> Self {
        DispatchPlan::new(buffers, [0, 1, 1])
    }

    /// The same plan with `value` as its push constants (any `Pod` type, e.g. a
    /// `#[repr(C)]` struct deriving `bytemuck::Pod` laid out as the shader's
    /// `var<immediate>` block).
    pub fn with_push_constants<T: bytemuck::Pod>(self, value: &T) -> Self {
        DispatchPlan {
            push_constants: bytemuck::bytes_of(value).to_vec(),
            ..self
        }
    }

    /// The backend job that runs this plan with `kernel` on `queue`, for a caller of
    /// [`Backend::dispatch`](crate::backend::Backend::dispatch) (the engine builds its
    /// jobs the same way).
    pub fn into_job(self, queue: QueueId, kernel: KernelHandle) -> DispatchJob {
        DispatchJob {
            queue,
            kernel,
            buffers: self.buffers,
            push_constants: self.push_constants,
            workgroups: self.workgroups,
        }
    }
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

    /// As [`plan`](Self::plan), for an input held in an `Arc`, as the engine holds a
    /// batch's input: a workload may bind that `Arc` itself instead of a copy. The
    /// built-in workloads do when the input's length is already a non-zero multiple of
    /// 16 bytes (nothing to pad), which spares a copy of each such batch's input per
    /// run — for large inputs a large allocation per batch, whose pages a busy
    /// allocator hands back to the system and faults in again. By default, `plan`.
    fn plan_shared(
        &self,
        variant: usize,
        input: &Arc<[u8]>,
    ) -> Result<DispatchPlan, WorkloadError> {
        self.plan(variant, input)
    }

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

    /// A realistic input of exactly `len` bytes, the same for the same seed. A shape not
    /// in [`Workload::shapes`] generates the [`InputShape::Uniform`] input.
    fn generate(&self, shape: InputShape, len: usize, seed: u64) -> Vec<u8>;

    /// The input shapes that mean something for this workload (each changes which
    /// variant should win).
    fn shapes(&self) -> Vec<InputShape> {
        vec![InputShape::Uniform]
    }

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

    /// How a speculative variant's canonical answer is compared with the conservative
    /// one's (SPEC §9): [`Agreement::Exact`](crate::policy::Agreement::Exact) (bytes) by default; a float workload whose
    /// fast variants reassociate or fuse arithmetic gives a tolerance
    /// ([`Agreement::Float`](crate::policy::Agreement::Float)).
    fn agreement(&self) -> crate::policy::Agreement {
        crate::policy::Agreement::Exact
    }
}

/// Every built-in workload: `histogram`, `reduce`, `scan` (with [`DEFAULT_PATTERN`])
/// and `sum` (whose winner flips with the batch's size).
pub fn builtin() -> Vec<Arc<dyn Workload>> {
    vec![
        Arc::new(Histogram),
        Arc::new(Reduce),
        Arc::new(Scan::default()),
        Arc::new(Sum),
    ]
}

/// The built-in workload called `name`, if there is one: those of [`builtin`], and
/// `fsum` ([`FSum`], the float workload compared within a tolerance, which the default
/// run leaves out).
pub fn by_name(name: &str) -> Option<Arc<dyn Workload>> {
    if name == "fsum" {
        return Some(Arc::new(FSum::default()));
    }
    builtin().into_iter().find(|w| w.name() == name)
}

/// SPIR-V bytes (as `include_bytes!` gives them, with no alignment promise) as words.
/// build.rs writes whole little-endian words, so no byte is dropped.
fn spirv_words(bytes: &[u8]) -> Arc<[u32]> {
    bytes.chunks_exact(4).map(le_word).collect()
}

/// The little-endian `u32` in the first four bytes of `w` (which has at least four).
/// The wrapping sum of the little-endian words of `data` (whole words only).
fn word_sum(data: &[u8]) -> u32 {
    data.chunks_exact(4)
        .fold(0u32, |acc, w| acc.wrapping_add(le_word(w)))
}

/// The wrapping sum of `input`'s little-endian words, a last partial word zero
/// extended: the answer of `reduce` and `sum`.
fn padded_word_sum(input: &[u8]) -> u32 {
    let whole = input.len() / 4 * 4;
    let mut tail = [0u8; 4];
    tail[..input.len() - whole].copy_from_slice(&input[whole..]);
    word_sum(&input[..whole]).wrapping_add(u32::from_le_bytes(tail))
}

fn le_word(w: &[u8]) -> u32 {
    u32::from_le_bytes([w[0], w[1], w[2], w[3]])
}

/// A variant with the built-in layout: binding 0 read (input), binding 1 written.
fn builtin_variant(
    name: &str,
    spirv: &[u8],
    push_constant_bytes: u32,
    cpu: Arc<CpuKernelFn>,
) -> KernelVariant {
    KernelVariant {
        name: name.to_owned(),
        spirv: Some(spirv_words(spirv)),
        entry_point: "main".to_owned(),
        workgroup_size: [WORKGROUP_SIZE, 1, 1],
        bindings: vec![
            BindingDesc::new(0, BindingAccess::Read),
            BindingDesc::new(1, BindingAccess::Write),
        ],
        push_constant_bytes,
        items_per_invocation: 1,
        cpu: Some(cpu),
    }
}

/// Refuses inputs beyond [`MAX_INPUT_BYTES`]; gives the length as `u32`.
fn input_len(workload: &'static str, input: &[u8]) -> Result<u32, WorkloadError> {
    if input.len() > MAX_INPUT_BYTES {
        return Err(WorkloadError::BadInput {
            workload,
            reason: format!(
                "{} bytes is more than the {MAX_INPUT_BYTES} a batch may hold; split it",
                input.len()
            ),
        });
    }
    // In range: MAX_INPUT_BYTES < u32::MAX.
    Ok(input.len() as u32)
}

/// Refuses a variant index the workload does not have.
fn check_variant(
    workload: &'static str,
    variant: usize,
    count: usize,
) -> Result<(), WorkloadError> {
    if variant < count {
        Ok(())
    } else {
        Err(WorkloadError::NoSuchVariant { workload, variant })
    }
}

/// The input buffer: `input` zero padded to a non-zero multiple of 16 bytes.
fn padded_input(input: &[u8]) -> BufferArg {
    let len = input.len().div_ceil(16).max(1) * 16;
    let mut buf = Vec::with_capacity(len);
    buf.extend_from_slice(input);
    buf.resize(len, 0);
    BufferArg::Data(buf.into())
}

/// `Workload::plan` and `Workload::plan_shared` of a built-in workload, for its `impl
/// Workload`: both through the workload's own `plan_binding(variant, input, bind)`,
/// with a padded copy of the input ([`padded_input`]) or the shared one
/// ([`shared_input`]).
macro_rules! plans_through_binding {
    () => {
        fn plan(&self, variant: usize, input: &[u8]) -> Result<DispatchPlan, WorkloadError> {
            self.plan_binding(variant, input, || super::padded_input(input))
        }

        fn plan_shared(
            &self,
            variant: usize,
            input: &std::sync::Arc<[u8]>,
        ) -> Result<DispatchPlan, WorkloadError> {
            self.plan_binding(variant, input, || super::shared_input(input))
        }
    };
}
use plans_through_binding;

/// The input buffer of an input held in an `Arc`: that `Arc` itself when its length is
/// a non-zero multiple of 16 bytes, a padded copy ([`padded_input`]) otherwise.
fn shared_input(input: &Arc<[u8]>) -> BufferArg {
    if !input.is_empty() && input.len() % 16 == 0 {
        BufferArg::Data(Arc::clone(input))
    } else {
        padded_input(input)
    }
}

/// Workgroups for `items` work items of `per_group` each, capped in x.
fn workgroups_for(items: u64, per_group: u64) -> [u32; 3] {
    let groups = items.div_ceil(per_group.max(1));
    [groups.min(u64::from(MAX_WORKGROUPS_X)) as u32, 1, 1]
}

/// The one written binding of a built-in variant, checked to be `expected` bytes long.
fn single_output<'a>(
    workload: &'static str,
    variant: usize,
    outputs: &'a [Vec<u8>],
    expected: usize,
) -> Result<&'a [u8], WorkloadError> {
    match outputs {
        [out] if out.len() == expected => Ok(out),
        [out] => Err(WorkloadError::BadOutput {
            workload,
            variant,
            reason: format!("output is {} bytes, expected {expected}", out.len()),
        }),
        _ => Err(WorkloadError::BadOutput {
            workload,
            variant,
            reason: format!("{} written bindings, expected 1", outputs.len()),
        }),
    }
}

/// Word `index` of the push constants, for CPU kernels.
fn push_word(push: &[u8], index: usize) -> Result<u32, String> {
    push.get(index * 4..index * 4 + 4)
        .map(le_word)
        .ok_or_else(|| format!("push constants are {} bytes, too short", push.len()))
}

/// The input and output buffers of a CPU kernel with the built-in layout.
fn input_output(buffers: &mut [Vec<u8>]) -> Result<(&[u8], &mut [u8]), String> {
    match buffers {
        [input, output] => Ok((input, output)),
        _ => Err(format!("{} buffers, expected 2", buffers.len())),
    }
}

/// The first `len` bytes of a CPU kernel's input buffer.
fn input_prefix(input: &[u8], len: usize) -> Result<&[u8], String> {
    input
        .get(..len)
        .ok_or_else(|| format!("input buffer is {} bytes, shorter than {len}", input.len()))
}

/// Writes `words` little-endian into `out`, which must be exactly their size.
fn write_words(out: &mut [u8], words: &[u32]) -> Result<(), String> {
    if out.len() != words.len() * 4 {
        return Err(format!(
            "output buffer is {} bytes, expected {}",
            out.len(),
            words.len() * 4
        ));
    }
    put_words(out, words);
    Ok(())
}

/// Writes `words` little-endian at the start of `out`, as many as fit.
fn put_words(out: &mut [u8], words: &[u32]) {
    for (chunk, word) in out.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
}

/// A lowercase letter or a space, like words in text.
fn text_byte(rng: &mut fastrand::Rng) -> u8 {
    match rng.u8(..32) {
        0..=25 => b'a' + rng.u8(..26),
        _ => b' ',
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_shader_is_spirv_with_a_compute_entry_point() {
        for workload in builtin() {
            for variant in workload.variants() {
                let words = variant.spirv.as_deref().unwrap_or(&[]);
                assert_eq!(words.first(), Some(&0x0723_0203), "{}", variant.name);
                assert!(words.len() > 5, "{}", variant.name);
                assert!(variant.cpu.is_some(), "{}", variant.name);
            }
        }
    }

    #[test]
    fn by_name_finds_each_builtin_and_nothing_else() {
        for name in ["histogram", "reduce", "scan", "fsum", "sum"] {
            assert_eq!(by_name(name).map(|w| w.name()), Some(name));
        }
        assert!(by_name("sort").is_none());
    }

    #[test]
    fn padded_input_is_a_nonempty_multiple_of_16() {
        for (len, want) in [(0, 16), (1, 16), (16, 16), (17, 32)] {
            let buf = padded_input(&vec![7; len]);
            assert_eq!(buf.len(), want);
        }
    }

    /// `plan_shared` binds an input whose length needs no padding as the caller's own
    /// `Arc` (no copy) and pads any other one as `plan` does; either way the plan is
    /// `plan`'s.
    #[test]
    fn a_shared_input_is_bound_without_a_copy_when_it_needs_no_padding() {
        for workload in builtin() {
            for len in [16usize, 4096, 17, 1] {
                let input: Arc<[u8]> = workload.generate(InputShape::Uniform, len, 3).into();
                for variant in 0..workload.variants().len() {
                    let copied = workload.plan(variant, &input).expect("plan");
                    let shared = workload.plan_shared(variant, &input).expect("plan_shared");
                    assert_eq!(shared.push_constants, copied.push_constants);
                    assert_eq!(shared.workgroups, copied.workgroups);
                    assert_eq!(shared.buffers.len(), copied.buffers.len());
                    let (BufferArg::Data(shared_in), BufferArg::Data(copied_in)) =
                        (&shared.buffers[0], &copied.buffers[0])
                    else {
                        panic!("{}: the input binding is not data", workload.name());
                    };
                    assert_eq!(
                        Arc::ptr_eq(shared_in, &input),
                        len % 16 == 0,
                        "{} len {len}: shared exactly when no padding is needed",
                        workload.name()
                    );
                    assert!(!Arc::ptr_eq(copied_in, &input));
                    assert_eq!(
                        shared_in[..],
                        copied_in[..],
                        "{} len {len}",
                        workload.name()
                    );
                }
            }
        }
    }

    #[test]
    fn workgroups_are_capped_in_x() {
        assert_eq!(workgroups_for(0, 256), [0, 1, 1]);
        assert_eq!(workgroups_for(257, 256), [2, 1, 1]);
        assert_eq!(
            workgroups_for(u64::from(u32::MAX), 1),
            [MAX_WORKGROUPS_X, 1, 1]
        );
    }

    #[test]
    fn unknown_variants_are_refused() {
        for workload in builtin() {
            let n = workload.variants().len();
            assert!(matches!(
                workload.plan(n, b"abc"),
                Err(WorkloadError::NoSuchVariant { variant, .. }) if variant == n
            ));
            assert!(matches!(
                workload.answer(n, b"abc", &[]),
                Err(WorkloadError::NoSuchVariant { .. })
            ));
        }
    }
}
