//! Channels: their state, the frame dispatch for channel numbers above 0, the channel class
//! (open, close, flow) and soft errors (which close a channel and nothing else).
//!
//! A channel's state lives in its connection task; queues reach it only through events that
//! carry its `ChannelKey`, so deliveries for a closed (or reopened) channel number are
//! recognised and dropped (the queue has already taken them back).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use tracing::warn;
use warren_core::connections::MessageEvent;
use warren_core::consumer::{ChannelKey, ChannelLimiter};
use warren_core::direct_reply::Registration;
use warren_core::queue::QueueCommand;
use warren_core::QueueHandle;
use warren_protocol::content::{parse_header, Assembled, ContentAssembler, ContentHeader};
use warren_protocol::frame::{Frame, FrameKind};
use warren_protocol::method::{decode_method, decode_publish, method_ids};
use warren_protocol::{basic, channel, AMQPClass, ProtocolError, ShortString};

use crate::confirms::ConfirmTracker;
use crate::connection::Connection;

/// A content header's fixed part: class id, weight and body size.
pub const CONTENT_HEADER_FIXED_BYTES: usize = 12;

/// A delivery awaiting the client's ack.
pub(crate) struct Unacked {
    pub queue: QueueHandle,
    pub message_id: u64,
    /// Whether it holds a slot in the channel's shared prefetch limit.
    pub counted: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Plain,
    /// Publisher confirms (see `confirms`).
    Confirm,
    Tx,
}

/// Work buffered by a transaction until tx.commit.
pub(crate) enum TxOp {
    Publish(Box<(basic::Publish, ContentHeader, Bytes)>),
    /// Deliveries an ack / nack / reject took out of `unacked` (a rollback puts them back).
    Settle {
        taken: BTreeMap<u64, Unacked>,
        requeue: Option<bool>,
    },
}

pub(crate) struct Channel {
    pub key: ChannelKey,
    /// We sent channel.close and wait for close-ok.
    pub closing: bool,
    pub assembler: ContentAssembler<basic::Publish>,
    pub mode: Mode,
    pub tx_ops: Vec<TxOp>,
    pub confirms: ConfirmTracker,
    /// basic.qos global=false: prefetch for consumers created from now on.
    pub consumer_prefetch: u32,
    pub limiter: Arc<ChannelLimiter>,
    /// Consumer tag → its queue.
    pub consumers: HashMap<ShortString, QueueHandle>,
    /// Every queue this channel consumed or got from: told when the channel closes.
    pub touched: HashMap<u64, QueueHandle>,
    pub next_tag: u64,
    pub unacked: BTreeMap<u64, Unacked>,
    /// This channel's direct reply-to consumer, if any (unregisters when dropped).
    pub reply_consumer: Option<Registration>,
    /// The last queue declared on this channel (an empty queue name means it).
    pub last_queue: Option<ShortString>,
    /// The last exchange this channel was allowed to publish to, and the access generation
    /// that allowed it (`access.rs`).
    pub publish_grant: Option<(u64, ShortString)>,
    /// Message events on this channel, indexed by `MessageEvent` (`Connection::count`).
    pub counts: [u64; MessageEvent::COUNT],
}

impl Channel {
    fn new(id: u16) -> Channel {
        Channel {
            key: warren_core::consumer::new_channel_key(id),
            closing: false,
            assembler: ContentAssembler::default(),
            mode: Mode::Plain,
            tx_ops: Vec::new(),
            confirms: ConfirmTracker::default(),
            consumer_prefetch: 0,
            limiter: Arc::new(ChannelLimiter::default()),
            consumers: HashMap::new(),
            touched: HashMap::new(),
            next_tag: 1,
            unacked: BTreeMap::new(),
            last_queue: None,
            reply_consumer: None,
            publish_grant: None,
            counts: [0; MessageEvent::COUNT],
        }
    }

    /// What the management API shows of this channel.
    pub fn stats(&self, number: u16) -> warren_core::connections::ChannelStats {
        warren_core::connections::ChannelStats {
            number,
            key: self.key,
            prefetch_count: self.consumer_prefetch,
            global_prefetch_count: self.limiter.limit(),
            consumer_count: self.consumers.len() as u64,
            messages_unacknowledged: self.unacked.len() as u64,
            confirm: self.mode == Mode::Confirm,
            transactional: self.mode == Mode::Tx,
            messages: warren_core::connections::MessageCounts::from_events(&self.counts),
        }
    }

    /// The channel number a key belongs to.
    pub fn number_of(key: ChannelKey) -> u16 {
        (key & 0xFFFF) as u16
    }

    pub fn touch(&mut self, queue: &QueueHandle) {
        self.touched
            .entry(queue.id())
            .or_insert_with(|| queue.clone());
    }

    /// Gives every unacked delivery back to its queue and drops the consumers.
    pub fn release(&mut self) {
        for queue in self.touched.values() {
            queue.send_now(QueueCommand::ChannelClosed {
                channel_key: self.key,
            });
        }
        self.touched.clear();
        self.consumers.clear();
        self.unacked.clear();
        self.tx_ops.clear();
        self.assembler.reset();
        self.reply_consumer = None;
    }
}

impl Connection {
    /// A frame for channel 1..=channel_max.
    pub(crate) async fn handle_channel_frame(&mut self, frame: Frame) -> Result<(), ProtocolError> {
        let id = frame.channel;
        let Some(ch) = self.channels.get_mut(&id) else {
            return self.frame_on_unopened_channel(frame);
        };
        if ch.closing {
            return self.frame_on_closing_channel(frame);
        }
        match frame.kind {
            FrameKind::Method => {
                if !ch.assembler.is_idle() {
                    let (c, m) = method_ids(&frame.payload).unwrap_or((0, 0));
                    return Err(ch.assembler.unexpected_method().on(c, m));
                }
                if let Some(publish) = decode_publish(&frame.payload) {
                    if publish.immediate {
                        return Err(ProtocolError::not_implemented("immediate=true").on(60, 40));
                    }
                    ch.assembler.start(publish);
                    return Ok(());
                }
                let method = decode_method(&frame.payload)?;
                let ids = (method.class_id, method.method_id);
                if let Err(e) = self.handle_method(id, method.class).await {
                    let e = e.on(ids.0, ids.1);
                    if e.code.is_hard() {
                        return Err(e);
                    }
                    self.channel_error(id, e);
                }
                Ok(())
            }
            FrameKind::Header => {
                // Out of sequence before its properties are parsed: a header with no method
                // before it is 505 whatever its properties, as in RabbitMQ (whose reader only
                // needs the fixed part to see a content header; shorter is 501, from parsing).
                if ch.assembler.is_idle() && frame.payload.len() >= CONTENT_HEADER_FIXED_BYTES {
                    return Err(ProtocolError::unexpected_frame(
                        "expected method frame, got non method frame instead",
                    ));
                }
                let header = parse_header(frame.payload)?;
                let max = self.ctx.config.max_message_bytes;
                let step = ch.assembler.header(header, |size| {
                    if size > max {
                        Err(ProtocolError::precondition_failed(format!(
                            "message size {size} is larger than configured max size {max}"
                        ))
                        .on(60, 40))
                    } else {
                        Ok(())
                    }
                });
                self.content_step(id, step)
            }
            FrameKind::Body => {
                let step = ch.assembler.body(frame.payload);
                self.content_step(id, step)
            }
            FrameKind::Heartbeat => Ok(()),
        }
    }

    fn content_step(
        &mut self,
        id: u16,
        step: Result<Assembled<basic::Publish>, ProtocolError>,
    ) -> Result<(), ProtocolError> {
        match step {
            Ok(Assembled::Pending) => Ok(()),
            Ok(Assembled::Complete(method, header, body)) => {
                if let Err(e) = self.publish(id, method, header, body) {
                    let e = e.on(60, 40);
                    if e.code.is_hard() {
                        return Err(e);
                    }
                    self.channel_error(id, e);
                }
                Ok(())
            }
            Err(e) if e.code.is_hard() => Err(e),
            Err(e) => {
                self.channel_error(id, e);
                Ok(())
            }
        }
    }

    fn frame_on_unopened_channel(&mut self, frame: Frame) -> Result<(), ProtocolError> {
        let id = frame.channel;
        if frame.kind != FrameKind::Method {
            return Err(ProtocolError::channel_error(format!(
                "content frame on channel {id}, which is not open"
            )));
        }
        let method = decode_method(&frame.payload)?;
        match method.class {
            AMQPClass::Channel(channel::AMQPMethod::Open(_)) => {
                // channel_max bounds how many channels are open, not their numbers (as
                // RabbitMQ: channel 65535 is fine when channel_max is 2047). 0 = no limit.
                let open = self.channels.len();
                let max = self.channel_max();
                if max != 0 && open >= usize::from(max) {
                    return Err(ProtocolError::not_allowed(format!(
                        "number of channels opened ({open}) has reached the negotiated channel_max ({max})"
                    )));
                }
                let user_max = self.ctx.broker.user_max_channels(&self.user);
                self.ctx
                    .broker
                    .connections
                    .channel_opened(self.id, user_max)?;
                self.channels.insert(id, Channel::new(id));
                self.send_method(
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
                );
                Ok(())
            }
            // A close-ok for a channel we already forgot, or a close racing ours: harmless.
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => Ok(()),
            _ => Err(ProtocolError::channel_error(format!(
                "expected 'channel.open' on channel {id}"
            ))
            .on(method.class_id, method.method_id)),
        }
    }

    /// After we sent channel.close, everything but close / close-ok is discarded.
    fn frame_on_closing_channel(&mut self, frame: Frame) -> Result<(), ProtocolError> {
        if frame.kind != FrameKind::Method {
            return Ok(());
        }
        match decode_method(&frame.payload).map(|m| m.class) {
            Ok(AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))) => {
                self.remove_channel(frame.channel);
            }
            Ok(AMQPClass::Channel(channel::AMQPMethod::Close(_))) => {
                self.remove_channel(frame.channel);
                self.send_method(
                    frame.channel,
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                );
            }
            _ => {}
        }
        Ok(())
    }

    /// Forgets a channel, and gives its place back to the user's channel count.
    pub(crate) fn remove_channel(&mut self, id: u16) -> Option<Channel> {
        let channel = self.channels.remove(&id)?;
        self.ctx.broker.connections.channel_closed(self.id);
        Some(channel)
    }

    /// A soft error: close the channel with `err`, release its resources.
    pub(crate) fn channel_error(&mut self, id: u16, err: ProtocolError) {
        warn!(
            connection = self.id,
            channel = id,
            code = err.code.code(),
            error = %err.reply_text(),
            class_id = err.class_id,
            method_id = err.method_id,
            "channel error"
        );
        if let Some(ch) = self.channels.get_mut(&id) {
            ch.release();
            ch.closing = true;
        }
        self.send_method(
            id,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: err.code.code(),
                reply_text: err.reply_text().into(),
                class_id: err.class_id,
                method_id: err.method_id,
            })),
        );
    }

    /// The channel class: close and flow (open is handled before a channel exists).
    pub(crate) fn handle_channel_class(
        &mut self,
        id: u16,
        method: channel::AMQPMethod,
    ) -> Result<(), ProtocolError> {
        match method {
            channel::AMQPMethod::Open(_) => {
                Err(ProtocolError::channel_error("second 'channel.open' seen"))
            }
            channel::AMQPMethod::Close(_) => {
                if let Some(mut ch) = self.remove_channel(id) {
                    ch.release();
                }
                self.send_method(
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                );
                Ok(())
            }
            channel::AMQPMethod::CloseOk(_) => Ok(()),
            // As RabbitMQ: a client may not stop the server's deliveries this way (it has
            // basic.qos for that); only active=true is answered.
            channel::AMQPMethod::Flow(flow) => {
                if !flow.active {
                    return Err(ProtocolError::not_implemented("active=false"));
                }
                self.send_method(
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                        active: true,
                    })),
                );
                Ok(())
            }
            channel::AMQPMethod::FlowOk(_) | channel::AMQPMethod::OpenOk(_) => Ok(()),
        }
    }
}
