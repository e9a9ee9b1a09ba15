//! The Vulkan backend on a real driver (lavapipe in CI, a GPU where there is one):
//! dispatch correctness, reuse, timestamps, and every typed error path.
//!
//! With no Vulkan device these tests fail with a clear message, unless
//! `PHOTOFINISH_ALLOW_NO_VULKAN=1` is set, in which case they print that they were
//! skipped.
#![cfg(feature = "vulkan")]

#[path = "support/vulkan.rs"]
mod no_vulkan;

use std::sync::{Arc, OnceLock};

use photofinish::backend::vulkan::{VulkanBackend, VulkanOptions};
use photofinish::backend::{
    Backend, BackendError, BindingAccess, BindingDesc, BufferArg, DispatchJob, DispatchOutput,
    KernelHandle, KernelVariant, QueueId,
};

/// The backend shared by every test of this file (tests run on several threads, so this
/// also exercises concurrent use), or `None` when skipping is allowed and there is no
/// device.
fn backend() -> Option<&'static VulkanBackend> {
    static BACKEND: OnceLock<Result<VulkanBackend, BackendError>> = OnceLock::new();
    no_vulkan::require(BACKEND.get_or_init(VulkanBackend::new).as_ref())
}

/// WGSL → SPIR-V through naga, as the build does for the built-in shaders.
fn spirv(src: &str) -> Arc<[u32]> {
    let module = naga::front::wgsl::parse_str(src).expect("test WGSL parses");
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::IMMEDIATES,
    )
    .validate(&module)
    .expect("test WGSL validates");
    naga::back::spv::write_vec(&module, &info, &naga::back::spv::Options::default(), None)
        .expect("SPIR-V is written")
        .into()
}

const SCALE_ADD: &str = r#"
struct Params { add: u32, pad: u32 }
var<immediate> params: Params;
@group(0) @binding(0) var<storage, read> input: array<u32>;
@group(0) @binding(1) var<storage, read_write> output: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if (i >= arrayLength(&output)) { return; }
    output[i] = input[i] * 2u + params.add;
}
"#;

const INCREMENT: &str = r#"
@group(0) @binding(0) var<storage, read_write> data: array<u32>;
@group(0) @binding(1) var<storage, read_write> len: array<u32>;
@compute @workgroup_size(32)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if (i == 0u) { len[0] = arrayLength(&data); }
    if (i >= arrayLength(&data)) { return; }
    data[i] = data[i] + 1u;
}
"#;

fn binding(slot: u32, access: BindingAccess) -> BindingDesc {
    BindingDesc::new(slot, access)
}

fn scale_add() -> KernelVariant {
    KernelVariant {
        name: "test/scale-add".into(),
        spirv: Some(spirv(SCALE_ADD)),
        entry_point: "main".into(),
        workgroup_size: [64, 1, 1],
        bindings: vec![
            binding(0, BindingAccess::Read),
            binding(1, BindingAccess::Write),
        ],
        push_constant_bytes: 8,
        items_per_invocation: 1,
        cpu: None,
    }
}

fn increment() -> KernelVariant {
    KernelVariant {
        name: "test/increment".into(),
        spirv: Some(spirv(INCREMENT)),
        entry_point: "main".into(),
        workgroup_size: [32, 1, 1],
        bindings: vec![
            binding(0, BindingAccess::ReadWrite),
            binding(1, BindingAccess::Write),
        ],
        push_constant_bytes: 0,
        items_per_invocation: 1,
        cpu: None,
    }
}

fn words(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn bytes(words: &[u32]) -> Arc<[u8]> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// A `scale_add` job of `n` elements with `add` as push constant.
fn scale_add_job(queue: QueueId, kernel: KernelHandle, input: &[u32], add: u32) -> DispatchJob {
    let n = input.len() as u32;
    DispatchJob {
        queue,
        kernel,
        buffers: vec![
            BufferArg::Data(bytes(input)),
            BufferArg::Zeroed(u64::from(n) * 4),
        ],
        push_constants: [add.to_le_bytes(), 0u32.to_le_bytes()].concat(),
        workgroups: [n.div_ceil(64), 1, 1],
    }
}

fn expect_scale_add(out: &[u8], input: &[u32], add: u32) {
    let got = words(out);
    assert_eq!(got.len(), input.len());
    for (i, (&g, &x)) in got.iter().zip(input).enumerate() {
        assert_eq!(g, x.wrapping_mul(2).wrapping_add(add), "element {i}");
    }
}

fn load(b: &VulkanBackend, v: &KernelVariant) -> KernelHandle {
    b.load_kernel(0, v).expect("test kernel loads")
}

fn first_queue(b: &VulkanBackend) -> QueueId {
    *b.queues().first().expect("at least one queue")
}

#[test]
fn devices_and_queues_are_described() {
    let Some(b) = backend() else { return };
    assert!(!b.devices().is_empty());
    for (i, d) in b.devices().iter().enumerate() {
        assert_eq!(d.index, i);
        assert!(d.adapter_id.contains(&d.name), "{}", d.adapter_id);
        assert!(!d.driver_version.is_empty());
        let opened: u32 = d.queue_families.iter().map(|f| f.opened).sum();
        let queues = b.queues().iter().filter(|q| q.device == i).count() as u32;
        assert_eq!(opened, queues, "every opened queue is listed once");
        for f in &d.queue_families {
            assert!(f.opened <= f.queue_count);
            assert_eq!(
                f.opened > 0,
                f.compute,
                "exactly the compute families are opened"
            );
        }
        assert!(d.limits.max_workgroup_count.iter().all(|&n| n > 0));
    }
    let mut sorted = b.queues().to_vec();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted,
        b.queues(),
        "queues are unique and in a stable order"
    );
}

#[test]
fn scale_add_on_a_size_not_a_multiple_of_the_workgroup() {
    let Some(b) = backend() else { return };
    let k = load(b, &scale_add());
    let input: Vec<u32> = (0..1000u32).map(|i| i * 3 + 1).collect();
    let mut results = b.dispatch(&[scale_add_job(first_queue(b), k, &input, 7)]);
    let out = results.remove(0).expect("dispatch succeeds");
    assert_eq!(out.outputs.len(), 1, "one written binding");
    expect_scale_add(&out.outputs[0], &input, 7);
    let family = &b.devices()[0].queue_families[first_queue(b).family as usize];
    if family.timestamp_valid_bits > 0 {
        assert!(
            out.kernel_ns.is_some_and(|ns| ns > 0),
            "{:?}",
            out.kernel_ns
        );
    } else {
        assert_eq!(out.kernel_ns, None);
    }
}

#[test]
fn two_jobs_in_one_dispatch_both_come_back_in_order() {
    let Some(b) = backend() else { return };
    let k = load(b, &scale_add());
    let queues = b.queues();
    let q2 = queues[queues.len() - 1];
    let a: Vec<u32> = (0..300).collect();
    let c: Vec<u32> = (0..77).map(|i| 1000 - i).collect();
    let results = b.dispatch(&[
        scale_add_job(queues[0], k, &a, 1),
        scale_add_job(q2, k, &c, 5),
    ]);
    assert_eq!(results.len(), 2);
    expect_scale_add(&results[0].as_ref().expect("job 0").outputs[0], &a, 1);
    expect_scale_add(&results[1].as_ref().expect("job 1").outputs[0], &c, 5);
}

#[test]
fn repeat_dispatch_replays_its_recorded_commands_and_stays_correct() {
    let Some(b) = backend() else { return };
    let k = load(b, &scale_add());
    // A shape no other test uses: the first round is launched plainly (D4: a shape
    // seen once does not pay back keeping its recording), the second records and
    // keeps, the others replay.
    let n = 4321;
    let before = b.reuse_stats(0).expect("device 0");
    for round in 0..4u32 {
        let input: Vec<u32> = (0..n).map(|i| i ^ (round * 0x9e37)).collect();
        let out = b
            .dispatch(&[scale_add_job(first_queue(b), k, &input, 11)])
            .remove(0)
            .expect("dispatch succeeds");
        expect_scale_add(&out.outputs[0], &input, 11);
    }
    let after = b.reuse_stats(0).expect("device 0");
    assert!(
        after.replayed >= before.replayed + 2,
        "two of four rounds replay: {before:?} → {after:?}"
    );
    assert!(after.plain_launches > before.plain_launches, "{after:?}");
}

#[test]
fn command_reuse_launches_one_off_shapes_plainly_and_replays_repeated_ones() {
    let Some(b) = backend() else { return };
    let k = load(b, &scale_add());
    let run = |n: u32| {
        let input: Vec<u32> = (0..n).map(|i| i * 3 + n).collect();
        let out = b
            .dispatch(&[scale_add_job(first_queue(b), k, &input, 7)])
            .remove(0)
            .expect("dispatch succeeds");
        expect_scale_add(&out.outputs[0], &input, 7);
    };
    // Shapes no other test uses. Other tests run beside this one on the same device,
    // so each count is compared as at least what this test caused.
    let before = b.reuse_stats(0).expect("device 0");
    for n in 5101..5107 {
        run(n);
    }
    let one_offs = b.reuse_stats(0).expect("device 0");
    assert!(
        one_offs.plain_launches >= before.plain_launches + 6,
        "six shapes seen once are launched plainly: {before:?} → {one_offs:?}"
    );
    assert!(
        one_offs.record_ns > 0 && one_offs.submit_ns > 0,
        "{one_offs:?}"
    );
    // A shape's second run records and keeps it; its third replays it.
    run(5101);
    run(5101);
    let repeated = b.reuse_stats(0).expect("device 0");
    assert!(
        repeated.replayed > one_offs.replayed,
        "the third run of a shape replays: {one_offs:?} → {repeated:?}"
    );
}

#[test]
fn concurrent_dispatches_of_one_shape_do_not_share_buffers() {
    let Some(b) = backend() else { return };
    let k = load(b, &scale_add());
    std::thread::scope(|s| {
        for t in 0..3u32 {
            s.spawn(move || {
                for round in 0..8u32 {
                    let input: Vec<u32> = (0..512).map(|i| i + t * 100_000 + round).collect();
                    let out = b
                        .dispatch(&[scale_add_job(first_queue(b), k, &input, t)])
                        .remove(0)
                        .expect("dispatch succeeds");
                    expect_scale_add(&out.outputs[0], &input, t);
                }
            });
        }
    });
}

#[test]
fn read_write_binding_round_trips_and_is_bound_at_exactly_its_size() {
    let Some(b) = backend() else { return };
    let k = load(b, &increment());
    // 10 bytes: two and a half words. The device sees 3 words (the tail zero-padded)
    // and the result comes back at 10 bytes.
    let data: Vec<u8> = (1..=10).collect();
    let job = DispatchJob {
        queue: first_queue(b),
        kernel: k,
        buffers: vec![BufferArg::Data(data.clone().into()), BufferArg::Zeroed(4)],
        push_constants: vec![],
        workgroups: [1, 1, 1],
    };
    let out = b.dispatch(&[job]).remove(0).expect("dispatch succeeds");
    let mut padded = data.clone();
    padded.resize(12, 0);
    let expected: Vec<u8> = words(&padded)
        .iter()
        .flat_map(|w| (w + 1).to_le_bytes())
        .take(10)
        .collect();
    assert_eq!(out.outputs[0], expected);
    assert_eq!(
        words(&out.outputs[1]),
        vec![3],
        "arrayLength sees 3 words, not the pooled size"
    );
}

#[test]
fn zero_workgroups_is_an_empty_dispatch() {
    let Some(b) = backend() else { return };
    let k = load(b, &increment());
    let data: Vec<u8> = (0..64).collect();
    let job = DispatchJob {
        queue: first_queue(b),
        kernel: k,
        buffers: vec![BufferArg::Data(data.clone().into()), BufferArg::Zeroed(8)],
        push_constants: vec![],
        workgroups: [4, 0, 1],
    };
    let out = b
        .dispatch(&[job])
        .remove(0)
        .expect("empty dispatch succeeds");
    assert_eq!(out.outputs, vec![data, vec![0; 8]]);
    assert_eq!(out.kernel_ns, Some(0));
}

#[test]
fn same_variant_loaded_twice_gets_the_same_handle() {
    let Some(b) = backend() else { return };
    let first = load(b, &scale_add());
    let again = load(b, &scale_add());
    assert_eq!(first, again);
    let other = load(b, &increment());
    assert_ne!(first, other);
}

fn load_err(b: &VulkanBackend, v: &KernelVariant) -> BackendError {
    b.load_kernel(0, v)
        .expect_err("the variant must be refused")
}

#[test]
fn spirv_that_does_not_load_is_invalid_spirv() {
    let Some(b) = backend() else { return };
    for words in [
        vec![0xdead_beef_u32, 1, 2, 3, 4],
        vec![],
        vec![0x0723_0203, 0x0001_0000],
    ] {
        let v = KernelVariant {
            spirv: Some(words.into()),
            ..scale_add()
        };
        assert!(matches!(load_err(b, &v), BackendError::InvalidSpirv { .. }));
    }
    // A valid module cut short.
    let full = spirv(SCALE_ADD);
    let v = KernelVariant {
        spirv: Some(full[..full.len() / 2].into()),
        ..scale_add()
    };
    assert!(matches!(load_err(b, &v), BackendError::InvalidSpirv { .. }));
}

#[test]
fn missing_entry_point_is_invalid_spirv() {
    let Some(b) = backend() else { return };
    let v = KernelVariant {
        entry_point: "not_main".into(),
        ..scale_add()
    };
    let e = load_err(b, &v);
    assert!(
        matches!(&e, BackendError::InvalidSpirv { reason, .. } if reason.contains("not_main")),
        "{e}"
    );
}

#[test]
fn declared_bindings_that_differ_from_the_shader_are_a_mismatch() {
    let Some(b) = backend() else { return };
    let too_few = KernelVariant {
        bindings: vec![binding(0, BindingAccess::Read)],
        ..scale_add()
    };
    let too_many = KernelVariant {
        bindings: vec![
            binding(0, BindingAccess::Read),
            binding(1, BindingAccess::Write),
            binding(2, BindingAccess::Write),
        ],
        ..scale_add()
    };
    let written_but_read_only = KernelVariant {
        bindings: vec![
            binding(0, BindingAccess::Read),
            binding(1, BindingAccess::Read),
        ],
        ..scale_add()
    };
    let twice = KernelVariant {
        bindings: vec![
            binding(0, BindingAccess::Read),
            binding(0, BindingAccess::Write),
        ],
        ..scale_add()
    };
    for v in [too_few, too_many, written_but_read_only, twice] {
        let e = load_err(b, &v);
        assert!(matches!(e, BackendError::BindingMismatch { .. }), "{e}");
    }
}

#[test]
fn declared_push_constants_that_differ_are_a_mismatch() {
    let Some(b) = backend() else { return };
    for v in [
        KernelVariant {
            push_constant_bytes: 4,
            ..scale_add()
        },
        KernelVariant {
            push_constant_bytes: 0,
            ..scale_add()
        },
        KernelVariant {
            push_constant_bytes: 6,
            ..scale_add()
        },
    ] {
        let e = load_err(b, &v);
        assert!(matches!(e, BackendError::BindingMismatch { .. }), "{e}");
    }
}

/// A declared workgroup size that differs from the shader's was reported as
/// `BindingMismatch` (whose fix speaks of bindings).
#[test]
fn a_declared_workgroup_size_that_differs_is_a_workgroup_mismatch() {
    let Some(b) = backend() else { return };
    let v = KernelVariant {
        workgroup_size: [32, 1, 1],
        ..scale_add()
    };
    match load_err(b, &v) {
        BackendError::WorkgroupMismatch {
            declared, shader, ..
        } => assert_eq!((declared, shader), ([32, 1, 1], [64, 1, 1])),
        e => panic!("{e}"),
    }
}

#[test]
fn workgroup_size_beyond_the_limits_is_too_large() {
    let Some(b) = backend() else { return };
    let max = b.devices()[0].limits.max_workgroup_size[0];
    let size = max + 1;
    let src = SCALE_ADD.replace("@workgroup_size(64)", &format!("@workgroup_size({size})"));
    let v = KernelVariant {
        spirv: Some(spirv(&src)),
        workgroup_size: [size, 1, 1],
        ..scale_add()
    };
    let e = load_err(b, &v);
    assert!(matches!(e, BackendError::DispatchTooLarge { .. }), "{e}");
}

#[test]
fn no_spirv_unknown_device_are_typed() {
    let Some(b) = backend() else { return };
    let none = KernelVariant {
        spirv: None,
        ..scale_add()
    };
    assert!(matches!(
        load_err(b, &none),
        BackendError::Unsupported { .. }
    ));
    let e = b
        .load_kernel(b.devices().len(), &scale_add())
        .expect_err("no such device");
    assert!(matches!(e, BackendError::Unknown { .. }), "{e}");
}

fn dispatch_err(b: &VulkanBackend, job: DispatchJob) -> BackendError {
    b.dispatch(&[job])
        .remove(0)
        .expect_err("the job must be refused")
}

#[test]
fn bad_jobs_are_refused_with_typed_errors() {
    let Some(b) = backend() else { return };
    let k = load(b, &scale_add());
    let q = first_queue(b);
    let good = || scale_add_job(q, k, &[1, 2, 3], 0);
    let limits = b.devices()[0].limits.clone();

    let mut wrong_count = good();
    wrong_count.buffers.pop();
    let e = dispatch_err(b, wrong_count);
    assert!(matches!(e, BackendError::BindingMismatch { .. }), "{e}");

    let mut empty_buffer = good();
    empty_buffer.buffers[1] = BufferArg::Zeroed(0);
    let e = dispatch_err(b, empty_buffer);
    assert!(
        matches!(
            e,
            BackendError::BufferSizeMismatch {
                slot: 1,
                got: 0,
                ..
            }
        ),
        "{e}"
    );

    let mut huge_buffer = good();
    huge_buffer.buffers[1] = BufferArg::Zeroed(limits.max_storage_buffer_range + 4);
    let e = dispatch_err(b, huge_buffer);
    assert!(matches!(e, BackendError::DispatchTooLarge { .. }), "{e}");

    let mut too_many_groups = good();
    too_many_groups.workgroups = [1, 1, limits.max_workgroup_count[2].saturating_add(1)];
    if limits.max_workgroup_count[2] < u32::MAX {
        let e = dispatch_err(b, too_many_groups);
        assert!(matches!(e, BackendError::DispatchTooLarge { .. }), "{e}");
    }

    let mut short_push = good();
    short_push.push_constants.truncate(4);
    let e = dispatch_err(b, short_push);
    assert!(matches!(e, BackendError::BindingMismatch { .. }), "{e}");

    let mut other_device = good();
    other_device.queue.device = b.devices().len();
    let e = dispatch_err(b, other_device);
    assert!(matches!(e, BackendError::Unknown { .. }), "{e}");

    let mut no_such_queue = good();
    no_such_queue.queue.index = 1000;
    let e = dispatch_err(b, no_such_queue);
    assert!(matches!(e, BackendError::Unknown { .. }), "{e}");

    let mut no_such_kernel = good();
    no_such_kernel.kernel.id = u64::MAX;
    let e = dispatch_err(b, no_such_kernel);
    assert!(matches!(e, BackendError::Unknown { .. }), "{e}");
}

#[test]
fn one_bad_job_does_not_spoil_the_others() {
    let Some(b) = backend() else { return };
    let k = load(b, &scale_add());
    let q = first_queue(b);
    let input: Vec<u32> = (0..100).collect();
    let mut bad = scale_add_job(q, k, &input, 1);
    bad.push_constants.clear();
    let results = b.dispatch(&[
        scale_add_job(q, k, &input, 1),
        bad,
        scale_add_job(q, k, &input, 2),
    ]);
    expect_scale_add(&results[0].as_ref().expect("job 0").outputs[0], &input, 1);
    assert!(results[1].is_err());
    expect_scale_add(&results[2].as_ref().expect("job 2").outputs[0], &input, 2);
}

#[test]
fn copy_bandwidth_is_measured_with_timestamps() {
    let Some(b) = backend() else { return };
    let q = first_queue(b);
    let family = &b.devices()[0].queue_families[q.family as usize];
    if family.timestamp_valid_bits == 0 {
        let e = b
            .measure_copy_bandwidth(q, 1 << 20)
            .expect_err("no timestamps");
        assert!(matches!(e, BackendError::Unsupported { .. }), "{e}");
        return;
    }
    let bw = b.measure_copy_bandwidth(q, 4 << 20).expect("copy is timed");
    assert_eq!(bw.bytes, 4 << 20);
    assert!(bw.gpu_ns > 0, "{bw:?}");
    let expected = bw.bytes as f64 / bw.gpu_ns as f64;
    assert!((bw.gb_per_s - expected).abs() < 1e-9, "{bw:?}");
    let e = b
        .measure_copy_bandwidth(q, 3)
        .expect_err("not a multiple of 4");
    assert!(matches!(e, BackendError::Unsupported { .. }), "{e}");
}

#[test]
fn a_tiny_reuse_budget_still_dispatches_correctly() {
    // A backend of its own whose cache keeps at most one idle shape and no bytes:
    // every slot is evicted right after use and every dispatch records afresh.
    let Some(_) = backend() else { return };
    let b = VulkanBackend::with_options(VulkanOptions {
        max_cached_commands: 1,
        reuse_budget_bytes: 0,
        ..VulkanOptions::default()
    })
    .expect("second backend opens");
    let k = load(&b, &scale_add());
    for n in [10u32, 200, 10, 200] {
        let input: Vec<u32> = (0..n).collect();
        let out = b
            .dispatch(&[scale_add_job(first_queue(&b), k, &input, 3)])
            .remove(0)
            .expect("dispatch succeeds");
        expect_scale_add(&out.outputs[0], &input, 3);
    }
    let stats = b.reuse_stats(0).expect("device 0");
    assert_eq!(stats.replayed, 0, "{stats:?}");
    assert_eq!(stats.recorded, 4, "{stats:?}");
}

/// Three rounds of `scale_add` on 999 words, then twice `increment` with a zero-filled
/// output binding, every answer checked; returns the `scale_add` handle.
fn round_trips_are_exact(b: &VulkanBackend) -> KernelHandle {
    let k = load(b, &scale_add());
    for round in 0..4u32 {
        let input: Vec<u32> = (0..999).map(|i| i * 7 + round).collect();
        let out = b
            .dispatch(&[scale_add_job(first_queue(b), k, &input, 5)])
            .remove(0)
            .expect("dispatch succeeds");
        expect_scale_add(&out.outputs[0], &input, 5);
    }
    let inc = load(b, &increment());
    let data: Vec<u8> = (1..=10).collect();
    let job = DispatchJob {
        queue: first_queue(b),
        kernel: inc,
        buffers: vec![BufferArg::Data(data.clone().into()), BufferArg::Zeroed(4)],
        push_constants: vec![],
        workgroups: [1, 1, 1],
    };
    let mut padded = data;
    padded.resize(12, 0);
    let expected: Vec<u8> = words(&padded)
        .iter()
        .flat_map(|w| (w + 1).to_le_bytes())
        .take(10)
        .collect();
    for _ in 0..2 {
        let out = b
            .dispatch(std::slice::from_ref(&job))
            .remove(0)
            .expect("dispatch succeeds");
        assert_eq!(out.outputs[0], expected);
        assert_eq!(words(&out.outputs[1]), vec![3]);
    }
    k
}

#[test]
fn staged_uploads_and_readbacks_give_the_same_results() {
    // Discrete GPUs stage through host-visible buffers; force that path here too.
    let Some(_) = backend() else { return };
    let b = VulkanBackend::with_options(VulkanOptions {
        always_stage: true,
        host_max_bytes: 0,
        ..VulkanOptions::default()
    })
    .expect("staged backend opens");
    round_trips_are_exact(&b);
    let stats = b.reuse_stats(0).expect("device 0");
    // Per shape, the first run is plain, the second records, the rest replay.
    assert_eq!((stats.plain_launches, stats.replayed), (2, 2), "{stats:?}");
    assert_eq!(stats.in_place, 0, "{stats:?}");
    let bw = b
        .measure_copy_bandwidth(first_queue(&b), 1 << 20)
        .expect("copy is timed");
    assert_eq!(bw.bytes, 1 << 20);
}

#[test]
fn small_slots_in_host_memory_give_the_same_results() {
    // A discrete GPU binds a small dispatch's buffers in host-cached system memory
    // (`host_max_bytes`): no staging copies. Forced here on a staged device; a slot
    // above the limit still stages.
    let Some(_) = backend() else { return };
    let b = VulkanBackend::with_options(VulkanOptions {
        always_stage: true,
        host_max_bytes: 64 << 10,
        ..VulkanOptions::default()
    })
    .expect("backend opens");
    let k = round_trips_are_exact(&b);
    let stats = b.reuse_stats(0).expect("device 0");
    assert_eq!((stats.recorded, stats.in_place), (4, 4), "{stats:?}");

    // 256 KiB of buffers: above the limit, staged.
    let big: Vec<u32> = (0..(64u32 << 10)).collect();
    let out = b
        .dispatch(&[scale_add_job(first_queue(&b), k, &big, 2)])
        .remove(0)
        .expect("staged dispatch succeeds");
    expect_scale_add(&out.outputs[0], &big, 2);
    let stats = b.reuse_stats(0).expect("device 0");
    assert_eq!((stats.recorded, stats.in_place), (5, 4), "{stats:?}");
}

#[test]
fn an_untimed_dispatch_answers_the_same_without_kernel_time() {
    let Some(b) = backend() else { return };
    let k = load(b, &scale_add());
    let input: Vec<u32> = (0..300).collect();
    let job = scale_add_job(first_queue(b), k, &input, 9);
    for _ in 0..2 {
        let untimed = b
            .dispatch_untimed(std::slice::from_ref(&job))
            .remove(0)
            .expect("untimed dispatch succeeds");
        expect_scale_add(&untimed.outputs[0], &input, 9);
        assert_eq!(untimed.kernel_ns, None);
        // The same shape timed right after: its own slot, with timestamps.
        let timed = b
            .dispatch(std::slice::from_ref(&job))
            .remove(0)
            .expect("timed dispatch succeeds");
        expect_scale_add(&timed.outputs[0], &input, 9);
        assert!(timed.kernel_ns.is_some());
    }
}

const COUNT_ODD: &str = r#"
@group(0) @binding(0) var<storage, read> input: array<u32>;
@group(0) @binding(1) var<storage, read_write> count: atomic<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if (i < arrayLength(&input) && (input[i] & 1u) == 1u) { atomicAdd(&count, 1u); }
}
"#;

#[test]
fn device_scoped_storage_atomics_load_and_run() {
    // Regression: with the Vulkan memory model enabled but not its device scope,
    // vulkano refused naga's storage atomics (`Device` scope) at pipeline creation.
    let Some(b) = backend() else { return };
    let v = KernelVariant {
        name: "test/count-odd".into(),
        spirv: Some(spirv(COUNT_ODD)),
        entry_point: "main".into(),
        workgroup_size: [64, 1, 1],
        bindings: vec![
            binding(0, BindingAccess::Read),
            binding(1, BindingAccess::Write),
        ],
        push_constant_bytes: 0,
        items_per_invocation: 1,
        cpu: None,
    };
    let k = b.load_kernel(0, &v).unwrap_or_else(|e| panic!("{e}"));
    let input: Vec<u32> = (0..1000).map(|i| i * 3).collect();
    let job = DispatchJob {
        queue: first_queue(b),
        kernel: k,
        buffers: vec![BufferArg::Data(bytes(&input)), BufferArg::Zeroed(4)],
        push_constants: vec![],
        workgroups: [16, 1, 1],
    };
    let out = b.dispatch(&[job]).remove(0).expect("dispatch succeeds");
    let odd = input.iter().filter(|&&x| x % 2 == 1).count() as u32;
    assert_eq!(words(&out.outputs[0]), vec![odd]);
}

#[test]
fn builtin_workloads_match_their_reference_on_vulkan() {
    // Every variant of every built-in workload, on every input shape, against the CPU
    // reference: empty, tiny, ragged and tile-straddling sizes.
    use photofinish::kernels::{self, SCAN_TILE_BYTES};
    let Some(b) = backend() else { return };
    // Kept small: lavapipe runs the per-position scan check on the CPU.
    let sizes = [0usize, 1, 7, 1000, 3 * SCAN_TILE_BYTES + 5, (64 << 10) + 13];
    for workload in kernels::builtin() {
        let variants = workload.variants();
        let handles: Vec<_> = variants
            .iter()
            .map(|v| {
                b.load_kernel(0, v)
                    .unwrap_or_else(|e| panic!("{}: {e}", v.name))
            })
            .collect();
        for shape in workload.shapes() {
            for (i, &len) in sizes.iter().enumerate() {
                let input = workload.generate(shape, len, i as u64 + 1);
                let want = workload.reference(&input);
                for (variant, &kernel) in handles.iter().enumerate() {
                    let plan = workload.plan(variant, &input).expect("plan");
                    let job = plan.into_job(first_queue(b), kernel);
                    let out = b.dispatch(&[job]).remove(0).unwrap_or_else(|e| {
                        panic!("{} variant {variant} {shape:?} {len}: {e}", workload.name())
                    });
                    assert_eq!(
                        workload.answer(variant, &input, &out.outputs),
                        Ok(want.clone()),
                        "{} variant {variant}, {shape:?}, {len} bytes",
                        workload.name()
                    );
                }
            }
        }
    }
}

/// A backend that stages every upload through copies (as a discrete GPU does for all
/// but small dispatches), with overlapped uploads on or off.
fn staged_backend(overlap_uploads: bool) -> VulkanBackend {
    VulkanBackend::with_options(VulkanOptions {
        always_stage: true,
        host_max_bytes: 0,
        overlap_uploads,
        ..VulkanOptions::default()
    })
    .expect("staged backend opens")
}

/// A group of `scale_add` and `increment` jobs on one queue, each with buffers of its
/// own, and a check of every answer.
fn mixed_group(b: &VulkanBackend, round: u32) -> (Vec<DispatchJob>, impl Fn(&[DispatchOutput])) {
    let (k, inc) = (load(b, &scale_add()), load(b, &increment()));
    let q = first_queue(b);
    let inputs: Vec<Vec<u32>> = (0..5u32)
        .map(|j| (0..(3000 + 100 * j)).map(|i| i * 3 + j + round).collect())
        .collect();
    let mut jobs: Vec<DispatchJob> = inputs
        .iter()
        .enumerate()
        .map(|(j, input)| scale_add_job(q, k, input, j as u32))
        .collect();
    let counts: Vec<u32> = (0..700).map(|i| i ^ round).collect();
    jobs.insert(
        2,
        DispatchJob {
            queue: q,
            kernel: inc,
            buffers: vec![BufferArg::Data(bytes(&counts)), BufferArg::Zeroed(4)],
            push_constants: vec![],
            workgroups: [700u32.div_ceil(32), 1, 1],
        },
    );
    let check = move |outs: &[DispatchOutput]| {
        assert_eq!(outs.len(), 6);
        let mut scaled = outs.iter().take(2).chain(outs.iter().skip(3));
        for (j, input) in inputs.iter().enumerate() {
            expect_scale_add(
                &scaled.next().expect("an output").outputs[0],
                input,
                j as u32,
            );
        }
        let inc: Vec<u32> = counts.iter().map(|c| c + 1).collect();
        assert_eq!(words(&outs[2].outputs[0]), inc);
        assert_eq!(words(&outs[2].outputs[1]), vec![700]);
    };
    (jobs, check)
}

fn all_ok(results: Vec<Result<DispatchOutput, BackendError>>) -> Vec<DispatchOutput> {
    results
        .into_iter()
        .map(|r| r.expect("dispatch succeeds"))
        .collect()
}

#[test]
fn a_group_with_overlapped_uploads_answers_as_jobs_run_one_by_one() {
    let Some(_) = backend() else { return };
    let b = staged_backend(true);
    for round in 0..3 {
        for timed in [true, false] {
            let (jobs, check) = mixed_group(&b, round);
            let before = b.reuse_stats(0).expect("device 0");
            let outs = all_ok(b.dispatch_overlapped(&jobs, timed));
            check(&outs);
            // Every job after the first staged its uploads, which overlapped the
            // kernels before it, in one command buffer.
            let overlapped: Vec<_> = outs.iter().map(|o| o.upload_overlapped).collect();
            assert_eq!(overlapped[0], None);
            assert!(
                overlapped[1..].iter().all(|o| *o == Some(true)),
                "{overlapped:?}"
            );
            assert_eq!(outs.iter().all(|o| o.kernel_ns.is_some()), timed);
            let after = b.reuse_stats(0).expect("device 0");
            assert_eq!(after.uploads_overlapped - before.uploads_overlapped, 5);
            assert_eq!(after.overlap_groups - before.overlap_groups, 1);
            assert_eq!(after.uploads_serialised, before.uploads_serialised);

            // The same jobs through `dispatch`: one submission each, the uploads
            // serialised behind the kernels, the same answers.
            let serial = all_ok(b.dispatch(&jobs));
            check(&serial);
            assert!(serial[1..]
                .iter()
                .all(|o| o.upload_overlapped == Some(false)));
            let last = b.reuse_stats(0).expect("device 0");
            assert_eq!(last.uploads_serialised - after.uploads_serialised, 5);
            assert_eq!(last.overlap_groups, after.overlap_groups);
        }
    }
}

#[test]
fn with_overlap_off_or_nothing_staged_a_group_is_submitted_job_by_job() {
    let Some(shared) = backend() else { return };
    let off = staged_backend(false);
    let (jobs, check) = mixed_group(&off, 7);
    let outs = all_ok(off.dispatch_overlapped(&jobs, true));
    check(&outs);
    assert!(outs[1..].iter().all(|o| o.upload_overlapped == Some(false)));
    let stats = off.reuse_stats(0).expect("device 0");
    assert_eq!(
        (stats.uploads_overlapped, stats.overlap_groups),
        (0, 0),
        "{stats:?}"
    );
    assert_eq!(stats.uploads_serialised, 5, "{stats:?}");

    // In place (lavapipe's memory is host visible; a discrete GPU's host memory for
    // small slots): the host writes the inputs, no copy to overlap.
    let in_place = VulkanBackend::with_options(VulkanOptions {
        always_stage: true,
        host_max_bytes: 1 << 20,
        ..VulkanOptions::default()
    })
    .expect("backend opens");
    for b in [shared, &in_place] {
        let (jobs, check) = mixed_group(b, 8);
        let before = b.reuse_stats(0).expect("device 0");
        let outs = all_ok(b.dispatch_overlapped(&jobs, true));
        check(&outs);
        if b.reuse_stats(0).expect("device 0").in_place > 0 {
            assert!(outs.iter().all(|o| o.upload_overlapped.is_none()));
            let after = b.reuse_stats(0).expect("device 0");
            assert_eq!(after.overlap_groups, before.overlap_groups);
        }
    }
}
