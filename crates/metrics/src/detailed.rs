//! `GET /metrics/detailed?family=...&vhost=...`: RabbitMQ's opt-in families, named
//! `rabbitmq_detailed_*` (the vhost and exchange enumerations `rabbitmq_cluster_*`, as
//! RabbitMQ names them), only those asked for, filtered to the vhosts given (all when none).
//! Unknown family names are ignored, as RabbitMQ does.

use warren_core::connections::ChannelStats;
use warren_core::Broker;

use crate::families::{self as f, Reading};
use crate::text::{Exposition, Family};
use crate::Node;

/// Every family group this endpoint knows.
pub const GROUPS: [&str; 13] = [
    "connection_churn_metrics",
    "node_coarse_metrics",
    "node_metrics",
    "queue_coarse_metrics",
    "queue_consumer_count",
    "queue_metrics",
    "queue_info",
    "connection_coarse_metrics",
    "connection_metrics",
    "channel_metrics",
    "channel_exchange_metrics",
    "channel_queue_metrics",
    "channel_queue_exchange_metrics",
];

/// The enumerations RabbitMQ prefixes `rabbitmq_cluster_`.
const CLUSTER_GROUPS: [&str; 2] = ["vhost_status", "exchange_names"];

const CHANNEL_CONSUMERS: Family = Family::gauge("channel_consumers", "Consumers on a channel");
const CHANNEL_UNACKED: Family = Family::gauge(
    "channel_messages_unacked",
    "Delivered but not yet acknowledged messages",
);
const CONSUMER_PREFETCH: Family = Family::gauge(
    "consumer_prefetch",
    "Limit of unacknowledged messages for each consumer",
);
const CHANNEL_PREFETCH: Family = Family::gauge(
    "channel_prefetch",
    "Total limit of unacknowledged messages for all consumers on a channel",
);
const QUEUE_INFO: Family = Family::gauge("queue_info", "A queue's type and membership (always 1)");
const VHOST_STATUS: Family = Family::gauge("vhost_status", "Whether a given vhost is running");
const EXCHANGE_NAME: Family = Family::gauge(
    "exchange_name",
    "Enumerates exchanges without any additional info",
);

/// What the query asked for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub families: Vec<String>,
    pub vhosts: Vec<String>,
}

impl Request {
    /// `family=a&family=b&vhost=%2F` (form-urlencoded; keys repeat).
    pub fn parse(query: &str) -> Request {
        let mut r = Request::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "family" => r.families.push(value.into_owned()),
                "vhost" => r.vhosts.push(value.into_owned()),
                _ => {}
            }
        }
        r
    }

    fn wants(&self, group: &str) -> bool {
        self.families.iter().any(|f| f == group)
    }

    fn vhost_allowed(&self, vhost: &str) -> bool {
        self.vhosts.is_empty() || self.vhosts.iter().any(|v| v == vhost)
    }
}

/// Channel listings, asked of the connection tasks only when `channel_metrics` is wanted.
pub type ChannelListing = Vec<(u64, Vec<ChannelStats>)>;

/// Asks every connection of the allowed vhosts for its channels, all at once (one event
/// each; a connection that does not answer within `CHANNEL_LIST_TIMEOUT` is left out).
pub async fn list_channels(broker: &std::sync::Arc<Broker>, request: &Request) -> ChannelListing {
    if !request.wants("channel_metrics") {
        return Vec::new();
    }
    let mut tasks = tokio::task::JoinSet::new();
    for info in broker.connections.list() {
        if !request.vhost_allowed(&info.vhost) {
            continue;
        }
        let broker = broker.clone();
        tasks.spawn(async move { (info.id, broker.connections.channels(info.id).await) });
    }
    let mut listing = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok((id, Some(channels))) = done {
            listing.push((id, channels));
        }
    }
    listing.sort_unstable_by_key(|(id, _)| *id);
    listing
}

/// The families `request` asks for.
pub fn render(
    broker: &Broker,
    node: &Node,
    request: &Request,
    channels: &ChannelListing,
) -> String {
    let wants_queues = [
        "queue_coarse_metrics",
        "queue_consumer_count",
        "queue_metrics",
        "queue_info",
        "channel_queue_exchange_metrics",
    ]
    .iter()
    .any(|g| request.wants(g));
    let wants_connections = [
        "connection_coarse_metrics",
        "connection_metrics",
        "channel_exchange_metrics",
        "channel_queue_metrics",
    ]
    .iter()
    .any(|g| request.wants(g));
    let allowed = |v: &str| request.vhost_allowed(v);
    let reading = if wants_queues || wants_connections || request.wants("connection_churn_metrics")
    {
        // Every group but the churn counters labels its samples.
        Some(Reading::take(
            broker,
            wants_queues || wants_connections,
            &allowed,
        ))
    } else {
        None
    };
    let queue_count = reading.as_ref().map_or(0, |r| r.queues.len());
    let mut e = Exposition::new("rabbitmq_detailed_", 16 * 1024 + queue_count * 500);
    if let Some(r) = &reading {
        if request.wants("connection_churn_metrics") {
            f::churn(&mut e, &r.registry, &r.churn);
        }
        if request.wants("queue_coarse_metrics") {
            r.per_queue(&mut e, &f::QUEUE_MESSAGES_READY, |m| m.messages_ready);
            r.per_queue(&mut e, &f::QUEUE_MESSAGES_UNACKED, |m| {
                m.messages_unacknowledged
            });
            r.per_queue(&mut e, &f::QUEUE_MESSAGES, |m| m.messages());
        }
        if request.wants("queue_metrics") {
            r.per_queue(&mut e, &f::QUEUE_CONSUMERS, |m| m.consumers);
            r.per_queue(&mut e, &f::QUEUE_MESSAGES_BYTES, |m| m.message_bytes());
            r.per_queue(&mut e, &f::QUEUE_MESSAGES_READY_BYTES, |m| {
                m.message_bytes_ready
            });
            r.per_queue(&mut e, &f::QUEUE_MESSAGES_UNACKED_BYTES, |m| {
                m.message_bytes_unacknowledged
            });
        } else if request.wants("queue_consumer_count") {
            r.per_queue(&mut e, &f::QUEUE_CONSUMERS, |m| m.consumers);
        }
        if request.wants("queue_info") {
            e.family(&QUEUE_INFO);
            for q in &r.queues {
                e.sample_raw(
                    &r.queue_labels[q.labels.clone()],
                    ",queue_type=\"rabbit_classic_queue\",membership=\"leader\"",
                    1,
                );
            }
        }
        if request.wants("channel_queue_exchange_metrics") {
            r.per_queue(&mut e, &f::QUEUE_MESSAGES_PUBLISHED, |m| m.publish);
        }
        if request.wants("connection_coarse_metrics") {
            r.per_connection(&mut e, &f::INCOMING_BYTES, |c| c.metrics.recv_oct);
            r.per_connection(&mut e, &f::OUTGOING_BYTES, |c| c.metrics.send_oct);
        }
        if request.wants("connection_metrics") {
            r.per_connection(&mut e, &f::INCOMING_PACKETS, |c| c.metrics.recv_cnt);
            r.per_connection(&mut e, &f::OUTGOING_PACKETS, |c| c.metrics.send_cnt);
            r.per_connection(&mut e, &f::CONNECTION_CHANNELS, |c| c.channels);
        }
        // Counted per connection, not per channel: labelled with the connection.
        let exchange_side = [
            "channel_messages_published_total",
            "channel_messages_confirmed_total",
            "channel_messages_unroutable_returned_total",
            "channel_messages_unroutable_dropped_total",
        ];
        for (family, value) in &f::MESSAGE_FAMILIES {
            let group = if exchange_side.contains(&family.name) {
                "channel_exchange_metrics"
            } else {
                "channel_queue_metrics"
            };
            if request.wants(group) {
                e.family(family);
                let mut label = String::new();
                for c in &r.connections {
                    label.clear();
                    f::connection_label(&mut label, c.info.id);
                    e.sample(&[("channel", &label)], value(&c.metrics.messages));
                }
            }
        }
    }
    if request.wants("channel_metrics") {
        channel_metrics(&mut e, channels);
    }
    if request.wants("node_coarse_metrics") || request.wants("node_metrics") {
        f::node_families(&mut e, node, broker.connections.counters().connections);
    }
    let mut text = e.into_string();
    if CLUSTER_GROUPS.iter().any(|g| request.wants(g)) {
        text.push_str(&cluster_families(broker, request));
    }
    text
}

fn channel_metrics(e: &mut Exposition, channels: &ChannelListing) {
    let families: [f::Read<ChannelStats>; 4] = [
        (CHANNEL_CONSUMERS, |c| c.consumer_count),
        (CHANNEL_UNACKED, |c| c.messages_unacknowledged),
        (CONSUMER_PREFETCH, |c| c.prefetch_count as u64),
        (CHANNEL_PREFETCH, |c| c.global_prefetch_count as u64),
    ];
    let mut label = String::new();
    for (family, value) in families {
        e.family(&family);
        for (id, list) in channels {
            for c in list {
                label.clear();
                use std::fmt::Write;
                let _ = write!(label, "<0.{id}.{}>", c.number);
                e.sample(&[("channel", &label)], value(c));
            }
        }
    }
}

/// `vhost_status` and `exchange_names`, named `rabbitmq_cluster_*`.
fn cluster_families(broker: &Broker, request: &Request) -> String {
    let mut e = Exposition::new("rabbitmq_cluster_", 4096);
    let handles = broker.vhost_handles();
    let mut names: Vec<&String> = handles
        .keys()
        .filter(|n| request.vhost_allowed(n))
        .collect();
    names.sort_unstable();
    if request.wants("vhost_status") {
        e.family(&VHOST_STATUS);
        for name in &names {
            e.sample(&[("vhost", name)], 1);
        }
    }
    if request.wants("exchange_names") {
        e.family(&EXCHANGE_NAME);
        for name in &names {
            for x in handles[*name].exchange_infos() {
                e.sample(
                    &[
                        ("vhost", name),
                        ("exchange", x.name.as_str()),
                        ("type", x.kind.as_str()),
                    ],
                    1,
                );
            }
        }
    }
    e.into_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_keys_repeat_and_are_decoded() {
        let r = Request::parse(
            "family=queue_coarse_metrics&family=queue_info&vhost=%2F&vhost=a+b&x=1&vhost=%zz",
        );
        assert_eq!(r.families, ["queue_coarse_metrics", "queue_info"]);
        assert_eq!(r.vhosts, ["/", "a b", "%zz"]);
    }
}
