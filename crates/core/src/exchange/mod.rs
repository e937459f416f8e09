//! Exchange types and definitions. Each type turns a routing key (and headers) into the
//! destinations of its bindings; the matchers live in one file per type and are built into
//! the routing snapshot (`crate::routing`), never consulted under a lock.

pub mod consistent_hash;
pub mod deduplication;
pub mod filter;
pub mod headers;
pub mod topic;

use warren_protocol::{FieldTable, ProtocolError, ShortString};

/// The default exchange's name (the empty string).
pub const DEFAULT_EXCHANGE: &str = "";

/// The exchanges every vhost has, as in RabbitMQ.
pub const STANDARD_EXCHANGES: &[(&str, ExchangeKind)] = &[
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
    // Internal (see `VHost::new`): the firehose tracer's (`crate::firehose`).
    ("amq.rabbitmq.trace", ExchangeKind::Topic),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
    /// `x-consistent-hash`: RabbitMQ's plugin, built in (`consistent_hash`).
    ConsistentHash,
    /// `x-message-deduplication`: the deduplication plugin's exchange, built in
    /// (`deduplication`); routes as a fanout.
    Deduplication,
    /// `x-delayed-message`: RabbitMQ's plugin, built in (`crate::delayed`); routes as the
    /// type in its `x-delayed-type` argument (`ExchangeDef::routing_kind`).
    Delayed,
}

impl ExchangeKind {
    /// An unknown type is a connection error 503, as in RabbitMQ.
    pub fn parse(kind: &str) -> Result<Self, ProtocolError> {
        match kind {
            "direct" => Ok(ExchangeKind::Direct),
            "fanout" => Ok(ExchangeKind::Fanout),
            "topic" => Ok(ExchangeKind::Topic),
            "headers" => Ok(ExchangeKind::Headers),
            consistent_hash::EXCHANGE_TYPE => Ok(ExchangeKind::ConsistentHash),
            deduplication::EXCHANGE_TYPE => Ok(ExchangeKind::Deduplication),
            crate::delayed::EXCHANGE_TYPE => Ok(ExchangeKind::Delayed),
            other => Err(ProtocolError::command_invalid(format!(
                "unknown exchange type '{other}'"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
            ExchangeKind::ConsistentHash => consistent_hash::EXCHANGE_TYPE,
            ExchangeKind::Deduplication => deduplication::EXCHANGE_TYPE,
            ExchangeKind::Delayed => crate::delayed::EXCHANGE_TYPE,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ExchangeDef {
    pub name: ShortString,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

impl ExchangeDef {
    /// The type whose routing the exchange uses: its own, or a delayed exchange's
    /// `x-delayed-type`.
    pub fn routing_kind(&self) -> ExchangeKind {
        match self.kind {
            ExchangeKind::Delayed => crate::delayed::base_kind(&self.arguments),
            kind => kind,
        }
    }
}

/// The spec's name rule for exchanges and queues: letters, digits, `-`, `_`, `.`, `:`.
/// RabbitMQ accepts any UTF-8 name up to 255 bytes; we follow RabbitMQ (see docs/compat.md).
pub fn check_name(name: &str, what: &str) -> Result<(), ProtocolError> {
    if name.len() > 255 {
        return Err(ProtocolError::precondition_failed(format!(
            "{what} name '{name}' is longer than 255 bytes"
        )));
    }
    Ok(())
}
