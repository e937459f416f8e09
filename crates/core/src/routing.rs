//! The routing snapshot: an immutable picture of a vhost's exchanges, bindings and queues,
//! published through an `ArcSwap` whenever a definition changes. The publish path loads the
//! current snapshot (one atomic load, no lock) and walks it.
//!
//! Routing follows exchange-to-exchange bindings breadth-first with a visited set, so cycles
//! terminate, and reports each queue once however many bindings match.

use std::cell::RefCell;
use std::sync::Arc;

use warren_protocol::basic::AMQPProperties;
use warren_protocol::{FieldTable, ShortString};

use crate::confirm::ConfirmShare;
use crate::delayed::DelayedHandle;
use crate::exchange::consistent_hash::{HashOn, HashRing};
use crate::exchange::deduplication::{self, DedupCache};
use crate::exchange::filter::{is_filter_binding, Filter, FilterSet};
use crate::exchange::headers::headers_match;
use crate::exchange::topic::TopicTrie;
use crate::exchange::{ExchangeKind, DEFAULT_EXCHANGE};
use crate::exchange_counters::ExchangeCounters;
use crate::queue::QueueHandle;

/// Where a binding leads.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    Queue(ShortString),
    Exchange(ShortString),
}

/// A binding's identity: destination, routing key and (encoded) arguments.
pub type BindingKey = (Destination, ShortString, Vec<u8>);

/// One exchange's bindings, in the form its type matches fastest. Every form is a persistent
/// map: cloned in O(1) (the routing snapshot shares it) and changed in O(log n) when one
/// binding changes, so a binding change never costs O(bindings of the exchange).
#[derive(Clone, Debug)]
pub enum Matcher {
    Direct(imbl::HashMap<ShortString, Vec<Destination>>),
    /// Each destination once, whatever its bindings' keys.
    Fanout(imbl::HashSet<Destination>),
    Topic(TopicTrie<Destination>),
    /// One entry per binding: classic ones by identity → arguments, content filters
    /// (`x-match: filter`) compiled.
    Headers(HeadersBindings),
    /// Every binding's weight on a ring; one destination per message.
    ConsistentHash(HashRing),
    /// A fanout whose cache admits each deduplication key once (`exchange/deduplication.rs`).
    Deduplication(imbl::HashSet<Destination>, Arc<DedupCache>),
}

/// A headers exchange's bindings.
#[derive(Clone, Debug, Default)]
pub struct HeadersBindings {
    /// The `all`/`any`/`*-with-x` bindings: identity → arguments.
    pub classic: imbl::HashMap<BindingKey, FieldTable>,
    /// The `x-match: filter` bindings (`crate::exchange::filter`).
    pub filters: FilterSet<BindingKey>,
}

/// A binding as the definitions keep it.
#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    pub destination: Destination,
    pub routing_key: ShortString,
    pub arguments: FieldTable,
}

impl Matcher {
    /// A matcher without bindings for an exchange of `kind` declared with `arguments`.
    pub fn empty(kind: ExchangeKind, arguments: &FieldTable) -> Matcher {
        match kind {
            ExchangeKind::Direct => Matcher::Direct(imbl::HashMap::new()),
            ExchangeKind::Fanout => Matcher::Fanout(imbl::HashSet::new()),
            ExchangeKind::Topic => Matcher::Topic(TopicTrie::new()),
            ExchangeKind::Headers => Matcher::Headers(HeadersBindings::default()),
            ExchangeKind::ConsistentHash => {
                Matcher::ConsistentHash(HashRing::new(HashOn::of(arguments)))
            }
            ExchangeKind::Delayed => {
                Matcher::empty(crate::delayed::base_kind(arguments), arguments)
            }
            // An in-memory cache; the vhost swaps in a durable one for a durable exchange.
            // Arguments were validated at declare; definitions written elsewhere that fail
            // validation get the smallest cache rather than none.
            ExchangeKind::Deduplication => {
                let args = deduplication::validate_exchange_args(arguments).unwrap_or(
                    deduplication::CacheArgs {
                        size: 1,
                        ttl_ms: None,
                    },
                );
                Matcher::Deduplication(imbl::HashSet::new(), DedupCache::memory(args))
            }
        }
    }

    /// The deduplication cache of a deduplication exchange.
    pub fn dedup_cache(&self) -> Option<&Arc<DedupCache>> {
        match self {
            Matcher::Deduplication(_, cache) => Some(cache),
            _ => None,
        }
    }

    /// What the matcher holds once however many bindings share it: direct and topic
    /// matchers hold each (destination, routing key) pair once, fanout each destination
    /// once; headers and consistent-hash matchers hold every binding (`None`). `kind` is the
    /// routing kind (`ExchangeDef::routing_kind`).
    pub fn shared_part(kind: ExchangeKind, key: &BindingKey) -> Option<(Destination, ShortString)> {
        match kind {
            ExchangeKind::Direct | ExchangeKind::Topic => Some((key.0.clone(), key.1.clone())),
            ExchangeKind::Fanout | ExchangeKind::Deduplication => {
                Some((key.0.clone(), ShortString::from("")))
            }
            ExchangeKind::Headers | ExchangeKind::ConsistentHash | ExchangeKind::Delayed => None,
        }
    }

    /// Adds a binding (for direct, topic and fanout: the first one of its shared part).
    pub fn add(&mut self, key: &BindingKey, arguments: &FieldTable) {
        let (destination, routing_key) = (&key.0, &key.1);
        match self {
            Matcher::Direct(map) => {
                let dests = map.entry(routing_key.clone()).or_default();
                if !dests.contains(destination) {
                    dests.push(destination.clone());
                }
            }
            Matcher::Fanout(dests) | Matcher::Deduplication(dests, _) => {
                dests.insert(destination.clone());
            }
            Matcher::Topic(trie) => {
                trie.insert(routing_key.as_str(), destination.clone());
            }
            Matcher::Headers(bindings) if is_filter_binding(arguments) => {
                match Filter::from_binding_args(arguments) {
                    Ok(filter) => bindings.filters.insert(key.clone(), filter),
                    // Refused at bind time; only a stored binding from a broker with other
                    // limits gets here. It matches nothing rather than failing the restore.
                    Err(error) => tracing::warn!(%error, "filter binding ignored"),
                }
            }
            Matcher::Headers(bindings) => {
                bindings.classic.insert(key.clone(), arguments.clone());
            }
            Matcher::ConsistentHash(ring) => ring.add(key),
        }
    }

    /// Removes a binding (for direct, topic and fanout: the last one of its shared part).
    pub fn remove(&mut self, key: &BindingKey) {
        let (destination, routing_key) = (&key.0, &key.1);
        match self {
            Matcher::Direct(map) => {
                let empty = match map.get_mut(routing_key) {
                    Some(dests) => {
                        dests.retain(|d| d != destination);
                        dests.is_empty()
                    }
                    None => false,
                };
                if empty {
                    map.remove(routing_key);
                }
            }
            Matcher::Fanout(dests) | Matcher::Deduplication(dests, _) => {
                dests.remove(destination);
            }
            Matcher::Topic(trie) => {
                trie.remove(routing_key.as_str(), destination);
            }
            Matcher::Headers(bindings) => {
                bindings.classic.remove(key);
                bindings.filters.remove(key);
            }
            Matcher::ConsistentHash(ring) => ring.remove(key),
        }
    }

    /// Every destination the message matches, through the binding keys of each routing key
    /// (the consistent-hash exchange: one destination, from the first key, as the plugin).
    fn matches(
        &self,
        routing_keys: &[&str],
        message: Properties<'_>,
        out: &mut dyn FnMut(&Destination),
    ) {
        if let Matcher::ConsistentHash(ring) = self {
            let key = routing_keys.first().copied().unwrap_or("");
            if let Some(dest) = ring.route(key, message.headers, message.properties) {
                out(dest);
            }
            return;
        }
        if let Matcher::Deduplication(dests, cache) = self {
            if cache.admit(message.headers, message.confirm) {
                dests.iter().for_each(out);
            }
            return;
        }
        if let Matcher::Headers(bindings) = self {
            // Filters ignore the routing key: matched once, not once per CC/BCC key.
            if !bindings.filters.is_empty() {
                let headers = message.headers;
                bindings
                    .filters
                    .route(headers, message.body, &mut |key| out(&key.0));
            }
        }
        for key in routing_keys {
            self.matches_key(key, message.headers, out);
        }
    }

    fn matches_key(
        &self,
        routing_key: &str,
        headers: Option<&FieldTable>,
        out: &mut dyn FnMut(&Destination),
    ) {
        match self {
            Matcher::Direct(map) => {
                if let Some(dests) = map.get(routing_key) {
                    dests.iter().for_each(out);
                }
            }
            Matcher::Fanout(dests) => dests.iter().for_each(out),
            Matcher::Topic(trie) => trie.route(routing_key, out),
            Matcher::Headers(bindings) => {
                for ((dest, _, _), args) in &bindings.classic {
                    if headers_match(args, headers) {
                        out(dest);
                    }
                }
            }
            Matcher::ConsistentHash(_) | Matcher::Deduplication(..) => {}
        }
    }
}

impl<'a> Properties<'a> {
    /// A message's properties (and body, when known), without a confirm share.
    fn of(properties: &'a AMQPProperties, body: Option<&'a [u8]>) -> Self {
        Properties {
            headers: properties.headers().as_ref(),
            properties: Some(properties),
            body,
            confirm: None,
            delays: None,
            entry_routed: false,
        }
    }
}

/// What routing may look at besides the routing keys.
#[derive(Clone, Copy)]
struct Properties<'a> {
    headers: Option<&'a FieldTable>,
    /// Absent when only headers are known (tests, and callers that route on headers alone).
    properties: Option<&'a AMQPProperties>,
    /// The body, for body-scoped content filters; absent where only properties are known.
    body: Option<&'a [u8]>,
    /// The confirm share the queues will get; a durable deduplication exchange replaces it
    /// with one chained to the publisher's (`DedupCache::admit`).
    confirm: Option<&'a RefCell<Option<ConfirmShare>>>,
    /// Where delayed exchanges reached with a positive `x-delay` are collected (their
    /// bindings are then not followed: the message waits on their schedule). None: delayed
    /// exchanges route at once (a due message, tests).
    delays: Option<&'a RefCell<Vec<DelayedHandle>>>,
    /// The entry exchange is not collected even if delayed (the publish path schedules it
    /// itself, after checking mandatory against its bindings).
    entry_routed: bool,
}

/// What the publish path needs to know about one exchange.
#[derive(Clone, Debug)]
pub struct ExchangeRoute {
    pub internal: bool,
    /// Receives what this exchange's bindings cannot route.
    pub alternate: Option<ShortString>,
    pub matcher: Matcher,
    /// Its `publish_in` / `publish_out` (kept by every clone: a binding change keeps them).
    pub counters: Arc<ExchangeCounters>,
    /// A delayed exchange's actor (decided at declare): a publish with an `x-delay` goes to
    /// it instead of the queues.
    pub delayed: Option<DelayedHandle>,
}

/// An immutable snapshot of a vhost's routing state.
#[derive(Clone, Debug, Default)]
pub struct RoutingTable {
    /// Persistent maps: a new snapshot shares everything that did not change.
    pub exchanges: imbl::HashMap<ShortString, Arc<ExchangeRoute>>,
    pub queues: imbl::HashMap<ShortString, QueueHandle>,
    /// The default exchange's counters (it has no route of its own).
    pub default_counters: Arc<ExchangeCounters>,
}

/// Fan-out through exchange-to-exchange bindings is bounded; beyond this many exchanges in
/// one route the rest are ignored (a safety net; cycles are already cut by the visited set).
pub const ROUTE_EXCHANGES_MAX: usize = 1024;

impl RoutingTable {
    /// Routes a message published to `exchange` with the given routing keys (the key plus
    /// any `CC`/`BCC` keys) and properties. Each destination queue is pushed to `out` once.
    /// Counts it in the exchange's `publish_in` / `publish_out`.
    pub fn route_message(
        &self,
        exchange: &str,
        routing_keys: &[&str],
        properties: &AMQPProperties,
        out: &mut Vec<QueueHandle>,
    ) {
        let message = Properties::of(properties, None);
        self.route_counted(exchange, routing_keys, message, out);
    }

    /// `route_message` for a message whose body is known too (content filters with
    /// `x-filter-scope: body` see it; elsewhere it matches nothing).
    pub fn route_content(
        &self,
        exchange: &str,
        routing_keys: &[&str],
        properties: &AMQPProperties,
        body: &[u8],
        out: &mut Vec<QueueHandle>,
    ) {
        let message = Properties::of(properties, Some(body));
        self.route_counted(exchange, routing_keys, message, out);
    }

    /// `route_content` without counting: a delayed exchange's message at its due time (it was
    /// counted when it was published).
    pub fn route_due(
        &self,
        exchange: &str,
        routing_keys: &[&str],
        properties: &AMQPProperties,
        body: &[u8],
        out: &mut Vec<QueueHandle>,
    ) {
        let message = Properties::of(properties, Some(body));
        self.route_with(exchange, routing_keys, message, out);
    }

    /// `route_content` from the publish path, with the confirm share the queues will get
    /// (the publisher's, or None): a durable deduplication exchange on the route may
    /// replace it, so that its key is written after the message is safe and the publisher
    /// is confirmed after both. Delayed exchanges reached through bindings (not `exchange`
    /// itself, which the caller schedules) with a positive `x-delay` are pushed to `delays`.
    #[allow(clippy::too_many_arguments)]
    pub fn route_content_confirmed(
        &self,
        exchange: &str,
        routing_keys: &[&str],
        properties: &AMQPProperties,
        body: &[u8],
        confirm: &mut Option<ConfirmShare>,
        out: &mut Vec<QueueHandle>,
        delays: &mut Vec<DelayedHandle>,
    ) {
        let message = Properties {
            entry_routed: true,
            ..Properties::of(properties, Some(body))
        };
        self.route_collecting(exchange, routing_keys, message, confirm, out, delays);
    }

    /// `route_content` for every path but a client's publish (dead-lettering, the
    /// management API's publish): a delayed exchange on the route, `exchange` included,
    /// with a positive `x-delay` is pushed to `delays` instead of being routed through
    /// (the caller schedules the message on it, as the plugin's exchange type does).
    /// `confirm` is the share the caller will hand to the destinations (`None` for none): a
    /// durable deduplication exchange on the route replaces it with a chained one, which
    /// the caller must hand on instead (the key is written once the message is safe).
    #[allow(clippy::too_many_arguments)]
    pub fn route_content_delaying(
        &self,
        exchange: &str,
        routing_keys: &[&str],
        properties: &AMQPProperties,
        body: &[u8],
        confirm: &mut Option<ConfirmShare>,
        out: &mut Vec<QueueHandle>,
        delays: &mut Vec<DelayedHandle>,
    ) {
        let message = Properties::of(properties, Some(body));
        self.route_collecting(exchange, routing_keys, message, confirm, out, delays);
    }

    /// Routes `message` with `confirm` for the deduplication matcher and `delays` for the
    /// delayed exchanges met (both given back as the route left them).
    fn route_collecting(
        &self,
        exchange: &str,
        routing_keys: &[&str],
        message: Properties<'_>,
        confirm: &mut Option<ConfirmShare>,
        out: &mut Vec<QueueHandle>,
        delays: &mut Vec<DelayedHandle>,
    ) {
        let cell = RefCell::new(confirm.take());
        let found = RefCell::new(std::mem::take(delays));
        let message = Properties {
            confirm: Some(&cell),
            delays: Some(&found),
            ..message
        };
        self.route_counted(exchange, routing_keys, message, out);
        *confirm = cell.into_inner();
        *delays = found.into_inner();
    }

    /// `route_message` for a message known only by its headers (a consistent-hash exchange
    /// that hashes a property sees it absent).
    pub fn route(
        &self,
        exchange: &str,
        routing_keys: &[&str],
        headers: Option<&FieldTable>,
        out: &mut Vec<QueueHandle>,
    ) {
        let message = Properties {
            headers,
            properties: None,
            body: None,
            confirm: None,
            delays: None,
            entry_routed: false,
        };
        self.route_with(exchange, routing_keys, message, out);
    }

    /// Routes, and counts the message in `exchange`'s `publish_in` / `publish_out`.
    fn route_counted(
        &self,
        exchange: &str,
        routing_keys: &[&str],
        message: Properties<'_>,
        out: &mut Vec<QueueHandle>,
    ) {
        let before = out.len();
        if let Some(counters) = self.route_with(exchange, routing_keys, message, out) {
            counters.count(out.len() - before);
        }
    }

    /// Routes; returns the counters of `exchange` if it exists.
    fn route_with(
        &self,
        exchange: &str,
        routing_keys: &[&str],
        message: Properties<'_>,
        out: &mut Vec<QueueHandle>,
    ) -> Option<&ExchangeCounters> {
        let mut found = Found {
            out,
            ids: std::collections::HashSet::new(),
        };
        if exchange == DEFAULT_EXCHANGE {
            for key in routing_keys {
                if let Some(q) = self.queues.get(*key) {
                    found.push(q);
                }
            }
            return Some(&self.default_counters);
        }
        let mut entry = None;
        let mut visited: Vec<&str> = vec![exchange];
        let mut next = 0;
        while next < visited.len() && next < ROUTE_EXCHANGES_MAX {
            let name = visited[next];
            next += 1;
            let Some(route) = self.exchanges.get(name) else {
                continue;
            };
            if next == 1 {
                entry = Some(&*route.counters);
            }
            if let (Some(handle), Some(delays)) = (&route.delayed, message.delays) {
                if !(next == 1 && message.entry_routed)
                    && crate::delayed::delay_ms(message.headers).is_some()
                {
                    let mut delays = delays.borrow_mut();
                    if !delays.iter().any(|d| d.same(handle)) {
                        delays.push(handle.clone());
                    }
                    continue;
                }
            }
            let mut found_exchanges: Vec<&str> = Vec::new();
            let mut matched = false;
            route
                .matcher
                .matches(routing_keys, message, &mut |dest| match dest {
                    Destination::Queue(q) => {
                        if let Some(handle) = self.queues.get(q) {
                            matched = true;
                            found.push(handle);
                        }
                    }
                    Destination::Exchange(x) => {
                        // Lifetime: `x` lives in `route`, which lives in `self`.
                        if let Some((k, _)) = self.exchanges.get_key_value(x.as_str()) {
                            matched = true;
                            found_exchanges.push(k.as_str());
                        }
                    }
                });
            if !matched {
                if let Some((k, _)) = route
                    .alternate
                    .as_ref()
                    .and_then(|a| self.exchanges.get_key_value(a.as_str()))
                {
                    found_exchanges.push(k.as_str());
                }
            }
            for x in found_exchanges {
                if !visited.contains(&x) {
                    visited.push(x);
                }
            }
        }
        entry
    }
}

/// Up to this many destinations, a new one is checked against the list; beyond it, against
/// a set of queue ids (a fanout to 10,000 queues cost 50 million comparisons per message).
const DEDUP_LINEAR_MAX: usize = 32;

/// The queues a route found so far, each once.
struct Found<'a> {
    out: &'a mut Vec<QueueHandle>,
    /// Ids of `out`'s queues, filled once `out` passes `DEDUP_LINEAR_MAX`.
    ids: std::collections::HashSet<u64>,
}

impl Found<'_> {
    fn push(&mut self, q: &QueueHandle) {
        if self.out.len() < DEDUP_LINEAR_MAX {
            if !self.out.iter().any(|o| o.same(q)) {
                self.out.push(q.clone());
            }
            return;
        }
        if self.ids.is_empty() {
            self.ids.extend(self.out.iter().map(QueueHandle::id));
        }
        if self.ids.insert(q.id()) {
            self.out.push(q.clone());
        }
    }
}
