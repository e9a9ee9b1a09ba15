//! The empty kernel that `engine_overhead` and `examples/window_split.rs` measure the
//! engine with (the example includes this file by path): a pair whose conservative
//! variant spins for [`SLOW_ARM`] and whose speculative one does nothing, so the
//! speculative one is adopted quickly and every measured batch is one empty dispatch.

use std::time::{Duration, Instant};

use photofinish::backend::{BindingAccess, BufferArg, KernelVariant};
use photofinish::kernels::DispatchPlan;

/// How long the conservative variant spins.
pub const SLOW_ARM: Duration = Duration::from_micros(50);

/// The pair (conservative, speculative), each with one written 4-byte binding.
pub fn empty_pair() -> (KernelVariant, KernelVariant) {
    let variant = |name: &str, spin: Duration| {
        KernelVariant::cpu(name, &[BindingAccess::Write], 0, move |_, _, _| {
            if spin.is_zero() {
                // Truly empty: not even a clock read.
                return Ok(());
            }
            let started = Instant::now();
            while started.elapsed() < spin {
                std::hint::spin_loop();
            }
            Ok(())
        })
    };
    (
        variant("empty/conservative-spin", SLOW_ARM),
        variant("empty/speculative", Duration::ZERO),
    )
}

/// One batch's plan: one zeroed 4-byte buffer, one workgroup.
pub fn empty_plan() -> DispatchPlan {
    DispatchPlan {
        buffers: vec![BufferArg::Zeroed(4)],
        push_constants: Vec::new(),
        workgroups: [1, 1, 1],
    }
}
