//! The autotune map and races (SPEC §3): which tuning won for each shader variant on
//! each adapter, which speculative variants each kernel adopted or rejected, and the
//! file that remembers both across restarts.
//!
//! It owns shared state and its persistence; it never decides a verdict itself (that
//! is `policy::decide_speculation`) and never touches a device.
//!
//! - `key`: [`SpecCacheKey`], [`AutotuneKey`], [`AutotuneRecord`], [`DeviceIdentity`].
//! - `store`: the concurrent [`AutotuneStore`] and its published [`AutotuneSnapshot`].
//! - `race`: one race's winner ([`record_speculative_variant_race`]) and the
//!   [`PairedSpeculationWindow`] that turns samples into a verdict.
//! - `persist`: the versioned file, merged saves, defensive loads; below it `wire` (the
//!   file's serde layout), `atomic_file` (capped reads, the save lock, atomic
//!   replacement) and `format` (the schema, the file's limits, [`AutotuneError`]).
//!
//! # Design note: trust and staleness
//!
//! A loaded record or verdict was measured on an earlier run; the hardware, the
//! driver's compiler or the inputs may have changed since. So everything loaded is
//! [`Trust::Loaded`] — a hint that tells the engine which variant to try first — until
//! the engine has raced it again and called [`AutotuneStore::mark_verified`] /
//! [`AutotuneStore::mark_verdict_verified`] (a fresh `put` or `set_verdict` is
//! [`Trust::Verified`] at once). Entries measured under another driver, or on another
//! device, are not loaded at all: they stay in the file as [`StaleGroup`]s (reported,
//! saved back, at most [`MAX_STALE_GROUPS`]) so that a driver rollback finds them again.
//!
//! Writers go straight to the dashmap; readers on the hot path `get` a cloned `Arc`
//! and hold no lock. [`AutotuneStore::publish`] freezes the map into an immutable
//! snapshot behind arc-swap for whole-store readers (saving, reporting).
//!
//! ```
//! use photofinish::autotune::{
//!     record_speculative_variant_race, AutotuneRecord, AutotuneStore, SpecCacheKey,
//!     SpeculativeVariantKeys, SpeculativeVariantKind, SpeculativeVariantRace,
//! };
//! let store = AutotuneStore::default();
//! let conservative = SpecCacheKey { shader_hash: 1, binding_sig: 7, workgroup_size: [64, 1, 1], spec_hash: 0 };
//! let speculative = SpecCacheKey { shader_hash: 2, ..conservative };
//! let record = |wg| AutotuneRecord { workgroup_size: [wg, 1, 1], unroll: 1, tile: [1, 1, 1], recorded_at: AutotuneRecord::timestamp_now() };
//! let keys = SpeculativeVariantKeys { conservative: &conservative, speculative: &speculative, adapter_id: "lavapipe" };
//! let race = SpeculativeVariantRace {
//!     conservative_dispatch_ns: 1_000, speculative_dispatch_ns: 600,
//!     conservative_compile_ns: 0, speculative_compile_ns: 100,
//!     conservative_record: record(64), speculative_record: record(256),
//! };
//! let decision = record_speculative_variant_race(&store, keys, race);
//! assert_eq!(decision.winner, SpeculativeVariantKind::Speculative);
//! assert_eq!(decision.saved_ns, 300);
//! assert_eq!(store.get(&decision.autotune_key).map(|r| r.workgroup_size), Some([256, 1, 1]));
//! ```

mod atomic_file;
mod format;
mod key;
mod persist;
mod race;
mod store;
mod wire;

pub use format::{
    AutotuneError, MAX_STORE_FILE_BYTES, SAVE_LOCK_TIMEOUT, SCHEMA_NAME, SCHEMA_VERSION,
};
pub use key::{
    AutotuneKey, AutotuneRecord, DeviceIdentity, SpecCacheKey, SpeculativeVariantKeys,
    VariantPairKey,
};
pub use persist::{LoadMode, LoadOutcome, LoadReport, MAX_STALE_GROUPS, MIGRATED_VERSIONS};
pub use race::{
    record_speculative_variant_race, PairedSpeculationSample, PairedSpeculationUpdate,
    PairedSpeculationWindow, SpeculativeVariantDecision, SpeculativeVariantKind,
    SpeculativeVariantRace,
};
pub use store::{
    AutotuneSnapshot, AutotuneStore, StaleGroup, StaleReason, StoredRecord, StoredVerdict, Trust,
    VerdictReason, VerdictRecord,
};
