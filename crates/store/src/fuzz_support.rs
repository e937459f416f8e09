//! The checks the fuzz targets in `fuzz/` run on each input, shared with the stable-Rust
//! replay test (`tests/fuzz_regressions.rs`). Each takes arbitrary bytes, builds files from
//! them in a [`MemoryIo`] (an in-memory file system, so an execution costs no system call)
//! and panics when the store breaks a promise: recovery never fails or panics on its own
//! files' contents, recovering twice finds the same records, and a recovered log works.
//!
//! Not part of the store's API: nothing in the broker calls these.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::format::{
    check_file_header, decode_ack_entry, decode_record, encode_ack_entry, encode_file_header,
    encode_record_header, scan_records, ACKS_MAGIC, ACK_ENTRY_BYTES, DEFINITIONS_MAGIC,
    SEGMENT_MAGIC,
};
use crate::io::{FileIo, Io, OpenMode};
use crate::{
    open_file_log_with, DefinitionsLog, LogOptions, MessageLog, Recovered, SyncMode,
    SEGMENT_BYTES_MAX_FLOOR,
};

/// The directory every target's files live in.
const DIR: &str = "/fuzz";
/// The files a recovery input can write: a queue's segments and ack files, and two names
/// recovery must leave alone (not canonical, and an orphan ack file's neighbour).
const LOG_FILES: [&str; 8] = [
    "msgs.1", "acks.1", "msgs.2", "acks.2", "msgs.3", "acks.3", "msgs.01", "acks.4",
];
/// The files a definitions input can write: the log and a leftover compaction file.
const DEFINITIONS_FILES: [&str; 2] = ["definitions", "definitions.tmp"];
/// Id of the record appended after recovery (inputs can only write ids below 256).
const PROBE_ID: u64 = 1 << 20;

/// An in-memory file system: paths to shared byte vectors, and a set of directories.
#[derive(Default)]
pub struct MemoryIo {
    state: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    files: BTreeMap<PathBuf, Arc<MemoryFile>>,
    dirs: BTreeSet<PathBuf>,
}

#[derive(Default)]
struct MemoryFile(Mutex<Vec<u8>>);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, path.display().to_string())
}

impl FileIo for MemoryFile {
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let mut data = lock(&self.0);
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start + buf.len();
        if data.len() < end {
            data.resize(end, 0);
        }
        data[start..end].copy_from_slice(buf);
        Ok(())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let data = lock(&self.0);
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| data.get(start..end))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(lock(&self.0).len() as u64)
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        lock(&self.0).resize(usize::try_from(len).map_err(io::Error::other)?, 0);
        Ok(())
    }
}

impl MemoryIo {
    /// A file system holding only the directory `dir`.
    pub fn with_dir(dir: &Path) -> Arc<MemoryIo> {
        let io = MemoryIo::default();
        lock(&io.state).dirs.insert(dir.to_path_buf());
        Arc::new(io)
    }

    /// Appends bytes to a file, creating it.
    pub fn append(&self, path: &Path, bytes: &[u8]) {
        let mut state = lock(&self.state);
        let file = state.files.entry(path.to_path_buf()).or_default();
        lock(&file.0).extend_from_slice(bytes);
    }

    /// Every file's path and contents.
    pub fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let state = lock(&self.state);
        let files = state.files.iter();
        files
            .map(|(p, f)| (p.clone(), lock(&f.0).clone()))
            .collect()
    }
}

impl Io for MemoryIo {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FileIo>> {
        let mut state = lock(&self.state);
        let file = match (mode, state.files.get(path)) {
            (OpenMode::CreateNew, Some(_)) => {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists))
            }
            (OpenMode::CreateNew, None) => {
                let file = Arc::new(MemoryFile::default());
                state.files.insert(path.to_path_buf(), file.clone());
                file
            }
            (_, Some(file)) => file.clone(),
            (_, None) => return Err(not_found(path)),
        };
        Ok(file)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = lock(&self.state);
        if !state.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let in_dir = state.files.keys().filter(|p| p.parent() == Some(dir));
        let names = in_dir.filter_map(|p| p.file_name()?.to_str().map(str::to_owned));
        Ok(names.collect())
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.dirs.extend(dir.ancestors().map(Path::to_path_buf));
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let removed = lock(&self.state).files.remove(path);
        removed.map(|_| ()).ok_or_else(|| not_found(path))
    }

    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        if state.files.keys().any(|p| p.starts_with(dir)) {
            return Err(io::Error::other("directory not empty"));
        }
        state
            .dirs
            .remove(dir)
            .then_some(())
            .ok_or_else(|| not_found(dir))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        let file = state.files.remove(from).ok_or_else(|| not_found(from))?;
        state.files.insert(to.to_path_buf(), file);
        Ok(())
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
}

/// Writes the files an input describes. The input is a list of operations, each starting
/// with a byte whose low 3 bits pick the file from `names` (modulo its length) and whose next
/// two bits say what to append: 0 a valid file header (`magic` picks by name), 1 raw bytes
/// (a length byte, then the bytes), 2 a record frame with a valid checksum (id byte, length
/// byte, payload), 3 an ack entry with a valid checksum (offset u16 LE, id byte). Checksums
/// are computed here because a fuzzer would almost never guess one.
fn build_files(io: &MemoryIo, names: &[&str], data: &[u8]) {
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let name = names[(op & 7) as usize % names.len()];
        let path = Path::new(DIR).join(name);
        let mut take = |n: usize| -> &[u8] {
            let (head, tail) = rest.split_at(n.min(rest.len()));
            rest = tail;
            head
        };
        let bytes = match (op >> 3) & 3 {
            0 => encode_file_header(magic_for(name)).to_vec(),
            1 => {
                let len = take(1).first().copied().unwrap_or(0) as usize;
                take(len).to_vec()
            }
            2 => {
                let id = take(1).first().copied().unwrap_or(0) as u64;
                let len = take(1).first().copied().unwrap_or(0) as usize;
                let payload = take(len);
                let mut frame = encode_record_header(id, payload).to_vec();
                frame.extend_from_slice(payload);
                frame
            }
            _ => {
                let offset = take(2);
                let offset = u16::from_le_bytes([
                    offset.first().copied().unwrap_or(0),
                    offset.get(1).copied().unwrap_or(0),
                ]);
                let id = take(1).first().copied().unwrap_or(0) as u64;
                encode_ack_entry(offset.into(), id).to_vec()
            }
        };
        io.append(&path, &bytes);
    }
}

fn magic_for(name: &str) -> [u8; 8] {
    match name {
        n if n.starts_with("msgs") => SEGMENT_MAGIC,
        n if n.starts_with("acks") => ACKS_MAGIC,
        _ => DEFINITIONS_MAGIC,
    }
}

/// Target `store_scan`: `scan_records` over arbitrary bytes (the first byte picks where the
/// scan starts). Records it returns verify, are in order and do not overlap; skipped ranges
/// lie between them; headers and ack entries are checked without panicking.
pub fn scan(data: &[u8]) {
    let Some((&start, buf)) = data.split_first() else {
        return;
    };
    let start = start as usize;
    _ = check_file_header(buf, SEGMENT_MAGIC);
    for entry in buf.chunks(ACK_ENTRY_BYTES as usize) {
        _ = decode_ack_entry(entry);
    }
    let scan = scan_records(buf, start);
    let mut at = start;
    let mut skipped = scan.skipped.iter().peekable();
    for record in &scan.records {
        if let Some(gap) = skipped.next_if(|gap| gap.start < record.offset as usize) {
            assert_eq!(
                gap.start, at,
                "a skipped range starts where valid data ended"
            );
            assert_eq!(
                gap.end, record.offset as usize,
                "and ends at the next record"
            );
        }
        assert!(
            record.offset as usize >= at,
            "records in order, not overlapping"
        );
        assert_eq!(decode_record(buf, record.offset as usize), Ok(*record));
        at = record.end();
    }
    assert!(
        skipped.next().is_none(),
        "every skipped range precedes a record"
    );
    assert!(scan.end <= buf.len().max(start));
}

/// Target `store_recovery`: a queue's directory built from the input (see `build_files`),
/// opened as a file log. Opening must succeed; every recovered record must read back;
/// opening again must recover the same records; a record appended and synced must come back
/// after a reopen; and once everything is acked, a reopen recovers nothing.
pub fn recovery(data: &[u8]) {
    let dir = Path::new(DIR);
    let io = MemoryIo::with_dir(dir);
    build_files(&io, &LOG_FILES, data);
    let (mut log, first) = open_log(&io);
    for record in &first {
        let read = log.read(record.at);
        assert_eq!(read.ok().as_ref(), Some(&record.record), "{:?}", record.at);
    }
    drop(log);
    let (mut log, second) = open_log(&io);
    assert_eq!(second, first, "recovering again finds the same records");
    let probe = log
        .append(PROBE_ID, b"probe")
        .expect("append after recovery");
    sync(&mut *log);
    drop(log);
    let (mut log, third) = open_log(&io);
    assert_eq!(third.len(), first.len() + 1);
    assert!(third.contains(&Recovered {
        id: PROBE_ID,
        at: probe,
        record: Bytes::from_static(b"probe"),
    }));
    for record in &third {
        log.ack(record.id, record.at)
            .expect("ack a recovered record");
    }
    sync(&mut *log);
    drop(log);
    let (_, fourth) = open_log(&io);
    assert_eq!(fourth, Vec::new(), "everything was acked");
}

fn open_log(io: &Arc<MemoryIo>) -> (Box<dyn MessageLog>, Vec<Recovered>) {
    let options = LogOptions {
        segment_bytes_max: SEGMENT_BYTES_MAX_FLOOR,
        sync_mode: SyncMode::Always,
    };
    open_file_log_with(Path::new(DIR), io.clone(), options)
        .unwrap_or_else(|e| panic!("recovery failed on the store's own files: {e}"))
}

fn sync(log: &mut dyn MessageLog) {
    if let Some(job) = log.prepare_sync().expect("prepare_sync") {
        job.run().expect("sync job");
    }
}

/// Target `definitions_log`: a definitions file (and maybe a leftover `.tmp`) built from the
/// input, opened as the definitions log. Opening must succeed; reopening must find the same
/// records; an appended record must come back; compacting must keep exactly the records.
pub fn definitions_log(data: &[u8]) {
    let dir = Path::new(DIR);
    let path = dir.join(DEFINITIONS_FILES[0]);
    let io = MemoryIo::with_dir(dir);
    build_files(&io, &DEFINITIONS_FILES, data);
    let open = |io: &Arc<MemoryIo>| {
        DefinitionsLog::open(&path, io.clone())
            .unwrap_or_else(|e| panic!("opening the definitions log failed: {e}"))
    };
    let (log, first) = open(&io);
    drop(log);
    let (mut log, second) = open(&io);
    assert_eq!(second, first, "reopening finds the same records");
    log.append(b"probe").expect("append");
    drop(log);
    let (mut log, mut third) = open(&io);
    assert_eq!(third.pop().as_deref(), Some(&b"probe"[..]));
    assert_eq!(third, first);
    log.compact(&first).expect("compact");
    let files = io.snapshot();
    assert!(files.keys().all(|p| !p.ends_with(DEFINITIONS_FILES[1])));
    drop(log);
    let (_, fourth) = open(&io);
    assert_eq!(fourth, first, "compaction keeps every record");
}
