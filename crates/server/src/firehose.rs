//! The connection's side of the firehose tracer (`warren_core::firehose`): when the vhost's
//! tracing is on, a publish and a delivery each hand a copy to the tracer with the
//! connection's name, channel and user.
//!
//! Owns: the on/off check (one relaxed atomic load on the vhost already held). Must not
//! touch: the original message or its delivery (the trace is a side copy that never waits).

use warren_core::firehose::{trace_deliver, trace_publish, TraceOrigin};
use warren_core::routing::RoutingTable;
use warren_core::{Message, QueueHandle};

use crate::connection::Connection;

impl Connection {
    /// Whether the vhost traces: the only cost on the publish and deliver paths when off.
    #[inline]
    pub(crate) fn tracing(&self) -> bool {
        self.vhost.as_ref().is_some_and(|v| v.tracing())
    }

    /// The `publish.<exchange>` copy of a message routed to `routed`.
    pub(crate) fn trace_publish(
        &self,
        routing: &RoutingTable,
        ch: u16,
        message: &Message,
        extra_keys: &[String],
        routed: &[QueueHandle],
    ) {
        let Some(vhost) = &self.vhost else { return };
        let connection = warren_core::connections::connection_name(self.peer, self.id);
        let origin = TraceOrigin {
            vhost: vhost.name(),
            connection: &connection,
            channel: ch,
            user: &self.user,
        };
        trace_publish(routing, message, extra_keys, routed, origin);
    }

    /// The `deliver.<queue>` copy of a delivery or get-ok on channel `ch`.
    pub(crate) fn trace_deliver(
        &self,
        ch: u16,
        queue: &QueueHandle,
        message: &Message,
        redelivered: bool,
    ) {
        let Some(vhost) = &self.vhost else { return };
        let connection = warren_core::connections::connection_name(self.peer, self.id);
        let origin = TraceOrigin {
            vhost: vhost.name(),
            connection: &connection,
            channel: ch,
            user: &self.user,
        };
        let routing = vhost.routing();
        trace_deliver(
            &routing,
            message,
            queue.name().as_str(),
            redelivered,
            origin,
        );
    }
}
