//! Queues: the definition, the handle others hold, and the commands a queue actor accepts.
//! A queue's messages, consumers and unacknowledged deliveries are owned by its actor task
//! (`actor.rs`) alone; everything else talks to it through a bounded inbox, whose bound is
//! the publishers' backpressure.

mod actor;
mod dedup;

pub(crate) use actor::Startup;
pub mod dead_letter;
pub mod metrics;
pub mod ready;
pub mod settings;
pub mod store;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use tokio::sync::{mpsc, oneshot};
use warren_protocol::{FieldTable, ProtocolError, ShortString};

use crate::confirm::ConfirmShare;
use crate::consumer::{ChannelKey, ConsumerSpec, Delivery};
use crate::message::MessageRef;
use crate::vhost::VHost;

/// Depth of a queue's command inbox: how many commands may wait before senders wait.
pub const QUEUE_INBOX_CAPACITY: usize = 4096;

static NEXT_QUEUE_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Clone, Debug, PartialEq)]
pub struct QueueDef {
    pub name: ShortString,
    pub durable: bool,
    /// The owning connection of an exclusive queue.
    pub exclusive_owner: Option<u64>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

/// Counts reported by queue.declare-ok.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub messages: u32,
    pub consumers: u32,
}

/// One consumer of a queue as the management API lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerInfo {
    pub tag: ShortString,
    /// The consumer's channel (`ChannelStats::key` finds its connection and number).
    pub channel_key: ChannelKey,
    pub ack_required: bool,
    pub exclusive: bool,
    pub prefetch_count: u32,
    pub priority: i32,
}

/// What a queue actor is asked to do.
#[derive(Debug)]
pub enum QueueCommand {
    /// A message, with its publisher-confirm share if the channel is in confirm mode.
    Publish(MessageRef, Option<ConfirmShare>),
    Consume(ConsumerSpec, oneshot::Sender<Result<(), ProtocolError>>),
    Cancel {
        channel_key: ChannelKey,
        tag: ShortString,
    },
    Get {
        channel_key: ChannelKey,
        no_ack: bool,
        reply: oneshot::Sender<Option<(Delivery, u32)>>,
    },
    /// Settle deliveries: ack (`requeue: None`), or reject/nack with or without requeue.
    Settle {
        channel_key: ChannelKey,
        ids: Vec<u64>,
        requeue: Option<bool>,
    },
    /// Requeue every unacked delivery of the channel (basic.recover requeue=true).
    Recover {
        channel_key: ChannelKey,
    },
    /// The channel closed: requeue its unacked deliveries and forget its consumers.
    ChannelClosed {
        channel_key: ChannelKey,
    },
    /// A channel's shared prefetch limit has room again.
    Resume,
    Stats(oneshot::Sender<QueueStats>),
    /// The management API lists consumers (asked only of queues whose metrics count some;
    /// one command per listing, nothing on the message path).
    Consumers(oneshot::Sender<Vec<ConsumerInfo>>),
    Purge(oneshot::Sender<u32>),
    Delete {
        if_unused: bool,
        if_empty: bool,
        reply: oneshot::Sender<Result<u32, ProtocolError>>,
    },
    /// A sync job of the queue's log finished (from the blocking thread that ran it).
    Synced(Result<(), String>),
    /// Confirm this share once everything the queue wrote before it is on disk (a move
    /// waits so for its acks on the source before it drops its journal).
    AfterSync(ConfirmShare),
    /// The gate of the message held at the head opened (`confirm::Gate`): deliver again.
    GateOpened,
    /// New settings after a policy change (the vhost's policy version: older ones are
    /// ignored). Boxed: the enum stays as small as a publish.
    ApplySettings {
        settings: Box<settings::QueueSettings>,
        version: u64,
    },
}

struct QueueInner {
    id: u64,
    name: ShortString,
    tx: mpsc::Sender<QueueCommand>,
    flow: FlowGate,
    /// Written by the actor, read by anyone (`metrics.rs`); on cache lines of its own.
    metrics: metrics::QueueMetrics,
}

/// Ready messages beyond which a queue that has consumers asks publishers to wait: they are
/// outrunning its consumers, and a growing backlog only adds latency (RabbitMQ's flow
/// control does the same).
pub const FLOW_HIGH_MESSAGES: usize = 5_000;
/// Ready messages below which the publishers may go on.
pub const FLOW_LOW_MESSAGES: usize = 2_500;

/// A queue's flow-control gate: set by the queue actor, awaited by publishing connections.
#[derive(Default)]
pub struct FlowGate {
    blocked: std::sync::atomic::AtomicBool,
    opened: tokio::sync::Notify,
}

impl FlowGate {
    pub(crate) fn set(&self, blocked: bool) {
        let was = self.blocked.swap(blocked, Ordering::AcqRel);
        if was && !blocked {
            self.opened.notify_waiters();
        }
    }

    pub fn is_blocked(&self) -> bool {
        self.blocked.load(Ordering::Acquire)
    }

    /// Waits until the gate is open (returns at once if it is).
    pub async fn wait_open(&self) {
        loop {
            let opened = self.opened.notified();
            if !self.is_blocked() {
                return;
            }
            opened.await;
        }
    }
}

/// A cheap, clonable reference to a queue actor.
#[derive(Clone)]
pub struct QueueHandle(Arc<QueueInner>);

impl fmt::Debug for QueueHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Queue({}#{})", self.0.name.as_str(), self.0.id)
    }
}

impl QueueHandle {
    pub fn name(&self) -> &ShortString {
        &self.0.name
    }

    /// Unique per queue incarnation (a queue deleted and redeclared gets a new id).
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// The queue's flow-control gate.
    pub fn flow(&self) -> &FlowGate {
        &self.0.flow
    }

    /// The queue's statistics as its actor last published them (no command is sent).
    pub fn metrics(&self) -> metrics::QueueMetricsSnapshot {
        self.0.metrics.snapshot()
    }

    pub(crate) fn metrics_cell(&self) -> &metrics::QueueMetrics {
        &self.0.metrics
    }

    /// Waits until the actor has handled every command sent before this one and published
    /// its metrics (for tests and for a consistent reading of one queue).
    pub async fn sync_metrics(&self) -> Result<metrics::QueueMetricsSnapshot, ProtocolError> {
        self.ask(QueueCommand::Stats).await?;
        Ok(self.metrics())
    }

    pub fn same(&self, other: &QueueHandle) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Sends a command, waiting for room in the inbox. Fails only if the queue is gone.
    pub async fn send(&self, cmd: QueueCommand) -> Result<(), ProtocolError> {
        self.0.tx.send(cmd).await.map_err(|_| self.gone())
    }

    /// Sends if the inbox has room. `Err(Some(cmd))`: full, try again with `send`;
    /// `Err(None)`: the queue is gone.
    pub fn try_send(&self, cmd: QueueCommand) -> Result<(), Option<QueueCommand>> {
        match self.0.tx.try_send(cmd) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(cmd)) => Err(Some(cmd)),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(None),
        }
    }

    /// Sends without waiting; used where waiting could deadlock (queue → queue) or where the
    /// command must not be lost to backpressure (channel close). Unbounded growth is not a
    /// risk: these commands are one per channel event, not per message.
    pub fn send_now(&self, cmd: QueueCommand) {
        if let Err(mpsc::error::TrySendError::Full(cmd)) = self.0.tx.try_send(cmd) {
            let tx = self.0.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(cmd).await;
            });
        }
    }

    /// Sends a command built around a reply channel and awaits the reply.
    pub async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> QueueCommand,
    ) -> Result<T, ProtocolError> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx)).await?;
        rx.await.map_err(|_| self.gone())
    }

    fn gone(&self) -> ProtocolError {
        ProtocolError::not_found(format!("no queue '{}' in vhost", self.0.name.as_str()))
    }

    /// Starts a queue actor.
    pub(crate) fn spawn(
        def: QueueDef,
        settings: settings::QueueSettings,
        defaults: &settings::QueueDefaults,
        vhost: Weak<VHost>,
        startup: actor::Startup,
    ) -> QueueHandle {
        let (tx, rx) = mpsc::channel(QUEUE_INBOX_CAPACITY);
        let handle = QueueHandle(Arc::new(QueueInner {
            id: NEXT_QUEUE_ID.fetch_add(1, Ordering::Relaxed),
            name: def.name.clone(),
            tx,
            flow: FlowGate::default(),
            metrics: metrics::QueueMetrics::default(),
        }));
        let actor = actor::QueueActor::new(def, settings, defaults, handle.clone(), vhost, startup);
        tokio::spawn(actor.run(rx));
        handle
    }
}
