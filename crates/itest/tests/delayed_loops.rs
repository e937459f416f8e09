//! Loops through a delayed exchange stay bounded: the dead-letter cycle rule holds when the
//! dead-letter exchange is a delayed one (an automatic cycle is dropped, a cycle driven by a
//! consumer's reject keeps going), and a delayed exchange bound to itself routes a message
//! once. Absence ("not looping", "not twice") is shown by a marker message that would come
//! after the unwanted one: the delayed exchange routes in due order, so the marker is due
//! well after the unwanted copy would be.

use std::time::{Duration, Instant};

use warren_itest::lapin::options::{BasicAckOptions, BasicRejectOptions, QueueDeclareOptions};
use warren_itest::lapin::types::{AMQPValue, FieldTable};
use warren_itest::lapin::{BasicProperties, Channel};
use warren_itest::*;

/// The delay of a message going round a loop.
const DELAY_MS: i64 = 100;
/// The TTL of the queue of the automatic loop.
const TTL_MS: i64 = 50;

/// A queue dead-lettering into `dlx` (with `ttl_ms` as its message TTL when given).
async fn dead_lettering_queue(ch: &Channel, name: &str, dlx: &str, ttl_ms: Option<i64>) {
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(dlx.into()),
    );
    if let Some(ttl) = ttl_ms {
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
    }
    within(
        "queue.declare-ok",
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            args,
        ),
    )
    .await
    .expect("queue.declare");
}

fn as_i64(v: &AMQPValue) -> Option<i64> {
    match v {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}

/// The `count` of the x-death entry for `queue` and `reason` (0 when there is none).
fn death_count(properties: &BasicProperties, queue: &str, reason: &str) -> i64 {
    let Some(AMQPValue::FieldArray(deaths)) = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death").cloned())
    else {
        return 0;
    };
    let text = |t: &FieldTable, key: &str| match t.inner().get(key) {
        Some(AMQPValue::LongString(s)) => Some(s.to_string()),
        Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_string()),
        _ => None,
    };
    deaths
        .as_slice()
        .iter()
        .filter_map(|d| match d {
            AMQPValue::FieldTable(t) => Some(t),
            _ => None,
        })
        .filter(|t| {
            text(t, "queue").as_deref() == Some(queue)
                && text(t, "reason").as_deref() == Some(reason)
        })
        .filter_map(|t| t.inner().get("count").and_then(as_i64))
        .sum()
}

/// The classic retry loop without a consumer: a queue whose messages expire into a delayed
/// exchange that routes them back to it. As for a plain dead-letter cycle (RabbitMQ's rule,
/// `queue/dead_letter.rs::is_cycle`), the message is dropped when it would return to the
/// queue it expired in, at the delayed exchange's due-time route; a side queue bound to the
/// same key gets it once.
///
/// Pins a bug: the due-time route applied no cycle check, so the message went round once
/// more (the side queue's next message was the looping one, x-death count 2, not the
/// marker; the next dead-lettering, with `x-delay` negated, routed at once and was cut).
/// The test failed that way before the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_automatic_loop_through_a_delayed_exchange_is_dropped_when_it_would_return() {
    let broker = start_broker().await;
    let (_conn, ch) = broker.channel().await;
    let dx = unique_name("dx-loop");
    declare_delayed(&ch, &dx, "direct", false).await;
    let looping = unique_name("loop-ttl");
    dead_lettering_queue(&ch, &looping, &dx, Some(TTL_MS)).await;
    let side = declare_temp_queue(&ch).await;
    // Dead-lettered with its own routing key, the queue's name: back to it, and to the side.
    bind_queue(&ch, &looping, &dx, &looping, FieldTable::default()).await;
    bind_queue(&ch, &side, &dx, &looping, FieldTable::default()).await;
    bind_queue(&ch, &side, &dx, "marker", FieldTable::default()).await;
    let mut watch = consume_with_ack(&ch, &side).await;

    let ch_confirm = confirm_channel(&_conn).await;
    publish_confirmed(&ch_confirm, "", &looping, b"loop", delay(DELAY_MS)).await;
    let first = next_delivery(&mut watch).await;
    assert_eq!(first.data, b"loop");
    assert_eq!(death_count(&first.properties, &looping, "expired"), 1);
    first.ack(BasicAckOptions::default()).await.expect("ack");

    // Were it back in the looping queue, it would expire again and reach the side queue one
    // TTL + delay later; the marker is due three turns later.
    let turn = TTL_MS + DELAY_MS;
    publish_confirmed(&ch_confirm, &dx, "marker", b"marker", delay(3 * turn)).await;
    let next = next_delivery(&mut watch).await;
    assert_eq!(
        String::from_utf8_lossy(&next.data),
        "marker",
        "the looping message came round again: {:?}",
        next.properties.headers()
    );
    next.ack(BasicAckOptions::default()).await.expect("ack");
    assert_eq!(
        queue_counts(&ch, &looping).await,
        (0, 0),
        "the loop is drained"
    );
}

/// The same loop driven by a consumer that rejects without requeue: not a cycle for
/// RabbitMQ's rule (a reject is a decision, not an accident), so it keeps going round with
/// its x-death count growing until the consumer acks. Only the first turn waits: the
/// exchange routes a message with `x-delay` set to minus its delay (as the plugin does), so
/// when it is dead-lettered again it goes through at once.
///
/// Checked: a cycle check that ignored the reason (dropping every dead-lettered message that
/// returns to its queue) leaves the consumer without a second delivery (the test times out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_driven_by_rejects_keeps_going_round_until_acked() {
    let broker = start_broker().await;
    let (_conn, ch) = broker.channel().await;
    let dx = unique_name("dx-retry");
    declare_delayed(&ch, &dx, "direct", false).await;
    let retry = unique_name("retry");
    dead_lettering_queue(&ch, &retry, &dx, None).await;
    bind_queue(&ch, &retry, &dx, &retry, FieldTable::default()).await;
    let mut consumer = consume_with_ack(&ch, &retry).await;

    publish_with(&ch, "", &retry, b"retry", delay(DELAY_MS)).await;
    let mut counts = Vec::new();
    let mut first_rejected: Option<Instant> = None;
    loop {
        let d = next_delivery(&mut consumer).await;
        if let (Some(at), 1) = (first_rejected, counts.len()) {
            assert!(
                at.elapsed() >= Duration::from_millis(DELAY_MS as u64),
                "came back after {:?}, before its delay",
                at.elapsed()
            );
        }
        assert_eq!(d.data, b"retry");
        let count = death_count(&d.properties, &retry, "rejected");
        counts.push(count);
        if count >= 3 {
            d.ack(BasicAckOptions::default()).await.expect("ack");
            break;
        }
        // Taken before the reject: no later than the broker's dead-lettering.
        let rejecting = Instant::now();
        d.reject(BasicRejectOptions { requeue: false })
            .await
            .expect("reject");
        first_rejected.get_or_insert(rejecting);
    }
    assert_eq!(counts, vec![0, 1, 2, 3]);
    assert_eq!(queue_counts(&ch, &retry).await.0, 0);
}

/// A delayed exchange bound to itself (exchange-to-exchange) and to a queue: a delayed
/// message reaches the queue once, an undelayed one too, and the broker keeps serving.
///
/// Checked: routing the due message through the self-binding again (rescheduling it, or
/// following the binding without the visited set) puts a second copy in the queue before
/// the marker, and the test fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_exchange_bound_to_itself_routes_a_message_once() {
    let broker = start_broker().await;
    let (conn, ch) = broker.channel().await;
    let dx = unique_name("dx-self");
    declare_delayed(&ch, &dx, "direct", false).await;
    bind_exchange(&ch, &dx, &dx, "k").await;
    let q = declare_temp_queue(&ch).await;
    bind_queue(&ch, &q, &dx, "k", FieldTable::default()).await;
    let mut consumer = consume_with_ack(&ch, &q).await;
    let ch_confirm = confirm_channel(&conn).await;

    let published = Instant::now();
    publish_confirmed(&ch_confirm, &dx, "k", b"delayed", delay(DELAY_MS)).await;
    publish_confirmed(&ch_confirm, &dx, "k", b"now", BasicProperties::default()).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let d = next_delivery(&mut consumer).await;
        got.push(String::from_utf8_lossy(&d.data).into_owned());
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    assert_eq!(got, ["now", "delayed"]);
    assert!(published.elapsed() >= Duration::from_millis(DELAY_MS as u64));

    // A copy of either, routed again through the self-binding, would come before this.
    publish_confirmed(&ch_confirm, &dx, "k", b"marker", delay(3 * DELAY_MS)).await;
    let d = next_delivery(&mut consumer).await;
    assert_eq!(String::from_utf8_lossy(&d.data), "marker", "a second copy");
    d.ack(BasicAckOptions::default()).await.expect("ack");
    assert_eq!(queue_counts(&ch, &q).await.0, 0);
    assert_broker_healthy(&broker).await;
}
