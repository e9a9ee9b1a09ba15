//! The end-to-end scenario shared by `tests/engine_cpu.rs` and `tests/engine_vulkan.rs`:
//! every built-in workload through a real engine, every answer checked against the
//! workload's CPU reference, until each kernel reaches a verdict.

use std::sync::Arc;

use photofinish::kernels::{builtin, Workload};
use photofinish::{Batch, Engine, KernelVerdict, Output};

/// Bytes per generated batch: large enough that kernel times dominate the noise.
pub const BATCH_BYTES: usize = 64 * 1024;

/// What one workload did.
#[derive(Debug)]
pub struct Outcome {
    #[allow(dead_code)] // read through Debug in failure messages
    pub name: &'static str,
    pub verdict: KernelVerdict,
    #[allow(dead_code)] // read through Debug in failure messages
    pub batches: usize,
    pub raced: usize,
}

/// Registers every built-in workload and submits batches of every input shape (cycling
/// through the shapes) until the kernel has a verdict and at least `min_batches` ran,
/// or `max_batches` ran. Panics on any answer that differs from the reference.
pub fn run_every_builtin(engine: &Engine, min_batches: usize, max_batches: usize) -> Vec<Outcome> {
    builtin()
        .into_iter()
        .map(|workload| run_one(engine, workload, min_batches, max_batches))
        .collect()
}

fn run_one(
    engine: &Engine,
    workload: Arc<dyn Workload>,
    min_batches: usize,
    max_batches: usize,
) -> Outcome {
    let name = workload.name();
    let kernel = engine
        .register(Arc::clone(&workload))
        .unwrap_or_else(|e| panic!("{name} registers: {e}"));
    let shapes = workload.shapes();
    let mut raced = 0;
    let mut batches = 0;
    while batches < max_batches {
        // A few batches in flight at once, so several workers take part.
        let inputs: Vec<Vec<u8>> = (0..4)
            .map(|i| {
                let seed = (batches + i) as u64;
                let shape = shapes[(batches + i) % shapes.len()];
                workload.generate(shape, BATCH_BYTES, seed)
            })
            .collect();
        let tickets: Vec<_> = inputs
            .iter()
            .map(|input| {
                engine
                    .submit(Batch::new(kernel, input.clone()))
                    .unwrap_or_else(|e| panic!("{name}: submit: {e}"))
            })
            .collect();
        for (ticket, input) in tickets.into_iter().zip(&inputs) {
            let answer = ticket
                .wait()
                .unwrap_or_else(|e| panic!("{name}: batch {batches}: {e}"));
            assert_eq!(
                answer.output,
                Output::Answer(workload.reference(input)),
                "{name}: batch {batches} ({:?} arm) differs from the reference",
                answer.arm
            );
            raced += usize::from(answer.raced);
            batches += 1;
        }
        let verdict = engine.verdict(kernel).expect("registered kernel");
        if verdict != KernelVerdict::Undecided && batches >= min_batches {
            break;
        }
    }
    Outcome {
        name,
        verdict: engine.verdict(kernel).expect("registered kernel"),
        batches,
        raced,
    }
}
