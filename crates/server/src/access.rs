//! Permission checks of one connection, at the points RabbitMQ checks them: configure on
//! declare and delete, write on the destination and read on the source of a binding, write
//! on the exchange of a publish, read on the queue of a consume, get or purge; topic
//! permissions on the routing keys of publishes and bindings to topic exchanges.
//!
//! The connection keeps its user's grants for its vhost (`Grants`) and rebuilds them when
//! the broker's access generation moves, so a change made while it is connected applies to
//! its next operation. A channel remembers the last exchange it was allowed to publish to,
//! so the publish path costs one atomic load and one comparison per message.

use std::sync::Arc;

use warren_core::access::permission::{Access, TopicContext};
use warren_core::access::{Pattern, Permission, User};
use warren_core::exchange::ExchangeKind;
use warren_core::routing::{Matcher, RoutingTable};
use warren_core::VHost;
use warren_protocol::{ProtocolError, ShortString};

use crate::connection::Connection;

/// One connection's view of its access rights, valid for one access generation.
pub(crate) struct Grants {
    pub generation: u64,
    pub user: Option<Arc<User>>,
    pub permission: Option<Arc<Permission>>,
    /// Topic permissions by exchange, compiled with this connection's variables.
    pub topics: Vec<(String, Pattern, Pattern)>,
}

impl Grants {
    pub fn empty() -> Grants {
        Grants {
            generation: u64::MAX,
            user: None,
            permission: None,
            topics: Vec::new(),
        }
    }
}

/// What a resource is called in RabbitMQ's texts.
#[derive(Clone, Copy)]
pub(crate) enum Resource {
    Queue,
    Exchange,
}

impl Resource {
    fn as_str(self) -> &'static str {
        match self {
            Resource::Queue => "queue",
            Resource::Exchange => "exchange",
        }
    }
}

impl Connection {
    /// The grants for the current access generation.
    fn grants(&mut self) -> &Grants {
        let generation = self.ctx.broker.access_generation();
        if self.grants.generation != generation {
            let access = self.ctx.broker.access();
            let vhost = self.vhost_name();
            let ctx = TopicContext {
                username: self.user.clone(),
                vhost: vhost.clone(),
                client_id: self.client_id.clone(),
            };
            self.grants = Grants {
                generation,
                user: access.users.get(&self.user).cloned(),
                permission: access.permission(&self.user, &vhost).cloned(),
                topics: access
                    .topic_permissions_of(&self.user, &vhost)
                    .iter()
                    .map(|t| {
                        (
                            t.exchange.clone(),
                            t.compile(Access::Write, &ctx),
                            t.compile(Access::Read, &ctx),
                        )
                    })
                    .collect(),
            };
        }
        &self.grants
    }

    fn vhost_name(&self) -> String {
        self.vhost
            .as_ref()
            .map(|v| v.name().to_owned())
            .unwrap_or_default()
    }

    /// 403 unless the user has `access` on the resource.
    pub(crate) fn check_access(
        &mut self,
        access: Access,
        resource: Resource,
        name: &str,
    ) -> Result<(), ProtocolError> {
        let allowed = self
            .grants()
            .permission
            .as_ref()
            .is_some_and(|p| p.allows(access, name));
        if allowed {
            return Ok(());
        }
        let shown = if name.is_empty() { "amq.default" } else { name };
        // RabbitMQ 3.10's text: which permission was missing is not said.
        Err(ProtocolError::access_refused(format!(
            "access to {} '{shown}' in vhost '{}' refused for user '{}'",
            resource.as_str(),
            self.vhost_name(),
            self.user
        )))
    }

    /// 403 unless the user's topic permissions on `exchange` (a topic exchange) allow
    /// `routing_key`. No topic permission for the exchange allows everything.
    pub(crate) fn check_topic(
        &mut self,
        access: Access,
        exchange: &str,
        kind: Option<ExchangeKind>,
        routing_key: &str,
    ) -> Result<(), ProtocolError> {
        if kind != Some(ExchangeKind::Topic) {
            return Ok(());
        }
        let grants = self.grants();
        let Some((_, write, read)) = grants.topics.iter().find(|(x, _, _)| x == exchange) else {
            return Ok(());
        };
        let pattern = match access {
            Access::Write => write,
            _ => read,
        };
        if pattern.is_match(routing_key) {
            return Ok(());
        }
        Err(ProtocolError::access_refused(format!(
            "access to topic '{routing_key}' in exchange '{exchange}' in vhost '{}' refused for user '{}'",
            self.vhost_name(),
            self.user
        )))
    }

    /// basic.publish's checks, in RabbitMQ's order: write on the exchange (cached per
    /// channel until the access generation moves), the exchange exists and is not internal,
    /// then topic write permission on the routing key.
    pub(crate) fn check_publish(
        &mut self,
        ch: u16,
        routing: &RoutingTable,
        vhost: &str,
        exchange: &ShortString,
        routing_key: &str,
    ) -> Result<Option<warren_core::delayed::DelayedHandle>, ProtocolError> {
        let generation = self.ctx.broker.access_generation();
        let cached = self.channels.get(&ch).is_some_and(|c| {
            c.publish_grant
                .as_ref()
                .is_some_and(|(g, x)| *g == generation && x == exchange)
        });
        if !cached {
            self.check_access(Access::Write, Resource::Exchange, exchange.as_str())?;
        }
        let delayed = VHost::check_publish_target(routing, vhost, exchange.as_str())?;
        if !cached {
            if let Some(c) = self.channels.get_mut(&ch) {
                c.publish_grant = Some((generation, exchange.clone()));
            }
        }
        if !self.grants.topics.is_empty() || self.grants.generation != generation {
            let kind = exchange_kind(routing, exchange.as_str());
            self.check_topic(Access::Write, exchange.as_str(), kind, routing_key)?;
        }
        Ok(delayed)
    }

    /// queue.bind / exchange.bind and their unbinds: write on the destination, read on the
    /// source, and (for a topic exchange) topic read permission on the binding key.
    pub(crate) fn check_binding(
        &mut self,
        source: &str,
        destination_kind: Resource,
        destination: &str,
        routing_key: &str,
    ) -> Result<(), ProtocolError> {
        self.check_access(Access::Write, destination_kind, destination)?;
        self.check_access(Access::Read, Resource::Exchange, source)?;
        let routing = self.vhost.as_ref().map(|v| v.routing_snapshot());
        let kind = routing.and_then(|r| exchange_kind(&r, source));
        self.check_topic(Access::Read, source, kind, routing_key)
    }

    /// Whether the user may set another user's name in `user_id` (the `impersonator` tag).
    pub(crate) fn may_impersonate(&mut self) -> bool {
        self.grants()
            .user
            .as_ref()
            .is_some_and(|u| u.has_tag("impersonator"))
    }
}

/// The kind of an exchange in a routing snapshot, as far as topic checks care.
pub(crate) fn exchange_kind(routing: &RoutingTable, name: &str) -> Option<ExchangeKind> {
    routing.exchanges.get(name).map(|x| match x.matcher {
        Matcher::Topic(_) => ExchangeKind::Topic,
        Matcher::Direct(_) => ExchangeKind::Direct,
        Matcher::Fanout(_) => ExchangeKind::Fanout,
        Matcher::Headers(_) => ExchangeKind::Headers,
        Matcher::ConsistentHash(_) => ExchangeKind::ConsistentHash,
        Matcher::Deduplication(..) => ExchangeKind::Deduplication,
    })
}
