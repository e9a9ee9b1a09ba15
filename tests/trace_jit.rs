//! Trace-JIT pre-specialises the predicted key (SPEC §12, I2): a kernel whose
//! speculative variant is specialised per tuning key by a SPIR-V specialisation
//! constant, fed a trace that walks its sizes in order, has each next key's pipeline
//! compiled on rayon before that key's first batch — on lavapipe with a real pipeline
//! per set of values, and on the test backend with a compile of known cost. The
//! first-batch latency of a key with and without the pre-specialisation is measured
//! on both and printed as a ratio. The Vulkan backend really specialises (the values
//! reach the shader) and refuses a constant the module does not have; so does
//! registration, with `InvalidKernel`.
#![cfg(all(feature = "wgsl", feature = "vulkan"))]

#[path = "support/vulkan.rs"]
mod no_vulkan;

use std::sync::Arc;
use std::time::{Duration, Instant};

use photofinish::backend::vulkan::VulkanBackend;
use photofinish::backend::{Backend, BackendError, BindingAccess, QueueId};
use photofinish::{
    BackendChoice, Batch, BufferArg, DispatchPlan, Engine, EngineError, Event, KernelId,
    KernelVariant, Output, Specialization, TestBackend, TuningKey,
};
use spirv_tools::assembler::Assembler;

/// `out[i] = in[i] + ADD`, zeroed when `PAD` is `0xffffffff` (never, for the values
/// used here: `PAD` changes the pipeline, not the answer). `ADD` is constant 0
/// (default 1), `PAD` constant 1 (default 0).
const SPEC_SHADER: &str = r#"
               OpCapability Shader
               OpMemoryModel Logical GLSL450
               OpEntryPoint GLCompute %main "main" %gid
               OpExecutionMode %main LocalSize 64 1 1
               OpDecorate %gid BuiltIn GlobalInvocationId
               OpDecorate %add SpecId 0
               OpDecorate %pad SpecId 1
               OpDecorate %arr ArrayStride 4
               OpMemberDecorate %In 0 NonWritable
               OpMemberDecorate %In 0 Offset 0
               OpDecorate %In Block
               OpMemberDecorate %Out 0 Offset 0
               OpDecorate %Out Block
               OpDecorate %inb NonWritable
               OpDecorate %inb DescriptorSet 0
               OpDecorate %inb Binding 0
               OpDecorate %outb DescriptorSet 0
               OpDecorate %outb Binding 1
       %void = OpTypeVoid
         %fn = OpTypeFunction %void
       %uint = OpTypeInt 32 0
       %bool = OpTypeBool
     %v3uint = OpTypeVector %uint 3
  %ptr_in_v3 = OpTypePointer Input %v3uint
        %gid = OpVariable %ptr_in_v3 Input
        %arr = OpTypeRuntimeArray %uint
         %In = OpTypeStruct %arr
        %Out = OpTypeStruct %arr
     %ptr_In = OpTypePointer StorageBuffer %In
    %ptr_Out = OpTypePointer StorageBuffer %Out
        %inb = OpVariable %ptr_In StorageBuffer
       %outb = OpVariable %ptr_Out StorageBuffer
   %ptr_uint = OpTypePointer StorageBuffer %uint
     %uint_0 = OpConstant %uint 0
   %uint_max = OpConstant %uint 4294967295
        %add = OpSpecConstant %uint 1
        %pad = OpSpecConstant %uint 0
       %main = OpFunction %void None %fn
      %entry = OpLabel
          %g = OpLoad %v3uint %gid
          %i = OpCompositeExtract %uint %g 0
          %n = OpArrayLength %uint %outb 0
   %in_range = OpULessThan %bool %i %n
               OpSelectionMerge %end None
               OpBranchConditional %in_range %body %end
       %body = OpLabel
        %pin = OpAccessChain %ptr_uint %inb %uint_0 %i
          %x = OpLoad %uint %pin
          %y = OpIAdd %uint %x %add
     %is_max = OpIEqual %bool %pad %uint_max
          %z = OpSelect %uint %is_max %uint_0 %y
       %pout = OpAccessChain %ptr_uint %outb %uint_0 %i
               OpStore %pout %z
               OpBranch %end
        %end = OpLabel
               OpReturn
               OpFunctionEnd
"#;

const LAYOUT: [BindingAccess; 2] = [BindingAccess::Read, BindingAccess::Write];

/// `out[i] = in[i] + 1` on the CPU, as both variants compute it (with `ADD` at 1).
fn plus_one(buffers: &mut [Vec<u8>], _: &[u8], _: [u32; 3]) -> Result<(), String> {
    let [input, out] = buffers else {
        return Err("takes two buffers".into());
    };
    for (o, i) in out.chunks_exact_mut(4).zip(input.chunks_exact(4)) {
        let v = u32::from_le_bytes([i[0], i[1], i[2], i[3]]).wrapping_add(1);
        o.copy_from_slice(&v.to_le_bytes());
    }
    Ok(())
}

/// The speculative variant: the assembled module, bindings declared by hand, with
/// CPU code so the test backend runs it too.
fn specialised_variant() -> KernelVariant {
    let assembler = spirv_tools::assembler::create(Some(spirv_tools::TargetEnv::Vulkan_1_1));
    let binary = assembler
        .assemble(
            SPEC_SHADER,
            spirv_tools::assembler::AssemblerOptions::default(),
        )
        .expect("the shader assembles");
    let words: Arc<[u32]> = Arc::from(binary.as_words());
    KernelVariant::spirv("plus/specialised", words, [64, 1, 1], &LAYOUT, 0).with_cpu(plus_one)
}

/// The conservative variant: the same sum in WGSL.
fn plain_variant() -> KernelVariant {
    KernelVariant::wgsl(
        "plus/plain",
        "@group(0) @binding(0) var<storage, read> inb: array<u32>;
         @group(0) @binding(1) var<storage, read_write> outb: array<u32>;
         @compute @workgroup_size(64)
         fn main(@builtin(global_invocation_id) id: vec3<u32>) {
             if id.x < arrayLength(&outb) { outb[id.x] = inb[id.x] + 1u; }
         }",
        "main",
    )
    .expect("the WGSL compiles")
    .with_cpu(plus_one)
}

/// Constant 1 (`PAD`) per key: the default pick, candidate `i` (value `base + i`)
/// for size class `4 KiB × 2^i`. Each engine takes a fresh `base`, so no shader cache
/// (Mesa keeps one on disk, across processes) has its pipelines already.
fn per_key(base: u32) -> Specialization {
    Specialization::new().constant(1, "pad", &(base..base + 32).collect::<Vec<u32>>())
}

/// A base for [`per_key`]'s values no earlier engine used.
fn fresh_base() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let run = (now % 1_000_000) as u32;
    run * 64 + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) * 32 % 64
}

/// A batch whose two buffers total `4 KiB × 2^class` bytes (key `class`), input words
/// `0, 1, 2, …`.
fn batch(kernel: KernelId, class: u32) -> (Batch, Vec<u8>) {
    let words = (512u32 << class) as usize;
    let input: Vec<u8> = (0..words as u32).flat_map(|w| w.to_le_bytes()).collect();
    let expected: Vec<u8> = (0..words as u32)
        .flat_map(|w| (w + 1).to_le_bytes())
        .collect();
    let plan = DispatchPlan::new(
        vec![
            BufferArg::Data(input.into()),
            BufferArg::Zeroed(words as u64 * 4),
        ],
        [(words as u32).div_ceil(64), 1, 1],
    );
    (Batch::with_plan(kernel, plan), expected)
}

fn key(class: u32) -> TuningKey {
    TuningKey::for_bytes(4096 << class, None)
}

/// Registers the pair on `engine`, the speculative variant specialised per key with
/// values from `base`.
fn register(engine: &Engine, base: u32) -> KernelId {
    let registered = engine.register_variants_specialised(
        "plus",
        plain_variant(),
        vec![specialised_variant()],
        &[],
        vec![(1, per_key(base))],
    );
    registered.unwrap_or_else(|e| panic!("register: {e}"))
}

/// Runs the keys `classes` in order, `think` apart (an application preparing its next
/// batch), checking every answer; returns each batch's latency (submit to answer).
fn run_trace(engine: &Engine, kernel: KernelId, classes: &[u32], think: Duration) -> Vec<Duration> {
    classes
        .iter()
        .map(|&class| {
            std::thread::sleep(think);
            let (batch, expected) = batch(kernel, class);
            let started = Instant::now();
            let answer = engine
                .submit(batch)
                .and_then(|t| t.wait())
                .unwrap_or_else(|e| panic!("key {}: {e}", key(class)));
            let took = started.elapsed();
            match answer.output {
                Output::Buffers(buffers) => assert_eq!(buffers[0], expected, "key {}", key(class)),
                other => panic!("a pair answers buffers: {other:?}"),
            }
            took
        })
        .collect()
}

/// What the events say was pre-specialised (predicting key, key, constants) and what
/// became of each (key, used).
/// Also the rules the dispatch policy's audits fired.
type Pre = Vec<(TuningKey, TuningKey, Vec<(u32, u32)>)>;
type Outcomes = Vec<(Option<TuningKey>, bool)>;
fn pre_events(events: &photofinish::Subscription) -> (Pre, Outcomes, Vec<String>) {
    let (mut pre, mut outcomes, mut audits) = (Vec::new(), Vec::new(), Vec::new());
    while let Ok(event) = events.recv_timeout(Duration::from_millis(100)) {
        match event {
            Event::PolicyAudit { fired, .. } => audits.extend(fired),
            Event::KeyPreSpecialised {
                after,
                key,
                constants,
                ..
            } => pre.push((after, key, constants)),
            Event::PreSpecialisationOutcome { key, used, .. } => outcomes.push((key, used)),
            _ => {}
        }
    }
    (pre, outcomes, audits)
}

/// The sweep 4 MiB, 2 MiB, … 4 KiB (keys 10 down to 0): once the step is hot (8
/// steps, after key 2) keys 1 and 0 are pre-specialised, each before its batch, and
/// used (nothing is predicted below 4 KiB). Returns key 1's first-batch latency.
fn sweep_pre_specialises(engine: Engine, think: Duration) -> Duration {
    let events = engine.subscribe();
    let base = fresh_base();
    let kernel = register(&engine, base);
    let classes: Vec<u32> = (0..=10).rev().collect();
    let latencies = run_trace(&engine, kernel, &classes, think);
    engine.shutdown();
    let (pre, outcomes, audits) = pre_events(&events);
    // The bundle's I2 input is the same prediction: its audit fires too.
    assert!(
        audits.iter().any(|a| a.starts_with("I2 speculate:")),
        "{audits:?}"
    );
    assert_eq!(
        pre,
        vec![
            (key(2), key(1), vec![(1, base + 1)]),
            (key(1), key(0), vec![(1, base)]),
        ]
    );
    assert_eq!(outcomes, vec![(Some(key(1)), true), (Some(key(0)), true)]);
    let stats = engine.kernel_stats(kernel).expect("stats").trace;
    assert_eq!((stats.pre_used, stats.pre_wasted), (2, 0), "{stats:?}");
    assert_eq!(
        stats.hits, 2,
        "keys 1 and 0 compiled nothing on their path: {stats:?}"
    );
    println!(
        "  compile cost {} µs, miss cost {} µs (measured)",
        stats.compile_cost_ns / 1_000,
        stats.miss_cost_ns / 1_000
    );
    latencies[9]
}

/// Keys 2, 3, … 10 then 1: no step leads to 1, so its batch compiles its pipeline on
/// its path. Returns key 1's first-batch latency.
fn unpredicted_key(engine: Engine, think: Duration) -> Duration {
    let events = engine.subscribe();
    let kernel = register(&engine, fresh_base());
    let classes: Vec<u32> = (2..=10).chain([1]).collect();
    let latencies = run_trace(&engine, kernel, &classes, think);
    engine.shutdown();
    let (pre, _, _) = pre_events(&events);
    assert!(
        !pre.iter().any(|(_, k, _)| *k == key(1)),
        "nothing predicted key 1: {pre:?}"
    );
    let stats = engine.kernel_stats(kernel).expect("stats").trace;
    assert_eq!(
        (stats.hits, stats.misses),
        (0, 10),
        "every batch, key 1's too, compiled its pipeline on its path: {stats:?}"
    );
    latencies[9]
}

fn test_engine(backend: &Arc<TestBackend>) -> Engine {
    Engine::builder()
        .backend_instance(Arc::clone(backend) as _)
        .without_autotune_file()
        .build()
        .expect("engine")
}

#[test]
fn a_sweep_has_each_next_key_pre_specialised_before_its_batch_on_the_test_backend() {
    // A compile takes 20 ms; the application thinks 30 ms between batches.
    let think = Duration::from_millis(30);
    let backend = Arc::new(TestBackend::new(1, 1, 1));
    backend.set_load_ns(20_000_000);
    let with = sweep_pre_specialises(test_engine(&backend), think);
    // Key 1 was compiled on rayon before its batch; key 2 by its own batch.
    let loads = backend.loads();
    let by = |at: usize| {
        loads
            .iter()
            .filter(|l| !l.constants.is_empty())
            .nth(at)
            .map(|l| l.on_rayon)
    };
    assert_eq!(
        (by(8), by(9), by(10)),
        (Some(false), Some(true), Some(true)),
        "{loads:?}"
    );
    let backend = Arc::new(TestBackend::new(1, 1, 1));
    backend.set_load_ns(20_000_000);
    let without = unpredicted_key(test_engine(&backend), think);
    let last = backend
        .loads()
        .into_iter()
        .rfind(|l| !l.constants.is_empty())
        .expect("key 1's pipeline was compiled");
    assert!(!last.on_rayon, "compiled by its batch: {last:?}");
    let ratio = without.as_secs_f64() / with.as_secs_f64();
    println!(
        "test backend, 20 ms compile: key 1 (8 KiB) first batch {with:?} pre-specialised, {without:?} not: {ratio:.1}x"
    );
    assert!(
        without >= Duration::from_millis(20) && ratio > 2.0,
        "{without:?} vs {with:?}"
    );
}

#[test]
fn a_sweep_has_each_next_key_pre_specialised_before_its_batch_on_vulkan() {
    // lavapipe compiles this shader in about 1.3 ms, within the noise of one 8 KiB
    // batch on a busy 2-core machine: the latencies are medians of `ROUNDS` fresh
    // engines each, reported, not asserted (what is asserted is that the
    // pre-specialised key compiled nothing on its path and the other did).
    const ROUNDS: usize = 5;
    let think = Duration::from_millis(20);
    let vulkan = |what: &str| match Engine::builder()
        .backend(BackendChoice::Vulkan)
        .without_autotune_file()
        .build()
    {
        Ok(engine) => Some(engine),
        Err(e) => {
            no_vulkan::skip_or_fail(&format!("{what}: {e}"));
            None
        }
    };
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let Some(engine) = vulkan("with") else {
            return;
        };
        with.push(sweep_pre_specialises(engine, think));
        let Some(engine) = vulkan("without") else {
            return;
        };
        without.push(unpredicted_key(engine, think));
    }
    with.sort();
    without.sort();
    let (with, without) = (with[ROUNDS / 2], without[ROUNDS / 2]);
    println!(
        "vulkan: key 1 (8 KiB) first batch, median of {ROUNDS}: {with:?} pre-specialised, {without:?} compiled on its path: {:.2}x",
        without.as_secs_f64() / with.as_secs_f64()
    );
}

#[test]
fn the_vulkan_backend_compiles_one_pipeline_per_set_of_values_and_the_values_reach_the_shader() {
    let Some(backend) = no_vulkan::require(VulkanBackend::new()) else {
        return;
    };
    let variant = specialised_variant();
    let load = |constants: &[(u32, u32)]| {
        backend
            .load_kernel_specialised(0, &variant, constants)
            .expect("loads")
    };
    let (five, seven) = (load(&[(0, 5)]), load(&[(0, 7)]));
    assert_ne!(five, seven, "one pipeline per set of values");
    assert_eq!(five, load(&[(0, 5)]), "the same values: the same pipeline");
    let queue = QueueId {
        device: 0,
        family: backend.queues()[0].family,
        index: backend.queues()[0].index,
    };
    for (handle, add) in [(five, 5u32), (seven, 7)] {
        let input: Vec<u8> = (0..256u32).flat_map(|w| w.to_le_bytes()).collect();
        let plan = DispatchPlan::new(
            vec![BufferArg::Data(input.into()), BufferArg::Zeroed(1024)],
            [4, 1, 1],
        );
        let out = backend
            .dispatch(&[plan.into_job(queue, handle)])
            .pop()
            .expect("one result")
            .expect("runs");
        let got: Vec<u32> = out.outputs[0]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(got, (0..256u32).map(|w| w + add).collect::<Vec<_>>());
    }
    let unknown = backend.load_kernel_specialised(0, &variant, &[(9, 1)]);
    assert!(
        matches!(&unknown, Err(BackendError::InvalidSpirv { reason, .. }) if reason.contains("no specialisation constant 9")),
        "{unknown:?}"
    );
}

#[test]
fn registration_refuses_a_constant_id_the_spirv_does_not_have() {
    let engine = Engine::builder()
        .backend(BackendChoice::Cpu)
        .without_autotune_file()
        .build()
        .expect("the CPU backend opens");
    assert_eq!(
        specialised_variant().specialisation_constant_ids(),
        vec![0, 1]
    );
    let refused = engine.register_variants_specialised(
        "plus",
        plain_variant(),
        vec![specialised_variant()],
        &[],
        vec![(1, Specialization::new().constant(4, "unroll", &[1, 2]))],
    );
    match refused {
        Err(EngineError::InvalidKernel { reason, .. }) => {
            assert!(
                reason.contains("specialisation constant 4") && reason.contains("[0, 1]"),
                "{reason}"
            )
        }
        other => panic!("expected InvalidKernel: {other:?}"),
    }
}
