//! submit_overhead (issue #6, bench 2, GPU machine): host time per batch for a tiny
//! kernel through the engine against a hand-written vulkano loop that records, submits
//! and waits for every batch, as a user would write it from vulkano's own examples.
//!
//! The kernel adds one to each of `PF_SUBMIT_WORDS` u32 words (default 1024, 4 KiB) in
//! one read-write buffer. The engine runs it as the speculative arm of a registered pair
//! (the conservative arm is the same increment after a busy loop), warmed until it is
//! adopted, with audits off, so each measured batch is one dispatch of the same shader
//! (the engine reuses recorded command buffers and pooled buffers); the hand-written loop
//! uploads into a new host-visible buffer, allocates a descriptor set, records a command
//! buffer, submits, waits on a fence and reads the buffer back, every batch. Both run one
//! batch at a time from one thread, and both answers are checked. Target: the engine's
//! time per batch ≤ 0.5× the hand-written loop's.
//!
//! A second engine line, `engine-pipelined`, keeps `PF_SUBMIT_DEPTH` (default 32)
//! batches in flight from the same one thread — submit them all, then wait for and
//! check each — so idle workers on the device's other queues take them side by side.
//! Its time per batch is wall time ÷ batches; the hand-written loop stays the serial
//! loop a user writes (overlapping it by hand means one fence, buffer set and command
//! buffer per in-flight batch and per queue: what the engine does).
//!
//! `backend-direct` calls the engine's Vulkan backend (`Backend::dispatch`, timed) from
//! the bench thread, one batch at a time (no engine, no worker hand-off). The engine
//! runs an adopted kernel untimed 15 batches in 16 (`TIMED_SINGLE_PERIOD`), skipping
//! the two timestamps `backend-direct` pays, so engine ÷ backend-direct is the engine's
//! own share less that saving. The engine's `max_group` is the builder's default
//! (`PHOTOFINISH_MAX_GROUP`).
//!
//! D1 grouping against no grouping: a second engine, built with the other side of the
//! builder's default (`max_group(8)` while `DEFAULT_MAX_GROUP` is 1, `max_group(1)`
//! otherwise), runs the `engine-group<n>` and `engine-pipelined-group<n>` lines beside
//! the default engine's `engine` and `engine-pipelined`, in the same run; the ratios
//! printed last compare them. Grouping can act only on a backlog, so the one-at-a-time
//! pair checks that the default costs a lone batch nothing.
//!
//! `PF_BENCH_BACKEND=cpu` runs the engines and `backend-direct` on the CPU backend (the
//! variants carry the same increment as CPU code); the hand-written loops stay on the
//! Vulkan device, so their ratios then compare different backends (information only).
//! Unset or `vulkan`: everything on the Vulkan backend.

mod common;

use std::fmt::Display;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use photofinish::backend::cpu::CpuBackend;
use photofinish::backend::vulkan::VulkanBackend;
use photofinish::backend::{Backend, BindingAccess, BufferArg, KernelVariant};
use photofinish::kernels::DispatchPlan;
use photofinish::Event;
use photofinish::{Batch, Engine, KernelId, KernelVerdict, Output, Ticket, DEFAULT_MAX_GROUP};
use vulkano::buffer::{Buffer, BufferCreateInfo, BufferUsage, Subbuffer};
use vulkano::command_buffer::allocator::StandardCommandBufferAllocator;
use vulkano::command_buffer::{
    AutoCommandBufferBuilder, CommandBufferSubmitInfo, CommandBufferUsage,
    PrimaryAutoCommandBuffer, PrimaryCommandBufferAbstract, SubmitInfo,
};
use vulkano::descriptor_set::allocator::StandardDescriptorSetAllocator;
use vulkano::descriptor_set::{DescriptorSet, WriteDescriptorSet};
use vulkano::device::physical::PhysicalDeviceType;
use vulkano::device::{Device, DeviceCreateInfo, Queue, QueueCreateInfo, QueueFlags};
use vulkano::instance::{Instance, InstanceCreateInfo};
use vulkano::memory::allocator::{AllocationCreateInfo, MemoryTypeFilter, StandardMemoryAllocator};
use vulkano::pipeline::compute::ComputePipelineCreateInfo;
use vulkano::pipeline::layout::PipelineDescriptorSetLayoutCreateInfo;
use vulkano::pipeline::{
    ComputePipeline, Pipeline, PipelineBindPoint, PipelineLayout, PipelineShaderStageCreateInfo,
};
use vulkano::query::{QueryPool, QueryPoolCreateInfo, QueryResultFlags, QueryType};
use vulkano::shader::{ShaderModule, ShaderModuleCreateInfo};
use vulkano::sync::fence::{Fence, FenceCreateInfo};
use vulkano::sync::GpuFuture;
use vulkano::sync::PipelineStage;
use vulkano::VulkanLibrary;

const WORKGROUP: u32 = 64;
const INCREMENT_WGSL: &str = r#"
@group(0) @binding(0) var<storage, read_write> data: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x < arrayLength(&data)) {
        data[gid.x] = data[gid.x] + 1u;
    }
}
"#;

/// The engine's conservative arm: the same answer after a busy loop, so the plain
/// increment (the speculative arm) is adopted after a few races and every measured
/// batch runs it alone. The loop's result is written only for invocation ids no
/// dispatch here reaches, which the compiler cannot know, so the loop stays.
const SLOW_INCREMENT_WGSL: &str = r#"
@group(0) @binding(0) var<storage, read_write> data: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    var x = gid.x + 1u;
    for (var i = 0u; i < 4096u; i++) {
        x = x * 1664525u + 1013904223u;
    }
    if (gid.x < arrayLength(&data)) {
        data[gid.x] = data[gid.x] + 1u;
    }
    if (gid.x > 0xfffffff0u) {
        data[0] = x;
    }
}
"#;

/// Unwraps a setup step of the hand-written loop, or ends the bench saying which.
fn ok<T, E: Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| common::fail(&format!("hand-written loop: {what}: {e}")))
}

/// The hand-written vulkano loop's long-lived objects.
struct HandLoop {
    queue: Arc<Queue>,
    pipeline: Arc<ComputePipeline>,
    memory: Arc<StandardMemoryAllocator>,
    commands: Arc<StandardCommandBufferAllocator>,
    descriptors: Arc<StandardDescriptorSetAllocator>,
}

impl HandLoop {
    fn new(spirv: &[u32]) -> Self {
        let library = ok(VulkanLibrary::new(), "loading the Vulkan library");
        let instance = ok(
            Instance::new(library, InstanceCreateInfo::default()),
            "creating the instance",
        );
        let physical = ok(instance.enumerate_physical_devices(), "listing devices")
            .filter_map(|p| {
                let family = p
                    .queue_family_properties()
                    .iter()
                    .position(|q| q.queue_flags.intersects(QueueFlags::COMPUTE))?;
                Some((p, family as u32))
            })
            .min_by_key(|(p, _)| match p.properties().device_type {
                PhysicalDeviceType::DiscreteGpu => 0,
                PhysicalDeviceType::IntegratedGpu => 1,
                _ => 2,
            });
        let Some((physical, family)) = physical else {
            common::fail("hand-written loop: no Vulkan device with a compute queue");
        };
        let (device, mut queues) = ok(
            Device::new(
                physical,
                DeviceCreateInfo {
                    queue_create_infos: vec![QueueCreateInfo {
                        queue_family_index: family,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ),
            "creating the device",
        );
        let Some(queue) = queues.next() else {
            common::fail("hand-written loop: the device gave no queue");
        };
        // SAFETY: the words are naga's SPIR-V output of a shader naga validated.
        let module = ok(
            unsafe { ShaderModule::new(device.clone(), ShaderModuleCreateInfo::new(spirv)) },
            "loading the shader",
        );
        let Some(entry) = module.entry_point("main") else {
            common::fail("hand-written loop: the shader has no `main`");
        };
        let stage = PipelineShaderStageCreateInfo::new(entry);
        let layout_info = ok(
            PipelineDescriptorSetLayoutCreateInfo::from_stages([&stage])
                .into_pipeline_layout_create_info(device.clone()),
            "deriving the pipeline layout",
        );
        let layout = ok(
            PipelineLayout::new(device.clone(), layout_info),
            "creating the pipeline layout",
        );
        let pipeline = ok(
            ComputePipeline::new(
                device.clone(),
                None,
                ComputePipelineCreateInfo::stage_layout(stage, layout),
            ),
            "creating the pipeline",
        );
        HandLoop {
            queue,
            pipeline,
            memory: Arc::new(StandardMemoryAllocator::new_default(device.clone())),
            commands: Arc::new(StandardCommandBufferAllocator::new(
                device.clone(),
                Default::default(),
            )),
            descriptors: Arc::new(StandardDescriptorSetAllocator::new(
                device,
                Default::default(),
            )),
        }
    }

    /// A descriptor set for `buffer` and a command buffer that binds it and runs the
    /// increment over it — between two bottom-of-pipe timestamps in `queries` (reset
    /// first) where given, as the engine's backend records every dispatch.
    fn record(
        &self,
        buffer: &Subbuffer<[u32]>,
        usage: CommandBufferUsage,
        queries: Option<&Arc<QueryPool>>,
    ) -> Arc<PrimaryAutoCommandBuffer> {
        let layout = self.pipeline.layout().clone();
        let Some(set_layout) = layout.set_layouts().first().cloned() else {
            common::fail("hand-written loop: the pipeline has no descriptor set layout");
        };
        let set = ok(
            DescriptorSet::new(
                self.descriptors.clone(),
                set_layout,
                [WriteDescriptorSet::buffer(0, buffer.clone())],
                [],
            ),
            "allocating the descriptor set",
        );
        let mut builder = ok(
            AutoCommandBufferBuilder::primary(
                self.commands.clone(),
                self.queue.queue_family_index(),
                usage,
            ),
            "starting a command buffer",
        );
        if let Some(q) = queries {
            // SAFETY: the pool's two queries belong to this command buffer alone, which
            // is never pending twice, and are reset here before they are written.
            ok(
                unsafe {
                    builder
                        .reset_query_pool(q.clone(), 0..2)
                        .and_then(|b| b.write_timestamp(q.clone(), 0, PipelineStage::BottomOfPipe))
                },
                "recording the first timestamp",
            );
        }
        ok(
            builder
                .bind_pipeline_compute(self.pipeline.clone())
                .and_then(|b| b.bind_descriptor_sets(PipelineBindPoint::Compute, layout, 0, set)),
            "recording the bindings",
        );
        let groups = (buffer.len() as u32).div_ceil(WORKGROUP);
        // SAFETY: the shader bounds-checks every index against the bound buffer's length.
        ok(
            unsafe { builder.dispatch([groups, 1, 1]) },
            "recording the dispatch",
        );
        if let Some(q) = queries {
            // SAFETY: query 1 of the pool reset above.
            ok(
                unsafe { builder.write_timestamp(q.clone(), 1, PipelineStage::BottomOfPipe) },
                "recording the second timestamp",
            );
        }
        ok(builder.build(), "finishing the command buffer")
    }

    /// A new host-visible storage buffer of `words` words.
    fn buffer(&self, words: usize) -> Subbuffer<[u32]> {
        ok(
            Buffer::new_slice(
                self.memory.clone(),
                BufferCreateInfo {
                    usage: BufferUsage::STORAGE_BUFFER,
                    ..Default::default()
                },
                AllocationCreateInfo {
                    memory_type_filter: MemoryTypeFilter::PREFER_DEVICE
                        | MemoryTypeFilter::HOST_RANDOM_ACCESS,
                    ..Default::default()
                },
                words as u64,
            ),
            "creating a buffer",
        )
    }

    /// One batch: upload, record, submit, wait, read back.
    fn batch(&self, input: &[u32]) -> Vec<u32> {
        let buffer = self.buffer(input.len());
        ok(buffer.write(), "writing the input").copy_from_slice(input);
        let commands = self.record(&buffer, CommandBufferUsage::OneTimeSubmit, None);
        let future = ok(
            vulkano::sync::now(self.queue.device().clone())
                .then_execute(self.queue.clone(), commands)
                .map_err(|e| e.to_string()),
            "submitting",
        );
        let fence = ok(future.then_signal_fence_and_flush(), "flushing");
        ok(fence.wait(None), "waiting");
        let out = ok(buffer.read(), "reading back").to_vec();
        out
    }
}

/// The hand-written loop's best case: everything recorded once and reused — one
/// host-visible buffer, its descriptor set and a `MultipleSubmit` command buffer — so
/// a batch is write, submit, wait, read. `raw` submits with `vkQueueSubmit` and polls
/// the fence (the engine backend's own submission path: the round-trip floor of this
/// queue); otherwise vulkano's `GpuFuture` chain and a blocking fence wait, as
/// vulkano's examples write it. `queries`: the raw loop also writes and reads two
/// timestamps around the kernel, as the engine's backend does (what timing costs).
struct Reused {
    queue: Arc<Queue>,
    buffer: Subbuffer<[u32]>,
    commands: Arc<PrimaryAutoCommandBuffer>,
    fence: Arc<Fence>,
    raw: bool,
    queries: Option<Arc<QueryPool>>,
}

impl HandLoop {
    fn reused(&self, words: usize, raw: bool, timed: bool) -> Reused {
        let buffer = self.buffer(words);
        let fence = ok(
            Fence::new(self.queue.device().clone(), FenceCreateInfo::default()),
            "creating the fence",
        );
        let queries = timed.then(|| {
            ok(
                QueryPool::new(
                    self.queue.device().clone(),
                    QueryPoolCreateInfo {
                        query_count: 2,
                        ..QueryPoolCreateInfo::query_type(QueryType::Timestamp)
                    },
                ),
                "creating the query pool",
            )
        });
        Reused {
            queue: self.queue.clone(),
            commands: self.record(
                &buffer,
                CommandBufferUsage::MultipleSubmit,
                queries.as_ref(),
            ),
            buffer,
            fence: Arc::new(fence),
            raw,
            queries,
        }
    }
}

impl Reused {
    fn batch(&self, input: &[u32]) -> Vec<u32> {
        ok(self.buffer.write(), "writing the input").copy_from_slice(input);
        if self.raw {
            let submit = SubmitInfo {
                command_buffers: vec![CommandBufferSubmitInfo::new(
                    self.commands.clone() as Arc<dyn PrimaryCommandBufferAbstract>
                )],
                ..Default::default()
            };
            // SAFETY: the command buffer was recorded for this queue's family with
            // `MultipleSubmit` and is not pending (each batch waits for its fence
            // before the next submits); the fence is unsignalled (new, or reset below)
            // and outlives the submission.
            ok(
                self.queue.with(|mut q| unsafe {
                    q.submit(std::slice::from_ref(&submit), Some(&self.fence))
                }),
                "submitting",
            );
            while !ok(self.fence.is_signaled(), "polling the fence") {
                std::hint::spin_loop();
            }
            // SAFETY: the fence has signalled and no pending submission uses it.
            ok(unsafe { self.fence.reset() }, "resetting the fence");
            if let Some(q) = &self.queries {
                let mut stamps = [0u64; 2];
                ok(
                    q.get_results(0..2, &mut stamps, QueryResultFlags::WAIT),
                    "reading the timestamps",
                );
                std::hint::black_box(stamps);
            }
        } else {
            let future = ok(
                self.commands
                    .clone()
                    .execute(self.queue.clone())
                    .map_err(|e| e.to_string()),
                "submitting",
            );
            ok(
                ok(future.then_signal_fence_and_flush(), "flushing").wait(None),
                "waiting",
            );
        }
        let out = ok(self.buffer.read(), "reading back").to_vec();
        out
    }
}

/// An increment-shaped variant (one read-write binding, no push constants) of `spirv`,
/// with the same increment as CPU code after `spin` rounds of busy work per word (the
/// slowed conservative arm's stand-in on the CPU backend).
fn increment_variant(name: &str, spirv: &Arc<[u32]>, spin: u32) -> KernelVariant {
    KernelVariant::spirv(
        name,
        Arc::clone(spirv),
        [WORKGROUP, 1, 1],
        &[BindingAccess::ReadWrite],
        0,
    )
    .with_cpu(move |buffers, _, _| {
        let data = buffers.first_mut().ok_or("no buffer")?;
        for word in data.chunks_exact_mut(4) {
            let mut x = 1u32;
            for _ in 0..spin {
                x = std::hint::black_box(x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223));
            }
            std::hint::black_box(x);
            let w = u32::from_le_bytes([word[0], word[1], word[2], word[3]]).wrapping_add(1);
            word.copy_from_slice(&w.to_le_bytes());
        }
        Ok(())
    })
}

/// The backend the engines run on: the CPU backend under `PF_BENCH_BACKEND=cpu`, else
/// the Vulkan backend.
fn engine_backend() -> Arc<dyn Backend> {
    if std::env::var("PF_BENCH_BACKEND").as_deref() == Ok("cpu") {
        return Arc::new(
            CpuBackend::new()
                .unwrap_or_else(|e| common::fail(&format!("cannot open the CPU backend: {e}"))),
        );
    }
    Arc::new(
        VulkanBackend::new()
            .unwrap_or_else(|e| common::fail(&format!("cannot open the Vulkan backend: {e}"))),
    )
}

/// An engine on `backend` (with `max_group(n)` where given, else the builder's
/// default) with the increment pair registered and the plain increment adopted.
fn engine_with_adopted_kernel(
    backend: &Arc<dyn Backend>,
    max_group: Option<usize>,
    spirv: &Arc<[u32]>,
    words: usize,
) -> (Engine, KernelId) {
    let mut builder = Engine::builder()
        .backend_instance(Arc::clone(backend))
        .audit_period(0)
        // Measured from nothing learnt: no autotune file is read or saved (saves
        // fsync, and a file left by an earlier run would pre-decide the verdicts).
        .without_autotune_file();
    if let Some(n) = max_group {
        builder = builder.max_group(n);
    }
    let engine = builder
        .build()
        .unwrap_or_else(|e| common::fail(&format!("cannot build the engine: {e}")));
    let kernel = engine
        .register_pair(
            "increment",
            increment_variant(
                "increment/slow",
                &common::spirv("slow-increment", SLOW_INCREMENT_WGSL),
                64,
            ),
            increment_variant("increment/plain", spirv, 0),
        )
        .unwrap_or_else(|e| common::fail(&format!("cannot register the kernel: {e}")));
    let input = input(words);
    for _ in 0..2000 {
        if engine.verdict(kernel) == Some(KernelVerdict::Adopted) {
            return (engine, kernel);
        }
        engine_batch(&engine, kernel, &input);
    }
    common::fail(&format!(
        "the plain increment was not adopted in 2000 races (verdict {:?})",
        engine.verdict(kernel)
    ))
}

fn plan(input: &[u32]) -> DispatchPlan {
    let bytes: Vec<u8> = input.iter().flat_map(|w| w.to_le_bytes()).collect();
    DispatchPlan {
        buffers: vec![BufferArg::Data(bytes.into())],
        push_constants: Vec::new(),
        workgroups: [(input.len() as u32).div_ceil(WORKGROUP), 1, 1],
    }
}

fn engine_batch(engine: &Engine, kernel: KernelId, input: &[u32]) -> Vec<u32> {
    let ticket = engine
        .submit(Batch::with_plan(kernel, plan(input)))
        .unwrap_or_else(|e| common::fail(&format!("an engine batch was refused: {e}")));
    words_of(ticket)
}

/// Waits for `ticket` and returns its one output buffer as words.
fn words_of(ticket: Ticket) -> Vec<u32> {
    let answer = ticket
        .wait()
        .unwrap_or_else(|e| common::fail(&format!("an engine batch failed: {e}")));
    match answer.output {
        Output::Buffers(buffers) => words(buffers.first()),
        Output::Answer(_) => common::fail("the engine answered a pair with a workload answer"),
    }
}

/// The plain increment dispatched through the engine's Vulkan backend directly, from the
/// bench thread (no engine, no worker): what the engine's own machinery adds on top.
struct Direct<'a> {
    backend: &'a dyn Backend,
    kernel: photofinish::backend::KernelHandle,
    queue: photofinish::backend::QueueId,
}

impl<'a> Direct<'a> {
    fn new(backend: &'a dyn Backend, spirv: &Arc<[u32]>) -> Self {
        let variant = increment_variant("increment/direct", spirv, 0);
        let kernel = backend
            .load_kernel(0, &variant)
            .unwrap_or_else(|e| common::fail(&format!("backend-direct: cannot load: {e}")));
        let queue = *backend
            .queues()
            .first()
            .unwrap_or_else(|| common::fail("backend-direct: no queue"));
        Direct {
            backend,
            kernel,
            queue,
        }
    }

    fn batch(&self, input: &[u32]) -> Vec<u32> {
        let plan = plan(input);
        let job = plan.into_job(self.queue, self.kernel);
        let out = self
            .backend
            .dispatch(std::slice::from_ref(&job))
            .pop()
            .and_then(Result::ok)
            .unwrap_or_else(|| common::fail("backend-direct: the dispatch failed"));
        words(out.outputs.first().map(Vec::as_slice))
    }
}

/// A buffer as little-endian u32 words (none: empty).
fn words(buffer: Option<&[u8]>) -> Vec<u32> {
    buffer
        .map(|b| {
            b.chunks_exact(4)
                .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `batch` `iters` times, one after another; returns the wall time.
fn per_batch(iters: u64, batch: &dyn Fn()) -> Duration {
    let started = Instant::now();
    for _ in 0..iters {
        batch();
    }
    started.elapsed()
}

/// Runs `iters` engine batches from one thread with up to `depth` of them in flight
/// (submit `depth`, then wait for each in order and check its answer); returns the
/// wall time. This is how a producer with independent batches uses the engine: every
/// idle worker (one per queue) takes one, so the batches overlap on the device's queues.
fn pipelined(engine: &Engine, kernel: KernelId, input: &[u32], depth: u64, iters: u64) -> Duration {
    let started = Instant::now();
    let mut left = iters;
    while left > 0 {
        let n = left.min(depth);
        let tickets: Vec<Ticket> = (0..n)
            .map(|_| {
                engine
                    .submit(Batch::with_plan(kernel, plan(input)))
                    .unwrap_or_else(|e| common::fail(&format!("an engine batch was refused: {e}")))
            })
            .collect();
        for ticket in tickets {
            check("the engine (pipelined)", input, &words_of(ticket));
        }
        left -= n;
    }
    started.elapsed()
}

fn input(words: usize) -> Vec<u32> {
    (0..words as u32).map(|i| i.wrapping_mul(7)).collect()
}

fn check(what: &str, input: &[u32], output: &[u32]) {
    let expected: Vec<u32> = input.iter().map(|w| w.wrapping_add(1)).collect();
    if output != expected {
        common::fail(&format!("{what} computed a wrong answer"));
    }
}

fn submit_overhead(c: &mut Criterion) {
    let words = common::env_usize("PF_SUBMIT_WORDS", 1024).max(1);
    let depth = common::env_usize("PF_SUBMIT_DEPTH", 32).max(1) as u64;
    let spirv = common::spirv("increment", INCREMENT_WGSL);
    let hand = HandLoop::new(&spirv);
    let backend = engine_backend();
    let (engine, kernel) = engine_with_adopted_kernel(&backend, None, &spirv, words);
    // The other side of the default: grouping on where it is off, and off where on.
    let contrast = if DEFAULT_MAX_GROUP > 1 { 1 } else { 8 };
    let (other, other_kernel) = engine_with_adopted_kernel(&backend, Some(contrast), &spirv, words);
    let audits = [engine.subscribe(), other.subscribe()];
    let data = input(words);
    let direct = Direct::new(&*backend, &spirv);
    check("the backend called directly", &data, &direct.batch(&data));
    check("the hand-written loop", &data, &hand.batch(&data));
    let reuse = hand.reused(words, false, false);
    let floor = hand.reused(words, true, false);
    let timed_floor = hand.reused(words, true, true);
    check(
        "the hand-written loop with reuse",
        &data,
        &reuse.batch(&data),
    );
    check(
        "the hand-written raw-submit loop",
        &data,
        &floor.batch(&data),
    );
    check("the engine", &data, &engine_batch(&engine, kernel, &data));
    check(
        "the contrast engine",
        &data,
        &engine_batch(&other, other_kernel, &data),
    );
    let other_line = format!("engine-group{contrast}");
    let other_pipelined = format!("engine-pipelined-group{contrast}");

    let name = "submit_overhead";
    let mut group = c.benchmark_group(name);
    // One batch at a time from this thread, each line in turn.
    let one_at_a_time: [(&str, &dyn Fn() -> Vec<u32>); 7] = [
        ("engine", &|| engine_batch(&engine, kernel, &data)),
        (&other_line, &|| engine_batch(&other, other_kernel, &data)),
        ("backend-direct", &|| direct.batch(&data)),
        ("hand-written", &|| hand.batch(&data)),
        ("hand-reuse", &|| reuse.batch(&data)),
        ("hand-reuse-raw", &|| floor.batch(&data)),
        ("hand-reuse-raw-timed", &|| timed_floor.batch(&data)),
    ];
    for (line, batch) in one_at_a_time {
        common::timed(&mut group, name, line, |iters| {
            per_batch(iters, &|| {
                std::hint::black_box(batch());
            })
        });
    }
    common::timed(&mut group, name, "engine-pipelined", |iters| {
        pipelined(&engine, kernel, &data, depth, iters)
    });
    common::timed(&mut group, name, &other_pipelined, |iters| {
        pipelined(&other, other_kernel, &data, depth, iters)
    });
    group.finish();
    common::print_time_ratio(
        "engine vs hand-written vulkano loop, host time per batch, one at a time",
        "submit_overhead/engine",
        "submit_overhead/hand-written",
        "<= 0.5x",
    );
    common::print_time_ratio(
        "engine vs its backend called directly (timed; the engine mostly is not), one at a time",
        "submit_overhead/engine",
        "submit_overhead/backend-direct",
        "information",
    );
    common::print_time_ratio(
        "engine vs the hand-written loop with everything recorded once (GpuFuture submit)",
        "submit_overhead/engine",
        "submit_overhead/hand-reuse",
        "information",
    );
    common::print_time_ratio(
        "the queue's round-trip floor (recorded once, raw submit, fence polled) vs hand-written",
        "submit_overhead/hand-reuse-raw",
        "submit_overhead/hand-written",
        "information",
    );
    common::print_time_ratio(
        "what two timestamps cost: the raw loop with timestamps vs without",
        "submit_overhead/hand-reuse-raw-timed",
        "submit_overhead/hand-reuse-raw",
        "information",
    );
    common::print_time_ratio(
        &format!("engine with {depth} batches in flight vs hand-written loop, host time per batch"),
        "submit_overhead/engine-pipelined",
        "submit_overhead/hand-written",
        "<= 0.5x",
    );
    // What D1 did on each engine (an audit is published when what fired or what the
    // engine did changed): whether the grouped engine really grouped.
    for (audits, line) in audits.iter().zip(["default", &other_line]) {
        for event in audits.try_iter() {
            if let Event::PolicyAudit { fired, did, .. } = event {
                for (fired, did) in fired.iter().zip(did).filter(|(f, _)| f.starts_with("D1")) {
                    println!("AUDIT {line}: {fired} -> {did}");
                }
            }
        }
    }
    common::print_time_ratio(
        &format!(
            "default max_group ({DEFAULT_MAX_GROUP}) vs max_group({contrast}), {depth} in flight"
        ),
        "submit_overhead/engine-pipelined",
        &format!("submit_overhead/{other_pipelined}"),
        "information",
    );
    common::print_time_ratio(
        &format!("default max_group ({DEFAULT_MAX_GROUP}) vs max_group({contrast}), one at a time"),
        "submit_overhead/engine",
        &format!("submit_overhead/{other_line}"),
        "no worse",
    );
}

criterion_group! {
    name = benches;
    config = common::quick();
    targets = submit_overhead
}
criterion_main!(benches);
