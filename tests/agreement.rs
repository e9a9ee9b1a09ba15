//! Answers compared the way the kernel's numbers demand (SPEC §9): a float variant that
//! reassociates a sum is rejected as a mismatch under `Exact` and judged on its speed
//! alone under a tolerance, on the CPU backend and on Vulkan (lavapipe in CI); a pair
//! whose output is declared `f32` adopts its faster reassociating variant; a mismatch
//! names the binding, the first element and the difference.

#[path = "support/vulkan.rs"]
mod no_vulkan;

use std::sync::Arc;

use no_vulkan::engine_on as engine;

use photofinish::kernels::{FSum, InputShape, Workload};
use photofinish::{
    backend::BackendKind, Agreement, BackendChoice, Batch, BindingAccess, BufferArg, DispatchPlan,
    Engine, Event, KernelVariant, KernelVerdict, Output, VerdictReason,
};

/// Runs `fsum` batches until the kernel is decided; every answer within the tolerance
/// of the reference. The verdict, its reason, and the mismatch events.
fn decide_fsum(engine: &Engine, fsum: FSum) -> (KernelVerdict, Option<VerdictReason>, Vec<Event>) {
    let events = engine.subscribe();
    let tolerance = FSum::tolerant().agreement();
    let kernel = engine.register(Arc::new(fsum.clone())).unwrap();
    for seed in 0..200u64 {
        if engine.verdict(kernel) != Some(KernelVerdict::Undecided) {
            break;
        }
        let input = fsum.generate(InputShape::Uniform, 1 << 20, seed);
        let answer = engine
            .submit(Batch::new(kernel, input.clone()))
            .unwrap()
            .wait();
        let Output::Answer(bytes) = answer.unwrap().output else {
            panic!("a workload answers with its canonical bytes")
        };
        tolerance
            .compare(&fsum.reference(&input), &bytes)
            .expect("every answer within the tolerance of the reference");
    }
    let verdict = engine.verdict(kernel).unwrap();
    let mut reason = None;
    let mut mismatches = Vec::new();
    for event in events.try_iter() {
        match event {
            Event::VerdictChanged {
                kernel: k,
                reason: r,
                ..
            } if k == kernel => reason = Some(r),
            e @ Event::MismatchCaught { .. } => mismatches.push(e),
            _ => {}
        }
    }
    (verdict, reason, mismatches)
}

fn exact_rejects_and_tolerance_judges_on_speed(backend: BackendChoice, kind: BackendKind) {
    let Some(engine) = engine(backend) else {
        return;
    };
    assert_eq!(engine.backend_kind(), kind);
    let (verdict, reason, mismatches) = decide_fsum(&engine, FSum::exact());
    assert_eq!(verdict, KernelVerdict::Rejected);
    assert_eq!(reason, Some(VerdictReason::Mismatch));
    let Some(Event::MismatchCaught { detail, .. }) = mismatches.first() else {
        panic!("no mismatch event")
    };
    assert_eq!(detail.binding, None, "a workload's answer has no binding");
    assert!(detail.element.is_some(), "{detail}");
    assert!(detail.difference.is_some(), "{detail}");

    // Within the tolerance the variant is judged on its speed alone: never a mismatch,
    // decided by the paired window (adopted where it measures faster — on lavapipe it
    // usually does; the CPU backend's timing in a test build is too close to call).
    let (verdict, reason, mismatches) = decide_fsum(&engine, FSum::tolerant());
    assert!(mismatches.is_empty(), "{mismatches:?}");
    assert_ne!(verdict, KernelVerdict::Undecided);
    assert!(
        matches!(
            reason,
            Some(VerdictReason::Measured | VerdictReason::Inconclusive { .. })
        ),
        "{verdict:?} {reason:?}"
    );
}

/// The fsum tree variant differs from the chunked one in the last bits of every sum.
#[test]
fn a_reassociating_float_variant_is_a_mismatch_exactly_and_judged_on_speed_within_a_tolerance_on_cpu(
) {
    exact_rejects_and_tolerance_judges_on_speed(BackendChoice::Cpu, BackendKind::Cpu);
}

#[test]
fn a_reassociating_float_variant_is_a_mismatch_exactly_and_judged_on_speed_within_a_tolerance_on_vulkan(
) {
    exact_rejects_and_tolerance_judges_on_speed(BackendChoice::Vulkan, BackendKind::Vulkan);
}

/// Sums the f32s of binding 0 into binding 1: `lanes` interleaved partial sums (1:
/// in order), after `spin` rounds of busy work.
fn fsum_variant(name: &str, lanes: usize, spin: u32) -> KernelVariant {
    let layout = [BindingAccess::Read, BindingAccess::Write];
    KernelVariant::cpu(name, &layout, 0, move |buffers, _, _| {
        let mut x = 0u32;
        for i in 0..spin {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let mut partial = vec![0.0f32; lanes];
        for (i, w) in buffers[0].chunks_exact(4).enumerate() {
            partial[i % lanes] += f32::from_le_bytes(w.try_into().unwrap());
        }
        let total: f32 = partial.iter().sum();
        buffers[1][..4].copy_from_slice(&total.to_le_bytes());
        Ok(())
    })
}

fn pair_plan(seed: u64) -> DispatchPlan {
    let fsum = FSum::tolerant();
    let input = fsum.generate(InputShape::Uniform, 64 * 1024, seed);
    DispatchPlan::new(
        vec![BufferArg::Data(input.into()), BufferArg::zeroed::<f32>(1)],
        [1, 1, 1],
    )
}

/// A pair's output binding declared `f32` within a relative tolerance: the
/// reassociated variant is adopted; undeclared (Exact), the mismatch names binding 1.
#[test]
fn a_pairs_float_binding_is_compared_as_declared_and_a_mismatch_names_it() {
    let engine = engine(BackendChoice::Cpu).unwrap();
    let events = engine.subscribe();
    let tolerance = Agreement::Float {
        elem: photofinish::FloatElem::F32,
        max_ulps: 0,
        rel: 1e-3,
        abs: 0.0,
    };
    let tolerant = engine
        .register_variants_agreeing(
            "fsum/tolerant",
            fsum_variant("sum/ordered", 1, 300_000),
            vec![fsum_variant("sum/lanes", 8, 0)],
            &[(1, tolerance)],
        )
        .unwrap();
    let exact = engine
        .register_pair(
            "fsum/exact",
            fsum_variant("sum/ordered", 1, 300_000),
            fsum_variant("sum/lanes", 8, 0),
        )
        .unwrap();
    for seed in 0..40 {
        for kernel in [tolerant, exact] {
            if engine.verdict(kernel) == Some(KernelVerdict::Undecided) {
                engine
                    .submit(Batch::with_plan(kernel, pair_plan(seed)))
                    .unwrap()
                    .wait()
                    .unwrap();
            }
        }
    }
    assert_eq!(engine.verdict(tolerant), Some(KernelVerdict::Adopted));
    assert_eq!(engine.verdict(exact), Some(KernelVerdict::Rejected));
    let detail = events
        .try_iter()
        .find_map(|e| match e {
            Event::MismatchCaught { kernel, detail, .. } if kernel == exact => Some(detail),
            _ => None,
        })
        .expect("the exact pair's mismatch is published");
    assert_eq!(detail.binding, Some(1));
    assert!(detail.element.is_some_and(|byte| byte < 4), "{detail}");
    assert!(detail.to_string().starts_with("binding 1:"), "{detail}");
    // A tolerance on a binding the kernel only reads is refused.
    let refused = engine.register_variants_agreeing(
        "fsum/bad",
        fsum_variant("a", 1, 0),
        vec![fsum_variant("b", 1, 0)],
        &[(0, Agreement::f32_ulps(1))],
    );
    assert!(
        matches!(refused, Err(photofinish::EngineError::InvalidKernel { .. })),
        "{refused:?}"
    );
}
