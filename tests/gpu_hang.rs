//! A GPU kernel that never returns, on a real Vulkan device (lavapipe is enough): the
//! fence wait gives up after the dispatch timeout, the batch gets a typed error, and
//! `shutdown` and the engine's drop return. Alone in its binary: the device keeps
//! running the kernel until the process exits (on lavapipe, one CPU thread spins).
#![cfg(feature = "vulkan")]

#[path = "support/vulkan.rs"]
mod no_vulkan;
#[path = "support/watchdog.rs"]
mod watchdog;

use std::sync::Arc;
use std::time::{Duration, Instant};

use photofinish::backend::{BindingAccess, BufferArg, KernelVariant};
use photofinish::kernels::DispatchPlan;
use photofinish::{BackendChoice, Batch, Engine, EngineError};
use watchdog::watchdog;

const TIMEOUT: Duration = Duration::from_secs(1);
const MARGIN: Duration = Duration::from_secs(3);

/// WGSL → SPIR-V through naga, as the build does for the built-in shaders.
fn spirv(src: &str) -> Arc<[u32]> {
    let module = naga::front::wgsl::parse_str(src).expect("test WGSL parses");
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module)
    .expect("test WGSL validates");
    naga::back::spv::write_vec(&module, &info, &naga::back::spv::Options::default(), None)
        .expect("SPIR-V is written")
        .into()
}

/// Loops until its input's first word is a value the test never passes: no compiler
/// can prove the loop ends. lavapipe (llvmpipe) ends any loop after 65 535 iterations
/// (about 60 ms here), so no kernel of one workgroup can run for ever there; the test
/// dispatches 65 535 × 65 535 workgroups of it instead, some 8 000 years of work on a
/// 32-core machine, which is as good as for ever.
const LOOPS: &str = r#"
@group(0) @binding(0) var<storage, read> input: array<u32>;
@group(0) @binding(1) var<storage, read_write> output: array<u32>;
@compute @workgroup_size(1)
fn main() {
    var n = 0u;
    loop {
        if (input[0] == 0xdeadbeefu) { break; }
        n = n + 1u;
        output[0] = n;
    }
}
"#;

const COPIES: &str = r#"
@group(0) @binding(0) var<storage, read> input: array<u32>;
@group(0) @binding(1) var<storage, read_write> output: array<u32>;
@compute @workgroup_size(1)
fn main() {
    output[0] = input[0];
}
"#;

fn variant(name: &str, src: &str) -> KernelVariant {
    KernelVariant::spirv(
        name,
        spirv(src),
        [1, 1, 1],
        &[BindingAccess::Read, BindingAccess::ReadWrite],
        0,
    )
}

fn plan() -> DispatchPlan {
    DispatchPlan {
        buffers: vec![
            BufferArg::Data(vec![1, 0, 0, 0].into()),
            BufferArg::Data(vec![0; 4].into()),
        ],
        push_constants: Vec::new(),
        workgroups: [65_535, 65_535, 1],
    }
}

#[test]
fn a_gpu_kernel_that_never_returns_times_out_with_a_typed_error_and_shutdown_returns() {
    let _guard = watchdog("hanging GPU kernel", Duration::from_secs(120));
    let built = Engine::builder()
        .backend(BackendChoice::Vulkan)
        .without_autotune_file()
        .dispatch_timeout(TIMEOUT)
        .build();
    let Some(engine) = no_vulkan::require(built) else {
        return;
    };
    let k = engine
        .register_pair(
            "hang",
            variant("hang/loops", LOOPS),
            variant("hang/copies", COPIES),
        )
        .expect("both shaders load");
    let started = Instant::now();
    let err = engine
        .submit(Batch::with_plan(k, plan()))
        .unwrap()
        .wait()
        .unwrap_err();
    let waited = started.elapsed();
    match &err {
        EngineError::DispatchTimedOut {
            kernel,
            variant,
            after,
        } => {
            assert_eq!(kernel, "hang");
            assert_eq!(variant, "hang/loops");
            assert_eq!(*after, TIMEOUT);
        }
        other => panic!("expected DispatchTimedOut, got {other}"),
    }
    assert!(waited >= TIMEOUT, "gave up after {waited:?}");
    assert!(waited < TIMEOUT + MARGIN, "gave up only after {waited:?}");
    // The device still runs the kernel (nothing in Vulkan stops a dispatch), so it is
    // given up on: the next batch is refused at once.
    let started = Instant::now();
    let err = engine.submit(Batch::with_plan(k, plan())).unwrap_err();
    assert!(
        matches!(err, EngineError::DeviceLost { device: 0 }),
        "{err}"
    );
    assert!(started.elapsed() < TIMEOUT, "{:?}", started.elapsed());
    let started = Instant::now();
    engine.shutdown();
    drop(engine);
    assert!(
        started.elapsed() < MARGIN,
        "shutdown and drop took {:?}",
        started.elapsed()
    );
}
