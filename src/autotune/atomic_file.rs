//! The file-system side of the autotune file: capped reads, the advisory save lock,
//! atomic replacement (temporary file, fsync, rename, fsync of the directory) and the
//! sweep of temporary files that killed saves left behind. Knows nothing of the
//! file's contents.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::format::{AutotuneError, MAX_STORE_FILE_BYTES, SAVE_LOCK_TIMEOUT};

/// The file's bytes, `None` when there is no file; never more than the cap.
pub(super) fn read_capped(path: &Path) -> Result<Option<Vec<u8>>, AutotuneError> {
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

/// The directory and file name of `path`, or [`AutotuneError::InvalidPath`].
pub(super) fn split_path(path: &Path) -> Result<(&Path, &std::ffi::OsStr), AutotuneError> {
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
pub(super) fn lock_for_save(path: &Path, dir: &Path) -> Result<File, AutotuneError> {
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

/// Distinguishes the temporary files of concurrent saves within one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` so that `path` is always either its old content or all of
/// `bytes`: temp file in the same directory, fsync, rename over, fsync the directory.
pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), AutotuneError> {
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
