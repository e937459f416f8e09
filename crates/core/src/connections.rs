//! The registry of open AMQP connections: who is connected as whom to which vhost, how many
//! channels each user has open, and a way to close connections from outside their task
//! (a vhost or user deleted, the management API). It also enforces the connection and
//! channel limits of vhosts and users, counting under one lock so that two connections
//! racing for the last place cannot both get it.
//!
//! It owns only these counts and the senders to reach connection tasks; it never touches a
//! connection's state (the task does that when its `ClientEvent::Close` arrives).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use warren_protocol::{FieldTable, ProtocolError};

use crate::consumer::{ClientEvent, ClientSender};

/// A connection's name as `/api/connections` and the firehose tracer show it.
pub fn connection_name(peer: SocketAddr, id: u64) -> String {
    format!("{peer} -> #{id}")
}

/// What the registry knows of one connection (fixed once it is open; the counters change
/// behind `metrics`).
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    pub id: u64,
    pub user: String,
    pub vhost: String,
    pub peer: SocketAddr,
    /// The client's `client_properties` from connection.start-ok (product, version,
    /// platform, capabilities, connection_name, ...).
    pub client_properties: FieldTable,
    /// Unix milliseconds.
    pub connected_at_ms: u64,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat_secs: u16,
    /// `PROTOCOL_AMQP_0_9_1`.
    pub protocol: &'static str,
    pub tls: bool,
    pub auth_mechanism: String,
    pub metrics: Arc<ConnectionMetrics>,
}

/// RabbitMQ's name for the protocol (the management API's `protocol` field).
pub const PROTOCOL_AMQP_0_9_1: &str = "AMQP 0-9-1";

/// A connection's counters: its socket's and its channels' message events (RabbitMQ's
/// `channel_*` totals, kept per connection rather than per channel: one allocation, and
/// the sum is what `/metrics` shows). The connection task is the only writer: socket
/// counters once per read or write system call, message counters once per event (or per
/// batch where the code already batches, e.g. confirms), each a relaxed load and store (no
/// read-modify-write: there is one writer). Readers load them. The struct sits on cache
/// lines of its own, so connections on different cores never share one.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct ConnectionMetrics {
    recv_oct: AtomicU64,
    recv_cnt: AtomicU64,
    send_oct: AtomicU64,
    send_cnt: AtomicU64,
    messages: [AtomicU64; MessageEvent::COUNT],
}

/// A message event a connection counts (`ConnectionMetrics::count`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageEvent {
    /// A basic.publish received (routed, returned or dropped).
    Published = 0,
    /// A publish confirmed with basic.ack to its publisher.
    Confirmed,
    /// Unroutable and mandatory: basic.return.
    ReturnedUnroutable,
    /// Unroutable and not mandatory: dropped.
    DroppedUnroutable,
    /// basic.deliver to a consumer that acks.
    DeliveredAck,
    /// basic.deliver to a no-ack consumer.
    DeliveredNoAck,
    /// basic.get-ok, ack expected.
    GetAck,
    /// basic.get-ok, no-ack.
    GetNoAck,
    /// basic.get-empty.
    GetEmpty,
    /// A delivery or get-ok with the redelivered flag.
    Redelivered,
    /// A delivery settled by basic.ack (each one a multiple ack covers).
    Acked,
}

impl MessageEvent {
    pub const COUNT: usize = 11;
}

impl ConnectionMetrics {
    /// One read of `bytes` from the socket (called by the connection task only).
    pub fn received(&self, bytes: usize) {
        add(&self.recv_oct, bytes as u64);
        add(&self.recv_cnt, 1);
    }

    /// One write of `bytes` to the socket (called by the connection task only).
    pub fn sent(&self, bytes: usize) {
        add(&self.send_oct, bytes as u64);
        add(&self.send_cnt, 1);
    }

    /// `n` message events of one kind (called by the connection task only).
    #[inline]
    pub fn count(&self, event: MessageEvent, n: u64) {
        add(&self.messages[event as usize], n);
    }

    pub fn snapshot(&self) -> ConnectionMetricsSnapshot {
        let counts: [u64; MessageEvent::COUNT] =
            std::array::from_fn(|i| self.messages[i].load(Relaxed));
        ConnectionMetricsSnapshot {
            recv_oct: self.recv_oct.load(Relaxed),
            recv_cnt: self.recv_cnt.load(Relaxed),
            send_oct: self.send_oct.load(Relaxed),
            send_cnt: self.send_cnt.load(Relaxed),
            messages: MessageCounts::from_events(&counts),
        }
    }
}

impl MessageCounts {
    /// From counts indexed by `MessageEvent` (a channel's plain counters).
    pub fn from_events(counts: &[u64; MessageEvent::COUNT]) -> MessageCounts {
        let m = |e: MessageEvent| counts[e as usize];
        MessageCounts {
            published: m(MessageEvent::Published),
            confirmed: m(MessageEvent::Confirmed),
            returned_unroutable: m(MessageEvent::ReturnedUnroutable),
            dropped_unroutable: m(MessageEvent::DroppedUnroutable),
            delivered_ack: m(MessageEvent::DeliveredAck),
            delivered_no_ack: m(MessageEvent::DeliveredNoAck),
            get_ack: m(MessageEvent::GetAck),
            get_no_ack: m(MessageEvent::GetNoAck),
            get_empty: m(MessageEvent::GetEmpty),
            redelivered: m(MessageEvent::Redelivered),
            acked: m(MessageEvent::Acked),
        }
    }
}

/// Single writer: a load and a store, not a locked add.
fn add(cell: &AtomicU64, n: u64) {
    cell.store(cell.load(Relaxed).wrapping_add(n), Relaxed);
}

/// One reading of a connection's counters (RabbitMQ's names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionMetricsSnapshot {
    /// Bytes received.
    pub recv_oct: u64,
    /// Socket reads.
    pub recv_cnt: u64,
    /// Bytes sent.
    pub send_oct: u64,
    /// Socket writes.
    pub send_cnt: u64,
    /// Its channels' message events.
    pub messages: MessageCounts,
}

impl ConnectionMetricsSnapshot {
    /// Adds another connection's counters (broker totals).
    pub fn add(&mut self, o: &ConnectionMetricsSnapshot) {
        self.recv_oct += o.recv_oct;
        self.recv_cnt += o.recv_cnt;
        self.send_oct += o.send_oct;
        self.send_cnt += o.send_cnt;
        self.messages.add(&o.messages);
    }
}

/// Message events of a connection's channels (see `MessageEvent` for each).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MessageCounts {
    pub published: u64,
    pub confirmed: u64,
    pub returned_unroutable: u64,
    pub dropped_unroutable: u64,
    pub delivered_ack: u64,
    pub delivered_no_ack: u64,
    pub get_ack: u64,
    pub get_no_ack: u64,
    pub get_empty: u64,
    pub redelivered: u64,
    pub acked: u64,
}

impl MessageCounts {
    pub fn add(&mut self, o: &MessageCounts) {
        self.published += o.published;
        self.confirmed += o.confirmed;
        self.returned_unroutable += o.returned_unroutable;
        self.dropped_unroutable += o.dropped_unroutable;
        self.delivered_ack += o.delivered_ack;
        self.delivered_no_ack += o.delivered_no_ack;
        self.get_ack += o.get_ack;
        self.get_no_ack += o.get_no_ack;
        self.get_empty += o.get_empty;
        self.redelivered += o.redelivered;
        self.acked += o.acked;
    }
}

/// The registry's broker-wide figures (`Connections::counters`): what is open now, what
/// opened and closed since start, and every connection's counters summed, those of closed
/// connections included, so the totals never go down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegistryCounters {
    pub connections: u64,
    pub channels: u64,
    /// Connections registered (handshake complete) since start.
    pub connections_opened: u64,
    pub connections_closed: u64,
    pub channels_opened: u64,
    /// Channels closed, those of closed connections included.
    pub channels_closed: u64,
    /// Open and closed connections' counters.
    pub metrics: ConnectionMetricsSnapshot,
}

/// One channel as the management API lists it, as its connection task reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChannelStats {
    pub number: u16,
    /// The channel's key (`ConsumerSpec::channel_key`): joins a queue's consumers to it.
    pub key: crate::consumer::ChannelKey,
    /// basic.qos global=false: the prefetch of consumers created from now on.
    pub prefetch_count: u32,
    /// basic.qos global=true: the channel's shared limit (0: none).
    pub global_prefetch_count: u32,
    pub consumer_count: u64,
    pub messages_unacknowledged: u64,
    pub confirm: bool,
    pub transactional: bool,
    /// What happened on it (`message_stats` of `/api/channels`).
    pub messages: MessageCounts,
}

/// How long `Connections::channels` waits for a connection task to answer.
pub const CHANNEL_LIST_TIMEOUT: Duration = Duration::from_secs(5);

/// One connection as the management API lists it.
#[derive(Clone, Debug)]
pub struct ConnectionStats {
    pub info: Arc<ConnectionInfo>,
    /// Open channels.
    pub channels: u64,
    pub metrics: ConnectionMetricsSnapshot,
}

struct Entry {
    info: Arc<ConnectionInfo>,
    events: ClientSender,
    channels: u64,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<u64, Entry>,
    per_vhost: HashMap<String, u64>,
    /// Per user: (connections, channels).
    per_user: HashMap<String, (u64, u64)>,
    /// Opened / closed counts and closed connections' counters (under the lock that
    /// register and deregister take anyway).
    churn: RegistryCounters,
}

#[derive(Default)]
pub struct Connections {
    inner: Mutex<Inner>,
}

/// The limits that apply to a new connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectionLimits {
    pub vhost_max_connections: Option<u64>,
    pub user_max_connections: Option<u64>,
}

impl Connections {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers an opening connection, or refuses it (530) when its vhost or user is at
    /// its connection limit.
    pub fn register(
        &self,
        info: ConnectionInfo,
        events: ClientSender,
        limits: ConnectionLimits,
    ) -> Result<(), ProtocolError> {
        let mut inner = self.lock();
        let in_vhost = inner.per_vhost.get(&info.vhost).copied().unwrap_or(0);
        let refused = |what: String| {
            ProtocolError::not_allowed(format!(
                "access to vhost '{}' refused for user '{}': {what}",
                info.vhost, info.user
            ))
        };
        if let Some(max) = limits.vhost_max_connections {
            if in_vhost >= max {
                return Err(refused(format!("connection limit ({max}) is reached")));
            }
        }
        let of_user = inner.per_user.get(&info.user).map(|c| c.0).unwrap_or(0);
        if let Some(max) = limits.user_max_connections {
            if of_user >= max {
                return Err(ProtocolError::not_allowed(format!(
                    "connection refused for user '{}': user connection limit ({max}) is reached",
                    info.user
                )));
            }
        }
        *inner.per_vhost.entry(info.vhost.clone()).or_insert(0) += 1;
        inner.per_user.entry(info.user.clone()).or_insert((0, 0)).0 += 1;
        inner.churn.connections_opened += 1;
        inner.by_id.insert(
            info.id,
            Entry {
                info: Arc::new(info),
                events,
                channels: 0,
            },
        );
        Ok(())
    }

    /// Forgets a closed connection (and its channels).
    pub fn deregister(&self, id: u64) {
        let mut inner = self.lock();
        let Some(entry) = inner.by_id.remove(&id) else {
            return;
        };
        inner.churn.connections_closed += 1;
        inner.churn.channels_closed += entry.channels;
        // Its task writes no more after deregistering (it does so when dropped).
        inner.churn.metrics.add(&entry.info.metrics.snapshot());
        if let Some(n) = inner.per_vhost.get_mut(&entry.info.vhost) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                inner.per_vhost.remove(&entry.info.vhost);
            }
        }
        if let Some(c) = inner.per_user.get_mut(&entry.info.user) {
            c.0 = c.0.saturating_sub(1);
            c.1 = c.1.saturating_sub(entry.channels);
            if c.0 == 0 {
                inner.per_user.remove(&entry.info.user);
            }
        }
    }

    /// Counts a channel opening on connection `id`, or refuses it (530) when the user is at
    /// its channel limit (counted over all its connections, as RabbitMQ does).
    pub fn channel_opened(
        &self,
        id: u64,
        user_max_channels: Option<u64>,
    ) -> Result<(), ProtocolError> {
        let mut inner = self.lock();
        let Some(user) = inner.by_id.get(&id).map(|e| e.info.user.clone()) else {
            return Ok(());
        };
        let counts = inner.per_user.entry(user.clone()).or_insert((0, 0));
        if let Some(max) = user_max_channels {
            if counts.1 >= max {
                return Err(ProtocolError::not_allowed(format!(
                    "number of channels opened for user '{user}' has reached the maximum allowed user limit of ({max})"
                )));
            }
        }
        counts.1 += 1;
        inner.churn.channels_opened += 1;
        if let Some(e) = inner.by_id.get_mut(&id) {
            e.channels += 1;
        }
        Ok(())
    }

    /// A channel of connection `id` closed.
    pub fn channel_closed(&self, id: u64) {
        let mut inner = self.lock();
        let Some(entry) = inner.by_id.get_mut(&id) else {
            return;
        };
        if entry.channels == 0 {
            return;
        }
        entry.channels -= 1;
        let user = entry.info.user.clone();
        inner.churn.channels_closed += 1;
        if let Some(c) = inner.per_user.get_mut(&user) {
            c.1 = c.1.saturating_sub(1);
        }
    }

    /// Asks every connection that `matches` to close with `err`; returns how many were asked.
    pub fn close_where(
        &self,
        matches: impl Fn(&ConnectionInfo) -> bool,
        err: &ProtocolError,
    ) -> usize {
        let inner = self.lock();
        let mut n = 0;
        for entry in inner.by_id.values().filter(|e| matches(&e.info)) {
            n += 1;
            let _ = entry.events.send(ClientEvent::Close(err.clone()));
        }
        n
    }

    /// Every open connection.
    pub fn list(&self) -> Vec<Arc<ConnectionInfo>> {
        self.lock().by_id.values().map(|e| e.info.clone()).collect()
    }

    /// Every open connection with its channel count and counters, sorted by id. The lock
    /// is held to copy the entries only; the counters are read after.
    pub fn stats(&self) -> Vec<ConnectionStats> {
        let mut entries: Vec<(Arc<ConnectionInfo>, u64)> = {
            let inner = self.lock();
            inner
                .by_id
                .values()
                .map(|e| (e.info.clone(), e.channels))
                .collect()
        };
        entries.sort_unstable_by_key(|(info, _)| info.id);
        entries
            .into_iter()
            .map(|(info, channels)| ConnectionStats {
                metrics: info.metrics.snapshot(),
                info,
                channels,
            })
            .collect()
    }

    /// One connection's statistics (None: not open).
    pub fn connection_stats(&self, id: u64) -> Option<ConnectionStats> {
        let (info, channels) = {
            let inner = self.lock();
            let e = inner.by_id.get(&id)?;
            (e.info.clone(), e.channels)
        };
        Some(ConnectionStats {
            metrics: info.metrics.snapshot(),
            info,
            channels,
        })
    }

    /// Connection `id`'s open channels, sorted by number, asked of its task (channel state
    /// has one owner; a listing costs one event per connection, never anything per
    /// message). None: no such connection, or it did not answer within
    /// `CHANNEL_LIST_TIMEOUT` (e.g. blocked by an alarm while its socket is full).
    pub async fn channels(&self, id: u64) -> Option<Vec<ChannelStats>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        {
            let inner = self.lock();
            let entry = inner.by_id.get(&id)?;
            entry.events.send(ClientEvent::ListChannels(reply)).ok()?;
        }
        tokio::time::timeout(CHANNEL_LIST_TIMEOUT, answer)
            .await
            .ok()?
            .ok()
    }

    /// Adds message events of the broker's own sessions (HTTP publish, moving messages:
    /// `admin::messages`) to the totals, as a closed connection's are: `/metrics` and the
    /// overview count them like any publisher's. Once per operation or batch, not per message.
    pub fn count_internal(&self, counts: &MessageCounts) {
        self.lock().churn.metrics.messages.add(counts);
    }

    /// (open connections, open channels) over the whole broker.
    pub fn totals(&self) -> (u64, u64) {
        let inner = self.lock();
        let channels = inner.by_id.values().map(|e| e.channels).sum();
        (inner.by_id.len() as u64, channels)
    }

    /// Broker-wide connection and channel figures and every connection's counters summed,
    /// closed connections' included (monotonic). O(open connections) atomic loads under
    /// the registry lock, which `connection.open`, `channel.open` and close take, never a
    /// message; nothing is asked of any connection task.
    pub fn counters(&self) -> RegistryCounters {
        let inner = self.lock();
        let mut c = inner.churn;
        c.connections = inner.by_id.len() as u64;
        for e in inner.by_id.values() {
            c.channels += e.channels;
            c.metrics.add(&e.info.metrics.snapshot());
        }
        c
    }

    /// Open connections in `vhost`.
    pub fn count_in_vhost(&self, vhost: &str) -> u64 {
        self.lock().per_vhost.get(vhost).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: u64, user: &str, vhost: &str) -> ConnectionInfo {
        ConnectionInfo {
            id,
            user: user.into(),
            vhost: vhost.into(),
            peer: SocketAddr::from(([127, 0, 0, 1], 1)),
            client_properties: FieldTable::default(),
            connected_at_ms: 0,
            frame_max: 4096,
            channel_max: 2047,
            heartbeat_secs: 60,
            protocol: PROTOCOL_AMQP_0_9_1,
            tls: false,
            auth_mechanism: "PLAIN".into(),
            metrics: Arc::default(),
        }
    }

    #[test]
    fn limits_count_connections_and_channels() {
        let c = Connections::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let vhost_one = ConnectionLimits {
            vhost_max_connections: Some(1),
            user_max_connections: None,
        };
        c.register(info(1, "a", "v"), tx.clone(), vhost_one)
            .unwrap();
        let e = c
            .register(info(2, "b", "v"), tx.clone(), vhost_one)
            .unwrap_err();
        assert_eq!(e.code.code(), 530);
        c.register(info(3, "a", "w"), tx.clone(), ConnectionLimits::default())
            .unwrap();
        let user_two = ConnectionLimits {
            vhost_max_connections: None,
            user_max_connections: Some(2),
        };
        assert!(c.register(info(4, "a", "x"), tx.clone(), user_two).is_err());
        c.channel_opened(1, Some(2)).unwrap();
        c.channel_opened(3, Some(2)).unwrap();
        assert!(c.channel_opened(3, Some(2)).is_err());
        c.deregister(1);
        c.channel_opened(3, Some(2)).unwrap();
        c.register(info(2, "b", "v"), tx, vhost_one).unwrap();
        let err = ProtocolError::connection_forced("bye");
        assert_eq!(c.close_where(|i| i.vhost == "v", &err), 1);
        assert!(matches!(rx.try_recv(), Ok(ClientEvent::Close(_))));
    }

    #[test]
    fn stats_list_channels_and_counters() {
        let c = Connections::default();
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        for id in [2, 1] {
            c.register(
                info(id, "guest", "/"),
                tx.clone(),
                ConnectionLimits::default(),
            )
            .unwrap();
        }
        c.channel_opened(2, None).unwrap();
        c.channel_opened(2, None).unwrap();
        let stats = c.stats();
        assert_eq!(stats.iter().map(|s| s.info.id).collect::<Vec<_>>(), [1, 2]);
        stats[1].info.metrics.received(100);
        stats[1].info.metrics.received(20);
        stats[1].info.metrics.sent(7);
        let two = c.connection_stats(2).unwrap();
        assert_eq!(two.channels, 2);
        assert_eq!(
            two.metrics,
            ConnectionMetricsSnapshot {
                recv_oct: 120,
                recv_cnt: 2,
                send_oct: 7,
                send_cnt: 1,
                ..Default::default()
            }
        );
        assert_eq!(c.totals(), (2, 2));
        c.deregister(2);
        assert!(c.connection_stats(2).is_none());
        assert_eq!(c.totals(), (1, 0));
    }

    #[test]
    fn counters_keep_closed_connections_and_never_go_down() {
        let c = Connections::default();
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        for id in [1, 2] {
            c.register(
                info(id, "guest", "/"),
                tx.clone(),
                ConnectionLimits::default(),
            )
            .unwrap();
        }
        c.channel_opened(1, None).unwrap();
        c.channel_opened(2, None).unwrap();
        c.channel_opened(2, None).unwrap();
        c.channel_closed(2);
        let stats = c.stats();
        stats[0].info.metrics.count(MessageEvent::Published, 3);
        stats[1].info.metrics.count(MessageEvent::Published, 2);
        stats[1].info.metrics.count(MessageEvent::Acked, 5);
        stats[1].info.metrics.received(10);
        let before = c.counters();
        assert_eq!((before.connections, before.channels), (2, 2));
        assert_eq!(before.metrics.messages.published, 5);
        c.deregister(2);
        let after = c.counters();
        assert_eq!((after.connections, after.channels), (1, 1));
        assert_eq!((after.connections_opened, after.connections_closed), (2, 1));
        assert_eq!((after.channels_opened, after.channels_closed), (3, 2));
        assert_eq!(
            after.metrics, before.metrics,
            "a closed connection's counts stay"
        );
        assert_eq!(after.metrics.messages.acked, 5);
        assert_eq!(after.metrics.recv_oct, 10);
    }
}
