//! A virtual host: the owner of its definitions (exchanges, queues, bindings) and publisher
//! of the routing snapshot built from them.
//!
//! Definitions change rarely (declare, bind, delete) and are kept under a mutex that is held
//! only for in-memory updates, never across an await and never on the publish path; every
//! change publishes a new `RoutingTable` snapshot that publishers read with one atomic load.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use arc_swap::{ArcSwap, Guard};
use warren_protocol::{FieldTable, ProtocolError, ShortString};

use crate::args::{check_equivalent, check_flag};
use crate::direct_reply::DirectReplies;
use crate::exchange::headers::validate_binding_args;
use crate::exchange::{
    check_name, ExchangeDef, ExchangeKind, DEFAULT_EXCHANGE, STANDARD_EXCHANGES,
};
use crate::queue::settings::{QueueDefaults, QueueSettings};
use crate::queue::{QueueCommand, QueueDef, QueueHandle};
use crate::routing::{Binding, Destination, ExchangeRoute, Matcher, RoutingTable};

struct ExchangeEntry {
    def: ExchangeDef,
    /// Bindings whose source is this exchange.
    bindings: Vec<Binding>,
    route: Arc<ExchangeRoute>,
}

impl ExchangeEntry {
    fn new(def: ExchangeDef) -> Self {
        let route = Arc::new(ExchangeRoute {
            kind: def.kind,
            internal: def.internal,
            alternate: alternate_of(&def),
            matcher: Matcher::build(def.kind, &[]),
        });
        ExchangeEntry {
            def,
            bindings: Vec::new(),
            route,
        }
    }

    fn rebuild(&mut self) {
        self.route = Arc::new(ExchangeRoute {
            kind: self.def.kind,
            internal: self.def.internal,
            alternate: alternate_of(&self.def),
            matcher: Matcher::build(self.def.kind, &self.bindings),
        });
    }
}

/// The `alternate-exchange` argument: where this exchange sends what it cannot route.
fn alternate_of(def: &ExchangeDef) -> Option<ShortString> {
    def.arguments
        .inner()
        .get("alternate-exchange")
        .and_then(crate::args::as_str)
        .map(ShortString::from)
}

fn default_exchange_refused() -> ProtocolError {
    ProtocolError::access_refused("operation not permitted on the default exchange")
}

struct QueueEntry {
    def: QueueDef,
    handle: QueueHandle,
}

#[derive(Default)]
struct Definitions {
    exchanges: HashMap<ShortString, ExchangeEntry>,
    queues: HashMap<ShortString, QueueEntry>,
}

/// Outcome of queue.declare.
pub struct DeclaredQueue {
    pub handle: QueueHandle,
    pub created: bool,
}

pub struct VHost {
    name: String,
    defs: Mutex<Definitions>,
    routing: ArcSwap<RoutingTable>,
    queue_defaults: QueueDefaults,
    pub direct_replies: Arc<DirectReplies>,
    me: Weak<VHost>,
}

impl VHost {
    pub fn new(name: impl Into<String>, queue_defaults: QueueDefaults) -> Arc<VHost> {
        let name = name.into();
        Arc::new_cyclic(|me| {
            let mut defs = Definitions::default();
            for (x, kind) in STANDARD_EXCHANGES {
                defs.exchanges.insert(
                    ShortString::from(*x),
                    ExchangeEntry::new(ExchangeDef {
                        name: ShortString::from(*x),
                        kind: *kind,
                        durable: true,
                        auto_delete: false,
                        internal: false,
                        arguments: FieldTable::default(),
                    }),
                );
            }
            let vhost = VHost {
                name,
                defs: Mutex::new(defs),
                routing: ArcSwap::from_pointee(RoutingTable::default()),
                queue_defaults,
                direct_replies: Arc::new(DirectReplies::default()),
                me: me.clone(),
            };
            vhost.publish(&vhost.lock());
            vhost
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current routing snapshot (lock-free).
    pub fn routing(&self) -> Guard<Arc<RoutingTable>> {
        self.routing.load()
    }

    fn lock(&self) -> MutexGuard<'_, Definitions> {
        // A panic while holding the lock leaves definitions consistent (every update is
        // applied before publishing), so a poisoned lock is still usable.
        self.defs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, defs: &Definitions) {
        let table = RoutingTable {
            exchanges: defs
                .exchanges
                .iter()
                .map(|(k, e)| (k.clone(), e.route.clone()))
                .collect(),
            queues: defs
                .queues
                .iter()
                .map(|(k, q)| (k.clone(), q.handle.clone()))
                .collect(),
        };
        self.routing.store(Arc::new(table));
    }

    fn exchange_what(&self, name: &str) -> String {
        format!("exchange '{name}' in vhost '{}'", self.name)
    }

    fn queue_what(&self, name: &str) -> String {
        format!("queue '{name}' in vhost '{}'", self.name)
    }

    fn no_exchange(&self, name: &str) -> ProtocolError {
        ProtocolError::not_found(format!("no {}", self.exchange_what(name)))
    }

    fn no_queue(&self, name: &str) -> ProtocolError {
        ProtocolError::not_found(format!("no {}", self.queue_what(name)))
    }

    // ---- exchanges ----

    /// exchange.declare. `passive` only checks existence.
    pub fn declare_exchange(&self, def: ExchangeDef, passive: bool) -> Result<(), ProtocolError> {
        let name = def.name.as_str();
        check_name(name, "exchange")?;
        if name == DEFAULT_EXCHANGE {
            return Err(default_exchange_refused());
        }
        let mut defs = self.lock();
        if let Some(existing) = defs.exchanges.get(name) {
            if passive {
                return Ok(());
            }
            // An equivalent redeclare is fine, even of an `amq.*` exchange.
            let what = self.exchange_what(name);
            let cur = &existing.def;
            if cur.kind != def.kind {
                return Err(ProtocolError::precondition_failed(format!(
                    "inequivalent arg 'type' for {what}: received '{}' but current is '{}'",
                    def.kind.as_str(),
                    cur.kind.as_str()
                )));
            }
            check_flag("durable", def.durable, cur.durable, &what)?;
            check_flag("auto_delete", def.auto_delete, cur.auto_delete, &what)?;
            check_flag("internal", def.internal, cur.internal, &what)?;
            check_equivalent(&def.arguments, &cur.arguments, &what)?;
            return Ok(());
        }
        if passive {
            return Err(self.no_exchange(name));
        }
        if name.starts_with("amq.") {
            return Err(ProtocolError::access_refused(format!(
                "exchange name '{name}' contains reserved prefix 'amq.'"
            )));
        }
        defs.exchanges
            .insert(def.name.clone(), ExchangeEntry::new(def));
        self.publish(&defs);
        Ok(())
    }

    /// exchange.delete.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), ProtocolError> {
        if name == DEFAULT_EXCHANGE {
            return Err(default_exchange_refused());
        }
        if name.starts_with("amq.") {
            return Err(ProtocolError::access_refused(format!(
                "deletion of system exchange '{name}' in vhost '{}' refused",
                self.name
            )));
        }
        let mut defs = self.lock();
        // exchange.delete is idempotent in RabbitMQ: a missing exchange is not an error.
        let Some(entry) = defs.exchanges.get(name) else {
            return Ok(());
        };
        let dest = Destination::Exchange(ShortString::from(name));
        let bound_as_destination = defs
            .exchanges
            .values()
            .any(|e| e.bindings.iter().any(|b| b.destination == dest));
        if if_unused && (!entry.bindings.is_empty() || bound_as_destination) {
            return Err(ProtocolError::precondition_failed(format!(
                "{} in use",
                self.exchange_what(name)
            )));
        }
        defs.exchanges.remove(name);
        self.remove_bindings_to(&mut defs, &dest);
        self.publish(&defs);
        Ok(())
    }

    // ---- queues ----

    /// queue.declare (not passive). The caller generates server names (`server_named`).
    pub fn declare_queue(
        &self,
        def: QueueDef,
        server_named: bool,
    ) -> Result<DeclaredQueue, ProtocolError> {
        let name = def.name.as_str().to_owned();
        check_name(&name, "queue")?;
        // RabbitMQ refuses a non-passive declare of any `amq.` name, even an existing
        // server-named queue; only the server itself names queues so.
        if name.starts_with("amq.") && !server_named {
            return Err(ProtocolError::access_refused(format!(
                "queue name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        let settings = QueueSettings::from_arguments(&def.arguments, &self.queue_what(&name))?;
        let mut defs = self.lock();
        if let Some(existing) = defs.queues.get(name.as_str()) {
            self.check_owner(&existing.def, def.exclusive_owner)?;
            let what = self.queue_what(&name);
            let cur = &existing.def;
            check_flag("durable", def.durable, cur.durable, &what)?;
            check_flag("auto_delete", def.auto_delete, cur.auto_delete, &what)?;
            check_flag(
                "exclusive",
                def.exclusive_owner.is_some(),
                cur.exclusive_owner.is_some(),
                &what,
            )?;
            check_equivalent(&def.arguments, &cur.arguments, &what)?;
            return Ok(DeclaredQueue {
                handle: existing.handle.clone(),
                created: false,
            });
        }
        let handle =
            QueueHandle::spawn(def.clone(), settings, &self.queue_defaults, self.me.clone());
        defs.queues.insert(
            def.name.clone(),
            QueueEntry {
                def,
                handle: handle.clone(),
            },
        );
        self.publish(&defs);
        Ok(DeclaredQueue {
            handle,
            created: true,
        })
    }

    fn check_owner(&self, def: &QueueDef, connection: Option<u64>) -> Result<(), ProtocolError> {
        match def.exclusive_owner {
            Some(owner) if Some(owner) != connection => Err(ProtocolError::resource_locked(format!(
                "cannot obtain exclusive access to locked {}. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
                self.queue_what(def.name.as_str())
            ))),
            _ => Ok(()),
        }
    }

    /// Finds a queue for `connection`, refusing another connection's exclusive queue (405).
    pub fn queue(&self, name: &str, connection: u64) -> Result<QueueHandle, ProtocolError> {
        let defs = self.lock();
        let entry = defs.queues.get(name).ok_or_else(|| self.no_queue(name))?;
        self.check_owner(&entry.def, Some(connection))?;
        Ok(entry.handle.clone())
    }

    /// queue.delete: asks the actor (which checks if-unused / if-empty and cancels its
    /// consumers), then drops the queue and its bindings. Returns the message count.
    pub async fn delete_queue(
        &self,
        name: &str,
        connection: u64,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<u32, ProtocolError> {
        let handle = match self.queue(name, connection) {
            Ok(h) => h,
            // RabbitMQ answers delete of a missing queue with delete-ok (0 messages).
            Err(e) if e.code == warren_protocol::ReplyCode::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let count = handle
            .ask(|reply| QueueCommand::Delete {
                if_unused,
                if_empty,
                reply,
            })
            .await??;
        self.forget_queue(&handle);
        Ok(count)
    }

    /// Removes a queue whose actor has stopped (deleted, auto-deleted) from definitions and
    /// routing, with every binding to it.
    pub fn forget_queue(&self, handle: &QueueHandle) {
        let mut defs = self.lock();
        let name = handle.name().clone();
        match defs.queues.get(name.as_str()) {
            Some(entry) if entry.handle.same(handle) => {}
            _ => return,
        }
        defs.queues.remove(name.as_str());
        self.remove_bindings_to(&mut defs, &Destination::Queue(name));
        self.publish(&defs);
    }

    /// A connection closed: its exclusive queues go with it.
    pub async fn connection_closed(&self, connection: u64) {
        let owned: Vec<QueueHandle> = self
            .lock()
            .queues
            .values()
            .filter(|q| q.def.exclusive_owner == Some(connection))
            .map(|q| q.handle.clone())
            .collect();
        for handle in owned {
            let _ = handle
                .ask(|reply| QueueCommand::Delete {
                    if_unused: false,
                    if_empty: false,
                    reply,
                })
                .await;
            self.forget_queue(&handle);
        }
    }

    // ---- bindings ----

    /// queue.bind / exchange.bind.
    pub fn bind(
        &self,
        source: &str,
        destination: Destination,
        routing_key: ShortString,
        arguments: FieldTable,
        connection: u64,
    ) -> Result<(), ProtocolError> {
        let mut defs = self.lock();
        self.check_binding_ends(&defs, source, &destination, connection)?;
        let entry = defs
            .exchanges
            .get_mut(source)
            .ok_or_else(|| self.no_exchange(source))?;
        if entry.def.kind == ExchangeKind::Headers {
            validate_binding_args(&arguments).map_err(ProtocolError::precondition_failed)?;
        }
        let binding = Binding {
            destination,
            routing_key,
            arguments,
        };
        if entry.bindings.contains(&binding) {
            return Ok(());
        }
        entry.bindings.push(binding);
        entry.rebuild();
        self.publish(&defs);
        Ok(())
    }

    /// queue.unbind / exchange.unbind. Unbinding something not bound is not an error.
    pub fn unbind(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: &FieldTable,
        connection: u64,
    ) -> Result<(), ProtocolError> {
        let mut defs = self.lock();
        self.check_binding_ends(&defs, source, &destination, connection)?;
        let entry = defs
            .exchanges
            .get_mut(source)
            .ok_or_else(|| self.no_exchange(source))?;
        let before = entry.bindings.len();
        entry.bindings.retain(|b| {
            !(b.destination == destination
                && b.routing_key.as_str() == routing_key
                && &b.arguments == arguments)
        });
        if entry.bindings.len() != before {
            entry.rebuild();
            let empty = entry.bindings.is_empty() && entry.def.auto_delete;
            if empty {
                self.auto_delete_exchange(&mut defs, source);
            }
            self.publish(&defs);
        }
        Ok(())
    }

    fn check_binding_ends(
        &self,
        defs: &Definitions,
        source: &str,
        destination: &Destination,
        connection: u64,
    ) -> Result<(), ProtocolError> {
        let default_refused =
            || ProtocolError::access_refused("operation not permitted on the default exchange");
        if source == DEFAULT_EXCHANGE {
            return Err(default_refused());
        }
        match destination {
            Destination::Queue(q) => {
                let entry = defs
                    .queues
                    .get(q.as_str())
                    .ok_or_else(|| self.no_queue(q.as_str()))?;
                self.check_owner(&entry.def, Some(connection))?;
            }
            Destination::Exchange(x) => {
                if x.as_str() == DEFAULT_EXCHANGE {
                    return Err(default_refused());
                }
                if !defs.exchanges.contains_key(x.as_str()) {
                    return Err(self.no_exchange(x.as_str()));
                }
            }
        }
        if !defs.exchanges.contains_key(source) {
            return Err(self.no_exchange(source));
        }
        Ok(())
    }

    fn remove_bindings_to(&self, defs: &mut Definitions, dest: &Destination) {
        let mut emptied = Vec::new();
        for (name, entry) in defs.exchanges.iter_mut() {
            let before = entry.bindings.len();
            entry.bindings.retain(|b| &b.destination != dest);
            if entry.bindings.len() != before {
                entry.rebuild();
                if entry.bindings.is_empty() && entry.def.auto_delete {
                    emptied.push(name.clone());
                }
            }
        }
        for name in emptied {
            self.auto_delete_exchange(defs, name.as_str());
        }
    }

    /// An auto-delete exchange goes when its last binding (as source) does.
    fn auto_delete_exchange(&self, defs: &mut Definitions, name: &str) {
        if defs.exchanges.remove(name).is_some() {
            self.remove_bindings_to(defs, &Destination::Exchange(ShortString::from(name)));
        }
    }

    /// Checks that an exchange may be published to: exists and is not internal.
    pub fn check_publish_target(
        routing: &RoutingTable,
        vhost: &str,
        exchange: &str,
    ) -> Result<(), ProtocolError> {
        if exchange == DEFAULT_EXCHANGE {
            return Ok(());
        }
        match routing.exchanges.get(exchange) {
            None => Err(ProtocolError::not_found(format!(
                "no exchange '{exchange}' in vhost '{vhost}'"
            ))),
            Some(x) if x.internal => Err(ProtocolError::access_refused(format!(
                "cannot publish to internal exchange '{exchange}' in vhost '{vhost}'"
            ))),
            Some(_) => Ok(()),
        }
    }
}
