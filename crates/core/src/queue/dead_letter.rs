//! Dead-lettering: the message a queue gives up on (rejected, expired, over its length limit,
//! over its delivery limit) is republished to the queue's dead-letter exchange with an
//! `x-death` header written as RabbitMQ writes it, and the `x-first-death-*` /
//! `x-last-death-*` headers.
//!
//! Cycles: a dead-lettered message is not delivered to a queue that it already died in,
//! unless one of its deaths was a rejection (RabbitMQ's rule: only an automatic cycle is
//! broken; a consumer's reject keeps it moving).

use warren_protocol::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};

use crate::args::as_str;
use crate::message::{Message, MessageRef};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Rejected,
    Expired,
    MaxLen,
    DeliveryLimit,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::MaxLen => "maxlen",
            Reason::DeliveryLimit => "delivery_limit",
        }
    }
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// The routing keys a message was published with: its key plus `CC` (BCC was stripped).
fn original_keys(message: &Message) -> Vec<String> {
    let mut keys = vec![message.routing_key.as_str().to_owned()];
    if let Some(AMQPValue::FieldArray(cc)) = message
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("CC"))
    {
        keys.extend(cc.as_slice().iter().filter_map(as_str));
    }
    keys
}

/// The message to publish to the dead-letter exchange, and the routing keys to use.
pub fn dead_lettered(
    message: &MessageRef,
    queue: &str,
    reason: Reason,
    dlx: &ShortString,
    dl_routing_key: Option<&ShortString>,
    now_secs: u64,
) -> (Message, Vec<String>) {
    let keys = original_keys(message);
    let mut headers = message.properties.headers().clone().unwrap_or_default();
    let mut deaths: Vec<AMQPValue> = match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
        _ => Vec::new(),
    };
    let same = |t: &FieldTable| {
        t.inner().get("queue").and_then(as_str).as_deref() == Some(queue)
            && t.inner().get("reason").and_then(as_str).as_deref() == Some(reason.as_str())
    };
    let existing = deaths
        .iter()
        .position(|d| matches!(d, AMQPValue::FieldTable(t) if same(t)));
    let entry = match existing {
        Some(i) => {
            let AMQPValue::FieldTable(mut t) = deaths.remove(i) else {
                unreachable!("matched a table above")
            };
            let count = t
                .inner()
                .get("count")
                .and_then(crate::args::as_i64)
                .unwrap_or(0);
            t.insert("count".into(), AMQPValue::LongLongInt(count + 1));
            t.insert("time".into(), AMQPValue::Timestamp(now_secs));
            t
        }
        None => {
            let mut t = FieldTable::default();
            t.insert("count".into(), AMQPValue::LongLongInt(1));
            t.insert("reason".into(), long(reason.as_str()));
            t.insert("queue".into(), long(queue));
            t.insert("time".into(), AMQPValue::Timestamp(now_secs));
            t.insert("exchange".into(), long(message.exchange.as_str()));
            let rks: Vec<AMQPValue> = keys.iter().map(|k| long(k)).collect();
            t.insert(
                "routing-keys".into(),
                AMQPValue::FieldArray(FieldArray::from(rks)),
            );
            if let Some(exp) = message.properties.expiration() {
                t.insert("original-expiration".into(), long(exp.as_str()));
            }
            t
        }
    };
    deaths.insert(0, AMQPValue::FieldTable(entry));
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(deaths)),
    );
    if !headers.contains_key("x-first-death-reason") {
        headers.insert("x-first-death-reason".into(), long(reason.as_str()));
        headers.insert("x-first-death-queue".into(), long(queue));
        headers.insert(
            "x-first-death-exchange".into(),
            long(message.exchange.as_str()),
        );
    }
    headers.insert("x-last-death-reason".into(), long(reason.as_str()));
    headers.insert("x-last-death-queue".into(), long(queue));
    headers.insert(
        "x-last-death-exchange".into(),
        long(message.exchange.as_str()),
    );
    // With the queue's own dead-letter routing key, the message no longer carries its CC
    // keys (RabbitMQ deletes the header): they would route it again from the DLX.
    if dl_routing_key.is_some() {
        headers = without_keys(headers, &["CC", "BCC"]);
    }
    // The per-message TTL is consumed by dead-lettering (kept in original-expiration).
    let mut properties = message.properties.clone().with_headers(headers);
    if properties.expiration().is_some() {
        properties = clear_expiration(properties);
    }
    let route_keys = match dl_routing_key {
        Some(k) => vec![k.as_str().to_owned()],
        None => keys,
    };
    // The first key is the message's own or the queue's dead-letter key, both short strings.
    let first_key = route_keys
        .first()
        .and_then(|k| ShortString::try_new(k.as_str()).ok())
        .unwrap_or_else(|| message.routing_key.clone());
    (
        message.with_properties(properties, dlx.clone(), first_key),
        route_keys,
    )
}

/// `headers` without the given keys.
fn without_keys(headers: FieldTable, keys: &[&str]) -> FieldTable {
    if !keys.iter().any(|k| headers.contains_key(k)) {
        return headers;
    }
    let mut out = FieldTable::default();
    for (k, v) in headers.inner() {
        if !keys.contains(&k.as_str()) {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

fn clear_expiration(
    p: warren_protocol::basic::AMQPProperties,
) -> warren_protocol::basic::AMQPProperties {
    // AMQPProperties has no setter that clears a field: rebuild it without expiration.
    let mut out = warren_protocol::basic::AMQPProperties::default();
    macro_rules! copy {
        ($($get:ident => $set:ident),*) => {
            $(if let Some(v) = p.$get().clone() { out = out.$set(v); })*
        };
    }
    copy!(content_type => with_content_type, content_encoding => with_content_encoding,
        headers => with_headers, delivery_mode => with_delivery_mode, priority => with_priority,
        correlation_id => with_correlation_id, reply_to => with_reply_to,
        message_id => with_message_id, timestamp => with_timestamp, kind => with_type,
        user_id => with_user_id, app_id => with_app_id, cluster_id => with_cluster_id);
    out
}

/// Whether delivering a dead-lettered message to `target` would close an automatic cycle.
pub fn is_cycle(message: &Message, target: &str) -> bool {
    let Some(AMQPValue::FieldArray(deaths)) = message
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death"))
    else {
        return false;
    };
    let mut seen_target = false;
    for d in deaths.as_slice() {
        if let AMQPValue::FieldTable(t) = d {
            if t.inner().get("reason").and_then(as_str).as_deref() == Some("rejected") {
                return false;
            }
            if t.inner().get("queue").and_then(as_str).as_deref() == Some(target) {
                seen_target = true;
            }
        }
    }
    seen_target
}
