//! `DedupLog`: the cache of one durable deduplication exchange, as an append-only file of
//! (key, expiry) records. It owns that file and its temporary sibling; it knows nothing of
//! AMQP (a key is opaque bytes) nor of the cache's eviction order, which the caller
//! rebuilds from the records' order.
//!
//! The file is a definitions-style log (`DefinitionsLog` with magic `WARRNDUP`): records
//! use the segment record frame (CRC-32C per record), appends are written without fsync and
//! made durable by the caller's group commit ([`DedupLog::unsynced`]), and `compact`
//! replaces the file whole (write `<file>.tmp`, fsync, rename, fsync the directory). A
//! record's payload is the expiry (u64 little-endian Unix milliseconds, `u64::MAX` for
//! never) followed by the key bytes.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use crate::definitions::DefinitionsLog;
use crate::format::DEDUP_MAGIC;
use crate::io::{FileIo, Io};
use crate::StoreError;

/// A cache file larger than this is not one the store wrote (10 million entries of the
/// longest key with their frames fit in a quarter of it): it is moved aside.
pub const DEDUP_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024 * 1024;
/// The longest key a record holds; the caller replaces longer keys by a digest. A record of
/// a longer key is skipped at open as damaged.
pub const DEDUP_KEY_BYTES_MAX: usize = 64;
/// Bytes of a record's payload before the key.
const EXPIRY_BYTES: usize = 8;

/// One cache entry as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DedupRecord {
    pub key: Bytes,
    /// Unix milliseconds after which the entry is gone; `u64::MAX` for never.
    pub expires_at_ms: u64,
}

impl DedupRecord {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(EXPIRY_BYTES + self.key.len());
        out.extend_from_slice(&self.expires_at_ms.to_le_bytes());
        out.extend_from_slice(&self.key);
        out
    }

    fn decode(payload: &Bytes) -> Option<DedupRecord> {
        let expiry: [u8; EXPIRY_BYTES] = payload.get(..EXPIRY_BYTES)?.try_into().ok()?;
        let key = payload.slice(EXPIRY_BYTES..);
        (key.len() <= DEDUP_KEY_BYTES_MAX).then(|| DedupRecord {
            key,
            expires_at_ms: u64::from_le_bytes(expiry),
        })
    }
}

/// The append-only cache file of one exchange.
#[derive(Debug)]
pub struct DedupLog {
    log: DefinitionsLog,
}

impl DedupLog {
    /// Opens (or creates) the log at `path`, returning its valid records in order (oldest
    /// first). Damage is handled as in the definitions log: a torn tail is dropped, a
    /// damaged record skipped, a bad file moved aside; all logged.
    pub fn open(path: &Path, io: Arc<dyn Io>) -> Result<(DedupLog, Vec<DedupRecord>), StoreError> {
        let (log, raw) = DefinitionsLog::open_with(path, io, DEDUP_MAGIC, DEDUP_FILE_BYTES_MAX)?;
        let mut records = Vec::with_capacity(raw.len());
        for payload in &raw {
            match DedupRecord::decode(payload) {
                Some(record) => records.push(record),
                None => tracing::warn!(
                    file = %path.display(),
                    bytes = payload.len(),
                    "malformed deduplication record skipped"
                ),
            }
        }
        Ok((DedupLog { log }, records))
    }

    /// Removes the file of a deleted exchange (a missing file is not an error).
    pub fn remove(path: &Path, io: &dyn Io) -> Result<(), StoreError> {
        match io.remove_file(path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(StoreError::io(path)(error)),
        }
    }

    /// Appends a record without fsync (group commit: see [`DedupLog::unsynced`]); returns
    /// its sequence number.
    pub fn append_unsynced(&mut self, record: &DedupRecord) -> Result<u64, StoreError> {
        if record.key.len() > DEDUP_KEY_BYTES_MAX {
            return Err(StoreError::RecordTooLarge {
                len: record.key.len(),
                max: DEDUP_KEY_BYTES_MAX as u32,
            });
        }
        self.log.append_unsynced(&record.encode())
    }

    /// The file whose fsync makes every record appended so far durable, and the sequence
    /// number that fsync covers.
    pub fn unsynced(&self) -> (Arc<dyn FileIo>, u64) {
        self.log.unsynced()
    }

    /// An fsync of [`DedupLog::unsynced`]'s file failed: the log is poisoned until the next
    /// append reopens it.
    pub fn sync_failed(&mut self, error: std::io::Error) -> StoreError {
        self.log.sync_failed(error)
    }

    /// Records in the file (since it was opened or last compacted).
    pub fn records(&self) -> u64 {
        self.log.records()
    }

    /// Atomically replaces the file with `live` (fsynced before it returns), which makes
    /// every entry it holds durable.
    pub fn compact(&mut self, live: &[DedupRecord]) -> Result<(), StoreError> {
        let records: Vec<Bytes> = live.iter().map(|r| Bytes::from(r.encode())).collect();
        self.log.compact(&records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::RealIo;

    fn record(key: &str, expires_at_ms: u64) -> DedupRecord {
        DedupRecord {
            key: Bytes::copy_from_slice(key.as_bytes()),
            expires_at_ms,
        }
    }

    #[test]
    fn appended_records_come_back_in_order_and_compaction_replaces_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.dedup");
        let io: Arc<dyn Io> = Arc::new(RealIo);
        let (mut log, records) = DedupLog::open(&path, io.clone()).unwrap();
        assert!(records.is_empty());
        log.append_unsynced(&record("a", 5)).unwrap();
        log.append_unsynced(&record("b", u64::MAX)).unwrap();
        let (file, _) = log.unsynced();
        file.sync().unwrap();
        drop(log);
        let (mut log, records) = DedupLog::open(&path, io.clone()).unwrap();
        assert_eq!(records, vec![record("a", 5), record("b", u64::MAX)]);
        log.compact(&[record("b", u64::MAX)]).unwrap();
        assert_eq!(log.records(), 1);
        drop(log);
        let (_, records) = DedupLog::open(&path, io.clone()).unwrap();
        assert_eq!(records, vec![record("b", u64::MAX)]);
        DedupLog::remove(&path, &*io).unwrap();
        assert!(!path.exists());
        DedupLog::remove(&path, &*io).unwrap();
    }

    #[test]
    fn a_key_over_the_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = DedupLog::open(&dir.path().join("x"), Arc::new(RealIo)).unwrap();
        let long = "k".repeat(DEDUP_KEY_BYTES_MAX + 1);
        assert!(log.append_unsynced(&record(&long, 1)).is_err());
    }
}
