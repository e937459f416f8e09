//! Warren's message store interface. A queue hands the store opaque records (it knows no
//! AMQP) and asks it to make them durable; the store answers when they are. This issue's
//! broker keeps everything in memory (`MemoryStore`); the file store of the durability work
//! implements the same trait, and one test suite runs against every implementation.

use bytes::Bytes;

/// Errors a store reports. Any error means "not durable": never confirm on one.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("record {0} is not in the store")]
    Missing(u64),
}

/// One queue's log of messages, addressed by the queue's message id (increasing).
pub trait QueueStore: Send + 'static {
    /// Appends a record. It is durable only after the next successful `sync`.
    fn append(&mut self, id: u64, record: Bytes) -> Result<(), StoreError>;
    /// Marks a record as settled; its space may be reclaimed.
    fn remove(&mut self, id: u64) -> Result<(), StoreError>;
    /// Makes every appended record durable.
    fn sync(&mut self) -> Result<(), StoreError>;
    /// Records still held, in id order (what a restart would recover).
    fn recover(&mut self) -> Result<Vec<(u64, Bytes)>, StoreError>;
}

/// Keeps records in memory: nothing survives a restart.
#[derive(Debug, Default)]
pub struct MemoryStore {
    records: std::collections::BTreeMap<u64, Bytes>,
}

impl QueueStore for MemoryStore {
    fn append(&mut self, id: u64, record: Bytes) -> Result<(), StoreError> {
        self.records.insert(id, record);
        Ok(())
    }

    fn remove(&mut self, id: u64) -> Result<(), StoreError> {
        self.records
            .remove(&id)
            .map(|_| ())
            .ok_or(StoreError::Missing(id))
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    fn recover(&mut self) -> Result<Vec<(u64, Bytes)>, StoreError> {
        Ok(self.records.iter().map(|(k, v)| (*k, v.clone())).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The suite every store implementation must pass.
    fn store_suite(store: &mut dyn QueueStore) {
        store.append(1, Bytes::from_static(b"a")).unwrap();
        store.append(2, Bytes::from_static(b"b")).unwrap();
        store.append(3, Bytes::from_static(b"c")).unwrap();
        store.sync().unwrap();
        store.remove(2).unwrap();
        assert!(store.remove(2).is_err(), "double remove must fail");
        let got = store.recover().unwrap();
        assert_eq!(
            got,
            vec![(1, Bytes::from_static(b"a")), (3, Bytes::from_static(b"c"))]
        );
    }

    #[test]
    fn memory_store_passes_the_suite() {
        store_suite(&mut MemoryStore::default());
    }
}
