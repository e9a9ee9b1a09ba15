//! Malformed SPIR-V never kills the process (issue #25, SPEC §11): every module a user
//! registers goes through SPIRV-Tools' validator before vulkano or the driver sees it.
//!
//! The corpus test registers a seeded corpus of mutants of the built-in shaders (bit
//! flips, word replacements, truncations, inserted and deleted words) with
//! `Engine::register_pair` on the Vulkan backend, and runs each accepted one once on a
//! small batch. It does so in a CHILD process — this test binary re-executed with
//! [`CHILD_ENV`] set, as `tests/crash_safety.rs` does — whose panic hook aborts the
//! process: any panic, even one the engine would catch, kills it, which is also what a
//! `panic = "abort"` build would do. The child prints the index of each mutant before
//! trying it; the parent restarts the child after a mutant that killed it, and fails
//! naming the seed and index of every mutant that did.
//!
//! Without a Vulkan device these tests FAIL, unless `PHOTOFINISH_ALLOW_NO_VULKAN=1` is
//! set (the rule of `tests/vulkan_backend.rs`).
#![cfg(feature = "vulkan")]

#[path = "support/vulkan.rs"]
mod no_vulkan;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use photofinish::backend::{BackendError, KernelVariant};
use photofinish::kernels::{builtin, InputShape, Workload};
use photofinish::{BackendChoice, Batch, Engine, EngineError};

/// Set in a child's environment to what it must do: `corpus:<first index>`,
/// `truncated`, or `vulkano-parses:<index>`.
const CHILD_ENV: &str = "PHOTOFINISH_SPIRV_CHILD";
/// The corpus' seed: mutant `i` is made by a generator seeded with `SEED` and `i`.
const SEED: u64 = 0x5eed_5b1f_0000_0025;
/// Mutants in the corpus.
const MUTANTS: usize = 2_000;
/// Bytes of input for the batch each accepted mutant runs.
const INPUT_BYTES: usize = 4_096;
/// A child that prints nothing for this long is killed (its own deadline for a kernel
/// that never returns did not fire either) and counted as a death. Registration has no
/// deadline of its own: lavapipe compiling `histogram/lane-columns` mutants took over
/// 5 s with three builds beside the test, so the bound is generous; a compile that
/// truly hangs still ends the child and fails the test.
const SILENT_AFTER: Duration = Duration::from_secs(30);
/// The whole corpus test fails rather than hangs after this long. It takes 20–40 s on
/// an idle 2-core machine and up to 150 s beside a build (ten stuck kernels at their
/// 2 s deadline, and sixteen child processes each opening lavapipe).
const WATCHDOG: Duration = Duration::from_secs(420);

/// What the child prints before trying mutant `i`.
const TRYING: &str = "trying";
/// What the child prints after mutant `i`: the outcome.
const OUTCOME: &str = "outcome";
/// What the child prints when mutant `i`'s batch did not answer within
/// [`KERNEL_DEADLINE`], before it exits.
const STUCK: &str = "stuck";
/// How long the child waits for an accepted mutant's batch (a correct one takes
/// milliseconds).
const KERNEL_DEADLINE: Duration = Duration::from_secs(2);
/// What the child's panic hook prints (before aborting).
const PANICKED: &str = "PANICKED";
/// What the child prints when it finished its work.
const FINISHED: &str = "finished";

/// The built-in variants with SPIR-V, with their workload and variant index.
fn originals() -> Vec<(Arc<dyn Workload>, usize, KernelVariant)> {
    // The corpus is fixed: the modules of these three workloads (`sum`, added to
    // `builtin()` later, would reseed every mutant and change the outcomes that
    // RELIABILITY.md records).
    builtin()
        .into_iter()
        .filter(|w| ["histogram", "reduce", "scan"].contains(&w.name()))
        .flat_map(|w| {
            w.variants()
                .into_iter()
                .enumerate()
                .filter(|(_, v)| v.spirv.is_some())
                .map(move |(i, v)| (w.clone(), i, v))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// One mutation of a module's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mutation {
    /// Bit `bit` of word `at` flipped.
    BitFlip { at: usize, bit: u32 },
    /// Word `at` replaced by `with`.
    Replace { at: usize, with: u32 },
    /// The module cut to its first `keep` words.
    Truncate { keep: usize },
    /// The value word `at` of an `OpConstant` replaced by `with`.
    Constant { at: usize, with: u32 },
    /// `word` inserted before word `at`.
    Insert { at: usize, word: u32 },
    /// Word `at` deleted.
    Delete { at: usize },
}

impl Mutation {
    fn apply(self, words: &mut Vec<u32>) {
        match self {
            Mutation::BitFlip { at, bit } => words[at] ^= 1 << bit,
            Mutation::Replace { at, with } | Mutation::Constant { at, with } => words[at] = with,
            Mutation::Truncate { keep } => words.truncate(keep),
            Mutation::Insert { at, word } => words.insert(at, word),
            Mutation::Delete { at } => {
                words.remove(at);
            }
        }
    }

    /// A random mutation of `words` (which are not empty). One in ten changes the value
    /// of an `OpConstant` (loop bounds, indices, sizes): those mostly pass the
    /// validator, and are what reaches the driver with out-of-range values.
    fn random(rng: &mut fastrand::Rng, words: &[u32]) -> Mutation {
        let constants = constant_values(words);
        if !constants.is_empty() && rng.u8(..10) == 0 {
            let at = constants[rng.usize(..constants.len())];
            let old = words[at];
            let with = match rng.u8(..6) {
                0 => [0, 1, 2, 3, 255, 256, 257, 4096][rng.usize(..8)],
                1 => [u32::MAX, u32::MAX - 1, 0x8000_0000, 0x7fff_ffff][rng.usize(..4)],
                2 => old.wrapping_add(1),
                3 => old.wrapping_sub(1),
                4 => old.wrapping_mul(2 + rng.u32(..16)),
                _ => rng.u32(..),
            };
            return Mutation::Constant { at, with };
        }
        let at = rng.usize(..words.len());
        match rng.u8(..10) {
            0..=3 => Mutation::BitFlip {
                at,
                bit: rng.u32(..32),
            },
            4..=6 => Mutation::Replace {
                at,
                with: replacement(rng, words),
            },
            7 => Mutation::Truncate { keep: at },
            8 => Mutation::Insert {
                at,
                word: replacement(rng, words),
            },
            _ => Mutation::Delete { at },
        }
    }
}

/// The positions of the (first) value word of every 32-bit-or-wider `OpConstant` in
/// `words`; none where the module cannot be walked.
fn constant_values(words: &[u32]) -> Vec<usize> {
    const OP_CONSTANT: u32 = 43;
    let mut out = Vec::new();
    let mut at = 5;
    while at < words.len() {
        let count = (words[at] >> 16) as usize;
        if count == 0 || at + count > words.len() {
            return Vec::new();
        }
        if words[at] & 0xffff == OP_CONSTANT && count >= 4 {
            out.push(at + 3);
        }
        at += count;
    }
    out
}

/// A word to put in a module: small numbers (ids, literals, opcodes' operands), a word
/// of the module itself (an existing id, opcode or type), or anything.
fn replacement(rng: &mut fastrand::Rng, words: &[u32]) -> u32 {
    match rng.u8(..3) {
        0 => rng.u32(..64),
        1 => words[rng.usize(..words.len())],
        _ => rng.u32(..),
    }
}

/// Mutant `index` of the corpus: which original it comes from and its mutations.
#[derive(Debug, Clone)]
struct Mutant {
    original: usize,
    mutations: Vec<Mutation>,
    words: Vec<u32>,
}

/// Mutant `index`, from a generator seeded by [`SEED`] and `index` alone (so a child
/// can start anywhere and a failure replays from its index).
fn mutant(originals: &[(Arc<dyn Workload>, usize, KernelVariant)], index: usize) -> Mutant {
    let mut rng =
        fastrand::Rng::with_seed(SEED ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let original = rng.usize(..originals.len());
    let mut words = originals[original]
        .2
        .spirv
        .as_deref()
        .unwrap_or(&[])
        .to_vec();
    let count = match rng.u8(..10) {
        0..=6 => 1,
        7 | 8 => 2,
        _ => 3,
    };
    let mut mutations = Vec::new();
    for _ in 0..count {
        if words.is_empty() {
            break;
        }
        let m = Mutation::random(&mut rng, &words);
        m.apply(&mut words);
        mutations.push(m);
    }
    Mutant {
        original,
        mutations,
        words,
    }
}

/// The child's panic hook: say so on stdout and abort, so any panic kills the process.
fn abort_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{PANICKED} {}", info.to_string().replace('\n', " | "));
        let _ = out.flush();
        std::process::abort();
    }));
}

/// A Vulkan engine, or `None` when there is no device and skipping is allowed.
fn vulkan_engine() -> Option<Engine> {
    match Engine::builder()
        .backend(BackendChoice::Vulkan)
        .without_autotune_file()
        .build()
    {
        Ok(engine) => Some(engine),
        Err(e @ EngineError::NoBackend(_)) => {
            no_vulkan::skip_or_fail(&e);
            None
        }
        Err(e) => panic!("no Vulkan engine: {e}"),
    }
}

/// The outcome word of a registration refused for `e`.
fn refusal(e: &EngineError) -> &'static str {
    let EngineError::Backend { source, .. } = e else {
        return "engine-error";
    };
    match source {
        BackendError::InvalidSpirv { reason, .. } if reason.contains("SPIRV-Tools' validator") => {
            "invalid-spirv"
        }
        BackendError::InvalidSpirv { reason, .. } if reason.contains("vulkano panicked") => {
            "vulkano-panicked"
        }
        BackendError::InvalidSpirv { reason, .. } if reason.contains("entry point") => {
            "no-entry-point"
        }
        BackendError::InvalidSpirv { .. } => "invalid-spirv-for-vulkano",
        BackendError::BindingMismatch { .. } => "binding-mismatch",
        BackendError::Unsupported { .. } => "unsupported",
        BackendError::DispatchTooLarge { .. } => "too-large",
        _ => "backend-error",
    }
}

/// The corpus child: mutants `first..MUTANTS`, each registered (mutant as the
/// conservative variant, so it is the one that always runs) and, when accepted, run
/// once. Prints `trying i` before and `outcome i <what>` after each.
fn corpus_child(first: usize, run: bool) {
    abort_on_panic();
    let originals = originals();
    let Some(engine) = vulkan_engine() else {
        println!("{FINISHED}");
        return;
    };
    let mut out = std::io::stdout().lock();
    for index in first..MUTANTS {
        let _ = writeln!(out, "{TRYING} {index}");
        let _ = out.flush();
        let m = mutant(&originals, index);
        let (workload, variant, original) = &originals[m.original];
        let mutated = KernelVariant {
            name: format!("{}#{index}", original.name),
            spirv: Some(m.words.into()),
            ..original.clone()
        };
        let outcome =
            match engine.register_pair(&format!("mutant-{index}"), mutated, original.clone()) {
                Err(e) => refusal(&e).to_string(),
                Ok(_) if !run => "accepted".to_string(),
                Ok(kernel) => {
                    let input = workload.generate(InputShape::Uniform, INPUT_BYTES, index as u64);
                    match workload.plan(*variant, &input) {
                        Err(_) => "accepted-no-plan".to_string(),
                        Ok(plan) => match engine.submit(Batch::with_plan(kernel, plan)) {
                            Err(_) => "accepted-not-submitted".to_string(),
                            Ok(ticket) => match ticket.wait_timeout(KERNEL_DEADLINE) {
                                Some(Ok(_)) => "accepted-ran".to_string(),
                                Some(Err(_)) => "accepted-run-failed".to_string(),
                                None => {
                                    // Its kernel does not return (a loop whose bound the
                                    // mutation broke): the queue is held for good, so this
                                    // child is done; the parent goes on after it.
                                    let _ = writeln!(out, "{STUCK} {index}");
                                    let _ = out.flush();
                                    std::process::exit(0);
                                }
                            },
                        },
                    }
                }
            };
        let _ = writeln!(out, "{OUTCOME} {index} {outcome}");
        let _ = out.flush();
    }
    engine.shutdown();
    let _ = writeln!(out, "{FINISHED}");
    let _ = out.flush();
}

/// This test binary re-executed to run only `test`, with [`CHILD_ENV`] set to `mode`;
/// stdout and stderr piped.
fn spawn_child(test: &str, mode: &str) -> Child {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, mode)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("re-executing the test binary works")
}

/// How one child's run of the corpus ended.
#[derive(Debug)]
enum ChildEnd {
    /// It tried every mutant from its first to the last.
    Finished,
    /// Mutant `index` killed it (or silenced it for [`SILENT_AFTER`]): `what` is the
    /// panic, or the exit status and stderr.
    Died { index: usize, what: String },
    /// Mutant `index`'s kernel did not return within [`KERNEL_DEADLINE`].
    Stuck { index: usize },
}

/// Runs the corpus from `first` in one child, adding each outcome to `tally`.
fn run_child(phase: &str, first: usize, tally: &mut BTreeMap<String, usize>) -> ChildEnd {
    let mut child = spawn_child(
        "a_seeded_corpus_of_mutated_builtin_modules_never_kills_or_panics",
        &format!("{phase}:{first}"),
    );
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The last lines of stderr, for the report of a death (what the driver said).
    let err_tail = std::thread::spawn(move || {
        let mut lines: Vec<String> = BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect();
        lines.drain(..lines.len().saturating_sub(5));
        lines.join(" | ")
    });
    let mut current = first;
    let mut panicked = None;
    let mut finished = false;
    let mut stuck = false;
    let mut silent = false;
    loop {
        match rx.recv_timeout(SILENT_AFTER) {
            Ok(line) => {
                let mut parts = line.splitn(3, ' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(TRYING), Some(i), _) => current = i.parse().unwrap_or(current),
                    (Some(OUTCOME), Some(_), Some(what)) => {
                        *tally.entry(what.to_string()).or_default() += 1;
                    }
                    (Some(STUCK), _, _) => stuck = true,
                    (Some(PANICKED), _, _) => panicked = Some(line.clone()),
                    (Some(FINISHED), _, _) => finished = true,
                    _ => {}
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Not even the child's own deadline fired (or its exit hangs): kill it.
                let _ = child.kill();
                silent = true;
                break;
            }
        }
    }
    let status = child.wait().expect("reap the child");
    let err_tail = err_tail.join().unwrap_or_default();
    if stuck && panicked.is_none() {
        *tally.entry("accepted-stuck".to_string()).or_default() += 1;
        return ChildEnd::Stuck { index: current };
    }
    if finished && status.success() {
        return ChildEnd::Finished;
    }
    ChildEnd::Died {
        index: current,
        what: match panicked {
            Some(p) => p,
            None if silent => format!("the child printed nothing for {SILENT_AFTER:?}"),
            None => format!("the process died ({status}); stderr ended: {err_tail}"),
        },
    }
}

#[test]
fn a_seeded_corpus_of_mutated_builtin_modules_never_kills_or_panics() {
    if let Ok(what) = std::env::var(CHILD_ENV) {
        if let Some(first) = what.strip_prefix("load:") {
            corpus_child(first.parse().expect("a corpus start index"), false);
        }
        if let Some(first) = what.strip_prefix("run:") {
            corpus_child(first.parse().expect("a corpus start index"), true);
        }
        return;
    }
    // Without a device the child would skip; the parent fails (or skips) here.
    let Some(engine) = vulkan_engine() else {
        return;
    };
    engine.shutdown();
    std::thread::spawn(|| {
        std::thread::sleep(WATCHDOG);
        eprintln!("spirv corpus watchdog: the test ran past {WATCHDOG:?}");
        std::process::exit(101);
    });

    let started = Instant::now();
    let originals = originals();
    let describe = |index: usize| {
        let m = mutant(&originals, index);
        format!(
            "seed {SEED:#x} index {index} ({} with {:?})",
            originals[m.original].2.name, m.mutations
        )
    };
    // Phase 1, "load": every mutant registered, none run. A death here is a module
    // that got past the validator and crashed vulkano or the driver's compiler.
    let mut loads = BTreeMap::new();
    let mut deaths = Vec::new();
    let mut children = 0;
    let mut first = 0;
    while first < MUTANTS {
        children += 1;
        let index = match run_child("load", first, &mut loads) {
            ChildEnd::Finished => break,
            ChildEnd::Died { index, what, .. } => {
                deaths.push(format!("{}: {what}", describe(index)));
                index
            }
            ChildEnd::Stuck { index } => index,
        };
        first = index + 1;
    }
    // Phase 2, "run": registered again, and each accepted mutant run once on a small
    // batch. A death here is a validated module whose kernel crashed the driver.
    let mut tally = BTreeMap::new();
    let mut run_deaths = Vec::new();
    let mut stuck = Vec::new();
    let mut first = 0;
    while first < MUTANTS {
        children += 1;
        match run_child("run", first, &mut tally) {
            ChildEnd::Finished => break,
            ChildEnd::Died { index, what, .. } => {
                eprintln!(
                    "died running validated modules: {}: {what}",
                    describe(index)
                );
                run_deaths.push(index);
                first = index + 1;
            }
            ChildEnd::Stuck { index } => {
                eprintln!("kernel never returned: {}", describe(index));
                stuck.push(index);
                first = index + 1;
            }
        }
    }
    eprintln!(
        "spirv corpus: {MUTANTS} mutants (seed {SEED:#x}) in {:.1?}, {children} child \
         process(es); registered: {loads:?}; run: {tally:?}; validated modules whose \
         kernel crashed lavapipe when run (or corrupted its heap before): {run_deaths:?}; \
         whose kernel never returned: {stuck:?}",
        started.elapsed()
    );
    // No panic anywhere, and no death while registering (validator, vulkano,
    // pipeline creation): a malformed module is refused, never a crash.
    assert!(
        deaths.is_empty(),
        "{} mutant(s) panicked or killed the process while registering:\n{}",
        deaths.len(),
        deaths.join("\n")
    );
    let seen: usize = loads.values().sum();
    assert_eq!(
        seen + deaths.len(),
        MUTANTS,
        "every mutant has an outcome: {loads:?}"
    );
    assert_eq!(
        loads.get("vulkano-panicked"),
        None,
        "vulkano panicked on modules the validator accepted: {loads:?}"
    );
    // What remains (RELIABILITY.md, "Remaining"): a VALID module whose constants the
    // mutation changed can index past a workgroup array or a buffer, or loop for ever —
    // undefined behaviour that lavapipe does not guard (no robustness for workgroup
    // memory) and that no validator can see. Such deaths happen only when the kernel
    // runs (phase 1 loaded every mutant without one), only for modules the validator
    // accepted, and only from mutations of values (constants, flipped or replaced words).
    for &index in run_deaths.iter().chain(&stuck) {
        let m = mutant(&originals, index);
        assert!(
            m.mutations.iter().any(|m| matches!(
                m,
                Mutation::Constant { .. } | Mutation::BitFlip { .. } | Mutation::Replace { .. }
            )),
            "a structural mutation crashed a run: {}",
            describe(index)
        );
    }
    // The corpus must exercise both sides of the validator: most random mutants are
    // refused, and a healthy share (bit flips in literals, ids swapped for ids of the
    // same type, changed constants) are accepted and run, or the test would prove
    // little.
    let refused = loads.get("invalid-spirv").copied().unwrap_or(0);
    let ran = tally.get("accepted-ran").copied().unwrap_or(0);
    assert!(refused >= MUTANTS / 4, "only {refused} refused: {tally:?}");
    assert!(
        ran >= MUTANTS / 40,
        "only {ran} accepted and ran: {tally:?}"
    );
}

/// The truncated-module child: registers the first half of a built-in module under the
/// abort-on-panic hook and prints what came back.
fn truncated_child() {
    abort_on_panic();
    let Some(engine) = vulkan_engine() else {
        println!("{FINISHED}");
        return;
    };
    let (_, _, original) = &originals()[0];
    let words = original.spirv.as_deref().expect("built-in SPIR-V");
    let half = KernelVariant {
        spirv: Some(words[..words.len() / 2].into()),
        ..original.clone()
    };
    match engine.register_pair("truncated", half, original.clone()) {
        Ok(_) => println!("accepted"),
        Err(e) => println!("{} {e}", refusal(&e)),
    }
    engine.shutdown();
    println!("{FINISHED}");
}

#[test]
fn a_truncated_module_is_invalid_spirv_and_prints_no_panic_under_abort_on_panic() {
    if std::env::var(CHILD_ENV).as_deref() == Ok("truncated") {
        truncated_child();
        return;
    }
    // Without a device the child would skip; the parent fails (or skips) here.
    let Some(engine) = vulkan_engine() else {
        return;
    };
    engine.shutdown();
    let child = spawn_child(
        "a_truncated_module_is_invalid_spirv_and_prints_no_panic_under_abort_on_panic",
        "truncated",
    );
    let out = child.wait_with_output().expect("the child runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the child died ({}): stdout {stdout} stderr {stderr}",
        out.status
    );
    assert!(
        stdout.contains("invalid-spirv ") && stdout.contains(FINISHED),
        "a truncated module must be refused by the validator: {stdout}"
    );
    for sign in ["panicked", PANICKED, "stack backtrace", "RUST_BACKTRACE"] {
        assert!(
            !stdout.contains(sign) && !stderr.contains(sign),
            "`{sign}` printed: stdout {stdout} stderr {stderr}"
        );
    }
}

/// The module of the crash: the built-in `histogram/global-atomics` with bit 20
/// of word 121 flipped. vulkano 0.35's reflection (`Spirv::new` + `reflect::entry_points`)
/// panicked on it — the panic escaped the old loader, whose `catch_unwind` did not cover
/// `entry_point_with_execution` — found by the corpus. The validator must refuse it first.
#[test]
fn a_module_vulkanos_reflection_panicked_on_is_refused_by_the_validator() {
    let Some(engine) = vulkan_engine() else {
        return;
    };
    let (_, _, original) = originals()
        .into_iter()
        .find(|(_, _, v)| v.name == "histogram/global-atomics")
        .expect("the built-in histogram");
    let mut words = original.spirv.as_deref().expect("SPIR-V").to_vec();
    words[121] ^= 1 << 20;
    let bad = KernelVariant {
        spirv: Some(words.into()),
        ..original.clone()
    };
    let e = engine
        .register_pair("reflection-panic", bad, original.clone())
        .expect_err("a module vulkano cannot reflect is refused");
    assert_eq!(refusal(&e), "invalid-spirv", "{e}");
    engine.shutdown();
}
