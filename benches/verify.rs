//! verify: what `Verify::Always` (SPEC §11) costs against the default
//! `Verify::Audit(64)`, on a kernel whose speculative variant is adopted.
//!
//! The built-in `histogram` workload (privatised sub-histograms against global atomics)
//! on `PF_VERIFY_BYTES` (default 256 KiB) batches of uniform bytes, one batch at a time,
//! each waited for. Each engine first runs batches until the privatised variant is
//! adopted; then the measured batches run: under `Audit(64)` the adopted variant alone
//! with one audit race in 64 per queue, under `Always` every batch a race whose caller
//! gets the conservative arm's answer.
//!
//! `PF_BENCH_SECS=1 cargo bench --bench verify` (`PF_BENCH_BACKEND=cpu|vulkan`).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use photofinish::kernels::{Histogram, InputShape, Workload};
use photofinish::{Batch, Engine, KernelId, KernelVerdict, Verify};

/// Batches to wait for a verdict before giving up.
const SETTLE_BATCHES: usize = 400;

/// An engine on the bench's backend whose histogram variant is adopted, with `verify`.
fn adopted(verify: Verify, input: &Arc<[u8]>) -> (Engine, KernelId) {
    let engine = Engine::builder()
        .backend_instance(common::backend_from_env())
        .without_autotune_file()
        .verify(verify)
        .build()
        .unwrap_or_else(|e| common::fail(&format!("engine: {e}")));
    let k = engine
        .register(Arc::new(Histogram))
        .unwrap_or_else(|e| common::fail(&format!("register: {e}")));
    for _ in 0..SETTLE_BATCHES {
        if engine.verdict(k) == Some(KernelVerdict::Adopted) {
            return (engine, k);
        }
        run(&engine, k, input, 1);
    }
    common::fail(&format!(
        "histogram not adopted after {SETTLE_BATCHES} batches: {:?}",
        engine.verdict(k)
    ))
}

/// Runs `n` batches of `input` one at a time; how long they took.
fn run(engine: &Engine, k: KernelId, input: &Arc<[u8]>, n: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        engine
            .submit(Batch::new(k, Arc::clone(input)))
            .and_then(|t| t.wait())
            .unwrap_or_else(|e| common::fail(&format!("batch: {e}")));
    }
    start.elapsed()
}

fn verify(c: &mut Criterion) {
    let bytes = common::env_usize("PF_VERIFY_BYTES", 256 << 10).max(64);
    let input: Arc<[u8]> = Arc::from(Histogram.generate(InputShape::Uniform, bytes, 7));
    let name = "verify";
    let mut group = c.benchmark_group(name);
    for (line, verify) in [("audit-64", Verify::Audit(64)), ("always", Verify::Always)] {
        let (engine, k) = adopted(verify, &input);
        common::timed(&mut group, name, line, |iters| {
            run(&engine, k, &input, iters)
        });
        engine.shutdown();
    }
    group.finish();
    println!("verify: histogram, {bytes}-byte uniform batches, one at a time");
    common::print_time_ratio(
        "verify: Always vs Audit(64)",
        "verify/always",
        "verify/audit-64",
        "none: the price of checking every batch",
    );
}

criterion_group! {
    name = benches;
    config = common::quick();
    targets = verify
}
criterion_main!(benches);
