//! Content filters on headers-exchange bindings (`x-match: filter`, SNS filter-policy
//! grammar) through lapin: each operator delivers what it should and nothing else, body
//! scope, refusals at bind time, unbinding, and a durable filter binding across a restart.
//!
//! A test knows it has seen everything by a final sentinel message that reaches the queue
//! through a classic `x-match: all` binding: queues keep publish order, so once the sentinel
//! is delivered every earlier message has been routed (or dropped).

use std::path::Path;

use warren_core::definitions_json;
use warren_itest::lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use warren_itest::lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use warren_itest::lapin::{BasicProperties, Channel, ExchangeKind};
use warren_itest::*;
use warren_server::{Config, ServerHandle};

const SENTINEL: &str = "end";

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

fn headers(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in entries {
        table.insert((*key).into(), value.clone());
    }
    table
}

fn filter_args(policy: &str, scope: Option<&str>) -> FieldTable {
    let mut args = headers(&[("x-match", text("filter")), ("x-filter", text(policy))]);
    if let Some(scope) = scope {
        args.insert("x-filter-scope".into(), text(scope));
    }
    args
}

async fn try_bind(
    ch: &Channel,
    queue: &str,
    exchange: &str,
    args: FieldTable,
) -> lapin::Result<()> {
    within(
        "queue.bind",
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            args,
        ),
    )
    .await
}

/// A queue behind a filter binding, with a sentinel binding of its own.
struct Subscriber {
    exchange: String,
    queue: String,
    consumer: lapin::Consumer,
}

impl Subscriber {
    /// Declares a queue, binds it to `exchange` with the sentinel binding, and consumes.
    async fn new(ch: &Channel, exchange: &str) -> Subscriber {
        let queue = declare_temp_queue(ch).await;
        let sentinel = headers(&[("x-match", text("all")), ("sentinel", text(&queue))]);
        bind_queue(ch, &queue, exchange, "", sentinel).await;
        let consumer = within(
            "basic.consume",
            ch.basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .expect("basic.consume");
        Subscriber {
            exchange: exchange.to_owned(),
            queue,
            consumer,
        }
    }

    async fn bind_filter(&self, ch: &Channel, policy: &str, scope: Option<&str>) {
        try_bind(ch, &self.queue, &self.exchange, filter_args(policy, scope))
            .await
            .unwrap_or_else(|e| panic!("bind {policy}: {e}"));
    }

    /// Publishes each (body, headers), then the sentinel; the bodies that arrived before it.
    async fn received(&mut self, ch: &Channel, messages: &[(&str, FieldTable)]) -> Vec<String> {
        for (body, table) in messages {
            let properties = BasicProperties::default().with_headers(table.clone());
            publish_with(ch, &self.exchange, "", body.as_bytes(), properties).await;
        }
        let sentinel = headers(&[("sentinel", text(&self.queue))]);
        let properties = BasicProperties::default().with_headers(sentinel);
        publish_with(ch, &self.exchange, "", SENTINEL.as_bytes(), properties).await;
        let mut bodies = Vec::new();
        loop {
            let delivery = next_delivery(&mut self.consumer).await;
            let body = String::from_utf8_lossy(&delivery.data).into_owned();
            if body == SENTINEL {
                return bodies;
            }
            bodies.push(body);
        }
    }
}

async fn headers_exchange(ch: &Channel, durable: bool) -> String {
    let name = unique_name("filters");
    within(
        "exchange.declare",
        ch.exchange_declare(
            name.as_str().into(),
            ExchangeKind::Headers,
            ExchangeDeclareOptions {
                durable,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.declare");
    name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_operator_delivers_the_matching_message_only() {
    let broker = start_broker().await;
    let (_conn, ch) = broker.channel().await;
    let exchange = headers_exchange(&ch, false).await;
    let int = AMQPValue::LongInt;
    let nested = |key: &str, value: AMQPValue| AMQPValue::FieldTable(headers(&[(key, value)]));
    let array = |items: Vec<AMQPValue>| AMQPValue::FieldArray(FieldArray::from(items));
    // (policy, headers of the message that must arrive, headers of one that must not)
    let cases: Vec<(&str, FieldTable, FieldTable)> = vec![
        (
            r#"{"color": ["red", "blue"]}"#,
            headers(&[("color", text("blue"))]),
            headers(&[("color", text("green"))]),
        ),
        (
            r#"{"qty": [5]}"#,
            headers(&[("qty", AMQPValue::ShortShortUInt(5))]),
            headers(&[("qty", text("5"))]),
        ),
        (
            r#"{"fare": [{"numeric": [">=", 10, "<", 20]}]}"#,
            headers(&[("fare", AMQPValue::Double(19.5))]),
            headers(&[("fare", AMQPValue::LongLongInt(20))]),
        ),
        (
            r#"{"sport": [{"prefix": "bas"}]}"#,
            headers(&[("sport", text("basketball"))]),
            headers(&[("sport", text("rugby"))]),
        ),
        (
            r#"{"file": [{"suffix": ".png"}]}"#,
            headers(&[("file", text("cat.png"))]),
            headers(&[("file", text("cat.gif"))]),
        ),
        (
            r#"{"sport": [{"anything-but": ["rugby", "tennis"]}]}"#,
            headers(&[("sport", text("golf"))]),
            headers(&[("sport", text("tennis"))]),
        ),
        (
            r#"{"sport": [{"anything-but": {"prefix": "ru"}}]}"#,
            headers(&[("sport", text("golf"))]),
            headers(&[("sport", text("rugby"))]),
        ),
        (
            r#"{"store": [{"exists": true}]}"#,
            headers(&[("store", text("fans"))]),
            headers(&[("other", text("fans"))]),
        ),
        (
            r#"{"store": [{"exists": false}]}"#,
            headers(&[("other", text("fans"))]),
            headers(&[("store", text("fans"))]),
        ),
        (
            r#"{"name": [{"equals-ignore-case": "ALICE"}]}"#,
            headers(&[("name", text("aLiCe"))]),
            headers(&[("name", text("alicia"))]),
        ),
        (
            r#"{"vip": [true]}"#,
            headers(&[("vip", AMQPValue::Boolean(true))]),
            headers(&[("vip", AMQPValue::Boolean(false))]),
        ),
        (
            r#"{"customer": {"tier": ["gold"]}}"#,
            headers(&[("customer", nested("tier", text("gold")))]),
            headers(&[("customer", nested("tier", text("silver")))]),
        ),
        (
            r#"{"tags": ["urgent"]}"#,
            headers(&[("tags", array(vec![text("new"), text("urgent")]))]),
            headers(&[("tags", array(vec![text("new"), text("later")]))]),
        ),
        (
            r#"{"source": ["shop"], "$or": [{"total": [{"numeric": [">", 100]}]}, {"vip": [true]}]}"#,
            headers(&[("source", text("shop")), ("vip", AMQPValue::Boolean(true))]),
            headers(&[("source", text("shop")), ("total", int(50))]),
        ),
    ];
    for (policy, yes, no) in cases {
        let mut subscriber = Subscriber::new(&ch, &exchange).await;
        subscriber.bind_filter(&ch, policy, None).await;
        let got = subscriber
            .received(
                &ch,
                &[("no", no), ("yes", yes), ("bare", FieldTable::default())],
            )
            .await;
        // "bare" has no headers at all: no policy matches it (not even `exists: false`,
        // as in SNS, where it needs at least one attribute).
        assert_eq!(got, vec!["yes"], "{policy}");
    }
    // The standard headers exchanges take filters too.
    for standard in ["amq.headers", "amq.match"] {
        let mut subscriber = Subscriber::new(&ch, standard).await;
        let key = subscriber.queue.clone();
        let policy = format!(r#"{{"{key}": [{{"numeric": [">", 1]}}]}}"#);
        subscriber.bind_filter(&ch, &policy, None).await;
        let got = subscriber
            .received(
                &ch,
                &[
                    ("no", headers(&[(key.as_str(), int(1))])),
                    ("yes", headers(&[(key.as_str(), int(2))])),
                ],
            )
            .await;
        assert_eq!(got, vec!["yes"], "{standard}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_scope_matches_json_object_bodies_only() {
    let broker = start_broker().await;
    let (_conn, ch) = broker.channel().await;
    let exchange = headers_exchange(&ch, false).await;
    let mut subscriber = Subscriber::new(&ch, &exchange).await;
    let policy = r#"{"order": {"total": [{"numeric": [">", 100]}]}, "tags": ["rush"]}"#;
    subscriber.bind_filter(&ch, policy, Some("body")).await;
    // A second body filter: the body is parsed once for both (a unit test pins laziness).
    subscriber
        .bind_filter(&ch, r#"{"kind": ["refund"]}"#, Some("body"))
        .await;
    let none = FieldTable::default();
    let got = subscriber
        .received(
            &ch,
            &[
                (
                    r#"{"order": {"total": 150}, "tags": ["a", "rush"]}"#,
                    none.clone(),
                ),
                (
                    r#"{"order": {"total": 50}, "tags": ["rush"]}"#,
                    none.clone(),
                ),
                ("not json at all", none.clone()),
                (r#"[{"kind": "refund"}]"#, none.clone()),
                (r#"{"kind": "refund"}"#, none.clone()),
                // Headers do not count for a body-scoped filter.
                ("{}", headers(&[("kind", text("refund"))])),
            ],
        )
        .await;
    assert_eq!(
        got,
        vec![
            r#"{"order": {"total": 150}, "tags": ["a", "rush"]}"#,
            r#"{"kind": "refund"}"#
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_filters_are_refused_with_406_and_the_connection_survives() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.expect("channel");
    let exchange = headers_exchange(&ch, false).await;
    let queue = declare_temp_queue(&ch).await;
    let filter_only = headers(&[("x-match", text("filter"))]);
    let cases: Vec<(FieldTable, &str)> = vec![
        (
            filter_args(r#"{"fare": [{"numerc": [">", 1]}]}"#, None),
            r#"PRECONDITION_FAILED - invalid x-filter: unknown operator "numerc" at key "fare""#,
        ),
        (filter_args("{not json", None), "invalid x-filter: bad JSON"),
        (
            filter_args(r#"{"fare": [{"numeric": [">", "ten"]}]}"#, None),
            "needs a number",
        ),
        (
            filter_args(r#"{"fare": 10}"#, None),
            "must be an array or an object",
        ),
        (
            filter_args(r#"{"a": {"b": {"c": {"d": {"e": {"f": ["x"]}}}}}}"#, None),
            "nested deeper than 5",
        ),
        (
            filter_args(
                r#"{"a":["x"],"b":["x"],"c":["x"],"d":["x"],"e":["x"],"f":["x"]}"#,
                None,
            ),
            "6 keys, more than 5",
        ),
        (
            filter_only.clone(),
            "x-match filter requires an x-filter argument",
        ),
        (
            {
                let mut args = filter_only.clone();
                args.insert("x-filter".into(), AMQPValue::LongInt(1));
                args
            },
            "invalid x-filter type",
        ),
        (
            filter_args(r#"{"a": ["x"]}"#, Some("payload")),
            "invalid x-filter-scope",
        ),
    ];
    for (args, expected) in cases {
        let ch = conn.create_channel().await.expect("channel");
        let reply = expect_code(try_bind(&ch, &queue, &exchange, args).await, 406);
        assert!(
            reply.contains(expected),
            "{reply:?} should contain {expected:?}"
        );
        assert!(!ch.status().connected(), "the channel is closed");
    }
    assert!(conn.status().connected(), "the connection survives");
    // The classic modes are unchanged.
    let ch = conn.create_channel().await.expect("channel");
    let reply = expect_code(
        try_bind(
            &ch,
            &queue,
            &exchange,
            headers(&[("x-match", text("some"))]),
        )
        .await,
        406,
    );
    assert!(
        reply.contains("expected all, any, all-with-x, or any-with-x"),
        "{reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbinding_removes_only_that_filter() {
    let broker = start_broker().await;
    let (_conn, ch) = broker.channel().await;
    let exchange = headers_exchange(&ch, false).await;
    let mut subscriber = Subscriber::new(&ch, &exchange).await;
    let red = r#"{"color": ["red"]}"#;
    let big = r#"{"size": [{"numeric": [">", 10]}]}"#;
    // Same queue and key, different x-filter: two bindings.
    subscriber.bind_filter(&ch, red, None).await;
    subscriber.bind_filter(&ch, big, None).await;
    let red_big = headers(&[("color", text("red")), ("size", AMQPValue::LongInt(11))]);
    let messages = [
        ("red", headers(&[("color", text("red"))])),
        ("big", headers(&[("size", AMQPValue::LongInt(11))])),
        ("red-big", red_big),
    ];
    let got = subscriber.received(&ch, &messages).await;
    assert_eq!(
        got,
        vec!["red", "big", "red-big"],
        "both match: delivered once"
    );
    within(
        "queue.unbind",
        ch.queue_unbind(
            subscriber.queue.as_str().into(),
            exchange.as_str().into(),
            "".into(),
            filter_args(red, None),
        ),
    )
    .await
    .expect("queue.unbind");
    let got = subscriber.received(&ch, &messages).await;
    assert_eq!(got, vec!["big", "red-big"]);
    within(
        "queue.unbind",
        ch.queue_unbind(
            subscriber.queue.as_str().into(),
            exchange.as_str().into(),
            "".into(),
            filter_args(big, None),
        ),
    )
    .await
    .expect("queue.unbind");
    assert!(subscriber.received(&ch, &messages).await.is_empty());
}

async fn start_on(dir: &Path) -> ServerHandle {
    let mut config = Config::for_tests();
    config.data_dir = dir.to_path_buf();
    warren_server::start(config).await.expect("start warren")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_filter_binding_survives_a_restart() {
    if is_external() {
        return;
    }
    let dir = std::env::temp_dir().join(unique_name("warren-filters"));
    let policy = r#"{"fare": [{"numeric": [">=", 10]}]}"#;
    let server = start_on(&dir).await;
    {
        let conn = connect(&server.amqp_url()).await;
        let ch = conn.create_channel().await.expect("channel");
        within(
            "exchange.declare",
            ch.exchange_declare(
                "fares".into(),
                ExchangeKind::Headers,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .expect("exchange.declare");
        within(
            "queue.declare",
            ch.queue_declare(
                "expensive".into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .expect("queue.declare");
        try_bind(&ch, "expensive", "fares", filter_args(policy, None))
            .await
            .expect("bind");
    }
    within("broker shutdown", server.shutdown()).await;
    let server = start_on(&dir).await;
    {
        let conn = connect(&server.amqp_url()).await;
        let ch = conn.create_channel().await.expect("channel");
        let mut subscriber = Subscriber::new(&ch, "fares").await;
        // The restored binding delivers into the durable queue; the subscriber's own queue
        // only carries the sentinel, which proves the earlier messages were routed.
        let fare = |n: i32| headers(&[("fare", AMQPValue::LongInt(n))]);
        subscriber
            .received(&ch, &[("cheap", fare(9)), ("dear", fare(10))])
            .await;
        assert_eq!(drain_queue(&ch, "expensive").await, vec!["dear"]);
        // Binding the same filter again is a no-op: it is the same binding.
        try_bind(&ch, "expensive", "fares", filter_args(policy, None))
            .await
            .expect("rebind");
        let bindings = server.broker().vhost("/").expect("vhost").bindings();
        let filters: Vec<_> = bindings
            .iter()
            .filter(|b| b.source.as_str() == "fares" && b.destination.as_str() == "expensive")
            .collect();
        assert_eq!(filters.len(), 1, "{filters:?}");
        let stored = filters[0].arguments.inner().get("x-filter");
        assert_eq!(
            stored,
            Some(&text(policy)),
            "x-filter is an ordinary argument"
        );
    }
    within("broker shutdown", server.shutdown()).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Exported definitions carry `x-filter` as an ordinary argument; importing them into another
/// broker gives a binding that filters the same way. A bad policy in a document fails the
/// whole import (nothing declared), naming the entry and the problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_export_and_import_carry_the_filter() {
    let (Some(source), Some(target)) = (
        start_broker_with(|_| {}).await,
        start_broker_with(|_| {}).await,
    ) else {
        return;
    };
    let policy = r#"{"fare": [{"numeric": [">=", 10]}]}"#;
    {
        let (_conn, ch) = source.channel().await;
        declare_exchange(&ch, "fares", ExchangeKind::Headers).await;
        declare_queue(&ch, "expensive").await;
        try_bind(&ch, "expensive", "fares", filter_args(policy, None))
            .await
            .expect("bind");
    }
    let exported =
        definitions_json::to_json(&source.broker().expect("broker").export_definitions());
    assert!(exported.contains(r#"\"numeric\""#), "{exported}");
    let defs = definitions_json::parse(&exported).expect("parse");
    let target_broker = target.broker().expect("broker");
    within("import", target_broker.import_definitions(&defs))
        .await
        .expect("import");
    let (_conn, ch) = target.channel().await;
    let mut subscriber = Subscriber::new(&ch, "fares").await;
    let fare = |n: i32| headers(&[("fare", AMQPValue::LongInt(n))]);
    subscriber
        .received(&ch, &[("cheap", fare(9)), ("dear", fare(10))])
        .await;
    assert_eq!(drain_queue(&ch, "expensive").await, vec!["dear"]);

    let bad = exported
        .replace("\\\"numeric\\\"", "\\\"numerc\\\"")
        .replace("\"fares\"", "\"fares2\"")
        .replace("\"expensive\"", "\"expensive2\"");
    assert!(bad.contains("numerc"), "{bad}");
    let defs = definitions_json::parse(&bad).expect("parse");
    let error = within("import", target_broker.import_definitions(&defs))
        .await
        .expect_err("a bad policy fails the import");
    assert!(
        error
            .text()
            .contains(r#"unknown operator "numerc" at key "fare""#),
        "{error}"
    );
    let vhost = target_broker.vhost("/").expect("vhost");
    assert!(
        vhost.routing().exchanges.get("fares2").is_none(),
        "nothing of the bad document was applied"
    );
}
