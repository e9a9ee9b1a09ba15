//! Helpers shared by the benches (issue #6): a small criterion configuration sized for a
//! 2-core machine, knobs read from the environment, the backend to run on, and a
//! recorder of mean times so each bench can print its ratio against the baseline it ran
//! in the same process.
//!
//! Each bench includes this module with `mod common;` and uses a different part of it,
//! hence the `dead_code` allowance below. It measures nothing by itself and never
//! decides a result: the ratios it prints come from the timings the benches record.
#![allow(dead_code)]

pub mod empty;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use criterion::{BenchmarkGroup, Criterion};
use photofinish::backend::cpu::CpuBackend;
use photofinish::backend::Backend;

/// A criterion configuration small enough that a bench finishes in a minute or two on a
/// 2-core machine: 10 samples, short warm-up and measurement (overridable with
/// `PF_BENCH_SECS`, seconds of measurement per benchmark).
pub fn quick() -> Criterion {
    let secs = env_f64("PF_BENCH_SECS", 1.0).max(0.1);
    Criterion::default()
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs_f64(secs))
        .without_plots()
}

/// `name` from the environment as a number, `default` when unset or unparsable.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// `name` from the environment as a float, `default` when unset or unparsable.
pub fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// The backend a bench runs on: `PF_BENCH_BACKEND=cpu` (the default) or `vulkan`.
/// Exits the process with a message when the Vulkan backend cannot open a device, so a
/// GPU run never silently measures the CPU.
pub fn backend_from_env() -> Arc<dyn Backend> {
    let choice = std::env::var("PF_BENCH_BACKEND").unwrap_or_else(|_| "cpu".to_owned());
    let opened: Result<Arc<dyn Backend>, String> = match choice.as_str() {
        "cpu" => CpuBackend::new()
            .map(|b| Arc::new(b) as Arc<dyn Backend>)
            .map_err(|e| e.to_string()),
        "vulkan" => open_vulkan(),
        other => Err(format!(
            "PF_BENCH_BACKEND={other}: expected `cpu` or `vulkan`"
        )),
    };
    match opened {
        Ok(backend) => backend,
        Err(e) => fail(&format!("cannot open the {choice} backend: {e}")),
    }
}

#[cfg(feature = "vulkan")]
fn open_vulkan() -> Result<Arc<dyn Backend>, String> {
    photofinish::backend::vulkan::VulkanBackend::new()
        .map(|b| Arc::new(b) as Arc<dyn Backend>)
        .map_err(|e| e.to_string())
}

#[cfg(not(feature = "vulkan"))]
fn open_vulkan() -> Result<Arc<dyn Backend>, String> {
    Err("this bench was built without the `vulkan` feature".to_owned())
}

/// Prints `message` and ends the bench with a failure status.
pub fn fail(message: &str) -> ! {
    eprintln!("bench error: {message}");
    std::process::exit(2)
}

/// The samples criterion takes per benchmark (see [`quick`]).
pub const SAMPLES: usize = 10;

/// Every call of every benchmark so far, by id: (nanoseconds, iterations).
type Calls = Mutex<BTreeMap<String, Vec<(f64, u64)>>>;

fn calls() -> &'static Calls {
    static CALLS: OnceLock<Calls> = OnceLock::new();
    CALLS.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// Notes that one call of `id` ran `iters` iterations in `elapsed`.
pub fn record(id: &str, iters: u64, elapsed: Duration) {
    let mut calls = calls().lock().unwrap_or_else(|p| p.into_inner());
    calls
        .entry(id.to_owned())
        .or_default()
        .push((elapsed.as_secs_f64() * 1e9, iters));
}

/// The mean nanoseconds per iteration of `id` over its measurement samples only: the
/// last [`SAMPLES`] calls. criterion's warm-up calls come first and are left out — on a
/// GPU they include the driver's first pipeline compiles, which would otherwise inflate
/// whichever side ran them.
pub fn mean_ns(id: &str) -> Option<f64> {
    let calls = calls().lock().unwrap_or_else(|p| p.into_inner());
    let all = calls.get(id)?;
    let measured = &all[all.len().saturating_sub(SAMPLES)..];
    let (total, n) = measured
        .iter()
        .fold((0.0, 0u64), |(t, n), (ns, i)| (t + ns, n + i));
    (n > 0).then(|| total / n as f64)
}

/// Runs benchmark `name` in `group` with criterion's `iter_custom` (the closure gets an
/// iteration count and returns how long they took) and records its mean under
/// `"{group_name}/{name}"`.
pub fn timed<M, F>(group: &mut BenchmarkGroup<'_, M>, group_name: &str, name: &str, mut run: F)
where
    M: criterion::measurement::Measurement<Value = Duration>,
    F: FnMut(u64) -> Duration,
{
    let id = format!("{group_name}/{name}");
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let elapsed = run(iters);
            record(&id, iters, elapsed);
            elapsed
        })
    });
}

/// Prints one comparison line: `ours` against `baseline` as `speed(ours)/speed(base)`
/// (so > 1 means ours is faster), with the target it is held to.
pub fn print_speedup(label: &str, ours: &str, baseline: &str, target: &str) {
    match (mean_ns(ours), mean_ns(baseline)) {
        (Some(o), Some(b)) if o > 0.0 => println!(
            "RATIO {label}: {ours} {o:.0} ns vs {baseline} {b:.0} ns per iteration = {:.2}x the baseline's throughput (target {target})",
            b / o
        ),
        _ => println!("RATIO {label}: missing measurement ({ours} or {baseline})"),
    }
}

/// Prints one comparison line of times: `ours / baseline` (so < 1 means ours takes less).
pub fn print_time_ratio(label: &str, ours: &str, baseline: &str, target: &str) {
    match (mean_ns(ours), mean_ns(baseline)) {
        (Some(o), Some(b)) if b > 0.0 => println!(
            "RATIO {label}: {ours} {o:.0} ns vs {baseline} {b:.0} ns per iteration = {:.3}x the baseline's time (target {target})",
            o / b
        ),
        _ => println!("RATIO {label}: missing measurement ({ours} or {baseline})"),
    }
}

/// WGSL → SPIR-V words through naga (as `build.rs` does for the built-in shaders), for
/// the kernels a bench defines itself. Exits with naga's message on a bad shader.
pub fn spirv(name: &str, wgsl: &str) -> Arc<[u32]> {
    let module = naga::front::wgsl::parse_str(wgsl)
        .unwrap_or_else(|e| fail(&format!("bench shader {name} does not parse: {e}")));
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::IMMEDIATES,
    )
    .validate(&module)
    .unwrap_or_else(|e| fail(&format!("bench shader {name} is invalid: {e}")));
    let options = naga::back::spv::Options {
        lang_version: (1, 3),
        flags: naga::back::spv::WriterFlags::empty(),
        ..Default::default()
    };
    naga::back::spv::write_vec(&module, &info, &options, None)
        .unwrap_or_else(|e| fail(&format!("bench shader {name}: SPIR-V output failed: {e}")))
        .into()
}

/// The `peer <name> bytes=<n> median_ns=<ns> gbps=<x> note=<t>` lines of
/// scripts/peers.py in the file `PF_PEERS` names: (name, bytes) → the value of `field`
/// (`gbps`: GB/s of input; `median_ns`). Empty, with a line saying why, when the
/// variable is unset or the file unreadable.
pub fn read_peers(field: &str) -> HashMap<(String, u64), f64> {
    let mut peers = HashMap::new();
    let Ok(path) = std::env::var("PF_PEERS") else {
        println!("peers: PF_PEERS is not set; no PyTorch figures (scripts/peers.py)");
        return peers;
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            println!("peers: cannot read {path}: {e}; no PyTorch figures");
            return peers;
        }
    };
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("peer") {
            continue;
        }
        let Some(name) = words.next() else { continue };
        let fields: HashMap<&str, &str> = words.filter_map(|w| w.split_once('=')).collect();
        let bytes = fields.get("bytes").and_then(|b| b.parse().ok());
        let value = fields.get(field).and_then(|v| v.parse().ok());
        if let (Some(bytes), Some(value)) = (bytes, value) {
            peers.insert((name.to_owned(), bytes), value);
        }
    }
    println!("peers: {} figures from {path}", peers.len());
    peers
}
