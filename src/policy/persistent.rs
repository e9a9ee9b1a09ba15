//! D1: persistent kernel — whether one long-running kernel that pulls a whole batch of
//! work items beats one launch per item.

use std::fmt;

/// What a batch would cost as standard launches versus one persistent kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PersistentKernelInputs {
    /// Work items in the batch (one standard launch each).
    pub batch_size: u32,
    /// Fixed cost of one standard launch, ns.
    pub per_launch_overhead_ns: u64,
    /// Kernel time per item, ns. The same either way, so it cancels out of the decision;
    /// it is carried so callers can describe the batch completely.
    pub per_item_kernel_ns: u64,
    /// One-time cost of starting the persistent kernel (and feeding it its queue), ns.
    pub persistent_setup_overhead_ns: u64,
}

/// The D1 verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PersistentKernelDecision {
    /// One launch per item.
    StandardLaunches,
    /// One persistent kernel for the whole batch.
    PersistentKernel {
        /// `batch * launch overhead - setup`, ns (clamped to `u64::MAX`).
        savings_ns: u64,
    },
}

impl PersistentKernelDecision {
    /// The saving when the persistent kernel is chosen, `None` for standard launches.
    #[must_use]
    pub fn savings_ns(&self) -> Option<u64> {
        match *self {
            PersistentKernelDecision::StandardLaunches => None,
            PersistentKernelDecision::PersistentKernel { savings_ns } => Some(savings_ns),
        }
    }
}

impl fmt::Display for PersistentKernelDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PersistentKernelDecision::StandardLaunches => f.write_str("standard-launches"),
            PersistentKernelDecision::PersistentKernel { savings_ns } => {
                write!(f, "persistent-kernel:{savings_ns}")
            }
        }
    }
}

/// Decides between standard launches and a persistent kernel (SPEC §1, D1).
///
/// StandardLaunches when the batch has at most one item, a launch costs nothing, or
/// `batch * launch overhead <= setup` (u128); otherwise PersistentKernel saving
/// `batch * launch overhead - setup`. The per-item kernel time cancels out.
///
/// ```
/// use photofinish::policy::{decide_persistent_kernel, PersistentKernelDecision, PersistentKernelInputs};
/// let inputs = PersistentKernelInputs {
///     batch_size: 64,
///     per_launch_overhead_ns: 5_000,
///     per_item_kernel_ns: 20_000,
///     persistent_setup_overhead_ns: 40_000,
/// };
/// assert_eq!(
///     decide_persistent_kernel(inputs),
///     PersistentKernelDecision::PersistentKernel { savings_ns: 280_000 },
/// );
/// ```
#[must_use]
pub fn decide_persistent_kernel(inputs: PersistentKernelInputs) -> PersistentKernelDecision {
    match super::amortized_saving(
        inputs.batch_size,
        inputs.per_launch_overhead_ns,
        inputs.persistent_setup_overhead_ns,
    ) {
        Some(savings_ns) => PersistentKernelDecision::PersistentKernel { savings_ns },
        None => PersistentKernelDecision::StandardLaunches,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(batch_size: u32, overhead: u64, setup: u64) -> PersistentKernelInputs {
        PersistentKernelInputs {
            batch_size,
            per_launch_overhead_ns: overhead,
            per_item_kernel_ns: 1_000,
            persistent_setup_overhead_ns: setup,
        }
    }

    fn persistent(savings_ns: u64) -> PersistentKernelDecision {
        PersistentKernelDecision::PersistentKernel { savings_ns }
    }

    #[test]
    fn batch_of_one_is_standard_and_two_is_persistent() {
        assert_eq!(
            decide_persistent_kernel(inputs(1, 100, 0)),
            PersistentKernelDecision::StandardLaunches
        );
        assert_eq!(decide_persistent_kernel(inputs(2, 100, 0)), persistent(200));
        assert_eq!(
            decide_persistent_kernel(inputs(0, 100, 0)),
            PersistentKernelDecision::StandardLaunches
        );
    }

    #[test]
    fn free_launches_are_standard() {
        assert_eq!(
            decide_persistent_kernel(inputs(u32::MAX, 0, 0)),
            PersistentKernelDecision::StandardLaunches
        );
        assert_eq!(
            decide_persistent_kernel(inputs(u32::MAX, 1, 0)),
            persistent(u64::from(u32::MAX))
        );
    }

    #[test]
    fn overhead_equal_to_setup_is_standard_and_one_more_is_persistent() {
        assert_eq!(
            decide_persistent_kernel(inputs(10, 100, 1_000)),
            PersistentKernelDecision::StandardLaunches
        );
        assert_eq!(
            decide_persistent_kernel(inputs(10, 100, 999)),
            persistent(1)
        );
        assert_eq!(
            decide_persistent_kernel(inputs(11, 100, 1_000)),
            persistent(100)
        );
    }

    #[test]
    fn per_item_time_cancels_out() {
        let cheap = inputs(10, 100, 500);
        let dear = PersistentKernelInputs {
            per_item_kernel_ns: u64::MAX,
            ..cheap
        };
        assert_eq!(decide_persistent_kernel(cheap), persistent(500));
        assert_eq!(decide_persistent_kernel(dear), persistent(500));
    }

    #[test]
    fn extremes_are_widened_not_wrapped() {
        // u32::MAX * u64::MAX wraps in u64; in u128 it beats any u64 setup.
        assert_eq!(
            decide_persistent_kernel(inputs(u32::MAX, u64::MAX, u64::MAX)),
            persistent(u64::MAX)
        );
        assert_eq!(
            decide_persistent_kernel(inputs(2, u64::MAX / 2, u64::MAX)),
            PersistentKernelDecision::StandardLaunches
        );
    }

    #[test]
    fn savings_accessor_and_display() {
        assert_eq!(
            PersistentKernelDecision::StandardLaunches.savings_ns(),
            None
        );
        assert_eq!(persistent(7).savings_ns(), Some(7));
        assert_eq!(
            PersistentKernelDecision::StandardLaunches.to_string(),
            "standard-launches"
        );
        assert_eq!(persistent(7).to_string(), "persistent-kernel:7");
    }
}
