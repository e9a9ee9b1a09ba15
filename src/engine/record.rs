//! The verdict half of a race: feeding a timed, agreeing race to its key's paired
//! window, acting on what the window says (with the paired test on top of N2, see
//! `paired::PairedRatios`), confirming priors, re-racing rejected keys, and publishing,
//! storing and saving every verdict change.
//!
//! A verdict belongs to (kernel, speculative variant, tuning key). Rejections for
//! timings are per key and re-raced on the key's backoff schedule; a wrong answer or a
//! failure of the variant's code rejects it on every key, present and future, for good
//! (`reject_everywhere`).

use crate::autotune::{
    AutotuneRecord, PairedSpeculationSample, SpeculativeVariantRace, VerdictRecord,
};
use crate::backend::{KernelVariant, QueueId};
use crate::policy::{SpeculationVerdict, MIN_DISPATCHES_FOR_VERDICT};

use super::core::Core;
use super::events::{Event, KernelVerdict, VerdictReason};
use super::keys::{Basis, Hint, KeyState, RERACE_RACES};
use super::registry::{Kernel, MAX_KEPT_SAMPLES, MAX_UNDECIDED_RACES};
use super::sample::{CacheStatus, RaceSample};

/// The tuning a variant ran with, as the autotune map records a race's winner.
fn record_of(variant: &KernelVariant) -> AutotuneRecord {
    AutotuneRecord {
        workgroup_size: variant.workgroup_size,
        unroll: 1,
        tile: [1, 1, 1],
        recorded_at: AutotuneRecord::timestamp_now(),
    }
}

/// Both arms' kernel times of one agreeing race, and whether another backend call
/// shared the device with it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ArmTimes {
    pub(crate) conservative_ns: u64,
    pub(crate) speculative_ns: u64,
    pub(crate) contended: bool,
}

/// Feeds one timed, agreeing race to the key's paired window (which stores the race's
/// winner in the device's autotune map), keeps and publishes the sample, and acts on
/// the window's verdict confirmed by the paired test — or, while the key confirms a
/// prior or re-races a rejected variant, on what that needs. A contended race's times
/// are clamped before they feed the window (see `ArmHistory`); the kept sample is raw.
pub(crate) fn record_race(
    core: &Core,
    (kernel, state): (&Kernel, &KeyState),
    spec: usize,
    (queue, spec_queue): (QueueId, QueueId),
    times: ArmTimes,
) {
    let ArmTimes {
        conservative_ns,
        speculative_ns,
        contended,
    } = times;
    let Some(tune) = core.tunes.get(queue.device) else {
        return;
    };
    let race = SpeculativeVariantRace {
        conservative_dispatch_ns: conservative_ns,
        speculative_dispatch_ns: speculative_ns,
        // Variants are compiled once, at registration, not per race.
        conservative_compile_ns: 0,
        speculative_compile_ns: 0,
        conservative_record: record_of(&kernel.variants[0]),
        speculative_record: record_of(&kernel.variants[spec]),
    };
    let (sample, window_verdict, verdict, hint, (samples, under_the_bar), rerace) = {
        let mut log = state.log(spec);
        let fed_c = log.history[0].feed(conservative_ns, contended);
        let fed_s = log.history[1].feed(speculative_ns, contended);
        log.ratios.feed(fed_c, fed_s);
        let race = SpeculativeVariantRace {
            conservative_dispatch_ns: fed_c,
            speculative_dispatch_ns: fed_s,
            ..race
        };
        let update = log.window.record_sample(
            &tune.store,
            state.pair_keys(&tune.adapter_id, spec),
            PairedSpeculationSample::from(race),
        );
        let sample = RaceSample {
            index: log.next_sample,
            conservative_ns,
            speculative_ns,
            conservative_queue: queue,
            speculative_queue: spec_queue,
        };
        log.next_sample = log.next_sample.saturating_add(1);
        log.races = log.races.saturating_add(1);
        if log.samples.len() < MAX_KEPT_SAMPLES {
            log.samples.push(sample);
        }
        let confirmed = log.ratios.confirm(update.verdict);
        // Read only where it decides something: a window still keeping racing.
        let under_the_bar =
            confirmed == SpeculationVerdict::KeepRacing && log.ratios.under_the_bar();
        let rerace = log.rerace.left.as_mut().map(|left| {
            *left = left.saturating_sub(1);
            *left
        });
        (
            sample,
            update.verdict,
            confirmed,
            log.hint.clone(),
            (log.window.len(), under_the_bar),
            rerace,
        )
    };
    core.bus.publish(Event::RaceSample {
        kernel: kernel.id,
        name: kernel.name.clone(),
        variant: spec,
        key: state.key,
        sample,
        window_verdict,
    });
    let device = queue.device;
    if let Some(left) = rerace {
        // A rejected variant raced again: adopted only by a clear win within its
        // budget; otherwise rejected again, with a longer wait before the next one.
        let reason = match verdict {
            SpeculationVerdict::KeepRacing if left == 0 || under_the_bar => {
                VerdictReason::Inconclusive { samples }
            }
            SpeculationVerdict::KeepRacing => return,
            _ => VerdictReason::Measured,
        };
        let changed = if verdict == SpeculationVerdict::Adopt {
            adopt(core, (kernel, state), spec, device, reason)
        } else {
            reject_on(core, kernel, state, spec, device, reason)
        };
        if changed {
            state.log(spec).verdict_at_sample = Some(sample.index);
        }
        return;
    }
    // An undecided variant whose window still says keep racing after
    // MAX_UNDECIDED_RACES samples, or whose races already show it saving less than
    // N2's bar beyond their noise, is not worth racing on: rejected, conservative runs.
    let inconclusive = verdict == SpeculationVerdict::KeepRacing
        && (samples >= MAX_UNDECIDED_RACES || under_the_bar)
        && state.verdict_of(spec) == KernelVerdict::Undecided;
    let effective = if inconclusive {
        SpeculationVerdict::Reject
    } else {
        verdict
    };
    if let Some(hint) = hint {
        if confirm_prior(
            core,
            (kernel, state),
            spec,
            (&hint, device),
            (effective, samples, sample.index),
        ) {
            return;
        }
    }
    let reason = if inconclusive {
        VerdictReason::Inconclusive { samples }
    } else {
        VerdictReason::Measured
    };
    let changed = match effective {
        SpeculationVerdict::Adopt => adopt(core, (kernel, state), spec, device, reason),
        SpeculationVerdict::Reject => reject_on(core, kernel, state, spec, device, reason),
        SpeculationVerdict::KeepRacing => false,
    };
    if changed {
        state.log(spec).verdict_at_sample = Some(sample.index);
    }
}

/// One agreeing race of a variant whose key started from an adopted prior (SPEC §11).
/// The variant stays undecided — callers get conservative answers — until its window,
/// which holds only this key's samples on this engine, has `MIN_DISPATCHES_FOR_VERDICT`
/// of them: then the prior is confirmed and adopted, unless this key's own races say
/// reject (overturned: the caller rejects as for any measured verdict). What the prior
/// saves is the KeepRacing period and the coin flip of a close call, never a
/// confirmation race: a forged or poisoned entry puts a wrong answer in no caller's
/// hands more easily than no entry (a disagreement on any of these races rejects the
/// variant before this runs). True when the race needs nothing more from the caller.
fn confirm_prior(
    core: &Core,
    (kernel, state): (&Kernel, &KeyState),
    spec: usize,
    (hint, device): (&Hint, usize),
    (own, samples, index): (SpeculationVerdict, u32, u32),
) -> bool {
    if own == SpeculationVerdict::Reject {
        tracing::info!(kernel = %kernel.name, key = %state.key, source = %hint.source, "prior overturned by this engine's races");
        let mut log = state.log(spec);
        log.hint = None;
        if log.cache == CacheStatus::Loaded {
            log.cache = CacheStatus::Overturned;
        }
        return false;
    }
    if samples < MIN_DISPATCHES_FOR_VERDICT {
        return true;
    }
    if let Some(tune) = core.tunes.get(hint.device) {
        tune.store
            .mark_verdict_verified(state.pair_keys(&tune.adapter_id, spec));
    }
    {
        let mut log = state.log(spec);
        log.hint = None;
        if log.cache == CacheStatus::Loaded {
            log.cache = CacheStatus::Reverified;
        }
        log.verdict_at_sample = Some(index);
    }
    tracing::info!(kernel = %kernel.name, key = %state.key, samples, source = %hint.source, "prior re-verified");
    adopt(
        core,
        (kernel, state),
        spec,
        device,
        VerdictReason::Reverified,
    );
    true
}

/// Publishes a variant a new key started rejected from a prior (a rejected prior
/// costs no race, SPEC §11; reason `VerdictReason::Prior`). The store keeps what it
/// holds.
pub(crate) fn announce_rejected_prior(
    core: &Core,
    kernel: &Kernel,
    state: &KeyState,
    spec: usize,
    device: usize,
) {
    published(
        core,
        (kernel, state),
        spec,
        device,
        (KernelVerdict::Undecided, KernelVerdict::Rejected),
        VerdictReason::Prior,
    );
}

/// Rejects variant `spec` on `state`'s key, which is in this engine's table already,
/// for a fleet verdict heard live (`fleet.rs`, "Live changes"): a timing rejection of
/// a key still undecided here (taken as a prior: no more races, re-raced on the key's
/// schedule), or a mismatch, whatever the key's verdict here (for good). Published
/// with reason `Prior`; neither the local store nor the fleet is written (the fleet
/// has it, and the file holds only what this engine measured).
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn take_fleet_rejection(
    core: &Core,
    kernel: &Kernel,
    state: &KeyState,
    spec: usize,
    device: usize,
    mismatch: bool,
) {
    let Some(from) = state.candidate(spec).verdict.reject() else {
        if mismatch {
            state.log(spec).basis = Basis::Broken;
        }
        return;
    };
    {
        let mut log = state.log(spec);
        log.hint = None;
        log.prior = Some((super::keys::PriorSource::Fleet, None));
        if mismatch {
            log.basis = Basis::Broken;
        } else {
            log.basis = Basis::Prior;
            log.rerace.rejected();
        }
    }
    published(
        core,
        (kernel, state),
        spec,
        device,
        (from, KernelVerdict::Rejected),
        VerdictReason::Prior,
    );
}

/// On an audit tick of a key whose variant `spec` is rejected for its timings: counts
/// the tick on the key's re-race schedule and, when a re-race is due, reopens the
/// variant (undecided, a fresh window, at most [`RERACE_RACES`] races to win) and says
/// so. True when the batch should race.
pub(crate) fn rerace_due(
    core: &Core,
    kernel: &Kernel,
    state: &KeyState,
    spec: usize,
    device: usize,
) -> bool {
    if kernel.is_broken(spec) {
        return false;
    }
    {
        let mut log = state.log(spec);
        if matches!(log.basis, Basis::Broken | Basis::None) || !log.rerace.tick() {
            return false;
        }
        if !state.candidate(spec).verdict.reopen() {
            return false;
        }
        log.restart_window();
        log.hint = None;
        log.rerace.left = Some(RERACE_RACES);
        log.rerace.count = log.rerace.count.saturating_add(1);
    }
    tracing::debug!(kernel = %kernel.name, key = %state.key, "re-racing a rejected variant");
    published(
        core,
        (kernel, state),
        spec,
        device,
        (KernelVerdict::Rejected, KernelVerdict::Undecided),
        VerdictReason::Rerace,
    );
    true
}

/// Rejects speculative variant `spec` on `state`'s key from whatever state it is in
/// (for its timings: it is re-raced later); publishes and stores once. True for the
/// call that made the change.
pub(crate) fn reject_on(
    core: &Core,
    kernel: &Kernel,
    state: &KeyState,
    spec: usize,
    device: usize,
    reason: VerdictReason,
) -> bool {
    let Some(from) = state.candidate(spec).verdict.reject() else {
        return false;
    };
    {
        let mut log = state.log(spec);
        log.basis = basis_of(&reason);
        log.rerace.rejected();
    }
    published(
        core,
        (kernel, state),
        spec,
        device,
        (from, KernelVerdict::Rejected),
        reason,
    );
    true
}

/// Rejects speculative variant `spec` on every key of the kernel, and on every key
/// it makes later, for good: it answered wrongly or its code failed. Publishes and
/// stores once per key it changed.
pub(crate) fn reject_everywhere(
    core: &Core,
    kernel: &Kernel,
    spec: usize,
    device: usize,
    reason: VerdictReason,
) {
    kernel.set_broken(spec);
    for entry in kernel.tuning.entries().iter() {
        reject_on(core, kernel, entry.value(), spec, device, reason.clone());
    }
}

/// Adopts speculative variant `spec` on `state`'s key if still undecided; publishes
/// and stores once. True for the call that made the change.
fn adopt(
    core: &Core,
    (kernel, state): (&Kernel, &KeyState),
    spec: usize,
    device: usize,
    reason: VerdictReason,
) -> bool {
    let changed = state.candidate(spec).verdict.adopt();
    if changed {
        {
            let mut log = state.log(spec);
            log.basis = Basis::Measured;
            log.rerace.adopted();
        }
        let change = (KernelVerdict::Undecided, KernelVerdict::Adopted);
        published(core, (kernel, state), spec, device, change, reason);
    }
    changed
}

/// What a verdict reached for `reason` lets a neighbour key take from it.
fn basis_of(reason: &VerdictReason) -> Basis {
    match reason {
        VerdictReason::Measured | VerdictReason::Reverified => Basis::Measured,
        VerdictReason::Inconclusive { .. } => Basis::Inconclusive,
        VerdictReason::Prior | VerdictReason::Rerace => Basis::Prior,
        _ => Basis::Broken,
    }
}

/// Logs, publishes and stores a verdict change on speculative variant `spec` of
/// `state`'s key made by this thread on `device`'s race, asks the saver thread to save
/// that device's store (never waits for it), and moves play along the key's ladder.
fn published(
    core: &Core,
    (kernel, state): (&Kernel, &KeyState),
    spec: usize,
    device: usize,
    (from, to): (KernelVerdict, KernelVerdict),
    reason: VerdictReason,
) {
    let variant = kernel.variants[spec].name.as_str();
    tracing::info!(kernel = %kernel.name, key = %state.key, variant, %from, %to, ?reason, "verdict changed");
    let observation = {
        let mut log = state.log(spec);
        if !matches!(
            reason,
            VerdictReason::Reverified | VerdictReason::Prior | VerdictReason::Rerace
        ) && log.hint.take().is_some()
            && log.cache == CacheStatus::Loaded
        {
            // Decided (e.g. by a mismatch) before the loaded verdict was re-verified.
            log.cache = CacheStatus::Overturned;
        }
        log.window.observation()
    };
    let stored_reason = reason.stored();
    // A prior taken as it is stays in the store as it was (its reason and its trust
    // with it); a re-race stores its outcome, not its start.
    let keep_store = matches!(reason, VerdictReason::Prior | VerdictReason::Rerace);
    core.bus.publish(Event::VerdictChanged {
        kernel: kernel.id,
        name: kernel.name.clone(),
        variant: spec,
        key: state.key,
        from,
        to,
        reason,
    });
    let tune = core.tunes.get(device).filter(|_| !keep_store);
    if let Some(tune) = tune {
        let stored = VerdictRecord {
            verdict: to,
            observation,
            reason: stored_reason,
        };
        tune.store
            .set_verdict(state.pair_keys(&tune.adapter_id, spec), stored.clone());
        core.request_save(device);
        // Shared with the fleet by its link thread: one channel send here.
        core.fleet.offer(device, kernel, state, spec, stored);
    }
    if let Some(next) = state.settle() {
        let verdict = state.verdict_of(next);
        tracing::info!(kernel = %kernel.name, key = %state.key, variant = %kernel.variants[next].name, %verdict, "speculative variant in play");
        core.bus.publish(Event::VariantInPlay {
            kernel: kernel.id,
            name: kernel.name.clone(),
            variant: next,
            key: state.key,
            variant_name: kernel.variants[next].name.clone(),
            verdict,
        });
    }
}
