//! The value of one fleet entry, its JSON form in Redis, and the two rules every copy
//! of it follows: counts clamped on the way in, a mismatch never overwritten. Plain
//! data: no I/O.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::autotune::{VerdictReason, VerdictRecord};
use crate::policy::{KernelVerdict, SpeculationObservation};

/// The most races per arm a window read from the fleet may claim. One engine decides a
/// pair within `MAX_UNDECIDED_RACES` (64) paired races, so a window of more was not
/// measured by one engine deciding: a forged or saturated count is cut to this, and a
/// host's own races can always outweigh it (SPEC §11). The local file's loader has no
/// clamp of its own yet; this is the figure the engine's undecided limit gives.
pub const MAX_FLEET_WINDOW_COUNT: u32 = 64;

/// One verdict as the fleet shares it: the verdict with its evidence, the host that
/// measured it and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetEntry {
    /// The verdict (adopt or reject; a keep-racing one is never published), its window
    /// and its reason.
    pub verdict: VerdictRecord,
    /// The host that measured it.
    pub host: String,
    /// When, in seconds since the Unix epoch.
    pub unix_time: u64,
}

impl FleetEntry {
    /// `verdict`, measured on this host ([`host_name`]) now.
    pub fn now(verdict: VerdictRecord) -> Self {
        Self {
            verdict,
            host: host_name(),
            unix_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// True for a rejection because the variants' answers differed: sticky fleet-wide.
    pub fn is_mismatch(&self) -> bool {
        self.verdict.reason.is_mismatch()
    }

    /// The entry with its window counts clamped to [`MAX_FLEET_WINDOW_COUNT`].
    pub(crate) fn clamped(mut self) -> Self {
        let o = &mut self.verdict.observation;
        o.baseline_dispatches = o.baseline_dispatches.min(MAX_FLEET_WINDOW_COUNT);
        o.speculative_dispatches = o.speculative_dispatches.min(MAX_FLEET_WINDOW_COUNT);
        self
    }
}

/// This host's name: the kernel's (`/proc/sys/kernel/hostname`), else `$HOSTNAME`,
/// else `unknown`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(crate::config::host_name)
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Whether `new` may replace `current`: always, unless `current` is a mismatch
/// rejection and `new` is not (a mismatch is sticky). The Lua script in `client.rs`
/// applies the same rule inside Redis.
pub(crate) fn may_replace(current: Option<&FleetEntry>, new: &FleetEntry) -> bool {
    !current.is_some_and(FleetEntry::is_mismatch) || new.is_mismatch()
}

/// The JSON value stored under a key, e.g.
/// `{"verdict":"adopted","reason":"measured","window":{…},"host":"h1","unix_time":1765000000,"tuning_key":"64KiB"}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    verdict: WireVerdict,
    reason: WireReason,
    window: WireWindow,
    host: String,
    unix_time: u64,
    /// The tuning key as it displays, for people reading Redis; ignored on read.
    #[serde(default)]
    tuning_key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum WireVerdict {
    Adopted,
    Rejected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum WireReason {
    Measured,
    Mismatch,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireWindow {
    conservative_count: u32,
    conservative_mean_ns: u64,
    speculative_count: u32,
    speculative_mean_ns: u64,
    #[serde(default)]
    side_compile_ns: u64,
}

/// The JSON to store for `entry`, or `None` for a keep-racing verdict (nothing to
/// share).
pub(crate) fn encode(entry: &FleetEntry, tuning_key_display: &str) -> Option<String> {
    let verdict = match entry.verdict.verdict {
        KernelVerdict::Adopted => WireVerdict::Adopted,
        KernelVerdict::Rejected => WireVerdict::Rejected,
        KernelVerdict::Undecided => return None,
    };
    // The wire keeps what the store keeps of a reason (`VerdictReason::stored`).
    let reason = if entry.verdict.reason.is_mismatch() {
        WireReason::Mismatch
    } else {
        WireReason::Measured
    };
    let o = entry.verdict.observation;
    let wire = Wire {
        verdict,
        reason,
        window: WireWindow {
            conservative_count: o.baseline_dispatches,
            conservative_mean_ns: o.baseline_mean_ns,
            speculative_count: o.speculative_dispatches,
            speculative_mean_ns: o.speculative_mean_ns,
            side_compile_ns: o.side_compile_cost_ns,
        },
        host: entry.host.clone(),
        unix_time: entry.unix_time,
        tuning_key: tuning_key_display.to_owned(),
    };
    // A struct of strings and integers always serialises.
    serde_json::to_string(&wire).ok()
}

/// Parses a stored value, clamped; `Err` says why it is not one of ours (the caller
/// logs it and skips the key). Never panics, whatever the bytes.
pub(crate) fn decode(bytes: &[u8]) -> Result<FleetEntry, String> {
    let wire: Wire = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let verdict = match (wire.verdict, wire.reason) {
        (WireVerdict::Adopted, WireReason::Mismatch) => {
            return Err("an adopted verdict cannot have reason mismatch".to_owned())
        }
        (WireVerdict::Adopted, _) => KernelVerdict::Adopted,
        (WireVerdict::Rejected, _) => KernelVerdict::Rejected,
    };
    let reason = match wire.reason {
        WireReason::Measured => VerdictReason::Measured,
        WireReason::Mismatch => VerdictReason::Mismatch,
    };
    let w = wire.window;
    let entry = FleetEntry {
        verdict: VerdictRecord {
            verdict,
            observation: SpeculationObservation {
                baseline_dispatches: w.conservative_count,
                baseline_mean_ns: w.conservative_mean_ns,
                speculative_dispatches: w.speculative_count,
                speculative_mean_ns: w.speculative_mean_ns,
                side_compile_cost_ns: w.side_compile_ns,
            },
            reason,
        },
        host: wire.host,
        unix_time: wire.unix_time,
    };
    Ok(entry.clamped())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(verdict: KernelVerdict, reason: VerdictReason, count: u32) -> FleetEntry {
        FleetEntry {
            verdict: VerdictRecord {
                verdict,
                observation: SpeculationObservation {
                    baseline_dispatches: count,
                    baseline_mean_ns: 1_000,
                    speculative_dispatches: count,
                    speculative_mean_ns: 500,
                    side_compile_cost_ns: 7,
                },
                reason,
            },
            host: "h1".into(),
            unix_time: 1_765_000_000,
        }
    }

    #[test]
    fn clamp_matches_the_engines_undecided_limit() {
        assert_eq!(MAX_FLEET_WINDOW_COUNT, crate::MAX_UNDECIDED_RACES);
    }

    #[test]
    fn round_trips_and_clamps_counts() {
        let e = entry(KernelVerdict::Adopted, VerdictReason::Measured, 12);
        let json = encode(&e, "64KiB").expect("adopt encodes");
        assert!(json.contains("\"tuning_key\":\"64KiB\""), "{json}");
        assert_eq!(decode(json.as_bytes()), Ok(e));

        let forged = entry(KernelVerdict::Adopted, VerdictReason::Measured, u32::MAX);
        let back = decode(encode(&forged, "").expect("encodes").as_bytes()).expect("decodes");
        assert_eq!(back.verdict.observation.baseline_dispatches, 64);
        assert_eq!(back.verdict.observation.speculative_dispatches, 64);
    }

    #[test]
    fn keep_racing_is_not_shared() {
        let e = entry(KernelVerdict::Undecided, VerdictReason::Measured, 3);
        assert_eq!(encode(&e, ""), None);
    }

    #[test]
    fn foreign_and_malformed_values_are_errors_not_panics() {
        for junk in [
            &b""[..],
            b"hello",
            b"{}",
            b"[1,2]",
            b"\xff\xfe",
            br#"{"verdict":"adopted","reason":"mismatch","window":{"conservative_count":1,"conservative_mean_ns":1,"speculative_count":1,"speculative_mean_ns":1},"host":"h","unix_time":1}"#,
            br#"{"verdict":"maybe","reason":"measured","window":{"conservative_count":1,"conservative_mean_ns":1,"speculative_count":1,"speculative_mean_ns":1},"host":"h","unix_time":1}"#,
            br#"{"verdict":"adopted","reason":"measured","window":{"conservative_count":-1,"conservative_mean_ns":1,"speculative_count":1,"speculative_mean_ns":1},"host":"h","unix_time":1}"#,
        ] {
            assert!(decode(junk).is_err(), "{:?}", String::from_utf8_lossy(junk));
        }
    }

    #[test]
    fn mismatch_is_sticky() {
        let adopt = entry(KernelVerdict::Adopted, VerdictReason::Measured, 8);
        let reject = entry(KernelVerdict::Rejected, VerdictReason::Measured, 8);
        let mismatch = entry(KernelVerdict::Rejected, VerdictReason::Mismatch, 1);
        assert!(may_replace(None, &adopt));
        assert!(may_replace(Some(&reject), &adopt));
        assert!(may_replace(Some(&adopt), &mismatch));
        assert!(!may_replace(Some(&mismatch), &adopt));
        assert!(!may_replace(Some(&mismatch), &reject));
        assert!(may_replace(Some(&mismatch), &mismatch));
    }
}
