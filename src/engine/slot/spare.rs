//! Slots whose answers a thread took, kept for that thread's next tickets: a window of
//! batches otherwise allocates a slot per batch and frees it when the answer is taken,
//! 64 blocks of one size a window, past what glibc's per-thread cache of freed blocks
//! (7 of a size) holds, so most went through the allocator's arena. A slot is kept
//! when its ticket lets go of it last (the responder let go first: the common case, a
//! waiter that did not sleep), so it is the thread's alone; at most [`MAX`] are
//! kept per thread, freed when the thread ends.

use std::any::Any;
use std::cell::RefCell;
use std::ptr::NonNull;
use std::time::Duration;

use super::{Homebound, Slot, SlotError};

/// The most slots a thread keeps.
pub(super) const MAX: usize = 256;

thread_local! {
    /// A `Vec<Box<Slot<T, E, H>>>` for the answer type `T` the thread last kept.
    static SPARE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// A kept slot of this thread, ready for a new ticket whose caller busy-waits for
/// its first `busy`.
pub(super) fn take<T: 'static, E: SlotError + 'static, H: Homebound + 'static>(
    busy: Duration,
) -> Option<NonNull<Slot<T, E, H>>> {
    let mut slot = SPARE
        .try_with(|spare| {
            let mut spare = spare.try_borrow_mut().ok()?;
            spare
                .as_mut()?
                .downcast_mut::<Vec<Box<Slot<T, E, H>>>>()?
                .pop()
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
pub(super) fn kept<T: 'static, E: SlotError + 'static, H: Homebound + 'static>() -> usize {
    SPARE.with_borrow(|spare| {
        spare
            .as_ref()
            .and_then(|kept| kept.downcast_ref::<Vec<Box<Slot<T, E, H>>>>())
            .map_or(0, Vec::len)
    })
}

/// Keeps `slot`, whose answer and payload were taken and which both ends let go
/// of, if the thread keeps fewer than [`MAX`]; frees it otherwise.
///
/// # Safety
/// As [`super::free`]'s: the caller holds the slot alone.
pub(super) unsafe fn keep<T: 'static, E: SlotError + 'static, H: Homebound + 'static>(
    slot: NonNull<Slot<T, E, H>>,
) {
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
        let kept = spare.get_or_insert_with(|| Box::new(Vec::<Box<Slot<T, E, H>>>::new()));
        if !kept.is::<Vec<Box<Slot<T, E, H>>>>() {
            *kept = Box::new(Vec::<Box<Slot<T, E, H>>>::new());
        }
        if let Some(kept) = kept.downcast_mut::<Vec<Box<Slot<T, E, H>>>>() {
            if kept.len() < MAX {
                kept.push(slot);
            }
        }
    });
}
