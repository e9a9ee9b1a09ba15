//! photofinish — a multi-threaded GPU dispatch engine that races speculative kernel
//! variants on parallel Vulkan queues, checks that they agree, learns the winner online,
//! remembers it across restarts and publishes its verdicts by message.
//!
//! The layers, data flowing one way:
//! [`policy`] (pure decisions) → [`speculator`], [`autotune`] (shared state) →
//! `engine` (actors, channels, tickets, events) → [`backend`] (Vulkan, CPU) →
//! [`kernels`] (built-in workloads).
//!
//! # Embedding
//!
//! Build an engine, register a kernel, submit batches from several threads, wait for
//! the answers, listen to its verdicts, shut it down. The example asks for the CPU
//! backend so it runs anywhere; `Engine::builder().build()` alone opens Vulkan when a
//! loader and a device exist and the CPU backend otherwise, and says which it chose
//! (`Event::BackendSelected`).
//!
//! ```
//! use std::sync::Arc;
//! use photofinish::kernels::{Reduce, Workload};
//! use photofinish::{BackendChoice, Batch, Engine, Event, Output};
//!
//! let engine = Arc::new(
//!     Engine::builder()
//!         .backend(BackendChoice::Cpu)
//!         // Verdicts persist across runs; the default directory is
//!         // `photofinish::default_autotune_dir()` (the user's cache directory).
//!         .autotune_dir(std::env::temp_dir().join("photofinish-doctest"))
//!         .build()?,
//! );
//! let events = engine.subscribe();
//! let kernel = engine.register(Arc::new(Reduce))?;
//!
//! let producers: Vec<_> = (0..4u64)
//!     .map(|t| {
//!         let engine = Arc::clone(&engine);
//!         std::thread::spawn(move || -> Result<(), photofinish::EngineError> {
//!             for i in 0..10 {
//!                 let input = Reduce.generate(Reduce.shapes()[0], 4096, t * 10 + i);
//!                 let answer = engine.submit(Batch::new(kernel, input.clone()))?.wait()?;
//!                 // Raced or not, the answer is one the engine trusts.
//!                 assert_eq!(answer.output, Output::Answer(Reduce.reference(&input)));
//!             }
//!             Ok(())
//!         })
//!     })
//!     .collect();
//! for p in producers {
//!     p.join().expect("producer thread")?;
//! }
//!
//! engine.shutdown();
//! assert!(matches!(events.recv()?, Event::BackendSelected { .. }));
//! // Later events say what the engine decided, e.g. `Event::VerdictChanged`.
//! for event in events.try_iter() {
//!     println!("{event:?}");
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Your own SPIR-V kernels register with `Engine::register_pair` (a conservative and a
//! speculative variant) or `Engine::register_variants` (several speculative variants,
//! raced against the conservative one in turn; the fastest adopted one ends in play,
//! announced by `Event::VariantInPlay`); their batches carry their own buffers
//! (`Batch::with_plan`).
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub(crate) mod sync;

mod config;
mod engine;

pub mod autotune;
pub mod backend;
#[cfg(feature = "redis")]
pub mod fleet;
pub mod kernels;
pub mod policy;
pub mod speculator;

/// What a user of SPIR-V or WGSL pairs builds batches from, at the crate root.
pub use backend::{BindingAccess, BufferArg, KernelVariant, PlanError};
/// The `Pod` trait (and its derive) that typed buffers and push constants take: the
/// version photofinish uses.
pub use bytemuck;
pub use engine::{
    default_autotune_dir, Answer, Arm, BackendChoice, Batch, BufferIter, Buffers, CacheStatus,
    Engine, EngineBuilder, EngineError, Event, KernelId, KernelStats, KernelVerdict,
    MismatchDetail, Output, RaceSample, Subscription, Ticket, TraceStats, TrySubmitError,
    VerdictReason, Verify, DEFAULT_AUDIT_PERIOD, DEFAULT_BUSY_WAIT, DEFAULT_CHANNEL_CAPACITY,
    DEFAULT_DISPATCH_TIMEOUT, DEFAULT_EVENT_CAPACITY, DEFAULT_MAX_GROUP, DEFAULT_MAX_SEARCHING,
    INLINE_OUTPUT_BUFFERS, INLINE_OUTPUT_BYTES, MAX_KEPT_SAMPLES, MAX_UNDECIDED_RACES,
    TIMED_SINGLE_PERIOD,
};
pub use engine::{GroupRefusal, PolicyAction};
pub use engine::{
    KeyStats, PriorSource, TuningKey, CONFIRM_T, DEFAULT_MAX_KEYS_PER_KERNEL, MAX_TRANSFER_CLASSES,
    MIN_SIZE_CLASS_BYTES, RERACE_FIRST_SKIPS, RERACE_MAX_SKIPS, RERACE_RACES,
};
pub use engine::{SpecConstant, Specialization};
pub use kernels::DispatchPlan;
pub use policy::{Agreement, FloatElem};

/// Internals the loom models in `loom-tests/` drive; only in the loom cfg's build.
#[cfg(photofinish_loom)]
#[doc(hidden)]
pub use engine::protocol;
/// Test utilities (feature `test-util`, off by default): a backend for fault injection
/// and tests of the engine's machinery, and the tiny workloads its tests run. Never a
/// real device; not for production.
#[cfg(any(test, feature = "test-util"))]
pub use engine::{
    ByteSumWorkload, FusedByteSumWorkload, HostCode, InjectedFault, LoadRecord,
    PanickyHostWorkload, TestBackend,
};
/// What [`Subscription`]'s reads return when no event comes.
#[cfg(not(photofinish_loom))]
pub use engine::{RecvError, RecvTimeoutError, SubscriptionIntoIter, TryRecvError};

/// The README's code blocks, compiled and run as doctests so its example cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
