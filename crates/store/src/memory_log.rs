//! The memory message log: for transient queues and as the reference the file log is tested
//! against (one test suite runs against both). It keeps records in a map and has nothing to
//! make durable; it must not grow any behaviour the file log lacks.

use std::collections::HashMap;

use bytes::Bytes;

use crate::format::RECORD_BYTES_MAX;
use crate::{Location, MessageLog, StoreError, SyncJob};

/// A message log that keeps its records in memory: nothing survives a restart.
pub fn memory_log() -> Box<dyn MessageLog> {
    Box::new(MemoryLog::default())
}

#[derive(Debug, Default)]
struct MemoryLog {
    records: HashMap<(u32, u32), (u64, Bytes)>,
    /// Appends so far: the location of the next one (segment = high half, offset = low half).
    appended: u64,
}

impl MessageLog for MemoryLog {
    fn append(&mut self, id: u64, record: &[u8]) -> Result<Location, StoreError> {
        if record.len() > RECORD_BYTES_MAX as usize {
            return Err(StoreError::RecordTooLarge {
                len: record.len(),
                max: RECORD_BYTES_MAX,
            });
        }
        let at = Location {
            segment: (self.appended >> 32) as u32,
            offset: self.appended as u32,
            len: record.len() as u32,
        };
        self.appended += 1;
        let record = Bytes::copy_from_slice(record);
        self.records.insert((at.segment, at.offset), (id, record));
        Ok(at)
    }

    fn read(&mut self, at: Location) -> Result<Bytes, StoreError> {
        match self.records.get(&(at.segment, at.offset)) {
            Some((_, record)) if record.len() == at.len as usize => Ok(record.clone()),
            _ => Err(StoreError::NotFound(at)),
        }
    }

    fn ack(&mut self, id: u64, at: Location) -> Result<(), StoreError> {
        match self.records.get(&(at.segment, at.offset)) {
            Some((held, _)) if *held == id => {
                self.records.remove(&(at.segment, at.offset));
                Ok(())
            }
            _ => Err(StoreError::NotFound(at)),
        }
    }

    fn prepare_sync(&mut self) -> Result<Option<SyncJob>, StoreError> {
        Ok(None)
    }

    fn disk_bytes(&self) -> u64 {
        0
    }

    fn destroy(self: Box<Self>) -> Result<(), StoreError> {
        Ok(())
    }
}
