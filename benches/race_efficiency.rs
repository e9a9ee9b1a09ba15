//! race_efficiency (issue #6, bench 3, GPU machine): how much two arms of a race overlap.
//!
//! Two measurements, each printed as a `RATIO` line:
//!
//! - **Backend**: the Vulkan backend driven directly: one `Backend::dispatch` call with
//!   two jobs on two queues (the race), against each job dispatched alone on its queue.
//!   The figure is `race wall time ÷ slower arm's wall time alone`: 1.0 means the arms
//!   ran fully at the same time, 2.0 (for equal arms) one after the other. Measured on a
//!   pair of queues of the same family and a pair of different families where the
//!   device has them (a one-queue device has no pair: skipped).
//! - **Engine**: the same kernel raced through the public API. The busy kernel and a
//!   copy doing 4/5 of its rounds are registered as a pair (`Engine::register_pair`),
//!   the engine is built with `audit_period(1)` so that every batch races (undecided
//!   kernels race, and an adopted one audits every batch), and batches
//!   (`Batch::with_plan`) are submitted one at a time, each waited for. The figure is
//!   `host wall time per batch ÷ the slower arm's kernel time in those races` (GPU
//!   timestamps from the `Event::RaceSample`s; the conservative arm is the slower):
//!   1.0 means the engine's race cost no more than its slower arm, 1.8 is the two arms
//!   back to back (the speculative one takes 0.8 of the time), and what the engine adds
//!   per batch (submit, hand-off, comparing the answers) counts against it. It runs on
//!   every device: on a one-queue device (lavapipe) the arms run back to back. Should
//!   the pair be rejected (a noisy arm), it is registered afresh so batches go on
//!   racing; the line says how often that happened.
//!
//! Both for a small kernel that leaves most of the GPU idle and a kernel that fills it.
//! The kernel is a compute-bound hash loop (tiny I/O, so copies do not blur the
//! overlap): `PF_RACE_SMALL_WORKGROUPS` (default 8) × 256 invocations of
//! `PF_RACE_SMALL_ROUNDS` rounds (default 100 000), and `PF_RACE_LARGE_WORKGROUPS`
//! (default 65 535) × 256 of `PF_RACE_LARGE_ROUNDS` (default 400). Each arm's GPU time
//! from timestamp queries is printed beside the ratio. With `PF_BENCH_BACKEND=cpu` (the
//! default) it runs the same measurements on the CPU backend, whose queues are pool
//! threads and which runs each arm on one thread. On a CPU (the CPU backend, or a
//! Vulkan device of type cpu such as lavapipe) the defaults shrink to 8 and 64
//! workgroups of 600 rounds, so the whole bench stays under a minute.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use photofinish::backend::{
    Backend, BackendKind, BindingAccess, BufferArg, DispatchJob, KernelHandle, KernelVariant,
    QueueId,
};
use photofinish::kernels::DispatchPlan;
use photofinish::policy::MIN_DISPATCHES_FOR_VERDICT;
use photofinish::{Batch, Engine, Event, KernelId, KernelVerdict};

/// The busy kernel; `ROUNDS` is replaced by the number of rounds it runs, an
/// expression of the `rounds` push constant.
const BUSY_WGSL: &str = r#"
struct Params { rounds: u32 }
var<immediate> params: Params;
@group(0) @binding(0) var<storage, read_write> sink: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    var x = gid.x * 2654435761u + 1u;
    let rounds = ROUNDS;
    for (var i = 0u; i < rounds; i++) {
        x = x * 1664525u + 1013904223u;
        x = x ^ (x >> 13u);
    }
    // Never true in practice, but the compiler cannot know: the loop must run.
    if (x == 0x9e3779b9u) {
        sink[0] = x;
    }
}
"#;

/// The conservative arm runs the pushed rounds.
const FULL_ROUNDS: &str = "params.rounds";
/// The engine's speculative arm runs 4/5 of them: fast enough that the engine adopts
/// it (savings over `MIN_ADOPT_SAVINGS_BPS`), close enough that back-to-back arms
/// still read as nearly twice the slower one.
const FOUR_FIFTHS_ROUNDS: &str = "params.rounds - params.rounds / 5u";

/// The busy kernel on the CPU backend: the same loop, one "invocation" per item.
fn busy_cpu(_buffers: &mut [Vec<u8>], pc: &[u8], wg: [u32; 3]) -> Result<(), String> {
    busy_loop(pushed_rounds(pc)?, wg)
}

/// The speculative copy on the CPU backend: 4/5 of the rounds, like its shader.
fn busy_cpu_four_fifths(_buffers: &mut [Vec<u8>], pc: &[u8], wg: [u32; 3]) -> Result<(), String> {
    let rounds = pushed_rounds(pc)?;
    busy_loop(rounds - rounds / 5, wg)
}

fn pushed_rounds(pc: &[u8]) -> Result<u32, String> {
    pc.get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| "missing push constants".to_owned())
}

fn busy_loop(rounds: u32, wg: [u32; 3]) -> Result<(), String> {
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

/// A variant's CPU code: buffers in binding order, push constants, workgroup count.
type CpuCode = fn(&mut [Vec<u8>], &[u8], [u32; 3]) -> Result<(), String>;

/// The busy kernel as a variant: its shader runs `rounds` (an expression), its CPU code
/// is `cpu`.
fn busy_variant(name: &str, rounds: &str, cpu: CpuCode) -> KernelVariant {
    let variant = KernelVariant::spirv(
        name,
        common::spirv(name, &BUSY_WGSL.replace("ROUNDS", rounds)),
        [256, 1, 1],
        &[BindingAccess::Write],
        4,
    );
    KernelVariant {
        cpu: Some(Arc::new(cpu)),
        ..variant
    }
}

/// The two kernel sizes: (name, workgroups, rounds), smaller on a CPU: the CPU
/// backend, or a Vulkan device that is one (lavapipe).
fn sizes(backend: &dyn Backend) -> [(&'static str, u32, u32); 2] {
    let cpu = backend.kind() == BackendKind::Cpu
        || backend.devices().iter().all(|d| d.device_type == "cpu");
    let size = |var: &str, gpu: usize, on_cpu: usize| {
        common::env_usize(var, if cpu { on_cpu } else { gpu }) as u32
    };
    [
        (
            "small",
            size("PF_RACE_SMALL_WORKGROUPS", 8, 8),
            size("PF_RACE_SMALL_ROUNDS", 100_000, 600),
        ),
        (
            "large",
            size("PF_RACE_LARGE_WORKGROUPS", 65_535, 64),
            size("PF_RACE_LARGE_ROUNDS", 400, 600),
        ),
    ]
}

fn race_efficiency(c: &mut Criterion) {
    // Two queues per family (the engine's default is one), so a same-family pair
    // exists to measure; before any thread is started. The engine line's races take a
    // partner of another family first either way.
    if std::env::var_os("PHOTOFINISH_MAX_QUEUES_PER_FAMILY").is_none() {
        std::env::set_var("PHOTOFINISH_MAX_QUEUES_PER_FAMILY", "2");
    }
    let backend = common::backend_from_env();
    let variant = busy_variant("bench/busy", FULL_ROUNDS, busy_cpu);
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
    let sizes = sizes(backend.as_ref());
    if pairs.is_empty() {
        println!("race_efficiency: this device has one queue, so no two arms can overlap at the backend; measuring the engine only (arms back to back)");
    }
    backend_races(c, backend.as_ref(), kernel, &pairs, &sizes);
    let speculative = busy_variant(
        "bench/busy-four-fifths",
        FOUR_FIFTHS_ROUNDS,
        busy_cpu_four_fifths,
    );
    engine_races(c, &backend, [variant, speculative], &sizes);
}

/// The backend measurement: each size on each queue pair, race against each arm alone.
fn backend_races(
    c: &mut Criterion,
    backend: &dyn Backend,
    kernel: KernelHandle,
    pairs: &[(&'static str, [QueueId; 2])],
    sizes: &[(&'static str, u32, u32)],
) {
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
            let (t, g) = run(backend, &[a.clone(), b.clone()], iters);
            gpu_race = g;
            t
        });
        let mut gpu_a = Vec::new();
        common::timed(&mut group, &name, "arm-a-alone", |iters| {
            let (t, g) = run(backend, std::slice::from_ref(&a), iters);
            gpu_a = g;
            t
        });
        let mut gpu_b = Vec::new();
        common::timed(&mut group, &name, "arm-b-alone", |iters| {
            let (t, g) = run(backend, std::slice::from_ref(&b), iters);
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

/// Both arms' kernel times over the races of one timed call.
#[derive(Debug, Default, Clone, Copy)]
struct ArmTimes {
    conservative_ns: f64,
    speculative_ns: f64,
    races: u64,
    /// Races whose arms ran on one queue, back to back.
    back_to_back: u64,
}

impl ArmTimes {
    fn add(&mut self, other: ArmTimes) {
        self.conservative_ns += other.conservative_ns;
        self.speculative_ns += other.speculative_ns;
        self.races += other.races;
        self.back_to_back += other.back_to_back;
    }
}

/// One size's pair registered in the engine, and what its timed batches measured.
struct EnginePair<'a> {
    engine: &'a Engine,
    variants: &'a [KernelVariant; 2],
    name: String,
    kernel: KernelId,
    plan: DispatchPlan,
    /// Times the pair was registered afresh after a rejection.
    reregistered: u32,
    /// Per timed call, in order.
    calls: Vec<ArmTimes>,
}

impl<'a> EnginePair<'a> {
    fn new(
        engine: &'a Engine,
        variants: &'a [KernelVariant; 2],
        size: &str,
        workgroups: u32,
        rounds: u32,
    ) -> Self {
        let name = format!("race_efficiency/{size}/engine");
        let kernel = Self::register(engine, variants, &name);
        EnginePair {
            engine,
            variants,
            kernel,
            name,
            plan: DispatchPlan {
                buffers: vec![BufferArg::Zeroed(4)],
                push_constants: rounds.to_le_bytes().to_vec(),
                workgroups: [workgroups, 1, 1],
            },
            reregistered: 0,
            calls: Vec::new(),
        }
    }

    fn register(engine: &Engine, [c, s]: &[KernelVariant; 2], name: &str) -> KernelId {
        engine
            .register_pair(name, c.clone(), s.clone())
            .unwrap_or_else(|e| common::fail(&format!("cannot register the busy pair: {e}")))
    }

    /// Submits batches one at a time until `iters` of them raced; returns their host
    /// wall time (submit to answer) and notes both arms' kernel times from the
    /// `RaceSample` events. A batch that did not race (the pair was rejected) is left
    /// out, and the pair is registered afresh.
    fn run(&mut self, events: &photofinish::Subscription, iters: u64) -> Duration {
        let mut wall = Duration::ZERO;
        let mut times = ArmTimes::default();
        let mut raced = 0;
        while raced < iters {
            let started = Instant::now();
            let answer = self
                .engine
                .submit(Batch::with_plan(self.kernel, self.plan.clone()))
                .and_then(|ticket| ticket.wait())
                .unwrap_or_else(|e| common::fail(&format!("{}: batch failed: {e}", self.name)));
            let elapsed = started.elapsed();
            // The race's sample is published before its answer: it is already here.
            for event in events.try_iter() {
                if let Event::RaceSample { kernel, sample, .. } = event {
                    if kernel == self.kernel {
                        times.add(ArmTimes {
                            conservative_ns: sample.conservative_ns as f64,
                            speculative_ns: sample.speculative_ns as f64,
                            races: 1,
                            back_to_back: u64::from(
                                sample.conservative_queue == sample.speculative_queue,
                            ),
                        });
                    }
                }
            }
            if answer.raced {
                wall += elapsed;
                raced += 1;
            } else {
                self.kernel = Self::register(self.engine, self.variants, &self.name);
                self.reregistered += 1;
            }
        }
        self.calls.push(times);
        wall
    }

    /// The arms' mean kernel times over the measured calls (criterion's warm-up calls
    /// left out, as `common::mean_ns` does).
    fn measured(&self) -> ArmTimes {
        let mut sum = ArmTimes::default();
        for call in &self.calls[self.calls.len().saturating_sub(common::SAMPLES)..] {
            sum.add(*call);
        }
        sum
    }
}

/// The engine measurement: each size's pair raced through `Engine::submit`.
fn engine_races(
    c: &mut Criterion,
    backend: &Arc<dyn Backend>,
    variants: [KernelVariant; 2],
    sizes: &[(&'static str, u32, u32)],
) {
    let engine = Engine::builder()
        .backend_instance(Arc::clone(backend))
        .without_autotune_file()
        .audit_period(1)
        .build()
        .unwrap_or_else(|e| common::fail(&format!("cannot build the engine: {e}")));
    let events = engine.subscribe();
    let mut pairs = Vec::new();
    for &(size, workgroups, rounds) in sizes {
        let mut pair = EnginePair::new(&engine, &variants, size, workgroups, rounds);
        // Past the verdict first (adopted, or still undecided): every batch races.
        pair.run(&events, u64::from(MIN_DISPATCHES_FOR_VERDICT) + 2);
        pair.calls.clear();
        let mut group = c.benchmark_group(&pair.name);
        let name = pair.name.clone();
        common::timed(&mut group, &name, "race", |iters| pair.run(&events, iters));
        group.finish();
        pairs.push(pair);
    }
    for pair in &pairs {
        let arms = pair.measured();
        let per_race = |ns: f64| ns / arms.races.max(1) as f64;
        let (cons, spec) = (
            per_race(arms.conservative_ns),
            per_race(arms.speculative_ns),
        );
        let slower = cons.max(spec);
        let verdict = engine
            .verdict(pair.kernel)
            .unwrap_or(KernelVerdict::Undecided);
        match common::mean_ns(&format!("{}/race", pair.name)) {
            Some(r) if slower > 0.0 => println!(
                "RATIO {}: race {r:.0} ns wall per batch / slower arm {slower:.0} ns = {:.2} (1.0: full overlap, 1.8: serial; arms 1 : 0.8); arm kernel times in the race {cons:.0} / {spec:.0} ns, {} races, {} back to back on one queue; verdict {verdict}, re-registered {} times",
                pair.name,
                r / slower,
                arms.races,
                arms.back_to_back,
                pair.reregistered
            ),
            _ => println!("RATIO {}: missing measurement", pair.name),
        }
    }
    engine.shutdown();
}

criterion_group! {
    name = benches;
    config = common::quick();
    targets = race_efficiency
}
criterion_main!(benches);
