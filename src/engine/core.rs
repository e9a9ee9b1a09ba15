//! The state every worker and the engine handle share ([`Core`]): the backend, the
//! kernel registry, the event bus, the submission gate, the devices, the settings
//! fixed at build ([`Config`]), the speculator, the autotune stores and the fleet link;
//! and the questions about devices and queues that workers ask of it (lost, idle,
//! a partner queue for a race, a queue for a retry). It answers and lends; it never
//! runs a batch.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::backend::{Backend, QueueId};
use crate::speculator::{AdaptiveSpeculator, SpeculationMode};

use super::contention;
use super::devices::{DeviceSlot, DeviceTune, QueueSlot, QueueUse};
use super::events::{Event, EventBus};
use super::fleet;
use super::mailbox::Gate;
use super::registry::{Kernel, Registry};
use super::saver;
use super::trace;

/// Settings fixed at build.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// One audit race in this many batches of an adopted kernel (0: none); also how
    /// often a fused kernel probes its fused path while the speculator has it off.
    pub(crate) audit_period: u64,
    /// `Verify::Always`: every batch of an adopted variant is an audit race.
    pub(crate) verify_always: bool,
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

/// The state every worker and the engine handle share.
pub(crate) struct Core {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) registry: Registry,
    pub(crate) bus: Arc<EventBus>,
    pub(super) gate: Gate,
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
    pub(super) next_device: AtomicUsize,
    /// The least `maxComputeWorkGroupCount[0]` of the devices: a batch by items must
    /// fit it on every device, since any device may run it.
    pub(crate) max_workgroups_x: u32,
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
