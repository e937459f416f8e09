//! The ready messages of a queue: one FIFO per priority level (one level without
//! `x-max-priority`), each kept sorted by message id so a requeued message returns to its
//! original place. Tracks the count and body bytes that length limits apply to.

use std::collections::VecDeque;

use crate::message::MessageRef;

/// A message waiting for a consumer.
#[derive(Debug)]
pub struct Ready {
    pub id: u64,
    pub message: MessageRef,
    pub redelivered: bool,
    /// How many times it came back unsettled (x-delivery-count).
    pub delivery_count: u32,
    /// Absolute expiry, Unix milliseconds.
    pub expires_at_ms: Option<u64>,
}

#[derive(Debug)]
pub struct ReadyQueue {
    levels: Vec<VecDeque<Ready>>,
    len: usize,
    bytes: u64,
}

impl ReadyQueue {
    /// `max_priority` None: one level; Some(n): levels 0..=n.
    pub fn new(max_priority: Option<u8>) -> Self {
        let levels = max_priority.map(|p| p as usize + 1).unwrap_or(1);
        ReadyQueue {
            levels: (0..levels).map(|_| VecDeque::new()).collect(),
            len: 0,
            bytes: 0,
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

    fn level_of(&self, message: &MessageRef) -> usize {
        let top = self.levels.len() - 1;
        if top == 0 {
            return 0;
        }
        (message.properties.priority().unwrap_or(0) as usize).min(top)
    }

    /// Appends a new message (ids grow, so it goes last in its level).
    pub fn push_back(&mut self, ready: Ready) {
        let level = self.level_of(&ready.message);
        self.account_in(&ready);
        self.levels[level].push_back(ready);
    }

    /// Puts a message back in id order.
    pub fn requeue(&mut self, ready: Ready) {
        let level = self.level_of(&ready.message);
        self.account_in(&ready);
        let q = &mut self.levels[level];
        let at = q.partition_point(|r| r.id < ready.id);
        q.insert(at, ready);
    }

    /// The next message to deliver: highest priority first, then oldest.
    pub fn front(&self) -> Option<&Ready> {
        self.levels.iter().rev().find_map(|q| q.front())
    }

    pub fn pop_front(&mut self) -> Option<Ready> {
        let ready = self.levels.iter_mut().rev().find_map(|q| q.pop_front())?;
        self.account_out(&ready);
        Some(ready)
    }

    /// The earliest expiry among the heads of the levels (only heads expire, as in
    /// RabbitMQ; a message deeper in the queue is checked when it reaches the head).
    pub fn next_expiry_ms(&self) -> Option<u64> {
        self.levels
            .iter()
            .filter_map(|q| q.front().and_then(|r| r.expires_at_ms))
            .min()
    }

    /// Removes expired heads (at any level) and returns them.
    pub fn take_expired(&mut self, now_ms: u64, out: &mut Vec<Ready>) {
        for level in (0..self.levels.len()).rev() {
            while let Some(front) = self.levels[level].front() {
                match front.expires_at_ms {
                    Some(t) if t <= now_ms => {
                        if let Some(r) = self.levels[level].pop_front() {
                            self.len -= 1;
                            self.bytes -= r.message.body_size() as u64;
                            out.push(r);
                        }
                    }
                    _ => break,
                }
            }
        }
    }

    pub fn clear(&mut self) -> usize {
        let n = self.len;
        self.levels.iter_mut().for_each(|q| q.clear());
        self.len = 0;
        self.bytes = 0;
        n
    }

    fn account_in(&mut self, ready: &Ready) {
        self.len += 1;
        self.bytes += ready.message.body_size() as u64;
    }

    fn account_out(&mut self, ready: &Ready) {
        self.len -= 1;
        self.bytes -= ready.message.body_size() as u64;
    }
}
