//! What the management API lists of a vhost: its queues (with their statistics), exchanges
//! and bindings, sorted by name.
//!
//! The definitions lock is held only to copy what the entries hold (O(n), no await, no
//! queue actor touched); statistics are then read from each queue's `QueueMetrics` after
//! the lock is released, without sending any command to the actors. A page copies only
//! names under the lock, sorts them, then looks up the page's entries under a second short
//! lock: a page of 100 from 100,000 queues clones 100 definitions, not 100,000.

use warren_protocol::{FieldTable, ShortString};

use super::{PolicyNames, VHost};
use std::sync::Arc;

use crate::exchange::{ExchangeKind, DEFAULT_EXCHANGE};
use crate::exchange_counters::ExchangeCounters;
use crate::queue::metrics::QueueMetricsSnapshot;
use crate::queue::QueueHandle;
use crate::routing::Destination;

/// One queue as the management API shows it.
#[derive(Clone, Debug)]
pub struct QueueInfo {
    pub name: ShortString,
    pub durable: bool,
    pub auto_delete: bool,
    /// The owning connection of an exclusive queue (`ConnectionInfo::id`).
    pub exclusive_owner: Option<u64>,
    pub arguments: FieldTable,
    pub policy: PolicyNames,
    pub metrics: QueueMetricsSnapshot,
    /// To read fresher metrics later, or act on the queue.
    pub handle: QueueHandle,
}

impl QueueInfo {
    pub fn exclusive(&self) -> bool {
        self.exclusive_owner.is_some()
    }
}

/// A page of queues: the entries and how many queues matched the filter in all.
#[derive(Clone, Debug)]
pub struct QueuePage {
    pub total: usize,
    pub items: Vec<QueueInfo>,
}

/// One exchange as the management API shows it.
#[derive(Clone, Debug)]
pub struct ExchangeInfo {
    /// "" is the default exchange.
    pub name: ShortString,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
    pub policy: PolicyNames,
    /// Its `message_stats.publish_in` / `publish_out` (`ExchangeCounters::read`); the
    /// pointer identifies the exchange's incarnation for the rates sampler.
    pub counters: Arc<ExchangeCounters>,
}

/// One binding as the management API shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct BindingInfo {
    /// "" for the default exchange's implicit binding of every queue.
    pub source: ShortString,
    pub destination: ShortString,
    /// "queue" or "exchange".
    pub destination_type: &'static str,
    pub routing_key: ShortString,
    pub arguments: FieldTable,
    /// Identifies the binding among those with the same ends (RabbitMQ's `properties_key`).
    pub properties_key: String,
}

struct QueueRow {
    name: ShortString,
    durable: bool,
    auto_delete: bool,
    exclusive_owner: Option<u64>,
    arguments: FieldTable,
    policy: PolicyNames,
    handle: QueueHandle,
}

impl QueueRow {
    fn into_info(self) -> QueueInfo {
        QueueInfo {
            metrics: self.handle.metrics(),
            name: self.name,
            durable: self.durable,
            auto_delete: self.auto_delete,
            exclusive_owner: self.exclusive_owner,
            arguments: self.arguments,
            policy: self.policy,
            handle: self.handle,
        }
    }
}

impl VHost {
    fn queue_row(q: &super::QueueEntry) -> QueueRow {
        QueueRow {
            name: q.def.name.clone(),
            durable: q.def.durable,
            auto_delete: q.def.auto_delete,
            exclusive_owner: q.def.exclusive_owner,
            arguments: q.def.arguments.clone(),
            policy: q.policies.names(),
            handle: q.handle.clone(),
        }
    }

    /// Every queue, sorted by name, with its statistics.
    pub fn queue_infos(&self) -> Vec<QueueInfo> {
        let mut rows: Vec<QueueRow> = {
            let defs = self.lock();
            defs.queues.values().map(Self::queue_row).collect()
        };
        rows.sort_unstable_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
        rows.into_iter().map(QueueRow::into_info).collect()
    }

    /// Queues whose name contains `name_filter` (all with None), sorted by name, from
    /// `offset`, at most `limit` of them.
    pub fn queues_page(&self, offset: usize, limit: usize, name_filter: Option<&str>) -> QueuePage {
        let mut names: Vec<ShortString> = {
            let defs = self.lock();
            defs.queues
                .keys()
                .filter(|n| name_filter.is_none_or(|f| n.as_str().contains(f)))
                .cloned()
                .collect()
        };
        let total = names.len();
        let end = offset.saturating_add(limit).min(total);
        let start = offset.min(end);
        if end < total {
            // Only the first `end` in order are needed.
            names.select_nth_unstable_by(end, |a, b| a.as_str().cmp(b.as_str()));
            names.truncate(end);
        }
        names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        let rows: Vec<QueueRow> = {
            let defs = self.lock();
            names[start..end]
                .iter()
                // A queue deleted between the two locks is left out.
                .filter_map(|n| defs.queues.get(n.as_str()).map(Self::queue_row))
                .collect()
        };
        QueuePage {
            total,
            items: rows.into_iter().map(QueueRow::into_info).collect(),
        }
    }

    /// One queue with its statistics (None: no such queue).
    pub fn queue_info(&self, name: &str) -> Option<QueueInfo> {
        let row = self.lock().queues.get(name).map(Self::queue_row)?;
        Some(row.into_info())
    }

    /// Every queue's handle, unsorted (its name and `metrics()`): one clone per queue
    /// under the lock, for readers such as `/metrics` that read the atomics after.
    pub fn queue_handles(&self) -> Vec<QueueHandle> {
        let defs = self.lock();
        defs.queues.values().map(|q| q.handle.clone()).collect()
    }

    /// The sum of every queue's statistics and the number of queues.
    pub fn queue_totals(&self) -> (usize, QueueMetricsSnapshot) {
        let handles = self.queue_handles();
        let mut total = QueueMetricsSnapshot::default();
        for h in &handles {
            total.add(&h.metrics());
        }
        (handles.len(), total)
    }

    /// Every exchange (the default one named ""), sorted by name.
    pub fn exchange_infos(&self) -> Vec<ExchangeInfo> {
        let mut infos: Vec<ExchangeInfo> = {
            let defs = self.lock();
            defs.exchanges
                .values()
                .map(|x| ExchangeInfo {
                    counters: x.route.counters.clone(),
                    name: x.def.name.clone(),
                    kind: x.def.kind,
                    durable: x.def.durable,
                    auto_delete: x.def.auto_delete,
                    internal: x.def.internal,
                    arguments: x.def.arguments.clone(),
                    policy: x.policies.names(),
                })
                .collect()
        };
        if !infos.iter().any(|x| x.name.as_str() == DEFAULT_EXCHANGE) {
            // Routed by queue name without an entry of its own; RabbitMQ lists it.
            infos.push(ExchangeInfo {
                counters: self.routing().default_counters.clone(),
                name: ShortString::from(DEFAULT_EXCHANGE),
                kind: ExchangeKind::Direct,
                durable: true,
                auto_delete: false,
                internal: false,
                arguments: FieldTable::default(),
                policy: PolicyNames::default(),
            });
        }
        infos.sort_unstable_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
        infos
    }

    /// The number of exchanges (the default one included).
    pub fn exchange_count(&self) -> usize {
        let defs = self.lock();
        defs.exchanges.len() + usize::from(!defs.exchanges.contains_key(DEFAULT_EXCHANGE))
    }

    /// Every binding, with the default exchange's implicit one for each queue (as RabbitMQ
    /// lists them), sorted by source, destination, routing key and properties key.
    pub fn bindings(&self) -> Vec<BindingInfo> {
        let mut out = Vec::new();
        {
            let defs = self.lock();
            for q in defs.queues.keys() {
                out.push(BindingInfo {
                    source: ShortString::from(""),
                    destination: q.clone(),
                    destination_type: "queue",
                    routing_key: q.clone(),
                    arguments: FieldTable::default(),
                    properties_key: properties_key(q.as_str(), &[]),
                });
            }
            for (source, x) in &defs.exchanges {
                if source.as_str().is_empty() {
                    continue;
                }
                for ((destination, routing_key, args), b) in &x.bindings {
                    let (destination, destination_type) = match destination {
                        Destination::Queue(q) => (q.clone(), "queue"),
                        Destination::Exchange(e) => (e.clone(), "exchange"),
                    };
                    out.push(BindingInfo {
                        source: source.clone(),
                        destination,
                        destination_type,
                        routing_key: routing_key.clone(),
                        arguments: b.arguments.clone(),
                        properties_key: properties_key(routing_key.as_str(), args),
                    });
                }
            }
        }
        out.sort_unstable_by(|a, b| {
            (
                a.source.as_str(),
                a.destination_type,
                a.destination.as_str(),
            )
                .cmp(&(
                    b.source.as_str(),
                    b.destination_type,
                    b.destination.as_str(),
                ))
                .then_with(|| a.routing_key.as_str().cmp(b.routing_key.as_str()))
                .then_with(|| a.properties_key.cmp(&b.properties_key))
        });
        out
    }
}

/// RabbitMQ's `properties_key`: the routing key URL-encoded (`~` too), then, when the
/// binding has arguments, `~` and a hash of them ("~" alone for an empty key without
/// arguments). The hash is ours (FNV-1a of the encoded table, hex): RabbitMQ's hashes the
/// Erlang term, so keys of bindings with arguments differ between the two brokers.
pub fn properties_key(routing_key: &str, encoded_args: &[u8]) -> String {
    let mut key = String::with_capacity(routing_key.len());
    for b in routing_key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => key.push(b as char),
            b' ' => key.push('+'),
            _ => key.push_str(&format!("%{b:02X}")),
        }
    }
    if encoded_args.is_empty() {
        return if key.is_empty() { "~".to_owned() } else { key };
    }
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in encoded_args {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{key}~{h:016x}")
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use warren_protocol::{AMQPValue, FieldTable, ShortString};

    use super::*;
    use crate::exchange::ExchangeDef;
    use crate::queue::settings::QueueDefaults;
    use crate::queue::{QueueCommand, QueueDef};

    fn queue_def(name: &str) -> QueueDef {
        QueueDef {
            name: ShortString::from(name),
            durable: false,
            exclusive_owner: None,
            auto_delete: false,
            arguments: FieldTable::default(),
        }
    }

    /// Lists 100,000 queues (the management API's scale target). Only correctness is
    /// asserted; the time is printed (`--nocapture`) to be measured by hand.
    #[tokio::test]
    async fn lists_100_000_queues_sorted_and_paged() {
        const QUEUES: usize = 100_000;
        let vhost = VHost::new("/", QueueDefaults::default(), None);
        // Declared in reverse so the listing's order is its own doing.
        for i in (0..QUEUES).rev() {
            vhost
                .declare_queue(queue_def(&format!("q{i:06}")), false)
                .expect("declare");
        }
        let seven = vhost.queue("q000007", 0).unwrap();
        seven
            .send(QueueCommand::Publish(
                crate::queue::metrics::tests::message(b"abc"),
                None,
            ))
            .await
            .unwrap();
        seven.sync_metrics().await.unwrap();

        let started = Instant::now();
        let all = vhost.queue_infos();
        let listed = started.elapsed();
        assert_eq!(all.len(), QUEUES);
        assert!(all
            .windows(2)
            .all(|w| w[0].name.as_str() < w[1].name.as_str()));
        assert_eq!(all[7].name.as_str(), "q000007");
        assert_eq!((all[7].metrics.messages(), all[7].metrics.publish), (1, 1));
        assert_eq!(all[8].metrics.messages(), 0);

        let started = Instant::now();
        let page = vhost.queues_page(99_990, 100, None);
        let paged = started.elapsed();
        assert_eq!(page.total, QUEUES);
        let names: Vec<&str> = page.items.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(names.len(), 10);
        assert_eq!((names[0], names[9]), ("q099990", "q099999"));

        let first = vhost.queues_page(0, 3, None);
        let names: Vec<&str> = first.items.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(names, ["q000000", "q000001", "q000002"]);

        let filtered = vhost.queues_page(2, 5, Some("q00012"));
        assert_eq!(filtered.total, 10);
        let names: Vec<&str> = filtered.items.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(
            names,
            ["q000122", "q000123", "q000124", "q000125", "q000126"]
        );
        assert!(vhost.queues_page(QUEUES + 5, 10, None).items.is_empty());

        let started = Instant::now();
        let (count, totals) = vhost.queue_totals();
        let summed = started.elapsed();
        assert_eq!((count, totals.messages()), (QUEUES, 1));
        println!(
            "{QUEUES} queues: queue_infos {listed:?}, queues_page {paged:?}, queue_totals {summed:?}"
        );
    }

    #[tokio::test]
    async fn lists_exchanges_and_bindings_with_their_keys() {
        let vhost = VHost::new("/", QueueDefaults::default(), None);
        vhost.declare_queue(queue_def("q"), false).unwrap();
        let mut args = FieldTable::default();
        args.insert("x-match".into(), AMQPValue::LongString("any".into()));
        vhost
            .declare_exchange(
                ExchangeDef {
                    name: ShortString::from("h"),
                    kind: ExchangeKind::Headers,
                    durable: true,
                    auto_delete: false,
                    internal: true,
                    arguments: FieldTable::default(),
                },
                false,
            )
            .unwrap();
        let q = Destination::Queue(ShortString::from("q"));
        vhost
            .bind("h", q.clone(), ShortString::from("a b~c"), args.clone(), 0)
            .unwrap();
        vhost
            .bind(
                "amq.direct",
                q,
                ShortString::from(""),
                FieldTable::default(),
                0,
            )
            .unwrap();

        let exchanges = vhost.exchange_infos();
        assert_eq!(exchanges[0].name.as_str(), "");
        let h = exchanges.iter().find(|x| x.name.as_str() == "h").unwrap();
        assert_eq!(
            (h.kind, h.durable, h.internal),
            (ExchangeKind::Headers, true, true)
        );
        assert_eq!(vhost.exchange_count(), exchanges.len());

        let bindings = vhost.bindings();
        let keys: Vec<(&str, &str, &str)> = bindings
            .iter()
            .map(|b| {
                (
                    b.source.as_str(),
                    b.routing_key.as_str(),
                    b.properties_key.as_str(),
                )
            })
            .collect();
        assert_eq!(keys[0], ("", "q", "q"));
        assert_eq!(keys[1], ("amq.direct", "", "~"));
        assert_eq!(keys[2].0, "h");
        assert!(keys[2].2.starts_with("a+b%7Ec~"), "{}", keys[2].2);
        assert_eq!(bindings[2].arguments, args);
        assert!(bindings.iter().all(|b| b.destination_type == "queue"));
    }
}
