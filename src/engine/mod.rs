//! The engine: per-queue worker actors fed by bounded channels, racing conservative
//! against speculative variants, answering every accepted batch exactly once, and
//! publishing what it decides by message (SPEC §4).
//!
//! It owns threads, channels, tickets, events and supervision; every decision it takes
//! comes from [`crate::policy`] (pure functions) and every device call goes through a
//! [`crate::backend::Backend`]. It never touches a device API directly. The mailbox and
//! shutdown protocol and the race join are described in `src/engine/README.md`.
//!
//! This file is the engine's table of contents: its modules, from the bottom layer up,
//! and what it exports. A file imports only files of its own layer or of the layers
//! listed before it, never a later one, and no two files import each other.
//!
//! - **Actor primitives**, generic over what they carry, importing no engine type:
//!   `spin` (spin-then-park), `doorbell` (workers asleep on a mailbox), `mailbox` (the
//!   bounded channel and the shutdown gate), `window` (several jobs in one hand-off),
//!   `contention` (backend calls in flight per device), `slot` (the one-shot answer
//!   slot), `panics`.
//! - **Vocabulary**: `sample` (kernel ids, arms, race samples), `tuning` (tuning keys),
//!   `error`, `events` (the event stream and its bus), `verdict`, `ladder`, `agree`,
//!   `buffers`, `batch` (a batch and its answer), `spec_key`, `specialise` (a
//!   variant's specialisation constants and each key's values), `spec_slot` (one
//!   specialised pipeline's compile state), `trace` and `lane`
//!   (per-queue counts), `dispatch_policy`, `test_backend` and `test_workloads`
//!   (feature `test-util`).
//! - **Kernel state**: `keys` (one tuning key's verdicts and races), `paired` (the
//!   paired test on top of N2, the arm-time clamp), `registry` (the
//!   kernels), `spec_slots` (a kernel's specialised pipelines, compiled once each), `saver` (the save queue and its thread), `ticket` (the engine's tickets
//!   over `slot`), `job` (a batch on its way to a worker, the mailbox message), `fleet`,
//!   `devices`, `kept_windows` and `retired_plans` (a producer thread's caches), `core`
//!   (what every worker shares).
//! - **Deciding and recording**: `watch` (what the watchdog sees of a worker),
//!   `trace_jit`, `record` (a timed race into its key's window and the store), `priors`,
//!   `fleet_live`, `choose` (which arms, in which order).
//! - **Running a batch**: `dispatch` (backend calls, timed and watched), `judge`
//!   (comparing the arms, recording the verdict), `race` (one batch or a group, start
//!   to answer), `arms` (the worker's speculative arm thread), `supervisor` (the worker
//!   loop, restarts, retries, the watchdog thread).
//! - **The handle**: `handle` (the [`Engine`], its reports, shutdown), `register`,
//!   `submit`, `builder` (the options), `start` (`EngineBuilder::build`: opening the
//!   backend, the stores and the workers).

// The modules marked `allow(unreachable_pub)` hold items that are `pub` for the loom
// models in `loom-tests/`, which reach them through `protocol` (below) in the loom
// cfg's build only; in every other build nothing outside the crate sees them.
mod agree;
mod arms;
mod batch;
mod buffers;
mod builder;
mod choose;
#[cfg_attr(not(photofinish_loom), allow(unreachable_pub))]
mod contention;
mod core;
mod devices;
mod dispatch;
mod dispatch_policy;
#[cfg_attr(not(photofinish_loom), allow(unreachable_pub))]
mod doorbell;
mod error;
#[cfg_attr(not(photofinish_loom), allow(unreachable_pub))]
mod events;
// Without the `redis` feature a stub that is always off, so call sites need no `cfg`.
#[cfg_attr(not(feature = "redis"), path = "fleet_off.rs")]
mod fleet;
#[cfg(feature = "redis")]
mod fleet_live;
mod handle;
mod job;
mod judge;
mod kept_windows;
mod keys;
#[cfg_attr(not(photofinish_loom), allow(unreachable_pub))]
mod ladder;
mod lane;
#[cfg_attr(not(photofinish_loom), allow(unreachable_pub))]
mod mailbox;
mod paired;
mod panics;
mod policy_action;
mod priors;
mod race;
mod record;
mod register;
mod registry;
mod retired_plans;
mod sample;
#[cfg_attr(not(photofinish_loom), allow(unreachable_pub))]
mod saver;
mod slot;
mod spec_key;
mod spec_slot;
mod spec_slots;
mod specialise;
#[cfg(not(photofinish_loom))]
mod spin;
mod start;
mod submit;
mod supervisor;
#[cfg(any(test, feature = "test-util"))]
mod test_backend;
#[cfg(any(test, feature = "test-util"))]
mod test_workloads;
#[cfg_attr(not(photofinish_loom), allow(unreachable_pub))]
mod ticket;
mod trace;
mod trace_jit;
#[cfg_attr(not(photofinish_loom), allow(unreachable_pub))]
mod tuning;
#[cfg_attr(not(photofinish_loom), allow(unreachable_pub))]
mod verdict;
mod watch;
#[cfg_attr(not(photofinish_loom), allow(unreachable_pub))]
mod window;

pub use batch::{Answer, Batch, Output};
pub use buffers::{Buffers, Iter as BufferIter, INLINE_OUTPUT_BUFFERS, INLINE_OUTPUT_BYTES};
pub use builder::{
    default_autotune_dir, BackendChoice, EngineBuilder, Verify, DEFAULT_AUDIT_PERIOD,
    DEFAULT_BUSY_WAIT, DEFAULT_CHANNEL_CAPACITY, DEFAULT_DISPATCH_TIMEOUT, DEFAULT_EVENT_CAPACITY,
    DEFAULT_MAX_GROUP, DEFAULT_MAX_SEARCHING,
};
pub use choose::TIMED_SINGLE_PERIOD;
pub use error::{EngineError, TrySubmitError};
pub use events::{Event, KernelVerdict, MismatchDetail, Subscription, VerdictReason};
#[cfg(not(photofinish_loom))]
pub use events::{RecvError, RecvTimeoutError, SubscriptionIntoIter, TryRecvError};
pub use handle::Engine;
pub use keys::{KeyStats, PriorSource, RERACE_FIRST_SKIPS, RERACE_MAX_SKIPS, RERACE_RACES};
pub use paired::CONFIRM_T;
pub use policy_action::{GroupRefusal, PolicyAction};
pub use priors::MAX_TRANSFER_CLASSES;
pub use registry::{KernelStats, MAX_KEPT_SAMPLES, MAX_UNDECIDED_RACES};
pub use sample::{Arm, CacheStatus, KernelId, RaceSample};
pub use specialise::{SpecConstant, Specialization};
#[cfg(any(test, feature = "test-util"))]
pub use test_backend::{InjectedFault, LoadRecord, TestBackend};
#[cfg(any(test, feature = "test-util"))]
pub use test_workloads::{ByteSumWorkload, FusedByteSumWorkload, HostCode, PanickyHostWorkload};
pub use ticket::Ticket;
pub use trace::TraceStats;
pub use tuning::{TuningKey, DEFAULT_MAX_KEYS_PER_KERNEL, MIN_SIZE_CLASS_BYTES};

/// Internals the loom models in `loom-tests/` drive directly. Compiled only under the
/// loom cfg (`scripts/loom` sets `--cfg photofinish_loom`), so no other build exports it.
#[cfg(photofinish_loom)]
pub mod protocol {
    pub use super::contention::{Call, DeviceLoad, Watch};
    pub use super::doorbell::Doorbell;
    pub use super::events::{DropCounter, EventBus};
    pub use super::ladder::{choose as choose_in_play, Ladder};
    pub use super::mailbox::{Gate, Pass};
    pub use super::saver::SaveQueue;
    pub use super::slot::SlotProbe;
    pub use super::ticket::{one_shot_for_models as one_shot, Responder};
    pub use super::tuning::KeyTable;
    pub use super::verdict::VerdictCell;
    pub use super::window::{Share, Window};
    pub use crate::sync::channel::Receiver as EventReceiver;
}
