//! The tiny workloads the test backend's tests race (feature `test-util`): a byte sum
//! whose two variants agree (`ByteSumWorkload`), its fused form with a counter tail
//! (`FusedByteSumWorkload`), and one whose host code panics where told
//! (`PanickyHostWorkload`). Not product workloads; hidden from the docs.

use std::sync::Arc;

use crate::backend::{BindingAccess, BindingDesc, BufferArg, KernelVariant};
use crate::kernels::{DispatchPlan, InputShape, Workload, WorkloadError};
use crate::speculator::{encode_counter_tail, split_counter_tail, SpeculationReport};

/// A tiny workload for tests: the wrapping u64 sum of the input bytes. Variant 0 sums
/// serially, variant 1 in 8-byte chunks; both agree.
#[doc(hidden)]
#[derive(Debug, Default, Clone, Copy)]
pub struct ByteSumWorkload;

/// The variant names of [`ByteSumWorkload`].
impl ByteSumWorkload {
    /// Name of the conservative variant.
    pub const CONSERVATIVE: &'static str = "bytesum/serial";
    /// Name of the speculative variant.
    pub const SPECULATIVE: &'static str = "bytesum/chunked";
}

/// How a bytesum variant sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SumStrategy {
    Serial,
    Chunked,
    /// Chunked, and writes a counter tail after the sum: full 8-byte chunks count as
    /// committed tiles, a partial last chunk as one rolled-back tile.
    Fused,
}

fn bytesum_variant(name: &str, strategy: SumStrategy) -> KernelVariant {
    KernelVariant {
        name: name.to_string(),
        spirv: None,
        entry_point: "main".into(),
        workgroup_size: [64, 1, 1],
        bindings: vec![
            BindingDesc::new(0, BindingAccess::Read),
            BindingDesc::new(1, BindingAccess::Write),
        ],
        push_constant_bytes: 0,
        items_per_invocation: 1,
        cpu: Some(Arc::new(
            move |buffers: &mut [Vec<u8>], _pc: &[u8], _wg: [u32; 3]| {
                let [input, output] = buffers else {
                    return Err("bytesum takes two buffers".to_string());
                };
                let sum = if strategy != SumStrategy::Serial {
                    input.chunks(8).fold(0u64, |acc, c| {
                        acc.wrapping_add(c.iter().map(|&b| u64::from(b)).sum::<u64>())
                    })
                } else {
                    input
                        .iter()
                        .fold(0u64, |acc, &b| acc.wrapping_add(u64::from(b)))
                };
                let expected = if strategy == SumStrategy::Fused {
                    16
                } else {
                    8
                };
                if output.len() != expected {
                    return Err(format!(
                        "output is {} bytes, expected {expected}",
                        output.len()
                    ));
                }
                output[..8].copy_from_slice(&sum.to_le_bytes());
                if strategy == SumStrategy::Fused {
                    let committed = u32::try_from(input.len() / 8).unwrap_or(u32::MAX);
                    let rolled_back = u32::from(input.len() % 8 != 0);
                    let report = SpeculationReport::from_counts(committed, rolled_back);
                    output[8..].copy_from_slice(&encode_counter_tail(report));
                }
                Ok(())
            },
        )),
    }
}

impl Workload for ByteSumWorkload {
    fn name(&self) -> &'static str {
        "bytesum"
    }

    fn variants(&self) -> Vec<KernelVariant> {
        vec![
            bytesum_variant(Self::CONSERVATIVE, SumStrategy::Serial),
            bytesum_variant(Self::SPECULATIVE, SumStrategy::Chunked),
        ]
    }

    fn plan(&self, variant: usize, input: &[u8]) -> Result<DispatchPlan, WorkloadError> {
        if variant > 1 {
            return Err(WorkloadError::NoSuchVariant {
                workload: "bytesum",
                variant,
            });
        }
        Ok(DispatchPlan {
            buffers: vec![BufferArg::Data(input.into()), BufferArg::Zeroed(8)],
            push_constants: Vec::new(),
            workgroups: [1, 1, 1],
        })
    }

    fn answer(
        &self,
        variant: usize,
        _input: &[u8],
        outputs: &[Vec<u8>],
    ) -> Result<Vec<u8>, WorkloadError> {
        match outputs {
            [sum] if sum.len() == 8 => Ok(sum.clone()),
            _ => Err(WorkloadError::BadOutput {
                workload: "bytesum",
                variant,
                reason: format!("expected one 8-byte output, got {outputs:?}"),
            }),
        }
    }

    fn reference(&self, input: &[u8]) -> Vec<u8> {
        input
            .iter()
            .fold(0u64, |acc, &b| acc.wrapping_add(u64::from(b)))
            .to_le_bytes()
            .to_vec()
    }

    fn generate(&self, _shape: InputShape, len: usize, seed: u64) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..len).map(|_| rng.u8(..)).collect()
    }
}

/// [`ByteSumWorkload`] with a fused speculative variant that writes the counter tail:
/// inputs whose length is a multiple of 8 commit every tile, shorter ones roll back.
#[doc(hidden)]
#[derive(Debug, Default, Clone, Copy)]
pub struct FusedByteSumWorkload;

impl FusedByteSumWorkload {
    /// Name of the fused speculative variant.
    pub const FUSED: &'static str = "bytesum/fused";
}

impl Workload for FusedByteSumWorkload {
    fn name(&self) -> &'static str {
        "bytesum-fused"
    }

    fn variants(&self) -> Vec<KernelVariant> {
        vec![
            bytesum_variant(ByteSumWorkload::CONSERVATIVE, SumStrategy::Serial),
            bytesum_variant(Self::FUSED, SumStrategy::Fused),
        ]
    }

    fn plan(&self, variant: usize, input: &[u8]) -> Result<DispatchPlan, WorkloadError> {
        let mut plan = ByteSumWorkload.plan(variant, input)?;
        if variant == 1 {
            plan.buffers[1] = BufferArg::Zeroed(16);
        }
        Ok(plan)
    }

    fn answer(
        &self,
        variant: usize,
        input: &[u8],
        outputs: &[Vec<u8>],
    ) -> Result<Vec<u8>, WorkloadError> {
        match (variant, outputs) {
            (1, [out]) => match split_counter_tail(out) {
                Some((sum, _)) => ByteSumWorkload.answer(variant, input, &[sum.to_vec()]),
                None => Err(WorkloadError::BadOutput {
                    workload: "bytesum-fused",
                    variant,
                    reason: "no counter tail".into(),
                }),
            },
            _ => ByteSumWorkload.answer(variant, input, outputs),
        }
    }

    fn reference(&self, input: &[u8]) -> Vec<u8> {
        ByteSumWorkload.reference(input)
    }

    fn generate(&self, shape: InputShape, len: usize, seed: u64) -> Vec<u8> {
        ByteSumWorkload.generate(shape, len, seed)
    }

    fn speculation_report(&self, variant: usize, outputs: &[Vec<u8>]) -> Option<SpeculationReport> {
        match (variant, outputs) {
            (1, [out]) => split_counter_tail(out).map(|(_, report)| report),
            _ => None,
        }
    }
}

/// Which host code of [`PanickyHostWorkload`]'s speculative variant panics.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostCode {
    /// `Workload::plan` (and `plan_shared`).
    Plan,
    /// `Workload::answer`.
    Answer,
    /// `Workload::speculation_report`.
    SpeculationReport,
}

/// [`FusedByteSumWorkload`] whose speculative variant's host code panics — in `plan`,
/// `answer` or `speculation_report`, as chosen — for every batch (not for the
/// registration's probe: `plan` and `answer` spare a 1024-byte input, the length the
/// probe plans, and `speculation_report` spares outputs that are all zero, as the
/// probe's are). The conservative variant's host code never panics. FOR FAULT
/// INJECTION.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct PanickyHostWorkload(pub HostCode);

impl PanickyHostWorkload {
    fn panics(&self, variant: usize, code: HostCode, spared: bool) {
        if variant == 1 && self.0 == code && !spared {
            panic!("injected panic in the speculative variant's {code:?}");
        }
    }
}

impl Workload for PanickyHostWorkload {
    fn name(&self) -> &'static str {
        "bytesum-panicky-host"
    }

    fn variants(&self) -> Vec<KernelVariant> {
        FusedByteSumWorkload.variants()
    }

    fn plan(&self, variant: usize, input: &[u8]) -> Result<DispatchPlan, WorkloadError> {
        self.panics(variant, HostCode::Plan, input.len() == 1024);
        FusedByteSumWorkload.plan(variant, input)
    }

    fn answer(
        &self,
        variant: usize,
        input: &[u8],
        outputs: &[Vec<u8>],
    ) -> Result<Vec<u8>, WorkloadError> {
        self.panics(variant, HostCode::Answer, input.len() == 1024);
        FusedByteSumWorkload.answer(variant, input, outputs)
    }

    fn reference(&self, input: &[u8]) -> Vec<u8> {
        ByteSumWorkload.reference(input)
    }

    fn generate(&self, shape: InputShape, len: usize, seed: u64) -> Vec<u8> {
        ByteSumWorkload.generate(shape, len, seed)
    }

    fn speculation_report(&self, variant: usize, outputs: &[Vec<u8>]) -> Option<SpeculationReport> {
        let zero = outputs.iter().flatten().all(|&b| b == 0);
        self.panics(variant, HostCode::SpeculationReport, zero);
        FusedByteSumWorkload.speculation_report(variant, outputs)
    }
}
