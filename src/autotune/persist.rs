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
//! directory, fsyncs it, renames it over the target and fsyncs the directory. A load
//! never panics: a missing file is an empty store; an unreadable, oversized, truncated,
//! corrupt or foreign-schema one is an [`AutotuneError`], or a logged fresh start under
//! [`LoadMode::FreshOnError`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::policy::{SpeculationObservation, SpeculationVerdict};

use super::key::{AutotuneKey, AutotuneRecord, DeviceIdentity, VariantPairKey};
use super::store::{
    AutotuneStore, KernelVerdict, StaleGroup, StaleReason, StoredVerdict, VerdictReason,
};

/// The `schema` field every autotune file carries.
pub const SCHEMA_NAME: &str = "photofinish-autotune";

/// The layout version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// The largest file [`AutotuneStore::load`] reads, and the largest
/// [`AutotuneStore::save`] writes: 16 MiB.
pub const MAX_STORE_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// How many stale groups a save keeps (the newest first); older ones are dropped.
pub const MAX_STALE_GROUPS: usize = 8;

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

fn wire_verdict(pair: &VariantPairKey, v: &KernelVerdict) -> WireVerdict {
    let o = v.observation;
    WireVerdict {
        pair: pair.clone(),
        verdict: match v.verdict {
            SpeculationVerdict::Adopt => WireVerdictKind::Adopt,
            SpeculationVerdict::Reject => WireVerdictKind::Reject,
            SpeculationVerdict::KeepRacing => WireVerdictKind::KeepRacing,
        },
        reason: match v.reason {
            VerdictReason::Measured => WireReason::Measured,
            VerdictReason::OutputMismatch => WireReason::OutputMismatch,
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

fn kernel_verdict(w: WireVerdict) -> (VariantPairKey, KernelVerdict) {
    let verdict = match w.verdict {
        WireVerdictKind::Adopt => SpeculationVerdict::Adopt,
        WireVerdictKind::Reject => SpeculationVerdict::Reject,
        WireVerdictKind::KeepRacing => SpeculationVerdict::KeepRacing,
    };
    let reason = match w.reason {
        WireReason::Measured => VerdictReason::Measured,
        WireReason::OutputMismatch => VerdictReason::OutputMismatch,
    };
    let o = w.observation;
    let observation = SpeculationObservation {
        baseline_dispatches: o.baseline_dispatches,
        baseline_mean_ns: o.baseline_mean_ns,
        speculative_dispatches: o.speculative_dispatches,
        speculative_mean_ns: o.speculative_mean_ns,
        side_compile_cost_ns: o.side_compile_cost_ns,
    };
    let v = KernelVerdict {
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
    /// Publishes a snapshot and saves it, with the stale groups, to `path`, atomically:
    /// the file at `path` is either the old one or the complete new one, never a mix.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), AutotuneError> {
        let path = path.as_ref();
        let snapshot = self.publish();
        let mut entries: Vec<_> = snapshot.entries.iter().collect();
        entries.sort_by(|a, b| a.0.cmp(b.0));
        let mut verdicts: Vec<(&VariantPairKey, &StoredVerdict)> =
            snapshot.verdicts.iter().collect();
        verdicts.sort_by(|a, b| a.0.cmp(b.0));
        let file = WireFile {
            schema: SCHEMA_NAME.to_owned(),
            version: SCHEMA_VERSION,
            device_uuid: self.identity().uuid_hex(),
            driver_version: self.identity().driver_version.clone(),
            entries: entries
                .into_iter()
                .map(|(key, stored)| WireEntry {
                    key: key.clone(),
                    record: (*stored.record).clone(),
                })
                .collect(),
            verdicts: verdicts
                .into_iter()
                .map(|(pair, stored)| wire_verdict(pair, &stored.verdict))
                .collect(),
            stale: self
                .stale()
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
                let report = report(
                    LoadOutcome::Loaded,
                    parsed.entries.len(),
                    parsed.verdicts.len(),
                    &parsed.stale,
                );
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

struct Parsed {
    entries: Vec<(AutotuneKey, AutotuneRecord)>,
    verdicts: Vec<(VariantPairKey, KernelVerdict)>,
    stale: Vec<StaleGroup>,
}

fn parse(path: &Path, bytes: &[u8], current: &DeviceIdentity) -> Result<Parsed, AutotuneError> {
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
        || version.and_then(|v| v.as_u64()) != Some(u64::from(SCHEMA_VERSION))
    {
        let shown = |v: Option<&serde_json::Value>| v.map_or("none".into(), |v| v.to_string());
        return Err(AutotuneError::ForeignSchema {
            path: path.to_owned(),
            found_schema: shown(schema),
            found_version: shown(version),
        });
    }
    let file: WireFile = serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))?;
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
        let verdicts: Vec<_> = group.verdicts.into_iter().map(kernel_verdict).collect();
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
        entries,
        verdicts,
        stale,
    })
}

/// Distinguishes the temporary files of concurrent saves within one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` so that `path` is always either its old content or all of
/// `bytes`: temp file in the same directory, fsync, rename over, fsync the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), AutotuneError> {
    let Some(name) = path.file_name() else {
        return Err(AutotuneError::InvalidPath {
            path: path.to_owned(),
        });
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
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
