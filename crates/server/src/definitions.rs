//! The exchange and queue classes: declare, delete, bind, unbind, purge. These change the
//! vhost's definitions (which publish a new routing snapshot) and answer with the -ok method.

use rand::Rng;
use warren_core::direct_reply::REPLY_TO;
use warren_core::exchange::{ExchangeDef, ExchangeKind};
use warren_core::queue::{QueueCommand, QueueDef, QueueStats};
use warren_core::routing::Destination;
use warren_core::QueueHandle;
use warren_protocol::{exchange, queue, AMQPClass, ProtocolError, ShortString};

use crate::access::Resource;
use crate::connection::Connection;
use warren_core::access::permission::Access;

/// Length of the random part of server-generated names (RabbitMQ uses 22 base64 characters).
pub const GENERATED_NAME_CHARS: usize = 22;

/// A random name with RabbitMQ's prefixes (`amq.gen-`, `amq.ctag-`).
pub fn generated_name(prefix: &str) -> ShortString {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::thread_rng();
    let mut name = String::with_capacity(prefix.len() + GENERATED_NAME_CHARS);
    name.push_str(prefix);
    for _ in 0..GENERATED_NAME_CHARS {
        name.push(ALPHABET[rng.gen_range(0..ALPHABET.len())] as char);
    }
    ShortString::from(name)
}

/// RabbitMQ removes LF and CR from the names of exchanges and queues in declare, delete,
/// bind and unbind (`strip_cr_lf` in its channel): `"q\n"` names queue `q` there.
pub fn strip_cr_lf(name: ShortString) -> ShortString {
    if name.as_str().contains(['\n', '\r']) {
        ShortString::from(name.as_str().replace(['\n', '\r'], ""))
    } else {
        name
    }
}

impl Connection {
    /// The routing key of a queue.bind / unbind: an empty key with an empty queue name means
    /// the channel's last declared queue's name (the spec's "default binding").
    fn resolve_binding_key(
        &self,
        channel: u16,
        queue: &ShortString,
        routing_key: ShortString,
    ) -> Result<ShortString, ProtocolError> {
        if queue.as_str().is_empty() && routing_key.as_str().is_empty() {
            self.resolve_queue_name(channel, queue)
        } else {
            Ok(routing_key)
        }
    }

    /// The queue a method names, where an empty name means the channel's last declared queue.
    pub(crate) fn resolve_queue_name(
        &self,
        channel: u16,
        name: &ShortString,
    ) -> Result<ShortString, ProtocolError> {
        if !name.as_str().is_empty() {
            return Ok(name.clone());
        }
        self.channels
            .get(&channel)
            .and_then(|c| c.last_queue.clone())
            .ok_or_else(|| ProtocolError::not_found("no previously declared queue"))
    }

    /// The (source, destination, routing key) of a queue.bind / unbind, resolved (an empty
    /// queue name is the channel's last queue) and checked against the user's permissions.
    fn queue_binding(
        &mut self,
        ch: u16,
        queue: &ShortString,
        exchange: ShortString,
        routing_key: ShortString,
    ) -> Result<(ShortString, Destination, ShortString), ProtocolError> {
        let name = strip_cr_lf(self.resolve_queue_name(ch, queue)?);
        let routing_key = self.resolve_binding_key(ch, queue, routing_key)?;
        let source = strip_cr_lf(exchange);
        self.check_binding(
            source.as_str(),
            Resource::Queue,
            name.as_str(),
            routing_key.as_str(),
        )?;
        Ok((source, Destination::Queue(name), routing_key))
    }

    pub(crate) fn lookup_queue(
        &self,
        channel: u16,
        name: &ShortString,
    ) -> Result<QueueHandle, ProtocolError> {
        let name = self.resolve_queue_name(channel, name)?;
        self.vhost().queue(name.as_str(), self.id)
    }

    /// A passive declare of the direct reply-to pseudo-queue, or of a channel's reply name.
    fn declare_reply_to(&mut self, ch: u16, name: ShortString) -> Result<(), ProtocolError> {
        if name.as_str() != REPLY_TO && !self.vhost().direct_replies.exists(name.as_str()) {
            return Err(ProtocolError::not_found(format!(
                "no queue '{}' in vhost '{}'",
                name.as_str(),
                self.vhost().name()
            )));
        }
        self.send_method(
            ch,
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                queue: name,
                message_count: 0,
                consumer_count: 0,
            })),
        );
        Ok(())
    }

    pub(crate) async fn handle_exchange(
        &mut self,
        ch: u16,
        method: exchange::AMQPMethod,
    ) -> Result<(), ProtocolError> {
        let vhost = self.vhost();
        match method {
            exchange::AMQPMethod::Declare(m) => {
                let kind = ExchangeKind::parse(m.kind.as_str());
                // A passive declare does not look at the type.
                let kind = match (kind, m.passive) {
                    (Ok(k), _) => k,
                    (Err(_), true) => ExchangeKind::Direct,
                    (Err(e), false) => return Err(e),
                };
                let name = strip_cr_lf(m.exchange);
                if !m.passive && !name.as_str().is_empty() {
                    self.check_access(Access::Configure, Resource::Exchange, name.as_str())?;
                    if let Some(ae) = m
                        .arguments
                        .inner()
                        .get("alternate-exchange")
                        .and_then(warren_core::args::as_str)
                    {
                        self.check_access(Access::Read, Resource::Exchange, name.as_str())?;
                        self.check_access(Access::Write, Resource::Exchange, &ae)?;
                    }
                }
                vhost.declare_exchange(
                    ExchangeDef {
                        name,
                        kind,
                        durable: m.durable,
                        auto_delete: m.auto_delete,
                        internal: m.internal,
                        arguments: m.arguments,
                    },
                    m.passive,
                )?;
                if !m.nowait {
                    self.send_method(
                        ch,
                        AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(
                            exchange::DeclareOk {},
                        )),
                    );
                }
            }
            exchange::AMQPMethod::Delete(m) => {
                let name = strip_cr_lf(m.exchange);
                if !name.as_str().is_empty() {
                    self.check_access(Access::Configure, Resource::Exchange, name.as_str())?;
                }
                vhost.delete_exchange(name.as_str(), m.if_unused)?;
                if !m.nowait {
                    self.send_method(
                        ch,
                        AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
                    );
                }
            }
            exchange::AMQPMethod::Bind(m) => {
                let (source, destination) = (strip_cr_lf(m.source), strip_cr_lf(m.destination));
                self.check_binding(
                    source.as_str(),
                    Resource::Exchange,
                    destination.as_str(),
                    m.routing_key.as_str(),
                )?;
                vhost.bind(
                    source.as_str(),
                    Destination::Exchange(destination),
                    m.routing_key,
                    m.arguments,
                    self.id,
                )?;
                if !m.nowait {
                    self.send_method(
                        ch,
                        AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
                    );
                }
            }
            exchange::AMQPMethod::Unbind(m) => {
                let (source, destination) = (strip_cr_lf(m.source), strip_cr_lf(m.destination));
                self.check_binding(
                    source.as_str(),
                    Resource::Exchange,
                    destination.as_str(),
                    m.routing_key.as_str(),
                )?;
                vhost.unbind(
                    source.as_str(),
                    Destination::Exchange(destination),
                    m.routing_key.as_str(),
                    &m.arguments,
                    self.id,
                )?;
                if !m.nowait {
                    self.send_method(
                        ch,
                        AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})),
                    );
                }
            }
            _ => {
                return Err(ProtocolError::command_invalid(
                    "unexpected exchange method from client",
                ))
            }
        }
        Ok(())
    }

    pub(crate) async fn handle_queue(
        &mut self,
        ch: u16,
        method: queue::AMQPMethod,
    ) -> Result<(), ProtocolError> {
        let vhost = self.vhost();
        match method {
            queue::AMQPMethod::Declare(m) => {
                if self.ctx.config.fault_panic_queue.as_deref() == Some(m.queue.as_str()) {
                    panic!("fault injection: queue.declare '{}'", m.queue);
                }
                let m = queue::Declare {
                    queue: strip_cr_lf(m.queue),
                    ..m
                };
                if m.passive && m.queue.as_str().starts_with(REPLY_TO) {
                    return self.declare_reply_to(ch, m.queue);
                }
                let (handle, name) = if m.passive {
                    let name = self.resolve_queue_name(ch, &m.queue)?;
                    (vhost.queue(name.as_str(), self.id)?, name)
                } else {
                    let server_named = m.queue.as_str().is_empty();
                    let name = if server_named {
                        generated_name("amq.gen-")
                    } else {
                        m.queue
                    };
                    self.check_access(Access::Configure, Resource::Queue, name.as_str())?;
                    if let Some(dlx) = m
                        .arguments
                        .inner()
                        .get("x-dead-letter-exchange")
                        .and_then(warren_core::args::as_str)
                    {
                        // Checked for a new queue only, as RabbitMQ does.
                        if vhost.queue(name.as_str(), self.id).is_err() {
                            self.check_access(Access::Read, Resource::Queue, name.as_str())?;
                            self.check_access(Access::Write, Resource::Exchange, &dlx)?;
                        }
                    }
                    let declared = vhost.declare_queue(
                        QueueDef {
                            name: name.clone(),
                            durable: m.durable,
                            exclusive_owner: m.exclusive.then_some(self.id),
                            auto_delete: m.auto_delete,
                            arguments: m.arguments,
                        },
                        server_named,
                    )?;
                    (declared, name)
                };
                if let Some(c) = self.channels.get_mut(&ch) {
                    c.last_queue = Some(name.clone());
                }
                if !m.nowait {
                    let stats: QueueStats = handle.ask(QueueCommand::Stats).await?;
                    self.send_method(
                        ch,
                        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                            queue: name,
                            message_count: stats.messages,
                            consumer_count: stats.consumers,
                        })),
                    );
                }
            }
            queue::AMQPMethod::Bind(m) => {
                let (source, destination, routing_key) =
                    self.queue_binding(ch, &m.queue, m.exchange, m.routing_key)?;
                vhost.bind(
                    source.as_str(),
                    destination,
                    routing_key,
                    m.arguments,
                    self.id,
                )?;
                if !m.nowait {
                    self.send_method(
                        ch,
                        AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
                    );
                }
            }
            queue::AMQPMethod::Unbind(m) => {
                let (source, destination, routing_key) =
                    self.queue_binding(ch, &m.queue, m.exchange, m.routing_key)?;
                vhost.unbind(
                    source.as_str(),
                    destination,
                    routing_key.as_str(),
                    &m.arguments,
                    self.id,
                )?;
                self.send_method(
                    ch,
                    AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
                );
            }
            queue::AMQPMethod::Purge(m) => {
                let name = self.resolve_queue_name(ch, &m.queue)?;
                self.check_access(Access::Read, Resource::Queue, name.as_str())?;
                let handle = self.lookup_queue(ch, &m.queue)?;
                let message_count = handle.ask(QueueCommand::Purge).await?;
                if !m.nowait {
                    self.send_method(
                        ch,
                        AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                            message_count,
                        })),
                    );
                }
            }
            queue::AMQPMethod::Delete(m) => {
                let name = strip_cr_lf(self.resolve_queue_name(ch, &m.queue)?);
                self.check_access(Access::Configure, Resource::Queue, name.as_str())?;
                let message_count = vhost
                    .delete_queue(name.as_str(), self.id, m.if_unused, m.if_empty)
                    .await?;
                if !m.nowait {
                    self.send_method(
                        ch,
                        AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                            message_count,
                        })),
                    );
                }
            }
            _ => {
                return Err(ProtocolError::command_invalid(
                    "unexpected queue method from client",
                ))
            }
        }
        Ok(())
    }
}
