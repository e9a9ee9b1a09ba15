//! How the engine spreads batches over every queue of every device.
//!
//! Several producer threads submit batches of a built-in workload; every answer is
//! checked against the CPU reference and counted by the device and queue that ran it.
//! On a machine with two GPUs this shows workers on both sharing the load.
//!
//! ```sh
//! cargo run --release --example load_share -- [--backend auto|vulkan|cpu] \
//!     [--workload histogram] [--batches 2000] [--producers 4] [--size 1048576]
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use photofinish::kernels::{self, InputShape};
use photofinish::{BackendChoice, Engine, Output};

/// An input and its reference answer.
type Case = (Arc<[u8]>, Vec<u8>);

struct Args {
    backend: BackendChoice,
    workload: String,
    batches: usize,
    producers: usize,
    size: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        backend: BackendChoice::Auto,
        workload: "histogram".into(),
        batches: 2000,
        producers: 4,
        size: 1 << 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{flag}: expected a positive number, got `{value}`"))
        };
        match flag.as_str() {
            "--backend" => {
                args.backend = match value.as_str() {
                    "auto" => BackendChoice::Auto,
                    "vulkan" => BackendChoice::Vulkan,
                    "cpu" => BackendChoice::Cpu,
                    _ => {
                        return Err(format!(
                            "--backend: expected auto|vulkan|cpu, got `{value}`"
                        ))
                    }
                }
            }
            "--workload" => args.workload = value.clone(),
            "--batches" => args.batches = number()?,
            "--producers" => args.producers = number()?,
            "--size" => args.size = number()?,
            _ => return Err(format!("unknown option `{flag}`")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("load_share: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(workload) = kernels::by_name(&args.workload) else {
        eprintln!("load_share: no built-in workload `{}`", args.workload);
        return ExitCode::from(2);
    };
    let engine = match Engine::builder()
        .backend(args.backend)
        .without_autotune_file()
        .build()
    {
        Ok(e) => Arc::new(e),
        Err(e) => {
            eprintln!("load_share: {e}");
            return ExitCode::FAILURE;
        }
    };
    for d in engine.devices() {
        println!("device {}: {} ({})", d.index, d.name, d.driver_version);
    }
    println!("{} workers", engine.worker_count());
    let kernel = match engine.register(workload.clone()) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("load_share: {e}");
            return ExitCode::FAILURE;
        }
    };

    // A few distinct inputs, each with its reference, shared by all producers.
    let inputs: Arc<Vec<Case>> = Arc::new(
        (0..4u64)
            .map(|seed| {
                let shapes = workload.shapes();
                let shape = shapes
                    .get(seed as usize % shapes.len().max(1))
                    .copied()
                    .unwrap_or(InputShape::Uniform);
                let input: Arc<[u8]> = workload.generate(shape, args.size, seed).into();
                let reference = workload.reference(&input);
                (input, reference)
            })
            .collect(),
    );

    let start = Instant::now();
    let per_producer = args.batches.div_ceil(args.producers);
    let handles: Vec<_> = (0..args.producers)
        .map(|p| {
            let engine = engine.clone();
            let inputs = inputs.clone();
            std::thread::spawn(move || {
                let mut tickets = Vec::with_capacity(per_producer);
                for i in 0..per_producer {
                    let which = (p + i) % inputs.len();
                    let batch = photofinish::Batch::new(kernel, inputs[which].0.clone());
                    match engine.submit(batch) {
                        Ok(t) => tickets.push((which, t)),
                        Err(e) => return Err(e.to_string()),
                    }
                }
                let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
                for (which, t) in tickets {
                    let answer = t.wait().map_err(|e| e.to_string())?;
                    let ok = matches!(&answer.output, Output::Answer(a) if *a == inputs[which].1);
                    if !ok {
                        return Err(format!("wrong answer from {}", answer.queue));
                    }
                    let entry = counts.entry(answer.queue.to_string()).or_default();
                    entry.0 += 1;
                    entry.1 += usize::from(answer.raced);
                }
                Ok(counts)
            })
        })
        .collect();

    let mut per_queue: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for h in handles {
        match h.join() {
            Ok(Ok(counts)) => {
                for (q, (n, raced)) in counts {
                    let e = per_queue.entry(q).or_default();
                    e.0 += n;
                    e.1 += raced;
                }
            }
            Ok(Err(e)) => {
                eprintln!("load_share: {e}");
                return ExitCode::FAILURE;
            }
            Err(_) => {
                eprintln!("load_share: a producer panicked");
                return ExitCode::FAILURE;
            }
        }
    }
    let wall = start.elapsed();
    let total: usize = per_queue.values().map(|v| v.0).sum();
    let mut per_device: BTreeMap<String, usize> = BTreeMap::new();
    for (q, (n, _)) in &per_queue {
        let device = q.split('/').next().unwrap_or("?").to_string();
        *per_device.entry(device).or_default() += n;
    }
    println!(
        "{total} batches of {} bytes, all verified, in {:.3} s ({:.0} batches/s)",
        args.size,
        wall.as_secs_f64(),
        total as f64 / wall.as_secs_f64()
    );
    for (d, n) in &per_device {
        println!(
            "  {d}: {n} batches ({:.1} %)",
            100.0 * *n as f64 / total as f64
        );
    }
    for (q, (n, raced)) in &per_queue {
        println!("    {q}: {n} answers, {raced} raced");
    }
    if let Some(v) = engine.verdict(kernel) {
        println!("verdict: {v:?}");
    }
    engine.shutdown();
    ExitCode::SUCCESS
}
