//! basic.*: publish, consume, get, acknowledgements (ack/nack/reject/recover), prefetch,
//! round-robin between consumers, requeue on channel close, mandatory returns and the
//! errors clients hit most (unknown delivery tag, reused consumer tag, immediate).

use warren_itest::amq_protocol::types::FieldTable;
use warren_itest::lapin::message::Delivery;
use warren_itest::lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, BasicRecoverOptions, BasicRejectOptions,
};
use warren_itest::lapin::{BasicProperties, Confirmation};
use warren_itest::*;

async fn consume(ch: &lapin::Channel, queue: &str, tag: &str) -> lapin::Consumer {
    consume_with(ch, queue, tag, BasicConsumeOptions::default()).await
}

async fn consume_with(
    ch: &lapin::Channel,
    queue: &str,
    tag: &str,
    options: BasicConsumeOptions,
) -> lapin::Consumer {
    within(
        "basic.consume-ok",
        ch.basic_consume(queue.into(), tag.into(), options, FieldTable::default()),
    )
    .await
    .unwrap_or_else(|e| panic!("basic.consume on {queue}: {e}"))
}

/// A confirm-mode channel, an exclusive queue, and `bodies` published to it and confirmed.
async fn queue_with(conn: &lapin::Connection, bodies: &[&str]) -> (lapin::Channel, String) {
    let ch = confirm_channel(conn).await;
    let queue = declare_temp_queue(&ch).await;
    for body in bodies {
        publish_confirmed(&ch, "", &queue, body.as_bytes(), BasicProperties::default()).await;
    }
    (ch, queue)
}

fn body(delivery: &Delivery) -> String {
    String::from_utf8_lossy(&delivery.data).into_owned()
}

async fn get(ch: &lapin::Channel, queue: &str) -> lapin::message::BasicGetMessage {
    within(
        "basic.get-ok",
        ch.basic_get(queue.into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .expect("basic.get")
    .unwrap_or_else(|| panic!("queue {queue} is empty"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_delivers_in_order_with_increasing_tags() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let (_pub_ch, queue) = queue_with(&conn, &["m0", "m1", "m2"]).await;
    let ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let mut consumer = consume(&ch, &queue, "ordered").await;
    for (i, expected) in ["m0", "m1", "m2"].iter().enumerate() {
        let delivery = next_delivery(&mut consumer).await;
        assert_eq!(body(&delivery), *expected);
        assert_eq!(delivery.delivery_tag, i as u64 + 1);
        assert!(!delivery.redelivered);
        assert_eq!(delivery.exchange.as_str(), "");
        assert_eq!(delivery.routing_key.as_str(), queue);
    }
    within(
        "basic.ack",
        ch.basic_ack(3, BasicAckOptions { multiple: true }),
    )
    .await
    .expect("ack");
    assert_eq!(queue_counts(&ch, &queue).await, (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_returns_messages_then_get_empty() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let (ch, queue) = queue_with(&conn, &["first", "second"]).await;
    let first = get(&ch, &queue).await;
    assert_eq!(first.delivery.data, b"first");
    assert_eq!(first.message_count, 1);
    assert!(!first.delivery.redelivered);
    assert_eq!(first.delivery.routing_key.as_str(), queue);
    let second = get(&ch, &queue).await;
    assert_eq!(second.delivery.data, b"second");
    assert_eq!(second.message_count, 0);
    assert_eq!(
        second.delivery.delivery_tag,
        first.delivery.delivery_tag + 1
    );
    let empty = within(
        "basic.get-empty",
        ch.basic_get(queue.as_str().into(), BasicGetOptions::default()),
    )
    .await
    .expect("basic.get");
    assert!(empty.is_none(), "expected get-empty");
    within(
        "basic.ack",
        ch.basic_ack(
            second.delivery.delivery_tag,
            BasicAckOptions { multiple: true },
        ),
    )
    .await
    .expect("ack");
    assert_eq!(queue_counts(&ch, &queue).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_on_missing_queue_is_not_found() {
    let broker = start_broker().await;
    let (_conn, ch) = broker.channel().await;
    let result = within(
        "basic.get",
        ch.basic_get(
            unique_name("q-missing").as_str().into(),
            BasicGetOptions::default(),
        ),
    )
    .await;
    expect_code(result, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_on_missing_queue_is_not_found() {
    let broker = start_broker().await;
    let (_conn, ch) = broker.channel().await;
    let result = within(
        "basic.consume",
        ch.basic_consume(
            unique_name("q-missing").as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    expect_code(result, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_generates_consumer_tag_when_empty() {
    let broker = start_broker().await;
    let (_conn, ch) = broker.channel().await;
    let queue = declare_temp_queue(&ch).await;
    let consumer = consume(&ch, &queue, "").await;
    assert!(
        consumer.tag().as_str().starts_with("amq.ctag-"),
        "tag: {}",
        consumer.tag()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_multiple_settles_everything_up_to_the_tag() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let (_pub_ch, queue) = queue_with(&conn, &["m0", "m1", "m2", "m3"]).await;
    let ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let mut consumer = consume(&ch, &queue, "multi").await;
    for _ in 0..4 {
        next_delivery(&mut consumer).await;
    }
    within(
        "basic.ack",
        ch.basic_ack(3, BasicAckOptions { multiple: true }),
    )
    .await
    .expect("ack");
    within("channel.close-ok", ch.close(200, "done".into()))
        .await
        .expect("close");

    // Only m3 was unacked: it comes back, redelivered, and nothing else does.
    let ch2 = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let mut consumer2 = consume(&ch2, &queue, "after").await;
    let again = next_delivery(&mut consumer2).await;
    assert_eq!(body(&again), "m3");
    assert!(again.redelivered);
    assert_eq!(queue_counts(&ch2, &queue).await, (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_multiple_with_requeue_redelivers() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let (_pub_ch, queue) = queue_with(&conn, &["m0", "m1", "m2"]).await;
    let ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    within("basic.qos-ok", ch.basic_qos(3, BasicQosOptions::default()))
        .await
        .expect("qos");
    let mut consumer = consume(&ch, &queue, "nacker").await;
    for _ in 0..3 {
        next_delivery(&mut consumer).await;
    }
    within(
        "basic.nack",
        ch.basic_nack(
            2,
            BasicNackOptions {
                multiple: true,
                requeue: true,
            },
        ),
    )
    .await
    .expect("nack");
    let r0 = next_delivery(&mut consumer).await;
    let r1 = next_delivery(&mut consumer).await;
    assert_eq!((body(&r0).as_str(), body(&r1).as_str()), ("m0", "m1"));
    assert!(r0.redelivered && r1.redelivered);
    assert_eq!((r0.delivery_tag, r1.delivery_tag), (4, 5));
    within(
        "basic.ack",
        ch.basic_ack(0, BasicAckOptions { multiple: true }),
    )
    .await
    .expect("ack all");
    assert_eq!(queue_counts(&ch, &queue).await, (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_without_requeue_discards() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let (pub_ch, queue) = queue_with(&conn, &["doomed"]).await;
    let ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let mut consumer = consume(&ch, &queue, "dropper").await;
    let doomed = next_delivery(&mut consumer).await;
    within(
        "basic.nack",
        ch.basic_nack(
            doomed.delivery_tag,
            BasicNackOptions {
                multiple: false,
                requeue: false,
            },
        ),
    )
    .await
    .expect("nack");
    publish_confirmed(&pub_ch, "", &queue, b"marker", BasicProperties::default()).await;
    // Had it been requeued it would come before the marker.
    assert_eq!(body(&next_delivery(&mut consumer).await), "marker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_message_is_requeued_ahead_of_newer_ones() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let (_pub_ch, queue) = queue_with(&conn, &["old", "new"]).await;
    let ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    // Prefetch 1: "new" cannot be delivered until "old" is settled, so the order in which
    // the two arrive after the reject is the queue's order.
    within("basic.qos-ok", ch.basic_qos(1, BasicQosOptions::default()))
        .await
        .expect("qos");
    let mut consumer = consume(&ch, &queue, "rejecter").await;
    let first = next_delivery(&mut consumer).await;
    assert_eq!(body(&first), "old");
    assert!(!first.redelivered);
    within(
        "basic.reject",
        first.acker.reject(BasicRejectOptions { requeue: true }),
    )
    .await
    .expect("reject");
    let again = next_delivery(&mut consumer).await;
    assert_eq!(body(&again), "old");
    assert!(
        again.redelivered,
        "a requeued message is marked redelivered"
    );
    within("basic.ack", again.acker.ack(BasicAckOptions::default()))
        .await
        .expect("ack");
    let newer = next_delivery(&mut consumer).await;
    assert_eq!(body(&newer), "new");
    assert!(!newer.redelivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeued_message_fetched_by_get_is_marked_redelivered() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let (ch, queue) = queue_with(&conn, &["only"]).await;
    let first = get(&ch, &queue).await;
    assert!(!first.delivery.redelivered);
    within(
        "basic.reject",
        ch.basic_reject(
            first.delivery.delivery_tag,
            BasicRejectOptions { requeue: true },
        ),
    )
    .await
    .expect("reject");
    // The reject has no reply: wait until the message is back.
    let again = within("the requeued message", async {
        loop {
            let options = BasicGetOptions { no_ack: false };
            let message = ch.basic_get(queue.as_str().into(), options).await;
            if let Some(message) = message.expect("basic.get") {
                break message;
            }
        }
    })
    .await;
    assert_eq!(again.delivery.data, b"only");
    assert!(again.delivery.redelivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_without_requeue_drops() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let (ch, queue) = queue_with(&conn, &["bad", "good"]).await;
    let bad = get(&ch, &queue).await;
    within(
        "basic.reject",
        ch.basic_reject(
            bad.delivery.delivery_tag,
            BasicRejectOptions { requeue: false },
        ),
    )
    .await
    .expect("reject");
    let next = get(&ch, &queue).await;
    assert_eq!(next.delivery.data, b"good");
    assert_eq!(next.message_count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_with_requeue_redelivers_unacked() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let (_pub_ch, queue) = queue_with(&conn, &["r0", "r1"]).await;
    let ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let mut consumer = consume(&ch, &queue, "recoverer").await;
    next_delivery(&mut consumer).await;
    next_delivery(&mut consumer).await;
    within(
        "basic.recover-ok",
        ch.basic_recover(BasicRecoverOptions { requeue: true }),
    )
    .await
    .expect("recover");
    let a = next_delivery(&mut consumer).await;
    let b = next_delivery(&mut consumer).await;
    assert_eq!((body(&a).as_str(), body(&b).as_str()), ("r0", "r1"));
    assert!(a.redelivered && b.redelivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_without_requeue_is_not_implemented() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let mut events = events(&conn);
    let ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let result = within(
        "basic.recover",
        ch.basic_recover(BasicRecoverOptions { requeue: false }),
    )
    .await;
    assert!(result.is_err(), "recover requeue=false must fail");
    expect_error_event(&mut events, 540).await;
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_return_to_queue_when_channel_closes() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let (_pub_ch, queue) = queue_with(&conn, &["u0", "u1", "u2"]).await;
    let ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let mut consumer = consume(&ch, &queue, "closer").await;
    for _ in 0..3 {
        next_delivery(&mut consumer).await;
    }
    within("basic.ack", ch.basic_ack(2, BasicAckOptions::default()))
        .await
        .expect("ack u1");
    within("channel.close-ok", ch.close(200, "bye".into()))
        .await
        .expect("close");

    let ch2 = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let mut consumer2 = consume(&ch2, &queue, "heir").await;
    let a = next_delivery(&mut consumer2).await;
    let b = next_delivery(&mut consumer2).await;
    assert_eq!((body(&a).as_str(), body(&b).as_str()), ("u0", "u2"));
    assert!(a.redelivered && b.redelivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ack_consumer_messages_are_not_requeued() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let (pub_ch, queue) = queue_with(&conn, &["gone"]).await;
    let ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let mut consumer = consume_with(
        &ch,
        &queue,
        "auto",
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(body(&next_delivery(&mut consumer).await), "gone");
    within("channel.close-ok", ch.close(200, "bye".into()))
        .await
        .expect("close");
    assert_eq!(queue_counts(&pub_ch, &queue).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_deliveries() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let (pub_ch, queue) = queue_with(&conn, &[]).await;
    let ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let mut consumer = consume(&ch, &queue, "quitter").await;
    publish_confirmed(&pub_ch, "", &queue, b"before", BasicProperties::default()).await;
    let before = next_delivery(&mut consumer).await;
    within("basic.ack", before.acker.ack(BasicAckOptions::default()))
        .await
        .expect("ack");
    within(
        "basic.cancel-ok",
        ch.basic_cancel("quitter".into(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel");
    publish_confirmed(&pub_ch, "", &queue, b"after", BasicProperties::default()).await;
    assert_eq!(queue_counts(&pub_ch, &queue).await, (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reusing_a_consumer_tag_closes_the_connection_with_not_allowed() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let mut events = events(&conn);
    let ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let queue = declare_temp_queue(&ch).await;
    let _first = consume(&ch, &queue, "same-tag").await;
    let result = within(
        "basic.consume",
        ch.basic_consume(
            queue.as_str().into(),
            "same-tag".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert!(
        result.is_err(),
        "a second consumer with the same tag must fail"
    );
    expect_error_event(&mut events, 530).await;
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_consumer_locks_out_others() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let queue = declare_temp_queue(&ch).await;
    let _owner = consume_with(
        &ch,
        &queue,
        "owner",
        BasicConsumeOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .await;
    let ch2 = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let result = within(
        "basic.consume",
        ch2.basic_consume(
            queue.as_str().into(),
            "other".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    expect_code(result, 403);

    // And an exclusive consume on a queue that already has a consumer is refused too.
    let queue2 = declare_temp_queue(&ch).await;
    let _plain = consume(&ch, &queue2, "plain").await;
    let ch3 = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let result = within(
        "basic.consume",
        ch3.basic_consume(
            queue2.as_str().into(),
            "greedy".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    expect_code(result, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_limits_unacked_deliveries_per_consumer() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let (pub_ch, queue) = queue_with(&conn, &["p0", "p1", "p2", "p3", "p4"]).await;
    let ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    within(
        "basic.qos-ok",
        ch.basic_qos(2, BasicQosOptions { global: false }),
    )
    .await
    .expect("qos");
    let mut consumer = consume(&ch, &queue, "limited").await;
    let d0 = next_delivery(&mut consumer).await;
    let d1 = next_delivery(&mut consumer).await;
    assert_eq!((body(&d0).as_str(), body(&d1).as_str()), ("p0", "p1"));
    // Two unacked: the other three stay ready in the queue.
    assert_eq!(queue_counts(&pub_ch, &queue).await, (3, 1));
    within("basic.ack", d0.acker.ack(BasicAckOptions::default()))
        .await
        .expect("ack");
    let d2 = next_delivery(&mut consumer).await;
    assert_eq!(body(&d2), "p2");
    assert_eq!(queue_counts(&pub_ch, &queue).await, (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_consumer_prefetch_applies_to_each_consumer() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let bodies: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = bodies.iter().map(String::as_str).collect();
    let (pub_ch, queue) = queue_with(&conn, &refs).await;
    let ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    within(
        "basic.qos-ok",
        ch.basic_qos(2, BasicQosOptions { global: false }),
    )
    .await
    .expect("qos");
    let mut c1 = consume(&ch, &queue, "c1").await;
    let mut c2 = consume(&ch, &queue, "c2").await;
    for _ in 0..2 {
        next_delivery(&mut c1).await;
        next_delivery(&mut c2).await;
    }
    assert_eq!(queue_counts(&pub_ch, &queue).await, (6, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_prefetch_limits_the_whole_channel() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let (pub_ch, q1) = queue_with(&conn, &["a0", "a1", "a2", "a3"]).await;
    let q2 = declare_temp_queue(&pub_ch).await;
    for body in ["b0", "b1", "b2", "b3"] {
        publish_confirmed(
            &pub_ch,
            "",
            &q2,
            body.as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    let ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    within(
        "basic.qos-ok",
        ch.basic_qos(3, BasicQosOptions { global: true }),
    )
    .await
    .expect("qos");
    let mut c1 = consume(&ch, &q1, "c1").await;
    let mut c2 = consume(&ch, &q2, "c2").await;
    let mut received = Vec::new();
    while received.len() < 3 {
        let delivery = within("a delivery", async {
            tokio::select! {
                d = warren_itest::futures_lite::StreamExt::next(&mut c1) => d,
                d = warren_itest::futures_lite::StreamExt::next(&mut c2) => d,
            }
        })
        .await
        .expect("consumer ended")
        .expect("delivery");
        received.push(delivery);
    }
    // Three unacked on the channel in total: the other five stay ready.
    let (ready1, _) = queue_counts(&pub_ch, &q1).await;
    let (ready2, _) = queue_counts(&pub_ch, &q2).await;
    assert_eq!(ready1 + ready2, 5);
    within(
        "basic.ack",
        ch.basic_ack(0, BasicAckOptions { multiple: true }),
    )
    .await
    .expect("ack all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_consumers_are_served_round_robin() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch1 = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let ch2 = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let (pub_ch, queue) = queue_with(&conn, &[]).await;
    let mut c1 = consume(&ch1, &queue, "c1").await;
    let mut c2 = consume(&ch2, &queue, "c2").await;
    for i in 0..6 {
        publish_confirmed(
            &pub_ch,
            "",
            &queue,
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    let mut got1 = Vec::new();
    let mut got2 = Vec::new();
    for _ in 0..3 {
        got1.push(body(&next_delivery(&mut c1).await));
        got2.push(body(&next_delivery(&mut c2).await));
    }
    let (evens, odds) = (vec!["m0", "m2", "m4"], vec!["m1", "m3", "m5"]);
    assert!(
        (got1 == evens && got2 == odds) || (got1 == odds && got2 == evens),
        "not round-robin: c1 got {got1:?}, c2 got {got2:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandatory_unroutable_message_is_returned_with_no_route() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let confirm = within(
        "basic.publish",
        ch.basic_publish(
            "amq.direct".into(),
            unique_name("nobody-binds-this").as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"boomerang",
            BasicProperties::default().with_message_id("m-1".into()),
        ),
    )
    .await
    .expect("publish");
    let returned = match within("publisher confirm", confirm).await.expect("confirm") {
        Confirmation::Ack(Some(returned)) => returned,
        other => panic!("expected an ack carrying the returned message, got {other:?}"),
    };
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(returned.delivery.data, b"boomerang");
    assert_eq!(returned.delivery.exchange.as_str(), "amq.direct");
    assert_eq!(
        returned
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("m-1")
    );
    // A return is not an error: the channel carries on.
    declare_temp_queue(&ch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_message_without_mandatory_is_dropped_silently() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    publish_confirmed(
        &ch,
        "",
        &unique_name("q-nobody"),
        b"void",
        BasicProperties::default(),
    )
    .await;
    assert!(ch.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_flag_closes_connection_with_not_implemented() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let mut events = events(&conn);
    let ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let queue = declare_temp_queue(&ch).await;
    let _ = within(
        "basic.publish",
        ch.basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions {
                immediate: true,
                ..Default::default()
            },
            b"now",
            BasicProperties::default(),
        ),
    )
    .await;
    expect_error_event(&mut events, 540).await;
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_of_unknown_delivery_tag_is_precondition_failed() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let mut events = events(&conn);
    let ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let _ = within("basic.ack", ch.basic_ack(42, BasicAckOptions::default())).await;
    let text = expect_error_event(&mut events, 406).await;
    assert!(
        text.contains("unknown delivery tag 42"),
        "reply text: {text}"
    );
    // The connection survives a channel error.
    let ch2 = within("channel", conn.create_channel())
        .await
        .expect("channel");
    declare_temp_queue(&ch2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_ack_is_precondition_failed() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let mut events = events(&conn);
    let (ch, queue) = queue_with(&conn, &["once"]).await;
    let message = get(&ch, &queue).await;
    let tag = message.delivery.delivery_tag;
    let _ = within("basic.ack", ch.basic_ack(tag, BasicAckOptions::default())).await;
    let _ = within("basic.ack", ch.basic_ack(tag, BasicAckOptions::default())).await;
    let text = expect_error_event(&mut events, 406).await;
    assert!(
        text.contains(&format!("unknown delivery tag {tag}")),
        "reply text: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_properties_and_routing_info_reach_the_consumer() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let queue = declare_temp_queue(&ch).await;
    bind_queue(
        &ch,
        &queue,
        "amq.topic",
        &format!("{queue}.#"),
        FieldTable::default(),
    )
    .await;
    let key = format!("{queue}.x.y");
    publish_confirmed(
        &ch,
        "amq.topic",
        &key,
        b"routed",
        BasicProperties::default().with_content_type("text/plain".into()),
    )
    .await;
    let ch2 = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let mut consumer = consume(&ch2, &queue, "info").await;
    let delivery = next_delivery(&mut consumer).await;
    assert_eq!(delivery.exchange.as_str(), "amq.topic");
    assert_eq!(delivery.routing_key.as_str(), key);
    assert_eq!(
        delivery
            .properties
            .content_type()
            .as_ref()
            .map(|s| s.as_str()),
        Some("text/plain")
    );
}
