//! End-to-end tests of the engine's actor machinery on the fault-injection
//! `TestBackend`: races reach verdicts, answers equal the reference, backpressure,
//! shutdown drains, events fan out without blocking workers.

use std::sync::Arc;
use std::time::Duration;

use photofinish::backend::{BindingAccess, BufferArg, KernelVariant};
use photofinish::kernels::{DispatchPlan, Workload};
use photofinish::{
    Arm, Batch, ByteSumWorkload, Engine, EngineError, Event, GroupRefusal, KernelVerdict, Output,
    PolicyAction, TestBackend, TrySubmitError, VerdictReason, DEFAULT_MAX_GROUP,
    INLINE_OUTPUT_BYTES,
};

fn engine_on(backend: &Arc<TestBackend>) -> Engine {
    Engine::builder()
        .backend_instance(backend.clone())
        .build()
        .expect("test backend engine builds")
}

/// An engine on `backend` that audits an adopted kernel once in `period` batches.
fn engine_auditing(backend: &Arc<TestBackend>, period: u64) -> Engine {
    Engine::builder()
        .backend_instance(backend.clone())
        .audit_period(period)
        .build()
        .expect("test backend engine builds")
}

fn reference(input: &[u8]) -> Output {
    Output::Answer(ByteSumWorkload.reference(input))
}

#[test]
fn faster_speculative_variant_is_adopted_after_the_paired_window() {
    let backend = Arc::new(TestBackend::new(1, 2, 1));
    backend.set_byte_sum_ns(1_000, 500);
    let engine = engine_on(&backend);
    let events = engine.subscribe();
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    assert_eq!(engine.verdict(k), Some(KernelVerdict::Undecided));
    let mut raced = 0;
    for i in 0..20u8 {
        let input: Vec<u8> = (0..=i).collect();
        let answer = engine
            .submit(Batch::new(k, input.clone()))
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(answer.output, reference(&input), "batch {i}");
        if answer.raced {
            raced += 1;
            assert_eq!(
                answer.arm,
                Arm::Conservative,
                "a race answers conservatively"
            );
        }
    }
    // MIN_DISPATCHES_FOR_VERDICT = 8 paired samples, then the speculative arm runs
    // alone (the default audit period, 64, is not reached in 12 more batches).
    assert_eq!(raced, 8);
    assert_eq!(engine.verdict(k), Some(KernelVerdict::Adopted));
    assert_eq!(backend.runs(ByteSumWorkload::SPECULATIVE), 20);
    assert_eq!(backend.runs(ByteSumWorkload::CONSERVATIVE), 8);
    engine.shutdown();
    let changes: Vec<_> = events
        .try_iter()
        .filter_map(|e| match e {
            Event::VerdictChanged {
                from, to, reason, ..
            } => Some((from, to, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].0, KernelVerdict::Undecided);
    assert_eq!(changes[0].1, KernelVerdict::Adopted);
    assert!(matches!(changes[0].2, VerdictReason::Measured));
}

#[test]
fn slower_speculative_variant_is_rejected_and_never_runs_again() {
    let backend = Arc::new(TestBackend::new(1, 1, 1));
    backend.set_byte_sum_ns(1_000, 1_200);
    let engine = engine_on(&backend);
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    for i in 0..16u8 {
        let input = vec![i; 3];
        let answer = engine
            .submit(Batch::new(k, input.clone()))
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(answer.output, reference(&input));
    }
    assert_eq!(engine.verdict(k), Some(KernelVerdict::Rejected));
    // One queue: the arms ran back to back, eight times, then never again.
    assert_eq!(backend.runs(ByteSumWorkload::SPECULATIVE), 8);
    assert_eq!(backend.runs(ByteSumWorkload::CONSERVATIVE), 16);
}

#[test]
fn adopted_kernel_runs_periodic_audit_races() {
    let backend = Arc::new(TestBackend::new(1, 2, 1));
    backend.set_byte_sum_ns(1_000, 100);
    let engine = engine_auditing(&backend, 4);
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    let mut audits = 0;
    // The adopted batches each queue's worker ran: the period counts per queue.
    let mut per_queue = std::collections::HashMap::new();
    for i in 0..(8 + 16u8) {
        let answer = engine
            .submit(Batch::new(k, vec![i]))
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(answer.output, reference(&[i]));
        if i >= 8 {
            *per_queue.entry(answer.queue).or_insert(0u64) += 1;
            if answer.raced {
                audits += 1;
            }
        }
    }
    assert_eq!(engine.verdict(k), Some(KernelVerdict::Adopted));
    // Which worker takes a batch is up to timing; each audits the 4th, 8th, … of its
    // own (16 on one queue: 4; split 9 + 7: 2 + 1).
    let expected: u64 = per_queue.values().map(|n| n / 4).sum();
    assert!(expected >= 3, "{per_queue:?}");
    assert_eq!(
        audits, expected,
        "one audit race in every 4 batches of an adopted kernel on each queue ({per_queue:?})"
    );
}

#[test]
fn many_producer_threads_all_get_the_reference_answer() {
    let backend = Arc::new(TestBackend::new(2, 2, 2));
    let engine = Arc::new(engine_on(&backend));
    assert_eq!(engine.worker_count(), 8);
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    let producers: Vec<_> = (0..4u64)
        .map(|t| {
            let engine = Arc::clone(&engine);
            std::thread::spawn(move || {
                let tickets: Vec<_> = (0..200u64)
                    .map(|i| {
                        let input = ByteSumWorkload.generate(
                            photofinish::kernels::InputShape::Uniform,
                            (i % 40) as usize,
                            t * 1000 + i,
                        );
                        (engine.submit(Batch::new(k, input.clone())).unwrap(), input)
                    })
                    .collect();
                for (ticket, input) in tickets {
                    assert_eq!(ticket.wait().unwrap().output, reference(&input));
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    engine.shutdown();
}

#[test]
fn try_submit_reports_full_and_gives_the_batch_back() {
    let backend = Arc::new(TestBackend::new(1, 1, 1));
    backend.pause();
    let engine = Engine::builder()
        .backend_instance(backend.clone())
        .channel_capacity(2)
        .build()
        .unwrap();
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    let mut tickets = Vec::new();
    let full = loop {
        match engine.try_submit(Batch::new(k, vec![7u8; 4])) {
            Ok(t) => tickets.push(t),
            Err(e) => break e,
        }
        // One worker (held in dispatch) plus a mailbox of 2: never more than 3.
        assert!(tickets.len() <= 3, "backpressure did not engage");
    };
    assert!(tickets.len() >= 2);
    let TrySubmitError::Full(batch) = full else {
        panic!("expected Full, got {full:?}");
    };
    assert_eq!(batch.kernel(), k);
    backend.resume();
    for t in tickets {
        assert_eq!(t.wait().unwrap().output, reference(&[7u8; 4]));
    }
}

#[test]
fn shutdown_answers_every_queued_batch_and_refuses_new_ones() {
    let backend = Arc::new(TestBackend::new(1, 2, 1));
    backend.pause();
    let engine = Arc::new(engine_on(&backend));
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    let tickets: Vec<_> = (0..50u8)
        .map(|i| engine.submit(Batch::new(k, vec![i, i])).unwrap())
        .collect();
    assert!(tickets.iter().all(|t| !t.is_ready()));
    let closer = {
        let engine = Arc::clone(&engine);
        std::thread::spawn(move || engine.shutdown())
    };
    // New batches are refused once shutdown began; wait for that without sleeping.
    let refused = loop {
        match engine.submit(Batch::new(k, vec![1])) {
            Err(e) => break e,
            Ok(t) => drop(t),
        }
        std::thread::yield_now();
    };
    assert_eq!(refused, EngineError::ShutDown);
    backend.resume();
    closer.join().unwrap();
    // Drained: every ticket is answered before shutdown returns.
    for (i, t) in tickets.into_iter().enumerate() {
        assert!(t.is_ready(), "ticket {i} unanswered after shutdown");
        let i = i as u8;
        assert_eq!(t.wait().unwrap().output, reference(&[i, i]));
    }
    match engine.try_submit(Batch::new(k, vec![1])) {
        Err(TrySubmitError::ShutDown(b)) => assert_eq!(b.kernel(), k),
        other => panic!("expected ShutDown, got {other:?}"),
    }
}

#[test]
fn dropping_the_engine_drains_like_shutdown() {
    let backend = Arc::new(TestBackend::new(1, 1, 2));
    let engine = engine_on(&backend);
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    let tickets: Vec<_> = (0..30u8)
        .map(|i| engine.submit(Batch::new(k, vec![i])).unwrap())
        .collect();
    drop(engine);
    for (i, t) in tickets.into_iter().enumerate() {
        assert!(t.is_ready());
        assert_eq!(t.wait().unwrap().output, reference(&[i as u8]));
    }
}

#[test]
fn small_pair_outputs_come_back_inline_and_larger_ones_as_vectors() {
    let engine = engine_on(&Arc::new(TestBackend::new(1, 2, 1)));
    let fill = |name: &str| {
        KernelVariant::cpu(name, &[BindingAccess::Write], 0, |buffers, _, _| {
            for (i, byte) in buffers[0].iter_mut().enumerate() {
                *byte = i as u8 ^ 0x5a;
            }
            Ok(())
        })
    };
    let kernel = engine
        .register_pair("fill", fill("fill/conservative"), fill("fill/speculative"))
        .unwrap();
    for len in [0, 1, 4, INLINE_OUTPUT_BYTES, INLINE_OUTPUT_BYTES + 1, 4096] {
        // Races first, single runs once the speculative variant is adopted.
        for _ in 0..8 {
            let plan = DispatchPlan {
                buffers: vec![BufferArg::Zeroed(len as u64)],
                push_constants: Vec::new(),
                workgroups: [1, 1, 1],
            };
            let answer = engine
                .submit(Batch::with_plan(kernel, plan))
                .and_then(|t| t.wait())
                .unwrap();
            let Output::Buffers(buffers) = answer.output else {
                panic!("a pair answered with a workload answer");
            };
            let expected: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
            assert_eq!(buffers, vec![expected], "{len}-byte output");
            assert_eq!(
                buffers.is_inline(),
                len <= INLINE_OUTPUT_BYTES,
                "{len}-byte output"
            );
        }
    }
}

#[test]
fn wait_timeout_returns_none_until_the_answer_is_in() {
    let backend = Arc::new(TestBackend::new(1, 1, 1));
    backend.pause();
    let engine = engine_on(&backend);
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    let ticket = engine.submit(Batch::new(k, vec![3, 4])).unwrap();
    assert!(ticket.wait_timeout(Duration::from_millis(20)).is_none());
    backend.resume();
    let answer = ticket
        .wait_timeout(Duration::from_secs(30))
        .unwrap()
        .unwrap();
    assert_eq!(answer.output, reference(&[3, 4]));
    assert_eq!(ticket.wait(), Err(EngineError::AnswerTaken));
}

#[test]
fn bad_registrations_and_batches_are_typed_errors() {
    let backend = Arc::new(TestBackend::new(1, 1, 1));
    let engine = engine_on(&backend);
    let mut variants = ByteSumWorkload.variants();
    let mut spec = variants.pop().unwrap();
    let cons = variants.pop().unwrap();
    spec.bindings.pop();
    let err = engine
        .register_pair("broken", cons.clone(), spec)
        .unwrap_err();
    assert!(matches!(err, EngineError::InvalidKernel { .. }), "{err}");
    assert!(err.to_string().contains("same buffers"));

    let mut no_cpu = cons.clone();
    no_cpu.cpu = None;
    let err = engine
        .register_pair("no-code", cons.clone(), no_cpu)
        .unwrap_err();
    assert!(matches!(err, EngineError::Backend { .. }), "{err}");

    let pair = engine
        .register_pair("pair", cons.clone(), ByteSumWorkload.variants().remove(1))
        .unwrap();
    let err = engine.submit(Batch::new(pair, vec![1, 2])).unwrap_err();
    assert!(matches!(err, EngineError::WrongPayload { .. }), "{err}");
    let plan = ByteSumWorkload.plan(0, &[1, 2, 3]).unwrap();
    let answer = engine
        .submit(Batch::with_plan(pair, plan))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(
        answer.output,
        Output::Buffers(vec![6u64.to_le_bytes().to_vec()].into())
    );

    let other = engine_on(&Arc::new(TestBackend::new(1, 1, 1)));
    let mut foreign = other.register(Arc::new(ByteSumWorkload)).unwrap();
    for _ in 0..3 {
        foreign = other.register(Arc::new(ByteSumWorkload)).unwrap();
    }
    let ghost = Batch::new(foreign, vec![]);
    assert!(matches!(
        engine.submit(ghost),
        Err(EngineError::UnknownKernel(_))
    ));
}

#[test]
fn every_subscriber_gets_events_and_a_full_one_never_blocks_workers() {
    let backend = Arc::new(TestBackend::new(1, 2, 1));
    let engine = Engine::builder()
        .backend_instance(backend.clone())
        .event_capacity(8)
        .build()
        .unwrap();
    let slow = engine.subscribe();
    let fast = engine.subscribe();
    let mut kernels = Vec::new();
    for _ in 0..4 {
        kernels.push(engine.register(Arc::new(ByteSumWorkload)).unwrap());
    }
    backend.inject(
        ByteSumWorkload::SPECULATIVE,
        photofinish::InjectedFault::CorruptOutput,
        u64::MAX,
    );
    let mut seen = Vec::new();
    for &k in &kernels {
        let answer = engine
            .submit(Batch::new(k, vec![9, 9]))
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(answer.output, reference(&[9, 9]));
        seen.extend(fast.try_iter());
    }
    // The fast subscriber read as it went: BackendSelected (replayed), then a mismatch
    // and a rejection per kernel.
    assert!(matches!(seen[0], Event::BackendSelected { .. }));
    let mismatches = seen
        .iter()
        .filter(|e| matches!(e, Event::MismatchCaught { .. }))
        .count();
    assert_eq!(mismatches, 4);
    // The slow one never read: it holds its first 8 events; every later one (all the
    // fast one saw after those 8; the fast one, read after each batch, lost none) was
    // dropped for it and counted.
    assert!(seen.len() > 8, "{seen:?}");
    assert_eq!(slow.try_iter().count(), 8);
    assert_eq!(engine.dropped_events(), seen.len() as u64 - 8);
}

#[test]
fn fused_kernel_follows_the_shared_speculator_and_publishes_toggles() {
    use photofinish::FusedByteSumWorkload;
    let backend = Arc::new(TestBackend::new(1, 2, 1));
    // Equal times: the window keeps racing, so every batch reports a counter tail.
    backend.set_kernel_ns(ByteSumWorkload::CONSERVATIVE, 1_000);
    backend.set_kernel_ns(FusedByteSumWorkload::FUSED, 900);
    let engine = Engine::builder()
        .backend_instance(backend.clone())
        .audit_period(1_000)
        .build()
        .unwrap();
    let events = engine.subscribe();
    let k = engine.register(Arc::new(FusedByteSumWorkload)).unwrap();
    // Inputs shorter than a tile roll back every tile: commit rate 0 %.
    for i in 0..2u8 {
        let input = vec![i; 5];
        let answer = engine
            .submit(Batch::new(k, input.clone()))
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(answer.output, reference(&input));
        assert!(answer.raced);
    }
    // Threshold 15 %: 150 000 → 112 500 → 84 375 ppm, below 112 500 − 28 125: off.
    assert!(!engine.speculator().should_speculate());
    assert_eq!(engine.speculator().samples(), 2);
    let toggles: Vec<_> = events
        .try_iter()
        .filter_map(|e| match e {
            Event::SpeculatorToggled {
                enabled,
                commit_rate_ppm,
            } => Some((enabled, commit_rate_ppm)),
            _ => None,
        })
        .collect();
    assert_eq!(toggles, vec![(false, 84_375)]);
    // Fused path off: prefilter + serial confirm (the conservative variant) alone.
    let fused_runs = backend.runs(FusedByteSumWorkload::FUSED);
    for i in 0..5u8 {
        let input = vec![i; 16];
        let answer = engine
            .submit(Batch::new(k, input.clone()))
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(answer.output, reference(&input));
        assert_eq!(answer.arm, Arm::Conservative);
        assert!(!answer.raced);
    }
    assert_eq!(backend.runs(FusedByteSumWorkload::FUSED), fused_runs);
}

#[test]
fn force_mode_refuses_a_kernel_without_a_fused_path() {
    use photofinish::speculator::SpeculationMode;
    use photofinish::FusedByteSumWorkload;
    let backend = Arc::new(TestBackend::new(1, 1, 1));
    let engine = Engine::builder()
        .backend_instance(backend)
        .speculation_mode(SpeculationMode::Force)
        .build()
        .unwrap();
    let err = engine.register(Arc::new(ByteSumWorkload)).unwrap_err();
    assert!(
        matches!(err, EngineError::SpeculationUnsupported { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("no fused path"));
    let k = engine.register(Arc::new(FusedByteSumWorkload)).unwrap();
    let answer = engine
        .submit(Batch::new(k, vec![1; 3]))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(answer.output, reference(&[1; 3]));
}

#[test]
fn single_arm_runs_are_timed_one_in_a_period_and_races_always() {
    let backend = Arc::new(TestBackend::new(1, 2, 1));
    backend.set_byte_sum_ns(1_000, 500);
    let engine = Engine::builder()
        .backend_instance(backend.clone())
        .without_autotune_file()
        .audit_period(0)
        .build()
        .unwrap();
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    let answers: Vec<_> = (0..8 + 2 * photofinish::TIMED_SINGLE_PERIOD as usize)
        .map(|i| {
            let input = vec![i as u8; 16];
            let answer = engine
                .submit(Batch::new(k, input.clone()))
                .unwrap()
                .wait()
                .unwrap();
            assert_eq!(answer.output, reference(&input), "batch {i}");
            answer
        })
        .collect();
    let (races, singles) = answers.split_at(8);
    assert!(races.iter().all(|a| a.raced && a.kernel_ns == Some(1_000)));
    // Counted per queue: each queue's first single-arm run is timed, and one in
    // TIMED_SINGLE_PERIOD after it.
    let period = photofinish::TIMED_SINGLE_PERIOD as usize;
    let mut per_queue: Vec<(photofinish::backend::QueueId, Vec<bool>)> = Vec::new();
    for a in singles {
        let timed = a.kernel_ns.is_some();
        match per_queue.iter_mut().find(|(q, _)| *q == a.queue) {
            Some((_, runs)) => runs.push(timed),
            None => per_queue.push((a.queue, vec![timed])),
        }
    }
    let mut timed_runs = 0;
    for (queue, runs) in &per_queue {
        let expected: Vec<bool> = (0..runs.len()).map(|i| i % period == 0).collect();
        assert_eq!(runs, &expected, "single-arm runs on {queue}, timed or not");
        timed_runs += runs.iter().filter(|&&t| t).count() as u64;
    }
    assert!(timed_runs >= 2, "at least the first and the period's");
    assert!(singles
        .iter()
        .all(|a| !a.raced && a.arm == Arm::Speculative));
    assert_eq!(backend.untimed_calls(), singles.len() as u64 - timed_runs);
    engine.shutdown();
}

/// Adopts `ByteSumWorkload` on a one-queue (so one-worker) test backend built with
/// `max_group` (`None`: the builder's default) whose variants report `scale` × 1 000 ns
/// and × 500 ns of kernel time, holds the worker in a paused dispatch,
/// queues `inputs` behind it, resumes, and returns the backend, each input's answer
/// (checked against the reference), the backend calls the backlog took and what every
/// `PolicyAudit` said the engine did about D1.
/// How `run_backlog` submits its backlog.
#[derive(Clone, Copy)]
enum Submit {
    /// One `submit` per batch.
    EachAlone,
    /// One `submit_many` for all of them.
    AllAtOnce,
}

fn run_backlog(
    submit: Submit,
    max_group: Option<usize>,
    scale: u64,
    inputs: &[Vec<u8>],
) -> (
    Arc<TestBackend>,
    Vec<photofinish::Answer>,
    u64,
    Vec<PolicyAction>,
) {
    let backend = Arc::new(TestBackend::new(1, 1, 1));
    backend.set_byte_sum_ns(1_000 * scale, 500 * scale);
    let mut builder = Engine::builder().backend_instance(backend.clone());
    if let Some(n) = max_group {
        builder = builder.max_group(n);
    }
    let engine = builder.build().unwrap();
    let events = engine.subscribe();
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    for i in 0..8u8 {
        engine
            .submit(Batch::new(k, vec![i; 16]))
            .unwrap()
            .wait()
            .unwrap();
    }
    assert_eq!(engine.verdict(k), Some(KernelVerdict::Adopted));

    backend.pause();
    let held = engine.submit(Batch::new(k, vec![1u8; 16])).unwrap();
    // Let the worker take it and block in the paused dispatch (8 races, back to back
    // on the one queue, took 16 calls).
    while backend.dispatch_calls() == 16 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let before = backend.dispatch_calls();
    let batches = inputs.iter().map(|input| Batch::new(k, input.clone()));
    let tickets: Vec<_> = match submit {
        Submit::EachAlone => batches.map(|b| engine.submit(b).unwrap()).collect(),
        Submit::AllAtOnce => engine.submit_many(batches).unwrap(),
    };
    // D1 groups only when the measured per-call overhead times the backlog outweighs
    // the kernel's first call: hold the call long enough that its overhead dominates
    // whatever the first call cost on a busy machine (without this the test depended
    // on timing and failed now and then).
    std::thread::sleep(Duration::from_millis(50));
    backend.resume();
    assert_eq!(held.wait().unwrap().output, reference(&[1u8; 16]));
    let answers = inputs
        .iter()
        .zip(tickets)
        .map(|(input, ticket)| {
            let answer = ticket.wait().unwrap();
            assert_eq!(answer.output, reference(input));
            answer
        })
        .collect();
    let calls = backend.dispatch_calls() - before;
    engine.shutdown();
    let d1 = events
        .try_iter()
        .filter_map(|e| match e {
            Event::PolicyAudit { fired, did, .. } => Some(fired.into_iter().zip(did)),
            _ => None,
        })
        .flatten()
        .filter_map(|(fired, did)| fired.starts_with("D1").then_some(did))
        .collect();
    (backend, answers, calls, d1)
}

#[test]
fn a_backlog_of_a_decided_kernel_runs_in_groups_of_one_backend_call() {
    runs_in_groups(Submit::EachAlone);
}

#[test]
fn a_window_of_a_decided_kernel_runs_in_groups_too() {
    runs_in_groups(Submit::AllAtOnce);
}

/// 40 backlogged batches of an adopted kernel, submitted by `submit` with
/// `max_group(8)`, run on the speculative variant in groups.
fn runs_in_groups(submit: Submit) {
    let inputs: Vec<Vec<u8>> = (0..40u8).map(|i| (0..=i).collect()).collect();
    let (backend, answers, calls, d1) = run_backlog(submit, Some(8), 1, &inputs);
    for answer in &answers {
        assert_eq!(answer.arm, Arm::Speculative);
    }
    // 40 batches in groups of at most 8 (`max_group(8)`): at least 5 calls, and far fewer
    // than one call a batch.
    assert!(
        (5..=20).contains(&calls),
        "40 backlogged batches took {calls} backend calls"
    );
    assert_eq!(backend.runs(ByteSumWorkload::SPECULATIVE), 8 + 1 + 40);
    // The audit says so, with no more batches than a backend call really carried.
    let largest = backend.largest_call();
    assert!((2..=8).contains(&largest), "largest call {largest}");
    let grouped: Vec<usize> = d1
        .iter()
        .filter_map(|did| match did {
            PolicyAction::Grouped { batches } => Some(*batches),
            _ => None,
        })
        .collect();
    assert!(!grouped.is_empty(), "no audit said grouped: {d1:?}");
    for batches in grouped {
        assert!(
            (2..=largest as usize).contains(&batches),
            "audited {batches} grouped, the largest call carried {largest}: {d1:?}"
        );
    }
}

#[test]
fn submit_many_answers_each_batch_on_its_own_ticket_in_order() {
    let backend = Arc::new(TestBackend::new(1, 2, 2));
    let engine = engine_on(&backend);
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    for size in [0usize, 1, 2, 3, 4, 5, 17, 200] {
        let inputs: Vec<Vec<u8>> = (0..size).map(|i| vec![i as u8; i % 7 + 1]).collect();
        let tickets = engine
            .submit_many(inputs.iter().map(|input| Batch::new(k, input.clone())))
            .unwrap();
        assert_eq!(tickets.len(), size);
        for (i, (input, ticket)) in inputs.iter().zip(tickets).enumerate() {
            let answer = ticket.wait().unwrap();
            assert_eq!(
                answer.output,
                reference(input),
                "window of {size}, batch {i}"
            );
        }
    }
}

#[test]
fn submit_many_with_a_refused_batch_submits_none() {
    let backend = Arc::new(TestBackend::new(1, 2, 1));
    let engine = engine_on(&backend);
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    let plan = photofinish::kernels::DispatchPlan {
        buffers: Vec::new(),
        push_constants: Vec::new(),
        workgroups: [1, 1, 1],
    };
    // A kernel id this engine never gave out: another engine's second kernel.
    let other = engine_on(&Arc::new(TestBackend::new(1, 1, 1)));
    other.register(Arc::new(ByteSumWorkload)).unwrap();
    let foreign = other.register(Arc::new(ByteSumWorkload)).unwrap();
    let refused = [
        (Batch::with_plan(k, plan), "wrong payload"),
        (Batch::new(foreign, vec![1]), "unknown kernel"),
    ];
    for (bad, what) in refused {
        let batches = vec![
            Batch::new(k, vec![1]),
            Batch::new(k, vec![2]),
            bad,
            Batch::new(k, vec![3]),
        ];
        let err = engine.submit_many(batches).unwrap_err();
        assert!(
            matches!(
                err,
                EngineError::WrongPayload { .. } | EngineError::UnknownKernel(_)
            ),
            "{what}: {err}"
        );
    }
    // Shutdown drains every accepted batch: had any of the refused calls' batches been
    // queued, the backend would have run it by now.
    engine.shutdown();
    assert_eq!(backend.dispatch_calls(), 0);
    assert_eq!(
        engine.submit_many([Batch::new(k, vec![1])]).unwrap_err(),
        EngineError::ShutDown
    );
    assert_eq!(
        engine.submit_many(Vec::new()).unwrap_err(),
        EngineError::ShutDown
    );
}

#[test]
fn shutdown_answers_every_batch_of_queued_windows() {
    let backend = Arc::new(TestBackend::new(1, 2, 1));
    backend.pause();
    let engine = engine_on(&backend);
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    let inputs: Vec<Vec<u8>> = (0..60u8).map(|i| vec![i, i]).collect();
    let tickets: Vec<_> = inputs
        .chunks(20)
        .flat_map(|chunk| {
            engine
                .submit_many(chunk.iter().map(|input| Batch::new(k, input.clone())))
                .unwrap()
        })
        .collect();
    let closer = std::thread::spawn(move || {
        engine.shutdown();
        engine
    });
    std::thread::sleep(Duration::from_millis(20));
    backend.resume();
    let engine = closer.join().unwrap();
    for (i, (input, t)) in inputs.iter().zip(tickets).enumerate() {
        assert!(t.is_ready(), "ticket {i} unanswered after shutdown");
        assert_eq!(t.wait().unwrap().output, reference(input));
    }
    drop(engine);
}

#[test]
fn by_default_a_launch_bound_backlog_is_grouped_and_the_audit_says_so() {
    let inputs: Vec<Vec<u8>> = (0..20u8).map(|i| (0..=i).collect()).collect();
    let (backend, _, calls, d1) = run_backlog(Submit::EachAlone, None, 1, &inputs);
    assert!(
        calls < 20,
        "20 backlogged batches took {calls} backend calls"
    );
    let largest = backend.largest_call() as usize;
    assert!((2..=DEFAULT_MAX_GROUP).contains(&largest), "{largest}");
    assert!(
        d1.iter()
            .any(|did| matches!(did, PolicyAction::Grouped { batches } if *batches <= largest)),
        "{d1:?}"
    );
}

#[test]
fn by_default_a_batch_submitted_alone_is_never_grouped() {
    // One at a time (each answer waited for): no backlog, so no group however
    // launch-bound the kernel, and the lone batch's latency is untouched.
    let backend = Arc::new(TestBackend::new(1, 1, 1));
    backend.set_byte_sum_ns(1_000, 500);
    let engine = engine_on(&backend);
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    for i in 0..40u8 {
        let input: Vec<u8> = (0..=i).collect();
        let answer = engine.submit(Batch::new(k, input.clone())).unwrap().wait();
        assert_eq!(answer.unwrap().output, reference(&input));
    }
    assert_eq!(engine.verdict(k), Some(KernelVerdict::Adopted));
    assert_eq!(backend.largest_call(), 1);
    engine.shutdown();
}

#[test]
fn a_backlog_of_a_long_kernel_is_not_grouped() {
    // A 100 µs kernel (as reported), above the 20 µs up to which a kernel's backlog is
    // grouped, although the held call makes its launch overhead look far larger:
    // grouping would make each caller wait for the others' kernels.
    let inputs: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 8]).collect();
    let (backend, _, calls, d1) = run_backlog(Submit::EachAlone, Some(8), 200, &inputs);
    assert_eq!(calls, 20);
    assert_eq!(backend.largest_call(), 1);
    // Where D1 fired, the audit says why the batch went alone.
    for did in &d1 {
        assert_eq!(
            *did,
            PolicyAction::NotGrouped {
                why: GroupRefusal::NotLaunchBound
            },
            "{d1:?}"
        );
    }
}

#[test]
fn an_answered_batch_leaves_the_engine_no_reference_to_its_input() {
    // Races (learning, then audits) and single-arm runs alike: by the time the answer
    // is taken, the engine has let go of the batch's input, on the caller's thread, so
    // the caller can reuse the buffer in place.
    let backend = Arc::new(TestBackend::new(1, 2, 1));
    backend.set_byte_sum_ns(1_000, 500);
    let engine = engine_auditing(&backend, 4);
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    let mut input: Arc<[u8]> = (0..=200u8).collect::<Vec<_>>().into();
    for batch in 0..400u32 {
        let ticket = engine.submit(Batch::new(k, Arc::clone(&input))).unwrap();
        assert_eq!(ticket.wait().unwrap().output, reference(&input));
        let Some(bytes) = Arc::get_mut(&mut input) else {
            panic!("batch {batch}: the engine still holds its input after the answer");
        };
        bytes[0] = bytes[0].wrapping_add(1);
    }
    assert_eq!(engine.verdict(k), Some(KernelVerdict::Adopted));
}

/// Issue #25: `register`, `register_pair` and `register_variants` after `shutdown`
/// returned a fresh id, for a kernel no batch could ever run.
#[test]
fn register_after_shutdown_returns_shut_down_instead_of_an_id() {
    let backend = Arc::new(TestBackend::new(1, 2, 1));
    let engine = engine_on(&backend);
    engine.register(Arc::new(ByteSumWorkload)).unwrap();
    engine.shutdown();
    let mut variants = ByteSumWorkload.variants();
    let spec = variants.pop().unwrap();
    let cons = variants.pop().unwrap();
    assert_eq!(
        engine.register(Arc::new(ByteSumWorkload)),
        Err(EngineError::ShutDown)
    );
    assert_eq!(
        engine.register_pair("pair", cons.clone(), spec.clone()),
        Err(EngineError::ShutDown)
    );
    assert_eq!(
        engine.register_variants("variants", cons, vec![spec.clone(), spec]),
        Err(EngineError::ShutDown)
    );
}

/// Resident memory of this process in bytes (`/proc/self/statm`'s second field, in
/// pages of 4 KiB).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm reads");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .expect("statm has a resident field");
    pages * 4096
}

/// Issue #25: 20 000 `drop(engine.subscribe())` on a quiet engine (no event published
/// to prune them) took the process from 5.8 MB to 2.1 GB: each dropped subscriber kept
/// its preallocated 1 024-event channel on the bus until the next event.
#[test]
fn dropped_subscribers_on_a_quiet_engine_do_not_pile_up_on_the_bus() {
    let backend = Arc::new(TestBackend::new(1, 2, 1));
    let engine = Engine::builder()
        .backend_instance(backend.clone())
        .without_autotune_file()
        .build()
        .unwrap();
    let kept = engine.subscribe();
    let before = resident_bytes();
    for _ in 0..20_000 {
        drop(engine.subscribe());
    }
    let grown = resident_bytes().saturating_sub(before);
    // The one kept and at most the last one dropped.
    assert!(
        engine.event_subscribers() <= 2,
        "{} subscribers on the bus",
        engine.event_subscribers()
    );
    assert!(
        grown < 64 << 20,
        "resident memory grew by {} MiB",
        grown >> 20
    );
    // Delivery is unchanged for the subscriber that stayed: the sticky first event,
    // then what is published.
    assert!(matches!(kept.try_recv(), Ok(Event::BackendSelected { .. })));
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    backend.inject(
        ByteSumWorkload::SPECULATIVE,
        photofinish::InjectedFault::CorruptOutput,
        1,
    );
    engine
        .submit(Batch::new(k, vec![1, 2]))
        .unwrap()
        .wait()
        .unwrap();
    let got: Vec<Event> = kept.try_iter().collect();
    assert!(
        got.iter()
            .any(|e| matches!(e, Event::MismatchCaught { .. })),
        "{got:?}"
    );
    assert_eq!(kept.dropped(), 0);
    assert_eq!(engine.event_subscribers(), 1);
}

/// A subscription read with a `for` loop ends once the engine is gone (the bus held
/// no sender for it any more), as the receiver `subscribe` returned before did.
#[test]
fn a_subscription_iterated_to_its_end_ends_when_the_engine_is_dropped() {
    let backend = Arc::new(TestBackend::new(1, 2, 1));
    let engine = Engine::builder()
        .backend_instance(backend.clone())
        .without_autotune_file()
        .build()
        .unwrap();
    let events = engine.subscribe();
    drop(engine);
    let (sent, got) = std::sync::mpsc::channel();
    std::thread::spawn(move || sent.send(events.into_iter().collect::<Vec<Event>>()));
    let got = got
        .recv_timeout(Duration::from_secs(30))
        .expect("the `for` loop over the subscription ends once the engine is gone");
    assert!(
        matches!(got[..], [Event::BackendSelected { .. }]),
        "{got:?}"
    );
}
