//! The [`Fleet`] client: the handle callers use, which never does any network I/O (the
//! one background thread that does all of it is `worker`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use redis::Script;

use crate::sync::{Arc, Ordering};

use super::config::{FleetConfig, FleetError, FleetStats, FleetStatus};
use super::conn;
use super::entry::{encode, FleetEntry};
use super::key::{fleet_channel, fleet_key_prefix, FleetKey};
use super::worker::{First, Shared, Worker, Write, WRITE_SCRIPT};

/// A client of the fleet's verdict store (see the module docs).
///
/// Every method returns at once: reads come from an in-memory copy, writes go to a
/// bounded queue, and one background thread (`photofinish-fleet`) does all the network
/// I/O. Dropping the client stops that thread; writes still queued are lost unless
/// [`Fleet::flush`] sent them first.
#[derive(Debug)]
pub struct Fleet {
    shared: Arc<Shared>,
    tx: Sender<Write>,
    /// A second receiver of the queue, so a full queue can drop its oldest write.
    oldest: Receiver<Write>,
    statuses: Receiver<FleetStatus>,
    url: String,
}

impl Fleet {
    /// Connects to the fleet at `url` with [`FleetConfig::default`].
    pub fn connect(url: &str) -> Result<Fleet, FleetError> {
        Self::connect_with(url, FleetConfig::default())
    }

    /// Connects to the fleet at `url`: starts the fleet thread and waits (at most
    /// [`FleetConfig::connect_wait`]) for its first contact and first read of every
    /// entry. A URL that does not parse is [`FleetError::BadUrl`]; credentials refused
    /// are [`FleetError::AuthFailed`]; a server that does not answer gives a client in
    /// the unavailable state that reconnects in the background (its first status is
    /// [`FleetStatus::Unavailable`]), or [`FleetError::Unreachable`] under
    /// [`FleetConfig::require_available`].
    pub fn connect_with(url: &str, config: FleetConfig) -> Result<Fleet, FleetError> {
        let target = conn::parse(url, config.connect_timeout, config.command_timeout)?;
        let shared = Arc::new(Shared::default());
        let (tx, rx) = bounded(config.queue_capacity.max(1));
        let (status_tx, statuses) = bounded(64);
        let (first_tx, first_rx) = bounded(1);
        let worker = Worker {
            target,
            config: config.clone(),
            shared: Arc::clone(&shared),
            rx: rx.clone(),
            status_tx,
            first: Some(first_tx),
            reported_down: false,
            pending: HashMap::new(),
            own: HashMap::new(),
            script: Script::new(WRITE_SCRIPT),
            prefix: fleet_key_prefix(),
            channel: fleet_channel(),
        };
        std::thread::Builder::new()
            .name("photofinish-fleet".into())
            .spawn(move || worker.run())
            .map_err(|e| FleetError::Thread {
                detail: e.to_string(),
            })?;
        let redacted = conn::redact(url);
        match first_rx.recv_timeout(config.connect_wait) {
            Ok(First::Auth(detail)) => {
                return Err(FleetError::AuthFailed {
                    url: redacted,
                    detail,
                })
            }
            Ok(First::Down(detail)) if config.require_available => {
                return Err(FleetError::Unreachable {
                    url: redacted,
                    detail,
                })
            }
            Err(_) if config.require_available => {
                return Err(FleetError::Unreachable {
                    url: redacted,
                    detail: format!("no answer within {:?}", config.connect_wait),
                })
            }
            _ => {}
        }
        Ok(Fleet {
            shared,
            tx,
            oldest: rx,
            statuses,
            url: redacted,
        })
    }

    /// The entry under `key` in the local copy, clamped; `None` when the fleet has none
    /// (or this client has not read it yet). Never waits on Redis.
    pub fn get(&self, key: &FleetKey) -> Option<FleetEntry> {
        self.shared.mirror().get(&key.to_string()).cloned()
    }

    /// Every entry of the local copy, by key string.
    pub fn entries(&self) -> Vec<(String, FleetEntry)> {
        let mirror = self.shared.mirror();
        mirror.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Shares `entry` under `key`: it is in the local copy at once (unless the key holds
    /// a mismatch and `entry` is not one) and queued for the fleet thread, which writes
    /// it under the sticky-mismatch rule and announces it. Never blocks: when the queue
    /// is full its oldest write is dropped ([`FleetStats::dropped`]). A keep-racing
    /// verdict is not shared ([`FleetStats::not_shared`]).
    pub fn publish(&self, key: &FleetKey, entry: FleetEntry) {
        let Some(json) = encode(&entry, &key.tuning_key_display) else {
            self.shared.not_shared.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let key = key.to_string();
        let entry = entry.clamped();
        // This client's own write: not a change `generation` counts.
        self.shared.offer(&key, entry.clone());
        self.shared.outstanding.fetch_add(1, Ordering::AcqRel);
        let mut write = Write { key, entry, json };
        loop {
            match self.tx.try_send(write) {
                Ok(()) => return,
                Err(TrySendError::Full(back)) => {
                    write = back;
                    if self.oldest.try_recv().is_ok() {
                        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                        self.shared.outstanding.fetch_sub(1, Ordering::AcqRel);
                    }
                }
                Err(TrySendError::Disconnected(_)) => {
                    // The thread is gone (it only stops with this handle): count it.
                    self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                    self.shared.outstanding.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
            }
        }
    }

    /// True while the fleet thread is connected and has read every entry.
    pub fn is_available(&self) -> bool {
        self.shared.available.load(Ordering::Acquire)
    }

    /// The reachability changes, in order: [`FleetStatus::Unavailable`] when Redis goes
    /// (or is not there at connect), [`FleetStatus::Restored`] when it is back. The
    /// channel holds 64; a change that finds it full is dropped (the state is always
    /// [`Fleet::is_available`]). Clones share one stream: each change goes to one reader.
    pub fn statuses(&self) -> Receiver<FleetStatus> {
        self.statuses.clone()
    }

    /// A count that moves whenever the local copy takes a change from Redis (the copy
    /// read at connect or after a reconnect, an entry read after a live announcement
    /// that differs from the copy's) — not for this client's own writes. Poll it to
    /// learn that other hosts changed something without reading every entry; never
    /// waits on Redis.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// Counters of what the client did.
    pub fn stats(&self) -> FleetStats {
        let s = &self.shared;
        FleetStats {
            written: s.written.load(Ordering::Relaxed),
            refused_sticky: s.refused_sticky.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            outstanding: s.outstanding.load(Ordering::Acquire),
            skipped_values: s.skipped_values.load(Ordering::Relaxed),
            not_shared: s.not_shared.load(Ordering::Relaxed),
        }
    }

    /// Waits up to `timeout` until every accepted write is in Redis (or refused there,
    /// and what Redis kept instead is in the local copy);
    /// true when none is outstanding. For shutdown and tests: it blocks its caller, so a
    /// worker never calls it.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.shared.outstanding.load(Ordering::Acquire) == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The URL, its password replaced by `***`.
    pub fn url(&self) -> &str {
        &self.url
    }
}
