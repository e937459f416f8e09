//! The byte layout of every file the store writes, and nothing else: encoding and checking
//! file headers, record frames and ack entries, and scanning a damaged segment for the records
//! that still verify. No I/O happens here, so every rule is testable on plain byte slices.
//! docs/storage.md describes the same layout for humans; keep the two in step.
//!
//! All integers are little-endian. Every file starts with a 16-byte header:
//!
//! ```text
//! 0..8   magic        8 ASCII bytes naming the kind of file (segment, acks, definitions)
//! 8..12  version      u32, FORMAT_VERSION
//! 12..16 crc32c       of bytes 0..12
//! ```
//!
//! A record frame (segments and the definitions log) is a 20-byte header and the payload:
//!
//! ```text
//! 0..4   magic        "WREC"
//! 4..8   len          u32, payload bytes (at most RECORD_BYTES_MAX)
//! 8..16  id           u64, the caller's id (definitions: the record's index)
//! 16..20 crc32c       of bytes 0..16 followed by the payload
//! 20..   payload
//! ```
//!
//! An ack entry is 16 bytes: offset u32 (of the settled record in the segment), id u64,
//! crc32c u32 of bytes 0..12.

use std::ops::Range;

/// The on-disk format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes in every file's header.
pub const FILE_HEADER_BYTES: u32 = 16;
/// Bytes in a record frame's header (before the payload).
pub const RECORD_HEADER_BYTES: u32 = 20;
/// Bytes in one ack entry.
pub const ACK_ENTRY_BYTES: u32 = 16;
/// The largest payload a record may carry (an AMQP message body plus its properties).
pub const RECORD_BYTES_MAX: u32 = 512 * 1024 * 1024;

/// Magic of a segment file `msgs.<N>`.
pub const SEGMENT_MAGIC: [u8; 8] = *b"WARRNSEG";
/// Magic of an ack file `acks.<N>`.
pub const ACKS_MAGIC: [u8; 8] = *b"WARRNACK";
/// Magic of the definitions log.
pub const DEFINITIONS_MAGIC: [u8; 8] = *b"WARRNDEF";
/// Magic of a deduplication exchange's cache log (`DedupLog`).
pub const DEDUP_MAGIC: [u8; 8] = *b"WARRNDUP";
/// The first four bytes of every record frame; recovery resynchronises on them.
pub const RECORD_MAGIC: [u8; 4] = *b"WREC";

/// Why a file header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderDefect {
    TooShort,
    WrongMagic,
    UnknownVersion(u32),
    BadChecksum,
}

/// Why the bytes at some offset are not a valid record frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordDefect {
    /// The frame runs past the end of the data.
    Truncated,
    WrongMagic,
    /// The length field is above RECORD_BYTES_MAX (or differs from the expected one).
    BadLength,
    BadChecksum,
}

/// A record found by [`scan_records`]: where its frame starts, its id and payload length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScannedRecord {
    pub offset: u32,
    pub id: u64,
    pub len: u32,
}

impl ScannedRecord {
    /// The payload's byte range in the scanned buffer.
    pub fn payload(&self) -> Range<usize> {
        let start = self.offset as usize + RECORD_HEADER_BYTES as usize;
        start..start + self.len as usize
    }

    /// The offset just past this record's frame.
    pub fn end(&self) -> usize {
        self.payload().end
    }
}

/// What a scan of a record file found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Records whose checksum verifies, in file order.
    pub records: Vec<ScannedRecord>,
    /// Damaged byte ranges that were skipped because a valid record follows them.
    pub skipped: Vec<Range<usize>>,
    /// Where valid data ends; bytes from here to the end of the buffer are a torn tail.
    pub end: usize,
}

pub fn encode_file_header(magic: [u8; 8]) -> [u8; FILE_HEADER_BYTES as usize] {
    let mut header = [0u8; FILE_HEADER_BYTES as usize];
    header[0..8].copy_from_slice(&magic);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    let crc = crc32c::crc32c(&header[0..12]);
    header[12..16].copy_from_slice(&crc.to_le_bytes());
    header
}

pub fn check_file_header(buf: &[u8], magic: [u8; 8]) -> Result<(), HeaderDefect> {
    let header = buf
        .get(..FILE_HEADER_BYTES as usize)
        .ok_or(HeaderDefect::TooShort)?;
    if header[0..8] != magic {
        return Err(HeaderDefect::WrongMagic);
    }
    if read_u32(header, 12) != crc32c::crc32c(&header[0..12]) {
        return Err(HeaderDefect::BadChecksum);
    }
    match read_u32(header, 8) {
        FORMAT_VERSION => Ok(()),
        other => Err(HeaderDefect::UnknownVersion(other)),
    }
}

/// The header of a record frame carrying `payload`. The caller checked the payload's length.
pub fn encode_record_header(id: u64, payload: &[u8]) -> [u8; RECORD_HEADER_BYTES as usize] {
    debug_assert!(payload.len() <= RECORD_BYTES_MAX as usize);
    let mut header = [0u8; RECORD_HEADER_BYTES as usize];
    header[0..4].copy_from_slice(&RECORD_MAGIC);
    header[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[8..16].copy_from_slice(&id.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header[0..16]), payload);
    header[16..20].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Checks the record frame starting at `offset` in `buf`, without trusting any of its fields.
pub fn decode_record(buf: &[u8], offset: usize) -> Result<ScannedRecord, RecordDefect> {
    let header_end = offset
        .checked_add(RECORD_HEADER_BYTES as usize)
        .ok_or(RecordDefect::Truncated)?;
    let header = buf.get(offset..header_end).ok_or(RecordDefect::Truncated)?;
    if header[0..4] != RECORD_MAGIC {
        return Err(RecordDefect::WrongMagic);
    }
    let len = read_u32(header, 4);
    if len > RECORD_BYTES_MAX {
        return Err(RecordDefect::BadLength);
    }
    let payload = header_end
        .checked_add(len as usize)
        .and_then(|end| buf.get(header_end..end))
        .ok_or(RecordDefect::Truncated)?;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header[0..16]), payload);
    if crc != read_u32(header, 16) {
        return Err(RecordDefect::BadChecksum);
    }
    let offset = u32::try_from(offset).map_err(|_| RecordDefect::Truncated)?;
    Ok(ScannedRecord {
        offset,
        id: read_u64(header, 8),
        len,
    })
}

/// Finds every record in `buf` from `start` on. A damaged frame's length cannot be trusted,
/// so after one the scan moves forward byte by byte to the next record magic whose frame
/// verifies; if none does, everything from the damage on is a torn tail.
pub fn scan_records(buf: &[u8], start: usize) -> Scan {
    let mut scan = Scan::default();
    let mut pos = start;
    while pos < buf.len() {
        if let Ok(record) = decode_record(buf, pos) {
            scan.records.push(record);
            pos = record.end();
            continue;
        }
        match find_next_record(buf, pos + 1) {
            Some(next) => {
                scan.skipped.push(pos..next);
                pos = next;
            }
            None => break,
        }
    }
    scan.end = pos.min(buf.len());
    scan
}

fn find_next_record(buf: &[u8], from: usize) -> Option<usize> {
    let mut pos = from;
    while let Some(found) = buf
        .get(pos..)?
        .windows(RECORD_MAGIC.len())
        .position(is_magic)
    {
        let candidate = pos + found;
        if decode_record(buf, candidate).is_ok() {
            return Some(candidate);
        }
        pos = candidate + 1;
    }
    None
}

fn is_magic(window: &[u8]) -> bool {
    window == RECORD_MAGIC
}

pub fn encode_ack_entry(offset: u32, id: u64) -> [u8; ACK_ENTRY_BYTES as usize] {
    let mut entry = [0u8; ACK_ENTRY_BYTES as usize];
    entry[0..4].copy_from_slice(&offset.to_le_bytes());
    entry[4..12].copy_from_slice(&id.to_le_bytes());
    let crc = crc32c::crc32c(&entry[0..12]);
    entry[12..16].copy_from_slice(&crc.to_le_bytes());
    entry
}

/// Decodes one ack entry: `(offset, id)`, or None when its checksum fails.
pub fn decode_ack_entry(entry: &[u8]) -> Option<(u32, u64)> {
    if entry.len() != ACK_ENTRY_BYTES as usize {
        return None;
    }
    if read_u32(entry, 12) != crc32c::crc32c(&entry[0..12]) {
        return None;
    }
    Some((read_u32(entry, 0), read_u64(entry, 4)))
}

fn read_u32(buf: &[u8], at: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(bytes)
}

fn read_u64(buf: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(id: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = encode_record_header(id, payload).to_vec();
        out.extend_from_slice(payload);
        out
    }

    /// Pins format version 1 byte for byte: if this test must change, the format changed and
    /// FORMAT_VERSION must be bumped (keeping a reader for the old version).
    #[test]
    fn version_1_bytes_are_pinned() {
        let header = encode_file_header(SEGMENT_MAGIC);
        assert_eq!(&header[0..12], b"WARRNSEG\x01\x00\x00\x00");
        let crc = crc32c::crc32c(b"WARRNSEG\x01\x00\x00\x00");
        assert_eq!(header[12..16], crc.to_le_bytes());

        let record = frame(0x0102_0304_0506_0708, b"hi");
        let mut expected = b"WREC\x02\x00\x00\x00\x08\x07\x06\x05\x04\x03\x02\x01".to_vec();
        let crc = crc32c::crc32c_append(crc32c::crc32c(&expected), b"hi");
        expected.extend_from_slice(&crc.to_le_bytes());
        expected.extend_from_slice(b"hi");
        assert_eq!(record, expected);

        let ack = encode_ack_entry(36, 7);
        assert_eq!(
            &ack[0..12],
            b"\x24\x00\x00\x00\x07\x00\x00\x00\x00\x00\x00\x00"
        );
        assert_eq!(decode_ack_entry(&ack), Some((36, 7)));
    }

    #[test]
    fn header_defects_are_told_apart() {
        let good = encode_file_header(ACKS_MAGIC);
        assert_eq!(check_file_header(&good, ACKS_MAGIC), Ok(()));
        assert_eq!(
            check_file_header(&good, SEGMENT_MAGIC),
            Err(HeaderDefect::WrongMagic)
        );
        assert_eq!(
            check_file_header(&good[..10], ACKS_MAGIC),
            Err(HeaderDefect::TooShort)
        );
        let mut future = good;
        future[8] = 2;
        let crc = crc32c::crc32c(&future[0..12]);
        future[12..16].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            check_file_header(&future, ACKS_MAGIC),
            Err(HeaderDefect::UnknownVersion(2))
        );
        let mut flipped = good;
        flipped[9] ^= 1;
        assert_eq!(
            check_file_header(&flipped, ACKS_MAGIC),
            Err(HeaderDefect::BadChecksum)
        );
    }

    #[test]
    fn scan_skips_a_damaged_middle_record_and_reports_a_torn_tail() {
        let mut buf = frame(1, b"one");
        let second = buf.len();
        buf.extend(frame(2, b"two"));
        let third = buf.len();
        buf.extend(frame(3, b"three"));
        let tail = buf.len();
        buf.extend(&frame(4, b"four")[..10]);
        buf[second + 5] ^= 0xff; // the length field of record 2
        let scan = scan_records(&buf, 0);
        let ids: Vec<u64> = scan.records.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![1, 3]);
        assert_eq!(scan.skipped, vec![second..third]);
        assert_eq!(scan.end, tail);
    }

    #[test]
    fn decode_rejects_lengths_past_the_limit_and_the_buffer() {
        let mut buf = frame(9, b"x");
        assert_eq!(decode_record(&buf[..5], 0), Err(RecordDefect::Truncated));
        buf[4..8].copy_from_slice(&(RECORD_BYTES_MAX + 1).to_le_bytes());
        assert_eq!(decode_record(&buf, 0), Err(RecordDefect::BadLength));
        buf[4..8].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(decode_record(&buf, 0), Err(RecordDefect::Truncated));
        assert_eq!(
            decode_record(&buf, usize::MAX),
            Err(RecordDefect::Truncated)
        );
    }

    #[test]
    fn a_zeroed_ack_entry_does_not_verify() {
        assert_eq!(decode_ack_entry(&[0u8; ACK_ENTRY_BYTES as usize]), None);
    }
}
