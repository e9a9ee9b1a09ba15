//! The background autotune saver, end to end on the CPU backend: a verdict change
//! reaches the file through `Engine::flush_autotune` while the engine runs; shutdown
//! saves a pending request even with a save in progress; a burst of verdict changes
//! during a save coalesces into one more save; workers go on answering batches while
//! the saver is stuck or its saves fail; a panicking save does not stop it.
//!
//! The tests watch the saver through its tracing events: a probe subscriber (installed
//! once for this test binary) counts each "saving the autotune store" event under a
//! test's directory with the thread that emitted it, and can hold that thread there
//! (a save that does not finish) or panic there (a save that panics).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use photofinish::autotune::{AutotuneStore, LoadMode, VariantPairKey};
use photofinish::backend::cpu::CpuBackend;
use photofinish::backend::{BindingAccess, BufferArg, KernelVariant};
use photofinish::kernels::DispatchPlan;
use photofinish::{Batch, Engine, KernelId, KernelVerdict};

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

const SAVING: &str = "saving the autotune store";
const SAVE_FAILED: &str = "could not save the autotune store";
const SAVER_THREAD: &str = "photofinish-saver";

// ---------------------------------------------------------------------------------
// The probe: what the saver does under one test's directory.

/// One test's view of the saver's events under its directory.
#[derive(Debug, Default)]
struct Probe {
    dir: PathBuf,
    /// Threads that started a save (one entry per save), and threads that logged a
    /// failed save.
    seen: Mutex<Seen>,
    changed: Condvar,
    /// While true, a save stops at its "saving" event until released.
    hold: AtomicBool,
    /// The next save panics at its "saving" event.
    panic_next: AtomicBool,
}

#[derive(Debug, Default)]
struct Seen {
    saves: Vec<String>,
    failures: Vec<String>,
}

impl Probe {
    fn saves(&self) -> Vec<String> {
        self.seen.lock().unwrap().saves.clone()
    }

    fn failures(&self) -> Vec<String> {
        self.seen.lock().unwrap().failures.clone()
    }

    /// Waits (up to 20 s) until `n` saves have started.
    fn wait_for_saves(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = self.seen.lock().unwrap();
        while seen.saves.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{n} saves never started: {seen:?}");
            seen = self.changed.wait_timeout(seen, left).unwrap().0;
        }
    }

    fn release(&self) {
        let _seen = self.seen.lock().unwrap();
        self.hold.store(false, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// Called on the thread that emitted `message` about `path`.
    fn on_event(&self, message: &str, thread: String) {
        let mut seen = self.seen.lock().unwrap();
        match message {
            SAVING => seen.saves.push(thread),
            SAVE_FAILED => seen.failures.push(thread),
            _ => return,
        }
        self.changed.notify_all();
        if message != SAVING {
            return;
        }
        if self.panic_next.swap(false, Ordering::SeqCst) {
            drop(seen);
            panic!("injected: this save panics");
        }
        while self.hold.load(Ordering::SeqCst) {
            seen = self.changed.wait(seen).unwrap();
        }
    }
}

fn probes() -> &'static Mutex<Vec<Arc<Probe>>> {
    static PROBES: OnceLock<Mutex<Vec<Arc<Probe>>>> = OnceLock::new();
    PROBES.get_or_init(|| {
        let subscriber = tracing_subscriber::registry().with(ProbeLayer);
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in this test binary");
        Mutex::default()
    })
}

/// A fresh directory for one test, with its probe listening.
fn probed_dir() -> (tempfile::TempDir, Arc<Probe>) {
    let dir = tempfile::tempdir().unwrap();
    let probe = Arc::new(Probe {
        dir: dir.path().to_owned(),
        ..Probe::default()
    });
    probes().lock().unwrap().push(Arc::clone(&probe));
    (dir, probe)
}

struct ProbeLayer;

#[derive(Default)]
struct Fields {
    message: String,
    path: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "path" => self.path = format!("{value:?}"),
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for ProbeLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        if fields.path.is_empty() {
            return;
        }
        let probe = probes()
            .lock()
            .unwrap()
            .iter()
            .find(|p| Path::new(&fields.path).starts_with(&p.dir))
            .cloned();
        if let Some(probe) = probe {
            let thread = std::thread::current().name().unwrap_or("?").to_owned();
            probe.on_event(&fields.message, thread);
        }
    }
}

// ---------------------------------------------------------------------------------
// Kernels that reach a verdict quickly on the CPU backend.

/// Sums `0..n` (`n` from the push constants) into an 8-byte output, one step at a time.
fn slow_sum(buffers: &mut [Vec<u8>], pc: &[u8], _wg: [u32; 3]) -> Result<(), String> {
    let n = read_n(pc)?;
    let mut acc = 0u64;
    for i in 0..n {
        acc = acc.wrapping_add(std::hint::black_box(i));
    }
    write_sum(buffers, acc)
}

/// The same sum in closed form: the speculative variant, far faster and equal.
fn fast_sum(buffers: &mut [Vec<u8>], pc: &[u8], _wg: [u32; 3]) -> Result<(), String> {
    let n = read_n(pc)?;
    write_sum(buffers, n.wrapping_mul(n.wrapping_sub(1)) / 2)
}

fn read_n(pc: &[u8]) -> Result<u64, String> {
    let bytes: [u8; 4] = pc
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or("missing push constants")?;
    Ok(u64::from(u32::from_le_bytes(bytes)))
}

fn write_sum(buffers: &mut [Vec<u8>], sum: u64) -> Result<(), String> {
    let out = buffers.first_mut().ok_or("missing output buffer")?;
    out.clear();
    out.extend_from_slice(&sum.to_le_bytes());
    Ok(())
}

type CpuCode = fn(&mut [Vec<u8>], &[u8], [u32; 3]) -> Result<(), String>;

fn variant(name: String, code: CpuCode) -> KernelVariant {
    KernelVariant::cpu(name, &[BindingAccess::Write], 4, code)
}

/// Registers pair `i` (its own variant names, so its own autotune key).
fn register(engine: &Engine, i: usize) -> KernelId {
    engine
        .register_pair(
            &format!("sum{i}"),
            variant(format!("saver-test/sum{i}/loop"), slow_sum),
            variant(format!("saver-test/sum{i}/closed-form"), fast_sum),
        )
        .expect("the pair registers")
}

fn batch(kernel: KernelId) -> Batch {
    Batch::with_plan(
        kernel,
        DispatchPlan {
            buffers: vec![BufferArg::Zeroed(8)],
            push_constants: 100_000u32.to_le_bytes().to_vec(),
            workgroups: [1, 1, 1],
        },
    )
}

/// Runs batches of `kernels` (one in flight per kernel, every ticket waited for) until
/// each has a verdict. Every verdict change is requested before its batch's answer
/// comes back, so when this returns every save request has been made.
fn decide(engine: &Engine, kernels: &[KernelId]) {
    for round in 0.. {
        let pending: Vec<KernelId> = kernels
            .iter()
            .copied()
            .filter(|&k| engine.verdict(k) == Some(KernelVerdict::Undecided))
            .collect();
        if pending.is_empty() {
            return;
        }
        assert!(round < 500, "no verdict after 500 batches: {pending:?}");
        let tickets: Vec<_> = pending
            .iter()
            .map(|&k| engine.submit(batch(k)).expect("engine running"))
            .collect();
        for ticket in tickets {
            ticket.wait().expect("every batch is answered");
        }
    }
}

fn engine_in(dir: &Path) -> Engine {
    let backend = CpuBackend::with_threads(2).expect("the CPU backend opens");
    Engine::builder()
        .backend_instance(Arc::new(backend))
        .autotune_dir(dir)
        .build()
        .expect("engine builds")
}

/// Verdicts by key, as `store` holds them.
fn verdicts(store: &AutotuneStore) -> BTreeMap<VariantPairKey, KernelVerdict> {
    store
        .publish()
        .verdicts
        .iter()
        .map(|(k, v)| (k.clone(), v.verdict.verdict))
        .collect()
}

/// The verdicts in device 0's autotune file right now.
fn on_disk(engine: &Engine) -> BTreeMap<VariantPairKey, KernelVerdict> {
    let path = engine.autotune_path(0).expect("persistence on");
    let identity = engine.autotune_store(0).unwrap().identity();
    let (store, _) = AutotuneStore::load(path, identity, LoadMode::Strict)
        .unwrap_or_else(|e| panic!("{} loads: {e}", path.display()));
    verdicts(&store)
}

/// Runs `test` on a thread and fails (instead of hanging) if it does not finish in
/// `limit`: a deadlock between the saver, the workers and shutdown fails the test.
fn within(limit: Duration, test: impl FnOnce() + Send + 'static) {
    let (done, finished) = std::sync::mpsc::channel();
    let runner = std::thread::spawn(move || {
        test();
        let _ = done.send(());
    });
    match finished.recv_timeout(limit) {
        Ok(()) => runner.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = runner.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("did not finish in {limit:?}: deadlock")
        }
    }
}

// ---------------------------------------------------------------------------------

#[test]
fn a_verdict_change_is_on_disk_after_flush_autotune_while_the_engine_runs() {
    within(Duration::from_secs(60), || {
        let (dir, probe) = probed_dir();
        let engine = engine_in(dir.path());
        let k = register(&engine, 0);
        decide(&engine, &[k]);
        engine.flush_autotune();
        let memory = verdicts(engine.autotune_store(0).unwrap());
        assert_eq!(memory.len(), 1, "one verdict stored: {memory:?}");
        assert_eq!(on_disk(&engine), memory, "the file holds the verdict");
        let saves = probe.saves();
        assert!(!saves.is_empty());
        assert!(
            saves.iter().all(|t| t == SAVER_THREAD),
            "every save ran on the saver thread, none on a worker: {saves:?}"
        );
        // The engine still runs after the flush.
        engine.submit(batch(k)).unwrap().wait().unwrap();
        engine.shutdown();
    });
}

#[test]
fn shutdown_saves_a_request_made_during_a_save_in_progress() {
    within(Duration::from_secs(60), || {
        let (dir, probe) = probed_dir();
        let engine = Arc::new(engine_in(dir.path()));
        probe.hold.store(true, Ordering::SeqCst);
        let first = register(&engine, 0);
        decide(&engine, &[first]);
        probe.wait_for_saves(1); // held: its file is not written
        let second = register(&engine, 1);
        decide(&engine, &[second]); // its request is pending behind the held save
        let closer = {
            let engine = Arc::clone(&engine);
            std::thread::spawn(move || engine.shutdown())
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!closer.is_finished(), "shutdown waits for the saves");
        probe.release();
        closer.join().expect("shutdown returns");
        let memory = verdicts(engine.autotune_store(0).unwrap());
        assert_eq!(memory.len(), 2, "{memory:?}");
        assert_eq!(on_disk(&engine), memory, "both verdicts saved by shutdown");
        engine.flush_autotune(); // after shutdown: returns at once
    });
}

#[test]
fn a_burst_of_verdict_changes_during_a_save_coalesces_and_workers_never_wait() {
    const KERNELS: usize = 12;
    within(Duration::from_secs(90), || {
        let (dir, probe) = probed_dir();
        let engine = engine_in(dir.path());
        probe.hold.store(true, Ordering::SeqCst);
        let kernels: Vec<KernelId> = (0..KERNELS).map(|i| register(&engine, i)).collect();
        // The first verdict change starts a save that does not finish (held); the
        // workers decide every other kernel meanwhile, never waiting for it. (The save
        // must have begun before the other changes: deciding all at once let the
        // saver start late, see all twelve in its one save, and the test fail.)
        decide(&engine, &kernels[..1]);
        probe.wait_for_saves(1);
        decide(&engine, &kernels[1..]);
        assert_eq!(
            probe.saves().len(),
            1,
            "{KERNELS} verdict changes, one save in progress"
        );
        probe.release();
        engine.flush_autotune();
        assert_eq!(
            probe.saves().len(),
            2,
            "the {} changes made during the held save coalesce into one more save",
            KERNELS - 1
        );
        let memory = verdicts(engine.autotune_store(0).unwrap());
        assert_eq!(memory.len(), KERNELS);
        assert_eq!(on_disk(&engine), memory);
        engine.shutdown();
    });
}

#[test]
fn failing_saves_are_logged_on_the_saver_and_batches_are_still_answered() {
    within(Duration::from_secs(60), || {
        let (dir, probe) = probed_dir();
        // A directory under a regular file: every save fails.
        let blocker = dir.path().join("a-file");
        std::fs::write(&blocker, b"in the way").unwrap();
        let engine = engine_in(&blocker.join("autotune"));
        let kernels: Vec<KernelId> = (0..2).map(|i| register(&engine, i)).collect();
        decide(&engine, &kernels);
        engine.flush_autotune();
        let failures = probe.failures();
        assert!(!failures.is_empty(), "the failed save was logged");
        assert!(
            failures.iter().all(|t| t == SAVER_THREAD),
            "failed saves ran on the saver thread only: {failures:?}"
        );
        for &k in &kernels {
            assert_ne!(engine.verdict(k), Some(KernelVerdict::Undecided));
            engine.submit(batch(k)).unwrap().wait().unwrap();
        }
        engine.shutdown();
        assert_eq!(std::fs::read(&blocker).unwrap(), b"in the way");
    });
}

#[test]
fn a_panicking_save_does_not_stop_the_saver_or_the_engine() {
    within(Duration::from_secs(60), || {
        let (dir, probe) = probed_dir();
        let engine = engine_in(dir.path());
        probe.panic_next.store(true, Ordering::SeqCst);
        let first = register(&engine, 0);
        decide(&engine, &[first]);
        engine.flush_autotune(); // returns although that save panicked
        assert_eq!(probe.saves().len(), 1);
        assert!(
            !engine.autotune_path(0).unwrap().exists(),
            "the panicking save wrote nothing"
        );
        let second = register(&engine, 1);
        decide(&engine, &[second]);
        engine.flush_autotune();
        let memory = verdicts(engine.autotune_store(0).unwrap());
        assert_eq!(memory.len(), 2);
        assert_eq!(
            on_disk(&engine),
            memory,
            "the next save wrote both verdicts"
        );
        engine.shutdown();
    });
}

#[test]
fn flush_autotune_returns_at_once_without_a_file() {
    within(Duration::from_secs(30), || {
        let engine = Engine::builder()
            .backend_instance(Arc::new(CpuBackend::with_threads(2).unwrap()))
            .without_autotune_file()
            .build()
            .unwrap();
        let k = register(&engine, 0);
        decide(&engine, &[k]);
        engine.flush_autotune();
        assert_eq!(engine.autotune_path(0), None);
        engine.shutdown();
        engine.flush_autotune();
    });
}
