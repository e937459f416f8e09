//! Warren's on-disk store. It knows no AMQP: a queue hands it opaque records with ids, gets
//! back a [`Location`], and asks for durability through [`MessageLog::prepare_sync`]. The
//! broker's durable definitions go to a [`DefinitionsLog`]. Every byte of I/O goes through
//! the swappable [`Io`] layer so tests can inject faults and crashes ([`FaultyIo`]).
//!
//! The file format, the segment lifecycle, group commit, recovery and the fsync-failure policy
//! are described in docs/storage.md; the byte layout lives in [`mod@format`].

mod dedup_log;
mod definitions;
mod faulty_io;
mod file_log;
pub mod format;
#[doc(hidden)]
pub mod fuzz_support;
mod io;
mod lock;
mod memory_log;
mod recovery;
mod segment;
mod sync_job;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use dedup_log::{DedupLog, DedupRecord, DEDUP_FILE_BYTES_MAX, DEDUP_KEY_BYTES_MAX};
pub use definitions::{DefinitionsLog, DEFINITIONS_FILE_BYTES_MAX};
pub use faulty_io::{CrashTail, Fault, FaultyIo};
pub use file_log::{ACK_BUFFER_ENTRIES_MAX, WRITE_BUFFER_BYTES_MAX};
pub use format::{RecordDefect, RECORD_BYTES_MAX};
pub use io::{FileIo, Io, OpenMode, RealIo};
pub use lock::{DataDirLock, LockError, LOCK_FILE};
pub use memory_log::memory_log;
pub use recovery::SEGMENT_FILE_BYTES_MAX;
pub use sync_job::SyncJob;

/// Default size at which a segment file is closed and the next one started. A record larger
/// than this gets a segment of its own.
pub const SEGMENT_BYTES_MAX: u32 = 8 * 1024 * 1024;
/// The smallest `segment_bytes_max` accepted (tests use small segments to roll often).
pub const SEGMENT_BYTES_MAX_FLOOR: u32 = 256;
/// The largest `segment_bytes_max` accepted: offsets are u32 and a record may follow a full
/// segment's worth of bytes.
pub const SEGMENT_BYTES_MAX_CEILING: u32 = 1024 * 1024 * 1024;

/// Where a record lives. Small and `Copy`: the queue keeps one per message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    /// The `N` of `msgs.<N>`.
    pub segment: u32,
    /// Where the record's frame starts in the segment.
    pub offset: u32,
    /// The record's payload bytes.
    pub len: u32,
}

/// Whether a sync job fsyncs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// fsync before the job reports success, so confirms mean "on disk" (the default).
    #[default]
    Always,
    /// Jobs only hand data to the OS (`--sync=none`): a power loss can lose confirmed records.
    None,
}

/// How a file log is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogOptions {
    /// Size at which the segment being written is closed (`SEGMENT_BYTES_MAX` by default).
    pub segment_bytes_max: u32,
    pub sync_mode: SyncMode,
}

impl Default for LogOptions {
    fn default() -> LogOptions {
        LogOptions {
            segment_bytes_max: SEGMENT_BYTES_MAX,
            sync_mode: SyncMode::Always,
        }
    }
}

/// Errors the store reports. Any error from `append`, `ack`, `prepare_sync` or
/// [`SyncJob::run`] means "not durable": never confirm on one.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An earlier write or fsync failed, so what the files hold is unknown: the log refuses
    /// every change until it is reopened (and recovery has read back what really is there).
    #[error("the log is poisoned by an earlier write or fsync failure; reopen it")]
    Poisoned,
    #[error("a record of {len} bytes is over the limit of {max} bytes")]
    RecordTooLarge { len: usize, max: u32 },
    /// No unacked record starts at this location (never appended, or already acked).
    #[error("no unacked record at {0:?}")]
    NotFound(Location),
    #[error("the record at offset {offset} of {path} is damaged: {defect:?}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        defect: RecordDefect,
    },
    #[error("invalid options: {0}")]
    InvalidOptions(&'static str),
    #[error("segment numbers are exhausted in {0}")]
    SegmentNumbersExhausted(PathBuf),
}

impl StoreError {
    /// Adapts an `std::io::Error` on `path`.
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
        move |source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// An unacked record found when a log was opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    pub id: u64,
    pub at: Location,
    pub record: bytes::Bytes,
}

/// One queue's message log. Owned by one task (it is `Send`, not `Sync`); only the
/// [`SyncJob`]s it hands out run elsewhere.
pub trait MessageLog: Send + 'static {
    /// Appends a record. It reaches the OS by the next `prepare_sync` at the latest and is
    /// durable once the job that call returns has run successfully.
    fn append(&mut self, id: u64, record: &[u8]) -> Result<Location, StoreError>;
    /// Reads back an unacked record, verifying its checksum.
    fn read(&mut self, at: Location) -> Result<bytes::Bytes, StoreError>;
    /// Settles a record (`id` as given to `append`); reclaims a segment once it is fully acked.
    fn ack(&mut self, id: u64, at: Location) -> Result<(), StoreError>;
    /// Writes everything appended and acked so far to the OS and returns the job that makes
    /// it durable, to run on a blocking thread while appends go on (group commit). None when
    /// there is nothing to make durable that a job has not already taken.
    fn prepare_sync(&mut self) -> Result<Option<SyncJob>, StoreError>;
    /// Bytes the log's files take, counting writes still buffered in the process.
    fn disk_bytes(&self) -> u64;
    /// Deletes the log's files and its directory (the queue was deleted).
    fn destroy(self: Box<Self>) -> Result<(), StoreError>;
}

/// Opens (or creates) the file log in `dir` with default options; see [`open_file_log_with`].
pub fn open_file_log(
    dir: &Path,
    io: Arc<dyn Io>,
) -> Result<(Box<dyn MessageLog>, Vec<Recovered>), StoreError> {
    open_file_log_with(dir, io, LogOptions::default())
}

/// Opens (or creates) the file log in `dir`, handing its unacked records to `visit` one at
/// a time as segments are read (id order for logs whose ids grow, as a queue's do), so a
/// deep log is recovered without holding all of it in memory.
pub fn open_file_log_visit(
    dir: &Path,
    io: Arc<dyn Io>,
    options: LogOptions,
    visit: &mut dyn FnMut(Recovered),
) -> Result<Box<dyn MessageLog>, StoreError> {
    Ok(Box::new(recovery::open_visit(dir, io, options, visit)?))
}

/// Opens (or creates) the file log in `dir`, returning its unacked records in id order.
/// Damaged files never stop it: see docs/storage.md, "Recovery".
pub fn open_file_log_with(
    dir: &Path,
    io: Arc<dyn Io>,
    options: LogOptions,
) -> Result<(Box<dyn MessageLog>, Vec<Recovered>), StoreError> {
    let (log, recovered) = recovery::open(dir, io, options)?;
    Ok((Box::new(log), recovered))
}
