//! The dispatch policy's inputs come from the device and D9 acts (SPEC §12): D9's
//! support level is the device's descriptor-indexing features, so the same 32-binding
//! kernel fires D9 on a Vulkan device that reports them (lavapipe does) and not on the
//! CPU backend, which has no descriptors; and a variant that binds its 31 inputs
//! through one descriptor array (`binding_array`) runs beside the one-binding-per-buffer
//! variant, on both backends, with the same answers.
#![cfg(all(feature = "wgsl", feature = "vulkan"))]

#[path = "support/vulkan.rs"]
mod no_vulkan;

use photofinish::backend::vulkan::VulkanBackend;
use photofinish::backend::Backend;
use photofinish::policy::{BindlessSupport, BINDLESS_RESOURCE_COUNT_THRESHOLD};
use photofinish::{
    BackendChoice, Batch, BufferArg, DispatchPlan, Engine, Event, KernelVariant, Output,
    PolicyAction, VerdictReason,
};

/// Bindings of the generated kernel: 31 inputs and one output.
const BINDINGS: u32 = 32;

/// out[i] = the sum of the 31 inputs' element i; `plain` adds them in order, the other
/// variant in reverse (same answer: integer addition).
fn wide_kernel(name: &str, reverse: bool) -> KernelVariant {
    let mut src = String::new();
    for b in 0..BINDINGS - 1 {
        src.push_str(&format!(
            "@group(0) @binding({b}) var<storage, read> in{b}: array<u32>;\n"
        ));
    }
    src.push_str(&format!(
        "@group(0) @binding({}) var<storage, read_write> out: array<u32>;\n",
        BINDINGS - 1
    ));
    src.push_str("@compute @workgroup_size(64)\nfn main(@builtin(global_invocation_id) id: vec3<u32>) {\n    let i = id.x;\n    if i >= arrayLength(&out) { return; }\n    var s = 0u;\n");
    let mut order: Vec<u32> = (0..BINDINGS - 1).collect();
    if reverse {
        order.reverse();
    }
    for b in order {
        src.push_str(&format!("    s += in{b}[i];\n"));
    }
    src.push_str("    out[i] = s;\n}\n");
    KernelVariant::wgsl(name, &src, "main")
        .expect("the generated WGSL compiles")
        .with_cpu(|buffers, _, _| {
            let (out, inputs) = buffers.split_last_mut().ok_or("no buffers")?;
            for (i, word) in out.chunks_exact_mut(4).enumerate() {
                let sum = inputs.iter().fold(0u32, |s, b| {
                    s.wrapping_add(u32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap()))
                });
                word.copy_from_slice(&sum.to_le_bytes());
            }
            Ok(())
        })
}

/// The same sum with its 31 inputs bound through one descriptor array at binding 0
/// (indexed by a loop counter: dynamically uniform, `Static` support is enough).
fn bindless_kernel() -> KernelVariant {
    let src = format!(
        "enable wgpu_binding_array;
struct Words {{ w: array<u32> }}
@group(0) @binding(0) var<storage, read> inputs: binding_array<Words, {n}>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {{
    let i = id.x;
    if i >= arrayLength(&out) {{ return; }}
    var s = 0u;
    for (var b = 0u; b < {n}u; b++) {{ s += inputs[b].w[i]; }}
    out[i] = s;
}}
",
        n = BINDINGS - 1
    );
    let cpu = wide_kernel("cpu", false).cpu.expect("CPU code");
    KernelVariant::wgsl("wide/bindless", &src, "main")
        .expect("the generated WGSL compiles")
        .with_cpu(move |buffers, push, groups| cpu(buffers, push, groups))
}

/// Runs the wide kernel a few times on `backend`; the rules of every `PolicyAudit`.
fn audited_rules(backend: BackendChoice) -> Option<Vec<String>> {
    audited_rules_of(backend, wide_kernel("wide/reverse", true)).map(rules_of)
}

/// The rules of audited (fired, did) pairs.
fn rules_of(audits: Vec<(String, PolicyAction)>) -> Vec<String> {
    audits.into_iter().map(|(fired, _)| fired).collect()
}

/// What the engine said it did about D9 in `audits`.
fn d9_actions(audits: &[(String, PolicyAction)]) -> Vec<PolicyAction> {
    audits
        .iter()
        .filter(|(fired, _)| fired.starts_with("D9"))
        .map(|(_, did)| *did)
        .collect()
}

/// Runs the wide kernel against `speculative` a few times on `backend`: every answer
/// right, no mismatch; every `PolicyAudit`'s fired paths, each with what the engine did.
fn audited_rules_of(
    backend: BackendChoice,
    speculative: KernelVariant,
) -> Option<Vec<(String, PolicyAction)>> {
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
    let events = engine.subscribe();
    let kernel = engine
        .register_pair("wide", wide_kernel("wide/forward", false), speculative)
        .expect("registers");
    let n = 256usize;
    for round in 0..4u32 {
        let inputs: Vec<Vec<u32>> = (0..BINDINGS - 1)
            .map(|b| (0..n as u32).map(|i| i * b + round).collect())
            .collect();
        let mut buffers: Vec<BufferArg> = inputs.iter().map(|v| BufferArg::from_slice(v)).collect();
        buffers.push(BufferArg::zeroed::<u32>(n));
        let answer = engine
            .submit(Batch::for_items(
                kernel,
                DispatchPlan::from_buffers(buffers),
                n as u64,
            ))
            .unwrap()
            .wait()
            .unwrap();
        let Output::Buffers(out) = answer.output else {
            panic!()
        };
        let expected: Vec<u32> = (0..n)
            .map(|i| inputs.iter().fold(0u32, |s, v| s.wrapping_add(v[i])))
            .collect();
        assert_eq!(out.view::<u32>(0).unwrap().as_ref(), &expected[..]);
    }
    engine.shutdown();
    let mut rules = Vec::new();
    for event in events.try_iter() {
        match event {
            Event::PolicyAudit { fired, did, .. } => {
                assert_eq!(fired.len(), did.len(), "one action per fired path");
                rules.extend(fired.into_iter().zip(did));
            }
            Event::MismatchCaught { .. } => panic!("{event:?}"),
            Event::VerdictChanged {
                reason: VerdictReason::SpeculativeFailed(why),
                ..
            } => panic!("the speculative variant failed: {why}"),
            _ => {}
        }
    }
    Some(rules)
}

/// Whether every Vulkan device reports descriptor indexing; `None` without a device
/// (where skipping is allowed).
fn descriptor_indexing() -> Option<bool> {
    let backend = no_vulkan::require(VulkanBackend::new())?;
    Some(
        backend
            .devices()
            .iter()
            .all(|d| d.bindless != BindlessSupport::Unsupported),
    )
}

#[test]
fn a_vulkan_device_reports_its_descriptor_indexing() {
    let Some(backend) = no_vulkan::require(VulkanBackend::new()) else {
        return;
    };
    for device in backend.devices() {
        // lavapipe (Mesa 22: dynamically uniform indexing of storage-buffer arrays)
        // and NVIDIA's driver (runtime arrays, non-uniform indexing: `Full`) both
        // report descriptor indexing; a device with none reads `Unsupported`.
        if device.name.contains("llvmpipe") {
            assert_ne!(
                device.bindless,
                BindlessSupport::Unsupported,
                "{}",
                device.name
            );
        }
        if device.name.contains("NVIDIA") {
            assert_eq!(device.bindless, BindlessSupport::Full, "{}", device.name);
        }
    }
}

#[test]
fn d9_fires_for_a_wide_kernel_on_a_device_with_descriptor_indexing_and_not_on_the_cpu() {
    const { assert!(BINDINGS >= BINDLESS_RESOURCE_COUNT_THRESHOLD) };
    let cpu = audited_rules(BackendChoice::Cpu).expect("the CPU backend opens");
    assert!(!cpu.iter().any(|r| r.starts_with("D9")), "{cpu:?}");
    // The kernel indexes its bindings statically, so any support makes D9 fire.
    let Some(supported) = descriptor_indexing() else {
        return;
    };
    if let Some(vulkan) = audited_rules(BackendChoice::Vulkan) {
        assert_eq!(
            vulkan.iter().any(|r| r.starts_with("D9")),
            supported,
            "{vulkan:?}"
        );
    }
}

#[test]
fn a_descriptor_array_variant_is_reflected_and_runs_beside_one_binding_per_buffer() {
    let bindless = bindless_kernel();
    assert_eq!(
        bindless.bindings.len() as u32,
        BINDINGS,
        "31 array elements and the output"
    );
    assert!(bindless.bindings[..30].iter().all(|b| b.slot == 0));
    assert_eq!(bindless.bindings[30].index, 30);
    assert!(!bindless.indexes_descriptors_non_uniformly());
    let cpu = audited_rules_of(BackendChoice::Cpu, bindless_kernel()).expect("CPU backend");
    assert!(d9_actions(&cpu).is_empty(), "{cpu:?}");
    let Some(supported) = descriptor_indexing() else {
        return;
    };
    if supported {
        // D9 fires, and the audit says the race really bound through the array.
        let vulkan =
            audited_rules_of(BackendChoice::Vulkan, bindless_kernel()).expect("Vulkan backend");
        let did = d9_actions(&vulkan);
        assert!(!did.is_empty(), "{vulkan:?}");
        assert!(
            did.iter().all(|a| *a == PolicyAction::DescriptorArray),
            "{vulkan:?}"
        );
        // The same wide kernel with one binding per buffer in both variants: D9 fires,
        // and the audit says no descriptor array was used.
        let plain = audited_rules_of(BackendChoice::Vulkan, wide_kernel("wide/reverse", true))
            .expect("Vulkan backend");
        let did = d9_actions(&plain);
        assert!(!did.is_empty(), "{plain:?}");
        assert!(
            did.iter().all(|a| *a == PolicyAction::OneBindingPerBuffer),
            "{plain:?}"
        );
    }
}

#[test]
fn every_fired_path_says_what_the_engine_did_on_the_cpu_and_vulkan() {
    // The races of an undecided kernel run alone: where D1 fires, its action says so;
    // D4 on the CPU backend has no command buffers to keep.
    for backend in [BackendChoice::Cpu, BackendChoice::Vulkan] {
        let Some(audits) = audited_rules_of(backend, wide_kernel("wide/reverse", true)) else {
            continue;
        };
        assert!(!audits.is_empty(), "{backend:?}: no audit");
        for (fired, did) in &audits {
            let ok = match &fired[..2] {
                "D1" => matches!(did, PolicyAction::NotGrouped { .. }),
                "D2" => matches!(
                    did,
                    PolicyAction::ArmsConcurrent | PolicyAction::ArmsSerialised
                ),
                "D4" if backend == BackendChoice::Cpu => *did == PolicyAction::NoRecording,
                "D4" => matches!(
                    did,
                    PolicyAction::RecordsAndReplays | PolicyAction::PlainLaunch
                ),
                "D9" => *did == PolicyAction::OneBindingPerBuffer,
                _ => true,
            };
            assert!(ok, "{backend:?}: {fired} -> {did}");
        }
    }
}
