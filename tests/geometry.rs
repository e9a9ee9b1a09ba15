//! Each variant its own dispatch geometry (SPEC §10): a batch by items, variants of
//! different workgroup sizes and items per invocation raced on it with no grid-stride
//! loop; SPIR-V reflected through naga; a float tolerance checked against the element
//! types the shaders declare. On the CPU backend (through each variant's CPU code,
//! which checks the workgroup count it is given) and on Vulkan (lavapipe in CI).
#![cfg(feature = "wgsl")]

#[path = "support/vulkan.rs"]
mod no_vulkan;

use std::sync::Arc;

use no_vulkan::engine_on as engine;

use photofinish::backend::{ScalarKind, ShaderError};
use photofinish::bytemuck;
use photofinish::{
    Agreement, BackendChoice, Batch, BufferArg, DispatchPlan, EngineError, Event, KernelVariant,
    Output, PlanError, VerdictReason,
};

/// out[i] = in[i] * 3 + add, one item per invocation, 64 invocations per workgroup.
const ONE: &str = include_str!("support/triple.wgsl");

/// The same, four consecutive items per invocation, 32 invocations per workgroup: a
/// "more work per thread" variant written without a grid-stride loop, so it is right
/// only if it is given at least ceil(n / 128) workgroups.
const FOUR: &str = "
struct Params { add: u32, n: u32 }
var<immediate> params: Params;
@group(0) @binding(0) var<storage, read> input: array<u32>;
@group(0) @binding(1) var<storage, read_write> output: array<u32>;
@compute @workgroup_size(32)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    for (var k = 0u; k < 4u; k++) {
        let i = id.x * 4u + k;
        if i < params.n { output[i] = input[i] * 3u + params.add; }
    }
}
";

/// The shaders' `var<immediate>` block.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Params {
    add: u32,
    n: u32,
}

fn words(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|w| u32::from_le_bytes(w.try_into().unwrap()))
        .collect()
}

/// CPU code of a variant covering `per_group` items per workgroup: it refuses a
/// workgroup count other than the one the items need, then computes the answer.
fn cpu_code(
    per_group: u32,
    buffers: &mut [Vec<u8>],
    push: &[u8],
    groups: [u32; 3],
) -> Result<(), String> {
    let params = words(push);
    let (add, n) = (params[0], params[1]);
    if groups != [n.div_ceil(per_group), 1, 1] {
        return Err(format!("given {groups:?} workgroups for {n} items"));
    }
    let input = words(&buffers[0]);
    for (i, x) in input.iter().take(n as usize).enumerate() {
        buffers[1][4 * i..4 * i + 4].copy_from_slice(&(x * 3 + add).to_le_bytes());
    }
    Ok(())
}

fn variants() -> (KernelVariant, KernelVariant) {
    let one = KernelVariant::wgsl("triple/one", ONE, "main").expect("WGSL compiles");
    let four = KernelVariant::wgsl("triple/four", FOUR, "main")
        .expect("WGSL compiles")
        .with_items_per_invocation(4);
    (
        one.with_cpu(|b, p, g| cpu_code(64, b, p, g)),
        four.with_cpu(|b, p, g| cpu_code(128, b, p, g)),
    )
}

/// A batch of `input` by items; the plan's own workgroup count is left at zero, so
/// a variant given it would write nothing.
fn batch(kernel: photofinish::KernelId, input: &[u32], add: u32) -> Batch {
    let n = input.len() as u32;
    let plan = DispatchPlan::new(
        vec![
            BufferArg::from_slice(input),
            BufferArg::zeroed::<u32>(input.len()),
        ],
        [0, 1, 1],
    )
    .with_push_constants(&Params { add, n });
    Batch::for_items(kernel, plan, u64::from(n))
}

/// Races the two geometries on batches by items: every answer right, no mismatch,
/// no failed arm.
fn variants_of_different_geometry_race_on_one_batch(backend: BackendChoice) {
    let Some(engine) = engine(backend) else {
        return;
    };
    let events = engine.subscribe();
    let (one, four) = variants();
    let kernel = engine
        .register_pair("triple", one, four)
        .expect("registers");
    for b in 0..24u32 {
        // Counts that are and are not whole workgroups of either variant.
        let input: Vec<u32> = (0..1000 + 37 * b).map(|i| i * 13 + b).collect();
        let answer = engine
            .submit(batch(kernel, &input, b))
            .unwrap()
            .wait()
            .unwrap();
        let expected: Vec<u32> = input.iter().map(|x| x * 3 + b).collect();
        let Output::Buffers(out) = answer.output else {
            panic!("{:?}", answer.output)
        };
        assert_eq!(out.view::<u32>(0).unwrap().as_ref(), &expected[..]);
    }
    let stats = engine.kernel_stats(kernel).expect("stats");
    assert!(
        !stats.samples.is_empty(),
        "the two variants raced: {stats:?}"
    );
    engine.shutdown();
    for event in events.try_iter() {
        let failed = matches!(
            event,
            Event::VerdictChanged {
                reason: VerdictReason::Mismatch | VerdictReason::SpeculativeFailed(_),
                ..
            }
        );
        assert!(
            !failed && !matches!(event, Event::MismatchCaught { .. }),
            "{event:?}"
        );
    }
}

#[test]
fn variants_of_different_geometry_race_on_the_cpu_backend() {
    variants_of_different_geometry_race_on_one_batch(BackendChoice::Cpu);
}

#[test]
fn variants_of_different_geometry_race_on_vulkan() {
    variants_of_different_geometry_race_on_one_batch(BackendChoice::Vulkan);
}

#[test]
fn a_variant_s_workgroups_come_from_its_size_and_items_per_invocation() {
    let (one, four) = variants();
    assert_eq!(one.workgroups_for_items(1000, u32::MAX), Ok([16, 1, 1]));
    assert_eq!(four.workgroups_for_items(1000, u32::MAX), Ok([8, 1, 1]));
    assert_eq!(four.workgroups_for_items(128, u32::MAX), Ok([1, 1, 1]));
    assert_eq!(four.workgroups_for_items(0, u32::MAX), Ok([0, 1, 1]));
    match four.workgroups_for_items(u64::MAX, u32::MAX) {
        Err(PlanError::TooManyItems {
            per_workgroup: 128,
            workgroups,
            ..
        }) => assert_eq!(workgroups, u64::MAX.div_ceil(128)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn items_a_variant_cannot_dispatch_are_refused_at_submission() {
    let Some(engine) = engine(BackendChoice::Cpu) else {
        return;
    };
    let (one, four) = variants();
    let kernel = engine
        .register_pair("triple", one, four)
        .expect("registers");
    // The CPU backend allows 65 535 workgroups in x: variant `one` (64 items per
    // workgroup) cannot cover 65 535 × 64 + 1 items; `four` (128) could.
    let plan = DispatchPlan::new(vec![BufferArg::zeroed::<u32>(4)], [0, 1, 1]);
    let items = 65_535 * 64 + 1;
    match engine.submit(Batch::for_items(kernel, plan.clone(), items)) {
        Err(EngineError::Plan {
            source: PlanError::TooManyItems { variant, max, .. },
            ..
        }) => {
            assert_eq!(variant, "triple/one");
            assert_eq!(max, 65_535);
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("accepted {items} items"),
    }
    // A workload kernel takes input bytes, not items.
    let reduce = engine
        .register(photofinish::kernels::by_name("reduce").unwrap())
        .unwrap();
    assert!(matches!(
        engine.submit(Batch::for_items(reduce, plan, 4)),
        Err(EngineError::WrongPayload { .. })
    ));
}

#[test]
fn a_float_tolerance_on_an_integer_binding_is_refused_at_registration() {
    let Some(engine) = engine(BackendChoice::Cpu) else {
        return;
    };
    let (one, four) = variants();
    let out = &one.bindings[1];
    assert_eq!(
        out.element.map(|e| (e.kind, e.bytes)),
        Some((ScalarKind::Uint, 4))
    );
    match engine.register_variants_agreeing(
        "triple",
        one,
        vec![four],
        &[(1, Agreement::f32_ulps(2))],
    ) {
        Err(EngineError::InvalidKernel { reason, fix, .. }) => {
            assert!(reason.contains("u32"), "{reason}");
            assert!(fix.contains("Custom"), "{fix}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_spirv_module_is_reflected_like_its_wgsl() {
    let (one, four) = variants();
    for wgsl in [one, four] {
        let words = wgsl.spirv.clone().expect("SPIR-V");
        let spirv = KernelVariant::from_spirv("triple/spirv", words, "main").expect("reflects");
        assert_eq!(spirv.bindings, wgsl.bindings);
        assert_eq!(spirv.workgroup_size, wgsl.workgroup_size);
        assert_eq!(spirv.push_constant_bytes, wgsl.push_constant_bytes);
    }
    // The built-in kernels' modules, compiled at build time.
    for workload in photofinish::kernels::builtin() {
        for v in workload.variants() {
            let Some(words) = v.spirv.clone() else {
                continue;
            };
            let reflected = KernelVariant::from_spirv(v.name.clone(), words, &v.entry_point)
                .unwrap_or_else(|e| panic!("{}: {e}", v.name));
            // Which bindings are written: a hand `Write` (zero-filled output) may be
            // reflected `ReadWrite` where the shader also reads it (atomics).
            let access = |k: &KernelVariant| -> Vec<(u32, bool)> {
                k.bindings
                    .iter()
                    .map(|b| (b.slot, b.access.writes()))
                    .collect()
            };
            assert_eq!(access(&reflected), access(&v), "{}", v.name);
            assert_eq!(reflected.workgroup_size, v.workgroup_size, "{}", v.name);
            assert_eq!(
                reflected.push_constant_bytes, v.push_constant_bytes,
                "{}",
                v.name
            );
        }
    }
}

#[test]
fn spirv_naga_cannot_read_is_a_typed_error() {
    let garbage: Arc<[u32]> = Arc::from(vec![0x0723_0203, 0x0001_0300, 0, 7, 0, 0xdead_beef]);
    assert!(matches!(
        KernelVariant::from_spirv("junk", garbage, "main"),
        Err(ShaderError::Spirv { .. })
    ));
    let (one, _) = variants();
    assert!(matches!(
        KernelVariant::from_spirv("triple", one.spirv.unwrap(), "nope"),
        Err(ShaderError::EntryPoint { .. })
    ));
}

#[test]
fn a_reflected_spirv_variant_runs_on_vulkan() {
    let Some(engine) = engine(BackendChoice::Vulkan) else {
        return;
    };
    let (one, four) = variants();
    let spirv = KernelVariant::from_spirv("triple/spirv", four.spirv.clone().unwrap(), "main")
        .expect("reflects")
        .with_items_per_invocation(4);
    let kernel = engine
        .register_pair("triple", one, spirv)
        .expect("registers");
    let input: Vec<u32> = (0..777).collect();
    let answer = engine
        .submit(batch(kernel, &input, 5))
        .unwrap()
        .wait()
        .unwrap();
    let Output::Buffers(out) = answer.output else {
        panic!()
    };
    let expected: Vec<u32> = input.iter().map(|x| x * 3 + 5).collect();
    assert_eq!(out.view::<u32>(0).unwrap().as_ref(), &expected[..]);
}
