//! One delayed exchange's schedule: messages by due time, on disk in time buckets, with only
//! the buckets about to come due in memory.
//!
//! Owns the exchange's directory (`<data>/delayed/<hash>/` for a durable exchange,
//! `<data>/transient/delayed/<id>/` for a transient one) and nothing else. Format (see
//! docs/storage.md, "Delayed messages"):
//!
//! - A bucket holds the messages due in `[start, start + BUCKET_MS)`. Its messages are in
//!   one or more files `<start>.<n>`: the store's 16-byte file header (magic `WARRNDLY`) then
//!   the store's checksummed record frames (`warren_store::format`), appended and never
//!   rewritten. A run never appends to a file of an earlier run (its tail may be torn), so a
//!   damaged tail only ever ends a file.
//! - Record payload (little-endian): `flags u8` (bit 0: persistent) | `delay_ms u64` |
//!   `due_ms u64` | `keys u16` then per key `len u32, bytes` (CC/BCC routing keys) | the
//!   message record of `durable::record`.
//! - In memory: the bucket index (start → its files), the files open for appending (at most
//!   `OPEN_FILES_MAX`), and the messages of loaded buckets. A bucket is loaded
//!   `LOAD_AHEAD_MS` before it starts; a message due in an already loaded bucket goes to its
//!   file and straight to memory.
//! - A loaded bucket's files are deleted once every message in them was routed and every
//!   destination queue confirmed it (so a crash in between routes them again: at least once).
//!
//! Without a data directory (an in-memory broker) the buckets keep their messages in memory.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tracing::{error, warn};
use warren_protocol::ShortString;
use warren_store::format::{
    check_file_header, encode_file_header, encode_record_header, scan_records, FILE_HEADER_BYTES,
};
use warren_store::{FileIo, OpenMode};

use super::{ScheduleStore, Scheduled};
use crate::durable::record;
use crate::message::MessageRef;

/// Width of a time bucket: the unit in which the schedule is loaded from disk.
pub const BUCKET_MS: u64 = 1000;
/// A bucket is read into memory this long before it starts, so its first message is routed
/// on time.
pub const LOAD_AHEAD_MS: u64 = 200;
/// Bucket files kept open for appending; beyond it the least recently written one is closed
/// (its bucket's next message starts a new file).
pub const OPEN_FILES_MAX: usize = 256;
/// Magic of a bucket file's header.
const MAGIC: [u8; 8] = *b"WARRNDLY";
const PERSISTENT: u8 = 1;

/// A message in memory, waiting for its due time.
pub struct Pending {
    pub message: MessageRef,
    pub extra_keys: Vec<String>,
    pub delay_ms: u64,
    /// The loaded bucket (round) it belongs to.
    pub round: u64,
}

/// A message of a loaded bucket: decoded (it arrived while its bucket was loaded) or still
/// the record read from its file, decoded only when it is due, so loading a bucket costs a
/// read and a checksum scan, not a decode of every message at once (which held up the
/// routing of the bucket before it).
enum Entry {
    Ready(Pending),
    Stored { payload: Bytes, round: u64 },
}

struct BucketFile {
    path: PathBuf,
    /// Written by an earlier run: only its persistent messages are kept.
    recovered: bool,
}

#[derive(Default)]
struct Bucket {
    files: Vec<BucketFile>,
    /// In-memory mode only.
    memory: Vec<(u64, Pending)>,
}

/// A loaded bucket whose messages are being routed.
struct Round {
    bucket: u64,
    files: Vec<BucketFile>,
    remaining: u64,
}

struct OpenFile {
    file: Arc<dyn FileIo>,
    len: u64,
    /// The flush that last wrote to it (the least recently written is closed first).
    used: u64,
}

/// What a batch of appends needs before its confirms: fsync these files (and the directory
/// when files were created).
pub struct SyncNeed {
    pub files: Vec<Arc<dyn FileIo>>,
    pub dir: Option<PathBuf>,
    pub io: Arc<dyn warren_store::Io>,
}

impl SyncNeed {
    /// Runs the syncs (on a blocking thread).
    pub fn run(&self) -> std::io::Result<()> {
        for f in &self.files {
            f.sync()?;
        }
        match &self.dir {
            Some(dir) => self.io.sync_dir(dir),
            None => Ok(()),
        }
    }
}

pub struct Schedule {
    store: ScheduleStore,
    waiting: BTreeMap<u64, Bucket>,
    /// Buckets starting before this were loaded: their messages go straight to `due`.
    loaded_until: u64,
    rounds: HashMap<u64, Round>,
    /// The round currently open for a loaded bucket.
    round_of: HashMap<u64, u64>,
    due: BTreeMap<(u64, u64), Entry>,
    open: BTreeMap<u64, OpenFile>,
    /// Framed records appended in this batch, by bucket.
    writes: BTreeMap<u64, BytesMut>,
    persistent_written: bool,
    flushes: u64,
    next_seq: u64,
    next_round: u64,
    next_file: u64,
}

fn bucket_of(due_ms: u64) -> u64 {
    due_ms / BUCKET_MS * BUCKET_MS
}

impl Schedule {
    /// Opens the schedule, finding the buckets an earlier run left (a transient exchange's
    /// leftovers are removed).
    pub fn open(store: ScheduleStore) -> Schedule {
        let mut schedule = Schedule {
            store,
            waiting: BTreeMap::new(),
            loaded_until: 0,
            rounds: HashMap::new(),
            round_of: HashMap::new(),
            due: BTreeMap::new(),
            open: BTreeMap::new(),
            writes: BTreeMap::new(),
            persistent_written: false,
            flushes: 0,
            next_seq: 0,
            next_round: 1,
            next_file: 0,
        };
        if let Some(dir) = schedule.store.dir.clone() {
            if !schedule.store.durable {
                schedule.remove_files(None);
            }
            if let Err(e) = schedule.store.io.create_dir_all(&dir) {
                error!(dir = %dir.display(), error = %e, "delayed exchange: cannot create its directory");
            }
            for name in schedule.store.io.list_dir(&dir).unwrap_or_default() {
                let Some((start, n)) = parse_name(&name) else {
                    continue;
                };
                schedule.next_file = schedule.next_file.max(n + 1);
                schedule
                    .waiting
                    .entry(start)
                    .or_default()
                    .files
                    .push(BucketFile {
                        path: dir.join(&name),
                        recovered: true,
                    });
            }
        }
        schedule
    }

    /// Whether the schedule is kept in files.
    pub fn on_disk(&self) -> bool {
        self.store.dir.is_some()
    }

    /// Messages in memory (loaded buckets).
    #[cfg(test)]
    pub fn loaded_len(&self) -> usize {
        self.due.len()
    }

    /// Adds a message: to its bucket's file (written by `flush`) and, if its bucket is loaded,
    /// to memory.
    pub fn add(&mut self, s: Scheduled) {
        let bucket = bucket_of(s.due_ms);
        let persistent = s.message.is_persistent();
        let seq = self.next_seq;
        self.next_seq += 1;
        let loaded = bucket < self.loaded_until;
        let round = if loaded { self.round_for(bucket) } else { 0 };
        if self.store.dir.is_some() {
            let payload = encode(&s, persistent);
            let buf = self.writes.entry(bucket).or_default();
            buf.put_slice(&encode_record_header(seq, &payload));
            buf.put_slice(&payload);
            self.persistent_written |= persistent;
        }
        let pending = Pending {
            message: s.message,
            extra_keys: s.extra_keys,
            delay_ms: s.delay_ms,
            round,
        };
        if loaded {
            if let Some(r) = self.rounds.get_mut(&round) {
                r.remaining += 1;
            }
            self.due.insert((s.due_ms, seq), Entry::Ready(pending));
        } else if self.store.dir.is_none() {
            let b = self.waiting.entry(bucket).or_default();
            b.memory.push((s.due_ms, pending));
        } else {
            self.waiting.entry(bucket).or_default();
        }
    }

    fn round_for(&mut self, bucket: u64) -> u64 {
        if let Some(r) = self.round_of.get(&bucket) {
            return *r;
        }
        let id = self.next_round;
        self.next_round += 1;
        self.rounds.insert(
            id,
            Round {
                bucket,
                files: Vec::new(),
                remaining: 0,
            },
        );
        self.round_of.insert(bucket, id);
        id
    }

    /// Writes this batch's records to their bucket files. Returns what must be fsynced
    /// before persistent messages are confirmed (None: nothing), or the write error.
    pub fn flush(&mut self) -> Result<Option<SyncNeed>, std::io::Error> {
        let persistent = std::mem::take(&mut self.persistent_written);
        let writes = std::mem::take(&mut self.writes);
        let Some(dir) = self.store.dir.clone() else {
            return Ok(None);
        };
        let mut touched = Vec::new();
        let mut created = false;
        self.flushes += 1;
        for (bucket, bytes) in writes {
            if !self.open.contains_key(&bucket) {
                let path = dir.join(format!("{bucket}.{}", self.next_file));
                self.next_file += 1;
                let file = self.store.io.open(&path, OpenMode::CreateNew)?;
                file.write_at(0, &encode_file_header(MAGIC))?;
                created = true;
                let entry = BucketFile {
                    path,
                    recovered: false,
                };
                match self.round_of.get(&bucket) {
                    Some(r) => match self.rounds.get_mut(r) {
                        Some(round) => round.files.push(entry),
                        None => self.waiting.entry(bucket).or_default().files.push(entry),
                    },
                    None => self.waiting.entry(bucket).or_default().files.push(entry),
                }
                self.open.insert(
                    bucket,
                    OpenFile {
                        file,
                        len: u64::from(FILE_HEADER_BYTES),
                        used: 0,
                    },
                );
            }
            if let Some(open) = self.open.get_mut(&bucket) {
                open.file.write_at(open.len, &bytes)?;
                open.len += bytes.len() as u64;
                open.used = self.flushes;
                touched.push(open.file.clone());
            }
        }
        // Closing the least recently written file: publishing in due order (a steady delay)
        // keeps writing the newest bucket, random delays spread over all of them.
        while self.open.len() > OPEN_FILES_MAX {
            let oldest = self
                .open
                .iter()
                .min_by_key(|(_, f)| f.used)
                .map(|(b, _)| *b);
            match oldest {
                Some(bucket) => self.open.remove(&bucket),
                None => break,
            };
        }
        if !(persistent && self.store.sync_persistent) || touched.is_empty() {
            return Ok(None);
        }
        Ok(Some(SyncNeed {
            files: touched,
            dir: created.then_some(dir),
            io: self.store.io.clone(),
        }))
    }

    /// When the actor must wake next (ms since the epoch): the first loaded message's due
    /// time or the next bucket's load time.
    pub fn next_wake_ms(&self) -> Option<u64> {
        let first_due = self.due.keys().next().map(|(due, _)| *due);
        let next_load = self
            .waiting
            .keys()
            .next()
            .map(|start| start.saturating_sub(LOAD_AHEAD_MS));
        match (first_due, next_load) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Loads every bucket that starts within `LOAD_AHEAD_MS` of `now_ms`. Returns the files
    /// of rounds that turned out empty (to delete).
    pub fn load_due(&mut self, now_ms: u64) -> Vec<PathBuf> {
        let horizon = now_ms.saturating_add(LOAD_AHEAD_MS);
        self.loaded_until = self.loaded_until.max(bucket_of(horizon) + BUCKET_MS);
        let mut empty = Vec::new();
        while let Some(entry) = self.waiting.first_entry() {
            if *entry.key() > horizon {
                break;
            }
            let (start, bucket) = entry.remove_entry();
            let round = self.round_for(start);
            let mut count = 0u64;
            for (due, mut p) in bucket.memory {
                p.round = round;
                let seq = self.next_seq;
                self.next_seq += 1;
                self.due.insert((due, seq), Entry::Ready(p));
                count += 1;
            }
            for file in &bucket.files {
                count += self.read_file(file, round);
            }
            if let Some(r) = self.rounds.get_mut(&round) {
                r.files.extend(bucket.files);
                r.remaining += count;
            }
            if count == 0 {
                empty.extend(self.finish_round(round));
            }
        }
        empty
    }

    fn read_file(&mut self, file: &BucketFile, round: u64) -> u64 {
        let data = match read_all(&*self.store.io, &file.path) {
            Ok(data) => data,
            Err(e) => {
                error!(file = %file.path.display(), error = %e, "delayed exchange: cannot read a bucket");
                return 0;
            }
        };
        if check_file_header(&data, MAGIC).is_err() {
            warn!(file = %file.path.display(), "delayed exchange: bucket file without a valid header skipped");
            return 0;
        }
        let data = Bytes::from(data);
        let scan = scan_records(&data, FILE_HEADER_BYTES as usize);
        let mut count = 0;
        for rec in scan.records {
            let payload = data.slice(rec.payload());
            let Some((flags, due)) = flags_and_due(&payload) else {
                warn!(file = %file.path.display(), "delayed exchange: undecodable record skipped");
                continue;
            };
            if file.recovered && flags & PERSISTENT == 0 {
                continue;
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            self.due
                .insert((due, seq), Entry::Stored { payload, round });
            count += 1;
        }
        count
    }

    /// The first message due at `now_ms`, if any, with its round (the message is None if
    /// its record cannot be decoded: it still counts as done).
    pub fn pop_due(&mut self, now_ms: u64) -> Option<(u64, Option<Pending>)> {
        let entry = self.due.first_entry()?;
        if entry.key().0 > now_ms {
            return None;
        }
        Some(match entry.remove() {
            Entry::Ready(p) => (p.round, Some(p)),
            Entry::Stored { payload, round } => {
                let p = decode(payload).map(|(_, p, _)| Pending { round, ..p });
                if p.is_none() {
                    warn!("delayed exchange: undecodable record skipped");
                }
                (round, p)
            }
        })
    }

    /// A message of `round` was routed. When it was the round's last, returns the round's
    /// files (to delete once the queues confirmed).
    pub fn routed(&mut self, round: u64) -> Option<Vec<PathBuf>> {
        let r = self.rounds.get_mut(&round)?;
        r.remaining = r.remaining.saturating_sub(1);
        if r.remaining > 0 {
            return None;
        }
        Some(self.finish_round(round))
    }

    fn finish_round(&mut self, round: u64) -> Vec<PathBuf> {
        let Some(r) = self.rounds.remove(&round) else {
            return Vec::new();
        };
        if self.round_of.get(&r.bucket) == Some(&round) {
            self.round_of.remove(&r.bucket);
            // The next message for this bucket starts a new round and a new file.
            self.open.remove(&r.bucket);
        }
        r.files.into_iter().map(|f| f.path).collect()
    }

    /// Deletes files of finished rounds (the actor does it on a blocking thread).
    #[cfg(test)]
    pub fn remove(&self, files: &[PathBuf]) {
        remove_files(&*self.store.io, files);
    }

    /// The I/O layer (to delete files off the actor's thread).
    pub fn io(&self) -> Arc<dyn warren_store::Io> {
        self.store.io.clone()
    }

    /// The exchange was deleted: removes its files and directory (`moved`: where the
    /// directory was renamed to; None: its own place).
    pub fn remove_files(&mut self, moved: Option<PathBuf>) {
        self.open.clear();
        let Some(dir) = moved.or_else(|| self.store.dir.clone()) else {
            return;
        };
        for name in self.store.io.list_dir(&dir).unwrap_or_default() {
            let _ = self.store.io.remove_file(&dir.join(name));
        }
        let _ = self.store.io.remove_dir(&dir);
    }
}

/// Deletes bucket files, logging failures.
pub fn remove_files(io: &dyn warren_store::Io, files: &[PathBuf]) {
    for f in files {
        if let Err(e) = io.remove_file(f) {
            warn!(file = %f.display(), error = %e, "delayed exchange: cannot delete a bucket file");
        }
    }
}

fn parse_name(name: &str) -> Option<(u64, u64)> {
    let (start, n) = name.split_once('.')?;
    Some((start.parse().ok()?, n.parse().ok()?))
}

fn read_all(io: &dyn warren_store::Io, path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let file = io.open(path, OpenMode::Read)?;
    let len = usize::try_from(file.len()?).map_err(std::io::Error::other)?;
    let mut buf = vec![0u8; len];
    file.read_at(0, &mut buf)?;
    Ok(buf)
}

fn encode(s: &Scheduled, persistent: bool) -> Bytes {
    let message = record::encode(&s.message, None);
    let keys: usize = s.extra_keys.iter().map(|k| 4 + k.len()).sum();
    let mut out = BytesMut::with_capacity(1 + 8 + 8 + 2 + keys + message.len());
    out.put_u8(if persistent { PERSISTENT } else { 0 });
    out.put_u64_le(s.delay_ms);
    out.put_u64_le(s.due_ms);
    // At most u16::MAX keys are kept (a header holding more is far beyond any real use).
    let kept = s.extra_keys.len().min(u16::MAX as usize);
    out.put_u16_le(kept as u16);
    for k in &s.extra_keys[..kept] {
        out.put_u32_le(k.len() as u32);
        out.put_slice(k.as_bytes());
    }
    out.put_slice(&message);
    out.freeze()
}

/// A record payload's flags and due time, read without decoding the message.
fn flags_and_due(payload: &[u8]) -> Option<(u8, u64)> {
    let flags = *payload.first()?;
    let due = u64::from_le_bytes(payload.get(9..17)?.try_into().ok()?);
    Some((flags, due))
}

/// Decodes a record payload: (flags, the message, its due time). None if damaged.
fn decode(payload: Bytes) -> Option<(u8, Pending, u64)> {
    let mut at = 0usize;
    let take = |at: &mut usize, n: usize| -> Option<std::ops::Range<usize>> {
        let end = at.checked_add(n)?;
        (end <= payload.len()).then(|| {
            let r = *at..end;
            *at = end;
            r
        })
    };
    let u64_at = |r: std::ops::Range<usize>| -> Option<u64> {
        Some(u64::from_le_bytes(payload.get(r)?.try_into().ok()?))
    };
    let flags = *payload.get(take(&mut at, 1)?.start)?;
    let delay_ms = u64_at(take(&mut at, 8)?)?;
    let due_ms = u64_at(take(&mut at, 8)?)?;
    let n = u16::from_le_bytes(payload.get(take(&mut at, 2)?)?.try_into().ok()?);
    let mut extra_keys = Vec::with_capacity(usize::from(n).min(64));
    for _ in 0..n {
        let len = u32::from_le_bytes(payload.get(take(&mut at, 4)?)?.try_into().ok()?);
        let r = take(&mut at, usize::try_from(len).ok()?)?;
        extra_keys.push(String::from_utf8(payload.get(r)?.to_vec()).ok()?);
    }
    let (message, _) = record::decode(payload.slice(at..)).ok()?;
    Some((
        flags,
        Pending {
            message: Arc::new(message),
            extra_keys,
            delay_ms,
            round: 0,
        },
        due_ms,
    ))
}

/// The exchange's directory name: a stable hash of vhost and name.
pub(crate) fn dir_name(vhost: &str, exchange: &ShortString) -> String {
    format!(
        "{:016x}",
        crate::queue::store::fnv1a(vhost, exchange.as_str())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delayed::ScheduleStore;
    use crate::message::Message;
    use warren_protocol::basic::AMQPProperties;

    fn message(persistent: bool) -> MessageRef {
        let props = AMQPProperties::default().with_delivery_mode(if persistent { 2 } else { 1 });
        let header_raw = warren_protocol::encode::header_payload(&props, 2);
        Arc::new(Message {
            exchange: "x".into(),
            routing_key: "k".into(),
            properties: Box::new(props),
            header_raw,
            body: Bytes::from_static(b"hi"),
            properties_bytes: 0,
        })
    }

    fn store(dir: &std::path::Path, durable: bool) -> ScheduleStore {
        ScheduleStore {
            dir: Some(dir.to_path_buf()),
            io: warren_store::RealIo::shared(),
            sync_persistent: durable,
            durable,
        }
    }

    fn add(s: &mut Schedule, due_ms: u64, persistent: bool) {
        s.add(Scheduled {
            message: message(persistent),
            extra_keys: vec!["cc".into()],
            delay_ms: 5,
            due_ms,
            confirm: None,
        });
    }

    /// Regression: closing the *farthest* bucket's file closed the one being written when
    /// messages came in due order, so every batch started a new file (80 files a bucket).
    #[test]
    fn messages_in_due_order_share_one_file_per_bucket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let mut s = Schedule::open(store(&path, false));
        let buckets = OPEN_FILES_MAX as u64 + 50;
        for b in 0..buckets {
            for i in 0..3 {
                add(&mut s, 1_000_000 + b * BUCKET_MS + i, false);
                s.flush().unwrap();
            }
        }
        assert_eq!(std::fs::read_dir(&path).unwrap().count() as u64, buckets);
    }

    #[test]
    fn buckets_stay_on_disk_until_due_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let mut s = Schedule::open(store(&path, true));
        add(&mut s, 10_500, true);
        add(&mut s, 10_100, false);
        add(&mut s, 20_000, true);
        assert!(s.flush().unwrap().is_some(), "persistent: fsync needed");
        assert_eq!(s.loaded_len(), 0, "nothing due soon is in memory");
        assert_eq!(s.next_wake_ms(), Some(10_000 - LOAD_AHEAD_MS));
        drop(s);
        // Reopened: the transient message of the earlier run is gone.
        let mut s = Schedule::open(store(&path, true));
        assert!(s.load_due(10_000).is_empty());
        assert_eq!(s.loaded_len(), 1);
        assert!(s.pop_due(10_499).is_none());
        let (round, p) = s.pop_due(10_500).unwrap();
        assert_eq!(p.unwrap().extra_keys, vec!["cc".to_string()]);
        let files = s.routed(round).unwrap();
        assert_eq!(files.len(), 1);
        s.remove(&files);
        // A message for a loaded bucket goes to memory at once, and to a new file.
        add(&mut s, 10_900, true);
        assert_eq!(s.loaded_len(), 1);
        s.flush().unwrap();
        s.remove_files(None);
        assert!(!path.exists());
    }
}
