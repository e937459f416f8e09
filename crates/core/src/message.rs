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
    pub properties: AMQPProperties,
    /// The content header payload (class, weight, size, properties) to send to consumers.
    pub header_raw: Bytes,
    pub body: Bytes,
}

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
}
