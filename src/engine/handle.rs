//! The engine handle ([`Engine`]): what it is built of (the shared [`Core`], the
//! workers' handles, the saver thread), what it reports (kernel stats, verdicts,
//! autotune stores, the fleet, events), and its shutdown. Registering kernels is in
//! `register.rs`, submitting batches in `submit.rs`: other `impl Engine` blocks.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::autotune::{AutotuneStore, LoadReport, PairedSpeculationWindow};
use crate::backend::{BackendKind, DeviceInfo};
use crate::speculator::AdaptiveSpeculator;

use super::core::Core;
use super::events::{KernelVerdict, Subscription};
#[cfg(feature = "redis")]
use super::fleet;
use super::job::Msg;
use super::keys::KeyStats;
use super::registry::KernelStats;
use super::sample::{CacheStatus, KernelId};
use super::supervisor;
use super::tuning::TuningKey;
#[cfg(doc)] // for doc links
use super::{batch::Batch, events::Event};

/// The engine: build it once, register kernels, submit batches from any thread.
///
/// Dropping it shuts it down (drains and joins), as [`Engine::shutdown`] does.
pub struct Engine {
    pub(super) core: Arc<Core>,
    pub(super) workers: Mutex<Vec<(usize, supervisor::WorkerHandle)>>,
    /// The `photofinish-saver` thread, while it runs (only when a store has a file).
    pub(super) saver: Mutex<Option<JoinHandle<()>>>,
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
    /// forgotten: see [`EngineBuilder::max_keys_per_kernel`](crate::EngineBuilder::max_keys_per_kernel)).
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
    /// ([`EngineBuilder::fleet`](crate::EngineBuilder::fleet) or `PHOTOFINISH_FLEET_URL`): its local copy
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
    /// [`EngineBuilder::event_capacity`](crate::EngineBuilder::event_capacity) unread events; when it is full, events for it
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
            super::trace_jit::report_unused(&self.core);
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
