//! Warren's broker core: vhosts and their definitions (exchanges, queues, bindings), the
//! routing snapshot that the publish path reads without a lock, queue actors that own their
//! messages and consumers, and users.
//!
//! It knows AMQP's semantics but not its wire format beyond the types it borrows from
//! `warren-protocol`; it never touches sockets (that is `warren-server`).

pub mod access;
pub mod admin;
pub mod args;
pub mod broker;
pub mod confirm;
pub mod connections;
pub mod consumer;
pub mod definitions_json;
pub mod delayed;
pub mod direct_reply;
pub mod durable;
pub mod exchange;
pub mod exchange_counters;
pub mod firehose;
pub mod message;
pub mod overview;
pub mod policy;
pub mod queue;
pub mod recovery;
pub mod routing;
pub mod vhost;

pub use broker::Broker;
pub use consumer::{ChannelKey, ChannelLimiter, ClientEvent, ClientSender, Delivery};
pub use message::Message;
pub use queue::QueueHandle;
pub use vhost::VHost;
pub use warren_store::SyncMode;
