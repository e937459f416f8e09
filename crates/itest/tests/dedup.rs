//! Message deduplication through lapin, as RabbitMQ's `rabbitmq-message-deduplication`
//! plugin: the `x-message-deduplication` exchange (a fanout that routes each
//! `x-deduplication-header` value once per cache TTL, acking the dropped duplicates),
//! its cache's size and TTL, queue-level deduplication (`x-message-deduplication: true`),
//! the refusals, and — Warren's own — a durable exchange's cache surviving a restart.

use std::path::Path;

use warren_itest::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeclareOptions,
};
use warren_itest::lapin::types::{AMQPValue, FieldTable};
use warren_itest::lapin::{BasicProperties, Channel, Confirmation, ExchangeKind};
use warren_itest::*;
use warren_server::{Config, ServerHandle};

const TYPE: &str = "x-message-deduplication";

fn kind() -> ExchangeKind {
    ExchangeKind::Custom(TYPE.into())
}

fn cache_args(size: i64, ttl_ms: Option<i64>) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-cache-size".into(), AMQPValue::LongLongInt(size));
    if let Some(ttl) = ttl_ms {
        args.insert("x-cache-ttl".into(), AMQPValue::LongLongInt(ttl));
    }
    args
}

async fn declare_dedup(ch: &Channel, name: &str, durable: bool, args: FieldTable) {
    delete_exchange(ch, name).await;
    within(
        "exchange.declare-ok",
        ch.exchange_declare(
            name.into(),
            kind(),
            ExchangeDeclareOptions {
                durable,
                ..Default::default()
            },
            args,
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("declare {name}: {e}"));
}

/// Properties carrying `x-deduplication-header: key` (and a persistent delivery mode).
fn keyed(key: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "x-deduplication-header".into(),
        AMQPValue::LongString(key.into()),
    );
    BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(2)
}

/// An exchange with one bound exclusive queue; returns the queue's name.
async fn exchange_with_queue(ch: &Channel, x: &str, args: FieldTable) -> String {
    declare_dedup(ch, x, false, args).await;
    let q = declare_temp_queue(ch).await;
    // A fanout: the binding key does not matter.
    bind_queue(ch, &q, x, "ignored", FieldTable::default()).await;
    q
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exchange_routes_each_key_once_and_acks_the_duplicates() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let x = unique_name("dedup.x");
    let q = exchange_with_queue(&ch, &x, cache_args(100, None)).await;
    // Every publish is acked (publish_confirmed asserts it), duplicates included.
    publish_confirmed(&ch, &x, "a", b"first", keyed("k1")).await;
    publish_confirmed(&ch, &x, "b", b"duplicate", keyed("k1")).await;
    publish_confirmed(&ch, &x, "c", b"other key", keyed("k2")).await;
    publish_confirmed(&ch, &x, "d", b"no header 1", BasicProperties::default()).await;
    publish_confirmed(&ch, &x, "e", b"no header 2", BasicProperties::default()).await;
    assert_eq!(
        drain_queue(&ch, &q).await,
        ["first", "other key", "no header 1", "no header 2"]
    );
    // As the plugin routes a duplicate to nothing, a mandatory one comes back (312).
    let confirm = within(
        "basic.publish",
        ch.basic_publish(
            x.as_str().into(),
            "".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"mandatory duplicate",
            keyed("k2"),
        ),
    )
    .await
    .expect("publish");
    match within("confirm", confirm).await.expect("confirm") {
        Confirmation::Ack(Some(returned)) => {
            assert_eq!(returned.reply_code, 312);
            assert_eq!(returned.delivery.data, b"mandatory duplicate");
        }
        other => panic!("expected an ack after basic.return, got {other:?}"),
    }
    delete_exchange(&ch, &x).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_passes_again_once_its_ttl_expired() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let x = unique_name("dedup.ttl");
    let q = exchange_with_queue(&ch, &x, cache_args(100, Some(60_000))).await;
    // The message's own x-cache-ttl overrides the exchange's minute.
    let mut short = keyed("k");
    if let Some(headers) = short.headers().clone().as_mut() {
        headers.insert("x-cache-ttl".into(), AMQPValue::LongLongInt(150));
        short = short.with_headers(headers.clone());
    }
    publish_confirmed(&ch, &x, "", b"1", short.clone()).await;
    publish_confirmed(&ch, &x, "", b"2", keyed("k")).await;
    assert_eq!(queue_counts(&ch, &q).await.0, 1, "dropped within the ttl");
    // The expiry is told to nobody: publish until one passes (a duplicate is dropped).
    eventually("the key expired", || async {
        publish_confirmed(&ch, &x, "", b"again", short.clone()).await;
        queue_counts(&ch, &q).await.0 == 2
    })
    .await;
    // The exchange's TTL (a minute) now holds for the key inserted again without a header.
    publish_confirmed(&ch, &x, "", b"3", keyed("long")).await;
    publish_confirmed(&ch, &x, "", b"4", keyed("long")).await;
    assert_eq!(queue_counts(&ch, &q).await.0, 3);
    delete_exchange(&ch, &x).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cache_forgets_its_oldest_key() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let x = unique_name("dedup.size");
    let q = exchange_with_queue(&ch, &x, cache_args(2, None)).await;
    for key in ["k1", "k2", "k3"] {
        publish_confirmed(&ch, &x, "", key.as_bytes(), keyed(key)).await;
    }
    // k1 was evicted by k3; k3 is still there.
    publish_confirmed(&ch, &x, "", b"k1 again", keyed("k1")).await;
    publish_confirmed(&ch, &x, "", b"k3 again", keyed("k3")).await;
    assert_eq!(drain_queue(&ch, &q).await, ["k1", "k2", "k3", "k1 again"]);
    delete_exchange(&ch, &x).await;
}

async fn declare_dedup_queue(ch: &Channel, name: &str, durable: bool) {
    delete_queue(ch, name).await;
    let mut args = FieldTable::default();
    args.insert("x-message-deduplication".into(), AMQPValue::Boolean(true));
    within(
        "queue.declare-ok",
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable,
                ..Default::default()
            },
            args,
        ),
    )
    .await
    .expect("declare a deduplicating queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_refuses_a_key_while_a_message_with_it_is_in_the_queue() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = unique_name("dedup.q");
    declare_dedup_queue(&ch, &q, false).await;
    publish_confirmed(&ch, "", &q, b"first", keyed("k")).await;
    publish_confirmed(&ch, "", &q, b"duplicate", keyed("k")).await;
    publish_confirmed(&ch, "", &q, b"other", keyed("k2")).await;
    assert_eq!(queue_counts(&ch, &q).await.0, 2);
    // Delivered but unacked: still in the queue, so still a duplicate.
    let got = within(
        "basic.get",
        ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .expect("basic.get")
    .expect("a message");
    assert_eq!(got.delivery.data, b"first");
    publish_confirmed(&ch, "", &q, b"while unacked", keyed("k")).await;
    assert_eq!(queue_counts(&ch, &q).await.0, 1, "only 'other' is ready");
    // Acked: the key is free again.
    within(
        "basic.ack",
        got.delivery.acker.ack(BasicAckOptions::default()),
    )
    .await
    .expect("ack");
    publish_confirmed(&ch, "", &q, b"after ack", keyed("k")).await;
    assert_eq!(drain_queue(&ch, &q).await, ["other", "after ack"]);
    // Purged (drained above with no-ack): accepted again.
    publish_confirmed(&ch, "", &q, b"after drain", keyed("k")).await;
    assert_eq!(queue_counts(&ch, &q).await.0, 1);
    delete_queue(&ch, &q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_are_refused_with_406_and_a_readable_text() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let string = |s: &str| AMQPValue::LongString(s.into());
    let cases: Vec<(Vec<(&str, AMQPValue)>, &str)> = vec![
        (vec![], "'x-cache-size' must be an integer greater than 0"),
        (
            vec![("x-cache-size", AMQPValue::LongInt(0))],
            "'x-cache-size' must be an integer greater than 0",
        ),
        (
            vec![("x-cache-size", string("lots"))],
            "'x-cache-size' must be an integer greater than 0",
        ),
        (
            vec![("x-cache-size", AMQPValue::LongLongInt(10_000_001))],
            "'x-cache-size' must not be greater than 10000000",
        ),
        (
            vec![
                ("x-cache-size", AMQPValue::LongInt(5)),
                ("x-cache-ttl", AMQPValue::LongInt(-5)),
            ],
            "'x-cache-ttl' must be an integer greater than 0",
        ),
        (
            vec![
                ("x-cache-size", AMQPValue::LongInt(5)),
                ("x-cache-persistence", string("tape")),
            ],
            "'x-cache-persistence' must be either 'disk' or 'memory'",
        ),
    ];
    for (pairs, text) in cases {
        let mut args = FieldTable::default();
        for (k, v) in pairs {
            args.insert(k.into(), v);
        }
        let ch = conn.create_channel().await.expect("channel");
        let result = within(
            "exchange.declare",
            ch.exchange_declare(
                "dedup.refused".into(),
                kind(),
                ExchangeDeclareOptions::default(),
                args,
            ),
        )
        .await;
        let reply = expect_code(result, 406);
        assert!(reply.starts_with("PRECONDITION_FAILED - "), "{reply}");
        assert!(reply.contains(text), "{reply:?} lacks {text:?}");
    }
    let ch = conn.create_channel().await.expect("channel");
    let mut args = FieldTable::default();
    args.insert("x-message-deduplication".into(), string("yes"));
    let result = within(
        "queue.declare",
        ch.queue_declare(
            "dedup.refused.q".into(),
            QueueDeclareOptions::default(),
            args,
        ),
    )
    .await;
    let reply = expect_code(result, 406);
    assert!(reply.contains("'x-message-deduplication'"), "{reply}");
    assert!(reply.contains("boolean"), "{reply}");
}

async fn start_on(dir: &Path) -> ServerHandle {
    let mut config = Config::for_tests();
    config.data_dir = dir.to_path_buf();
    warren_server::start(config).await.expect("start warren")
}

/// A durable exchange's cache is on disk: after a restart a key seen before is still
/// dropped, even once the message it let through has been consumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_exchange_remembers_its_keys_across_a_restart() {
    if is_external() {
        return;
    }
    let dir = std::env::temp_dir().join(unique_name("warren-dedup-restart"));
    let (x, q) = ("dedup.durable", "dedup.durable.q");
    let server = start_on(&dir).await;
    {
        let conn = connect(&server.amqp_url()).await;
        let ch = confirm_channel(&conn).await;
        declare_dedup(&ch, x, true, cache_args(100, None)).await;
        declare_dedup_queue(&ch, q, true).await;
        bind_queue(&ch, q, x, "", FieldTable::default()).await;
        publish_confirmed(&ch, x, "", b"k1", keyed("k1")).await;
        publish_confirmed(&ch, x, "", b"k2", keyed("k2")).await;
        // k1's message leaves the queue: only the exchange's cache remembers k1 now.
        assert_eq!(get_body(&ch, q).await.as_deref(), Some(&b"k1"[..]));
    }
    server.shutdown().await;

    let server = start_on(&dir).await;
    {
        let conn = connect(&server.amqp_url()).await;
        let ch = confirm_channel(&conn).await;
        assert_eq!(queue_counts(&ch, q).await.0, 1, "k2 recovered");
        publish_confirmed(&ch, x, "", b"k1 retried", keyed("k1")).await;
        publish_confirmed(&ch, x, "", b"k2 retried", keyed("k2")).await;
        publish_confirmed(&ch, x, "", b"k3", keyed("k3")).await;
        assert_eq!(drain_queue(&ch, q).await, ["k2", "k3"]);
        // Deleting the exchange deletes its cache: a new one of the same name starts empty.
        within(
            "exchange.delete",
            ch.exchange_delete(x.into(), ExchangeDeleteOptions::default()),
        )
        .await
        .expect("delete");
        assert!(
            std::fs::read_dir(dir.join("dedup")).map_or(true, |d| d.count() == 0),
            "the cache file is removed with its exchange"
        );
        declare_dedup(&ch, x, true, cache_args(100, None)).await;
        bind_queue(&ch, q, x, "", FieldTable::default()).await;
        publish_confirmed(&ch, x, "", b"k1 new", keyed("k1")).await;
        assert_eq!(drain_queue(&ch, q).await, ["k1 new"]);
    }
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The window the fsync order leaves: a message on disk whose key is not (a crash between
/// the two fsyncs). Simulated by removing the cache file while the broker is down: the key
/// of the recovered message, published through the exchange, is put back in the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovered_messages_put_their_keys_back_in_the_exchange_cache() {
    retry_after_the_key_window("dedup.window", false).await;
}

/// The same window for a message published to a fanout bound to the deduplication exchange:
/// the queue's log names only the fanout, and recovery follows the bindings back to put the
/// key in the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovered_messages_put_back_keys_that_came_through_an_exchange_binding() {
    retry_after_the_key_window("dedup.e2e", true).await;
}

/// Publishes `k` (confirmed) through a durable deduplication exchange `name` into a durable
/// queue, directly or (`e2e`) through a durable fanout bound to it; removes the cache
/// directory while the broker is down; after the restart a retry of `k` must be dropped.
async fn retry_after_the_key_window(name: &str, e2e: bool) {
    if is_external() {
        return;
    }
    let dir = std::env::temp_dir().join(unique_name(&format!("warren-{name}")));
    let (x, q, source) = (name, format!("{name}.q"), format!("{name}.src"));
    let publish_to = if e2e { source.as_str() } else { x };
    let server = start_on(&dir).await;
    {
        let conn = connect(&server.amqp_url()).await;
        let ch = confirm_channel(&conn).await;
        declare_dedup(&ch, x, true, cache_args(100, None)).await;
        within(
            "queue.declare-ok",
            ch.queue_declare(
                q.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .expect("queue");
        bind_queue(&ch, &q, x, "", FieldTable::default()).await;
        if e2e {
            within(
                "exchange.declare-ok",
                ch.exchange_declare(
                    source.as_str().into(),
                    ExchangeKind::Fanout,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await
            .expect("declare the source");
            within(
                "exchange.bind-ok",
                ch.exchange_bind(
                    x.into(),
                    source.as_str().into(),
                    "".into(),
                    Default::default(),
                    FieldTable::default(),
                ),
            )
            .await
            .expect("exchange.bind");
        }
        publish_confirmed(&ch, publish_to, "", b"k", keyed("k")).await;
    }
    server.shutdown().await;
    // The crash window: the message on disk, its key not.
    std::fs::remove_dir_all(dir.join("dedup")).expect("the cache directory exists");

    let server = start_on(&dir).await;
    {
        let conn = connect(&server.amqp_url()).await;
        let ch = confirm_channel(&conn).await;
        publish_confirmed(&ch, publish_to, "", b"k retried", keyed("k")).await;
        assert_eq!(drain_queue(&ch, &q).await, ["k"]);
    }
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A consumer already waiting on the queue of a durable exchange gets every message, in
/// order, each once its key is on disk: the queue holds it until then and is woken when the
/// key's fsync opens its gate (no other command comes to wake it here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_consumer_gets_each_message_once_its_key_is_written() {
    if is_external() {
        return;
    }
    let dir = std::env::temp_dir().join(unique_name("warren-dedup-held"));
    let (x, q) = ("dedup.held", "dedup.held.q");
    let server = start_on(&dir).await;
    {
        let conn = connect(&server.amqp_url()).await;
        let ch = confirm_channel(&conn).await;
        declare_dedup(&ch, x, true, cache_args(1000, None)).await;
        declare_dedup_queue(&ch, q, true).await;
        bind_queue(&ch, q, x, "", FieldTable::default()).await;
        let consuming = conn.create_channel().await.expect("channel");
        let mut consumer = within(
            "basic.consume-ok",
            consuming.basic_consume(
                q.into(),
                "held".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .expect("consume");
        for i in 0..50 {
            let key = format!("k{i}");
            // One at a time: the queue is idle when each key's fsync opens its gate.
            publish_confirmed(&ch, x, "", key.as_bytes(), keyed(&key)).await;
            let d = next_delivery(&mut consumer).await;
            assert_eq!(d.data, key.as_bytes());
            within("basic.ack", d.acker.ack(BasicAckOptions::default()))
                .await
                .expect("ack");
        }
        publish_confirmed(&ch, x, "", b"k7 again", keyed("k7")).await;
        assert_eq!(queue_counts(&ch, q).await.0, 0, "the duplicate was dropped");
    }
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Publishes `count` messages with unique keys in confirm mode (up to `window` awaiting
/// their confirm) and returns messages per second.
async fn confirmed_rate(ch: &Channel, x: &str, count: usize, persistent: bool) -> f64 {
    let window = 1000;
    let started = std::time::Instant::now();
    let mut pending = std::collections::VecDeque::new();
    for i in 0..count {
        let mut properties = keyed(&format!("key-{i}"));
        if !persistent {
            properties = properties.with_delivery_mode(1);
        }
        let confirm = ch
            .basic_publish(
                x.into(),
                "".into(),
                BasicPublishOptions::default(),
                b"m",
                properties,
            )
            .await
            .expect("publish");
        pending.push_back(confirm);
        if pending.len() >= window {
            let c = pending.pop_front().expect("non-empty");
            assert!(c.await.expect("confirm").is_ack());
        }
    }
    for c in pending {
        assert!(c.await.expect("confirm").is_ack());
    }
    count as f64 / started.elapsed().as_secs_f64()
}

/// Figures for docs/benchmarks.md: a fanout against a deduplication exchange, each with one
/// queue, transient and durable. `cargo test --release -p warren-itest --test dedup --
/// --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn figures() {
    if is_external() {
        return;
    }
    let count: usize = std::env::var("DEDUP_FIGURES_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(50_000);
    let dir = std::env::temp_dir().join(unique_name("warren-dedup-figures"));
    let server = start_on(&dir).await;
    let conn = connect(&server.amqp_url()).await;
    let ch = confirm_channel(&conn).await;
    // Each case twice, alternating; the first round warms the broker and the client up.
    for round in 0..2 {
        for durable in [false, true] {
            for dedup in [false, true] {
                let x = format!("fig.{round}.{durable}.{dedup}");
                if dedup {
                    declare_dedup(&ch, &x, durable, cache_args(1_000_000, None)).await;
                } else {
                    within(
                        "exchange.declare",
                        ch.exchange_declare(
                            x.as_str().into(),
                            ExchangeKind::Fanout,
                            ExchangeDeclareOptions {
                                durable,
                                ..Default::default()
                            },
                            FieldTable::default(),
                        ),
                    )
                    .await
                    .expect("declare");
                }
                let q = format!("{x}.q");
                within(
                    "queue.declare",
                    ch.queue_declare(
                        q.as_str().into(),
                        QueueDeclareOptions {
                            durable,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    ),
                )
                .await
                .expect("queue");
                bind_queue(&ch, &q, &x, "", FieldTable::default()).await;
                let rate = confirmed_rate(&ch, &x, count, durable).await;
                let kind = if dedup { TYPE } else { "fanout" };
                eprintln!(
                "round {round} durable={durable} {kind}: {rate:.0} msg/s confirmed ({count} messages)"
            );
                delete_queue(&ch, &q).await;
            }
        }
    }
    drop(conn);
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Deleting a vhost deletes the cache files of its durable deduplication exchanges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_vhost_deletes_its_exchange_caches() {
    let Some(b) = start_broker_with(|_| {}).await else {
        return;
    };
    let admin = b.broker().expect("in-process broker");
    admin
        .put_vhost(warren_core::access::VHostInfo {
            name: "dedup-vhost".into(),
            ..Default::default()
        })
        .expect("put vhost");
    admin
        .set_permissions("guest", "dedup-vhost", ".*", ".*", ".*")
        .expect("permissions");
    let conn = connect(&b.url_with("guest", "guest", "dedup-vhost", "")).await;
    let ch = confirm_channel(&conn).await;
    declare_dedup(&ch, "x", true, cache_args(10, None)).await;
    let q = declare_temp_queue(&ch).await;
    bind_queue(&ch, &q, "x", "", FieldTable::default()).await;
    publish_confirmed(&ch, "x", "", b"k", keyed("k")).await;
    let caches = || {
        std::fs::read_dir(b.data_dir().expect("data dir").join("dedup"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(caches(), 1);
    within("delete vhost", admin.delete_vhost("dedup-vhost"))
        .await
        .expect("delete vhost");
    assert_eq!(caches(), 0);
}

/// A durable queue that takes one message and refuses more (`reject-publish`), holding
/// `filler` already.
async fn full_queue(ch: &Channel, name: &str, durable: bool) {
    delete_queue(ch, name).await;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    within(
        "queue.declare-ok",
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable,
                ..Default::default()
            },
            args,
        ),
    )
    .await
    .expect("queue");
    publish_confirmed(ch, "", name, b"filler", BasicProperties::default()).await;
}

/// The management API's publish through a durable deduplication exchange writes the key
/// only once the message is safe: a publish that no queue could take (answered with an
/// error) leaves no key behind, so its retry goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_management_api_publish_that_failed_leaves_no_key_behind() {
    use serde_json::json;
    if is_external() {
        return;
    }
    let dir = std::env::temp_dir().join(unique_name("warren-dedup-http"));
    let (x, q) = ("dedup.http", "dedup.http.q");
    let server = start_on(&dir).await;
    let (addr, _stop) = serve_mgmt(server.broker().clone()).await;
    {
        let conn = connect(&server.amqp_url()).await;
        let ch = confirm_channel(&conn).await;
        declare_dedup(&ch, x, true, cache_args(100, None)).await;
        full_queue(&ch, q, true).await;
        bind_queue(&ch, q, x, "", FieldTable::default()).await;
        let publish = |payload: &str| {
            json!({
                "properties": {"delivery_mode": 2, "headers": {"x-deduplication-header": "k"}},
                "routing_key": "", "payload": payload, "payload_encoding": "string",
            })
            .to_string()
        };
        let path = format!("/api/exchanges/%2F/{x}/publish");
        let (status, _) =
            http_json(addr, "POST", &path, ("guest", "guest"), &publish("first")).await;
        assert_ne!(status, 200, "the full queue refused it");
        assert_eq!(get_body(&ch, q).await.as_deref(), Some(&b"filler"[..]));
        let (status, answer) =
            http_json(addr, "POST", &path, ("guest", "guest"), &publish("retried")).await;
        assert_eq!((status, answer), (200, json!({"routed": true})));
        assert_eq!(drain_queue(&ch, q).await, ["retried"]);
    }
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A message dead-lettered into a deduplication exchange, durable or not, that no queue
/// could take leaves no key behind: the next one with the same key is not dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_message_no_queue_took_leaves_no_key_behind() {
    if is_external() {
        return;
    }
    let dir = std::env::temp_dir().join(unique_name("warren-dedup-dlx"));
    let server = start_on(&dir).await;
    for durable in [true, false] {
        let (x, full, source) = (
            format!("dedup.dlx.{durable}"),
            format!("dedup.dlx.{durable}.full"),
            format!("dedup.dlx.{durable}.src"),
        );
        let conn = connect(&server.amqp_url()).await;
        let ch = confirm_channel(&conn).await;
        declare_dedup(&ch, &x, durable, cache_args(100, None)).await;
        full_queue(&ch, &full, durable).await;
        bind_queue(&ch, &full, &x, "", FieldTable::default()).await;
        let mut args = FieldTable::default();
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(x.as_str().into()),
        );
        within(
            "queue.declare-ok",
            ch.queue_declare(
                source.as_str().into(),
                QueueDeclareOptions {
                    durable,
                    ..Default::default()
                },
                args,
            ),
        )
        .await
        .expect("queue");
        for body in ["first", "second"] {
            publish_confirmed(&ch, "", &source, body.as_bytes(), keyed("k")).await;
            let got = within(
                "basic.get",
                ch.basic_get(source.as_str().into(), BasicGetOptions { no_ack: false }),
            )
            .await
            .expect("basic.get")
            .expect("a message");
            got.delivery
                .reject(warren_itest::lapin::options::BasicRejectOptions { requeue: false })
                .await
                .expect("reject");
            // The source queue answers after it dead-lettered the message, so what follows
            // reaches the full queue after the dead-lettered copy did.
            queue_counts(&ch, &source).await;
            if body == "first" {
                // Refused: the full queue still holds only its filler.
                assert_eq!(
                    drain_queue(&ch, &full).await,
                    ["filler"],
                    "durable: {durable}"
                );
            }
        }
        // A durable exchange's message is held until its key is on disk: awaited as a
        // delivery rather than taken with basic.get.
        let mut consumer = within(
            "basic.consume-ok",
            ch.basic_consume(
                full.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .expect("consume");
        assert_eq!(
            next_delivery(&mut consumer).await.data,
            b"second",
            "durable: {durable}"
        );
        assert_eq!(queue_counts(&ch, &full).await.0, 0, "durable: {durable}");
    }
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
