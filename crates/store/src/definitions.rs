//! `DefinitionsLog`: the broker's durable definitions (vhosts, exchanges, queues, bindings,
//! encoded by the caller as opaque records) in one append-only file, replaced whole by
//! `compact`. It owns that file and its temporary sibling `<file>.tmp`; it knows nothing of
//! what the records mean. Records use the segment record frame, with the record's index as id.
//!
//! Every append is fsynced before it returns (definitions change rarely and a declare-ok must
//! mean "survives a crash"). A failed write or fsync poisons the log; the next change reopens
//! it (reads back what the file holds and rewrites it as a new file, as `compact` does) and
//! goes on if that works, so a disk that was full and has space again needs no restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::format::{
    encode_file_header, encode_record_header, scan_records, DEFINITIONS_MAGIC, FILE_HEADER_BYTES,
    RECORD_BYTES_MAX,
};
use crate::io::{FileIo, Io, OpenMode};
use crate::recovery::{drop_tail, load, Loaded};
use crate::StoreError;

/// A definitions file larger than this is not one the store wrote: it is moved aside.
pub const DEFINITIONS_FILE_BYTES_MAX: u64 = 1024 * 1024 * 1024;
/// Suffix of the file `compact` writes before renaming it over the log.
const TEMP_SUFFIX: &str = ".tmp";

/// The append-only definitions file.
pub struct DefinitionsLog {
    path: PathBuf,
    dir: PathBuf,
    io: Arc<dyn Io>,
    file: Arc<dyn FileIo>,
    /// Bytes in the file: where the next record goes.
    len: u64,
    /// The next record's index in the file (its frame id).
    next_index: u64,
    /// Records appended since open (group commit's sequence number): unlike the index it
    /// never goes back, not even when the file is rewritten.
    sequence: u64,
    poisoned: bool,
    /// The file header's magic (`DEFINITIONS_MAGIC`, or `DEDUP_MAGIC` for a `DedupLog`).
    magic: [u8; 8],
    /// A file larger than this is moved aside at open.
    file_bytes_max: u64,
}

impl std::fmt::Debug for DefinitionsLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DefinitionsLog")
            .field("path", &self.path)
            .field("len", &self.len)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let mut temp = path.as_os_str().to_owned();
    temp.push(TEMP_SUFFIX);
    PathBuf::from(temp)
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn check_len(record: &[u8]) -> Result<(), StoreError> {
    match record.len() > RECORD_BYTES_MAX as usize {
        true => Err(StoreError::RecordTooLarge {
            len: record.len(),
            max: RECORD_BYTES_MAX,
        }),
        false => Ok(()),
    }
}

fn encode_frame(out: &mut Vec<u8>, index: u64, record: &[u8]) {
    out.extend_from_slice(&encode_record_header(index, record));
    out.extend_from_slice(record);
}

/// Writes `records` to `<path>.tmp` and fsyncs it; on failure the temporary file is removed.
fn write_temp(
    io: &dyn Io,
    temp: &Path,
    magic: [u8; 8],
    records: &[Bytes],
) -> Result<(Arc<dyn FileIo>, u64), StoreError> {
    let mut buf = encode_file_header(magic).to_vec();
    for (index, record) in records.iter().enumerate() {
        encode_frame(&mut buf, index as u64, record);
    }
    let written = io.open(temp, OpenMode::CreateNew).and_then(|file| {
        file.write_at(0, &buf)?;
        file.sync()?;
        Ok(file)
    });
    match written {
        Ok(file) => Ok((file, buf.len() as u64)),
        Err(error) => {
            _ = io.remove_file(temp);
            Err(StoreError::io(temp)(error))
        }
    }
}

/// Removes what an interrupted `compact` left behind (the log itself is still whole).
fn remove_stale_temp(io: &dyn Io, temp: &Path) -> Result<(), StoreError> {
    match io.remove_file(temp) {
        Ok(()) => {
            tracing::warn!(file = %temp.display(), "unfinished compaction removed");
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(StoreError::io(temp)(error)),
    }
}

impl DefinitionsLog {
    /// Opens (or creates) the log at `path`, returning every valid record in order. A torn
    /// tail is dropped, damaged records are skipped and a file with a bad header is moved
    /// aside (and an empty log started), all logged.
    pub fn open(path: &Path, io: Arc<dyn Io>) -> Result<(DefinitionsLog, Vec<Bytes>), StoreError> {
        Self::open_with(path, io, DEFINITIONS_MAGIC, DEFINITIONS_FILE_BYTES_MAX)
    }

    /// `open` for another file of opaque records (the deduplication cache log).
    pub(crate) fn open_with(
        path: &Path,
        io: Arc<dyn Io>,
        magic: [u8; 8],
        file_bytes_max: u64,
    ) -> Result<(DefinitionsLog, Vec<Bytes>), StoreError> {
        let dir = parent_dir(path);
        io.create_dir_all(&dir).map_err(StoreError::io(&dir))?;
        let temp = temp_path(path);
        remove_stale_temp(&*io, &temp)?;
        let loaded = match io.open(path, OpenMode::Read) {
            Ok(_) => load(&*io, path, magic, file_bytes_max)?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Loaded::Removed,
            Err(error) => return Err(StoreError::io(path)(error)),
        };
        let (file, len, records) = match loaded {
            Loaded::Valid(buf, file) => {
                let (len, records) = read_records(&*file, path, buf);
                (file, len, records)
            }
            Loaded::Removed | Loaded::MovedAside => {
                let (file, len) = write_temp(&*io, &temp, magic, &[])?;
                io.rename(&temp, path).map_err(StoreError::io(path))?;
                io.sync_dir(&dir).map_err(StoreError::io(&dir))?;
                (file, len, Vec::new())
            }
        };
        let log = DefinitionsLog {
            path: path.to_path_buf(),
            dir,
            io,
            file,
            len,
            next_index: records.len() as u64,
            sequence: records.len() as u64,
            poisoned: false,
            magic,
            file_bytes_max,
        };
        Ok((log, records))
    }

    /// Appends a record and fsyncs it before returning.
    pub fn append(&mut self, record: &[u8]) -> Result<(), StoreError> {
        check_len(record)?;
        self.reopen_if_poisoned()?;
        let mut frame = Vec::new();
        encode_frame(&mut frame, self.next_index, record);
        let written = self
            .file
            .write_at(self.len, &frame)
            .and_then(|()| self.file.sync());
        if let Err(error) = written {
            return Err(self.poison(error));
        }
        self.len += frame.len() as u64;
        self.next_index += 1;
        self.sequence += 1;
        Ok(())
    }

    /// Appends a record without fsyncing it, for group commit: the caller later fsyncs the
    /// file from [`DefinitionsLog::unsynced`] (outside any lock it shares with other writers),
    /// which makes every record appended before that call durable. Returns the record's
    /// sequence number (records appended so far).
    pub fn append_unsynced(&mut self, record: &[u8]) -> Result<u64, StoreError> {
        check_len(record)?;
        self.reopen_if_poisoned()?;
        let mut frame = Vec::new();
        encode_frame(&mut frame, self.next_index, record);
        if let Err(error) = self.file.write_at(self.len, &frame) {
            return Err(self.poison(error));
        }
        self.len += frame.len() as u64;
        self.next_index += 1;
        self.sequence += 1;
        Ok(self.sequence)
    }

    /// The file whose fsync makes every record appended so far durable, and the sequence
    /// number that fsync covers.
    pub fn unsynced(&self) -> (Arc<dyn FileIo>, u64) {
        (self.file.clone(), self.sequence)
    }

    /// Sequence number of the last record appended (records found at open count too).
    pub fn appended(&self) -> u64 {
        self.sequence
    }

    /// Records in the file (since it was opened or last rewritten).
    pub fn records(&self) -> u64 {
        self.next_index
    }

    /// Whether a failure left the log poisoned (the next change tries to reopen it).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Reports that an fsync of [`DefinitionsLog::unsynced`]'s file failed: the log is
    /// poisoned (what the file holds is unknown) until reopened by the next change.
    pub fn sync_failed(&mut self, error: std::io::Error) -> StoreError {
        self.poison(error)
    }

    /// Atomically replaces the log with `records`: write `<file>.tmp`, fsync it, rename it
    /// over the log, fsync the directory. A crash at any point leaves the old or the new log.
    pub fn compact(&mut self, records: &[Bytes]) -> Result<(), StoreError> {
        records.iter().try_for_each(|record| check_len(record))?;
        self.reopen_if_poisoned()?;
        self.rewrite(records)
    }

    fn rewrite(&mut self, records: &[Bytes]) -> Result<(), StoreError> {
        let temp = temp_path(&self.path);
        let (file, len) = write_temp(&*self.io, &temp, self.magic, records)?;
        if let Err(error) = self.io.rename(&temp, &self.path) {
            _ = self.io.remove_file(&temp);
            return Err(StoreError::io(&self.path)(error));
        }
        // From here the directory may hold either file: only reopening can tell which.
        if let Err(error) = self.io.sync_dir(&self.dir) {
            return Err(self.poison(error));
        }
        self.file = file;
        self.len = len;
        self.next_index = records.len() as u64;
        Ok(())
    }

    /// Reopens a poisoned log: reads back the records the file holds (what the OS shows,
    /// which may include records whose fsync failed: never acknowledged, so they may come
    /// back or not) and rewrites them as a new file, fsynced, so that nothing appended later
    /// sits behind bytes a failed fsync left in doubt. While that fails (the disk is still
    /// full) the log stays poisoned and the change is refused.
    fn reopen_if_poisoned(&mut self) -> Result<(), StoreError> {
        if !self.poisoned {
            return Ok(());
        }
        let loaded = load(&*self.io, &self.path, self.magic, self.file_bytes_max)?;
        let Loaded::Valid(buf, file) = loaded else {
            tracing::error!(file = %self.path.display(), "cannot read the poisoned definitions log back");
            return Err(StoreError::Poisoned);
        };
        let (_, records) = read_records(&*file, &self.path, buf);
        self.rewrite(&records)?;
        self.poisoned = false;
        tracing::info!(
            file = %self.path.display(),
            records = records.len(),
            "definitions log reopened after a failure"
        );
        Ok(())
    }

    fn poison(&mut self, error: std::io::Error) -> StoreError {
        self.poisoned = true;
        tracing::error!(
            file = %self.path.display(),
            error = %error,
            "definitions log write failed: poisoned until reopened by the next change"
        );
        StoreError::io(&self.path)(error)
    }
}

/// The valid records of a loaded file, and the length new records go after.
fn read_records(file: &dyn FileIo, path: &Path, buf: Vec<u8>) -> (u64, Vec<Bytes>) {
    let scan = scan_records(&buf, FILE_HEADER_BYTES as usize);
    for skipped in &scan.skipped {
        tracing::warn!(
            file = %path.display(),
            offset = skipped.start,
            bytes = skipped.len(),
            "damaged definition record skipped"
        );
    }
    if scan.end < buf.len() {
        drop_tail(file, path, scan.end, buf.len());
    }
    let buf = Bytes::from(buf);
    let records = scan
        .records
        .iter()
        .map(|r| buf.slice(r.payload()))
        .collect();
    (scan.end as u64, records)
}
