//! A kernel's lane on one queue ([`Lane`]): what that queue's worker counts of the
//! kernel batch by batch — the audit and timing ticks, the shape run the dispatch
//! policy reads, trace-JIT's window — on cache lines of its own. Counts only; what
//! they mean for a batch is `choose.rs`'s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crossbeam_utils::CachePadded;

use super::dispatch_policy::ShapeRun;
use super::trace::TraceWindow;

/// What one queue's worker counts of a kernel, batch by batch, on cache lines of its
/// own. These counts were the kernel's, shared by all its workers: every batch then
/// wrote the kernel's lines from whichever core ran it, and on the H200 host's 16 CPU
/// queues those lines travelled from core to core several times a batch.
#[derive(Debug, Default)]
pub(crate) struct Lane(CachePadded<LaneCounts>);

#[derive(Debug, Default)]
struct LaneCounts {
    /// Batches of an adopted kernel run here; one in `audit_period` is audited.
    audit_tick: AtomicU64,
    /// Single-arm runs here; one in `TIMED_SINGLE_PERIOD` is timed.
    single_tick: AtomicU64,
    /// The shape run and trace window of this queue's batches. Only this queue's
    /// worker takes it, except while it is restarted or a batch moves off a lost device.
    history: Mutex<LaneHistory>,
}

/// The per-batch history of one queue's batches of a kernel.
#[derive(Debug, Default)]
pub(crate) struct LaneHistory {
    /// Repeats of one input shape (the dispatch policy's repeat count).
    pub(crate) shapes: ShapeRun,
    /// Trace-JIT's recent shapes, hits and misses.
    pub(crate) trace: TraceWindow,
}

impl Lane {
    /// Counts a batch for the audit period; true for one in every `period` (never
    /// with `period` 0).
    pub(crate) fn audit_due(&self, period: u64) -> bool {
        if period == 0 {
            return false;
        }
        let tick = self.0.audit_tick.fetch_add(1, Ordering::Relaxed);
        tick % period == period - 1
    }

    /// Counts a single-arm run; true for the first and then one in `period`.
    pub(crate) fn single_due(&self, period: u64) -> bool {
        let tick = self.0.single_tick.fetch_add(1, Ordering::Relaxed);
        tick % period.max(1) == 0
    }

    /// The lane's shape run and trace window (plain counts: a poisoned lock is taken).
    pub(crate) fn history(&self) -> std::sync::MutexGuard<'_, LaneHistory> {
        self.0.history.lock().unwrap_or_else(|p| p.into_inner())
    }
}
