//! Where `sum`'s winner flips: the median kernel time of its two variants
//! (`sum/wide-grid`, conservative, and `sum/one-workgroup`, speculative) at each batch
//! size, on the CPU backend and on Vulkan (lavapipe where there is no GPU), and their
//! ratio (wide ÷ one: above 1 the one-workgroup variant is the faster).
//!
//! Each figure is the median of `--runs` (default 21, at least 15) timed dispatches
//! (`DispatchOutput::kernel_ns`: the CPU code alone, or the GPU's timestamps around the
//! kernel), after three untimed ones; the two variants are dispatched in turn, so a
//! load that comes and goes on the machine falls on both. `--grid N` launches the wide
//! variant on N workgroups instead of the plan's `SUM_GRID_WORKGROUPS` (to choose that
//! constant).
//!
//! ```text
//! cargo run --profile test --example sum_flip -- [--runs 21] [--grid 1056]
//!     [--sizes 4KiB,64KiB,256KiB,1MiB,8MiB] [--backend cpu|vulkan|both]
//! ```

use std::error::Error;

use photofinish::backend::cpu::CpuBackend;
use photofinish::backend::{Backend, DispatchJob};
use photofinish::kernels::{InputShape, Sum, Workload, SUM_GRID_WORKGROUPS};

/// The options of a run.
struct Options {
    runs: usize,
    grid: u32,
    sizes: Vec<usize>,
    backends: Vec<String>,
}

/// `4KiB`, `1MiB`, `4096` as bytes.
fn parse_size(s: &str) -> Result<usize, String> {
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => s.split_at(at),
        None => (s, ""),
    };
    let n: usize = digits.parse().map_err(|_| format!("bad size `{s}`"))?;
    let shift = match unit {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        _ => return Err(format!("bad unit in `{s}` (B, KiB, MiB)")),
    };
    Ok(n << shift)
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        runs: 21,
        grid: SUM_GRID_WORKGROUPS,
        sizes: ["4KiB", "64KiB", "256KiB", "1MiB", "8MiB"]
            .iter()
            .map(|s| parse_size(s))
            .collect::<Result<_, _>>()?,
        backends: vec!["cpu".into(), "vulkan".into()],
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--runs" => o.runs = value.parse().map_err(|_| "bad --runs")?,
            "--grid" => o.grid = value.parse().map_err(|_| "bad --grid")?,
            "--sizes" => o.sizes = value.split(',').map(parse_size).collect::<Result<_, _>>()?,
            "--backend" => {
                o.backends = match value.as_str() {
                    "both" => vec!["cpu".into(), "vulkan".into()],
                    one => vec![one.into()],
                }
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    o.runs = o.runs.max(15);
    Ok(o)
}

/// Median of `v` (sorted in place).
fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// The median kernel times (ns) of the wide-grid and one-workgroup variants on
/// `input`, dispatched in turn, after checking both answer like the reference.
fn time_pair(
    backend: &dyn Backend,
    input: &[u8],
    runs: usize,
    grid: u32,
) -> Result<(u64, u64), Box<dyn Error>> {
    let sum = Sum;
    let queue = backend.queues()[0];
    let jobs: Vec<DispatchJob> = sum
        .variants()
        .iter()
        .enumerate()
        .map(|(v, variant)| -> Result<DispatchJob, Box<dyn Error>> {
            let kernel = backend.load_kernel(0, variant)?;
            let mut plan = sum.plan(v, input)?;
            if v == 0 {
                plan.workgroups[0] = grid;
            }
            Ok(plan.into_job(queue, kernel))
        })
        .collect::<Result<_, _>>()?;
    let want = sum.reference(input);
    let mut times = [Vec::new(), Vec::new()];
    for round in 0..runs + 3 {
        for (v, job) in jobs.iter().enumerate() {
            let out = backend.dispatch(std::slice::from_ref(job)).remove(0)?;
            if round == 0 && sum.answer(v, input, &out.outputs)? != want {
                return Err(format!("variant {v} gave a wrong answer").into());
            }
            if round >= 3 {
                times[v].push(out.kernel_ns.ok_or("no kernel time")?);
            }
        }
    }
    Ok((median(&mut times[0]), median(&mut times[1])))
}

fn open(name: &str) -> Result<Box<dyn Backend>, Box<dyn Error>> {
    match name {
        "cpu" => Ok(Box::new(CpuBackend::new()?)),
        #[cfg(feature = "vulkan")]
        "vulkan" => Ok(Box::new(photofinish::backend::vulkan::VulkanBackend::new()?)),
        other => Err(format!("no backend `{other}` in this build").into()),
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let o = options()?;
    for name in &o.backends {
        let backend = match open(name) {
            Ok(b) => b,
            Err(e) => {
                println!("{name}: not measured: {e}");
                continue;
            }
        };
        println!(
            "{name} ({}), grid {} workgroups, median of {} runs",
            backend.devices()[0].name,
            o.grid,
            o.runs
        );
        println!(
            "{:>10} {:>14} {:>14} {:>12}",
            "bytes", "wide-grid µs", "one-wg µs", "wide ÷ one"
        );
        for &len in &o.sizes {
            let input = Sum.generate(InputShape::Uniform, len, len as u64);
            let (wide, one) = time_pair(backend.as_ref(), &input, o.runs, o.grid)?;
            println!(
                "{len:>10} {:>14.1} {:>14.1} {:>12.2}",
                wide as f64 / 1e3,
                one as f64 / 1e3,
                wide as f64 / one.max(1) as f64
            );
        }
    }
    Ok(())
}
