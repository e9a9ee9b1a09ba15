//! `SpeculationMode` as the engine follows it: `Disable` never runs a fused
//! (counter-tail) speculative variant — not even once to learn that it is fused — while
//! `Auto` does race it.

use std::sync::Arc;

use photofinish::kernels::Workload;
use photofinish::speculator::SpeculationMode;
use photofinish::{Arm, Batch, Engine, FusedByteSumWorkload, KernelVerdict, TestBackend};

/// Runs 20 batches of the fused bytesum workload under `mode`; returns how often the
/// fused variant ran and the kernel's verdict.
fn fused_runs(mode: SpeculationMode) -> (u64, KernelVerdict) {
    let backend = Arc::new(TestBackend::new(1, 2, 1));
    let engine = Engine::builder()
        .backend_instance(backend.clone())
        .speculation_mode(mode)
        .build()
        .unwrap();
    let k = engine.register(Arc::new(FusedByteSumWorkload)).unwrap();
    for i in 0..20u8 {
        let input = vec![i; 16 + usize::from(i)];
        let answer = engine
            .submit(Batch::new(k, input.clone()))
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(
            answer.output,
            photofinish::Output::Answer(FusedByteSumWorkload.reference(&input))
        );
        if mode == SpeculationMode::Disable {
            assert_eq!(answer.arm, Arm::Conservative);
            assert!(!answer.raced);
        }
    }
    let verdict = engine.verdict(k).unwrap();
    engine.shutdown();
    (backend.runs(FusedByteSumWorkload::FUSED), verdict)
}

#[test]
fn disable_never_runs_the_fused_variant_not_even_once() {
    let (runs, verdict) = fused_runs(SpeculationMode::Disable);
    assert_eq!(runs, 0, "the fused variant ran under Disable");
    assert_eq!(verdict, KernelVerdict::Undecided);
    // The same workload under Auto does race its fused variant.
    let (auto_runs, _) = fused_runs(SpeculationMode::Auto);
    assert!(auto_runs > 0, "Auto never raced the fused variant");
}
