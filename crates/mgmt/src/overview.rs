//! `GET /api/whoami` and `GET /api/overview`.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::auth::Caller;
use warren_core::queue::metrics::QueueMetricsSnapshot;

use crate::queues::{details, message_stats};
use crate::rates::{ConnectionRates, QueueRates};
use crate::AppState;
use warren_core::connections::ConnectionMetricsSnapshot;

/// The version Warren's API imitates.
pub const MANAGEMENT_VERSION: &str = "3.13.0";

/// RabbitMQ names nodes `rabbit@host`; Warren is one node.
/// One definition, shared with the firehose tracer's `node` header.
pub fn node_name() -> String {
    warren_core::firehose::node_name().to_owned()
}

pub async fn whoami(caller: Caller) -> Json<Value> {
    Json(json!({"name": caller.name(), "tags": caller.user.tags}))
}

/// Totals over the vhosts the caller may see: object counts, queue totals and
/// `message_stats` from the queues' metrics atomics, rates from the sampler (`rates.rs`).
pub async fn overview(caller: Caller, State(state): State<AppState>) -> Json<Value> {
    let broker = &state.broker;
    let (mut queues, mut exchanges) = (0u64, 0u64);
    let mut totals = QueueMetricsSnapshot::default();
    let mut rates = QueueRates::default();
    for vhost in caller.visible_vhosts() {
        let Some(v) = broker.vhost_overview(vhost.name()) else {
            continue;
        };
        queues += v.queues;
        exchanges += v.exchanges;
        totals.add(&v.queue_totals);
        let routing = vhost.routing_snapshot();
        let view = state.rates.view();
        for q in routing.queues.values() {
            rates.add(&view.queue(q.id()));
        }
    }
    let (connections, channels) = match caller.is_monitor() {
        true => broker.connections.totals(),
        false => {
            let own = crate::connections::visible(&caller, &state);
            let channels = own
                .iter()
                .filter_map(|c| broker.connections.connection_stats(c.id))
                .map(|s| s.channels)
                .sum();
            (own.len() as u64, channels)
        }
    };
    // Publisher-side counters (RabbitMQ's channel stats): the broker's totals for those who
    // see everything, the caller's own connections' otherwise.
    let publishers = match caller.is_monitor() {
        true => (
            broker.connections.counters().metrics,
            state.rates.view().totals(),
        ),
        false => {
            let own = crate::connections::visible(&caller, &state);
            let view = state.rates.view();
            let mut sum = (
                ConnectionMetricsSnapshot::default(),
                ConnectionRates::default(),
            );
            for c in &own {
                sum.0.add(&c.metrics.snapshot());
                sum.1.add(&view.connection(c.id));
            }
            sum
        }
    };
    let exchange_types: Vec<Value> = [
        "direct",
        "fanout",
        "headers",
        "topic",
        "x-consistent-hash",
        "x-message-deduplication",
        "x-delayed-message",
    ]
    .iter()
    .map(|t| json!({"name": t, "description": "", "enabled": true}))
    .collect();
    Json(json!({
        "management_version": MANAGEMENT_VERSION,
        "rabbitmq_version": MANAGEMENT_VERSION,
        "product_name": "Warren",
        "product_version": env!("CARGO_PKG_VERSION"),
        "rates_mode": "basic",
        "cluster_name": node_name(),
        "node": node_name(),
        "statistics_db_event_queue": 0,
        "object_totals": {
            "connections": connections,
            "channels": channels,
            "queues": queues,
            "exchanges": exchanges,
            "consumers": totals.consumers,
        },
        "queue_totals": {
            "messages": totals.messages(),
            "messages_details": details(rates.messages),
            "messages_ready": totals.messages_ready,
            "messages_ready_details": details(rates.messages_ready),
            "messages_unacknowledged": totals.messages_unacknowledged,
            "messages_unacknowledged_details": details(rates.messages_unacknowledged),
        },
        "message_stats": publisher_stats(message_stats(&totals, &rates), &publishers),
        "listeners": state.node.listeners_json(),
        "exchange_types": exchange_types,
    }))
}

/// Adds the publisher-side counters to a `message_stats` object: `publish` becomes what
/// publishers sent (RabbitMQ's channel count, unroutable ones included), with `confirm`,
/// `return_unroutable` and `drop_unroutable`.
fn publisher_stats(
    mut stats: Value,
    (m, r): &(ConnectionMetricsSnapshot, ConnectionRates),
) -> Value {
    let c = &m.messages;
    for (key, count, rate) in [
        ("publish", c.published, r.publish),
        ("confirm", c.confirmed, r.confirm),
        (
            "return_unroutable",
            c.returned_unroutable,
            r.return_unroutable,
        ),
        ("drop_unroutable", c.dropped_unroutable, r.drop_unroutable),
    ] {
        stats[key] = Value::from(count);
        stats[format!("{key}_details")] = details(rate);
    }
    stats
}
