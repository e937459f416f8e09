//! A virtual host: the owner of its definitions (exchanges, queues, bindings) and publisher
//! of the routing snapshot built from them.
//!
//! Definitions change rarely (declare, bind, delete) and are kept under a mutex that is held
//! only for in-memory updates, never across an await and never on the publish path; every
//! change publishes a new `RoutingTable` snapshot that publishers read with one atomic load.
//!
//! Policies are kept with the definitions and applied to them in `vhost/policies.rs`.

mod listing;
mod policies;

pub use listing::{properties_key, BindingInfo, ExchangeInfo, QueueInfo, QueuePage};
pub use policies::PolicyNames;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use arc_swap::{ArcSwap, Guard};
use warren_protocol::{FieldTable, ProtocolError, ShortString};

use crate::args::{
    check_equivalent, check_flag, EXCHANGE_EQUIVALENCE_KEYS, QUEUE_EQUIVALENCE_KEYS,
};
use crate::delayed::DelayedHandle;
use crate::direct_reply::DirectReplies;
use crate::durable::definitions::{self as def_records, DefinitionOp};
use crate::exchange::headers::validate_binding_args;
use crate::exchange::{
    check_name, ExchangeDef, ExchangeKind, DEFAULT_EXCHANGE, STANDARD_EXCHANGES,
};
use crate::exchange::{consistent_hash, deduplication};
use crate::queue::settings::{QueueDefaults, QueueSettings};
use crate::queue::store::{QueueStore, StoreContext};
use crate::queue::{QueueCommand, QueueDef, QueueHandle, Startup};
use crate::routing::{Binding, BindingKey, Destination, ExchangeRoute, Matcher, RoutingTable};

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
    /// Bindings per part of the matcher they share (`Matcher::shared_part`): the matcher
    /// holds the part while any of them is bound.
    shared: HashMap<(Destination, ShortString), u32>,
    route: Arc<ExchangeRoute>,
    policies: policies::AppliedPolicies,
}

impl ExchangeEntry {
    fn new(def: ExchangeDef, delayed: Option<DelayedHandle>) -> Self {
        let route = Arc::new(ExchangeRoute {
            internal: def.internal,
            alternate: alternate_of(&def),
            matcher: Matcher::empty(def.kind, &def.arguments),
            counters: Default::default(),
            delayed,
        });
        ExchangeEntry {
            def,
            bindings: HashMap::new(),
            shared: HashMap::new(),
            route,
            policies: policies::AppliedPolicies::default(),
        }
    }

    /// Adds a binding and updates the matcher in place: every matcher is a persistent map,
    /// so a change costs O(log n), not O(bindings). False if it was already bound.
    fn add(&mut self, key: BindingKey, b: Binding) -> bool {
        if self.bindings.contains_key(&key) {
            return false;
        }
        let first = match Matcher::shared_part(self.def.routing_kind(), &key) {
            Some(part) => {
                let count = self.shared.entry(part).or_insert(0);
                *count += 1;
                *count == 1
            }
            None => true,
        };
        if first {
            // The snapshot shares the route: this clones it (O(1): persistent maps).
            Arc::make_mut(&mut self.route)
                .matcher
                .add(&key, &b.arguments);
        }
        self.bindings.insert(key, b);
        true
    }

    /// Removes one binding by identity; true if it was there.
    fn remove(&mut self, key: &BindingKey) -> bool {
        if self.bindings.remove(key).is_none() {
            return false;
        }
        let last = match Matcher::shared_part(self.def.routing_kind(), key) {
            Some(part) => {
                let left = match self.shared.get_mut(&part) {
                    Some(n) => {
                        *n = n.saturating_sub(1);
                        *n
                    }
                    None => 0,
                };
                if left == 0 {
                    self.shared.remove(&part);
                }
                left == 0
            }
            None => true,
        };
        if last {
            Arc::make_mut(&mut self.route).matcher.remove(key);
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
        // A name over 255 bytes names no exchange (and `ShortString::from` would panic).
        .and_then(|name| ShortString::try_new(name).ok())
}

fn default_exchange_refused() -> ProtocolError {
    ProtocolError::access_refused("operation not permitted on the default exchange")
}

struct QueueEntry {
    def: QueueDef,
    handle: QueueHandle,
    /// Its definition is in the definitions log and its persistent messages in a log.
    persisted: bool,
    policies: policies::AppliedPolicies,
    /// The settings its actor was last given (arguments resolved against `policies`).
    settings: QueueSettings,
}

/// What a vhost needs to keep durable things durable.
pub struct Persistence {
    pub store: StoreContext,
    pub definitions: Mutex<warren_store::DefinitionsLog>,
    /// The definitions log's sequence number known to be fsynced (group commit).
    pub synced: Mutex<u64>,
    /// Every vhost writing to the log, to compact it while the broker runs.
    pub vhosts: Mutex<Vec<Weak<VHost>>>,
    /// Records the last compaction wrote (the live definitions then).
    pub live_records: AtomicU64,
    /// The log is compacted once it holds at least this many records
    /// (`DEFINITIONS_COMPACT_RECORDS_MIN`; tests lower it) and `DEFINITIONS_COMPACT_GROWTH`
    /// times what the last compaction wrote.
    pub compact_records_min: u64,
    /// The broker's access state (users, vhosts, permissions), written out by compaction
    /// with the vhosts' definitions. Swapped only under the log's lock (`append_and`).
    pub access: Arc<ArcSwap<crate::access::AccessState>>,
}

/// Below this many records the definitions log is not compacted while the broker runs (it
/// is at every start).
pub const DEFINITIONS_COMPACT_RECORDS_MIN: u64 = 10_000;
/// The definitions log is compacted when it holds this many times the records the last
/// compaction wrote: a rewrite of n live records then follows at least n changes, so
/// compaction costs O(1) per change, and a broker that churns durable queues for months no
/// longer grows the file until it restarts.
pub const DEFINITIONS_COMPACT_GROWTH: u64 = 2;

/// A binding seen from its destination: (source exchange, routing key, encoded arguments).
type BindingFrom = (ShortString, ShortString, Vec<u8>);

/// A vhost's definitions and the routing snapshot built from them. Every change goes through
/// the methods below, which keep the indexes and the snapshot's maps in step, so no change
/// costs more than the entries it adds or removes: nothing here scans every queue, exchange
/// or binding (issue 9: declare and delete slowed down linearly with the number of queues).
#[derive(Default)]
struct Definitions {
    exchanges: HashMap<ShortString, ExchangeEntry>,
    queues: HashMap<ShortString, QueueEntry>,
    /// Every binding by its destination, so a queue or exchange going away finds its
    /// bindings without looking at every exchange's.
    bindings_to: HashMap<Destination, HashSet<BindingFrom>>,
    /// Exclusive queues by owning connection, for `connection_closed`.
    exclusive: HashMap<u64, HashSet<ShortString>>,
    policies: policies::Policies,
    /// The routing snapshot being built: persistent maps, so publishing a copy is O(1).
    table: RoutingTable,
    /// Entries visited by changes so far: every loop in a change counts what it visits, so
    /// a test can check that a declare or delete does not depend on how many queues exist.
    visited: u64,
    /// queue.declare / created / deleted counts (`/metrics`); kept here because every one
    /// happens under this lock already.
    queue_churn: QueueChurn,
}

/// How many queues a vhost (or the broker) has seen declared, created and deleted since
/// start: RabbitMQ's `queues_declared_total`, `queues_created_total`, `queues_deleted_total`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueChurn {
    /// Successful non-passive queue.declare, of a new or an existing queue.
    pub declared: u64,
    /// Queues a declare created (recovered queues are not counted).
    pub created: u64,
    pub deleted: u64,
    /// Messages the deleted queues had enqueued (their `publish` when deleted), so that
    /// a node-wide sum of queues' publish counts never goes down.
    pub published_by_deleted_queues: u64,
}

impl QueueChurn {
    pub fn add(&mut self, o: &QueueChurn) {
        self.declared += o.declared;
        self.created += o.created;
        self.deleted += o.deleted;
        self.published_by_deleted_queues += o.published_by_deleted_queues;
    }
}

/// The source exchanges of the bindings to each destination (built at start-up from the
/// recovered bindings, before they are put back).
pub(crate) type Upstream = HashMap<Destination, Vec<ShortString>>;

/// Every exchange from which `to` can be reached through bindings (not `to` itself).
fn upstream_of(upstream: &Upstream, to: Destination) -> Vec<ShortString> {
    let mut seen: HashSet<ShortString> = HashSet::new();
    let mut found = Vec::new();
    let mut next = vec![to];
    while let Some(destination) = next.pop() {
        for source in upstream.get(&destination).into_iter().flatten() {
            if seen.insert(source.clone()) {
                found.push(source.clone());
                next.push(Destination::Exchange(source.clone()));
            }
        }
    }
    found
}

impl Definitions {
    fn insert_exchange(&mut self, def: ExchangeDef, delayed: Option<DelayedHandle>) {
        let mut entry = ExchangeEntry::new(def, delayed);
        self.apply_exchange_policies(&mut entry);
        self.table
            .exchanges
            .insert(entry.def.name.clone(), entry.route.clone());
        if let Some(old) = self.exchanges.insert(entry.def.name.clone(), entry) {
            self.unindex_bindings_from(&old);
        }
    }

    /// Adds to the caches of durable deduplication exchanges the keys of recovered messages
    /// published through them: a message whose fsync covered it while its key's did not
    /// (a crash between the two) must still count as seen, or its publisher's retry (it got
    /// no confirm) would be a second copy. A message's log names only the exchange it was
    /// published to, so the caches are those of the durable deduplication exchanges that
    /// lie, by the recovered bindings (`upstream`), between that exchange (itself included)
    /// and `queue`.
    fn remember_dedup_keys(
        &self,
        queue: &ShortString,
        upstream: &Upstream,
        store: &mut QueueStore,
        recovered: &[crate::queue::ready::Entry],
    ) {
        if recovered.is_empty()
            || !self
                .exchanges
                .values()
                .any(|e| e.def.kind == ExchangeKind::Deduplication && e.def.durable)
        {
            return;
        }
        // The caches to fill, by the exchange a message was published to.
        let mut caches: HashMap<ShortString, Vec<Arc<deduplication::DedupCache>>> = HashMap::new();
        for dedup in upstream_of(upstream, Destination::Queue(queue.clone())) {
            let Some(cache) = self
                .exchanges
                .get(dedup.as_str())
                .filter(|e| e.def.durable)
                .and_then(|e| e.route.matcher.dedup_cache())
            else {
                continue;
            };
            let sources = upstream_of(upstream, Destination::Exchange(dedup.clone()));
            for source in std::iter::once(dedup).chain(sources) {
                caches.entry(source).or_default().push(cache.clone());
            }
        }
        if caches.is_empty() {
            return;
        }
        for entry in recovered {
            let message = match (&entry.message, entry.location) {
                (Some(m), _) => Some(m.clone()),
                (None, Some(at)) => store.load(at),
                (None, None) => None,
            };
            let Some(message) = message else { continue };
            for cache in caches.get(&message.exchange).into_iter().flatten() {
                cache.remember(message.properties.headers().as_ref());
            }
        }
    }

    /// Gives a deduplication exchange its (durable) cache.
    fn set_dedup_cache(&mut self, name: &str, cache: Arc<deduplication::DedupCache>) {
        let Some(entry) = self.exchanges.get_mut(name) else {
            return;
        };
        if let Matcher::Deduplication(_, current) = &mut Arc::make_mut(&mut entry.route).matcher {
            *current = cache;
        }
        self.table
            .exchanges
            .insert(entry.def.name.clone(), entry.route.clone());
    }

    /// Removes an exchange and its bindings as source (not those to it: `remove_bindings_to`).
    fn remove_exchange(&mut self, name: &str) -> Option<ExchangeEntry> {
        let entry = self.exchanges.remove(name)?;
        if let Some(cache) = entry.route.matcher.dedup_cache() {
            cache.destroy();
        }
        self.table.exchanges.remove(name);
        self.unindex_bindings_from(&entry);
        Some(entry)
    }

    fn unindex_bindings_from(&mut self, entry: &ExchangeEntry) {
        for (destination, routing_key, args) in entry.bindings.keys() {
            self.visited += 1;
            let from = (entry.def.name.clone(), routing_key.clone(), args.clone());
            self.unindex(destination, &from);
        }
    }

    fn unindex(&mut self, destination: &Destination, from: &BindingFrom) {
        if let Some(set) = self.bindings_to.get_mut(destination) {
            set.remove(from);
            if set.is_empty() {
                self.bindings_to.remove(destination);
            }
        }
    }

    fn insert_queue(&mut self, entry: QueueEntry) {
        let name = entry.def.name.clone();
        self.table.queues.insert(name.clone(), entry.handle.clone());
        if let Some(owner) = entry.def.exclusive_owner {
            self.exclusive
                .entry(owner)
                .or_default()
                .insert(name.clone());
        }
        self.queues.insert(name, entry);
    }

    fn remove_queue(&mut self, name: &str) -> Option<QueueEntry> {
        let entry = self.queues.remove(name)?;
        self.queue_churn.deleted += 1;
        self.queue_churn.published_by_deleted_queues += entry.handle.metrics().publish;
        self.table.queues.remove(name);
        if let Some(owner) = entry.def.exclusive_owner {
            if let Some(owned) = self.exclusive.get_mut(&owner) {
                owned.remove(name);
                if owned.is_empty() {
                    self.exclusive.remove(&owner);
                }
            }
        }
        Some(entry)
    }

    /// Adds a binding from `source` (which must exist); false if it was already there.
    fn add_binding(&mut self, source: &str, binding: Binding) -> bool {
        let Some(entry) = self.exchanges.get_mut(source) else {
            return false;
        };
        let key = binding_key(&binding);
        let from = (entry.def.name.clone(), key.1.clone(), key.2.clone());
        let destination = key.0.clone();
        if !entry.add(key, binding) {
            return false;
        }
        let route = entry.route.clone();
        self.table.exchanges.insert(from.0.clone(), route);
        self.bindings_to
            .entry(destination)
            .or_default()
            .insert(from);
        true
    }

    /// Removes a binding from `source`; true if it was there.
    fn remove_binding(&mut self, source: &str, key: &BindingKey) -> bool {
        let Some(entry) = self.exchanges.get_mut(source) else {
            return false;
        };
        if !entry.remove(key) {
            return false;
        }
        let name = entry.def.name.clone();
        let route = entry.route.clone();
        self.table.exchanges.insert(name.clone(), route);
        self.unindex(&key.0, &(name, key.1.clone(), key.2.clone()));
        true
    }

    /// Removes every binding to `destination`; returns the sources left without bindings.
    fn remove_bindings_to(&mut self, destination: &Destination) -> Vec<ShortString> {
        let Some(from) = self.bindings_to.remove(destination) else {
            return Vec::new();
        };
        let mut sources: HashSet<ShortString> = HashSet::new();
        for (source, routing_key, args) in from {
            self.visited += 1;
            let key = (destination.clone(), routing_key, args);
            if let Some(entry) = self.exchanges.get_mut(source.as_str()) {
                entry.remove(&key);
                sources.insert(source);
            }
        }
        let mut emptied = Vec::new();
        for source in sources {
            self.visited += 1;
            if let Some(entry) = self.exchanges.get(source.as_str()) {
                self.table
                    .exchanges
                    .insert(source.clone(), entry.route.clone());
                if entry.bindings.is_empty() {
                    emptied.push(source);
                }
            }
        }
        emptied
    }

    fn is_bound_as_destination(&self, destination: &Destination) -> bool {
        self.bindings_to.contains_key(destination)
    }
}

pub struct VHost {
    name: String,
    defs: Mutex<Definitions>,
    routing: ArcSwap<RoutingTable>,
    queue_defaults: QueueDefaults,
    pub direct_replies: Arc<DirectReplies>,
    persistence: Option<Arc<Persistence>>,
    me: Weak<VHost>,
    /// Set (under the definitions lock) when the vhost is deleted: nothing more is declared
    /// or logged in it, and compaction leaves it out.
    deleted: AtomicBool,
    /// Set while start-up restores the vhost (`begin_restore` … `restore_done`): its routing
    /// snapshot is not complete yet, so delayed exchanges wait before routing due messages.
    restoring: AtomicBool,
    /// The vhost's `max-queues` limit (u64::MAX: none).
    max_queues: AtomicU64,
    /// Firehose tracing is on (`crate::firehose`): read once per publish and per delivery.
    /// Not persisted, as in RabbitMQ.
    tracing: AtomicBool,
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
                defs.insert_exchange(
                    ExchangeDef {
                        name: ShortString::from(*x),
                        kind: *kind,
                        durable: true,
                        auto_delete: false,
                        // `amq.rabbitmq.trace` is internal, as in RabbitMQ.
                        internal: *x == crate::firehose::TRACE_EXCHANGE,
                        arguments: FieldTable::default(),
                    },
                    None,
                );
            }
            if let Some(p) = &persistence {
                let mut vhosts = p.vhosts.lock().unwrap_or_else(|e| e.into_inner());
                vhosts.push(me.clone());
            }
            let vhost = VHost {
                name,
                defs: Mutex::new(defs),
                routing: ArcSwap::from_pointee(RoutingTable::default()),
                queue_defaults,
                direct_replies: Arc::new(DirectReplies::default()),
                persistence,
                me: me.clone(),
                deleted: AtomicBool::new(false),
                restoring: AtomicBool::new(false),
                max_queues: AtomicU64::new(u64::MAX),
                tracing: AtomicBool::new(false),
            };
            vhost.publish(&mut vhost.lock());
            vhost
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Applies the vhost's limits (those the vhost itself enforces: `max-queues`).
    pub fn set_limits(&self, limits: crate::access::VHostLimits) {
        self.max_queues
            .store(limits.max_queues.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Whether firehose tracing is on (one relaxed load: the publish path's only cost).
    #[inline]
    pub fn tracing(&self) -> bool {
        self.tracing.load(Ordering::Relaxed)
    }

    /// Turns firehose tracing on or off; open connections see it at their next publish.
    pub fn set_tracing(&self, on: bool) {
        self.tracing.store(on, Ordering::Relaxed);
    }

    /// Whether the vhost was deleted (connections still holding it get 320 soon).
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    fn check_live(&self) -> Result<(), ProtocolError> {
        match self.is_deleted() {
            true => Err(ProtocolError::connection_forced(format!(
                "vhost '{}' is down",
                self.name
            ))),
            false => Ok(()),
        }
    }

    /// Deletes the vhost's definitions: marks it deleted, appends `record` (the broker's
    /// record of the deletion) and runs `publish` under the log's lock, so compaction sees
    /// either the vhost or its deletion, never both or neither. Returns its queues, for the
    /// caller to stop (which deletes their files). Durable after `sync_persistence`.
    pub(crate) fn retire(
        &self,
        record: &[u8],
        publish: impl FnOnce(),
    ) -> Result<Vec<QueueHandle>, ProtocolError> {
        let mut defs = self.lock();
        match &self.persistence {
            Some(p) => Self::append_and(p, record, publish)?,
            None => publish(),
        }
        self.deleted.store(true, Ordering::Release);
        let queues = defs.queues.values().map(|q| q.handle.clone()).collect();
        // Deduplication caches go with their exchanges (and their files with them), and
        // delayed exchanges' actors with their schedules.
        for entry in defs.exchanges.values() {
            if let Some(cache) = entry.route.matcher.dedup_cache() {
                cache.destroy();
            }
            if let Some(delayed) = &entry.route.delayed {
                delayed.delete();
            }
        }
        *defs = Definitions::default();
        self.publish(&mut defs);
        Ok(queues)
    }

    /// Appends a broker-level record (access state) and runs `publish` while holding the
    /// log's lock. Not yet fsynced: follow with `sync_persistence`.
    pub(crate) fn append_and(
        p: &Persistence,
        record: &[u8],
        publish: impl FnOnce(),
    ) -> Result<(), ProtocolError> {
        let mut log = p.definitions.lock().unwrap_or_else(|e| e.into_inner());
        log.append_unsynced(record).map_err(|e| {
            tracing::error!(error = %e, "cannot write the definitions log");
            ProtocolError::internal_error(format!("cannot store the definition: {e}"))
        })?;
        publish();
        Ok(())
    }

    /// Makes everything appended to the definitions log durable (group commit), then
    /// compacts it if due.
    pub(crate) fn sync_persistence(p: &Persistence) -> Result<(), ProtocolError> {
        let synced = Self::sync_log(p);
        if synced.is_ok() {
            Self::compact_if_due(p);
        }
        synced
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

    /// Publishes a new routing snapshot: every change already updated the snapshot's
    /// persistent maps (`Definitions`), so this is an O(1) clone and an atomic swap.
    fn publish(&self, defs: &mut Definitions) {
        self.routing.store(Arc::new(defs.table.clone()));
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
        self.check_live()?;
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
        Self::sync_persistence(p)
    }

    fn sync_log(p: &Persistence) -> Result<(), ProtocolError> {
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

    /// Compacts the definitions log once it holds `DEFINITIONS_COMPACT_GROWTH` times the
    /// records the last compaction wrote. Lock order: every vhost's definitions (in the
    /// order they registered; nothing else holds two), then the log; called with no lock
    /// held. With every definitions lock held, each record in the log belongs to a change
    /// already applied, so the snapshot covers it.
    fn compact_if_due(p: &Persistence) {
        let due = |records: u64| {
            records >= p.compact_records_min
                && records
                    >= p.live_records
                        .load(Ordering::Relaxed)
                        .saturating_mul(DEFINITIONS_COMPACT_GROWTH)
        };
        let log = || p.definitions.lock().unwrap_or_else(|e| e.into_inner());
        if !due(log().records()) {
            return;
        }
        let vhosts: Vec<Arc<VHost>> = p
            .vhosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let guards: Vec<MutexGuard<'_, Definitions>> = vhosts.iter().map(|v| v.lock()).collect();
        let mut log = log();
        if !due(log.records()) {
            return; // another change compacted it meanwhile
        }
        // Under the log's lock: access changes publish their state under it too.
        let mut records = Self::access_records(p);
        for (vhost, defs) in vhosts.iter().zip(&guards) {
            if vhost.is_deleted() {
                continue;
            }
            for op in Self::ops_of(defs) {
                records.push(def_records::encode(&vhost.name, &op));
            }
        }
        match log.compact(&records) {
            Ok(()) => {
                p.live_records
                    .store(records.len() as u64, Ordering::Relaxed);
                tracing::info!(records = records.len(), "definitions log compacted");
            }
            Err(e) => tracing::warn!(error = %e, "cannot compact the definitions log"),
        }
    }

    /// The records of the broker's access state (first in a compacted log: vhosts' own
    /// records replay after the vhost's).
    pub(crate) fn access_records(p: &Persistence) -> Vec<bytes::Bytes> {
        crate::durable::access::AccessOp::snapshot(&p.access.load())
            .iter()
            .map(crate::durable::access::encode)
            .collect()
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
        if def.kind == ExchangeKind::ConsistentHash {
            consistent_hash::validate_exchange_args(&def.arguments)
                .map_err(ProtocolError::precondition_failed)?;
        }
        if def.kind == ExchangeKind::Delayed {
            crate::delayed::validate_exchange_args(&def.arguments)?;
        }
        let dedup = self.dedup_cache_for(&def, true)?;
        if def.durable {
            self.log_op(DefinitionOp::ExchangeDeclared(def.clone()))?;
        }
        let name = def.name.clone();
        let delayed = self.delayed_actor(&def);
        defs.insert_exchange(def, delayed);
        if let Some(cache) = dedup {
            defs.set_dedup_cache(name.as_str(), cache);
        }
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
        let bound_as_destination = defs.is_bound_as_destination(&dest);
        if if_unused && (!entry.bindings.is_empty() || bound_as_destination) {
            return Err(ProtocolError::precondition_failed(format!(
                "{} in use",
                self.exchange_what(name)
            )));
        }
        if entry.def.durable {
            self.log_op(DefinitionOp::ExchangeDeleted(ShortString::from(name)))?;
        }
        if let Some(entry) = defs.remove_exchange(name) {
            if let Some(delayed) = &entry.route.delayed {
                delayed.delete();
            }
        }
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
            let handle = existing.handle.clone();
            defs.queue_churn.declared += 1;
            return Ok(handle);
        }
        self.check_live()?;
        let max_queues = self.max_queues.load(Ordering::Relaxed);
        if defs.queues.len() as u64 >= max_queues {
            return Err(ProtocolError::precondition_failed(format!(
                "cannot declare queue '{name}': queue limit in vhost '{}' ({max_queues}) is reached",
                self.name
            )));
        }
        let (settings, policies) = defs.resolve_queue(&def, &self.queue_what(&name))?;
        // Server-named and exclusive queues never survive a restart.
        let persisted = def.durable && def.exclusive_owner.is_none() && !server_named;
        let startup = self.startup_for(&def, persisted)?;
        if persisted {
            self.log_op(DefinitionOp::QueueDeclared(def.clone()))?;
        }
        let handle = QueueHandle::spawn(
            def.clone(),
            settings.clone(),
            &self.queue_defaults,
            self.me.clone(),
            startup,
        );
        defs.insert_queue(QueueEntry {
            def,
            handle: handle.clone(),
            persisted,
            policies,
            settings,
        });
        defs.queue_churn.declared += 1;
        defs.queue_churn.created += 1;
        self.publish(&mut defs);
        Ok(handle)
    }

    /// Queues declared, created and deleted in this vhost since start (one short lock).
    pub fn queue_churn(&self) -> QueueChurn {
        self.lock().queue_churn
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
        if let Some(entry) = defs.remove_queue(name.as_str()) {
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
        let owned: Vec<QueueHandle> = {
            let mut defs = self.lock();
            let names: Vec<ShortString> = defs
                .exclusive
                .get(&connection)
                .map(|owned| owned.iter().cloned().collect())
                .unwrap_or_default();
            defs.visited += names.len() as u64;
            names
                .iter()
                .filter_map(|name| defs.queues.get(name.as_str()))
                .map(|q| q.handle.clone())
                .collect()
        };
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
        if entry.def.routing_kind() == ExchangeKind::Headers {
            validate_binding_args(&arguments).map_err(ProtocolError::precondition_failed)?;
        }
        let weight = match entry.def.routing_kind() {
            ExchangeKind::ConsistentHash => Some(
                consistent_hash::parse_weight(routing_key.as_str())
                    .map_err(ProtocolError::precondition_failed)?,
            ),
            _ => None,
        };
        let binding = Binding {
            destination,
            routing_key,
            arguments,
        };
        if entry.bindings.contains_key(&binding_key(&binding)) {
            return Ok(());
        }
        if let (Some(weight), Matcher::ConsistentHash(ring)) = (weight, &entry.route.matcher) {
            if !ring.has_room_for(weight) {
                return Err(ProtocolError::precondition_failed(format!(
                    "{} would hold more than {} ring points (weight {weight} refused)",
                    self.exchange_what(source),
                    consistent_hash::RING_POINTS_MAX
                )));
            }
        }
        if durable {
            self.log_op(DefinitionOp::Bound {
                source: ShortString::from(source),
                destination: binding.destination.clone(),
                routing_key: binding.routing_key.clone(),
                arguments: binding.arguments.clone(),
            })?;
        }
        defs.add_binding(source, binding);
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
        let key = binding_key(&target);
        let bound = entry.bindings.contains_key(&key);
        if durable && bound {
            self.log_op(DefinitionOp::Unbound {
                source: ShortString::from(source),
                destination: destination.clone(),
                routing_key: ShortString::from(routing_key),
                arguments: arguments.clone(),
            })?;
        }
        if defs.remove_binding(source, &key) {
            let empty = defs
                .exchanges
                .get(source)
                .is_some_and(|e| e.bindings.is_empty() && e.def.auto_delete);
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

    /// Removes every binding to `dest`; auto-delete exchanges left without bindings go too.
    fn remove_bindings_to(&self, defs: &mut Definitions, dest: &Destination) {
        for name in defs.remove_bindings_to(dest) {
            let auto_delete = defs
                .exchanges
                .get(name.as_str())
                .is_some_and(|e| e.def.auto_delete);
            if auto_delete {
                self.auto_delete_exchange(defs, name.as_str());
            }
        }
    }

    /// An auto-delete exchange goes when its last binding (as source) does.
    fn auto_delete_exchange(&self, defs: &mut Definitions, name: &str) {
        if let Some(entry) = defs.remove_exchange(name) {
            if let Some(delayed) = &entry.route.delayed {
                delayed.delete();
            }
            if entry.def.durable {
                let _ = self.log_op(DefinitionOp::ExchangeDeleted(ShortString::from(name)));
            }
            self.remove_bindings_to(defs, &Destination::Exchange(ShortString::from(name)));
        }
    }

    // ---- restart ----

    /// Puts back a durable exchange read from the definitions log (not logged again).
    pub(crate) fn restore_exchange(&self, def: ExchangeDef) {
        let dedup = match self.dedup_cache_for(&def, false) {
            Ok(cache) => cache,
            Err(error) => {
                tracing::error!(exchange = def.name.as_str(), %error, "deduplication cache not recovered; it starts empty in memory");
                None
            }
        };
        let name = def.name.clone();
        let delayed = self.delayed_actor(&def);
        let mut defs = self.lock();
        defs.insert_exchange(def, delayed);
        if let Some(cache) = dedup {
            defs.set_dedup_cache(name.as_str(), cache);
        }
    }

    /// A durable deduplication exchange's cache, kept on disk (`fresh`: a new declare,
    /// which removes a file a deleted namesake left); None for other exchanges, which keep
    /// their matcher's (an in-memory cache for a transient deduplication exchange).
    /// Validates the arguments of a deduplication exchange (406).
    fn dedup_cache_for(
        &self,
        def: &ExchangeDef,
        fresh: bool,
    ) -> Result<Option<Arc<deduplication::DedupCache>>, ProtocolError> {
        if def.kind != ExchangeKind::Deduplication {
            return Ok(None);
        }
        let args = deduplication::validate_exchange_args(&def.arguments)
            .map_err(ProtocolError::precondition_failed)?;
        let (true, Some(persistence)) = (def.durable, self.persistence.as_ref()) else {
            return Ok(None);
        };
        let store = &persistence.store;
        let file = deduplication::CacheFile {
            path: store.dedup_file(&self.name, def.name.as_str()),
            io: store.io.clone(),
            sync_mode: store.sync_mode,
        };
        deduplication::DedupCache::durable(args, file, fresh)
            .map(Some)
            .map_err(|e| {
                ProtocolError::internal_error(format!("deduplication cache not opened: {e}"))
            })
    }

    /// Starts the actor of a delayed exchange (None for other types). Its schedule lives in
    /// `<data>/delayed/<hash>` (durable) or under the transient directory.
    fn delayed_actor(&self, def: &ExchangeDef) -> Option<DelayedHandle> {
        if def.kind != ExchangeKind::Delayed {
            return None;
        }
        static NEXT_TRANSIENT: AtomicU64 = AtomicU64::new(0);
        let name = crate::delayed::schedule_dir_name(&self.name, &def.name);
        let store = match &self.persistence {
            Some(p) => crate::delayed::ScheduleStore {
                dir: Some(match def.durable {
                    true => p.store.data_dir.join("delayed").join(name),
                    false => p.store.transient_dir().join("delayed").join(format!(
                        "{name}-{}",
                        NEXT_TRANSIENT.fetch_add(1, Ordering::Relaxed)
                    )),
                }),
                io: p.store.io.clone(),
                sync_persistent: def.durable && p.store.sync_mode == warren_store::SyncMode::Always,
                durable: def.durable,
            },
            None => crate::delayed::ScheduleStore {
                dir: None,
                io: warren_store::RealIo::shared(),
                sync_persistent: false,
                durable: false,
            },
        };
        Some(DelayedHandle::spawn(
            def.name.clone(),
            self.me.clone(),
            store,
        ))
    }

    /// Puts back a durable queue with its log and the messages recovered from it.
    pub(crate) fn restore_queue(
        &self,
        def: QueueDef,
        mut store: QueueStore,
        recovered: Vec<crate::queue::ready::Entry>,
        upstream: &Upstream,
    ) -> Result<(), ProtocolError> {
        let mut defs = self.lock();
        defs.remember_dedup_keys(&def.name, upstream, &mut store, &recovered);
        let (settings, policies) = defs.resolve_queue(&def, &self.queue_what(def.name.as_str()))?;
        let startup = Startup {
            store: Some(store),
            store_context: self.persistence.as_ref().map(|p| p.store.clone()),
            recovered,
        };
        let handle = QueueHandle::spawn(
            def.clone(),
            settings.clone(),
            &self.queue_defaults,
            self.me.clone(),
            startup,
        );
        defs.insert_queue(QueueEntry {
            def,
            handle,
            persisted: true,
            policies,
            settings,
        });
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
        if ends_exist {
            defs.add_binding(source, binding);
        }
    }

    /// Publishes the routing snapshot after a restore.
    pub(crate) fn restore_done(&self) {
        let mut defs = self.lock();
        self.publish(&mut defs);
        self.restoring.store(false, Ordering::Release);
    }

    /// Start-up is about to restore this vhost (see `restoring`).
    pub(crate) fn begin_restore(&self) {
        self.restoring.store(true, Ordering::Release);
    }

    /// Whether start-up is still restoring this vhost's exchanges, queues and bindings.
    pub fn is_restoring(&self) -> bool {
        self.restoring.load(Ordering::Acquire)
    }

    /// The durable definitions as a minimal list of operations (to compact the log).
    pub(crate) fn snapshot_ops(&self) -> Vec<DefinitionOp> {
        Self::ops_of(&self.lock())
    }

    /// What a definitions export lists: exchanges other than the standard ones, queues that
    /// are not exclusive, and bindings from a named exchange (as RabbitMQ exports them).
    pub fn exportable(&self) -> (Vec<ExchangeDef>, Vec<QueueDef>, Vec<(ShortString, Binding)>) {
        let defs = self.lock();
        let exchanges = defs
            .exchanges
            .values()
            .filter(|e| !e.def.name.as_str().is_empty() && !e.def.name.as_str().starts_with("amq."))
            .map(|e| e.def.clone())
            .collect();
        let queues = defs
            .queues
            .values()
            .filter(|q| q.def.exclusive_owner.is_none())
            .map(|q| q.def.clone())
            .collect();
        let mut bindings = Vec::new();
        for (name, e) in &defs.exchanges {
            if name.as_str().is_empty() {
                continue;
            }
            for b in e.bindings.values() {
                let exclusive = matches!(&b.destination, Destination::Queue(q)
                    if defs.queues.get(q.as_str()).is_some_and(|q| q.def.exclusive_owner.is_some()));
                if !exclusive {
                    bindings.push((name.clone(), b.clone()));
                }
            }
        }
        (exchanges, queues, bindings)
    }

    fn ops_of(defs: &Definitions) -> Vec<DefinitionOp> {
        let mut ops: Vec<DefinitionOp> = defs.policies.ops().collect();
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
                if Self::binding_is_durable(defs, name.as_str(), &b.destination) {
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

    /// Checks that an exchange may be published to: exists and is not internal. Returns a
    /// delayed exchange's actor (None for every other exchange).
    pub fn check_publish_target(
        routing: &RoutingTable,
        vhost: &str,
        exchange: &str,
    ) -> Result<Option<DelayedHandle>, ProtocolError> {
        if exchange == DEFAULT_EXCHANGE {
            return Ok(None);
        }
        match routing.exchanges.get(exchange) {
            None => Err(ProtocolError::not_found(format!(
                "no exchange '{exchange}' in vhost '{vhost}'"
            ))),
            Some(x) if x.internal => Err(ProtocolError::access_refused(format!(
                "cannot publish to internal exchange '{exchange}' in vhost '{vhost}'"
            ))),
            Some(x) => Ok(x.delayed.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue_def(name: &str, exclusive_owner: Option<u64>) -> QueueDef {
        QueueDef {
            name: ShortString::from(name),
            durable: false,
            exclusive_owner,
            auto_delete: false,
            arguments: FieldTable::default(),
        }
    }

    fn exchange_def(name: &str, kind: ExchangeKind) -> ExchangeDef {
        ExchangeDef {
            name: ShortString::from(name),
            kind,
            durable: false,
            auto_delete: false,
            internal: false,
            arguments: FieldTable::default(),
        }
    }

    const OWNER: u64 = 7;
    const EXCHANGES: &[(&str, ExchangeKind)] = &[
        ("x.direct", ExchangeKind::Direct),
        ("x.fanout", ExchangeKind::Fanout),
        ("x.topic", ExchangeKind::Topic),
        ("x.headers", ExchangeKind::Headers),
    ];

    /// Declares a queue, binds it to one exchange of each type and to the next of them
    /// (`queue`, then `queue.next`).
    fn declare_bound(vhost: &VHost, name: &str, exclusive_owner: Option<u64>) {
        vhost
            .declare_queue(queue_def(name, exclusive_owner), false)
            .expect("declare");
        for (exchange, _) in EXCHANGES {
            for key in [name.to_owned(), format!("{name}.next")] {
                let destination = Destination::Queue(ShortString::from(name));
                vhost
                    .bind(
                        exchange,
                        destination,
                        ShortString::from(key.as_str()),
                        FieldTable::default(),
                        OWNER,
                    )
                    .expect("bind");
            }
        }
    }

    /// The entries visited by one declare (with its bindings), one delete and one connection
    /// close when `existing` queues, each bound to every exchange type and half of them
    /// exclusive to the same connection, are already there.
    async fn work_with(existing: usize) -> u64 {
        let vhost = VHost::new("/", QueueDefaults::default(), None);
        for (name, kind) in EXCHANGES {
            vhost
                .declare_exchange(exchange_def(name, *kind), false)
                .expect("declare exchange");
        }
        for i in 0..existing {
            let owner = (i % 2 == 0).then_some(OWNER);
            declare_bound(&vhost, &format!("q{i}"), owner);
        }
        let before = vhost.lock().visited;
        declare_bound(&vhost, "probe", None);
        vhost
            .delete_queue("probe", OWNER, false, false)
            .await
            .expect("delete");
        vhost.connection_closed(OWNER + 1).await;
        let after = vhost.lock().visited;
        assert_eq!(vhost.lock().queues.len(), existing);
        assert_eq!(vhost.routing().queues.len(), existing);
        after - before
    }

    /// Pins issue 9: every queue.declare and queue.delete got slower as queues accumulated
    /// (the snapshot was published by comparing every entry, a deleted queue's bindings were
    /// looked for in every exchange, fanout and headers matchers were rebuilt from all their
    /// bindings, a closing connection looked at every queue). The work of one declare and
    /// delete must not depend on how many queues exist.
    #[tokio::test]
    async fn declare_and_delete_do_not_depend_on_the_number_of_queues() {
        let few = work_with(4).await;
        let many = work_with(2_000).await;
        assert_eq!(few, many, "work per declare+delete grows with the queues");
    }

    /// Past `DEDUP_LINEAR_MAX` destinations routing dedups with a set of ids: every queue
    /// still comes out once, whichever keys and exchanges reach it.
    #[tokio::test]
    async fn a_route_to_many_queues_reports_each_once() {
        let vhost = VHost::new("/", QueueDefaults::default(), None);
        for (name, kind) in EXCHANGES {
            vhost
                .declare_exchange(exchange_def(name, *kind), false)
                .expect("declare exchange");
        }
        vhost
            .bind(
                "x.direct",
                Destination::Exchange(ShortString::from("x.fanout")),
                ShortString::from("q0"),
                FieldTable::default(),
                OWNER,
            )
            .expect("exchange binding");
        const QUEUES: usize = 100;
        for i in 0..QUEUES {
            declare_bound(&vhost, &format!("q{i}"), None);
        }
        let mut out = Vec::new();
        vhost
            .routing()
            .route("x.direct", &["q0", "q0.next", "q1"], None, &mut out);
        assert_eq!(out.len(), QUEUES);
        let ids: HashSet<u64> = out.iter().map(QueueHandle::id).collect();
        assert_eq!(ids.len(), QUEUES);
    }

    /// Pins the definitions log's growth: it was compacted only at start-up, so a broker
    /// churning durable queues grew the file until it restarted.
    #[tokio::test]
    async fn the_definitions_log_is_compacted_while_the_broker_runs() {
        const COMPACT_MIN: u64 = 8;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(crate::recovery::DEFINITIONS_FILE);
        let io = warren_store::RealIo::shared();
        let (log, _) = warren_store::DefinitionsLog::open(&path, io.clone()).expect("log");
        let persistence = Arc::new(Persistence {
            store: StoreContext {
                data_dir: dir.path().to_path_buf(),
                io: io.clone(),
                sync_mode: warren_store::SyncMode::None,
            },
            definitions: Mutex::new(log),
            synced: Mutex::new(0),
            vhosts: Mutex::new(Vec::new()),
            live_records: AtomicU64::new(0),
            compact_records_min: COMPACT_MIN,
            access: Default::default(),
        });
        let vhost = VHost::new("/", QueueDefaults::default(), Some(persistence.clone()));
        let durable = |name: &str| QueueDef {
            durable: true,
            ..queue_def(name, None)
        };
        vhost
            .declare_queue(durable("kept"), false)
            .expect("declare");
        for i in 0..50 {
            let name = format!("churned-{i}");
            vhost.declare_queue(durable(&name), false).expect("declare");
            vhost
                .delete_queue(&name, OWNER, false, false)
                .await
                .expect("delete");
        }
        let records = persistence
            .definitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .records();
        assert!(records <= COMPACT_MIN, "{records} records for 1 live queue");
        let (_, found) = warren_store::DefinitionsLog::open(&path, io).expect("reopen");
        let mut queues = HashSet::new();
        for record in &found {
            match def_records::decode(record).expect("decode").1 {
                DefinitionOp::QueueDeclared(def) => queues.insert(def.name),
                DefinitionOp::QueueDeleted(name) => queues.remove(&name),
                other => panic!("unexpected {other:?}"),
            };
        }
        assert_eq!(queues, HashSet::from([ShortString::from("kept")]));
    }

    /// The reverse binding index and the exclusive index follow every change.
    #[tokio::test]
    async fn indexes_follow_deletes() {
        let vhost = VHost::new("/", QueueDefaults::default(), None);
        for (name, kind) in EXCHANGES {
            vhost
                .declare_exchange(exchange_def(name, *kind), false)
                .expect("declare exchange");
        }
        declare_bound(&vhost, "a", Some(OWNER));
        declare_bound(&vhost, "b", None);
        let headers = FieldTable::default();
        let mut out = Vec::new();
        vhost
            .routing()
            .route("x.fanout", &["k"], Some(&headers), &mut out);
        assert_eq!(out.len(), 2);
        vhost.delete_exchange("x.fanout", false).expect("delete");
        vhost.connection_closed(OWNER).await;
        let defs = vhost.lock();
        assert!(defs.exclusive.is_empty());
        assert_eq!(defs.queues.len(), 1);
        // "b" stays bound to the three exchanges left, with two keys each.
        let to_b = &defs.bindings_to[&Destination::Queue(ShortString::from("b"))];
        assert_eq!(to_b.len(), 6);
        assert_eq!(defs.bindings_to.len(), 1);
        drop(defs);
        out.clear();
        vhost
            .routing()
            .route("x.headers", &["k"], Some(&headers), &mut out);
        assert_eq!(out.len(), 1);
        assert!(out[0].name().as_str() == "b");
        out.clear();
        vhost.routing().route("x.topic", &["a"], None, &mut out);
        assert!(out.is_empty());
    }
}
