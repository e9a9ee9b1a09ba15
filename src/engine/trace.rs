//! Trace-JIT (SPEC §4, policy I2): a per-kernel (per-shader) history of hits and misses
//! that feeds `decide_trace_jit_speculation`, and the background pre-load a Speculate
//! verdict triggers.
//!
//! A batch is a **hit** when its shape (buffer sizes and workgroup counts) is among the
//! last [`TRACE_WINDOW`] shapes of the kernel's batches on its queue and every variant
//! it needed was already loaded on its device; otherwise it is a **miss** (a shape new
//! to the queue, or a variant had to be loaded on the critical path). The prediction is
//! that the queue's next batch has the shape of this one; its confidence is the share
//! of the queue's last [`TRACE_WINDOW`] batches that had it. The windows are per queue
//! (`lane::Lane`) so that the workers of a hot kernel do not all write one shared
//! history every batch; the kernel's hit and miss counts are the queues' sums.
//! The miss cost is the measured load time of the kernel's speculative variant (at
//! registration and on every on-demand load); the pre-load's cost is the work it
//! wastes when the prediction is wrong, `miss_cost × (1 − confidence)`.
//!
//! On Speculate the predicted variant — the speculative one, which registration loads on
//! the first device only — is loaded on rayon, in the background, on every other live
//! device that lacks it, once per device, and `Event::PreSpecialised` is published. A
//! rejected kernel never needs it, so nothing is pre-loaded for it. This module decides
//! nothing itself: the verdict is the policy's. It holds the state (the windows, the
//! miss cost, the pre-loads running); `trace_jit.rs` notes batches and pre-loads.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::backend::DispatchJob;
use crate::policy::TraceJitInputs;

/// How many recent batches of a kernel the shape prediction looks at.
pub(crate) const TRACE_WINDOW: usize = 16;

/// What trace-JIT has seen of one kernel (`KernelStats::trace`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TraceStats {
    /// Batches whose shape was seen recently and whose variants were already loaded.
    pub hits: u32,
    /// Batches with a new shape or a variant loaded on their critical path.
    pub misses: u32,
    /// Background pre-loads trace-JIT completed for this kernel.
    pub preloads: u32,
    /// The measured cost of loading the speculative variant (a smoothed mean), ns.
    pub miss_cost_ns: u64,
}

/// What trace-JIT keeps for a kernel as a whole: the miss cost and the pre-loads done.
/// Written only when a variant loads and read per batch; the per-batch history is per
/// queue ([`TraceWindow`] in each `lane::Lane`).
#[derive(Debug, Default)]
pub(crate) struct TraceState {
    /// The measured cost of loading the speculative variant (a smoothed mean), ns.
    miss_cost_ns: AtomicU64,
    /// Background pre-loads completed.
    preloads: AtomicU32,
}

impl TraceState {
    /// Folds one measured load of the speculative variant into the miss cost.
    pub(crate) fn note_load(&self, ns: u64) {
        let ns = ns.max(1);
        let fold = |cost: u64| {
            Some(if cost == 0 {
                ns
            } else {
                cost.saturating_mul(3).saturating_add(ns) / 4
            })
        };
        // `fold` always answers `Some`: the update cannot fail.
        let _ = self
            .miss_cost_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, fold);
    }

    /// The miss cost so far (0 before any load was measured).
    pub(crate) fn miss_cost_ns(&self) -> u64 {
        self.miss_cost_ns.load(Ordering::Relaxed)
    }

    /// Counts a completed background pre-load.
    pub(crate) fn note_preload(&self) {
        self.preloads.fetch_add(1, Ordering::Relaxed);
    }

    /// Pre-loads completed so far.
    pub(crate) fn preloads(&self) -> u32 {
        self.preloads.load(Ordering::Relaxed)
    }
}

/// One queue's recent shapes of a kernel and its hits and misses. Every batch updates
/// it, so it is kept per queue: one window shared by all the kernel's workers had every
/// batch take the same lock. The prediction is then "the next batch on this queue has
/// this shape"; `KernelStats::trace` sums the queues' counts.
#[derive(Debug, Default)]
pub(crate) struct TraceWindow {
    recent: VecDeque<u64>,
    pub(crate) hits: u32,
    pub(crate) misses: u32,
}

impl TraceWindow {
    /// Records one batch of `shape`; `loaded` says whether a variant had to be loaded
    /// for it, `miss_cost_ns` is the kernel's. Returns what the policy takes for the
    /// prediction "the next batch has this shape".
    pub(crate) fn note_batch(
        &mut self,
        shape: u64,
        loaded: bool,
        miss_cost_ns: u64,
    ) -> TraceJitInputs {
        let seen = self.recent.contains(&shape);
        if seen && !loaded {
            self.hits = self.hits.saturating_add(1);
        } else {
            self.misses = self.misses.saturating_add(1);
        }
        if self.recent.len() == TRACE_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(shape);
        let same = self.recent.iter().filter(|&&s| s == shape).count();
        let confidence_bps = u32::try_from(same * 10_000 / self.recent.len()).unwrap_or(10_000);
        TraceJitInputs {
            shader_hit_count: self.hits,
            prediction_confidence_bps: confidence_bps,
            speculative_spec_cost_ns: u64::try_from(
                u128::from(miss_cost_ns) * u128::from(10_000 - confidence_bps.min(10_000)) / 10_000,
            )
            .unwrap_or(u64::MAX),
            miss_cost_ns,
        }
    }
}

/// The shape of a dispatch: its buffer sizes and workgroup counts, hashed.
pub(crate) fn shape_of(job: &DispatchJob) -> u64 {
    let sizes = job.buffers.iter().map(|b| b.len());
    let words = sizes.chain(job.workgroups.iter().map(|&w| u64::from(w)));
    words.fold(0xcbf2_9ce4_8422_2325_u64, |h, w| {
        (h ^ w).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Background pre-loads still running; shutdown waits for them.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    count: Mutex<usize>,
    idle: Condvar,
}

impl Pending {
    pub(super) fn enter(self: &Arc<Self>) -> PendingGuard {
        *self.count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        PendingGuard(Arc::clone(self))
    }

    /// Blocks until no pre-load is running.
    pub(crate) fn wait_idle(&self) {
        let mut count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        while *count > 0 {
            count = self.idle.wait(count).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// One pre-load running; counted until dropped.
pub(super) struct PendingGuard(Arc<Pending>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let mut count = self.0.count.lock().unwrap_or_else(|p| p.into_inner());
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.0.idle.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{decide_trace_jit_speculation, TraceJitDecision};

    #[test]
    fn a_repeated_shape_becomes_hot_and_a_new_one_is_a_miss() {
        let cost = TraceState::default();
        assert_eq!(cost.miss_cost_ns(), 0);
        cost.note_load(1_000);
        assert_eq!(cost.miss_cost_ns(), 1_000);
        cost.note_load(2_000);
        assert_eq!(cost.miss_cost_ns(), 1_250, "a smoothed mean, α = 1/4");
        let mut trace = TraceWindow::default();
        let first = trace.note_batch(7, false, 1_000);
        assert_eq!((trace.hits, trace.misses), (0, 1));
        assert_eq!(first.prediction_confidence_bps, 10_000);
        for _ in 0..8 {
            trace.note_batch(7, false, 1_000);
        }
        let hot = trace.note_batch(7, false, 1_000);
        assert_eq!(hot.shader_hit_count, 9);
        assert_eq!(hot.miss_cost_ns, 1_000);
        assert_eq!(hot.speculative_spec_cost_ns, 0);
        assert!(matches!(
            decide_trace_jit_speculation(hot),
            TraceJitDecision::Speculate {
                expected_savings_ns: 1_000
            }
        ));
        // A seen shape that needed a load is a miss too.
        trace.note_batch(7, true, 1_000);
        assert_eq!(trace.misses, 2);
        // Alternating shapes halve the confidence: below the threshold.
        let mut mixed = TraceWindow::default();
        let mut last = TraceJitInputs::default();
        for i in 0..40u64 {
            last = mixed.note_batch(i % 2, false, 1_000);
        }
        assert_eq!(last.prediction_confidence_bps, 5_000);
        assert_eq!(
            decide_trace_jit_speculation(last),
            TraceJitDecision::HoldSteady
        );
    }
}
