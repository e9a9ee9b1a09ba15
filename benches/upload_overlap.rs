//! upload_overlap (issue #30, item 3): D3 acted on. A stream of batches of 1, 4 and
//! 16 MiB (a `u32` scale-add: one input, one output of the same size), handed to the
//! Vulkan backend four at a time in one call on one queue — as a D1 group of a backlog
//! reaches it — through `Backend::dispatch_overlapped`, with overlapped uploads on
//! (`VulkanOptions::overlap_uploads`, the default: the group is one command buffer, each
//! batch's upload copies running while the previous batch's kernel runs) against off
//! (each batch submitted on its own, its copies ordered behind the earlier kernels).
//! Both backends stage every upload (`always_stage`, `host_max_bytes` 0), the path a
//! discrete GPU takes for batches this size. Each batch has an input of its own; every
//! answer of the first call is checked. Prints the throughput ratio per size.
//!
//!     PF_BENCH_SECS=1 CARGO_PROFILE_DEV_OPT_LEVEL=3 cargo bench --profile dev --bench upload_overlap
//!
//! Needs a Vulkan device (lavapipe runs it; it executes the copies and the kernels on
//! the same CPU cores, so overlap has little to gain there).

mod common;

use std::time::Instant;

use photofinish::backend::vulkan::{VulkanBackend, VulkanOptions};
use photofinish::backend::{
    Backend, BindingAccess, BindingDesc, BufferArg, DispatchJob, KernelVariant,
};

const SCALE_ADD: &str = r#"
@group(0) @binding(0) var<storage, read> input: array<u32>;
@group(0) @binding(1) var<storage, read_write> output: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x + id.y * 65535u * 256u;
    if (i >= arrayLength(&output)) { return; }
    output[i] = input[i] * 2u + 1u;
}
"#;

/// Batches a backend call carries (a group).
const GROUP: usize = 4;

fn backend(overlap_uploads: bool) -> VulkanBackend {
    VulkanBackend::with_options(VulkanOptions {
        always_stage: true,
        host_max_bytes: 0,
        overlap_uploads,
        ..VulkanOptions::default()
    })
    .unwrap_or_else(|e| common::fail(&format!("no Vulkan device: {e}")))
}

/// One group call's jobs of `bytes`-byte batches on `b`'s first queue.
fn jobs(b: &VulkanBackend, bytes: usize) -> Vec<DispatchJob> {
    let variant = KernelVariant {
        name: "bench/scale-add".into(),
        spirv: Some(common::spirv("scale-add", SCALE_ADD)),
        entry_point: "main".into(),
        workgroup_size: [256, 1, 1],
        bindings: vec![
            BindingDesc::new(0, BindingAccess::Read),
            BindingDesc::new(1, BindingAccess::Write),
        ],
        push_constant_bytes: 0,
        items_per_invocation: 1,
        cpu: None,
    };
    let kernel = b
        .load_kernel(0, &variant)
        .unwrap_or_else(|e| common::fail(&format!("the kernel loads: {e}")));
    let words = bytes / 4;
    let groups = (words as u32).div_ceil(256);
    let (x, y) = (groups.min(65535), groups.div_ceil(65535));
    (0..GROUP)
        .map(|j| DispatchJob {
            queue: b.queues()[0],
            kernel,
            buffers: vec![
                BufferArg::Data(
                    (0..words as u32)
                        .flat_map(|i| (i ^ j as u32).to_le_bytes())
                        .collect(),
                ),
                BufferArg::Zeroed(bytes as u64),
            ],
            push_constants: Vec::new(),
            workgroups: [x, y, 1],
        })
        .collect()
}

fn main() {
    let mut c = common::quick();
    let (on, off) = (backend(true), backend(false));
    let sizes = [1usize << 20, 4 << 20, 16 << 20];
    for &bytes in &sizes {
        let name = format!("upload_overlap/{}MiB", bytes >> 20);
        let mut group = c.benchmark_group(&name);
        group.throughput(criterion::Throughput::Bytes((bytes * GROUP) as u64));
        for (label, b) in [("overlap", &on), ("serial", &off)] {
            let jobs = jobs(b, bytes);
            let first = b.dispatch_overlapped(&jobs, false);
            for (j, out) in first.iter().enumerate() {
                let out = out
                    .as_ref()
                    .unwrap_or_else(|e| common::fail(&format!("{label}: {e}")));
                let BufferArg::Data(input) = &jobs[j].buffers[0] else {
                    unreachable!()
                };
                let right = out.outputs[0]
                    .chunks_exact(4)
                    .zip(input.chunks_exact(4))
                    .all(|(o, i)| {
                        let (o, i) = (
                            u32::from_le_bytes(o.try_into().unwrap_or_default()),
                            u32::from_le_bytes(i.try_into().unwrap_or_default()),
                        );
                        o == i.wrapping_mul(2).wrapping_add(1)
                    });
                if !right {
                    common::fail(&format!(
                        "{label}: batch {j} of {bytes} bytes answered wrong"
                    ));
                }
                let expected = if j == 0 {
                    None
                } else {
                    Some(label == "overlap")
                };
                if out.upload_overlapped != expected {
                    common::fail(&format!(
                        "{label}: batch {j}: upload_overlapped {:?}",
                        out.upload_overlapped
                    ));
                }
            }
            common::timed(&mut group, &name, label, |iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    for r in b.dispatch_overlapped(&jobs, false) {
                        if let Err(e) = r {
                            common::fail(&format!("{label}: {e}"));
                        }
                    }
                }
                start.elapsed()
            });
        }
        group.finish();
    }
    for &bytes in &sizes {
        let name = format!("upload_overlap/{}MiB", bytes >> 20);
        common::print_speedup(
            &format!("{} MiB batches, {GROUP} a call", bytes >> 20),
            &format!("{name}/overlap"),
            &format!("{name}/serial"),
            "> 1 on a discrete GPU",
        );
    }
    let stats = on.reuse_stats(0).unwrap_or_default();
    println!(
        "overlapped uploads: {} in {} groups",
        stats.uploads_overlapped, stats.overlap_groups
    );
}
