//! An accepted batch on its way to a worker: the [`Job`] (the batch with its kernel and
//! the responder of its ticket) and the [`Msg`]s of a device's mailbox that carry jobs.
//! It answers a job; what the answer is, the worker decides.

use std::fmt;
use std::sync::Arc;

use super::batch::{payload_len, Answer, Batch, Payload};
use super::error::EngineError;
use super::registry::Kernel;
use super::ticket::{Home, Responder};
use super::tuning::TuningKey;
use super::window::Window;

/// A message on a device's mailbox.
pub(crate) enum Msg {
    /// Run this batch.
    Run(Job),
    /// Claim batches from this window until it is drained (one of a few copies; see
    /// window.rs).
    Window(Arc<Window<Job>>),
    /// The engine is shutting down: the worker that takes this exits.
    Stop,
}

/// An accepted batch on its way to a worker. The fields drop in order, so a job dropped
/// unanswered drops its payload before its responder answers `Unanswered`, as
/// [`Job::answer`] does before it answers.
pub(crate) struct Job {
    pub(crate) kernel: Arc<Kernel>,
    pub(crate) payload: Payload,
    /// The batch's application key (`Batch::with_tuning_key`).
    pub(crate) app: Option<u64>,
    pub(crate) responder: Responder<Answer>,
}

impl Job {
    /// The tuning key of the batch (see `Batch::tuning_key`).
    pub(crate) fn tuning_key(&self) -> TuningKey {
        TuningKey::for_bytes(payload_len(&self.payload) as u64, self.app)
    }

    /// Answers the batch. Its payload and kernel reference go back with the answer and
    /// are dropped by the caller's thread, which allocated the one and counted the
    /// other, before it gets the answer: a caller that takes the answer finds the
    /// engine holding no reference to its input (it may reuse the buffer in place,
    /// e.g. through `Arc::get_mut`), and the kernel's reference count is written by
    /// the producers alone, not by every worker that runs one of its batches.
    pub(crate) fn answer(self, result: Result<Answer, EngineError>) {
        let Job {
            kernel,
            payload,
            responder,
            ..
        } = self;
        let home = Home {
            payload,
            kernel: Some(kernel),
        };
        responder.answer_sending_home(result, Some(home));
    }

    /// The batch back, for a caller whose submission was refused before it was
    /// accepted (its ticket never handed out).
    pub(super) fn into_batch(self) -> Batch {
        let Job {
            kernel,
            payload,
            app,
            responder,
        } = self;
        responder.disarm();
        Batch {
            kernel: kernel.id,
            payload,
            app,
        }
    }

    /// Answers the batch with `EngineError::Failed` for its kernel.
    pub(crate) fn fail(self, reason: String) {
        let kernel = self.kernel.name.clone();
        self.answer(Err(EngineError::Failed { kernel, reason }));
    }
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("kernel", &self.kernel.name)
            .finish_non_exhaustive()
    }
}
