//! The consistent-hash exchange (`x-consistent-hash`, RabbitMQ's
//! `rabbitmq_consistent_hash_exchange` plugin built in): each message goes to exactly one of
//! the exchange's destinations, chosen by hashing the routing key (or a nominated header or
//! property), so that the same key always reaches the same queue while the bindings stay.
//!
//! Owns the hash ring, the exchange arguments that choose what is hashed, and the weights in
//! binding keys. It knows nothing of queues, locks or routing snapshots: `crate::routing` holds
//! a `HashRing` inside its matcher and asks it for one destination per message.
//!
//! The ring: every weight unit of a destination puts `POINTS_PER_WEIGHT` points on a 64-bit
//! circle, point `i` of a destination at `xxh3(name, seed = i·2 + kind)`. A message hashed to
//! `h` goes to the owner of the first point at or after `h` (wrapping around). Point positions
//! depend only on the destination and `i`, never on the other bindings, so binding a queue of
//! weight `w` takes over only about `w / total` of the keys, and unbinding gives exactly those
//! back. Many points per weight unit keep each share close to its weight (a share's relative
//! spread is about `1 / sqrt(points)`: 2.2 % at 2,048 points).
//!
//! Costs: the publish path does one XXH3 of the key and one binary search over a sorted
//! `Vec<u64>`, allocating nothing. A binding change rebuilds the ring by merging in (or
//! filtering out) one destination's points: O(points of the exchange), like the plugin's own
//! linear binding management; bindings are rare, routing is hot.
//!
//! Why XXH3 (`xxhash-rust`): its output is specified and stable across versions, platforms
//! and endianness (routing must not change when Warren is rebuilt), it is among the fastest
//! hashes for short keys, has no dependencies, and its avalanche is good enough that points
//! from `seed = 0, 1, 2, …` spread evenly (FNV-1a's do not, on short names).
//!
//! Divergences from the plugin, all in `docs/compat.md`: the plugin uses jump-consistent
//! hashing over buckets numbered in binding order, so its routing of a key changes after a
//! restart and after unbinding a queue bound early; Warren's ring depends only on the
//! destinations' names and weights, so a key keeps its queue across restarts. Several bindings
//! from one exchange to one destination add up their weights (the plugin assumes one). Weights
//! are capped (`WEIGHT_MAX`, `RING_POINTS_MAX`); the plugin has no cap.

use std::sync::Arc;

use amq_protocol::types::{AMQPValue, FieldTable};
use warren_protocol::basic::AMQPProperties;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::routing::{BindingKey, Destination};

/// The exchange type's name, as the plugin registers it.
pub const EXCHANGE_TYPE: &str = "x-consistent-hash";
/// Exchange argument: hash the value of this message header instead of the routing key.
pub const HASH_HEADER: &str = "hash-header";
/// Exchange argument: hash this message property instead of the routing key.
pub const HASH_PROPERTY: &str = "hash-property";
/// The properties `hash-property` may name (the plugin's list).
pub const PROPERTIES: &[&str] = &["correlation_id", "message_id", "timestamp"];
/// Ring points per unit of binding weight. More points even out the shares (relative spread
/// about `1 / sqrt(points)`) at the cost of memory (12 bytes a point) and binding changes.
pub const POINTS_PER_WEIGHT: u32 = 2048;
/// The largest weight one binding may have. The plugin recommends single digits.
pub const WEIGHT_MAX: u32 = 1000;
/// The most points one exchange's ring may hold (2,048 weight units, 48 MiB).
pub const RING_POINTS_MAX: u64 = 1 << 22;

/// What a message is hashed on.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum HashOn {
    #[default]
    RoutingKey,
    Header(String),
    Property(Property),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Property {
    CorrelationId,
    MessageId,
    Timestamp,
}

impl Property {
    fn parse(name: &str) -> Option<Property> {
        match name {
            "correlation_id" => Some(Property::CorrelationId),
            "message_id" => Some(Property::MessageId),
            "timestamp" => Some(Property::Timestamp),
            _ => None,
        }
    }
}

/// Checks a new exchange's arguments; `Err(text)` becomes 406 PRECONDITION_FAILED. The texts
/// are the plugin's; a non-string value (on which the plugin crashes) is refused here.
pub fn validate_exchange_args(args: &FieldTable) -> Result<(), String> {
    let header = string_arg(args, HASH_HEADER)?;
    let property = string_arg(args, HASH_PROPERTY)?;
    match (header, property) {
        (Some(_), Some(_)) => Err("hash-header and hash-property are mutually exclusive".into()),
        (None, Some(p)) if Property::parse(&p).is_none() => {
            Err(format!("Unsupported property: {p}"))
        }
        _ => Ok(()),
    }
}

fn string_arg(args: &FieldTable, key: &str) -> Result<Option<String>, String> {
    match args.inner().get(key) {
        None => Ok(None),
        Some(value) => crate::args::as_str(value).map(Some).ok_or_else(|| {
            format!(
                "invalid type '{}' for arg '{key}'",
                crate::args::type_name(value)
            )
        }),
    }
}

impl HashOn {
    /// What an exchange with `args` hashes on. Lenient: arguments that `validate_exchange_args`
    /// would refuse (only found in definitions written elsewhere) fall back to the routing key.
    pub fn of(args: &FieldTable) -> HashOn {
        let header = string_arg(args, HASH_HEADER).ok().flatten();
        let property = string_arg(args, HASH_PROPERTY).ok().flatten();
        match (header, property) {
            (Some(h), None) => HashOn::Header(h),
            (None, Some(p)) => Property::parse(&p).map_or(HashOn::RoutingKey, HashOn::Property),
            _ => HashOn::RoutingKey,
        }
    }
}

/// A binding key's weight, checked as the plugin does (Erlang's `list_to_integer`: an optional
/// sign, then digits); `Err(text)` becomes 406 PRECONDITION_FAILED.
pub fn parse_weight(key: &str) -> Result<u32, String> {
    let digits = key.strip_prefix(['+', '-']).unwrap_or(key);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "The binding key must be an integer: {}",
            erlang_binary(key)
        ));
    }
    if key.starts_with('-') || digits.bytes().all(|b| b == b'0') {
        return Err("The binding key must be greater than 0".into());
    }
    match digits.parse::<u32>() {
        Ok(weight) if weight <= WEIGHT_MAX => Ok(weight),
        _ => Err(format!(
            "The binding key must be at most {WEIGHT_MAX}: {key}"
        )),
    }
}

/// A binary as Erlang's `~p` prints it (`<<"abc">>` and `<<>>` checked against RabbitMQ 3.10):
/// `<<>>`, `<<"text">>` with `"` and `\` escaped, and bytes in decimal (`<<195,169>>`) when any
/// is outside printable ASCII (Erlang would print some latin-1 text; an approximation).
fn erlang_binary(text: &str) -> String {
    if text.is_empty() {
        return "<<>>".into();
    }
    if text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        let escaped = text.replace('\\', "\\\\").replace('"', "\\\"");
        return format!("<<\"{escaped}\">>");
    }
    let bytes: Vec<String> = text.bytes().map(|b| b.to_string()).collect();
    format!("<<{}>>", bytes.join(","))
}

/// The sorted points of a ring, shared by every snapshot until a binding changes.
#[derive(Debug, Default)]
struct Points {
    /// Point positions, ascending; equal positions ordered by owner.
    hashes: Vec<u64>,
    /// `owners[i]` owns `hashes[i]`: an index into `HashRing::destinations`.
    owners: Vec<u32>,
}

/// One exchange's ring. Cloned with every routing snapshot change: the clone shares the points.
#[derive(Clone, Debug, Default)]
pub struct HashRing {
    hash_on: HashOn,
    /// Each binding's weight; a destination's weight is the sum of its bindings'.
    bindings: imbl::HashMap<BindingKey, u32>,
    /// The destinations with points, and free slots (weight 0); a destination keeps its index
    /// while it has weight, so owners need no renumbering.
    destinations: Vec<(Destination, u32)>,
    points: Arc<Points>,
}

impl HashRing {
    pub fn new(hash_on: HashOn) -> HashRing {
        HashRing {
            hash_on,
            ..HashRing::default()
        }
    }

    /// The number of points on the ring.
    pub fn point_count(&self) -> u64 {
        self.points.hashes.len() as u64
    }

    /// True if a binding of `weight` more units would fit under `RING_POINTS_MAX`.
    pub fn has_room_for(&self, weight: u32) -> bool {
        self.point_count() + u64::from(weight) * u64::from(POINTS_PER_WEIGHT) <= RING_POINTS_MAX
    }

    /// Adds a binding; its routing key is the weight (an unparseable one, which bind refuses,
    /// counts as no weight).
    pub fn add(&mut self, key: &BindingKey) {
        if self.bindings.contains_key(key) {
            return;
        }
        let weight = parse_weight(key.1.as_str()).unwrap_or(0);
        self.bindings.insert(key.clone(), weight);
        self.reweigh(&key.0, |w| w.saturating_add(weight));
    }

    /// Removes a binding and its share of its destination's points.
    pub fn remove(&mut self, key: &BindingKey) {
        if let Some(weight) = self.bindings.remove(key) {
            self.reweigh(&key.0, |w| w.saturating_sub(weight));
        }
    }

    fn reweigh(&mut self, destination: &Destination, change: impl FnOnce(u32) -> u32) {
        let found = self.destinations.iter().position(|(d, _)| d == destination);
        // A slot without weight owns no point: a new destination may take it over, so queue
        // churn (server-named queues bound and deleted) does not grow the list.
        let free = || self.destinations.iter().position(|(_, w)| *w == 0);
        let index = match found.or_else(free) {
            Some(index) => {
                if found.is_none() {
                    self.destinations[index] = (destination.clone(), 0);
                }
                index
            }
            None => {
                self.destinations.push((destination.clone(), 0));
                self.destinations.len() - 1
            }
        };
        let old = self.destinations[index].1;
        let new = change(old);
        self.destinations[index].1 = new;
        let (old_points, new_points) = (old * POINTS_PER_WEIGHT, new * POINTS_PER_WEIGHT);
        let owner = index as u32;
        if new_points > old_points {
            let mut added: Vec<(u64, u32)> = (old_points..new_points)
                .map(|i| (point_hash(destination, i), owner))
                .collect();
            added.sort_unstable();
            self.points = Arc::new(merge(&self.points, &added));
        } else if new_points < old_points {
            // Points are numbered from 0, so the last ones go: `hash(d, i)` for i >= new.
            let gone: std::collections::HashSet<u64> = (new_points..old_points)
                .map(|i| point_hash(destination, i))
                .collect();
            let mut points = Points::default();
            for (&hash, &o) in self.points.hashes.iter().zip(&self.points.owners) {
                if o != owner || !gone.contains(&hash) {
                    points.hashes.push(hash);
                    points.owners.push(o);
                }
            }
            self.points = Arc::new(points);
        }
    }

    /// The destination of a message, if the ring has any point. Allocates nothing (but for a
    /// header of an unusual type: see `hash_value`).
    pub fn route(
        &self,
        routing_key: &str,
        headers: Option<&FieldTable>,
        properties: Option<&AMQPProperties>,
    ) -> Option<&Destination> {
        let points = &*self.points;
        if points.hashes.is_empty() {
            return None;
        }
        let hash = match &self.hash_on {
            HashOn::RoutingKey => xxh3_64(routing_key.as_bytes()),
            HashOn::Header(name) => match headers.and_then(|h| h.inner().get(name.as_str())) {
                Some(value) => hash_value(value),
                // As the plugin: a message without the header is hashed on "nothing", so all
                // of them go to one (arbitrary but fixed) destination.
                None => xxh3_64(b""),
            },
            HashOn::Property(property) => hash_property(*property, properties),
        };
        Some(self.owner_at(hash))
    }

    fn owner_at(&self, hash: u64) -> &Destination {
        let points = &*self.points;
        let at = points.hashes.partition_point(|&p| p < hash);
        let at = if at == points.hashes.len() { 0 } else { at };
        &self.destinations[points.owners[at] as usize].0
    }
}

/// Point `i` of a destination. The kind is in the seed so a queue and an exchange of the same
/// name get different points.
fn point_hash(destination: &Destination, i: u32) -> u64 {
    let (kind, name) = match destination {
        Destination::Queue(name) => (0, name),
        Destination::Exchange(name) => (1, name),
    };
    xxh3_64_with_seed(name.as_str().as_bytes(), u64::from(i) << 1 | kind)
}

fn merge(points: &Points, added: &[(u64, u32)]) -> Points {
    let total = points.hashes.len() + added.len();
    let mut merged = Points {
        hashes: Vec::with_capacity(total),
        owners: Vec::with_capacity(total),
    };
    let mut old = points
        .hashes
        .iter()
        .copied()
        .zip(points.owners.iter().copied());
    let mut new = added.iter().copied();
    let (mut a, mut b) = (old.next(), new.next());
    loop {
        let next = match (a, b) {
            (Some(x), Some(y)) if x <= y => {
                a = old.next();
                x
            }
            (_, Some(y)) => {
                b = new.next();
                y
            }
            (Some(x), None) => {
                a = old.next();
                x
            }
            (None, None) => break,
        };
        merged.hashes.push(next.0);
        merged.owners.push(next.1);
    }
    merged
}

/// A header value's hash: strings and byte arrays by their bytes, integers by their decimal
/// text (so `"42"`, `42i32` and `42i64` go to one queue), other types by their debug form.
fn hash_value(value: &AMQPValue) -> u64 {
    match value {
        AMQPValue::LongString(s) => xxh3_64(s.as_bytes()),
        AMQPValue::ShortString(s) => xxh3_64(s.as_str().as_bytes()),
        AMQPValue::ByteArray(b) => xxh3_64(b.as_slice()),
        other => match crate::args::as_i64(other) {
            Some(n) => hash_decimal(n),
            // Rare types (floats, decimals, tables, arrays, booleans, void): an allocation.
            None => xxh3_64(format!("{other:?}").as_bytes()),
        },
    }
}

fn hash_property(property: Property, properties: Option<&AMQPProperties>) -> u64 {
    let Some(p) = properties else {
        return xxh3_64(b"");
    };
    match property {
        Property::CorrelationId => p.correlation_id().as_ref(),
        Property::MessageId => p.message_id().as_ref(),
        Property::Timestamp => return p.timestamp().map_or(xxh3_64(b""), hash_decimal),
    }
    .map_or(xxh3_64(b""), |s| xxh3_64(s.as_str().as_bytes()))
}

/// The hash of a number's decimal text, written on the stack.
fn hash_decimal(n: impl Into<i128>) -> u64 {
    use std::io::Write;
    let mut buffer = [0u8; 48];
    let mut cursor = std::io::Cursor::new(&mut buffer[..]);
    // 48 bytes hold any i128 in decimal: the write cannot fail.
    let _ = write!(cursor, "{}", n.into());
    let len = cursor.position() as usize;
    xxh3_64(&buffer[..len])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::Matcher;
    use std::collections::HashMap;
    use warren_protocol::ShortString;

    const KEYS: usize = 100_000;

    fn binding(queue: &str, weight: u32) -> BindingKey {
        (
            Destination::Queue(ShortString::from(queue)),
            ShortString::from(weight.to_string()),
            Vec::new(),
        )
    }

    fn ring_of(queues: &[(&str, u32)]) -> HashRing {
        let mut ring = HashRing::new(HashOn::RoutingKey);
        for (q, w) in queues {
            ring.add(&binding(q, *w));
        }
        ring
    }

    fn route(ring: &HashRing, key: &str) -> String {
        match ring.route(key, None, None) {
            Some(Destination::Queue(q)) => q.as_str().to_owned(),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn assignment(ring: &HashRing) -> Vec<String> {
        (0..KEYS)
            .map(|i| route(ring, &format!("key-{i}")))
            .collect()
    }

    fn counts(assigned: &[String]) -> HashMap<&str, usize> {
        let mut counts = HashMap::new();
        for q in assigned {
            *counts.entry(q.as_str()).or_default() += 1;
        }
        counts
    }

    /// Asserts each queue's share is within `tolerance` (relative) of its weight's share.
    fn assert_shares(assigned: &[String], queues: &[(&str, u32)], tolerance: f64) {
        let total: u32 = queues.iter().map(|(_, w)| w).sum();
        let counts = counts(assigned);
        for (q, w) in queues {
            let expected = KEYS as f64 * f64::from(*w) / f64::from(total);
            let got = counts.get(q).copied().unwrap_or(0) as f64;
            assert!(
                (got - expected).abs() <= expected * tolerance,
                "{q}: {got} keys, expected {expected} ± {}%",
                tolerance * 100.0
            );
        }
    }

    #[test]
    fn weights_are_honoured_within_ten_percent() {
        let queues = [("q1", 1), ("q2", 2), ("q3", 1), ("q4", 3), ("q5", 1)];
        assert_shares(&assignment(&ring_of(&queues)), &queues, 0.10);
        let many: Vec<(String, u32)> = (0..20).map(|i| (format!("shard.{i}"), 1)).collect();
        let many: Vec<(&str, u32)> = many.iter().map(|(q, w)| (q.as_str(), *w)).collect();
        assert_shares(&assignment(&ring_of(&many)), &many, 0.10);
    }

    /// Each destination's exact share of the circle: a point owns the arc up to it from the
    /// point before it.
    fn exact_shares(ring: &HashRing) -> HashMap<usize, f64> {
        let points = &*ring.points;
        let mut shares = HashMap::new();
        let mut previous = *points.hashes.last().expect("points");
        for (&hash, &owner) in points.hashes.iter().zip(&points.owners) {
            let arc = hash.wrapping_sub(previous) as f64 / 2f64.powi(64);
            *shares.entry(owner as usize).or_insert(0.0) += arc;
            previous = hash;
        }
        shares
    }

    /// Whatever the queues' names, a 1:2:1 ring gives each queue its share within 10 %
    /// (the worst of 300 name sets is printed: about 5 % at 2,048 points per weight unit).
    #[test]
    fn shares_stay_within_ten_percent_whatever_the_names() {
        let mut worst: f64 = 0.0;
        for set in 0..300 {
            let names = [0, 1, 2].map(|i| format!("amq.gen-{set}-{i}"));
            let ring = ring_of(&[(&names[0], 1), (&names[1], 2), (&names[2], 1)]);
            for (index, share) in exact_shares(&ring) {
                let expected = [0.25, 0.5, 0.25][index];
                worst = worst.max((share - expected).abs() / expected);
            }
        }
        println!("worst relative deviation: {:.2} %", worst * 100.0);
        assert!(worst < 0.10, "worst deviation {worst}");
    }

    #[test]
    fn adding_a_queue_moves_only_its_share_and_removing_it_restores() {
        let queues = [("a", 1), ("b", 2), ("c", 1)];
        let mut ring = ring_of(&queues);
        let before = assignment(&ring);
        ring.add(&binding("d", 2));
        let after = assignment(&ring);
        let moved = before.iter().zip(&after).filter(|(x, y)| x != y).count();
        // Every moved key moved to the new queue, and about its share (2/6) moved.
        assert!(before
            .iter()
            .zip(&after)
            .all(|(x, y)| x == y || y.as_str() == "d"));
        let share = moved as f64 / KEYS as f64;
        assert!(
            (share - 2.0 / 6.0).abs() < 2.0 / 6.0 * 0.10,
            "moved {share}"
        );
        ring.remove(&binding("d", 2));
        assert_eq!(assignment(&ring), before);
    }

    #[test]
    fn changing_a_weight_moves_keys_only_to_or_from_that_queue() {
        let mut ring = ring_of(&[("a", 1), ("b", 1), ("c", 1)]);
        let before = assignment(&ring);
        ring.add(&binding("b", 2)); // b now weighs 3
        let after = assignment(&ring);
        assert!(before
            .iter()
            .zip(&after)
            .all(|(x, y)| x == y || y.as_str() == "b"));
        assert_shares(&after, &[("a", 1), ("b", 3), ("c", 1)], 0.10);
        ring.remove(&binding("b", 1));
        assert_shares(&assignment(&ring), &[("a", 1), ("b", 2), ("c", 1)], 0.10);
    }

    #[test]
    fn the_same_key_always_routes_the_same_way_whatever_the_binding_order() {
        let one = ring_of(&[("a", 1), ("b", 2), ("c", 1)]);
        let two = ring_of(&[("c", 1), ("a", 1), ("b", 2)]);
        assert_eq!(assignment(&one), assignment(&two));
        assert_eq!(route(&one, "order-17"), route(&one, "order-17"));
    }

    #[test]
    fn an_empty_ring_routes_nowhere_and_unbinding_all_empties_it() {
        let mut ring = ring_of(&[("a", 1)]);
        ring.remove(&binding("a", 1));
        assert_eq!(ring.point_count(), 0);
        assert!(ring.route("k", None, None).is_none());
        assert!(HashRing::default().route("k", None, None).is_none());
        // Churn reuses the free slot.
        for i in 0..10 {
            ring.add(&binding(&format!("churn-{i}"), 1));
            ring.remove(&binding(&format!("churn-{i}"), 1));
        }
        ring.add(&binding("b", 2));
        assert_eq!(ring.destinations.len(), 1);
        assert_eq!(route(&ring, "k"), "b");
    }

    #[test]
    fn weights_parse_as_the_plugin_does() {
        assert_eq!(parse_weight("1"), Ok(1));
        assert_eq!(parse_weight("+7"), Ok(7));
        assert_eq!(parse_weight("007"), Ok(7));
        for bad in ["a", "1.5", " 1", "1 ", "+", "-"] {
            assert_eq!(
                parse_weight(bad),
                Err(format!("The binding key must be an integer: <<\"{bad}\">>"))
            );
        }
        let text = |key| parse_weight(key).unwrap_err();
        assert_eq!(text(""), "The binding key must be an integer: <<>>");
        assert_eq!(
            text("a\"b"),
            r#"The binding key must be an integer: <<"a\"b">>"#
        );
        assert_eq!(text("é"), "The binding key must be an integer: <<195,169>>");
        for zero_or_less in ["0", "-1", "-0", "000"] {
            assert_eq!(
                parse_weight(zero_or_less),
                Err("The binding key must be greater than 0".into())
            );
        }
        assert!(parse_weight("1001").is_err());
        assert!(parse_weight("99999999999999999999").is_err());
    }

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn long(s: &str) -> AMQPValue {
        AMQPValue::LongString(s.into())
    }

    #[test]
    fn exchange_arguments_are_checked_as_the_plugin_does() {
        assert!(validate_exchange_args(&table(&[])).is_ok());
        assert!(validate_exchange_args(&table(&[(HASH_HEADER, long("h"))])).is_ok());
        for p in PROPERTIES {
            assert!(validate_exchange_args(&table(&[(HASH_PROPERTY, long(p))])).is_ok());
        }
        assert_eq!(
            validate_exchange_args(&table(&[(HASH_PROPERTY, long("app_id"))])),
            Err("Unsupported property: app_id".into())
        );
        assert_eq!(
            validate_exchange_args(&table(&[
                (HASH_HEADER, long("h")),
                (HASH_PROPERTY, long("message_id"))
            ])),
            Err("hash-header and hash-property are mutually exclusive".into())
        );
        assert!(validate_exchange_args(&table(&[(HASH_HEADER, AMQPValue::LongInt(1))])).is_err());
    }

    #[test]
    fn headers_and_properties_are_hashed_when_asked() {
        let mut ring = HashRing::new(HashOn::of(&table(&[(HASH_HEADER, long("h"))])));
        for (q, w) in [("a", 1), ("b", 1), ("c", 1)] {
            ring.add(&binding(q, w));
        }
        let mut seen = std::collections::HashSet::new();
        for i in 0..100 {
            let headers = table(&[("h", long(&i.to_string()))]);
            let by_text = ring.route("ignored", Some(&headers), None).cloned();
            let by_number = table(&[("h", AMQPValue::LongInt(i))]);
            assert_eq!(
                by_text.as_ref(),
                ring.route("other", Some(&by_number), None)
            );
            seen.insert(by_text);
        }
        assert_eq!(seen.len(), 3, "100 header values reach every queue");
        // Without the header: always the same queue.
        let missing = ring.route("x", None, None).cloned();
        assert_eq!(missing.as_ref(), ring.route("y", Some(&table(&[])), None));

        let mut ring = HashRing::new(HashOn::Property(Property::MessageId));
        for (q, w) in [("a", 1), ("b", 1), ("c", 1)] {
            ring.add(&binding(q, w));
        }
        let mut seen = std::collections::HashSet::new();
        for i in 0..100 {
            let p = AMQPProperties::default().with_message_id(i.to_string().into());
            let chosen = ring.route("ignored", None, Some(&p)).cloned();
            assert_eq!(chosen.as_ref(), ring.route("other", None, Some(&p)));
            seen.insert(chosen);
        }
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn the_ring_is_bounded() {
        let mut ring = HashRing::default();
        assert!(ring.has_room_for(WEIGHT_MAX));
        for i in 0..2 {
            ring.add(&binding(&format!("q{i}"), WEIGHT_MAX));
        }
        assert!(ring.has_room_for(48));
        assert!(!ring.has_room_for(49));
    }

    /// The figure in docs/benchmarks.md: `cargo test --release -p warren-core --lib --
    /// --ignored --nocapture routing_throughput_through_a_100_queue_ring`. One thread: the
    /// publish path's routing (snapshot walk, key hash, binary search, queue lookup) per message.
    #[tokio::test]
    #[ignore]
    async fn routing_throughput_through_a_100_queue_ring() {
        use crate::exchange::{ExchangeDef, ExchangeKind};
        use crate::queue::settings::QueueDefaults;
        use crate::queue::QueueDef;
        use crate::vhost::VHost;
        use std::time::{Duration, Instant};

        const QUEUES: usize = 100;
        let vhost = VHost::new("/", QueueDefaults::default(), None);
        for (name, kind) in [
            ("chx", ExchangeKind::ConsistentHash),
            ("dx", ExchangeKind::Direct),
        ] {
            let def = ExchangeDef {
                name: ShortString::from(name),
                kind,
                durable: false,
                auto_delete: false,
                internal: false,
                arguments: FieldTable::default(),
            };
            vhost
                .declare_exchange(def, false)
                .expect("declare exchange");
        }
        for i in 0..QUEUES {
            let name = format!("shard-{i}");
            let def = QueueDef {
                name: ShortString::from(name.as_str()),
                durable: false,
                exclusive_owner: None,
                auto_delete: false,
                arguments: FieldTable::default(),
            };
            vhost.declare_queue(def, false).expect("declare queue");
            for (x, key) in [("chx", "1"), ("dx", name.as_str())] {
                let destination = Destination::Queue(ShortString::from(name.as_str()));
                vhost
                    .bind(x, destination, key.into(), FieldTable::default(), 1)
                    .expect("bind");
            }
        }
        let keys: Vec<String> = (0..QUEUES * 1000).map(|i| format!("order-{i}")).collect();
        let direct_keys: Vec<String> = (0..QUEUES).map(|i| format!("shard-{i}")).collect();
        let properties = AMQPProperties::default();
        let routing = vhost.routing_snapshot();
        let mut out = Vec::with_capacity(4);
        for (x, keys) in [("chx", &keys), ("dx", &direct_keys)] {
            let mut routed = 0u64;
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(2) {
                for key in keys.iter().take(10_000) {
                    out.clear();
                    routing.route_message(x, &[key.as_str()], &properties, &mut out);
                    routed += out.len() as u64;
                }
            }
            let rate = routed as f64 / started.elapsed().as_secs_f64();
            println!("{x}: {rate:.0} msg/s routed on one thread ({QUEUES} queues)");
        }
        let Matcher::ConsistentHash(ring) = &routing.exchanges.get("chx").expect("chx").matcher
        else {
            panic!("not a ring");
        };
        let started = Instant::now();
        let mut found = 0u64;
        for key in &keys {
            found += u64::from(ring.route(key, None, None).is_some());
        }
        let per_key = started.elapsed() / keys.len() as u32;
        println!(
            "ring lookup alone: {per_key:?} per key, {} points",
            ring.point_count()
        );
        assert_eq!(found, keys.len() as u64);
    }
}
