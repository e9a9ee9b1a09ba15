//! Bad inputs (issue #7): what a user can get wrong at each public entry point gives a
//! typed error whose message names the fix — and random operation sequences against
//! the engine on the CPU backend never panic and never lose a ticket.
//!
//! The per-backend rows that check the error *variant* live with their owners
//! (tests/kernels.rs for the CPU backend, tests/vulkan_backend.rs on lavapipe,
//! tests/engine.rs, tests/persistence.rs); RELIABILITY.md maps every row to its test.
//! This file adds what those do not: that each message tells the user what to do, the
//! autotune path rows they lack, and the engine operation-sequence fuzzing.

use std::sync::Arc;

use photofinish::autotune::{AutotuneError, AutotuneStore};
use photofinish::backend::cpu::CpuBackend;
use photofinish::backend::{
    Backend, BackendError, BindingAccess, BindingDesc, BufferArg, DispatchJob, KernelVariant,
};
use photofinish::kernels::{self, Workload};
use photofinish::{Batch, Engine, EngineError, KernelId, Output, Ticket, TrySubmitError};
use proptest::prelude::*;

/// Asserts that `message` says what went wrong, then (after a `;`) what to do, and that
/// the fix contains `fix`.
fn names_the_fix(message: &str, fix: &str) {
    let Some((_, advice)) = message.rsplit_once("; ") else {
        panic!("no fix in the message: {message:?}");
    };
    assert!(
        advice.contains(fix),
        "the fix {advice:?} should mention {fix:?} (message: {message:?})"
    );
}

fn reduce_variant() -> KernelVariant {
    kernels::by_name("reduce")
        .expect("reduce is a built-in workload")
        .variants()
        .remove(0)
}

fn dispatch_error(backend: &CpuBackend, job: DispatchJob) -> BackendError {
    match backend.dispatch(&[job]).remove(0) {
        Ok(out) => panic!("expected an error, got {} outputs", out.outputs.len()),
        Err(e) => e,
    }
}

/// Every error of the CPU backend that a user's variant or job can cause, produced for
/// real, names its fix.
#[test]
fn every_cpu_backend_error_a_user_can_cause_names_its_fix() {
    let backend = CpuBackend::with_threads(2).expect("the CPU backend starts");
    let mut no_code = reduce_variant();
    no_code.cpu = None;
    let e = backend.load_kernel(0, &no_code).expect_err("no CPU code");
    assert!(matches!(e, BackendError::Unsupported { .. }), "{e:?}");
    names_the_fix(&e.to_string(), "CPU code");

    let e = backend
        .load_kernel(3, &reduce_variant())
        .expect_err("no device 3");
    assert!(matches!(e, BackendError::Unknown { .. }), "{e:?}");
    names_the_fix(&e.to_string(), "from this backend");

    let mut twice = reduce_variant();
    twice
        .bindings
        .push(BindingDesc::new(0, BindingAccess::Read));
    let e = backend
        .load_kernel(0, &twice)
        .expect_err("binding declared twice");
    assert!(matches!(e, BackendError::BindingMismatch { .. }), "{e:?}");
    names_the_fix(&e.to_string(), "declare the bindings");

    let kernel = backend.load_kernel(0, &reduce_variant()).expect("loads");
    let good = DispatchJob {
        queue: backend.queues()[0],
        kernel,
        buffers: vec![
            BufferArg::Data(Arc::from(vec![1u8; 16])),
            BufferArg::Zeroed(4),
        ],
        push_constants: 4u32.to_le_bytes().to_vec(),
        workgroups: [1, 1, 1],
    };
    let with = |change: &dyn Fn(&mut DispatchJob)| {
        let mut job = good.clone();
        change(&mut job);
        dispatch_error(&backend, job)
    };

    let e = with(&|j| j.workgroups = [65_536, 1, 1]);
    assert!(matches!(e, BackendError::DispatchTooLarge { .. }), "{e:?}");
    names_the_fix(&e.to_string(), "split the batch");

    let e = with(&|j| j.buffers[0] = BufferArg::Data(Arc::from(Vec::<u8>::new())));
    assert!(
        matches!(e, BackendError::BufferSizeMismatch { .. }),
        "{e:?}"
    );
    names_the_fix(&e.to_string(), "size the kernel needs");

    let e = with(&|j| j.buffers.pop().map_or((), drop));
    assert!(matches!(e, BackendError::BindingMismatch { .. }), "{e:?}");
    names_the_fix(&e.to_string(), "declare the bindings");

    let e = with(&|j| j.push_constants.clear());
    assert!(matches!(e, BackendError::BindingMismatch { .. }), "{e:?}");

    let e = with(&|j| j.queue.index = 99);
    assert!(matches!(e, BackendError::Unknown { .. }), "{e:?}");
    names_the_fix(&e.to_string(), "queues from this backend");

    // A variant whose CPU code fails or panics: a typed error, never a panic here.
    let mut panicking = reduce_variant();
    panicking.name = "panics".into();
    panicking.cpu = Some(Arc::new(|_: &mut [Vec<u8>], _: &[u8], _: [u32; 3]| {
        panic!("a kernel bug")
    }));
    let handle = backend.load_kernel(0, &panicking).expect("loads");
    let e = with(&|j| j.kernel = handle);
    assert!(matches!(e, BackendError::KernelFailed { .. }), "{e:?}");
    names_the_fix(&e.to_string(), "kernel's CPU code");
}

/// The autotune file path rows tests/persistence.rs does not have.
#[test]
fn autotune_save_to_a_path_that_names_no_file_is_invalid_path() {
    let store = AutotuneStore::default();
    for path in ["", "..", "/"] {
        let e = store.save(path).expect_err("no file name");
        assert!(
            matches!(e, AutotuneError::InvalidPath { .. }),
            "{path:?}: {e:?}"
        );
        names_the_fix(&e.to_string(), "dir/autotune.json");
    }
}

#[test]
fn autotune_save_under_a_regular_file_is_an_io_error_naming_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").expect("write");
    let e = AutotuneStore::default()
        .save(file.join("autotune.json"))
        .expect_err("a file is no directory");
    assert!(matches!(e, AutotuneError::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("not-a-dir"), "{e}");
    names_the_fix(&e.to_string(), "check that the path exists");
    assert_eq!(
        std::fs::read(&file).expect("read"),
        b"x",
        "the file is untouched"
    );
}

/// One step of a random sequence of calls to the engine.
#[derive(Debug, Clone)]
enum Op {
    /// Register the built-in workload with this index (mod the count).
    Register(usize),
    /// Submit an input of this length and seed to the kernel with this index.
    Submit {
        kernel: usize,
        len: usize,
        seed: u64,
    },
    /// The same, with `try_submit`.
    TrySubmit {
        kernel: usize,
        len: usize,
        seed: u64,
    },
    /// Submit to a kernel id this engine never handed out.
    SubmitUnknown,
    /// Wait for the oldest ticket.
    WaitOldest,
    /// Subscribe and drop the receiver at once.
    SubscribeAndDrop,
    /// Shut the engine down (further submits must be refused).
    Shutdown,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0usize..8).prop_map(Op::Register),
        6 => (0usize..8, 0usize..600, any::<u64>())
            .prop_map(|(kernel, len, seed)| Op::Submit { kernel, len, seed }),
        3 => (0usize..8, 0usize..600, any::<u64>())
            .prop_map(|(kernel, len, seed)| Op::TrySubmit { kernel, len, seed }),
        1 => Just(Op::SubmitUnknown),
        3 => Just(Op::WaitOldest),
        1 => Just(Op::SubscribeAndDrop),
        1 => Just(Op::Shutdown),
    ]
}

/// An accepted batch: its ticket, the workload and the input, to check the answer.
type Pending = (Ticket, Arc<dyn Workload>, Vec<u8>);

/// The answer to an accepted batch: the reference output, or a typed error the input
/// explains (an input the workload refuses).
fn check_answer((ticket, workload, input): Pending) -> Result<(), TestCaseError> {
    match ticket.wait() {
        Ok(answer) => prop_assert_eq!(answer.output, Output::Answer(workload.reference(&input))),
        Err(EngineError::Workload(_)) => {}
        Err(other) => prop_assert!(false, "{}: unexpected error {other}", workload.name()),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random sequences of calls on the CPU backend: no panic, every accepted batch answered
    /// exactly once (with the reference, or a typed error for an input the workload
    /// refuses), and after shutdown every submit is refused with `ShutDown`.
    #[test]
    fn random_engine_call_sequences_never_panic_or_lose_a_ticket(
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let backend = Arc::new(CpuBackend::with_threads(2).expect("the CPU backend starts"));
        let engine = Engine::builder()
            .backend_instance(backend)
            .channel_capacity(4)
            .build()
            .expect("the engine builds on the CPU backend");
        let builtin = kernels::builtin();
        // A kernel id from another engine: never valid here.
        let foreign = {
            let other = Engine::builder()
                .backend_instance(Arc::new(CpuBackend::with_threads(2).expect("cpu")))
                .build()
                .expect("engine");
            let mut id = other.register(Arc::clone(&builtin[0])).expect("register");
            for w in builtin.iter().cycle().take(48) {
                id = other.register(Arc::clone(w)).expect("register");
            }
            id
        };
        let mut registered: Vec<(KernelId, Arc<dyn Workload>)> = Vec::new();
        let mut pending: std::collections::VecDeque<Pending> = Default::default();
        let mut shut_down = false;
        for op in ops {
            match op {
                Op::Register(i) => {
                    let w = Arc::clone(&builtin[i % builtin.len()]);
                    match engine.register(Arc::clone(&w)) {
                        Ok(id) => registered.push((id, w)),
                        Err(e) => prop_assert!(shut_down, "register failed: {e}"),
                    }
                }
                Op::Submit { kernel, len, seed } | Op::TrySubmit { kernel, len, seed } => {
                    let Some((id, w)) = registered.get(kernel % registered.len().max(1)).cloned()
                    else {
                        continue;
                    };
                    let shapes = w.shapes();
                    let shape = shapes[(seed as usize) % shapes.len().max(1)];
                    let input = w.generate(shape, len, seed);
                    let batch = Batch::new(id, input.clone());
                    let result = if matches!(op, Op::Submit { .. }) {
                        engine.submit(batch).map_err(|e| (e, false))
                    } else {
                        engine.try_submit(batch).map_err(|e| match e {
                            TrySubmitError::Full(_) => (EngineError::Unanswered, true),
                            TrySubmitError::ShutDown(_) => (EngineError::ShutDown, false),
                            TrySubmitError::Rejected(_, e) => (e, false),
                            other => (EngineError::Failed {
                                kernel: w.name().into(),
                                reason: other.to_string(),
                            }, false),
                        })
                    };
                    match result {
                        Ok(ticket) => {
                            prop_assert!(!shut_down, "a batch was accepted after shutdown");
                            pending.push_back((ticket, w, input));
                        }
                        // `Full` is backpressure, not an error of the batch.
                        Err((_, true)) => prop_assert!(!shut_down),
                        Err((EngineError::ShutDown, _)) => prop_assert!(shut_down),
                        Err((EngineError::Workload(_), _)) => {}
                        Err((e, _)) => prop_assert!(false, "submit failed: {e}"),
                    }
                }
                Op::SubmitUnknown => {
                    let e = engine.submit(Batch::new(foreign, vec![1, 2, 3]));
                    prop_assert!(
                        matches!(e, Err(EngineError::UnknownKernel(_)) | Err(EngineError::ShutDown)),
                        "{:?}", e.map(|_| ())
                    );
                }
                Op::WaitOldest => {
                    if let Some(p) = pending.pop_front() {
                        check_answer(p)?;
                    }
                }
                Op::SubscribeAndDrop => drop(engine.subscribe()),
                Op::Shutdown => {
                    engine.shutdown();
                    shut_down = true;
                }
            }
        }
        engine.shutdown();
        for p in pending {
            check_answer(p)?;
        }
    }
}
