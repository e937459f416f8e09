//! Warren's AMQP 0-9-1 codec. Pure data transformation, no I/O: splitting a byte stream into
//! frames, decoding and encoding methods (through `amq-protocol`, generated from the spec),
//! and assembling publish content (method → header → body*) with the spec's sequencing rules.
//!
//! It owns no broker state and knows nothing of queues or sockets.

pub mod content;
pub mod encode;
pub mod error;
pub mod frame;
#[doc(hidden)]
pub mod fuzz_support;
pub mod method;
pub mod table;

pub use amq_protocol::protocol::{
    access, basic, channel, confirm, connection, exchange, queue, tx, AMQPClass,
};
pub use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
pub use error::{ProtocolError, ReplyCode};
pub use frame::{Frame, FrameKind};

/// The protocol header a 0-9-1 client must send first, and that we answer a wrong one with.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
