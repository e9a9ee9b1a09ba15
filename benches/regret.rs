//! regret (issue #6, bench 4; issue #27): the total time of a trace whose best variant
//! changes, through photofinish's engine against three ways of choosing variants in
//! advance.
//!
//! Two traces, each its own group:
//! - `regret-keys` (tuning keys): `PF_REGRET_KEY_BATCHES` batches (default 1 500) whose
//!   sizes interleave `PF_REGRET_SIZES` (default `4096,262144,2097152`), round robin
//!   over the kernels `histogram`, `scan` and `sum` (whose winner flips with the size)
//!   and, per kernel, over the sizes. The best variant depends on the size and the
//!   phase: the engine has one tuning key per (kernel, size).
//! - `regret` (one size, the trace before tuning keys): `PF_REGRET_BATCHES` batches
//!   (default 10 000) of `PF_REGRET_BYTES` bytes each (default 16 KiB), alternating
//!   `histogram` and `scan`.
//!
//! Histogram batches run on uniform, then skewed, then uniform data (thirds of the
//! trace); scan batches on sparse, then dense matches (halves); sum on uniform data.
//! Policies, all on the same backend (`PF_BENCH_BACKEND`, CPU by default) with one
//! thread per queue pulling batches from the trace:
//! - `photofinish`: a fresh engine (nothing learnt) per run; the trace is submitted
//!   through it and it races, learns and audits as it does in production.
//! - `oracle`: the best variant of each batch's (phase, size), known in advance
//!   (measured before the run by running those batches of the trace with each variant,
//!   one thread per queue as in the trace, best of 3; not counted).
//! - `conservative`: always variant 0.
//!
//! The fixed policies plan each batch as the engine does (`Workload::plan_shared`: the
//! input's `Arc` bound without a copy where no padding is needed), so they differ from
//! the engine in the choice of variants and in the engine's own machinery only.
//! - `exhaustive`: before the trace, every variant of each kernel runs
//!   `PF_REGRET_TUNE_RUNS` times (default 10) on the kernel's first input of each size
//!   and the fastest is fixed for that size for the whole trace (what Triton's
//!   autotuner does with its `key=` arguments, and Kernel Tuner per problem size); the
//!   tuning time is counted.
//!
//! Targets: photofinish ≤ 1.05× the oracle's time and below exhaustive-upfront's. The
//! report also gives the races the engine ran per tuning key in its last run, with key
//! transfer (the default) and without (`EngineBuilder::key_transfer(false)`, one more
//! run, not timed).
//!
//! With `PF_REGRET_EVENTS` set, the report ends with the engine's events of its last
//! run (verdict changes, race samples, speculator switches), each with the time since
//! the trace started: where its time went.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use photofinish::backend::Backend;
use photofinish::kernels::{Histogram, InputShape, Scan, Workload};
use photofinish::{Batch, Engine};

/// Distinct inputs generated per (kernel, shape); batches cycle through them.
const POOL: usize = 8;
/// Batches the engine's producer keeps in flight.
const ENGINE_WINDOW: usize = 256;

/// One kernel of the trace with its inputs by phase.
struct TraceKernel {
    workload: Arc<dyn Workload>,
    /// The shape of each phase, in trace order.
    phases: Vec<InputShape>,
    /// `inputs[phase][size][k]`.
    inputs: Vec<Vec<Vec<Arc<[u8]>>>>,
    /// The backend's handle of each variant on device 0.
    handles: Vec<photofinish::backend::KernelHandle>,
}

/// One batch of the trace.
#[derive(Clone, Copy)]
struct Step {
    kernel: usize,
    phase: usize,
    /// Index into `Trace::sizes`.
    size: usize,
    input: usize,
}

struct Trace {
    backend: Arc<dyn Backend>,
    /// Input bytes of the trace's batches, interleaved.
    sizes: Vec<usize>,
    kernels: Vec<TraceKernel>,
    steps: Vec<Step>,
    /// The engine's verdicts at the end of its last run, for the report.
    last_verdicts: std::sync::Mutex<String>,
    /// Whether the engine's new keys start from a decided neighbour.
    transfer: std::sync::atomic::AtomicBool,
    /// With `PF_REGRET_EVENTS` set: the events of the engine's last run, each with the
    /// milliseconds since the trace started, for the report.
    last_events: Option<std::sync::Mutex<Vec<String>>>,
}

impl Trace {
    fn new(backend: Arc<dyn Backend>, batches: usize, sizes: Vec<usize>, keyed: bool) -> Self {
        let mut workloads: Vec<(Arc<dyn Workload>, Vec<InputShape>)> = vec![
            (
                Arc::new(Histogram),
                vec![InputShape::Uniform, InputShape::Skewed, InputShape::Uniform],
            ),
            (
                Arc::new(Scan::default()),
                vec![InputShape::SparseMatches, InputShape::DenseMatches],
            ),
        ];
        if keyed {
            if let Some(sum) = photofinish::kernels::by_name("sum") {
                workloads.push((sum, vec![InputShape::Uniform]));
            }
        }
        let kernels: Vec<TraceKernel> = workloads
            .into_iter()
            .enumerate()
            .map(|(k, (workload, phases))| {
                let inputs = phases
                    .iter()
                    .enumerate()
                    .map(|(p, &shape)| {
                        sizes
                            .iter()
                            .enumerate()
                            .map(|(z, &bytes)| {
                                (0..POOL)
                                    .map(|i| {
                                        let seed = (k * 10_000 + z * 1000 + p * 100 + i) as u64;
                                        Arc::from(workload.generate(shape, bytes, seed))
                                    })
                                    .collect()
                            })
                            .collect()
                    })
                    .collect();
                let handles = workload
                    .variants()
                    .iter()
                    .map(|v| {
                        backend.load_kernel(0, v).unwrap_or_else(|e| {
                            common::fail(&format!("cannot load `{}`: {e}", v.name))
                        })
                    })
                    .collect();
                TraceKernel {
                    workload,
                    phases,
                    inputs,
                    handles,
                }
            })
            .collect();
        let steps = (0..batches)
            .map(|i| {
                let kernel = i % kernels.len();
                let phases = kernels[kernel].phases.len();
                let round = i / kernels.len();
                Step {
                    kernel,
                    phase: i * phases / batches.max(1),
                    size: round % sizes.len(),
                    input: (round / sizes.len()) % POOL,
                }
            })
            .collect();
        Trace {
            backend,
            sizes,
            kernels,
            steps,
            last_verdicts: std::sync::Mutex::new(String::new()),
            transfer: std::sync::atomic::AtomicBool::new(true),
            last_events: std::env::var_os("PF_REGRET_EVENTS")
                .is_some()
                .then(|| std::sync::Mutex::new(Vec::new())),
        }
    }

    fn input(&self, step: Step) -> &Arc<[u8]> {
        &self.kernels[step.kernel].inputs[step.phase][step.size][step.input]
    }

    /// Runs one batch with `variant` on `queue` and turns its output into the answer.
    fn run_one(&self, queue: photofinish::backend::QueueId, step: Step, variant: usize) {
        let kernel = &self.kernels[step.kernel];
        let input = self.input(step);
        // As the engine plans its batches: the input's `Arc` bound without a copy.
        let plan = kernel
            .workload
            .plan_shared(variant, input)
            .unwrap_or_else(|e| common::fail(&format!("plan failed: {e}")));
        let job = plan.into_job(queue, kernel.handles[variant]);
        let out = match self.backend.dispatch(std::slice::from_ref(&job)).pop() {
            Some(Ok(out)) => out,
            Some(Err(e)) => common::fail(&format!("dispatch failed: {e}")),
            None => common::fail("the backend returned no result"),
        };
        if let Err(e) = kernel.workload.answer(variant, input, &out.outputs) {
            common::fail(&format!("answer failed: {e}"));
        }
    }

    /// Runs the whole trace with one thread per queue, `choose(step)` picking each
    /// batch's variant; returns the wall time.
    fn run_fixed(&self, choose: &(dyn Fn(Step) -> usize + Sync)) -> Duration {
        self.run_steps(&self.steps, choose, None)
    }

    /// As `run_fixed`, noting in `progress` when each twelfth of the trace was done.
    fn run_fixed_noting(
        &self,
        choose: &(dyn Fn(Step) -> usize + Sync),
        progress: &std::sync::Mutex<Vec<String>>,
    ) -> Duration {
        self.run_steps(&self.steps, choose, Some(progress))
    }

    /// A progress line at every twelfth of the trace: `done` batches after `elapsed`.
    fn note_progress(&self, done: usize, elapsed: Duration) -> Option<String> {
        let mark = (self.steps.len() / 12).max(1);
        (done % mark == 0).then(|| {
            format!(
                "{:9.1} ms  {done} of {} batches done",
                elapsed.as_secs_f64() * 1e3,
                self.steps.len()
            )
        })
    }

    /// Runs `steps` with one thread per queue, `choose(step)` picking each batch's
    /// variant; returns the wall time.
    fn run_steps(
        &self,
        steps: &[Step],
        choose: &(dyn Fn(Step) -> usize + Sync),
        progress: Option<&std::sync::Mutex<Vec<String>>>,
    ) -> Duration {
        let cursor = AtomicUsize::new(0);
        let started = Instant::now();
        std::thread::scope(|s| {
            // The kernels are loaded on device 0 only.
            for &queue in self.backend.queues().iter().filter(|q| q.device == 0) {
                let cursor = &cursor;
                s.spawn(move || loop {
                    let i = cursor.fetch_add(1, Ordering::Relaxed);
                    let Some(&step) = steps.get(i) else {
                        return;
                    };
                    self.run_one(queue, step, choose(step));
                    if let Some(progress) = progress {
                        if let Some(line) = self.note_progress(i + 1, started.elapsed()) {
                            progress
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(line);
                        }
                    }
                });
            }
        });
        started.elapsed()
    }

    /// Mean wall time of `runs` runs of `variant` on `step`'s input, on the first queue.
    fn time_variant(&self, step: Step, variant: usize, runs: usize) -> Duration {
        let Some(&queue) = self.backend.queues().first() else {
            common::fail("the backend has no queue");
        };
        let started = Instant::now();
        for _ in 0..runs {
            self.run_one(queue, step, variant);
        }
        started.elapsed() / runs.max(1) as u32
    }

    /// Mean time per batch of each variant of `kernel` on the inputs of `phase` and
    /// `size` (`runs` runs of each variant on each input of the pool, one batch at a
    /// time).
    fn phase_times(
        &self,
        kernel: usize,
        (phase, size): (usize, usize),
        runs: usize,
    ) -> Vec<Duration> {
        let variants = self.kernels[kernel].handles.len();
        (0..variants)
            .map(|v| {
                (0..POOL)
                    .map(|input| {
                        self.time_variant(
                            Step {
                                kernel,
                                phase,
                                size,
                                input,
                            },
                            v,
                            runs,
                        )
                    })
                    .sum::<Duration>()
                    / POOL as u32
            })
            .collect()
    }

    /// Each phase's fastest variant as the trace runs it: the phase's own batches run
    /// with each variant in turn, one thread per queue (best of `runs` runs each), and
    /// the wall times. One-at-a-time timings (`phase_times`) can rank the variants the
    /// other way when the queues' threads share the machine (the CPU backend's rayon
    /// pool on a 2-core VM did).
    fn in_trace_times(
        &self,
        kernel: usize,
        (phase, size): (usize, usize),
        runs: usize,
    ) -> Vec<Duration> {
        let steps: Vec<Step> = self
            .steps
            .iter()
            .copied()
            .filter(|s| s.kernel == kernel && s.phase == phase && s.size == size)
            .collect();
        (0..self.kernels[kernel].handles.len())
            .map(|v| {
                (0..runs)
                    .map(|_| self.run_steps(&steps, &|_| v, None))
                    .min()
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Exhaustive-upfront tuning then the trace with the winners fixed; the tuning time
    /// is part of the returned time.
    fn run_exhaustive(&self, tune_runs: usize) -> Duration {
        let started = Instant::now();
        let winners: Vec<Vec<usize>> = (0..self.kernels.len())
            .map(|k| {
                (0..self.sizes.len())
                    .map(|z| {
                        let first = self
                            .steps
                            .iter()
                            .copied()
                            .find(|s| s.kernel == k && s.size == z)
                            .unwrap_or(Step {
                                kernel: k,
                                phase: 0,
                                size: z,
                                input: 0,
                            });
                        let variants = self.kernels[k].handles.len();
                        (0..variants)
                            .min_by_key(|&v| self.time_variant(first, v, tune_runs))
                            .unwrap_or(0)
                    })
                    .collect()
            })
            .collect();
        let tuning = started.elapsed();
        tuning + self.run_fixed(&|step| winners[step.kernel][step.size])
    }

    /// The trace through a fresh engine; building it and shutting it down are not
    /// counted.
    fn run_engine(&self) -> Duration {
        let engine = Engine::builder()
            .backend_instance(Arc::clone(&self.backend))
            .key_transfer(self.transfer.load(Ordering::Relaxed))
            // Measured from nothing learnt: no autotune file is read or saved (saves
            // fsync, and a file left by an earlier run would pre-decide the verdicts).
            .without_autotune_file()
            .build()
            .unwrap_or_else(|e| common::fail(&format!("cannot build the engine: {e}")));
        let ids: Vec<_> = self
            .kernels
            .iter()
            .map(|k| {
                engine
                    .register(Arc::clone(&k.workload))
                    .unwrap_or_else(|e| common::fail(&format!("cannot register: {e}")))
            })
            .collect();
        let started = Instant::now();
        let log = self.last_events.as_ref().map(|_| {
            let events = engine.subscribe();
            // Ends when the engine, and with it the event bus, is dropped.
            std::thread::spawn(move || {
                events
                    .iter()
                    .filter_map(|event| describe(&event))
                    .map(|line| format!("{:9.1} ms  {line}", started.elapsed().as_secs_f64() * 1e3))
                    .collect::<Vec<_>>()
            })
        });
        let mut progress = Vec::new();
        let mut done = 0;
        let mut wait_noting = |ticket| {
            wait(ticket);
            done += 1;
            if log.is_some() {
                progress.extend(self.note_progress(done, started.elapsed()));
            }
        };
        let mut in_flight = std::collections::VecDeque::with_capacity(ENGINE_WINDOW);
        for &step in &self.steps {
            if in_flight.len() == ENGINE_WINDOW {
                wait_noting(in_flight.pop_front());
            }
            let batch = Batch::new(ids[step.kernel], Arc::clone(self.input(step)));
            match engine.submit(batch) {
                Ok(ticket) => in_flight.push_back(ticket),
                Err(e) => common::fail(&format!("submit failed: {e}")),
            }
        }
        while !in_flight.is_empty() {
            wait_noting(in_flight.pop_front());
        }
        let elapsed = started.elapsed();
        let verdicts = self
            .kernels
            .iter()
            .zip(&ids)
            .map(|(k, id)| {
                let keys = engine.kernel_stats(*id).map_or_else(String::new, |stats| {
                    stats
                        .keys
                        .iter()
                        .map(|key| {
                            let prior = key
                                .prior_source
                                .map_or_else(String::new, |p| format!(", from {p}"));
                            format!("{} {} {} races{prior}", key.key, key.verdict, key.races)
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                });
                format!("{}: [{keys}]", k.workload.name())
            })
            .collect::<Vec<_>>()
            .join(", ");
        let races: u32 = ids
            .iter()
            .filter_map(|id| engine.kernel_stats(*id))
            .flat_map(|stats| stats.keys)
            .map(|key| key.races)
            .sum();
        let verdicts = format!("{races} races in all; {verdicts}");
        *self.last_verdicts.lock().unwrap_or_else(|p| p.into_inner()) = verdicts;
        drop(engine);
        if let (Some(log), Some(last)) = (log, &self.last_events) {
            let mut lines = log.join().unwrap_or_default();
            lines.extend(progress);
            // In time order (each line starts with its time, right-aligned).
            lines.sort();
            *last.lock().unwrap_or_else(|p| p.into_inner()) = lines;
        }
        elapsed
    }
}

/// For each kernel, phase and size of the trace, `time(kernel, (phase, size))`'s time
/// per variant, printed after `label`, and the fastest variant: `[kernel][phase][size]`.
fn choose_per_phase(
    trace: &Trace,
    label: &str,
    time: impl Fn(usize, (usize, usize)) -> Vec<Duration>,
) -> Vec<Vec<Vec<usize>>> {
    (0..trace.kernels.len())
        .map(|k| {
            (0..trace.kernels[k].phases.len())
                .map(|p| {
                    (0..trace.sizes.len())
                        .map(|z| {
                            let times = time(k, (p, z));
                            println!(
                                "regret: {label}, variant 0 / 1 / …: {} {:?} {} B: {}",
                                trace.kernels[k].workload.name(),
                                trace.kernels[k].phases[p],
                                trace.sizes[z],
                                micros(&times)
                            );
                            fastest(&times)
                        })
                        .collect()
                })
                .collect()
        })
        .collect()
}

/// The index of the shortest time.
fn fastest(times: &[Duration]) -> usize {
    (0..times.len()).min_by_key(|&v| times[v]).unwrap_or(0)
}

/// Times in µs, "a / b / …".
fn micros(times: &[Duration]) -> String {
    times
        .iter()
        .map(|t| format!("{:.1} µs", t.as_secs_f64() * 1e6))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// One line for what an event says about the engine's choices (`None`: not one of
/// those).
fn describe(event: &photofinish::Event) -> Option<String> {
    use photofinish::Event;
    Some(match event {
        Event::VerdictChanged {
            name,
            variant,
            from,
            to,
            reason,
            ..
        } => format!("{name} variant {variant}: {from:?} -> {to:?} ({reason:?})"),
        Event::RaceSample {
            name,
            variant,
            sample,
            window_verdict,
            ..
        } => format!(
            "{name} variant {variant}: race {} conservative {} ns, speculative {} ns -> {window_verdict:?}",
            sample.index, sample.conservative_ns, sample.speculative_ns
        ),
        Event::SpeculatorToggled {
            enabled,
            commit_rate_ppm,
        } => format!("speculator {} at {commit_rate_ppm} ppm", if *enabled { "on" } else { "off" }),
        Event::MismatchCaught {
            name, variant, audit, ..
        } => format!("{name} variant {variant}: mismatch (audit {audit})"),
        Event::VariantInPlay {
            name, variant_name, verdict, ..
        } => format!("{name}: {variant_name} in play ({verdict:?})"),
        _ => return None,
    })
}

fn wait(ticket: Option<photofinish::Ticket>) {
    if let Some(t) = ticket {
        if let Err(e) = t.wait() {
            common::fail(&format!("a batch failed: {e}"));
        }
    }
}

fn regret(c: &mut Criterion) {
    let tune_runs = common::env_usize("PF_REGRET_TUNE_RUNS", 10).max(1);
    let sizes: Vec<usize> = std::env::var("PF_REGRET_SIZES")
        .ok()
        .map(|v| {
            v.split(',')
                .filter_map(|s| s.trim().parse().ok())
                .filter(|&n: &usize| n >= 16)
                .collect()
        })
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![4096, 256 << 10, 2 << 20]);
    let keyed = Trace::new(
        common::backend_from_env(),
        common::env_usize("PF_REGRET_KEY_BATCHES", 1500).max(1),
        sizes,
        true,
    );
    run_trace(c, "regret-keys", &keyed, tune_runs);
    if std::env::var_os("PF_REGRET_KEYS_ONLY").is_none() {
        let single = Trace::new(
            common::backend_from_env(),
            common::env_usize("PF_REGRET_BATCHES", 10_000).max(1),
            vec![common::env_usize("PF_REGRET_BYTES", 16 * 1024).max(16)],
            false,
        );
        run_trace(c, "regret", &single, tune_runs);
    }
}

/// One trace's group: the probe table, the oracle, the four policies and the ratios.
fn run_trace(c: &mut Criterion, name: &str, trace: &Trace, tune_runs: usize) {
    let device = trace
        .backend
        .devices()
        .first()
        .map_or_else(|| "?".to_owned(), |d| d.name.clone());
    let queues = trace.backend.queues().len();
    let kernels: Vec<&str> = trace.kernels.iter().map(|k| k.workload.name()).collect();
    println!(
        "{name}: {} batches of {:?} bytes, kernels {kernels:?}, on {device} ({queues} queues)",
        trace.steps.len(),
        trace.sizes
    );
    // Each phase's variants timed one batch at a time, printed so a run shows how much
    // (or how little) the choice is worth per phase; with `PF_REGRET_PROBE_ONLY` that
    // table is all.
    let probe = choose_per_phase(trace, "per batch", |k, p| trace.phase_times(k, p, 5));
    println!("{name}: one-at-a-time choices {probe:?}");
    if std::env::var_os("PF_REGRET_PROBE_ONLY").is_some() {
        return; // the table only (size sweeps on the GPU machine)
    }
    // The oracle: each (phase, size)'s fastest variant when its batches run as in the
    // trace (measured here, not counted in its time).
    let oracle = choose_per_phase(trace, "phase in the trace", |k, p| {
        trace.in_trace_times(k, p, 3)
    });
    println!("{name}: oracle choices {oracle:?}");

    let mut group = c.benchmark_group(name);
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(common::env_usize("PF_REGRET_SAMPLES", 10).max(10));
    let total = |iters: u64, run: &dyn Fn() -> Duration| (0..iters).map(|_| run()).sum();
    common::timed(&mut group, name, "photofinish", |iters| {
        total(iters, &|| trace.run_engine())
    });
    let with_transfer = trace
        .last_verdicts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let oracle_progress = std::sync::Mutex::new(Vec::new());
    common::timed(&mut group, name, "oracle", |iters| {
        total(iters, &|| {
            let choose = |step: Step| oracle[step.kernel][step.phase][step.size];
            if trace.last_events.is_some() {
                oracle_progress
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
                trace.run_fixed_noting(&choose, &oracle_progress)
            } else {
                trace.run_fixed(&choose)
            }
        })
    });
    common::timed(&mut group, name, "conservative", |iters| {
        total(iters, &|| trace.run_fixed(&|_| 0))
    });
    common::timed(&mut group, name, "exhaustive", |iters| {
        total(iters, &|| trace.run_exhaustive(tune_runs))
    });
    group.finish();
    println!("{name}: engine's keys at the end of its last run: {with_transfer}");
    if trace.sizes.len() > 1 {
        // The same trace once more without key transfer: what the races would be.
        trace.transfer.store(false, Ordering::Relaxed);
        let time = trace.run_engine();
        trace.transfer.store(true, Ordering::Relaxed);
        println!(
            "{name}: without key transfer ({:.1} ms, one run): {}",
            time.as_secs_f64() * 1e3,
            trace
                .last_verdicts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
        );
    }
    if let Some(events) = &trace.last_events {
        let events = events.lock().unwrap_or_else(|p| p.into_inner());
        println!(
            "{name}: the engine's events in its last run ({}):",
            events.len()
        );
        for line in events.iter() {
            println!("{name}:   {line}");
        }
        println!("{name}: the oracle's last run:");
        for line in oracle_progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            println!("{name}:   {line}");
        }
    }
    paired_ratios(name, trace, &oracle, tune_runs);
    for (baseline, target) in [
        ("oracle", "<= 1.05x"),
        ("exhaustive", "< 1x"),
        ("conservative", "< 1x"),
    ] {
        common::print_time_ratio(
            &format!("{name}: photofinish vs {baseline}"),
            &format!("{name}/photofinish"),
            &format!("{name}/{baseline}"),
            target,
        );
    }
}

/// The ratios again, paired: `PF_REGRET_PAIRS` (5) rounds, each running photofinish,
/// the oracle and exhaustive tuning back to back, so that a slow stretch of a shared
/// machine weighs on all three alike (criterion's groups run one policy's samples in a
/// block, minutes apart). Prints each round's ratios and their medians.
fn paired_ratios(name: &str, trace: &Trace, oracle: &[Vec<Vec<usize>>], tune_runs: usize) {
    let rounds = common::env_usize("PF_REGRET_PAIRS", 5);
    if rounds == 0 {
        return;
    }
    let choose = |step: Step| oracle[step.kernel][step.phase][step.size];
    let (mut vs_oracle, mut vs_exhaustive) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let ours = trace.run_engine().as_secs_f64();
        let best = trace.run_fixed(&choose).as_secs_f64();
        let tuned = trace.run_exhaustive(tune_runs).as_secs_f64();
        vs_oracle.push(ours / best);
        vs_exhaustive.push(ours / tuned);
    }
    vs_oracle.sort_by(f64::total_cmp);
    vs_exhaustive.sort_by(f64::total_cmp);
    let show = |v: &[f64]| {
        let all: Vec<String> = v.iter().map(|r| format!("{r:.2}")).collect();
        format!("{} (median {:.3}x)", all.join(" "), v[v.len() / 2])
    };
    println!(
        "PAIRED {name}: photofinish ÷ oracle in {rounds} back-to-back rounds, sorted: {} \
         (target <= 1.05x); ÷ exhaustive: {} (target < 1x)",
        show(&vs_oracle),
        show(&vs_exhaustive),
    );
}

criterion_group! {
    name = benches;
    config = common::quick();
    targets = regret
}
criterion_main!(benches);
