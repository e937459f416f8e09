//! The basic class (publish, consume, get, ack/nack/reject, qos, recover), confirm and tx,
//! and the delivery side: turning queue events into basic.deliver frames.
//!
//! The publish path: content assembled (channel.rs) → `check_*` guards → routing snapshot →
//! each destination queue's inbox (a bounded send: the publisher's backpressure) → confirm.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use warren_core::confirm::ConfirmShare;
use warren_core::connections::MessageEvent;
use warren_core::consumer::{ClientEvent, ConsumerSpec, Delivery};
use warren_core::delayed::{self, DelayedHandle};
use warren_core::queue::QueueCommand;
use warren_core::routing::RoutingTable;
use warren_core::{Message, QueueHandle, VHost};
use warren_protocol::content::ContentHeader;
use warren_protocol::{
    access, basic, confirm, encode, tx, AMQPClass, AMQPValue, FieldTable, ProtocolError,
    ShortString,
};

use crate::channel::{Channel, Mode, TxOp, Unacked};

/// The longest a publisher is held by a queue's flow control before it may publish again.
pub const FLOW_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(1);
use crate::access::Resource;
use crate::connection::Connection;
use crate::definitions::generated_name;
use crate::reply_to::check_expiration;
use warren_core::access::permission::Access;
use warren_core::direct_reply::REPLY_TO;
use warren_core::queue::settings::consumer_priority;

impl Connection {
    pub(crate) fn vhost(&self) -> Arc<VHost> {
        // The main loop runs only after connection.open set the vhost.
        self.vhost
            .clone()
            .expect("vhost is set once the connection is open")
    }

    fn channel(&mut self, id: u16) -> Result<&mut Channel, ProtocolError> {
        self.channels
            .get_mut(&id)
            .ok_or_else(|| ProtocolError::channel_error(format!("channel {id} is not open")))
    }

    /// Runs one method on an open channel.
    pub(crate) async fn handle_method(
        &mut self,
        ch: u16,
        class: AMQPClass,
    ) -> Result<(), ProtocolError> {
        match class {
            AMQPClass::Basic(m) => self.handle_basic(ch, m).await,
            AMQPClass::Channel(m) => self.handle_channel_class(ch, m),
            AMQPClass::Exchange(m) => self.handle_exchange(ch, m).await,
            AMQPClass::Queue(m) => self.handle_queue(ch, m).await,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(m)) => {
                let c = self.channel(ch)?;
                match c.mode {
                    Mode::Tx => {
                        return Err(ProtocolError::precondition_failed(
                            "cannot switch from tx to confirm mode",
                        ))
                    }
                    Mode::Plain => c.mode = Mode::Confirm,
                    Mode::Confirm => {}
                }
                if !m.nowait {
                    self.send_method(
                        ch,
                        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                    );
                }
                Ok(())
            }
            AMQPClass::Tx(m) => self.handle_tx(ch, m).await,
            AMQPClass::Access(access::AMQPMethod::Request(_)) => {
                self.send_method(
                    ch,
                    AMQPClass::Access(access::AMQPMethod::RequestOk(access::RequestOk {})),
                );
                Ok(())
            }
            AMQPClass::Connection(_) => Err(ProtocolError::command_invalid(
                "connection methods are only allowed on channel 0",
            )),
            _ => Err(ProtocolError::command_invalid(
                "unexpected method from client",
            )),
        }
    }

    async fn handle_basic(
        &mut self,
        ch: u16,
        method: basic::AMQPMethod,
    ) -> Result<(), ProtocolError> {
        match method {
            basic::AMQPMethod::Publish(m) => {
                if m.immediate {
                    return Err(ProtocolError::not_implemented("immediate=true"));
                }
                self.channel(ch)?.assembler.start(m);
                Ok(())
            }
            basic::AMQPMethod::Consume(m) => self.consume(ch, m).await,
            basic::AMQPMethod::Cancel(m) => {
                let reply_consumer = self.cancel_reply_to(ch, &m.consumer_tag);
                let c = self.channel(ch)?;
                if let Some(queue) = c
                    .consumers
                    .remove(&m.consumer_tag)
                    .filter(|_| !reply_consumer)
                {
                    queue
                        .send(QueueCommand::Cancel {
                            channel_key: c.key,
                            tag: m.consumer_tag.clone(),
                        })
                        .await
                        .ok();
                }
                if !m.nowait {
                    self.send_method(
                        ch,
                        AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                            consumer_tag: m.consumer_tag,
                        })),
                    );
                }
                Ok(())
            }
            basic::AMQPMethod::Get(m) => self.get(ch, m).await,
            basic::AMQPMethod::Ack(m) => {
                self.settle_or_buffer(ch, m.delivery_tag, m.multiple, None)
                    .await
            }
            basic::AMQPMethod::Nack(m) => {
                self.settle_or_buffer(ch, m.delivery_tag, m.multiple, Some(m.requeue))
                    .await
            }
            basic::AMQPMethod::Reject(m) => {
                self.settle_or_buffer(ch, m.delivery_tag, false, Some(m.requeue))
                    .await
            }
            basic::AMQPMethod::Qos(m) => {
                let c = self.channel(ch)?;
                if m.global {
                    c.limiter.set_limit(m.prefetch_count as u32);
                } else {
                    c.consumer_prefetch = m.prefetch_count as u32;
                }
                self.send_method(
                    ch,
                    AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
                );
                self.resume_consumers(ch);
                Ok(())
            }
            basic::AMQPMethod::Recover(m) => {
                self.recover(ch, m.requeue)?;
                self.send_method(
                    ch,
                    AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
                );
                Ok(())
            }
            basic::AMQPMethod::RecoverAsync(m) => self.recover(ch, m.requeue),
            _ => Err(ProtocolError::command_invalid(
                "unexpected basic method from client",
            )),
        }
    }

    async fn consume(&mut self, ch: u16, m: basic::Consume) -> Result<(), ProtocolError> {
        if m.queue.as_str() == REPLY_TO {
            return self.consume_reply_to(ch, m);
        }
        let queue = self.lookup_queue(ch, &m.queue)?;
        self.check_access(Access::Read, Resource::Queue, queue.name().as_str())?;
        let priority = consumer_priority(
            &m.arguments,
            &format!(
                "queue '{}' in vhost '{}'",
                queue.name().as_str(),
                self.vhost().name()
            ),
        )?;
        let events = self.events_tx.clone();
        let output = self.output_gauge.clone();
        let consumer_max = self.ctx.config.consumer_max_per_channel;
        let c = self.channel(ch)?;
        let tag = if m.consumer_tag.as_str().is_empty() {
            generated_name("amq.ctag-")
        } else {
            m.consumer_tag
        };
        if let Some(max) = consumer_max {
            if c.consumers.len() >= max && !c.consumers.contains_key(&tag) {
                return Err(ProtocolError::not_allowed(format!(
                    "reached maximum ({max}) of consumers per channel"
                )));
            }
        }
        if c.consumers.contains_key(&tag) {
            return Err(ProtocolError::not_allowed(format!(
                "attempt to reuse consumer tag '{}'",
                tag.as_str()
            )));
        }
        let spec = ConsumerSpec {
            tag: tag.clone(),
            channel_key: c.key,
            no_ack: m.no_ack,
            exclusive: m.exclusive,
            priority,
            prefetch: c.consumer_prefetch,
            channel_limiter: c.limiter.clone(),
            output,
            client: events,
        };
        c.touch(&queue);
        queue
            .ask(|reply| QueueCommand::Consume(spec, reply))
            .await??;
        let c = self.channel(ch)?;
        c.consumers.insert(tag.clone(), queue);
        self.consume_ok(ch, tag, m.nowait);
        Ok(())
    }

    /// basic.consume-ok, unless the client asked for no reply.
    pub(crate) fn consume_ok(&mut self, ch: u16, consumer_tag: ShortString, nowait: bool) {
        if !nowait {
            self.send_method(
                ch,
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag,
                })),
            );
        }
    }

    async fn get(&mut self, ch: u16, m: basic::Get) -> Result<(), ProtocolError> {
        let queue = self.lookup_queue(ch, &m.queue)?;
        self.check_access(Access::Read, Resource::Queue, queue.name().as_str())?;
        let c = self.channel(ch)?;
        let channel_key = c.key;
        c.touch(&queue);
        let got = queue
            .ask(|reply| QueueCommand::Get {
                channel_key,
                no_ack: m.no_ack,
                reply,
            })
            .await?;
        match got {
            None => {
                self.count(ch, MessageEvent::GetEmpty, 1);
                self.send_method(
                    ch,
                    AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
                )
            }
            Some((d, remaining)) => {
                if self.tracing() {
                    self.trace_deliver(ch, &d.queue, &d.message, d.redelivered);
                }
                self.count_delivery(ch, d.needs_ack, d.redelivered, MessageEvent::GetAck);
                let frame_max = self.frame_max;
                let c = self.channel(ch)?;
                let tag = c.next_tag;
                c.next_tag += 1;
                if d.needs_ack {
                    c.unacked.insert(
                        tag,
                        Unacked {
                            queue: d.queue.clone(),
                            message_id: d.message_id,
                            counted: false,
                        },
                    );
                }
                let msg = &d.message;
                encode::get_ok(
                    &mut self.out,
                    ch,
                    tag,
                    d.redelivered,
                    msg.exchange.as_str(),
                    msg.routing_key.as_str(),
                    remaining,
                );
                encode::content_header_raw(&mut self.out, ch, &msg.header_raw);
                encode::body(&mut self.out, ch, &msg.body, frame_max);
            }
        }
        Ok(())
    }

    fn recover(&mut self, ch: u16, requeue: bool) -> Result<(), ProtocolError> {
        if !requeue {
            return Err(ProtocolError::not_implemented("requeue=false"));
        }
        let c = self.channel(ch)?;
        let counted = c.unacked.values().filter(|u| u.counted).count() as u32;
        c.unacked.clear();
        for queue in c.touched.values() {
            queue.send_now(QueueCommand::Recover { channel_key: c.key });
        }
        if c.limiter.release(counted) {
            self.resume_consumers(ch);
        }
        Ok(())
    }

    /// Tells the queues of a channel's consumers that its shared limit has room.
    fn resume_consumers(&mut self, ch: u16) {
        if let Some(c) = self.channels.get(&ch) {
            for queue in c.consumers.values() {
                queue.send_now(QueueCommand::Resume);
            }
        }
    }

    /// basic.ack / nack / reject. In a transaction the deliveries leave `unacked` at once (an
    /// unknown or already-acked tag is 406 then, as in RabbitMQ) and are settled at commit.
    async fn settle_or_buffer(
        &mut self,
        ch: u16,
        tag: u64,
        multiple: bool,
        requeue: Option<bool>,
    ) -> Result<(), ProtocolError> {
        let c = self.channel(ch)?;
        let taken = take_unacked(c, tag, multiple)?;
        if c.mode == Mode::Tx {
            c.tx_ops.push(TxOp::Settle { taken, requeue });
            return Ok(());
        }
        self.settle(ch, taken, requeue).await
    }

    /// Settles deliveries taken from the channel's `unacked` on the queues that own them.
    async fn settle(
        &mut self,
        ch: u16,
        taken: BTreeMap<u64, Unacked>,
        requeue: Option<bool>,
    ) -> Result<(), ProtocolError> {
        let c = self.channel(ch)?;
        let key = c.key;
        let counted = taken.values().filter(|u| u.counted).count() as u32;
        let resume = c.limiter.release(counted);
        if requeue.is_none() {
            self.count(ch, MessageEvent::Acked, taken.len() as u64);
        }
        // Group by queue, keeping order; usually there is one queue.
        let mut groups: Vec<(QueueHandle, Vec<u64>)> = Vec::new();
        for u in taken.into_values() {
            match groups.iter_mut().find(|(q, _)| q.same(&u.queue)) {
                Some((_, ids)) => ids.push(u.message_id),
                None => groups.push((u.queue, vec![u.message_id])),
            }
        }
        for (queue, ids) in groups {
            let _ = queue
                .send(QueueCommand::Settle {
                    channel_key: key,
                    ids,
                    requeue,
                })
                .await;
        }
        if resume {
            self.resume_consumers(ch);
        }
        Ok(())
    }

    async fn handle_tx(&mut self, ch: u16, method: tx::AMQPMethod) -> Result<(), ProtocolError> {
        let c = self.channel(ch)?;
        match method {
            tx::AMQPMethod::Select(_) => {
                if c.mode == Mode::Confirm {
                    return Err(ProtocolError::precondition_failed(
                        "cannot switch from confirm to tx mode",
                    ));
                }
                c.mode = Mode::Tx;
                self.send_method(ch, AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})));
            }
            tx::AMQPMethod::Commit(_) => {
                if c.mode != Mode::Tx {
                    return Err(ProtocolError::precondition_failed(
                        "channel is not transactional",
                    ));
                }
                let ops = std::mem::take(&mut c.tx_ops);
                for op in ops {
                    match op {
                        TxOp::Publish(publish) => {
                            let (m, header, body) = *publish;
                            // The exchange was checked at publish time; one deleted since
                            // then simply routes nowhere.
                            let routing = self.vhost().routing_snapshot();
                            let delayed = routing
                                .exchanges
                                .get(m.exchange.as_str())
                                .and_then(|x| x.delayed.clone());
                            if let Some(c) = self.channels.get_mut(&ch) {
                                c.counts[MessageEvent::Published as usize] += 1;
                            }
                            self.route_and_enqueue(&routing, ch, m, header, body, None, delayed)?;
                            self.wait_blocked_sends().await;
                        }
                        TxOp::Settle { taken, requeue } => self.settle(ch, taken, requeue).await?,
                    }
                }
                self.send_method(ch, AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})));
            }
            tx::AMQPMethod::Rollback(_) => {
                if c.mode != Mode::Tx {
                    return Err(ProtocolError::precondition_failed(
                        "channel is not transactional",
                    ));
                }
                // Rolled-back acks leave their deliveries unacked (not redelivered).
                for op in std::mem::take(&mut c.tx_ops) {
                    if let TxOp::Settle { taken, .. } = op {
                        c.unacked.extend(taken);
                    }
                }
                self.send_method(
                    ch,
                    AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
                );
            }
            _ => {
                return Err(ProtocolError::command_invalid(
                    "unexpected tx method from client",
                ))
            }
        }
        Ok(())
    }

    /// A complete basic.publish (method, header, body) arrived.
    /// A complete basic.publish. Synchronous: sends to queue inboxes with `try_send`; a send
    /// that would wait is left in `blocked_sends` for the connection loop to await before it
    /// reads the next frame (so per-queue order holds and backpressure reaches the socket).
    pub(crate) fn publish(
        &mut self,
        ch: u16,
        method: basic::Publish,
        header: ContentHeader,
        body: Bytes,
    ) -> Result<(), ProtocolError> {
        self.publisher = true;
        let vhost = self.vhost();
        let routing = vhost.routing();
        let delayed = self.check_publish(
            ch,
            &routing,
            vhost.name(),
            &method.exchange,
            method.routing_key.as_str(),
        )?;
        if let Some(user_id) = header.properties.user_id() {
            if user_id.as_str() != self.user && !self.may_impersonate() {
                return Err(ProtocolError::precondition_failed(format!(
                    "user_id property set to '{}' but authenticated user was '{}'",
                    user_id.as_str(),
                    self.user
                )));
            }
        }
        if let Some(expiration) = header.properties.expiration() {
            check_expiration(expiration.as_str())?;
        }
        let header = self.rewrite_reply_to(ch, header)?;
        let c = self.channel(ch)?;
        match c.mode {
            Mode::Tx => {
                c.tx_ops
                    .push(TxOp::Publish(Box::new((method, header, body))));
                Ok(())
            }
            Mode::Confirm => {
                c.counts[MessageEvent::Published as usize] += 1;
                let seq = c.confirms.publish();
                let share = ConfirmShare::new(c.key, seq, self.events_tx.clone());
                self.route_and_enqueue(&routing, ch, method, header, body, Some(share), delayed)
            }
            Mode::Plain => {
                c.counts[MessageEvent::Published as usize] += 1;
                self.route_and_enqueue(&routing, ch, method, header, body, None, delayed)
            }
        }
    }

    /// Routes a message and hands it to every destination queue; an unroutable mandatory
    /// message comes back as basic.return 312. A message with an `x-delay` published to a
    /// delayed exchange (`delayed`) goes to the exchange's actor instead, unless it is
    /// mandatory and unroutable now.
    #[allow(clippy::too_many_arguments)]
    fn route_and_enqueue(
        &mut self,
        routing: &RoutingTable,
        ch: u16,
        method: basic::Publish,
        header: ContentHeader,
        body: Bytes,
        mut confirm: Option<ConfirmShare>,
        delayed: Option<DelayedHandle>,
    ) -> Result<(), ProtocolError> {
        // The channel's own count is kept by the callers, which hold the channel already.
        self.metrics.count(MessageEvent::Published, 1);
        let properties_bytes = header.decoded_bytes;
        let (properties, header_raw, extra_keys) = sender_selected(header, body.len() as u64);
        let message = Arc::new(Message {
            exchange: method.exchange,
            routing_key: method.routing_key,
            properties,
            header_raw,
            body,
            properties_bytes,
        });
        if message.exchange.as_str().is_empty() && self.deliver_reply(&message) {
            if self.tracing() {
                self.trace_publish(routing, ch, &message, &extra_keys, &[]);
            }
            return Ok(());
        }
        let mut queues: Vec<QueueHandle> = Vec::new();
        let mut delays: Vec<DelayedHandle> = Vec::new();
        let properties = &*message.properties;
        let exchange = message.exchange.as_str();
        if extra_keys.is_empty() {
            routing.route_content_confirmed(
                exchange,
                &[message.routing_key.as_str()],
                properties,
                &message.body,
                &mut confirm,
                &mut queues,
                &mut delays,
            );
        } else {
            // CC / BCC: the routing key and every key they list.
            let keys: Vec<&str> = std::iter::once(message.routing_key.as_str())
                .chain(extra_keys.iter().map(|s| s.as_str()))
                .collect();
            routing.route_content_confirmed(
                exchange,
                &keys,
                properties,
                &message.body,
                &mut confirm,
                &mut queues,
                &mut delays,
            );
        }
        if self.tracing() {
            self.trace_publish(routing, ch, &message, &extra_keys, &queues);
        }
        if let Some(handle) = delayed {
            let delayed_now = delayed::delay_ms(message.properties.headers().as_ref()).is_some();
            let unroutable = queues.is_empty() && delays.is_empty();
            if delayed_now && !(unroutable && method.mandatory) {
                if let Some(cmd) = DelayedHandle::schedule_command(message, extra_keys, confirm) {
                    if let Err(Some(cmd)) = handle.try_send(cmd) {
                        self.blocked_delayed.push((handle, cmd));
                    }
                }
                return Ok(());
            }
        }
        // Delayed exchanges reached through bindings take it as a queue would.
        let mut scheduled = false;
        for handle in delays.drain(..) {
            let (message, keys) = (message.clone(), extra_keys.clone());
            if let Some(cmd) = DelayedHandle::schedule_command(message, keys, confirm.clone()) {
                if let Err(Some(cmd)) = handle.try_send(cmd) {
                    self.blocked_delayed.push((handle, cmd));
                }
                scheduled = true;
            }
        }
        if queues.is_empty() && !scheduled {
            if !method.mandatory {
                self.count(ch, MessageEvent::DroppedUnroutable, 1);
            } else {
                self.count(ch, MessageEvent::ReturnedUnroutable, 1);
                self.send_method(
                    ch,
                    AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                        reply_code: 312,
                        reply_text: "NO_ROUTE".into(),
                        exchange: message.exchange.clone(),
                        routing_key: message.routing_key.clone(),
                    })),
                );
                encode::content_header_raw(&mut self.out, ch, &message.header_raw);
                encode::body(&mut self.out, ch, &message.body, self.frame_max);
            }
            return Ok(());
        }
        for queue in queues {
            if queue.flow().is_blocked() && !self.flow_waits.iter().any(|q| q.same(&queue)) {
                self.flow_waits.push(queue.clone());
            }
            let cmd = QueueCommand::Publish(message.clone(), confirm.clone());
            match queue.try_send(cmd) {
                Ok(()) => {}
                Err(Some(cmd)) => self.blocked_sends.push((queue, cmd)),
                // A queue deleted since routing simply misses the message.
                Err(None) => {}
            }
        }
        Ok(())
    }

    /// Waits for the queue sends that found a full inbox (backpressure on this connection).
    pub(crate) async fn wait_blocked_sends(&mut self) {
        for (queue, cmd) in std::mem::take(&mut self.blocked_sends) {
            let _ = queue.send(cmd).await;
        }
        for (exchange, cmd) in std::mem::take(&mut self.blocked_delayed) {
            exchange.send(cmd).await;
        }
    }

    /// Flow control: a publishing connection stops reading while a queue it published to
    /// asks publishers to wait. A connection that also consumes is never held (its acks are
    /// what lets queues drain), and no wait lasts longer than `FLOW_WAIT_MAX`.
    pub(crate) async fn wait_flow(&mut self) {
        let waits = std::mem::take(&mut self.flow_waits);
        if self.channels.values().any(|c| !c.consumers.is_empty()) {
            return;
        }
        for queue in waits {
            let _ = tokio::time::timeout(FLOW_WAIT_MAX, queue.flow().wait_open()).await;
        }
    }

    /// Writes the confirms that queues reported since the last flush.
    pub(crate) fn flush_confirms(&mut self) {
        for ch in std::mem::take(&mut self.pending_confirms) {
            if let Some(c) = self.channels.get_mut(&ch) {
                if !c.closing {
                    let confirmed = c.confirms.flush(&mut self.out, ch);
                    c.counts[MessageEvent::Confirmed as usize] += confirmed;
                    self.metrics.count(MessageEvent::Confirmed, confirmed);
                }
            }
        }
    }

    /// An event from a queue.
    pub(crate) fn handle_event(&mut self, event: ClientEvent) {
        match event {
            ClientEvent::Deliver(d) => {
                let charged = d.output_bytes;
                let id = Channel::number_of(d.channel_key);
                match self.channels.get_mut(&id) {
                    Some(c) if c.key == d.channel_key && !c.closing => self.write_delivery(d),
                    // The channel is gone; its queue takes the message back on ChannelClosed.
                    _ => {}
                }
                // Out of the event channel and into `out`.
                self.adjust_output_gauge(charged);
            }
            ClientEvent::Confirmed {
                channel_key,
                seq,
                ack,
            } => {
                let id = Channel::number_of(channel_key);
                if let Some(c) = self.channels.get_mut(&id) {
                    if c.key == channel_key {
                        c.confirms.confirmed(seq, ack);
                        if !self.pending_confirms.contains(&id) {
                            self.pending_confirms.push(id);
                        }
                    }
                }
            }
            ClientEvent::DirectReply {
                channel_key,
                consumer_tag,
                message,
            } => {
                let id = Channel::number_of(channel_key);
                if matches!(self.channels.get(&id), Some(c) if c.key == channel_key && !c.closing) {
                    self.write_reply(id, consumer_tag.as_str(), &message);
                }
            }
            ClientEvent::ConsumerTimeout {
                channel_key,
                timeout_ms,
            } => {
                let id = Channel::number_of(channel_key);
                if matches!(self.channels.get(&id), Some(c) if c.key == channel_key && !c.closing) {
                    self.channel_error(
                        id,
                        ProtocolError::precondition_failed(format!(
                            "delivery acknowledgement on channel {id} timed out. Timeout value used: {timeout_ms} ms. This timeout value can be configured, see consumers doc guide to learn more"
                        )),
                    );
                }
            }
            ClientEvent::ListChannels(reply) => {
                let mut list: Vec<_> = self
                    .channels
                    .iter()
                    .filter(|(_, c)| !c.closing)
                    .map(|(number, c)| c.stats(*number))
                    .collect();
                list.sort_unstable_by_key(|c| c.number);
                let _ = reply.send(list);
            }
            ClientEvent::Close(err) => {
                tracing::warn!(connection = self.id, error = %err.reply_text(), "the broker closes the connection");
                self.forced_close.get_or_insert(err);
            }
            ClientEvent::ConsumerCancelled {
                channel_key,
                consumer_tag,
            } => {
                let id = Channel::number_of(channel_key);
                if let Some(c) = self.channels.get_mut(&id) {
                    if c.key == channel_key
                        && c.consumers.remove(&consumer_tag).is_some()
                        && !c.closing
                        && self.cancel_notify
                    {
                        self.send_method(
                            id,
                            AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                                consumer_tag,
                                nowait: true,
                            })),
                        );
                    }
                }
            }
        }
    }

    /// basic.deliver + header + body for a consumer delivery.
    pub(crate) fn write_delivery(&mut self, d: Delivery) {
        let id = Channel::number_of(d.channel_key);
        if self.tracing() {
            self.trace_deliver(id, &d.queue, &d.message, d.redelivered);
        }
        let Some(c) = self.channels.get_mut(&id) else {
            return;
        };
        // Counted here, on the channel already looked up (one lookup per delivery).
        let event = delivery_event(d.needs_ack, MessageEvent::DeliveredAck);
        c.counts[event as usize] += 1;
        self.metrics.count(event, 1);
        if d.redelivered {
            c.counts[MessageEvent::Redelivered as usize] += 1;
            self.metrics.count(MessageEvent::Redelivered, 1);
        }
        let tag = c.next_tag;
        c.next_tag += 1;
        let msg = d.message;
        if d.needs_ack {
            c.unacked.insert(
                tag,
                Unacked {
                    queue: d.queue,
                    message_id: d.message_id,
                    counted: true,
                },
            );
        }
        let consumer_tag = d.consumer_tag.as_deref().unwrap_or("");
        encode::deliver(
            &mut self.out,
            id,
            consumer_tag,
            tag,
            d.redelivered,
            msg.exchange.as_str(),
            msg.routing_key.as_str(),
        );
        encode::content_header_raw(&mut self.out, id, &msg.header_raw);
        encode::body(&mut self.out, id, &msg.body, self.frame_max);
    }
}

impl Connection {
    /// Counts `n` message events on channel `ch`: in the connection's atomics (`/metrics`,
    /// the overview) and the channel's own counters (`/api/channels`, read by asking this
    /// task).
    #[inline]
    pub(crate) fn count(&mut self, ch: u16, event: MessageEvent, n: u64) {
        self.metrics.count(event, n);
        if let Some(c) = self.channels.get_mut(&ch) {
            c.counts[event as usize] += n;
        }
    }

    /// Counts one consume delivery (`DeliveredAck`) or get-ok (`GetAck`) on channel `ch`.
    #[inline]
    fn count_delivery(
        &mut self,
        ch: u16,
        needs_ack: bool,
        redelivered: bool,
        with_ack: MessageEvent,
    ) {
        let event = delivery_event(needs_ack, with_ack);
        self.metrics.count(event, 1);
        if let Some(c) = self.channels.get_mut(&ch) {
            c.counts[event as usize] += 1;
            if redelivered {
                c.counts[MessageEvent::Redelivered as usize] += 1;
            }
        }
        if redelivered {
            self.metrics.count(MessageEvent::Redelivered, 1);
        }
    }
}

/// What a consume delivery (`DeliveredAck`) or get-ok (`GetAck`) counts as: the no-ack
/// event when no ack is expected.
fn delivery_event(needs_ack: bool, with_ack: MessageEvent) -> MessageEvent {
    match (needs_ack, with_ack) {
        (true, _) => with_ack,
        (false, MessageEvent::GetAck) => MessageEvent::GetNoAck,
        (false, _) => MessageEvent::DeliveredNoAck,
    }
}

/// Takes the deliveries an ack / nack / reject names out of the channel's `unacked`: one tag,
/// or every tag up to it with `multiple` (tag 0 with multiple: all). An unknown tag is 406.
fn take_unacked(
    c: &mut Channel,
    tag: u64,
    multiple: bool,
) -> Result<BTreeMap<u64, Unacked>, ProtocolError> {
    let unknown = || ProtocolError::precondition_failed(format!("unknown delivery tag {tag}"));
    if multiple {
        let upto = if tag == 0 { u64::MAX } else { tag };
        if tag != 0 && !c.unacked.contains_key(&tag) {
            return Err(unknown());
        }
        let rest = c.unacked.split_off(&upto.saturating_add(1));
        Ok(std::mem::replace(&mut c.unacked, rest))
    } else {
        let u = c.unacked.remove(&tag).ok_or_else(unknown)?;
        Ok(BTreeMap::from([(tag, u)]))
    }
}

/// Sender-selected distribution: `CC` and `BCC` headers (arrays of strings) add routing keys;
/// `BCC` is removed from the message before delivery (RabbitMQ's behaviour).
fn sender_selected(
    header: ContentHeader,
    body_size: u64,
) -> (
    Box<warren_protocol::basic::AMQPProperties>,
    Bytes,
    Vec<String>,
) {
    let ContentHeader {
        properties, raw, ..
    } = header;
    let Some(headers) = properties.headers() else {
        return (properties, raw, Vec::new());
    };
    // Plain strings, not short strings: RabbitMQ takes keys of any length here (a topic `#`
    // binding matches them), and a long one must not become a `ShortString` (which panics).
    let keys_of = |v: Option<&AMQPValue>| -> Vec<String> {
        match v {
            Some(AMQPValue::FieldArray(items)) => items
                .as_slice()
                .iter()
                .filter_map(warren_core::args::as_str)
                .collect(),
            _ => Vec::new(),
        }
    };
    let cc = headers.inner().get("CC");
    let bcc = headers.inner().get("BCC");
    if cc.is_none() && bcc.is_none() {
        return (properties, raw, Vec::new());
    }
    let mut keys = keys_of(cc);
    keys.extend(keys_of(bcc));
    if bcc.is_none() {
        return (properties, raw, keys);
    }
    let mut stripped: FieldTable = FieldTable::default();
    for (k, v) in headers.inner() {
        if k.as_str() != "BCC" {
            stripped.insert(k.clone(), v.clone());
        }
    }
    let properties = Box::new((*properties).with_headers(stripped));
    let raw = encode::header_payload(&properties, body_size);
    (properties, raw, keys)
}
