//! The fleet link thread, `photofinish-fleet-link` (feature `redis`; the link itself
//! and the story are `fleet.rs`'s): it hands this engine's verdict changes to the fleet
//! client, publishes the client's reachability as events, and applies other hosts'
//! live changes to this engine's keys under way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::fleet::{Fleet, FleetEntry, FleetStatus};

use super::core::Core;
use super::error::EngineError;
use super::events::{Event, KernelVerdict};
use super::fleet::{fleet_key, Msg, Offer, POLL, SHUTDOWN_FLUSH, THREAD_NAME};
use super::keys::{Basis, Hint, KeyState, PriorSource};
use super::record;
use super::registry::Kernel;

/// Starts the link thread of `core`'s fleet (a no-op without a fleet).
pub(crate) fn start(core: &Arc<Core>) -> Result<(), EngineError> {
    let Some(on) = &core.fleet.on else {
        return Ok(());
    };
    let link = Link {
        core: Arc::clone(core),
        fleet: Arc::clone(&on.fleet),
        rx: on.rx.clone(),
        queued: Arc::clone(&on.queued),
        seen: None,
    };
    let handle = std::thread::Builder::new()
        .name(THREAD_NAME.to_owned())
        .spawn(move || link.run())
        .map_err(|e| EngineError::Spawn {
            thread: THREAD_NAME.to_owned(),
            reason: e.to_string(),
        })?;
    *on.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
    Ok(())
}

/// The link thread's state.
struct Link {
    core: Arc<Core>,
    fleet: Arc<Fleet>,
    rx: Receiver<Msg>,
    queued: Arc<AtomicU64>,
    /// The client's generation at the last rescan.
    seen: Option<u64>,
}

impl Link {
    fn run(mut self) {
        loop {
            match self.rx.recv_timeout(POLL) {
                Ok(Msg::Offer(offer)) => self.share(offer),
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.statuses();
            let generation = self.fleet.generation();
            if self.seen != Some(generation) {
                self.seen = Some(generation);
                self.rescan();
            }
        }
        while let Ok(Msg::Offer(offer)) = self.rx.try_recv() {
            self.share(offer);
        }
        if self.fleet.is_available() && !self.fleet.flush(SHUTDOWN_FLUSH) {
            tracing::warn!(
                "fleet: some verdict changes did not reach Redis before shutdown (they are in the local file)"
            );
        }
        self.statuses();
    }

    /// Builds the fleet key and entry of `offer` and hands them to the client.
    fn share(&self, offer: Offer) {
        if let Some(info) = self.core.backend.devices().get(offer.device) {
            let key = fleet_key(info, &offer.conservative, &offer.speculative, offer.key);
            self.fleet.publish(&key, FleetEntry::now(offer.verdict));
        }
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }

    /// Publishes the client's reachability changes as engine events.
    fn statuses(&self) {
        for status in self.fleet.statuses().try_iter() {
            let event = match status {
                FleetStatus::Unavailable { reason } => Event::FleetUnavailable { reason },
                FleetStatus::Restored => Event::FleetRestored,
            };
            self.core.bus.publish(event);
        }
    }

    /// Applies the fleet's entries to this engine's keys under way (see the module
    /// docs, "Live changes").
    fn rescan(&self) {
        let core = &*self.core;
        for kernel in core.registry.all() {
            for entry in kernel.tuning.entries().iter() {
                let state = entry.value();
                for spec in 1..=state.speculative_count() {
                    if let Some(hint) =
                        core.fleet
                            .prior(core.backend.devices(), &kernel, state, spec)
                    {
                        apply_live(core, &kernel, state, spec, hint);
                    }
                }
            }
        }
    }
}

/// One fleet verdict heard while `state`'s key is in this engine's table.
fn apply_live(core: &Core, kernel: &Kernel, state: &KeyState, spec: usize, hint: Hint) {
    let mismatch = hint.verdict.reason.is_mismatch();
    let verdict = state.verdict_of(spec);
    {
        let mut log = state.log(spec);
        if log.basis == Basis::Broken {
            return;
        }
        if !mismatch {
            if verdict != KernelVerdict::Undecided
                || log.hint.is_some()
                || log.rerace.left.is_some()
            {
                return;
            }
            if hint.verdict.verdict == KernelVerdict::Adopted {
                tracing::info!(kernel = %kernel.name, key = %state.key, "fleet verdict heard live: adopted, to be confirmed");
                log.hint = Some(hint);
                log.prior = Some((PriorSource::Fleet, None));
                return;
            }
        }
    }
    tracing::info!(kernel = %kernel.name, key = %state.key, mismatch, "fleet verdict heard live: rejected");
    record::take_fleet_rejection(core, kernel, state, spec, hint.device, mismatch);
}
