//! `scan`: every position where a byte pattern (1 to [`MAX_PATTERN_BYTES`] bytes)
//! starts in the input, overlapping occurrences included.
//!
//! Variant 0 (conservative) checks every position against the whole pattern and writes
//! a match bitmap. Variant 1 (speculative) is a fused, tiled prefilter + confirm that
//! speculates that matches are sparse: each workgroup (on the CPU: each rayon task)
//! takes one [`SCAN_TILE_BYTES`] tile, prefilters it on the pattern's first byte (a
//! word of four positions at a time on the GPU), confirms candidates using the tile's
//! bytes alone and lists the matches in the tile's slot of [`SCAN_SLOT_CAPACITY`]
//! positions — a slot is 72 bytes where the bitmap of a tile is 1 KiB, so little comes
//! back to the host and little is left for it to decode. A tile *rolls back* — writes
//! no positions, and [`Workload::answer`] confirms it serially on the host — when a
//! candidate whose in-tile prefix matches runs past the tile's end (it cannot be
//! decided there), or when the tile has more matches than its slot holds. Dense
//! matches make tiles roll back often, which the counter tail reports to the engine's
//! adaptive speculator; on sparse matches variant 1 is the faster one, on dense ones
//! variant 0.
//!
//! The pattern travels in the push constants (32 bytes: `len`, `pattern length`,
//! `tiles`, a reserved word, then the pattern zero padded to 16 bytes).
//!
//! Output of variant 0, `u32` words: the bitmap, `ceil(len / 32)` words (at least one),
//! bit `b` of word `w` set when a match starts at `32 w + b`. Output of variant 1: one
//! slot of 18 words per tile — status (1 committed, 2 rolled back), number of matches,
//! then [`SCAN_SLOT_CAPACITY`] positions of which the first *number* hold the tile's
//! matches in any order (a rolled-back tile's slot holds only its status) — then the
//! 8-byte counter tail: committed tiles, rolled-back tiles.
//!
//! Answer: the sorted match positions, `u32` little-endian each.

use std::sync::Arc;

use rayon::prelude::*;

use super::{
    builtin_variant, check_variant, input_len, input_output, input_prefix, le_word,
    plans_through_binding, push_word, put_words, single_output, text_byte, workgroups_for,
    DispatchPlan, InputShape, Workload, WorkloadError, WORKGROUP_SIZE,
};
use crate::backend::{BufferArg, KernelVariant};
use crate::speculator::{
    encode_counter_tail, split_counter_tail, SpeculationReport, COUNTER_TAIL_BYTES,
};

const NAME: &str = "scan";

/// The pattern [`Scan::default`] (and so [`super::builtin`]) looks for.
pub const DEFAULT_PATTERN: &[u8] = b"photofinish";

/// The longest pattern a scan accepts.
pub const MAX_PATTERN_BYTES: usize = 16;

/// Bytes per tile of the fused variant (`TILE_BYTES` in `shaders/scan_fused.wgsl`: 256
/// invocations × 32 positions).
pub const SCAN_TILE_BYTES: usize = 8192;

/// The most matches a tile of the fused variant lists (`SLOT_CAPACITY` in
/// `shaders/scan_fused.wgsl`); a tile with more rolls back.
pub const SCAN_SLOT_CAPACITY: usize = 16;

/// Words per tile slot of the fused variant: status, number of matches, positions.
const SLOT_WORDS: usize = 2 + SCAN_SLOT_CAPACITY;

const PUSH_BYTES: u32 = 32;
const STATUS_COMMITTED: u32 = 1;
const STATUS_ROLLED_BACK: u32 = 2;

/// The `scan` workload (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pattern: Vec<u8>,
}

impl Default for Scan {
    fn default() -> Self {
        Scan {
            pattern: DEFAULT_PATTERN.to_vec(),
        }
    }
}

impl Scan {
    /// A scan for `pattern`, which must be 1 to [`MAX_PATTERN_BYTES`] bytes.
    pub fn new(pattern: &[u8]) -> Result<Self, WorkloadError> {
        if pattern.is_empty() || pattern.len() > MAX_PATTERN_BYTES {
            return Err(WorkloadError::BadInput {
                workload: NAME,
                reason: format!(
                    "the pattern is {} bytes; give 1 to {MAX_PATTERN_BYTES}",
                    pattern.len()
                ),
            });
        }
        Ok(Scan {
            pattern: pattern.to_vec(),
        })
    }

    /// The pattern this scan looks for.
    pub fn pattern(&self) -> &[u8] {
        &self.pattern
    }

    fn push_constants(&self, len: u32, tiles: u32) -> Vec<u8> {
        let mut push = Vec::with_capacity(PUSH_BYTES as usize);
        push.extend_from_slice(&len.to_le_bytes());
        // The pattern is at most 16 bytes.
        push.extend_from_slice(&(self.pattern.len() as u32).to_le_bytes());
        push.extend_from_slice(&tiles.to_le_bytes());
        push.extend_from_slice(&0u32.to_le_bytes());
        push.extend_from_slice(&self.pattern);
        push.resize(PUSH_BYTES as usize, 0);
        push
    }

    /// The plan of `variant` for `input`, its input binding made by `bind` (a padded
    /// copy, or the caller's `Arc` itself: `Workload::plan_shared`).
    fn plan_binding(
        &self,
        variant: usize,
        input: &[u8],
        bind: impl FnOnce() -> BufferArg,
    ) -> Result<DispatchPlan, WorkloadError> {
        check_variant(NAME, variant, 2)?;
        let len = input_len(NAME, input)?;
        let words = bitmap_words(input.len());
        let tile_count = tiles(input.len());
        let (out_bytes, workgroups) = if variant == 0 {
            (
                words.max(1) * 4,
                workgroups_for(words as u64, u64::from(WORKGROUP_SIZE)),
            )
        } else {
            (
                fused_output_bytes(tile_count),
                workgroups_for(tile_count as u64, 1),
            )
        };
        Ok(DispatchPlan {
            buffers: vec![bind(), BufferArg::Zeroed(out_bytes as u64)],
            // Tiles are fewer than positions, which fit in u32.
            push_constants: self.push_constants(len, tile_count as u32),
            workgroups,
        })
    }
}

/// Bitmap words for `len` positions.
fn bitmap_words(len: usize) -> usize {
    len.div_ceil(32)
}

fn tiles(len: usize) -> usize {
    len.div_ceil(SCAN_TILE_BYTES)
}

/// Bytes of the fused variant's output for `tiles` tiles.
fn fused_output_bytes(tiles: usize) -> usize {
    tiles * SLOT_WORDS * 4 + COUNTER_TAIL_BYTES
}

/// True when `pattern` starts at `p` of `input`.
fn matches_at(input: &[u8], pattern: &[u8], p: usize) -> bool {
    input.get(p..p + pattern.len()) == Some(pattern)
}

/// The positions in `range` of `input` where `pattern` starts (a match may run past
/// the range's end), in order, overlapping ones included: the serial confirm of the
/// host, a vectorised substring search (`memchr::memmem`) restarted one byte after each
/// match.
fn matches_in<'a>(
    input: &'a [u8],
    pattern: &'a [u8],
    range: std::ops::Range<usize>,
) -> impl Iterator<Item = usize> + 'a {
    let hay_end = (range.end + pattern.len().saturating_sub(1)).min(input.len());
    let hay = input.get(range.start..hay_end).unwrap_or_default();
    let finder = memchr::memmem::Finder::new(pattern);
    let mut at = 0;
    std::iter::from_fn(move || {
        let p = at + finder.find(hay.get(at..)?)?;
        at = p + 1;
        Some(range.start + p)
    })
}

/// A match position as the answer holds it: `u32` little-endian (positions are below
/// `MAX_INPUT_BYTES`, so they fit).
fn position_bytes(p: usize) -> [u8; 4] {
    (p as u32).to_le_bytes()
}

/// Appends the positions of the set bits of `bitmap` (little-endian words).
fn push_bitmap_positions(bitmap: &[u8], positions: &mut Vec<u8>) {
    for (i, word) in bitmap.chunks_exact(4).enumerate() {
        let mut bits = le_word(word);
        while bits != 0 {
            let b = bits.trailing_zeros() as usize;
            positions.extend_from_slice(&position_bytes(i * 32 + b));
            bits &= bits - 1;
        }
    }
}

impl Workload for Scan {
    fn name(&self) -> &'static str {
        NAME
    }

    fn variants(&self) -> Vec<KernelVariant> {
        vec![
            builtin_variant(
                "scan/per-position",
                include_bytes!(concat!(env!("OUT_DIR"), "/scan_check.spv")),
                PUSH_BYTES,
                Arc::new(per_position_cpu),
            ),
            builtin_variant(
                "scan/fused-tiled",
                include_bytes!(concat!(env!("OUT_DIR"), "/scan_fused.spv")),
                PUSH_BYTES,
                Arc::new(fused_tiled_cpu),
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
        let mut positions = Vec::new();
        if variant == 0 {
            let words = bitmap_words(input.len());
            let bitmap = single_output(NAME, variant, outputs, words.max(1) * 4)?;
            push_bitmap_positions(bitmap, &mut positions);
            return Ok(positions);
        }
        let tile_count = tiles(input.len());
        let out = single_output(NAME, variant, outputs, fused_output_bytes(tile_count))?;
        let bad = |reason: String| WorkloadError::BadOutput {
            workload: NAME,
            variant,
            reason,
        };
        let (slots, report) =
            split_counter_tail(out).ok_or_else(|| bad("no counter tail".to_owned()))?;
        let (mut committed, mut rolled_back) = (0u32, 0u32);
        let mut listed = Vec::with_capacity(SCAN_SLOT_CAPACITY);
        for (t, slot) in slots.chunks_exact(SLOT_WORDS * 4).enumerate() {
            let start = t * SCAN_TILE_BYTES;
            let end = (start + SCAN_TILE_BYTES).min(input.len());
            let word = |i: usize| le_word(&slot[4 * i..]);
            match word(0) {
                STATUS_COMMITTED => {
                    committed += 1;
                    let count = word(1) as usize;
                    if count > SCAN_SLOT_CAPACITY {
                        return Err(bad(format!(
                            "tile {t} lists {count} matches, more than its {SCAN_SLOT_CAPACITY}"
                        )));
                    }
                    listed.clear();
                    listed.extend((0..count).map(|i| word(2 + i) as usize));
                    listed.sort_unstable();
                    if let Some(&p) = listed.iter().find(|&&p| !(start..end).contains(&p)) {
                        return Err(bad(format!("tile {t} lists position {p}, outside it")));
                    }
                    if listed.windows(2).any(|w| w[0] == w[1]) {
                        return Err(bad(format!("tile {t} lists a position twice")));
                    }
                    positions.extend(listed.iter().flat_map(|&p| position_bytes(p)));
                }
                STATUS_ROLLED_BACK => {
                    rolled_back += 1;
                    positions.extend(
                        matches_in(input, &self.pattern, start..end).flat_map(position_bytes),
                    );
                }
                other => return Err(bad(format!("tile {t} has status {other}, not 1 or 2"))),
            }
        }
        if report.committed_tiles != committed || report.rolled_back_tiles != rolled_back {
            return Err(bad(format!(
                "counter tail says {} committed, {} rolled back; the tiles say {committed}, \
                 {rolled_back}",
                report.committed_tiles, report.rolled_back_tiles
            )));
        }
        Ok(positions)
    }

    fn reference(&self, input: &[u8]) -> Vec<u8> {
        matches_in(input, &self.pattern, 0..input.len())
            .flat_map(position_bytes)
            .collect()
    }

    /// Text (lowercase words) with the pattern planted: about once per 256 KiB
    /// (`Uniform`: rare), once per 4 KiB (`SparseMatches`) or once per 24 bytes
    /// (`DenseMatches`). A plant may overwrite part of the previous one.
    fn generate(&self, shape: InputShape, len: usize, seed: u64) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let one_in = match shape {
            InputShape::SparseMatches => 4096,
            InputShape::DenseMatches => 24,
            _ => 256 * 1024,
        };
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            if rng.u32(..one_in) == 0 {
                let n = self.pattern.len().min(len - out.len());
                out.extend_from_slice(&self.pattern[..n]);
            } else {
                out.push(text_byte(&mut rng));
            }
        }
        out
    }

    fn shapes(&self) -> Vec<InputShape> {
        vec![
            InputShape::Uniform,
            InputShape::SparseMatches,
            InputShape::DenseMatches,
        ]
    }

    fn speculation_report(&self, variant: usize, outputs: &[Vec<u8>]) -> Option<SpeculationReport> {
        match (variant, outputs) {
            (1, [out]) => split_counter_tail(out).map(|(_, report)| report),
            _ => None,
        }
    }
}

/// The pattern and input length a CPU scan kernel was given.
fn scan_params(push: &[u8]) -> Result<(usize, Vec<u8>), String> {
    let len = push_word(push, 0)? as usize;
    let pat_len = push_word(push, 1)? as usize;
    let pattern = push
        .get(16..16 + pat_len)
        .filter(|_| (1..=MAX_PATTERN_BYTES).contains(&pat_len))
        .ok_or_else(|| format!("pattern length {pat_len} is not 1 to {MAX_PATTERN_BYTES}"))?;
    Ok((len, pattern.to_vec()))
}

/// CPU variant 0: each bitmap word's 32 positions checked against the whole pattern
/// (first byte first, as the shader's byte-by-byte loop exits early).
fn per_position_cpu(buffers: &mut [Vec<u8>], push: &[u8], _: [u32; 3]) -> Result<(), String> {
    let (len, pattern) = scan_params(push)?;
    let (input, output) = input_output(buffers)?;
    let data = input_prefix(input, len)?;
    if output.len() != bitmap_words(len).max(1) * 4 {
        return Err(format!(
            "bitmap is {} bytes, expected {}",
            output.len(),
            bitmap_words(len).max(1) * 4
        ));
    }
    let first = pattern[0];
    // A rayon task per 256 words (8 KiB of input), not per word.
    output
        .par_chunks_mut(4 * 256)
        .enumerate()
        .for_each(|(chunk, words)| {
            for (i, word) in words.chunks_exact_mut(4).enumerate() {
                let base = (chunk * 256 + i) * 32;
                let bits = (0..32)
                    .filter(|b| {
                        let p = base + b;
                        data.get(p) == Some(&first) && matches_at(data, &pattern, p)
                    })
                    .fold(0u32, |bits, b| bits | 1 << b);
                word.copy_from_slice(&bits.to_le_bytes());
            }
        });
    Ok(())
}

/// CPU variant 1: tiles in parallel, prefiltered on the first byte, confirmed within
/// the tile and listed in its slot; a tile with a candidate running past its end, or
/// with more matches than its slot holds, rolls back.
fn fused_tiled_cpu(buffers: &mut [Vec<u8>], push: &[u8], _: [u32; 3]) -> Result<(), String> {
    let (len, pattern) = scan_params(push)?;
    let (input, output) = input_output(buffers)?;
    let data = input_prefix(input, len)?;
    let tile_count = tiles(len);
    let expected = fused_output_bytes(tile_count);
    if output.len() != expected {
        return Err(format!(
            "output is {} bytes, expected {expected}",
            output.len()
        ));
    }
    let (slots, tail) = output.split_at_mut(tile_count * SLOT_WORDS * 4);
    let first = pattern[0];
    let rolled_back: usize = slots
        .par_chunks_mut(SLOT_WORDS * 4)
        .enumerate()
        .map(|(t, slot)| {
            let start = t * SCAN_TILE_BYTES;
            let tile = &data[start..(start + SCAN_TILE_BYTES).min(len)];
            let mut found = Vec::with_capacity(SCAN_SLOT_CAPACITY);
            let mut roll_back = false;
            for q in (0..tile.len()).filter(|&q| tile[q] == first) {
                if start + q + pattern.len() > len {
                    continue;
                }
                let in_tile = pattern.len().min(tile.len() - q);
                if tile[q..q + in_tile] != pattern[..in_tile] {
                    continue;
                }
                if in_tile < pattern.len() || found.len() == SCAN_SLOT_CAPACITY {
                    roll_back = true;
                    break;
                }
                // Positions are below MAX_INPUT_BYTES, so they fit in u32.
                found.push((start + q) as u32);
            }
            // The slot has room for 2 + SCAN_SLOT_CAPACITY words, `found` at most
            // SCAN_SLOT_CAPACITY.
            if roll_back {
                put_words(slot, &[STATUS_ROLLED_BACK]);
                1
            } else {
                put_words(slot, &[STATUS_COMMITTED, found.len() as u32]);
                put_words(&mut slot[8..], &found);
                0
            }
        })
        .sum();
    let committed = tile_count - rolled_back;
    // Tiles are fewer than positions, which fit in u32.
    tail.copy_from_slice(&encode_counter_tail(SpeculationReport::from_counts(
        committed as u32,
        rolled_back as u32,
    )));
    Ok(())
}
