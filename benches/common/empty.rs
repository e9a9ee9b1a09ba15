//! The empty kernel that `engine_overhead` and `examples/window_split.rs` measure the
//! engine with (the example includes this file by path): a pair whose conservative
//! variant spins for [`SLOW_ARM`] and whose speculative one does nothing, so the
//! speculative one is adopted quickly and every measured batch is one empty dispatch;
//! and the engine they measure it on ([`engine_with_adopted_kernel`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use photofinish::backend::{Backend, BindingAccess, BufferArg, KernelVariant};
use photofinish::kernels::DispatchPlan;
use photofinish::{Batch, Engine, KernelId, KernelVerdict};

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

/// An engine on `backend` (audits off, no autotune file) with the empty kernel
/// registered and its speculative variant already adopted; the error says which step
/// failed.
pub fn engine_with_adopted_kernel(backend: Arc<dyn Backend>) -> Result<(Engine, KernelId), String> {
    let engine = Engine::builder()
        .backend_instance(backend)
        .audit_period(0)
        // Measured from nothing learnt: no autotune file is read or saved (saves
        // fsync, and a file left by an earlier run would pre-decide the verdicts).
        .without_autotune_file()
        .build()
        .map_err(|e| format!("cannot build the engine: {e}"))?;
    let (conservative, speculative) = empty_pair();
    let kernel = engine
        .register_pair("empty", conservative, speculative)
        .map_err(|e| format!("cannot register the empty kernel: {e}"))?;
    for _ in 0..1000 {
        if engine.verdict(kernel) == Some(KernelVerdict::Adopted) {
            return Ok((engine, kernel));
        }
        engine
            .submit(Batch::with_plan(kernel, empty_plan()))
            .map_err(|e| format!("cannot submit a warm-up batch: {e}"))?
            .wait()
            .map_err(|e| format!("a warm-up batch failed: {e}"))?;
    }
    Err("the empty kernel's speculative variant was not adopted in 1000 races".to_owned())
}
