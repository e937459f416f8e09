//! `DataDirLock`: one broker per data directory. It owns the lock file `<data dir>/.lock`:
//! an exclusive `flock` held for as long as the value lives (the kernel releases it when the
//! process dies, even by SIGKILL, so a crash never leaves a stale lock), with the holder's
//! pid written inside so that a second broker can say who holds it.
//!
//! Without it two brokers on one directory each rewrite the definitions log and append to
//! the same segments, and whatever one of them confirmed may be gone after a restart.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = ".lock";
/// Bytes of the lock file read for the holder's pid (a pid and a newline).
const PID_TEXT_BYTES_MAX: u64 = 32;

/// Why the data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("data directory {dir} is in use by another broker ({})", holder_text(*.holder))]
    Held { dir: PathBuf, holder: Option<u32> },
    #[error("cannot lock data directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn holder_text(holder: Option<u32>) -> String {
    match holder {
        Some(pid) => format!("pid {pid}"),
        None => "pid unknown".to_owned(),
    }
}

/// An exclusive lock on a data directory, released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Locks `dir` (which must exist) for this process, or says which pid holds it.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, LockError> {
        let path = dir.join(LOCK_FILE);
        let io_error = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        // Never truncate before holding the lock: that would erase the holder's pid.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    holder: read_pid(&mut file),
                })
            }
            Err(TryLockError::Error(e)) => return Err(io_error(e)),
        }
        // The pid only helps the message of a broker refused; the lock holds without it, so a
        // full disk (where even these bytes may not fit) must not stop the start.
        let pid = format!("{}\n", std::process::id());
        let written = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(pid.as_bytes()));
        if let Err(error) = written {
            tracing::warn!(file = %path.display(), %error, "cannot write the pid into the lock file");
        }
        Ok(DataDirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The pid the holder wrote (none if it has not written it yet).
fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.take(PID_TEXT_BYTES_MAX)
        .read_to_string(&mut text)
        .ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// flock locks belong to the open file description: a second open in the same process
    /// conflicts like a second process would.
    #[test]
    fn a_second_lock_names_the_holder_and_the_lock_is_released_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DataDirLock::acquire(dir.path()).expect("first lock");
        match DataDirLock::acquire(dir.path()) {
            Err(LockError::Held { holder, .. }) => assert_eq!(holder, Some(std::process::id())),
            other => panic!("second lock: {other:?}"),
        }
        drop(first);
        DataDirLock::acquire(dir.path()).expect("lock after release");
    }
}
