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
use std::path::Path;

use super::atomic_file::{lock_for_save, read_capped, split_path, write_atomically};
use super::format::{AutotuneError, MAX_STORE_FILE_BYTES, SCHEMA_NAME, SCHEMA_VERSION};
use super::key::{AutotuneKey, AutotuneRecord, DeviceIdentity, VariantPairKey};
use super::store::{AutotuneStore, StaleGroup, StaleReason, Trust, VerdictRecord};
use super::wire::{verdict_record, wire_group, wire_verdict, WireEntry, WireFile, WireGroup};

/// Older layout versions this build reads and migrates (see [`SCHEMA_VERSION`]).
pub const MIGRATED_VERSIONS: &[u32] = &[1];

/// True for a version this build reads.
fn readable(version: u64) -> bool {
    version == u64::from(SCHEMA_VERSION)
        || MIGRATED_VERSIONS.iter().any(|&v| u64::from(v) == version)
}

/// How many stale groups a save keeps (the newest first); older ones are dropped.
pub const MAX_STALE_GROUPS: usize = 8;

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
