//! Kernels written in WGSL (SPEC §10): registered from source with reflected bindings,
//! raced on Vulkan (lavapipe in CI) and, from the same registration, on the CPU
//! backend through each variant's CPU code.
#![cfg(feature = "wgsl")]

#[path = "support/vulkan.rs"]
mod no_vulkan;

use photofinish::backend::BackendKind;
use photofinish::bytemuck;
use photofinish::{
    BackendChoice, Batch, BufferArg, DispatchPlan, Engine, KernelVariant, KernelVerdict, Output,
};

/// out[i] = in[i] * 3 + add, one element per invocation.
const SCALAR: &str = include_str!("support/triple.wgsl");

/// The same, each invocation doing a grid-stride loop (same plan, fewer invocations
/// would do; here it is the same geometry, a different code path).
const STRIDED: &str = "
struct Params { add: u32, n: u32 }
var<immediate> params: Params;
@group(0) @binding(0) var<storage, read> input: array<u32>;
@group(0) @binding(1) var<storage, read_write> output: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>) {
    var i = id.x;
    loop {
        if i >= params.n { break; }
        output[i] = input[i] + input[i] + input[i] + params.add;
        i += groups.x * 64u;
    }
}
";

fn words(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|w| u32::from_le_bytes(w.try_into().unwrap()))
        .collect()
}

/// The CPU code both variants carry: what the shaders compute.
fn cpu_code(buffers: &mut [Vec<u8>], push: &[u8], _: [u32; 3]) -> Result<(), String> {
    let params = words(push);
    let (add, n) = (params[0], params[1] as usize);
    let input = words(&buffers[0]);
    for (i, x) in input.iter().take(n).enumerate() {
        buffers[1][4 * i..4 * i + 4].copy_from_slice(&(x * 3 + add).to_le_bytes());
    }
    Ok(())
}

fn variants() -> (KernelVariant, KernelVariant) {
    let scalar = KernelVariant::wgsl("triple/scalar", SCALAR, "main").expect("WGSL compiles");
    let strided = KernelVariant::wgsl("triple/strided", STRIDED, "main").expect("WGSL compiles");
    (scalar.with_cpu(cpu_code), strided.with_cpu(cpu_code))
}

/// The shader's `var<immediate>` block.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Params {
    add: u32,
    n: u32,
}

fn plan(input: &[u32], add: u32) -> DispatchPlan {
    let n = input.len() as u32;
    DispatchPlan::new(
        vec![
            BufferArg::from_slice(input),
            BufferArg::zeroed::<u32>(input.len()),
        ],
        [n.div_ceil(64), 1, 1],
    )
    .with_push_constants(&Params { add, n })
}

/// One registration of two WGSL variants runs on `backend`: every answer is right and
/// the pair reaches a verdict.
fn runs_on(backend: BackendChoice) -> Option<BackendKind> {
    let engine = match Engine::builder()
        .backend(backend)
        .without_autotune_file()
        .build()
    {
        Ok(engine) => engine,
        Err(e) => {
            no_vulkan::skip_or_fail(&e);
            return None;
        }
    };
    let (scalar, strided) = variants();
    let kernel = engine
        .register_pair("triple", scalar, strided)
        .expect("reflected variants register");
    // Equal variants are decided (inconclusive) within MAX_UNDECIDED_RACES (64) races.
    for b in 0..(photofinish::MAX_UNDECIDED_RACES + 16) {
        if engine.verdict(kernel) != Some(KernelVerdict::Undecided) && b >= 12 {
            break;
        }
        // Sizes within one size class: one tuning key decides.
        let input: Vec<u32> = (0..1000 + b % 16).map(|i| i * 13 + b).collect();
        let answer = engine
            .submit(Batch::with_plan(kernel, plan(&input, b)))
            .unwrap()
            .wait()
            .unwrap();
        let expected: Vec<u32> = input.iter().map(|x| x * 3 + b).collect();
        match answer.output {
            Output::Buffers(buffers) => {
                assert_eq!(buffers.view::<u32>(0).unwrap().as_ref(), &expected[..])
            }
            other => panic!("{other:?}"),
        }
    }
    assert_ne!(engine.verdict(kernel), Some(KernelVerdict::Undecided));
    Some(engine.backend_kind())
}

#[test]
fn a_wgsl_pair_with_cpu_code_runs_on_vulkan_from_its_reflected_layout() {
    if let Some(kind) = runs_on(BackendChoice::Vulkan) {
        assert_eq!(kind, BackendKind::Vulkan);
    }
}

#[test]
fn the_same_registration_runs_on_the_cpu_backend() {
    assert_eq!(runs_on(BackendChoice::Cpu), Some(BackendKind::Cpu));
}
