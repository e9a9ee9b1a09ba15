//! Trace-JIT (SPEC §4 and §12, policy I2): per kernel and tuning key, which key comes
//! next, and what a wrong or a missing pre-specialisation costs — the numbers
//! `decide_trace_jit_speculation` takes.
//!
//! **History.** Each queue's lane (`lane::Lane`) keeps, for every tuning key of the
//! kernel it has run, how often each key followed it on that queue (the *transitions*,
//! at most [`SUCCESSORS`] per key, [`TRACED_KEYS`] keys), and how often the size class
//! stepped by each amount from one batch to the next with the application key kept
//! (the *steps*, at most [`SUCCESSORS`]). It is per queue so that the workers of a hot
//! kernel do not all write one history every batch.
//!
//! **Prediction.** After a batch of key K, the prediction is the key that followed K
//! most often; its hits are that transition's count and its confidence that count's
//! share of K's transitions. When K's own transitions are too few to be hot
//! (fewer than `TRACE_JIT_HOT_SHAPE_THRESHOLD`), the most frequent step is applied to K
//! instead (K's class × 2^step, its application key kept) with the step's count and
//! share: a trace that walks its sizes in order (a sweep, a pyramid) predicts a key it
//! has never run.
//!
//! **Costs, measured.** The *compile cost* is a smoothed mean of every pipeline
//! compile of the kernel (a variant's or a specialisation's, on a batch's critical path
//! or in the background). The *miss cost* is a smoothed mean of the compiles a batch
//! waited for on its own critical path: the first-batch latency penalty of a key whose
//! pipeline was not ready. A pre-specialisation for a right prediction is work the
//! batch would have done anyway; only a wrong one is extra, so the speculative cost is
//! the compile cost times the share of predictions that miss, `compile × (1 −
//! confidence)`.
//!
//! **Hits and misses.** A batch is a hit when every pipeline it needed was ready (or
//! being compiled by a pre-specialisation it waited for), a miss when it compiled one
//! on its own critical path.
//!
//! This module decides nothing itself: the verdict is the policy's; `trace_jit.rs`
//! notes batches, asks it and pre-specialises.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::policy::{TraceJitInputs, TRACE_JIT_HOT_SHAPE_THRESHOLD};

use super::tuning::TuningKey;

/// Successors kept per key, and steps kept per lane (the least counted goes first).
pub(crate) const SUCCESSORS: usize = 8;
/// Keys whose transitions a lane keeps (the least recently run goes first).
pub(crate) const TRACED_KEYS: usize = 64;

/// What trace-JIT has seen of one kernel (`KernelStats::trace`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TraceStats {
    /// Batches whose pipelines were all ready (compiled earlier or ahead of them).
    pub hits: u32,
    /// Batches that compiled a pipeline on their own critical path.
    pub misses: u32,
    /// Background pre-specialisations (and pre-loads) trace-JIT completed.
    pub preloads: u32,
    /// The measured first-batch latency penalty: a smoothed mean of the compiles batches
    /// waited for on their critical path, ns (0 before one was measured).
    pub miss_cost_ns: u64,
    /// The measured compile cost: a smoothed mean of every pipeline compile, ns.
    pub compile_cost_ns: u64,
    /// Pre-specialisations a batch of their key then used.
    pub pre_used: u32,
    /// Pre-specialisations no batch had used when the engine shut down.
    pub pre_wasted: u32,
}

/// What trace-JIT keeps for a kernel as a whole: the measured costs and the counts of
/// pre-specialisations. Written when a pipeline compiles and when a pre-specialisation
/// is used; the per-batch history is per queue ([`TraceWindow`] in each `lane::Lane`).
#[derive(Debug, Default)]
pub(crate) struct TraceState {
    /// Every compile, smoothed, ns.
    compile_ns: AtomicU64,
    /// Compiles on a batch's critical path, smoothed, ns.
    miss_cost_ns: AtomicU64,
    /// Background pre-specialisations completed.
    preloads: AtomicU32,
    /// Pre-specialisations used by a batch.
    used: AtomicU32,
    /// Pre-specialisations never used.
    wasted: AtomicU32,
}

/// Folds `ns` into a smoothed mean (α = 1/4; the first sample is taken as it is).
fn fold(mean: &AtomicU64, ns: u64) {
    let ns = ns.max(1);
    let step = |cost: u64| {
        Some(if cost == 0 {
            ns
        } else {
            cost.saturating_mul(3).saturating_add(ns) / 4
        })
    };
    // `step` always answers `Some`: the update cannot fail.
    let _ = mean.fetch_update(Ordering::Relaxed, Ordering::Relaxed, step);
}

impl TraceState {
    /// Folds one measured compile (any pipeline, anywhere) into the compile cost.
    pub(crate) fn note_compile(&self, ns: u64) {
        fold(&self.compile_ns, ns);
    }

    /// Folds one compile a batch waited for on its critical path into the miss cost.
    pub(crate) fn note_miss(&self, ns: u64) {
        fold(&self.miss_cost_ns, ns);
    }

    /// The compile cost so far (0 before any compile was measured).
    pub(crate) fn compile_ns(&self) -> u64 {
        self.compile_ns.load(Ordering::Relaxed)
    }

    /// The miss cost so far (0 before a batch compiled on its critical path).
    pub(crate) fn miss_cost_ns(&self) -> u64 {
        self.miss_cost_ns.load(Ordering::Relaxed)
    }

    /// Counts a completed background pre-specialisation.
    pub(crate) fn note_preload(&self) {
        self.preloads.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a pre-specialisation a batch used (`true`) or one never used.
    pub(crate) fn note_outcome(&self, used: bool) {
        let count = if used { &self.used } else { &self.wasted };
        count.fetch_add(1, Ordering::Relaxed);
    }

    /// The kernel-wide part of [`TraceStats`] (hits and misses are the lanes').
    pub(crate) fn stats(&self) -> TraceStats {
        TraceStats {
            preloads: self.preloads.load(Ordering::Relaxed),
            miss_cost_ns: self.miss_cost_ns(),
            compile_cost_ns: self.compile_ns(),
            pre_used: self.used.load(Ordering::Relaxed),
            pre_wasted: self.wasted.load(Ordering::Relaxed),
            ..TraceStats::default()
        }
    }
}

/// Counts of what followed, the most counted kept.
#[derive(Debug, Clone)]
struct Counts<T: PartialEq + Copy>(Vec<(T, u32)>);

impl<T: PartialEq + Copy> Default for Counts<T> {
    fn default() -> Self {
        Counts(Vec::new())
    }
}

impl<T: PartialEq + Copy> Counts<T> {
    /// Counts one more `what`; a new one replaces the least counted when full.
    fn add(&mut self, what: T) {
        if let Some(entry) = self.0.iter_mut().find(|(w, _)| *w == what) {
            entry.1 = entry.1.saturating_add(1);
            return;
        }
        if self.0.len() == SUCCESSORS {
            if let Some(least) = (0..self.0.len()).min_by_key(|&i| self.0[i].1) {
                self.0.swap_remove(least);
            }
        }
        self.0.push((what, 1));
    }

    /// The most counted (the earliest counted of a tie), its count and its share of
    /// all counts in basis points.
    fn best(&self) -> Option<(T, u32, u32)> {
        let total: u64 = self.0.iter().map(|&(_, n)| u64::from(n)).sum();
        let (what, n) = self
            .0
            .iter()
            .copied()
            .reduce(|best, e| if e.1 > best.1 { e } else { best })?;
        let share = u64::from(n) * 10_000 / total.max(1);
        Some((what, n, u32::try_from(share).unwrap_or(10_000)))
    }
}

/// What a lane predicts after a batch: the next key and the policy's inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Prediction {
    /// The key predicted to come next.
    pub(crate) next: TuningKey,
    /// What `decide_trace_jit_speculation` takes for it.
    pub(crate) inputs: TraceJitInputs,
}

/// One queue's history of a kernel's tuning keys, and its hits and misses. Every
/// batch updates it, so it is kept per queue: one history shared by all the kernel's
/// workers had every batch take the same lock. `KernelStats::trace` sums the queues'
/// counts.
#[derive(Debug, Default)]
pub(crate) struct TraceWindow {
    /// The key of the last batch on this queue.
    last: Option<TuningKey>,
    /// Per key (most recently run last): the keys that followed it.
    successors: Vec<(TuningKey, Counts<TuningKey>)>,
    /// Size-class steps between consecutive batches of one application key.
    steps: Counts<i8>,
    pub(crate) hits: u32,
    pub(crate) misses: u32,
    /// The inputs of the last prediction (the dispatch policy's bundle reads them).
    pub(crate) last_inputs: TraceJitInputs,
}

impl TraceWindow {
    /// Records one batch of `key`; `compiled`: it compiled a pipeline on its critical
    /// path. Returns the prediction for the next batch, with the kernel's measured
    /// `compile_ns` and `miss_cost_ns` (see the module's story), or `None` when
    /// nothing is known to follow `key`.
    pub(crate) fn note_batch(
        &mut self,
        key: TuningKey,
        compiled: bool,
        (compile_ns, miss_cost_ns): (u64, u64),
    ) -> Option<Prediction> {
        if compiled {
            self.misses = self.misses.saturating_add(1);
        } else {
            self.hits = self.hits.saturating_add(1);
        }
        if let Some(prev) = self.last.replace(key) {
            self.counts_of(prev).add(key);
            if prev.app_key() == key.app_key() {
                if let Ok(step) =
                    i8::try_from(i32::from(key.class_log2()) - i32::from(prev.class_log2()))
                {
                    self.steps.add(step);
                }
            }
        }
        // `key` is now the most recently run.
        if let Some(at) = self.successors.iter().position(|(k, _)| *k == key) {
            let entry = self.successors.remove(at);
            self.successors.push(entry);
        }
        let own = self
            .successors
            .last()
            .filter(|(k, _)| *k == key)
            .and_then(|(_, c)| c.best());
        let hot = |n: u32| n >= TRACE_JIT_HOT_SHAPE_THRESHOLD;
        let by_step = || {
            let (step, n, share) = self.steps.best()?;
            Some((key.stepped(step)?, n, share))
        };
        let (next, hits, confidence) = match own {
            Some(own) if hot(own.1) => own,
            _ => match by_step() {
                Some(step) if hot(step.1) => step,
                _ => own.or_else(by_step)?,
            },
        };
        let wasted = u128::from(compile_ns) * u128::from(10_000 - confidence.min(10_000)) / 10_000;
        let inputs = TraceJitInputs {
            shader_hit_count: hits,
            prediction_confidence_bps: confidence,
            speculative_spec_cost_ns: u64::try_from(wasted).unwrap_or(u64::MAX),
            miss_cost_ns,
        };
        self.last_inputs = inputs;
        Some(Prediction { next, inputs })
    }

    /// The successor counts of `key`, made (forgetting the least recently run key when
    /// full) if missing.
    fn counts_of(&mut self, key: TuningKey) -> &mut Counts<TuningKey> {
        let at = match self.successors.iter().position(|(k, _)| *k == key) {
            Some(at) => at,
            None => {
                if self.successors.len() == TRACED_KEYS {
                    self.successors.remove(0);
                }
                self.successors.push((key, Counts::default()));
                self.successors.len() - 1
            }
        };
        &mut self.successors[at].1
    }
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

    fn key(kib: u64) -> TuningKey {
        TuningKey::for_bytes(kib * 1024, None)
    }

    #[test]
    fn costs_are_smoothed_means_of_what_was_measured() {
        let state = TraceState::default();
        assert_eq!((state.compile_ns(), state.miss_cost_ns()), (0, 0));
        state.note_compile(1_000);
        state.note_compile(2_000);
        assert_eq!(state.compile_ns(), 1_250, "a smoothed mean, α = 1/4");
        state.note_miss(4_000);
        assert_eq!(state.stats().miss_cost_ns, 4_000);
    }

    #[test]
    fn alternating_keys_predict_each_other_and_become_hot() {
        let mut trace = TraceWindow::default();
        let (a, b) = (key(4), key(64));
        assert_eq!(trace.note_batch(a, true, (1_000, 1_000)), None);
        let mut last = None;
        for i in 0..17 {
            let k = if i % 2 == 0 { b } else { a };
            last = trace.note_batch(k, false, (1_000, 1_000));
        }
        // The 17th batch was `b` (the 18th of the trace): `a` follows `b`.
        let Some(p) = last else {
            panic!("a prediction");
        };
        assert_eq!(p.next, a);
        assert_eq!(p.inputs.shader_hit_count, 8, "b → a came 8 times");
        assert_eq!(p.inputs.prediction_confidence_bps, 10_000);
        assert_eq!(
            p.inputs.speculative_spec_cost_ns, 0,
            "a sure prediction wastes nothing"
        );
        assert_eq!(
            decide_trace_jit_speculation(p.inputs),
            TraceJitDecision::Speculate {
                expected_savings_ns: 1_000
            }
        );
        assert_eq!((trace.hits, trace.misses), (17, 1));
        assert_eq!(trace.last_inputs, p.inputs);
    }

    #[test]
    fn a_sweep_predicts_a_key_it_never_ran_by_its_step() {
        let mut trace = TraceWindow::default();
        let mut last = None;
        for i in 0..10 {
            last = trace.note_batch(key(4 << i), true, (1_000, 2_000));
        }
        let Some(p) = last else {
            panic!("a prediction");
        };
        assert_eq!(p.next, key(4 << 10), "the next class, never run");
        assert_eq!(p.inputs.shader_hit_count, 9);
        assert!(matches!(
            decide_trace_jit_speculation(p.inputs),
            TraceJitDecision::Speculate { .. }
        ));
    }

    #[test]
    fn an_unpredictable_trace_holds_steady() {
        let mut trace = TraceWindow::default();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut last = None;
        for _ in 0..200 {
            last = trace.note_batch(key(4 << rng.u32(0..6)), false, (1_000, 1_000));
        }
        let Some(p) = last else {
            panic!("a prediction");
        };
        assert!(p.inputs.prediction_confidence_bps < 6_000, "{p:?}");
        assert_eq!(
            decide_trace_jit_speculation(p.inputs),
            TraceJitDecision::HoldSteady
        );
    }

    #[test]
    fn counts_keep_the_most_counted() {
        let mut counts = Counts::default();
        for i in 0..20u32 {
            counts.add(i % 10);
        }
        counts.add(3);
        assert_eq!(counts.0.len(), SUCCESSORS);
        assert_eq!(counts.best().map(|(w, n, _)| (w, n)), Some((3, 3)));
    }
}
