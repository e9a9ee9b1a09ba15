//! The autotune file's serde layout (schema [`SCHEMA_NAME`](super::SCHEMA_NAME)) and its
//! conversions to and from the store's types: what `persist` writes and reads. The
//! layout is the file's contract, kept apart from the Rust types so that a change of
//! either is a deliberate one (a layout change is a schema version).

use serde::{Deserialize, Serialize};

use crate::policy::{KernelVerdict, SpeculationObservation};

use super::key::{AutotuneKey, AutotuneRecord, VariantPairKey};
use super::store::{StaleGroup, VerdictReason, VerdictRecord};

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct WireFile {
    pub(super) schema: String,
    pub(super) version: u32,
    pub(super) device_uuid: String,
    pub(super) driver_version: String,
    pub(super) entries: Vec<WireEntry>,
    pub(super) verdicts: Vec<WireVerdict>,
    pub(super) stale: Vec<WireGroup>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct WireGroup {
    pub(super) device_uuid: String,
    pub(super) driver_version: String,
    pub(super) entries: Vec<WireEntry>,
    pub(super) verdicts: Vec<WireVerdict>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct WireEntry {
    pub(super) key: AutotuneKey,
    pub(super) record: AutotuneRecord,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct WireVerdict {
    pub(super) pair: VariantPairKey,
    pub(super) verdict: WireVerdictKind,
    pub(super) reason: WireReason,
    pub(super) observation: WireObservation,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum WireVerdictKind {
    Adopt,
    Reject,
    KeepRacing,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum WireReason {
    Measured,
    OutputMismatch,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(super) struct WireObservation {
    pub(super) baseline_dispatches: u32,
    pub(super) baseline_mean_ns: u64,
    pub(super) speculative_dispatches: u32,
    pub(super) speculative_mean_ns: u64,
    pub(super) side_compile_cost_ns: u64,
}

pub(super) fn wire_verdict(pair: &VariantPairKey, v: &VerdictRecord) -> WireVerdict {
    let o = v.observation;
    WireVerdict {
        pair: pair.clone(),
        verdict: match v.verdict {
            KernelVerdict::Adopted => WireVerdictKind::Adopt,
            KernelVerdict::Rejected => WireVerdictKind::Reject,
            KernelVerdict::Undecided => WireVerdictKind::KeepRacing,
        },
        // The file keeps what the store keeps of a reason (`VerdictReason::stored`).
        reason: if v.reason.is_mismatch() {
            WireReason::OutputMismatch
        } else {
            WireReason::Measured
        },
        observation: WireObservation {
            baseline_dispatches: o.baseline_dispatches,
            baseline_mean_ns: o.baseline_mean_ns,
            speculative_dispatches: o.speculative_dispatches,
            speculative_mean_ns: o.speculative_mean_ns,
            side_compile_cost_ns: o.side_compile_cost_ns,
        },
    }
}

pub(super) fn verdict_record(w: WireVerdict) -> (VariantPairKey, VerdictRecord) {
    let verdict = match w.verdict {
        WireVerdictKind::Adopt => KernelVerdict::Adopted,
        WireVerdictKind::Reject => KernelVerdict::Rejected,
        WireVerdictKind::KeepRacing => KernelVerdict::Undecided,
    };
    let reason = match w.reason {
        WireReason::Measured => VerdictReason::Measured,
        WireReason::OutputMismatch => VerdictReason::Mismatch,
    };
    let o = w.observation;
    let observation = SpeculationObservation {
        baseline_dispatches: o.baseline_dispatches,
        baseline_mean_ns: o.baseline_mean_ns,
        speculative_dispatches: o.speculative_dispatches,
        speculative_mean_ns: o.speculative_mean_ns,
        side_compile_cost_ns: o.side_compile_cost_ns,
    };
    let v = VerdictRecord {
        verdict,
        observation,
        reason,
    };
    (w.pair, v)
}

pub(super) fn wire_group(group: &StaleGroup) -> WireGroup {
    WireGroup {
        device_uuid: group.identity.uuid_hex(),
        driver_version: group.identity.driver_version.clone(),
        entries: group
            .entries
            .iter()
            .map(|(key, record)| WireEntry {
                key: key.clone(),
                record: record.clone(),
            })
            .collect(),
        verdicts: group
            .verdicts
            .iter()
            .map(|(pair, v)| wire_verdict(pair, v))
            .collect(),
    }
}
