//! End to end on Vulkan (lavapipe is enough; it has one queue, so race arms run back to
//! back): every built-in workload reaches a verdict and every answer equals the
//! workload's reference.
//!
//! Without a Vulkan device these tests FAIL, unless `PHOTOFINISH_ALLOW_NO_VULKAN=1` is
//! set, in which case they print that they were skipped (the rule of
//! `tests/vulkan_backend.rs`).
#![cfg(feature = "vulkan")]

#[path = "support/vulkan.rs"]
mod no_vulkan;

use photofinish::backend::BackendKind;
use photofinish::{BackendChoice, Engine, EngineError, KernelVerdict};

#[path = "support/e2e.rs"]
mod e2e;

/// A Vulkan engine, or `None` when there is no device and skipping is allowed.
fn vulkan_engine() -> Option<Engine> {
    match Engine::builder()
        .backend(BackendChoice::Vulkan)
        .without_autotune_file()
        .build()
    {
        Ok(engine) => Some(engine),
        Err(e @ EngineError::NoBackend(_)) => {
            no_vulkan::skip_or_fail(&e);
            None
        }
        Err(e) => panic!("no Vulkan engine: {e}"),
    }
}

#[test]
fn every_builtin_workload_reaches_a_verdict_on_vulkan_with_reference_answers() {
    let Some(engine) = vulkan_engine() else {
        return;
    };
    assert_eq!(engine.backend_kind(), BackendKind::Vulkan);
    let outcomes = e2e::run_every_builtin(&engine, 12, 200);
    for o in &outcomes {
        eprintln!("{o:?}");
        assert_ne!(o.verdict, KernelVerdict::Undecided, "{o:?}");
        assert!(o.raced >= 8, "a verdict needs 8 paired samples: {o:?}");
    }
    engine.shutdown();
}
