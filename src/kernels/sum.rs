//! `sum`: the wrapping sum of the input read as little-endian `u32` words — the built-in
//! workload whose winner flips with the batch's size.
//!
//! The answer is `reduce`'s (an input whose length is not a multiple of 4 has its last
//! word zero extended); what differs is how the work is spread:
//! - variant 0 (conservative, `sum/wide-grid`) always launches [`SUM_GRID_WORKGROUPS`]
//!   workgroups, whatever the input's size (one for none but an empty input): each loads
//!   packed `vec4<u32>`s in a grid-stride loop, tree-reduces in shared memory and adds
//!   its partial with one global atomic. On the CPU backend it is a rayon sum in as many
//!   tasks as the plan has workgroups, each over a contiguous run of vec4s, summed in
//!   four lanes. It pays the whole grid (or every task) on every batch, so it is slow on
//!   small ones and spreads large ones over every core.
//! - variant 1 (speculative, `sum/one-workgroup`) launches one workgroup, which loops
//!   over the whole input one word per invocation at a time (the loop strides by the
//!   grid, so it is correct for any count). On the CPU backend that workgroup runs as
//!   written on the calling thread, invocation after invocation, each striding through
//!   the input 1 KiB at a time. It costs almost nothing to start and uses one core and
//!   its strided loads, so it wins on small batches and loses on large ones.
//!
//! Its GPU code is `reduce`'s: the wide grid runs `reduce/vec4`'s shader, the one
//! workgroup `reduce/scalar`'s (both loop grid-stride); only the plans and the CPU code
//! are `sum`'s own.
//!
//! Where the winner flips is measured by `examples/sum_flip.rs`: on a 2-core machine's
//! CPU backend the one-workgroup variant is about 20× faster at 4 KiB, the two equal
//! near 64 KiB, and the wide grid about 3× faster at 256 KiB and 13× at 8 MiB.
//!
//! Answer: the sum modulo 2^32, `u32` little-endian (4 bytes).

use std::sync::Arc;

use rayon::prelude::*;

use super::{
    builtin_variant, check_variant, input_len, input_output, input_prefix, le_word,
    padded_word_sum, plans_through_binding, push_word, single_output, word_sum, write_words,
    DispatchPlan, InputShape, Workload, WorkloadError,
};
use crate::backend::{BufferArg, KernelVariant};

const NAME: &str = "sum";
/// How many variants `sum` has.
const VARIANTS: usize = 2;
/// The workgroups of the wide-grid variant, whatever the input's size (an empty input:
/// none). On the CPU backend, its rayon tasks.
pub const SUM_GRID_WORKGROUPS: u32 = 64;

/// The `sum` workload (see the module docs).
#[derive(Debug, Default, Clone, Copy)]
pub struct Sum;

impl Sum {
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
        let groups = match (words, variant) {
            (0, _) => 0,
            (_, 0) => SUM_GRID_WORKGROUPS,
            _ => 1,
        };
        Ok(DispatchPlan {
            buffers: vec![bind(), BufferArg::Zeroed(4)],
            push_constants: words.to_le_bytes().to_vec(),
            workgroups: [groups, 1, 1],
        })
    }
}

impl Workload for Sum {
    fn name(&self) -> &'static str {
        NAME
    }

    fn variants(&self) -> Vec<KernelVariant> {
        vec![
            builtin_variant(
                "sum/wide-grid",
                super::reduce::REDUCE_VEC4_SPV,
                4,
                Arc::new(wide_grid_cpu),
            ),
            builtin_variant(
                "sum/one-workgroup",
                super::reduce::REDUCE_SCALAR_SPV,
                4,
                Arc::new(one_workgroup_cpu),
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

    /// Like a column of sizes or counts: most values small, every twentieth one of any
    /// size (so the sum wraps on large inputs).
    fn generate(&self, _shape: InputShape, len: usize, seed: u64) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut out = vec![0u8; len];
        for word in out.chunks_mut(4) {
            let v = if rng.u8(..20) == 0 {
                rng.u32(..)
            } else {
                rng.u32(..4096)
            };
            let n = word.len();
            word.copy_from_slice(&v.to_le_bytes()[..n]);
        }
        out
    }
}

/// CPU variant 0: one rayon task per planned workgroup (never fewer than one), each
/// summing a contiguous run of words as variant 1 does, their partials added. Each task
/// is its own rayon job (`with_max_len(1)`), so the fixed cost is the grid's, whatever
/// the size.
fn wide_grid_cpu(buffers: &mut [Vec<u8>], push: &[u8], groups: [u32; 3]) -> Result<(), String> {
    let words = push_word(push, 0)? as usize;
    let (input, output) = input_output(buffers)?;
    let data = input_prefix(input, words * 4)?;
    let tasks = (groups[0] as usize).max(1);
    let per_task = words.div_ceil(tasks);
    let sum = (0..tasks)
        .into_par_iter()
        .with_max_len(1)
        .map(|task| {
            let start = (task * per_task).min(words);
            let end = (start + per_task).min(words);
            word_sum(&data[start * 4..end * 4])
        })
        .reduce(|| 0, u32::wrapping_add);
    write_words(output, &[sum])
}

/// The invocations of `sum/one-workgroup`'s one workgroup (its `@workgroup_size`).
const WORKGROUP_INVOCATIONS: usize = 256;

/// CPU variant 1: the shader's one workgroup run as written, on the calling thread, one
/// invocation after another: invocation `i` sums words `i`, `i + 256`, `i + 512`… (its
/// loop strides by the grid, which is this one workgroup), and the partials are added.
/// Each invocation's loads are 1 KiB apart, so a large input is walked 256 times in
/// strides, every cache line fetched again by each of the 16 invocations whose words
/// it holds: cheap while the input sits in the first-level cache, slow once it does not.
fn one_workgroup_cpu(buffers: &mut [Vec<u8>], push: &[u8], _: [u32; 3]) -> Result<(), String> {
    let words = push_word(push, 0)? as usize;
    let (input, output) = input_output(buffers)?;
    let data = input_prefix(input, words * 4)?;
    let mut sum = 0u32;
    for invocation in 0..WORKGROUP_INVOCATIONS.min(words) {
        let mut acc = 0u32;
        let mut word = invocation;
        while word < words {
            acc = acc.wrapping_add(le_word(&data[word * 4..word * 4 + 4]));
            word += WORKGROUP_INVOCATIONS;
        }
        sum = sum.wrapping_add(acc);
    }
    write_words(output, &[sum])
}
