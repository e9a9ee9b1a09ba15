//! Kernels that never return, host code that panics, and batches nobody can run
//! (issue #25 items 4–6): a looping speculative variant holds neither its caller nor
//! `shutdown`; a looping conservative one gets a typed timeout; a panic in a
//! speculative variant's host code rejects the variant; a batch both variants refuse
//! changes no verdict. Every test runs under a watchdog, so a hang fails the run
//! instead of stalling it.

#[path = "support/watchdog.rs"]
mod watchdog;

use std::sync::Arc;
use std::time::{Duration, Instant};

use photofinish::backend::{BackendError, BindingAccess, BufferArg, KernelVariant};
use photofinish::kernels::{DispatchPlan, Workload};
use photofinish::{
    Arm, BackendChoice, Batch, ByteSumWorkload, Engine, EngineError, Event, HostCode,
    KernelVerdict, Output, PanickyHostWorkload, TestBackend, VerdictReason,
};
use watchdog::watchdog;

/// The dispatch timeout of these tests' engines.
const TIMEOUT: Duration = Duration::from_secs(1);
/// What a slow, shared 2-core machine may add to it.
const MARGIN: Duration = Duration::from_millis(1500);

/// Sums the input bytes into an 8-byte output after `spin` rounds of busy work.
fn sum(name: &str, spin: u32) -> KernelVariant {
    let layout = [BindingAccess::Read, BindingAccess::Write];
    KernelVariant::cpu(name, &layout, 0, move |buffers, _, _| {
        let mut x = 0u32;
        for i in 0..spin {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let total: u64 = buffers[0].iter().map(|&b| u64::from(b)).sum();
        buffers[1][..8].copy_from_slice(&total.to_le_bytes());
        Ok(())
    })
}

/// A variant whose code never returns (it sleeps in a loop nothing ends, so it holds
/// its thread for good without burning a core).
fn never_returns(name: &str) -> KernelVariant {
    let layout = [BindingAccess::Read, BindingAccess::Write];
    KernelVariant::cpu(name, &layout, 0, |_, _, _| loop {
        std::thread::park();
    })
}

fn cpu_engine() -> Engine {
    Engine::builder()
        .backend(BackendChoice::Cpu)
        .without_autotune_file()
        .dispatch_timeout(TIMEOUT)
        .build()
        .expect("the CPU backend builds")
}

fn plan(input: &[u8]) -> DispatchPlan {
    DispatchPlan {
        buffers: vec![BufferArg::Data(input.to_vec().into()), BufferArg::Zeroed(8)],
        push_constants: Vec::new(),
        workgroups: [1, 1, 1],
    }
}

fn sum_of(input: &[u8]) -> Output {
    let total: u64 = input.iter().map(|&b| u64::from(b)).sum();
    Output::Buffers(vec![total.to_le_bytes().to_vec()].into())
}

/// Polls until `done` or `limit` passes; true when done.
fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    done()
}

#[test]
fn a_looping_speculative_variant_does_not_hold_the_races_caller_and_is_retired() {
    let _guard = watchdog("looping speculative variant", Duration::from_secs(60));
    let engine = cpu_engine();
    let events = engine.subscribe();
    let k = engine
        .register_pair("sum", sum("sum/serial", 0), never_returns("sum/loops"))
        .unwrap();
    let input: Vec<u8> = (1..=64).collect();
    let started = Instant::now();
    let answer = engine
        .submit(Batch::with_plan(k, plan(&input)))
        .unwrap()
        .wait()
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(answer.output, sum_of(&input));
    assert!(answer.raced && answer.arm == Arm::Conservative);
    assert!(
        waited < TIMEOUT,
        "the caller waited {waited:?} for a speculative arm that never returns"
    );
    // Judged when its arm outlives the timeout: rejected.
    assert!(
        eventually(TIMEOUT + MARGIN, || engine.verdict(k)
            == Some(KernelVerdict::Rejected)),
        "the looping variant was not retired: {:?}",
        engine.verdict(k)
    );
    let reason = events
        .try_iter()
        .find_map(|e| match e {
            Event::VerdictChanged {
                reason: VerdictReason::SpeculativeFailed(r),
                ..
            } => Some(r),
            _ => None,
        })
        .expect("a VerdictChanged event says why");
    assert!(reason.contains("dispatch timeout"), "{reason}");
    // Later batches are answered, by the conservative variant alone.
    for i in 0..8u8 {
        let input = vec![i; 40];
        let answer = engine
            .submit(Batch::with_plan(k, plan(&input)))
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(answer.output, sum_of(&input));
        assert!(!answer.raced && answer.variant == 0);
    }
    let started = Instant::now();
    engine.shutdown();
    assert!(
        started.elapsed() < MARGIN,
        "shutdown took {:?}",
        started.elapsed()
    );
}

#[test]
fn shutdown_returns_within_the_timeout_while_a_speculative_kernel_loops() {
    let _guard = watchdog(
        "shutdown with a looping speculative arm",
        Duration::from_secs(60),
    );
    let engine = cpu_engine();
    let k = engine
        .register_pair("sum", sum("sum/serial", 0), never_returns("sum/loops"))
        .unwrap();
    let input = vec![3u8; 32];
    let answer = engine
        .submit(Batch::with_plan(k, plan(&input)))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(answer.output, sum_of(&input));
    // The arm is still looping: shutdown waits for it at most the timeout.
    let started = Instant::now();
    engine.shutdown();
    let took = started.elapsed();
    assert!(took < TIMEOUT + MARGIN, "shutdown took {took:?}");
}

#[test]
fn a_looping_conservative_variant_gets_a_typed_timeout_and_shutdown_returns() {
    let _guard = watchdog("looping conservative variant", Duration::from_secs(60));
    let engine = cpu_engine();
    let events = engine.subscribe();
    let looping = engine
        .register_pair("stuck", never_returns("stuck/loops"), sum("stuck/sum", 0))
        .unwrap();
    let fine = engine
        .register_pair("sum", sum("sum/serial", 0), sum("sum/also", 0))
        .unwrap();
    let started = Instant::now();
    let err = engine
        .submit(Batch::with_plan(looping, plan(&[1, 2, 3, 4])))
        .unwrap()
        .wait()
        .unwrap_err();
    let waited = started.elapsed();
    match &err {
        EngineError::DispatchTimedOut {
            kernel,
            variant,
            after,
        } => {
            assert_eq!(kernel, "stuck");
            assert_eq!(variant, "stuck/loops");
            assert_eq!(*after, TIMEOUT);
        }
        other => panic!("expected DispatchTimedOut, got {other}"),
    }
    assert!(err.to_string().contains("dispatch_timeout"), "{err}");
    assert!(
        waited >= TIMEOUT,
        "given up on after {waited:?}, before the timeout"
    );
    assert!(
        waited < TIMEOUT + MARGIN,
        "given up on only after {waited:?}"
    );
    let restarted = events.try_iter().any(|e| {
        matches!(e, Event::WorkerRestarted { ref reason, retried: false, .. } if reason.contains("given up"))
    });
    assert!(restarted, "the stuck worker was replaced");
    // The kernel is disabled: its next batch gets the error at once.
    let started = Instant::now();
    let err = engine
        .submit(Batch::with_plan(looping, plan(&[5, 6, 7, 8])))
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(matches!(err, EngineError::DispatchTimedOut { .. }), "{err}");
    assert!(started.elapsed() < TIMEOUT, "{:?}", started.elapsed());
    // Other kernels go on, on every queue (the replacement worker included).
    let tickets: Vec<_> = (0..32u8)
        .map(|i| {
            engine
                .submit(Batch::with_plan(fine, plan(&[i; 24])))
                .unwrap()
        })
        .collect();
    for (i, ticket) in (0..32u8).zip(tickets) {
        assert_eq!(ticket.wait().unwrap().output, sum_of(&[i; 24]));
    }
    // The stuck thread still sleeps in the kernel: shutdown does not wait for it.
    let started = Instant::now();
    engine.shutdown();
    assert!(
        started.elapsed() < MARGIN,
        "shutdown took {:?}",
        started.elapsed()
    );
}

#[test]
fn shutdown_while_a_conservative_kernel_loops_returns_within_the_timeout() {
    let _guard = watchdog(
        "shutdown with a looping conservative arm",
        Duration::from_secs(60),
    );
    let engine = cpu_engine();
    let k = engine
        .register_pair("stuck", never_returns("stuck/loops"), sum("stuck/sum", 0))
        .unwrap();
    let ticket = engine
        .submit(Batch::with_plan(k, plan(&[1, 2, 3, 4])))
        .unwrap();
    // The worker is inside the kernel (or about to be): shutdown waits for the
    // watchdog to give up on it, no longer.
    let started = Instant::now();
    engine.shutdown();
    let took = started.elapsed();
    assert!(took < TIMEOUT + MARGIN, "shutdown took {took:?}");
    let err = ticket.wait().unwrap_err();
    assert!(matches!(err, EngineError::DispatchTimedOut { .. }), "{err}");
}

#[test]
fn window_batches_a_hung_worker_had_claimed_are_still_answered() {
    let _guard = watchdog("a hang inside a window", Duration::from_secs(60));
    let engine = cpu_engine();
    let stuck = engine
        .register_pair("stuck", never_returns("stuck/loops"), sum("stuck/sum", 0))
        .unwrap();
    let fine = engine
        .register_pair("sum", sum("sum/serial", 0), sum("sum/also", 0))
        .unwrap();
    // One window: the hanging batch first, then eight good ones. Its claimers take
    // chunks of four, so whichever worker hangs has claimed three more it never runs.
    let batches = std::iter::once(Batch::with_plan(stuck, plan(&[1, 2, 3, 4])))
        .chain((0..8u8).map(|i| Batch::with_plan(fine, plan(&[i; 20]))));
    let mut tickets = engine.submit_many(batches).unwrap().into_iter();
    let hung = tickets.next().unwrap();
    let started = Instant::now();
    for (i, ticket) in (0..8u8).zip(tickets) {
        let answer = ticket
            .wait()
            .unwrap_or_else(|e| panic!("window batch {i}: {e}"));
        assert_eq!(answer.output, sum_of(&[i; 20]));
    }
    assert!(
        started.elapsed() < TIMEOUT + MARGIN,
        "{:?}",
        started.elapsed()
    );
    let err = hung.wait().unwrap_err();
    assert!(matches!(err, EngineError::DispatchTimedOut { .. }), "{err}");
    let started = Instant::now();
    engine.shutdown();
    assert!(
        started.elapsed() < MARGIN,
        "shutdown took {:?}",
        started.elapsed()
    );
}

#[test]
fn an_adopted_variant_that_hangs_is_rejected_and_its_batch_gets_a_typed_timeout() {
    let _guard = watchdog("adopted variant that hangs", Duration::from_secs(120));
    let engine = Engine::builder()
        .backend(BackendChoice::Cpu)
        .without_autotune_file()
        .audit_period(0)
        .dispatch_timeout(TIMEOUT)
        .build()
        .unwrap();
    // Fast and right, except that it never returns on an input starting with 0xEE.
    let layout = [BindingAccess::Read, BindingAccess::Write];
    let fast = KernelVariant::cpu("sum/fast", &layout, 0, |buffers, _, _| {
        if buffers[0][0] == 0xEE {
            loop {
                std::thread::park();
            }
        }
        let total: u64 = buffers[0].iter().map(|&b| u64::from(b)).sum();
        buffers[1][..8].copy_from_slice(&total.to_le_bytes());
        Ok(())
    });
    let k = engine
        .register_pair("sum", sum("sum/slow", 400_000), fast)
        .unwrap();
    let input: Vec<u8> = (0..=255).collect();
    while engine.verdict(k) == Some(KernelVerdict::Undecided) {
        engine
            .submit(Batch::with_plan(k, plan(&input)))
            .unwrap()
            .wait()
            .unwrap();
    }
    assert_eq!(engine.verdict(k), Some(KernelVerdict::Adopted));
    let started = Instant::now();
    let err = engine
        .submit(Batch::with_plan(k, plan(&[0xEE; 16])))
        .unwrap()
        .wait()
        .unwrap_err();
    let waited = started.elapsed();
    assert!(
        matches!(&err, EngineError::DispatchTimedOut { variant, .. } if variant == "sum/fast"),
        "{err}"
    );
    assert!(waited >= TIMEOUT && waited < TIMEOUT + MARGIN, "{waited:?}");
    assert_eq!(engine.verdict(k), Some(KernelVerdict::Rejected));
    // The conservative variant answers from now on, on the new worker too.
    for i in 0..16u8 {
        let input = vec![i; 12];
        let answer = engine
            .submit(Batch::with_plan(k, plan(&input)))
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(answer.output, sum_of(&input));
        assert_eq!(answer.variant, 0);
    }
    let started = Instant::now();
    engine.shutdown();
    assert!(
        started.elapsed() < MARGIN,
        "shutdown took {:?}",
        started.elapsed()
    );
}

/// Batches of a [`PanickyHostWorkload`] get the conservative answer, the variant is
/// rejected on the first, and no worker panics.
fn speculative_host_panic_rejects_the_variant(code: HostCode) {
    let _guard = watchdog("speculative host-code panic", Duration::from_secs(60));
    let backend = Arc::new(TestBackend::new(1, 2, 1));
    let engine = Engine::builder()
        .backend_instance(backend.clone())
        .build()
        .unwrap();
    let events = engine.subscribe();
    let workload = PanickyHostWorkload(code);
    let k = engine.register(Arc::new(workload)).unwrap();
    for i in 0..10u8 {
        let input: Vec<u8> = (0..100).map(|j| i.wrapping_add(j).max(1)).collect();
        let answer = engine
            .submit(Batch::new(k, input.clone()))
            .unwrap()
            .wait()
            .unwrap_or_else(|e| panic!("{code:?}: batch {i} failed: {e}"));
        assert_eq!(answer.output, Output::Answer(workload.reference(&input)));
        assert_eq!(
            answer.variant, 0,
            "{code:?}: only the conservative variant answers"
        );
        assert_eq!(
            engine.verdict(k),
            Some(KernelVerdict::Rejected),
            "{code:?}: rejected after batch {i}"
        );
        // After the rejection nothing of the speculative variant runs again.
        assert_eq!(answer.raced, i == 0, "{code:?}: batch {i}");
    }
    let seen: Vec<Event> = events.try_iter().collect();
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, Event::WorkerRestarted { .. })),
        "{code:?}: a worker panicked: {seen:?}"
    );
    let rejected: Vec<&Event> = seen
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::VerdictChanged {
                    to: KernelVerdict::Rejected,
                    ..
                }
            )
        })
        .collect();
    assert_eq!(rejected.len(), 1, "{code:?}: {rejected:?}");
    assert!(
        matches!(rejected[0], Event::VerdictChanged { reason: VerdictReason::SpeculativeFailed(r), .. } if r.contains("panicked")),
        "{code:?}: {rejected:?}"
    );
}

#[test]
fn a_panic_in_speculative_plan_gives_the_conservative_answer_and_rejects_the_variant() {
    speculative_host_panic_rejects_the_variant(HostCode::Plan);
}

#[test]
fn a_panic_in_speculative_answer_gives_the_conservative_answer_and_rejects_the_variant() {
    speculative_host_panic_rejects_the_variant(HostCode::Answer);
}

#[test]
fn a_panic_in_speculation_report_gives_the_conservative_answer_and_rejects_the_variant() {
    speculative_host_panic_rejects_the_variant(HostCode::SpeculationReport);
}

#[test]
fn a_batch_both_variants_refuse_leaves_an_adopted_variant_adopted() {
    let _guard = watchdog("both variants refuse a batch", Duration::from_secs(120));
    let engine = Engine::builder()
        .backend(BackendChoice::Cpu)
        .without_autotune_file()
        .audit_period(0)
        .build()
        .unwrap();
    let k = engine
        .register_pair("sum", sum("sum/slow", 400_000), sum("sum/fast", 10))
        .unwrap();
    let input: Vec<u8> = (0..=255).collect();
    while engine.verdict(k) == Some(KernelVerdict::Undecided) {
        let answer = engine
            .submit(Batch::with_plan(k, plan(&input)))
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(answer.output, sum_of(&input));
    }
    assert_eq!(engine.verdict(k), Some(KernelVerdict::Adopted));
    // An empty buffer: no variant can bind it (`BufferArg`'s rule, the same on every
    // backend). The batch's error, no verdict change.
    let bad = DispatchPlan {
        buffers: vec![BufferArg::Data(Vec::new().into()), BufferArg::Zeroed(8)],
        push_constants: Vec::new(),
        workgroups: [1, 1, 1],
    };
    let err = engine
        .submit(Batch::with_plan(k, bad))
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::Backend {
                source: BackendError::BufferSizeMismatch { .. },
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(engine.verdict(k), Some(KernelVerdict::Adopted));
    // The next good batch still runs the adopted variant.
    let answer = engine
        .submit(Batch::with_plan(k, plan(&input)))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(answer.output, sum_of(&input));
    assert_eq!(answer.arm, Arm::Speculative);
}

#[test]
fn a_bad_batch_refused_by_both_variants_of_an_adopted_workload_changes_no_verdict() {
    let _guard = watchdog(
        "both variants refuse a workload batch",
        Duration::from_secs(60),
    );
    let backend = Arc::new(TestBackend::new(1, 2, 1));
    backend.set_byte_sum_ns(10_000, 1_000);
    let engine = Engine::builder()
        .backend_instance(backend.clone())
        .audit_period(0)
        .build()
        .unwrap();
    let k = engine.register(Arc::new(ByteSumWorkload)).unwrap();
    let mut i = 0u8;
    while engine.verdict(k) == Some(KernelVerdict::Undecided) {
        i = i.wrapping_add(1);
        engine
            .submit(Batch::new(k, vec![i; 16]))
            .unwrap()
            .wait()
            .unwrap();
    }
    assert_eq!(engine.verdict(k), Some(KernelVerdict::Adopted));
    // Both variants' kernels refuse this batch.
    for variant in [ByteSumWorkload::CONSERVATIVE, ByteSumWorkload::SPECULATIVE] {
        backend.inject(
            variant,
            photofinish::InjectedFault::Error(BackendError::KernelFailed {
                kernel: variant.into(),
                reason: "refused".into(),
            }),
            1,
        );
    }
    let err = engine
        .submit(Batch::new(k, vec![9; 16]))
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(matches!(err, EngineError::Backend { .. }), "{err}");
    assert_eq!(engine.verdict(k), Some(KernelVerdict::Adopted));
    let answer = engine
        .submit(Batch::new(k, vec![9; 16]))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(answer.arm, Arm::Speculative);
    assert_eq!(
        answer.output,
        Output::Answer(ByteSumWorkload.reference(&[9; 16]))
    );
}
