//! A queue's messages as the actor tracks them (`Entry`), and the ready ones: one FIFO per
//! priority level (one level without `x-max-priority`), each kept sorted by message id so a
//! requeued message returns to its original place. Tracks the count and body bytes that length
//! limits apply to, and the bytes still held in memory (the rest is paged out to the log).
//! With `x-message-group-header`, also the FIFO message groups (`Groups`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroU64;
use std::sync::Arc;

use warren_store::Location;

use crate::message::MessageRef;

/// A message in a queue: in memory, on disk, or both.
#[derive(Debug)]
pub struct Entry {
    pub id: u64,
    /// None when paged out: read it back from `location`.
    pub message: Option<MessageRef>,
    /// Where the queue's log holds it, if it does.
    pub location: Option<Location>,
    pub priority: u8,
    /// Body bytes (what `x-max-length-bytes` counts).
    pub size: u32,
    pub redelivered: bool,
    /// How many times it came back unsettled (x-delivery-count).
    pub delivery_count: u32,
    /// Absolute expiry, Unix milliseconds (`expires_at_ms`); a niche keeps it to 8 bytes.
    expires: Option<NonZeroU64>,
    /// Its FIFO group (`x-message-group-header`), if the queue has groups and it names one.
    pub group: Option<GroupKey>,
}

/// What an `Entry` may take: one cache line. Queues hold millions of them and walk them on
/// every delivery, so a field added to it must fit (the size is checked by a test).
pub const ENTRY_BYTES_MAX: usize = 64;

/// A message group's id: the bytes of its header's value, behind a thin pointer so that an
/// `Entry` without a group pays 8 bytes for the field, not 16.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct GroupName(Box<[u8]>);

pub type GroupKey = Arc<GroupName>;

impl GroupName {
    pub fn key(bytes: &[u8]) -> GroupKey {
        Arc::new(GroupName(bytes.into()))
    }
}

/// The group a message belongs to: the value of `header` in its headers (a string, or an
/// integer written in decimal); None without it.
pub fn group_of(message: &crate::message::Message, header: &str) -> Option<GroupKey> {
    let value = message.properties.headers().as_ref()?.inner().get(header)?;
    if let Some(s) = crate::args::as_str(value) {
        return Some(GroupName::key(s.as_bytes()));
    }
    crate::args::as_i64(value).map(|n| GroupName::key(n.to_string().as_bytes()))
}

impl Entry {
    pub fn new(id: u64, message: MessageRef, expires_at_ms: Option<u64>) -> Entry {
        Entry {
            id,
            priority: message.properties.priority().unwrap_or(0),
            size: message.body.len().min(u32::MAX as usize) as u32,
            message: Some(message),
            location: None,
            redelivered: false,
            delivery_count: 0,
            expires: expires_at_ms.map(expiry),
            group: None,
        }
    }

    /// Absolute expiry, Unix milliseconds.
    pub fn expires_at_ms(&self) -> Option<u64> {
        self.expires.map(NonZeroU64::get)
    }
}

/// An expiry as stored: the instant 0 (1970) is kept as 1 ms later, both long past.
fn expiry(at_ms: u64) -> NonZeroU64 {
    NonZeroU64::new(at_ms).unwrap_or(NonZeroU64::MIN)
}

/// FIFO message groups: a group with a delivery in flight is busy, and its messages that
/// reach the head meanwhile wait, parked, in publish order; when the delivery is settled the
/// group's oldest parked message goes back to its place. Parked messages are still ready
/// (counted in `len` and `bytes`).
#[derive(Debug, Default)]
struct Groups {
    busy: HashSet<GroupKey>,
    parked: HashMap<GroupKey, VecDeque<Entry>>,
}

#[derive(Debug)]
pub struct ReadyQueue {
    levels: Vec<VecDeque<Entry>>,
    /// Some when the queue has `x-message-group-header`.
    groups: Option<Box<Groups>>,
    len: usize,
    bytes: u64,
    resident_bytes: u64,
    resident_count: usize,
}

impl ReadyQueue {
    /// `max_priority` None: one level; Some(n): levels 0..=n.
    pub fn new(max_priority: Option<u8>) -> Self {
        let levels = max_priority.map(|p| p as usize + 1).unwrap_or(1);
        ReadyQueue {
            levels: (0..levels).map(|_| VecDeque::new()).collect(),
            groups: None,
            len: 0,
            bytes: 0,
            resident_bytes: 0,
            resident_count: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Memory footprint and count of ready messages held in memory.
    pub fn resident(&self) -> (u64, usize) {
        (self.resident_bytes, self.resident_count)
    }

    fn level_of(&self, entry: &Entry) -> usize {
        (entry.priority as usize).min(self.levels.len() - 1)
    }

    /// Appends a new message (ids grow, so it goes last in its level).
    pub fn push_back(&mut self, entry: Entry) {
        let level = self.level_of(&entry);
        self.account_in(&entry);
        self.levels[level].push_back(entry);
    }

    /// Puts a message back in id order.
    pub fn requeue(&mut self, entry: Entry) {
        let level = self.level_of(&entry);
        self.account_in(&entry);
        let q = &mut self.levels[level];
        let at = q.partition_point(|r| r.id < entry.id);
        q.insert(at, entry);
    }

    /// Turns FIFO message groups on (`x-message-group-header`).
    pub fn enable_groups(&mut self) {
        self.groups.get_or_insert_with(Box::default);
    }

    /// The next message to deliver: highest priority first, then oldest; with groups, the
    /// next one whose group is not busy (those of busy groups are parked on the way).
    pub fn pop_front(&mut self) -> Option<Entry> {
        let entry = match self.groups.as_mut() {
            None => self.levels.iter_mut().rev().find_map(|q| q.pop_front())?,
            Some(groups) => {
                let mut found = None;
                'levels: for q in self.levels.iter_mut().rev() {
                    while let Some(e) = q.pop_front() {
                        match &e.group {
                            Some(g) if groups.busy.contains(g) => {
                                groups.parked.entry(g.clone()).or_default().push_back(e);
                            }
                            _ => {
                                found = Some(e);
                                break 'levels;
                            }
                        }
                    }
                }
                found?
            }
        };
        self.account_out(&entry);
        Some(entry)
    }

    /// A delivery of `group` is in flight (to be settled): its next messages wait.
    pub fn group_busy(&mut self, group: &GroupKey) {
        if let Some(groups) = self.groups.as_mut() {
            groups.busy.insert(group.clone());
        }
    }

    /// The in-flight delivery of `group` was settled (or came back): the group's oldest
    /// parked message returns to its place in the queue.
    pub fn group_done(&mut self, group: &GroupKey) {
        let Some(groups) = self.groups.as_mut() else {
            return;
        };
        groups.busy.remove(group);
        let Some(parked) = groups.parked.get_mut(group) else {
            return;
        };
        let head = parked.pop_front();
        if parked.is_empty() {
            groups.parked.remove(group);
        }
        if let Some(entry) = head {
            // Still counted as ready: back in its level without accounting it again.
            let level = self.level_of(&entry);
            let q = &mut self.levels[level];
            let at = q.partition_point(|r| r.id < entry.id);
            q.insert(at, entry);
        }
    }

    /// The next message to deliver, if its expiry is at or before `now_ms`: a message that
    /// reaches the head already expired is dropped rather than delivered.
    pub fn pop_front_expired(&mut self, now_ms: u64) -> Option<Entry> {
        let level = self.levels.iter().rposition(|q| !q.is_empty())?;
        let front = self.levels[level].front()?;
        if front.expires_at_ms().is_none_or(|t| t > now_ms) {
            return None;
        }
        let entry = self.levels[level].pop_front()?;
        self.account_out(&entry);
        Some(entry)
    }

    /// The earliest expiry among the heads of the levels (only heads expire, as in
    /// RabbitMQ; a message deeper in the queue is checked when it reaches the head).
    pub fn next_expiry_ms(&self) -> Option<u64> {
        self.levels
            .iter()
            .filter_map(|q| q.front().and_then(Entry::expires_at_ms))
            .min()
    }

    /// Removes expired heads (at any level) into `out`.
    pub fn take_expired(&mut self, now_ms: u64, out: &mut Vec<Entry>) {
        for level in (0..self.levels.len()).rev() {
            while self.levels[level]
                .front()
                .is_some_and(|f| f.expires_at_ms().is_some_and(|t| t <= now_ms))
            {
                if let Some(entry) = self.levels[level].pop_front() {
                    self.account_out(&entry);
                    out.push(entry);
                }
            }
        }
    }

    /// Removes everything (parked messages too).
    pub fn drain_all(&mut self) -> Vec<Entry> {
        let mut all = Vec::with_capacity(self.len);
        for q in &mut self.levels {
            all.extend(q.drain(..));
        }
        if let Some(groups) = self.groups.as_mut() {
            for (_, parked) in groups.parked.drain() {
                all.extend(parked);
            }
        }
        self.len = 0;
        self.bytes = 0;
        self.resident_bytes = 0;
        self.resident_count = 0;
        all
    }

    // Resident bytes are each message's whole footprint (properties included), so a queue
    // of small messages with big headers pages out as soon as one of big bodies would.
    fn account_in(&mut self, entry: &Entry) {
        self.len += 1;
        self.bytes += entry.size as u64;
        if let Some(message) = &entry.message {
            self.resident_bytes += message.footprint() as u64;
            self.resident_count += 1;
        }
    }

    fn account_out(&mut self, entry: &Entry) {
        self.len -= 1;
        self.bytes -= entry.size as u64;
        if let Some(message) = &entry.message {
            self.resident_bytes -= message.footprint() as u64;
            self.resident_count -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, group: &str) -> Entry {
        Entry {
            id,
            message: None,
            location: None,
            priority: 0,
            size: 1,
            redelivered: false,
            delivery_count: 0,
            expires: None,
            group: Some(GroupName::key(group.as_bytes())),
        }
    }

    #[test]
    fn an_entry_fits_in_a_cache_line() {
        assert!(
            std::mem::size_of::<Entry>() <= ENTRY_BYTES_MAX,
            "Entry is {} bytes",
            std::mem::size_of::<Entry>()
        );
        let e = Entry {
            expires: Some(expiry(0)),
            ..entry(1, "g")
        };
        assert_eq!(
            e.expires_at_ms(),
            Some(1),
            "instant 0 is kept as 1 ms, still past"
        );
    }

    /// 100,000 groups with two messages each, all active at once: every group's first
    /// message comes out before any second one, each second one only after its first is
    /// done, and the parked ones stay counted as ready.
    #[test]
    fn a_hundred_thousand_active_groups() {
        const GROUPS: u64 = 100_000;
        let mut q = ReadyQueue::new(None);
        q.enable_groups();
        for round in 0..2 {
            for g in 0..GROUPS {
                q.push_back(entry(round * GROUPS + g + 1, &g.to_string()));
            }
        }
        let mut out = Vec::new();
        while let Some(e) = q.pop_front() {
            q.group_busy(e.group.as_ref().unwrap());
            out.push(e);
        }
        assert_eq!(out.len() as u64, GROUPS, "one per group while all are busy");
        assert!(out.iter().all(|e| e.id <= GROUPS));
        assert_eq!(q.len() as u64, GROUPS, "the parked seconds are still ready");
        for e in &out {
            q.group_done(e.group.as_ref().unwrap());
        }
        let seconds: Vec<u64> = std::iter::from_fn(|| q.pop_front()).map(|e| e.id).collect();
        assert_eq!(seconds, (GROUPS + 1..=2 * GROUPS).collect::<Vec<_>>());
        assert!(q.is_empty());
    }
}
