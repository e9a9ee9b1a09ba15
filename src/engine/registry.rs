//! The kernel registry: every registered kernel, its loaded handles per device and its
//! live racing state (verdict, paired window, per-queue counts, fused-path flag).
//!
//! Registration validates and compiles both variants on every device in parallel on
//! rayon; lookups are lock-free reads of a `SwapCell` snapshot. The registry keeps
//! state; the race module decides with it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use rayon::prelude::*;

use crate::autotune::{SpecCacheKey, SpeculativeVariantKeys};
use crate::backend::{Backend, BackendError, KernelHandle, KernelVariant, QueueId};
use crate::kernels::Workload;
use crate::policy::SpeculationObservation;
use crate::sync::SwapCell;

use super::agree::KernelAgreement;
use super::dispatch_policy::PolicyState;
use super::error::EngineError;
use super::events::KernelVerdict;
use super::keys::{KeyState, KeyStats};
use super::lane::Lane;
use super::sample::{CacheStatus, KernelId, RaceSample};
use super::spec_key::spec_cache_key;
use super::spec_slot::{SpecSlot, SpecSlotKey};
use super::specialise::Specialization;
use super::trace::{TraceState, TraceStats};
use super::tuning::{KeyTable, TuningKey};

/// What a kernel is: a built-in workload or a user's SPIR-V variant pair.
#[derive(Debug, Clone)]
pub(crate) enum KernelSource {
    /// A workload: batches carry input bytes, answers are canonical bytes.
    Workload(Arc<dyn Workload>),
    /// A raw pair: batches carry their buffers, answers are the written buffers.
    Pair,
}

const FUSED_UNKNOWN: u8 = 0;
const FUSED_YES: u8 = 1;
const FUSED_NO: u8 = 2;

/// Race samples kept per kernel for [`KernelStats`]; later samples still feed the
/// window and are published as `Event::RaceSample`, but are not kept.
pub const MAX_KEPT_SAMPLES: usize = 4096;

/// Paired race samples after which an undecided speculative variant whose window
/// still says keep racing is rejected (`VerdictReason::Inconclusive`): it is not
/// slower, but it saves less than `policy::MIN_ADOPT_SAVINGS_BPS` (15 %), and racing
/// it forever would double every batch's GPU work for a saving that does not count.
/// Audit races of an adopted variant are not bound by it.
pub const MAX_UNDECIDED_RACES: u32 = 64;

/// What the engine knows about one kernel's races (`Engine::kernel_stats`): the CLI's
/// per-kernel report reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelStats {
    /// The kernel.
    pub kernel: KernelId,
    /// Its name.
    pub name: String,
    /// Its verdict over its tuning keys: `Adopted` when some key runs a speculative
    /// variant, else `Undecided` when some key still races, else `Rejected`.
    pub verdict: KernelVerdict,
    /// The speculative variant in play on the kernel's busiest key (the one with the
    /// most races; its index among the kernel's variants; 1 unless the kernel has
    /// several speculative variants). The fields below about races (`variant_verdicts`,
    /// `cache`, `samples`, `verdict_at_sample`, `observation`) are that key's and that
    /// variant's; `keys` has every key.
    pub variant: usize,
    /// The verdict on every speculative variant, in order (`[0]` is variant 1's).
    pub variant_verdicts: Vec<KernelVerdict>,
    /// Whether the verdict came from the autotune file and was re-verified.
    pub cache: CacheStatus,
    /// The timed races, oldest first (at most [`MAX_KEPT_SAMPLES`]).
    pub samples: Vec<RaceSample>,
    /// The sample index at which the verdict last changed from a measurement (the
    /// sample that decided it); `None` while undecided or when it changed for another
    /// reason (a mismatch, a failure) without a sample.
    pub verdict_at_sample: Option<u32>,
    /// What the paired window has seen (a resumed window counts the loaded samples).
    pub observation: SpeculationObservation,
    /// Trace-JIT's hits, misses and background pre-loads for this kernel.
    pub trace: TraceStats,
    /// Every tuning key the kernel holds in memory, by application key then size.
    pub keys: Vec<KeyStats>,
}

/// One variant on one device: loaded at most once, by whoever needs it first (a batch,
/// registration, or a trace-JIT pre-load).
#[derive(Debug, Default)]
pub(crate) struct LoadSlot {
    handle: OnceLock<KernelHandle>,
    loading: Mutex<()>,
    /// Set by the one trace-JIT pre-load allowed for this slot.
    pub(crate) claimed: AtomicBool,
    /// Set when that pre-load (not a batch) loaded it.
    pub(crate) preloaded: AtomicBool,
    /// The pre-load's outcome was counted (used by a batch, or wasted at shutdown).
    pub(super) resolved: AtomicBool,
}

impl LoadSlot {
    /// True once the variant is loaded on the device.
    pub(crate) fn is_loaded(&self) -> bool {
        self.handle.get().is_some()
    }
}

/// One registered kernel.
///
/// Variant 0 is the conservative one; variants 1.. are speculative candidates. Their
/// verdicts belong to tuning keys (SPEC §8): `tuning` holds one [`KeyState`] per kind
/// of batch the kernel has met (bounded; see `tuning.rs`), each with its own verdicts,
/// race logs and ladder. What belongs to a variant whatever the batch — whether it
/// writes a counter tail, whether it ever answered wrongly — stays here.
///
/// Aligned to 128 bytes so that in an `Arc<Kernel>` the reference counts, which every
/// submit and every finished batch write, sit on other cache lines than the fields a
/// worker reads for every batch.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Kernel {
    pub(crate) id: KernelId,
    pub(crate) name: String,
    pub(crate) source: KernelSource,
    /// `[conservative, speculative…]`.
    pub(crate) variants: Vec<KernelVariant>,
    /// `handles[device][variant]`, each loaded when first needed (registration loads
    /// the conservative variant everywhere and every speculative one on the first
    /// device).
    pub(super) handles: Vec<Vec<LoadSlot>>,
    /// The per-key states.
    pub(crate) tuning: KeyTable<KeyState>,
    /// `fused[v - 1]`: whether speculative variant `v` writes a counter tail.
    fused: Box<[AtomicU8]>,
    /// `broken[v - 1]`: speculative variant `v` answered wrongly or failed on some
    /// batch, so it is rejected on every key, present and future, for good.
    broken: Box<[AtomicBool]>,
    /// Set once the kernel forgot a key (see `priors.rs`).
    forgot: AtomicBool,
    /// One lane per queue of the backend: what each queue's worker counts of this
    /// kernel batch by batch.
    lanes: Box<[(QueueId, Lane)]>,
    /// The lane of a queue not in `lanes` (none: the backend's queue list is fixed).
    spare_lane: Lane,
    /// The autotune key of every variant, in variant order, with `spec_hash` 0: the
    /// kernel-wide entries of files written before tuning keys. A key's own entries
    /// are named by `KeyState::pair_keys`.
    pub(crate) keys: Vec<SpecCacheKey>,
    /// What the engine measured for the dispatch policy.
    pub(crate) policy: Mutex<PolicyState>,
    /// Trace-JIT's miss cost and pre-load count (the per-batch history is per lane).
    pub(crate) trace: TraceState,
    /// `specs[v]`: variant `v`'s specialisation constants, if it declares any.
    pub(crate) specs: Vec<Option<Specialization>>,
    /// The specialised pipelines, by device, variant and values.
    pub(super) specialised: Mutex<HashMap<SpecSlotKey, Arc<SpecSlot>>>,
    /// How a race's two answers are compared.
    pub(crate) agreement: KernelAgreement,
    /// Some variant's SPIR-V indexes a descriptor array non-uniformly (D9's dynamic
    /// indexing), scanned once here rather than at every policy evaluation.
    pub(crate) indexes_non_uniformly: bool,
    /// Set when the conservative variant did not return within the dispatch timeout:
    /// the error every later batch of the kernel gets at once (`judge::retire_hung`).
    pub(crate) disabled: std::sync::OnceLock<EngineError>,
}

impl Kernel {
    /// How many speculative variants the kernel has.
    pub(crate) fn speculative_count(&self) -> usize {
        self.variants.len() - 1
    }

    /// The state of tuning key `key`, if the kernel holds it now.
    pub(crate) fn key_state(&self, key: &TuningKey) -> Option<Arc<KeyState>> {
        self.tuning.get(key)
    }

    /// The kernel's verdict over its keys: `Adopted` when some key runs a speculative
    /// variant, else `Undecided` when some key still races, else `Rejected` (also with
    /// no key met yet: `Undecided`).
    pub(crate) fn verdict(&self) -> KernelVerdict {
        let entries = self.tuning.entries();
        let verdicts = entries.iter().map(|e| e.value().verdict());
        let mut summary = None;
        for verdict in verdicts {
            summary = Some(match (summary, verdict) {
                (_, KernelVerdict::Adopted) | (Some(KernelVerdict::Adopted), _) => {
                    KernelVerdict::Adopted
                }
                (_, KernelVerdict::Undecided) | (Some(KernelVerdict::Undecided), _) => {
                    KernelVerdict::Undecided
                }
                _ => KernelVerdict::Rejected,
            });
        }
        summary.unwrap_or(KernelVerdict::Undecided)
    }

    /// `Some(true)`: speculative variant `spec` is a fused kernel with a counter tail;
    /// `None`: not known yet (it has not run).
    pub(crate) fn fused(&self, spec: usize) -> Option<bool> {
        match self.fused[spec.clamp(1, self.fused.len()) - 1].load(Ordering::Acquire) {
            FUSED_YES => Some(true),
            FUSED_NO => Some(false),
            _ => None,
        }
    }

    /// Records whether speculative variant `spec` wrote a counter tail.
    pub(crate) fn set_fused(&self, spec: usize, fused: bool) {
        self.fused[spec.clamp(1, self.fused.len()) - 1]
            .store(if fused { FUSED_YES } else { FUSED_NO }, Ordering::Release);
    }

    /// True once the kernel forgot a tuning key to stay within its bound.
    pub(crate) fn has_forgotten_keys(&self) -> bool {
        self.forgot.load(Ordering::Acquire)
    }

    /// Notes that the kernel forgot a tuning key.
    pub(crate) fn note_forgotten_key(&self) {
        self.forgot.store(true, Ordering::Release);
    }

    /// True once speculative variant `spec` answered wrongly or failed (see `broken`).
    pub(crate) fn is_broken(&self, spec: usize) -> bool {
        self.broken[spec.clamp(1, self.broken.len()) - 1].load(Ordering::Acquire)
    }

    /// Marks speculative variant `spec` broken; true for the call that did.
    pub(crate) fn set_broken(&self, spec: usize) -> bool {
        !self.broken[spec.clamp(1, self.broken.len()) - 1].swap(true, Ordering::AcqRel)
    }

    /// The kernel-wide autotune keys (`spec_hash` 0) of the pair (conservative,
    /// `spec`): where files written before tuning keys kept the kernel's verdict.
    pub(crate) fn legacy_pair_keys<'a>(
        &'a self,
        adapter_id: &'a str,
        spec: usize,
    ) -> SpeculativeVariantKeys<'a> {
        let spec = spec.clamp(1, self.keys.len() - 1);
        SpeculativeVariantKeys {
            conservative: &self.keys[0],
            speculative: &self.keys[spec],
            adapter_id,
        }
    }

    /// The dispatch-policy measurements (plain numbers, consistent at every step).
    pub(crate) fn policy(&self) -> std::sync::MutexGuard<'_, PolicyState> {
        self.policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The dispatch-policy measurements unless another worker holds them right now:
    /// per-batch observations use this, so workers of a hot kernel never queue on its
    /// lock (a skipped observation only thins an average).
    pub(crate) fn try_policy(&self) -> Option<std::sync::MutexGuard<'_, PolicyState>> {
        try_guard(&self.policy)
    }

    /// The lane of `queue`.
    pub(crate) fn lane(&self, queue: QueueId) -> &Lane {
        self.lanes
            .iter()
            .find(|(q, _)| *q == queue)
            .map_or(&self.spare_lane, |(_, lane)| lane)
    }

    /// Trace-JIT's counts: the lanes' hits and misses summed, with the kernel's
    /// pre-specialisations and measured costs.
    pub(crate) fn trace_stats(&self) -> TraceStats {
        let lanes = self.lanes.iter().map(|(_, l)| l).chain([&self.spare_lane]);
        lanes.fold(self.trace.stats(), |mut stats, lane| {
            let history = lane.history();
            stats.hits = stats.hits.saturating_add(history.trace.hits);
            stats.misses = stats.misses.saturating_add(history.trace.misses);
            stats
        })
    }

    /// The load slot of `variant` on `device` (its unspecialised pipeline).
    pub(crate) fn slot(&self, device: usize, variant: usize) -> Option<&LoadSlot> {
        self.handles.get(device)?.get(variant)
    }

    /// True when `variant` is loaded on `device`.
    pub(crate) fn is_loaded(&self, device: usize, variant: usize) -> bool {
        self.slot(device, variant).is_some_and(LoadSlot::is_loaded)
    }

    /// The handle of `variant` on `device`, loading it first if no one has (one load
    /// per slot, however many threads ask). The second value is the load's measured
    /// time when this call loaded it; a load of a speculative variant also feeds
    /// trace-JIT's miss cost.
    pub(crate) fn handle(
        &self,
        backend: &dyn Backend,
        device: usize,
        variant: usize,
    ) -> Result<(KernelHandle, Option<u64>), BackendError> {
        let slot = self
            .slot(device, variant)
            .ok_or_else(|| BackendError::Unknown {
                what: format!(
                    "device {device} or variant {variant} for kernel `{}`",
                    self.name
                ),
            })?;
        if let Some(&h) = slot.handle.get() {
            return Ok((h, None));
        }
        let _one_load = slot.loading.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&h) = slot.handle.get() {
            return Ok((h, None));
        }
        let started = Instant::now();
        let h = backend.load_kernel(device, &self.variants[variant])?;
        let ns = u64::try_from(started.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let _ = slot.handle.set(h);
        self.trace.note_compile(ns);
        Ok((h, Some(ns)))
    }

    /// The workload, for workload kernels.
    pub(crate) fn workload(&self) -> Option<&Arc<dyn Workload>> {
        match &self.source {
            KernelSource::Workload(w) => Some(w),
            KernelSource::Pair => None,
        }
    }
}

/// The lock's guard if it is free (poisoned counts as free: the data are plain numbers).
fn try_guard<T>(lock: &Mutex<T>) -> Option<std::sync::MutexGuard<'_, T>> {
    match lock.try_lock() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// Every registered kernel, by id.
///
/// The kernels sit in segments of doubling size (64, 128, 256, … slots), each slot set
/// once: a lookup is a read of the segment list (a [`SwapCell`], which writes nothing
/// other threads read, where a dashmap's shard lock is a word every producer writes)
/// and of one slot. Registration sets its slot and, once per doubling, publishes a
/// segment list one entry longer — so registering n kernels costs O(n log n), not the
/// O(n²) of copying a vector of every kernel per registration (20 000 kernels took 52 s
/// that way). An id whose registration failed leaves its slot empty.
#[derive(Debug)]
pub(crate) struct Registry {
    segments: SwapCell<Vec<Arc<Segment>>>,
    writers: Mutex<()>,
    next: AtomicU64,
    /// This registry's tag, unique in the process: every id it issues carries it.
    tag: u32,
}

/// One segment of the registry: slots set once.
type Segment = Box<[OnceLock<Arc<Kernel>>]>;

/// Slots of the first segment; segment `s` has `FIRST_SEGMENT << s`.
const FIRST_SEGMENT: usize = 64;

/// Segment and slot of kernel index `index`: segment `s` holds the indices from
/// `FIRST_SEGMENT * (2^s - 1)` on.
fn segment_of(index: usize) -> (usize, usize) {
    let n = index / FIRST_SEGMENT + 1;
    let segment = (usize::BITS - 1 - n.leading_zeros()) as usize;
    (segment, index - FIRST_SEGMENT * ((1 << segment) - 1))
}

/// Registry tags handed out so far (process-wide; a plain std atomic, as no loom
/// model involves it).
static NEXT_TAG: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Default for Registry {
    fn default() -> Self {
        Registry {
            segments: SwapCell::new(Arc::new(Vec::new())),
            writers: Mutex::default(),
            next: AtomicU64::default(),
            tag: NEXT_TAG.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }
}

impl Registry {
    /// The id this registry issues (or would issue) for kernel index `index`.
    pub(crate) fn id(&self, index: u32) -> KernelId {
        KernelId {
            engine: self.tag,
            index,
        }
    }

    /// Every kernel registered so far (one still being added may be missing).
    pub(crate) fn all(&self) -> Vec<Arc<Kernel>> {
        let added = self.next.load(Ordering::Acquire);
        (0..added)
            .filter_map(|i| u32::try_from(i).ok())
            .filter_map(|i| self.get(self.id(i)))
            .collect()
    }

    /// The kernel with this id; `None` for an id this registry did not issue.
    pub(crate) fn get(&self, id: KernelId) -> Option<Arc<Kernel>> {
        if id.engine != self.tag {
            return None;
        }
        let (segment, slot) = segment_of(usize::try_from(id.index).ok()?);
        self.segments.read(|segments| {
            segments
                .get(segment)
                .and_then(|s| s.get(slot))
                .and_then(|k| k.get().cloned())
        })
    }

    /// Validates the variants (a conservative one and at least one speculative one),
    /// loads the conservative variant on every device and every speculative one on the
    /// first (in parallel on rayon) and adds the kernel.
    pub(crate) fn add(
        &self,
        backend: &dyn Backend,
        name: String,
        source: KernelSource,
        (variants, specs): (Vec<KernelVariant>, Vec<Option<Specialization>>),
        agreement: KernelAgreement,
        max_keys: usize,
    ) -> Result<Arc<Kernel>, EngineError> {
        if variants.len() < 2 {
            return Err(EngineError::InvalidKernel {
                kernel: name,
                reason: format!("it has {} variant(s)", variants.len()),
                fix: "give it a conservative variant 0 and at least one speculative variant",
            });
        }
        if matches!(source, KernelSource::Pair) {
            for speculative in &variants[1..] {
                validate_pair(&name, [&variants[0], speculative])?;
            }
        }
        for (variant, spec) in variants.iter().zip(&specs) {
            if let Some(spec) = spec {
                spec.check(&name, variant)?;
            }
        }
        let mut specs = specs;
        specs.resize(variants.len(), None);
        let devices = backend.devices().len();
        let index = u32::try_from(self.next.fetch_add(1, Ordering::Relaxed)).map_err(|_| {
            EngineError::InvalidKernel {
                kernel: name.clone(),
                reason: "more than u32::MAX kernels registered".into(),
                fix: "register each kernel once and reuse its id",
            }
        })?;
        let kernel = Arc::new(Kernel {
            id: KernelId {
                engine: self.tag,
                index,
            },
            name,
            source,
            handles: (0..devices)
                .map(|_| variants.iter().map(|_| LoadSlot::default()).collect())
                .collect(),
            tuning: KeyTable::new(max_keys),
            fused: variants[1..]
                .iter()
                .map(|_| AtomicU8::new(FUSED_UNKNOWN))
                .collect(),
            broken: variants[1..]
                .iter()
                .map(|_| AtomicBool::new(false))
                .collect(),
            forgot: AtomicBool::new(false),
            lanes: backend
                .queues()
                .iter()
                .map(|&q| (q, Lane::default()))
                .collect(),
            spare_lane: Lane::default(),
            keys: variants.iter().map(spec_cache_key).collect(),
            policy: Mutex::new(PolicyState::default()),
            trace: TraceState::default(),
            specs,
            specialised: Mutex::new(HashMap::new()),
            agreement,
            indexes_non_uniformly: variants
                .iter()
                .any(KernelVariant::indexes_descriptors_non_uniformly),
            disabled: std::sync::OnceLock::new(),
            variants,
        });
        // The conservative variant on every device (any device can run any batch) and
        // the speculative ones on the first (so each is validated up front); they reach
        // the other devices on demand or by a trace-JIT pre-load.
        let speculative = 1..kernel.variants.len();
        let loads: Vec<(usize, usize)> = (0..devices)
            .map(|d| (d, 0))
            .chain(speculative.filter(|_| devices > 0).map(|v| (0, v)))
            .collect();
        loads
            .par_iter()
            .map(|&(device, variant)| {
                kernel
                    .handle(backend, device, variant)
                    .map(|_| ())
                    .map_err(|source| EngineError::Backend {
                        kernel: kernel.variants[variant].name.clone(),
                        source,
                    })
            })
            .collect::<Result<(), EngineError>>()?;
        self.insert(&kernel);
        Ok(kernel)
    }

    /// Publishes a kernel under its id (`add`'s last step): sets its slot, adding the
    /// segments up to it first where they are missing.
    fn insert(&self, kernel: &Arc<Kernel>) {
        let (segment, slot) = segment_of(kernel.id.index as usize);
        let segments = {
            let _one_writer = self.writers.lock().unwrap_or_else(|p| p.into_inner());
            let mut segments = self.segments.load();
            if segments.len() <= segment {
                let mut longer = Vec::clone(&segments);
                while longer.len() <= segment {
                    let len = FIRST_SEGMENT << longer.len();
                    longer.push(Arc::new((0..len).map(|_| OnceLock::new()).collect()));
                }
                segments = Arc::new(longer);
                self.segments.store(Arc::clone(&segments));
            }
            segments
        };
        // Each index is issued once, so its slot is set once.
        let _ = segments[segment][slot].set(Arc::clone(kernel));
    }
}

/// The checks that make two variants raceable: they take the same buffers (as many,
/// each used the same way, position by position: a batch's buffers go to either
/// variant) and the same push constants. Slots may differ (a variant that binds its
/// inputs through one descriptor array takes them at one slot), and so may what the
/// variants declare of their elements (a reflected WGSL variant beside a hand-declared
/// one).
fn validate_pair(name: &str, [c, s]: [&KernelVariant; 2]) -> Result<(), EngineError> {
    let invalid = |reason: String| {
        EngineError::InvalidKernel {
        kernel: name.to_string(),
        reason,
        fix: "give both variants the same buffers (as many, each read or written alike, in the same order) and push-constant size",
    }
    };
    let uses = |v: &KernelVariant| v.bindings.iter().map(|b| b.access).collect::<Vec<_>>();
    if uses(c) != uses(s) {
        return Err(invalid(format!(
            "the variants take different buffers: conservative {:?}, speculative {:?}",
            c.bindings, s.bindings
        )));
    }
    if c.push_constant_bytes != s.push_constant_bytes {
        return Err(invalid(format!(
            "push constants differ: {} vs {} bytes",
            c.push_constant_bytes, s.push_constant_bytes
        )));
    }
    if !c.bindings.iter().any(|b| b.access.writes()) {
        return Err(invalid(
            "no binding is written, so there is no answer to compare".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cover_every_index_once_in_order() {
        let mut expected = (0, 0);
        for index in 0..(FIRST_SEGMENT * 15) {
            assert_eq!(segment_of(index), expected, "index {index}");
            expected.1 += 1;
            if expected.1 == FIRST_SEGMENT << expected.0 {
                expected = (expected.0 + 1, 0);
            }
        }
        let (segment, slot) = segment_of(u32::MAX as usize);
        assert!(slot < FIRST_SEGMENT << segment);
    }
}
