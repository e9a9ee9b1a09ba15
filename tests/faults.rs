//! Fault injection through `TestBackend`: a panic in dispatch, backend errors, a wrong
//! speculative output, a lost device. Nothing is lost, no wrong answer is returned.

use std::sync::Arc;

use photofinish::backend::BackendError;
use photofinish::kernels::Workload;
use photofinish::{
    Batch, ByteSumWorkload, Engine, EngineError, Event, InjectedFault, KernelVerdict, Output,
    TestBackend, Verify,
};

fn engine_on(backend: &Arc<TestBackend>) -> Engine {
    Engine::builder()
        .backend_instance(backend.clone())
        .build()
        .expect("test backend engine builds")
}

fn reference(input: &[u8]) -> Output {
    Output::Answer(ByteSumWorkload.reference(input))
}

fn restarts(events: &photofinish::Subscription) -> Vec<(String, bool)> {
    events
        .try_iter()
        .filter_map(|e| match e {
            Event::WorkerRestarted {
                reason, retried, ..
            } => Some((reason, retried)),
            _ => None,
        })
        .collect()
}

#[test]
fn panic_in_dispatch_restarts_the_worker_and_retries_the_batch() {
    let backend = Arc::new(TestBackend::new(1, 2, 1));
    let engine = engine_on(&backend);
    let events = engine.subscribe();
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    backend.inject(ByteSumWorkload::CONSERVATIVE, InjectedFault::Panic, 1);
    let answer = engine
        .submit(Batch::new(k, vec![1, 2, 3]))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(answer.output, reference(&[1, 2, 3]));
    let r = restarts(&events);
    assert_eq!(r.len(), 1);
    assert!(r[0].0.contains("injected fault"), "{}", r[0].0);
    assert!(r[0].1, "the in-flight batch was retried");
    // The restarted worker goes on serving.
    for i in 0..10u8 {
        let answer = engine
            .submit(Batch::new(k, vec![i]))
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(answer.output, reference(&[i]));
    }
}

#[test]
fn a_batch_that_panics_twice_gets_an_error_not_silence() {
    let backend = Arc::new(TestBackend::new(1, 1, 2));
    let engine = engine_on(&backend);
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    backend.inject(ByteSumWorkload::CONSERVATIVE, InjectedFault::Panic, 2);
    let err = engine
        .submit(Batch::new(k, vec![5]))
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(matches!(err, EngineError::Failed { .. }), "{err}");
    let answer = engine
        .submit(Batch::new(k, vec![5]))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(answer.output, reference(&[5]));
}

#[test]
fn driver_error_is_retried_once_on_another_queue() {
    let backend = Arc::new(TestBackend::new(1, 1, 2));
    let engine = engine_on(&backend);
    let events = engine.subscribe();
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    backend.inject(
        ByteSumWorkload::CONSERVATIVE,
        InjectedFault::Error(BackendError::Vulkan("VK_ERROR_UNKNOWN".into())),
        1,
    );
    let answer = engine
        .submit(Batch::new(k, vec![4, 4]))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(answer.output, reference(&[4, 4]));
    let r = restarts(&events);
    assert_eq!(r.len(), 1);
    assert!(r[0].0.contains("VK_ERROR_UNKNOWN"));
}

#[test]
fn an_error_caused_by_the_batch_is_answered_without_restart() {
    let backend = Arc::new(TestBackend::new(1, 1, 1));
    let engine = engine_on(&backend);
    let events = engine.subscribe();
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    backend.inject(
        ByteSumWorkload::CONSERVATIVE,
        InjectedFault::Error(BackendError::KernelFailed {
            kernel: ByteSumWorkload::CONSERVATIVE.into(),
            reason: "refused".into(),
        }),
        1,
    );
    let err = engine
        .submit(Batch::new(k, vec![1]))
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(matches!(err, EngineError::Backend { .. }), "{err}");
    assert!(restarts(&events).is_empty());
}

#[test]
fn wrong_speculative_output_is_never_returned_and_rejects_the_variant() {
    let backend = Arc::new(TestBackend::new(1, 2, 1));
    let engine = engine_on(&backend);
    let events = engine.subscribe();
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    backend.inject(
        ByteSumWorkload::SPECULATIVE,
        InjectedFault::CorruptOutput,
        1,
    );
    let answer = engine
        .submit(Batch::new(k, vec![10, 20]))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(answer.output, reference(&[10, 20]));
    assert_eq!(engine.verdict(k), Some(KernelVerdict::Rejected));
    let seen: Vec<_> = events.try_iter().collect();
    assert!(seen
        .iter()
        .any(|e| matches!(e, Event::MismatchCaught { audit: false, .. })));
    assert!(seen.iter().any(|e| matches!(
        e,
        Event::VerdictChanged {
            to: KernelVerdict::Rejected,
            ..
        }
    )));
    for i in 0..5u8 {
        engine
            .submit(Batch::new(k, vec![i]))
            .unwrap()
            .wait()
            .unwrap();
    }
    assert_eq!(backend.runs(ByteSumWorkload::SPECULATIVE), 1);
}

#[test]
fn audit_race_catches_drift_of_an_adopted_variant() {
    let (backend, engine, k) = adopted(Some(Verify::Audit(1)));
    let events = engine.subscribe();
    backend.inject(
        ByteSumWorkload::SPECULATIVE,
        InjectedFault::CorruptOutput,
        1,
    );
    let answer = engine
        .submit(Batch::new(k, vec![200]))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(answer.output, reference(&[200]));
    assert_eq!(engine.verdict(k), Some(KernelVerdict::Rejected));
    assert!(events
        .try_iter()
        .any(|e| matches!(e, Event::MismatchCaught { audit: true, .. })));
}

/// An engine whose byte-sum kernel adopted its speculative variant (10x faster).
fn adopted(verify: Option<Verify>) -> (Arc<TestBackend>, Engine, photofinish::KernelId) {
    let backend = Arc::new(TestBackend::new(1, 2, 1));
    backend.set_byte_sum_ns(1_000, 100);
    let mut builder = Engine::builder().backend_instance(backend.clone());
    if let Some(verify) = verify {
        builder = builder.verify(verify);
    }
    let engine = builder.build().unwrap();
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    for i in 0..8u8 {
        engine
            .submit(Batch::new(k, vec![i]))
            .unwrap()
            .wait()
            .unwrap();
    }
    assert_eq!(engine.verdict(k), Some(KernelVerdict::Adopted));
    (backend, engine, k)
}

#[test]
fn verify_always_checks_every_batch_of_an_adopted_variant_and_catches_the_first_wrong_one() {
    let (backend, engine, k) = adopted(Some(Verify::Always));
    let events = engine.subscribe();
    let before = backend.runs(ByteSumWorkload::CONSERVATIVE);
    for i in 0..20u8 {
        let answer = engine
            .submit(Batch::new(k, vec![i, 7]))
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(answer.output, reference(&[i, 7]));
    }
    assert_eq!(
        backend.runs(ByteSumWorkload::CONSERVATIVE) - before,
        20,
        "every batch raced against the conservative variant"
    );
    assert_eq!(engine.verdict(k), Some(KernelVerdict::Adopted));
    backend.inject(
        ByteSumWorkload::SPECULATIVE,
        InjectedFault::CorruptOutput,
        1,
    );
    let answer = engine
        .submit(Batch::new(k, vec![99]))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(answer.output, reference(&[99]));
    assert_eq!(engine.verdict(k), Some(KernelVerdict::Rejected));
    assert!(events
        .try_iter()
        .any(|e| matches!(e, Event::MismatchCaught { audit: true, .. })));

    // The default, Audit(64): the same twenty batches run the adopted variant alone.
    let (backend, engine, k) = adopted(None);
    let before = backend.runs(ByteSumWorkload::CONSERVATIVE);
    for i in 0..20u8 {
        engine
            .submit(Batch::new(k, vec![i]))
            .unwrap()
            .wait()
            .unwrap();
    }
    assert_eq!(backend.runs(ByteSumWorkload::CONSERVATIVE) - before, 0);
}

#[test]
fn lost_device_stops_its_workers_and_the_other_device_goes_on() {
    let backend = Arc::new(TestBackend::new(2, 1, 1));
    let engine = engine_on(&backend);
    let events = engine.subscribe();
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    backend.inject(ByteSumWorkload::CONSERVATIVE, InjectedFault::DeviceLost, 1);
    let mut lost = 0;
    for i in 0..20u8 {
        match engine.submit(Batch::new(k, vec![i])).unwrap().wait() {
            Ok(answer) => assert_eq!(answer.output, reference(&[i])),
            Err(EngineError::DeviceLost { .. }) => lost += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(
        lost, 0,
        "even the batch that was running on the lost device moves to the other one"
    );
    let lost_devices: Vec<_> = events
        .try_iter()
        .filter_map(|e| match e {
            Event::DeviceLost { device, .. } => Some(device),
            _ => None,
        })
        .collect();
    assert_eq!(lost_devices.len(), 1);
    engine.shutdown();
}

#[test]
fn batches_queued_for_a_lost_device_get_a_typed_error_and_shutdown_completes() {
    let backend = Arc::new(TestBackend::new(1, 1, 1));
    backend.pause();
    let engine = engine_on(&backend);
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    backend.inject(ByteSumWorkload::CONSERVATIVE, InjectedFault::DeviceLost, 1);
    let tickets: Vec<_> = (0..10u8)
        .map(|i| engine.submit(Batch::new(k, vec![i])).unwrap())
        .collect();
    backend.resume();
    for t in tickets {
        assert_eq!(t.wait().unwrap_err(), EngineError::DeviceLost { device: 0 });
    }
    assert_eq!(
        engine.submit(Batch::new(k, vec![1])).unwrap_err(),
        EngineError::DeviceLost { device: 0 }
    );
    engine.shutdown();
}

#[test]
fn batches_of_a_lost_device_move_to_the_other_device_and_none_is_dropped() {
    let backend = Arc::new(TestBackend::new(2, 1, 1));
    let engine = engine_on(&backend);
    let events = engine.subscribe();
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    // Both workers stop at their first dispatch with batches queued behind them on
    // both devices; the first conservative dispatch after resume loses its device.
    backend.pause();
    backend.inject(ByteSumWorkload::CONSERVATIVE, InjectedFault::DeviceLost, 1);
    let inputs: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 1 + usize::from(i)]).collect();
    let tickets: Vec<_> = inputs
        .iter()
        .map(|input| engine.submit(Batch::new(k, input.clone())).unwrap())
        .collect();
    backend.resume();
    let answers: Vec<_> = tickets
        .into_iter()
        .map(|t| t.wait().expect("moved, not failed"))
        .collect();
    let lost: Vec<usize> = events
        .try_iter()
        .filter_map(|e| match e {
            Event::DeviceLost { device, .. } => Some(device),
            _ => None,
        })
        .collect();
    assert_eq!(lost.len(), 1, "exactly one device lost: {lost:?}");
    for (input, answer) in inputs.iter().zip(&answers) {
        assert_eq!(answer.output, reference(input));
        assert_ne!(answer.queue.device, lost[0], "answered on the lost device");
    }
    // New batches go to the live device too.
    let after = engine
        .submit(Batch::new(k, vec![7; 3]))
        .unwrap()
        .wait()
        .unwrap();
    assert_ne!(after.queue.device, lost[0]);
    engine.shutdown();
}

/// A worker that panics while it claims batches from a window keeps the window across
/// its restart: on a one-queue device (one worker, one copy of the window) the window's
/// other batches are still run and answered, none with `Unanswered`.
#[test]
fn a_panic_inside_a_window_loses_none_of_its_batches() {
    let backend = Arc::new(TestBackend::new(1, 1, 1));
    let engine = engine_on(&backend);
    let events = engine.subscribe();
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    backend.inject(ByteSumWorkload::CONSERVATIVE, InjectedFault::Panic, 1);
    let inputs: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i, i + 1]).collect();
    let tickets = engine
        .submit_many(inputs.iter().map(|input| Batch::new(k, input.clone())))
        .unwrap();
    for (input, ticket) in inputs.iter().zip(tickets) {
        assert_eq!(ticket.wait().unwrap().output, reference(input));
    }
    let r = restarts(&events);
    assert_eq!(r.len(), 1, "{r:?}");
}
