//! The in-memory account of one segment: which offsets hold records and which of those are
//! settled, plus the sizes of its two files. It owns no file handle and does no I/O; the
//! log decides what to do when a segment becomes fully acked.
//!
//! Four bytes and one bit per record: the offsets let `ack` and `read` refuse a location that
//! is not a record start, and the bits refuse a second ack, which would otherwise count twice
//! and delete a segment that still holds live records.

/// One segment's records and sizes.
#[derive(Debug)]
pub(crate) struct Segment {
    /// Frame offsets of the records, ascending (records are only ever appended).
    offsets: Vec<u32>,
    /// Bit `i` set: record `i` is acked.
    acked: Vec<u64>,
    acked_count: usize,
    /// Bytes of `msgs.<N>`, including bytes still buffered in the process.
    pub msgs_bytes: u64,
    /// Bytes of `acks.<N>`, including entries still buffered in the process.
    pub acks_bytes: u64,
    /// Bytes of `acks.<N>` already written to the OS: where the next entries go.
    pub acks_written: u64,
    /// `acks.<N>` was found by recovery and this log has not written to it yet: its bytes
    /// and its directory entry may not be durable (see `adopt_ack_file` in file_log.rs).
    pub acks_inherited: bool,
}

impl Segment {
    pub fn new(msgs_bytes: u64) -> Segment {
        Segment {
            offsets: Vec::new(),
            acked: Vec::new(),
            acked_count: 0,
            msgs_bytes,
            acks_bytes: 0,
            acks_written: 0,
            acks_inherited: false,
        }
    }

    pub fn push(&mut self, offset: u32) {
        debug_assert!(self.offsets.last().is_none_or(|last| *last < offset));
        if self.offsets.len().is_multiple_of(64) {
            self.acked.push(0);
        }
        self.offsets.push(offset);
    }

    fn index_of(&self, offset: u32) -> Option<usize> {
        self.offsets.binary_search(&offset).ok()
    }

    fn is_acked(&self, index: usize) -> bool {
        self.acked[index / 64] & (1 << (index % 64)) != 0
    }

    /// A record starts at `offset` and is not yet acked.
    pub fn is_live(&self, offset: u32) -> bool {
        self.index_of(offset).is_some_and(|i| !self.is_acked(i))
    }

    /// Marks the record at `offset` acked; false if there is none or it already was.
    pub fn settle(&mut self, offset: u32) -> bool {
        match self.index_of(offset) {
            Some(index) if !self.is_acked(index) => {
                self.acked[index / 64] |= 1 << (index % 64);
                self.acked_count += 1;
                true
            }
            _ => false,
        }
    }

    /// Every record is acked (also true when the segment holds none).
    pub fn fully_acked(&self) -> bool {
        self.acked_count == self.offsets.len()
    }

    pub fn disk_bytes(&self) -> u64 {
        self.msgs_bytes + self.acks_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settles_each_record_once_and_only_real_ones() {
        let mut segment = Segment::new(16);
        for i in 0..130u32 {
            segment.push(16 + i * 30);
        }
        assert!(!segment.settle(17), "not a record start");
        assert!(segment.settle(16 + 129 * 30));
        assert!(!segment.settle(16 + 129 * 30), "second ack refused");
        assert!(!segment.is_live(16 + 129 * 30));
        assert!(segment.is_live(16));
        for i in 0..129u32 {
            assert!(!segment.fully_acked());
            assert!(segment.settle(16 + i * 30));
        }
        assert!(segment.fully_acked());
    }
}
