//! RabbitMQ 3.x behaviours that clients' own test suites check (issue 9, items 7 and 10), each
//! pinned by a test that failed before the fix it names.

use std::time::Duration;

use warren_itest::amq_protocol::protocol::{connection, AMQPClass};
use warren_itest::amq_protocol::types::{AMQPValue, FieldTable};
use warren_itest::lapin::message::BasicGetMessage;
use warren_itest::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use warren_itest::lapin::{BasicProperties, ExchangeKind};
use warren_itest::*;

/// Bytes a client that still had publishes buffered keeps writing after connection.close.
const WRITES_AFTER_CLOSE_BYTES: usize = 4 * 1024 * 1024;
const BODY_FRAME_BYTES: usize = 4000;

/// After close-ok to a client's connection.close the broker keeps reading until the client
/// closes its side, as RabbitMQ does (issue 9, item 7: Warren closed its socket at once and a
/// client still flushing publishes got EPIPE / a reset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_is_drained_until_the_client_closes() {
    let broker = start_broker().await;
    let mut raw = broker.raw().await;
    raw.open_channel(1).await;
    raw.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    )
    .await;
    match raw.read_method().await {
        (0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => {}
        other => panic!("expected connection.close-ok, got {other:?}"),
    }
    let frame = raw_frame(FRAME_BODY, 1, &[0u8; BODY_FRAME_BYTES]);
    let mut late = Vec::with_capacity(WRITES_AFTER_CLOSE_BYTES + frame.len());
    while late.len() < WRITES_AFTER_CLOSE_BYTES {
        late.extend_from_slice(&frame);
    }
    if let Err(e) = raw.try_send(&late).await {
        panic!("the broker closed its socket after close-ok while the client still wrote: {e}");
    }
    raw.shutdown_write().await;
    raw.expect_eof().await;
}

/// A content header with no method before it is 505 UNEXPECTED_FRAME whatever its properties
/// (issue 9, item 10: Warren parsed them first and answered properties it could not read
/// with 501 FRAME_ERROR). Checked against RabbitMQ 3.10.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_header_without_method_is_unexpected_frame() {
    let broker = start_broker().await;
    let mut raw = broker.raw().await;
    raw.open_channel(1).await;
    // Class 60, weight 0, body size 1, then flags announcing every property and none after.
    let mut payload = vec![0, 60, 0, 0];
    payload.extend_from_slice(&1u64.to_be_bytes());
    payload.extend_from_slice(&[0xFF, 0xFC]);
    raw.send(&raw_frame(FRAME_HEADER, 1, &payload)).await;
    raw.expect_connection_close(505).await;
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

async fn new_channel(conn: &lapin::Connection) -> lapin::Channel {
    within("channel.open-ok", conn.create_channel())
        .await
        .expect("create channel")
}

async fn declare_with(ch: &lapin::Channel, name: &str, args: FieldTable) -> lapin::Queue {
    within(
        "queue.declare-ok",
        ch.queue_declare(name.into(), QueueDeclareOptions::default(), args),
    )
    .await
    .unwrap_or_else(|e| panic!("queue.declare {name:?}: {e}"))
}

/// Whether an exchange exists (a passive declare on a channel of its own).
async fn exchange_exists(conn: &lapin::Connection, name: &str) -> bool {
    let ch = new_channel(conn).await;
    let result = within(
        "passive exchange.declare",
        ch.exchange_declare(
            name.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    match result {
        Ok(()) => true,
        Err(e) if reply_code(&e) == Some(404) => false,
        Err(e) => panic!("passive exchange.declare {name}: {e}"),
    }
}

async fn get(ch: &lapin::Channel, queue: &str, no_ack: bool) -> Option<BasicGetMessage> {
    within(
        "basic.get-ok / get-empty",
        ch.basic_get(queue.into(), BasicGetOptions { no_ack }),
    )
    .await
    .expect("basic.get")
}

async fn consume(ch: &lapin::Channel, queue: &str, no_ack: bool) -> lapin::Consumer {
    within(
        "basic.consume-ok",
        ch.basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("basic.consume")
}

fn header<'a>(delivery: &'a lapin::message::Delivery, key: &str) -> Option<&'a AMQPValue> {
    delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(key))
}

// ---------------------------------------------------------------------------------------------
// Names and the channel's default queue

/// LF and CR are removed from queue and exchange names in declare, bind, unbind and delete,
/// as RabbitMQ's channel does (issue 9, item 10: Warren kept them, so `"q\n"` was another
/// queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cr_and_lf_are_stripped_from_names() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = new_channel(&conn).await;
    let queue = unique_name("q-crlf");
    let exchange = unique_name("x-crlf");
    let declared = declare_with(&ch, &format!("{queue}\n"), FieldTable::default()).await;
    assert_eq!(declared.name().as_str(), queue);
    within(
        "exchange.declare-ok",
        ch.exchange_declare(
            format!("\r{exchange}\n").as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.declare");
    assert!(exchange_exists(&conn, &exchange).await);
    bind_queue(
        &ch,
        &format!("{queue}\r\n"),
        &format!("{exchange}\n"),
        "k",
        FieldTable::default(),
    )
    .await;
    publish_confirmed(
        &confirm_channel(&conn).await,
        &exchange,
        "k",
        b"m",
        Default::default(),
    )
    .await;
    assert_eq!(get_body(&ch, &queue).await.as_deref(), Some(&b"m"[..]));
    within(
        "queue.delete-ok",
        ch.queue_delete(
            format!("{queue}\n").as_str().into(),
            QueueDeleteOptions::default(),
        ),
    )
    .await
    .expect("queue.delete");
    assert!(!queue_exists(&conn, &queue).await);
    within(
        "exchange.delete-ok",
        ch.exchange_delete(
            format!("{exchange}\r").as_str().into(),
            ExchangeDeleteOptions::default(),
        ),
    )
    .await
    .expect("exchange.delete");
    assert!(!exchange_exists(&conn, &exchange).await);
}

/// An empty queue name means the channel's last declared queue in bind, consume, get, purge
/// and delete, and an empty routing key with it in bind means that queue's name (issue 9,
/// item 10: Warren bound with the empty key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_queue_name_is_the_last_declared_queue() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = new_channel(&conn).await;
    let queue = declare_temp_queue(&ch).await;
    bind_queue(&ch, "", "amq.direct", "", FieldTable::default()).await;
    let publisher = confirm_channel(&conn).await;
    publish_confirmed(&publisher, "amq.direct", &queue, b"1", Default::default()).await;
    assert_eq!(get_body(&ch, "").await.as_deref(), Some(&b"1"[..]));
    publish_confirmed(&publisher, "amq.direct", &queue, b"2", Default::default()).await;
    let purged = within(
        "queue.purge-ok",
        ch.queue_purge("".into(), QueuePurgeOptions::default()),
    )
    .await
    .expect("queue.purge");
    assert_eq!(purged, 1);
    publish_confirmed(&publisher, "amq.direct", &queue, b"3", Default::default()).await;
    let mut consumer = consume(&ch, "", true).await;
    assert_eq!(next_delivery(&mut consumer).await.data, b"3");
    within(
        "queue.unbind-ok",
        ch.queue_unbind(
            "".into(),
            "amq.direct".into(),
            "".into(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.unbind");
    within(
        "queue.delete-ok",
        ch.queue_delete("".into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("queue.delete");
    assert!(!queue_exists(&conn, &queue).await);

    // With no queue declared on the channel: RabbitMQ 3.x answers 404 NOT_FOUND.
    let fresh = new_channel(&conn).await;
    let e = within(
        "queue.purge",
        fresh.queue_purge("".into(), QueuePurgeOptions::default()),
    )
    .await
    .expect_err("purge of the default queue with none declared");
    assert_eq!(reply_code(&e), Some(404), "{e}");
    assert!(
        e.to_string().contains("no previously declared queue"),
        "{e}"
    );
}

/// queue.unbind of a binding, queue or exchange that does not exist is unbind-ok, as in
/// RabbitMQ (issue 9, item 10: Warren answered 404 for a missing queue or exchange).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbind_is_idempotent() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = new_channel(&conn).await;
    let queue = declare_temp_queue(&ch).await;
    let missing_queue = unique_name("q-missing");
    let missing_exchange = unique_name("x-missing");
    for (q, x, what) in [
        (
            queue.as_str(),
            "amq.direct",
            "a binding that does not exist",
        ),
        (
            missing_queue.as_str(),
            "amq.direct",
            "a queue that does not exist",
        ),
        (
            queue.as_str(),
            missing_exchange.as_str(),
            "an exchange that does not exist",
        ),
    ] {
        within(
            "queue.unbind-ok",
            ch.queue_unbind(q.into(), x.into(), "k".into(), FieldTable::default()),
        )
        .await
        .unwrap_or_else(|e| panic!("unbind of {what}: {e}"));
    }
}

/// An auto-delete exchange goes when the last of its bindings goes, however many it had
/// (issue 9, item 10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_exchange_goes_with_its_last_of_many_bindings() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = new_channel(&conn).await;
    let exchange = unique_name("x-autodelete");
    within(
        "exchange.declare-ok",
        ch.exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.declare");
    let queues = [declare_temp_queue(&ch).await, declare_temp_queue(&ch).await];
    for queue in &queues {
        for key in ["a", "b", "c"] {
            bind_queue(&ch, queue, &exchange, key, FieldTable::default()).await;
        }
    }
    for key in ["a", "b", "c"] {
        within(
            "queue.unbind-ok",
            ch.queue_unbind(
                queues[0].as_str().into(),
                exchange.as_str().into(),
                key.into(),
                FieldTable::default(),
            ),
        )
        .await
        .expect("queue.unbind");
    }
    assert!(exchange_exists(&conn, &exchange).await, "bindings are left");
    delete_queue(&ch, &queues[1]).await;
    assert!(
        !exchange_exists(&conn, &exchange).await,
        "the auto-delete exchange outlived its last binding"
    );
}

// ---------------------------------------------------------------------------------------------
// Arguments and headers

/// `CC` and `BCC` headers that are not arrays add no routing keys and do not fail the publish
/// (issue 9, item 10). Warren-only: RabbitMQ 3.10 refuses such a publish with 406 "invalid
/// message: {unacceptable_type_in_header,\"CC\",longstr}" (see docs/compat.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cc_and_bcc_that_are_not_arrays_are_ignored() {
    let Some(broker) = start_broker_with(|_| {}).await else {
        return;
    };
    let conn = broker.connect().await;
    let ch = new_channel(&conn).await;
    let main = declare_temp_queue(&ch).await;
    let other = declare_temp_queue(&ch).await;
    let headers = table(&[("CC", long_string(&other)), ("BCC", long_string(&other))]);
    publish_confirmed(
        &confirm_channel(&conn).await,
        "",
        &main,
        b"m",
        BasicProperties::default().with_headers(headers),
    )
    .await;
    assert_eq!(get_body(&ch, &main).await.as_deref(), Some(&b"m"[..]));
    assert_eq!(queue_counts(&ch, &other).await.0, 0);
}

/// Dead-lettering with the queue's own `x-dead-letter-routing-key` removes `CC` from the
/// message, as RabbitMQ does (issue 9, item 10: Warren kept it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_routing_key_removes_cc() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = new_channel(&conn).await;
    let dlq = declare_temp_queue(&ch).await;
    let cc_queue = declare_temp_queue(&ch).await;
    let source = declare_with(
        &ch,
        &unique_name("q-dlrk"),
        table(&[
            ("x-dead-letter-exchange", long_string("")),
            ("x-dead-letter-routing-key", long_string(&dlq)),
        ]),
    )
    .await;
    let source = source.name().as_str().to_owned();
    let cc = AMQPValue::FieldArray(vec![long_string(&cc_queue)].into());
    publish_confirmed(
        &confirm_channel(&conn).await,
        "",
        &source,
        b"m",
        BasicProperties::default().with_headers(table(&[("CC", cc)])),
    )
    .await;
    let got = get(&ch, &source, false).await.expect("the message");
    within(
        "basic.reject",
        ch.basic_reject(
            got.delivery.delivery_tag,
            BasicRejectOptions { requeue: false },
        ),
    )
    .await
    .expect("basic.reject");
    let mut consumer = consume(&ch, &dlq, true).await;
    let dead = next_delivery(&mut consumer).await;
    assert_eq!(dead.data, b"m");
    assert!(header(&dead, "x-death").is_some());
    assert_eq!(header(&dead, "CC"), None, "CC kept: {:?}", dead.properties);
    delete_queue(&ch, &source).await;
}

// ---------------------------------------------------------------------------------------------
// Queues: length limits, TTL, the channel's prefetch limit

/// A requeued message counts against `x-max-length` at once: drop-head drops (and
/// dead-letters) the head (issue 9, item 10: Warren let the queue grow past its limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeued_message_counts_against_max_length() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = new_channel(&conn).await;
    let dlq = declare_temp_queue(&ch).await;
    let queue = declare_with(
        &ch,
        &unique_name("q-maxlen-requeue"),
        table(&[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-dead-letter-exchange", long_string("")),
            ("x-dead-letter-routing-key", long_string(&dlq)),
        ]),
    )
    .await;
    let queue = queue.name().as_str().to_owned();
    let publisher = confirm_channel(&conn).await;
    publish_confirmed(&publisher, "", &queue, b"first", Default::default()).await;
    let first = get(&ch, &queue, false).await.expect("first");
    publish_confirmed(&publisher, "", &queue, b"second", Default::default()).await;
    within(
        "basic.nack",
        ch.basic_nack(
            first.delivery.delivery_tag,
            BasicNackOptions {
                requeue: true,
                ..Default::default()
            },
        ),
    )
    .await
    .expect("basic.nack");
    assert_eq!(queue_counts(&ch, &queue).await.0, 1, "over x-max-length 1");
    assert_eq!(get_body(&ch, &queue).await.as_deref(), Some(&b"second"[..]));
    let mut consumer = consume(&ch, &dlq, true).await;
    let dropped = next_delivery(&mut consumer).await;
    assert_eq!(dropped.data, b"first");
    assert_eq!(
        header(&dropped, "x-first-death-reason"),
        Some(&long_string("maxlen"))
    );
    delete_queue(&ch, &queue).await;
}

/// A message whose own TTL passed while it waited behind others is never delivered, even to
/// a consumer that attaches later (issue 9, item 10: Warren checked expiry only at the head
/// before delivering, then delivered everything behind it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_expired_behind_the_head_is_not_delivered() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = new_channel(&conn).await;
    let queue = declare_temp_queue(&ch).await;
    let publisher = confirm_channel(&conn).await;
    publish_confirmed(&publisher, "", &queue, b"1", Default::default()).await;
    let short = BasicProperties::default().with_expiration("1".into());
    publish_confirmed(&publisher, "", &queue, b"expired", short).await;
    publish_confirmed(&publisher, "", &queue, b"3", Default::default()).await;
    // Not synchronisation: the message's 1 ms TTL must be over before anyone consumes.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut consumer = consume(&ch, &queue, true).await;
    assert_eq!(next_delivery(&mut consumer).await.data, b"1");
    assert_eq!(next_delivery(&mut consumer).await.data, b"3");
}

/// `basic.qos global=true` holds back the channel's no-ack consumers too once the channel's
/// limit is used, as RabbitMQ's limiter does (issue 9, item 10: no-ack consumers ignored it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_qos_holds_back_no_ack_consumers_when_full() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = new_channel(&conn).await;
    within(
        "basic.qos-ok",
        ch.basic_qos(1, BasicQosOptions { global: true }),
    )
    .await
    .expect("basic.qos");
    let acked = declare_temp_queue(&ch).await;
    let no_ack = declare_temp_queue(&ch).await;
    let publisher = confirm_channel(&conn).await;
    let mut holder = consume(&ch, &acked, false).await;
    publish_confirmed(&publisher, "", &acked, b"held", Default::default()).await;
    let held = next_delivery(&mut holder).await;
    let mut free = consume(&ch, &no_ack, true).await;
    publish_confirmed(&publisher, "", &no_ack, b"waits", Default::default()).await;
    // The queue answers the passive declare after it handled the publish: still ready.
    assert_eq!(
        queue_counts(&publisher, &no_ack).await.0,
        1,
        "a no-ack consumer got a message while the channel's limit was used"
    );
    within("basic.ack", held.ack(BasicAckOptions::default()))
        .await
        .expect("basic.ack");
    assert_eq!(next_delivery(&mut free).await.data, b"waits");
}

// ---------------------------------------------------------------------------------------------
// Transactions

/// In a transaction an unknown tag, or a tag acked twice, is 406 at the ack, as in RabbitMQ
/// (issue 9, item 10: Warren buffered the acks and only failed at commit, so a rollback hid
/// the error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_ack_of_unknown_or_twice_acked_tag_is_precondition_failed() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = new_channel(&conn).await;
    let queue = declare_temp_queue(&ch).await;
    let publisher = confirm_channel(&conn).await;
    for _ in 0..2 {
        publish_confirmed(&publisher, "", &queue, b"m", Default::default()).await;
    }
    for twice in [false, true] {
        let tx = new_channel(&conn).await;
        within("tx.select-ok", tx.tx_select())
            .await
            .expect("tx.select");
        let got = get(&tx, &queue, false).await.expect("a message");
        let tag = got.delivery.delivery_tag;
        if twice {
            let _ = tx.basic_ack(tag, BasicAckOptions::default()).await;
        }
        let wrong = if twice { tag } else { tag + 41 };
        // The 406 closes the channel at the ack itself (no reply to wait for): it arrives as
        // an error event, whatever the client was doing next.
        let mut errors = events(&conn);
        let _ = tx.basic_ack(wrong, BasicAckOptions::default()).await;
        let text = expect_error_event(&mut errors, 406).await;
        assert!(
            text.contains(&format!("unknown delivery tag {wrong}")),
            "twice={twice}: {text}"
        );
    }
}

/// A rolled-back ack leaves its delivery unacked: not redelivered, and it can be acked again
/// (issue 9, item 10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_rolled_back_ack_leaves_the_delivery_unacked() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = new_channel(&conn).await;
    let queue = declare_temp_queue(&ch).await;
    publish_confirmed(
        &confirm_channel(&conn).await,
        "",
        &queue,
        b"m",
        Default::default(),
    )
    .await;
    let tx = new_channel(&conn).await;
    within("tx.select-ok", tx.tx_select())
        .await
        .expect("tx.select");
    let tag = get(&tx, &queue, false)
        .await
        .expect("m")
        .delivery
        .delivery_tag;
    within("basic.ack", tx.basic_ack(tag, BasicAckOptions::default()))
        .await
        .expect("basic.ack");
    within("tx.rollback-ok", tx.tx_rollback())
        .await
        .expect("tx.rollback");
    assert_eq!(queue_counts(&ch, &queue).await.0, 0, "not requeued");
    within("basic.ack", tx.basic_ack(tag, BasicAckOptions::default()))
        .await
        .expect("basic.ack");
    within("tx.commit-ok", tx.tx_commit())
        .await
        .expect("tx.commit");
    within("channel.close", tx.close(200, "bye".into()))
        .await
        .expect("channel.close");
    assert_eq!(queue_counts(&ch, &queue).await.0, 0, "acked, not requeued");
}

/// The `version` server property is dotted numbers, as clients parse it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_server_property_is_dotted_numbers() {
    let broker = start_broker().await;
    let mut raw = RawConn::connect(broker.addr).await;
    raw.send_header_and_read_start().await;
    let version = match raw.server_properties.inner().get("version") {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("version is not a long string: {other:?}"),
    };
    assert!(
        !version.is_empty()
            && version
                .split('.')
                .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit())),
        "version {version:?}"
    );
}
