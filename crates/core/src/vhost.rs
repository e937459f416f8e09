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

use crate::args::{
    check_equivalent, check_flag, EXCHANGE_EQUIVALENCE_KEYS, QUEUE_EQUIVALENCE_KEYS,
};
use crate::direct_reply::DirectReplies;
use crate::durable::definitions::{self as def_records, DefinitionOp};
use crate::exchange::headers::validate_binding_args;
use crate::exchange::{
    check_name, ExchangeDef, ExchangeKind, DEFAULT_EXCHANGE, STANDARD_EXCHANGES,
};
use crate::queue::settings::{QueueDefaults, QueueSettings};
use crate::queue::store::{QueueStore, StoreContext};
use crate::queue::{QueueCommand, QueueDef, QueueHandle, Startup};
use crate::routing::{Binding, Destination, ExchangeRoute, Matcher, RoutingTable};

/// A binding's identity: destination, routing key and (encoded) arguments.
type BindingKey = (Destination, ShortString, Vec<u8>);

fn binding_key(b: &Binding) -> BindingKey {
    let args = if b.arguments.inner().is_empty() {
        Vec::new()
    } else {
        crate::durable::definitions::encode_table(&b.arguments)
    };
    (b.destination.clone(), b.routing_key.clone(), args)
}

struct ExchangeEntry {
    def: ExchangeDef,
    /// Bindings whose source is this exchange.
    bindings: HashMap<BindingKey, Binding>,
    /// Bindings per (destination, routing key): direct and topic matchers hold each pair once,
    /// whatever the arguments.
    pairs: HashMap<(Destination, ShortString), u32>,
    route: Arc<ExchangeRoute>,
}

impl ExchangeEntry {
    fn new(def: ExchangeDef) -> Self {
        let route = Arc::new(ExchangeRoute {
            internal: def.internal,
            alternate: alternate_of(&def),
            matcher: Matcher::build(def.kind, std::iter::empty()),
        });
        ExchangeEntry {
            def,
            bindings: HashMap::new(),
            pairs: HashMap::new(),
            route,
        }
    }

    fn rebuild(&mut self) {
        self.route = Arc::new(ExchangeRoute {
            internal: self.def.internal,
            alternate: alternate_of(&self.def),
            matcher: Matcher::build(self.def.kind, self.bindings.values()),
        });
    }

    fn contains(&self, b: &Binding) -> bool {
        self.bindings.contains_key(&binding_key(b))
    }

    /// Adds a binding and updates the matcher in place of rebuilding it: direct and topic
    /// matchers are persistent maps, so a change costs O(log n), not O(bindings).
    fn add(&mut self, b: Binding) -> bool {
        let key = binding_key(&b);
        if self.bindings.contains_key(&key) {
            return false;
        }
        let pair = (b.destination.clone(), b.routing_key.clone());
        self.bindings.insert(key, b);
        let count = self.pairs.entry(pair.clone()).or_insert(0);
        *count += 1;
        match self.def.kind {
            ExchangeKind::Direct | ExchangeKind::Topic if *count == 1 => {
                let mut route = (*self.route).clone();
                route.matcher.add(&pair.1, &pair.0);
                self.route = Arc::new(route);
            }
            ExchangeKind::Direct | ExchangeKind::Topic => {}
            _ => self.rebuild(),
        }
        true
    }

    /// Removes the bindings for which `remove` is true; true if any was. Looks at every
    /// binding: for a destination going away. One binding goes by `remove_keys`.
    fn remove_where(&mut self, mut remove: impl FnMut(&Binding) -> bool) -> bool {
        let gone: Vec<BindingKey> = self
            .bindings
            .iter()
            .filter(|(_, b)| remove(b))
            .map(|(k, _)| k.clone())
            .collect();
        self.remove_keys(gone)
    }

    /// Removes bindings by identity; true if any was there.
    fn remove_keys(&mut self, keys: Vec<BindingKey>) -> bool {
        let gone: Vec<BindingKey> = keys
            .into_iter()
            .filter(|k| self.bindings.contains_key(k))
            .collect();
        if gone.is_empty() {
            return false;
        }
        let incremental = matches!(self.def.kind, ExchangeKind::Direct | ExchangeKind::Topic);
        let mut route = (*self.route).clone();
        for key in gone {
            self.bindings.remove(&key);
            let pair = (key.0, key.1);
            let left = match self.pairs.get_mut(&pair) {
                Some(n) => {
                    *n -= 1;
                    *n
                }
                None => 0,
            };
            if left == 0 {
                self.pairs.remove(&pair);
                if incremental {
                    route.matcher.remove(&pair.1, &pair.0);
                }
            }
        }
        if incremental {
            self.route = Arc::new(route);
        } else {
            self.rebuild();
        }
        true
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
    /// Its definition is in the definitions log and its persistent messages in a log.
    persisted: bool,
}

/// What a vhost needs to keep durable things durable.
pub struct Persistence {
    pub store: StoreContext,
    pub definitions: Mutex<warren_store::DefinitionsLog>,
    /// The definitions log's sequence number known to be fsynced (group commit).
    pub synced: Mutex<u64>,
}

#[derive(Default)]
struct Definitions {
    exchanges: HashMap<ShortString, ExchangeEntry>,
    queues: HashMap<ShortString, QueueEntry>,
    /// The routing snapshot being built: persistent maps, so publishing a copy is O(1).
    table: RoutingTable,
}

pub struct VHost {
    name: String,
    defs: Mutex<Definitions>,
    routing: ArcSwap<RoutingTable>,
    queue_defaults: QueueDefaults,
    pub direct_replies: Arc<DirectReplies>,
    persistence: Option<Arc<Persistence>>,
    me: Weak<VHost>,
}

impl VHost {
    pub fn new(
        name: impl Into<String>,
        queue_defaults: QueueDefaults,
        persistence: Option<Arc<Persistence>>,
    ) -> Arc<VHost> {
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
                persistence,
                me: me.clone(),
            };
            vhost.publish(&mut vhost.lock());
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

    /// The current routing snapshot, owned (to hold across an await).
    pub fn routing_snapshot(&self) -> Arc<RoutingTable> {
        self.routing.load_full()
    }

    fn lock(&self) -> MutexGuard<'_, Definitions> {
        // A panic while holding the lock leaves definitions consistent (every update is
        // applied before publishing), so a poisoned lock is still usable.
        self.defs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes a new routing snapshot. Only entries that changed are updated (a pointer
    /// comparison per exchange and queue), and the snapshot's maps are persistent, so this
    /// costs no copy of the routing state.
    fn publish(&self, defs: &mut Definitions) {
        let Definitions {
            exchanges,
            queues,
            table,
        } = defs;
        for (name, e) in exchanges.iter() {
            if !table
                .exchanges
                .get(name)
                .is_some_and(|r| Arc::ptr_eq(r, &e.route))
            {
                table.exchanges.insert(name.clone(), e.route.clone());
            }
        }
        if table.exchanges.len() != exchanges.len() {
            table
                .exchanges
                .retain(|name, _| exchanges.contains_key(name));
        }
        for (name, q) in queues.iter() {
            if !table.queues.get(name).is_some_and(|h| h.same(&q.handle)) {
                table.queues.insert(name.clone(), q.handle.clone());
            }
        }
        if table.queues.len() != queues.len() {
            table.queues.retain(|name, _| queues.contains_key(name));
        }
        self.routing.store(Arc::new(table.clone()));
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

    /// Appends a change of durable definitions to the log, not yet fsynced: every public
    /// method that may call this ends with `sync_definitions` once the definitions lock is
    /// released. Lock order: definitions, then the log.
    fn log_op(&self, op: DefinitionOp) -> Result<(), ProtocolError> {
        let Some(p) = &self.persistence else {
            return Ok(());
        };
        let record = def_records::encode(&self.name, &op);
        let mut log = p.definitions.lock().unwrap_or_else(|e| e.into_inner());
        log.append_unsynced(&record).map(|_| ()).map_err(|e| {
            tracing::error!(error = %e, "cannot write the definitions log");
            ProtocolError::internal_error(format!("cannot store the definition: {e}"))
        })
    }

    /// Group commit of the definitions log: makes everything appended so far durable before
    /// the caller answers its client. Concurrent callers share one fsync: whoever holds the
    /// `synced` lock fsyncs for all, and the others find their records already covered.
    /// Lock order: `synced`, then the log; never called with the definitions lock held.
    fn sync_definitions(&self) -> Result<(), ProtocolError> {
        let Some(p) = &self.persistence else {
            return Ok(());
        };
        let log = || p.definitions.lock().unwrap_or_else(|e| e.into_inner());
        let appended = log().appended();
        let mut synced = p.synced.lock().unwrap_or_else(|e| e.into_inner());
        if *synced >= appended {
            return Ok(());
        }
        let (file, covers) = log().unsynced();
        if let Err(e) = file.sync() {
            let e = log().sync_failed(e);
            tracing::error!(error = %e, "cannot fsync the definitions log");
            return Err(ProtocolError::internal_error(format!(
                "cannot store the definition: {e}"
            )));
        }
        *synced = covers;
        Ok(())
    }

    /// Runs a change of definitions, then makes what it logged durable.
    fn durably<T>(
        &self,
        change: impl FnOnce() -> Result<T, ProtocolError>,
    ) -> Result<T, ProtocolError> {
        let result = change();
        let synced = self.sync_definitions();
        let value = result?;
        synced.map(|()| value)
    }

    /// Whether a binding is durable: both ends are.
    fn binding_is_durable(defs: &Definitions, source: &str, destination: &Destination) -> bool {
        let source_durable = defs.exchanges.get(source).is_some_and(|e| e.def.durable);
        let destination_durable = match destination {
            Destination::Queue(q) => defs.queues.get(q.as_str()).is_some_and(|q| q.persisted),
            Destination::Exchange(x) => defs
                .exchanges
                .get(x.as_str())
                .is_some_and(|e| e.def.durable),
        };
        source_durable && destination_durable
    }

    // ---- exchanges ----

    /// exchange.declare. `passive` only checks existence.
    pub fn declare_exchange(&self, def: ExchangeDef, passive: bool) -> Result<(), ProtocolError> {
        self.durably(|| self.declare_exchange_now(def, passive))
    }

    fn declare_exchange_now(&self, def: ExchangeDef, passive: bool) -> Result<(), ProtocolError> {
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
            check_equivalent(
                &def.arguments,
                &cur.arguments,
                EXCHANGE_EQUIVALENCE_KEYS,
                &what,
            )?;
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
        if let Some(ae) = def.arguments.inner().get("alternate-exchange") {
            if crate::args::as_str(ae).is_none() {
                return Err(ProtocolError::precondition_failed(format!(
                    "invalid type '{}' for arg 'alternate-exchange' in {}",
                    crate::args::type_name(ae),
                    self.exchange_what(name)
                )));
            }
        }
        if def.durable {
            self.log_op(DefinitionOp::ExchangeDeclared(def.clone()))?;
        }
        defs.exchanges
            .insert(def.name.clone(), ExchangeEntry::new(def));
        self.publish(&mut defs);
        Ok(())
    }

    /// exchange.delete.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), ProtocolError> {
        self.durably(|| self.delete_exchange_now(name, if_unused))
    }

    fn delete_exchange_now(&self, name: &str, if_unused: bool) -> Result<(), ProtocolError> {
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
            .any(|e| e.bindings.values().any(|b| b.destination == dest));
        if if_unused && (!entry.bindings.is_empty() || bound_as_destination) {
            return Err(ProtocolError::precondition_failed(format!(
                "{} in use",
                self.exchange_what(name)
            )));
        }
        if entry.def.durable {
            self.log_op(DefinitionOp::ExchangeDeleted(ShortString::from(name)))?;
        }
        defs.exchanges.remove(name);
        self.remove_bindings_to(&mut defs, &dest);
        self.publish(&mut defs);
        Ok(())
    }

    // ---- queues ----

    /// queue.declare (not passive). The caller generates server names (`server_named`).
    pub fn declare_queue(
        &self,
        def: QueueDef,
        server_named: bool,
    ) -> Result<QueueHandle, ProtocolError> {
        self.durably(|| self.declare_queue_now(def, server_named))
    }

    fn declare_queue_now(
        &self,
        def: QueueDef,
        server_named: bool,
    ) -> Result<QueueHandle, ProtocolError> {
        let name = def.name.as_str().to_owned();
        check_name(&name, "queue")?;
        // RabbitMQ refuses a non-passive declare of any `amq.` name, even an existing
        // server-named queue; only the server itself names queues so.
        if name.starts_with("amq.") && !server_named {
            return Err(ProtocolError::access_refused(format!(
                "queue name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
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
            // As RabbitMQ: a redeclare is compared, not validated again.
            check_equivalent(
                &def.arguments,
                &cur.arguments,
                QUEUE_EQUIVALENCE_KEYS,
                &what,
            )?;
            return Ok(existing.handle.clone());
        }
        let settings = QueueSettings::from_arguments(&def.arguments, &self.queue_what(&name))?;
        // Server-named and exclusive queues never survive a restart.
        let persisted = def.durable && def.exclusive_owner.is_none() && !server_named;
        let startup = self.startup_for(&def, persisted)?;
        if persisted {
            self.log_op(DefinitionOp::QueueDeclared(def.clone()))?;
        }
        let handle = QueueHandle::spawn(
            def.clone(),
            settings,
            &self.queue_defaults,
            self.me.clone(),
            startup,
        );
        defs.queues.insert(
            def.name.clone(),
            QueueEntry {
                def,
                handle: handle.clone(),
                persisted,
            },
        );
        self.publish(&mut defs);
        Ok(handle)
    }

    /// What a new queue starts with: for a persisted queue, its (empty) log.
    fn startup_for(&self, def: &QueueDef, persisted: bool) -> Result<Startup, ProtocolError> {
        let store_context = self.persistence.as_ref().map(|p| p.store.clone());
        let store = match (&store_context, persisted) {
            (Some(ctx), true) => {
                let dir = ctx.queue_dir(&self.name, def.name.as_str());
                let (log, _) = warren_store::open_file_log_with(
                    &dir,
                    ctx.io.clone(),
                    ctx.log_options(),
                )
                .map_err(|e| {
                    tracing::error!(dir = %dir.display(), error = %e, "cannot open a queue's log");
                    ProtocolError::internal_error(format!("cannot open the queue's store: {e}"))
                })?;
                Some(QueueStore::new(log, &dir, true, ctx))
            }
            _ => None,
        };
        Ok(Startup {
            store,
            store_context,
            recovered: Vec::new(),
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
        self.forget_queue_now(handle);
        // The queue is gone either way; a failure only means it comes back after a restart.
        let _ = self.sync_definitions();
    }

    fn forget_queue_now(&self, handle: &QueueHandle) {
        let mut defs = self.lock();
        let name = handle.name().clone();
        match defs.queues.get(name.as_str()) {
            Some(entry) if entry.handle.same(handle) => {}
            _ => return,
        }
        if let Some(entry) = defs.queues.remove(name.as_str()) {
            if entry.persisted {
                // The queue is gone either way; a failure here only means it comes back
                // (empty of acked messages) after a restart.
                let _ = self.log_op(DefinitionOp::QueueDeleted(name.clone()));
            }
        }
        self.remove_bindings_to(&mut defs, &Destination::Queue(name));
        self.publish(&mut defs);
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
        self.durably(|| self.bind_now(source, destination, routing_key, arguments, connection))
    }

    fn bind_now(
        &self,
        source: &str,
        destination: Destination,
        routing_key: ShortString,
        arguments: FieldTable,
        connection: u64,
    ) -> Result<(), ProtocolError> {
        let mut defs = self.lock();
        self.check_binding_ends(&defs, source, &destination, connection)?;
        let durable = Self::binding_is_durable(&defs, source, &destination);
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
        if entry.contains(&binding) {
            return Ok(());
        }
        if durable {
            self.log_op(DefinitionOp::Bound {
                source: ShortString::from(source),
                destination: binding.destination.clone(),
                routing_key: binding.routing_key.clone(),
                arguments: binding.arguments.clone(),
            })?;
        }
        let entry = defs
            .exchanges
            .get_mut(source)
            .ok_or_else(|| self.no_exchange(source))?;
        entry.add(binding);
        self.publish(&mut defs);
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
        self.durably(|| self.unbind_now(source, destination, routing_key, arguments, connection))
    }

    fn unbind_now(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: &FieldTable,
        connection: u64,
    ) -> Result<(), ProtocolError> {
        let mut defs = self.lock();
        // As RabbitMQ: unbinding from or to a queue or exchange that does not exist is ok.
        match self.check_binding_ends(&defs, source, &destination, connection) {
            Err(e) if e.code == warren_protocol::ReplyCode::NotFound => return Ok(()),
            checked => checked?,
        }
        let durable = Self::binding_is_durable(&defs, source, &destination);
        let entry = defs
            .exchanges
            .get_mut(source)
            .ok_or_else(|| self.no_exchange(source))?;
        let target = Binding {
            destination: destination.clone(),
            routing_key: ShortString::from(routing_key),
            arguments: arguments.clone(),
        };
        let bound = entry.contains(&target);
        if durable && bound {
            self.log_op(DefinitionOp::Unbound {
                source: ShortString::from(source),
                destination: destination.clone(),
                routing_key: ShortString::from(routing_key),
                arguments: arguments.clone(),
            })?;
        }
        let entry = defs
            .exchanges
            .get_mut(source)
            .ok_or_else(|| self.no_exchange(source))?;
        if entry.remove_keys(vec![binding_key(&target)]) {
            let empty = entry.bindings.is_empty() && entry.def.auto_delete;
            if empty {
                self.auto_delete_exchange(&mut defs, source);
            }
            self.publish(&mut defs);
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
            if entry.remove_where(|b| &b.destination == dest)
                && entry.bindings.is_empty()
                && entry.def.auto_delete
            {
                emptied.push(name.clone());
            }
        }
        for name in emptied {
            self.auto_delete_exchange(defs, name.as_str());
        }
    }

    /// An auto-delete exchange goes when its last binding (as source) does.
    fn auto_delete_exchange(&self, defs: &mut Definitions, name: &str) {
        if let Some(entry) = defs.exchanges.remove(name) {
            if entry.def.durable {
                let _ = self.log_op(DefinitionOp::ExchangeDeleted(ShortString::from(name)));
            }
            self.remove_bindings_to(defs, &Destination::Exchange(ShortString::from(name)));
        }
    }

    // ---- restart ----

    /// Puts back a durable exchange read from the definitions log (not logged again).
    pub(crate) fn restore_exchange(&self, def: ExchangeDef) {
        let mut defs = self.lock();
        defs.exchanges
            .insert(def.name.clone(), ExchangeEntry::new(def));
    }

    /// Puts back a durable queue with its log and the messages recovered from it.
    pub(crate) fn restore_queue(
        &self,
        def: QueueDef,
        store: QueueStore,
        recovered: Vec<crate::queue::ready::Entry>,
    ) -> Result<(), ProtocolError> {
        let settings =
            QueueSettings::from_arguments(&def.arguments, &self.queue_what(def.name.as_str()))?;
        let startup = Startup {
            store: Some(store),
            store_context: self.persistence.as_ref().map(|p| p.store.clone()),
            recovered,
        };
        let handle = QueueHandle::spawn(
            def.clone(),
            settings,
            &self.queue_defaults,
            self.me.clone(),
            startup,
        );
        self.lock().queues.insert(
            def.name.clone(),
            QueueEntry {
                def,
                handle,
                persisted: true,
            },
        );
        Ok(())
    }

    /// Puts back a durable binding (its ends were restored first; a binding whose end is
    /// missing is dropped).
    pub(crate) fn restore_binding(&self, source: &str, binding: Binding) {
        let mut defs = self.lock();
        let ends_exist = match &binding.destination {
            Destination::Queue(q) => defs.queues.contains_key(q.as_str()),
            Destination::Exchange(x) => defs.exchanges.contains_key(x.as_str()),
        };
        if let (true, Some(entry)) = (ends_exist, defs.exchanges.get_mut(source)) {
            entry.add(binding);
        }
    }

    /// Rebuilds every matcher and publishes the routing snapshot after a restore.
    pub(crate) fn restore_done(&self) {
        let mut defs = self.lock();
        defs.exchanges.values_mut().for_each(|e| e.rebuild());
        self.publish(&mut defs);
    }

    /// The durable definitions as a minimal list of operations (to compact the log).
    pub(crate) fn snapshot_ops(&self) -> Vec<DefinitionOp> {
        let defs = self.lock();
        let mut ops = Vec::new();
        for e in defs.exchanges.values() {
            if e.def.durable && !e.def.name.as_str().starts_with("amq.") {
                ops.push(DefinitionOp::ExchangeDeclared(e.def.clone()));
            }
        }
        for q in defs.queues.values().filter(|q| q.persisted) {
            ops.push(DefinitionOp::QueueDeclared(q.def.clone()));
        }
        for (name, e) in &defs.exchanges {
            for b in e.bindings.values() {
                if Self::binding_is_durable(&defs, name.as_str(), &b.destination) {
                    ops.push(DefinitionOp::Bound {
                        source: name.clone(),
                        destination: b.destination.clone(),
                        routing_key: b.routing_key.clone(),
                        arguments: b.arguments.clone(),
                    });
                }
            }
        }
        ops
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
