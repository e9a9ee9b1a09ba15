//! Embedding photofinish with your own kernel pair, loaded from SPIR-V files.
//!
//! ```text
//! cargo run --release --example embed_spirv                       # the shipped pair
//! cargo run --release --example embed_spirv -- cons.spv spec.spv  # your own .spv files
//! ```
//!
//! The pair computes `y[i] = a * x[i] + b` over `u32` (wrapping): a conservative
//! variant (one element per invocation, workgroup 64) and a speculative one (packed
//! vec4 loads, workgroup 256). Without arguments, the WGSL sources shipped in
//! `examples/shaders/` are compiled with naga into `.spv` files in a temporary
//! directory first, and those files are what gets loaded, exactly as files produced by
//! any other shader compiler would be; their layout is reflected from the modules
//! (`KernelVariant::from_spirv`). Your own files must keep the layout: binding 0
//! read-only input (`array<u32>`, padded to 16 bytes), binding 1 output (`array<u32>`),
//! 12 bytes of push constants `{ n, a, b }`, entry point `main`.
//!
//! The program builds an engine (Vulkan where there is a driver, otherwise the CPU
//! backend, using the CPU code given with each variant), registers the pair, submits
//! batches from four threads, checks every answer against a CPU computation, and
//! prints every event the engine publishes (backend chosen, verdict changes,
//! mismatches) from a fifth thread.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use photofinish::backend::{BindingAccess, BufferArg, KernelVariant};
use photofinish::kernels::DispatchPlan;
use photofinish::{Batch, Engine, Event, KernelId, Output};

/// Submitting threads, and batches each submits.
const THREADS: u64 = 4;
const BATCHES_PER_THREAD: u64 = 16;
/// Elements per batch.
const ELEMENTS: usize = 64 * 1024;
/// `y = A * x + B`.
const A: u32 = 2_654_435_761;
const B: u32 = 12_345;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// A variant's CPU code: buffers in binding order, push constants, workgroup count.
type CpuCode = fn(&mut [Vec<u8>], &[u8], [u32; 3]) -> Result<(), String>;

fn main() -> Result<(), Error> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let (conservative_spv, speculative_spv, scratch) = match args.as_slice() {
        [] => compile_shipped_pair()?,
        [c, s] => (c.clone(), s.clone(), None),
        _ => return Err("usage: embed_spirv [CONSERVATIVE.spv SPECULATIVE.spv]".into()),
    };
    let conservative = variant("affine/scalar", &conservative_spv, affine_cpu)?;
    let speculative = variant("affine/vec4", &speculative_spv, affine_cpu)?;
    if let Some(dir) = scratch {
        // Loaded: the compiled files are no longer needed.
        let _ = std::fs::remove_dir_all(dir);
    }

    let engine = Engine::builder().build()?;
    let events = engine.subscribe();
    let printer = std::thread::spawn(move || {
        // Ends when the engine shuts down and drops its side of the channel.
        for event in events {
            match event {
                Event::BackendSelected {
                    kind,
                    devices,
                    reason,
                } => {
                    println!("event: backend {kind} on {devices:?} ({reason})")
                }
                Event::VerdictChanged {
                    name,
                    from,
                    to,
                    reason,
                    ..
                } => {
                    println!("event: `{name}` verdict {from} -> {to} ({reason:?})")
                }
                Event::MismatchCaught { name, queue, .. } => {
                    println!("event: `{name}` speculative variant disagreed on {queue}; discarded")
                }
                other => println!("event: {other:?}"),
            }
        }
    });

    let kernel = engine.register_pair("affine", conservative, speculative)?;

    let engine = Arc::new(engine);
    let submitters: Vec<_> = (0..THREADS)
        .map(|t| {
            let engine = Arc::clone(&engine);
            std::thread::spawn(move || submit_and_check(&engine, kernel, t))
        })
        .collect();
    let mut checked = 0;
    for s in submitters {
        checked += s.join().map_err(|_| "a submitting thread panicked")??;
    }
    println!(
        "{checked} answers checked against the CPU; final verdict of `affine`: {:?}",
        engine.verdict(kernel)
    );

    engine.shutdown();
    drop(engine);
    // The printer ends once the engine is gone; don't hang if someone still holds it.
    for _ in 0..50 {
        if printer.is_finished() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// One thread's batches: submit them all, then wait for each answer and check it.
fn submit_and_check(engine: &Engine, kernel: KernelId, thread: u64) -> Result<u64, Error> {
    let mut tickets = Vec::new();
    for i in 0..BATCHES_PER_THREAD {
        let x = input(thread * 1_000 + i);
        let batch = Batch::with_plan(kernel, plan(&x));
        tickets.push((engine.submit(batch)?, x));
    }
    let mut checked = 0;
    for (ticket, x) in tickets {
        let answer = ticket.wait()?;
        let expected: Vec<u8> = x.iter().flat_map(|v| affine(*v).to_le_bytes()).collect();
        match answer.output {
            Output::Buffers(buffers) if buffers.first() == Some(&expected[..]) => checked += 1,
            other => return Err(format!("wrong answer from {:?}: {other:?}", answer.arm).into()),
        }
    }
    Ok(checked)
}

fn affine(x: u32) -> u32 {
    A.wrapping_mul(x).wrapping_add(B)
}

/// Random input, reproducible per seed.
fn input(seed: u64) -> Vec<u32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..ELEMENTS).map(|_| rng.u32(..)).collect()
}

/// The batch's buffers: the input padded to whole 16-byte vectors, the output, and the
/// push constants `{ n, a, b }`.
fn plan(x: &[u32]) -> DispatchPlan {
    let mut bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    bytes.resize(bytes.len().div_ceil(16).max(1) * 16, 0);
    let n = u32::try_from(x.len()).unwrap_or(u32::MAX);
    let push_constants = [n, A, B].iter().flat_map(|v| v.to_le_bytes()).collect();
    DispatchPlan {
        buffers: vec![
            BufferArg::Data(bytes.into()),
            BufferArg::Zeroed(x.len() as u64 * 4),
        ],
        push_constants,
        workgroups: [n.div_ceil(256).clamp(1, 65_535), 1, 1],
    }
}

/// The CPU code of both variants (the CPU backend runs it; Vulkan runs the SPIR-V).
fn affine_cpu(buffers: &mut [Vec<u8>], push: &[u8], _groups: [u32; 3]) -> Result<(), String> {
    let word = |i: usize| {
        push.get(i * 4..i * 4 + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or("push constants are shorter than 12 bytes")
    };
    let (n, a, b) = (word(0)? as usize, word(1)?, word(2)?);
    let [x, y] = buffers else {
        return Err("expected two buffers".into());
    };
    for (out, inp) in y.chunks_exact_mut(4).zip(x.chunks_exact(4)).take(n) {
        let v = u32::from_le_bytes([inp[0], inp[1], inp[2], inp[3]]);
        out.copy_from_slice(&a.wrapping_mul(v).wrapping_add(b).to_le_bytes());
    }
    Ok(())
}

/// A variant whose GPU code is the SPIR-V in `path`, its bindings, workgroup size and
/// push constants reflected from the module (naga).
fn variant(name: &str, path: &Path, cpu: CpuCode) -> Result<KernelVariant, Error> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() % 4 != 0 {
        return Err(format!(
            "{} is not SPIR-V: its length is not whole words",
            path.display()
        )
        .into());
    }
    let words: Arc<[u32]> = bytes
        .chunks_exact(4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect();
    let variant = KernelVariant::from_spirv(name, words, "main")?;
    let layout: Vec<_> = variant.bindings.iter().map(|b| b.access).collect();
    if layout != [BindingAccess::Read, BindingAccess::Write] || variant.push_constant_bytes != 12 {
        return Err(format!(
            "{} does not have the pair's layout (binding 0 read, binding 1 written, 12 bytes \
             of push constants): it has {layout:?} and {} bytes",
            path.display(),
            variant.push_constant_bytes
        )
        .into());
    }
    Ok(variant.with_cpu(cpu))
}

/// Compiles `examples/shaders/affine_{scalar,vec4}.wgsl` to `.spv` files with naga and
/// returns their paths and the scratch directory that holds them.
fn compile_shipped_pair() -> Result<(PathBuf, PathBuf, Option<PathBuf>), Error> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/shaders");
    let out = std::env::temp_dir().join(format!("photofinish-embed-{}", std::process::id()));
    std::fs::create_dir_all(&out)?;
    let mut paths = Vec::new();
    for stem in ["affine_scalar", "affine_vec4"] {
        let wgsl_path = src.join(format!("{stem}.wgsl"));
        let source = std::fs::read_to_string(&wgsl_path)
            .map_err(|e| format!("cannot read {}: {e}", wgsl_path.display()))?;
        let module = naga::front::wgsl::parse_str(&source)
            .map_err(|e| e.emit_to_string_with_path(&source, &wgsl_path.display().to_string()))?;
        let info = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::IMMEDIATES,
        )
        .validate(&module)
        .map_err(|e| format!("{stem}.wgsl is invalid: {e}"))?;
        let options = naga::back::spv::Options {
            lang_version: (1, 3),
            ..Default::default()
        };
        let words = naga::back::spv::write_vec(&module, &info, &options, None)?;
        let path = out.join(format!("{stem}.spv"));
        std::fs::write(
            &path,
            words
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect::<Vec<u8>>(),
        )?;
        println!("compiled {} -> {}", wgsl_path.display(), path.display());
        paths.push(path);
    }
    match <[PathBuf; 2]>::try_from(paths) {
        Ok([c, s]) => Ok((c, s, Some(out))),
        Err(_) => Err("expected two compiled shaders".into()),
    }
}
