//! race_efficiency (issue #6, bench 3, GPU machine): how much two arms of a race overlap.
//!
//! It drives the Vulkan backend directly: one `Backend::dispatch` call with two jobs on
//! two queues (the race), against each job dispatched alone on its queue. The figure is
//! `race wall time ÷ slower arm's wall time alone`: 1.0 means the arms ran fully at the
//! same time, 2.0 (for equal arms) one after the other. Measured for a small kernel that
//! leaves most of the GPU idle and a kernel that fills it, on a pair of queues of the
//! same family and a pair of different families where the device has them.
//!
//! The kernel is a compute-bound hash loop (tiny I/O, so copies do not blur the
//! overlap): `PF_RACE_SMALL_WORKGROUPS` (default 8) × 256 invocations of
//! `PF_RACE_SMALL_ROUNDS` rounds (default 100 000), and `PF_RACE_LARGE_WORKGROUPS`
//! (default 65 535) × 256 of `PF_RACE_LARGE_ROUNDS` (default 400). Each arm's GPU time
//! from timestamp queries is printed beside the ratio. With `PF_BENCH_BACKEND=cpu` it
//! runs the same measurement on the CPU backend (whose queues are pool threads).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use photofinish::backend::{
    Backend, BindingAccess, BindingDesc, BufferArg, DispatchJob, KernelHandle, QueueId,
};

const BUSY_WGSL: &str = r#"
struct Params { rounds: u32 }
var<immediate> params: Params;
@group(0) @binding(0) var<storage, read_write> sink: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    var x = gid.x * 2654435761u + 1u;
    for (var i = 0u; i < params.rounds; i++) {
        x = x * 1664525u + 1013904223u;
        x = x ^ (x >> 13u);
    }
    // Never true in practice, but the compiler cannot know: the loop must run.
    if (x == 0x9e3779b9u) {
        sink[0] = x;
    }
}
"#;

/// The busy kernel on the CPU backend: the same loop, one "invocation" per item.
fn busy_cpu(_buffers: &mut [Vec<u8>], pc: &[u8], wg: [u32; 3]) -> Result<(), String> {
    let rounds = pc
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or("missing push constants")?;
    let mut acc = 0u32;
    for gid in 0..wg[0].saturating_mul(256) {
        let mut x = gid.wrapping_mul(2_654_435_761).wrapping_add(1);
        for _ in 0..rounds {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            x ^= x >> 13;
        }
        acc ^= x;
    }
    std::hint::black_box(acc);
    Ok(())
}

/// One measured configuration: a kernel size on a pair of queues.
struct Case {
    size: &'static str,
    pair: &'static str,
    queues: [QueueId; 2],
    workgroups: u32,
    rounds: u32,
}

fn job(kernel: KernelHandle, queue: QueueId, workgroups: u32, rounds: u32) -> DispatchJob {
    DispatchJob {
        queue,
        kernel,
        buffers: vec![BufferArg::Zeroed(4)],
        push_constants: rounds.to_le_bytes().to_vec(),
        workgroups: [workgroups, 1, 1],
    }
}

/// Dispatches `jobs` together `iters` times; returns the wall time and the mean GPU
/// time of each job.
fn run(backend: &dyn Backend, jobs: &[DispatchJob], iters: u64) -> (Duration, Vec<f64>) {
    let mut gpu = vec![0f64; jobs.len()];
    let started = Instant::now();
    for _ in 0..iters {
        for (i, result) in backend.dispatch(jobs).into_iter().enumerate() {
            match result {
                Ok(out) => gpu[i] += out.kernel_ns.unwrap_or(0) as f64,
                Err(e) => common::fail(&format!("dispatch failed: {e}")),
            }
        }
    }
    let elapsed = started.elapsed();
    (
        elapsed,
        gpu.iter().map(|g| g / iters.max(1) as f64).collect(),
    )
}

/// The queue pairs to measure: two queues of one family, two of different families.
fn pairs(queues: &[QueueId]) -> Vec<(&'static str, [QueueId; 2])> {
    let mut out = Vec::new();
    let device0: Vec<QueueId> = queues.iter().copied().filter(|q| q.device == 0).collect();
    if let Some((a, b)) = device0.iter().enumerate().find_map(|(i, a)| {
        device0[i + 1..]
            .iter()
            .find(|b| b.family == a.family)
            .map(|b| (*a, *b))
    }) {
        out.push(("same-family", [a, b]));
    }
    if let Some((a, b)) = device0.iter().enumerate().find_map(|(i, a)| {
        device0[i + 1..]
            .iter()
            .find(|b| b.family != a.family)
            .map(|b| (*a, *b))
    }) {
        out.push(("cross-family", [a, b]));
    }
    out
}

fn race_efficiency(c: &mut Criterion) {
    let backend = common::backend_from_env();
    let variant = common::gpu_variant(
        "bench/busy",
        common::spirv("busy", BUSY_WGSL),
        [256, 1, 1],
        vec![BindingDesc {
            slot: 0,
            access: BindingAccess::Write,
        }],
        4,
    );
    let variant = photofinish::backend::KernelVariant {
        cpu: Some(Arc::new(busy_cpu)),
        ..variant
    };
    let kernel = backend
        .load_kernel(0, &variant)
        .unwrap_or_else(|e| common::fail(&format!("cannot load the busy kernel: {e}")));
    let device = backend
        .devices()
        .first()
        .map_or_else(|| "?".to_owned(), |d| d.name.clone());
    // One small dispatch first, so a kernel that does not run fails here, on any device.
    if let Some(&queue) = backend.queues().first() {
        let (_, gpu) = run(backend.as_ref(), &[job(kernel, queue, 1, 16)], 1);
        println!(
            "race_efficiency: check dispatch ran, {:.0} ns of kernel time",
            gpu[0]
        );
    }
    let pairs = pairs(backend.queues());
    println!(
        "race_efficiency on {device}: queues {:?}; pairs {:?}",
        backend.queues(),
        pairs
            .iter()
            .map(|(n, q)| (n, q[0], q[1]))
            .collect::<Vec<_>>()
    );
    if pairs.is_empty() {
        println!("race_efficiency: this device has one queue, so no two arms can overlap; nothing to measure (run it on a GPU with several queues)");
        return;
    }
    let sizes = [
        (
            "small",
            common::env_usize("PF_RACE_SMALL_WORKGROUPS", 8) as u32,
            common::env_usize("PF_RACE_SMALL_ROUNDS", 100_000) as u32,
        ),
        (
            "large",
            common::env_usize("PF_RACE_LARGE_WORKGROUPS", 65_535) as u32,
            common::env_usize("PF_RACE_LARGE_ROUNDS", 400) as u32,
        ),
    ];
    let cases: Vec<Case> = sizes
        .iter()
        .flat_map(|&(size, workgroups, rounds)| {
            pairs.iter().map(move |&(pair, queues)| Case {
                size,
                pair,
                queues,
                workgroups,
                rounds,
            })
        })
        .collect();

    let mut gpu_times = Vec::new();
    for case in &cases {
        let name = format!("race_efficiency/{}/{}", case.size, case.pair);
        let [a, b] = case
            .queues
            .map(|q| job(kernel, q, case.workgroups, case.rounds));
        let mut group = c.benchmark_group(&name);
        let mut gpu_race = Vec::new();
        common::timed(&mut group, &name, "race", |iters| {
            let (t, g) = run(backend.as_ref(), &[a.clone(), b.clone()], iters);
            gpu_race = g;
            t
        });
        let mut gpu_a = Vec::new();
        common::timed(&mut group, &name, "arm-a-alone", |iters| {
            let (t, g) = run(backend.as_ref(), std::slice::from_ref(&a), iters);
            gpu_a = g;
            t
        });
        let mut gpu_b = Vec::new();
        common::timed(&mut group, &name, "arm-b-alone", |iters| {
            let (t, g) = run(backend.as_ref(), std::slice::from_ref(&b), iters);
            gpu_b = g;
            t
        });
        group.finish();
        gpu_times.push((name, gpu_race, gpu_a, gpu_b));
    }

    for (name, race, a, b) in gpu_times {
        let mean = |id: &str| common::mean_ns(&format!("{name}/{id}"));
        match (mean("race"), mean("arm-a-alone"), mean("arm-b-alone")) {
            (Some(r), Some(x), Some(y)) if x.max(y) > 0.0 => println!(
                "RATIO {name}: race {r:.0} ns wall / slower arm alone {:.0} ns = {:.2} (1.0: full overlap, 2.0: serial); GPU time per arm in the race {race:.0?} ns, alone {a:.0?} / {b:.0?} ns",
                x.max(y),
                r / x.max(y)
            ),
            _ => println!("RATIO {name}: missing measurement"),
        }
    }
}

criterion_group! {
    name = benches;
    config = common::quick();
    targets = race_efficiency
}
criterion_main!(benches);
