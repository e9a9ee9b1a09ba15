//! The engine's tickets: the one-shot slot of `slot.rs` for a batch's [`Answer`], whose
//! own error is an [`EngineError`] (`Unanswered`, `AnswerTaken`) and which carries the
//! batch's payload back to the caller's thread ([`Home`]). The caller holds a [`Ticket`],
//! whoever runs the batch its [`Responder`]. Thin views: the protocol is the slot's.

use std::fmt;
use std::time::Duration;

use std::sync::Arc;

use super::batch::{Answer, Payload};
use super::error::EngineError;
use super::registry::Kernel;
use super::retired_plans;
use super::slot::{self, Homebound, SlotError};

/// What a batch's answer carries back to the caller's thread, which drops it there
/// before it returns the answer (`ticket.rs`): the payload it allocated and the kernel
/// reference it counted.
pub(crate) struct Home {
    pub(crate) payload: Payload,
    #[allow(dead_code, reason = "held only to be dropped on the caller's thread")]
    pub(crate) kernel: Option<Arc<Kernel>>,
}

impl Home {
    /// Lets go of the batch on the caller's thread: the kernel reference and the
    /// input's bytes now (the caller finds the engine holding no reference to them),
    /// a plan's own blocks (its box and its emptied lists) at the thread's next
    /// accepted batch (`retired_plans`).
    pub(crate) fn release(self) {
        let Home { payload, kernel } = self;
        drop(kernel);
        if let Payload::Plan(mut plan) | Payload::Items(mut plan, _) = payload {
            plan.buffers.clear();
            plan.push_constants.clear();
            retired_plans::retire(plan);
        }
    }
}

impl SlotError for EngineError {
    fn unanswered() -> Self {
        EngineError::Unanswered
    }

    fn answer_taken() -> Self {
        EngineError::AnswerTaken
    }
}

impl Homebound for Home {
    fn release(self) {
        Home::release(self);
    }
}

/// Creates a connected responder and ticket whose caller busy-waits for its first
/// `busy` (spin.rs).
#[inline]
pub(crate) fn one_shot<T: 'static>(busy: Duration) -> (Responder<T>, Ticket<T>) {
    let (responder, ticket) = slot::one_shot(busy);
    (Responder(responder), Ticket(ticket))
}

/// [`one_shot`] for the loom models in `loom-tests/` (not part of the API).
#[cfg(photofinish_loom)]
pub fn one_shot_for_models<T: 'static>() -> (Responder<T>, Ticket<T>) {
    one_shot(Duration::ZERO)
}

/// The answering end of a ticket. Answers exactly once: by [`Responder::answer`], or
/// with [`EngineError::Unanswered`] when dropped unanswered.
pub struct Responder<T: 'static = Answer>(slot::Responder<T, EngineError, Home>);

impl<T: 'static> fmt::Debug for Responder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<T: 'static> Responder<T> {
    /// A responder of no slot: answering or dropping it does nothing. It holds the
    /// place of one moved elsewhere for a while (a batch's responder parked where the
    /// supervisor's watchdog can answer it, `watch.rs`).
    pub(crate) const fn vacant() -> Self {
        Responder(slot::Responder::vacant())
    }

    /// True for a [`vacant`](Self::vacant) responder (or one that answered).
    pub(crate) fn is_vacant(&self) -> bool {
        self.0.is_vacant()
    }

    /// Lets go of the slot without answering: only for a batch that was never
    /// accepted (its ticket was never handed out, and is dropped unwaited).
    pub(crate) fn disarm(self) {
        self.0.disarm();
    }

    /// Fills the slot and wakes the waiter.
    #[inline]
    pub fn answer(self, result: Result<T, EngineError>) {
        self.0.answer(result);
    }

    /// As [`answer`](Self::answer), handing `home` back with the answer: the caller
    /// that takes the answer drops it on its own thread (and a slot nobody takes drops
    /// it with itself).
    #[inline]
    pub(crate) fn answer_sending_home(self, result: Result<T, EngineError>, home: Option<Home>) {
        self.0.answer_sending_home(result, home);
    }

    /// Answers handing a batch's input bytes back with the answer, as the engine's
    /// workers hand back a batch's payload; for the loom models in `loom-tests/` (not
    /// part of the API).
    #[cfg(any(test, photofinish_loom))]
    pub fn answer_sending_input_home_for_models(
        self,
        result: Result<T, EngineError>,
        input: std::sync::Arc<[u8]>,
    ) {
        let home = Home {
            payload: Payload::Input(input),
            kernel: None,
        };
        self.answer_sending_home(result, Some(home));
    }
}

/// The caller's end: waits for the one answer of an accepted batch. One pointer wide
/// (what a wait needs besides the slot's protocol, it finds in the slot): a window's
/// `Vec` of tickets stays small enough for the allocator's quick bins. Dropping a
/// ticket lets go of its slot (and of an answer not taken).
pub struct Ticket<T: 'static = Answer>(slot::Ticket<T, EngineError, Home>);

impl<T: 'static> fmt::Debug for Ticket<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<T: 'static> Ticket<T> {
    /// A probe of this ticket's slot, to check after the ticket and its responder are
    /// gone that the slot was freed; for the loom models in `loom-tests/`.
    #[cfg(photofinish_loom)]
    pub fn probe_for_models(&self) -> slot::SlotProbe {
        self.0.probe_for_models()
    }

    /// True once the answer is in (and not yet taken).
    #[inline]
    pub fn is_ready(&self) -> bool {
        self.0.is_ready()
    }

    /// Has `wait` on this ticket prefetch `later`'s slot: a caller that takes a
    /// window's answers in order then finds the next ones' lines, which their workers
    /// wrote on other cores, on their way while it takes this one, instead of fetching
    /// each in turn.
    #[inline]
    pub(crate) fn wait_ahead(&mut self, later: &Ticket<T>) {
        self.0.wait_ahead(&later.0);
    }

    /// Blocks until the answer is in and returns it.
    #[inline]
    pub fn wait(self) -> Result<T, EngineError> {
        self.0.wait()
    }

    /// Waits at most `timeout`. `None`: no answer yet (the ticket stays valid, wait
    /// again). `Some(result)`: the answer, which is now taken — a later wait returns
    /// [`EngineError::AnswerTaken`].
    #[inline]
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Result<T, EngineError>> {
        self.0.wait_timeout(timeout)
    }
}

/// A ticket is also a `Future` of its answer, for async callers: runtime-agnostic (no
/// executor of photofinish's own), woken by the worker that answers. Awaiting it takes
/// the answer as [`Ticket::wait`] does, without a blocked thread:
///
/// ```
/// # use std::sync::Arc;
/// # use photofinish::kernels::{Reduce, Workload};
/// # use photofinish::{BackendChoice, Batch, Engine, Output};
/// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     // Any executor does (tokio, async-std, smol); this one parks the thread.
/// #     struct Unpark(std::thread::Thread);
/// #     impl std::task::Wake for Unpark { fn wake(self: Arc<Self>) { self.0.unpark() } }
/// #     let waker = Arc::new(Unpark(std::thread::current())).into();
/// #     let mut cx = std::task::Context::from_waker(&waker);
/// #     let mut f = std::pin::pin!(f);
/// #     loop {
/// #         if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; }
/// #         std::thread::park();
/// #     }
/// # }
/// let engine = Engine::builder().backend(BackendChoice::Cpu).without_autotune_file().build()?;
/// let kernel = engine.register(Arc::new(Reduce))?;
/// let input = Reduce.generate(Reduce.shapes()[0], 4096, 1);
/// let answer = block_on(async {
///     // `try_submit` never blocks the executor's thread; on `Full`, yield and retry.
///     let ticket = engine.try_submit(Batch::new(kernel, input.clone())).expect("room");
///     ticket.await
/// })?;
/// assert_eq!(answer.output, Output::Answer(Reduce.reference(&input)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
impl<T: 'static> std::future::Future for Ticket<T> {
    type Output = Result<T, EngineError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::future::Future::poll(std::pin::Pin::new(&mut self.0), cx)
    }
}

#[cfg(all(test, not(photofinish_loom)))]
mod tests {
    use super::*;

    #[test]
    fn an_engine_ticket_is_one_pointer() {
        assert_eq!(std::mem::size_of::<Ticket>(), std::mem::size_of::<usize>());
    }

    #[test]
    fn an_engine_ticket_answers_unanswered_and_answer_taken_as_engine_errors() {
        let (responder, ticket) = one_shot::<u32>(Duration::ZERO);
        drop(responder);
        assert_eq!(ticket.wait(), Err(EngineError::Unanswered));
        let (responder, ticket) = one_shot::<u32>(Duration::ZERO);
        responder.answer(Ok(5));
        assert_eq!(ticket.wait_timeout(Duration::ZERO), Some(Ok(5)));
        assert_eq!(
            ticket.wait_timeout(Duration::ZERO),
            Some(Err(EngineError::AnswerTaken))
        );
    }

    #[test]
    fn a_batchs_input_comes_home_with_its_answer() {
        let mut input: std::sync::Arc<[u8]> = vec![1, 2, 3].into();
        let (responder, ticket) = one_shot::<u32>(Duration::ZERO);
        responder.answer_sending_input_home_for_models(Ok(1), std::sync::Arc::clone(&input));
        assert!(
            std::sync::Arc::get_mut(&mut input).is_none(),
            "the slot holds it"
        );
        assert_eq!(ticket.wait(), Ok(1));
        assert!(
            std::sync::Arc::get_mut(&mut input).is_some(),
            "the answer's taker let go of the input"
        );
    }
}
