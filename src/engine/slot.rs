//! The one-shot slot through which a worker answers a batch (the engine's `Ticket`,
//! `ticket.rs`, is this slot for an `Answer`).
//!
//! Owns the slot protocol only: a [`Responder`] (held by whoever runs the batch) fills
//! the slot exactly once, and a [`Ticket`] (held by the caller) waits for it. A
//! responder that is dropped without answering — a worker unwinding from a panic, a
//! queue torn down — answers with [`SlotError::unanswered`] from its `Drop`, so an
//! accepted batch can never be left without an answer. This module never decides what
//! the answer is, and knows no engine type: it is generic over the answer, the error
//! the slot answers on its own ([`SlotError`]) and what travels home with an answer
//! ([`Homebound`]). Its state uses `crate::sync` so the loom models in
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

/// The error a slot answers on its own, with no responder's say: a responder dropped
/// unanswered, a wait after the answer was taken.
pub(super) trait SlotError: 'static {
    /// The responder let go of the slot without answering.
    fn unanswered() -> Self;
    /// An earlier wait took the answer.
    fn answer_taken() -> Self;
}

/// What an answer may carry back to the thread that takes it, which lets go of it
/// there (the batch's payload, which that thread allocated).
pub(super) trait Homebound: 'static {
    /// Lets go of it, on the taking thread.
    fn release(self);
}

/// Nothing travels home.
impl Homebound for () {
    fn release(self) {}
}

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
struct Slot<T, E: SlotError, H: Homebound> {
    state: AtomicU32,
    value: UnsafeCell<Option<Result<T, E>>>,
    /// The batch's payload and kernel reference, handed back with the answer so that
    /// the caller's thread, which allocated the one and counted the other, also frees
    /// and uncounts them (written and read as `value` is). A worker that freed the
    /// payload would free into the caller's allocator arena from another core (with
    /// glibc's malloc a contended arena lock per batch), and one that dropped the
    /// reference would write the kernel's count, which every worker of the kernel and
    /// every producer then passes between their cores.
    home: UnsafeCell<Option<H>>,
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
unsafe impl<T: Send, E: SlotError + Send, H: Homebound + Send> Send for Slot<T, E, H> {}
unsafe impl<T: Send, E: SlotError + Send, H: Homebound + Send> Sync for Slot<T, E, H> {}

impl<T, E: SlotError, H: Homebound> Slot<T, E, H> {
    /// A new slot, empty, held by both ends.
    fn allocate(busy: Duration) -> NonNull<Slot<T, E, H>> {
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
    fn try_take(&self) -> Option<Result<T, E>> {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            match state & PHASE {
                FULL => {}
                TAKEN => return Some(Err(E::answer_taken())),
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
                            .unwrap_or(Err(E::unanswered())),
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
unsafe fn free<T, E: SlotError, H: Homebound>(slot: NonNull<Slot<T, E, H>>) {
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
pub(crate) fn one_shot<T: 'static, E: SlotError + 'static, H: Homebound + 'static>(
    busy: Duration,
) -> (Responder<T, E, H>, Ticket<T, E, H>) {
    let slot = spare::take(busy).unwrap_or_else(|| Slot::allocate(busy));
    (Responder { slot: Some(slot) }, Ticket { slot })
}

/// Slots whose answers a thread took, kept for that thread's next tickets
/// (`slot/spare.rs`).
#[cfg_attr(not(photofinish_loom), path = "slot/spare.rs")]
#[cfg_attr(photofinish_loom, path = "slot/spare_loom.rs")]
mod spare;

/// The answering end of a ticket. Answers exactly once: by [`Responder::answer`], or
/// with [`SlotError::unanswered`] when dropped unanswered.
pub(super) struct Responder<T, E: SlotError, H: Homebound> {
    /// The slot, until the responder lets go of it.
    slot: Option<NonNull<Slot<T, E, H>>>,
}

// A responder moves to the worker that runs the batch and sends the answer (a `T`) to
// the caller's thread; through a shared reference it does nothing.
unsafe impl<T: Send, E: SlotError + Send, H: Homebound + Send> Send for Responder<T, E, H> {}
unsafe impl<T: Send, E: SlotError + Send, H: Homebound + Send> Sync for Responder<T, E, H> {}

impl<T, E: SlotError, H: Homebound> fmt::Debug for Responder<T, E, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("answered", &self.slot.is_none())
            .finish()
    }
}

impl<T, E: SlotError, H: Homebound> Responder<T, E, H> {
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
    pub(super) fn answer(self, result: Result<T, E>) {
        self.answer_sending_home(result, None);
    }

    /// As [`answer`](Self::answer), handing `home` back with the answer: the caller
    /// that takes the answer drops it on its own thread (and a slot nobody takes drops
    /// it with itself).
    pub(crate) fn answer_sending_home(mut self, result: Result<T, E>, home: Option<H>) {
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

impl<T, E: SlotError, H: Homebound> Drop for Responder<T, E, H> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            // SAFETY: this end has not let go of the slot.
            unsafe { fill(slot, Err(E::unanswered())) };
        }
    }
}

/// The one fill of the slot, after which the responder has let go of it (a responder
/// fills once: `answer` and `drop` take its slot out first).
///
/// # Safety
/// The responder has not let go of `slot` before.
unsafe fn fill<T, E: SlotError, H: Homebound>(
    slot_ptr: NonNull<Slot<T, E, H>>,
    result: Result<T, E>,
) {
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
fn prefetch_slot<T, E: SlotError, H: Homebound>(addr: usize) {
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
    #[cfg(target_arch = "x86_64")]
    if addr != 0 {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0};
        const LINE: usize = 64;
        let end = addr.saturating_add(std::mem::size_of::<Slot<T, E, H>>());
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
pub(super) struct Ticket<T: 'static, E: SlotError, H: Homebound> {
    /// The slot, which the ticket holds until it is dropped.
    slot: NonNull<Slot<T, E, H>>,
}

// A ticket moves to and is waited on from any thread; waits through shared references
// from several threads at once take the answer once (`try_take`).
unsafe impl<T: Send + 'static, E: SlotError + Send, H: Homebound + Send> Send for Ticket<T, E, H> {}
unsafe impl<T: Send + 'static, E: SlotError + Send, H: Homebound + Send> Sync for Ticket<T, E, H> {}

impl<T: 'static, E: SlotError, H: Homebound> fmt::Debug for Ticket<T, E, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl<T: 'static, E: SlotError, H: Homebound> Ticket<T, E, H> {
    /// The slot, live while the ticket is: only the ticket's `Drop` lets go of it.
    fn slot(&self) -> &Slot<T, E, H> {
        // SAFETY: the slot is freed only after both ends let go, and this end lets go
        // in `drop` alone.
        unsafe { self.slot.as_ref() }.live()
    }
}

impl<T: 'static, E: SlotError, H: Homebound> Drop for Ticket<T, E, H> {
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

impl<T: 'static, E: SlotError, H: Homebound> Ticket<T, E, H> {
    /// A probe of this ticket's slot, to check after the ticket and its responder are
    /// gone that the slot was freed; for the loom models in `loom-tests/`.
    #[cfg(photofinish_loom)]
    pub(crate) fn probe_for_models(&self) -> SlotProbe {
        SlotProbe(&self.slot().freed)
    }

    /// True once the answer is in (and not yet taken).
    pub(super) fn is_ready(&self) -> bool {
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
    pub(crate) fn wait_ahead(&mut self, later: &Ticket<T, E, H>) {
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
    fn poll_answer(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<T, E>> {
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
            None => Poll::Ready(Err(E::answer_taken())),
        }
    }

    /// Blocks until the answer is in and returns it.
    pub(super) fn wait(self) -> Result<T, E> {
        #[cfg(not(photofinish_loom))]
        prefetch_slot::<T, E, H>(self.ahead());
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
    /// [`SlotError::answer_taken`].
    pub(super) fn wait_timeout(&self, timeout: Duration) -> Option<Result<T, E>> {
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

/// A ticket is also a `Future` of its answer, woken by the responder that fills it.
impl<T: 'static, E: SlotError, H: Homebound> std::future::Future for Ticket<T, E, H> {
    type Output = Result<T, E>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.poll_answer(cx)
    }
}

#[cfg(all(test, not(photofinish_loom)))]
mod tests;
