//! Queue-level deduplication (`x-message-deduplication: true`, as RabbitMQ's deduplication
//! plugin): the deduplication keys of the messages in the queue, ready or unacked. It owns
//! only that key set; the queue actor asks it before enqueueing and tells it when a message
//! leaves the queue for good (`QueueActor::discard`: ack, no-ack delivery, expiry,
//! dead-lettering, purge, length-limit drop). It is rebuilt from the recovered messages at
//! start, so it needs no file of its own.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use super::ready::Entry;
use super::store::QueueStore;
use crate::exchange::deduplication::message_key;
use crate::message::MessageRef;

/// The keys of the messages in one queue. Bounded by the queue's own length: one key
/// (at most `DEDUP_KEY_BYTES_MAX` bytes) per message in it.
#[derive(Default)]
pub(super) struct QueueDedup {
    keys: HashSet<Bytes>,
    by_id: HashMap<u64, Bytes>,
}

/// What the queue should do with a message.
pub(super) enum Admission {
    /// A message with the same key is in the queue: drop this one.
    Duplicate,
    /// Enqueue it; `Some` key to record once it has its id.
    Enqueue(Option<Bytes>),
}

impl QueueDedup {
    pub fn admit(&self, message: &MessageRef) -> Admission {
        match message_key(message.properties.headers().as_ref()) {
            Some(key) if self.keys.contains(&key) => Admission::Duplicate,
            key => Admission::Enqueue(key),
        }
    }

    /// A message recovered from the queue's log (read back if paged out).
    pub fn recover(&mut self, entry: &Entry, store: Option<&mut QueueStore>) {
        let message = match (&entry.message, entry.location, store) {
            (Some(m), _, _) => Some(m.clone()),
            (None, Some(at), Some(store)) => store.load(at),
            _ => None,
        };
        if let Some(key) = message.and_then(|m| message_key(m.properties.headers().as_ref())) {
            self.insert(entry.id, key);
        }
    }

    /// Message `id` with `key` is now in the queue.
    pub fn insert(&mut self, id: u64, key: Bytes) {
        self.keys.insert(key.clone());
        self.by_id.insert(id, key);
    }

    /// Message `id` left the queue for good: its key is free again.
    pub fn release(&mut self, id: u64) {
        if let Some(key) = self.by_id.remove(&id) {
            self.keys.remove(&key);
        }
    }
}
