//! Plans whose answers this thread took, their bytes released, freed one per batch the
//! thread submits next. A window's answers are taken in a row: freed then, 64 plans
//! (two blocks each, which a worker read on another core) overflow the allocator's
//! per-thread cache of freed blocks (glibc keeps 7 of a size) into its shared bins, a
//! locked instruction per block that waits for the block's line to come back from that
//! core. Freed one per new batch, right after the caller allocated that batch's plan,
//! each free refills the cache the allocation drew from, and neither leaves it. At
//! most [`MAX`] wait per thread (more are freed at once); they are freed when the
//! thread ends. Under loom a plan is freed at once.
//!
//! A thread-local cache of allocations only: it never decides anything of a batch.

use crate::kernels::DispatchPlan;

/// The most plans a thread keeps waiting.
#[cfg(not(photofinish_loom))]
pub(super) const MAX: usize = 128;

#[cfg(not(photofinish_loom))]
thread_local! {
    #[allow(clippy::vec_box, reason = "the boxes are the blocks whose free is put off")]
    static RETIRED: std::cell::RefCell<Vec<Box<DispatchPlan>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Keeps `plan` (already emptied) to be freed at this thread's next batch.
#[cfg(not(photofinish_loom))]
pub(super) fn retire(plan: Box<DispatchPlan>) {
    let _ = RETIRED.try_with(|retired| {
        if let Ok(mut retired) = retired.try_borrow_mut() {
            if retired.len() < MAX {
                retired.push(plan);
            }
        }
    });
}

/// Frees the plan this thread retired last, if any.
#[cfg(not(photofinish_loom))]
pub(super) fn free_one() {
    let _ = RETIRED.try_with(|retired| {
        let plan = retired.try_borrow_mut().ok().and_then(|mut r| r.pop());
        drop(plan);
    });
}

/// How many plans this thread keeps waiting.
#[cfg(all(test, not(photofinish_loom)))]
pub(super) fn waiting() -> usize {
    RETIRED.with_borrow(Vec::len)
}

/// Under loom a plan is freed at once.
#[cfg(photofinish_loom)]
pub(super) fn retire(plan: Box<DispatchPlan>) {
    drop(plan);
}

/// Under loom nothing waits.
#[cfg(photofinish_loom)]
pub(super) fn free_one() {}
