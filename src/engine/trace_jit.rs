//! Trace-JIT acting on a batch (SPEC §4, policy I2; the state and its story are in
//! `trace.rs`): notes the batch in its queue's trace window, asks the policy, and on
//! Speculate pre-loads the speculative variant in the background on every other live
//! device that lacks it, publishing `Event::PreSpecialised`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::policy::{decide_trace_jit_speculation, TraceJitDecision};

use super::core::Core;
use super::events::{Event, KernelVerdict};
use super::keys::KeyState;
use super::lane::Lane;
use super::registry::Kernel;

/// Records one batch of `kernel` on `device` in `lane`, its queue's (`loaded`: a
/// variant was loaded for it), and, when the policy says Speculate, pre-loads the
/// speculative variant in the background on every other live device that lacks it.
pub(crate) fn note(
    core: &Core,
    (kernel, state): (&Arc<Kernel>, &KeyState),
    lane: &Lane,
    device: usize,
    shape: u64,
    loaded: bool,
) {
    let miss_cost_ns = kernel.trace.miss_cost_ns();
    let inputs = lane.history().trace.note_batch(shape, loaded, miss_cost_ns);
    let TraceJitDecision::Speculate {
        expected_savings_ns,
    } = decide_trace_jit_speculation(inputs)
    else {
        return;
    };
    let spec = state.in_play();
    if state.verdict_of(spec) == KernelVerdict::Rejected {
        return;
    }
    for target in 0..core.devices.len() {
        if target == device || core.is_lost(target) {
            continue;
        }
        let Some(slot) = kernel.slot(target, spec) else {
            continue;
        };
        if slot.is_loaded() || slot.claimed.swap(true, Ordering::AcqRel) {
            continue;
        }
        tracing::debug!(kernel = %kernel.name, target, %expected_savings_ns, "trace-JIT: pre-loading the speculative variant");
        let backend = Arc::clone(&core.backend);
        let bus = Arc::clone(&core.bus);
        let kernel = Arc::clone(kernel);
        let guard = core.preloads.enter();
        rayon::spawn(move || {
            let _running = guard;
            let loaded = catch_unwind(AssertUnwindSafe(|| {
                kernel.handle(backend.as_ref(), target, spec)
            }));
            match loaded {
                Ok(Ok((_, Some(_)))) => {
                    kernel.trace.note_preload();
                    bus.publish(Event::PreSpecialised {
                        kernel: kernel.id,
                        variant: kernel.variants[spec].name.clone(),
                        device: target,
                        expected_savings_ns,
                    });
                }
                // A batch loaded it first: nothing to pre-load.
                Ok(Ok((_, None))) => {}
                Ok(Err(error)) => {
                    tracing::warn!(kernel = %kernel.name, target, %error, "trace-JIT pre-load failed; it will be loaded on demand");
                }
                Err(_) => {
                    tracing::error!(kernel = %kernel.name, target, "trace-JIT pre-load panicked; it will be loaded on demand");
                }
            }
        });
    }
}

#[cfg(test)]
mod engine_tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::backend::QueueId;
    use crate::engine::batch::{Batch, Payload};
    use crate::engine::handle::Engine;
    use crate::engine::job::Job;
    use crate::engine::ticket;
    use crate::{ByteSumWorkload, Event, KernelId, TestBackend};

    fn queue(device: usize) -> QueueId {
        QueueId {
            device,
            family: 0,
            index: 0,
        }
    }

    /// Runs one batch of `len` bytes directly on `device`'s queue, as its worker would.
    fn run_on(engine: &Engine, kernel: KernelId, device: usize, len: usize) {
        let Some(k) = engine.core.registry.get(kernel) else {
            panic!("kernel {kernel} is registered");
        };
        let Payload::Input(input) = Batch::new(kernel, vec![3u8; len]).payload else {
            unreachable!("Batch::new carries input bytes");
        };
        let (responder, _ticket) = ticket::one_shot(std::time::Duration::ZERO);
        let job = Job {
            kernel: k,
            payload: Payload::Input(input),
            app: None,
            responder,
        };
        let answer = crate::engine::race::run(&engine.core, queue(device), &job);
        assert!(answer.is_ok(), "batch on device {device}: {answer:?}");
        job.responder.disarm();
    }

    fn build(backend: &Arc<TestBackend>) -> Engine {
        backend.set_kernel_ns(ByteSumWorkload::CONSERVATIVE, 1_000);
        backend.set_kernel_ns(ByteSumWorkload::SPECULATIVE, 500);
        let built = Engine::builder()
            .backend_instance(Arc::clone(backend) as _)
            .build();
        match built {
            Ok(e) => e,
            Err(e) => panic!("engine: {e}"),
        }
    }

    fn speculative_loads(backend: &TestBackend, device: usize) -> Vec<crate::LoadRecord> {
        backend
            .loads()
            .into_iter()
            .filter(|l| l.device == device && l.variant == ByteSumWorkload::SPECULATIVE)
            .collect()
    }

    #[test]
    fn a_hot_shape_pre_loads_the_speculative_variant_once_on_rayon() {
        let backend = Arc::new(TestBackend::new(2, 1, 1));
        let engine = build(&backend);
        let events = engine.subscribe();
        let Ok(kernel) = engine.register(Arc::new(ByteSumWorkload)) else {
            panic!("register");
        };
        // Registration: conservative everywhere, speculative on device 0 only.
        assert_eq!(speculative_loads(&backend, 0).len(), 1);
        assert!(speculative_loads(&backend, 1).is_empty());
        for _ in 0..12 {
            run_on(&engine, kernel, 0, 64);
        }
        let pre = loop {
            match events.recv_timeout(Duration::from_secs(10)) {
                Ok(Event::PreSpecialised {
                    kernel: k,
                    variant,
                    device,
                    expected_savings_ns,
                }) => break (k, variant, device, expected_savings_ns),
                Ok(_) => continue,
                Err(e) => panic!("no PreSpecialised event: {e}"),
            }
        };
        assert_eq!(pre.0, kernel);
        assert_eq!(pre.1, ByteSumWorkload::SPECULATIVE);
        assert_eq!(pre.2, 1, "pre-loaded on the device that lacked it");
        assert!(pre.3 > 0);
        let loads = speculative_loads(&backend, 1);
        assert_eq!(loads.len(), 1, "{loads:?}");
        assert!(loads[0].on_rayon, "pre-loaded in the background: {loads:?}");
        let before = engine.kernel_stats(kernel).map(|s| s.trace);
        // Later batches: no second pre-load, and on device 1 they are hits (no load on
        // their critical path).
        for _ in 0..10 {
            run_on(&engine, kernel, 0, 64);
        }
        for _ in 0..3 {
            run_on(&engine, kernel, 1, 64);
        }
        engine.shutdown();
        assert_eq!(speculative_loads(&backend, 1).len(), 1);
        let (Some(before), Some(after)) = (before, engine.kernel_stats(kernel).map(|s| s.trace))
        else {
            panic!("stats");
        };
        assert_eq!(after.preloads, 1);
        // Each queue keeps its own window: device 1's first batch is a shape new to its
        // queue (a miss, though nothing had to load), the 12 others hit.
        assert_eq!(after.hits, before.hits + 12);
        assert_eq!(after.misses, before.misses + 1);
        assert_eq!(
            after.misses, 2,
            "only each queue's first batch (a new shape) missed"
        );
        assert!(after.miss_cost_ns > 0);
    }

    #[test]
    fn shapes_that_keep_changing_pre_load_nothing_and_load_on_demand() {
        let backend = Arc::new(TestBackend::new(2, 1, 1));
        let engine = build(&backend);
        let Ok(kernel) = engine.register(Arc::new(ByteSumWorkload)) else {
            panic!("register");
        };
        for len in 1..=24 {
            run_on(&engine, kernel, 0, len);
        }
        engine.shutdown();
        assert!(speculative_loads(&backend, 1).is_empty());
        let Some(stats) = engine.kernel_stats(kernel).map(|s| s.trace) else {
            panic!("stats");
        };
        assert_eq!((stats.hits, stats.misses, stats.preloads), (0, 24, 0));
        // A batch on device 1 now loads it on its critical path: a miss.
        let backend2 = Arc::new(TestBackend::new(2, 1, 1));
        let engine2 = build(&backend2);
        let Ok(k2) = engine2.register(Arc::new(ByteSumWorkload)) else {
            panic!("register");
        };
        run_on(&engine2, k2, 1, 8);
        let loads = speculative_loads(&backend2, 1);
        assert_eq!(loads.len(), 1);
        assert!(!loads[0].on_rayon, "loaded by the batch itself: {loads:?}");
    }
}
