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
//! the answers, listen to its verdicts, shut it down. (This example runs on the
//! fault-injection test backend so it needs no device; a real application calls
//! `Engine::builder().build()`, which opens Vulkan or, without it, the CPU backend.)
//!
//! ```
//! use std::sync::Arc;
//! use photofinish::{Batch, ByteSumWorkload, Engine, Event, TestBackend};
//!
//! let engine = Arc::new(
//!     Engine::builder()
//!         .backend_instance(Arc::new(TestBackend::new(1, 2, 1)))
//!         .build()?,
//! );
//! let events = engine.subscribe();
//! let kernel = engine.register(Arc::new(ByteSumWorkload))?;
//!
//! let producers: Vec<_> = (0..4u8)
//!     .map(|t| {
//!         let engine = Arc::clone(&engine);
//!         std::thread::spawn(move || -> Result<u64, photofinish::EngineError> {
//!             let mut total = 0;
//!             for i in 0..10u8 {
//!                 let ticket = engine.submit(Batch::new(kernel, vec![t, i]))?;
//!                 let photofinish::Output::Answer(sum) = ticket.wait()?.output else {
//!                     unreachable!("a workload kernel answers with bytes");
//!                 };
//!                 total += u64::from_le_bytes(sum.try_into().unwrap_or_default());
//!             }
//!             Ok(total)
//!         })
//!     })
//!     .collect();
//! let mut total: u64 = 0;
//! for p in producers {
//!     total += p.join().expect("producer thread")?;
//! }
//! assert_eq!(total, (0..4u64).map(|t| 10 * t + 45).sum::<u64>());
//!
//! engine.shutdown();
//! assert!(matches!(events.recv()?, Event::BackendSelected { .. }));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
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
