//! large_batch (issue #31, item 4): the engine's overhead on large batches. One `reduce`
//! batch of `PF_LARGE_BYTES` (default 256 MiB) end to end — the input's upload, the
//! kernel, the answer's download — through the engine (`Engine::submit` + `wait`, after
//! the kernel's verdict has settled, so each batch runs the variant the engine chose)
//! against the same work written by hand with vulkano: one device, one queue, the same
//! variant's SPIR-V and plan, a host-visible staging buffer the loop writes the input
//! into, a device-local input buffer, and one command buffer recorded once (zero the
//! total, copy the staging buffer in, dispatch, copy the total out) submitted per batch
//! with a fence wait. Target: the engine ≤ 1.1× the hand loop's time.
//!
//! With `PF_PEERS` naming the output of `scripts/peers.py` (its `e2e_sum_u32` line: a
//! host tensor `.to("cuda")`, `torch.sum`, `.item()`), it also prints the engine's
//! time against PyTorch's for the same bytes.
//!
//!     PF_LARGE_BYTES=64MiB cargo bench --bench large_batch   # lavapipe (128 MiB range)
//!
//! Needs a Vulkan device (lavapipe is enough to run it; its figures mean nothing).

mod common;

use std::sync::Arc;
use std::time::Instant;

use criterion::Criterion;
use photofinish::kernels::{InputShape, Reduce, Workload};
use photofinish::{BackendChoice, Batch, Engine, KernelVerdict, Output};
use vulkano::buffer::{Buffer, BufferCreateInfo, BufferUsage, Subbuffer};
use vulkano::command_buffer::allocator::StandardCommandBufferAllocator;
use vulkano::command_buffer::{
    AutoCommandBufferBuilder, CommandBufferUsage, CopyBufferInfo, PrimaryAutoCommandBuffer,
    PrimaryCommandBufferAbstract,
};
use vulkano::descriptor_set::allocator::StandardDescriptorSetAllocator;
use vulkano::descriptor_set::{DescriptorSet, WriteDescriptorSet};
use vulkano::device::{
    Device, DeviceCreateInfo, DeviceFeatures, Queue, QueueCreateInfo, QueueFlags,
};
use vulkano::instance::{Instance, InstanceCreateFlags, InstanceCreateInfo};
use vulkano::memory::allocator::{AllocationCreateInfo, MemoryTypeFilter, StandardMemoryAllocator};
use vulkano::pipeline::compute::ComputePipelineCreateInfo;
use vulkano::pipeline::layout::PipelineDescriptorSetLayoutCreateInfo;
use vulkano::pipeline::{
    ComputePipeline, PipelineBindPoint, PipelineLayout, PipelineShaderStageCreateInfo,
};
use vulkano::shader::{ShaderModule, ShaderModuleCreateInfo};
use vulkano::sync::GpuFuture;
use vulkano::{Version, VulkanLibrary};

/// The hand-written loop: everything made once, one submit and one fence wait a batch.
struct HandLoop {
    queue: Arc<Queue>,
    staging: Subbuffer<[u8]>,
    readback: Subbuffer<[u32]>,
    command: Arc<PrimaryAutoCommandBuffer>,
}

impl HandLoop {
    /// Sets up `variant` of `reduce` for inputs of `input`'s length.
    fn new(variant: usize, input: &[u8]) -> Result<Self, String> {
        let e = |what: &str| {
            let what = what.to_owned();
            move |err: &dyn std::fmt::Display| format!("hand loop: {what}: {err}")
        };
        let library = VulkanLibrary::new().map_err(|x| e("loader")(&x))?;
        let instance = Instance::new(
            library,
            InstanceCreateInfo {
                flags: InstanceCreateFlags::ENUMERATE_PORTABILITY,
                ..Default::default()
            },
        )
        .map_err(|x| e("instance")(&x))?;
        let physical = instance
            .enumerate_physical_devices()
            .map_err(|x| e("devices")(&x))?
            .next()
            .ok_or("hand loop: no Vulkan device")?;
        let family = physical
            .queue_family_properties()
            .iter()
            .position(|f| f.queue_flags.intersects(QueueFlags::COMPUTE))
            .ok_or("hand loop: no compute queue")? as u32;
        // The built-in shaders' storage atomics are device scoped: with the memory model
        // on, Vulkan wants device scope too (as the engine's backend enables them).
        let supported = physical.supported_features();
        let memory_model = physical.api_version() >= Version::V1_2
            && supported.vulkan_memory_model
            && supported.vulkan_memory_model_device_scope;
        let (device, mut queues) = Device::new(
            physical,
            DeviceCreateInfo {
                queue_create_infos: vec![QueueCreateInfo {
                    queue_family_index: family,
                    ..Default::default()
                }],
                enabled_features: DeviceFeatures {
                    vulkan_memory_model: memory_model,
                    vulkan_memory_model_device_scope: memory_model,
                    ..DeviceFeatures::empty()
                },
                ..Default::default()
            },
        )
        .map_err(|x| e("device")(&x))?;
        let queue = queues.next().ok_or("hand loop: no queue")?;

        let kernel = &Reduce.variants()[variant];
        let words = kernel
            .spirv
            .clone()
            .ok_or("hand loop: the variant has no SPIR-V")?;
        // SAFETY: the words are the built-in module, valid SPIR-V (the engine's backend
        // validates the same words with SPIRV-Tools before loading them).
        let module =
            unsafe { ShaderModule::new(device.clone(), ShaderModuleCreateInfo::new(&words)) }
                .map_err(|x| e("shader")(&x))?;
        let entry = module
            .entry_point(&kernel.entry_point)
            .ok_or("hand loop: no entry point")?;
        let stage = PipelineShaderStageCreateInfo::new(entry);
        let layout = PipelineLayout::new(
            device.clone(),
            PipelineDescriptorSetLayoutCreateInfo::from_stages([&stage])
                .into_pipeline_layout_create_info(device.clone())
                .map_err(|x| e("layout")(&x))?,
        )
        .map_err(|x| e("layout")(&x))?;
        let pipeline = ComputePipeline::new(
            device.clone(),
            None,
            ComputePipelineCreateInfo::stage_layout(stage, layout.clone()),
        )
        .map_err(|x| e("pipeline")(&x))?;

        let plan = Reduce.plan(variant, input).map_err(|x| e("plan")(&x))?;
        let padded = plan.buffers[0].len();
        let memory = Arc::new(StandardMemoryAllocator::new_default(device.clone()));
        let new_buffer = |usage: BufferUsage, filter: MemoryTypeFilter, bytes: u64| {
            Buffer::new_slice::<u8>(
                memory.clone(),
                BufferCreateInfo {
                    usage,
                    ..Default::default()
                },
                AllocationCreateInfo {
                    memory_type_filter: filter,
                    ..Default::default()
                },
                bytes,
            )
            .map_err(|x| e("buffer")(&x))
        };
        let staging = new_buffer(
            BufferUsage::TRANSFER_SRC,
            MemoryTypeFilter::PREFER_HOST | MemoryTypeFilter::HOST_SEQUENTIAL_WRITE,
            padded,
        )?;
        let data = new_buffer(
            BufferUsage::STORAGE_BUFFER | BufferUsage::TRANSFER_DST,
            MemoryTypeFilter::PREFER_DEVICE,
            padded,
        )?;
        let total = new_buffer(
            BufferUsage::STORAGE_BUFFER | BufferUsage::TRANSFER_SRC | BufferUsage::TRANSFER_DST,
            MemoryTypeFilter::PREFER_DEVICE,
            4,
        )?
        .reinterpret::<[u32]>();
        let readback = new_buffer(
            BufferUsage::TRANSFER_DST,
            MemoryTypeFilter::PREFER_HOST | MemoryTypeFilter::HOST_RANDOM_ACCESS,
            4,
        )?
        .reinterpret::<[u32]>();

        let descriptors = Arc::new(StandardDescriptorSetAllocator::new(
            device.clone(),
            Default::default(),
        ));
        let set = DescriptorSet::new(
            descriptors,
            layout.set_layouts()[0].clone(),
            [
                WriteDescriptorSet::buffer(0, data.clone()),
                WriteDescriptorSet::buffer(1, total.clone()),
            ],
            [],
        )
        .map_err(|x| e("descriptor set")(&x))?;
        let commands = Arc::new(StandardCommandBufferAllocator::new(
            device.clone(),
            Default::default(),
        ));
        let mut builder =
            AutoCommandBufferBuilder::primary(commands, family, CommandBufferUsage::MultipleSubmit)
                .map_err(|x| e("command buffer")(&x))?;
        let words_pushed = u32::from_le_bytes(
            plan.push_constants[..4]
                .try_into()
                .map_err(|_| "hand loop: reduce pushes one word")?,
        );
        builder
            .fill_buffer(total.clone(), 0)
            .map_err(|x| e("fill")(&x))?
            .copy_buffer(CopyBufferInfo::buffers(staging.clone(), data))
            .map_err(|x| e("copy in")(&x))?
            .bind_pipeline_compute(pipeline.clone())
            .map_err(|x| e("bind")(&x))?
            .bind_descriptor_sets(PipelineBindPoint::Compute, layout.clone(), 0, set)
            .map_err(|x| e("bind")(&x))?
            .push_constants(layout, 0, words_pushed)
            .map_err(|x| e("push")(&x))?;
        // SAFETY: the pipeline's layout is the shader's own (made from its stage), every
        // binding is bound to a buffer the size the plan asks for, and the plan's group
        // counts are within the device's limits (the engine dispatches the same plan).
        unsafe {
            builder
                .dispatch(plan.workgroups)
                .map_err(|x| e("dispatch")(&x))?;
        }
        builder
            .copy_buffer(CopyBufferInfo::buffers(total, readback.clone()))
            .map_err(|x| e("copy out")(&x))?;
        let command = builder.build().map_err(|x| e("build")(&x))?;
        Ok(HandLoop {
            queue,
            staging,
            readback,
            command,
        })
    }

    /// One batch: the input into the staging buffer, one submit, the total back.
    fn run(&self, input: &[u8]) -> u32 {
        {
            let mut staging = self
                .staging
                .write()
                .unwrap_or_else(|x| common::fail(&format!("hand loop: staging: {x}")));
            staging[..input.len()].copy_from_slice(input);
            staging[input.len()..].fill(0);
        }
        self.command
            .clone()
            .execute(self.queue.clone())
            .unwrap_or_else(|x| common::fail(&format!("hand loop: execute: {x}")))
            .then_signal_fence_and_flush()
            .unwrap_or_else(|x| common::fail(&format!("hand loop: flush: {x}")))
            .wait(None)
            .unwrap_or_else(|x| common::fail(&format!("hand loop: wait: {x}")));
        self.readback
            .read()
            .unwrap_or_else(|x| common::fail(&format!("hand loop: readback: {x}")))[0]
    }
}

/// `PF_LARGE_BYTES`: bytes, or with a `KiB`/`MiB`/`GiB` suffix.
fn large_bytes() -> usize {
    let raw = std::env::var("PF_LARGE_BYTES").unwrap_or_else(|_| "256MiB".into());
    let (digits, unit) = raw.trim().split_at(
        raw.trim()
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(raw.trim().len()),
    );
    let scale = match unit {
        "" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => common::fail(&format!("PF_LARGE_BYTES={raw}: unknown unit {other:?}")),
    };
    digits
        .parse::<usize>()
        .map(|n| n * scale)
        .unwrap_or_else(|e| common::fail(&format!("PF_LARGE_BYTES={raw}: {e}")))
}

fn main() {
    let bytes = large_bytes();
    let input: Arc<[u8]> = Reduce.generate(InputShape::Uniform, bytes, 11).into();
    let want = Reduce.reference(&input);

    let engine = Engine::builder()
        .backend(BackendChoice::Vulkan)
        .without_autotune_file()
        .build()
        .unwrap_or_else(|e| common::fail(&format!("engine: {e}")));
    let kernel = engine
        .register(Arc::new(Reduce))
        .unwrap_or_else(|e| common::fail(&format!("register: {e}")));
    let submit = |input: &Arc<[u8]>| {
        let answer = engine
            .submit(Batch::new(kernel, Arc::clone(input)))
            .and_then(|t| t.wait())
            .unwrap_or_else(|e| common::fail(&format!("engine batch: {e}")));
        if answer.output != Output::Answer(want.clone()) {
            common::fail("the engine's answer is wrong");
        }
    };
    // Settle the verdict first: the measured batches run the variant the engine chose.
    let settle_started = Instant::now();
    let mut settled = 0;
    while settled < 200 && engine.verdict(kernel) == Some(KernelVerdict::Undecided) {
        submit(&input);
        settled += 1;
    }
    let stats = engine.kernel_stats(kernel).expect("registered");
    let variant = if stats.verdict == KernelVerdict::Adopted {
        stats.variant
    } else {
        0
    };
    let name = &Reduce.variants()[variant].name;
    println!(
        "large_batch: {} MiB, verdict {:?} after {settled} batches ({:.1} s): runs {name}",
        bytes >> 20,
        stats.verdict,
        settle_started.elapsed().as_secs_f64()
    );

    let hand = HandLoop::new(variant, &input).unwrap_or_else(|e| common::fail(&e));
    let want_total = u32::from_le_bytes(want[..4].try_into().expect("4 bytes"));
    if hand.run(&input) != want_total {
        common::fail("the hand loop's answer is wrong");
    }

    let mut criterion: Criterion = common::quick().configure_from_args();
    let group_name = "large_batch";
    let mut group = criterion.benchmark_group(group_name);
    group.sample_size(common::SAMPLES);
    common::timed(&mut group, group_name, "engine", |iters| {
        let started = Instant::now();
        for _ in 0..iters {
            submit(&input);
        }
        started.elapsed()
    });
    common::timed(&mut group, group_name, "hand-vulkano", |iters| {
        let started = Instant::now();
        for _ in 0..iters {
            std::hint::black_box(hand.run(&input));
        }
        started.elapsed()
    });
    group.finish();
    common::print_time_ratio(
        "engine vs hand-written vulkano loop",
        &format!("{group_name}/engine"),
        &format!("{group_name}/hand-vulkano"),
        "<= 1.1x",
    );
    let torch = common::read_peers("median_ns")
        .get(&("e2e_sum_u32".to_owned(), bytes as u64))
        .copied();
    match (torch, common::mean_ns(&format!("{group_name}/engine"))) {
        (Some(torch), Some(ours)) => println!(
            "RATIO engine vs PyTorch (host tensor .to(cuda), sum, .item()): {ours:.0} ns vs {torch:.0} ns = {:.3}x PyTorch's time",
            ours / torch
        ),
        _ => println!("peers: no e2e_sum_u32 line for {bytes} bytes in PF_PEERS; no PyTorch ratio"),
    }
    engine.shutdown();
}
