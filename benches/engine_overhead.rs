//! engine_overhead (issue #6, bench 1): throughput of empty batches through the engine
//! on the CPU backend with 1, 2 and 4 producer threads, against the same pipeline built
//! (a) on a raw crossbeam MPMC channel with the same number of worker threads and (b) on
//! a real actor framework (ractor, one actor per worker on a tokio runtime with that
//! many threads).
//!
//! The pipeline is the same in all three: each producer submits batches, keeping up to
//! [`WINDOW`] in flight, and waits for each one's answer on its own one-shot reply. The
//! engine's batches are for a kernel whose speculative variant is adopted (its
//! conservative variant spins for 50 µs, the speculative one returns at once:
//! `common/empty.rs`), so a measured batch is one empty dispatch on the CPU backend plus
//! the engine's bookkeeping; audits are off. The baselines' workers only answer.
//! Targets: ≥ 0.5× the raw channel's throughput and ≥ 2× the actor framework's.
//!
//! `ractor-dispatch` is the engine's pipeline itself built on ractor: the producer builds
//! each batch's dispatch plan and sends it to an actor, which owns a queue of the same
//! CPU backend, dispatches the plan there and answers with the outputs, as a dispatch
//! engine written on an actor framework would (without the engine's verdicts, races and
//! bookkeeping). (Until commit 8fb1e2e its actors built the plan themselves and
//! answered with a count, which left the engine's producer the plan's allocation and
//! the outputs' release that the actor pipeline's producer did not pay.) The ×2 target
//! is printed against both ractor lines.
//!
//! `engine-submit-many` is the engine with each window submitted in one
//! `Engine::submit_many` call (one hand-off for the window) instead of a `submit` per
//! batch.
//!
//! The CPU backend has one queue per hardware thread (so that many workers and baseline
//! threads); `PF_CPU_QUEUES=n` sets n instead.
//!
//! Two more lines split the engine's time: the same engine on a minimal inline backend
//! (kernel code on the worker's own thread: the engine's machinery alone), and the CPU
//! backend's dispatch called straight from the producers (the backend alone).

mod common;

use common::empty::{empty_pair, empty_plan, engine_with_adopted_kernel};

use std::sync::{Arc, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use crossbeam_channel::{bounded, Receiver, Sender};
use photofinish::backend::cpu::CpuBackend;
use photofinish::backend::{
    Backend, BackendError, BackendKind, BufferArg, DispatchJob, DispatchOutput, KernelHandle,
    KernelVariant, QueueId,
};
use photofinish::kernels::DispatchPlan;
use photofinish::{Batch, Engine, KernelId, KernelVerdict};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

/// Batches each producer keeps in flight before it waits for their answers.
const WINDOW: usize = 64;
/// Producer counts measured.
const PRODUCERS: [usize; 3] = [1, 2, 4];
/// Splits `iters` batches among `producers` as evenly as possible.
fn shares(iters: u64, producers: usize) -> impl Iterator<Item = u64> {
    let n = producers as u64;
    (0..n).map(move |i| iters / n + u64::from(i < iters % n))
}

/// Runs `iters` batches through `submit_window` from `producers` threads at once and
/// returns the wall time. `submit_window(k, producer)` submits `k` batches and waits for
/// them all.
fn drive<F>(producers: usize, iters: u64, submit_window: F) -> Duration
where
    F: Fn(usize, usize) + Sync,
{
    let started = Instant::now();
    thread::scope(|s| {
        for (producer, share) in shares(iters, producers).enumerate() {
            let submit_window = &submit_window;
            s.spawn(move || {
                let mut left = share;
                while left > 0 {
                    let k = left.min(WINDOW as u64);
                    submit_window(k as usize, producer);
                    left -= k;
                }
            });
        }
    });
    started.elapsed()
}

// ----- (a) raw crossbeam MPMC channel -------------------------------------------------

/// Producers → one bounded MPMC channel → `workers` threads, each batch answered on its
/// own one-shot channel.
struct RawPipeline {
    tx: Option<Sender<Sender<u64>>>,
    workers: Vec<thread::JoinHandle<()>>,
}

impl RawPipeline {
    fn new(workers: usize, capacity: usize) -> Self {
        let (tx, rx): (Sender<Sender<u64>>, Receiver<Sender<u64>>) = bounded(capacity);
        let workers = (0..workers)
            .map(|_| {
                let rx = rx.clone();
                thread::spawn(move || {
                    for reply in rx {
                        // The producer may have gone; nothing to do then.
                        let _ = reply.send(0);
                    }
                })
            })
            .collect();
        RawPipeline {
            tx: Some(tx),
            workers,
        }
    }

    fn window(&self, k: usize) {
        let Some(tx) = &self.tx else { return };
        let replies: Vec<Receiver<u64>> = (0..k)
            .map(|_| {
                let (reply, answer) = bounded(1);
                if tx.send(reply).is_err() {
                    common::fail("raw pipeline: the workers are gone");
                }
                answer
            })
            .collect();
        for answer in replies {
            if answer.recv().is_err() {
                common::fail("raw pipeline: a batch got no answer");
            }
        }
    }
}

impl Drop for RawPipeline {
    fn drop(&mut self) {
        self.tx = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

// ----- (b) ractor actors ---------------------------------------------------------------

/// What a worker actor does for a batch besides answering it: nothing, or dispatch the
/// batch's plan on its own queue of the CPU backend (the engine's pipeline, built on
/// ractor) and answer with the outputs.
type ActorWork = Option<(Arc<CpuBackend>, KernelHandle, QueueId)>;

/// A batch sent to an actor: the plan the producer built (`None` for the actors that
/// only answer) and the port for its outputs.
type ActorMsg = (Option<DispatchPlan>, RpcReplyPort<Vec<Vec<u8>>>);

/// A worker actor: does its work for every batch it is sent and answers it.
struct Answerer;

impl Actor for Answerer {
    type Msg = ActorMsg;
    type State = ActorWork;
    type Arguments = ActorWork;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        work: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(work)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        (plan, reply): Self::Msg,
        work: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let outputs = match (work, plan) {
            (Some((cpu, kernel, queue)), Some(plan)) => Direct::run(cpu, *kernel, *queue, plan),
            _ => Vec::new(),
        };
        // The producer may have gone; nothing to do then.
        let _ = reply.send(outputs);
        Ok(())
    }
}

/// Producers → `workers` ractor actors (round robin) on a tokio runtime with that many
/// threads, each batch answered on its own reply port; with `direct`, the producer
/// builds each batch's plan and sends it, as the engine's producers do, and each actor
/// dispatches it on its own queue of that backend and answers with its outputs, which
/// the producer drops, as the engine's producers drop their answers.
struct ActorPipeline {
    actors: Vec<ActorRef<ActorMsg>>,
    dispatching: bool,
    next: std::sync::atomic::AtomicUsize,
    runtime: tokio::runtime::Runtime,
}

impl ActorPipeline {
    fn new(workers: usize, direct: Option<&Direct>) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .build()
            .unwrap_or_else(|e| common::fail(&format!("cannot start tokio: {e}")));
        let actors = (0..workers)
            .map(|i| {
                let work = direct.map(|d| {
                    let queues = d.cpu.queues();
                    (Arc::clone(&d.cpu), d.kernel, queues[i % queues.len()])
                });
                match runtime.block_on(Actor::spawn(None, Answerer, work)) {
                    Ok((actor, _join)) => actor,
                    Err(e) => common::fail(&format!("cannot spawn a ractor actor: {e}")),
                }
            })
            .collect();
        ActorPipeline {
            actors,
            dispatching: direct.is_some(),
            next: std::sync::atomic::AtomicUsize::new(0),
            runtime,
        }
    }

    fn window(&self, k: usize) {
        let replies: Vec<_> = (0..k)
            .map(|_| {
                let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (port, answer) = ractor::concurrency::oneshot();
                let plan = self.dispatching.then(empty_plan);
                if self.actors[i % self.actors.len()]
                    .send_message((plan, RpcReplyPort::from(port)))
                    .is_err()
                {
                    common::fail("actor pipeline: an actor is gone");
                }
                answer
            })
            .collect();
        for answer in replies {
            if answer.blocking_recv().is_err() {
                common::fail("actor pipeline: a batch got no answer");
            }
        }
    }
}

impl Drop for ActorPipeline {
    fn drop(&mut self) {
        for actor in &self.actors {
            actor.stop(None);
        }
        // Let the actors see their stop before the runtime goes.
        self.runtime.block_on(tokio::task::yield_now());
    }
}

// ----- a minimal inline backend --------------------------------------------------------

/// The least a backend can do: run a variant's CPU code on the calling thread, with no
/// validation beyond what it needs not to fail. It describes itself with the CPU
/// backend's device description and `queues` queues of family 0.
#[derive(Debug)]
struct InlineBackend {
    devices: Vec<photofinish::backend::DeviceInfo>,
    queues: Vec<QueueId>,
    kernels: RwLock<Vec<Arc<KernelVariant>>>,
}

impl InlineBackend {
    fn new(device: photofinish::backend::DeviceInfo, queues: u32) -> Self {
        InlineBackend {
            devices: vec![device],
            queues: (0..queues)
                .map(|index| QueueId {
                    device: 0,
                    family: 0,
                    index,
                })
                .collect(),
            kernels: RwLock::new(Vec::new()),
        }
    }

    fn run(&self, job: &DispatchJob) -> Result<DispatchOutput, BackendError> {
        let kernels = self.kernels.read().unwrap_or_else(|p| p.into_inner());
        let unknown = || BackendError::Unknown {
            what: format!("kernel {:?}", job.kernel),
        };
        let variant = usize::try_from(job.kernel.id)
            .ok()
            .and_then(|i| kernels.get(i))
            .cloned()
            .ok_or_else(unknown)?;
        drop(kernels);
        let code = variant.cpu.as_ref().ok_or_else(unknown)?;
        let mut buffers: Vec<Vec<u8>> = job
            .buffers
            .iter()
            .map(|b| match b {
                BufferArg::Data(d) => d.to_vec(),
                BufferArg::Zeroed(n) => vec![0; *n as usize],
            })
            .collect();
        let started = Instant::now();
        code(&mut buffers, &job.push_constants, job.workgroups).map_err(|reason| {
            BackendError::KernelFailed {
                kernel: variant.name.clone(),
                reason,
            }
        })?;
        let kernel_ns = started.elapsed().as_nanos() as u64;
        let outputs = variant
            .bindings
            .iter()
            .zip(buffers)
            .filter(|(b, _)| b.access.writes())
            .map(|(_, buffer)| buffer)
            .collect();
        Ok(DispatchOutput {
            outputs,
            kernel_ns: Some(kernel_ns),
            recording_reused: None,
            upload_overlapped: None,
        })
    }
}

impl Backend for InlineBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Test
    }

    fn devices(&self) -> &[photofinish::backend::DeviceInfo] {
        &self.devices
    }

    fn queues(&self) -> &[QueueId] {
        &self.queues
    }

    fn load_kernel(
        &self,
        _device: usize,
        variant: &KernelVariant,
    ) -> Result<KernelHandle, BackendError> {
        let mut kernels = self.kernels.write().unwrap_or_else(|p| p.into_inner());
        kernels.push(Arc::new(variant.clone()));
        Ok(KernelHandle {
            device: 0,
            id: kernels.len() as u64 - 1,
        })
    }

    fn dispatch(&self, jobs: &[DispatchJob]) -> Vec<Result<DispatchOutput, BackendError>> {
        jobs.iter().map(|job| self.run(job)).collect()
    }
}

// ----- the engine --------------------------------------------------------------------

/// [`engine_window`] with the window's batches submitted in one `submit_many`.
fn engine_window_many(engine: &Engine, kernel: KernelId, k: usize) {
    let batches = (0..k).map(|_| Batch::with_plan(kernel, empty_plan()));
    let tickets = engine
        .submit_many(batches)
        .unwrap_or_else(|e| common::fail(&format!("submit_many failed: {e}")));
    wait_all(tickets);
}

fn engine_window(engine: &Engine, kernel: KernelId, k: usize) {
    let tickets: Vec<_> = (0..k)
        .map(|_| {
            engine
                .submit(Batch::with_plan(kernel, empty_plan()))
                .unwrap_or_else(|e| common::fail(&format!("submit failed: {e}")))
        })
        .collect();
    wait_all(tickets);
}

/// Waits for every ticket's answer; a failed batch ends the bench.
fn wait_all(tickets: Vec<photofinish::Ticket>) {
    for ticket in tickets {
        if let Err(e) = ticket.wait() {
            common::fail(&format!("a batch failed: {e}"));
        }
    }
}

/// The engine's per-batch backend work without the engine: the adopted (empty) variant
/// dispatched straight on the CPU backend from the producer threads, `k` at a time.
struct Direct {
    cpu: Arc<CpuBackend>,
    kernel: KernelHandle,
}

impl Direct {
    fn new(cpu: Arc<CpuBackend>) -> Self {
        let (_, speculative) = empty_pair();
        let kernel = cpu
            .load_kernel(0, &speculative)
            .unwrap_or_else(|e| common::fail(&format!("cannot load the empty kernel: {e}")));
        Direct { cpu, kernel }
    }

    fn window(&self, k: usize, producer: usize) {
        let queues = self.cpu.queues();
        for _ in 0..k {
            let queue = queues[producer % queues.len()];
            Direct::run(&self.cpu, self.kernel, queue, empty_plan());
        }
    }

    /// One dispatch of `plan` with `kernel` on `queue`; the outputs it gave.
    fn run(
        cpu: &CpuBackend,
        kernel: KernelHandle,
        queue: QueueId,
        plan: DispatchPlan,
    ) -> Vec<Vec<u8>> {
        let job = plan.into_job(queue, kernel);
        match cpu.dispatch(std::slice::from_ref(&job)).pop() {
            Some(Ok(out)) => out.outputs,
            Some(Err(e)) => common::fail(&format!("direct dispatch failed: {e}")),
            None => common::fail("direct dispatch gave no result"),
        }
    }
}

fn engine_overhead(c: &mut Criterion) {
    // `PF_CPU_QUEUES=n`: a CPU backend of n queues (so n workers and n baseline
    // threads) instead of one per hardware thread.
    let queues = std::env::var("PF_CPU_QUEUES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    let cpu = Arc::new(
        queues
            .map_or_else(CpuBackend::new, CpuBackend::with_threads)
            .unwrap_or_else(|e| common::fail(&format!("cannot open the CPU backend: {e}"))),
    );
    let direct = Direct::new(Arc::clone(&cpu));
    let Some(cpu_info) = cpu.devices().first().cloned() else {
        common::fail("the CPU backend has no device");
    };
    let (engine, kernel) = engine_with_adopted_kernel(cpu).unwrap_or_else(|e| common::fail(&e));
    let workers = engine.worker_count();
    // The same engine on a minimal backend that runs kernel code on the worker's own
    // thread (no pool hop), with as many queues: the engine's machinery alone, without
    // the CPU backend's per-dispatch cost.
    let inline = Arc::new(InlineBackend::new(cpu_info, workers as u32));
    let (inline_engine, inline_kernel) =
        engine_with_adopted_kernel(inline).unwrap_or_else(|e| common::fail(&e));
    let raw = RawPipeline::new(workers, photofinish::DEFAULT_CHANNEL_CAPACITY);
    let actors = ActorPipeline::new(workers, None);
    let dispatching_actors = ActorPipeline::new(workers, Some(&direct));
    println!("engine_overhead: {workers} workers (CPU backend queues), window {WINDOW}");

    for producers in PRODUCERS {
        let name = format!("engine_overhead/{producers}p");
        let mut group = c.benchmark_group(&name);
        group.throughput(Throughput::Elements(1));
        common::timed(&mut group, &name, "engine", |iters| {
            drive(producers, iters, |k, _| engine_window(&engine, kernel, k))
        });
        common::timed(&mut group, &name, "engine-submit-many", |iters| {
            drive(producers, iters, |k, _| {
                engine_window_many(&engine, kernel, k)
            })
        });
        common::timed(&mut group, &name, "engine-inline-backend", |iters| {
            drive(producers, iters, |k, _| {
                engine_window(&inline_engine, inline_kernel, k)
            })
        });
        common::timed(&mut group, &name, "crossbeam", |iters| {
            drive(producers, iters, |k, _| raw.window(k))
        });
        common::timed(&mut group, &name, "ractor", |iters| {
            drive(producers, iters, |k, _| actors.window(k))
        });
        common::timed(&mut group, &name, "ractor-dispatch", |iters| {
            drive(producers, iters, |k, _| dispatching_actors.window(k))
        });
        common::timed(&mut group, &name, "backend-direct", |iters| {
            drive(producers, iters, |k, p| direct.window(k, p))
        });
        group.finish();
    }
    if engine.verdict(kernel) != Some(KernelVerdict::Adopted)
        || inline_engine.verdict(inline_kernel) != Some(KernelVerdict::Adopted)
    {
        common::fail("the empty kernel lost its adoption during the run; the figures are void");
    }
    for producers in PRODUCERS {
        let name = format!("engine_overhead/{producers}p");
        common::print_speedup(
            &format!("{producers} producers, engine vs raw channel"),
            &format!("{name}/engine"),
            &format!("{name}/crossbeam"),
            ">= 0.5x",
        );
        common::print_speedup(
            &format!("{producers} producers, engine vs ractor"),
            &format!("{name}/engine"),
            &format!("{name}/ractor"),
            ">= 2x",
        );
        common::print_speedup(
            &format!("{producers} producers, engine vs the same dispatches on ractor"),
            &format!("{name}/engine"),
            &format!("{name}/ractor-dispatch"),
            ">= 2x",
        );
        common::print_speedup(
            &format!(
                "{producers} producers, engine (submit_many) vs the same dispatches on ractor"
            ),
            &format!("{name}/engine-submit-many"),
            &format!("{name}/ractor-dispatch"),
            ">= 2x",
        );
        common::print_speedup(
            &format!("{producers} producers, engine (submit_many) vs raw channel"),
            &format!("{name}/engine-submit-many"),
            &format!("{name}/crossbeam"),
            ">= 0.5x",
        );
        common::print_speedup(
            &format!("{producers} producers, engine on the inline backend vs raw channel"),
            &format!("{name}/engine-inline-backend"),
            &format!("{name}/crossbeam"),
            ">= 0.5x",
        );
        common::print_speedup(
            &format!("{producers} producers, engine on the inline backend vs ractor"),
            &format!("{name}/engine-inline-backend"),
            &format!("{name}/ractor"),
            ">= 2x",
        );
        common::print_speedup(
            &format!("{producers} producers, engine vs its backend calls alone"),
            &format!("{name}/engine"),
            &format!("{name}/backend-direct"),
            "information: the engine's cost above the CPU backend's",
        );
    }
}

criterion_group! {
    name = benches;
    config = common::quick();
    targets = engine_overhead
}
criterion_main!(benches);
