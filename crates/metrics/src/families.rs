//! The families of `/metrics` (aggregated) and `/metrics/per-object`, with RabbitMQ's
//! names, types and labels, read from what the broker already publishes: the connection
//! registry's counters (`Connections::counters`, `Connections::stats`), each queue's
//! `QueueMetrics` atomics, the queue churn, the alarms. No queue actor or connection task
//! is asked anything.

use warren_core::connections::{ConnectionStats, MessageCounts, RegistryCounters};
use warren_core::queue::metrics::QueueMetricsSnapshot;
use warren_core::vhost::QueueChurn;
use warren_core::{Broker, QueueHandle};

use crate::text::{write_labels, Exposition, Family};
use crate::Node;

pub(crate) const CONNECTIONS: Family = Family::gauge("connections", "Connections currently open");
pub(crate) const CHANNELS: Family = Family::gauge("channels", "Channels currently open");
pub(crate) const CONSUMERS: Family = Family::gauge("consumers", "Consumers currently connected");
pub(crate) const QUEUES: Family = Family::gauge("queues", "Queues available");

pub(crate) const QUEUE_MESSAGES_READY: Family = Family::gauge(
    "queue_messages_ready",
    "Messages ready to be delivered to consumers",
);
pub(crate) const QUEUE_MESSAGES_UNACKED: Family = Family::gauge(
    "queue_messages_unacked",
    "Messages delivered to consumers but not yet acknowledged",
);
pub(crate) const QUEUE_MESSAGES: Family = Family::gauge(
    "queue_messages",
    "Sum of ready and unacknowledged messages - total queue depth",
);
pub(crate) const QUEUE_MESSAGES_BYTES: Family = Family::gauge(
    "queue_messages_bytes",
    "Size in bytes of ready and unacknowledged messages",
);
pub(crate) const QUEUE_MESSAGES_READY_BYTES: Family = Family::gauge(
    "queue_messages_ready_bytes",
    "Size in bytes of ready messages",
);
pub(crate) const QUEUE_MESSAGES_UNACKED_BYTES: Family = Family::gauge(
    "queue_messages_unacked_bytes",
    "Size in bytes of all unacknowledged messages",
);
pub(crate) const QUEUE_CONSUMERS: Family = Family::gauge("queue_consumers", "Consumers on a queue");
pub(crate) const QUEUE_MESSAGES_PUBLISHED: Family = Family::counter(
    "queue_messages_published_total",
    "Total number of messages published to queues",
);

pub(crate) const PUBLISHED: Family = Family::counter(
    "channel_messages_published_total",
    "Total number of messages published into an exchange on a channel",
);
pub(crate) const CONFIRMED: Family = Family::counter(
    "channel_messages_confirmed_total",
    "Total number of messages published into an exchange and confirmed on the channel",
);
pub(crate) const RETURNED: Family = Family::counter(
    "channel_messages_unroutable_returned_total",
    "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable",
);
pub(crate) const DROPPED: Family = Family::counter(
    "channel_messages_unroutable_dropped_total",
    "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
);
pub(crate) const GET_ACK: Family = Family::counter(
    "channel_get_ack_total",
    "Total number of messages fetched with basic.get in manual acknowledgement mode",
);
pub(crate) const GET: Family = Family::counter(
    "channel_get_total",
    "Total number of messages fetched with basic.get in automatic acknowledgement mode",
);
pub(crate) const DELIVERED_ACK: Family = Family::counter(
    "channel_messages_delivered_ack_total",
    "Total number of messages delivered to consumers in manual acknowledgement mode",
);
pub(crate) const DELIVERED: Family = Family::counter(
    "channel_messages_delivered_total",
    "Total number of messages delivered to consumers in automatic acknowledgement mode",
);
pub(crate) const REDELIVERED: Family = Family::counter(
    "channel_messages_redelivered_total",
    "Total number of messages redelivered to consumers",
);
pub(crate) const ACKED: Family = Family::counter(
    "channel_messages_acked_total",
    "Total number of messages acknowledged by consumers",
);
pub(crate) const GET_EMPTY: Family = Family::counter(
    "channel_get_empty_total",
    "Total number of times basic.get operations fetched no message",
);

pub(crate) const CONNECTIONS_OPENED: Family = Family::counter(
    "connections_opened_total",
    "Total number of connections opened",
);
pub(crate) const CONNECTIONS_CLOSED: Family = Family::counter(
    "connections_closed_total",
    "Total number of connections closed or terminated",
);
pub(crate) const CHANNELS_OPENED: Family =
    Family::counter("channels_opened_total", "Total number of channels opened");
pub(crate) const CHANNELS_CLOSED: Family =
    Family::counter("channels_closed_total", "Total number of channels closed");
pub(crate) const QUEUES_DECLARED: Family =
    Family::counter("queues_declared_total", "Total number of queues declared");
pub(crate) const QUEUES_CREATED: Family =
    Family::counter("queues_created_total", "Total number of queues created");
pub(crate) const QUEUES_DELETED: Family =
    Family::counter("queues_deleted_total", "Total number of queues deleted");

pub(crate) const INCOMING_BYTES: Family = Family::counter(
    "connection_incoming_bytes_total",
    "Total number of bytes received on a connection",
);
pub(crate) const OUTGOING_BYTES: Family = Family::counter(
    "connection_outgoing_bytes_total",
    "Total number of bytes sent on a connection",
);
pub(crate) const INCOMING_PACKETS: Family = Family::counter(
    "connection_incoming_packets_total",
    "Total number of packets received on a connection",
);
pub(crate) const OUTGOING_PACKETS: Family = Family::counter(
    "connection_outgoing_packets_total",
    "Total number of packets sent on a connection",
);
pub(crate) const CONNECTION_CHANNELS: Family =
    Family::gauge("connection_channels", "Channels on a connection");

pub(crate) const RESIDENT_MEMORY: Family =
    Family::gauge("process_resident_memory_bytes", "Memory used in bytes");
pub(crate) const OPEN_FDS: Family = Family::gauge("process_open_fds", "Open file descriptors");
pub(crate) const MAX_FDS: Family = Family::gauge("process_max_fds", "Open file descriptors limit");
pub(crate) const OPEN_TCP_SOCKETS: Family =
    Family::gauge("process_open_tcp_sockets", "Open TCP sockets");
pub(crate) const MAX_TCP_SOCKETS: Family = Family::gauge(
    "process_max_tcp_sockets",
    "Open TCP sockets limit (Warren: the open file descriptors limit)",
);
pub(crate) const UPTIME: Family = Family::gauge(
    "erlang_uptime_seconds",
    "Node uptime (Warren: process uptime)",
);
pub(crate) const DISK_AVAILABLE: Family = Family::gauge(
    "disk_space_available_bytes",
    "Disk space available in bytes",
);
pub(crate) const DISK_LIMIT: Family = Family::gauge(
    "disk_space_available_limit_bytes",
    "Free disk space low watermark in bytes",
);
pub(crate) const MEMORY_LIMIT: Family = Family::gauge(
    "resident_memory_limit_bytes",
    "Memory high watermark in bytes",
);
const ALARM_MEMORY: Family = Family::gauge(
    "alarms_memory_used_watermark",
    "is set to 1 when the memory alarm is in effect (memory use above the high watermark)",
);
const ALARM_DISK: Family = Family::gauge(
    "alarms_free_disk_space_watermark",
    "is set to 1 when the disk alarm is in effect (free disk space below the low watermark)",
);
const ALARM_FDS: Family = Family::gauge(
    "alarms_file_descriptor_limit",
    "is set to 1 when the file descriptor limit alarm is in effect (never, in Warren)",
);
const IDENTITY: Family = Family::gauge("identity_info", "RabbitMQ node & cluster identity info");
const BUILD: Family = Family::gauge("build_info", "RabbitMQ & Erlang/OTP version info");

/// The RabbitMQ version Warren reports (the management API's and definitions export's).
pub const RABBITMQ_VERSION: &str = warren_core::admin::definitions::EXPORT_RABBITMQ_VERSION;

/// Whether samples are summed (`/metrics`) or labelled per object (`/metrics/per-object`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Aggregated,
    PerObject,
}

/// One queue's reading: its labels (a range of `Reading::queue_labels`) and metrics.
pub(crate) struct QueueReading {
    pub labels: std::ops::Range<usize>,
    pub metrics: QueueMetricsSnapshot,
}

/// Everything one scrape reads, once, before writing.
pub(crate) struct Reading {
    pub registry: RegistryCounters,
    /// Open connections (read only when samples are per object).
    pub connections: Vec<ConnectionStats>,
    pub queues: Vec<QueueReading>,
    /// Every queue's `vhost="...",queue="..."`, escaped, end to end: written once, read
    /// sequentially by each per-queue family (100,000 queues' handles and names scattered
    /// over the heap cost more to visit eight times than to copy once).
    pub queue_labels: String,
    pub churn: QueueChurn,
}

impl Reading {
    /// Reads the registry, the churn and every queue of the vhosts `vhost_filter` keeps;
    /// the connections and the queues' labels only when samples are labelled (`per_object`).
    pub fn take(broker: &Broker, per_object: bool, vhost_filter: &dyn Fn(&str) -> bool) -> Reading {
        let handles = broker.vhost_handles();
        let mut queues = Vec::new();
        let mut queue_labels = String::new();
        let mut names: Vec<&String> = handles.keys().filter(|n| vhost_filter(n)).collect();
        names.sort_unstable();
        for name in names {
            let list: Vec<QueueHandle> = handles[name].queue_handles();
            queues.reserve(list.len());
            if per_object {
                queue_labels.reserve(list.len() * 40);
            }
            for handle in list {
                let start = queue_labels.len();
                if per_object {
                    write_labels(
                        &mut queue_labels,
                        &[("vhost", name), ("queue", handle.name().as_str())],
                    );
                }
                queues.push(QueueReading {
                    labels: start..queue_labels.len(),
                    metrics: handle.metrics(),
                });
            }
        }
        Reading {
            registry: broker.connections.counters(),
            connections: if per_object {
                broker
                    .connections
                    .stats()
                    .into_iter()
                    .filter(|c| vhost_filter(&c.info.vhost))
                    .collect()
            } else {
                Vec::new()
            },
            queues,
            queue_labels,
            churn: broker.queue_churn(),
        }
    }

    fn queue_totals(&self) -> QueueMetricsSnapshot {
        let mut total = QueueMetricsSnapshot::default();
        for q in &self.queues {
            total.add(&q.metrics);
        }
        total
    }

    /// One family with a sample per queue, labelled `{vhost, queue}`.
    pub fn per_queue(
        &self,
        e: &mut Exposition,
        f: &Family,
        value: fn(&QueueMetricsSnapshot) -> u64,
    ) {
        e.family(f);
        for q in &self.queues {
            e.sample_raw(&self.queue_labels[q.labels.clone()], "", value(&q.metrics));
        }
    }

    /// One family with a sample per connection, labelled `{channel}` as RabbitMQ labels
    /// its connection samples (with a process id; Warren's is `<0.ID.0>`).
    pub fn per_connection(
        &self,
        e: &mut Exposition,
        f: &Family,
        value: fn(&ConnectionStats) -> u64,
    ) {
        e.family(f);
        let mut label = String::new();
        for c in &self.connections {
            label.clear();
            connection_label(&mut label, c.info.id);
            e.sample(&[("channel", &label)], value(c));
        }
    }
}

/// RabbitMQ labels connection and channel samples with an Erlang pid; Warren writes
/// `<0.CONNECTION_ID.0>` (channel `N` of it: `<0.CONNECTION_ID.N>`).
pub(crate) fn connection_label(out: &mut String, id: u64) {
    use std::fmt::Write;
    let _ = write!(out, "<0.{id}.0>");
}

/// The message counters, each read from the sum or per connection.
/// A family and how to read its value from `T`.
pub(crate) type Read<T> = (Family, fn(&T) -> u64);

pub(crate) const MESSAGE_FAMILIES: [Read<MessageCounts>; 11] = [
    (PUBLISHED, |m| m.published),
    (CONFIRMED, |m| m.confirmed),
    (RETURNED, |m| m.returned_unroutable),
    (DROPPED, |m| m.dropped_unroutable),
    (GET_ACK, |m| m.get_ack),
    (GET, |m| m.get_no_ack),
    (GET_EMPTY, |m| m.get_empty),
    (DELIVERED_ACK, |m| m.delivered_ack),
    (DELIVERED, |m| m.delivered_no_ack),
    (REDELIVERED, |m| m.redelivered),
    (ACKED, |m| m.acked),
];

/// The queue gauges, each read per queue or summed.
pub(crate) const QUEUE_FAMILIES: [Read<QueueMetricsSnapshot>; 7] = [
    (QUEUE_MESSAGES_READY, |m| m.messages_ready),
    (QUEUE_MESSAGES_UNACKED, |m| m.messages_unacknowledged),
    (QUEUE_MESSAGES, |m| m.messages()),
    (QUEUE_MESSAGES_BYTES, |m| m.message_bytes()),
    (QUEUE_MESSAGES_READY_BYTES, |m| m.message_bytes_ready),
    (QUEUE_MESSAGES_UNACKED_BYTES, |m| {
        m.message_bytes_unacknowledged
    }),
    (QUEUE_CONSUMERS, |m| m.consumers),
];

/// `/metrics` or `/metrics/per-object`.
pub fn render(broker: &Broker, node: &Node, mode: Mode) -> String {
    let per_object = mode == Mode::PerObject;
    let reading = Reading::take(broker, per_object, &|_| true);
    // About 100 bytes a queue sample; 8 families of them per queue.
    let capacity = 16 * 1024
        + if per_object {
            reading.queues.len() * 800
        } else {
            0
        };
    let mut e = Exposition::new("rabbitmq_", capacity);
    let totals = reading.queue_totals();
    let r = &reading.registry;
    e.single(&CONNECTIONS, r.connections);
    e.single(&CHANNELS, r.channels);
    e.single(&CONSUMERS, totals.consumers);
    e.single(&QUEUES, reading.queues.len() as u64);
    for (f, value) in &QUEUE_FAMILIES {
        match mode {
            Mode::Aggregated => e.single(f, value(&totals)),
            Mode::PerObject => reading.per_queue(&mut e, f, *value),
        }
    }
    match mode {
        // Deleted queues' counts stay in the sum: a counter must not go down.
        Mode::Aggregated => e.single(
            &QUEUE_MESSAGES_PUBLISHED,
            totals.publish + reading.churn.published_by_deleted_queues,
        ),
        Mode::PerObject => reading.per_queue(&mut e, &QUEUE_MESSAGES_PUBLISHED, |m| m.publish),
    }
    for (f, value) in &MESSAGE_FAMILIES {
        match mode {
            Mode::Aggregated => e.single(f, value(&r.metrics.messages)),
            Mode::PerObject => {
                e.family(f);
                write_connection_samples(&mut e, &reading, |c| value(&c.metrics.messages));
                // Closed connections' counts have no connection left to label.
            }
        }
    }
    churn(&mut e, r, &reading.churn);
    match mode {
        Mode::Aggregated => {
            e.single(&INCOMING_BYTES, r.metrics.recv_oct);
            e.single(&OUTGOING_BYTES, r.metrics.send_oct);
            e.single(&INCOMING_PACKETS, r.metrics.recv_cnt);
            e.single(&OUTGOING_PACKETS, r.metrics.send_cnt);
        }
        Mode::PerObject => {
            reading.per_connection(&mut e, &INCOMING_BYTES, |c| c.metrics.recv_oct);
            reading.per_connection(&mut e, &OUTGOING_BYTES, |c| c.metrics.send_oct);
            reading.per_connection(&mut e, &INCOMING_PACKETS, |c| c.metrics.recv_cnt);
            reading.per_connection(&mut e, &OUTGOING_PACKETS, |c| c.metrics.send_cnt);
            reading.per_connection(&mut e, &CONNECTION_CHANNELS, |c| c.channels);
        }
    }
    node_families(&mut e, node, r.connections);
    e.into_string()
}

fn write_connection_samples(
    e: &mut Exposition,
    reading: &Reading,
    value: impl Fn(&ConnectionStats) -> u64,
) {
    let mut label = String::new();
    for c in &reading.connections {
        label.clear();
        connection_label(&mut label, c.info.id);
        e.sample(&[("channel", &label)], value(c));
    }
}

/// Connection, channel and queue churn counters.
pub(crate) fn churn(e: &mut Exposition, r: &RegistryCounters, q: &QueueChurn) {
    e.single(&CONNECTIONS_OPENED, r.connections_opened);
    e.single(&CONNECTIONS_CLOSED, r.connections_closed);
    e.single(&CHANNELS_OPENED, r.channels_opened);
    e.single(&CHANNELS_CLOSED, r.channels_closed);
    e.single(&QUEUES_DECLARED, q.declared);
    e.single(&QUEUES_CREATED, q.created);
    e.single(&QUEUES_DELETED, q.deleted);
}

/// The process, the alarms and the node's identity.
pub(crate) fn node_families(e: &mut Exposition, node: &Node, connections: u64) {
    let p = crate::process::Process::read();
    e.single(&RESIDENT_MEMORY, p.resident_memory_bytes);
    e.single(&OPEN_FDS, p.open_fds);
    e.single(&MAX_FDS, p.max_fds);
    // The AMQP connections' sockets (listeners and HTTP connections are not counted).
    e.single(&OPEN_TCP_SOCKETS, connections);
    e.single(&MAX_TCP_SOCKETS, p.max_fds);
    e.family(&UPTIME);
    e.sample_f64(&[], node.started.elapsed().as_secs_f64());
    if let Some(alarms) = &node.alarms {
        e.single(&DISK_AVAILABLE, alarms.disk_free_bytes().unwrap_or(0));
        e.single(&DISK_LIMIT, alarms.disk_free_limit_bytes());
        e.single(&MEMORY_LIMIT, alarms.memory_limit_bytes());
        let state = alarms.state();
        e.single(&ALARM_MEMORY, state.memory as u64);
        e.single(&ALARM_DISK, state.disk as u64);
    }
    e.single(&ALARM_FDS, 0);
    e.family(&IDENTITY);
    e.sample(
        &[
            ("rabbitmq_node", &node.name),
            ("rabbitmq_cluster", &node.cluster_name),
            ("rabbitmq_cluster_permanent_id", &node.cluster_id),
        ],
        1,
    );
    e.family(&BUILD);
    e.sample(
        &[
            ("rabbitmq_version", RABBITMQ_VERSION),
            ("prometheus_plugin_version", RABBITMQ_VERSION),
            ("prometheus_client_version", "warren"),
            ("erlang_version", "none"),
            ("product_name", "Warren"),
            ("product_version", env!("CARGO_PKG_VERSION")),
        ],
        1,
    );
}
