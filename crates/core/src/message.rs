//! A published message as it travels through the broker: shared by reference (`Arc`) between
//! every queue it was routed to, with its body and content header kept as the bytes received.

use std::sync::Arc;

use bytes::Bytes;
use warren_protocol::basic::AMQPProperties;
use warren_protocol::ShortString;

/// An immutable message. Queues hold `Arc<Message>`; nothing ever copies the body.
#[derive(Debug)]
pub struct Message {
    pub exchange: ShortString,
    pub routing_key: ShortString,
    /// Boxed so that a message moves cheaply (the properties are large).
    pub properties: Box<AMQPProperties>,
    /// The content header payload (class, weight, size, properties) to send to consumers.
    pub header_raw: Bytes,
    pub body: Bytes,
    /// Estimated memory the decoded properties take beyond `header_raw` (a big `headers`
    /// table costs far more decoded than on the wire); see `footprint`.
    pub properties_bytes: usize,
}

/// What a message costs in memory besides its body, header bytes and decoded tables: the
/// message itself and its boxed properties.
pub const MESSAGE_OVERHEAD_BYTES: usize =
    std::mem::size_of::<Message>() + std::mem::size_of::<AMQPProperties>();

pub type MessageRef = Arc<Message>;

impl Message {
    /// delivery_mode 2.
    pub fn is_persistent(&self) -> bool {
        self.properties.delivery_mode() == &Some(2)
    }

    /// Size counted against limits: the body (as RabbitMQ counts `x-max-length-bytes`).
    pub fn body_size(&self) -> usize {
        self.body.len()
    }

    /// Memory the message holds: body, header, decoded properties and overhead. Paging
    /// thresholds count this, not just the body.
    pub fn footprint(&self) -> usize {
        MESSAGE_OVERHEAD_BYTES
            .saturating_add(self.body.len())
            .saturating_add(self.header_raw.len())
            .saturating_add(self.properties_bytes)
    }
}

impl Message {
    /// A copy with other properties (the header is re-encoded; the body is shared).
    pub fn with_properties(
        &self,
        properties: AMQPProperties,
        exchange: ShortString,
        routing_key: ShortString,
    ) -> Message {
        let header_raw =
            warren_protocol::encode::header_payload(&properties, self.body.len() as u64);
        let properties_bytes = warren_protocol::table::check_header_tables(&header_raw)
            .map(|shape| shape.decoded_bytes())
            .unwrap_or(self.properties_bytes);
        Message {
            exchange,
            routing_key,
            properties: Box::new(properties),
            header_raw,
            body: self.body.clone(),
            properties_bytes,
        }
    }

    /// A copy whose headers carry `key = value` (e.g. x-delivery-count).
    pub fn with_header(&self, key: &str, value: warren_protocol::AMQPValue) -> Message {
        let mut headers = self.properties.headers().clone().unwrap_or_default();
        headers.insert(key.into(), value);
        self.with_properties(
            self.properties.clone().with_headers(headers),
            self.exchange.clone(),
            self.routing_key.clone(),
        )
    }
}

/// Milliseconds since the Unix epoch (deadlines are absolute so they survive restarts).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
