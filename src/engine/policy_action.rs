//! What the engine did about each aggressive path the dispatch policy fired
//! ([`PolicyAction`], carried by `Event::PolicyAudit` beside what fired), and the
//! engine-side bookkeeping that turns a batch's run into those actions. It decides
//! nothing: the actions are read from what the worker and the backend really did for
//! the batch the policy was consulted for.

use std::fmt;

use super::tuning::TuningKey;
use crate::backend::DispatchOutput;
use crate::policy::PolicyAudit;

/// Why D1's persistent/grouped launch was not acted on for a batch: it ran in a backend
/// call of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GroupRefusal {
    /// Grouping is off (`EngineBuilder::max_group` 1).
    GroupingOff,
    /// The kernel has no verdict on the batch's key yet: the batch races, and a race
    /// runs alone.
    KernelUndecided,
    /// The batch is an audit (or `Verify::Always`) race of an adopted variant, which runs
    /// alone.
    AuditRace,
    /// No batch waited behind it beyond what the device's idle workers take.
    NoBacklog,
    /// The kernel's measured time exceeds its launch overhead (or 20 µs): each caller
    /// would wait for the whole group's kernels.
    NotLaunchBound,
    /// At the backlog the worker saw, D1 found the set-up outweighs the launches saved
    /// (or the kernel's measurements were busy being written).
    NotWorthIt,
}

impl fmt::Display for GroupRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GroupRefusal::GroupingOff => "grouping off",
            GroupRefusal::KernelUndecided => "kernel undecided",
            GroupRefusal::AuditRace => "audit race",
            GroupRefusal::NoBacklog => "no backlog",
            GroupRefusal::NotLaunchBound => "not launch-bound",
            GroupRefusal::NotWorthIt => "set-up outweighs the launches saved",
        })
    }
}

/// What the engine did about one aggressive path that fired (`Event::PolicyAudit`'s
/// `did`, paired index by index with its `fired`), read from what really happened to
/// the batch the policy was consulted for. Display reads e.g. `grouped 8 batches in
/// one launch` or `not grouped: no backlog`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PolicyAction {
    /// D1: the batch went to the backend in one call with others of the backlog.
    Grouped {
        /// Batches the backend call carried (at least 2).
        batches: usize,
    },
    /// D1: the batch went to the backend alone.
    NotGrouped {
        /// Why.
        why: GroupRefusal,
    },
    /// D2: the race's arms ran at the same time, on two queues.
    ArmsConcurrent,
    /// D2: the race's arms ran one after the other on one queue (no idle partner
    /// queue, or the device's queues share the CPU's cores).
    ArmsSerialised,
    /// D3: the backend ran the staged uploads of the call's later batches beside the
    /// kernels of the batches before them (`DispatchOutput::upload_overlapped`).
    UploadsOverlapped {
        /// Batches whose uploads overlapped an earlier kernel of the call.
        batches: usize,
    },
    /// D3: the backend ran each later batch's staged uploads after the kernels before
    /// it (it does not overlap uploads, e.g. the Vulkan backend with
    /// `VulkanOptions::overlap_uploads` off).
    UploadsSerialised,
    /// D3: the backend staged no upload to overlap: the host wrote the batches' buffers
    /// in place (unified or host memory), or the backend copies nothing (the CPU
    /// backend).
    NoStagedUploads,
    /// D4: the backend replayed a kept recording of the shape, or kept this one's for
    /// its next run.
    RecordsAndReplays,
    /// D4: the backend's own measured costs said a plain launch (recorded, run once,
    /// taken apart).
    PlainLaunch,
    /// D4: the backend records no command buffers (the CPU backend).
    NoRecording,
    /// D9: a variant run for the batch binds its buffers through a descriptor array.
    DescriptorArray,
    /// D9: no variant run for the batch declares a descriptor array: one binding per
    /// buffer.
    OneBindingPerBuffer,
    /// I2: compiles of the predicted key's pipelines were started in the background.
    PreSpecialised {
        /// The predicted key.
        key: TuningKey,
        /// Compiles started (variants × devices).
        compiles: usize,
    },
    /// I2: the predicted key's pipelines were already compiled or being compiled.
    NothingToPreSpecialise,
}

impl fmt::Display for PolicyAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyAction::Grouped { batches } => {
                write!(f, "grouped {batches} batches in one launch")
            }
            PolicyAction::NotGrouped { why } => write!(f, "not grouped: {why}"),
            PolicyAction::ArmsConcurrent => f.write_str("arms run concurrently"),
            PolicyAction::ArmsSerialised => f.write_str("arms serialised"),
            PolicyAction::UploadsOverlapped { batches } => {
                write!(
                    f,
                    "uploads of {batches} batches overlapped the running kernel"
                )
            }
            PolicyAction::UploadsSerialised => {
                f.write_str("uploads serialised behind the running kernel")
            }
            PolicyAction::NoStagedUploads => f.write_str("no staged uploads to overlap"),
            PolicyAction::RecordsAndReplays => f.write_str("records and replays"),
            PolicyAction::PlainLaunch => f.write_str("plain launch"),
            PolicyAction::NoRecording => f.write_str("plain launch: no command buffers"),
            PolicyAction::DescriptorArray => f.write_str("descriptor array used"),
            PolicyAction::OneBindingPerBuffer => {
                f.write_str("no descriptor array: one binding per buffer")
            }
            PolicyAction::PreSpecialised { key, compiles } => {
                write!(f, "pre-specialised key {key} ({compiles} compiles)")
            }
            PolicyAction::NothingToPreSpecialise => f.write_str("nothing to pre-specialise"),
        }
    }
}

/// What the engine did for the batch it consulted the policy for, gathered as the batch
/// ran; [`Acts::action`] reads one fired path's action from it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Acts {
    /// D1: the batches of the backend call (1: alone) and, alone, why.
    pub(crate) group: Result<usize, GroupRefusal>,
    /// D2: the arms ran at the same time.
    pub(crate) concurrent: bool,
    /// D4: the backend's `DispatchOutput::recording_reused`.
    pub(crate) recording_reused: Option<bool>,
    /// D9: a variant run declares a descriptor array.
    pub(crate) descriptor_array: bool,
    /// I2: the predicted key and the compiles started for it (`None`: nothing predicted
    /// worth a compile).
    pub(crate) pre_specialised: Option<(TuningKey, usize)>,
    /// D3: what the backend did with the staged uploads of the call's later batches.
    pub(crate) uploads: UploadsDone,
}

/// D3: of a backend call's batches, how many had their staged uploads overlapped with
/// the earlier kernels and how many serialised behind them
/// (`DispatchOutput::upload_overlapped`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct UploadsDone {
    pub(crate) overlapped: usize,
    pub(crate) serialised: usize,
}

impl UploadsDone {
    /// Counted from a call's outputs.
    pub(crate) fn of<E>(outs: &[Result<DispatchOutput, E>]) -> Self {
        let mut done = UploadsDone::default();
        for out in outs.iter().filter_map(|o| o.as_ref().ok()) {
            match out.upload_overlapped {
                Some(true) => done.overlapped += 1,
                Some(false) => done.serialised += 1,
                None => {}
            }
        }
        done
    }
}

impl Acts {
    /// The action taken about `fired`.
    pub(crate) fn action(&self, fired: &PolicyAudit) -> PolicyAction {
        match fired {
            PolicyAudit::PersistentKernel { .. } => match self.group {
                Ok(batches) if batches >= 2 => PolicyAction::Grouped { batches },
                Ok(_) => PolicyAction::NotGrouped {
                    why: GroupRefusal::NoBacklog,
                },
                Err(why) => PolicyAction::NotGrouped { why },
            },
            PolicyAudit::ConcurrentArms if self.concurrent => PolicyAction::ArmsConcurrent,
            PolicyAudit::ConcurrentArms => PolicyAction::ArmsSerialised,
            PolicyAudit::CopyOverlap => match self.uploads {
                UploadsDone { overlapped, .. } if overlapped > 0 => {
                    PolicyAction::UploadsOverlapped {
                        batches: overlapped,
                    }
                }
                UploadsDone { serialised, .. } if serialised > 0 => PolicyAction::UploadsSerialised,
                _ => PolicyAction::NoStagedUploads,
            },
            PolicyAudit::RecordAndReplay { .. } => match self.recording_reused {
                Some(true) => PolicyAction::RecordsAndReplays,
                Some(false) => PolicyAction::PlainLaunch,
                None => PolicyAction::NoRecording,
            },
            PolicyAudit::Bindless if self.descriptor_array => PolicyAction::DescriptorArray,
            PolicyAudit::Bindless => PolicyAction::OneBindingPerBuffer,
            PolicyAudit::TraceJitSpeculate { .. } => match self.pre_specialised {
                Some((key, compiles)) if compiles > 0 => {
                    PolicyAction::PreSpecialised { key, compiles }
                }
                _ => PolicyAction::NothingToPreSpecialise,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acts(group: Result<usize, GroupRefusal>) -> Acts {
        Acts {
            group,
            concurrent: false,
            recording_reused: None,
            descriptor_array: false,
            pre_specialised: None,
            uploads: UploadsDone::default(),
        }
    }

    #[test]
    fn d1_reports_a_group_only_when_the_call_carried_several_batches() {
        let d1 = PolicyAudit::PersistentKernel { savings_ns: 1 };
        assert_eq!(
            acts(Ok(3)).action(&d1),
            PolicyAction::Grouped { batches: 3 }
        );
        assert_eq!(
            acts(Ok(1)).action(&d1).to_string(),
            "not grouped: no backlog"
        );
        assert_eq!(
            acts(Err(GroupRefusal::GroupingOff)).action(&d1),
            PolicyAction::NotGrouped {
                why: GroupRefusal::GroupingOff
            }
        );
    }

    #[test]
    fn d3_and_d4_follow_what_the_backend_did() {
        let mut a = acts(Ok(3));
        let d3 = PolicyAudit::CopyOverlap;
        assert_eq!(a.action(&d3), PolicyAction::NoStagedUploads);
        let outs: Vec<Result<DispatchOutput, ()>> = [None, Some(false), Some(false)]
            .into_iter()
            .map(|upload_overlapped| {
                Ok(DispatchOutput {
                    outputs: Vec::new(),
                    kernel_ns: None,
                    recording_reused: None,
                    upload_overlapped,
                })
            })
            .collect();
        a.uploads = UploadsDone::of(&outs);
        assert_eq!(
            a.action(&d3).to_string(),
            "uploads serialised behind the running kernel"
        );
        a.uploads.overlapped = 2;
        assert_eq!(
            a.action(&d3),
            PolicyAction::UploadsOverlapped { batches: 2 }
        );
        let d4 = PolicyAudit::RecordAndReplay { savings_ns: 1 };
        assert_eq!(a.action(&d4), PolicyAction::NoRecording);
        a.recording_reused = Some(false);
        assert_eq!(a.action(&d4), PolicyAction::PlainLaunch);
        a.recording_reused = Some(true);
        assert_eq!(a.action(&d4), PolicyAction::RecordsAndReplays);
    }
}
