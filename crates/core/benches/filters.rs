//! Route-only throughput of a headers exchange with 10,000 content-filter bindings
//! (`x-match: filter`), one thread. Run: `cargo bench -p warren-core --bench filters`.
//!
//! The base policies are a mix on 3–5 keys, distinct per binding: an exact `symbol` (5,000
//! symbols, so about two bindings each), one or two exact `region`s of 8, a numeric `price`
//! range, and on some a `sku` prefix or an `exists`. In most runs a share (5 %, 50 %, 100 %)
//! of them is replaced by policies without an exact-string term, each distinct per binding
//! so that only a few match a message (as with 10,000 real subscriptions): a prefix, a
//! suffix, an open-ended numeric range (an alert threshold), an `anything-but` with an
//! `exists` on a per-binding key, or an `equals-ignore-case`. Two "broad" kinds draw many
//! filters per message by design: an overlapping `price` range with a one-letter `sku`
//! prefix, and a one-letter `sku` prefix with an `exists`. The first run also times a plain
//! loop over all 10,000 compiled filters (routing without the index) for comparison.

use std::time::{Duration, Instant};

use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use warren_core::exchange::filter::{Filter, Scope};
use warren_core::exchange::{ExchangeDef, ExchangeKind};
use warren_core::queue::settings::QueueDefaults;
use warren_core::queue::QueueDef;
use warren_core::routing::Destination;
use warren_core::VHost;
use warren_protocol::basic::AMQPProperties;

const BINDINGS: usize = 10_000;
const QUEUES: usize = 1_000;
const SYMBOLS: usize = 5_000;
const REGIONS: [&str; 8] = ["eu", "us", "apac", "latam", "mea", "uk", "ca", "jp"];
const MESSAGES: usize = 20_000;
const RUN: Duration = Duration::from_secs(3);

/// This thread's CPU time (Linux `/proc/thread-self/schedstat`, nanoseconds on the CPU), so
/// the figure holds on a machine shared with other work; wall time where it is unavailable.
fn cpu_time(wall: Instant) -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .map(Duration::from_nanos)
        .unwrap_or_else(|| wall.elapsed())
}

/// A small deterministic generator (xorshift), so every run binds the same policies.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// What a binding's policy has that the index can use.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// An exact `symbol` (and `region`), a range, maybe a prefix and an `exists`.
    Exact,
    /// Broad: an overlapping numeric `price` range and a one-letter `sku` prefix.
    RangeBroad,
    /// Broad: a one-letter `sku` prefix and an `exists`.
    PrefixBroad,
    /// A prefix distinct per binding.
    Prefix,
    /// A suffix distinct per binding.
    Suffix,
    /// A lower-bound-only threshold distinct per binding.
    OpenRange,
    /// `anything-but` on a shared key and `exists` on a key of the binding's own.
    AnythingButExists,
    /// `equals-ignore-case`, distinct per binding.
    IgnoreCase,
}

/// The lowest alert threshold of `Kind::OpenRange`; messages' `temp` lie mostly below.
const THRESHOLD_BASE: usize = 1_000_000;
/// Message `temp` values reach this far above the lowest threshold.
const THRESHOLD_REACH: usize = 20;

fn policy(i: usize, kind: Kind, rng: &mut Rng) -> String {
    let low = rng.below(900);
    let high = low + 10 + rng.below(200);
    let price = format!(r#""price": [{{"numeric": [">=", {low}, "<", {high}]}}]"#);
    let sku = format!(
        r#""sku": [{{"prefix": "{}"}}]"#,
        (b'A' + (i % 26) as u8) as char
    );
    match kind {
        Kind::RangeBroad => return format!("{{{price}, {sku}}}"),
        Kind::PrefixBroad => return format!(r#"{{{sku}, "venue": [{{"exists": true}}]}}"#),
        Kind::Prefix => return format!(r#"{{"path": [{{"prefix": "P{i}/"}}]}}"#),
        Kind::Suffix => return format!(r#"{{"file": [{{"suffix": "-{i}.log"}}]}}"#),
        Kind::OpenRange => {
            return format!(
                r#"{{"temp": [{{"numeric": [">", {}]}}]}}"#,
                THRESHOLD_BASE + i
            )
        }
        Kind::AnythingButExists => {
            return format!(
                r#"{{"user": [{{"anything-but": ["u{i}"]}}], "tag{i}": [{{"exists": true}}]}}"#
            )
        }
        Kind::IgnoreCase => {
            return format!(r#"{{"email": [{{"equals-ignore-case": "User{i}@Example.COM"}}]}}"#)
        }
        Kind::Exact => {}
    }
    let symbol = format!(r#""symbol": ["S{}"]"#, i % SYMBOLS);
    let region = match rng.below(2) {
        0 => format!(r#""region": ["{}"]"#, REGIONS[rng.below(8)]),
        _ => format!(
            r#""region": ["{}", "{}"]"#,
            REGIONS[rng.below(8)],
            REGIONS[rng.below(8)]
        ),
    };
    match i % 3 {
        0 => format!("{{{symbol}, {region}, {price}}}"),
        1 => format!("{{{symbol}, {region}, {price}, {sku}}}"),
        _ => format!(r#"{{{symbol}, {region}, {price}, {sku}, "venue": [{{"exists": true}}]}}"#),
    }
}

fn headers(rng: &mut Rng) -> FieldTable {
    let mut t = FieldTable::default();
    let text = |s: String| AMQPValue::LongString(LongString::from(s));
    t.insert("symbol".into(), text(format!("S{}", rng.below(SYMBOLS))));
    t.insert("region".into(), text(REGIONS[rng.below(8)].to_owned()));
    t.insert(
        "price".into(),
        AMQPValue::Double(rng.below(100_000) as f64 / 100.0),
    );
    let sku = format!(
        "{}{}",
        (b'A' + rng.below(26) as u8) as char,
        rng.below(1000)
    );
    t.insert("sku".into(), text(sku));
    t.insert("venue".into(), text("xnas".to_owned()));
    let n = rng.below(BINDINGS);
    t.insert("path".into(), text(format!("P{n}/{}", rng.below(100))));
    t.insert(
        "file".into(),
        text(format!("app-{}.log", rng.below(BINDINGS))),
    );
    t.insert(
        "temp".into(),
        AMQPValue::LongInt((rng.below(THRESHOLD_BASE + THRESHOLD_REACH)) as i32),
    );
    t.insert("user".into(), text(format!("u{}", rng.below(BINDINGS))));
    t.insert(
        format!("tag{}", rng.below(BINDINGS)).as_str().into(),
        AMQPValue::Boolean(true),
    );
    t.insert(
        "email".into(),
        text(format!("user{}@example.com", rng.below(BINDINGS))),
    );
    t
}

/// Binds 10,000 filters, `percent` % of them of kind `kind` and the rest `Kind::Exact`, and
/// prints the routing rate (and, if `linear`, that of a loop over all compiled filters).
fn run(kind: Kind, percent: usize, linear: bool) {
    let vhost = VHost::new("/", QueueDefaults::default(), None);
    let def = ExchangeDef {
        name: ShortString::from("filters"),
        kind: ExchangeKind::Headers,
        durable: false,
        auto_delete: false,
        internal: false,
        arguments: FieldTable::default(),
    };
    vhost
        .declare_exchange(def, false)
        .expect("declare exchange");
    for q in 0..QUEUES {
        let def = QueueDef {
            name: ShortString::from(format!("q{q}")),
            durable: false,
            exclusive_owner: None,
            auto_delete: false,
            arguments: FieldTable::default(),
        };
        vhost.declare_queue(def, false).expect("declare queue");
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut compiled = Vec::with_capacity(BINDINGS);
    let started = Instant::now();
    for i in 0..BINDINGS {
        let this = match i % 100 {
            n if n < percent => kind,
            _ => Kind::Exact,
        };
        let policy = policy(i, this, &mut rng);
        compiled.push(Filter::compile(&policy, Scope::Headers).expect("policy"));
        let mut args = FieldTable::default();
        args.insert("x-match".into(), AMQPValue::LongString("filter".into()));
        args.insert("x-filter".into(), AMQPValue::LongString(policy.into()));
        let destination = Destination::Queue(ShortString::from(format!("q{}", i % QUEUES)));
        vhost
            .bind("filters", destination, "".into(), args, 1)
            .expect("bind");
    }
    let bind_secs = started.elapsed().as_secs_f64();
    let messages: Vec<AMQPProperties> = (0..MESSAGES)
        .map(|_| AMQPProperties::default().with_headers(headers(&mut rng)))
        .collect();
    let routing = vhost.routing_snapshot();
    let mut out = Vec::new();
    let (mut routed, mut delivered) = (0u64, 0u64);
    let started = Instant::now();
    let cpu_started = cpu_time(started);
    while started.elapsed() < RUN {
        for properties in &messages {
            out.clear();
            routing.route_message("filters", &[""], properties, &mut out);
            delivered += out.len() as u64;
        }
        routed += MESSAGES as u64;
    }
    let rate = routed as f64 / (cpu_time(started) - cpu_started).as_secs_f64();
    let fan_out = delivered as f64 / routed as f64;
    let mut report = format!(
        "{BINDINGS} filter bindings ({percent}% {kind:?}), {QUEUES} queues: \
         {rate:.0} msg/s routed per CPU second (mean {fan_out:.2} queues per message); \
         binding took {bind_secs:.2} s"
    );
    if linear {
        let mut scanned = 0u64;
        let mut hits = 0u64;
        let started = Instant::now();
        let cpu_started = cpu_time(started);
        while started.elapsed() < RUN / 3 {
            for properties in messages.iter().take(1000) {
                let headers = properties.headers().as_ref();
                hits += compiled
                    .iter()
                    .filter(|f| f.matches_headers(headers))
                    .count() as u64;
            }
            scanned += 1000;
        }
        let linear = scanned as f64 / (cpu_time(started) - cpu_started).as_secs_f64();
        report += &format!(
            "; linear scan of all filters {linear:.0} msg/s ({:.2} matches per message)",
            hits as f64 / scanned as f64
        );
    }
    println!("{report}");
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        run(Kind::Exact, 100, true);
        let distinct = [
            Kind::Prefix,
            Kind::Suffix,
            Kind::OpenRange,
            Kind::AnythingButExists,
            Kind::IgnoreCase,
        ];
        for kind in distinct {
            for percent in [5, 50, 100] {
                run(kind, percent, false);
            }
        }
        for (kind, percent) in [
            (Kind::RangeBroad, 5),
            (Kind::RangeBroad, 50),
            (Kind::PrefixBroad, 1),
            (Kind::PrefixBroad, 5),
        ] {
            run(kind, percent, false);
        }
    });
}
