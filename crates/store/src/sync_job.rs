//! `SyncJob`: the fsyncs that make appends and acks durable, packaged to run on a blocking
//! thread while the log goes on appending (group commit). It owns the queue of files handed
//! off for fsync (`Pending`, shared with the log) and the log's poison flag; it never
//! touches the log's buffers.
//!
//! Jobs are cumulative: a job fsyncs everything handed off by *any* `prepare_sync` up to the
//! moment it runs, not only its own batch. So a job that was dropped unrun, or that runs after
//! a later one, never leaves a hole (a directory entry synced by nobody). Jobs of one log run
//! one at a time, and a job finding the log poisoned fails without syncing: after a failed
//! fsync Linux may drop the dirty pages and report success on the next fsync, so no later job
//! may claim anything until the log is reopened.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::io::{FileIo, Io};
use crate::{StoreError, SyncMode};

/// Written to the OS, not yet fsynced.
#[derive(Default)]
pub(crate) struct Pending {
    pub files: BTreeMap<PathBuf, Arc<dyn FileIo>>,
    /// A file was created or removed in the log's directory.
    pub dir: bool,
}

/// State shared between a log and the jobs it handed out.
#[derive(Default)]
pub(crate) struct SyncShared {
    poisoned: AtomicBool,
    /// Held while a job runs, so jobs never race each other's fsync errors.
    running: Mutex<()>,
    pending: Mutex<Pending>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SyncShared {
    pub fn poison(&self) {
        self.poisoned.store(true, Ordering::SeqCst);
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    /// Hands files (and a directory change) off to the next job to run.
    pub fn hand_off(&self, files: BTreeMap<PathBuf, Arc<dyn FileIo>>, dir: bool) {
        let mut pending = lock(&self.pending);
        pending.files.extend(files);
        pending.dir |= dir;
    }

    /// Something was handed off and no job has taken it yet.
    pub fn has_pending(&self) -> bool {
        let pending = lock(&self.pending);
        !pending.files.is_empty() || pending.dir
    }

    /// A deleted file needs no fsync.
    pub fn forget(&self, path: &Path) {
        lock(&self.pending).files.remove(path);
    }
}

/// Makes everything handed off so far durable. `Send + 'static`: run it with
/// `spawn_blocking`.
#[must_use = "the records are not durable until a job has run"]
pub struct SyncJob {
    dir: PathBuf,
    io: Arc<dyn Io>,
    shared: Arc<SyncShared>,
    mode: SyncMode,
}

impl std::fmt::Debug for SyncJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncJob")
            .field("dir", &self.dir)
            .field("mode", &self.mode)
            .finish()
    }
}

impl SyncJob {
    pub(crate) fn new(
        dir: PathBuf,
        io: Arc<dyn Io>,
        shared: Arc<SyncShared>,
        mode: SyncMode,
    ) -> SyncJob {
        SyncJob {
            dir,
            io,
            shared,
            mode,
        }
    }

    /// Fsyncs the files handed off so far, then their directory. Ok means every record
    /// appended and every ack made before the `prepare_sync` that returned this job is
    /// durable (and whatever later calls handed off before the job started).
    pub fn run(self) -> Result<(), StoreError> {
        let _running = lock(&self.shared.running);
        if self.shared.is_poisoned() {
            return Err(StoreError::Poisoned);
        }
        let pending = std::mem::take(&mut *lock(&self.shared.pending));
        if self.mode == SyncMode::None {
            return Ok(());
        }
        for (path, file) in &pending.files {
            file.sync().map_err(|error| self.fail(path, error))?;
        }
        if pending.dir {
            let dir = &self.dir;
            self.io
                .sync_dir(dir)
                .map_err(|error| self.fail(dir, error))?;
        }
        Ok(())
    }

    fn fail(&self, path: &Path, source: std::io::Error) -> StoreError {
        self.shared.poison();
        tracing::error!(
            file = %path.display(),
            error = %source,
            "fsync failed: the log is poisoned until it is reopened"
        );
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
