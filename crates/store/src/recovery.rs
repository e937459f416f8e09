//! Opening a message log: reading back every segment and ack file in a queue's directory and
//! rebuilding the in-memory account of them. It owns the recovery rules (docs/storage.md,
//! "Recovery") and must never refuse to start because of the store's own files: damage is
//! logged with file and offset, then dropped, skipped or moved aside. Only the environment
//! failing (a directory that cannot be listed, a read that fails) is an error.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::file_log::{acks_path, msgs_path, FileLog};
use crate::format::{
    check_file_header, decode_ack_entry, scan_records, ACKS_MAGIC, ACK_ENTRY_BYTES,
    FILE_HEADER_BYTES, RECORD_BYTES_MAX, RECORD_HEADER_BYTES, SEGMENT_MAGIC,
};
use crate::io::{FileIo, Io, OpenMode};
use crate::segment::Segment;
use crate::{
    Location, LogOptions, Recovered, StoreError, SEGMENT_BYTES_MAX_CEILING, SEGMENT_BYTES_MAX_FLOOR,
};

/// No file the store writes is larger: a full segment followed by the largest record.
/// Anything larger is not ours, and is moved aside rather than read into memory.
pub const SEGMENT_FILE_BYTES_MAX: u64 = SEGMENT_BYTES_MAX_CEILING as u64
    + FILE_HEADER_BYTES as u64
    + RECORD_HEADER_BYTES as u64
    + RECORD_BYTES_MAX as u64;
/// Suffix given to a file moved aside because its header is not one this code writes.
pub const CORRUPT_SUFFIX: &str = ".corrupt";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FileKind {
    Msgs,
    Acks,
}

/// Parses one of the store's file names: `msgs.<N>`, `acks.<N>`, optionally `.corrupt`.
/// `N` must be written canonically (no sign, no leading zero) or the file is not ours.
pub(crate) fn parse_name(name: &str) -> Option<(FileKind, u32, bool)> {
    let (stem, corrupt) = match name.strip_suffix(CORRUPT_SUFFIX) {
        Some(stem) => (stem, true),
        None => (name, false),
    };
    let (kind, digits) = if let Some(digits) = stem.strip_prefix("msgs.") {
        (FileKind::Msgs, digits)
    } else {
        (FileKind::Acks, stem.strip_prefix("acks.")?)
    };
    let number: u32 = digits.parse().ok()?;
    (number.to_string() == digits).then_some((kind, number, corrupt))
}

/// What reading a file with a header gave.
pub(crate) enum Loaded {
    Valid(Vec<u8>, Arc<dyn FileIo>),
    /// Shorter than a header: it held nothing and was removed.
    Removed,
    MovedAside,
}

/// Reads a whole file and checks its header; a file that is not one of ours is moved aside.
pub(crate) fn load(
    io: &dyn Io,
    path: &Path,
    magic: [u8; 8],
    max_bytes: u64,
) -> Result<Loaded, StoreError> {
    let file = io
        .open(path, OpenMode::ReadWrite)
        .map_err(StoreError::io(path))?;
    let len = file.len().map_err(StoreError::io(path))?;
    if len > max_bytes {
        move_aside(io, path, "larger than any file the store writes");
        return Ok(Loaded::MovedAside);
    }
    if len < u64::from(FILE_HEADER_BYTES) {
        if len > 0 {
            tracing::warn!(file = %path.display(), len, "file shorter than its header removed");
        }
        match io.remove_file(path) {
            Ok(()) => return Ok(Loaded::Removed),
            Err(error) => return Err(StoreError::io(path)(error)),
        }
    }
    let mut buf = vec![0u8; len as usize];
    file.read_at(0, &mut buf).map_err(StoreError::io(path))?;
    if let Err(defect) = check_file_header(&buf, magic) {
        move_aside(io, path, &format!("bad file header: {defect:?}"));
        return Ok(Loaded::MovedAside);
    }
    Ok(Loaded::Valid(buf, file))
}

/// Renames `path` to `path.corrupt` so nobody reads it again but an operator still can.
pub(crate) fn move_aside(io: &dyn Io, path: &Path, reason: &str) {
    let mut aside = path.as_os_str().to_owned();
    aside.push(CORRUPT_SUFFIX);
    let aside = PathBuf::from(aside);
    tracing::error!(file = %path.display(), reason, to = %aside.display(), "file moved aside");
    if let Err(error) = io.rename(path, &aside) {
        tracing::error!(file = %path.display(), error = %error, "could not move file aside");
    }
}

/// Truncates a torn tail; failing to is logged, never fatal (the tail is never trusted).
pub(crate) fn drop_tail(file: &dyn FileIo, path: &Path, valid_end: usize, len: usize) {
    tracing::warn!(
        file = %path.display(),
        offset = valid_end,
        bytes = len - valid_end,
        "torn tail dropped"
    );
    if let Err(error) = file.truncate(valid_end as u64) {
        tracing::warn!(file = %path.display(), error = %error, "could not truncate torn tail");
    }
}

/// The store's files found in a directory.
#[derive(Default)]
struct Inventory {
    msgs: BTreeSet<u32>,
    acks: BTreeSet<u32>,
    /// The highest segment number any file (even one moved aside) uses: never reused.
    highest: Option<u32>,
}

impl Inventory {
    fn take(dir: &Path, names: &[String]) -> Inventory {
        let mut inventory = Inventory::default();
        for name in names {
            let Some((kind, number, corrupt)) = parse_name(name) else {
                tracing::warn!(dir = %dir.display(), file = %name, "ignoring a foreign file");
                continue;
            };
            inventory.highest = inventory.highest.max(Some(number));
            match (kind, corrupt) {
                (_, true) => {}
                (FileKind::Msgs, false) => {
                    inventory.msgs.insert(number);
                }
                (FileKind::Acks, false) => {
                    inventory.acks.insert(number);
                }
            }
        }
        inventory
    }
}

/// Opens the log in `dir`: see docs/storage.md, "Recovery".
pub(crate) fn open(
    dir: &Path,
    io: Arc<dyn Io>,
    options: LogOptions,
) -> Result<(FileLog, Vec<Recovered>), StoreError> {
    let mut recovered = Vec::new();
    let log = open_visit(dir, io, options, &mut |r| recovered.push(r))?;
    recovered.sort_by_key(|record| record.id);
    Ok((log, recovered))
}

/// Opens the log in `dir`, handing each unacked record to `visit` as its segment is read
/// (segment by segment, in file order: id order for a log whose ids were appended in
/// increasing order), so a deep log is never held in memory at once.
pub(crate) fn open_visit(
    dir: &Path,
    io: Arc<dyn Io>,
    options: LogOptions,
    visit: &mut dyn FnMut(Recovered),
) -> Result<FileLog, StoreError> {
    let allowed = SEGMENT_BYTES_MAX_FLOOR..=SEGMENT_BYTES_MAX_CEILING;
    if !allowed.contains(&options.segment_bytes_max) {
        return Err(StoreError::InvalidOptions("segment_bytes_max out of range"));
    }
    ensure_dir(&*io, dir)?;
    let names = io.list_dir(dir).map_err(StoreError::io(dir))?;
    let inventory = Inventory::take(dir, &names);
    let mut segments = BTreeMap::new();
    for &number in &inventory.msgs {
        let has_acks = inventory.acks.contains(&number);
        if let Some(segment) = recover_segment(&*io, dir, number, has_acks, visit)? {
            segments.insert(number, segment);
        }
    }
    for &number in inventory.acks.difference(&inventory.msgs) {
        let path = acks_path(dir, number);
        tracing::warn!(file = %path.display(), "ack file without its segment removed");
        io.remove_file(&path).map_err(StoreError::io(&path))?;
    }
    let next_segment = match inventory.highest {
        None => 1,
        Some(highest) => highest
            .checked_add(1)
            .ok_or_else(|| StoreError::SegmentNumbersExhausted(dir.to_path_buf()))?,
    };
    let mut log = FileLog::new(dir, io, options, segments, next_segment);
    log.delete_fully_acked()?;
    Ok(log)
}

fn ensure_dir(io: &dyn Io, dir: &Path) -> Result<(), StoreError> {
    match io.list_dir(dir) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            io.create_dir_all(dir).map_err(StoreError::io(dir))?;
            let parent = dir.parent().unwrap_or(Path::new("."));
            io.sync_dir(parent).map_err(StoreError::io(parent))
        }
        Err(error) => Err(StoreError::io(dir)(error)),
    }
}

/// Reads one segment and its acks: returns its account, pushing its unacked records.
fn recover_segment(
    io: &dyn Io,
    dir: &Path,
    number: u32,
    has_acks: bool,
    visit: &mut dyn FnMut(Recovered),
) -> Result<Option<Segment>, StoreError> {
    let path = msgs_path(dir, number);
    let (buf, file) = match load(io, &path, SEGMENT_MAGIC, SEGMENT_FILE_BYTES_MAX)? {
        Loaded::Valid(buf, file) => (buf, file),
        other => {
            let acks = acks_path(dir, number);
            match other {
                _ if !has_acks => {}
                Loaded::MovedAside => move_aside(io, &acks, "its segment was moved aside"),
                _ => io.remove_file(&acks).map_err(StoreError::io(&acks))?,
            }
            return Ok(None);
        }
    };
    let scan = scan_records(&buf, FILE_HEADER_BYTES as usize);
    for skipped in &scan.skipped {
        tracing::warn!(
            file = %path.display(),
            offset = skipped.start,
            bytes = skipped.len(),
            "damaged record skipped"
        );
    }
    if scan.end < buf.len() {
        drop_tail(&*file, &path, scan.end, buf.len());
    }
    let (acked, acks_len) = match has_acks {
        true => load_acks(io, &acks_path(dir, number))?,
        false => (HashMap::new(), 0),
    };
    let mut segment = Segment::new(scan.end as u64);
    segment.acks_bytes = acks_len;
    segment.acks_written = acks_len;
    segment.acks_inherited = acks_len > 0;
    for record in &scan.records {
        segment.push(record.offset);
        match acked.get(&record.offset) {
            Some(id) if *id == record.id => _ = segment.settle(record.offset),
            Some(id) => tracing::warn!(
                file = %path.display(),
                offset = record.offset,
                record_id = record.id,
                ack_id = id,
                "ack names another id than the record: the record is kept"
            ),
            None => visit(Recovered {
                id: record.id,
                at: Location {
                    segment: number,
                    offset: record.offset,
                    len: record.len,
                },
                record: Bytes::copy_from_slice(&buf[record.payload()]),
            }),
        }
    }
    Ok(Some(segment))
}

/// Reads an ack file: the acked offsets with their ids, and the length new entries go after.
fn load_acks(io: &dyn Io, path: &Path) -> Result<(HashMap<u32, u64>, u64), StoreError> {
    let (buf, file) = match load(io, path, ACKS_MAGIC, SEGMENT_FILE_BYTES_MAX)? {
        Loaded::Valid(buf, file) => (buf, file),
        Loaded::Removed | Loaded::MovedAside => return Ok((HashMap::new(), 0)),
    };
    let header = FILE_HEADER_BYTES as usize;
    let entry_bytes = ACK_ENTRY_BYTES as usize;
    let whole = header + (buf.len() - header) / entry_bytes * entry_bytes;
    let mut acked = HashMap::new();
    for (index, entry) in buf[header..whole].chunks_exact(entry_bytes).enumerate() {
        match decode_ack_entry(entry) {
            Some((offset, id)) => _ = acked.insert(offset, id),
            None => tracing::warn!(
                file = %path.display(),
                offset = header + index * entry_bytes,
                "damaged ack entry ignored: its record will come back"
            ),
        }
    }
    if whole < buf.len() {
        // New entries are written at `whole`, overwriting the partial one even if this fails.
        drop_tail(&*file, path, whole, buf.len());
    }
    Ok((acked, whole as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_canonical_names() {
        assert_eq!(parse_name("msgs.7"), Some((FileKind::Msgs, 7, false)));
        assert_eq!(parse_name("acks.12"), Some((FileKind::Acks, 12, false)));
        assert_eq!(
            parse_name("msgs.3.corrupt"),
            Some((FileKind::Msgs, 3, true))
        );
        for foreign in [
            "msgs.01",
            "msgs.+1",
            "msgs.",
            "msgs.x",
            "README",
            "acks.1.bak",
        ] {
            assert_eq!(parse_name(foreign), None, "{foreign}");
        }
    }
}
