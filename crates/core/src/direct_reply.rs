//! Direct reply-to (`amq.rabbitmq.reply-to`): RPC replies without a queue per client. A
//! channel consuming from the pseudo-queue gets a unique name; a reply published to that name
//! on the default exchange goes straight to the channel as a delivery (no queue, no ack).
//!
//! The registry is a mutex-protected map consulted only for replies and registrations.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use warren_protocol::ShortString;

use crate::consumer::{ChannelKey, ClientEvent, ClientSender};
use crate::message::MessageRef;

/// The pseudo-queue clients consume from and put in `reply_to`.
pub const REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// Prefix of the per-channel names.
pub const REPLY_TO_PREFIX: &str = "amq.rabbitmq.reply-to.";

struct Entry {
    client: ClientSender,
    channel_key: ChannelKey,
    consumer_tag: ShortString,
}

#[derive(Default)]
pub struct DirectReplies {
    entries: Mutex<HashMap<String, Entry>>,
}

/// Unregisters its name when dropped (the channel closed or cancelled its consumer).
pub struct Registration {
    registry: Weak<DirectReplies>,
    pub name: ShortString,
    pub consumer_tag: ShortString,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(r) = self.registry.upgrade() {
            r.lock().remove(self.name.as_str());
        }
    }
}

impl DirectReplies {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn register(
        self: &Arc<Self>,
        name: ShortString,
        client: ClientSender,
        channel_key: ChannelKey,
        consumer_tag: ShortString,
    ) -> Registration {
        self.lock().insert(
            name.as_str().to_owned(),
            Entry {
                client,
                channel_key,
                consumer_tag: consumer_tag.clone(),
            },
        );
        Registration {
            registry: Arc::downgrade(self),
            name,
            consumer_tag,
        }
    }

    /// Delivers a reply; false if no channel holds that name (the message is unroutable).
    pub fn deliver(&self, name: &str, message: MessageRef) -> bool {
        let entries = self.lock();
        let Some(e) = entries.get(name) else {
            return false;
        };
        e.client
            .send(ClientEvent::DirectReply {
                channel_key: e.channel_key,
                consumer_tag: e.consumer_tag.clone(),
                message,
            })
            .is_ok()
    }

    pub fn exists(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }
}
