//! The queue actor: the one owner of a queue's ready messages, its consumers and the
//! deliveries awaiting settlement. It processes its inbox in order and never waits on a
//! client: deliveries go out over unbounded channels, bounded by consumers' prefetch.
//!
//! Ready messages are kept sorted by id, so a requeued message goes back to its original
//! place, ahead of newer ones (RabbitMQ's order).

use std::collections::{HashMap, VecDeque};
use std::sync::Weak;

use tokio::sync::mpsc;
use tracing::debug;
use warren_protocol::{ProtocolError, ShortString};

use super::{QueueCommand, QueueDef, QueueHandle, QueueStats};
use crate::consumer::{ChannelKey, ClientEvent, ConsumerSpec, Delivery};
use crate::message::MessageRef;
use crate::vhost::VHost;

struct Ready {
    id: u64,
    message: MessageRef,
    redelivered: bool,
}

struct Unacked {
    message: MessageRef,
    channel_key: ChannelKey,
    /// None for basic.get deliveries.
    consumer_tag: Option<ShortString>,
}

struct Consumer {
    spec: ConsumerSpec,
    in_flight: u32,
}

impl Consumer {
    fn has_credit(&self) -> bool {
        self.spec.no_ack || self.spec.prefetch == 0 || self.in_flight < self.spec.prefetch
    }
}

pub(super) struct QueueActor {
    def: QueueDef,
    handle: QueueHandle,
    vhost: Weak<VHost>,
    next_id: u64,
    ready: VecDeque<Ready>,
    unacked: HashMap<u64, Unacked>,
    consumers: Vec<Consumer>,
    /// Round-robin position in `consumers`.
    next_consumer: usize,
    /// Set once a consumer has attached; auto-delete applies only after that.
    had_consumer: bool,
}

enum Flow {
    Continue,
    Stop,
}

impl QueueActor {
    pub(super) fn new(def: QueueDef, handle: QueueHandle, vhost: Weak<VHost>) -> Self {
        QueueActor {
            def,
            handle,
            vhost,
            next_id: 1,
            ready: VecDeque::new(),
            unacked: HashMap::new(),
            consumers: Vec::new(),
            next_consumer: 0,
            had_consumer: false,
        }
    }

    pub(super) async fn run(mut self, mut inbox: mpsc::Receiver<QueueCommand>) {
        while let Some(cmd) = inbox.recv().await {
            if let Flow::Stop = self.handle_command(cmd) {
                break;
            }
            // Handle whatever else is already waiting before delivering, so a burst of
            // publishes is delivered in one pass.
            let mut stop = false;
            while let Ok(cmd) = inbox.try_recv() {
                if let Flow::Stop = self.handle_command(cmd) {
                    stop = true;
                    break;
                }
            }
            if stop {
                break;
            }
            self.deliver();
        }
        debug!(queue = %self.def.name.as_str(), "queue actor stopped");
    }

    fn handle_command(&mut self, cmd: QueueCommand) -> Flow {
        match cmd {
            QueueCommand::Publish(message, confirm) => {
                let id = self.next_id;
                self.next_id += 1;
                self.ready.push_back(Ready {
                    id,
                    message,
                    redelivered: false,
                });
                // In memory the message is safe once enqueued: the share drops here.
                drop(confirm);
            }
            QueueCommand::Consume(spec, reply) => {
                let result = self.add_consumer(spec);
                let _ = reply.send(result);
            }
            QueueCommand::Cancel { channel_key, tag } => {
                self.consumers
                    .retain(|c| !(c.spec.channel_key == channel_key && c.spec.tag == tag));
                return self.maybe_auto_delete();
            }
            QueueCommand::Get {
                channel_key,
                no_ack,
                reply,
            } => {
                let got = self.ready.pop_front().map(|r| {
                    let delivery = self.make_delivery(r, channel_key, None, no_ack);
                    (delivery, self.ready.len() as u32)
                });
                let _ = reply.send(got);
            }
            QueueCommand::Settle {
                channel_key,
                ids,
                requeue,
            } => self.settle(channel_key, &ids, requeue),
            QueueCommand::Recover { channel_key } => {
                self.requeue_channel(channel_key);
            }
            QueueCommand::ChannelClosed { channel_key } => {
                self.consumers.retain(|c| c.spec.channel_key != channel_key);
                self.requeue_channel(channel_key);
                return self.maybe_auto_delete();
            }
            QueueCommand::Resume => {}
            QueueCommand::Stats(reply) => {
                let _ = reply.send(QueueStats {
                    messages: self.ready.len() as u32,
                    consumers: self.consumers.len() as u32,
                });
            }
            QueueCommand::Purge(reply) => {
                let n = self.ready.len() as u32;
                self.ready.clear();
                let _ = reply.send(n);
            }
            QueueCommand::Delete {
                if_unused,
                if_empty,
                reply,
            } => {
                let name = self.def.name.as_str();
                if if_unused && !self.consumers.is_empty() {
                    let _ = reply.send(Err(ProtocolError::precondition_failed(format!(
                        "queue '{name}' in vhost '{}' in use",
                        self.vhost_name()
                    ))));
                    return Flow::Continue;
                }
                if if_empty && !self.ready.is_empty() {
                    let _ = reply.send(Err(ProtocolError::precondition_failed(format!(
                        "queue '{name}' in vhost '{}' is not empty",
                        self.vhost_name()
                    ))));
                    return Flow::Continue;
                }
                let _ = reply.send(Ok(self.ready.len() as u32));
                self.cancel_all_consumers();
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    fn vhost_name(&self) -> String {
        self.vhost
            .upgrade()
            .map(|v| v.name().to_owned())
            .unwrap_or_default()
    }

    fn add_consumer(&mut self, spec: ConsumerSpec) -> Result<(), ProtocolError> {
        let in_exclusive_use = || {
            ProtocolError::access_refused(format!(
                "queue '{}' in vhost '{}' in exclusive use",
                self.def.name.as_str(),
                self.vhost_name()
            ))
        };
        if spec.exclusive && !self.consumers.is_empty() {
            return Err(in_exclusive_use());
        }
        if self.consumers.iter().any(|c| c.spec.exclusive) {
            return Err(in_exclusive_use());
        }
        self.had_consumer = true;
        self.consumers.push(Consumer { spec, in_flight: 0 });
        Ok(())
    }

    fn make_delivery(
        &mut self,
        ready: Ready,
        channel_key: ChannelKey,
        consumer_tag: Option<ShortString>,
        no_ack: bool,
    ) -> Delivery {
        if !no_ack {
            self.unacked.insert(
                ready.id,
                Unacked {
                    message: ready.message.clone(),
                    channel_key,
                    consumer_tag: consumer_tag.clone(),
                },
            );
        }
        Delivery {
            channel_key,
            consumer_tag,
            queue: self.handle.clone(),
            message_id: ready.id,
            message: ready.message,
            redelivered: ready.redelivered,
            needs_ack: !no_ack,
        }
    }

    /// Hands ready messages to consumers with credit, round-robin.
    fn deliver(&mut self) {
        while !self.ready.is_empty() && !self.consumers.is_empty() {
            let Some(index) = self.next_with_credit() else {
                return;
            };
            let Some(ready) = self.ready.pop_front() else {
                return;
            };
            let consumer = &self.consumers[index];
            let channel_key = consumer.spec.channel_key;
            let tag = consumer.spec.tag.clone();
            let no_ack = consumer.spec.no_ack;
            let delivery = self.make_delivery(ready, channel_key, Some(tag), no_ack);
            let consumer = &mut self.consumers[index];
            if !no_ack {
                consumer.in_flight += 1;
            }
            if let Err(mpsc::error::SendError(ClientEvent::Deliver(d))) =
                consumer.spec.client.send(ClientEvent::Deliver(delivery))
            {
                // The connection is gone; its ChannelClosed will follow, but stop using the
                // consumer now and put the message back.
                self.consumers.remove(index);
                if d.needs_ack {
                    self.unacked.remove(&d.message_id);
                }
                self.requeue(d.message_id, d.message);
                continue;
            }
            self.next_consumer = index + 1;
        }
    }

    /// The next consumer (round-robin) that may take a message, reserving a slot in its
    /// channel's shared limit.
    fn next_with_credit(&mut self) -> Option<usize> {
        let n = self.consumers.len();
        for i in 0..n {
            let index = (self.next_consumer + i) % n;
            let c = &self.consumers[index];
            if !c.has_credit() {
                continue;
            }
            if c.spec.no_ack || c.spec.channel_limiter.try_reserve() {
                return Some(index);
            }
        }
        None
    }

    fn settle(&mut self, channel_key: ChannelKey, ids: &[u64], requeue: Option<bool>) {
        for &id in ids {
            let Some(entry) = self.unacked.remove(&id) else {
                continue;
            };
            if entry.channel_key != channel_key {
                // Not this channel's to settle; the connection checked tags, so keep it.
                self.unacked.insert(id, entry);
                continue;
            }
            self.release_credit(entry.channel_key, entry.consumer_tag.as_ref());
            if requeue == Some(true) {
                self.requeue(id, entry.message);
            }
        }
    }

    fn release_credit(&mut self, channel_key: ChannelKey, tag: Option<&ShortString>) {
        let Some(tag) = tag else { return };
        if let Some(c) = self
            .consumers
            .iter_mut()
            .find(|c| c.spec.channel_key == channel_key && &c.spec.tag == tag)
        {
            c.in_flight = c.in_flight.saturating_sub(1);
        }
    }

    /// Puts a message back in its place by id, marked redelivered.
    fn requeue(&mut self, id: u64, message: MessageRef) {
        let at = self.ready.partition_point(|r| r.id < id);
        self.ready.insert(
            at,
            Ready {
                id,
                message,
                redelivered: true,
            },
        );
    }

    fn requeue_channel(&mut self, channel_key: ChannelKey) {
        let mut ids: Vec<u64> = self
            .unacked
            .iter()
            .filter(|(_, u)| u.channel_key == channel_key)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(entry) = self.unacked.remove(&id) {
                self.release_credit(channel_key, entry.consumer_tag.as_ref());
                self.requeue(id, entry.message);
            }
        }
    }

    fn cancel_all_consumers(&mut self) {
        for c in self.consumers.drain(..) {
            let _ = c.spec.client.send(ClientEvent::ConsumerCancelled {
                channel_key: c.spec.channel_key,
                consumer_tag: c.spec.tag.clone(),
            });
        }
    }

    /// An auto-delete queue goes when its last consumer does.
    fn maybe_auto_delete(&mut self) -> Flow {
        if !(self.def.auto_delete && self.had_consumer && self.consumers.is_empty()) {
            return Flow::Continue;
        }
        match self.vhost.upgrade() {
            Some(vhost) => {
                vhost.forget_queue(&self.handle);
                Flow::Stop
            }
            None => Flow::Stop,
        }
    }
}
