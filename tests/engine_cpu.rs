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

#[test]
fn producers_on_several_threads_get_reference_answers() {
    let engine = Arc::new(cpu_engine());
    let workload = by_name("histogram").expect("built in");
    let kernel = engine.register(Arc::clone(&workload)).unwrap();
    let producers: Vec<_> = (0..4u64)
        .map(|t| {
            let engine = Arc::clone(&engine);
            let workload = Arc::clone(&workload);
            std::thread::spawn(move || {
                for i in 0..25u64 {
                    let shape = workload.shapes()[(i % 2) as usize % workload.shapes().len()];
                    let input = workload.generate(shape, 4096 + i as usize, t * 100 + i);
                    let answer = engine
                        .submit(Batch::new(kernel, input.clone()))
                        .unwrap()
                        .wait()
                        .unwrap();
                    assert_eq!(answer.output, Output::Answer(workload.reference(&input)));
                }
            })
        })
        .collect();
    for p in producers {
        p.join().expect("producer");
    }
}
