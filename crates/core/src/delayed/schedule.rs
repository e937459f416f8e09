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
//! - Record payload (little-endian): `flags u8` (bit 0: persistent, bit 1: dead-lettered) |
//!   `delay_ms u64` |
//!   `due_ms u64` | `keys u16` then per key `len u32, bytes` (CC/BCC routing keys) | the
//!   message record of `durable::record`.
//! - In memory: the bucket index (start → its files), the files open for appending (at most
//!   `OPEN_FILES_MAX`), and the messages of loaded buckets. A bucket is loaded
//!   `LOAD_AHEAD_MS` before it starts; a message due in an already loaded bucket goes to its
//!   file and straight to memory.
//! - A loaded bucket's files are deleted once every message in them was routed and every
//!   destination queue confirmed it. Meanwhile each routed message whose queues confirmed it
//!   gets a mark: its record's id appended (8 bytes, little-endian) to `<start>.<n>.done`
//!   beside its file, written but not fsynced (it survives `kill -9`, not a power cut). A
//!   later run skips the marked records of the files it recovers, so a crash while a bucket
//!   is routed sends again only what was routed and not yet marked (at least once, with a
//!   window of one queue fsync instead of the whole bucket).
//!
//! Without a data directory (an in-memory broker) the buckets keep their messages in memory.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tracing::{error, warn};
use warren_protocol::ShortString;
use warren_store::format::{
    check_file_header, encode_file_header, encode_record_header, scan_records, ScannedRecord,
    FILE_HEADER_BYTES, RECORD_HEADER_BYTES, RECORD_MAGIC,
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
/// Bytes of loaded messages a schedule holds in memory, as `Entry::bytes` charges them (what
/// each really holds: its own copy of its record or its decoded message, and its share of
/// the map): a bucket with more is read in chunks as it drains, and messages arriving for a
/// loaded bucket beyond it go to its file only, to be read back in turn. Besides it, a
/// schedule holds one read buffer (`READ_CHUNK_BYTES`, or one larger record while it is read).
pub const LOADED_BYTES_MAX: usize = 32 * 1024 * 1024;
/// The most bytes read from a bucket file at once (bounded further by the room left under
/// `LOADED_BYTES_MAX`), into the schedule's one reusable buffer.
pub const READ_CHUNK_BYTES: usize = 1024 * 1024;
/// What one entry of the `due` map takes: a `BTreeMap` leaf holds up to 11 entries and at
/// least 5 (but for the root), so an entry takes at most 11/5 of its key and value, plus its
/// share of the node's header.
const MAP_ENTRY_BYTES: usize =
    (std::mem::size_of::<(u64, u64)>() + std::mem::size_of::<Entry>()) * 11 / 5 + 16;
/// What an allocation costs beyond the bytes asked for (the allocator's header and
/// rounding to 16 bytes).
const ALLOCATION_OVERHEAD_BYTES: usize = 32;
/// Magic of a bucket file's header.
const MAGIC: [u8; 8] = *b"WARRNDLY";
const PERSISTENT: u8 = 1;
const DEAD_LETTERED: u8 = 2;

/// A message in memory, waiting for its due time.
pub struct Pending {
    pub message: MessageRef,
    pub extra_keys: Vec<String>,
    pub delay_ms: u64,
    /// The loaded bucket (round) it belongs to.
    pub round: u64,
    /// See `Scheduled::dead_lettered`.
    pub dead_lettered: bool,
    /// Its record in a bucket file (None without files): what marks it routed.
    pub at: Option<RecordAt>,
}

/// Where a message's record is: its bucket, the file's number in the bucket (`<start>.<n>`)
/// and the record's id in the file (ids are unique within a file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordAt {
    pub bucket: u64,
    pub file: u64,
    pub id: u64,
}

/// A message of a loaded bucket: decoded (it arrived while its bucket was loaded) or still
/// the record read from its file, decoded only when it is due, so loading a bucket costs a
/// read and a checksum scan, not a decode of every message at once (which held up the
/// routing of the bucket before it).
///
/// A `Stored` record owns its bytes (a boxed slice, so it cannot be a view into something
/// larger): a `Bytes` slice of the buffer it was read into would keep the whole buffer
/// (1 MiB) alive while one record of it waits, and then while the message routed from it
/// sits in a queue.
enum Entry {
    Ready(Pending, usize),
    Stored {
        payload: Box<[u8]>,
        round: u64,
        at: RecordAt,
    },
}

impl Entry {
    /// What it counts against `LOADED_BYTES_MAX`: what it holds, map entry included.
    fn bytes(&self) -> usize {
        match self {
            Entry::Ready(_, bytes) => *bytes,
            Entry::Stored { payload, .. } => stored_bytes(payload.len()),
        }
    }
}

/// What a loaded record of `len` bytes holds: its own allocation and its map entry.
fn stored_bytes(len: usize) -> usize {
    len + ALLOCATION_OVERHEAD_BYTES + MAP_ENTRY_BYTES
}

/// What a decoded message waiting in memory holds: the message (body, header, decoded
/// properties), its `Arc`, its extra routing keys, and its map entry.
fn ready_bytes(message: &MessageRef, extra_keys: &[String]) -> usize {
    let keys: usize = extra_keys
        .iter()
        .map(|k| k.len() + std::mem::size_of::<String>() + ALLOCATION_OVERHEAD_BYTES)
        .sum();
    message.footprint() + 3 * ALLOCATION_OVERHEAD_BYTES + keys + MAP_ENTRY_BYTES
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

/// A bucket file of a loaded bucket not read to its end yet.
struct Reader {
    path: PathBuf,
    /// Its number in the bucket (`<start>.<n>`).
    n: u64,
    recovered: bool,
    /// Ids of the records an earlier run marked routed (a recovered file's `.done`), sorted.
    done: Vec<u64>,
    /// Where the next chunk starts (0: the file header is not checked yet).
    cursor: u64,
    file: Option<Arc<dyn FileIo>>,
}

/// A loaded bucket whose messages are being routed.
struct Round {
    bucket: u64,
    /// Every file of the round (deleted when it is done).
    files: Vec<PathBuf>,
    /// Files still to be read, in order.
    readers: std::collections::VecDeque<Reader>,
    /// Messages in memory not routed yet.
    remaining: u64,
}

/// The files of a bucket open for appending: `spill` ones hold messages that arrived for a
/// loaded bucket and were not kept in memory (read back by the round's readers).
type FileKey = (u64, bool);

struct OpenFile {
    file: Arc<dyn FileIo>,
    /// Its number in the bucket.
    n: u64,
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
    /// What `due` holds, as `Entry::bytes` counts it.
    loaded_bytes: usize,
    /// What the marks of recovered files being read take (`Reader::done`): counted against
    /// `LOADED_BYTES_MAX` with `loaded_bytes`, though never so as to stop reading.
    marks_bytes: usize,
    /// `LOADED_BYTES_MAX`, smaller in tests.
    loaded_max: usize,
    /// Where bucket files are read into (reused: records are copied out of it).
    read_buf: Vec<u8>,
    /// Rounds finished while their files were read (nothing left to read or route), with
    /// their files: to delete once their queues confirmed (`take_finished`).
    finished: Vec<(u64, Vec<PathBuf>)>,
    open: BTreeMap<FileKey, OpenFile>,
    /// Framed records appended in this batch, by file.
    writes: BTreeMap<FileKey, BytesMut>,
    /// The number of the file `flush` creates for a key not open yet (reserved by `add`, so
    /// that a message's record is known before it is written).
    reserved: BTreeMap<FileKey, u64>,
    /// `.done` files open for appending marks, with their length, by (bucket, file number);
    /// closed when their files are deleted (`forget_marks`).
    marks: HashMap<(u64, u64), (Arc<dyn FileIo>, u64)>,
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
        Self::open_bounded(store, LOADED_BYTES_MAX)
    }

    /// `open` holding at most `loaded_max` bytes of loaded messages in memory.
    pub(super) fn open_bounded(store: ScheduleStore, loaded_max: usize) -> Schedule {
        let mut schedule = Schedule {
            store,
            waiting: BTreeMap::new(),
            loaded_until: 0,
            rounds: HashMap::new(),
            round_of: HashMap::new(),
            due: BTreeMap::new(),
            loaded_bytes: 0,
            marks_bytes: 0,
            loaded_max,
            read_buf: Vec::new(),
            finished: Vec::new(),
            open: BTreeMap::new(),
            writes: BTreeMap::new(),
            reserved: BTreeMap::new(),
            marks: HashMap::new(),
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
            let names = schedule.store.io.list_dir(&dir).unwrap_or_default();
            for name in &names {
                // Marks of a file deleted before them (a crash in between) are stale.
                if let Some(file) = name.strip_suffix(DONE_SUFFIX) {
                    if !names.iter().any(|n| n == file) {
                        let _ = schedule.store.io.remove_file(&dir.join(name));
                    }
                }
            }
            for name in names {
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
            // File order within a bucket: the order they were written in.
            for bucket in schedule.waiting.values_mut() {
                bucket.files.sort_by_key(|f| {
                    f.path
                        .extension()
                        .and_then(|e| e.to_str()?.parse::<u64>().ok())
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

    /// Adds a message: to its bucket's file (written by `flush`) and, if its bucket is loaded
    /// and memory has room, to memory.
    pub fn add(&mut self, s: Scheduled) {
        let bucket = bucket_of(s.due_ms);
        let persistent = s.message.is_persistent();
        let seq = self.next_seq;
        self.next_seq += 1;
        let loaded = bucket < self.loaded_until;
        let round = if loaded { self.round_for(bucket) } else { 0 };
        let bytes = ready_bytes(&s.message, &s.extra_keys);
        // On disk, a loaded bucket's arrival stays in its file when memory is full or a
        // bucket is still being read (it would overtake what is not read yet).
        let spill = loaded
            && self.store.dir.is_some()
            && (self.loaded_bytes + self.marks_bytes + bytes > self.loaded_max
                || self.rounds.values().any(|r| !r.readers.is_empty()));
        let mut at = None;
        if self.store.dir.is_some() {
            let payload = encode(&s, persistent);
            let key = (bucket, spill);
            let file = match (self.open.get(&key), self.reserved.get(&key)) {
                (Some(open), _) => open.n,
                (None, Some(n)) => *n,
                (None, None) => {
                    let n = self.new_file_number();
                    self.reserved.insert(key, n);
                    n
                }
            };
            at = Some(RecordAt {
                bucket,
                file,
                id: seq,
            });
            let buf = self.writes.entry(key).or_default();
            buf.put_slice(&encode_record_header(seq, &payload));
            buf.put_slice(&payload);
            self.persistent_written |= persistent;
        }
        let pending = Pending {
            message: s.message,
            extra_keys: s.extra_keys,
            delay_ms: s.delay_ms,
            round,
            dead_lettered: s.dead_lettered,
            at,
        };
        if spill {
            // Read back by the round's reader of the spill file (`flush` registers it).
        } else if loaded {
            if let Some(r) = self.rounds.get_mut(&round) {
                r.remaining += 1;
            }
            self.loaded_bytes += bytes;
            self.due
                .insert((s.due_ms, seq), Entry::Ready(pending, bytes));
        } else if self.store.dir.is_none() {
            let b = self.waiting.entry(bucket).or_default();
            b.memory.push((s.due_ms, pending));
        } else {
            self.waiting.entry(bucket).or_default();
        }
    }

    /// A number no file of this directory has (files are `<start>.<n>`, `n` never reused).
    fn new_file_number(&mut self) -> u64 {
        self.next_file += 1;
        self.next_file - 1
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
                readers: std::collections::VecDeque::new(),
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
        let mut spilled = false;
        self.flushes += 1;
        for (key, bytes) in writes {
            let (bucket, spill) = key;
            spilled |= spill;
            if !self.open.contains_key(&key) {
                let n = match self.reserved.remove(&key) {
                    Some(n) => n,
                    None => self.new_file_number(),
                };
                let path = bucket_path(&dir, bucket, n);
                let file = self.store.io.open(&path, OpenMode::CreateNew)?;
                file.write_at(0, &encode_file_header(MAGIC))?;
                created = true;
                let round = self
                    .round_of
                    .get(&bucket)
                    .and_then(|r| self.rounds.get_mut(r));
                match round {
                    Some(round) => {
                        round.files.push(path.clone());
                        if spill {
                            round.readers.push_back(Reader {
                                path,
                                n,
                                recovered: false,
                                done: Vec::new(),
                                cursor: 0,
                                file: None,
                            });
                        }
                    }
                    None => self
                        .waiting
                        .entry(bucket)
                        .or_default()
                        .files
                        .push(BucketFile {
                            path,
                            recovered: false,
                        }),
                }
                self.open.insert(
                    key,
                    OpenFile {
                        file,
                        n,
                        len: u64::from(FILE_HEADER_BYTES),
                        used: 0,
                    },
                );
            }
            if let Some(open) = self.open.get_mut(&key) {
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
                Some(key) => self.open.remove(&key),
                None => break,
            };
        }
        if spilled {
            self.refill();
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

    /// Loads every bucket that starts within `LOAD_AHEAD_MS` of `now_ms` (reading its files
    /// as far as memory allows). Rounds found empty are in `take_finished`.
    pub fn load_due(&mut self, now_ms: u64) {
        let horizon = now_ms.saturating_add(LOAD_AHEAD_MS);
        self.loaded_until = self.loaded_until.max(bucket_of(horizon) + BUCKET_MS);
        while let Some(entry) = self.waiting.first_entry() {
            if *entry.key() > horizon {
                break;
            }
            let (start, bucket) = entry.remove_entry();
            // Messages arriving from now on go to other files: this one is read, and a
            // reader must not meet records that are in memory already.
            self.open.remove(&(start, false));
            let round = self.round_for(start);
            let mut count = 0u64;
            for (due, mut p) in bucket.memory {
                p.round = round;
                let seq = self.next_seq;
                self.next_seq += 1;
                let bytes = ready_bytes(&p.message, &p.extra_keys);
                self.loaded_bytes += bytes;
                self.due.insert((due, seq), Entry::Ready(p, bytes));
                count += 1;
            }
            if let Some(r) = self.rounds.get_mut(&round) {
                r.remaining += count;
                for file in bucket.files {
                    r.files.push(file.path.clone());
                    r.readers.push_back(Reader {
                        n: file_number(&file.path),
                        path: file.path,
                        recovered: file.recovered,
                        done: Vec::new(),
                        cursor: 0,
                        file: None,
                    });
                }
            }
        }
        self.refill();
    }

    /// Rounds finished by reading since the last call, with their files (to delete once
    /// the round's queues confirmed, as `routed`'s).
    pub fn take_finished(&mut self) -> Vec<(u64, Vec<PathBuf>)> {
        std::mem::take(&mut self.finished)
    }

    /// Reads the loaded rounds' files, earliest bucket first, while memory has room; rounds
    /// with nothing left to read or route are finished (into `finished`).
    fn refill(&mut self) {
        let mut order: Vec<(u64, u64)> = self
            .rounds
            .iter()
            .filter(|(_, r)| !r.readers.is_empty())
            .map(|(id, r)| (r.bucket, *id))
            .collect();
        order.sort_unstable();
        for (_, id) in order {
            let full = self.read_round(id);
            if let Some(r) = self.rounds.get(&id) {
                if r.remaining == 0 && r.readers.is_empty() {
                    let files = self.finish_round(id);
                    self.finished.push((id, files));
                }
            }
            if full {
                break;
            }
        }
    }

    /// Reads round `id`'s files until memory is full (true) or they are read to their end.
    fn read_round(&mut self, id: u64) -> bool {
        loop {
            let room = self
                .loaded_max
                .saturating_sub(self.loaded_bytes + self.marks_bytes);
            // With nothing loaded one record is read whatever the room (marks alone may
            // fill it), so the schedule always moves on.
            let nothing_loaded = self.loaded_bytes == 0;
            let Some(r) = self.rounds.get_mut(&id) else {
                return false;
            };
            let bucket = r.bucket;
            let Some(reader) = r.readers.front_mut() else {
                return false;
            };
            if room == 0 && !nothing_loaded {
                return true;
            }
            let recovered = reader.recovered;
            if recovered && reader.cursor == 0 {
                let marks = read_marks(&*self.store.io, &reader.path);
                self.marks_bytes = self.marks_bytes.saturating_sub(marks_bytes(&reader.done))
                    + marks_bytes(&marks);
                reader.done = marks;
            }
            let file_n = reader.n;
            let (records, base, end) = match read_chunk(
                &*self.store.io,
                reader,
                room,
                nothing_loaded,
                &mut self.read_buf,
            ) {
                Chunk::Records { records, base, end } => (records, base, end),
                Chunk::Full => return true,
                Chunk::End => {
                    if r.readers.len() == 1 && self.open.contains_key(&(bucket, true)) {
                        // The spill file being written: read on when more arrives.
                        return false;
                    }
                    if let Some(read) = r.readers.pop_front() {
                        self.marks_bytes = self.marks_bytes.saturating_sub(marks_bytes(&read.done));
                    }
                    continue;
                }
            };
            // Put back once the chunk is taken (the loop below needs `self`).
            let done = r
                .readers
                .front_mut()
                .map(|reader| std::mem::take(&mut reader.done))
                .unwrap_or_default();
            let mut next = base + end as u64;
            let mut full = false;
            let mut added = 0;
            for rec in records {
                let size = stored_bytes(rec.len as usize);
                if self.loaded_bytes + self.marks_bytes + size > self.loaded_max
                    && self.loaded_bytes > 0
                {
                    next = base + u64::from(rec.offset);
                    full = true;
                    break;
                }
                let Some(payload) = self.read_buf.get(rec.payload()) else {
                    continue;
                };
                let Some((flags, due)) = flags_and_due(payload) else {
                    warn!("delayed exchange: undecodable record skipped");
                    continue;
                };
                if recovered && (flags & PERSISTENT == 0 || done.binary_search(&rec.id).is_ok()) {
                    continue;
                }
                let seq = self.next_seq;
                self.next_seq += 1;
                // Copied out of the read buffer, which the next read reuses (see `Entry`).
                let payload = Box::<[u8]>::from(payload);
                let at = RecordAt {
                    bucket,
                    file: file_n,
                    id: rec.id,
                };
                let entry = Entry::Stored {
                    payload,
                    round: id,
                    at,
                };
                self.loaded_bytes += entry.bytes();
                self.due.insert((due, seq), entry);
                added += 1;
            }
            if let Some(r) = self.rounds.get_mut(&id) {
                r.remaining += added;
                if let Some(reader) = r.readers.front_mut() {
                    reader.cursor = next;
                    reader.done = done;
                }
            }
            if full {
                return true;
            }
        }
    }

    /// The first message due at `now_ms`, if any, with its round (the message is None if
    /// its record cannot be decoded: it still counts as done).
    pub fn pop_due(&mut self, now_ms: u64) -> Option<(u64, Option<Pending>)> {
        let entry = self.due.first_entry()?;
        if entry.key().0 > now_ms {
            return None;
        }
        let entry = entry.remove();
        self.loaded_bytes = self.loaded_bytes.saturating_sub(entry.bytes());
        Some(match entry {
            Entry::Ready(p, _) => (p.round, Some(p)),
            Entry::Stored { payload, round, at } => {
                let p = decode(Bytes::from(payload)).map(|(_, p, _)| Pending {
                    round,
                    at: Some(at),
                    ..p
                });
                if p.is_none() {
                    warn!("delayed exchange: undecodable record skipped");
                }
                (round, p)
            }
        })
    }

    /// A message of `round` was routed. When it was the round's last (and its files are
    /// read to their end), returns the round's files (to delete once the queues confirmed).
    pub fn routed(&mut self, round: u64) -> Option<Vec<PathBuf>> {
        let r = self.rounds.get_mut(&round)?;
        r.remaining = r.remaining.saturating_sub(1);
        if self.loaded_bytes + self.marks_bytes <= self.loaded_max / 2 || self.loaded_bytes == 0 {
            self.refill();
        }
        let r = self.rounds.get(&round)?;
        if r.remaining > 0 {
            return None;
        }
        match r.readers.len() {
            0 => {}
            // Only the spill file being appended, read to its end: the round is done.
            1 if self.open.contains_key(&(r.bucket, true))
                && r.readers.front().is_some_and(|f| f.cursor > 0) =>
            {
                let end = self.open.get(&(r.bucket, true)).map(|f| f.len);
                if r.readers.front().map(|f| f.cursor) != end {
                    return None;
                }
            }
            _ => return None,
        }
        Some(self.finish_round(round))
    }

    fn finish_round(&mut self, round: u64) -> Vec<PathBuf> {
        let Some(r) = self.rounds.remove(&round) else {
            return Vec::new();
        };
        for reader in &r.readers {
            self.marks_bytes = self.marks_bytes.saturating_sub(marks_bytes(&reader.done));
        }
        if self.round_of.get(&r.bucket) == Some(&round) {
            self.round_of.remove(&r.bucket);
            // The next message for this bucket starts a new round and a new file.
            self.open.remove(&(r.bucket, false));
            self.open.remove(&(r.bucket, true));
        }
        r.files
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

    /// Marks records routed (their queues confirmed them): appends their ids to their
    /// files' `.done`, without an fsync. The actor calls it before it deletes the files of
    /// the round (a round's confirm comes after those of its messages). A failure is
    /// logged: the records are then routed again after a crash, as without marks.
    pub fn write_marks(&mut self, marks: &[RecordAt]) {
        let Some(dir) = self.store.dir.clone() else {
            return;
        };
        let mut by_file: BTreeMap<(u64, u64), Vec<u8>> = BTreeMap::new();
        for at in marks {
            by_file
                .entry((at.bucket, at.file))
                .or_default()
                .extend_from_slice(&at.id.to_le_bytes());
        }
        for ((bucket, n), ids) in by_file {
            let path = done_path(&bucket_path(&dir, bucket, n));
            let io = &self.store.io;
            let open = match self.marks.entry((bucket, n)) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let file = io
                        .open(&path, OpenMode::ReadWrite)
                        .or_else(|_| io.open(&path, OpenMode::CreateNew));
                    match file {
                        Ok(file) => {
                            // Whole ids only: a torn one from a crash is written over.
                            let len = file.len().unwrap_or(0) / 8 * 8;
                            e.insert((file, len))
                        }
                        Err(err) => {
                            warn!(file = %path.display(), error = %err, "delayed exchange: cannot mark routed messages");
                            continue;
                        }
                    }
                }
            };
            match open.0.write_at(open.1, &ids) {
                Ok(()) => open.1 += ids.len() as u64,
                Err(err) => {
                    warn!(file = %path.display(), error = %err, "delayed exchange: cannot mark routed messages");
                    self.marks.remove(&(bucket, n));
                }
            }
        }
    }

    /// Closes the marks of files about to be deleted.
    pub fn forget_marks(&mut self, files: &[PathBuf]) {
        for path in files {
            let bucket = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(parse_name)
                .map(|(start, _)| start);
            if let Some(bucket) = bucket {
                self.marks.remove(&(bucket, file_number(path)));
            }
        }
    }

    /// The exchange was deleted: removes its files and directory (`moved`: where the
    /// directory was renamed to; None: its own place).
    pub fn remove_files(&mut self, moved: Option<PathBuf>) {
        self.open.clear();
        self.marks.clear();
        let Some(dir) = moved.or_else(|| self.store.dir.clone()) else {
            return;
        };
        for name in self.store.io.list_dir(&dir).unwrap_or_default() {
            let _ = self.store.io.remove_file(&dir.join(name));
        }
        let _ = self.store.io.remove_dir(&dir);
    }
}

/// Deletes bucket files (the marks first: marks without their file are stale, a file
/// without marks is only routed again), logging failures.
pub fn remove_files(io: &dyn warren_store::Io, files: &[PathBuf]) {
    for f in files {
        match io.remove_file(&done_path(f)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                warn!(file = %f.display(), error = %e, "delayed exchange: cannot delete a bucket's marks")
            }
            _ => {}
        }
        if let Err(e) = io.remove_file(f) {
            warn!(file = %f.display(), error = %e, "delayed exchange: cannot delete a bucket file");
        }
    }
}

/// Bucket file `n` of the bucket starting at `bucket` (`<start>.<n>`).
fn bucket_path(dir: &std::path::Path, bucket: u64, n: u64) -> PathBuf {
    dir.join(format!("{bucket}.{n}"))
}

/// The suffix of a bucket file's marks (`<start>.<n>.done`).
const DONE_SUFFIX: &str = ".done";

fn done_path(file: &std::path::Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(DONE_SUFFIX);
    PathBuf::from(name)
}

/// A bucket file's number (`<start>.<n>`).
fn file_number(path: &std::path::Path) -> u64 {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_name)
        .map_or(0, |(_, n)| n)
}

/// What a file's marks take in memory.
fn marks_bytes(done: &[u64]) -> usize {
    std::mem::size_of_val(done)
}

/// The record ids marked routed in a file's `.done` (a torn last id is ignored), sorted.
fn read_marks(io: &dyn warren_store::Io, file: &std::path::Path) -> Vec<u64> {
    let Ok(marks) = io.open(&done_path(file), OpenMode::Read) else {
        return Vec::new();
    };
    let len = marks.len().unwrap_or(0) / 8 * 8;
    let Ok(len) = usize::try_from(len) else {
        return Vec::new();
    };
    let mut buf = vec![0u8; len];
    if marks.read_at(0, &mut buf).is_err() {
        return Vec::new();
    }
    let mut ids: Vec<u64> = buf
        .chunks_exact(8)
        .filter_map(|b| Some(u64::from_le_bytes(b.try_into().ok()?)))
        .collect();
    ids.sort_unstable();
    ids
}

fn parse_name(name: &str) -> Option<(u64, u64)> {
    let (start, n) = name.split_once('.')?;
    Some((start.parse().ok()?, n.parse().ok()?))
}

/// What one read of a bucket file gave.
enum Chunk {
    /// The records found in the read buffer (read at file offset `base`; `end`: where its
    /// valid data ends, the next read's start if every record is taken).
    Records {
        records: Vec<ScannedRecord>,
        base: u64,
        end: usize,
    },
    /// The next record does not fit in the room memory has.
    Full,
    /// The file is read to its end (or what is left of it is damaged).
    End,
}

/// Reads the next chunk of `reader`'s file into `buf`: at most `room` bytes (and
/// `READ_CHUNK_BYTES`), or one whole record larger than that when memory holds nothing
/// (`nothing_loaded`; `buf` is then shrunk back to `READ_CHUNK_BYTES` on the next read).
fn read_chunk(
    io: &dyn warren_store::Io,
    reader: &mut Reader,
    room: usize,
    nothing_loaded: bool,
    buf: &mut Vec<u8>,
) -> Chunk {
    let failed = |e: std::io::Error, path: &std::path::Path| {
        error!(file = %path.display(), error = %e, "delayed exchange: cannot read a bucket");
        Chunk::End
    };
    let file = match &reader.file {
        Some(file) => file.clone(),
        None => match io.open(&reader.path, OpenMode::Read) {
            Ok(file) => {
                reader.file = Some(file.clone());
                file
            }
            Err(e) => return failed(e, &reader.path),
        },
    };
    let len = match file.len() {
        Ok(len) => len,
        Err(e) => return failed(e, &reader.path),
    };
    if reader.cursor == 0 {
        let mut header = [0u8; FILE_HEADER_BYTES as usize];
        let valid = len >= u64::from(FILE_HEADER_BYTES)
            && file.read_at(0, &mut header).is_ok()
            && check_file_header(&header, MAGIC).is_ok();
        if !valid {
            warn!(file = %reader.path.display(), "delayed exchange: bucket file without a valid header skipped");
            return Chunk::End;
        }
        reader.cursor = u64::from(FILE_HEADER_BYTES);
    }
    let left = len.saturating_sub(reader.cursor);
    if left == 0 {
        return Chunk::End;
    }
    let cursor = reader.cursor;
    let read = |n: u64, buf: &mut Vec<u8>| -> Result<(), std::io::Error> {
        let n = usize::try_from(n).map_err(std::io::Error::other)?;
        buf.clear();
        if buf.capacity() > READ_CHUNK_BYTES {
            // A record larger than a chunk was read last: give its memory back.
            buf.shrink_to(READ_CHUNK_BYTES);
        }
        buf.resize(n, 0);
        file.read_at(cursor, buf)
    };
    let want = left.min(READ_CHUNK_BYTES as u64).min(room as u64);
    if let Err(e) = read(want, buf) {
        return failed(e, &reader.path);
    }
    let mut scan = scan_records(buf, 0);
    if scan.end == 0 && want < left {
        // The next record is larger than this read: its header says how large.
        if let Err(e) = read(left.min(u64::from(RECORD_HEADER_BYTES)), buf) {
            return failed(e, &reader.path);
        }
        let record = buf
            .get(4..8)
            .filter(|_| buf.get(..4) == Some(&RECORD_MAGIC[..]))
            .and_then(|b| b.try_into().ok())
            .map(|b| u64::from(RECORD_HEADER_BYTES) + u64::from(u32::from_le_bytes(b)))
            .filter(|n| *n <= left);
        let n = match record {
            Some(n) if n <= room as u64 || nothing_loaded => n,
            Some(_) => return Chunk::Full,
            // Damaged: scan a whole chunk to find the next valid record.
            None => left.min(READ_CHUNK_BYTES as u64),
        };
        if let Err(e) = read(n, buf) {
            return failed(e, &reader.path);
        }
        scan = scan_records(buf, 0);
    }
    if scan.end == 0 {
        // Nothing valid from here: a torn or damaged tail ends the file.
        warn!(file = %reader.path.display(), "delayed exchange: damaged bucket tail skipped");
        return Chunk::End;
    }
    Chunk::Records {
        records: scan.records,
        base: reader.cursor,
        end: scan.end,
    }
}

fn encode(s: &Scheduled, persistent: bool) -> Bytes {
    let message = record::encode(&s.message, None);
    let keys: usize = s.extra_keys.iter().map(|k| 4 + k.len()).sum();
    let mut out = BytesMut::with_capacity(1 + 8 + 8 + 2 + keys + message.len());
    let mut flags = if persistent { PERSISTENT } else { 0 };
    if s.dead_lettered {
        flags |= DEAD_LETTERED;
    }
    out.put_u8(flags);
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
            dead_lettered: flags & DEAD_LETTERED != 0,
            at: None,
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

    fn message_with_body(body: String) -> MessageRef {
        let props = AMQPProperties::default();
        let header_raw = warren_protocol::encode::header_payload(&props, body.len() as u64);
        Arc::new(Message {
            exchange: "x".into(),
            routing_key: "k".into(),
            properties: Box::new(props),
            header_raw,
            body: Bytes::from(body),
            properties_bytes: 0,
        })
    }

    /// A bucket far larger than the memory bound is read in chunks as it drains: memory
    /// never holds more than the bound, and every message (those stored before the bucket
    /// was loaded, those arriving after, and one larger than the bound) comes out exactly
    /// once; the round's files are handed back for deletion once all are routed.
    #[test]
    fn a_crowded_bucket_is_read_in_chunks_within_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let bound = 4096;
        let mut s = Schedule::open_bounded(store(&path, false), bound);
        let add_n = |s: &mut Schedule, range: std::ops::Range<u64>| {
            for i in range {
                s.add(Scheduled {
                    message: message_with_body(format!("{i}")),
                    extra_keys: Vec::new(),
                    delay_ms: 1,
                    // Spread over the second, not in publish order.
                    due_ms: 10_000 + (i * 7919) % 1000,
                    confirm: None,
                    dead_lettered: false,
                });
                if i % 100 == 99 {
                    s.flush().unwrap();
                }
            }
            s.flush().unwrap();
        };
        let before = 2_000;
        add_n(&mut s, 0..before);
        let big = "b".repeat(2 * bound);
        s.add(Scheduled {
            message: message_with_body(big.clone()),
            extra_keys: Vec::new(),
            delay_ms: 1,
            due_ms: 10_500,
            confirm: None,
            dead_lettered: false,
        });
        s.flush().unwrap();
        s.load_due(10_000);
        assert!(s.loaded_bytes <= bound, "{} loaded", s.loaded_bytes);
        assert!(s.loaded_bytes >= held_at_least(&s));
        assert!(s.loaded_len() < 100, "{} messages loaded", s.loaded_len());
        // Arrivals for the loaded (and still unread) bucket go to a file, not to memory.
        let after = 500;
        add_n(&mut s, before..before + after);
        assert!(s.loaded_bytes <= bound, "{} loaded", s.loaded_bytes);

        let mut seen = vec![0u32; (before + after) as usize];
        let mut big_seen = 0;
        let mut files = Vec::new();
        while let Some((round, p)) = s.pop_due(11_000) {
            let p = p.expect("decodable");
            if p.message.body.len() > 100 {
                big_seen += 1;
            } else {
                let i: usize = std::str::from_utf8(&p.message.body)
                    .unwrap()
                    .parse()
                    .unwrap();
                seen[i] += 1;
            }
            if let Some(done) = s.routed(round) {
                files.extend(done);
            }
            files.extend(s.take_finished().into_iter().flat_map(|(_, f)| f));
            assert!(
                s.loaded_bytes <= bound || s.loaded_len() == 1,
                "{} loaded",
                s.loaded_bytes
            );
            let held = held_at_least(&s);
            assert!(
                s.loaded_bytes >= held,
                "charged {} < held {held}",
                s.loaded_bytes
            );
        }
        assert!(s.read_buf.capacity() <= READ_CHUNK_BYTES);
        assert_eq!(big_seen, 1);
        assert!(seen.iter().all(|n| *n == 1), "each exactly once");
        assert!(s.rounds.is_empty(), "the round is done");
        let on_disk = std::fs::read_dir(&path).unwrap().count();
        assert!(on_disk >= 2, "stored before and after loading");
        assert_eq!(files.len(), on_disk, "every file is handed back");
        s.remove(&files);
        assert_eq!(std::fs::read_dir(&path).unwrap().count(), 0);
    }

    /// A floor under what the loaded entries really hold, counted from what they are rather
    /// than from `Entry::bytes`: each takes its key and value in the map, a decoded message
    /// its footprint, and a stored record its bytes (which it owns: regression, records were
    /// `Bytes` slices of their 1 MiB read buffer, so one waiting record held all of it, and a
    /// crowded second peaked at 120 MB under a 32 MiB bound).
    fn held_at_least(s: &Schedule) -> usize {
        let map = std::mem::size_of::<(u64, u64)>() + std::mem::size_of::<Entry>();
        s.due
            .values()
            .map(|e| {
                map + match e {
                    Entry::Stored { payload, .. } => payload.len(),
                    Entry::Ready(p, _) => p.message.footprint(),
                }
            })
            .sum()
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
            dead_lettered: true,
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
        s.load_due(10_000);
        assert!(s.take_finished().is_empty());
        assert_eq!(s.loaded_len(), 1);
        assert!(s.pop_due(10_499).is_none());
        let (round, p) = s.pop_due(10_500).unwrap();
        let p = p.unwrap();
        assert_eq!(p.extra_keys, vec!["cc".to_string()]);
        assert!(p.dead_lettered, "the dead-lettered flag is stored");
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

    /// Routes everything due by `now`: the records popped, in order.
    fn pop_all(s: &mut Schedule, now: u64) -> Vec<RecordAt> {
        s.load_due(now);
        let mut popped = Vec::new();
        while let Some((_, p)) = s.pop_due(now) {
            popped.push(p.unwrap().at.expect("a record on disk"));
        }
        popped
    }

    /// A run that crashed while routing a bucket: the records it marked routed are skipped
    /// by the next run, the others come out again; marks without their file are removed.
    #[test]
    fn records_marked_routed_are_skipped_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let mut s = Schedule::open(store(&path, true));
        for i in 0..10 {
            add(&mut s, 10_000 + i, true);
        }
        // One arriving while its bucket is loaded has its record too.
        s.load_due(10_000);
        add(&mut s, 10_500, true);
        s.flush().unwrap();
        drop(s);

        let mut s = Schedule::open(store(&path, true));
        let first = pop_all(&mut s, 11_000);
        assert_eq!(first.len(), 11);
        s.write_marks(&first[..4]);
        s.write_marks(&first[7..8]);
        drop(s);

        let mut s = Schedule::open(store(&path, true));
        let second = pop_all(&mut s, 11_000);
        let expected: Vec<RecordAt> = [&first[4..7], &first[8..]].concat();
        assert_eq!(second, expected, "only the unmarked records again");
        // Stale marks (their file gone) are removed at open.
        let files: Vec<_> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e != "done"))
            .collect();
        for f in &files {
            std::fs::remove_file(f).unwrap();
        }
        drop(s);
        let _s = Schedule::open(store(&path, true));
        assert_eq!(
            std::fs::read_dir(&path).unwrap().count(),
            0,
            "no stale marks left"
        );
    }

    /// Marks count against the bound, but even marks that fill it alone do not stop the
    /// schedule: with nothing loaded, one record is read at a time.
    #[test]
    fn marks_that_fill_the_bound_do_not_stop_the_schedule() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let mut s = Schedule::open(store(&path, true));
        for i in 0..300 {
            add(&mut s, 10_000 + i, true);
        }
        s.flush().unwrap();
        drop(s);
        let mut s = Schedule::open(store(&path, true));
        let first = pop_all(&mut s, 11_000);
        assert_eq!(first.len(), 300);
        s.write_marks(&first[..250]);
        drop(s);
        // 250 marks (2,000 bytes) against a bound of 1,000.
        let mut s = Schedule::open_bounded(store(&path, true), 1_000);
        s.load_due(11_000);
        assert!(s.marks_bytes >= 2_000, "the marks are counted");
        let mut again = Vec::new();
        while let Some((round, p)) = s.pop_due(11_000) {
            again.push(p.unwrap().at.unwrap());
            s.routed(round);
        }
        assert_eq!(again, first[250..], "the unmarked ones, every one");
        assert_eq!(
            (s.loaded_bytes, s.marks_bytes),
            (0, 0),
            "nothing left counted"
        );
    }
}
