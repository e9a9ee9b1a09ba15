//! The shared autotune store: winners' records and kernels' verdicts for one device,
//! readable and writable from every worker through `&self`.
//!
//! Entries live in a concurrent map (dashmap; a loom-visible stand-in under
//! `photofinish_loom`); [`AutotuneStore::publish`] freezes them into an immutable
//! [`AutotuneSnapshot`] swapped in through arc-swap, which readers and the persistence
//! code use without ever blocking a writer. This module never touches the file system;
//! `persist.rs` does.

use std::collections::HashMap;
use std::sync::Arc;

use crate::policy::{KernelVerdict, SpeculationObservation};
use crate::sync::{Mutex, SharedMap, SwapCell};

use super::key::{
    AutotuneKey, AutotuneRecord, DeviceIdentity, SpeculativeVariantKeys, VariantPairKey,
};

/// Whether a stored value may be trusted yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trust {
    /// Read from a file: a hint until the engine re-verifies it on this run.
    Loaded,
    /// Measured (or re-verified) on this run.
    Verified,
}

/// A record as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// The record; an `Arc`, so a caller can keep it without holding any lock.
    pub record: Arc<AutotuneRecord>,
    /// Whether it was measured on this run or loaded.
    pub trust: Trust,
}

/// Why a verdict is what it is: the reason an engine's `Event::VerdictChanged` gives,
/// and the reason a [`VerdictRecord`] of the store, its file and the fleet store keep.
/// The store keeps what a later run needs of it ([`VerdictReason::stored`]): whether
/// the variant broke (`Mismatch`) or was measured (`Measured`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum VerdictReason {
    /// The paired race window reached the verdict (`policy::decide_speculation`),
    /// confirmed by the engine's paired test on the races' time ratios (an adoption
    /// needs the speculative variant faster race by race beyond their noise, a
    /// rejection must not contradict that; `CONFIRM_T`).
    Measured,
    /// The speculative variant's answer differed from the conservative one: rejected
    /// at once, whatever the timings said.
    Mismatch,
    /// The speculative variant failed where the conservative one ran.
    SpeculativeFailed(String),
    /// A verdict loaded from the autotune file was re-verified: as many agreeing races
    /// of this engine as a fresh engine needs before it adopts.
    Reverified,
    /// A rejected verdict taken as a prior — from the autotune file, a neighbour key
    /// or the fleet store (at a key's start, or heard live from another host for a
    /// key still undecided here) — or a fleet mismatch, which rejects the key whatever
    /// its verdict: the variant runs no race (SPEC §11, §13).
    Prior,
    /// The paired window still said keep racing after `samples` races: the
    /// speculative variant is not slower but saves less than `MIN_ADOPT_SAVINGS_BPS`
    /// — its races showed that beyond their noise (the paired test's `t ≤ −CONFIRM_T`
    /// against the bar, from `MIN_DISPATCHES_FOR_VERDICT` races on), or
    /// [`MAX_UNDECIDED_RACES`](crate::MAX_UNDECIDED_RACES) of them did not decide —
    /// so the known-good conservative variant runs instead of racing on.
    Inconclusive {
        /// Paired samples in the window when it was decided.
        samples: u32,
    },
    /// A variant rejected for its timings on this key is raced again (its re-race
    /// schedule, SPEC §8): undecided until it wins clearly within
    /// [`RERACE_RACES`](crate::RERACE_RACES) races (adopted) or does not (rejected
    /// again, with twice the wait before the next re-race).
    Rerace,
}

impl VerdictReason {
    /// True where the speculative variant broke (its answer differed, or it failed):
    /// a rejection for good, sticky in the fleet store.
    pub fn is_mismatch(&self) -> bool {
        matches!(
            self,
            VerdictReason::Mismatch | VerdictReason::SpeculativeFailed(_)
        )
    }

    /// What the store, its file and the fleet store keep of this reason: `Mismatch`
    /// where the variant broke, `Measured` for every other.
    pub fn stored(&self) -> VerdictReason {
        if self.is_mismatch() {
            VerdictReason::Mismatch
        } else {
            VerdictReason::Measured
        }
    }
}

/// The verdict on one conservative/speculative pair for one tuning key, with the
/// evidence for it: what the store, its file and the fleet store keep.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VerdictRecord {
    /// Adopted, rejected, or undecided (a window still racing).
    pub verdict: KernelVerdict,
    /// What the window had seen when the verdict was taken; a restarted engine can
    /// resume its window from it (`PairedSpeculationWindow::resume`).
    pub observation: SpeculationObservation,
    /// Why.
    pub reason: VerdictReason,
}

/// A verdict as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVerdict {
    /// The verdict.
    pub verdict: VerdictRecord,
    /// Whether it was taken on this run or loaded.
    pub trust: Trust,
}

/// An immutable view of the store as of one [`AutotuneStore::publish`].
#[derive(Debug, Clone, Default)]
pub struct AutotuneSnapshot {
    /// Counts publications: 0 for the empty view a new store starts with.
    pub generation: u64,
    /// The device the entries belong to.
    pub identity: DeviceIdentity,
    /// Every live record.
    pub entries: HashMap<AutotuneKey, StoredRecord>,
    /// Every live verdict.
    pub verdicts: HashMap<VariantPairKey, StoredVerdict>,
}

impl AutotuneSnapshot {
    /// The record under `key`, if any.
    pub fn get(&self, key: &AutotuneKey) -> Option<&Arc<AutotuneRecord>> {
        self.entries.get(key).map(|e| &e.record)
    }

    /// How many records.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no records.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Why entries in a file were not taken into the live store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StaleReason {
    /// Same device, another driver version: the timings may no longer hold.
    DriverChanged {
        /// The driver the entries were measured under.
        was: String,
    },
    /// Another device altogether.
    OtherDevice,
}

/// Entries of another device or driver, kept (and saved back) but never used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleGroup {
    /// The device and driver they were measured with.
    pub identity: DeviceIdentity,
    /// Why they are stale for this store's device.
    pub reason: StaleReason,
    /// The records.
    pub entries: Vec<(AutotuneKey, AutotuneRecord)>,
    /// The verdicts.
    pub verdicts: Vec<(VariantPairKey, VerdictRecord)>,
}

impl StaleReason {
    /// Why entries of `stored` are stale for `current`; `None` when they are not.
    pub fn between(stored: &DeviceIdentity, current: &DeviceIdentity) -> Option<Self> {
        if stored == current {
            None
        } else if stored.device_uuid == current.device_uuid {
            Some(StaleReason::DriverChanged {
                was: stored.driver_version.clone(),
            })
        } else {
            Some(StaleReason::OtherDevice)
        }
    }
}

/// The concurrent autotune map of one device: winners' records under [`AutotuneKey`]s
/// and kernels' verdicts under their variant pair. Every operation takes `&self`.
#[derive(Debug)]
pub struct AutotuneStore {
    identity: DeviceIdentity,
    entries: SharedMap<AutotuneKey, StoredRecord>,
    verdicts: SharedMap<VariantPairKey, StoredVerdict>,
    stale: Vec<StaleGroup>,
    /// The devices and drivers whose stale groups `discard_stale` forgot: saves drop
    /// their groups from the file too.
    discarded_stale: Vec<DeviceIdentity>,
    published: SwapCell<AutotuneSnapshot>,
    /// Serialises publishers (readers never take it), so generations land in order.
    publish_lock: Mutex<u64>,
}

impl Default for AutotuneStore {
    /// An empty in-memory store for an unknown device (zero UUID, empty driver).
    fn default() -> Self {
        Self::new(DeviceIdentity::default())
    }
}

impl AutotuneStore {
    /// An empty store for `identity`.
    pub fn new(identity: DeviceIdentity) -> Self {
        let empty = AutotuneSnapshot {
            identity: identity.clone(),
            ..AutotuneSnapshot::default()
        };
        Self {
            identity,
            entries: SharedMap::new(),
            verdicts: SharedMap::new(),
            stale: Vec::new(),
            discarded_stale: Vec::new(),
            published: SwapCell::new(Arc::new(empty)),
            publish_lock: Mutex::new(0),
        }
    }

    /// A store for `identity` holding loaded (unverified) entries and stale groups.
    pub(super) fn from_loaded(
        identity: DeviceIdentity,
        entries: Vec<(AutotuneKey, AutotuneRecord)>,
        verdicts: Vec<(VariantPairKey, VerdictRecord)>,
        stale: Vec<StaleGroup>,
    ) -> Self {
        let mut store = Self::new(identity);
        for (key, record) in entries {
            let stored = StoredRecord {
                record: Arc::new(record),
                trust: Trust::Loaded,
            };
            store.entries.insert(key, stored);
        }
        for (key, verdict) in verdicts {
            let stored = StoredVerdict {
                verdict,
                trust: Trust::Loaded,
            };
            store.verdicts.insert(key, stored);
        }
        store.stale = stale;
        store.publish();
        store
    }

    /// The device this store's live entries belong to.
    pub fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    /// Stores a verified `record` under `key`; returns the record it replaced.
    pub fn put(&self, key: AutotuneKey, record: AutotuneRecord) -> Option<Arc<AutotuneRecord>> {
        let stored = StoredRecord {
            record: Arc::new(record),
            trust: Trust::Verified,
        };
        self.entries.insert(key, stored).map(|old| old.record)
    }

    /// The record under `key`, trusted or not (see [`AutotuneStore::entry`]). The `Arc`
    /// holds no lock: keep it as long as you like.
    pub fn get(&self, key: &AutotuneKey) -> Option<Arc<AutotuneRecord>> {
        self.entries.get_cloned(key).map(|e| e.record)
    }

    /// The record under `key` with its [`Trust`].
    pub fn entry(&self, key: &AutotuneKey) -> Option<StoredRecord> {
        self.entries.get_cloned(key)
    }

    /// Marks a loaded record as re-verified on this run; false when there is none.
    pub fn mark_verified(&self, key: &AutotuneKey) -> bool {
        self.entries.update(key, |e| e.trust = Trust::Verified)
    }

    /// How many live records.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no live records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores the verdict taken on this run for the pair `keys`; returns the one it
    /// replaced.
    pub fn set_verdict(
        &self,
        keys: SpeculativeVariantKeys<'_>,
        verdict: VerdictRecord,
    ) -> Option<StoredVerdict> {
        let stored = StoredVerdict {
            verdict,
            trust: Trust::Verified,
        };
        self.verdicts.insert(keys.into(), stored)
    }

    /// The verdict stored for the pair `keys`, with its [`Trust`]. None: undecided.
    pub fn verdict(&self, keys: SpeculativeVariantKeys<'_>) -> Option<StoredVerdict> {
        self.verdicts.get_cloned(&keys.into())
    }

    /// Marks a loaded verdict as re-verified on this run; false when there is none.
    pub fn mark_verdict_verified(&self, keys: SpeculativeVariantKeys<'_>) -> bool {
        self.verdicts
            .update(&keys.into(), |v| v.trust = Trust::Verified)
    }

    /// How many verdicts.
    pub fn verdict_count(&self) -> usize {
        self.verdicts.len()
    }

    /// Entries of other devices or drivers found when loading: kept and saved back,
    /// never used.
    pub fn stale(&self) -> &[StaleGroup] {
        &self.stale
    }

    /// Forgets the stale groups, so the next save drops them from the file (a save
    /// merges with the file, see `persist.rs`: groups of these devices and drivers are
    /// dropped from it; one another process saved there under another driver since is
    /// kept).
    pub fn discard_stale(&mut self) {
        let forgotten = self.stale.drain(..).map(|g| g.identity);
        self.discarded_stale.extend(forgotten);
    }

    /// The devices and drivers whose stale groups [`AutotuneStore::discard_stale`]
    /// forgot.
    pub(super) fn discarded_stale(&self) -> &[DeviceIdentity] {
        &self.discarded_stale
    }

    /// Freezes the current entries into a new [`AutotuneSnapshot`], publishes it and
    /// returns it. Every `put`/`set_verdict` that returned before this call began is in
    /// it; one running concurrently may or may not be.
    pub fn publish(&self) -> Arc<AutotuneSnapshot> {
        // The guarded value is a plain counter, consistent even if a publisher panicked.
        let mut generation = self.publish_lock.lock().unwrap_or_else(|e| e.into_inner());
        *generation = generation.saturating_add(1);
        let snapshot = Arc::new(AutotuneSnapshot {
            generation: *generation,
            identity: self.identity.clone(),
            entries: self.entries.cloned_entries().into_iter().collect(),
            verdicts: self.verdicts.cloned_entries().into_iter().collect(),
        });
        self.published.store(Arc::clone(&snapshot));
        snapshot
    }

    /// The view published last (by [`AutotuneStore::publish`], a load or a save).
    /// Publishers are serialised, so generations only ever grow; readers never wait.
    pub fn snapshot(&self) -> Arc<AutotuneSnapshot> {
        self.published.load()
    }
}
