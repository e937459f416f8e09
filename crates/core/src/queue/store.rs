//! A queue's side of durability: its message log, group commit, and paging.
//!
//! - Persistent messages in a durable queue are appended to the queue's log; their publisher
//!   confirms wait until a sync job covering them has run (fsync by default).
//! - Group commit: after each batch of commands the actor calls `start_sync`; at most one job
//!   runs at a time (on a blocking thread), and everything appended while it runs is covered by
//!   the next one. The delay a confirm sees is bounded by two fsyncs.
//! - Paging: beyond `RESIDENT_BYTES_MAX` (message footprints, properties included) /
//!   `RESIDENT_MESSAGES_MAX` of ready messages in memory, new messages keep only their location in the log (transient ones are written to
//!   the log for that, with no sync), so memory stays flat however deep the queue is.
//! - A write or sync failure is logged and every confirm it touches becomes a nack.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::error;
use warren_store::{Io, Location, LogOptions, MessageLog, StoreError, SyncMode};

use super::{QueueCommand, QueueHandle};
use crate::confirm::ConfirmShare;
use crate::durable::record;
use crate::message::{Message, MessageRef};

/// Memory (`Message::footprint`: body, header, decoded properties) of ready messages a queue
/// keeps before paging new ones out. With
/// ~64 bytes of bookkeeping per paged-out message, a queue of 1,000,000 × 1 KiB messages
/// holds about 32 MiB of bodies + 64 MiB of entries. (Flow control keeps queues with
/// consumers far below this; deep queues are ones being filled without consumers.)
pub const RESIDENT_BYTES_MAX: u64 = 32 * 1024 * 1024;
/// Ready messages a queue keeps in memory before paging new ones out (per-message overhead
/// matters for small messages: ~700 bytes each when resident, mostly parsed properties).
pub const RESIDENT_MESSAGES_MAX: usize = 50_000;

/// Where and how the broker keeps its files.
#[derive(Clone)]
pub struct StoreContext {
    pub data_dir: PathBuf,
    pub io: Arc<dyn Io>,
    pub sync_mode: SyncMode,
}

impl StoreContext {
    pub fn log_options(&self) -> LogOptions {
        LogOptions {
            sync_mode: self.sync_mode,
            ..LogOptions::default()
        }
    }

    /// The directory of a durable queue's log: a stable hash of vhost and name (names may be
    /// 255 bytes of anything, too long or strange for a file name).
    pub fn queue_dir(&self, vhost: &str, queue: &str) -> PathBuf {
        self.data_dir
            .join("queues")
            .join(format!("{:016x}", Self::queue_key(vhost, queue)))
    }

    /// The key naming a durable queue's log directory (and its moves' journals).
    pub fn queue_key(vhost: &str, queue: &str) -> u64 {
        fnv1a(vhost, queue)
    }

    /// The cache log of a durable deduplication exchange (hashed as `queue_dir`).
    pub fn dedup_file(&self, vhost: &str, exchange: &str) -> PathBuf {
        self.data_dir
            .join("dedup")
            .join(format!("{:016x}.dedup", fnv1a(vhost, exchange)))
    }

    /// Where non-durable queues page out; emptied at every start.
    pub fn transient_dir(&self) -> PathBuf {
        self.data_dir.join("transient")
    }
}

pub(crate) fn fnv1a(vhost: &str, queue: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in vhost.bytes().chain([0u8]).chain(queue.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

pub struct QueueStore {
    log: Box<dyn MessageLog>,
    dir: PathBuf,
    /// How to reopen the log after a failure poisoned it.
    io: Arc<dyn Io>,
    options: LogOptions,
    /// True for a durable queue's log: persistent messages are synced before confirms.
    pub durable: bool,
    syncing: bool,
    /// Changes not yet handed to a sync job.
    dirty: bool,
    /// Confirms waiting for the next job.
    waiting: Vec<ConfirmShare>,
    /// Confirms covered by the running job.
    in_flight: Vec<ConfirmShare>,
}

impl QueueStore {
    pub fn new(
        log: Box<dyn MessageLog>,
        dir: &Path,
        durable: bool,
        ctx: &StoreContext,
    ) -> QueueStore {
        QueueStore {
            log,
            dir: dir.to_path_buf(),
            io: ctx.io.clone(),
            options: ctx.log_options(),
            durable,
            syncing: false,
            dirty: false,
            waiting: Vec::new(),
            in_flight: Vec::new(),
        }
    }

    /// Logs a failure. A write or sync failure poisons the log (its files' state is unknown);
    /// reopening it reads back what really is on disk and lets the queue go on. Messages
    /// the queue holds keep their locations: reopening never rewrites old segments.
    fn report(&mut self, what: &str, e: &StoreError) {
        error!(dir = %self.dir.display(), error = %e, "message store: {what} failed");
        if matches!(e, StoreError::NotFound(_) | StoreError::Corrupt { .. }) {
            return;
        }
        match warren_store::open_file_log_with(&self.dir, self.io.clone(), self.options) {
            Ok((log, _)) => {
                self.log = log;
                self.dirty = false;
            }
            Err(e) => {
                error!(dir = %self.dir.display(), error = %e, "message store: cannot reopen the log")
            }
        }
    }

    /// Appends a message; its confirm (if any) waits for the next sync.
    pub fn append(
        &mut self,
        id: u64,
        message: &Message,
        expires_at_ms: Option<u64>,
        confirm: Option<ConfirmShare>,
    ) -> Option<Location> {
        let origin = confirm.as_ref().and_then(ConfirmShare::origin);
        let record = record::encode_with_origin(message, expires_at_ms, origin);
        match self.log.append(id, &record) {
            Ok(at) => {
                self.dirty = true;
                self.waiting.extend(confirm);
                Some(at)
            }
            Err(e) => {
                self.report("append", &e);
                if let Some(c) = confirm {
                    c.fail();
                }
                None
            }
        }
    }

    /// Reads a paged-out message back.
    pub fn load(&mut self, at: Location) -> Option<MessageRef> {
        let bytes = match self.log.read(at) {
            Ok(b) => b,
            Err(e) => {
                self.report("read", &e);
                return None;
            }
        };
        match record::decode(bytes) {
            Ok((message, _)) => Some(Arc::new(message)),
            Err(e) => {
                error!(dir = %self.dir.display(), error = ?e, "message store: undecodable record");
                None
            }
        }
    }

    /// Confirms `share` once everything written so far is on disk (at once when the queue
    /// is not durable): how a move knows its acks on the source are durable.
    pub fn after_sync(&mut self, share: ConfirmShare) {
        if self.durable {
            self.dirty = true;
            self.waiting.push(share);
        }
    }

    /// Recovery only (no actor yet): a moved message copied into this log, and its origin.
    pub fn append_recovered(
        &mut self,
        id: u64,
        message: &Message,
        expires_at_ms: Option<u64>,
        origin: record::MoveOrigin,
    ) -> Result<Location, StoreError> {
        let record = record::encode_with_origin(message, expires_at_ms, Some(origin));
        self.log.append(id, &record)
    }

    /// Recovery only: writes and syncs what was appended or acked, on this thread.
    pub fn sync_blocking(&mut self) -> Result<(), StoreError> {
        self.dirty = false;
        match self.log.prepare_sync()? {
            Some(job) => job.run(),
            None => Ok(()),
        }
    }

    pub fn ack(&mut self, id: u64, at: Location) {
        match self.log.ack(id, at) {
            Ok(()) => self.dirty = true,
            Err(e) => self.report("ack", &e),
        }
    }

    /// Starts a sync job if there is something to sync and none is running. The job reports
    /// back to the queue with `QueueCommand::Synced`.
    pub fn start_sync(&mut self, queue: &QueueHandle) {
        if self.syncing || !self.dirty {
            return;
        }
        self.dirty = false;
        match self.log.prepare_sync() {
            Ok(Some(job)) => {
                self.syncing = true;
                self.in_flight = std::mem::take(&mut self.waiting);
                let queue = queue.clone();
                tokio::task::spawn_blocking(move || {
                    let ok = job.run().map_err(|e| e.to_string());
                    queue.send_now(QueueCommand::Synced(ok));
                });
            }
            Ok(None) => {
                // Nothing needed a sync: whatever waited is safe.
                self.waiting.clear();
            }
            Err(e) => {
                for c in self.waiting.drain(..) {
                    c.fail();
                }
                self.report("sync", &e);
            }
        }
    }

    /// A sync job finished: its confirms go out (acks, or nacks on failure).
    pub fn synced(&mut self, result: Result<(), String>, queue: &QueueHandle) {
        self.syncing = false;
        match result {
            Ok(()) => self.in_flight.clear(),
            Err(e) => {
                for c in self.in_flight.drain(..) {
                    c.fail();
                }
                // Everything appended since is suspect too: nack it and start over.
                for c in self.waiting.drain(..) {
                    c.fail();
                }
                self.report(
                    "fsync",
                    &StoreError::Io {
                        path: self.dir.clone(),
                        source: std::io::Error::other(e),
                    },
                );
            }
        }
        self.start_sync(queue);
    }

    /// Deletes the log (the queue was deleted).
    pub fn destroy(self) {
        let dir = self.dir.clone();
        if let Err(e) = self.log.destroy() {
            error!(dir = %dir.display(), error = %e, "message store: cannot delete a queue's log");
        }
    }
}
