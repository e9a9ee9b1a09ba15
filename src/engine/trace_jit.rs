//! Trace-JIT acting on a batch (SPEC §12, policy I2; the history and its story are in
//! `trace.rs`): notes the batch's tuning key in its queue's history, asks the policy
//! about the key predicted next, and on Speculate compiles in the background (rayon)
//! every pipeline that key's batches will need and no device has yet — each variant
//! the key runs, specialised with the constants the key picks — publishing
//! `Event::KeyPreSpecialised` per compile. A batch that then uses one publishes
//! `Event::PreSpecialisationOutcome` (`used`); shutdown publishes the unused ones
//! (wasted).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::backend::BackendError;
use crate::policy::{decide_trace_jit_speculation, TraceJitDecision};

use super::core::Core;
use super::events::{Event, KernelVerdict};
use super::keys::KeyState;
use super::lane::Lane;
use super::registry::Kernel;
use super::tuning::TuningKey;

/// Records one batch of `state`'s key of `kernel` in `lane`, its queue's (`compiled`:
/// it compiled a pipeline on its critical path), and, when the policy says Speculate
/// for the key predicted next, pre-specialises what that key needs. Returns that key and
/// the compiles started for it (none: already compiled or being compiled), or `None`
/// when the policy held steady.
pub(crate) fn note(
    core: &Core,
    (kernel, state): (&Arc<Kernel>, &KeyState),
    lane: &Lane,
    compiled: bool,
) -> Option<(TuningKey, usize)> {
    let compile_ns = kernel.trace.compile_ns();
    // Before a batch has waited for a compile, the compile itself is the least it
    // would wait.
    let miss_ns = match kernel.trace.miss_cost_ns() {
        0 => compile_ns,
        ns => ns,
    };
    let prediction = lane
        .history()
        .trace
        .note_batch(state.key, compiled, (compile_ns, miss_ns))?;
    let TraceJitDecision::Speculate {
        expected_savings_ns,
    } = decide_trace_jit_speculation(prediction.inputs)
    else {
        return None;
    };
    let next = prediction.next;
    let (variants, count) = needed(kernel, &next);
    let mut started = 0;
    for &variant in &variants[..count] {
        let values = kernel.spec_values(variant, &next);
        for device in 0..core.devices.len() {
            if core.is_lost(device) || !claim(kernel, device, variant, &values) {
                continue;
            }
            tracing::debug!(kernel = %kernel.name, %next, device, ?values, %expected_savings_ns, "trace-JIT: pre-specialising");
            let job = PreJob {
                kernel: Arc::clone(kernel),
                after: state.key,
                key: next,
                variant,
                device,
                values: values.clone(),
                expected_savings_ns,
            };
            let backend = Arc::clone(&core.backend);
            let bus = Arc::clone(&core.bus);
            let guard = core.preloads.enter();
            rayon::spawn(move || {
                let _running = guard;
                job.run(backend.as_ref(), &bus);
            });
            started += 1;
        }
    }
    Some((next, started))
}

/// The variants a batch of `key` will run (the first `count` of the array; no
/// allocation per batch): the conservative one, the speculative one in play, or both
/// while they race (a key the kernel does not hold yet: both).
fn needed(kernel: &Kernel, key: &TuningKey) -> ([usize; 2], usize) {
    let (spec, verdict) = match kernel.key_state(key) {
        Some(state) => {
            let spec = state.in_play();
            (spec, state.verdict_of(spec))
        }
        None => (1, KernelVerdict::Undecided),
    };
    let spec_ok = !kernel.is_broken(spec);
    match verdict {
        KernelVerdict::Adopted if spec_ok => ([spec, 0], 1),
        KernelVerdict::Undecided if spec_ok => ([0, spec], 2),
        _ => ([0, 0], 1),
    }
}

/// Claims the compile of `variant` with `values` on `device` for a pre-specialisation:
/// false when it is there already, being compiled, or claimed before.
fn claim(kernel: &Kernel, device: usize, variant: usize, values: &[(u32, u32)]) -> bool {
    if !values.is_empty() {
        return kernel.claim_pre(device, variant, values);
    }
    kernel
        .slot(device, variant)
        .is_some_and(|slot| !slot.is_loaded() && !slot.claimed.swap(true, Ordering::AcqRel))
}

/// One claimed pre-specialisation, run on rayon.
struct PreJob {
    kernel: Arc<Kernel>,
    after: TuningKey,
    key: TuningKey,
    variant: usize,
    device: usize,
    values: Vec<(u32, u32)>,
    expected_savings_ns: u64,
}

impl PreJob {
    fn run(self, backend: &dyn crate::backend::Backend, bus: &super::events::EventBus) {
        let kernel = &self.kernel;
        let compiled = catch_unwind(AssertUnwindSafe(|| -> Result<Option<u64>, BackendError> {
            if self.values.is_empty() {
                kernel
                    .handle(backend, self.device, self.variant)
                    .map(|(_, ns)| ns)
            } else {
                kernel
                    .pre_specialise(backend, self.device, self.variant, &self.values)
                    .map(Some)
            }
        }));
        let variant = kernel.variants[self.variant].name.clone();
        match compiled {
            Ok(Ok(Some(compile_ns))) => {
                if self.values.is_empty() {
                    if let Some(slot) = kernel.slot(self.device, self.variant) {
                        slot.preloaded.store(true, Ordering::Release);
                    }
                }
                kernel.trace.note_preload();
                bus.publish(Event::PreSpecialised {
                    kernel: kernel.id,
                    variant: variant.clone(),
                    device: self.device,
                    expected_savings_ns: self.expected_savings_ns,
                });
                bus.publish(Event::KeyPreSpecialised {
                    kernel: kernel.id,
                    after: self.after,
                    key: self.key,
                    variant,
                    device: self.device,
                    constants: self.values,
                    compile_ns,
                    expected_savings_ns: self.expected_savings_ns,
                });
            }
            // A batch loaded it first: nothing was pre-loaded.
            Ok(Ok(None)) => {}
            Ok(Err(error)) => {
                tracing::warn!(kernel = %kernel.name, device = self.device, %error, "trace-JIT pre-specialisation failed; it will be compiled on demand");
            }
            Err(_) => {
                tracing::error!(kernel = %kernel.name, device = self.device, "trace-JIT pre-specialisation panicked; it will be compiled on demand");
            }
        }
    }
}

/// At shutdown, after the last pre-specialisation finished: counts and publishes every
/// pre-specialised pipeline no batch used as wasted.
pub(crate) fn report_unused(core: &Core) {
    for kernel in core.registry.all() {
        for unused in kernel.unused_pre() {
            kernel.trace.note_outcome(false);
            core.bus.publish(Event::PreSpecialisationOutcome {
                kernel: kernel.id,
                key: None,
                variant: kernel.variants[unused.variant].name.clone(),
                device: unused.device,
                constants: unused.constants,
                used: false,
            });
        }
    }
}

#[cfg(test)]
mod engine_tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::backend::{BindingAccess, BufferArg, KernelVariant, QueueId};
    use crate::engine::batch::{Batch, Payload};
    use crate::engine::handle::Engine;
    use crate::engine::job::Job;
    use crate::engine::ticket;
    use crate::kernels::DispatchPlan;
    use crate::{
        ByteSumWorkload, Event, KernelId, Specialization, Subscription, TestBackend, TuningKey,
    };

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
        let answer = crate::engine::race::run(
            &engine.core,
            queue(device),
            &job,
            crate::engine::GroupRefusal::NoBacklog,
        );
        assert!(answer.is_ok(), "batch on device {device}: {answer:?}");
        job.responder.disarm();
    }

    fn build(backend: &Arc<TestBackend>) -> Engine {
        backend.set_kernel_ns(ByteSumWorkload::CONSERVATIVE, 1_000);
        backend.set_kernel_ns(ByteSumWorkload::SPECULATIVE, 500);
        let built = Engine::builder()
            .backend_instance(Arc::clone(backend) as _)
            .without_autotune_file()
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

    /// Every event published so far.
    fn drain(events: &Subscription) -> Vec<Event> {
        std::iter::from_fn(|| events.recv_timeout(Duration::from_millis(50)).ok()).collect()
    }

    #[test]
    fn a_hot_key_pre_loads_its_speculative_variant_on_the_other_device_once_on_rayon() {
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
        let key = TuningKey::for_bytes(64, None);
        let pre = loop {
            match events.recv_timeout(Duration::from_secs(10)) {
                Ok(Event::KeyPreSpecialised {
                    kernel: k,
                    after,
                    key: next,
                    variant,
                    device,
                    constants,
                    expected_savings_ns,
                    ..
                }) => {
                    break (
                        k,
                        after,
                        next,
                        variant,
                        device,
                        constants,
                        expected_savings_ns,
                    )
                }
                Ok(_) => continue,
                Err(e) => panic!("no KeyPreSpecialised event: {e}"),
            }
        };
        assert_eq!(pre.0, kernel);
        assert_eq!((pre.1, pre.2), (key, key), "the key follows itself");
        assert_eq!(pre.3, ByteSumWorkload::SPECULATIVE);
        assert_eq!(pre.4, 1, "pre-loaded on the device that lacked it");
        assert!(
            pre.5.is_empty(),
            "the variant has no specialisation constants"
        );
        assert!(pre.6 > 0);
        let loads = speculative_loads(&backend, 1);
        assert_eq!(loads.len(), 1, "{loads:?}");
        assert!(loads[0].on_rayon, "pre-loaded in the background: {loads:?}");
        // Later batches: no second pre-load, and on device 1 nothing loads on their
        // critical path; the first of them used the pre-load.
        for _ in 0..10 {
            run_on(&engine, kernel, 0, 64);
        }
        for _ in 0..3 {
            run_on(&engine, kernel, 1, 64);
        }
        engine.shutdown();
        assert_eq!(speculative_loads(&backend, 1).len(), 1);
        let used: Vec<Event> = drain(&events)
            .into_iter()
            .filter(|e| matches!(e, Event::PreSpecialisationOutcome { .. }))
            .collect();
        assert!(
            matches!(&used[..], [Event::PreSpecialisationOutcome { used: true, device: 1, key: Some(k), .. }] if *k == key),
            "{used:?}"
        );
        let Some(stats) = engine.kernel_stats(kernel).map(|s| s.trace) else {
            panic!("stats");
        };
        assert_eq!(
            (stats.preloads, stats.pre_used, stats.pre_wasted),
            (1, 1, 0)
        );
        assert_eq!(
            (stats.hits, stats.misses),
            (25, 0),
            "no batch compiled on its path"
        );
        assert!(stats.compile_cost_ns > 0);
    }

    #[test]
    fn keys_that_keep_changing_pre_load_nothing_and_load_on_demand() {
        let backend = Arc::new(TestBackend::new(2, 1, 1));
        let engine = build(&backend);
        let Ok(kernel) = engine.register(Arc::new(ByteSumWorkload)) else {
            panic!("register");
        };
        // Sizes in a random order: no transition and no step is hot.
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..24 {
            run_on(&engine, kernel, 0, 4096 << rng.usize(0..6));
        }
        engine.shutdown();
        assert!(speculative_loads(&backend, 1).is_empty());
        let Some(stats) = engine.kernel_stats(kernel).map(|s| s.trace) else {
            panic!("stats");
        };
        assert_eq!((stats.hits, stats.misses, stats.preloads), (24, 0, 0));
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
        engine2.shutdown();
        let Some(stats) = engine2.kernel_stats(k2).map(|s| s.trace) else {
            panic!("stats");
        };
        assert_eq!(stats.misses, 1);
        assert!(stats.miss_cost_ns > 0);
    }

    /// What a `KeyPreSpecialised` event says: predicting key, key, constants.
    type Pre = (TuningKey, TuningKey, Vec<(u32, u32)>);

    /// A byte sum over a plan's first buffer into its second (8 bytes), whatever its
    /// specialisation constants.
    fn sum(name: &str) -> KernelVariant {
        KernelVariant::cpu(
            name,
            &[BindingAccess::Read, BindingAccess::Write],
            0,
            |buffers, _, _| {
                let total: u64 = buffers[0].iter().map(|&b| u64::from(b)).sum();
                buffers[1][..8].copy_from_slice(&total.to_le_bytes());
                Ok(())
            },
        )
    }

    /// A plan whose buffers total exactly `bytes` (one size class).
    fn plan(bytes: usize) -> DispatchPlan {
        DispatchPlan::new(
            vec![
                BufferArg::Data(vec![1u8; bytes - 8].into()),
                BufferArg::Zeroed(8),
            ],
            [1, 1, 1],
        )
    }

    #[test]
    fn a_sweep_pre_specialises_each_next_key_before_its_first_batch() {
        let backend = Arc::new(TestBackend::new(1, 1, 1));
        // A compile takes 3 ms: what a batch that compiles on its path waits for.
        backend.set_load_ns(3_000_000);
        let engine = build(&backend);
        let events = engine.subscribe();
        // The speculative variant is specialised per key: constant 0 is the key's
        // size-class index (4 KiB → 0, 8 KiB → 1, …).
        let spec = Specialization::new().constant(0, "unroll", &(0..32).collect::<Vec<u32>>());
        let registered = engine.register_variants_specialised(
            "sum",
            sum("sum/plain"),
            vec![sum("sum/unrolled")],
            &[],
            vec![(1, spec)],
        );
        let Ok(kernel) = registered else {
            panic!("register: {registered:?}");
        };
        // Keys 4 KiB, 8 KiB, … 4 MiB, each once, in order.
        for i in 0..11 {
            let answer = engine.submit(Batch::with_plan(kernel, plan(4096 << i)));
            assert!(answer.and_then(|t| t.wait()).is_ok());
        }
        engine.shutdown();
        let specialised: Vec<_> = backend
            .loads()
            .into_iter()
            .filter(|l| !l.constants.is_empty())
            .collect();
        // Keys 0..=8 compiled on their own batch's path; from the 9th step on the step
        // is hot and each next key (9, 10, and 11, which never came) was compiled on
        // rayon before its batch.
        let on_path: Vec<u32> = specialised
            .iter()
            .filter(|l| !l.on_rayon)
            .map(|l| l.constants[0].1)
            .collect();
        let ahead: Vec<u32> = specialised
            .iter()
            .filter(|l| l.on_rayon)
            .map(|l| l.constants[0].1)
            .collect();
        assert_eq!(on_path, (0..=8).collect::<Vec<u32>>(), "{specialised:?}");
        assert_eq!(ahead, vec![9, 10, 11], "{specialised:?}");
        let events = drain(&events);
        let key = |i: u32| TuningKey::for_bytes(4096 << i, None);
        let pre: Vec<Pre> = events
            .iter()
            .filter_map(|e| match e {
                Event::KeyPreSpecialised {
                    after,
                    key,
                    constants,
                    ..
                } => Some((*after, *key, constants.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            pre,
            vec![
                (key(8), key(9), vec![(0, 9)]),
                (key(9), key(10), vec![(0, 10)]),
                (key(10), key(11), vec![(0, 11)]),
            ]
        );
        let outcomes: Vec<(Option<TuningKey>, bool)> = events
            .iter()
            .filter_map(|e| match e {
                Event::PreSpecialisationOutcome { key, used, .. } => Some((*key, *used)),
                _ => None,
            })
            .collect();
        assert_eq!(
            outcomes,
            vec![(Some(key(9)), true), (Some(key(10)), true), (None, false)],
            "9 and 10 used; 11 never came: wasted at shutdown"
        );
        let Some(stats) = engine.kernel_stats(kernel).map(|s| s.trace) else {
            panic!("stats");
        };
        assert_eq!(
            (stats.pre_used, stats.pre_wasted, stats.preloads),
            (2, 1, 3)
        );
        assert_eq!((stats.hits, stats.misses), (2, 9));
        assert!(stats.miss_cost_ns >= 3_000_000, "{stats:?}");
        // Each key's store entries name its values.
        let Some(k) = engine.core.registry.get(kernel) else {
            panic!("kernel");
        };
        let (Some(a), Some(b)) = (k.key_state(&key(9)), k.key_state(&key(10))) else {
            panic!("key states");
        };
        assert_ne!(a.store_key(1).spec_hash, b.store_key(1).spec_hash);
        assert_eq!(
            a.store_key(1).spec_hash,
            crate::engine::specialise::spec_hash(key(9).hash64(), &[(0, 9)])
        );
        assert_eq!(
            a.store_key(0).spec_hash,
            key(9).hash64(),
            "the plain variant: the key alone"
        );
    }

    #[test]
    fn a_specialisation_of_a_variant_past_the_last_is_invalid_kernel() {
        let backend = Arc::new(TestBackend::new(1, 1, 1));
        let engine = build(&backend);
        let bad = engine.register_variants_specialised(
            "sum",
            sum("sum/plain"),
            vec![sum("sum/unrolled")],
            &[],
            vec![(2, Specialization::new().constant(0, "unroll", &[1]))],
        );
        assert!(
            matches!(&bad, Err(crate::EngineError::InvalidKernel { reason, .. }) if reason.contains("variant 2")),
            "{bad:?}"
        );
    }
}
