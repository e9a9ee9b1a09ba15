//! A small signal pipeline the way a GPU programmer writes it: two float kernels in
//! WGSL — a 3-tap smoothing filter, then a gain and offset — each with a speculative
//! variant that fuses multiply-adds (`fma`), so its answers differ from the plain
//! variant's in the last bits. Each kernel declares its output as `f32` within a few
//! ulps (or a tiny absolute difference near zero), so the fused variants are judged on speed, not rejected as mismatches. Every
//! variant also carries CPU code, so the same registration runs on the CPU backend
//! where there is no GPU. The gain kernel's fused variant also covers four samples per
//! invocation: batches say how many samples they cover (`Batch::for_items`) and each
//! variant dispatches the workgroups it needs. The batches are submitted and awaited
//! from an async task.
//!
//! Run: `cargo run --release --example signal_pipeline [-- --backend cpu|vulkan]
//! [--frames 48] [--samples 65536]`. It prints each kernel's verdict and its variants'
//! median kernel times over the races, the wall time per frame, and the worst
//! difference from a plain CPU pipeline.

use std::sync::Arc;

use photofinish::{
    bytemuck, Agreement, BackendChoice, Batch, BufferArg, DispatchPlan, Engine, Event, FloatElem,
    KernelId, KernelVariant, Output, TrySubmitError,
};

const SMOOTH_PLAIN: &str = "
struct Params { n: u32 }
var<immediate> params: Params;
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if i >= params.n { return; }
    let a = x[max(i, 1u) - 1u];
    let c = x[min(i + 1u, params.n - 1u)];
    y[i] = (0.25 * a + 0.5 * x[i]) + 0.25 * c;
}
";

const SMOOTH_FMA: &str = "
struct Params { n: u32 }
var<immediate> params: Params;
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if i >= params.n { return; }
    let a = x[max(i, 1u) - 1u];
    let c = x[min(i + 1u, params.n - 1u)];
    y[i] = fma(0.25, c, fma(0.5, x[i], 0.25 * a));
}
";

const GAIN_PLAIN: &str = "
struct Params { n: u32, gain: f32, offset: f32 }
var<immediate> params: Params;
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if id.x < params.n { y[id.x] = x[id.x] * params.gain + params.offset; }
}
";

const GAIN_FMA: &str = "
struct Params { n: u32, gain: f32, offset: f32 }
var<immediate> params: Params;
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    for (var k = 0u; k < 4u; k++) {
        let i = id.x * 4u + k;
        if i < params.n { y[i] = fma(x[i], params.gain, params.offset); }
    }
}
";

/// The gain kernel's `var<immediate>` block.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Gain {
    n: u32,
    gain: f32,
    offset: f32,
}

/// A variant's CPU code, as `KernelVariant::with_cpu` takes it.
trait CpuCode:
    Fn(&mut [Vec<u8>], &[u8], [u32; 3]) -> Result<(), String> + Send + Sync + 'static
{
}

impl<F> CpuCode for F where
    F: Fn(&mut [Vec<u8>], &[u8], [u32; 3]) -> Result<(), String> + Send + Sync + 'static
{
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytemuck::pod_collect_to_vec(bytes)
}

fn smooth_cpu(fused: bool) -> impl CpuCode {
    move |buffers, push, _| {
        let n = u32::from_le_bytes(push[..4].try_into().map_err(|_| "push")?) as usize;
        let x = floats(&buffers[0]);
        let y: Vec<f32> = (0..n)
            .map(|i| {
                let (a, b, c) = (x[i.max(1) - 1], x[i], x[(i + 1).min(n - 1)]);
                if fused {
                    0.25f32.mul_add(c, 0.5f32.mul_add(b, 0.25 * a))
                } else {
                    (0.25 * a + 0.5 * b) + 0.25 * c
                }
            })
            .collect();
        buffers[1][..4 * n].copy_from_slice(bytemuck::cast_slice(&y));
        Ok(())
    }
}

fn gain_cpu(fused: bool) -> impl CpuCode {
    move |buffers, push, _| {
        let p: Gain = bytemuck::pod_read_unaligned(push.get(..12).ok_or("push")?);
        let x = floats(&buffers[0]);
        let y: Vec<f32> = x[..p.n as usize]
            .iter()
            .map(|&v| {
                if fused {
                    v.mul_add(p.gain, p.offset)
                } else {
                    v * p.gain + p.offset
                }
            })
            .collect();
        buffers[1][..4 * y.len()].copy_from_slice(bytemuck::cast_slice(&y));
        Ok(())
    }
}

/// Registers a kernel from a plain and a fused WGSL variant, each with its CPU code,
/// its output compared as f32 within 4 ulps or 1e-6; the fused variant covers
/// `fused_items` samples per invocation.
fn register(
    engine: &Engine,
    name: &str,
    (plain, plain_cpu): (&str, impl CpuCode),
    (fused, fused_cpu, fused_items): (&str, impl CpuCode, u32),
) -> Result<KernelId, Box<dyn std::error::Error>> {
    // 4 ulps, or 1e-6 absolute near zero, where a fused multiply-add that cancels
    // differs from the plain one by many ulps of a tiny result.
    let within = Agreement::Float {
        elem: FloatElem::F32,
        max_ulps: 4,
        rel: 0.0,
        abs: 1e-6,
    };
    let plain = KernelVariant::wgsl(format!("{name}/plain"), plain, "main")?.with_cpu(plain_cpu);
    let fused = KernelVariant::wgsl(format!("{name}/fma"), fused, "main")?
        .with_cpu(fused_cpu)
        .with_items_per_invocation(fused_items);
    Ok(engine.register_variants_agreeing(name, plain, vec![fused], &[(1, within)])?)
}

/// Submits without blocking the async task's thread: on `Full`, yields and retries.
async fn submit(engine: &Engine, mut batch: Batch) -> Result<Output, Box<dyn std::error::Error>> {
    let ticket = loop {
        match engine.try_submit(batch) {
            Ok(ticket) => break ticket,
            Err(TrySubmitError::Full(back)) => {
                batch = back;
                tokio::task::yield_now().await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    Ok(ticket.await?.output)
}

fn first(output: Output) -> Vec<f32> {
    match output {
        Output::Buffers(buffers) => buffers
            .view::<f32>(0)
            .map(|v| v.into_owned())
            .unwrap_or_default(),
        Output::Answer(bytes) => floats(&bytes),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arg = |name: &str| std::env::args().skip_while(|a| a != name).nth(1);
    let number = |name: &str, default: usize| -> Result<usize, Box<dyn std::error::Error>> {
        arg(name).map_or(Ok(default), |v| {
            v.parse().map_err(|e| format!("{name} {v}: {e}").into())
        })
    };
    let backend = match arg("--backend").as_deref() {
        Some("cpu") => BackendChoice::Cpu,
        Some("vulkan") => BackendChoice::Vulkan,
        _ => BackendChoice::Auto,
    };
    let engine = Arc::new(
        Engine::builder()
            .backend(backend)
            .without_autotune_file()
            .build()?,
    );
    let events = engine.subscribe();
    let smooth = register(
        &engine,
        "smooth",
        (SMOOTH_PLAIN, smooth_cpu(false)),
        (SMOOTH_FMA, smooth_cpu(true), 1),
    )?;
    let gain = register(
        &engine,
        "gain",
        (GAIN_PLAIN, gain_cpu(false)),
        (GAIN_FMA, gain_cpu(true), 4),
    )?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()?;
    let frames = number("--frames", 48)?;
    let n = number("--samples", 64 * 1024)?.max(2);
    let started = std::time::Instant::now();
    let worst = runtime.block_on({
        let engine = Arc::clone(&engine);
        async move {
            let mut worst_ulps = 0u32;
            for frame in 0..frames {
                let signal: Vec<f32> = (0..n)
                    .map(|i| ((i * 7 + frame * 13) % 1000) as f32 / 997.0 - 0.5)
                    .collect();
                let smoothed = first(
                    submit(
                        &engine,
                        Batch::for_items(
                            smooth,
                            DispatchPlan::from_buffers(vec![
                                BufferArg::from_slice(&signal),
                                BufferArg::zeroed::<f32>(n),
                            ])
                            .with_push_constants(&(n as u32)),
                            n as u64,
                        ),
                    )
                    .await?,
                );
                let params = Gain {
                    n: n as u32,
                    gain: 1.5,
                    offset: 0.25,
                };
                let out = first(
                    submit(
                        &engine,
                        Batch::for_items(
                            gain,
                            DispatchPlan::from_buffers(vec![
                                BufferArg::from_slice(&smoothed),
                                BufferArg::zeroed::<f32>(n),
                            ])
                            .with_push_constants(&params),
                            n as u64,
                        ),
                    )
                    .await?,
                );
                // Check the last sample against a plain CPU pipeline.
                let i = n - 1;
                let (a, b) = (signal[i - 1], signal[i]);
                let expected = ((0.25 * a + 0.5 * b) + 0.25 * b) * 1.5 + 0.25;
                let ulps =
                    (out[i].to_bits() as i64 - expected.to_bits() as i64).unsigned_abs() as u32;
                worst_ulps = worst_ulps.max(ulps);
            }
            Ok::<u32, Box<dyn std::error::Error>>(worst_ulps)
        }
    })?;
    let elapsed = started.elapsed();

    println!(
        "backend: {} — {frames} frames of {n} samples through smooth → gain: {:.3} ms per frame",
        engine.backend_kind(),
        elapsed.as_secs_f64() * 1e3 / frames.max(1) as f64
    );
    let median = |mut v: Vec<u64>| -> f64 {
        v.sort_unstable();
        v.get(v.len() / 2).map_or(f64::NAN, |&ns| ns as f64 / 1e3)
    };
    for (name, kernel) in [("smooth", smooth), ("gain", gain)] {
        let stats = engine.kernel_stats(kernel).expect("registered");
        let plain = median(stats.samples.iter().map(|s| s.conservative_ns).collect());
        let fused = median(stats.samples.iter().map(|s| s.speculative_ns).collect());
        println!(
            "{name:>6}: {} (variant {}), {} races; median kernel time plain {plain:.1} µs, fma {fused:.1} µs",
            stats.verdict,
            stats.variant,
            stats.samples.len()
        );
    }
    println!("worst difference from a plain CPU pipeline: {worst} ulps");
    let mismatches = events
        .try_iter()
        .filter(|e| matches!(e, Event::MismatchCaught { .. }))
        .count();
    println!("mismatches caught: {mismatches}");
    engine.shutdown();
    Ok(())
}
