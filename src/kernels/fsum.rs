//! `fsum`: the sum of the input read as little-endian `f32`s — the built-in float
//! workload, whose fast variant is right only within a tolerance (SPEC §9).
//!
//! The input is split in chunks of `CHUNK_ELEMS` (1024) elements. Variant 0 (conservative)
//! adds each chunk's elements one after the other, one invocation per chunk; variant 1
//! (speculative) gives each quarter chunk to an invocation, which reads it as vec4s
//! into four running sums — four times the parallelism and wider loads, but the
//! additions associate differently, so its answer differs from the conservative one in
//! the last bits. Each writes one partial sum per chunk (per quarter chunk), which
//! [`Workload::answer`] adds in order. The CPU code
//! of each variant does the same arithmetic in the same order as its shader, and the
//! reference is the conservative arithmetic, so the conservative answer is bit-exact on
//! every backend (IEEE single precision, round to nearest, inputs without subnormals).
//!
//! Whether the speculative variant is right is the kernel's [`Agreement`]:
//! [`FSum::tolerant`] (the default: `f32` within a relative 1e-4) adopts it where it is
//! faster; [`FSum::exact`] rejects it as a mismatch.
//!
//! Answer: the sum, `f32` little-endian (4 bytes). An input whose length is not a
//! multiple of 4 has its last element zero extended.

use std::sync::Arc;

use rayon::prelude::*;

use super::{
    builtin_variant, check_variant, input_len, input_output, plans_through_binding, push_word,
    workgroups_for, DispatchPlan, InputShape, Workload, WorkloadError, WORKGROUP_SIZE,
};
use crate::backend::{BufferArg, KernelVariant};
use crate::policy::{Agreement, FloatElem};

const NAME: &str = "fsum";
/// Elements per chunk (each has one partial sum).
const CHUNK_ELEMS: usize = 1024;

/// The `fsum` workload (see the module docs).
#[derive(Debug, Clone)]
pub struct FSum {
    agreement: Agreement,
}

impl Default for FSum {
    fn default() -> Self {
        FSum::tolerant()
    }
}

impl FSum {
    /// Answers agree as `f32`s within a relative 1e-4: the speculative variant's
    /// reassociated sums are accepted.
    pub fn tolerant() -> Self {
        FSum {
            agreement: Agreement::Float {
                elem: FloatElem::F32,
                max_ulps: 0,
                rel: 1e-4,
                abs: 0.0,
            },
        }
    }

    /// Answers agree only byte for byte: the speculative variant is a mismatch.
    pub fn exact() -> Self {
        FSum {
            agreement: Agreement::Exact,
        }
    }

    /// The plan of `variant` for `input`, its input binding made by `bind`.
    fn plan_binding(
        &self,
        variant: usize,
        input: &[u8],
        bind: impl FnOnce() -> BufferArg,
    ) -> Result<DispatchPlan, WorkloadError> {
        check_variant(NAME, variant, 2)?;
        let elems = input_len(NAME, input)?.div_ceil(4);
        let partials = partials_of(variant, elems as usize) as u64;
        let workgroups = workgroups_for(partials, u64::from(WORKGROUP_SIZE));
        Ok(DispatchPlan {
            buffers: vec![bind(), BufferArg::Zeroed(partials * 4)],
            push_constants: elems.to_le_bytes().to_vec(),
            workgroups,
        })
    }
}

impl Workload for FSum {
    fn name(&self) -> &'static str {
        NAME
    }

    fn variants(&self) -> Vec<KernelVariant> {
        vec![
            builtin_variant(
                "fsum/chunked",
                include_bytes!(concat!(env!("OUT_DIR"), "/fsum_chunked.spv")),
                4,
                Arc::new(chunked_cpu),
            ),
            builtin_variant(
                "fsum/vec4",
                include_bytes!(concat!(env!("OUT_DIR"), "/fsum_vec4.spv")),
                4,
                Arc::new(vec4_cpu),
            ),
        ]
    }

    plans_through_binding!();

    fn answer(
        &self,
        variant: usize,
        input: &[u8],
        outputs: &[Vec<u8>],
    ) -> Result<Vec<u8>, WorkloadError> {
        check_variant(NAME, variant, 2)?;
        let expected = partials_of(variant, input.len().div_ceil(4));
        match outputs {
            [partials] if partials.len() == expected * 4 => {
                let total = floats(partials).fold(0.0f32, |acc, x| acc + x);
                Ok(total.to_le_bytes().to_vec())
            }
            _ => Err(WorkloadError::BadOutput {
                workload: NAME,
                variant,
                reason: format!("expected one buffer of {expected} partial sums"),
            }),
        }
    }

    fn reference(&self, input: &[u8]) -> Vec<u8> {
        let mut padded = input.to_vec();
        padded.resize(input.len().div_ceil(4) * 4, 0);
        let total = padded
            .chunks(CHUNK_ELEMS * 4)
            .map(|chunk| floats(chunk).fold(0.0f32, |acc, x| acc + x))
            .fold(0.0f32, |acc, x| acc + x);
        total.to_le_bytes().to_vec()
    }

    /// Values in [0, 1) on a 2^-24 grid (no subnormals), or for `Skewed` mostly small
    /// with now and then a large one (a sum whose rounding depends more on the order).
    fn generate(&self, shape: InputShape, len: usize, seed: u64) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut out = vec![0u8; len];
        for element in out.chunks_mut(4) {
            let unit = rng.u32(..1 << 24) as f32 / (1u32 << 24) as f32;
            let v = match shape {
                InputShape::Skewed if rng.u8(..16) == 0 => unit * 4096.0,
                _ => unit,
            };
            let n = element.len();
            element.copy_from_slice(&v.to_le_bytes()[..n]);
        }
        out
    }

    fn shapes(&self) -> Vec<InputShape> {
        vec![InputShape::Uniform, InputShape::Skewed]
    }

    fn agreement(&self) -> Agreement {
        self.agreement.clone()
    }
}

/// Partial sums variant `variant` writes for `elems` elements: one per chunk
/// (conservative), one per quarter chunk (speculative); at least one.
fn partials_of(variant: usize, elems: usize) -> usize {
    let per = if variant == 0 {
        CHUNK_ELEMS
    } else {
        CHUNK_ELEMS / 4
    };
    elems.div_ceil(per).max(1)
}

/// The little-endian `f32`s of `bytes` (whole elements only).
fn floats(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]]))
}

/// The kernel's elements and variant `variant`'s partial-sum buffer, checked against
/// each other.
fn chunked_buffers<'a>(
    variant: usize,
    buffers: &'a mut [Vec<u8>],
    push: &[u8],
) -> Result<(&'a [u8], &'a mut [u8]), String> {
    let elems = push_word(push, 0)? as usize;
    let (input, output) = input_output(buffers)?;
    if input.len() < elems * 4 || output.len() < partials_of(variant, elems) * 4 {
        return Err(format!(
            "{} input bytes and {} output bytes for {elems} elements",
            input.len(),
            output.len()
        ));
    }
    Ok((&input[..elems * 4], output))
}

/// CPU variant 0: each chunk's elements added one after the other, the chunks one
/// after the other on the calling thread (the reference arithmetic, serially: the
/// conservative variant is the known-good one, not the fast one).
fn chunked_cpu(buffers: &mut [Vec<u8>], push: &[u8], _: [u32; 3]) -> Result<(), String> {
    let (input, output) = chunked_buffers(0, buffers, push)?;
    for (out, chunk) in output.chunks_mut(4).zip(input.chunks(CHUNK_ELEMS * 4)) {
        let sum = floats(chunk).fold(0.0f32, |acc, x| acc + x);
        out.copy_from_slice(&sum.to_le_bytes());
    }
    Ok(())
}

/// CPU variant 1: each quarter chunk as the vec4 shader sums it — four running sums of
/// every fourth element, `(x + y) + (z + w)` at the end; a task per 16 quarters.
fn vec4_cpu(buffers: &mut [Vec<u8>], push: &[u8], _: [u32; 3]) -> Result<(), String> {
    const QUARTER_BYTES: usize = CHUNK_ELEMS;
    const PER_TASK: usize = 16;
    let (input, output) = chunked_buffers(1, buffers, push)?;
    output
        .par_chunks_mut(4 * PER_TASK)
        .zip(input.par_chunks(QUARTER_BYTES * PER_TASK))
        .for_each(|(out, quarters)| {
            for (out, quarter) in out.chunks_exact_mut(4).zip(quarters.chunks(QUARTER_BYTES)) {
                let mut acc = [0.0f32; 4];
                let mut vecs = quarter.chunks_exact(16);
                for v in &mut vecs {
                    for (lane, w) in acc.iter_mut().zip(v.chunks_exact(4)) {
                        *lane += f32::from_le_bytes([w[0], w[1], w[2], w[3]]);
                    }
                }
                // A last, partial vec4 (the input is zero padded on the GPU).
                for (lane, x) in acc.iter_mut().zip(floats(vecs.remainder())) {
                    *lane += x;
                }
                let sum = (acc[0] + acc[1]) + (acc[2] + acc[3]);
                out.copy_from_slice(&sum.to_le_bytes());
            }
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vec4_variant_differs_in_the_last_bits_and_agrees_within_the_tolerance() {
        let fsum = FSum::default();
        let input = fsum.generate(InputShape::Uniform, 1 << 20, 3);
        let run = |variant: usize| {
            let plan = fsum.plan(variant, &input).unwrap();
            let mut buffers: Vec<Vec<u8>> = plan
                .buffers
                .iter()
                .map(|b| match b {
                    BufferArg::Data(d) => d.to_vec(),
                    BufferArg::Zeroed(n) => vec![0; *n as usize],
                })
                .collect();
            let code = fsum.variants()[variant].cpu.clone().unwrap();
            code(&mut buffers, &plan.push_constants, plan.workgroups).unwrap();
            fsum.answer(variant, &input, &buffers[1..]).unwrap()
        };
        let (chunked, vec4) = (run(0), run(1));
        assert_eq!(
            chunked,
            fsum.reference(&input),
            "variant 0 is the reference"
        );
        assert_ne!(chunked, vec4, "four lanes associate differently");
        assert!(FSum::tolerant()
            .agreement()
            .compare(&chunked, &vec4)
            .is_ok());
        assert!(FSum::exact().agreement().compare(&chunked, &vec4).is_err());
    }
}
