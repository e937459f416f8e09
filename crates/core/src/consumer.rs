//! What queues and connections exchange about consumers: the events a queue sends to a
//! connection (deliveries, cancellations) and the per-channel prefetch limiter they share.
//!
//! Queues send to connections over unbounded channels so that a queue never waits on a slow
//! client (prefetch bounds what is in flight); connections send to queues over bounded ones.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use warren_protocol::ShortString;

use crate::message::MessageRef;
use crate::queue::QueueHandle;

/// Identifies one opening of one channel, broker-wide. A channel number reused after a close
/// gets a new key, so late deliveries for the old channel are recognised and dropped.
pub type ChannelKey = u64;

static NEXT_CHANNEL_GENERATION: AtomicU64 = AtomicU64::new(1);

/// A fresh key for channel `number`: the number in the low 16 bits, a broker-wide
/// generation above them. Connections and the broker's own sessions (`admin::messages`)
/// take their keys here, so no two openings ever share one.
pub fn new_channel_key(number: u16) -> ChannelKey {
    let generation = NEXT_CHANNEL_GENERATION.fetch_add(1, Ordering::Relaxed);
    (generation << 16) | number as u64
}

/// A message handed to a consumer (or to basic.get).
#[derive(Debug)]
pub struct Delivery {
    pub channel_key: ChannelKey,
    /// None for basic.get. Shared with the queue's consumer record: no allocation per
    /// delivery.
    pub consumer_tag: Option<Arc<str>>,
    pub queue: QueueHandle,
    /// The queue's id for the message, used to settle it.
    pub message_id: u64,
    pub message: MessageRef,
    pub redelivered: bool,
    /// Whether the consumer must settle it (false for no-ack consumers).
    pub needs_ack: bool,
    /// What the queue charged to the connection's `OutputGauge` for it.
    pub output_bytes: u64,
}

/// Events from queues to a connection task.
#[derive(Debug)]
pub enum ClientEvent {
    Deliver(Delivery),
    /// A publish in confirm mode is safe with every queue it was routed to (`ack`), or
    /// failed somewhere (`!ack`).
    Confirmed {
        channel_key: ChannelKey,
        seq: u64,
        ack: bool,
    },
    /// A delivery was not acked in time and the broker is set to close the channel
    /// (RabbitMQ's behaviour): 406 on the channel.
    ConsumerTimeout {
        channel_key: ChannelKey,
        timeout_ms: u64,
    },
    /// A reply for a direct reply-to consumer (no queue, nothing to ack).
    DirectReply {
        channel_key: ChannelKey,
        consumer_tag: ShortString,
        message: MessageRef,
    },
    /// The queue went away: tell the client with basic.cancel.
    ConsumerCancelled {
        channel_key: ChannelKey,
        consumer_tag: ShortString,
    },
    /// The broker closes the connection (its vhost or user was deleted, an operator closed
    /// it): connection.close with this error.
    Close(warren_protocol::ProtocolError),
    /// The management API lists the connection's channels (`Connections::channels`): one
    /// event per listing, nothing on the message path.
    ListChannels(tokio::sync::oneshot::Sender<Vec<crate::connections::ChannelStats>>),
}

pub type ClientSender = mpsc::UnboundedSender<ClientEvent>;

/// A channel's `basic.qos global=true` limit, shared by every queue that has a consumer on
/// the channel. Queues reserve a slot before delivering; the connection releases on settle.
#[derive(Debug, Default)]
pub struct ChannelLimiter {
    limit: AtomicU32,
    in_flight: AtomicU32,
}

impl ChannelLimiter {
    pub fn set_limit(&self, limit: u32) {
        self.limit.store(limit, Ordering::Release);
    }

    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Acquire)
    }

    /// Takes a slot if the limit allows it (0 = unlimited).
    pub fn try_reserve(&self) -> bool {
        let limit = self.limit();
        if limit == 0 {
            self.in_flight.fetch_add(1, Ordering::AcqRel);
            return true;
        }
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Whether the limit leaves room, without taking a slot: a no-ack consumer of the channel
    /// may receive only then (it holds no slot, but waits like the others once the channel's
    /// limit is used, as RabbitMQ's limiter does).
    pub fn has_room(&self) -> bool {
        let limit = self.limit();
        limit == 0 || self.in_flight.load(Ordering::Acquire) < limit
    }

    /// Gives back `n` slots; true if the channel was full before, so blocked queues must be
    /// told to resume.
    pub fn release(&self, n: u32) -> bool {
        if n == 0 {
            return false;
        }
        let before = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(n))
            })
            .unwrap_or(0);
        let limit = self.limit();
        limit != 0 && before >= limit
    }
}

/// Bytes a connection may have waiting for its socket (deliveries handed to it plus its
/// output buffer) before queues stop delivering to it. Prefetch bounds what a consumer
/// that acks holds; this bounds no-ack consumers (and prefetch 0) whose client stops
/// reading, as RabbitMQ's credit flow does.
pub const OUTPUT_BUDGET_BYTES: u64 = 4 * 1024 * 1024;
/// Stalled queues are told to resume once the connection is below this.
pub const OUTPUT_RESUME_BYTES: u64 = OUTPUT_BUDGET_BYTES / 2;
/// Counted per delivery besides body and header: its method and frame overhead.
pub const DELIVERY_OVERHEAD_BYTES: u64 = 64;

/// One connection's output backlog, shared by the queues that deliver to it. Queues charge
/// each delivery and stop (marking the gauge stalled) when the budget is used; the
/// connection discharges as its socket takes the bytes and resumes stalled queues.
#[derive(Debug, Default)]
pub struct OutputGauge {
    queued: AtomicU64,
    stalled: AtomicBool,
}

impl OutputGauge {
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::SeqCst)
    }

    /// Whether a queue may deliver now; if not, the gauge is marked stalled so that the
    /// connection resumes its queues once it drains. (Stalled is set before the second
    /// look, so a drain between the two is never missed.)
    pub fn admit(&self) -> bool {
        if self.queued() < OUTPUT_BUDGET_BYTES {
            return true;
        }
        self.stalled.store(true, Ordering::SeqCst);
        self.queued() < OUTPUT_BUDGET_BYTES
    }

    pub fn charge(&self, bytes: u64) {
        self.queued.fetch_add(bytes, Ordering::SeqCst);
    }

    pub fn discharge(&self, bytes: u64) {
        let _ = self
            .queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v.saturating_sub(bytes))
            });
    }

    /// For the connection after it drained: true once if a queue stalled and there is room
    /// again.
    pub fn take_stalled(&self) -> bool {
        self.queued() < OUTPUT_RESUME_BYTES && self.stalled.swap(false, Ordering::SeqCst)
    }
}

/// Everything a queue needs to know about a new consumer.
#[derive(Debug)]
pub struct ConsumerSpec {
    pub tag: ShortString,
    pub channel_key: ChannelKey,
    pub no_ack: bool,
    pub exclusive: bool,
    /// `x-priority`: higher-priority consumers are served first.
    pub priority: i32,
    /// Per-consumer prefetch (basic.qos global=false); 0 = unlimited.
    pub prefetch: u32,
    /// The channel's shared limit (basic.qos global=true).
    pub channel_limiter: Arc<ChannelLimiter>,
    /// The consumer's connection's output backlog.
    pub output: Arc<OutputGauge>,
    pub client: ClientSender,
}
