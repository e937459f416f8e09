//! Messages handled by the broker itself on an operator's behalf: publish one message, get
//! messages from a queue (RabbitMQ's management "get messages", with its four ack modes), and
//! move the messages of a queue to another queue or an exchange (a DLQ redrive, what
//! RabbitMQ needs a shovel for).
//!
//! Each operation runs as a short-lived internal session: a channel key of its own
//! (`consumer::new_channel_key`), publisher confirms awaited on its own event channel, and
//! basic.get with acks on the source queue. When a session ends without settling (an HTTP
//! client hung up midway) its unacked messages go back to their queues, as when a channel
//! closes.
//!
//! Moving is exactly-once for persistent messages in durable queues: a batch is confirmed by
//! every destination queue (fsynced) before it is acked on the source, so a crash loses
//! nothing; and it is journaled first (`move_journal`), so that a crash between the two is
//! settled at the next start instead of leaving the batch in both queues.
//!
//! Owns: nothing lasting. Must not touch: connection state; queues other than through their
//! command inboxes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use warren_protocol::basic::AMQPProperties;
use warren_protocol::{AMQPValue, ShortString};

use super::move_journal::Journal;
use super::AdminError;
use crate::args::as_i64;
use crate::broker::Broker;
use crate::confirm::{ConfirmShare, Gate};
use crate::connections::MessageCounts;
use crate::consumer::{new_channel_key, ChannelKey, ClientEvent, ClientSender, Delivery};
use crate::delayed::DelayedHandle;
use crate::durable::record::MoveOrigin;
use crate::message::{Message, MessageRef};
use crate::queue::store::StoreContext;
use crate::queue::{QueueCommand, QueueHandle};
use crate::vhost::VHost;

/// The header a moved message carries: how many times it was moved (1 for the first move).
pub const REDRIVE_COUNT_HEADER: &str = "x-redrive-count";
/// Messages taken from the source per round of a move: each round is confirmed by the
/// destination and then acked on the source as a whole.
pub const MOVE_BATCH_MAX: usize = 256;
/// Most messages one "get" may return (RabbitMQ's UI offers small counts; a client asking
/// for millions gets this many).
pub const GET_COUNT_MAX: usize = 10_000;
/// A connection id no client connection has (ids start at 1): the owner the broker's own
/// sessions present, so another connection's exclusive queue stays refused (405).
const NO_CONNECTION: u64 = 0;

/// What to do with the messages a "get" took, as RabbitMQ's `ackmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckMode {
    /// `ack_requeue_true`: put them back (redelivered) after reading.
    RequeueAfterRead,
    /// `ack_requeue_false`: remove them.
    Ack,
    /// `reject_requeue_true`: reject with requeue (same outcome as the first).
    RejectRequeue,
    /// `reject_requeue_false`: reject without requeue (dead-lettered if the queue has a DLX).
    Reject,
}

impl AckMode {
    /// RabbitMQ's names.
    pub fn parse(s: &str) -> Option<AckMode> {
        Some(match s {
            "ack_requeue_true" => AckMode::RequeueAfterRead,
            "ack_requeue_false" => AckMode::Ack,
            "reject_requeue_true" => AckMode::RejectRequeue,
            "reject_requeue_false" => AckMode::Reject,
            _ => return None,
        })
    }

    /// The settle the queue gets: `None` = ack, `Some(requeue)` = reject.
    fn settle(self) -> Option<bool> {
        match self {
            AckMode::Ack => None,
            AckMode::RequeueAfterRead | AckMode::RejectRequeue => Some(true),
            AckMode::Reject => Some(false),
        }
    }
}

/// A message to publish.
#[derive(Clone, Debug)]
pub struct Publish {
    pub exchange: String,
    pub routing_key: String,
    pub properties: AMQPProperties,
    pub body: Bytes,
}

/// One message a "get" returned.
#[derive(Clone, Debug)]
pub struct GotMessage {
    pub message: MessageRef,
    pub redelivered: bool,
    /// Messages left ready in the queue after this one was taken.
    pub message_count: u32,
}

/// Where a move sends messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MoveTarget {
    /// Straight into this queue: exchange and routing key stay as they were.
    Queue(String),
    /// Routed through this exchange with the message's routing key, or `routing_key` when
    /// given; the message's exchange becomes this one (as dead-lettering does).
    Exchange {
        name: String,
        routing_key: Option<String>,
    },
}

/// What a move did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MoveReport {
    /// Messages now in the destination and gone from the source.
    pub moved: u64,
    /// Why it stopped before moving everything it was asked to, if it did (e.g. a message
    /// the destination exchange could not route: it stays in the source).
    pub stopped: Option<String>,
}

/// A broker-internal channel: its own key, confirms on its own event channel, and the
/// queues it took unacked messages from (told when it ends, like a closing channel).
struct Session {
    key: ChannelKey,
    events_tx: ClientSender,
    events: mpsc::UnboundedReceiver<ClientEvent>,
    next_seq: u64,
    touched: Vec<QueueHandle>,
}

impl Session {
    fn new() -> Session {
        let (events_tx, events) = mpsc::unbounded_channel();
        Session {
            key: new_channel_key(0),
            events_tx,
            events,
            next_seq: 1,
            touched: Vec::new(),
        }
    }

    /// Hands `message` to `queues` (and to the delayed exchanges in `delays`, which take it
    /// as queues do: confirmed once on their schedule) without waiting: its confirm comes
    /// later as `ClientEvent::Confirmed` with the returned sequence number (`confirmed`). A
    /// moved message carries its `origin` into the queues' records, and is held back from
    /// their consumers until `gate` opens.
    async fn publish(
        &mut self,
        message: MessageRef,
        queues: &[QueueHandle],
        delays: Vec<DelayedHandle>,
        origin: Option<MoveOrigin>,
        gate: Option<Arc<Gate>>,
    ) -> u64 {
        let (seq, share) = self.share(origin, gate);
        Self::send(message, queues, delays, share).await;
        seq
    }

    /// The confirm share of the next publish, and its sequence number.
    fn share(
        &mut self,
        origin: Option<MoveOrigin>,
        gate: Option<Arc<Gate>>,
    ) -> (u64, ConfirmShare) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let share = ConfirmShare::with_origin(self.key, seq, self.events_tx.clone(), origin, gate);
        (seq, share)
    }

    /// Hands `message` with `share` to `queues` and `delays` (see `publish`).
    async fn send(
        message: MessageRef,
        queues: &[QueueHandle],
        delays: Vec<DelayedHandle>,
        share: ConfirmShare,
    ) {
        for handle in delays {
            if let Some(cmd) =
                DelayedHandle::schedule_command(message.clone(), Vec::new(), Some(share.clone()))
            {
                handle.send(cmd).await;
            }
        }
        for q in queues {
            let sent = q
                .send(QueueCommand::Publish(message.clone(), Some(share.clone())))
                .await;
            if sent.is_err() {
                // Deleted since routing: unlike a client's publish, this one must not count
                // as done (a move would then ack a message nobody holds).
                share.clone().fail();
            }
        }
    }

    /// Waits for the confirms of the publishes `first..first + n`: whether each was made
    /// safe by every queue it went to (enqueued; fsynced if persistent in a durable queue).
    async fn confirmed(&mut self, first: u64, n: usize) -> Vec<bool> {
        let mut acks: Vec<Option<bool>> = vec![None; n];
        let mut pending = n;
        while pending > 0 {
            match self.events.recv().await {
                Some(ClientEvent::Confirmed { seq, ack, .. }) => {
                    let i = seq.wrapping_sub(first) as usize;
                    if let Some(slot @ None) = acks.get_mut(i) {
                        *slot = Some(ack);
                        pending -= 1;
                    }
                }
                Some(_) => {}
                None => unreachable!("the session holds a sender"),
            }
        }
        acks.into_iter().map(|a| a == Some(true)).collect()
    }

    /// basic.get with ack from `queue`: the delivery, or None when it is empty.
    async fn get(&mut self, queue: &QueueHandle) -> Result<Option<Delivery>, AdminError> {
        if !self.touched.iter().any(|q| q.same(queue)) {
            self.touched.push(queue.clone());
        }
        let got = queue
            .ask(|reply| QueueCommand::Get {
                channel_key: self.key,
                no_ack: false,
                reply,
            })
            .await?;
        Ok(got.map(|(d, _)| d))
    }

    /// Waits until what `queue` wrote so far (this session's acks) is on disk.
    async fn synced(&mut self, queue: &QueueHandle) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let share = ConfirmShare::new(self.key, seq, self.events_tx.clone());
        if queue.send(QueueCommand::AfterSync(share)).await.is_ok() {
            self.confirmed(seq, 1).await;
        }
    }

    /// Settles deliveries taken from `queue`: `None` acks, `Some(requeue)` rejects.
    async fn settle(&self, queue: &QueueHandle, ids: Vec<u64>, requeue: Option<bool>) {
        if ids.is_empty() {
            return;
        }
        let _ = queue
            .send(QueueCommand::Settle {
                channel_key: self.key,
                ids,
                requeue,
            })
            .await;
    }
}

impl Drop for Session {
    /// Whatever was not settled goes back to its queue (the session was cut short).
    fn drop(&mut self) {
        for q in &self.touched {
            q.send_now(QueueCommand::ChannelClosed {
                channel_key: self.key,
            });
        }
    }
}

impl Broker {
    fn vhost_for_messages(&self, vhost: &str) -> Result<Arc<VHost>, AdminError> {
        self.vhost(vhost)
            .ok_or_else(|| AdminError::not_found(format!("vhost '{vhost}'")))
    }

    /// Publishes one message to `exchange` (`""` or `amq.default` is the default exchange)
    /// and waits for every queue it reached to confirm it. Returns whether it was routed.
    pub async fn publish_message(&self, vhost: &str, publish: Publish) -> Result<bool, AdminError> {
        let vh = self.vhost_for_messages(vhost)?;
        let exchange = match publish.exchange.as_str() {
            "amq.default" => "",
            x => x,
        };
        let short = |s: &str, what: &str| {
            ShortString::try_new(s)
                .map_err(|_| AdminError::bad_request(format!("{what} is longer than 255 bytes")))
        };
        let routing_key = short(&publish.routing_key, "routing_key")?;
        let exchange = short(exchange, "exchange name")?;
        let header_raw =
            warren_protocol::encode::header_payload(&publish.properties, publish.body.len() as u64);
        let properties_bytes = warren_protocol::table::check_header_tables(&header_raw)
            .map(|shape| shape.decoded_bytes())
            .unwrap_or(0);
        let message = Arc::new(Message {
            exchange,
            routing_key,
            properties: Box::new(publish.properties),
            header_raw,
            body: publish.body,
            properties_bytes,
        });
        let mut queues = Vec::new();
        let mut delays = Vec::new();
        let mut session = Session::new();
        // Routed with its confirm share, so that a durable deduplication exchange writes
        // the key only once the message is safe (a retry after a failure is not dropped).
        let (seq, share) = session.share(None, None);
        let mut confirm = Some(share);
        {
            let routing = vh.routing();
            if !message.exchange.as_str().is_empty() {
                match routing.exchanges.get(message.exchange.as_str()) {
                    None => {
                        return Err(AdminError::not_found(format!(
                            "exchange '{}' in vhost '{vhost}'",
                            message.exchange.as_str()
                        )))
                    }
                    Some(x) if x.internal => {
                        return Err(AdminError::bad_request(format!(
                            "cannot publish to internal exchange '{}' in vhost '{vhost}'",
                            message.exchange.as_str()
                        )))
                    }
                    Some(_) => {}
                }
            }
            routing.route_content_delaying(
                message.exchange.as_str(),
                &[message.routing_key.as_str()],
                &message.properties,
                &message.body,
                &mut confirm,
                &mut queues,
                &mut delays,
            );
        }
        if queues.is_empty() && delays.is_empty() {
            self.connections.count_internal(&MessageCounts {
                published: 1,
                dropped_unroutable: 1,
                ..MessageCounts::default()
            });
            return Ok(false);
        }
        if let Some(share) = confirm {
            Session::send(message, &queues, delays, share).await;
        }
        if !session.confirmed(seq, 1).await[0] {
            return Err(AdminError::Internal(
                "a destination queue could not store the message".into(),
            ));
        }
        self.connections.count_internal(&MessageCounts {
            published: 1,
            confirmed: 1,
            ..MessageCounts::default()
        });
        Ok(true)
    }

    /// Takes up to `count` messages from `queue` and settles them as `mode` says, once all
    /// were read (so a requeue mode never reads the same message twice).
    pub async fn get_messages(
        &self,
        vhost: &str,
        queue: &str,
        count: usize,
        mode: AckMode,
    ) -> Result<Vec<GotMessage>, AdminError> {
        let vh = self.vhost_for_messages(vhost)?;
        let handle = vh.queue(queue, NO_CONNECTION)?;
        let mut session = Session::new();
        let mut got = Vec::new();
        let mut ids = Vec::new();
        while got.len() < count.min(GET_COUNT_MAX) {
            let Some(d) = session.get(&handle).await? else {
                break;
            };
            ids.push(d.message_id);
            got.push(GotMessage {
                message: d.message,
                redelivered: d.redelivered,
                message_count: 0,
            });
        }
        // RabbitMQ reports, with each message, how many are left after it.
        let left = handle.sync_metrics().await?.messages_ready;
        let n = got.len() as u64;
        for (i, g) in got.iter_mut().enumerate() {
            g.message_count = u32::try_from(left + n - 1 - i as u64).unwrap_or(u32::MAX);
        }
        session.settle(&handle, ids, mode.settle()).await;
        Ok(got)
    }

    /// Moves the messages of `queue` (all those ready when it starts, or the first `count`)
    /// to `target`, each with `x-redrive-count` incremented. A batch is acked on the source
    /// only once every destination queue confirmed it. A message the target cannot take
    /// (an exchange that routes it nowhere) stops the move and stays in the source.
    pub async fn move_messages(
        &self,
        vhost: &str,
        queue: &str,
        target: &MoveTarget,
        count: Option<u64>,
    ) -> Result<MoveReport, AdminError> {
        self.move_messages_until(vhost, queue, target, count, &AtomicBool::new(false))
            .await
    }

    /// `move_messages` that also ends, between two batches, once `stop` is set.
    pub async fn move_messages_until(
        &self,
        vhost: &str,
        queue: &str,
        target: &MoveTarget,
        count: Option<u64>,
        stop: &AtomicBool,
    ) -> Result<MoveReport, AdminError> {
        let vh = self.vhost_for_messages(vhost)?;
        let source = vh.queue(queue, NO_CONNECTION)?;
        let target_queue = match target {
            MoveTarget::Queue(name) => {
                if name == queue {
                    return Err(AdminError::bad_request(format!(
                        "cannot move the messages of queue '{queue}' to itself"
                    )));
                }
                Some(vh.queue(name, NO_CONNECTION)?)
            }
            MoveTarget::Exchange { name, .. } => {
                let routing = vh.routing();
                if name.is_empty() || !routing.exchanges.contains_key(name.as_str()) {
                    return Err(AdminError::not_found(format!(
                        "exchange '{name}' in vhost '{vhost}'"
                    )));
                }
                None
            }
        };
        // Only what is there now: messages routed back into the source are not moved again.
        let ready = source.sync_metrics().await?.messages_ready;
        let mut left = count.map_or(ready, |c| c.min(ready));
        let mut session = Session::new();
        let mut report = MoveReport::default();
        let data_dir = self.persistence.as_ref().map(|p| p.store.data_dir.clone());
        let mut journal: Option<Journal> = None;
        while left > 0 && report.stopped.is_none() {
            if stop.load(Ordering::Relaxed) {
                report.stopped = Some("stopped on request".into());
                break;
            }
            let mut batch = Vec::new();
            while (batch.len() as u64) < left.min(MOVE_BATCH_MAX as u64) {
                match session.get(&source).await? {
                    Some(d) => batch.push(d),
                    None => {
                        left = batch.len() as u64;
                        break;
                    }
                }
            }
            if batch.is_empty() {
                break;
            }
            // Where each message goes; the first one no destination takes stops the move
            // (it and those after it stay in the source, in order).
            let mut unmoved_ids = Vec::new();
            let mut planned = Vec::with_capacity(batch.len());
            for d in batch {
                if report.stopped.is_some() {
                    unmoved_ids.push(d.message_id);
                    continue;
                }
                let message = Arc::new(redriven(&d.message, d.redelivered, target));
                let queues = match &target_queue {
                    Some(q) => vec![q.clone()],
                    None => {
                        let mut out = Vec::new();
                        vh.routing().route(
                            message.exchange.as_str(),
                            &[message.routing_key.as_str()],
                            message.properties.headers().as_ref(),
                            &mut out,
                        );
                        out
                    }
                };
                if queues.is_empty() {
                    report.stopped = Some(format!(
                        "a message with routing key '{}' is not routable by exchange '{}'; it \
                         and the messages after it stay in queue '{queue}'",
                        message.routing_key.as_str(),
                        message.exchange.as_str()
                    ));
                    unmoved_ids.push(d.message_id);
                    continue;
                }
                planned.push((d.message_id, message, queues));
            }
            // Persistent messages are journaled (fsynced) before any of them goes out.
            let nonce = match &data_dir {
                Some(dir) if planned.iter().any(|(_, m, _)| m.is_persistent()) => {
                    let entries = planned
                        .iter()
                        .filter(|(_, m, _)| m.is_persistent())
                        .map(|(id, _, queues)| {
                            let keys = queues
                                .iter()
                                .map(|q| StoreContext::queue_key(vhost, q.name().as_str()))
                                .collect();
                            (*id, keys)
                        })
                        .collect::<Vec<_>>();
                    let taken = journal.take();
                    let (dir, source_key) = (dir.clone(), StoreContext::queue_key(vhost, queue));
                    let written = tokio::task::spawn_blocking(move || {
                        let mut j = match taken {
                            Some(j) => j,
                            None => Journal::create(&dir, source_key)?,
                        };
                        j.append_batch(&entries)?;
                        Ok::<_, std::io::Error>(j)
                    })
                    .await
                    .map_err(|e| AdminError::Internal(format!("move journal: {e}")))?
                    .map_err(|e| {
                        AdminError::Internal(format!("cannot write the move journal: {e}"))
                    })?;
                    let nonce = written.nonce();
                    journal = Some(written);
                    Some(nonce)
                }
                _ => None,
            };
            // The batch goes out in one go and is confirmed as a whole (one fsync of a
            // durable destination for many messages); only confirmed ones leave the source.
            // A journaled batch is held back from the destinations' consumers until its acks
            // on the source are on disk: one consumed (and gone) before that could not be told
            // apart, after a crash, from one that never arrived, and would be moved again.
            let (gate, opener) = match nonce {
                Some(_) => {
                    let (gate, opener) = Gate::new();
                    (Some(gate), Some(opener))
                }
                None => (None, None),
            };
            let first_seq = session.next_seq;
            let mut sent = Vec::with_capacity(planned.len());
            for (id, message, queues) in planned {
                let origin = nonce
                    .filter(|_| message.is_persistent())
                    .map(|nonce| MoveOrigin {
                        nonce,
                        source_id: id,
                    });
                let gate = gate.clone().filter(|_| origin.is_some());
                session
                    .publish(message, &queues, Vec::new(), origin, gate)
                    .await;
                sent.push(id);
            }
            let acks = session.confirmed(first_seq, sent.len()).await;
            fault::after_confirm();
            let mut moved_ids = Vec::with_capacity(sent.len());
            for (id, ack) in sent.into_iter().zip(acks) {
                match ack {
                    true => moved_ids.push(id),
                    false => {
                        report.stopped.get_or_insert_with(|| {
                            "a destination queue could not store a message".into()
                        });
                        unmoved_ids.push(id);
                    }
                }
            }
            self.connections.count_internal(&MessageCounts {
                published: moved_ids.len() as u64,
                confirmed: moved_ids.len() as u64,
                ..MessageCounts::default()
            });
            left -= (moved_ids.len() + unmoved_ids.len()) as u64;
            report.moved += moved_ids.len() as u64;
            session.settle(&source, moved_ids, None).await;
            session.settle(&source, unmoved_ids, Some(true)).await;
            if let Some(opener) = opener {
                session.synced(&source).await;
                drop(opener);
            }
        }
        // The journal goes once the source's acks are on disk.
        if let Some(journal) = journal {
            session.synced(&source).await;
            journal.remove();
        }
        Ok(report)
    }
}

/// How long a shutdown waits for the queues' logs to be synced.
pub const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Broker {
    /// Waits until every queue has written and synced what it holds so far (acks included):
    /// a clean shutdown leaves nothing to redeliver that a client acked. Bounded by
    /// `FLUSH_TIMEOUT`; a queue that is gone counts as done.
    pub async fn flush_queues(&self) {
        let mut session = Session::new();
        let queues: Vec<QueueHandle> = self
            .vhost_handles()
            .values()
            .flat_map(|v| {
                v.routing_snapshot()
                    .queues
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect();
        if queues.is_empty() {
            return;
        }
        let first = session.next_seq;
        for q in &queues {
            let seq = session.next_seq;
            session.next_seq += 1;
            let share = ConfirmShare::new(session.key, seq, session.events_tx.clone());
            // Dropped (done) at once if the queue is gone.
            let _ = q.send(QueueCommand::AfterSync(share)).await;
        }
        let waited = tokio::time::timeout(FLUSH_TIMEOUT, session.confirmed(first, queues.len()));
        if waited.await.is_err() {
            tracing::warn!("shutdown: some queues did not sync their logs in time");
        }
    }
}

/// A deterministic crash point for the process test of an interrupted move
/// (`crates/warren/tests/move_crash.rs`): with `WARREN_FAULT_MOVE_ABORT_AFTER_CONFIRM=1` in its
/// environment the process exits (status 137, as if killed; no core dump, nothing after this
/// point runs, and what was written stays as written, as with `kill -9`) right after a batch
/// was confirmed by its destinations and before it is acked on the source — the moment a
/// crash would otherwise leave it in both.
mod fault {
    use std::sync::OnceLock;

    /// The environment variable that arms it.
    pub const ABORT_AFTER_CONFIRM: &str = "WARREN_FAULT_MOVE_ABORT_AFTER_CONFIRM";

    pub fn after_confirm() {
        static ARMED: OnceLock<bool> = OnceLock::new();
        if *ARMED.get_or_init(|| std::env::var_os(ABORT_AFTER_CONFIRM).is_some_and(|v| v == "1")) {
            tracing::error!("{ABORT_AFTER_CONFIRM} is set: exiting mid-move");
            std::process::exit(137);
        }
    }
}

/// The message as the target gets it: its `x-redrive-count` one higher, the
/// `x-delivery-count` the source queue added on a redelivery gone, and for an exchange
/// target that exchange (and routing key, when given) in place of the original.
fn redriven(message: &Message, redelivered: bool, target: &MoveTarget) -> Message {
    let mut headers = message.properties.headers().clone().unwrap_or_default();
    let count = headers
        .inner()
        .get(REDRIVE_COUNT_HEADER)
        .and_then(as_i64)
        .unwrap_or(0);
    if redelivered {
        let mut kept = warren_protocol::FieldTable::default();
        for (k, v) in headers.inner() {
            if k.as_str() != "x-delivery-count" {
                kept.insert(k.clone(), v.clone());
            }
        }
        headers = kept;
    }
    headers.insert(
        REDRIVE_COUNT_HEADER.into(),
        AMQPValue::LongLongInt(count.saturating_add(1)),
    );
    let (exchange, routing_key) = match target {
        MoveTarget::Queue(_) => (message.exchange.clone(), message.routing_key.clone()),
        MoveTarget::Exchange { name, routing_key } => (
            ShortString::try_new(name.as_str()).unwrap_or_else(|_| message.exchange.clone()),
            routing_key
                .as_deref()
                .and_then(|k| ShortString::try_new(k).ok())
                .unwrap_or_else(|| message.routing_key.clone()),
        ),
    };
    message.with_properties(
        message.properties.as_ref().clone().with_headers(headers),
        exchange,
        routing_key,
    )
}
