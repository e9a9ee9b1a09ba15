//! Judging and recording: what a race's speculative arm says of its variant — compared
//! with the conservative answer, fed (timed and agreeing) to its key's paired window
//! through `record.rs`, or rejecting the variant when it failed or disagreed — what a
//! backend error says of a batch, its variant and its device, and the judging of an arm
//! still running when its caller was answered ([`judge_pending`]). It never changes
//! what a caller gets: the conservative answer is in before anything here runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::{BackendError, QueueId};

use super::arms;
use super::batch::Output;
use super::core::Core;
use super::dispatch::{finish, host_code, spec_result, Fault, SpecArm};
use super::error::EngineError;
use super::events::{Event, VerdictReason};
use super::keys::KeyState;
use super::record::{self, reject_everywhere, ArmTimes};
use super::registry::Kernel;

/// The conservative arm's kernel time, and whether another backend call shared the
/// device with the race.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timed {
    pub(super) ns: Option<u64>,
    pub(super) contended: bool,
}

/// A race whose caller was answered before its speculative arm finished: what judging
/// that arm needs. Kept by the worker's thread until [`judge_pending`].
pub(super) struct Pending {
    pub(super) kernel: Arc<Kernel>,
    /// The batch's tuning key.
    pub(super) state: Arc<KeyState>,
    /// The batch's input (a workload's), held until the arm is judged.
    pub(super) input: Option<Arc<[u8]>>,
    pub(super) queue: QueueId,
    pub(super) spec_queue: QueueId,
    pub(super) audit: bool,
    pub(super) cons: Output,
    pub(super) cons_time: Timed,
    pub(super) spec: usize,
    /// When the arm was handed out.
    pub(super) since: Instant,
}

thread_local! {
    /// This worker thread's race whose speculative arm is still out, if any.
    static PENDING: std::cell::RefCell<Option<Pending>> = const { std::cell::RefCell::new(None) };
}

/// Judges this thread's race whose caller was answered before its speculative arm
/// finished (a no-op when there is none): waits for the arm until the dispatch timeout
/// (counted from when it was handed out; for ever with the timeout off), then judges it
/// as the race would have; an arm still running then is retired (`retire_hung`) and
/// its thread abandoned. Every race is judged exactly once: here or in `race::race`.
pub(crate) fn judge_pending(core: &Core) {
    let Some(p) = PENDING.with_borrow_mut(Option::take) else {
        return;
    };
    let timeout = core.config.dispatch_timeout;
    let left = timeout.map(|t| t.saturating_sub(p.since.elapsed()));
    let spec_arm = match arms::wait(left) {
        arms::Waited::Done(result) => spec_result(result, p.spec_queue),
        arms::Waited::Running => {
            arms::abandon();
            retire_hung(
                core,
                &p.kernel,
                p.spec,
                p.queue.device,
                timeout.unwrap_or_default(),
            );
            return;
        }
        arms::Waited::Idle => SpecArm::Failed(Ok(BackendError::Unknown {
            what: "speculative arm: its thread was lost".into(),
        })),
    };
    judge(
        core,
        (&p.kernel, &p.state, p.input.as_deref()),
        p.queue,
        p.audit,
        &p.cons,
        p.cons_time,
        (p.spec, spec_arm),
    );
}

/// Keeps `pending` for this thread's [`judge_pending`]: its caller is answered before
/// its speculative arm finished.
pub(super) fn judge_later(pending: Pending) {
    PENDING.with_borrow_mut(|p| *p = Some(pending));
}

/// The race join's verdict half: compares the answer of speculative variant `spec`
/// with the conservative one and feeds that variant's window. Never changes what the
/// caller gets.
pub(super) fn judge(
    core: &Core,
    (kernel, state, input): (&Kernel, &KeyState, Option<&[u8]>),
    queue: QueueId,
    audit: bool,
    cons: &Output,
    cons_time: Timed,
    (spec, arm): (usize, SpecArm),
) {
    let device = queue.device;
    match arm {
        SpecArm::Failed(Ok(BackendError::DeviceLost { device, detail })) => {
            core.mark_lost(device, detail);
        }
        SpecArm::Failed(Ok(e @ BackendError::TimedOut { .. })) => {
            // Retired and the device given up on; no sample.
            classify_run(core, kernel, spec, device, e);
        }
        SpecArm::Failed(Ok(e)) => match classify(&kernel.name, e) {
            Fault::Input(e) => {
                failed(core, kernel, spec, device, &e);
            }
            // A driver hiccup on the speculative arm says nothing about the variant.
            other => {
                tracing::warn!(kernel = %kernel.name, ?other, "speculative arm failed; no sample")
            }
        },
        SpecArm::Failed(Err(e)) => {
            failed(core, kernel, spec, device, &e);
        }
        SpecArm::Ran(out, spec_queue) => {
            if let Err(e) = note_speculative_run(core, kernel, spec, &out.outputs) {
                failed(core, kernel, spec, device, &e);
                return;
            }
            let spec_ns = out.kernel_ns;
            let spec_output = match finish(kernel, spec, input, out.outputs) {
                Ok(o) => o,
                Err(e) => {
                    failed(core, kernel, spec, device, &e);
                    return;
                }
            };
            if let Err(detail) = kernel.agreement.compare(cons, &spec_output) {
                tracing::warn!(kernel = %kernel.name, %spec_queue, audit, %detail, "speculative variant disagreed; rejected");
                core.bus.publish(Event::MismatchCaught {
                    kernel: kernel.id,
                    name: kernel.name.clone(),
                    variant: spec,
                    key: state.key,
                    queue: spec_queue,
                    audit,
                    detail,
                });
                reject_everywhere(core, kernel, spec, device, VerdictReason::Mismatch);
                return;
            }
            let Some(times) = arm_times(cons_time, spec_ns) else {
                // No timestamps on this queue: agreement is checked, timing is not.
                return;
            };
            record::record_race(core, (kernel, state), spec, (queue, spec_queue), times);
        }
    }
}

/// Rejects speculative variant `spec` of `kernel` on every key for failing with `error`
/// (on `device`).
fn failed(core: &Core, kernel: &Kernel, spec: usize, device: usize, error: &impl ToString) {
    let reason = VerdictReason::SpeculativeFailed(error.to_string());
    reject_everywhere(core, kernel, spec, device, reason);
}

/// Both arms' times for the key's window, when both arms were timed.
fn arm_times(cons: Timed, spec_ns: Option<u64>) -> Option<ArmTimes> {
    let (Some(conservative_ns), Some(speculative_ns)) = (cons.ns, spec_ns) else {
        return None;
    };
    Some(ArmTimes {
        conservative_ns,
        speculative_ns,
        contended: cons.contended,
    })
}

/// Feeds a run of speculative variant `spec`'s counter tail (if it writes one) to the
/// shared speculator, and publishes a toggle.
/// `Err`: the workload's `speculation_report` panicked (the variant is then rejected by
/// the caller, as for any failure of its host code).
pub(super) fn note_speculative_run(
    core: &Core,
    kernel: &Kernel,
    spec: usize,
    outputs: &[Vec<u8>],
) -> Result<(), EngineError> {
    let Some(workload) = kernel.workload() else {
        return Ok(());
    };
    let report = host_code(kernel, spec, "speculation_report", || {
        Ok(workload.speculation_report(spec, outputs))
    })?;
    match report {
        Some(report) => {
            kernel.set_fused(spec, true);
            let outcome = core.speculator.record(report);
            if let Some(enabled) = outcome.toggled() {
                tracing::info!(
                    enabled,
                    commit_rate_ppm = outcome.after.commit_rate_ppm,
                    "speculator toggled"
                );
                core.bus.publish(Event::SpeculatorToggled {
                    enabled,
                    commit_rate_ppm: u64::from(outcome.after.commit_rate_ppm),
                });
            }
        }
        None => kernel.set_fused(spec, false),
    }
    Ok(())
}

/// Sorts a backend error of variant `variant`'s run on `device` into the batch's fault,
/// the backend's, or the device's. A dispatch the backend gave up on after the dispatch
/// timeout (`TimedOut`: the device is still running it) retires the variant, marks the
/// device lost (its queue runs that kernel for good) and is the batch's
/// `DispatchTimedOut`.
pub(super) fn classify_run(
    core: &Core,
    kernel: &Kernel,
    variant: usize,
    device: usize,
    err: BackendError,
) -> Fault {
    if let BackendError::TimedOut { after, .. } = &err {
        let after = *after;
        let error = retire_hung(core, kernel, variant, device, after);
        core.mark_lost(device, err.to_string());
        return Fault::Input(error);
    }
    classify(&kernel.name, err)
}

/// Retires variant `variant` of `kernel`, which did not return within the dispatch
/// timeout `after` on `device`, and returns the error its batch gets: a speculative
/// variant is rejected (stored like a mismatch, so a loaded verdict does not bring it
/// back); a conservative one disables the kernel, whose later batches get the same
/// error at once (each would hold a thread for good otherwise).
pub(crate) fn retire_hung(
    core: &Core,
    kernel: &Kernel,
    variant: usize,
    device: usize,
    after: Duration,
) -> EngineError {
    let error = EngineError::DispatchTimedOut {
        kernel: kernel.name.clone(),
        variant: kernel
            .variants
            .get(variant)
            .map_or_else(|| format!("#{variant}"), |v| v.name.clone()),
        after,
    };
    tracing::error!(kernel = %kernel.name, variant, ?after, "a dispatch did not return within the dispatch timeout; its variant is retired");
    if variant == 0 {
        let _ = kernel.disabled.set(error.clone());
    } else {
        reject_everywhere(
            core,
            kernel,
            variant,
            device,
            VerdictReason::SpeculativeFailed(format!(
                "did not return within the dispatch timeout ({after:?})"
            )),
        );
    }
    error
}

/// Sorts a backend error of kernel `kernel` into the batch's fault, the backend's, or the device's.
fn classify(kernel: &str, err: BackendError) -> Fault {
    match err {
        BackendError::DeviceLost { device, detail } => Fault::DeviceLost { device, detail },
        BackendError::OutOfDeviceMemory { .. }
        | BackendError::Vulkan(_)
        | BackendError::TimedOut { .. }
        | BackendError::Unknown { .. } => Fault::Backend(err.to_string()),
        other => Fault::Input(EngineError::Backend {
            kernel: kernel.to_string(),
            source: other,
        }),
    }
}

#[cfg(all(test, not(photofinish_loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_lost_device_is_the_devices_fault() {
        let err = BackendError::DeviceLost {
            device: 3,
            detail: "gone".into(),
        };
        match classify("sum", err) {
            Fault::DeviceLost { device, detail } => assert_eq!((device, &*detail), (3, "gone")),
            other => panic!("expected the device's fault, got {other:?}"),
        }
    }

    #[test]
    fn a_driver_failure_is_the_backends_and_retried() {
        let errors = [
            BackendError::OutOfDeviceMemory {
                device: 0,
                bytes: 1 << 30,
            },
            BackendError::Unknown {
                what: "a broken reply".into(),
            },
        ];
        for err in errors {
            let text = err.to_string();
            match classify("sum", err) {
                Fault::Backend(reason) => assert_eq!(reason, text),
                other => panic!("expected the backend's fault, got {other:?}"),
            }
        }
    }

    #[test]
    fn any_other_backend_error_is_the_batchs_and_names_its_kernel() {
        match classify("sum", BackendError::NoDevice("none".into())) {
            Fault::Input(EngineError::Backend { kernel, source }) => {
                assert_eq!(kernel, "sum");
                assert!(matches!(source, BackendError::NoDevice(_)));
            }
            other => panic!("expected the batch's fault, got {other:?}"),
        }
    }

    #[test]
    fn a_race_feeds_the_window_only_when_both_arms_were_timed() {
        let cons = Timed {
            ns: Some(100),
            contended: true,
        };
        let times = arm_times(cons, Some(80)).expect("both arms timed");
        assert_eq!((times.conservative_ns, times.speculative_ns), (100, 80));
        assert!(times.contended, "the race's contention is carried");
        assert!(arm_times(cons, None).is_none());
        let untimed = Timed {
            ns: None,
            contended: false,
        };
        assert!(arm_times(untimed, Some(80)).is_none());
    }
}
