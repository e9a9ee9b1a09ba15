//! `histogram`: counts of each byte value (256 bins).
//!
//! Variant 0 (conservative) adds every byte straight into the global bins with an
//! atomic; variant 1 (speculative) privatises: each workgroup (on the CPU: each rayon
//! task) counts into its own bins and merges them once. Which wins depends on the
//! distribution: skewed input makes the shared global bins a contention hot spot.
//! Variant 2 (speculative, `lane-columns`) is built for the memory's bandwidth: 16
//! sub-histograms per workgroup (16 KiB of shared counters), interleaved so that at most
//! two invocations of a 32-wide subgroup collide on an address or a bank, vec4 loads, and at most [`LANES_WORKGROUPS`]
//! workgroups in a grid-stride loop (issue #31); on the CPU, each rayon task counts into
//! four interleaved sub-histograms.
//!
//! Answer: the 256 counts, `u32` little-endian each (1024 bytes).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use rayon::prelude::*;

use super::{
    builtin_variant, check_variant, input_len, input_output, input_prefix, plans_through_binding,
    push_word, single_output, workgroups_for, write_words, DispatchPlan, InputShape, Workload,
    WorkloadError, WORKGROUP_SIZE,
};
use crate::backend::{BufferArg, KernelVariant};

const NAME: &str = "histogram";
const BINS: usize = 256;
const ANSWER_BYTES: usize = BINS * 4;
/// Input words each invocation of the privatised shader handles (more work per
/// workgroup amortises its merge).
const PRIVATE_WORDS_PER_INVOCATION: u64 = 16;
/// The most workgroups the lane-columns variant asks for: two per multiprocessor of a
/// large GPU (132 on an H100 or H200; 16 KiB of shared counters each), so each merges
/// its counters once for a large share of the input. Any count is correct. The kernels
/// bench's sweep on an H100 at 256 MiB: 452 GB/s at 264 workgroups, 407 at 1 056, 310 at
/// 132, 96 at 16 896.
pub const LANES_WORKGROUPS: u32 = 264;
/// How many variants `histogram` has.
const VARIANTS: usize = 3;
/// Bytes per rayon task in the CPU variants.
const CPU_CHUNK: usize = 64 * 1024;

/// The `histogram` workload (see the module docs).
#[derive(Debug, Default, Clone, Copy)]
pub struct Histogram;

impl Histogram {
    /// The plan of `variant` for `input`, its input binding made by `bind` (a padded
    /// copy, or the caller's `Arc` itself: `Workload::plan_shared`).
    fn plan_binding(
        &self,
        variant: usize,
        input: &[u8],
        bind: impl FnOnce() -> BufferArg,
    ) -> Result<DispatchPlan, WorkloadError> {
        check_variant(NAME, variant, VARIANTS)?;
        let len = input_len(NAME, input)?;
        let words = u64::from(len).div_ceil(4);
        let workgroups = match variant {
            0 => workgroups_for(words, u64::from(WORKGROUP_SIZE)),
            1 => workgroups_for(
                words,
                u64::from(WORKGROUP_SIZE) * PRIVATE_WORDS_PER_INVOCATION,
            ),
            _ => {
                // One vec4 per invocation and step.
                let [x, y, z] = workgroups_for(words.div_ceil(4), u64::from(WORKGROUP_SIZE));
                [x.min(LANES_WORKGROUPS), y, z]
            }
        };
        Ok(DispatchPlan {
            buffers: vec![bind(), BufferArg::Zeroed(ANSWER_BYTES as u64)],
            push_constants: len.to_le_bytes().to_vec(),
            workgroups,
        })
    }
}

impl Workload for Histogram {
    fn name(&self) -> &'static str {
        NAME
    }

    fn variants(&self) -> Vec<KernelVariant> {
        vec![
            builtin_variant(
                "histogram/global-atomics",
                include_bytes!(concat!(env!("OUT_DIR"), "/histogram_global.spv")),
                4,
                Arc::new(global_atomics_cpu),
            ),
            builtin_variant(
                "histogram/workgroup-private",
                include_bytes!(concat!(env!("OUT_DIR"), "/histogram_private.spv")),
                4,
                Arc::new(privatised_cpu),
            ),
            builtin_variant(
                "histogram/lane-columns",
                include_bytes!(concat!(env!("OUT_DIR"), "/histogram_lanes.spv")),
                4,
                Arc::new(lane_columns_cpu),
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
        single_output(NAME, variant, outputs, ANSWER_BYTES).map(<[u8]>::to_vec)
    }

    fn reference(&self, input: &[u8]) -> Vec<u8> {
        let mut bins = [0u32; BINS];
        for &b in input {
            bins[usize::from(b)] = bins[usize::from(b)].wrapping_add(1);
        }
        bins.iter().flat_map(|c| c.to_le_bytes()).collect()
    }

    fn generate(&self, shape: InputShape, len: usize, seed: u64) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut out = vec![0u8; len];
        match shape {
            // Like a dark image or sparse data: nine bytes in ten from four hot values.
            InputShape::Skewed => {
                const HOT: [u8; 4] = [0, 1, 0x20, 0xff];
                for b in &mut out {
                    *b = if rng.u8(..10) == 0 {
                        rng.u8(..)
                    } else {
                        HOT[rng.usize(..HOT.len())]
                    };
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

/// CPU variant 0: every byte is an atomic add on one shared array of bins.
fn global_atomics_cpu(buffers: &mut [Vec<u8>], push: &[u8], _: [u32; 3]) -> Result<(), String> {
    let len = push_word(push, 0)? as usize;
    let (input, output) = input_output(buffers)?;
    let data = input_prefix(input, len)?;
    // Plain std atomics: this is kernel code, not a protocol the loom models explore.
    let bins: Vec<AtomicU32> = (0..BINS).map(|_| AtomicU32::new(0)).collect();
    data.par_chunks(CPU_CHUNK).for_each(|chunk| {
        for &b in chunk {
            bins[usize::from(b)].fetch_add(1, Ordering::Relaxed);
        }
    });
    let counts: Vec<u32> = bins.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    write_words(output, &counts)
}

/// CPU variant 1: each rayon task counts into its own bins; the bins are merged.
fn privatised_cpu(buffers: &mut [Vec<u8>], push: &[u8], _: [u32; 3]) -> Result<(), String> {
    let len = push_word(push, 0)? as usize;
    let (input, output) = input_output(buffers)?;
    let data = input_prefix(input, len)?;
    let counts = data
        .par_chunks(CPU_CHUNK)
        .fold(
            || [0u32; BINS],
            |mut bins, chunk| {
                for &b in chunk {
                    bins[usize::from(b)] = bins[usize::from(b)].wrapping_add(1);
                }
                bins
            },
        )
        .reduce(
            || [0u32; BINS],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(b) {
                    *x = x.wrapping_add(y);
                }
                a
            },
        );
    write_words(output, &counts)
}

/// CPU variant 2: each rayon task counts into four interleaved sub-histograms (bin `b`
/// of column `c` at `b * 4 + c`, byte `i` of the task into column `i % 4`), merged per
/// bin, then the tasks' bins are summed.
fn lane_columns_cpu(buffers: &mut [Vec<u8>], push: &[u8], _: [u32; 3]) -> Result<(), String> {
    const COLUMNS: usize = 4;
    let len = push_word(push, 0)? as usize;
    let (input, output) = input_output(buffers)?;
    let data = input_prefix(input, len)?;
    let counts = data
        .par_chunks(CPU_CHUNK)
        .map(|chunk| {
            let mut cols = vec![0u32; BINS * COLUMNS];
            for (i, &b) in chunk.iter().enumerate() {
                let at = usize::from(b) * COLUMNS + i % COLUMNS;
                cols[at] = cols[at].wrapping_add(1);
            }
            let mut bins = [0u32; BINS];
            for (bin, col) in bins.iter_mut().zip(cols.chunks_exact(COLUMNS)) {
                *bin = col.iter().fold(0u32, |a, &c| a.wrapping_add(c));
            }
            bins
        })
        .reduce(
            || [0u32; BINS],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(b) {
                    *x = x.wrapping_add(y);
                }
                a
            },
        );
    write_words(output, &counts)
}
