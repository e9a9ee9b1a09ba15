//! Under loom nothing is kept: a model's slot belongs to one execution of the model.

use std::ptr::NonNull;

use super::{Homebound, Slot, SlotError};

pub(super) fn take<T: 'static, E: SlotError + 'static, H: Homebound + 'static>(
    _busy: std::time::Duration,
) -> Option<NonNull<Slot<T, E, H>>> {
    None
}

/// # Safety
/// As [`super::free`]'s.
pub(super) unsafe fn keep<T: 'static, E: SlotError + 'static, H: Homebound + 'static>(
    slot: NonNull<Slot<T, E, H>>,
) {
    unsafe { super::free(slot) };
}
