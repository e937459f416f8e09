//! FIFO message groups (`x-message-group-header`, issue 12 item 3) through lapin: messages
//! of one group are delivered one at a time, in publish order (the next only once the
//! previous is settled); other groups and messages without the header go on meanwhile; a
//! requeued message comes back at the head of its group.

use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use warren_itest::*;

const HEADER: &str = "customer";

fn group_queue_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-message-group-header".into(),
        AMQPValue::LongString(HEADER.into()),
    );
    args
}

async fn publish_in_group(ch: &lapin::Channel, queue: &str, body: &str, group: Option<&str>) {
    let mut headers = FieldTable::default();
    if let Some(g) = group {
        headers.insert(HEADER.into(), AMQPValue::LongString(g.into()));
    }
    let props = BasicProperties::default().with_headers(headers);
    publish_confirmed(ch, "", queue, body.as_bytes(), props).await;
}

async fn next_body(consumer: &mut lapin::Consumer) -> (String, lapin::message::Delivery) {
    let d = next_delivery(consumer).await;
    (String::from_utf8(d.data.clone()).unwrap(), d)
}

#[tokio::test]
async fn a_group_delivers_one_message_at_a_time_in_order() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let queue = unique_name("groups");
    within(
        "queue.declare-ok",
        ch.queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions::default(),
            group_queue_args(),
        ),
    )
    .await
    .unwrap();
    for (body, group) in [
        ("a1", Some("A")),
        ("a2", Some("A")),
        ("b1", Some("B")),
        ("n1", None),
        ("a3", Some("A")),
        ("b2", Some("B")),
        ("n2", None),
    ] {
        publish_in_group(&ch, &queue, body, group).await;
    }

    let consuming = conn.create_channel().await.unwrap();
    consuming
        .basic_qos(10, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = consuming
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    // One of each group, and every message without a group; a2 waits although it was
    // published before b1, n1 and n2 (without groups it would come second).
    let mut first = Vec::new();
    let mut held = Vec::new();
    for _ in 0..4 {
        let (body, d) = next_body(&mut consumer).await;
        first.push(body);
        held.push(d);
    }
    assert_eq!(first, ["a1", "b1", "n1", "n2"]);
    // The waiting ones are still ready.
    assert_eq!(queue_counts(&ch, &queue).await.0, 3);

    // a1 acked: a2 comes. a2 requeued: it comes back (redelivered) before a3.
    held[0].ack(BasicAckOptions::default()).await.unwrap();
    let (body, a2) = next_body(&mut consumer).await;
    assert_eq!(body, "a2");
    a2.nack(BasicNackOptions {
        requeue: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let (body, a2) = next_body(&mut consumer).await;
    assert_eq!(body, "a2");
    assert!(a2.redelivered);
    // b1 acked: b2 comes (B does not wait for A).
    held[1].ack(BasicAckOptions::default()).await.unwrap();
    let (body, b2) = next_body(&mut consumer).await;
    assert_eq!(body, "b2");
    a2.ack(BasicAckOptions::default()).await.unwrap();
    let (body, a3) = next_body(&mut consumer).await;
    assert_eq!(body, "a3");
    for d in [a3, b2] {
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert_eq!(queue_counts(&ch, &queue).await, (0, 1));
}

#[tokio::test]
async fn a_bad_group_header_argument_is_refused_with_406() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-message-group-header".into(), AMQPValue::LongLongInt(1));
    let result = ch
        .queue_declare(
            unique_name("groups-bad").as_str().into(),
            lapin::options::QueueDeclareOptions::default(),
            args,
        )
        .await;
    let text = expect_code(result, 406);
    assert!(text.contains("x-message-group-header"), "{text}");
}
