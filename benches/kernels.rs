//! GB/s of every built-in variant against the device's limit and against PyTorch,
//! measured in the same run (issues #3, #6.5, #31).
//!
//! Every copy and variant is timed two ways, each the median of `PF_KERNEL_RUNS`
//! (default 20, at least 10) GPU timestamps around the kernel alone, so host submit,
//! upload and download are not counted: one dispatch per submit (three untimed
//! first; the `one/submit` column), and back to back — after [`WARM_NS`] of untimed
//! back-to-back dispatches, samples of about [`BUSY_NS`] of back-to-back dispatches in
//! one command buffer (`VulkanBackend::dispatch_repeated`), per dispatch. The limit and
//! the ÷ columns use the back-to-back figures: an H100's SM clock idles at 345 MHz and
//! rises only after about 100 ms of sustained load, so a sub-millisecond kernel the
//! host submits now and then runs at the idle clock (journal 2026-12-07).
//!
//! **The limit.** A reduce or a histogram reads each input byte once, so its limit is
//! what the memory moves per second. The bench measures two copies of the input's size
//! (and `vkCmdCopyBuffer` also at `PHOTOFINISH_COPY_BYTES`, default 1 GiB on a discrete
//! GPU, 64 MiB otherwise) between two device-local buffers: `vkCmdCopyBuffer` and a
//! vec4 grid-stride compute copy (`shaders/copy_vec4.wgsl`). Each is reported as bytes
//! copied and bytes moved (read + written) per second; the limit is the larger bytes
//! moved per second at the input's size, back to back. A sanity check fails the bench
//! (exit status 1) when the limit is below half the datasheet bandwidth of the device
//! (a table by device name: H100 SXM 3.35 TB/s, H100 NVL 3.9, H100 PCIe 2.0, H200 4.8);
//! devices not in the table skip the check with a note.
//!
//! **Peers.** With `PF_PEERS` naming the output of `scripts/peers.py` (run before this
//! bench on the GPU machine by `.gpu/run.sh`), each kernel is also divided by PyTorch at
//! the same size: reduce by `torch.sum` (CUB), histogram by `torch.bincount` (uniform and
//! skewed), the copy by a d2d `copy_`.
//!
//! **Diagnosis.** `PF_KERNEL_DIAG=1` also prints the memory types and the one a large
//! device buffer gets, the time per dispatch against 1 to 64 back-to-back repeats, and
//! the compute copy and the wide reduce without `robustBufferAccess`.
//!
//! **Sweep.** The wide reduce and the lane-columns histogram loop grid-stride, so any
//! workgroup count is correct; the bench also times them at several counts (the plan's
//! cap is `WIDE_WORKGROUPS` / `LANES_WORKGROUPS`), to choose that cap on real hardware.
//!
//! ```sh
//! PHOTOFINISH_BENCH_BYTES=268435456 cargo bench --bench kernels
//! ```
//! Input size defaults to 256 MiB on a discrete GPU and 8 MiB on a software device.

mod common;

use std::sync::Arc;

use photofinish::backend::vulkan::{VulkanBackend, VulkanOptions};
use photofinish::backend::{
    Backend, BindingAccess, BindingDesc, BufferArg, DispatchJob, KernelVariant, QueueId,
};
use photofinish::kernels::{self, InputShape, LANES_WORKGROUPS, WIDE_WORKGROUPS};

/// Below this share of the datasheet bandwidth the limit is taken as broken.
const SANITY_SHARE: f64 = 0.5;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The datasheet memory bandwidth (TB/s) for a device name, with what it is.
fn datasheet(name: &str) -> Option<(&'static str, f64)> {
    let n = name.to_lowercase();
    if n.contains("h200") {
        Some(("H200 HBM3e", 4.8))
    } else if n.contains("h100") && n.contains("pcie") {
        Some(("H100 PCIe HBM2e", 2.0))
    } else if n.contains("h100") && n.contains("nvl") {
        Some(("H100 NVL HBM3", 3.9))
    } else if n.contains("h100") {
        Some(("H100 SXM HBM3", 3.35))
    } else {
        None
    }
}

/// Median of `v` (sorted in place); 1 at least, so a division by it is defined.
fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0).max(1)
}

/// `runs` warm GPU times of `job` (three untimed first), their median in ns, or why
/// not.
fn time_job(backend: &VulkanBackend, job: &DispatchJob, runs: usize) -> Result<u64, String> {
    for _ in 0..3 {
        backend
            .dispatch(std::slice::from_ref(job))
            .remove(0)
            .map_err(|e| e.to_string())?;
    }
    let mut ns = Vec::with_capacity(runs);
    for _ in 0..runs {
        let out = backend
            .dispatch(std::slice::from_ref(job))
            .remove(0)
            .map_err(|e| e.to_string())?;
        ns.push(out.kernel_ns.ok_or("the queue has no timestamps")?);
    }
    Ok(median(&mut ns))
}

/// How long the GPU is kept busy per timed sample of [`time_busy`].
const BUSY_NS: u64 = 20_000_000;
/// How long the GPU is kept busy, untimed, before the back-to-back samples: an H100
/// idles at a 345 MHz SM clock and raises it to 1 980 MHz only after about 100 ms of
/// sustained load (nvidia-smi, 2026-12-07), so a kernel the host submits now and then
/// runs at the idle clock.
const WARM_NS: u64 = 400_000_000;

/// Repeats that keep the GPU busy about `busy_ns` for a kernel of `one_ns`.
fn repeats_for(busy_ns: u64, one_ns: u64) -> u32 {
    busy_ns.div_ceil(one_ns.max(1)).clamp(1, 4096) as u32
}

/// Repeats that keep the GPU busy about [`BUSY_NS`] for a kernel of `one_ns`.
fn busy_repeats(one_ns: u64) -> u32 {
    repeats_for(BUSY_NS, one_ns).min(256)
}

/// `runs` warm GPU times of `job` dispatched back to back (`busy_repeats` of the
/// per-submit time `one_ns`) in one command buffer, per dispatch, after [`WARM_NS`]
/// of untimed back-to-back dispatches that raise the clocks; their median in ns.
fn time_busy(
    backend: &VulkanBackend,
    job: &DispatchJob,
    one_ns: u64,
    runs: usize,
) -> Result<u64, String> {
    backend
        .dispatch_repeated(job, repeats_for(WARM_NS, one_ns))
        .map_err(|e| e.to_string())?;
    let repeats = busy_repeats(one_ns);
    let mut ns = Vec::with_capacity(runs);
    for _ in 0..runs {
        let out = backend
            .dispatch_repeated(job, repeats)
            .map_err(|e| e.to_string())?;
        ns.push(out.kernel_ns.ok_or("the queue has no timestamps")? / u64::from(repeats));
    }
    Ok(median(&mut ns))
}

/// The compute copy of the bench's baseline: binding 0 read, binding 1 written.
fn copy_variant() -> KernelVariant {
    let bytes = include_bytes!(concat!(env!("OUT_DIR"), "/copy_vec4.spv"));
    KernelVariant {
        name: "bench/copy-vec4".into(),
        spirv: Some(
            bytes
                .chunks_exact(4)
                .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                .collect(),
        ),
        entry_point: "main".into(),
        workgroup_size: [kernels::WORKGROUP_SIZE, 1, 1],
        bindings: vec![
            BindingDesc::new(0, BindingAccess::Read),
            BindingDesc::new(1, BindingAccess::Write),
        ],
        push_constant_bytes: 4,
        items_per_invocation: 1,
        cpu: None,
    }
}

/// A copy's median: bytes copied and bytes moved (read + written) per ns (= GB/s).
/// `median_ns` is the busy time (copies back to back); `one_ns` one copy per submit.
struct CopyFigure {
    what: String,
    bytes: u64,
    median_ns: u64,
    one_ns: u64,
}

impl CopyFigure {
    fn copied(&self) -> f64 {
        self.bytes as f64 / self.median_ns as f64
    }
    fn moved(&self) -> f64 {
        2.0 * self.copied()
    }
}

/// `vkCmdCopyBuffer` of `bytes`, warm (one call first, and each call copies once
/// before its timed copies), the median of `runs` calls: one copy per call, and
/// `busy_repeats` copies back to back per call.
fn command_copy(
    backend: &VulkanBackend,
    queue: QueueId,
    bytes: u64,
    runs: usize,
) -> Result<CopyFigure, String> {
    let sample = |repeats: u32| -> Result<u64, String> {
        let mut ns = Vec::with_capacity(runs);
        for _ in 0..runs {
            let c = backend
                .measure_copy_bandwidth_repeated(queue, bytes, repeats)
                .map_err(|e| e.to_string())?;
            ns.push(c.gpu_ns);
        }
        Ok(median(&mut ns))
    };
    backend
        .measure_copy_bandwidth(queue, bytes)
        .map_err(|e| e.to_string())?;
    let one_ns = sample(1)?;
    // Untimed back-to-back copies first, to raise the clocks (see WARM_NS).
    backend
        .measure_copy_bandwidth_repeated(queue, bytes, repeats_for(WARM_NS, one_ns))
        .map_err(|e| e.to_string())?;
    let median_ns = sample(busy_repeats(one_ns))?;
    Ok(CopyFigure {
        what: format!("vkCmdCopyBuffer {} MiB", bytes >> 20),
        bytes,
        median_ns,
        one_ns,
    })
}

/// The job of the vec4 compute copy of `bytes` (rounded down to whole vec4s) on
/// `backend`, and the bytes it copies.
fn copy_job(
    backend: &VulkanBackend,
    queue: QueueId,
    bytes: u64,
) -> Result<(DispatchJob, u64), String> {
    let kernel = backend
        .load_kernel(queue.device, &copy_variant())
        .map_err(|e| e.to_string())?;
    let vecs = u32::try_from(bytes / 16).map_err(|_| "the copy is too large".to_string())?;
    let data: Arc<[u8]> = vec![0x5a; (bytes / 16 * 16) as usize].into();
    let job = DispatchJob {
        queue,
        kernel,
        buffers: vec![
            BufferArg::Data(data),
            BufferArg::Zeroed(u64::from(vecs) * 16),
        ],
        push_constants: vecs.to_le_bytes().to_vec(),
        workgroups: [WIDE_WORKGROUPS.max(1), 1, 1],
    };
    Ok((job, u64::from(vecs) * 16))
}

/// The vec4 compute copy of `bytes` (a multiple of 16), the median of `runs`.
fn kernel_copy(
    backend: &VulkanBackend,
    queue: QueueId,
    bytes: u64,
    runs: usize,
) -> Result<CopyFigure, String> {
    let (job, bytes) = copy_job(backend, queue, bytes)?;
    let one_ns = time_job(backend, &job, runs)?;
    let median_ns = time_busy(backend, &job, one_ns, runs)?;
    Ok(CopyFigure {
        what: format!("compute copy {} MiB", bytes >> 20),
        bytes,
        median_ns,
        one_ns,
    })
}

/// `PF_KERNEL_DIAG`: where the baseline's bandwidth goes. The memory types and the one
/// a large device buffer gets; the compute copy's and `vkCmdCopyBuffer`'s time per copy
/// against how many run back to back in one command buffer; and the compute copy and
/// the wide reduce on a second backend without `robustBufferAccess`.
fn diagnose(backend: &VulkanBackend, bytes: u64, runs: usize) {
    let queue = backend.queues()[0];
    match backend.memory_report(queue.device, bytes) {
        Ok(r) => r.lines().for_each(|l| println!("DIAG memory {l}")),
        Err(e) => println!("DIAG memory: {e}"),
    }
    let curve = |b: &VulkanBackend, what: &str, job: &DispatchJob, moved: u64| {
        for repeats in [1u32, 2, 4, 16, 64] {
            let mut ns = Vec::with_capacity(runs);
            for _ in 0..runs.min(10) + 1 {
                match b.dispatch_repeated(job, repeats) {
                    Ok(o) => ns.push(o.kernel_ns.unwrap_or(0) / u64::from(repeats)),
                    Err(e) => {
                        println!("DIAG {what}: {e}");
                        return;
                    }
                }
            }
            ns.remove(0);
            let m = median(&mut ns);
            println!(
                "DIAG {what:<40} x{repeats:<3} {:>8.3} ms per dispatch  {:>8.1} GB/s",
                m as f64 / 1e6,
                moved as f64 / m as f64
            );
        }
    };
    if let Ok((job, copied)) = copy_job(backend, queue, bytes) {
        curve(backend, "compute copy (moved)", &job, 2 * copied);
    }
    for repeats in [1u32, 2, 4, 16] {
        let mut ns = Vec::new();
        for _ in 0..runs.min(10) + 1 {
            if let Ok(c) = backend.measure_copy_bandwidth_repeated(queue, bytes, repeats) {
                ns.push(c.gpu_ns);
            }
        }
        if ns.len() > 1 {
            ns.remove(0);
            let m = median(&mut ns);
            println!(
                "DIAG {:<40} x{repeats:<3} {:>8.3} ms per copy      {:>8.1} GB/s",
                "vkCmdCopyBuffer (moved)",
                m as f64 / 1e6,
                2.0 * bytes as f64 / m as f64
            );
        }
    }
    let reduce = kernels::builtin()
        .into_iter()
        .find(|w| w.name() == "reduce");
    let reduce_job = |b: &VulkanBackend| -> Option<DispatchJob> {
        let w = reduce.as_ref()?;
        let vi = w
            .variants()
            .iter()
            .position(|v| v.name == "reduce/vec4-wide")?;
        let input: Arc<[u8]> = w.generate(InputShape::Uniform, bytes as usize, 7).into();
        let kernel = b.load_kernel(0, &w.variants()[vi]).ok()?;
        let plan = w.plan_shared(vi, &input).ok()?;
        Some(plan.into_job(b.queues()[0], kernel))
    };
    if let Some(job) = reduce_job(backend) {
        curve(backend, "reduce/vec4-wide (input)", &job, bytes);
    }
    let options = VulkanOptions {
        robust_buffer_access: false,
        ..VulkanOptions::default()
    };
    match VulkanBackend::with_options(options) {
        Ok(b) => {
            if let Ok((job, copied)) = copy_job(&b, b.queues()[0], bytes) {
                curve(&b, "no robustBufferAccess: compute copy", &job, 2 * copied);
            }
            if let Some(job) = reduce_job(&b) {
                curve(&b, "no robustBufferAccess: reduce/vec4-wide", &job, bytes);
            }
        }
        Err(e) => println!("DIAG no robustBufferAccess: cannot open: {e}"),
    }
}

/// The peer of a kernel and shape.
fn peer_name(workload: &str, shape: InputShape) -> Option<&'static str> {
    match (workload, shape) {
        ("reduce", _) => Some("sum_u32"),
        ("histogram", InputShape::Skewed) => Some("bincount_skewed"),
        ("histogram", _) => Some("bincount_uniform"),
        _ => None,
    }
}

fn ratio(x: Option<f64>) -> String {
    x.map_or("-".into(), |r| format!("{r:.2}×"))
}

fn main() {
    let backend = match VulkanBackend::new() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("kernels bench: no Vulkan device ({e}); nothing to measure");
            return;
        }
    };
    let device = backend.devices()[0].clone();
    let discrete = device.device_type == "discrete";
    let input_bytes = env_u64(
        "PHOTOFINISH_BENCH_BYTES",
        if discrete { 256 << 20 } else { 8 << 20 },
    ) as usize;
    let copy_bytes = env_u64(
        "PHOTOFINISH_COPY_BYTES",
        if discrete { 1 << 30 } else { 64 << 20 },
    );
    let runs = env_u64("PF_KERNEL_RUNS", 20).max(10) as usize;
    let queue = backend.queues()[0];
    println!(
        "device: {} ({}), input {} MiB, median of {runs} warm runs",
        device.name,
        device.driver_version,
        input_bytes >> 20
    );

    // The limit: copies at the input's size (and the command copy at copy_bytes).
    let mut copies = Vec::new();
    let input_u64 = input_bytes as u64;
    for figure in [
        command_copy(&backend, queue, input_u64 / 4 * 4, runs),
        kernel_copy(&backend, queue, input_u64, runs),
        command_copy(&backend, queue, copy_bytes / 4 * 4, runs),
    ] {
        match figure {
            Ok(f) => copies.push(f),
            Err(e) => eprintln!("kernels bench: a copy failed: {e}"),
        }
    }
    let peers = common::read_peers("gbps");
    for c in &copies {
        let peer = peers.get(&("copy".to_owned(), c.bytes)).copied();
        println!(
            "COPY {:<28} {:>9.3} ms  copied {:>8.1} GB/s  moved {:>8.1} GB/s  ÷PyTorch {}  \
             (one per submit: {:.3} ms, moved {:.1} GB/s)",
            c.what,
            c.median_ns as f64 / 1e6,
            c.copied(),
            c.moved(),
            ratio(peer.map(|p| c.copied() / p)),
            c.one_ns as f64 / 1e6,
            2.0 * c.bytes as f64 / c.one_ns as f64,
        );
    }
    let limit = copies
        .iter()
        .filter(|c| c.bytes + 16 > input_u64 && c.bytes <= input_u64)
        .map(CopyFigure::moved)
        .fold(0.0f64, f64::max);
    println!(
        "LIMIT {limit:.1} GB/s moved (read + written) by the faster copy of the input's size, \
         back to back"
    );
    if std::env::var_os("PF_KERNEL_DIAG").is_some() {
        diagnose(&backend, input_u64, runs);
    }
    let mut sane = true;
    match datasheet(&device.name) {
        Some((what, tb_s)) => {
            let share = limit / (tb_s * 1000.0);
            sane = share >= SANITY_SHARE;
            println!(
                "SANITY {}: the limit is {share:.2}× the datasheet's {tb_s} TB/s ({what}); \
                 below {SANITY_SHARE}× the baseline is broken",
                if sane { "ok" } else { "FAILED" }
            );
        }
        None => println!(
            "SANITY skipped: no datasheet figure for `{}` (the table knows H100 and H200)",
            device.name
        ),
    }

    let mut rows = Vec::new();
    let mut all_correct = true;
    for workload in kernels::builtin() {
        let shapes: &[InputShape] = match workload.name() {
            "histogram" => &[InputShape::Uniform, InputShape::Skewed],
            "scan" => &[InputShape::SparseMatches, InputShape::DenseMatches],
            _ => &[InputShape::Uniform],
        };
        for &shape in shapes {
            let input: Arc<[u8]> = workload.generate(shape, input_bytes, 7).into();
            let reference = workload.reference(&input);
            let peer = peer_name(workload.name(), shape)
                .and_then(|p| peers.get(&(p.to_owned(), input_u64)).copied());
            for (vi, variant) in workload.variants().iter().enumerate() {
                let id = format!("{}/{:?}/{}", workload.name(), shape, variant.name);
                let kernel = match backend.load_kernel(0, variant) {
                    Ok(k) => k,
                    Err(e) => {
                        eprintln!("{id}: cannot load: {e}");
                        continue;
                    }
                };
                let plan = match workload.plan_shared(vi, &input) {
                    Ok(p) => p,
                    Err(e) => {
                        eprintln!("{id}: cannot plan: {e}");
                        continue;
                    }
                };
                let planned = plan.workgroups[0];
                let job = plan.into_job(queue, kernel);
                // One checked run: a variant that is fast but wrong is no result.
                let correct = match backend.dispatch(std::slice::from_ref(&job)).remove(0) {
                    Ok(out) => workload
                        .answer(vi, &input, &out.outputs)
                        .is_ok_and(|a| a == reference),
                    Err(e) => {
                        eprintln!("{id}: dispatch failed: {e}");
                        continue;
                    }
                };
                all_correct &= correct;
                let timed = time_job(&backend, &job, runs)
                    .and_then(|one| Ok((time_busy(&backend, &job, one, runs)?, one)));
                let (ns, one) = match timed {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("{id}: {e}");
                        continue;
                    }
                };
                rows.push((id.clone(), planned, ns, Some(one), peer, correct));
                // The wide variants at other workgroup counts (correct for any).
                let sweep = matches!(
                    variant.name.as_str(),
                    "reduce/vec4-wide" | "histogram/lane-columns"
                );
                if sweep {
                    for groups in [264u32, 528, 1056, 2112, 4224, 8448, 16896] {
                        if groups == planned {
                            continue;
                        }
                        let mut j = job.clone();
                        j.workgroups[0] = groups;
                        let ok = backend
                            .dispatch(std::slice::from_ref(&j))
                            .remove(0)
                            .ok()
                            .and_then(|o| workload.answer(vi, &input, &o.outputs).ok())
                            .is_some_and(|a| a == reference);
                        all_correct &= ok;
                        let timed = time_job(&backend, &j, 3.min(runs))
                            .and_then(|one| time_busy(&backend, &j, one, runs));
                        if let Ok(ns) = timed {
                            rows.push((id.clone(), groups, ns, None, peer, ok));
                        }
                    }
                }
            }
        }
    }

    println!(
        "\n{:<55} {:>7} {:>11} {:>9} {:>8} {:>9} {:>8} {:>16}",
        "variant",
        "groups",
        "median GPU",
        "GB/s",
        "÷limit",
        "÷PyTorch",
        "correct",
        "one/submit GB/s"
    );
    for (id, groups, ns, one, peer, ok) in &rows {
        let gbps = input_bytes as f64 / *ns as f64;
        let of_limit = (limit > 0.0).then(|| gbps / limit);
        let one = one.map_or("-".into(), |o| {
            format!("{:.1}", input_bytes as f64 / o as f64)
        });
        println!(
            "{id:<55} {groups:>7} {:>8.3} ms {gbps:>9.1} {:>8} {:>9} {ok:>8} {one:>16}",
            *ns as f64 / 1e6,
            ratio(of_limit),
            ratio(peer.map(|p| gbps / p)),
        );
    }
    println!(
        "(planned caps: reduce/vec4-wide {WIDE_WORKGROUPS}, histogram/lane-columns \
         {LANES_WORKGROUPS} workgroups; GB/s = input bytes per ns, dispatched back to back; \
         ÷limit against the copy's bytes moved; one/submit: one dispatch per submit)"
    );
    if !sane {
        eprintln!("kernels bench: the copy baseline failed its sanity check (see SANITY)");
        std::process::exit(1);
    }
    if !all_correct {
        eprintln!("kernels bench: a variant answered wrongly (correct = false above)");
        std::process::exit(1);
    }
}
