//! Where a tuning key's state starts (SPEC §8 transfer, §11 priors).
//!
//! The first batch of a key the kernel does not hold makes its [`KeyState`]. Each
//! speculative variant starts from the first of these that has a verdict on it:
//! 1. this key's own entry in a device's autotune store (a verdict loaded from the
//!    file, or — once the kernel forgot a key to stay in its bound — one this engine
//!    measured before it forgot the key: source `file`);
//! 2. the fleet's entry for this key, on any device (source `fleet`, feature `redis`,
//!    SPEC §13; see `fleet.rs`) — except that a fleet *mismatch* comes first of all,
//!    as a mismatch is sticky fleet-wide;
//! 3. the nearest decided key of the kernel with the same application key, at most
//!    [`MAX_TRANSFER_CLASSES`] size classes away, whose verdict was reached by its own
//!    races (source `neighbour`; an inconclusive rejection or an unconfirmed prior
//!    does not transfer);
//! 4. the kernel-wide entry of a file written before tuning keys (source `file`).
//!
//! Whatever the source, the verdict is a prior: an adopted one leaves the variant
//! undecided until it agreed on `MIN_DISPATCHES_FOR_VERDICT` races of this key
//! (`record::confirm_prior`); a rejected one is taken as it is — no race — and is raced
//! again on the key's re-race schedule. A variant that once answered wrongly starts
//! rejected on every new key, for good.
//!
//! Added on top of SPEC §8: the transfer distance bound. A verdict taken at 4 KiB says
//! little about 8 MiB (the privatised histogram is within noise of global atomics at
//! 16 KiB and 21× faster at 16 MiB on an H200), and a rejected prior costs no race, so
//! a far neighbour's rejection would keep a large key on the slow variant until its
//! first re-race.
//!
//! Also on top of SPEC §8, the ladder transfers too: a variant adopted at the neighbour
//! but not in play there — another adopted variant of the kernel ran faster on that key
//! — starts the new key as a rejected prior (no race; re-raced on the key's schedule,
//! where it is adopted if it wins clearly). Only the neighbour's winner then pays its
//! confirmation races, not every adopted variant: a kernel with two fast variants whose
//! conservative arm is 20–30× slower spent 16+ races of that arm on each new key, the
//! second variant's eight only to learn again that it loses to the first
//! (docs/journal/2026-12-08-regret-keys.md).

use std::sync::Arc;

use crate::autotune::{SpecCacheKey, Trust, VerdictReason, VerdictRecord};

use super::core::Core;
use super::events::{Event, KernelVerdict};
use super::keys::{Basis, Hint, KeyState, PriorSource};
use super::record;
use super::registry::Kernel;
use super::sample::CacheStatus;
use super::specialise::spec_hash;
use super::tuning::{Entry, TuningKey};

/// The most size classes (factors of two) a verdict transfers across.
pub const MAX_TRANSFER_CLASSES: u32 = 3;

thread_local! {
    /// The key state of this worker thread's last batch: a worker whose batches keep to
    /// one key (the common case) takes it from here, with no shared write, instead of
    /// cloning the table's `Arc` for every batch (two read-modify-writes of one cache
    /// line that every worker of the key would share).
    static LAST: std::cell::RefCell<Option<Arc<KeyState>>> = const { std::cell::RefCell::new(None) };
}

/// Gives a batch's key state back to this thread's cache when the batch is done (see
/// `LAST`).
pub(crate) fn done_with(state: Arc<KeyState>) {
    LAST.with_borrow_mut(|last| *last = Some(state));
}

/// Makes, at registration, the state of every key of `kernel` that an autotune file
/// holds a verdict for (loaded, not yet re-verified), so that `KernelStats` shows what
/// was loaded before a batch comes and a rejected prior costs no race from the first
/// batch on. A key is found from its entry's `spec_hash` among the size classes
/// without an application key; one with an application key (whose hash cannot be
/// undone) and the kernel-wide entries of older files are taken when their first
/// batch comes.
pub(crate) fn resume_keys(core: &Core, kernel: &Kernel) {
    let classes: Vec<TuningKey> = (0..64)
        .map(|log2| TuningKey::for_bytes(1u64 << log2, None))
        .collect();
    let mut found: Vec<TuningKey> = Vec::new();
    for tune in &core.tunes {
        let snapshot = tune.store.publish();
        for (pair, stored) in &snapshot.verdicts {
            let ours = pair.adapter_id == tune.adapter_id
                && same_variant(&pair.conservative, &kernel.keys[0])
                && kernel.keys[1..]
                    .iter()
                    .any(|k| same_variant(&pair.speculative, k));
            if !ours || stored.trust != Trust::Loaded || pair.speculative.spec_hash == 0 {
                continue;
            }
            let Some(spec) = kernel.keys[1..]
                .iter()
                .position(|k| same_variant(&pair.speculative, k))
            else {
                continue;
            };
            let key = classes.iter().find(|k| {
                spec_hash(k.hash64(), &kernel.spec_values(spec + 1, k))
                    == pair.speculative.spec_hash
            });
            if let Some(&key) = key {
                if !found.contains(&key) {
                    found.push(key);
                }
            }
        }
    }
    found.sort();
    for key in found.into_iter().take(kernel.tuning.capacity()) {
        state_for(core, kernel, key);
    }
}

/// True when two autotune keys name one variant (whatever their tuning key).
fn same_variant(a: &SpecCacheKey, b: &SpecCacheKey) -> bool {
    SpecCacheKey { spec_hash: 0, ..*a } == SpecCacheKey { spec_hash: 0, ..*b }
}

/// The state of `kernel`'s key `key`, made (with its priors) when the kernel does not
/// hold it. A key made here that forgot another to make room says so by
/// `Event::KeyEvicted`; a variant it starts rejected says so by `Event::VerdictChanged`
/// (reason `Prior`).
pub(crate) fn state_for(core: &Core, kernel: &Kernel, key: TuningKey) -> Arc<KeyState> {
    let cached = LAST.with_borrow_mut(|last| {
        last.take_if(|s| s.kernel == kernel.id && s.key == key && !s.is_forgotten())
    });
    if let Some(state) = cached {
        return state;
    }
    if let Some(state) = kernel.key_state(&key) {
        return state;
    }
    let mut rejected: Vec<(usize, usize)> = Vec::new();
    let (state, evicted) = kernel.tuning.get_or_insert(key, |others| {
        let values: Vec<Vec<(u32, u32)>> = (0..kernel.variants.len())
            .map(|v| kernel.spec_values(v, &key))
            .collect();
        let state = KeyState::new(kernel.id, key, &kernel.keys, &values);
        for spec in 1..=state.speculative_count() {
            if kernel.is_broken(spec) {
                state.candidate(spec).verdict.reject();
                state.log(spec).basis = Basis::Broken;
                continue;
            }
            let Some((hint, from)) = prior(core, kernel, &state, spec, others) else {
                continue;
            };
            let device = hint.device;
            if start_from(&state, spec, hint, from) {
                rejected.push((spec, device));
            }
        }
        state.settle();
        state
    });
    if let Some(gone) = evicted {
        kernel.note_forgotten_key();
        gone.value().forget();
        tracing::debug!(kernel = %kernel.name, key = %gone.key(), "tuning key forgotten in memory (its verdict stays in the store)");
        core.bus.publish(Event::KeyEvicted {
            kernel: kernel.id,
            name: kernel.name.clone(),
            key: gone.key(),
        });
    }
    for (spec, device) in rejected {
        record::announce_rejected_prior(core, kernel, &state, spec, device);
    }
    state
}

/// Sets variant `spec` of a new key up from a prior; true when it starts rejected.
fn start_from(state: &KeyState, spec: usize, hint: Hint, from: Option<TuningKey>) -> bool {
    let mut log = state.log(spec);
    log.prior = Some((hint.source, from));
    if hint.source == PriorSource::File {
        log.cache = CacheStatus::Loaded;
    }
    match hint.verdict.verdict {
        KernelVerdict::Adopted => {
            log.hint = Some(hint);
            false
        }
        _ => {
            state.candidate(spec).verdict.reject();
            log.basis = if hint.verdict.reason.is_mismatch() {
                Basis::Broken
            } else {
                Basis::Prior
            };
            log.rerace.rejected();
            true
        }
    }
}

/// The prior of variant `spec` on the new key `state`, and the neighbour key it came
/// from (see the module docs for the order).
fn prior(
    core: &Core,
    kernel: &Kernel,
    state: &KeyState,
    spec: usize,
    others: &[Arc<Entry<KeyState>>],
) -> Option<(Hint, Option<TuningKey>)> {
    let decided = |v: &VerdictRecord| v.verdict != KernelVerdict::Undecided;
    let stored = |legacy: bool| {
        core.tunes.iter().enumerate().find_map(|(device, tune)| {
            let keys = if legacy {
                kernel.legacy_pair_keys(&tune.adapter_id, spec)
            } else {
                state.pair_keys(&tune.adapter_id, spec)
            };
            let stored = tune.store.verdict(keys)?;
            // An entry this engine measured itself is a prior only for a key the kernel
            // forgot: another kernel of the same variants measured it otherwise.
            let usable = stored.trust == Trust::Loaded || kernel.has_forgotten_keys();
            (usable && decided(&stored.verdict)).then_some(Hint {
                device,
                verdict: stored.verdict,
                source: PriorSource::File,
            })
        })
    };
    // A fleet mismatch is sticky fleet-wide (SPEC §13): it comes before everything.
    let fleet = core
        .fleet
        .prior(core.backend.devices(), kernel, state, spec);
    if let Some(hint) = fleet.as_ref().filter(|h| h.verdict.reason.is_mismatch()) {
        return Some((hint.clone(), None));
    }
    if let Some(hint) = stored(false) {
        return Some((hint, None));
    }
    if let Some(hint) = fleet {
        return Some((hint, None));
    }
    if core.config.key_transfer {
        if let Some((hint, key)) = neighbour(state.key, spec, others) {
            return Some((hint, Some(key)));
        }
    }
    stored(true).map(|hint| (hint, None))
}

/// The verdict on variant `spec` of the nearest key to `key` that transfers (see the
/// module docs); nearer first, then the one met first.
fn neighbour(
    key: TuningKey,
    spec: usize,
    others: &[Arc<Entry<KeyState>>],
) -> Option<(Hint, TuningKey)> {
    let mut best: Option<(u32, Hint, TuningKey)> = None;
    for entry in others {
        let Some(distance) = key.distance(&entry.key()) else {
            continue;
        };
        if distance > MAX_TRANSFER_CLASSES || best.as_ref().is_some_and(|b| b.0 <= distance) {
            continue;
        }
        let other = entry.value();
        let mut verdict = other.verdict_of(spec);
        if verdict == KernelVerdict::Undecided {
            continue;
        }
        let winner = other.in_play();
        if verdict == KernelVerdict::Adopted
            && winner != spec
            && other.verdict_of(winner) == KernelVerdict::Adopted
        {
            // Adopted there, but the ladder runs a faster one: not worth racing here.
            verdict = KernelVerdict::Rejected;
        }
        let log = other.log(spec);
        if log.basis != Basis::Measured || log.hint.is_some() {
            continue;
        }
        let hint = Hint {
            device: 0,
            verdict: VerdictRecord {
                verdict,
                observation: log.window.observation(),
                reason: VerdictReason::Measured,
            },
            source: PriorSource::Neighbour,
        };
        best = Some((distance, hint, entry.key()));
    }
    best.map(|(_, hint, key)| (hint, key))
}
