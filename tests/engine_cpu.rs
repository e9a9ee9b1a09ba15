//! End to end on the CPU backend (`BackendChoice::Cpu`): every built-in workload
//! reaches a verdict, and every answer equals the workload's reference.

use std::sync::Arc;

use photofinish::kernels::by_name;
use photofinish::{BackendChoice, Batch, Engine, Event, KernelVerdict, Output};

#[path = "support/e2e.rs"]
mod e2e;

fn cpu_engine() -> Engine {
    Engine::builder()
        .backend(BackendChoice::Cpu)
        .without_autotune_file()
        .build()
        .expect("the CPU backend always opens")
}

#[test]
fn every_builtin_workload_reaches_a_verdict_with_reference_answers() {
    let engine = cpu_engine();
    assert_eq!(
        engine.backend_kind(),
        photofinish::backend::BackendKind::Cpu
    );
    let outcomes = e2e::run_every_builtin(&engine, 16, 400);
    for o in &outcomes {
        eprintln!("{o:?}");
    }
    for o in &outcomes {
        assert_ne!(o.verdict, KernelVerdict::Undecided, "{o:?}");
        assert!(o.raced >= 8, "a verdict needs 8 paired samples: {o:?}");
    }
    engine.shutdown();
}

#[test]
fn auto_announces_its_backend_once() {
    let engine = Engine::builder()
        .without_autotune_file()
        .build()
        .expect("auto always opens a backend");
    let first = engine.subscribe();
    let second = engine.subscribe();
    for events in [first, second] {
        match events.try_recv() {
            Ok(Event::BackendSelected { kind, reason, .. }) => {
                assert_eq!(kind, engine.backend_kind());
                assert!(reason.starts_with("auto:"), "{reason}");
            }
            other => panic!("expected BackendSelected first, got {other:?}"),
        }
        assert!(events.try_recv().is_err(), "announced once");
    }
}

/// Runs `producer(p)` for `p` in `0..n`, each on a thread of its own, all at once, and
/// waits for them (a producer's panic fails the caller).
fn from_producers(n: usize, producer: impl Fn(usize) + Sync) {
    std::thread::scope(|s| {
        for p in 0..n {
            let producer = &producer;
            s.spawn(move || producer(p));
        }
    });
}

#[test]
fn producers_on_several_threads_get_reference_answers() {
    let engine = cpu_engine();
    let workload = by_name("histogram").expect("built in");
    let kernel = engine.register(Arc::clone(&workload)).unwrap();
    from_producers(4, |t| {
        for i in 0..25u64 {
            let shape = workload.shapes()[(i % 2) as usize % workload.shapes().len()];
            let input = workload.generate(shape, 4096 + i as usize, t as u64 * 100 + i);
            let answer = engine
                .submit(Batch::new(kernel, input.clone()))
                .unwrap()
                .wait()
                .unwrap();
            assert_eq!(answer.output, Output::Answer(workload.reference(&input)));
        }
    });
}

/// Inputs of 1 MiB bound without a copy (`Workload::plan_shared`: the batch's own `Arc`)
/// and answers of hundreds of KiB (a scan of dense matches: a position per 24 bytes)
/// reach their callers equal to the reference, batch after batch from several threads
/// sharing the same inputs.
#[test]
fn large_answers_reach_their_callers_whole() {
    let engine = cpu_engine();
    let scan = by_name("scan").expect("scan is built in");
    let kernel = engine.register(Arc::clone(&scan)).expect("scan registers");
    let inputs: Vec<(Arc<[u8]>, Vec<u8>)> = (0..4)
        .map(|seed| {
            let input: Arc<[u8]> = scan
                .generate(
                    photofinish::kernels::InputShape::DenseMatches,
                    1 << 20,
                    seed,
                )
                .into();
            let reference = scan.reference(&input);
            (input, reference)
        })
        .collect();
    assert!(
        inputs.iter().all(|(_, r)| r.len() >= 64 * 1024),
        "the answers must be large for this test"
    );
    from_producers(3, |p| {
        for round in 0..12 {
            let tickets: Vec<_> = (0..4)
                .map(|i| {
                    let (input, _) = &inputs[(p + round + i) % inputs.len()];
                    engine
                        .submit(Batch::new(kernel, Arc::clone(input)))
                        .expect("submit")
                })
                .collect();
            for (i, ticket) in tickets.into_iter().enumerate() {
                let (_, reference) = &inputs[(p + round + i) % inputs.len()];
                let answer = ticket.wait().expect("a scan batch failed");
                assert_eq!(answer.output, Output::Answer(reference.clone()));
            }
        }
    });
    engine.shutdown();
}

/// A built-in workload binds a batch's input `Arc` itself where it needs no padding
/// (`Workload::plan_shared`): by the time each answer is taken the engine has still let
/// go of it, through races and single-arm runs, so the caller can reuse it in place.
#[test]
fn a_builtin_workload_leaves_no_reference_to_its_input_once_answered() {
    let engine = cpu_engine();
    let histogram = by_name("histogram").expect("histogram is built in");
    let kernel = engine.register(Arc::clone(&histogram)).expect("registers");
    let mut input: Arc<[u8]> = histogram
        .generate(photofinish::kernels::InputShape::Uniform, 4096, 1)
        .into();
    for batch in 0..200 {
        let ticket = engine
            .submit(Batch::new(kernel, Arc::clone(&input)))
            .expect("submit");
        let answer = ticket.wait().expect("a histogram batch failed");
        assert_eq!(answer.output, Output::Answer(histogram.reference(&input)));
        let Some(bytes) = Arc::get_mut(&mut input) else {
            panic!("batch {batch}: the engine still holds its input after the answer");
        };
        bytes[batch % 4096] = bytes[batch % 4096].wrapping_add(1);
    }
    assert_ne!(engine.verdict(kernel), Some(KernelVerdict::Undecided));
    engine.shutdown();
}
