//! The queue actor: the one owner of a queue's ready messages, its consumers and the
//! deliveries awaiting settlement. It processes its inbox in order and never waits on a
//! client or another queue: deliveries go out over unbounded channels (bounded by
//! consumers' prefetch) and dead-lettered messages with `send_now`.
//!
//! Its timers (message expiry at the head, consumer timeouts, `x-expires`) are deadlines in
//! Unix milliseconds, checked whenever the inbox is idle until the earliest one.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::debug;
use warren_protocol::{AMQPValue, ProtocolError};

use super::dead_letter::{dead_lettered, is_cycle, Reason};
use super::dedup::{Admission, QueueDedup};
use super::metrics::QueueCounters;
use super::ready::{group_of, Entry, ReadyQueue};
use super::settings::{ConsumerTimeoutAction, Overflow, QueueDefaults, QueueSettings};
use super::store::{QueueStore, StoreContext, RESIDENT_BYTES_MAX, RESIDENT_MESSAGES_MAX};
use super::{QueueCommand, QueueDef, QueueHandle, QueueStats};
use crate::confirm::{ConfirmShare, Gate};
use crate::consumer::{ChannelKey, ClientEvent, ConsumerSpec, Delivery, DELIVERY_OVERHEAD_BYTES};
use crate::delayed::DelayedHandle;
use crate::message::{now_ms, MessageRef};
use crate::vhost::VHost;

struct Unacked {
    entry: Entry,
    channel_key: ChannelKey,
    /// None for basic.get deliveries.
    consumer_tag: Option<Arc<str>>,
    deadline_ms: Option<u64>,
}

struct Consumer {
    spec: ConsumerSpec,
    /// The tag, shared by every delivery to this consumer.
    tag: Arc<str>,
    in_flight: u32,
}

impl Consumer {
    fn has_credit(&self) -> bool {
        self.spec.no_ack || self.spec.prefetch == 0 || self.in_flight < self.spec.prefetch
    }
}

pub(super) struct QueueActor {
    def: QueueDef,
    settings: QueueSettings,
    /// The policy version `settings` came with (`QueueCommand::ApplySettings`).
    settings_version: u64,
    consumer_timeout_ms: Option<u64>,
    /// When the current batch of commands began (`deliver` expires against it, not against
    /// the clock at the batch's end: a busy machine must not expire a TTL 0 message that a
    /// waiting consumer could take).
    batch_started_ms: u64,
    /// The broker's consumer timeout, for a queue that sets none.
    default_consumer_timeout_ms: Option<u64>,
    timeout_action: ConsumerTimeoutAction,
    handle: QueueHandle,
    vhost: Weak<VHost>,
    next_id: u64,
    ready: ReadyQueue,
    unacked: HashMap<u64, Unacked>,
    /// Body bytes of `unacked`.
    unacked_bytes: u64,
    /// Statistics, published to the handle's `QueueMetrics` once per batch.
    counters: QueueCounters,
    /// Sorted by priority (highest first); within a priority, the next to serve first.
    consumers: Vec<Consumer>,
    /// Consumer-timeout deadlines of unacked deliveries: (deadline ms, message id).
    timeouts: BTreeSet<(u64, u64)>,
    /// Set once a consumer has attached; auto-delete applies only after that.
    had_consumer: bool,
    /// Last use for `x-expires` (consume, get, declare).
    last_used_ms: u64,
    /// The queue's log: a durable queue's from the start, a transient queue's once it pages.
    store: Option<QueueStore>,
    /// Where a transient queue's log would go (None: never page, e.g. in tests).
    store_context: Option<StoreContext>,
    /// The keys of its messages, with `x-message-deduplication` (fixed at declare).
    dedup: Option<Box<QueueDedup>>,
    /// Messages held back from consumers until their gate opens (`confirm::Gate`: a durable
    /// deduplication exchange's key, a move's source acks, not yet on disk), by id. Entries
    /// whose gate opened are dropped when a held message reaches the head or the map passes
    /// `GATED_SWEEP`.
    gated: HashMap<u64, Arc<Gate>>,
    /// The gate of the message at the head that stopped delivery: a task waits on it and
    /// sends `QueueCommand::GateOpened` (delivery then resumes as after any command).
    gate_wait: Option<Arc<Gate>>,
    /// Held messages that left the queue without a consumer (expired, dropped over the
    /// length limit, purged) before their gate opened, with the dead-letter reason if any.
    /// Their log ack and dead-lettering wait for the gate (`exit`): a crash before it
    /// leaves them in the log, so recovery still finds their deduplication key. Bounded
    /// as `gated` is (messages of the last few fsyncs); waited on by `exit_wait`.
    held_exits: Vec<(Arc<Gate>, Entry, Option<Reason>)>,
    /// The gate of the first of `held_exits` that a task waits on (as `gate_wait`).
    exit_wait: Option<Arc<Gate>>,
}

/// Size of `gated` past which entries whose gate opened are swept out as messages arrive
/// (gates open within a few fsyncs, so it stays near the messages of the last milliseconds).
const GATED_SWEEP: usize = 1024;

/// What a queue starts with.
pub(crate) struct Startup {
    pub store: Option<QueueStore>,
    pub store_context: Option<StoreContext>,
    /// Messages recovered from the log, in id order.
    pub recovered: Vec<Entry>,
}

enum Flow {
    Continue,
    Stop,
}

impl QueueActor {
    pub(super) fn new(
        def: QueueDef,
        settings: QueueSettings,
        defaults: &QueueDefaults,
        handle: QueueHandle,
        vhost: Weak<VHost>,
        startup: Startup,
    ) -> Self {
        let mut ready = ReadyQueue::new(settings.max_priority);
        if settings.message_group_header.is_some() {
            ready.enable_groups();
        }
        let next_id = startup.recovered.last().map(|e| e.id + 1).unwrap_or(1);
        let mut store = startup.store;
        let mut dedup = settings
            .message_deduplication
            .then(|| Box::new(QueueDedup::default()));
        for mut entry in startup.recovered {
            if let Some(dedup) = dedup.as_mut() {
                dedup.recover(&entry, store.as_mut());
            }
            if let Some(header) = &settings.message_group_header {
                // Recovered messages are on disk only: read each back once for its group.
                let message = match (&entry.message, entry.location, store.as_mut()) {
                    (Some(m), _, _) => Some(m.clone()),
                    (None, Some(at), Some(store)) => store.load(at),
                    _ => None,
                };
                entry.group = message.and_then(|m| group_of(&m, header.as_str()));
            }
            ready.push_back(entry);
        }
        QueueActor {
            ready,
            consumer_timeout_ms: settings
                .consumer_timeout_ms
                .or(defaults.consumer_timeout_ms),
            default_consumer_timeout_ms: defaults.consumer_timeout_ms,
            settings_version: 0,
            timeout_action: defaults.consumer_timeout_action,
            def,
            settings,
            handle,
            vhost,
            next_id,
            unacked: HashMap::new(),
            unacked_bytes: 0,
            counters: QueueCounters::default(),
            consumers: Vec::new(),
            timeouts: BTreeSet::new(),
            had_consumer: false,
            last_used_ms: now_ms(),
            batch_started_ms: now_ms(),
            store,
            store_context: startup.store_context,
            dedup,
            gated: HashMap::new(),
            gate_wait: None,
            held_exits: Vec::new(),
            exit_wait: None,
        }
    }

    pub(super) async fn run(mut self, mut inbox: mpsc::Receiver<QueueCommand>) {
        // Messages recovered at start count before any command arrives.
        self.publish_metrics();
        loop {
            let cmd = match self.next_deadline_ms() {
                Some(deadline) => {
                    let wait = Duration::from_millis(deadline.saturating_sub(now_ms()));
                    tokio::select! {
                        cmd = inbox.recv() => cmd,
                        _ = tokio::time::sleep(wait) => {
                            self.batch_started_ms = now_ms();
                            if let Flow::Stop = self.on_timer() {
                                break;
                            }
                            self.deliver();
                            self.start_sync();
                            self.update_flow();
                            self.publish_metrics();
                            continue;
                        }
                    }
                }
                None => inbox.recv().await,
            };
            let Some(cmd) = cmd else { break };
            self.batch_started_ms = now_ms();
            if let Flow::Stop = self.handle_command(cmd) {
                break;
            }
            // Handle whatever else is already waiting before delivering, so a burst of
            // publishes is delivered in one pass.
            let mut stop = false;
            while let Ok(cmd) = inbox.try_recv() {
                if let Flow::Stop = self.handle_command(cmd) {
                    stop = true;
                    break;
                }
            }
            if stop {
                break;
            }
            self.deliver();
            self.start_sync();
            self.update_flow();
            self.publish_metrics();
        }
        // Publishers must never wait on a queue that is gone.
        self.handle.flow().set(false);
        // Every way out of the loop is the queue's deletion: its log goes too.
        if let Some(store) = self.store.take() {
            store.destroy();
        }
        debug!(queue = %self.def.name.as_str(), "queue actor stopped");
    }

    fn hold_back(&mut self, id: u64, gate: Arc<Gate>) {
        if self.gated.len() >= GATED_SWEEP {
            self.gated.retain(|_, g| !g.is_open());
        }
        self.gated.insert(id, gate);
    }

    /// Whether the message `id` (popped at the head) must wait for its gate; if so, the actor
    /// waits on that gate.
    #[inline]
    fn held_back(&mut self, id: u64) -> bool {
        !self.gated.is_empty() && self.held_back_slow(id)
    }

    #[cold]
    fn held_back_slow(&mut self, id: u64) -> bool {
        let Some(gate) = self.gated.get(&id) else {
            return false;
        };
        if gate.is_open() {
            self.gated.remove(&id);
            return false;
        }
        let gate = gate.clone();
        self.wake_when_open(gate, |actor| &mut actor.gate_wait);
        true
    }

    /// Makes sure a task waits on `gate` and sends `QueueCommand::GateOpened` when it
    /// opens (the loop stays as it is for everyone else); `waiting` is where the actor
    /// keeps the gate waited on, so one gate gets one task.
    #[cold]
    fn wake_when_open(
        &mut self,
        gate: Arc<Gate>,
        waiting: fn(&mut Self) -> &mut Option<Arc<Gate>>,
    ) {
        let handle = self.handle.clone();
        let slot = waiting(self);
        if slot.as_ref().is_some_and(|g| Arc::ptr_eq(g, &gate)) {
            return;
        }
        *slot = Some(gate.clone());
        tokio::spawn(async move {
            gate.opened().await;
            handle.send_now(QueueCommand::GateOpened);
        });
    }

    /// Flow control: with consumers attached and a backlog past `FLOW_HIGH_MESSAGES`,
    /// publishers wait until it is back under `FLOW_LOW_MESSAGES`. A queue without consumers
    /// is being filled on purpose and never blocks.
    fn update_flow(&self) {
        let gate = self.handle.flow();
        let backlog = self.ready.len();
        if self.consumers.is_empty() || backlog < super::FLOW_LOW_MESSAGES {
            gate.set(false);
        } else if backlog > super::FLOW_HIGH_MESSAGES {
            gate.set(true);
        }
    }

    /// Publishes the statistics for readers (`metrics.rs`): a few relaxed stores per batch
    /// of commands, none per message.
    fn publish_metrics(&mut self) {
        let c = &mut self.counters;
        c.messages_ready = self.ready.len() as u64;
        c.message_bytes_ready = self.ready.bytes();
        c.messages_unacknowledged = self.unacked.len() as u64;
        c.message_bytes_unacknowledged = self.unacked_bytes;
        c.consumers = self.consumers.len() as u64;
        self.handle.metrics_cell().store(c);
    }

    /// Removes an unsettled delivery (keeping `unacked_bytes` in step).
    /// An unacked delivery leaves `unacked` (settled, or coming back): its group, if any,
    /// may deliver its next message.
    fn take_unacked(&mut self, id: u64) -> Option<Unacked> {
        let u = self.unacked.remove(&id)?;
        self.unacked_bytes = self.unacked_bytes.saturating_sub(u.entry.size as u64);
        if let Some(group) = &u.entry.group {
            self.ready.group_done(group);
        }
        Some(u)
    }

    fn start_sync(&mut self) {
        if let Some(store) = self.store.as_mut() {
            store.start_sync(&self.handle);
        }
    }

    fn handle_command(&mut self, cmd: QueueCommand) -> Flow {
        match cmd {
            QueueCommand::Publish(message, confirm) => self.publish(message, confirm),
            QueueCommand::Consume(spec, reply) => {
                let result = self.add_consumer(spec);
                let _ = reply.send(result);
            }
            QueueCommand::Cancel { channel_key, tag } => {
                self.consumers
                    .retain(|c| !(c.spec.channel_key == channel_key && c.spec.tag == tag));
                return self.consumers_changed();
            }
            QueueCommand::Get {
                channel_key,
                no_ack,
                reply,
            } => {
                self.last_used_ms = now_ms();
                self.expire(self.last_used_ms);
                let mut got = None;
                while let Some(expired) = self.ready.pop_front_expired(self.last_used_ms) {
                    self.exit(expired, Some(Reason::Expired));
                }
                while let Some(entry) = self.ready.pop_front() {
                    if self.held_back(entry.id) {
                        self.ready.requeue(entry);
                        break;
                    }
                    if let Some(delivery) = self.make_delivery(entry, channel_key, None, no_ack) {
                        let c = &mut self.counters;
                        *if no_ack {
                            &mut c.get_no_ack
                        } else {
                            &mut c.get
                        } += 1;
                        c.redeliver += delivery.redelivered as u64;
                        got = Some((delivery, self.ready.len() as u32));
                        break;
                    }
                }
                self.counters.get_empty += got.is_none() as u64;
                let _ = reply.send(got);
            }
            QueueCommand::Settle {
                channel_key,
                ids,
                requeue,
            } => self.settle(channel_key, &ids, requeue),
            QueueCommand::Recover { channel_key } => self.requeue_channel(channel_key),
            QueueCommand::ChannelClosed { channel_key } => {
                self.consumers.retain(|c| c.spec.channel_key != channel_key);
                self.requeue_channel(channel_key);
                return self.consumers_changed();
            }
            QueueCommand::Resume => {}
            QueueCommand::Stats(reply) => {
                // queue.declare asks for these: a redeclare counts as use for x-expires.
                self.last_used_ms = now_ms();
                // `QueueHandle::sync_metrics`: everything handled so far is visible.
                self.publish_metrics();
                let _ = reply.send(QueueStats {
                    messages: self.ready.len() as u32,
                    consumers: self.consumers.len() as u32,
                });
            }
            QueueCommand::Consumers(reply) => {
                let list = self
                    .consumers
                    .iter()
                    .map(|c| super::ConsumerInfo {
                        tag: c.spec.tag.clone(),
                        channel_key: c.spec.channel_key,
                        ack_required: !c.spec.no_ack,
                        exclusive: c.spec.exclusive,
                        prefetch_count: c.spec.prefetch,
                        priority: c.spec.priority,
                    })
                    .collect();
                let _ = reply.send(list);
            }
            QueueCommand::Purge(reply) => {
                let all = self.ready.drain_all();
                let _ = reply.send(all.len() as u32);
                all.into_iter().for_each(|e| self.exit(e, None));
            }
            QueueCommand::Synced(result) => {
                if let Some(store) = self.store.as_mut() {
                    store.synced(result, &self.handle);
                }
            }
            QueueCommand::GateOpened => {
                // Sent for the head's gate or for a held exit's: a gate still closed keeps
                // its waiting task.
                if self.gate_wait.as_ref().is_some_and(|g| g.is_open()) {
                    self.gate_wait = None;
                }
                if !self.held_exits.is_empty() {
                    self.run_held_exits();
                }
            }
            // Dropped at once (confirmed) without a log: nothing to wait for.
            QueueCommand::AfterSync(share) => {
                if let Some(store) = self.store.as_mut() {
                    store.after_sync(share);
                }
            }
            QueueCommand::Delete {
                if_unused,
                if_empty,
                reply,
            } => return self.delete(if_unused, if_empty, reply),
            QueueCommand::ApplySettings { settings, version } => {
                if version > self.settings_version {
                    self.settings_version = version;
                    self.apply_settings(*settings);
                }
            }
        }
        Flow::Continue
    }

    /// A policy changed the queue's settings; they apply at once, as in RabbitMQ: a lower
    /// length limit drops (dead-letters) the excess from the head (with `drop-head`), a
    /// new `expires` restarts its timer, a new message TTL applies to messages enqueued from
    /// now on (those already queued keep their deadline), a new dead-letter exchange to
    /// later dead-letterings, a new consumer timeout to later deliveries.
    fn apply_settings(&mut self, settings: QueueSettings) {
        let expires_changed = settings.expires_ms != self.settings.expires_ms;
        // Priorities are fixed at declare (the ready queue is built for them).
        let max_priority = self.settings.max_priority;
        let message_deduplication = self.settings.message_deduplication;
        self.settings = QueueSettings {
            max_priority,
            message_deduplication,
            ..settings
        };
        self.consumer_timeout_ms = self
            .settings
            .consumer_timeout_ms
            .or(self.default_consumer_timeout_ms);
        if expires_changed {
            self.last_used_ms = now_ms();
        }
        self.drop_head_over_limit();
        self.expire(now_ms());
    }

    fn delete(
        &mut self,
        if_unused: bool,
        if_empty: bool,
        reply: tokio::sync::oneshot::Sender<Result<u32, ProtocolError>>,
    ) -> Flow {
        let what = self.what();
        if if_unused && !self.consumers.is_empty() {
            let _ = reply.send(Err(ProtocolError::precondition_failed(format!(
                "{what} in use"
            ))));
            return Flow::Continue;
        }
        if if_empty && !self.ready.is_empty() {
            let _ = reply.send(Err(ProtocolError::precondition_failed(format!(
                "{what} is not empty"
            ))));
            return Flow::Continue;
        }
        let _ = reply.send(Ok(self.ready.len() as u32));
        self.cancel_all_consumers();
        Flow::Stop
    }

    fn what(&self) -> String {
        let vhost = self
            .vhost
            .upgrade()
            .map(|v| v.name().to_owned())
            .unwrap_or_default();
        format!("queue '{}' in vhost '{vhost}'", self.def.name.as_str())
    }

    fn over_limit(&self, extra_messages: u64, extra_bytes: u64) -> bool {
        let len = self.ready.len() as u64 + extra_messages;
        let bytes = self.ready.bytes() + extra_bytes;
        self.settings.max_length.is_some_and(|m| len > m)
            || self.settings.max_length_bytes.is_some_and(|m| bytes > m)
    }

    fn publish(&mut self, message: MessageRef, mut confirm: Option<ConfirmShare>) {
        let dedup_key = match self.dedup.as_ref().map(|d| d.admit(&message)) {
            // Dropped; the publisher's confirm (the share dropping here) is an ack.
            Some(Admission::Duplicate) => return,
            Some(Admission::Enqueue(key)) => key,
            None => None,
        };
        let size = message.body_size() as u64;
        let overflow = self.settings.overflow;
        if overflow != Overflow::DropHead && self.over_limit(1, size) {
            // Refused: the publisher's confirm becomes a nack.
            if let Some(c) = confirm {
                c.fail();
            }
            if overflow == Overflow::RejectPublishDlx {
                self.dead_letter_message(&message, Reason::MaxLen);
            }
            return;
        }
        let now = now_ms();
        let ttl = match (self.settings.message_ttl_ms, message_expiration(&message)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let id = self.next_id;
        self.next_id += 1;
        self.counters.publish += 1;
        if let (Some(dedup), Some(key)) = (self.dedup.as_mut(), dedup_key) {
            dedup.insert(id, key);
        }
        // Held back from consumers until its gate opens (see `gated`).
        let gate = confirm
            .as_ref()
            .and_then(ConfirmShare::closed_gate)
            .cloned();
        let mut entry = Entry::new(id, message, ttl.map(|t| now.saturating_add(t)));
        if let (Some(header), Some(m)) = (&self.settings.message_group_header, &entry.message) {
            entry.group = group_of(m, header.as_str());
        }
        let persistent = self.store.as_ref().is_some_and(|s| s.durable)
            && entry.message.as_ref().is_some_and(|m| m.is_persistent());
        let page_out = self.over_resident();
        if persistent || page_out {
            let Some(store) = self.store_for_paging() else {
                self.ready.push_back(entry);
                return;
            };
            // A persistent message's confirm waits for the fsync that covers it.
            let wait = if persistent { confirm.take() } else { None };
            let message = entry.message.as_ref().expect("a new entry is in memory");
            match store.append(id, message, entry.expires_at_ms(), wait) {
                Some(at) => {
                    entry.location = Some(at);
                    if page_out {
                        entry.message = None;
                    }
                }
                // Not durable: the publisher got a nack; do not keep it.
                None if persistent => {
                    if let Some(dedup) = self.dedup.as_mut() {
                        dedup.release(id);
                    }
                    return;
                }
                None => {}
            }
        }
        if let Some(gate) = gate {
            self.hold_back(id, gate);
        }
        self.ready.push_back(entry);
        // Safe with this queue now (in memory, or covered by a pending sync).
        drop(confirm);
        self.drop_head_over_limit();
    }

    /// `x-overflow drop-head`: while over a length limit, the head is dropped (dead-lettered
    /// with reason `maxlen`). Run after a publish and after a requeue (a message coming back
    /// counts against the limit at once, as in RabbitMQ).
    fn drop_head_over_limit(&mut self) {
        if self.settings.overflow != Overflow::DropHead {
            return;
        }
        while self.over_limit(0, 0) {
            match self.ready.pop_front() {
                Some(head) => self.exit(head, Some(Reason::MaxLen)),
                None => break,
            }
        }
    }

    /// Whether new messages should be paged out rather than kept in memory.
    fn over_resident(&self) -> bool {
        let (bytes, count) = self.ready.resident();
        bytes >= RESIDENT_BYTES_MAX || count >= RESIDENT_MESSAGES_MAX
    }

    /// The log to page into: a durable queue's, or a transient one created on first need.
    fn store_for_paging(&mut self) -> Option<&mut QueueStore> {
        if self.store.is_none() {
            let ctx = self.store_context.as_ref()?;
            let dir = ctx.transient_dir().join(format!("{}", self.handle.id()));
            match warren_store::open_file_log_with(&dir, ctx.io.clone(), ctx.log_options()) {
                Ok((log, _)) => self.store = Some(QueueStore::new(log, &dir, false, ctx)),
                Err(e) => {
                    tracing::error!(dir = %dir.display(), error = %e, "cannot open a log to page a queue out; keeping messages in memory");
                    self.store_context = None;
                    return None;
                }
            }
        }
        self.store.as_mut()
    }

    /// The message of an entry, from memory or read back from the log.
    fn message_of(&mut self, entry: &Entry) -> Option<MessageRef> {
        if let Some(m) = &entry.message {
            return Some(m.clone());
        }
        let at = entry.location?;
        self.store.as_mut()?.load(at)
    }

    /// A ready message leaves the queue without a consumer (expired, dropped over the
    /// length limit, purged), dead-lettered for `reason` if any. A held one (see `gated`)
    /// leaves the ready list now but its log ack and dead-lettering wait for its gate
    /// (`held_exits`): acked before its deduplication key is on disk, a crash would forget
    /// both, and the publisher's retry would be a second copy beside the dead-lettered one.
    fn exit(&mut self, entry: Entry, reason: Option<Reason>) {
        if !self.gated.is_empty() {
            if let Some(gate) = self.gated.remove(&entry.id) {
                if !gate.is_open() {
                    return self.hold_exit(gate, entry, reason);
                }
            }
        }
        self.leave(entry, reason);
    }

    /// The exit itself: dead-lettered for `reason` if any, and discarded.
    fn leave(&mut self, entry: Entry, reason: Option<Reason>) {
        if let Some(reason) = reason {
            self.dead_letter(&entry, reason);
        }
        self.discard(entry);
    }

    #[cold]
    fn hold_exit(&mut self, gate: Arc<Gate>, entry: Entry, reason: Option<Reason>) {
        self.held_exits.push((gate, entry, reason));
        self.wait_for_exits();
    }

    /// Runs the held exits whose gate opened, in order; waits for the first one left.
    #[cold]
    fn run_held_exits(&mut self) {
        let (open, closed): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held_exits)
            .into_iter()
            .partition(|(gate, _, _)| gate.is_open());
        self.held_exits = closed;
        for (_, entry, reason) in open {
            self.leave(entry, reason);
        }
        self.wait_for_exits();
    }

    fn wait_for_exits(&mut self) {
        match self.held_exits.first() {
            Some((gate, _, _)) => {
                let gate = gate.clone();
                self.wake_when_open(gate, |actor| &mut actor.exit_wait);
            }
            None => self.exit_wait = None,
        }
    }

    /// A message leaves the queue for good (acked, expired, dropped, purged).
    fn discard(&mut self, entry: Entry) {
        if let Some(dedup) = self.dedup.as_mut() {
            dedup.release(entry.id);
        }
        if let (Some(at), Some(store)) = (entry.location, self.store.as_mut()) {
            store.ack(entry.id, at);
        }
    }

    fn add_consumer(&mut self, spec: ConsumerSpec) -> Result<(), ProtocolError> {
        if (spec.exclusive && !self.consumers.is_empty())
            || self.consumers.iter().any(|c| c.spec.exclusive)
        {
            return Err(ProtocolError::access_refused(format!(
                "{} in exclusive use",
                self.what()
            )));
        }
        self.had_consumer = true;
        self.last_used_ms = now_ms();
        // After every consumer of the same or higher priority: arrival order within a band.
        let at = self
            .consumers
            .partition_point(|c| c.spec.priority >= spec.priority);
        let tag = Arc::from(spec.tag.as_str());
        self.consumers.insert(
            at,
            Consumer {
                spec,
                tag,
                in_flight: 0,
            },
        );
        Ok(())
    }

    /// Turns an entry into a delivery (None if a paged-out message cannot be read back; it
    /// is then dropped, and the failure logged).
    fn make_delivery(
        &mut self,
        entry: Entry,
        channel_key: ChannelKey,
        consumer_tag: Option<Arc<str>>,
        no_ack: bool,
    ) -> Option<Delivery> {
        let Some(loaded) = self.message_of(&entry) else {
            self.discard(entry);
            return None;
        };
        let message = if entry.delivery_count > 0 {
            // Consumers see how often it came back (RabbitMQ's quorum-queue header).
            Arc::new(loaded.with_header(
                "x-delivery-count",
                AMQPValue::LongLongInt(entry.delivery_count as i64),
            ))
        } else {
            loaded
        };
        let (id, redelivered) = (entry.id, entry.redelivered);
        if no_ack {
            self.discard(entry);
        } else {
            // One delivery of a group at a time: the next waits for this one's settlement.
            if let Some(group) = &entry.group {
                self.ready.group_busy(group);
            }
            let deadline_ms = self.consumer_timeout_ms.map(|t| now_ms().saturating_add(t));
            if let Some(d) = deadline_ms {
                self.timeouts.insert((d, id));
            }
            self.unacked_bytes += entry.size as u64;
            self.unacked.insert(
                id,
                Unacked {
                    entry,
                    channel_key,
                    consumer_tag: consumer_tag.clone(),
                    deadline_ms,
                },
            );
        }
        Some(Delivery {
            channel_key,
            consumer_tag,
            queue: self.handle.clone(),
            message_id: id,
            message,
            redelivered,
            needs_ack: !no_ack,
            output_bytes: 0,
        })
    }

    /// Hands ready messages to consumers with credit: highest consumer priority first,
    /// round-robin within a priority; only the first consumer with single-active-consumer.
    fn deliver(&mut self) {
        if self.consumers.is_empty() || self.ready.is_empty() {
            return;
        }
        // Strictly past the deadline, as of the batch's start: a message with TTL 0 still goes
        // to a consumer that can take it at once (RabbitMQ's rule), however long the batch
        // took; the timer expires it otherwise.
        let now = now_ms().min(self.batch_started_ms).saturating_sub(1);
        self.expire(now);
        while !self.ready.is_empty() {
            // A message that expired behind the head (its own TTL) is dropped when it gets
            // there, never delivered.
            if let Some(expired) = self.ready.pop_front_expired(now) {
                self.exit(expired, Some(Reason::Expired));
                continue;
            }
            let Some(index) = self.next_with_credit() else {
                return;
            };
            let Some(entry) = self.ready.pop_front() else {
                // Only messages of busy groups are left: give the reserved slot back.
                let c = &self.consumers[index];
                if !c.spec.no_ack {
                    c.spec.channel_limiter.release(1);
                }
                return;
            };
            if self.held_back(entry.id) {
                // Strict order: nothing goes out past it until its gate opens.
                let c = &self.consumers[index];
                if !c.spec.no_ack {
                    c.spec.channel_limiter.release(1);
                }
                self.ready.requeue(entry);
                return;
            }
            let consumer = &self.consumers[index];
            let (channel_key, tag, no_ack) = (
                consumer.spec.channel_key,
                consumer.tag.clone(),
                consumer.spec.no_ack,
            );
            let Some(mut delivery) = self.make_delivery(entry, channel_key, Some(tag), no_ack)
            else {
                // Unreadable message: give the reserved slot back and go on.
                let c = &self.consumers[index];
                if !c.spec.no_ack {
                    c.spec.channel_limiter.release(1);
                }
                continue;
            };
            let consumer = &mut self.consumers[index];
            if !no_ack {
                consumer.in_flight += 1;
            }
            delivery.output_bytes = DELIVERY_OVERHEAD_BYTES
                + delivery.message.body.len() as u64
                + delivery.message.header_raw.len() as u64;
            consumer.spec.output.charge(delivery.output_bytes);
            let redelivered = delivery.redelivered;
            if let Err(mpsc::error::SendError(ClientEvent::Deliver(d))) =
                consumer.spec.client.send(ClientEvent::Deliver(delivery))
            {
                // The connection is gone (its ChannelClosed follows): drop the consumer now
                // and put the message back as it was.
                self.consumers.remove(index);
                if let Some(u) = self.take_unacked(d.message_id) {
                    if let Some(deadline) = u.deadline_ms {
                        self.timeouts.remove(&(deadline, d.message_id));
                    }
                    self.ready.requeue(u.entry);
                }
                continue;
            }
            let c = &mut self.counters;
            *if no_ack {
                &mut c.deliver_no_ack
            } else {
                &mut c.deliver
            } += 1;
            c.redeliver += redelivered as u64;
            if !self.settings.single_active_consumer {
                self.rotate(index);
            }
        }
    }

    /// Moves a consumer just served to the end of its priority band.
    fn rotate(&mut self, index: usize) {
        let priority = self.consumers[index].spec.priority;
        let end = index
            + self.consumers[index..]
                .iter()
                .take_while(|c| c.spec.priority == priority)
                .count();
        self.consumers[index..end].rotate_left(1);
    }

    /// The consumer to serve next, with a slot reserved in its channel's shared limit.
    fn next_with_credit(&mut self) -> Option<usize> {
        let candidates = if self.settings.single_active_consumer {
            self.consumers.len().min(1)
        } else {
            self.consumers.len()
        };
        (0..candidates).find(|&i| {
            let c = &self.consumers[i];
            c.has_credit()
                && c.spec.output.admit()
                && if c.spec.no_ack {
                    c.spec.channel_limiter.has_room()
                } else {
                    c.spec.channel_limiter.try_reserve()
                }
        })
    }

    fn settle(&mut self, channel_key: ChannelKey, ids: &[u64], requeue: Option<bool>) {
        for &id in ids {
            match self.unacked.get(&id) {
                Some(u) if u.channel_key == channel_key => {}
                // Not this channel's (or already taken back by a timeout): nothing to do.
                _ => continue,
            }
            let Some(entry) = self.take_unacked(id) else {
                continue;
            };
            self.forget_timeout(&entry, id);
            self.release_credit(entry.channel_key, entry.consumer_tag.as_ref());
            match requeue {
                None => {
                    self.counters.ack += 1;
                    self.discard(entry.entry)
                }
                Some(true) => self.return_to_queue(entry),
                Some(false) => {
                    self.dead_letter(&entry.entry, Reason::Rejected);
                    self.discard(entry.entry);
                }
            }
        }
    }

    fn forget_timeout(&mut self, entry: &Unacked, id: u64) {
        if let Some(d) = entry.deadline_ms {
            self.timeouts.remove(&(d, id));
        }
    }

    fn release_credit(&mut self, channel_key: ChannelKey, tag: Option<&Arc<str>>) {
        let Some(tag) = tag else { return };
        if let Some(c) = self
            .consumers
            .iter_mut()
            .find(|c| c.spec.channel_key == channel_key && c.tag == *tag)
        {
            c.in_flight = c.in_flight.saturating_sub(1);
        }
    }

    /// An unsettled delivery comes back: redelivered, one more in its count, unless that
    /// passes `x-delivery-limit`, in which case it is dead-lettered.
    fn return_to_queue(&mut self, unacked: Unacked) {
        let mut entry = unacked.entry;
        entry.delivery_count = entry.delivery_count.saturating_add(1);
        entry.redelivered = true;
        if self
            .settings
            .delivery_limit
            .is_some_and(|limit| entry.delivery_count as u64 > limit)
        {
            self.dead_letter(&entry, Reason::DeliveryLimit);
            self.discard(entry);
            return;
        }
        self.ready.requeue(entry);
        self.drop_head_over_limit();
    }

    fn requeue_channel(&mut self, channel_key: ChannelKey) {
        let mut ids: Vec<u64> = self
            .unacked
            .iter()
            .filter(|(_, u)| u.channel_key == channel_key)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(entry) = self.take_unacked(id) {
                self.forget_timeout(&entry, id);
                self.release_credit(channel_key, entry.consumer_tag.as_ref());
                self.return_to_queue(entry);
            }
        }
    }

    fn cancel_all_consumers(&mut self) {
        for c in self.consumers.drain(..) {
            let _ = c.spec.client.send(ClientEvent::ConsumerCancelled {
                channel_key: c.spec.channel_key,
                consumer_tag: c.spec.tag.clone(),
            });
        }
    }

    /// After consumers left: an auto-delete queue goes with its last consumer; otherwise
    /// the x-expires clock starts.
    fn consumers_changed(&mut self) -> Flow {
        if !self.consumers.is_empty() {
            return Flow::Continue;
        }
        self.last_used_ms = now_ms();
        if self.def.auto_delete && self.had_consumer {
            return self.remove_self();
        }
        Flow::Continue
    }

    fn remove_self(&mut self) -> Flow {
        if let Some(vhost) = self.vhost.upgrade() {
            vhost.forget_queue(&self.handle);
        }
        self.cancel_all_consumers();
        Flow::Stop
    }

    // ---- timers ----

    fn next_deadline_ms(&self) -> Option<u64> {
        let expiry = self.ready.next_expiry_ms();
        let timeout = self.timeouts.first().map(|(d, _)| *d);
        let unused = match (self.settings.expires_ms, self.consumers.is_empty()) {
            (Some(e), true) => Some(self.last_used_ms.saturating_add(e)),
            _ => None,
        };
        [expiry, timeout, unused].into_iter().flatten().min()
    }

    fn on_timer(&mut self) -> Flow {
        let now = now_ms();
        self.expire(now);
        while let Some(&(deadline, id)) = self.timeouts.first() {
            if deadline > now {
                break;
            }
            self.timeouts.pop_first();
            self.consumer_timed_out(id);
        }
        if let Some(e) = self.settings.expires_ms {
            if self.consumers.is_empty() && now >= self.last_used_ms.saturating_add(e) {
                debug!(queue = %self.def.name.as_str(), "queue expired (x-expires)");
                return self.remove_self();
            }
        }
        Flow::Continue
    }

    /// Drops (dead-letters) expired messages at the head.
    fn expire(&mut self, now: u64) {
        if self.ready.next_expiry_ms().is_none_or(|t| t > now) {
            return;
        }
        let mut expired = Vec::new();
        self.ready.take_expired(now, &mut expired);
        for entry in expired {
            self.exit(entry, Some(Reason::Expired));
        }
    }

    fn consumer_timed_out(&mut self, id: u64) {
        let Some(entry) = self.take_unacked(id) else {
            return;
        };
        let channel_key = entry.channel_key;
        let tag = entry.consumer_tag.clone();
        self.release_credit(channel_key, tag.as_ref());
        let timeout_ms = self.consumer_timeout_ms.unwrap_or(0);
        let client = self
            .consumers
            .iter()
            .find(|c| c.spec.channel_key == channel_key)
            .map(|c| c.spec.client.clone());
        self.return_to_queue(entry);
        match self.timeout_action {
            ConsumerTimeoutAction::Requeue => {
                let Some(tag) = tag else { return };
                if let Some(i) = self
                    .consumers
                    .iter()
                    .position(|c| c.spec.channel_key == channel_key && c.tag == tag)
                {
                    let c = self.consumers.remove(i);
                    let _ = c.spec.client.send(ClientEvent::ConsumerCancelled {
                        channel_key,
                        consumer_tag: c.spec.tag,
                    });
                }
            }
            ConsumerTimeoutAction::CloseChannel => {
                if let Some(client) = client {
                    let _ = client.send(ClientEvent::ConsumerTimeout {
                        channel_key,
                        timeout_ms,
                    });
                }
            }
        }
    }

    // ---- dead-lettering ----

    /// Dead-letters the message of an entry (the caller discards the entry).
    fn dead_letter(&mut self, entry: &Entry, reason: Reason) {
        if self.settings.dead_letter_exchange.is_none() {
            return;
        }
        if let Some(message) = self.message_of(entry) {
            self.dead_letter_message(&message, reason);
        }
    }

    fn dead_letter_message(&mut self, message: &MessageRef, reason: Reason) {
        let Some(dlx) = self.settings.dead_letter_exchange.clone() else {
            return;
        };
        let Some(vhost) = self.vhost.upgrade() else {
            return;
        };
        let (dead, keys) = dead_lettered(
            message,
            self.def.name.as_str(),
            reason,
            &dlx,
            self.settings.dead_letter_routing_key.as_ref(),
            now_ms() / 1000,
        );
        let mut queues = Vec::new();
        let mut delays = Vec::new();
        // Dead-lettering confirms to no one, but a durable deduplication exchange on the
        // route gives a chained share: its key is written once the copies are safe.
        let mut confirm = None;
        {
            let routing = vhost.routing();
            let keys: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
            routing.route_content_delaying(
                dlx.as_str(),
                &keys,
                &dead.properties,
                &dead.body,
                &mut confirm,
                &mut queues,
                &mut delays,
            );
        }
        let dead = Arc::new(dead);
        // A delayed exchange on the route (x-delay set) takes it as a destination queue
        // would; the x-death cycle rules apply when it is dead-lettered again.
        for handle in delays {
            let extra = keys.iter().skip(1).cloned().collect();
            if let Some(cmd) =
                DelayedHandle::dead_letter_command(dead.clone(), extra, confirm.clone())
            {
                handle.send_now(cmd);
            }
        }
        for queue in queues {
            if is_cycle(&dead, queue.name().as_str()) {
                debug!(queue = %queue.name().as_str(), "dead-letter cycle: message dropped");
                continue;
            }
            queue.send_now(QueueCommand::Publish(dead.clone(), confirm.clone()));
        }
    }
}

/// The per-message TTL from the `expiration` property (checked at publish time).
fn message_expiration(message: &MessageRef) -> Option<u64> {
    message
        .properties
        .expiration()
        .as_ref()
        .and_then(|e| e.as_str().parse::<u64>().ok())
}
