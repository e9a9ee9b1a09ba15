//! `reduce`: the wrapping sum of the input read as little-endian `u32` words.
//!
//! An input whose length is not a multiple of 4 has its last word zero extended (the
//! bytes `[1]` sum to 1). Variant 0 (conservative) loads one word at a time; variant 1
//! (speculative) loads packed `vec4<u32>`s (on the CPU: four lanes of 16-byte chunks),
//! each invocation reducing several of them; variant 2 (speculative, `vec4-wide`) is
//! built for the memory's bandwidth: [`WIDE_WORKGROUPS`] workgroups at most, each
//! taking 16 KiB tiles in a grid-stride loop with four vec4 loads in flight per
//! invocation, so the per-workgroup reduction and atomic are paid once per workgroup,
//! not once per 16 KiB (issue #31).
//!
//! Answer: the sum modulo 2^32, `u32` little-endian (4 bytes).

use std::sync::Arc;

use rayon::prelude::*;

use super::{
    builtin_variant, check_variant, input_len, input_output, input_prefix, le_word,
    padded_word_sum, plans_through_binding, push_word, single_output, word_sum, workgroups_for,
    write_words, DispatchPlan, InputShape, Workload, WorkloadError, WORKGROUP_SIZE,
};
use crate::backend::{BufferArg, KernelVariant};

const NAME: &str = "reduce";
/// How many variants `reduce` has.
const VARIANTS: usize = 3;
/// vec4s each invocation of the packed shader reduces.
const VEC4_PER_INVOCATION: u64 = 4;
/// The most workgroups the wide variant asks for: 32 per multiprocessor of a large GPU
/// (132 on an H100 or H200), so that each loops over a few tiles. Any count is correct
/// (grid-stride). The kernels bench's sweep on an H100 at 256 MiB: 1 401 GB/s at 4 224
/// workgroups, 1 396 at 528, 1 300 at 1 056, 922 at 16 896.
pub const WIDE_WORKGROUPS: u32 = 4224;
/// vec4s in one tile of the wide variant (16 KiB): four per invocation.
const WIDE_TILE_VECS: u64 = 4 * WORKGROUP_SIZE as u64;
/// Words per rayon task in the CPU variants.
const CPU_CHUNK_WORDS: usize = 16 * 1024;

/// The `reduce` workload (see the module docs).
#[derive(Debug, Default, Clone, Copy)]
pub struct Reduce;

impl Reduce {
    /// The plan of `variant` for `input`, its input binding made by `bind` (a padded
    /// copy, or the caller's `Arc` itself: `Workload::plan_shared`).
    fn plan_binding(
        &self,
        variant: usize,
        input: &[u8],
        bind: impl FnOnce() -> BufferArg,
    ) -> Result<DispatchPlan, WorkloadError> {
        check_variant(NAME, variant, VARIANTS)?;
        let words = input_len(NAME, input)?.div_ceil(4);
        let vecs = u64::from(words).div_ceil(4);
        let workgroups = match variant {
            0 => workgroups_for(u64::from(words), u64::from(WORKGROUP_SIZE)),
            1 => workgroups_for(vecs, u64::from(WORKGROUP_SIZE) * VEC4_PER_INVOCATION),
            _ => {
                let [x, y, z] = workgroups_for(vecs, WIDE_TILE_VECS);
                [x.min(WIDE_WORKGROUPS), y, z]
            }
        };
        Ok(DispatchPlan {
            buffers: vec![bind(), BufferArg::Zeroed(4)],
            push_constants: words.to_le_bytes().to_vec(),
            workgroups,
        })
    }
}

/// `reduce/scalar`'s SPIR-V (also `sum/one-workgroup`'s).
pub(super) const REDUCE_SCALAR_SPV: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/reduce_scalar.spv"));

/// `reduce/vec4`'s SPIR-V (also `sum/wide-grid`'s).
pub(super) const REDUCE_VEC4_SPV: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/reduce_vec4.spv"));

impl Workload for Reduce {
    fn name(&self) -> &'static str {
        NAME
    }

    fn variants(&self) -> Vec<KernelVariant> {
        vec![
            builtin_variant("reduce/scalar", REDUCE_SCALAR_SPV, 4, Arc::new(scalar_cpu)),
            builtin_variant("reduce/vec4", REDUCE_VEC4_SPV, 4, Arc::new(vec4_cpu)),
            builtin_variant(
                "reduce/vec4-wide",
                include_bytes!(concat!(env!("OUT_DIR"), "/reduce_wide.spv")),
                4,
                Arc::new(wide_cpu),
            ),
        ]
    }

    plans_through_binding!();

    fn answer(
        &self,
        variant: usize,
        _input: &[u8],
        outputs: &[Vec<u8>],
    ) -> Result<Vec<u8>, WorkloadError> {
        check_variant(NAME, variant, VARIANTS)?;
        single_output(NAME, variant, outputs, 4).map(<[u8]>::to_vec)
    }

    fn reference(&self, input: &[u8]) -> Vec<u8> {
        padded_word_sum(input).to_le_bytes().to_vec()
    }

    fn generate(&self, shape: InputShape, len: usize, seed: u64) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut out = vec![0u8; len];
        match shape {
            // Like counters or sizes: mostly small values, now and then a large one.
            InputShape::Skewed => {
                for word in out.chunks_mut(4) {
                    let v = if rng.u8(..10) == 0 {
                        rng.u32(..)
                    } else {
                        rng.u32(..256)
                    };
                    let n = word.len();
                    word.copy_from_slice(&v.to_le_bytes()[..n]);
                }
            }
            _ => rng.fill(&mut out),
        }
        out
    }

    fn shapes(&self) -> Vec<InputShape> {
        vec![InputShape::Uniform, InputShape::Skewed]
    }
}

/// CPU variant 0: one word at a time.
fn scalar_cpu(buffers: &mut [Vec<u8>], push: &[u8], _: [u32; 3]) -> Result<(), String> {
    let words = push_word(push, 0)? as usize;
    let (input, output) = input_output(buffers)?;
    let data = input_prefix(input, words * 4)?;
    let sum = data
        .par_chunks(CPU_CHUNK_WORDS * 4)
        .map(word_sum)
        .reduce(|| 0, u32::wrapping_add);
    write_words(output, &[sum])
}

/// CPU variant 1: 16-byte chunks summed in four lanes, lanes folded at the end. The
/// input buffer is zero padded to whole 16-byte chunks.
fn vec4_cpu(buffers: &mut [Vec<u8>], push: &[u8], _: [u32; 3]) -> Result<(), String> {
    let vecs = (push_word(push, 0)? as usize).div_ceil(4);
    let (input, output) = input_output(buffers)?;
    let data = input_prefix(input, vecs * 16)?;
    let add = |mut a: [u32; 4], b: [u32; 4]| {
        for (x, y) in a.iter_mut().zip(b) {
            *x = x.wrapping_add(y);
        }
        a
    };
    let lanes = data
        .par_chunks(CPU_CHUNK_WORDS * 4)
        .map(|chunk| {
            chunk.chunks_exact(16).fold([0u32; 4], |acc, v| {
                add(
                    acc,
                    [
                        le_word(&v[0..4]),
                        le_word(&v[4..8]),
                        le_word(&v[8..12]),
                        le_word(&v[12..16]),
                    ],
                )
            })
        })
        .reduce(|| [0; 4], add);
    let sum = lanes.iter().fold(0u32, |acc, &l| acc.wrapping_add(l));
    write_words(output, &[sum])
}

/// CPU variant 2: as the wide shader, 16 KiB tiles (one per rayon task), each summed in
/// four vec4 accumulators of four lanes; the ragged end (zero padded to whole vec4s)
/// into the first.
fn wide_cpu(buffers: &mut [Vec<u8>], push: &[u8], _: [u32; 3]) -> Result<(), String> {
    let vecs = (push_word(push, 0)? as usize).div_ceil(4);
    let (input, output) = input_output(buffers)?;
    let data = input_prefix(input, vecs * 16)?;
    let tile_bytes = WIDE_TILE_VECS as usize * 16;
    let lanes = |v: &[u8]| -> [u32; 4] {
        [
            le_word(&v[0..4]),
            le_word(&v[4..8]),
            le_word(&v[8..12]),
            le_word(&v[12..16]),
        ]
    };
    let add = |mut a: [u32; 4], b: [u32; 4]| {
        for (x, y) in a.iter_mut().zip(b) {
            *x = x.wrapping_add(y);
        }
        a
    };
    let sum = data
        .par_chunks(tile_bytes)
        .map(|tile| {
            // Four accumulators, one per quarter of the tile (a ragged tile: the first).
            let mut acc = [[0u32; 4]; 4];
            let quarter = tile_bytes / 4;
            for (i, v) in tile.chunks_exact(16).enumerate() {
                let k = if tile.len() == tile_bytes {
                    i * 16 / quarter
                } else {
                    0
                };
                acc[k] = add(acc[k], lanes(v));
            }
            let s = add(add(acc[0], acc[1]), add(acc[2], acc[3]));
            s.iter().fold(0u32, |a, &l| a.wrapping_add(l))
        })
        .reduce(|| 0, u32::wrapping_add);
    write_words(output, &[sum])
}
