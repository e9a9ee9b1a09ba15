//! The autotune file's identity (schema name and version), the limits a load and a
//! save keep to, and what can go wrong with the file ([`AutotuneError`]).

use std::io;
use std::path::PathBuf;
use std::time::Duration;

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

/// The largest file [`AutotuneStore::load`] reads, and the largest
/// [`AutotuneStore::save`] writes: 16 MiB.
pub const MAX_STORE_FILE_BYTES: u64 = 16 * 1024 * 1024;

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
