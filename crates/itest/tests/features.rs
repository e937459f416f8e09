//! RabbitMQ's queue features seen through lapin: TTLs and dead-lettering (with the exact
//! `x-death` wire types), queue length limits and overflow modes, delivery limits, priority
//! queues, single active consumer and consumer priorities, consumer timeouts, alternate
//! exchanges, direct reply-to, and queue argument validation.
//!
//! Tests of Warren-only behaviour (`x-delivery-limit` on a classic queue, the
//! `x-consumer-timeout` queue argument, config-dependent timeouts) skip themselves against an
//! external broker; everything else states RabbitMQ 3.10's behaviour.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use warren_itest::amq_protocol::types::{AMQPValue, FieldArray, FieldTable};
use warren_itest::futures_lite::StreamExt;
use warren_itest::lapin::message::Delivery;
use warren_itest::lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, BasicRejectOptions, ExchangeDeclareOptions,
    QueueDeclareOptions,
};
use warren_itest::lapin::{BasicProperties, Confirmation, ExchangeKind};
use warren_itest::*;

/// How long a test watches for something that must NOT arrive.
const QUIET: Duration = Duration::from_millis(300);
const REPLY_TO: &str = "amq.rabbitmq.reply-to";

// ---------------------------------------------------------------------------------------------
// Helpers

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn body(delivery: &Delivery) -> String {
    String::from_utf8_lossy(&delivery.data).into_owned()
}

/// Declares `name` with `args` and the given exclusivity, returning the broker's answer.
async fn try_declare(
    ch: &lapin::Channel,
    name: &str,
    exclusive: bool,
    args: FieldTable,
) -> lapin::Result<lapin::Queue> {
    within(
        "queue.declare",
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions {
                exclusive,
                ..Default::default()
            },
            args,
        ),
    )
    .await
}

/// Declares an exclusive queue `name` with `args` (it dies with the connection).
async fn declare_with(ch: &lapin::Channel, name: &str, args: FieldTable) {
    try_declare(ch, name, true, args)
        .await
        .unwrap_or_else(|e| panic!("queue.declare {name}: {e}"));
}

async fn consume_with(
    ch: &lapin::Channel,
    queue: &str,
    tag: &str,
    options: BasicConsumeOptions,
    args: FieldTable,
) -> lapin::Consumer {
    within(
        "basic.consume-ok",
        ch.basic_consume(queue.into(), tag.into(), options, args),
    )
    .await
    .unwrap_or_else(|e| panic!("basic.consume on {queue}: {e}"))
}

/// A consumer with manual acks.
async fn consume(ch: &lapin::Channel, queue: &str, tag: &str) -> lapin::Consumer {
    consume_with(
        ch,
        queue,
        tag,
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// A consumer whose deliveries need no ack.
async fn consume_no_ack(ch: &lapin::Channel, queue: &str) -> lapin::Consumer {
    consume_with(
        ch,
        queue,
        "",
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
}

/// Asserts that `consumer` receives nothing during [`QUIET`].
async fn assert_no_delivery(consumer: &mut lapin::Consumer, what: &str) {
    if let Ok(Some(item)) = tokio::time::timeout(QUIET, consumer.next()).await {
        match item {
            Ok(d) => panic!("{what}: unexpected delivery {:?}", body(&d)),
            Err(e) => panic!("{what}: consumer failed: {e}"),
        }
    }
}

async fn new_channel(conn: &lapin::Connection) -> lapin::Channel {
    within("channel.open-ok", conn.create_channel())
        .await
        .expect("create channel")
}

async fn qos(ch: &lapin::Channel, prefetch: u16) {
    within(
        "basic.qos-ok",
        ch.basic_qos(prefetch, BasicQosOptions { global: false }),
    )
    .await
    .expect("basic.qos");
}

/// Publishes on a confirm channel and returns the broker's confirmation (ack or nack).
async fn publish_confirmation(
    ch: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
) -> Confirmation {
    let confirm = within(
        "basic.publish",
        ch.basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        ),
    )
    .await
    .expect("basic.publish");
    within("publisher confirm", confirm).await.expect("confirm")
}

/// A dead-letter exchange `kind` with a queue bound to it with `key`: (exchange, queue).
/// The queue is exclusive; the exchange must be deleted by the test.
async fn dead_letter_target(
    ch: &lapin::Channel,
    kind: ExchangeKind,
    key: &str,
) -> (String, String) {
    let dlx = unique_name("dlx");
    let dlq = unique_name("dlq");
    declare_exchange(ch, &dlx, kind).await;
    declare_with(ch, &dlq, FieldTable::default()).await;
    bind_queue(ch, &dlq, &dlx, key, FieldTable::default()).await;
    (dlx, dlq)
}

fn headers(delivery: &Delivery) -> &FieldTable {
    delivery
        .properties
        .headers()
        .as_ref()
        .unwrap_or_else(|| panic!("message {:?} has no headers", body(delivery)))
}

fn header<'a>(delivery: &'a Delivery, key: &str) -> &'a AMQPValue {
    headers(delivery)
        .inner()
        .get(key)
        .unwrap_or_else(|| panic!("no header {key} in {:?}", headers(delivery)))
}

/// The tables of the `x-death` header, newest first.
fn deaths(delivery: &Delivery) -> Vec<FieldTable> {
    match header(delivery, "x-death") {
        AMQPValue::FieldArray(array) => array
            .as_slice()
            .iter()
            .map(|v| match v {
                AMQPValue::FieldTable(t) => t.clone(),
                other => panic!("x-death element is not a table: {other:?}"),
            })
            .collect(),
        other => panic!("x-death is not an array: {other:?}"),
    }
}

/// What an `x-death` entry must say.
struct Death<'a> {
    count: i64,
    reason: &'a str,
    queue: &'a str,
    exchange: &'a str,
    routing_keys: &'a [&'a str],
    original_expiration: Option<&'a str>,
}

/// Asserts every field of an `x-death` table, with RabbitMQ's wire types: count a long
/// (64-bit signed), time a timestamp, routing-keys an array of long strings, the rest long
/// strings, and no other field.
#[track_caller]
fn assert_death(t: &FieldTable, expected: &Death<'_>) {
    let get = |k: &str| {
        t.inner()
            .get(k)
            .unwrap_or_else(|| panic!("x-death table has no {k}: {t:?}"))
    };
    assert_eq!(
        get("count"),
        &AMQPValue::LongLongInt(expected.count),
        "{t:?}"
    );
    assert_eq!(get("reason"), &long(expected.reason), "{t:?}");
    assert_eq!(get("queue"), &long(expected.queue), "{t:?}");
    assert_eq!(get("exchange"), &long(expected.exchange), "{t:?}");
    let keys: Vec<AMQPValue> = expected.routing_keys.iter().map(|k| long(k)).collect();
    assert_eq!(
        get("routing-keys"),
        &AMQPValue::FieldArray(FieldArray::from(keys)),
        "{t:?}"
    );
    match get("time") {
        AMQPValue::Timestamp(secs) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock")
                .as_secs();
            // Seconds since the epoch (not milliseconds), about now.
            assert!(
                secs.abs_diff(now) < 3600,
                "time {secs} is not seconds near now ({now})"
            );
        }
        other => panic!("x-death time is not a timestamp: {other:?}"),
    }
    let mut fields: BTreeSet<&str> = ["count", "reason", "queue", "time", "exchange"]
        .into_iter()
        .collect();
    fields.insert("routing-keys");
    match expected.original_expiration {
        Some(exp) => {
            assert_eq!(get("original-expiration"), &long(exp), "{t:?}");
            fields.insert("original-expiration");
        }
        None => assert!(
            !t.contains_key("original-expiration"),
            "unexpected original-expiration: {t:?}"
        ),
    }
    let present: BTreeSet<&str> = t.inner().keys().map(|k| k.as_str()).collect();
    assert_eq!(present, fields, "x-death fields");
}

/// Asserts the `x-first-death-*` headers.
#[track_caller]
fn assert_first_death(delivery: &Delivery, reason: &str, queue: &str, exchange: &str) {
    assert_eq!(header(delivery, "x-first-death-reason"), &long(reason));
    assert_eq!(header(delivery, "x-first-death-queue"), &long(queue));
    assert_eq!(header(delivery, "x-first-death-exchange"), &long(exchange));
}

/// Asserts that dead-lettering added exactly `x-death` and `x-first-death-*` to the message's
/// own headers (`own`). RabbitMQ 3.10 adds nothing else; `x-last-death-*` (RabbitMQ 3.13+) are
/// tolerated, but then must describe the newest `x-death` entry.
#[track_caller]
fn assert_dead_letter_headers(delivery: &Delivery, own: &[&str]) {
    let mut expected: BTreeSet<&str> = own.iter().copied().collect();
    expected.extend([
        "x-death",
        "x-first-death-reason",
        "x-first-death-queue",
        "x-first-death-exchange",
    ]);
    let mut present: BTreeSet<&str> = headers(delivery)
        .inner()
        .keys()
        .map(|k| k.as_str())
        .collect();
    let newest = &deaths(delivery)[0];
    for (last, field) in [
        ("x-last-death-reason", "reason"),
        ("x-last-death-queue", "queue"),
        ("x-last-death-exchange", "exchange"),
    ] {
        if present.remove(last) {
            assert_eq!(
                Some(header(delivery, last)),
                newest.inner().get(field),
                "{last}"
            );
        }
    }
    assert_eq!(present, expected, "headers of the dead-lettered message");
}

/// Whether a mandatory publish to `queue` through the default exchange comes back
/// unroutable, i.e. the queue is gone (publishing does not renew an x-expires lease).
async fn queue_is_gone(ch: &lapin::Channel, queue: &str) -> bool {
    let confirm = within(
        "basic.publish",
        ch.basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"probe",
            BasicProperties::default(),
        ),
    )
    .await
    .expect("basic.publish");
    matches!(
        within("publisher confirm", confirm).await.expect("confirm"),
        Confirmation::Ack(Some(_))
    )
}

/// A broker for a test of Warren-only behaviour; None (test skipped) against an external one.
async fn warren_only() -> Option<TestBroker> {
    start_broker_with(|_| {}).await
}

// ---------------------------------------------------------------------------------------------
// 1. TTL and expiry

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_message_ttl_dead_letters_with_reason_expired() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let (dlx, dlq) = dead_letter_target(&ch, ExchangeKind::Fanout, "").await;
    let src = unique_name("src-x");
    declare_exchange(&ch, &src, ExchangeKind::Direct).await;
    let queue = unique_name("q-ttl");
    declare_with(
        &ch,
        &queue,
        table(&[
            ("x-message-ttl", AMQPValue::LongInt(100)),
            ("x-dead-letter-exchange", long(&dlx)),
        ]),
    )
    .await;
    bind_queue(&ch, &queue, &src, "rk", FieldTable::default()).await;
    let mut dead = consume_no_ack(&ch, &dlq).await;

    let properties = BasicProperties::default()
        .with_message_id("m-1".into())
        .with_headers(table(&[("app", long("kept"))]));
    publish_confirmed(&ch, &src, "rk", b"short-lived", properties).await;

    let d = next_delivery(&mut dead).await;
    assert_eq!(body(&d), "short-lived");
    assert_eq!(d.exchange.as_str(), dlx);
    assert_eq!(d.routing_key.as_str(), "rk", "original routing key kept");
    assert_eq!(
        d.properties.message_id().as_ref().map(|s| s.as_str()),
        Some("m-1")
    );
    assert_eq!(header(&d, "app"), &long("kept"), "other headers are kept");
    assert!(d.properties.expiration().is_none());
    let all = deaths(&d);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_death(
        &all[0],
        &Death {
            count: 1,
            reason: "expired",
            queue: &queue,
            exchange: &src,
            routing_keys: &["rk"],
            original_expiration: None,
        },
    );
    assert_first_death(&d, "expired", &queue, &src);
    assert_dead_letter_headers(&d, &["app"]);
    assert_eq!(queue_counts(&ch, &queue).await.0, 0);
    delete_exchange(&ch, &src).await;
    delete_exchange(&ch, &dlx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_message_expiration_dead_letters_with_original_expiration() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let (dlx, dlq) = dead_letter_target(&ch, ExchangeKind::Fanout, "").await;
    let queue = unique_name("q-exp");
    declare_with(
        &ch,
        &queue,
        table(&[("x-dead-letter-exchange", long(&dlx))]),
    )
    .await;
    let mut dead = consume_no_ack(&ch, &dlq).await;

    let properties = BasicProperties::default().with_expiration("150".into());
    publish_confirmed(&ch, "", &queue, b"per-message", properties).await;

    let d = next_delivery(&mut dead).await;
    assert_eq!(body(&d), "per-message");
    assert_eq!(d.routing_key.as_str(), queue);
    assert!(
        d.properties.expiration().is_none(),
        "a dead-lettered message loses its expiration: {:?}",
        d.properties.expiration()
    );
    let all = deaths(&d);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_death(
        &all[0],
        &Death {
            count: 1,
            reason: "expired",
            queue: &queue,
            exchange: "",
            routing_keys: &[&queue],
            original_expiration: Some("150"),
        },
    );
    assert_first_death(&d, "expired", &queue, "");
    assert_dead_letter_headers(&d, &[]);
    delete_exchange(&ch, &dlx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_messages_are_not_delivered_and_fresh_ones_are() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let (dlx, dlq) = dead_letter_target(&ch, ExchangeKind::Fanout, "").await;
    let queue = unique_name("q-ttl-get");
    declare_with(
        &ch,
        &queue,
        table(&[("x-dead-letter-exchange", long(&dlx))]),
    )
    .await;
    let mut dead = consume_no_ack(&ch, &dlq).await;
    publish_confirmed(
        &ch,
        "",
        &queue,
        b"old",
        BasicProperties::default().with_expiration("50".into()),
    )
    .await;
    // Once "old" was dead-lettered, only the message without expiration is left.
    assert_eq!(body(&next_delivery(&mut dead).await), "old");
    publish_confirmed(&ch, "", &queue, b"fresh", BasicProperties::default()).await;
    assert_eq!(drain_queue(&ch, &queue).await, vec!["fresh".to_string()]);
    delete_exchange(&ch, &dlx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_expires_deletes_an_unused_queue() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let queue = unique_name("q-expires");
    try_declare(
        &ch,
        &queue,
        false,
        table(&[("x-expires", AMQPValue::LongInt(200))]),
    )
    .await
    .expect("declare");
    assert!(queue_exists(&conn, &queue).await);
    // Watch with mandatory publishes (a passive declare would renew the lease): once the
    // queue is gone the message comes back unroutable.
    eventually("the x-expires queue is deleted", || {
        queue_is_gone(&ch, &queue)
    })
    .await;
    assert!(!queue_exists(&conn, &queue).await, "passive declare → 404");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_expires_spares_a_queue_with_a_consumer() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let queue = unique_name("q-expires-used");
    try_declare(
        &ch,
        &queue,
        false,
        table(&[("x-expires", AMQPValue::LongInt(100))]),
    )
    .await
    .expect("declare");
    let work = new_channel(&conn).await;
    let mut consumer = consume(&work, &queue, "keeper").await;
    // A deleted queue would cancel its consumer: nothing happens while it is in use.
    match tokio::time::timeout(QUIET, consumer.next()).await {
        Err(_) => {}
        Ok(None) => panic!("the queue expired although it had a consumer"),
        Ok(Some(other)) => panic!("unexpected {other:?}"),
    }
    assert!(!queue_is_gone(&ch, &queue).await);
    assert_eq!(body(&next_delivery(&mut consumer).await), "probe");
    // Unused again: it expires.
    within(
        "basic.cancel-ok",
        work.basic_cancel("keeper".into(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel");
    eventually("the queue expires once unused", || {
        queue_is_gone(&ch, &queue)
    })
    .await;
    assert!(!queue_exists(&conn, &queue).await);
}

// ---------------------------------------------------------------------------------------------
// 2. Length limits and overflow

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_length_drops_head_and_dead_letters_with_reason_maxlen() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let (dlx, dlq) = dead_letter_target(&ch, ExchangeKind::Fanout, "").await;
    let queue = unique_name("q-maxlen");
    declare_with(
        &ch,
        &queue,
        table(&[
            ("x-max-length", AMQPValue::LongInt(2)),
            ("x-dead-letter-exchange", long(&dlx)),
        ]),
    )
    .await;
    let mut dead = consume_no_ack(&ch, &dlq).await;
    for m in ["m0", "m1", "m2", "m3"] {
        publish_confirmed(&ch, "", &queue, m.as_bytes(), BasicProperties::default()).await;
    }
    for expected in ["m0", "m1"] {
        let d = next_delivery(&mut dead).await;
        assert_eq!(body(&d), expected);
        let all = deaths(&d);
        assert_eq!(all.len(), 1);
        assert_death(
            &all[0],
            &Death {
                count: 1,
                reason: "maxlen",
                queue: &queue,
                exchange: "",
                routing_keys: &[&queue],
                original_expiration: None,
            },
        );
        assert_first_death(&d, "maxlen", &queue, "");
        assert_dead_letter_headers(&d, &[]);
    }
    assert_eq!(
        drain_queue(&ch, &queue).await,
        vec!["m2".to_string(), "m3".to_string()]
    );
    delete_exchange(&ch, &dlx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_length_bytes_drops_head_by_body_size() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let queue = unique_name("q-maxbytes");
    declare_with(
        &ch,
        &queue,
        table(&[("x-max-length-bytes", AMQPValue::LongInt(10))]),
    )
    .await;
    // Only bodies count: 4 + 4 fit in 10 bytes (headers do not count), a third does not.
    let big_headers =
        BasicProperties::default().with_headers(table(&[("pad", long(&"p".repeat(100)))]));
    publish_confirmed(&ch, "", &queue, b"aaaa", big_headers).await;
    publish_confirmed(&ch, "", &queue, b"bbbb", BasicProperties::default()).await;
    assert_eq!(queue_counts(&ch, &queue).await.0, 2);
    publish_confirmed(&ch, "", &queue, b"cccc", BasicProperties::default()).await;
    assert_eq!(
        drain_queue(&ch, &queue).await,
        vec!["bbbb".to_string(), "cccc".to_string()]
    );
    // A single message larger than the limit does not stay either.
    publish_confirmed(&ch, "", &queue, b"0123456789x", BasicProperties::default()).await;
    assert_eq!(queue_counts(&ch, &queue).await.0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_reject_publish_nacks_and_does_not_dead_letter() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let (dlx, dlq) = dead_letter_target(&ch, ExchangeKind::Fanout, "").await;
    let queue = unique_name("q-reject-publish");
    declare_with(
        &ch,
        &queue,
        table(&[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", long("reject-publish")),
            ("x-dead-letter-exchange", long(&dlx)),
        ]),
    )
    .await;
    let mut dead = consume_no_ack(&ch, &dlq).await;
    let first = publish_confirmation(&ch, "", &queue, b"kept").await;
    assert!(matches!(first, Confirmation::Ack(None)), "{first:?}");
    let second = publish_confirmation(&ch, "", &queue, b"refused").await;
    assert!(matches!(second, Confirmation::Nack(_)), "{second:?}");
    assert_eq!(drain_queue(&ch, &queue).await, vec!["kept".to_string()]);
    // Room again: the next publish is accepted.
    let third = publish_confirmation(&ch, "", &queue, b"later").await;
    assert!(matches!(third, Confirmation::Ack(None)), "{third:?}");
    assert_no_delivery(&mut dead, "reject-publish must not dead-letter").await;
    delete_exchange(&ch, &dlx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_reject_publish_dlx_nacks_and_dead_letters() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let (dlx, dlq) = dead_letter_target(&ch, ExchangeKind::Fanout, "").await;
    let queue = unique_name("q-reject-dlx");
    declare_with(
        &ch,
        &queue,
        table(&[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", long("reject-publish-dlx")),
            ("x-dead-letter-exchange", long(&dlx)),
        ]),
    )
    .await;
    let mut dead = consume_no_ack(&ch, &dlq).await;
    let first = publish_confirmation(&ch, "", &queue, b"kept").await;
    assert!(matches!(first, Confirmation::Ack(None)), "{first:?}");
    let second = publish_confirmation(&ch, "", &queue, b"refused").await;
    assert!(matches!(second, Confirmation::Nack(_)), "{second:?}");
    let d = next_delivery(&mut dead).await;
    assert_eq!(
        body(&d),
        "refused",
        "the new message is dead-lettered, not the head"
    );
    let all = deaths(&d);
    assert_eq!(all.len(), 1);
    assert_death(
        &all[0],
        &Death {
            count: 1,
            reason: "maxlen",
            queue: &queue,
            exchange: "",
            routing_keys: &[&queue],
            original_expiration: None,
        },
    );
    assert_eq!(drain_queue(&ch, &queue).await, vec!["kept".to_string()]);
    delete_exchange(&ch, &dlx).await;
}

// ---------------------------------------------------------------------------------------------
// 3. Rejection

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_and_nack_without_requeue_dead_letter_with_routing_key_override() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    // The DLX routes only "dead": the override, not the original key, must be used.
    let (dlx, dlq) = dead_letter_target(&ch, ExchangeKind::Direct, "dead").await;
    let src = unique_name("src-x");
    declare_exchange(&ch, &src, ExchangeKind::Topic).await;
    let queue = unique_name("q-rejected");
    declare_with(
        &ch,
        &queue,
        table(&[
            ("x-dead-letter-exchange", long(&dlx)),
            ("x-dead-letter-routing-key", long("dead")),
        ]),
    )
    .await;
    bind_queue(&ch, &queue, &src, "orig.#", FieldTable::default()).await;
    let mut dead = consume_no_ack(&ch, &dlq).await;
    publish_confirmed(&ch, &src, "orig.a", b"rejected", BasicProperties::default()).await;
    publish_confirmed(&ch, &src, "orig.b", b"nacked", BasicProperties::default()).await;
    publish_confirmed(&ch, &src, "orig.c", b"requeued", BasicProperties::default()).await;

    let work = new_channel(&conn).await;
    let mut consumer = consume(&work, &queue, "worker").await;
    let d = next_delivery(&mut consumer).await;
    assert_eq!(body(&d), "rejected");
    within(
        "basic.reject",
        d.reject(BasicRejectOptions { requeue: false }),
    )
    .await
    .expect("reject");
    let d = next_delivery(&mut consumer).await;
    assert_eq!(body(&d), "nacked");
    within(
        "basic.nack",
        d.nack(BasicNackOptions {
            multiple: false,
            requeue: false,
        }),
    )
    .await
    .expect("nack");

    for (expected, key) in [("rejected", "orig.a"), ("nacked", "orig.b")] {
        let d = next_delivery(&mut dead).await;
        assert_eq!(body(&d), expected);
        assert_eq!(d.exchange.as_str(), dlx);
        assert_eq!(d.routing_key.as_str(), "dead");
        let all = deaths(&d);
        assert_eq!(all.len(), 1);
        assert_death(
            &all[0],
            &Death {
                count: 1,
                reason: "rejected",
                queue: &queue,
                exchange: &src,
                routing_keys: &[key],
                original_expiration: None,
            },
        );
        assert_first_death(&d, "rejected", &queue, &src);
        assert_dead_letter_headers(&d, &[]);
    }

    // Requeue (the default) keeps the message in the queue instead.
    let d = next_delivery(&mut consumer).await;
    assert_eq!(body(&d), "requeued");
    within(
        "basic.reject",
        d.reject(BasicRejectOptions { requeue: true }),
    )
    .await
    .expect("reject");
    let again = next_delivery(&mut consumer).await;
    assert_eq!(body(&again), "requeued");
    assert!(again.redelivered);
    assert_no_delivery(&mut dead, "requeued message must not be dead-lettered").await;
    delete_exchange(&ch, &src).await;
    delete_exchange(&ch, &dlx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejecting_again_in_the_same_queue_increments_the_x_death_count() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    // The queue dead-letters to itself through the default exchange: a cycle that only
    // rejections drive, which RabbitMQ allows.
    let queue = unique_name("q-self-dlx");
    declare_with(
        &ch,
        &queue,
        table(&[
            ("x-dead-letter-exchange", long("")),
            ("x-dead-letter-routing-key", long(&queue)),
        ]),
    )
    .await;
    publish_confirmed(&ch, "", &queue, b"bouncing", BasicProperties::default()).await;
    let work = new_channel(&conn).await;
    let mut consumer = consume(&work, &queue, "bouncer").await;
    for round in 1..=3 {
        let d = next_delivery(&mut consumer).await;
        assert_eq!(body(&d), "bouncing");
        assert!(!d.redelivered, "a dead-lettered message is a new message");
        if round == 1 {
            assert!(
                d.properties
                    .headers()
                    .as_ref()
                    .is_none_or(|h| !h.contains_key("x-death")),
                "no x-death before the first death"
            );
        } else {
            let all = deaths(&d);
            assert_eq!(all.len(), 1, "one entry per (queue, reason): {all:?}");
            assert_death(
                &all[0],
                &Death {
                    count: round - 1,
                    reason: "rejected",
                    queue: &queue,
                    exchange: "",
                    routing_keys: &[&queue],
                    original_expiration: None,
                },
            );
            assert_first_death(&d, "rejected", &queue, "");
            assert_dead_letter_headers(&d, &[]);
        }
        within(
            "basic.reject",
            d.reject(BasicRejectOptions { requeue: false }),
        )
        .await
        .expect("reject");
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Delivery limit (Warren-only: RabbitMQ has it on quorum queues only)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_limit_counts_redeliveries_then_dead_letters() {
    let Some(broker) = warren_only().await else {
        return;
    };
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let (dlx, dlq) = dead_letter_target(&ch, ExchangeKind::Fanout, "").await;
    let queue = unique_name("q-delivery-limit");
    declare_with(
        &ch,
        &queue,
        table(&[
            ("x-delivery-limit", AMQPValue::LongInt(2)),
            ("x-dead-letter-exchange", long(&dlx)),
        ]),
    )
    .await;
    let mut dead = consume_no_ack(&ch, &dlq).await;
    publish_confirmed(&ch, "", &queue, b"poison", BasicProperties::default()).await;
    let work = new_channel(&conn).await;
    let mut consumer = consume(&work, &queue, "flaky").await;

    let first = next_delivery(&mut consumer).await;
    assert!(!first.redelivered);
    assert!(
        first
            .properties
            .headers()
            .as_ref()
            .is_none_or(|h| !h.contains_key("x-delivery-count")),
        "no x-delivery-count on the first delivery"
    );
    let mut last = first;
    for count in 1..=2 {
        within(
            "basic.nack",
            last.nack(BasicNackOptions {
                multiple: false,
                requeue: true,
            }),
        )
        .await
        .expect("nack");
        last = next_delivery(&mut consumer).await;
        assert_eq!(body(&last), "poison");
        assert!(last.redelivered);
        assert_eq!(
            header(&last, "x-delivery-count"),
            &AMQPValue::LongLongInt(count)
        );
    }
    // The third return passes the limit of 2: dead-lettered, not redelivered.
    within(
        "basic.nack",
        last.nack(BasicNackOptions {
            multiple: false,
            requeue: true,
        }),
    )
    .await
    .expect("nack");
    let d = next_delivery(&mut dead).await;
    assert_eq!(body(&d), "poison");
    let all = deaths(&d);
    assert_eq!(all.len(), 1);
    assert_death(
        &all[0],
        &Death {
            count: 1,
            reason: "delivery_limit",
            queue: &queue,
            exchange: "",
            routing_keys: &[&queue],
            original_expiration: None,
        },
    );
    assert_first_death(&d, "delivery_limit", &queue, "");
    assert_dead_letter_headers(&d, &[]);
    assert_no_delivery(&mut consumer, "a dead-lettered message is not redelivered").await;
    assert_eq!(queue_counts(&ch, &queue).await, (0, 1));
}

// ---------------------------------------------------------------------------------------------
// 5. Priority queues

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_priority_delivers_by_priority_then_fifo() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let queue = unique_name("q-priority");
    declare_with(
        &ch,
        &queue,
        table(&[("x-max-priority", AMQPValue::ShortShortUInt(10))]),
    )
    .await;
    // (body, priority); None publishes without a priority (0), 200 counts as the max (10).
    let messages: [(&str, Option<u8>); 8] = [
        ("a1", Some(1)),
        ("b5", Some(5)),
        ("c-none", None),
        ("d5", Some(5)),
        ("e9", Some(9)),
        ("f1", Some(1)),
        ("g200", Some(200)),
        ("h0", Some(0)),
    ];
    for (b, priority) in messages {
        let mut properties = BasicProperties::default();
        if let Some(p) = priority {
            properties = properties.with_priority(p);
        }
        publish_confirmed(&ch, "", &queue, b.as_bytes(), properties).await;
    }
    let work = new_channel(&conn).await;
    let mut consumer = consume_with(
        &work,
        &queue,
        "prio",
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await;
    let mut order = Vec::new();
    for _ in 0..messages.len() {
        let d = next_delivery(&mut consumer).await;
        order.push(body(&d));
    }
    assert_eq!(
        order,
        ["g200", "e9", "b5", "d5", "a1", "f1", "c-none", "h0"],
        "highest priority first, FIFO within a priority"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_max_priority_priorities_are_ignored() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let queue = declare_temp_queue(&ch).await;
    for (b, p) in [("low", 1u8), ("high", 9)] {
        publish_confirmed(
            &ch,
            "",
            &queue,
            b.as_bytes(),
            BasicProperties::default().with_priority(p),
        )
        .await;
    }
    assert_eq!(
        drain_queue(&ch, &queue).await,
        vec!["low".to_string(), "high".to_string()]
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Single active consumer and consumer priorities

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_active_consumer_fails_over_to_the_next_consumer() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let queue = unique_name("q-sac");
    declare_with(
        &ch,
        &queue,
        table(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
    )
    .await;
    let ch_a = new_channel(&conn).await;
    let ch_b = new_channel(&conn).await;
    let mut a = consume(&ch_a, &queue, "first").await;
    let mut b = consume(&ch_b, &queue, "second").await;
    assert_eq!(queue_counts(&ch, &queue).await, (0, 2));
    for m in ["m0", "m1", "m2"] {
        publish_confirmed(&ch, "", &queue, m.as_bytes(), BasicProperties::default()).await;
    }
    // The first consumer gets everything; the second is idle.
    let m0 = next_delivery(&mut a).await;
    assert_eq!(body(&m0), "m0");
    within("basic.ack", m0.ack(BasicAckOptions::default()))
        .await
        .expect("ack");
    assert_eq!(body(&next_delivery(&mut a).await), "m1");
    assert_eq!(body(&next_delivery(&mut a).await), "m2");
    assert_no_delivery(&mut b, "inactive single-active consumer").await;

    // The active consumer's channel goes away with m1 and m2 unacked: the second consumer
    // takes over and gets them, redelivered, in order, then new messages.
    within("channel.close-ok", ch_a.close(200, "bye".into()))
        .await
        .expect("close");
    for expected in ["m1", "m2"] {
        let d = next_delivery(&mut b).await;
        assert_eq!(body(&d), expected);
        assert!(d.redelivered);
        within("basic.ack", d.ack(BasicAckOptions::default()))
            .await
            .expect("ack");
    }
    publish_confirmed(&ch, "", &queue, b"m3", BasicProperties::default()).await;
    let d = next_delivery(&mut b).await;
    assert_eq!(body(&d), "m3");
    assert!(!d.redelivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_active_consumer_cancel_hands_over() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let queue = unique_name("q-sac-cancel");
    declare_with(
        &ch,
        &queue,
        table(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
    )
    .await;
    let ch_a = new_channel(&conn).await;
    let ch_b = new_channel(&conn).await;
    let mut a = consume_with(
        &ch_a,
        &queue,
        "first",
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await;
    let mut b = consume_with(
        &ch_b,
        &queue,
        "second",
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await;
    publish_confirmed(&ch, "", &queue, b"to-a", BasicProperties::default()).await;
    assert_eq!(body(&next_delivery(&mut a).await), "to-a");
    within(
        "basic.cancel-ok",
        ch_a.basic_cancel("first".into(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel");
    publish_confirmed(&ch, "", &queue, b"to-b", BasicProperties::default()).await;
    assert_eq!(body(&next_delivery(&mut b).await), "to-b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_priority_prefers_the_higher_consumer_while_it_has_credit() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let queue = unique_name("q-consumer-prio");
    declare_with(&ch, &queue, FieldTable::default()).await;
    let ch_low = new_channel(&conn).await;
    let ch_high = new_channel(&conn).await;
    qos(&ch_low, 10).await;
    qos(&ch_high, 3).await;
    // The low-priority consumer subscribes first, so plain round-robin would favour it.
    let mut low = consume_with(
        &ch_low,
        &queue,
        "low",
        BasicConsumeOptions::default(),
        table(&[("x-priority", AMQPValue::LongInt(1))]),
    )
    .await;
    let mut high = consume_with(
        &ch_high,
        &queue,
        "high",
        BasicConsumeOptions::default(),
        table(&[("x-priority", AMQPValue::LongInt(10))]),
    )
    .await;
    for m in ["m0", "m1", "m2"] {
        publish_confirmed(&ch, "", &queue, m.as_bytes(), BasicProperties::default()).await;
    }
    let mut held = Vec::new();
    for expected in ["m0", "m1", "m2"] {
        let d = next_delivery(&mut high).await;
        assert_eq!(body(&d), expected);
        held.push(d);
    }
    assert_no_delivery(
        &mut low,
        "low-priority consumer while the high one has credit",
    )
    .await;

    // The high-priority consumer's prefetch (3) is full: the next message goes to the low one.
    publish_confirmed(&ch, "", &queue, b"m3", BasicProperties::default()).await;
    assert_eq!(body(&next_delivery(&mut low).await), "m3");

    // Credit back on the high consumer: it is preferred again.
    let first = held.remove(0);
    within("basic.ack", first.ack(BasicAckOptions::default()))
        .await
        .expect("ack");
    // basic.ack has no reply: a passive declare on the same channel reaches the queue after
    // the ack did (in RabbitMQ too), so the credit is back before m4 is published.
    assert_eq!(queue_counts(&ch_high, &queue).await, (0, 2));
    publish_confirmed(&ch, "", &queue, b"m4", BasicProperties::default()).await;
    assert_eq!(body(&next_delivery(&mut high).await), "m4");
    assert_no_delivery(
        &mut low,
        "low-priority consumer after the high one got credit",
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 7. Consumer timeout (Warren-only: a queue argument, and a configurable action)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_timeout_argument_cancels_the_consumer_and_requeues() {
    let Some(broker) = warren_only().await else {
        return;
    };
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let queue = unique_name("q-consumer-timeout");
    declare_with(
        &ch,
        &queue,
        table(&[("x-consumer-timeout", AMQPValue::LongInt(200))]),
    )
    .await;
    publish_confirmed(&ch, "", &queue, b"slow", BasicProperties::default()).await;
    let work = new_channel(&conn).await;
    let mut consumer = consume(&work, &queue, "sluggish").await;
    let d = next_delivery(&mut consumer).await;
    assert_eq!(body(&d), "slow");
    assert!(!d.redelivered);
    // Never acked: the broker cancels the consumer (basic.cancel ends lapin's stream).
    match within("the consumer's cancellation", consumer.next()).await {
        None => {}
        Some(Ok(other)) => panic!("expected cancellation, got delivery {:?}", body(&other)),
        Some(Err(e)) => panic!("expected cancellation, got error {e}"),
    }
    assert!(work.status().connected(), "the channel stays open");
    // The message is back in the queue, redelivered.
    let got = within(
        "basic.get",
        work.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("basic.get")
    .expect("the timed-out message is back in the queue");
    assert_eq!(got.delivery.data, b"slow");
    assert!(got.delivery.redelivered);
    assert_eq!(queue_counts(&ch, &queue).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_timeout_close_channel_action_closes_with_precondition_failed() {
    let Some(broker) = start_broker_with(|c| {
        c.consumer_timeout_action = warren_server::config::ConsumerTimeoutAction::CloseChannel;
        c.consumer_timeout_ms = Some(200);
    })
    .await
    else {
        return;
    };
    let conn = broker.connect().await;
    let mut events = events(&conn);
    let ch = confirm_channel(&conn).await;
    let queue = unique_name("q-timeout-close");
    declare_with(&ch, &queue, FieldTable::default()).await;
    publish_confirmed(&ch, "", &queue, b"slow", BasicProperties::default()).await;
    let work = new_channel(&conn).await;
    let mut consumer = consume(&work, &queue, "sluggish").await;
    let d = next_delivery(&mut consumer).await;
    assert_eq!(body(&d), "slow");
    let text = expect_error_event(&mut events, 406).await;
    assert_eq!(
        text,
        format!(
            "PRECONDITION_FAILED - delivery acknowledgement on channel {} timed out. Timeout \
             value used: 200 ms. This timeout value can be configured, see consumers doc guide \
             to learn more",
            work.id()
        )
    );
    assert!(!work.status().connected(), "the channel is closed");
    assert!(ch.status().connected(), "other channels stay open");
    // The unacked message went back to the queue.
    let other = new_channel(&conn).await;
    let mut again = consume(&other, &queue, "patient").await;
    let d = next_delivery(&mut again).await;
    assert_eq!(body(&d), "slow");
    assert!(d.redelivered);
    within("basic.ack", d.ack(BasicAckOptions::default()))
        .await
        .expect("ack");
}

// ---------------------------------------------------------------------------------------------
// 8. Alternate exchange

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternate_exchange_receives_unroutable_messages() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let ae = unique_name("ae");
    let main = unique_name("main-x");
    declare_exchange(&ch, &ae, ExchangeKind::Fanout).await;
    within(
        "exchange.declare-ok",
        ch.exchange_declare(
            main.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            table(&[("alternate-exchange", long(&ae))]),
        ),
    )
    .await
    .expect("declare with alternate-exchange");
    let routed = unique_name("q-routed");
    let unrouted = unique_name("q-unrouted");
    declare_with(&ch, &routed, FieldTable::default()).await;
    declare_with(&ch, &unrouted, FieldTable::default()).await;
    bind_queue(&ch, &routed, &main, "known", FieldTable::default()).await;
    bind_queue(&ch, &unrouted, &ae, "", FieldTable::default()).await;
    let mut routed_c = consume_no_ack(&ch, &routed).await;
    let mut unrouted_c = consume_no_ack(&ch, &unrouted).await;

    publish_confirmed(&ch, &main, "known", b"routed", BasicProperties::default()).await;
    // Mandatory, yet not returned: the alternate exchange routed it.
    let confirm = within(
        "basic.publish",
        ch.basic_publish(
            main.as_str().into(),
            "unknown".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"diverted",
            BasicProperties::default(),
        ),
    )
    .await
    .expect("basic.publish");
    let confirmation = within("publisher confirm", confirm).await.expect("confirm");
    assert!(
        matches!(confirmation, Confirmation::Ack(None)),
        "{confirmation:?}"
    );

    let d = next_delivery(&mut routed_c).await;
    assert_eq!(body(&d), "routed");
    let d = next_delivery(&mut unrouted_c).await;
    assert_eq!(
        body(&d),
        "diverted",
        "only the unroutable message reaches the AE"
    );
    assert_eq!(d.exchange.as_str(), main, "the original exchange is kept");
    assert_eq!(d.routing_key.as_str(), "unknown");
    assert_no_delivery(&mut routed_c, "routed queue").await;
    delete_exchange(&ch, &main).await;
    delete_exchange(&ch, &ae).await;
}

// ---------------------------------------------------------------------------------------------
// 9. Direct reply-to

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_reply_to_round_trip() {
    let broker = start_broker().await;
    // The server side: a request queue and a consumer on its own connection.
    let server_conn = broker.connect().await;
    let server = new_channel(&server_conn).await;
    let requests = unique_name("q-rpc");
    declare_with(&server, &requests, FieldTable::default()).await;
    let mut incoming = consume(&server, &requests, "rpc-server").await;

    let client_conn = broker.connect().await;
    let client = new_channel(&client_conn).await;
    let mut replies = consume_with(
        &client,
        REPLY_TO,
        "replies",
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await;
    assert_eq!(replies.tag().as_str(), "replies");
    publish_with(
        &client,
        "",
        &requests,
        b"ping",
        BasicProperties::default()
            .with_reply_to(REPLY_TO.into())
            .with_correlation_id("c-1".into()),
    )
    .await;

    let request = next_delivery(&mut incoming).await;
    assert_eq!(body(&request), "ping");
    let reply_to = request
        .properties
        .reply_to()
        .as_ref()
        .expect("reply_to")
        .to_string();
    assert!(
        reply_to.starts_with("amq.rabbitmq.reply-to.") && reply_to.len() > REPLY_TO.len() + 1,
        "the broker names the reply destination: {reply_to}"
    );
    publish_with(
        &server,
        "",
        &reply_to,
        b"pong",
        BasicProperties::default().with_correlation_id("c-1".into()),
    )
    .await;
    within("basic.ack", request.ack(BasicAckOptions::default()))
        .await
        .expect("ack");

    let reply = next_delivery(&mut replies).await;
    assert_eq!(body(&reply), "pong");
    assert_eq!(reply.exchange.as_str(), "");
    assert_eq!(reply.routing_key.as_str(), reply_to);
    assert_eq!(
        reply
            .properties
            .correlation_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("c-1")
    );
    assert!(!reply.redelivered);
    // While its consumer lives, a passive declare of the reply name succeeds (how a server
    // checks that the requester is still there).
    assert!(queue_exists(&server_conn, &reply_to).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_reply_to_publish_without_reply_consumer_is_precondition_failed() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let mut events = events(&conn);
    let ch = new_channel(&conn).await;
    let queue = declare_temp_queue(&ch).await;
    publish_with(
        &ch,
        "",
        &queue,
        b"request",
        BasicProperties::default().with_reply_to(REPLY_TO.into()),
    )
    .await;
    let text = expect_error_event(&mut events, 406).await;
    assert_eq!(
        text,
        "PRECONDITION_FAILED - fast reply consumer does not exist"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_reply_to_consumer_must_be_no_ack() {
    let broker = start_broker().await;
    let (_conn, ch) = broker.channel().await;
    let result = within(
        "basic.consume",
        ch.basic_consume(
            REPLY_TO.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    let text = expect_code(result, 406);
    assert_eq!(
        text,
        "PRECONDITION_FAILED - reply consumer cannot acknowledge"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_reply_to_second_reply_consumer_is_precondition_failed() {
    let broker = start_broker().await;
    let (_conn, ch) = broker.channel().await;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    // Kept alive: dropping a lapin consumer cancels it.
    let _first = consume_with(&ch, REPLY_TO, "one", no_ack, FieldTable::default()).await;
    let result = within(
        "basic.consume",
        ch.basic_consume(REPLY_TO.into(), "two".into(), no_ack, FieldTable::default()),
    )
    .await;
    let text = expect_code(result, 406);
    assert_eq!(text, "PRECONDITION_FAILED - reply consumer already set");
}

// ---------------------------------------------------------------------------------------------
// 10. Argument validation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_queue_arguments_are_precondition_failed_with_rabbitmq_texts() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let queue = unique_name("q-bad-args");
    let cases: Vec<(FieldTable, String)> = vec![
        (
            table(&[("x-message-ttl", long("abc"))]),
            "invalid arg 'x-message-ttl' for queue '{q}' in vhost '/': \
             \"expected integer, got longstr\""
                .into(),
        ),
        (
            table(&[("x-message-ttl", AMQPValue::LongInt(-1))]),
            "invalid arg 'x-message-ttl' for queue '{q}' in vhost '/': {value_negative,-1}".into(),
        ),
        (
            table(&[("x-max-length", AMQPValue::LongInt(-5))]),
            "invalid arg 'x-max-length' for queue '{q}' in vhost '/': {value_negative,-5}".into(),
        ),
        (
            table(&[("x-expires", AMQPValue::LongInt(0))]),
            "invalid arg 'x-expires' for queue '{q}' in vhost '/': {value_zero,0}".into(),
        ),
        (
            table(&[("x-max-priority", AMQPValue::LongInt(256))]),
            "invalid arg 'x-max-priority' for queue '{q}' in vhost '/': \
             {max_value_exceeded,256}"
                .into(),
        ),
        (
            table(&[("x-overflow", long("drop-tail"))]),
            "invalid arg 'x-overflow' for queue '{q}' in vhost '/': invalid_overflow".into(),
        ),
        (
            table(&[("x-dead-letter-routing-key", long("rk"))]),
            "invalid arg 'x-dead-letter-routing-key' for queue '{q}' in vhost '/': \
             routing_key_but_no_dlx_defined"
                .into(),
        ),
        (
            table(&[("x-dead-letter-exchange", AMQPValue::LongInt(1))]),
            "invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue '{q}' in \
             vhost '/'"
                .into(),
        ),
        (
            table(&[("x-single-active-consumer", long("yes"))]),
            "invalid arg 'x-single-active-consumer' for queue '{q}' in vhost '/': \
             {unacceptable_type,longstr}"
                .into(),
        ),
    ];
    for (args, text) in cases {
        let ch = new_channel(&conn).await;
        let result = try_declare(&ch, &queue, true, args.clone()).await;
        let got = expect_code(result, 406);
        let expected = format!("PRECONDITION_FAILED - {}", text.replace("{q}", &queue));
        assert_eq!(got, expected, "arguments {args:?}");
    }
    // None of them created the queue.
    assert!(!queue_exists(&conn, &queue).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclare_compares_known_arguments_as_rabbitmq_does() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let queue = unique_name("q-equivalence");
    let with_ttl = |ttl: Option<AMQPValue>| {
        let mut t = table(&[
            ("x-max-length", AMQPValue::ShortInt(5)),
            ("x-max-priority", AMQPValue::ShortShortUInt(3)),
        ]);
        if let Some(ttl) = ttl {
            t.insert("x-message-ttl".into(), ttl);
        }
        t
    };
    let ch = new_channel(&conn).await;
    try_declare(
        &ch,
        &queue,
        true,
        with_ttl(Some(AMQPValue::LongLongInt(60_000))),
    )
    .await
    .expect("declare");
    let what = format!("inequivalent arg 'x-message-ttl' for queue '{queue}' in vhost '/'");
    let cases = [
        (
            Some(AMQPValue::LongLongInt(1)),
            "received '1' but current is '60000'",
        ),
        (
            Some(AMQPValue::LongInt(1)),
            "received '1' but current is '60000'",
        ),
        (
            None,
            "received none but current is the value '60000' of type 'long'",
        ),
        (
            Some(long("60000")),
            "received '60000' but current is '60000'",
        ),
    ];
    // Every case is checked before failing, so one run shows every difference.
    let mut wrong = Vec::new();
    for (ttl, detail) in cases {
        let ch = new_channel(&conn).await;
        let expected = format!("PRECONDITION_FAILED - {what}: {detail}");
        match try_declare(&ch, &queue, true, with_ttl(ttl.clone())).await {
            Err(e) if reply_code(&e) == Some(406) => {
                let text = match e.kind() {
                    lapin::ErrorKind::ProtocolError(amqp) => amqp.get_message().to_string(),
                    _ => unreachable!("a reply code comes from a protocol error"),
                };
                if text != expected {
                    wrong.push(format!(
                        "x-message-ttl {ttl:?}:\n  got      {text}\n  expected {expected}"
                    ));
                }
            }
            other => wrong.push(format!(
                "x-message-ttl {ttl:?}: expected 406, got {other:?}"
            )),
        }
    }
    // The same value with another integer type is equivalent.
    let ch = new_channel(&conn).await;
    if let Err(e) = try_declare(
        &ch,
        &queue,
        true,
        with_ttl(Some(AMQPValue::LongInt(60_000))),
    )
    .await
    {
        wrong.push(format!(
            "x-message-ttl signedint 60000 vs long 60000 must be equivalent, got: {e}"
        ));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A redeclare is compared only on the arguments RabbitMQ knows; unknown ones are ignored, for
/// queues and exchanges (issue 9, item 10: Warren refused a redeclare that differed only in an
/// unknown argument with 406, which RabbitMQ accepts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_arguments_are_ignored_on_redeclare() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = new_channel(&conn).await;
    let queue = unique_name("q-unknown-args");
    let unknown = |v: i32| table(&[("x-warren-test-unknown", AMQPValue::LongInt(v))]);
    try_declare(&ch, &queue, true, unknown(1))
        .await
        .expect("declare with an unknown argument");
    try_declare(&ch, &queue, true, unknown(2))
        .await
        .expect("redeclare with another value of an unknown argument");
    try_declare(&ch, &queue, true, FieldTable::default())
        .await
        .expect("redeclare without the unknown argument");
    // A known argument is still compared.
    let e = try_declare(
        &ch,
        &queue,
        true,
        table(&[("x-max-length", AMQPValue::LongInt(5))]),
    )
    .await
    .expect_err("a known argument that differs is inequivalent");
    assert_eq!(reply_code(&e), Some(406), "{e}");

    let ch = new_channel(&conn).await;
    let exchange = unique_name("x-unknown-args");
    for (value, what) in [(1, "declare"), (2, "redeclare")] {
        within(
            "exchange.declare-ok",
            ch.exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    auto_delete: true,
                    ..Default::default()
                },
                unknown(value),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("exchange {what} with an unknown argument {value}: {e}"));
    }
    let e = within(
        "exchange.declare",
        ch.exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            table(&[("alternate-exchange", AMQPValue::LongString("ae".into()))]),
        ),
    )
    .await
    .expect_err("a different alternate-exchange is inequivalent");
    assert_eq!(reply_code(&e), Some(406), "{e}");
}
