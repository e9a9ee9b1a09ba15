//! GB/s of every built-in variant against the device's copy bandwidth, measured in the
//! same run (issue #3, #6.5).
//!
//! Times are GPU timestamps (`DispatchOutput::kernel_ns`), fed to criterion through
//! `iter_custom`, so host submit overhead is not counted. The baseline is a
//! vkCmdCopyBuffer of `PHOTOFINISH_COPY_BYTES` (default 1 GiB on a discrete GPU, 64 MiB
//! otherwise) between two device-local buffers on the same queue.
//!
//! ```sh
//! PHOTOFINISH_BENCH_BYTES=268435456 cargo bench --bench kernels
//! ```
//! Input size defaults to 256 MiB on a discrete GPU and 8 MiB on a software device.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use photofinish::backend::vulkan::VulkanBackend;
use photofinish::backend::Backend;
use photofinish::kernels::{self, InputShape};

fn env_bytes(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bench_kernels(c: &mut Criterion) {
    let backend = match VulkanBackend::new() {
        Ok(b) => Arc::new(b),
        Err(e) => {
            eprintln!("kernels bench: no Vulkan device ({e}); nothing to measure");
            return;
        }
    };
    let device = &backend.devices()[0];
    let discrete = device.device_type == "discrete";
    let input_bytes = env_bytes(
        "PHOTOFINISH_BENCH_BYTES",
        if discrete { 256 << 20 } else { 8 << 20 },
    ) as usize;
    let copy_bytes = env_bytes(
        "PHOTOFINISH_COPY_BYTES",
        if discrete { 1 << 30 } else { 64 << 20 },
    );
    let queue = backend.queues()[0];

    let copy = match backend.measure_copy_bandwidth(queue, copy_bytes) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kernels bench: copy bandwidth failed: {e}");
            return;
        }
    };
    println!(
        "device: {} ({}), copy bandwidth: {:.1} GB/s ({} MiB copy, {:.3} ms)",
        device.name,
        device.driver_version,
        copy.gb_per_s,
        copy.bytes >> 20,
        copy.gpu_ns as f64 / 1e6
    );

    let mut summary = Vec::new();
    let mut group = c.benchmark_group("kernels");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(input_bytes as u64));
    for workload in kernels::builtin() {
        let shapes: &[InputShape] = match workload.name() {
            "histogram" => &[InputShape::Uniform, InputShape::Skewed],
            "scan" => &[InputShape::SparseMatches, InputShape::DenseMatches],
            _ => &[InputShape::Uniform],
        };
        for &shape in shapes {
            let input = workload.generate(shape, input_bytes, 7);
            let reference = workload.reference(&input);
            for (vi, variant) in workload.variants().iter().enumerate() {
                let id = format!("{}/{:?}/{}", workload.name(), shape, variant.name);
                let kernel = match backend.load_kernel(0, variant) {
                    Ok(k) => k,
                    Err(e) => {
                        eprintln!("{id}: cannot load: {e}");
                        continue;
                    }
                };
                let plan = match workload.plan(vi, &input) {
                    Ok(p) => p,
                    Err(e) => {
                        eprintln!("{id}: cannot plan: {e}");
                        continue;
                    }
                };
                let job = plan.into_job(queue, kernel);
                // One checked run: a variant that is fast but wrong is no result.
                let verified = match backend.dispatch(std::slice::from_ref(&job)).remove(0) {
                    Ok(out) => workload
                        .answer(vi, &input, &out.outputs)
                        .map(|a| a == reference)
                        .unwrap_or(false),
                    Err(e) => {
                        eprintln!("{id}: dispatch failed: {e}");
                        continue;
                    }
                };
                let mut gpu_ns = Vec::new();
                group.bench_function(&id, |b| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let out = backend.dispatch(std::slice::from_ref(&job)).remove(0);
                            let ns = out.ok().and_then(|o| o.kernel_ns).unwrap_or(0);
                            gpu_ns.push(ns);
                            total += Duration::from_nanos(ns);
                        }
                        total
                    })
                });
                gpu_ns.sort_unstable();
                let median = gpu_ns.get(gpu_ns.len() / 2).copied().unwrap_or(0).max(1);
                let gbps = input.len() as f64 / median as f64;
                summary.push((id, median, gbps, gbps / copy.gb_per_s, verified));
            }
        }
    }
    group.finish();

    println!(
        "\n{:<55} {:>12} {:>9} {:>8} {:>8}",
        "variant", "median GPU", "GB/s", "÷copy", "correct"
    );
    for (id, ns, gbps, ratio, ok) in summary {
        println!(
            "{id:<55} {:>9.3} ms {gbps:>9.1} {ratio:>7.2}× {ok:>8}",
            ns as f64 / 1e6
        );
    }
}

criterion_group!(benches, bench_kernels);
criterion_main!(benches);
