//! One specialised pipeline's slot: where its compile stands (nobody compiles it,
//! something compiles it, compiled) and whether trace-JIT compiled it ahead of its
//! first batch. The kernel's map of them and what uses it are in `spec_slots`.

use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

use crate::backend::KernelHandle;

/// Which pipeline a [`SpecSlot`] holds: a device, a variant, the values of its
/// specialisation constants ((id, value), in declaration order).
pub(super) type SpecSlotKey = (usize, usize, Box<[(u32, u32)]>);

/// Where a [`SpecSlot`]'s pipeline is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum SpecLoad {
    /// Nobody compiles it yet.
    #[default]
    Empty,
    /// A batch or a trace-JIT pre-specialisation compiles it.
    Loading,
    /// Compiled.
    Ready(KernelHandle),
}

/// One specialisation of a variant on one device: compiled at most once, by the first
/// batch that needs it or, ahead of it, by a trace-JIT pre-specialisation (which marks
/// it `Loading` when it is decided, so a batch that comes while it compiles waits for
/// it instead of compiling it again on its own critical path).
#[derive(Debug, Default)]
pub(crate) struct SpecSlot {
    pub(super) load: Mutex<SpecLoad>,
    pub(super) loaded: std::sync::Condvar,
    /// Compiled by a trace-JIT pre-specialisation (set before it starts).
    pub(super) pre: AtomicBool,
    /// The pre-specialisation's outcome was counted: a batch used it, or it was
    /// counted wasted at shutdown.
    pub(super) resolved: AtomicBool,
}

/// How a batch got its pipeline ([`Kernel::handle_for`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Readiness {
    /// This batch compiled it on its critical path, in this many ns.
    pub(crate) compiled_ns: Option<u64>,
    /// It was pre-specialised by trace-JIT and this is the first batch to use it.
    pub(crate) first_use_of_pre: bool,
}

/// A pre-specialised pipeline nobody used yet (see [`Kernel::unused_pre`]).
#[derive(Debug, Clone)]
pub(crate) struct UnusedPre {
    pub(crate) device: usize,
    pub(crate) variant: usize,
    pub(crate) constants: Vec<(u32, u32)>,
}
