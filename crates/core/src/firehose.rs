//! The firehose tracer (RabbitMQ's `rabbit_trace`): while a vhost's tracing is on, every
//! message published in it is copied to the topic exchange `amq.rabbitmq.trace` with the
//! routing key `publish.<exchange>`, and every delivery or get-ok with `deliver.<queue>`.
//!
//! Owns: building a trace message (the original body, shared; RabbitMQ's headers) and
//! routing it through the vhost's routing snapshot. A trace copy never waits: a destination
//! queue whose inbox is full misses it. Must not touch: the original message, its confirms,
//! the publisher's flow control, or the on/off switch (an atomic in `VHost`, read by the
//! connection task before it calls in here).

use std::sync::OnceLock;

use bytes::Bytes;
use warren_protocol::basic::AMQPProperties;
use warren_protocol::{AMQPValue, FieldTable, LongString, ShortString};

use crate::message::Message;
use crate::queue::{QueueCommand, QueueHandle};
use crate::routing::RoutingTable;

/// The exchange trace messages are published to; every vhost has it (internal, topic).
pub const TRACE_EXCHANGE: &str = "amq.rabbitmq.trace";

/// A trace message's routing key is at most this long on the wire (an AMQP short string):
/// `deliver.` + a 255-byte queue name is routed whole, then cut to this for basic.deliver.
pub const TRACE_ROUTING_KEY_MAX_BYTES: usize = 255;

/// Who published or consumed: the connection and channel the trace names.
#[derive(Clone, Copy, Debug)]
pub struct TraceOrigin<'a> {
    pub vhost: &'a str,
    /// As `/api/connections` names it.
    pub connection: &'a str,
    pub channel: u16,
    pub user: &'a str,
}

/// Copies a message published to `message.exchange` (routing keys: its key, then CC / BCC)
/// and routed to `routed` (`routed_queues`, RabbitMQ 3.8+).
pub fn trace_publish(
    routing: &RoutingTable,
    message: &Message,
    extra_keys: &[String],
    routed: &[QueueHandle],
    origin: TraceOrigin<'_>,
) {
    let mut headers = message_table(message, extra_keys);
    let routed = routed
        .iter()
        .map(|q| long_string(q.name().as_str()))
        .collect::<Vec<_>>();
    headers.insert("routed_queues".into(), AMQPValue::FieldArray(routed.into()));
    add_origin(&mut headers, origin);
    let key = format!("publish.{}", message.exchange.as_str());
    publish(routing, message.body.clone(), &key, headers);
}

/// Copies a message handed to a consumer or a basic.get from `queue`. A message that was
/// itself a trace is not traced again (no loop when the trace queue is consumed).
pub fn trace_deliver(
    routing: &RoutingTable,
    message: &Message,
    queue: &str,
    redelivered: bool,
    origin: TraceOrigin<'_>,
) {
    if message.exchange.as_str() == TRACE_EXCHANGE {
        return;
    }
    let mut headers = message_table(message, &cc_keys(message));
    headers.insert(
        "redelivered".into(),
        AMQPValue::LongInt(i32::from(redelivered)),
    );
    add_origin(&mut headers, origin);
    let key = format!("deliver.{queue}");
    publish(routing, message.body.clone(), &key, headers);
}

/// The `CC` keys a delivered message was published with (its `BCC` keys were removed at
/// publish and are not known here; RabbitMQ still lists them).
fn cc_keys(message: &Message) -> Vec<String> {
    match message
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("CC"))
    {
        Some(AMQPValue::FieldArray(items)) => items
            .as_slice()
            .iter()
            .filter_map(crate::args::as_str)
            .collect(),
        _ => Vec::new(),
    }
}

/// Routes the trace message through `amq.rabbitmq.trace` and offers it to each queue
/// without waiting.
fn publish(routing: &RoutingTable, body: Bytes, routing_key: &str, headers: FieldTable) {
    let mut queues = Vec::new();
    routing.route(TRACE_EXCHANGE, &[routing_key], Some(&headers), &mut queues);
    if queues.is_empty() {
        return;
    }
    let properties = AMQPProperties::default().with_headers(headers);
    let header_raw = warren_protocol::encode::header_payload(&properties, body.len() as u64);
    let properties_bytes = warren_protocol::table::check_header_tables(&header_raw)
        .map(|shape| shape.decoded_bytes())
        .unwrap_or(header_raw.len());
    let message = std::sync::Arc::new(Message {
        exchange: ShortString::from(TRACE_EXCHANGE),
        routing_key: short_string(routing_key),
        properties: Box::new(properties),
        header_raw,
        body,
        properties_bytes,
    });
    for queue in queues {
        // Full inbox or deleted queue: the copy is dropped, the publisher never waits.
        let _ = queue.try_send(QueueCommand::Publish(message.clone(), None));
    }
}

/// `exchange_name`, `routing_keys`, `properties` and `node`, as RabbitMQ's tracer.
fn message_table(message: &Message, extra_keys: &[String]) -> FieldTable {
    let mut table = FieldTable::default();
    table.insert(
        "exchange_name".into(),
        long_string(message.exchange.as_str()),
    );
    let keys: Vec<AMQPValue> = std::iter::once(message.routing_key.as_str())
        .chain(extra_keys.iter().map(String::as_str))
        .map(long_string)
        .collect();
    table.insert("routing_keys".into(), AMQPValue::FieldArray(keys.into()));
    table.insert(
        "properties".into(),
        AMQPValue::FieldTable(properties_table(&message.properties)),
    );
    table.insert("node".into(), long_string(node_name()));
    table
}

/// The message's properties under RabbitMQ's names; absent properties are left out.
/// Integers are signed ints, the timestamp a signed 64-bit, strings long strings.
fn properties_table(p: &AMQPProperties) -> FieldTable {
    let mut table = FieldTable::default();
    let mut text = |name: &str, value: &Option<ShortString>| {
        if let Some(v) = value {
            table.insert(name.into(), long_string(v.as_str()));
        }
    };
    text("content_type", p.content_type());
    text("content_encoding", p.content_encoding());
    text("correlation_id", p.correlation_id());
    text("reply_to", p.reply_to());
    text("expiration", p.expiration());
    text("message_id", p.message_id());
    text("type", p.kind());
    text("user_id", p.user_id());
    text("app_id", p.app_id());
    text("cluster_id", p.cluster_id());
    if let Some(headers) = p.headers() {
        table.insert("headers".into(), AMQPValue::FieldTable(headers.clone()));
    }
    if let Some(mode) = p.delivery_mode() {
        table.insert("delivery_mode".into(), AMQPValue::LongInt(i32::from(*mode)));
    }
    if let Some(priority) = p.priority() {
        table.insert("priority".into(), AMQPValue::LongInt(i32::from(*priority)));
    }
    if let Some(timestamp) = p.timestamp() {
        // RabbitMQ sends it as `long` (signed 64-bit); a timestamp past i64::MAX saturates.
        let seconds = i64::try_from(*timestamp).unwrap_or(i64::MAX);
        table.insert("timestamp".into(), AMQPValue::LongLongInt(seconds));
    }
    table
}

fn add_origin(table: &mut FieldTable, origin: TraceOrigin<'_>) {
    table.insert("vhost".into(), long_string(origin.vhost));
    table.insert("connection".into(), long_string(origin.connection));
    table.insert(
        "channel".into(),
        AMQPValue::LongInt(i32::from(origin.channel)),
    );
    table.insert("user".into(), long_string(origin.user));
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// `key` cut to `TRACE_ROUTING_KEY_MAX_BYTES` at a character boundary.
fn short_string(key: &str) -> ShortString {
    let mut end = key.len().min(TRACE_ROUTING_KEY_MAX_BYTES);
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::from(&key[..end])
}

/// The node name the management API reports (`warren@<HOSTNAME>`), computed once.
pub fn node_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
        format!("warren@{host}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_routing_keys_are_cut_at_a_character_boundary() {
        let name = "é".repeat(130); // 260 bytes
        let key = short_string(&format!("deliver.{name}"));
        assert!(key.as_str().len() <= TRACE_ROUTING_KEY_MAX_BYTES);
        assert!(key.as_str().starts_with("deliver.é"));
    }

    #[test]
    fn properties_use_rabbitmq_names_and_types() {
        let p = AMQPProperties::default()
            .with_content_type("text/plain".into())
            .with_delivery_mode(2)
            .with_priority(5)
            .with_timestamp(1_700_000_000)
            .with_type("t".into());
        let table = properties_table(&p);
        let get = |k: &str| table.inner().get(k).cloned();
        assert_eq!(get("content_type"), Some(long_string("text/plain")));
        assert_eq!(get("delivery_mode"), Some(AMQPValue::LongInt(2)));
        assert_eq!(get("priority"), Some(AMQPValue::LongInt(5)));
        assert_eq!(
            get("timestamp"),
            Some(AMQPValue::LongLongInt(1_700_000_000))
        );
        assert_eq!(get("type"), Some(long_string("t")));
        assert_eq!(get("reply_to"), None);
    }
}
