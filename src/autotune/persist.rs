//! The autotune store's file: one versioned JSON document per device, saved atomically
//! and loaded defensively. This module does the I/O and decides nothing about tuning.
//!
//! Layout (schema [`SCHEMA_NAME`], version [`SCHEMA_VERSION`]): a header naming the
//! device UUID and driver version the live entries were measured with, those entries
//! and verdicts, then `stale` groups, each with its own device UUID and driver version.
//! On load, the group whose device and driver match the caller's becomes the live store
//! (as [`Trust::Loaded`](super::Trust::Loaded) until re-verified); every other group is
//! stale: kept, reported, saved back, never used.
//!
//! A save never leaves a half-written file: it writes a temporary file in the target's
//! directory, fsyncs it, renames it over the target and fsyncs the directory; a save
//! that fails removes its temporary file. A load never panics: a missing file is an
//! empty store; an unreadable, oversized, truncated, corrupt or foreign-schema one is an
//! [`AutotuneError`], or a logged fresh start under [`LoadMode::FreshOnError`].
//!
//! Several processes may share one file (the default directory is every application's
//! on the machine), so a save **merges**: under an advisory lock on a sibling file
//! (`.{name}.lock`, `flock`, left in place), it reads what is on disk, merges it with
//! this store and writes the result. The rule, per record and per verdict:
//!
//! - only on disk (another process measured it): kept;
//! - only in this store: written;
//! - in both: this store's wins when it is [`Trust::Verified`](super::Trust::Verified)
//!   (measured or re-verified by this process); a [`Trust::Loaded`](super::Trust::Loaded)
//!   one yields to the disk's, which is the same one or a newer one another process
//!   saved since this store loaded it. Two processes that both measured one key: the
//!   later save wins (both measured the same device and driver).
//!
//! Stale groups merge by device and driver (the disk's records win: this store never
//! changes its stale groups); after [`AutotuneStore::discard_stale`] the save drops the
//! groups of the devices and drivers it forgot from the file too. A file of this schema
//! with a **newer version** is never overwritten: the save fails with
//! [`AutotuneError::NewerSchema`], the file stays as it is, and the store keeps working
//! in memory. A file that cannot be used at all (corrupt, truncated, over the size
//! limit, another schema or an older version) is replaced, with a warning, as a load
//! under [`LoadMode::FreshOnError`] promises.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::policy::{KernelVerdict, SpeculationObservation};

use super::key::{AutotuneKey, AutotuneRecord, DeviceIdentity, VariantPairKey};
use super::store::{AutotuneStore, StaleGroup, StaleReason, Trust, VerdictReason, VerdictRecord};

/// The `schema` field every autotune file carries.
pub const SCHEMA_NAME: &str = "photofinish-autotune";

/// The layout version this build writes.
///
/// Version 2 (tuning keys, SPEC §8): a verdict belongs to (kernel, variant pair,
/// tuning key), and the speculative key's `spec_hash` names the tuning key
/// (`TuningKey::hash64`, never 0). Version 1 files, whose verdicts are per kernel
/// (`spec_hash` 0), are read as they are — the layout is the same — and their
/// verdicts kept as kernel-wide priors: a key with no entry of its own starts from
/// its kernel's (see the engine's `priors.rs`). The next save writes version 2, the
/// version 1 entries included. The load logs the migration and says so in
/// [`LoadReport::migrated_from`].
pub const SCHEMA_VERSION: u32 = 2;

/// Older layout versions this build reads and migrates (see [`SCHEMA_VERSION`]).
pub const MIGRATED_VERSIONS: &[u32] = &[1];

/// True for a version this build reads.
fn readable(version: u64) -> bool {
    version == u64::from(SCHEMA_VERSION)
        || MIGRATED_VERSIONS.iter().any(|&v| u64::from(v) == version)
}

/// The largest file [`AutotuneStore::load`] reads, and the largest
/// [`AutotuneStore::save`] writes: 16 MiB.
pub const MAX_STORE_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// How many stale groups a save keeps (the newest first); older ones are dropped.
pub const MAX_STALE_GROUPS: usize = 8;

/// How long a save waits for another process's save of the same file (its lock) before
/// it gives up with [`AutotuneError::Busy`]. A save holds the lock for one read, merge
/// and write of at most [`MAX_STORE_FILE_BYTES`].
pub const SAVE_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong loading or saving an autotune file, and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AutotuneError {
    /// The file system refused an operation.
    #[error("could not {action} autotune file {path}: {source}; check that the path exists and is readable and writable")]
    Io {
        /// What was being done (`"read"`, `"write"`, `"rename"`…).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Something other than a regular file sits at the path.
    #[error("{path} is not a regular file (a directory?); give the store a file path, or move what is there aside")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The path names no file (it is empty or ends in `..`).
    #[error("{path:?} does not name a file; give the store a path such as dir/autotune.json")]
    InvalidPath {
        /// The path.
        path: PathBuf,
    },
    /// The file is over [`MAX_STORE_FILE_BYTES`].
    #[error("autotune file {path} is over the {limit}-byte limit; delete it (it is rebuilt by the next run) or load with LoadMode::FreshOnError")]
    TooLarge {
        /// The path.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// The store could not be turned into JSON (a bug in photofinish, not in your data).
    #[error(
        "could not serialise the autotune store: {detail}; please report this as a photofinish bug"
    )]
    Serialize {
        /// serde_json's message.
        detail: String,
    },
    /// Saving would write more than [`MAX_STORE_FILE_BYTES`], which could not be loaded.
    #[error("the autotune store would be {size} bytes, over the {limit}-byte limit of a loadable file; discard stale groups (AutotuneStore::discard_stale) or use fewer kernels")]
    TooLargeToSave {
        /// The serialised size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The file ends in the middle of the document.
    #[error("autotune file {path} is truncated ({detail}); photofinish's atomic save never leaves one, so something else wrote it: delete it or load with LoadMode::FreshOnError")]
    Truncated {
        /// The path.
        path: PathBuf,
        /// Where the parser ran out.
        detail: String,
    },
    /// The file is not a well-formed autotune document.
    #[error("autotune file {path} is corrupt: {detail}; delete it (it is rebuilt by the next run) or load with LoadMode::FreshOnError")]
    Corrupt {
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The file on disk was written by a newer photofinish (a newer schema version):
    /// a save leaves it untouched rather than lose what this build cannot read.
    #[error("{path} was written by a newer photofinish (autotune schema version {found_version}; this build writes version {SCHEMA_VERSION}), so it was left untouched and this run's verdicts were not saved (they stay in memory); upgrade photofinish, or give this build another autotune directory")]
    NewerSchema {
        /// The path.
        path: PathBuf,
        /// The version found.
        found_version: u64,
    },
    /// Another process held the file's save lock for [`SAVE_LOCK_TIMEOUT`].
    #[error("another process held the lock {lock} for {waited:?}, so autotune file {path} was not saved (the store stays correct in memory); retry later, or remove the lock file if no photofinish process is running")]
    Busy {
        /// The autotune file.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// How long the save waited.
        waited: Duration,
    },
    /// The file is another program's, or another version's.
    #[error("{path} has schema {found_schema} version {found_version}, but this build reads {SCHEMA_NAME:?} version {SCHEMA_VERSION}; move it aside, or load with LoadMode::FreshOnError to start afresh")]
    ForeignSchema {
        /// The path.
        path: PathBuf,
        /// The `schema` field found (JSON), or `none`.
        found_schema: String,
        /// The `version` field found (JSON), or `none`.
        found_version: String,
    },
}

/// What [`AutotuneStore::load`] does with a file it cannot use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LoadMode {
    /// Return the error.
    #[default]
    Strict,
    /// Log it (`tracing::warn`) and start with an empty store; the next save replaces
    /// the bad file.
    FreshOnError,
}

/// Where a loaded store came from.
#[derive(Debug)]
#[non_exhaustive]
pub enum LoadOutcome {
    /// There was no file: the store is empty.
    Missing,
    /// The file was read.
    Loaded,
    /// The file could not be used and [`LoadMode::FreshOnError`] was asked for: the
    /// store is empty, and this is why.
    FreshStart(AutotuneError),
}

/// What [`AutotuneStore::load`] found.
#[derive(Debug)]
pub struct LoadReport {
    /// Where the store came from.
    pub outcome: LoadOutcome,
    /// Live records loaded (unverified).
    pub entries: usize,
    /// Live verdicts loaded (unverified).
    pub verdicts: usize,
    /// Records and verdicts in stale groups (kept, not used).
    pub stale: usize,
    /// The older layout version the file was migrated from (read as it is, saved as
    /// [`SCHEMA_VERSION`]), if it was.
    pub migrated_from: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
struct WireFile {
    schema: String,
    version: u32,
    device_uuid: String,
    driver_version: String,
    entries: Vec<WireEntry>,
    verdicts: Vec<WireVerdict>,
    stale: Vec<WireGroup>,
}

#[derive(Debug, Serialize, Deserialize)]
struct WireGroup {
    device_uuid: String,
    driver_version: String,
    entries: Vec<WireEntry>,
    verdicts: Vec<WireVerdict>,
}

#[derive(Debug, Serialize, Deserialize)]
struct WireEntry {
    key: AutotuneKey,
    record: AutotuneRecord,
}

#[derive(Debug, Serialize, Deserialize)]
struct WireVerdict {
    pair: VariantPairKey,
    verdict: WireVerdictKind,
    reason: WireReason,
    observation: WireObservation,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum WireVerdictKind {
    Adopt,
    Reject,
    KeepRacing,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum WireReason {
    Measured,
    OutputMismatch,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct WireObservation {
    baseline_dispatches: u32,
    baseline_mean_ns: u64,
    speculative_dispatches: u32,
    speculative_mean_ns: u64,
    side_compile_cost_ns: u64,
}

fn wire_verdict(pair: &VariantPairKey, v: &VerdictRecord) -> WireVerdict {
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

fn verdict_record(w: WireVerdict) -> (VariantPairKey, VerdictRecord) {
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

fn wire_group(group: &StaleGroup) -> WireGroup {
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

impl AutotuneStore {
    /// Publishes a snapshot and saves it, with the stale groups, to `path`, merged with
    /// what the file already holds (the module docs give the rule), atomically: the file
    /// at `path` is either the old one or the complete new one, never a mix. Saves of
    /// one file, from any process, take turns on its lock file (`.{name}.lock` next to
    /// it), so none loses another's verdicts.
    ///
    /// Never overwrites a file of a newer schema version ([`AutotuneError::NewerSchema`]);
    /// a failed save leaves no temporary file behind, and the store stays correct in
    /// memory whatever the error.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), AutotuneError> {
        let path = path.as_ref();
        let (dir, _) = split_path(path)?;
        let _lock = lock_for_save(path, dir)?;
        let on_disk = read_for_merge(path, self.identity())?;
        let merged = self.merged_with(on_disk);
        let file = WireFile {
            schema: SCHEMA_NAME.to_owned(),
            version: SCHEMA_VERSION,
            device_uuid: self.identity().uuid_hex(),
            driver_version: self.identity().driver_version.clone(),
            entries: merged
                .entries
                .into_iter()
                .map(|(key, record)| WireEntry { key, record })
                .collect(),
            verdicts: merged
                .verdicts
                .iter()
                .map(|(pair, verdict)| wire_verdict(pair, verdict))
                .collect(),
            stale: merged
                .stale
                .iter()
                .take(MAX_STALE_GROUPS)
                .map(wire_group)
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| AutotuneError::Serialize {
            detail: e.to_string(),
        })?;
        let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        if size > MAX_STORE_FILE_BYTES {
            return Err(AutotuneError::TooLargeToSave {
                size,
                limit: MAX_STORE_FILE_BYTES,
            });
        }
        write_atomically(path, &bytes)
    }

    /// This store (a fresh snapshot of it) merged with `disk`, the file's content read
    /// under the save lock: the rule of the module docs.
    fn merged_with(&self, disk: Option<Parsed>) -> Merged {
        let snapshot = self.publish();
        let disk = disk.unwrap_or_default();
        let mut entries: BTreeMap<AutotuneKey, AutotuneRecord> = disk.entries.into_iter().collect();
        for (key, stored) in &snapshot.entries {
            if stored.trust == Trust::Verified || !entries.contains_key(key) {
                entries.insert(key.clone(), (*stored.record).clone());
            }
        }
        let mut verdicts: BTreeMap<VariantPairKey, VerdictRecord> =
            disk.verdicts.into_iter().collect();
        for (pair, stored) in &snapshot.verdicts {
            if stored.trust == Trust::Verified || !verdicts.contains_key(pair) {
                verdicts.insert(pair.clone(), stored.verdict.clone());
            }
        }
        // The disk's stale groups first (newest first, as saved: its header group first
        // when another driver wrote it), but none `discard_stale` forgot.
        let discarded = self.discarded_stale();
        let disk_stale: Vec<StaleGroup> = disk
            .stale
            .into_iter()
            .filter(|g| !discarded.contains(&g.identity))
            .collect();
        let mut stale: Vec<StaleGroup> = Vec::with_capacity(disk_stale.len());
        for group in disk_stale.iter().chain(self.stale()) {
            match stale.iter_mut().find(|g| g.identity == group.identity) {
                Some(kept) => absorb(kept, group),
                None => stale.push(group.clone()),
            }
        }
        Merged {
            entries,
            verdicts,
            stale,
        }
    }

    /// Loads the store of `identity` from `path`. A missing file gives an empty store.
    /// Entries of another device or driver become [`StaleGroup`]s. Every loaded record
    /// and verdict is [`Trust::Loaded`](super::Trust::Loaded) until the engine
    /// re-verifies it. Never panics, whatever the file holds.
    pub fn load(
        path: impl AsRef<Path>,
        identity: &DeviceIdentity,
        mode: LoadMode,
    ) -> Result<(AutotuneStore, LoadReport), AutotuneError> {
        let path = path.as_ref();
        let result = read_capped(path).and_then(|bytes| match bytes {
            None => Ok(None),
            Some(bytes) => parse(path, &bytes, identity).map(Some),
        });
        match result {
            Ok(None) => Ok((
                AutotuneStore::new(identity.clone()),
                report(LoadOutcome::Missing, 0, 0, &[]),
            )),
            Ok(Some(parsed)) => {
                let mut report = report(
                    LoadOutcome::Loaded,
                    parsed.entries.len(),
                    parsed.verdicts.len(),
                    &parsed.stale,
                );
                if parsed.version != SCHEMA_VERSION {
                    tracing::info!(
                        path = %path.display(),
                        from = parsed.version,
                        to = SCHEMA_VERSION,
                        verdicts = parsed.verdicts.len(),
                        "autotune file of an older layout migrated: its per-kernel verdicts are kept as priors for every tuning key, and the next save writes the new layout"
                    );
                    report.migrated_from = Some(parsed.version);
                }
                for group in &parsed.stale {
                    tracing::info!(
                        path = %path.display(),
                        stale = %group.identity,
                        reason = ?group.reason,
                        entries = group.entries.len(),
                        "autotune entries of another device or driver kept but not used"
                    );
                }
                let store = AutotuneStore::from_loaded(
                    identity.clone(),
                    parsed.entries,
                    parsed.verdicts,
                    parsed.stale,
                );
                Ok((store, report))
            }
            Err(error) => match mode {
                LoadMode::Strict => Err(error),
                LoadMode::FreshOnError => {
                    tracing::warn!(%error, "starting with an empty autotune store");
                    Ok((
                        AutotuneStore::new(identity.clone()),
                        report(LoadOutcome::FreshStart(error), 0, 0, &[]),
                    ))
                }
            },
        }
    }
}

fn report(
    outcome: LoadOutcome,
    entries: usize,
    verdicts: usize,
    stale: &[StaleGroup],
) -> LoadReport {
    LoadReport {
        outcome,
        entries,
        verdicts,
        stale: stale
            .iter()
            .map(|g| g.entries.len() + g.verdicts.len())
            .sum(),
        migrated_from: None,
    }
}

/// The file's bytes, `None` when there is no file; never more than the cap.
fn read_capped(path: &Path) -> Result<Option<Vec<u8>>, AutotuneError> {
    let io_err = |action, source| AutotuneError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("inspect", e)),
    };
    if !meta.is_file() {
        return Err(AutotuneError::NotAFile {
            path: path.to_owned(),
        });
    }
    let too_large = || AutotuneError::TooLarge {
        path: path.to_owned(),
        limit: MAX_STORE_FILE_BYTES,
    };
    if meta.len() > MAX_STORE_FILE_BYTES {
        return Err(too_large());
    }
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("open", e)),
    };
    // The file may grow between the metadata call and the read: read one byte past the
    // cap to notice without ever holding more than that.
    let mut bytes = Vec::new();
    file.take(MAX_STORE_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_err("read", e))?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_STORE_FILE_BYTES {
        return Err(too_large());
    }
    Ok(Some(bytes))
}

#[derive(Default)]
struct Parsed {
    /// The layout version the file had.
    version: u32,
    entries: Vec<(AutotuneKey, AutotuneRecord)>,
    verdicts: Vec<(VariantPairKey, VerdictRecord)>,
    stale: Vec<StaleGroup>,
}

/// What a save writes: this store merged with the file.
struct Merged {
    entries: BTreeMap<AutotuneKey, AutotuneRecord>,
    verdicts: BTreeMap<VariantPairKey, VerdictRecord>,
    stale: Vec<StaleGroup>,
}

/// Adds to `kept` the records and verdicts of `other` (a group of the same device and
/// driver) that it does not have; where both have one, `kept`'s stays.
fn absorb(kept: &mut StaleGroup, other: &StaleGroup) {
    let keys: std::collections::BTreeSet<AutotuneKey> =
        kept.entries.iter().map(|(k, _)| k.clone()).collect();
    kept.entries.extend(
        other
            .entries
            .iter()
            .filter(|(k, _)| !keys.contains(k))
            .cloned(),
    );
    let pairs: std::collections::BTreeSet<VariantPairKey> =
        kept.verdicts.iter().map(|(p, _)| p.clone()).collect();
    kept.verdicts.extend(
        other
            .verdicts
            .iter()
            .filter(|(p, _)| !pairs.contains(p))
            .cloned(),
    );
}

/// The file as a document of this schema and version, or the error that says what is
/// wrong with it: truncated, not JSON, not an object, another schema or version, or
/// fields of the wrong shape.
fn classify(path: &Path, bytes: &[u8]) -> Result<WireFile, AutotuneError> {
    let corrupt = |detail: String| AutotuneError::Corrupt {
        path: path.to_owned(),
        detail,
    };
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        if e.classify() == serde_json::error::Category::Eof {
            AutotuneError::Truncated {
                path: path.to_owned(),
                detail: e.to_string(),
            }
        } else {
            corrupt(e.to_string())
        }
    })?;
    let Some(object) = value.as_object() else {
        return Err(corrupt("the document is not a JSON object".into()));
    };
    let schema = object.get("schema");
    let version = object.get("version");
    if schema.and_then(|s| s.as_str()) != Some(SCHEMA_NAME)
        || !version.and_then(|v| v.as_u64()).is_some_and(readable)
    {
        let shown = |v: Option<&serde_json::Value>| v.map_or("none".into(), |v| v.to_string());
        return Err(AutotuneError::ForeignSchema {
            path: path.to_owned(),
            found_schema: shown(schema),
            found_version: shown(version),
        });
    }
    serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))
}

fn parse(path: &Path, bytes: &[u8], current: &DeviceIdentity) -> Result<Parsed, AutotuneError> {
    // A well-formed file of this schema and version is read in one pass; anything else
    // goes through `classify` for the precise error.
    let file = match serde_json::from_slice::<WireFile>(bytes) {
        Ok(file) if file.schema == SCHEMA_NAME && readable(u64::from(file.version)) => file,
        _ => classify(path, bytes)?,
    };
    let corrupt = |detail: String| AutotuneError::Corrupt {
        path: path.to_owned(),
        detail,
    };
    let header = WireGroup {
        device_uuid: file.device_uuid,
        driver_version: file.driver_version,
        entries: file.entries,
        verdicts: file.verdicts,
    };
    let mut live = None;
    let mut stale = Vec::new();
    for group in std::iter::once(header).chain(file.stale) {
        let device_uuid = DeviceIdentity::parse_uuid_hex(&group.device_uuid).ok_or_else(|| {
            corrupt(format!(
                "device_uuid {:?} is not 32 hex digits",
                group.device_uuid
            ))
        })?;
        let identity = DeviceIdentity {
            device_uuid,
            driver_version: group.driver_version,
        };
        let entries: Vec<_> = group
            .entries
            .into_iter()
            .map(|e| (e.key, e.record))
            .collect();
        let verdicts: Vec<_> = group.verdicts.into_iter().map(verdict_record).collect();
        match StaleReason::between(&identity, current) {
            None if live.is_none() => live = Some((entries, verdicts)),
            // A second group for this very device and driver: only a hand-edited file
            // has one. The first one wins; the duplicate is dropped.
            None => {}
            Some(reason) => stale.push(StaleGroup {
                identity,
                reason,
                entries,
                verdicts,
            }),
        }
    }
    let (entries, verdicts) = live.unwrap_or_default();
    Ok(Parsed {
        version: file.version,
        entries,
        verdicts,
        stale,
    })
}

/// The directory and file name of `path`, or [`AutotuneError::InvalidPath`].
fn split_path(path: &Path) -> Result<(&Path, &std::ffi::OsStr), AutotuneError> {
    let Some(name) = path.file_name() else {
        return Err(AutotuneError::InvalidPath {
            path: path.to_owned(),
        });
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    Ok((dir, name))
}

/// Takes the save lock of `path` (in `dir`): an exclusive advisory lock (`flock`) on
/// the sibling file `.{name}.lock`, created if missing and never removed (removing it
/// would let two savers lock two different files). Held until the returned file is
/// dropped; a process that dies holding it releases it. Waits at most
/// [`SAVE_LOCK_TIMEOUT`]. Where the file system has no locks, the save goes on unlocked.
fn lock_for_save(path: &Path, dir: &Path) -> Result<File, AutotuneError> {
    let (_, name) = split_path(path)?;
    let mut lock_name = std::ffi::OsString::from(".");
    lock_name.push(name);
    lock_name.push(".lock");
    let lock = dir.join(lock_name);
    let io_err = |action, source| AutotuneError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock)
        .map_err(|e| io_err("create the save lock next to", e))?;
    let started = Instant::now();
    loop {
        match file_lock::try_lock_exclusive(&file) {
            Ok(true) => return Ok(file),
            Ok(false) => {}
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                tracing::debug!(lock = %lock.display(), "no file locks here; saving unlocked");
                return Ok(file);
            }
            Err(e) => return Err(io_err("lock", e)),
        }
        let waited = started.elapsed();
        if waited >= SAVE_LOCK_TIMEOUT {
            return Err(AutotuneError::Busy {
                path: path.to_owned(),
                lock,
                waited,
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// An exclusive advisory lock on a whole file: BSD `flock`, which the OS releases when
/// the file is closed or its process dies. (`std::fs::File::try_lock` does the same
/// from Rust 1.89, above this crate's `rust-version`.)
#[cfg(unix)]
mod file_lock {
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;
    use std::os::raw::c_int;

    extern "C" {
        fn flock(fd: c_int, operation: c_int) -> c_int;
    }

    /// `LOCK_EX` and `LOCK_NB`: the same values on Linux, the BSDs and macOS.
    const LOCK_EX: c_int = 2;
    const LOCK_NB: c_int = 4;

    /// Takes the lock without waiting: `Ok(false)` when another open file holds it.
    pub(super) fn try_lock_exclusive(file: &File) -> io::Result<bool> {
        loop {
            // SAFETY: `flock` reads two integers and touches no memory of this process;
            // the descriptor is `file`'s, open for the whole call (borrowed).
            let rc = unsafe { flock(file.as_raw_fd(), LOCK_EX | LOCK_NB) };
            if rc == 0 {
                return Ok(true);
            }
            let error = io::Error::last_os_error();
            match error.kind() {
                io::ErrorKind::WouldBlock => return Ok(false),
                io::ErrorKind::Interrupted => continue,
                _ => return Err(error),
            }
        }
    }
}

/// No advisory file locks here: saves go on unlocked (the merge still keeps what was
/// on disk when the save read it).
#[cfg(not(unix))]
mod file_lock {
    use std::fs::File;
    use std::io;

    pub(super) fn try_lock_exclusive(_file: &File) -> io::Result<bool> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

/// What the file at `path` holds, for a save to merge with: `None` when there is none,
/// or when it cannot be used and may be replaced (corrupt, truncated, oversized, another
/// schema or an older version: logged). An error where replacing it would lose data: a
/// newer schema version, a file that cannot be read, something other than a file.
fn read_for_merge(path: &Path, identity: &DeviceIdentity) -> Result<Option<Parsed>, AutotuneError> {
    let parsed = read_capped(path).and_then(|bytes| match bytes {
        None => Ok(None),
        Some(bytes) => parse(path, &bytes, identity).map(Some),
    });
    match parsed {
        Ok(parsed) => Ok(parsed),
        Err(error @ (AutotuneError::Io { .. } | AutotuneError::NotAFile { .. })) => Err(error),
        Err(AutotuneError::ForeignSchema {
            path,
            found_schema,
            found_version,
        }) if newer_version(&found_schema, &found_version).is_some() => {
            Err(AutotuneError::NewerSchema {
                path,
                found_version: newer_version(&found_schema, &found_version).unwrap_or(u64::MAX),
            })
        }
        Err(error) => {
            tracing::warn!(%error, "replacing the unusable autotune file");
            Ok(None)
        }
    }
}

/// The version of a file of this schema newer than [`SCHEMA_VERSION`], from the fields a
/// [`AutotuneError::ForeignSchema`] shows (JSON texts).
fn newer_version(found_schema: &str, found_version: &str) -> Option<u64> {
    let ours = serde_json::Value::from(SCHEMA_NAME).to_string();
    let version: u64 = found_version.parse().ok()?;
    (found_schema == ours && version > u64::from(SCHEMA_VERSION)).then_some(version)
}

/// Distinguishes the temporary files of concurrent saves within one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` so that `path` is always either its old content or all of
/// `bytes`: temp file in the same directory, fsync, rename over, fsync the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), AutotuneError> {
    let (dir, name) = split_path(path)?;
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".tmp-{}-{n}", std::process::id()));
    let temp = dir.join(temp_name);
    let io_err = |action, at: &Path, source| AutotuneError::Io {
        action,
        path: at.to_owned(),
        source,
    };

    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)
        .map_err(|e| io_err("create a temporary file for", &temp, e))
        .and_then(|mut file| {
            file.write_all(bytes)
                .map_err(|e| io_err("write", &temp, e))?;
            file.sync_all().map_err(|e| io_err("fsync", &temp, e))
        })
        .and_then(|()| fs::rename(&temp, path).map_err(|e| io_err("replace", path, e)));
    if let Err(error) = written {
        // Best effort: the temp file may not exist (creation failed); either way the
        // target was not touched.
        let _ = fs::remove_file(&temp);
        return Err(error);
    }
    sync_dir(dir).map_err(|e| io_err("fsync the directory of", path, e))?;
    sweep_orphaned_temps(dir, name);
    Ok(())
}

/// Removes temporary files that saves of `name` in `dir` left behind when their process
/// was killed mid-save (`.{name}.tmp-{pid}-{n}` of a pid that no longer runs). Best
/// effort and Linux only (it asks `/proc` whether the pid lives); a temp file of a live
/// process, this one included, is never touched, so concurrent saves are safe.
fn sweep_orphaned_temps(dir: &Path, name: &std::ffi::OsStr) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        let Some(rest) = file_name.strip_prefix(&prefix) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Makes a rename in `dir` durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Directories cannot be opened for fsync here; the rename is as durable as the
/// platform makes it.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}
