//! The engine: per-queue worker actors fed by bounded channels, racing conservative
//! against speculative variants, answering every accepted batch exactly once, and
//! publishing what it decides by message (SPEC §4).
//!
//! It owns threads, channels, tickets, events and supervision; every decision it takes
//! comes from [`crate::policy`] (pure functions) and every device call goes through a
//! [`crate::backend::Backend`]. It never touches a device API directly. The mailbox and
//! shutdown protocol and the race join are described in `src/engine/README.md`.

mod agree;
mod arms;
mod buffers;
mod builder;
mod contention;
mod dispatch_policy;
mod doorbell;
mod error;
mod events;
// Without the `redis` feature a stub that is always off, so call sites need no `cfg`.
#[cfg_attr(not(feature = "redis"), path = "fleet_off.rs")]
mod fleet;
mod keys;
mod ladder;
mod mailbox;
mod priors;
mod race;
mod record;
mod registry;
mod saver;
#[cfg(not(photofinish_loom))]
mod spin;
mod supervisor;
#[cfg(any(test, feature = "test-util"))]
mod test_backend;
mod ticket;
mod trace;
mod tuning;
mod verdict;
mod window;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::TrySendError;

use crate::autotune::{AutotuneStore, LoadReport, PairedSpeculationWindow};
use crate::backend::{Backend, BackendKind, DeviceInfo, KernelVariant, QueueId};
use crate::kernels::{DispatchPlan, InputShape, Workload};
use crate::speculator::{AdaptiveSpeculator, SpeculationMode};

pub use buffers::{Buffers, Iter as BufferIter, INLINE_OUTPUT_BUFFERS, INLINE_OUTPUT_BYTES};
pub use builder::{
    default_autotune_dir, BackendChoice, EngineBuilder, DEFAULT_AUDIT_PERIOD, DEFAULT_BUSY_WAIT,
    DEFAULT_CHANNEL_CAPACITY, DEFAULT_DISPATCH_TIMEOUT, DEFAULT_EVENT_CAPACITY, DEFAULT_MAX_GROUP,
    DEFAULT_MAX_SEARCHING,
};
pub use error::{EngineError, TrySubmitError};
pub use events::{Event, KernelVerdict, MismatchDetail, Subscription, VerdictReason};
#[cfg(not(photofinish_loom))]
pub use events::{RecvError, RecvTimeoutError, SubscriptionIntoIter, TryRecvError};
pub use keys::{
    KeyStats, PriorSource, CONFIRM_T, RERACE_FIRST_SKIPS, RERACE_MAX_SKIPS, RERACE_RACES,
};
pub use priors::MAX_TRANSFER_CLASSES;
pub use race::TIMED_SINGLE_PERIOD;
pub use registry::{
    Arm, CacheStatus, KernelId, KernelStats, RaceSample, MAX_KEPT_SAMPLES, MAX_UNDECIDED_RACES,
};
#[cfg(any(test, feature = "test-util"))]
pub use test_backend::{
    ByteSumWorkload, FusedByteSumWorkload, HostCode, InjectedFault, LoadRecord,
    PanickyHostWorkload, TestBackend,
};
pub use ticket::Ticket;
pub use trace::TraceStats;
pub use tuning::{TuningKey, DEFAULT_MAX_KEYS_PER_KERNEL, MIN_SIZE_CLASS_BYTES};

/// Internals the loom models in `loom-tests/` drive directly. Not part of the API.
#[doc(hidden)]
pub mod protocol {
    pub use super::contention::{Call, DeviceLoad, Watch};
    pub use super::doorbell::Doorbell;
    pub use super::events::{DropCounter, EventBus};
    pub use super::ladder::{choose as choose_in_play, Ladder};
    pub use super::mailbox::{Gate, Pass};
    pub use super::saver::SaveQueue;
    #[cfg(photofinish_loom)]
    pub use super::ticket::SlotProbe;
    pub use super::ticket::{one_shot_for_models as one_shot, Responder};
    pub use super::tuning::KeyTable;
    pub use super::verdict::VerdictCell;
    pub use super::window::{Share, Window};
    #[cfg(photofinish_loom)]
    pub use crate::sync::channel::Receiver as EventReceiver;
}

use events::EventBus;
use mailbox::{Gate, Mailbox};
use registry::{Kernel, KernelSource, Registry};
use ticket::Responder;

/// What a batch carries.
#[derive(Debug, Clone)]
pub(crate) enum Payload {
    /// Input bytes for a workload kernel.
    Input(Arc<[u8]>),
    /// Buffers, push constants and workgroups for a SPIR-V pair (boxed: no count to
    /// write when the caller's thread drops it; see `retired_plans`).
    Plan(Box<DispatchPlan>),
    /// A plan whose workgroups each variant derives from this many items (SPEC §10).
    Items(Box<DispatchPlan>, u64),
}

/// One unit of work for a registered kernel.
#[derive(Debug, Clone)]
pub struct Batch {
    kernel: KernelId,
    payload: Payload,
    app: Option<u64>,
}

impl Batch {
    /// A batch of input bytes for a workload kernel (`Engine::register`).
    pub fn new(kernel: KernelId, input: impl Into<Arc<[u8]>>) -> Self {
        Batch {
            kernel,
            payload: Payload::Input(input.into()),
            app: None,
        }
    }

    /// A batch for a SPIR-V pair (`Engine::register_pair`): its own buffers, push
    /// constants and workgroup counts. Cloning the batch copies the plan's lists (a
    /// `BufferArg::Data`'s bytes are shared, not copied).
    pub fn with_plan(kernel: KernelId, plan: DispatchPlan) -> Self {
        Batch {
            kernel,
            payload: Payload::Plan(Box::new(plan)),
            app: None,
        }
    }

    /// A batch for a SPIR-V or WGSL pair that covers `items` items: each variant
    /// dispatches its own workgroups for them, `ceil(items / (its workgroup
    /// invocations × its items per invocation))` in x
    /// ([`KernelVariant::workgroups_for_items`](crate::KernelVariant::workgroups_for_items)),
    /// so variants of different workgroup sizes or items per invocation race on one
    /// batch without grid-stride loops. The plan's `workgroups` is not read. A count a
    /// variant cannot dispatch on the engine's devices is refused at submission
    /// ([`EngineError::Plan`]).
    ///
    /// ```
    /// use photofinish::{BackendChoice, Batch, BindingAccess, BufferArg, DispatchPlan, Engine, KernelVariant};
    ///
    /// let engine = Engine::builder().backend(BackendChoice::Cpu).without_autotune_file().build()?;
    /// let layout = [BindingAccess::Write];
    /// // Each writes, per workgroup it was given, one 1 into out[workgroup].
    /// let mark = |buffers: &mut [Vec<u8>], _: &[u8], groups: [u32; 3]| {
    ///     for g in 0..groups[0] as usize {
    ///         buffers[0][4 * g] = 1;
    ///     }
    ///     Ok(())
    /// };
    /// let one = KernelVariant::cpu("mark/one", &layout, 0, mark);
    /// let four = KernelVariant::cpu("mark/four", &layout, 0, mark).with_items_per_invocation(4);
    /// let kernel = engine.register_variants("mark", one, vec![four])?;
    /// let plan = DispatchPlan::new(vec![BufferArg::zeroed::<u32>(8)], [0, 1, 1]);
    /// let answer = engine.submit(Batch::for_items(kernel, plan, 8))?.wait()?;
    /// // The conservative variant (1 item per invocation, workgroup size 1) ran 8 groups.
    /// let photofinish::Output::Buffers(out) = answer.output else { unreachable!() };
    /// assert_eq!(out.view::<u32>(0).unwrap().iter().sum::<u32>(), 8);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn for_items(kernel: KernelId, plan: DispatchPlan, items: u64) -> Self {
        Batch {
            kernel,
            payload: Payload::Items(Box::new(plan), items),
            app: None,
        }
    }

    /// The kernel this batch is for.
    pub fn kernel(&self) -> KernelId {
        self.kernel
    }

    /// This batch with application key `app` in its tuning key (SPEC §8): whatever
    /// the application knows makes the winner differ besides the batch's size — a data
    /// distribution tag, a hash of a shape tuple. Batches with different application
    /// keys get verdicts of their own and never share one.
    #[must_use]
    pub fn with_tuning_key(mut self, app: u64) -> Self {
        self.app = Some(app);
        self
    }

    /// The tuning key this batch's verdict belongs to: its size class (the bytes of
    /// its input, or of its plan's buffers, rounded up to a power of two, at least
    /// [`MIN_SIZE_CLASS_BYTES`]) and its application key.
    pub fn tuning_key(&self) -> TuningKey {
        TuningKey::for_bytes(race::payload_len(&self.payload) as u64, self.app)
    }
}

/// What a batch produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A workload's canonical answer (equal to `Workload::reference` of the input).
    Answer(Vec<u8>),
    /// A SPIR-V pair's written buffers, in binding order (small ones held inline: see
    /// [`Buffers`]).
    Buffers(Buffers),
}

/// How many tickets ahead of the one being waited for a `submit_many` ticket prefetches
/// (`Ticket::wait_ahead`): far enough that the lines arrive while the caller takes the
/// answers in between, near enough that their workers have mostly written them.
const PREFETCH_AHEAD: usize = 2;

/// The answer to one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The output (always from a variant the engine trusts for this batch: the
    /// conservative one in a race).
    pub output: Output,
    /// Which arm's output this is.
    pub arm: Arm,
    /// The variant that produced it: 0 (conservative) or the speculative variant's
    /// index among the kernel's variants.
    pub variant: usize,
    /// True when both arms ran for this batch.
    pub raced: bool,
    /// That arm's kernel time, where the queue has timestamps and the run was timed:
    /// both arms of a race always are; of a kernel's single-arm runs (adopted or
    /// rejected) the first and one in [`TIMED_SINGLE_PERIOD`] are, the others may be
    /// `None` (timing costs the Vulkan backend two timestamp queries).
    pub kernel_ns: Option<u64>,
    /// The queue it ran on.
    pub queue: QueueId,
}

/// A message on a device's mailbox.
pub(crate) enum Msg {
    /// Run this batch.
    Run(Job),
    /// Claim batches from this window until it is drained (one of a few copies; see
    /// window.rs).
    Window(Arc<window::Window<Job>>),
    /// The engine is shutting down: the worker that takes this exits.
    Stop,
}

/// An accepted batch on its way to a worker. The fields drop in order, so a job dropped
/// unanswered drops its payload before its responder answers `Unanswered`, as
/// [`Job::answer`] does before it answers.
pub(crate) struct Job {
    pub(crate) kernel: Arc<Kernel>,
    payload: Payload,
    /// The batch's application key (`Batch::with_tuning_key`).
    pub(crate) app: Option<u64>,
    pub(crate) responder: Responder<Answer>,
}

/// What a batch's answer carries back to the caller's thread, which drops it there
/// before it returns the answer (`ticket.rs`): the payload it allocated and the kernel
/// reference it counted.
pub(crate) struct Home {
    pub(crate) payload: Payload,
    #[allow(dead_code, reason = "held only to be dropped on the caller's thread")]
    pub(crate) kernel: Option<Arc<Kernel>>,
}

impl Home {
    /// Lets go of the batch on the caller's thread: the kernel reference and the
    /// input's bytes now (the caller finds the engine holding no reference to them),
    /// a plan's own blocks (its box and its emptied lists) at the thread's next
    /// accepted batch (`retired_plans`).
    pub(crate) fn release(self) {
        let Home { payload, kernel } = self;
        drop(kernel);
        if let Payload::Plan(mut plan) | Payload::Items(mut plan, _) = payload {
            plan.buffers.clear();
            plan.push_constants.clear();
            retired_plans::retire(plan);
        }
    }
}

/// Plans whose answers this thread took, their bytes released, freed one per batch the
/// thread submits next. A window's answers are taken in a row: freed then, 64 plans
/// (two blocks each, which a worker read on another core) overflow the allocator's
/// per-thread cache of freed blocks (glibc keeps 7 of a size) into its shared bins, a
/// locked instruction per block that waits for the block's line to come back from that
/// core. Freed one per new batch, right after the caller allocated that batch's plan,
/// each free refills the cache the allocation drew from, and neither leaves it. At
/// most [`retired_plans::MAX`] wait per thread (more are freed at once); they are freed
/// when the thread ends.
#[cfg(not(photofinish_loom))]
mod retired_plans {
    use std::cell::RefCell;

    use crate::kernels::DispatchPlan;

    /// The most plans a thread keeps waiting.
    pub(super) const MAX: usize = 128;

    thread_local! {
        #[allow(clippy::vec_box, reason = "the boxes are the blocks whose free is put off")]
        static RETIRED: RefCell<Vec<Box<DispatchPlan>>> = const { RefCell::new(Vec::new()) };
    }

    /// Keeps `plan` (already emptied) to be freed at this thread's next batch.
    pub(super) fn retire(plan: Box<DispatchPlan>) {
        let _ = RETIRED.try_with(|retired| {
            if let Ok(mut retired) = retired.try_borrow_mut() {
                if retired.len() < MAX {
                    retired.push(plan);
                }
            }
        });
    }

    /// Frees the plan this thread retired last, if any.
    pub(super) fn free_one() {
        let _ = RETIRED.try_with(|retired| {
            let plan = retired.try_borrow_mut().ok().and_then(|mut r| r.pop());
            drop(plan);
        });
    }

    /// How many plans this thread keeps waiting.
    #[cfg(test)]
    pub(super) fn waiting() -> usize {
        RETIRED.with_borrow(Vec::len)
    }
}

/// Under loom a plan is freed at once.
#[cfg(photofinish_loom)]
mod retired_plans {
    use crate::kernels::DispatchPlan;

    pub(super) fn retire(plan: Box<DispatchPlan>) {
        drop(plan);
    }

    pub(super) fn free_one() {}
}

impl Job {
    /// The tuning key of the batch (see `Batch::tuning_key`).
    pub(crate) fn tuning_key(&self) -> TuningKey {
        TuningKey::for_bytes(race::payload_len(&self.payload) as u64, self.app)
    }

    /// Answers the batch. Its payload and kernel reference go back with the answer and
    /// are dropped by the caller's thread, which allocated the one and counted the
    /// other, before it gets the answer: a caller that takes the answer finds the
    /// engine holding no reference to its input (it may reuse the buffer in place,
    /// e.g. through `Arc::get_mut`), and the kernel's reference count is written by
    /// the producers alone, not by every worker that runs one of its batches.
    pub(crate) fn answer(self, result: Result<Answer, EngineError>) {
        let Job {
            kernel,
            payload,
            responder,
            ..
        } = self;
        let home = Home {
            payload,
            kernel: Some(kernel),
        };
        responder.answer_sending_home(result, Some(home));
    }

    /// The batch back, for a caller whose submission was refused before it was
    /// accepted (its ticket never handed out).
    fn into_batch(self) -> Batch {
        let Job {
            kernel,
            payload,
            app,
            responder,
        } = self;
        responder.disarm();
        Batch {
            kernel: kernel.id,
            payload,
            app,
        }
    }

    /// Answers the batch with `EngineError::Failed` for its kernel.
    pub(crate) fn fail(self, reason: String) {
        let kernel = self.kernel.name.clone();
        self.answer(Err(EngineError::Failed { kernel, reason }));
    }
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("kernel", &self.kernel.name)
            .finish_non_exhaustive()
    }
}

/// Settings fixed at build.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// One audit race in this many batches of an adopted kernel (0: none); also how
    /// often a fused kernel probes its fused path while the speculator has it off.
    pub(crate) audit_period: u64,
    /// How fused kernels follow the speculator.
    pub(crate) mode: SpeculationMode,
    /// The most batches in one backend call (`EngineBuilder::max_group`; 1: off).
    pub(crate) max_group: usize,
    /// How long a caller waiting on a ticket polls with spin hints only
    /// (`EngineBuilder::busy_wait`; the mailboxes' doorbells hold their own copy).
    pub(crate) busy_wait: std::time::Duration,
    /// How long one backend call may run before its batch is answered
    /// `DispatchTimedOut` (`EngineBuilder::dispatch_timeout`; `None`: for ever).
    pub(crate) dispatch_timeout: Option<std::time::Duration>,
    /// Tuning keys a kernel keeps in memory (`EngineBuilder::max_keys_per_kernel`).
    pub(crate) max_keys_per_kernel: usize,
    /// New keys start from a decided neighbour (`EngineBuilder::key_transfer`).
    pub(crate) key_transfer: bool,
}

/// One queue a worker owns, with a count of who is using it. Each on cache lines of
/// its own: its worker writes the count twice a batch, and packed together the device's
/// sixteen counts shared a few lines among all its workers.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct QueueSlot {
    pub(crate) id: QueueId,
    users: AtomicU32,
}

/// One device: its mailbox and its queues.
#[derive(Debug)]
pub(crate) struct DeviceSlot {
    pub(crate) mailbox: Mailbox<Msg>,
    pub(crate) queues: Vec<QueueSlot>,
    lost: AtomicBool,
    /// The backend calls running on the device (a race's samples read it).
    pub(crate) load: contention::DeviceLoad,
    /// The device's queues run on the host's cores (the CPU backend, a software
    /// Vulkan driver): a race's two arms run back to back, each with every core, as
    /// two arms at once would each be timed on half the cores and the other's memory
    /// traffic (see `race::race`).
    pub(crate) shares_cores: bool,
}

/// One device's autotune store and the file it is saved to.
#[derive(Debug)]
pub(crate) struct DeviceTune {
    pub(crate) store: AutotuneStore,
    /// `None`: persistence is off, the store lives in memory only.
    pub(crate) path: Option<std::path::PathBuf>,
    /// `DeviceInfo::adapter_id`, the adapter part of every key.
    pub(crate) adapter_id: String,
    /// What loading the file found.
    pub(crate) report: Option<LoadReport>,
}

impl DeviceTune {
    pub(crate) fn new(
        store: AutotuneStore,
        path: Option<std::path::PathBuf>,
        adapter_id: String,
        report: Option<LoadReport>,
    ) -> Self {
        DeviceTune {
            store,
            path,
            adapter_id,
            report,
        }
    }

    /// Saves the store to its file (a no-op without one), merged with what the file
    /// holds (`AutotuneStore::save`), creating the file's directory first. A failed
    /// save is never fatal: the store stays correct in memory, and the saver logs and
    /// keeps the error (`Engine::autotune_save_error`). Only the saver thread calls
    /// this (`saver.rs`), so no worker ever waits on the disk.
    pub(crate) fn save(&self) -> Result<(), crate::autotune::AutotuneError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        tracing::debug!(path = %path.display(), "saving the autotune store");
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| crate::autotune::AutotuneError::Io {
                action: "create the directory of",
                path: path.clone(),
                source,
            })?;
        }
        self.store.save(path)
    }
}

/// The state every worker and the engine handle share.
pub(crate) struct Core {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) registry: Registry,
    pub(crate) bus: Arc<EventBus>,
    gate: Gate,
    /// Trace-JIT pre-loads running on rayon; shutdown waits for them.
    pub(crate) preloads: Arc<trace::Pending>,
    pub(crate) devices: Vec<DeviceSlot>,
    pub(crate) config: Config,
    /// The shared speculator every fused kernel's counter tail feeds.
    pub(crate) speculator: AdaptiveSpeculator,
    /// One autotune store per device, in device order.
    pub(crate) tunes: Vec<DeviceTune>,
    /// Save requests for the saver thread, one flag per device store; `None` (and no
    /// saver thread) when no store has a file.
    pub(crate) saves: Option<saver::SaveQueue>,
    /// The fleet store (SPEC §13): off unless `EngineBuilder::fleet` (feature `redis`).
    pub(crate) fleet: fleet::FleetLink,
    next_device: AtomicUsize,
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("backend", &self.backend.kind())
            .field("devices", &self.devices.len())
            .finish_non_exhaustive()
    }
}

impl Core {
    /// Asks the saver thread to save `device`'s autotune store: never blocks on the
    /// disk and never fails (a no-op when nothing is persisted).
    pub(crate) fn request_save(&self, device: usize) {
        if let Some(saves) = &self.saves {
            saves.request(device);
        }
    }

    /// Marks a device lost; publishes once.
    pub(crate) fn mark_lost(&self, device: usize, detail: String) {
        if let Some(slot) = self.devices.get(device) {
            if !slot.lost.swap(true, Ordering::AcqRel) {
                tracing::error!(device, %detail, "device lost; its workers stop running batches");
                self.bus.publish(Event::DeviceLost { device, detail });
            }
        }
    }

    /// True once the device was lost.
    pub(crate) fn is_lost(&self, device: usize) -> bool {
        self.devices
            .get(device)
            .is_none_or(|d| d.lost.load(Ordering::Acquire))
    }

    /// Marks `queue` in use by its worker until the guard drops.
    pub(crate) fn occupy(&self, queue: QueueId) -> QueueUse<'_> {
        let slot = self.slot(queue);
        if let Some(s) = slot {
            s.users.fetch_add(1, Ordering::AcqRel);
        }
        QueueUse { slot }
    }

    /// The load watch of `queue`'s device and the queue's index there.
    pub(crate) fn device_load(&self, queue: QueueId) -> Option<(&contention::DeviceLoad, usize)> {
        self.locate(queue)
            .map(|(device, index)| (&device.load, index))
    }

    fn slot(&self, queue: QueueId) -> Option<&QueueSlot> {
        self.locate(queue)
            .map(|(device, index)| &device.queues[index])
    }

    /// `queue`'s device and the queue's index among the device's queues.
    fn locate(&self, queue: QueueId) -> Option<(&DeviceSlot, usize)> {
        let device = self.devices.get(queue.device)?;
        let index = device.queues.iter().position(|q| q.id == queue)?;
        Some((device, index))
    }

    /// Queues of `own`'s device other than `own` that no worker is using right now.
    pub(crate) fn idle_queues(&self, own: QueueId) -> usize {
        self.devices.get(own.device).map_or(0, |d| {
            d.queues
                .iter()
                .filter(|q| q.id != own && q.users.load(Ordering::Acquire) == 0)
                .count()
        })
    }

    /// Borrows an idle partner queue for the speculative arm of a race on `own`:
    /// an idle queue of another family first, then an idle queue of the same family.
    /// `None`: no idle partner (or a one-queue device): run the arms back to back.
    pub(crate) fn borrow_partner(&self, own: QueueId) -> Option<QueueUse<'_>> {
        let queues = &self.devices.get(own.device)?.queues;
        let other_family = queues.iter().filter(|q| q.id.family != own.family);
        let same_family = queues
            .iter()
            .filter(|q| q.id.family == own.family && q.id != own);
        for q in other_family.chain(same_family) {
            if q.users
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Some(QueueUse { slot: Some(q) });
            }
        }
        None
    }

    /// A queue for a batch of `kernel` moved off a lost device: on the live device with
    /// the kernel's conservative variant loaded and the shortest mailbox, its least
    /// busy queue. `None` when no live device has the kernel.
    pub(crate) fn relocation_queue(&self, kernel: &Kernel) -> Option<QueueId> {
        let device = (0..self.devices.len())
            .filter(|&d| !self.is_lost(d) && kernel.is_loaded(d, 0))
            .min_by_key(|&d| self.devices[d].mailbox.len())?;
        self.devices[device]
            .queues
            .iter()
            .min_by_key(|q| q.users.load(Ordering::Acquire))
            .map(|q| q.id)
    }

    /// Another queue of the same device for a retry (the same queue on a one-queue
    /// device).
    pub(crate) fn retry_queue(&self, failed: QueueId) -> QueueId {
        self.devices
            .get(failed.device)
            .and_then(|d| {
                let n = d.queues.len();
                let at = d.queues.iter().position(|q| q.id == failed)?;
                Some(d.queues[(at + 1) % n].id)
            })
            .unwrap_or(failed)
    }
}

/// A queue in use; released on drop.
#[derive(Debug)]
pub(crate) struct QueueUse<'a> {
    slot: Option<&'a QueueSlot>,
}

impl QueueUse<'_> {
    /// The queue.
    pub(crate) fn id(&self) -> Option<QueueId> {
        self.slot.map(|s| s.id)
    }
}

impl Drop for QueueUse<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.slot {
            s.users.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Whether the workload's speculative variant `variant` writes a counter tail (is
/// fused), read from its declared output layout without running it: the tail parser is
/// given the zero-filled outputs the variant's plan declares for a small input. `None`
/// when the workload cannot plan that input.
fn declares_counter_tail(kernel: &Kernel, workload: &dyn Workload, variant: usize) -> Option<bool> {
    let input = workload.generate(InputShape::Uniform, 1024, 0);
    let plan = workload.plan(variant, &input).ok()?;
    let outputs: Vec<Vec<u8>> = kernel.variants[variant]
        .bindings
        .iter()
        .zip(&plan.buffers)
        .filter(|(binding, _)| binding.access.writes())
        .map(|(_, buffer)| vec![0; usize::try_from(buffer.len()).unwrap_or(0)])
        .collect();
    Some(workload.speculation_report(variant, &outputs).is_some())
}

/// The engine: build it once, register kernels, submit batches from any thread.
///
/// Dropping it shuts it down (drains and joins), as [`Engine::shutdown`] does.
pub struct Engine {
    core: Arc<Core>,
    workers: Mutex<Vec<(usize, supervisor::WorkerHandle)>>,
    /// The `photofinish-saver` thread, while it runs (only when a store has a file).
    saver: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("backend", &self.core.backend.kind())
            .field("devices", &self.core.devices.len())
            .field("shut_down", &self.core.gate.is_closed())
            .finish()
    }
}

impl Engine {
    /// Starts configuring an engine.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// Which backend the engine runs on.
    pub fn backend_kind(&self) -> BackendKind {
        self.core.backend.kind()
    }

    /// The devices the engine runs on.
    pub fn devices(&self) -> &[DeviceInfo] {
        self.core.backend.devices()
    }

    /// Number of worker actors (one per queue of every device).
    pub fn worker_count(&self) -> usize {
        self.core.devices.iter().map(|d| d.queues.len()).sum()
    }

    /// Registers a workload: its conservative variant (0) and every speculative variant
    /// (1..) are validated and loaded in parallel — the conservative one on every
    /// device, the speculative ones on the first (the others load them on demand).
    /// Several speculative variants are raced in turn, as for
    /// [`Engine::register_variants`]. After [`Engine::shutdown`] it returns
    /// [`EngineError::ShutDown`].
    pub fn register(&self, workload: Arc<dyn Workload>) -> Result<KernelId, EngineError> {
        if self.core.gate.is_closed() {
            return Err(EngineError::ShutDown);
        }
        let variants = workload.variants();
        let name = workload.name().to_string();
        let kernel = self.core.registry.add(
            self.core.backend.as_ref(),
            name,
            KernelSource::Workload(Arc::clone(&workload)),
            variants,
            agree::KernelAgreement::Answer(workload.agreement()),
            self.core.config.max_keys_per_kernel,
        )?;
        for spec in 1..=kernel.speculative_count() {
            let declared = declares_counter_tail(&kernel, workload.as_ref(), spec);
            // Under `Disable` a kernel whose layout cannot be read is treated as fused:
            // the fused path must never run, not even once to find out.
            let fused = declared.unwrap_or(self.core.config.mode == SpeculationMode::Disable);
            kernel.set_fused(spec, fused);
            if self.core.config.mode == SpeculationMode::Force {
                self.probe_fused(&kernel, workload.as_ref(), spec)?;
            }
        }
        priors::resume_keys(&self.core, &kernel);
        Ok(kernel.id)
    }

    /// Under `SpeculationMode::Force`: runs speculative variant `spec` once on a small
    /// generated input and refuses the kernel unless it writes a counter tail (has a
    /// fused path) on this backend — never a silent fallback.
    fn probe_fused(
        &self,
        kernel: &Kernel,
        workload: &dyn Workload,
        spec: usize,
    ) -> Result<(), EngineError> {
        let unsupported = |reason: String| EngineError::SpeculationUnsupported {
            kernel: kernel.name.clone(),
            reason,
        };
        let Some(&queue) = self.core.backend.queues().first() else {
            return Err(unsupported(
                "the backend has no queue to probe the fused path on".into(),
            ));
        };
        let (handle, _) = kernel
            .handle(self.core.backend.as_ref(), queue.device, spec)
            .map_err(|source| EngineError::Backend {
                kernel: kernel.name.clone(),
                source,
            })?;
        let input = workload.generate(InputShape::Uniform, 1024, 0);
        let plan = workload.plan(spec, &input)?;
        let job = plan.into_job(queue, handle);
        let out = self
            .core
            .backend
            .dispatch(std::slice::from_ref(&job))
            .pop()
            .ok_or_else(|| unsupported("the backend returned no result for the probe".into()))?
            .map_err(|source| EngineError::Backend {
                kernel: kernel.name.clone(),
                source,
            })?;
        match workload.speculation_report(spec, &out.outputs) {
            Some(_) => {
                kernel.set_fused(spec, true);
                Ok(())
            }
            None => Err(unsupported(format!(
                "its speculative variant `{}` has no fused path (writes no counter tail) on the {} backend",
                kernel.variants[spec].name,
                self.core.backend.kind()
            ))),
        }
    }

    /// Registers a user's SPIR-V variant pair (same bindings, same push constants).
    /// Batches for it carry their own buffers ([`Batch::with_plan`]).
    pub fn register_pair(
        &self,
        name: &str,
        conservative: KernelVariant,
        speculative: KernelVariant,
    ) -> Result<KernelId, EngineError> {
        self.register_variants(name, conservative, vec![speculative])
    }

    /// Registers a user's SPIR-V kernel with a conservative variant and one or more
    /// speculative variants (all with the conservative one's bindings and push-constant
    /// size). The speculative variants are raced against the conservative one in turn,
    /// in the order given: each until its verdict, then the next; once all are decided
    /// the adopted one measured fastest runs (see [`Event::VariantInPlay`]).
    /// [`Engine::register_pair`] is the one-variant case. After [`Engine::shutdown`]
    /// both return [`EngineError::ShutDown`].
    ///
    /// On the CPU backend a variant's `cpu` function is its code; on Vulkan its
    /// `spirv`. Here three speculative variants of a byte sum, one of them wrong, race
    /// a slow conservative one:
    ///
    /// ```
    /// use std::sync::Arc;
    /// use photofinish::backend::{BindingAccess, BufferArg, KernelVariant};
    /// use photofinish::kernels::DispatchPlan;
    /// use photofinish::{BackendChoice, Batch, Engine, KernelVerdict, Output};
    ///
    /// // Sums the input bytes (plus `off_by`) after `spin` rounds of busy work.
    /// fn sum(name: &str, spin: u32, off_by: u64) -> KernelVariant {
    ///     let layout = [BindingAccess::Read, BindingAccess::Write];
    ///     KernelVariant::cpu(name, &layout, 0, move |buffers, _, _| {
    ///         let mut x = 0u32;
    ///         for i in 0..spin {
    ///             x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
    ///         }
    ///         let total: u64 = buffers[0].iter().map(|&b| u64::from(b)).sum();
    ///         buffers[1][..8].copy_from_slice(&(total + off_by).to_le_bytes());
    ///         Ok(())
    ///     })
    /// }
    ///
    /// let engine = Engine::builder()
    ///     .backend(BackendChoice::Cpu)
    ///     .without_autotune_file()
    ///     .build()?;
    /// let kernel = engine.register_variants(
    ///     "sum",
    ///     sum("sum/slow", 400_000, 0),
    ///     vec![sum("sum/wrong", 0, 1), sum("sum/fast", 1_000, 0), sum("sum/faster", 10, 0)],
    /// )?;
    /// let input: Vec<u8> = (0..=255).collect();
    /// let expected = (0..=255u64).sum::<u64>().to_le_bytes().to_vec();
    /// while engine.kernel_stats(kernel).unwrap().variant_verdicts.contains(&KernelVerdict::Undecided) {
    ///     let plan = DispatchPlan {
    ///         buffers: vec![BufferArg::Data(input.clone().into()), BufferArg::Zeroed(8)],
    ///         push_constants: Vec::new(),
    ///         workgroups: [1, 1, 1],
    ///     };
    ///     let answer = engine.submit(Batch::with_plan(kernel, plan))?.wait()?;
    ///     // The wrong variant never answers: a race returns the conservative answer.
    ///     assert_eq!(answer.output, Output::Buffers(vec![expected.clone()].into()));
    /// }
    /// let stats = engine.kernel_stats(kernel).unwrap();
    /// assert_eq!(stats.variant_verdicts[0], KernelVerdict::Rejected); // caught disagreeing
    /// assert_eq!(engine.verdict(kernel), Some(KernelVerdict::Adopted));
    /// println!("in play: variant {} of {:?}", stats.variant, stats.variant_verdicts);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn register_variants(
        &self,
        name: &str,
        conservative: KernelVariant,
        speculative: Vec<KernelVariant>,
    ) -> Result<KernelId, EngineError> {
        self.register_variants_agreeing(name, conservative, speculative, &[])
    }

    /// [`Engine::register_variants`] with the comparison of each output binding
    /// declared (SPEC §9): `agreements` lists (binding slot, [`Agreement`]) for the
    /// bindings not compared byte for byte — e.g. an `f32` output of a variant that
    /// fuses multiply-adds, within a few ulps. A slot the kernel does not write is
    /// `InvalidKernel`. A disagreement is published as `Event::MismatchCaught`, whose
    /// `detail` names the binding, the first element and the difference.
    ///
    /// ```
    /// use photofinish::{Agreement, BackendChoice, BindingAccess, Engine, KernelVariant};
    ///
    /// let engine = Engine::builder().backend(BackendChoice::Cpu).without_autotune_file().build()?;
    /// let layout = [BindingAccess::Read, BindingAccess::Write];
    /// let sum = |name: &str| KernelVariant::cpu(name, &layout, 0, |_, _, _| Ok(()));
    /// let kernel = engine.register_variants_agreeing(
    ///     "scale",
    ///     sum("scale/plain"),
    ///     vec![sum("scale/fma")],
    ///     &[(1, Agreement::f32_ulps(2))],
    /// )?;
    /// # let _ = kernel;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn register_variants_agreeing(
        &self,
        name: &str,
        conservative: KernelVariant,
        speculative: Vec<KernelVariant>,
        agreements: &[(u32, crate::policy::Agreement)],
    ) -> Result<KernelId, EngineError> {
        if self.core.gate.is_closed() {
            return Err(EngineError::ShutDown);
        }
        if self.core.config.mode == SpeculationMode::Force {
            return Err(EngineError::SpeculationUnsupported {
                kernel: name.to_string(),
                reason: "a SPIR-V pair has no counter tail the engine can read, so no fused path"
                    .into(),
            });
        }
        let variants: Vec<KernelVariant> =
            std::iter::once(conservative).chain(speculative).collect();
        let agreement = agree::KernelAgreement::for_pair(name, &variants, agreements)?;
        let kernel = self.core.registry.add(
            self.core.backend.as_ref(),
            name.to_string(),
            KernelSource::Pair,
            variants,
            agreement,
            self.core.config.max_keys_per_kernel,
        )?;
        priors::resume_keys(&self.core, &kernel);
        Ok(kernel.id)
    }

    /// What the engine knows about a kernel's races: verdict, whether it came from the
    /// autotune file (and was re-verified), every kept race sample with both arms'
    /// kernel times, and the sample that decided the verdict. `None` for an unknown id.
    pub fn kernel_stats(&self, kernel: KernelId) -> Option<KernelStats> {
        let k = self.core.registry.get(kernel)?;
        let trace = k.trace_stats();
        let mut keys: Vec<KeyStats> = k
            .tuning
            .entries()
            .iter()
            .map(|e| e.value().stats())
            .collect();
        keys.sort_by_key(|stats| stats.key);
        // The summary's races are the busiest key's (the first of equals).
        let busiest = keys
            .iter()
            .enumerate()
            .max_by_key(|(i, stats)| (stats.races, std::cmp::Reverse(*i)))
            .map(|(_, stats)| stats.clone());
        let summary = busiest.unwrap_or_else(|| KeyStats {
            key: TuningKey::for_bytes(0, None),
            verdict: KernelVerdict::Undecided,
            variant: 1,
            variant_verdicts: vec![KernelVerdict::Undecided; k.speculative_count()],
            races: 0,
            from_prior: false,
            prior_source: None,
            prior_key: None,
            cache: CacheStatus::NotCached,
            reraces: 0,
            samples: Vec::new(),
            verdict_at_sample: None,
            observation: PairedSpeculationWindow::new().observation(),
        });
        Some(KernelStats {
            kernel: k.id,
            name: k.name.clone(),
            verdict: k.verdict(),
            variant: summary.variant,
            variant_verdicts: summary.variant_verdicts,
            cache: summary.cache,
            samples: summary.samples,
            verdict_at_sample: summary.verdict_at_sample,
            observation: summary.observation,
            trace,
            keys,
        })
    }

    /// The verdict of `kernel` on tuning key `key` (see [`Batch::tuning_key`]); `None`
    /// for an unknown id or a key the kernel does not hold in memory (not met yet, or
    /// forgotten: see [`EngineBuilder::max_keys_per_kernel`]).
    pub fn verdict_for(&self, kernel: KernelId, key: TuningKey) -> Option<KernelVerdict> {
        let k = self.core.registry.get(kernel)?;
        k.key_state(&key).map(|state| state.verdict())
    }

    /// The autotune store of `device` (verdicts and race winners measured on it, and
    /// what was loaded from its file). `None` for an unknown device.
    pub fn autotune_store(&self, device: usize) -> Option<&AutotuneStore> {
        self.core.tunes.get(device).map(|t| &t.store)
    }

    /// The file `device`'s autotune store is saved to; `None` when persistence is off
    /// (or for an unknown device).
    pub fn autotune_path(&self, device: usize) -> Option<&std::path::Path> {
        self.core.tunes.get(device)?.path.as_deref()
    }

    /// Blocks until every autotune save requested before this call is done: each
    /// verdict change made so far is written to its device's autotune file (or its
    /// save failed and was logged; the store stays correct in memory).
    ///
    /// Verdict changes are saved by a background thread (`photofinish-saver`), never
    /// by the worker that made them, so a worker never waits on the disk; this is the
    /// way to wait for the file, e.g. before another process reads it. Saves requested
    /// while one runs coalesce into one more save. Returns at once when persistence is
    /// off (`without_autotune_file`) or after [`Engine::shutdown`], which saves every
    /// store itself.
    pub fn flush_autotune(&self) {
        if let Some(saves) = &self.core.saves {
            saves.flush();
        }
    }

    /// Why the last save of `device`'s autotune store failed; `None` when it succeeded,
    /// when none ran yet, when persistence is off or for an unknown device. A failed
    /// save is also logged (`warn`); the store stays correct in memory. After
    /// [`Engine::shutdown`], which saves every store, `None` means the file holds this
    /// engine's verdicts (merged with those other processes saved there).
    pub fn autotune_save_error(
        &self,
        device: usize,
    ) -> Option<Arc<crate::autotune::AutotuneError>> {
        self.core.saves.as_ref()?.last_error(device)
    }

    /// What loading `device`'s autotune file found (missing, loaded, or a fresh start
    /// after an unusable file, with the error); `None` when persistence is off.
    pub fn autotune_load_report(&self, device: usize) -> Option<&LoadReport> {
        self.core.tunes.get(device)?.report.as_ref()
    }

    /// The fleet client (SPEC §13), when the engine was built with one
    /// ([`EngineBuilder::fleet`] or `PHOTOFINISH_FLEET_URL`): its local copy
    /// ([`Fleet::entries`](crate::fleet::Fleet::entries)), counters and availability.
    /// The engine reads its status stream itself and publishes it as
    /// [`Event::FleetUnavailable`] and [`Event::FleetRestored`]; subscribe to those
    /// rather than to [`Fleet::statuses`](crate::fleet::Fleet::statuses).
    #[cfg(feature = "redis")]
    pub fn fleet(&self) -> Option<&crate::fleet::Fleet> {
        self.core.fleet.client()
    }

    /// The key under which the fleet holds the verdict on speculative variant
    /// `variant` of `kernel` for tuning key `key` measured on `device` (whether or not
    /// an engine has written it); `None` for an unknown kernel, variant or device.
    #[cfg(feature = "redis")]
    pub fn fleet_key(
        &self,
        kernel: KernelId,
        variant: usize,
        key: TuningKey,
        device: usize,
    ) -> Option<crate::fleet::FleetKey> {
        let k = self.core.registry.get(kernel)?;
        let info = self.core.backend.devices().get(device)?;
        let speculative = k.keys.get(variant).filter(|_| variant > 0)?;
        Some(fleet::fleet_key(info, &k.keys[0], speculative, key))
    }

    /// Waits up to `timeout` until every verdict change this engine made so far is in
    /// the fleet's Redis (or refused there, a mismatch being sticky); true when none is
    /// left, and at once without a fleet. Verdict changes are shared by background
    /// threads, never by the worker that made them; this is the way to wait for them,
    /// e.g. before another host starts. [`Engine::shutdown`] does it (for at most 2 s,
    /// and only while Redis answers).
    pub fn flush_fleet(&self, timeout: std::time::Duration) -> bool {
        self.core.fleet.flush(timeout)
    }

    /// The shared adaptive speculator (fused paths follow it in `SpeculationMode::Auto`).
    pub fn speculator(&self) -> &AdaptiveSpeculator {
        &self.core.speculator
    }

    /// The kernel's current verdict over its tuning keys (see
    /// [`KernelStats::verdict`]; [`Engine::verdict_for`] gives one key's); `None` for
    /// an unknown id.
    pub fn verdict(&self, kernel: KernelId) -> Option<KernelVerdict> {
        self.core.registry.get(kernel).map(|k| k.verdict())
    }

    /// A [`Subscription`] to every event published from now on (the first it reads is
    /// [`Event::BackendSelected`]). Each subscriber holds at most
    /// [`EngineBuilder::event_capacity`] unread events; when it is full, events for it
    /// are dropped and counted. Dropping it unsubscribes.
    pub fn subscribe(&self) -> Subscription {
        self.core.bus.subscribe()
    }

    /// Subscribers the event bus holds now: the live subscriptions and those dropped
    /// since the last subscribe or event. For tests.
    #[doc(hidden)]
    pub fn event_subscribers(&self) -> usize {
        self.core.bus.subscribers()
    }

    /// Events dropped because a subscriber did not keep up.
    pub fn dropped_events(&self) -> u64 {
        self.core.bus.dropped()
    }

    /// Submits a batch, blocking while the device's queue is full. The ticket gets
    /// exactly one answer; by the time it is in, the engine has dropped its reference
    /// to the batch's payload, so an input the caller still holds (an `Arc<[u8]>`) is
    /// its alone again (one exception: a race whose speculative arm is still running
    /// when the caller is answered, past the 100 ms grace, lets go of the input when
    /// that arm ends):
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use photofinish::{kernels, BackendChoice, Batch, Engine};
    /// let engine = Engine::builder()
    ///     .backend(BackendChoice::Cpu)
    ///     .without_autotune_file()
    ///     .build()?;
    /// let kernel = engine.register(kernels::by_name("reduce").expect("built in"))?;
    /// let mut input: Arc<[u8]> = vec![1, 2, 3].into();
    /// engine.submit(Batch::new(kernel, Arc::clone(&input)))?.wait()?;
    /// // Reuse the buffer in place for the next batch.
    /// Arc::get_mut(&mut input).expect("the engine let go of it")[0] = 7;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn submit(&self, batch: Batch) -> Result<Ticket, EngineError> {
        let (job, ticket, device) = self.accept(batch)?;
        let Some(_pass) = self.core.gate.enter() else {
            return Err(EngineError::ShutDown);
        };
        match self.core.devices[device].mailbox.send(Msg::Run(job)) {
            Ok(()) => Ok(ticket),
            // The receivers live in `Core` as long as any sender; this cannot happen,
            // but if it did the job's responder answered the ticket on drop.
            Err(_) => Err(EngineError::ShutDown),
        }
    }

    /// Submits a batch without blocking: `Full` (with the batch back) when the
    /// device's queue has no room.
    #[allow(
        clippy::result_large_err,
        reason = "a refused batch goes back by value, as crossbeam's `TrySendError` gives \
                  back its message; boxing it would allocate for every refusal of a full queue"
    )]
    pub fn try_submit(&self, batch: Batch) -> Result<Ticket, TrySubmitError> {
        // Checked before the batch is taken apart, so that a refusal hands it back
        // whole (a batch is not cloned for that: a plan's clone is a copy).
        let accepted = if self.core.gate.is_closed() {
            Err(EngineError::ShutDown)
        } else {
            self.check(&batch)
                .and_then(|kernel| Ok((kernel, self.pick_device()?)))
        };
        let (kernel, device) = match accepted {
            Ok(accepted) => accepted,
            Err(EngineError::ShutDown) => return Err(TrySubmitError::ShutDown(batch)),
            Err(e) => return Err(TrySubmitError::Rejected(batch, e)),
        };
        let (job, ticket) = self.job(kernel, batch.payload, batch.app);
        let Some(_pass) = self.core.gate.enter() else {
            return Err(TrySubmitError::ShutDown(job.into_batch()));
        };
        match self.core.devices[device].mailbox.try_send(Msg::Run(job)) {
            Ok(()) => Ok(ticket),
            Err(TrySendError::Full(msg)) | Err(TrySendError::Disconnected(msg)) => match msg {
                Msg::Run(job) => Err(TrySubmitError::Full(job.into_batch())),
                _ => unreachable!("a refused send hands back the message it was given"),
            },
        }
    }

    /// Submits several batches in one call and returns their tickets in order.
    ///
    /// It does what a `submit` per batch does, for less: the batches go to one device
    /// (the one a `submit` would pick) in a single hand-off — a few copies of one
    /// message that the device's workers claim the batches from a few at a time, and one
    /// wake-up — so they still run on all the device's queues at once. Use it where a
    /// caller has batches ready together (a frame's dispatches, a window of a stream).
    ///
    /// All or nothing: every batch is checked first, and if one is refused (an unknown
    /// kernel, the wrong payload) the call returns that error and submits none; after
    /// shutdown it returns [`EngineError::ShutDown`]. No batch gives an empty list.
    ///
    /// Backpressure: the call blocks while the device's queue is full, as `submit`
    /// does, but a call's batches take only as many places in that queue as the copies
    /// of its message (at most one per worker of the device), however many batches it
    /// carries: the caller bounds how many batches it has in flight by how many it puts
    /// in a call.
    ///
    /// ```
    /// # use photofinish::kernels::{self, Workload};
    /// # use photofinish::{BackendChoice, Batch, Engine, Output};
    /// let engine = Engine::builder()
    ///     .backend(BackendChoice::Cpu)
    ///     .without_autotune_file()
    ///     .build()?;
    /// let reduce = kernels::by_name("reduce").expect("built in");
    /// let kernel = engine.register(reduce.clone())?;
    /// let inputs: Vec<Vec<u8>> = (1..=8u8).map(|n| vec![n; 16]).collect();
    /// let batches = inputs.iter().map(|input| Batch::new(kernel, input.clone()));
    /// let tickets = engine.submit_many(batches)?;
    /// for (input, ticket) in inputs.iter().zip(tickets) {
    ///     let expected = reduce.reference(input);
    ///     assert_eq!(ticket.wait()?.output, Output::Answer(expected));
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn submit_many(
        &self,
        batches: impl IntoIterator<Item = Batch>,
    ) -> Result<Vec<Ticket>, EngineError> {
        if self.core.gate.is_closed() {
            return Err(EngineError::ShutDown);
        }
        let batches = batches.into_iter();
        let mut jobs = kept_windows::jobs();
        jobs.reserve(batches.size_hint().0);
        let mut tickets: Vec<Ticket> = Vec::with_capacity(batches.size_hint().0);
        // The kernel of the previous batch: a window is mostly of one kernel, whose
        // registry entry is then read once.
        let mut last: Option<Arc<Kernel>> = None;
        for batch in batches {
            let kernel = match last.take() {
                Some(kernel) if kernel.id == batch.kernel => Ok(kernel),
                _ => self.lookup(batch.kernel),
            };
            match kernel.and_then(|kernel| fits(kernel, &batch.payload, self.core.backend.as_ref()))
            {
                Ok(kernel) => {
                    last = Some(Arc::clone(&kernel));
                    let (job, ticket) = self.job(kernel, batch.payload, batch.app);
                    // The ticket `PREFETCH_AHEAD` earlier prefetches this one's slot
                    // when it is waited for.
                    let earlier = tickets.len().checked_sub(PREFETCH_AHEAD);
                    if let Some(earlier) = earlier.and_then(|i| tickets.get_mut(i)) {
                        earlier.wait_ahead(&ticket);
                    }
                    jobs.push(job);
                    tickets.push(ticket);
                }
                Err(e) => {
                    disarm_all(jobs);
                    return Err(e);
                }
            }
        }
        if jobs.is_empty() {
            kept_windows::keep_jobs(jobs);
            return Ok(tickets);
        }
        let device = match self.pick_device() {
            Ok(device) => device,
            Err(e) => {
                disarm_all(jobs);
                return Err(e);
            }
        };
        let Some(_pass) = self.core.gate.enter() else {
            disarm_all(jobs);
            return Err(EngineError::ShutDown);
        };
        let target = &self.core.devices[device];
        let sent = if jobs.len() == 1 {
            let sent = target.mailbox.send_all(jobs.pop().map(Msg::Run));
            kept_windows::keep_jobs(jobs);
            sent
        } else {
            // One copy per worker that could take a share of the batches.
            let copies = jobs.len().min(target.queues.len()).max(1);
            let window = kept_windows::window(&mut jobs, copies);
            let sent = target
                .mailbox
                .send_all((0..copies).map(|_| Msg::Window(Arc::clone(&window))));
            kept_windows::keep(window, jobs);
            sent
        };
        match sent {
            Ok(()) => Ok(tickets),
            // As in `submit`: cannot happen (the mailbox holds its receiver), and the
            // jobs' responders would answer their tickets on drop.
            Err(_) => Err(EngineError::ShutDown),
        }
    }

    /// Validates a batch and picks its device.
    fn accept(&self, batch: Batch) -> Result<(Job, Ticket, usize), EngineError> {
        if self.core.gate.is_closed() {
            return Err(EngineError::ShutDown);
        }
        let kernel = self.check(&batch)?;
        let device = self.pick_device()?;
        let (job, ticket) = self.job(kernel, batch.payload, batch.app);
        Ok((job, ticket, device))
    }

    /// The batch's kernel, if it is registered and the batch carries what it takes.
    fn check(&self, batch: &Batch) -> Result<Arc<Kernel>, EngineError> {
        fits(
            self.lookup(batch.kernel)?,
            &batch.payload,
            self.core.backend.as_ref(),
        )
    }

    /// The registered kernel `id`.
    fn lookup(&self, id: KernelId) -> Result<Arc<Kernel>, EngineError> {
        self.core
            .registry
            .get(id)
            .ok_or(EngineError::UnknownKernel(id.get()))
    }

    /// An accepted batch's job and the caller's ticket for its answer. Every
    /// submission path makes its jobs here, so this is where the thread frees one plan
    /// it retired (`retired_plans`), just after the caller allocated this batch.
    fn job(&self, kernel: Arc<Kernel>, payload: Payload, app: Option<u64>) -> (Job, Ticket) {
        retired_plans::free_one();
        let (responder, ticket) = ticket::one_shot(self.core.config.busy_wait);
        let job = Job {
            kernel,
            payload,
            app,
            responder,
        };
        (job, ticket)
    }

    /// The live device with the shortest mailbox (round robin among equals).
    fn pick_device(&self) -> Result<usize, EngineError> {
        let n = self.core.devices.len();
        if n == 1 {
            // One device: no mailbox lengths to compare (reading them costs a cache
            // line the workers write) and no round robin to advance.
            return if self.core.is_lost(0) {
                Err(EngineError::DeviceLost { device: 0 })
            } else {
                Ok(0)
            };
        }
        let start = self.core.next_device.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| (start + i) % n)
            .filter(|&d| !self.core.is_lost(d))
            .min_by_key(|&d| self.core.devices[d].mailbox.len())
            .ok_or(EngineError::DeviceLost {
                device: start % n.max(1),
            })
    }

    /// Stops accepting batches, answers every batch already accepted, joins the
    /// workers, then saves every autotune store (on the saver thread, which it stops
    /// and joins). Idempotent, and safe to call from several threads at once: every
    /// call returns, and none before all of that is done. Dropping the engine does the
    /// same.
    pub fn shutdown(&self) {
        // Only the caller that closes the gate runs this; the others wait until it has
        // (see `Gate::shut_down_once`).
        self.core.gate.shut_down_once(|| {
            let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
            // No producer is inside the gate any more, so every accepted batch is
            // already in a mailbox, ahead of these stop messages: one per worker.
            for (device, _) in workers.iter() {
                // The receiver lives in `Core`, so this cannot fail.
                let _ = self.core.devices[*device].mailbox.send(Msg::Stop);
            }
            for (_, handle) in workers.drain(..) {
                if handle.join().is_err() {
                    tracing::error!("a worker thread ended by panic outside its supervisor");
                }
            }
            drop(workers);
            self.core.preloads.wait_idle();
            // The workers are joined, so no request can come after these: the saver's
            // last pass saves every store (races record winners without a verdict
            // change, so each store is saved, dirty or not), then it exits.
            if let Some(saves) = &self.core.saves {
                saves.request_all();
                saves.stop();
            }
            let saver = self.saver.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(handle) = saver {
                if handle.join().is_err() {
                    tracing::error!("the autotune saver thread ended by panic");
                }
            }
            // No verdict can change any more: the fleet link sends what it holds
            // (waiting a bounded time, only while Redis answers) and stops.
            self.core.fleet.stop();
        });
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// `kernel`, if `payload` is what it takes; a batch by items only if every variant can
/// dispatch its items within every device's `maxComputeWorkGroupCount[0]`.
fn fits(
    kernel: Arc<Kernel>,
    payload: &Payload,
    backend: &dyn Backend,
) -> Result<Arc<Kernel>, EngineError> {
    match (&kernel.source, payload) {
        (KernelSource::Workload(_), Payload::Input(_)) | (KernelSource::Pair, Payload::Plan(_)) => {
            Ok(kernel)
        }
        (KernelSource::Pair, Payload::Items(_, items)) => {
            let max_x = backend
                .devices()
                .iter()
                .map(|d| d.limits.max_workgroup_count[0])
                .min()
                .unwrap_or(u32::MAX);
            for variant in &kernel.variants {
                if let Err(source) = variant.workgroups_for_items(*items, max_x) {
                    return Err(EngineError::Plan {
                        kernel: kernel.name.clone(),
                        source,
                    });
                }
            }
            Ok(kernel)
        }
        (KernelSource::Workload(_), Payload::Plan(_) | Payload::Items(..)) => {
            Err(EngineError::WrongPayload {
                kernel: kernel.name.clone(),
                expected: "input bytes",
                fix: "`Batch::new(kernel, input)`",
            })
        }
        (KernelSource::Pair, Payload::Input(_)) => Err(EngineError::WrongPayload {
            kernel: kernel.name.clone(),
            expected: "a dispatch plan (buffers, push constants, workgroups or items)",
            fix: "`Batch::with_plan(kernel, plan)` or `Batch::for_items(kernel, plan, items)`",
        }),
    }
}

/// Withdraws the jobs of a call that submits none of them: their tickets are dropped
/// unanswered, never waited on.
fn disarm_all(mut jobs: Vec<Job>) {
    for job in jobs.drain(..) {
        job.responder.disarm();
    }
    kept_windows::keep_jobs(jobs);
}

/// The windows a thread sent with `submit_many`, kept for its next ones, and the list
/// it gathers a window's jobs in: a window is one block of a cache-padded cell per
/// batch (8 KiB for 64), and sending each in a new one cost the producer an
/// allocation of the allocator's large sizes per call — with glibc, a sweep of every
/// small block freed since the last one (`malloc_consolidate`) — and left its free to
/// whichever worker let go of it last, from another core. A kept window is used again
/// once every worker let go of it (its jobs all taken), for a call with as many
/// batches. At most [`kept_windows::MAX`] are kept per thread, of at most
/// [`kept_windows::MAX_CELLS`] batches each; they are freed when the thread ends.
#[cfg(not(photofinish_loom))]
mod kept_windows {
    use std::cell::RefCell;

    use super::window::Window;
    use super::Job;
    use std::sync::Arc;

    /// The most windows a thread keeps.
    pub(super) const MAX: usize = 4;
    /// The largest window kept (a larger one is freed as before).
    pub(super) const MAX_CELLS: usize = 1024;

    #[derive(Default)]
    struct Kept {
        windows: Vec<Arc<Window<Job>>>,
        jobs: Vec<Job>,
    }

    thread_local! {
        static KEPT: RefCell<Kept> = RefCell::new(Kept::default());
    }

    /// An empty list to gather a window's jobs in (the thread's kept one, if any).
    pub(super) fn jobs() -> Vec<Job> {
        KEPT.try_with(|kept| {
            kept.try_borrow_mut()
                .map(|mut kept| std::mem::take(&mut kept.jobs))
                .unwrap_or_default()
        })
        .unwrap_or_default()
    }

    /// A window of `jobs` (which it empties) for `copies` claimers: a kept one of as
    /// many cells that every worker let go of, refilled, or a new one.
    pub(super) fn window(jobs: &mut Vec<Job>, copies: usize) -> Arc<Window<Job>> {
        let found = KEPT
            .try_with(|kept| {
                let mut kept = kept.try_borrow_mut().ok()?;
                // A count of one is this thread's copy alone (no weak references are
                // made); `get_mut` below confirms it.
                let free = kept
                    .windows
                    .iter()
                    .position(|w| w.cells() == jobs.len() && Arc::strong_count(w) == 1)?;
                // `remove`, not `swap_remove`: the others stay oldest first.
                Some(kept.windows.remove(free))
            })
            .ok()
            .flatten();
        if let Some(mut window) = found {
            if let Some(cells) = Arc::get_mut(&mut window) {
                cells.refill(jobs.drain(..), copies);
                return window;
            }
        }
        Arc::new(Window::for_copies(std::mem::take(jobs), copies))
    }

    /// Keeps a copy of `window`, which was just sent, and the emptied list its jobs
    /// were gathered in, for this thread's next calls (the oldest kept window makes
    /// room).
    pub(super) fn keep(window: Arc<Window<Job>>, jobs: Vec<Job>) {
        if window.cells() <= MAX_CELLS {
            let _ = KEPT.try_with(|kept| {
                if let Ok(mut kept) = kept.try_borrow_mut() {
                    if kept.windows.len() == MAX {
                        kept.windows.remove(0);
                    }
                    kept.windows.push(window);
                }
            });
        }
        keep_jobs(jobs);
    }

    /// The addresses of the windows this thread keeps, oldest first.
    #[cfg(test)]
    pub(super) fn kept() -> Vec<usize> {
        KEPT.with_borrow(|kept| {
            kept.windows
                .iter()
                .map(|w| Arc::as_ptr(w) as usize)
                .collect()
        })
    }

    /// True once every worker let go of this thread's kept windows.
    #[cfg(test)]
    pub(super) fn all_free() -> bool {
        KEPT.with_borrow(|kept| kept.windows.iter().all(|w| Arc::strong_count(w) == 1))
    }

    /// Keeps the emptied list a call gathered its jobs in.
    pub(super) fn keep_jobs(jobs: Vec<Job>) {
        let _ = KEPT.try_with(|kept| {
            if let Ok(mut kept) = kept.try_borrow_mut() {
                if jobs.is_empty() && jobs.capacity() <= MAX_CELLS {
                    kept.jobs = jobs;
                }
            }
        });
    }
}

/// Under loom nothing is kept (a model's window belongs to one execution).
#[cfg(photofinish_loom)]
mod kept_windows {
    use super::window::Window;
    use super::Job;
    use std::sync::Arc;

    pub(super) fn jobs() -> Vec<Job> {
        Vec::new()
    }

    pub(super) fn window(jobs: &mut Vec<Job>, copies: usize) -> Arc<Window<Job>> {
        Arc::new(Window::for_copies(std::mem::take(jobs), copies))
    }

    pub(super) fn keep(window: Arc<Window<Job>>, jobs: Vec<Job>) {
        drop((window, jobs));
    }

    pub(super) fn keep_jobs(jobs: Vec<Job>) {
        drop(jobs);
    }
}

#[cfg(all(test, not(photofinish_loom)))]
mod tests {
    use super::*;
    use crate::backend::{BindingAccess, BufferArg};
    use std::time::{Duration, Instant};

    /// Runs `test` on a thread of its own (what is kept is kept per thread: spare
    /// slots, windows, retired plans; and the harness may run several tests on one
    /// thread) and fails if it panicked.
    pub(super) fn on_a_thread_of_its_own(test: impl FnOnce() + Send + 'static) {
        std::thread::spawn(test)
            .join()
            .expect("the test thread panicked");
    }

    /// An engine on the test backend (two queues) with a pair that adds one to its
    /// read buffer's bytes into its written one.
    fn engine_with_pair() -> (Engine, KernelId) {
        let engine = Engine::builder()
            .backend_instance(Arc::new(TestBackend::new(1, 2, 1)))
            .without_autotune_file()
            .build()
            .expect("the test backend engine builds");
        let add_one = |name: &str| {
            KernelVariant::cpu(
                name,
                &[BindingAccess::Read, BindingAccess::Write],
                0,
                |buffers, _, _| {
                    let out: Vec<u8> = buffers[0].iter().map(|b| b.wrapping_add(1)).collect();
                    buffers[1].copy_from_slice(&out);
                    Ok(())
                },
            )
        };
        let kernel = engine
            .register_pair(
                "add-one",
                add_one("add/conservative"),
                add_one("add/speculative"),
            )
            .expect("the pair registers");
        (engine, kernel)
    }

    fn batch(kernel: KernelId, data: &Arc<[u8]>) -> Batch {
        Batch::with_plan(
            kernel,
            DispatchPlan {
                buffers: vec![
                    BufferArg::Data(Arc::clone(data)),
                    BufferArg::Zeroed(data.len() as u64),
                ],
                push_constants: Vec::new(),
                workgroups: [1, 1, 1],
            },
        )
    }

    fn wait_all(tickets: Vec<Ticket>, data: &[u8]) {
        let expected: Vec<u8> = data.iter().map(|b| b.wrapping_add(1)).collect();
        for ticket in tickets {
            let answer = ticket.wait().expect("the batch is answered");
            assert_eq!(
                answer.output,
                Output::Buffers(vec![expected.clone()].into())
            );
        }
    }

    /// Waits (10 s at most) until every worker let go of this thread's kept windows:
    /// a worker drops its copy when it finds the window drained, just after it
    /// answered its last batch.
    fn until_workers_let_go() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !kept_windows::all_free() {
            assert!(
                Instant::now() < deadline,
                "a worker still holds a drained window"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_threads_next_window_of_as_many_batches_reuses_its_kept_one() {
        on_a_thread_of_its_own(|| {
            let (engine, kernel) = engine_with_pair();
            let data: Arc<[u8]> = vec![1, 2, 3].into();
            let window = || {
                let tickets = engine
                    .submit_many((0..8).map(|_| batch(kernel, &data)))
                    .expect("the window is accepted");
                wait_all(tickets, &data);
                until_workers_let_go();
            };
            window();
            let first = kept_windows::kept();
            assert_eq!(first.len(), 1, "the sent window was not kept");
            window();
            assert_eq!(
                kept_windows::kept(),
                first,
                "the kept window was not reused"
            );
            // Another size: a new window, kept beside the first.
            let tickets = engine
                .submit_many((0..5).map(|_| batch(kernel, &data)))
                .expect("the window is accepted");
            wait_all(tickets, &data);
            let kept = kept_windows::kept();
            assert_eq!(kept.len(), 2);
            assert_eq!(kept[0], first[0]);
            // At most MAX are kept: the oldest make room.
            for n in 2..(2 + kept_windows::MAX) {
                until_workers_let_go();
                let tickets = engine
                    .submit_many((0..n).map(|_| batch(kernel, &data)))
                    .expect("the window is accepted");
                wait_all(tickets, &data);
            }
            assert_eq!(kept_windows::kept().len(), kept_windows::MAX);
            engine.shutdown();
        });
    }

    #[test]
    fn taken_plans_let_go_of_their_data_and_are_freed_at_the_next_batches() {
        on_a_thread_of_its_own(|| {
            let (engine, kernel) = engine_with_pair();
            let mut data: Arc<[u8]> = vec![7; 16].into();
            let tickets = engine
                .submit_many((0..8).map(|_| batch(kernel, &data)))
                .expect("the window is accepted");
            wait_all(tickets, &data);
            // The engine holds no reference to the plans' data once the answers are
            // taken, though their blocks wait to be freed.
            assert!(
                Arc::get_mut(&mut data).is_some(),
                "the engine still holds the data"
            );
            assert_eq!(retired_plans::waiting(), 8);
            let ticket = engine.submit(batch(kernel, &data)).expect("accepted");
            assert_eq!(retired_plans::waiting(), 7, "a submit frees one");
            wait_all(vec![ticket], &data);
            assert_eq!(retired_plans::waiting(), 8);
            let tickets = engine
                .submit_many((0..3).map(|_| batch(kernel, &data)))
                .expect("the window is accepted");
            assert_eq!(retired_plans::waiting(), 5, "a window frees one a batch");
            wait_all(tickets, &data);
            // Never more than MAX wait.
            let tickets = engine
                .submit_many((0..retired_plans::MAX + 10).map(|_| batch(kernel, &data)))
                .expect("the window is accepted");
            wait_all(tickets, &data);
            assert_eq!(retired_plans::waiting(), retired_plans::MAX);
            assert!(
                Arc::get_mut(&mut data).is_some(),
                "the engine still holds the data"
            );
            engine.shutdown();
        });
    }
}
