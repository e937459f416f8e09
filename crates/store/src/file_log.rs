//! `FileLog`: one queue's message log on disk while it runs — appending to the segment being
//! written, reading records back, recording acks, deleting fully acked segments and handing
//! out sync jobs. Opening (recovery) lives in recovery.rs; the byte layout in format.rs.
//!
//! Writes are buffered in the process (up to `WRITE_BUFFER_BYTES_MAX` of records and
//! `ACK_BUFFER_ENTRIES_MAX` acks) and reach the OS by `prepare_sync` at the latest, so a burst
//! of appends costs one `write` per buffer, and one fsync per touched file per batch.
//! Any error while writing poisons the log (see sync_job.rs for why).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::format::{
    decode_record, encode_ack_entry, encode_file_header, encode_record_header, RecordDefect,
    ACK_ENTRY_BYTES, FILE_HEADER_BYTES, RECORD_BYTES_MAX, RECORD_HEADER_BYTES, SEGMENT_MAGIC,
};
use crate::io::{FileIo, Io, OpenMode};
use crate::segment::Segment;
use crate::sync_job::{SyncJob, SyncShared};
use crate::{Location, LogOptions, MessageLog, StoreError};

/// Record bytes buffered in the process before they are written to the OS.
pub const WRITE_BUFFER_BYTES_MAX: usize = 256 * 1024;
/// Ack entries buffered in the process before they are written to the OS.
pub const ACK_BUFFER_ENTRIES_MAX: usize = 4096;

pub(crate) fn msgs_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("msgs.{segment}"))
}

pub(crate) fn acks_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("acks.{segment}"))
}

/// Makes an ack file found by recovery safe to append to; the caller also fsyncs the
/// directory with the next job.
///
/// Recovery reads what the OS shows, which after a failed fsync (the previous log was
/// poisoned, then reopened without a crash) may be bytes that never reached the disk and
/// never will: Linux marked their pages clean. If the file's header is among them, a
/// successful fsync of entries appended now would still leave a file whose header a crash
/// zeroes, and recovery would move the whole file aside, bringing back records whose acks were
/// confirmed. Writing the header again dirties it, so the next job's fsync persists it.
/// Likewise the file's directory entry may never have been synced (the previous owner was
/// poisoned or killed before its job synced the directory).
fn adopt_ack_file(file: &dyn FileIo, path: &Path) -> Result<(), StoreError> {
    let header = encode_file_header(crate::format::ACKS_MAGIC);
    file.write_at(0, &header).map_err(StoreError::io(path))
}

/// The segment being appended to.
struct Writer {
    segment: u32,
    path: PathBuf,
    file: Arc<dyn FileIo>,
    /// Bytes already handed to the OS; the buffer continues from here.
    written: u64,
    buffer: Vec<u8>,
    /// Bytes reached the OS since the file was last given to a sync job.
    needs_sync: bool,
}

impl Writer {
    fn end(&self) -> u64 {
        self.written + self.buffer.len() as u64
    }

    /// A record of `frame` bytes fits, or the segment is empty (a big record's own segment).
    fn has_room(&self, frame: u64, segment_bytes_max: u32) -> bool {
        self.end() == u64::from(FILE_HEADER_BYTES) || self.end() + frame <= segment_bytes_max.into()
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if !self.buffer.is_empty() {
            self.file
                .write_at(self.written, &self.buffer)
                .map_err(StoreError::io(&self.path))?;
            self.written += self.buffer.len() as u64;
            self.buffer.clear();
            self.needs_sync = true;
        }
        Ok(())
    }

    fn write_record(&mut self, id: u64, record: &[u8]) -> Result<(), StoreError> {
        let header = encode_record_header(id, record);
        let frame = header.len() + record.len();
        if self.buffer.len() + frame > WRITE_BUFFER_BYTES_MAX {
            self.flush()?;
        }
        if frame < WRITE_BUFFER_BYTES_MAX {
            self.buffer.extend_from_slice(&header);
            self.buffer.extend_from_slice(record);
            return Ok(());
        }
        // Too big to be worth copying into the buffer: straight to the OS.
        let io_error = StoreError::io(&self.path);
        let payload_at = self.written + header.len() as u64;
        self.file
            .write_at(self.written, &header)
            .map_err(io_error)?;
        let io_error = StoreError::io(&self.path);
        self.file.write_at(payload_at, record).map_err(io_error)?;
        self.written += frame as u64;
        self.needs_sync = true;
        Ok(())
    }
}

/// A message log in a directory of segment and ack files.
pub(crate) struct FileLog {
    dir: PathBuf,
    io: Arc<dyn Io>,
    options: LogOptions,
    segments: BTreeMap<u32, Segment>,
    writer: Option<Writer>,
    next_segment: u32,
    /// Encoded ack entries not yet written, per segment.
    pending_acks: BTreeMap<u32, Vec<u8>>,
    pending_ack_entries: usize,
    /// Files written to since the last `prepare_sync` (the writer's aside).
    unsynced: BTreeMap<PathBuf, Arc<dyn FileIo>>,
    /// A file was created or removed in `dir` since the last `prepare_sync`.
    dir_dirty: bool,
    /// The last segment read from, kept open: consumers mostly read in order.
    reader: Option<(u32, Arc<dyn FileIo>)>,
    shared: Arc<SyncShared>,
}

impl FileLog {
    pub fn new(
        dir: &Path,
        io: Arc<dyn Io>,
        options: LogOptions,
        segments: BTreeMap<u32, Segment>,
        next_segment: u32,
    ) -> FileLog {
        FileLog {
            dir: dir.to_path_buf(),
            io,
            options,
            segments,
            writer: None,
            next_segment,
            pending_acks: BTreeMap::new(),
            pending_ack_entries: 0,
            unsynced: BTreeMap::new(),
            dir_dirty: false,
            reader: None,
            shared: Arc::new(SyncShared::default()),
        }
    }

    fn check_usable(&self) -> Result<(), StoreError> {
        match self.shared.is_poisoned() {
            true => Err(StoreError::Poisoned),
            false => Ok(()),
        }
    }

    /// An I/O error while changing the files leaves them in an unknown state: poison.
    fn poison_on_error<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::Io { path, source }) = &result {
            self.shared.poison();
            tracing::error!(
                file = %path.display(),
                error = %source,
                "write failed: the log is poisoned until it is reopened"
            );
        }
        result
    }

    fn is_writing(&self, segment: u32) -> bool {
        self.writer.as_ref().is_some_and(|w| w.segment == segment)
    }

    /// Deletes every fully acked segment that is not being written (after recovery).
    pub fn delete_fully_acked(&mut self) -> Result<(), StoreError> {
        let done: Vec<u32> = self
            .segments
            .iter()
            .filter(|(number, segment)| segment.fully_acked() && !self.is_writing(**number))
            .map(|(number, _)| *number)
            .collect();
        done.into_iter().try_for_each(|n| self.delete_segment(n))
    }

    fn append_frame(&mut self, id: u64, record: &[u8]) -> Result<Location, StoreError> {
        let frame = u64::from(RECORD_HEADER_BYTES) + record.len() as u64;
        let mut writer = match self.writer.take() {
            Some(writer) if writer.has_room(frame, self.options.segment_bytes_max) => writer,
            old => {
                if let Some(old) = old {
                    self.retire(old)?;
                }
                self.start_segment()?
            }
        };
        let offset = u32::try_from(writer.end())
            .map_err(|_| StoreError::InvalidOptions("segment offset past u32"))?;
        let at = Location {
            segment: writer.segment,
            offset,
            len: record.len() as u32,
        };
        writer.write_record(id, record)?;
        if let Some(segment) = self.segments.get_mut(&writer.segment) {
            segment.push(offset);
            segment.msgs_bytes += frame;
        }
        self.writer = Some(writer);
        Ok(at)
    }

    fn start_segment(&mut self) -> Result<Writer, StoreError> {
        let number = self.next_segment;
        self.next_segment = number
            .checked_add(1)
            .ok_or_else(|| StoreError::SegmentNumbersExhausted(self.dir.clone()))?;
        let path = msgs_path(&self.dir, number);
        let file = self
            .io
            .open(&path, OpenMode::CreateNew)
            .map_err(StoreError::io(&path))?;
        self.dir_dirty = true;
        let header = encode_file_header(SEGMENT_MAGIC);
        self.segments
            .insert(number, Segment::new(header.len() as u64));
        Ok(Writer {
            segment: number,
            path,
            file,
            written: 0,
            buffer: header.to_vec(),
            needs_sync: false,
        })
    }

    /// The segment stops being written: its bytes go to the OS and it may now be deleted.
    fn retire(&mut self, mut writer: Writer) -> Result<(), StoreError> {
        writer.flush()?;
        if writer.needs_sync {
            self.unsynced.insert(writer.path, writer.file);
        }
        let done = self
            .segments
            .get(&writer.segment)
            .is_some_and(Segment::fully_acked);
        match done {
            true => self.delete_segment(writer.segment),
            false => Ok(()),
        }
    }

    fn delete_segment(&mut self, number: u32) -> Result<(), StoreError> {
        self.segments.remove(&number);
        if let Some(entries) = self.pending_acks.remove(&number) {
            self.pending_ack_entries -= entries.len() / ACK_ENTRY_BYTES as usize;
        }
        if self.reader.as_ref().is_some_and(|(n, _)| *n == number) {
            self.reader = None;
        }
        // The segment first: if only it goes before a crash, its orphan ack file is removed
        // at recovery; the other way round its records would all come back.
        for path in [msgs_path(&self.dir, number), acks_path(&self.dir, number)] {
            self.unsynced.remove(&path);
            self.shared.forget(&path);
            match self.io.remove_file(&path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(StoreError::io(&path)(error))
                }
                _ => {}
            }
        }
        self.dir_dirty = true;
        Ok(())
    }

    fn flush_acks(&mut self) -> Result<(), StoreError> {
        for (number, entries) in std::mem::take(&mut self.pending_acks) {
            let Some(segment) = self.segments.get_mut(&number) else {
                continue;
            };
            let path = acks_path(&self.dir, number);
            let file = match self.unsynced.get(&path) {
                Some(file) => Arc::clone(file),
                None if segment.acks_written == 0 => {
                    let file = self.io.open(&path, OpenMode::CreateNew);
                    let file = file.map_err(StoreError::io(&path))?;
                    let header = encode_file_header(crate::format::ACKS_MAGIC);
                    file.write_at(0, &header).map_err(StoreError::io(&path))?;
                    segment.acks_written = header.len() as u64;
                    self.dir_dirty = true;
                    file
                }
                None => {
                    let file = self.io.open(&path, OpenMode::ReadWrite);
                    let file = file.map_err(StoreError::io(&path))?;
                    if segment.acks_inherited {
                        adopt_ack_file(&*file, &path)?;
                        segment.acks_inherited = false;
                        self.dir_dirty = true;
                    }
                    file
                }
            };
            let at = segment.acks_written;
            file.write_at(at, &entries).map_err(StoreError::io(&path))?;
            segment.acks_written += entries.len() as u64;
            self.unsynced.insert(path, file);
        }
        self.pending_ack_entries = 0;
        Ok(())
    }

    fn collect_sync(&mut self) -> Result<Option<SyncJob>, StoreError> {
        if let Some(writer) = self.writer.as_mut() {
            writer.flush()?;
            if writer.needs_sync {
                writer.needs_sync = false;
                let file = Arc::clone(&writer.file);
                self.unsynced.insert(writer.path.clone(), file);
            }
        }
        self.flush_acks()?;
        if self.unsynced.is_empty() && !self.dir_dirty && !self.shared.has_pending() {
            return Ok(None);
        }
        let files = std::mem::take(&mut self.unsynced);
        self.shared
            .hand_off(files, std::mem::take(&mut self.dir_dirty));
        let io = Arc::clone(&self.io);
        let shared = Arc::clone(&self.shared);
        let mode = self.options.sync_mode;
        Ok(Some(SyncJob::new(self.dir.clone(), io, shared, mode)))
    }

    fn reader_for(&mut self, number: u32) -> Result<Arc<dyn FileIo>, StoreError> {
        if let Some(writer) = self.writer.as_ref().filter(|w| w.segment == number) {
            return Ok(Arc::clone(&writer.file));
        }
        if let Some((_, file)) = self.reader.as_ref().filter(|(n, _)| *n == number) {
            return Ok(Arc::clone(file));
        }
        let path = msgs_path(&self.dir, number);
        let file = self
            .io
            .open(&path, OpenMode::Read)
            .map_err(StoreError::io(&path))?;
        self.reader = Some((number, Arc::clone(&file)));
        Ok(file)
    }

    /// The frame at `at` if it is still in the write buffer.
    fn buffered_frame(&self, at: Location, frame_len: usize) -> Option<Vec<u8>> {
        let writer = self.writer.as_ref().filter(|w| w.segment == at.segment)?;
        let start = u64::from(at.offset).checked_sub(writer.written)?;
        let start = usize::try_from(start).ok()?;
        writer
            .buffer
            .get(start..start.checked_add(frame_len)?)
            .map(<[u8]>::to_vec)
    }

    /// Checks a frame read back against what the caller's location promised.
    fn verify(&self, frame: Vec<u8>, at: Location) -> Result<Bytes, StoreError> {
        let defect = match decode_record(&frame, 0) {
            Ok(record) if record.len == at.len => None,
            Ok(_) => Some(RecordDefect::BadLength),
            Err(defect) => Some(defect),
        };
        match defect {
            None => Ok(Bytes::from(frame).slice(RECORD_HEADER_BYTES as usize..)),
            Some(defect) => Err(StoreError::Corrupt {
                path: msgs_path(&self.dir, at.segment),
                offset: at.offset.into(),
                defect,
            }),
        }
    }
}

impl MessageLog for FileLog {
    fn append(&mut self, id: u64, record: &[u8]) -> Result<Location, StoreError> {
        self.check_usable()?;
        if record.len() > RECORD_BYTES_MAX as usize {
            return Err(StoreError::RecordTooLarge {
                len: record.len(),
                max: RECORD_BYTES_MAX,
            });
        }
        let result = self.append_frame(id, record);
        self.poison_on_error(result)
    }

    fn read(&mut self, at: Location) -> Result<Bytes, StoreError> {
        let live = self
            .segments
            .get(&at.segment)
            .is_some_and(|segment| segment.is_live(at.offset));
        if !live || at.len > RECORD_BYTES_MAX {
            return Err(StoreError::NotFound(at));
        }
        let frame_len = RECORD_HEADER_BYTES as usize + at.len as usize;
        if let Some(frame) = self.buffered_frame(at, frame_len) {
            return self.verify(frame, at);
        }
        let file = self.reader_for(at.segment)?;
        let mut frame = vec![0u8; frame_len];
        file.read_at(at.offset.into(), &mut frame)
            .map_err(StoreError::io(&msgs_path(&self.dir, at.segment)))?;
        self.verify(frame, at)
    }

    fn ack(&mut self, id: u64, at: Location) -> Result<(), StoreError> {
        self.check_usable()?;
        let Some(segment) = self.segments.get_mut(&at.segment) else {
            return Err(StoreError::NotFound(at));
        };
        if !segment.settle(at.offset) {
            return Err(StoreError::NotFound(at));
        }
        if segment.acks_bytes == 0 {
            segment.acks_bytes = FILE_HEADER_BYTES.into();
        }
        segment.acks_bytes += u64::from(ACK_ENTRY_BYTES);
        let done = segment.fully_acked();
        let entries = self.pending_acks.entry(at.segment).or_default();
        entries.extend_from_slice(&encode_ack_entry(at.offset, id));
        self.pending_ack_entries += 1;
        let result = if done && !self.is_writing(at.segment) {
            self.delete_segment(at.segment)
        } else if self.pending_ack_entries >= ACK_BUFFER_ENTRIES_MAX {
            self.flush_acks()
        } else {
            Ok(())
        };
        self.poison_on_error(result)
    }

    fn prepare_sync(&mut self) -> Result<Option<SyncJob>, StoreError> {
        self.check_usable()?;
        let result = self.collect_sync();
        self.poison_on_error(result)
    }

    fn disk_bytes(&self) -> u64 {
        self.segments.values().map(Segment::disk_bytes).sum()
    }

    fn destroy(self: Box<Self>) -> Result<(), StoreError> {
        let names = self
            .io
            .list_dir(&self.dir)
            .map_err(StoreError::io(&self.dir))?;
        for name in names {
            if crate::recovery::parse_name(&name).is_some() {
                let path = self.dir.join(name);
                self.io.remove_file(&path).map_err(StoreError::io(&path))?;
            }
        }
        if let Err(error) = self.io.remove_dir(&self.dir) {
            tracing::warn!(
                dir = %self.dir.display(),
                error = %error,
                "queue directory kept: it holds files the store does not own"
            );
        }
        Ok(())
    }
}
