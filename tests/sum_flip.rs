//! `sum`'s winner flips with the batch's size on the CPU backend: the one-workgroup
//! variant (its one workgroup run invocation by invocation on the calling thread) is
//! faster at 4 KiB and the wide grid (a rayon sum in a fixed number of tasks) at 8 MiB,
//! each by at least [`FLIP`]×; and an engine fed both sizes
//! interleaved adopts the one-workgroup variant for the 4 KiB key and rejects it for the
//! 8 MiB key, in ten runs of ten.
//!
//! A timing test, so it is built to hold on a loaded 2-core machine: it is alone in its
//! binary (no other test of the crate runs beside it); the two variants are dispatched
//! in turn, so a load that comes and goes falls on both; each figure is a median of
//! [`RUNS`]; and a size whose ratio falls short is measured again, up to [`ATTEMPTS`]
//! times, since another process can hold a core for a second or more. Every attempt's
//! figures are printed.

use std::sync::{Arc, Mutex};

use photofinish::backend::cpu::CpuBackend;
use photofinish::backend::{Backend, DispatchJob};
use photofinish::kernels::{InputShape, Sum, Workload};
use photofinish::{BackendChoice, Batch, Engine, KernelVerdict, Output, TuningKey};

/// The two tests time the CPU: they take turns.
static ALONE: Mutex<()> = Mutex::new(());

/// The least margin of the winner at each end (on a 2-core machine beside a build: the
/// one-workgroup variant about 20× faster at 4 KiB, the wide grid about 13× at 8 MiB).
const FLIP: f64 = 1.5;
/// Timed dispatches of each variant per attempt (after three untimed ones).
const RUNS: usize = 21;
/// Attempts per size before the test fails.
const ATTEMPTS: usize = 5;

/// The median kernel times (ns) of the wide-grid and one-workgroup variants on `input`,
/// dispatched in turn; both answers checked against the reference.
fn medians(backend: &CpuBackend, input: &[u8]) -> (u64, u64) {
    let sum = Sum;
    let queue = backend.queues()[0];
    let jobs: Vec<DispatchJob> = sum
        .variants()
        .iter()
        .enumerate()
        .map(|(v, variant)| {
            let kernel = backend.load_kernel(0, variant).expect("load");
            sum.plan(v, input).expect("plan").into_job(queue, kernel)
        })
        .collect();
    let want = sum.reference(input);
    let mut times = [Vec::with_capacity(RUNS), Vec::with_capacity(RUNS)];
    for round in 0..RUNS + 3 {
        for (v, job) in jobs.iter().enumerate() {
            let out = backend
                .dispatch(std::slice::from_ref(job))
                .remove(0)
                .expect("dispatch");
            assert_eq!(sum.answer(v, input, &out.outputs), Ok(want.clone()));
            if round >= 3 {
                times[v].push(out.kernel_ns.expect("timed"));
            }
        }
    }
    let [mut wide, mut one] = times;
    wide.sort_unstable();
    one.sort_unstable();
    (wide[RUNS / 2].max(1), one[RUNS / 2].max(1))
}

/// Measures `sum` at `len` bytes until `wins` holds of the ratio wide ÷ one, at most
/// [`ATTEMPTS`] times; the ratios seen.
fn flips(len: usize, wins: impl Fn(f64) -> bool) -> (bool, Vec<f64>) {
    let backend = CpuBackend::with_threads(2).expect("CPU backend");
    let input = Sum.generate(InputShape::Uniform, len, 5);
    let mut seen = Vec::new();
    for _ in 0..ATTEMPTS {
        let (wide, one) = medians(&backend, &input);
        let ratio = wide as f64 / one as f64;
        eprintln!("{len} bytes: wide-grid {wide} ns, one-workgroup {one} ns, {ratio:.2}");
        seen.push(ratio);
        if wins(ratio) {
            return (true, seen);
        }
    }
    (false, seen)
}

#[test]
fn cpu_backend_sum_winner_flips_between_4kib_and_8mib() {
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    let (small, at_4k) = flips(4 << 10, |r| r >= FLIP);
    let (large, at_8m) = flips(8 << 20, |r| r <= 1.0 / FLIP);
    assert!(
        small,
        "at 4 KiB the one-workgroup variant is not {FLIP}× faster: wide ÷ one {at_4k:.2?}"
    );
    assert!(
        large,
        "at 8 MiB the wide grid is not {FLIP}× faster: wide ÷ one {at_8m:.2?}"
    );
}

/// The most batches of each size a run may take to decide both keys.
const MAX_BATCHES_PER_SIZE: usize = 200;

/// SPEC §8's reproducibility on a workload that truly flips: ten engines, each fed
/// 4 KiB and 8 MiB batches in turn until both keys are decided, all reach the same
/// verdicts — the one-workgroup variant adopted for small batches and rejected for
/// large ones — and every answer is the reference's.
#[test]
fn ten_mixed_size_sum_runs_on_the_cpu_backend_all_adopt_small_and_reject_large() {
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    let sizes = [4usize << 10, 8 << 20];
    let inputs: Vec<Vec<u8>> = sizes
        .iter()
        .map(|&len| Sum.generate(InputShape::Uniform, len, 11))
        .collect();
    let wants: Vec<Vec<u8>> = inputs.iter().map(|input| Sum.reference(input)).collect();
    let keys = sizes.map(|len| TuningKey::for_bytes(len as u64, None));
    for run in 0..10 {
        let engine = Engine::builder()
            .backend(BackendChoice::Cpu)
            .without_autotune_file()
            .build()
            .expect("the CPU backend always opens");
        let kernel = engine.register(Arc::new(Sum)).expect("sum registers");
        let decided = |engine: &Engine| {
            keys.iter().all(|&key| {
                !matches!(
                    engine.verdict_for(kernel, key),
                    None | Some(KernelVerdict::Undecided)
                )
            })
        };
        let mut batches = 0;
        while !decided(&engine) && batches < MAX_BATCHES_PER_SIZE {
            for (input, want) in inputs.iter().zip(&wants) {
                let answer = engine
                    .submit(Batch::new(kernel, input.clone()))
                    .expect("submits")
                    .wait()
                    .expect("answered");
                assert_eq!(
                    answer.output,
                    Output::Answer(want.clone()),
                    "run {run}: a wrong sum"
                );
            }
            batches += 1;
        }
        let verdicts = keys.map(|key| engine.verdict_for(kernel, key));
        let stats = engine.kernel_stats(kernel).expect("registered");
        for key in &stats.keys {
            eprintln!(
                "run {run}: {} {:?} after {} races, speedup {:?}",
                key.key,
                key.verdict,
                key.races,
                key.speedup()
            );
        }
        assert_eq!(
            verdicts,
            [Some(KernelVerdict::Adopted), Some(KernelVerdict::Rejected)],
            "run {run}: 4 KiB and 8 MiB keys after {batches} batches of each"
        );
        engine.shutdown();
    }
}
