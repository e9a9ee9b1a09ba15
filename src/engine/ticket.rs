//! Tickets: the one-shot slot through which a worker answers a batch.
//!
//! Owns the slot protocol only: a [`Responder`] (held by whoever runs the batch) fills
//! the slot exactly once, and a [`Ticket`] (held by the caller) waits for it. A
//! responder that is dropped without answering — a worker unwinding from a panic, a
//! queue torn down — answers with [`EngineError::Unanswered`] from its `Drop`, so an
//! accepted batch can never be left without an answer. This module never decides what
//! the answer is. Its state uses `crate::sync` so the loom models in
//! `loom-tests/tests/mailbox.rs` explore it.
//!
//! The slot is one heap block that the two ends share without a reference count: each
//! end marks in the state word, in the same read-modify-write as its last use of the
//! slot, that it let go, and the end that lets go second frees it (or, the ticket's
//! thread, keeps it for its next ticket). So a worker's whole part in a batch's slot is
//! writing the answer and one compare-and-swap, and the caller's is one
//! compare-and-swap to take the answer: nobody writes a count on a line the other end
//! is reading, and the caller's thread gets its slot back as soon as the answer is in.

use std::fmt;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use crate::sync::{AtomicU32, Condvar, Mutex, Ordering, UnsafeCell};

use super::error::EngineError;

/// The slot's phases, in the low two bits of its state word: no answer yet, the answer
/// is in the cell, the caller took it.
const EMPTY: u32 = 0;
const FULL: u32 = 1;
const TAKEN: u32 = 2;
const PHASE: u32 = 3;
/// The responder let go: it answered (or was disarmed) and will not touch the slot
/// again.
const RESPONDER_GONE: u32 = 4;
/// The ticket let go (it was dropped, after its answer was taken or not): it will not
/// touch the slot again.
const TICKET_GONE: u32 = 8;
/// A waker is registered (the ticket was polled as a `Future` before the answer came):
/// the filler takes the lock, takes the waker and wakes it.
const WAKER: u32 = 16;
/// One caller asleep: the bits from here up count the callers asleep.
const SLEEPER: u32 = 32;

/// The one-shot slot. The answer goes through `value` without a lock: the responder
/// (there is one, and it fills once) writes it while the phase is `EMPTY` and then
/// publishes `FULL`; a caller reads it only after moving the phase from `FULL` to
/// `TAKEN` itself, which one caller can. The lock and condvar are only for a caller
/// that stops spinning and sleeps: it counts itself asleep in the same word under the
/// lock, and the responder's publishing read-modify-write sees that count (and then
/// takes the lock before it notifies) or the sleeper's count sees `FULL` — so a wake-up
/// is never lost, and a spinning caller (the common case) costs the responder no lock
/// and no system call.
struct Slot<T> {
    state: AtomicU32,
    value: UnsafeCell<Option<Result<T, EngineError>>>,
    /// The batch's payload and kernel reference, handed back with the answer so that
    /// the caller's thread, which allocated the one and counted the other, also frees
    /// and uncounts them (written and read as `value` is). A worker that freed the
    /// payload would free into the caller's allocator arena from another core (with
    /// glibc's malloc a contended arena lock per batch), and one that dropped the
    /// reference would write the kernel's count, which every worker of the kernel and
    /// every producer then passes between their cores.
    home: UnsafeCell<Option<super::Home>>,
    /// How long the caller's `wait` polls with spin hints only before it yields (the
    /// engine's `EngineBuilder::busy_wait`). Set while the slot has one holder, before
    /// its responder exists; read by the caller only.
    #[cfg_attr(photofinish_loom, allow(dead_code))]
    busy: Duration,
    /// The address of the slot of a ticket its caller will likely wait for soon after
    /// this one (a later one of the same `submit_many` window), 0 for none: `wait`
    /// asks the CPU to fetch that slot's lines meanwhile (see [`Ticket::wait_ahead`]).
    /// Only ever prefetched, never read: the slot may be gone by then. Written and
    /// read by the ticket's holder alone (a plain atomic, outside the loom models: it
    /// carries no protocol).
    #[cfg_attr(photofinish_loom, allow(dead_code))]
    ahead: std::sync::atomic::AtomicUsize,
    lock: Mutex<()>,
    ready: Condvar,
    /// The waker of the last poll of the ticket as a `Future` that found no answer;
    /// written and taken only under `lock` (the `WAKER` bit says one is there).
    waker: UnsafeCell<Option<std::task::Waker>>,
    /// Under the loom models a slot is not deallocated but marked freed (and its
    /// contents dropped), so that a use after the free is caught (`live`) rather than
    /// undefined, a second free too, and a model can check that the slot was freed.
    #[cfg(photofinish_loom)]
    freed: std::sync::atomic::AtomicBool,
}

// The value crosses from the responder's thread to the caller's, and the state
// protocol above gives one thread at a time access to it.
unsafe impl<T: Send> Send for Slot<T> {}
unsafe impl<T: Send> Sync for Slot<T> {}

impl<T> Slot<T> {
    /// A new slot, empty, held by both ends.
    fn allocate(busy: Duration) -> NonNull<Slot<T>> {
        NonNull::from(Box::leak(Box::new(Slot {
            state: AtomicU32::new(EMPTY),
            value: UnsafeCell::new(None),
            home: UnsafeCell::new(None),
            busy,
            ahead: std::sync::atomic::AtomicUsize::new(0),
            lock: Mutex::new(()),
            ready: Condvar::new(),
            waker: UnsafeCell::new(None),
            #[cfg(photofinish_loom)]
            freed: std::sync::atomic::AtomicBool::new(false),
        })))
    }

    /// Under the loom models, fails the model if the slot was freed (a no-op
    /// otherwise): every use of the slot by either end goes through this.
    fn live(&self) -> &Self {
        #[cfg(photofinish_loom)]
        assert!(
            !self.freed.load(std::sync::atomic::Ordering::SeqCst),
            "a ticket's slot was used after it was freed"
        );
        self
    }

    fn phase(&self) -> u32 {
        self.state.load(Ordering::Acquire) & PHASE
    }

    /// Moves the answer out if it is in and nobody took it before: `Some` for the
    /// one caller that moves the phase from `FULL` to `TAKEN`, `AnswerTaken` for later
    /// ones, `None` while there is no answer.
    fn try_take(&self) -> Option<Result<T, EngineError>> {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            match state & PHASE {
                FULL => {}
                TAKEN => return Some(Err(EngineError::AnswerTaken)),
                _ => return None,
            }
            // FULL + 1 = TAKEN, the other bits kept.
            match self.state.compare_exchange_weak(
                state,
                state + 1,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                // SAFETY: only the caller that moved the phase to TAKEN reads the cell,
                // after the responder's write (its FULL released it, this acquired it);
                // nobody writes it again.
                Ok(_) => {
                    // The payload is freed (and the kernel uncounted) here, on the
                    // caller's thread, before the answer is returned: the caller then
                    // finds the engine holding no reference to its input.
                    if let Some(home) = self.home.with_mut(|h| unsafe { (*h).take() }) {
                        home.release();
                    }
                    return Some(
                        self.value
                            .with_mut(|v| unsafe { (*v).take() })
                            .unwrap_or(Err(EngineError::Unanswered)),
                    );
                }
                Err(seen) => state = seen,
            }
        }
    }
}

/// Frees a slot that both ends let go of, with whatever answer and payload are still
/// in it.
///
/// # Safety
/// The caller is the end that let go second (it saw the other end's `…_GONE` bit in
/// the read-modify-write that set its own, or before) or the slot's only holder: no
/// other reference to the slot is used again.
unsafe fn free<T>(slot: NonNull<Slot<T>>) {
    #[cfg(not(photofinish_loom))]
    drop(unsafe { Box::from_raw(slot.as_ptr()) });
    #[cfg(photofinish_loom)]
    {
        let slot = unsafe { slot.as_ref() };
        assert!(
            !slot.freed.swap(true, std::sync::atomic::Ordering::SeqCst),
            "a ticket's slot was freed twice"
        );
        drop(slot.value.with_mut(|v| unsafe { (*v).take() }));
        drop(slot.home.with_mut(|h| unsafe { (*h).take() }));
        drop(slot.waker.with_mut(|w| unsafe { (*w).take() }));
    }
}

/// Creates a connected responder and ticket whose caller busy-waits for its first
/// `busy` (spin.rs).
pub(crate) fn one_shot<T: 'static>(busy: Duration) -> (Responder<T>, Ticket<T>) {
    let slot = spare::take(busy).unwrap_or_else(|| Slot::allocate(busy));
    (Responder { slot: Some(slot) }, Ticket { slot })
}

/// Slots whose answers a thread took, kept for that thread's next tickets: a window of
/// batches otherwise allocates a slot per batch and frees it when the answer is taken,
/// 64 blocks of one size a window, past what glibc's per-thread cache of freed blocks
/// (7 of a size) holds, so most went through the allocator's arena. A slot is kept
/// when its ticket lets go of it last (the responder let go first: the common case, a
/// waiter that did not sleep), so it is the thread's alone; at most [`spare::MAX`] are
/// kept per thread, freed when the thread ends.
#[cfg(not(photofinish_loom))]
mod spare {
    use std::any::Any;
    use std::cell::RefCell;
    use std::ptr::NonNull;
    use std::time::Duration;

    use super::Slot;

    /// The most slots a thread keeps.
    pub(super) const MAX: usize = 256;

    thread_local! {
        /// A `Vec<Box<Slot<T>>>` for the answer type `T` the thread last kept.
        static SPARE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    /// A kept slot of this thread, ready for a new ticket whose caller busy-waits for
    /// its first `busy`.
    pub(super) fn take<T: 'static>(busy: Duration) -> Option<NonNull<Slot<T>>> {
        let mut slot = SPARE
            .try_with(|spare| {
                let mut spare = spare.try_borrow_mut().ok()?;
                spare.as_mut()?.downcast_mut::<Vec<Box<Slot<T>>>>()?.pop()
            })
            .ok()
            .flatten()?;
        // Written only when it differs (a thread's tickets mostly come from one engine):
        // the line may still be shared with the core of the worker that answered.
        if slot.busy != busy {
            slot.busy = busy;
        }
        Some(NonNull::from(Box::leak(slot)))
    }

    /// How many slots for answers of type `T` this thread keeps.
    #[cfg(test)]
    pub(super) fn kept<T: 'static>() -> usize {
        SPARE.with_borrow(|spare| {
            spare
                .as_ref()
                .and_then(|kept| kept.downcast_ref::<Vec<Box<Slot<T>>>>())
                .map_or(0, Vec::len)
        })
    }

    /// Keeps `slot`, whose answer and payload were taken and which both ends let go
    /// of, if the thread keeps fewer than [`MAX`]; frees it otherwise.
    ///
    /// # Safety
    /// As [`super::free`]'s: the caller holds the slot alone.
    pub(super) unsafe fn keep<T: 'static>(slot: NonNull<Slot<T>>) {
        // SAFETY: the caller holds the slot alone, and it was leaked from a box.
        let mut slot = unsafe { Box::from_raw(slot.as_ptr()) };
        // The caller took the answer and left no sleeper count: the slot is as new
        // once its state is EMPTY again.
        *slot.state.get_mut() = super::EMPTY;
        *slot.ahead.get_mut() = 0;
        // SAFETY: the box is this thread's alone.
        drop(slot.waker.with_mut(|w| unsafe { (*w).take() }));
        // SAFETY: the box is this thread's alone.
        debug_assert!(slot.value.with_mut(|v| unsafe { (*v).is_none() }));
        debug_assert!(slot.home.with_mut(|h| unsafe { (*h).is_none() }));
        let _ = SPARE.try_with(|spare| {
            let Ok(mut spare) = spare.try_borrow_mut() else {
                return;
            };
            let kept = spare.get_or_insert_with(|| Box::new(Vec::<Box<Slot<T>>>::new()));
            if !kept.is::<Vec<Box<Slot<T>>>>() {
                *kept = Box::new(Vec::<Box<Slot<T>>>::new());
            }
            if let Some(kept) = kept.downcast_mut::<Vec<Box<Slot<T>>>>() {
                if kept.len() < MAX {
                    kept.push(slot);
                }
            }
        });
    }
}

/// Under loom nothing is kept: a model's slot belongs to one execution of the model.
#[cfg(photofinish_loom)]
mod spare {
    use std::ptr::NonNull;

    use super::Slot;

    pub(super) fn take<T: 'static>(_busy: std::time::Duration) -> Option<NonNull<Slot<T>>> {
        None
    }

    /// # Safety
    /// As [`super::free`]'s.
    pub(super) unsafe fn keep<T: 'static>(slot: NonNull<Slot<T>>) {
        unsafe { super::free(slot) };
    }
}

/// The answering end of a ticket. Answers exactly once: by [`Responder::answer`], or
/// with [`EngineError::Unanswered`] when dropped unanswered.
pub struct Responder<T> {
    /// The slot, until the responder lets go of it.
    slot: Option<NonNull<Slot<T>>>,
}

// A responder moves to the worker that runs the batch and sends the answer (a `T`) to
// the caller's thread; through a shared reference it does nothing.
unsafe impl<T: Send> Send for Responder<T> {}
unsafe impl<T: Send> Sync for Responder<T> {}

impl<T> fmt::Debug for Responder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("answered", &self.slot.is_none())
            .finish()
    }
}

/// [`one_shot`] for the loom models in `loom-tests/` (not part of the API).
pub fn one_shot_for_models<T: 'static>() -> (Responder<T>, Ticket<T>) {
    one_shot(Duration::ZERO)
}

impl<T> Responder<T> {
    /// A responder of no slot: answering or dropping it does nothing. It holds the
    /// place of one moved elsewhere for a while (a batch's responder parked where the
    /// supervisor's watchdog can answer it, `supervisor.rs`).
    pub(crate) const fn vacant() -> Self {
        Responder { slot: None }
    }

    /// True for a [`vacant`](Self::vacant) responder (or one that answered).
    pub(crate) fn is_vacant(&self) -> bool {
        self.slot.is_none()
    }

    /// Lets go of the slot without answering: only for a batch that was never
    /// accepted (its ticket was never handed out, and is dropped unwaited).
    pub(crate) fn disarm(mut self) {
        if let Some(slot) = self.slot.take() {
            // SAFETY: this end has not let go yet, so the slot is live.
            let before = unsafe { slot.as_ref() }
                .live()
                .state
                .fetch_or(RESPONDER_GONE, Ordering::AcqRel);
            if before & TICKET_GONE != 0 {
                // SAFETY: the ticket let go first.
                unsafe { free(slot) };
            }
        }
    }

    /// Fills the slot and wakes the waiter.
    pub fn answer(self, result: Result<T, EngineError>) {
        self.answer_sending_home(result, None);
    }

    /// Answers handing a batch's input bytes back with the answer, as the engine's
    /// workers hand back a batch's payload; for the loom models in `loom-tests/` (not
    /// part of the API).
    pub fn answer_sending_input_home_for_models(
        self,
        result: Result<T, EngineError>,
        input: std::sync::Arc<[u8]>,
    ) {
        let home = super::Home {
            payload: super::Payload::Input(input),
            kernel: None,
        };
        self.answer_sending_home(result, Some(home));
    }

    /// As [`answer`](Self::answer), handing `home` back with the answer: the caller
    /// that takes the answer drops it on its own thread (and a slot nobody takes drops
    /// it with itself).
    pub(crate) fn answer_sending_home(
        mut self,
        result: Result<T, EngineError>,
        home: Option<super::Home>,
    ) {
        if let Some(slot) = self.slot.take() {
            if home.is_some() {
                // SAFETY: as `fill`'s write of the value: the phase is EMPTY, so no
                // caller reads the cell before `fill` publishes FULL, and this end has
                // not let go, so the slot is live.
                unsafe { slot.as_ref() }
                    .live()
                    .home
                    .with_mut(|h| unsafe { *h = home });
            }
            // SAFETY: this end has not let go of the slot.
            unsafe { fill(slot, result) };
        }
    }
}

impl<T> Drop for Responder<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            // SAFETY: this end has not let go of the slot.
            unsafe { fill(slot, Err(EngineError::Unanswered)) };
        }
    }
}

/// The one fill of the slot, after which the responder has let go of it (a responder
/// fills once: `answer` and `drop` take its slot out first).
///
/// # Safety
/// The responder has not let go of `slot` before.
unsafe fn fill<T>(slot_ptr: NonNull<Slot<T>>, result: Result<T, EngineError>) {
    // SAFETY: the responder has not let go, so the slot is live.
    let slot = unsafe { slot_ptr.as_ref() }.live();
    // SAFETY: the phase is EMPTY (only this fill sets it FULL), so no caller reads
    // the cell until the read-modify-write below publishes it.
    slot.value.with_mut(|v| unsafe { *v = Some(result) });
    // The common case, nobody asleep and the ticket held: publish the answer and let
    // go in one step; the slot is the ticket's from here.
    if slot
        .state
        .compare_exchange(
            EMPTY,
            FULL | RESPONDER_GONE,
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .is_ok()
    {
        return;
    }
    // EMPTY + 1 = FULL. One read-modify-write of the word the sleepers count themselves
    // in: either it sees a sleeper, or that sleeper's count sees FULL.
    let before = slot.state.fetch_add(FULL, Ordering::AcqRel);
    if before & TICKET_GONE != 0 {
        // The ticket let go before the answer: nobody takes it.
        // SAFETY: the ticket let go first.
        unsafe { free(slot_ptr) };
        return;
    }
    if before >= WAKER {
        // Taking the lock means the sleeper is either before its re-read of the state
        // (and sees FULL) or already waiting (and gets this notification), and a poll
        // either registered its waker before (taken here) or sees FULL itself. The
        // slot stays live meanwhile: its ticket lets go only after the responder
        // (which then frees it) or before (seen below).
        let guard = slot.lock.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the waker cell is written and taken only under the lock.
        let waker = slot.waker.with_mut(|w| unsafe { (*w).take() });
        drop(guard);
        slot.live().ready.notify_all();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
    let before = slot.live().state.fetch_or(RESPONDER_GONE, Ordering::AcqRel);
    if before & TICKET_GONE != 0 {
        // SAFETY: the ticket let go first (while this end notified).
        unsafe { free(slot_ptr) };
    }
}

/// Asks the CPU to bring the slot at `addr` (0: none) into this core's cache, ready to
/// be written: a hint, which the CPU may drop; nothing is read.
#[cfg(not(photofinish_loom))]
fn prefetch_slot<T>(addr: usize) {
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
    #[cfg(target_arch = "x86_64")]
    if addr != 0 {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0};
        const LINE: usize = 64;
        let end = addr.saturating_add(std::mem::size_of::<Slot<T>>());
        let mut line = addr & !(LINE - 1);
        while line < end {
            // SAFETY: a prefetch never faults and has no effect a program can observe
            // but timing, whatever the address (the slot may have been freed).
            unsafe { _mm_prefetch::<_MM_HINT_ET0>(std::ptr::without_provenance(line)) };
            line += LINE;
        }
    }
}

/// Under the loom models, a look at a ticket's slot that outlives the ticket (slots
/// are not deallocated there): whether the slot was freed. For `loom-tests/` only.
#[cfg(photofinish_loom)]
#[derive(Debug)]
pub struct SlotProbe(*const std::sync::atomic::AtomicBool);

#[cfg(photofinish_loom)]
impl SlotProbe {
    /// True once an end freed the slot.
    pub fn freed(&self) -> bool {
        // SAFETY: under loom a slot's memory is never deallocated (`free`).
        unsafe { &*self.0 }.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The caller's end: waits for the one answer of an accepted batch. One pointer wide
/// (what a wait needs besides the slot's protocol, it finds in the slot): a window's
/// `Vec` of tickets stays small enough for the allocator's quick bins. Dropping a
/// ticket lets go of its slot (and of an answer not taken).
pub struct Ticket<T: 'static = super::Answer> {
    /// The slot, which the ticket holds until it is dropped.
    slot: NonNull<Slot<T>>,
}

// A ticket moves to and is waited on from any thread; waits through shared references
// from several threads at once take the answer once (`try_take`).
unsafe impl<T: Send + 'static> Send for Ticket<T> {}
unsafe impl<T: Send + 'static> Sync for Ticket<T> {}

impl<T: 'static> fmt::Debug for Ticket<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl<T: 'static> Ticket<T> {
    /// The slot, live while the ticket is: only the ticket's `Drop` lets go of it.
    fn slot(&self) -> &Slot<T> {
        // SAFETY: the slot is freed only after both ends let go, and this end lets go
        // in `drop` alone.
        unsafe { self.slot.as_ref() }.live()
    }
}

impl<T: 'static> Drop for Ticket<T> {
    fn drop(&mut self) {
        let slot = self.slot();
        let mut state = slot.state.load(Ordering::Acquire);
        if state & RESPONDER_GONE == 0 {
            state = slot.state.fetch_or(TICKET_GONE, Ordering::AcqRel);
            if state & RESPONDER_GONE == 0 {
                // The responder frees it when it lets go.
                return;
            }
        }
        // The responder let go first: the slot is this end's alone.
        if state & PHASE == TAKEN {
            // SAFETY: as above.
            unsafe { spare::keep(self.slot) };
        } else {
            // SAFETY: as above.
            unsafe { free(self.slot) };
        }
    }
}

impl<T: 'static> Ticket<T> {
    /// A probe of this ticket's slot, to check after the ticket and its responder are
    /// gone that the slot was freed; for the loom models in `loom-tests/`.
    #[cfg(photofinish_loom)]
    pub fn probe_for_models(&self) -> SlotProbe {
        SlotProbe(&self.slot().freed)
    }

    /// True once the answer is in (and not yet taken).
    pub fn is_ready(&self) -> bool {
        self.slot().phase() == FULL
    }

    /// Sleeps on the condvar until the answer is in or `wait` gives up (`wait_timeout`
    /// returning with its timeout passed), counted as a sleeper so the filler wakes it.
    fn sleep<G>(&self, mut wait: G)
    where
        G: for<'a> FnMut(
            &'a Condvar,
            crate::sync::MutexGuard<'a, ()>,
        ) -> Option<crate::sync::MutexGuard<'a, ()>>,
    {
        let slot = self.slot();
        let mut guard = slot.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut phase = slot.state.fetch_add(SLEEPER, Ordering::AcqRel) & PHASE;
        while phase == EMPTY {
            match wait(&slot.ready, guard) {
                Some(g) => {
                    guard = g;
                    phase = slot.phase();
                }
                // Timed out (`wait` gave the lock back).
                None => break,
            }
        }
        slot.state.fetch_sub(SLEEPER, Ordering::AcqRel);
    }

    /// Has `wait` on this ticket prefetch `later`'s slot: a caller that takes a
    /// window's answers in order then finds the next ones' lines, which their workers
    /// wrote on other cores, on their way while it takes this one, instead of fetching
    /// each in turn.
    pub(crate) fn wait_ahead(&mut self, later: &Ticket<T>) {
        let later = later.slot.as_ptr() as usize;
        self.slot()
            .ahead
            .store(later, std::sync::atomic::Ordering::Relaxed);
    }

    /// The slot `wait` prefetches (0: none).
    #[cfg_attr(photofinish_loom, allow(dead_code))]
    fn ahead(&self) -> usize {
        self.slot().ahead.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The `Future` poll: the answer if it is in, else the waker registered under the
    /// lock and counted with the `WAKER` bit in the same read-modify-write that reads
    /// the phase, so the filler either sees the bit (and wakes this waker) or this
    /// read sees `FULL`.
    fn poll_answer(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<T, EngineError>> {
        use std::task::Poll;
        let slot = self.slot();
        if let Some(result) = slot.try_take() {
            return Poll::Ready(result);
        }
        let guard = slot.lock.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the waker cell is written and taken only under the lock.
        slot.waker.with_mut(|w| unsafe {
            match &mut *w {
                Some(old) if old.will_wake(cx.waker()) => {}
                other => *other = Some(cx.waker().clone()),
            }
        });
        let phase = slot.state.fetch_or(WAKER, Ordering::AcqRel) & PHASE;
        drop(guard);
        if phase == EMPTY {
            return Poll::Pending;
        }
        match slot.try_take() {
            Some(result) => Poll::Ready(result),
            // FULL was seen, so only a taken answer makes `try_take` return `None`.
            None => Poll::Ready(Err(EngineError::AnswerTaken)),
        }
    }

    /// Blocks until the answer is in and returns it.
    pub fn wait(self) -> Result<T, EngineError> {
        #[cfg(not(photofinish_loom))]
        prefetch_slot::<T>(self.ahead());
        // Spin briefly first: a short batch answers before a parked thread would wake.
        #[cfg(not(photofinish_loom))]
        super::spin::spin_until(|| self.is_ready().then_some(()), self.slot().busy);
        loop {
            // Dropping the ticket then lets go of (or keeps) the slot.
            if let Some(result) = self.slot().try_take() {
                return result;
            }
            self.sleep(|ready, g| Some(ready.wait(g).unwrap_or_else(|p| p.into_inner())));
        }
    }

    /// Waits at most `timeout`. `None`: no answer yet (the ticket stays valid, wait
    /// again). `Some(result)`: the answer, which is now taken — a later wait returns
    /// [`EngineError::AnswerTaken`].
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Result<T, EngineError>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(result) = self.slot().try_take() {
                return Some(result);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            self.sleep(|ready, g| {
                let now = Instant::now();
                (now < deadline).then(|| {
                    ready
                        .wait_timeout(g, deadline - now)
                        .map(|(guard, _)| guard)
                        .unwrap_or_else(|p| p.into_inner().0)
                })
            });
        }
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
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.poll_answer(cx)
    }
}

#[cfg(all(test, not(photofinish_loom)))]
mod tests {
    use super::*;
    use crate::engine::tests::on_a_thread_of_its_own;

    fn slot_of<T>(ticket: &Ticket<T>) -> *const Slot<T> {
        ticket.slot.as_ptr()
    }

    #[test]
    fn a_taken_slot_serves_the_threads_next_ticket_as_new() {
        on_a_thread_of_its_own(|| {
            let (responder, ticket) = one_shot::<u32>(Duration::ZERO);
            let first = slot_of(&ticket);
            responder.answer(Ok(1));
            assert_eq!(ticket.wait(), Ok(1));
            assert_eq!(spare::kept::<u32>(), 1, "the taken slot was not kept");
            let (responder, ticket) = one_shot::<u32>(Duration::ZERO);
            assert_eq!(spare::kept::<u32>(), 0);
            assert_eq!(slot_of(&ticket), first, "the kept slot was not reused");
            assert!(!ticket.is_ready(), "a reused slot starts empty");
            assert_eq!(ticket.wait_timeout(Duration::ZERO), None);
            responder.answer(Ok(2));
            assert_eq!(ticket.wait(), Ok(2));
            // Another answer type does not get that slot.
            let (responder, ticket) = one_shot::<u64>(Duration::ZERO);
            assert_ne!(slot_of(&ticket).cast::<u8>(), first.cast::<u8>());
            drop(responder);
            assert_eq!(ticket.wait(), Err(EngineError::Unanswered));
        });
    }

    /// A ticket is one pointer (a window's list of them stays in the allocator's
    /// quick bins); a reused slot takes the new ticket's busy wait and prefetches
    /// nothing until told.
    #[test]
    fn a_ticket_is_a_pointer_and_a_reused_slot_starts_over() {
        assert_eq!(std::mem::size_of::<Ticket>(), std::mem::size_of::<usize>());
        on_a_thread_of_its_own(|| {
            let (first_responder, mut first) = one_shot::<u32>(Duration::from_micros(7));
            let (later_responder, later) = one_shot::<u32>(Duration::ZERO);
            first.wait_ahead(&later);
            assert_eq!(first.slot().busy, Duration::from_micros(7));
            let reused = slot_of(&first);
            first_responder.answer(Ok(1));
            assert_eq!(first.wait(), Ok(1));
            let (responder, ticket) = one_shot::<u32>(Duration::from_micros(3));
            assert_eq!(slot_of(&ticket), reused, "the kept slot was not reused");
            assert_eq!(ticket.slot().busy, Duration::from_micros(3));
            assert_eq!(ticket.ahead(), 0, "a reused slot kept its old prefetch");
            responder.answer(Ok(2));
            assert_eq!(ticket.wait(), Ok(2));
            later_responder.answer(Ok(3));
            assert_eq!(later.wait(), Ok(3));
        });
    }

    /// A slot whose ticket let go before the answer is the responder's to free, and an
    /// answer nobody took is dropped with its slot, whichever end lets go last.
    #[test]
    fn a_slot_let_go_unanswered_is_freed_with_its_answer_not_kept() {
        on_a_thread_of_its_own(|| {
            let answer = std::sync::Arc::new(());
            // The ticket lets go first: the responder frees the slot when it answers.
            let (responder, ticket) = one_shot::<std::sync::Arc<()>>(Duration::ZERO);
            drop(ticket);
            responder.answer(Ok(std::sync::Arc::clone(&answer)));
            assert_eq!(std::sync::Arc::strong_count(&answer), 1, "answer leaked");
            // The responder lets go first, the answer is never taken.
            let (responder, ticket) = one_shot::<std::sync::Arc<()>>(Duration::ZERO);
            responder.answer(Ok(std::sync::Arc::clone(&answer)));
            assert!(ticket.is_ready());
            drop(ticket);
            assert_eq!(std::sync::Arc::strong_count(&answer), 1, "answer leaked");
            assert_eq!(
                spare::kept::<std::sync::Arc<()>>(),
                0,
                "a slot whose answer was not taken was kept"
            );
            // A ticket whose responder was disarmed (a batch never accepted).
            let (responder, ticket) = one_shot::<std::sync::Arc<()>>(Duration::ZERO);
            responder.disarm();
            drop(ticket);
            assert_eq!(spare::kept::<std::sync::Arc<()>>(), 0);
        });
    }

    #[test]
    fn a_thread_keeps_at_most_max_slots() {
        on_a_thread_of_its_own(|| {
            let n = spare::MAX + 44;
            let tickets: Vec<_> = (0..n)
                .map(|i| {
                    let (responder, ticket) = one_shot::<usize>(Duration::ZERO);
                    responder.answer(Ok(i));
                    ticket
                })
                .collect();
            for (i, ticket) in tickets.into_iter().enumerate() {
                assert_eq!(ticket.wait(), Ok(i));
            }
            assert_eq!(spare::kept::<usize>(), spare::MAX);
            let (_, _ticket) = one_shot::<usize>(Duration::ZERO);
            assert_eq!(spare::kept::<usize>(), spare::MAX - 1);
        });
    }

    #[test]
    fn a_ticket_waited_ahead_records_the_later_slot_and_still_answers() {
        on_a_thread_of_its_own(|| {
            let (first_responder, mut first) = one_shot::<u32>(Duration::ZERO);
            let (later_responder, later) = one_shot::<u32>(Duration::ZERO);
            assert_eq!(first.ahead(), 0);
            first.wait_ahead(&later);
            assert_eq!(first.ahead(), slot_of(&later) as usize);
            // The later slot gone before the first is waited for: its address is
            // only prefetched, which is harmless whatever it holds now.
            drop((later_responder, later));
            first_responder.answer(Ok(7));
            assert_eq!(first.wait(), Ok(7));
        });
    }
}
