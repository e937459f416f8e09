//! The server properties sent in connection.start. The capabilities table lists only what
//! Warren implements, since clients switch behaviour on it.

use warren_protocol::{AMQPValue, FieldTable, LongString};

/// Capabilities Warren implements.
pub const CAPABILITIES: &[&str] = &[
    "publisher_confirms",
    "exchange_exchange_bindings",
    "basic.nack",
    "consumer_cancel_notify",
    "authentication_failure_close",
    "per_consumer_qos",
    "connection.blocked",
];

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

pub fn server_properties(cluster_name: &str) -> FieldTable {
    let mut caps = FieldTable::default();
    for cap in CAPABILITIES {
        caps.insert((*cap).into(), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    props.insert("product".into(), long("Warren"));
    props.insert("version".into(), long(env!("CARGO_PKG_VERSION")));
    props.insert("platform".into(), long("Rust"));
    props.insert("cluster_name".into(), long(cluster_name));
    props.insert("copyright".into(), long("Copyright (c) the Warren authors"));
    props.insert(
        "information".into(),
        long("Licensed under the Apache License 2.0. An AMQP 0-9-1 broker."),
    );
    props
}

/// Whether the client's `capabilities` table in start-ok sets `name` to true.
pub fn client_has(client_properties: &FieldTable, name: &str) -> bool {
    match client_properties.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(caps)) => {
            matches!(caps.inner().get(name), Some(AMQPValue::Boolean(true)))
        }
        _ => false,
    }
}
