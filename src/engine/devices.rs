//! A device as the engine holds it: its mailbox, its queues (each with a count of who
//! uses it, lent as a [`QueueUse`]), whether it was lost, the load of its backend calls,
//! and its autotune store with the file it is saved to ([`DeviceTune`]). It holds
//! state; the choices that read it are [`Core`](super::core::Core)'s and the workers'.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::autotune::{AutotuneStore, LoadReport};
use crate::backend::QueueId;

use super::contention;
use super::job::Msg;
use super::mailbox::Mailbox;

/// One queue a worker owns, with a count of who is using it. Each on cache lines of
/// its own: its worker writes the count twice a batch, and packed together the device's
/// sixteen counts shared a few lines among all its workers.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct QueueSlot {
    pub(crate) id: QueueId,
    pub(super) users: AtomicU32,
}

/// One device: its mailbox and its queues.
#[derive(Debug)]
pub(crate) struct DeviceSlot {
    pub(crate) mailbox: Mailbox<Msg>,
    pub(crate) queues: Vec<QueueSlot>,
    pub(super) lost: AtomicBool,
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

/// A queue in use; released on drop.
#[derive(Debug)]
pub(crate) struct QueueUse<'a> {
    pub(super) slot: Option<&'a QueueSlot>,
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
