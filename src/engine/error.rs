//! The engine's typed errors: one enum for everything a caller of the engine can be
//! told, and the `try_submit` error that hands the batch back. Every variant says what
//! went wrong and what to do about it. This module only describes failures.

use crate::backend::{BackendError, BackendKind};
use crate::kernels::WorkloadError;

use super::batch::Batch;

/// Why the engine could not build, register, accept or answer something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The engine is shut down (or shutting down) and accepts no more batches.
    #[error("the engine is shut down; build a new engine to submit more batches")]
    ShutDown,
    /// The batch names a kernel this engine never registered (an id is valid only on
    /// the engine that issued it).
    #[error("unknown kernel id {0}: this engine did not issue it (ids are valid only on the engine whose `register` returned them); submit only this engine's ids")]
    UnknownKernel(u32),
    /// The batch's payload does not fit the kernel: raw dispatch plans go to SPIR-V
    /// pairs, input bytes go to workloads.
    #[error("kernel `{kernel}` takes {expected}; build the batch with {fix}")]
    WrongPayload {
        /// The kernel's name.
        kernel: String,
        /// What the kernel takes.
        expected: &'static str,
        /// Which constructor to use.
        fix: &'static str,
    },
    /// A variant pair is not a pair the engine can race.
    #[error("kernel `{kernel}` cannot be registered: {reason}; {fix}")]
    InvalidKernel {
        /// The kernel's name.
        kernel: String,
        /// What is wrong.
        reason: String,
        /// What to do.
        fix: &'static str,
    },
    /// A backend refused to load a variant or to run a batch.
    #[error("kernel `{kernel}`: {source}")]
    Backend {
        /// The kernel's name.
        kernel: String,
        /// What the backend said (it says what to do).
        #[source]
        source: BackendError,
    },
    /// A batch planned by items cannot be dispatched by one of the kernel's variants.
    #[error("kernel `{kernel}`: {source}")]
    Plan {
        /// The kernel's name.
        kernel: String,
        /// Which variant and why (it says what to do).
        #[source]
        source: crate::backend::PlanError,
    },
    /// The workload could not plan the batch or read its outputs.
    #[error("{0}; check the batch's input")]
    Workload(#[from] WorkloadError),
    /// The device this batch was queued for was lost and no other live device has its
    /// kernel loaded.
    #[error("device {device} was lost before this batch ran and no other live device has its kernel; restart the engine to use the device again")]
    DeviceLost {
        /// The device.
        device: usize,
    },
    /// The batch failed twice (on two queues) with a backend error or a worker panic.
    #[error("kernel `{kernel}` failed on two queues ({reason}); the batch was not run — check the driver log, then resubmit")]
    Failed {
        /// The kernel's name.
        kernel: String,
        /// The last failure.
        reason: String,
    },
    /// The batch was accepted but its responder was dropped without an answer — an
    /// engine bug; please report it.
    #[error(
        "the batch was dropped without an answer (an engine bug, please report it); resubmit it"
    )]
    Unanswered,
    /// The ticket's answer was already taken by an earlier wait.
    #[error("this ticket's answer was already taken by an earlier wait; keep the first result")]
    AnswerTaken,
    /// No backend could be opened.
    #[error("no backend could be opened: {0}")]
    NoBackend(BackendError),
    /// The backend that was asked for is not compiled into this build.
    #[error("the {0} backend is not compiled in; rebuild with the `vulkan` feature or choose `BackendChoice::Cpu`")]
    BackendNotCompiled(BackendKind),
    /// The speculation mode cannot be honoured for this kernel.
    #[error("kernel `{kernel}`: {reason}; use `SpeculationMode::Auto` or `Disable`")]
    SpeculationUnsupported {
        /// The kernel's name.
        kernel: String,
        /// Why not.
        reason: String,
    },
    /// A dispatch of the batch did not return within the engine's dispatch timeout
    /// (`EngineBuilder::dispatch_timeout`): its kernel loops, or runs far longer than
    /// the timeout allows. The variant that hung is retired — a speculative one is
    /// rejected, and a conservative one disables its kernel (every later batch of it
    /// gets this error at once) — and the worker that ran it is replaced.
    #[error("kernel `{kernel}`: variant `{variant}` did not return within {after:?} (the dispatch timeout) and was retired; fix the kernel (a loop that never ends?) and register it again, or raise `EngineBuilder::dispatch_timeout` if it is just slow")]
    DispatchTimedOut {
        /// The kernel's name.
        kernel: String,
        /// The name of the variant that hung.
        variant: String,
        /// The dispatch timeout it exceeded.
        after: std::time::Duration,
    },
    /// A worker thread could not be started.
    #[error(
        "could not start worker thread `{thread}`: {reason}; raise the process's thread limit"
    )]
    Spawn {
        /// The thread's name.
        thread: String,
        /// What the OS said.
        reason: String,
    },
    /// The fleet store (`EngineBuilder::fleet`, `PHOTOFINISH_FLEET_URL`) cannot be used:
    /// its URL does not parse or Redis refused the credentials (what to do is in the
    /// inner error). A Redis that does not answer is not an error: the engine starts,
    /// says `Event::FleetUnavailable` and connects in the background.
    #[cfg(feature = "redis")]
    #[error("the fleet store cannot be used: {0}")]
    Fleet(crate::fleet::FleetError),
}

/// Why [`Engine::try_submit`](super::Engine::try_submit) did not take a batch; the
/// batch comes back so nothing is lost.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrySubmitError {
    /// The device's queue is full: retry later, or use `submit`, which blocks.
    #[error("the engine's queue is full; retry later or use `submit`, which waits for room")]
    Full(Batch),
    /// The engine is shut down.
    #[error("the engine is shut down; build a new engine to submit more batches")]
    ShutDown(Batch),
    /// The batch was refused for another reason (its error says which).
    #[error("{1}")]
    Rejected(Batch, EngineError),
}

impl TrySubmitError {
    /// Gives the batch back.
    pub fn into_batch(self) -> Batch {
        match self {
            TrySubmitError::Full(b)
            | TrySubmitError::ShutDown(b)
            | TrySubmitError::Rejected(b, _) => b,
        }
    }
}
