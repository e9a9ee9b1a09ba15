//! photofinish — a multi-threaded GPU dispatch engine that races speculative kernel
//! variants on parallel Vulkan queues, checks that they agree, learns the winner online,
//! remembers it across restarts and publishes its verdicts by message.
//!
//! The layers, data flowing one way:
//! [`policy`] (pure decisions) → [`speculator`], [`autotune`] (shared state) →
//! `engine` (actors, channels, tickets, events) → [`backend`] (Vulkan, CPU) →
//! [`kernels`] (built-in workloads).
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub(crate) mod sync;

mod engine;

pub mod autotune;
pub mod backend;
pub mod kernels;
pub mod policy;
pub mod speculator;

#[doc(hidden)]
pub use engine::{protocol, ByteSumWorkload, FusedByteSumWorkload, InjectedFault, TestBackend};
pub use engine::{
    Answer, Arm, BackendChoice, Batch, Engine, EngineBuilder, EngineError, Event, KernelId,
    KernelVerdict, Output, Ticket, TrySubmitError, VerdictReason, DEFAULT_AUDIT_PERIOD,
    DEFAULT_CHANNEL_CAPACITY, DEFAULT_EVENT_CAPACITY,
};
