//! The names a race's records are made of: the [`KernelId`] `register` hands out,
//! which [`Arm`] ran, a timed agreeing race's [`RaceSample`] and where a verdict came
//! from ([`CacheStatus`]). Plain data that the registry, the keys, events and stats
//! share; it imports nothing of the engine.

use std::fmt;

use crate::backend::QueueId;

/// The id `register` hands out; batches name their kernel with it.
///
/// An id is valid only on the engine that issued it: it carries that engine's tag, and
/// another engine answers it with `EngineError::UnknownKernel`, never with its own
/// kernel of the same number (SPEC §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KernelId {
    /// The issuing registry's tag (`Registry::tag`), unique in the process.
    pub(super) engine: u32,
    /// The kernel's index in that registry.
    pub(super) index: u32,
}

impl KernelId {
    /// The raw number: the kernel's index among its engine's registrations (two
    /// engines' ids can share it; the ids still differ).
    pub fn get(self) -> u32 {
        self.index
    }
}

impl fmt::Display for KernelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "k{}", self.index)
    }
}

/// Which arm of a race: the conservative variant or the speculative one. The autotune
/// map's [`SpeculativeVariantKind`](crate::autotune::SpeculativeVariantKind) (SPEC §3)
/// under the engine's name: one type.
pub use crate::autotune::SpeculativeVariantKind as Arm;

impl Arm {
    /// The workload variant index of this arm when `spec` is the speculative variant
    /// in play.
    pub(crate) fn variant(self, spec: usize) -> usize {
        match self {
            Arm::Conservative => 0,
            Arm::Speculative => spec,
        }
    }
}

/// One race of a kernel whose two arms agreed and both had GPU (or host) kernel times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RaceSample {
    /// 0-based index of this sample among the kernel's timed races on this engine.
    pub index: u32,
    /// The conservative arm's `kernel_ns`.
    pub conservative_ns: u64,
    /// The speculative arm's `kernel_ns`.
    pub speculative_ns: u64,
    /// The queue the conservative arm ran on.
    pub conservative_queue: QueueId,
    /// The queue the speculative arm ran on (the same one when they ran back to back).
    pub speculative_queue: QueueId,
}

/// Where a kernel's verdict came from, as far as the autotune file is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheStatus {
    /// Nothing was loaded for this kernel: it races from scratch.
    NotCached,
    /// A verdict was loaded from the autotune file; the next race re-verifies it before
    /// it is trusted (until then the kernel is undecided and races).
    Loaded,
    /// A loaded verdict was confirmed by a race on this run ("from cache, re-verified").
    Reverified,
    /// A loaded verdict was contradicted by the re-verification race; the kernel went
    /// on from what this run measures.
    Overturned,
}

impl fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CacheStatus::NotCached => "measured",
            CacheStatus::Loaded => "from cache, not re-verified yet",
            CacheStatus::Reverified => "from cache, re-verified",
            CacheStatus::Overturned => "from cache, overturned",
        })
    }
}
