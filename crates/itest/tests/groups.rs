//! FIFO message groups (`x-message-group-header`, issue 12 item 3) through lapin: messages
//! of one group are delivered one at a time, in publish order (the next only once the
//! previous is settled); other groups and messages without the header go on meanwhile; a
//! requeued message comes back at the head of its group.

use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use warren_itest::futures_lite::StreamExt;
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

async fn consume(ch: &lapin::Channel, queue: &str, prefetch: u16) -> lapin::Consumer {
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    ch.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap()
}

/// A message dead-lettered by `x-delivery-limit` leaves its group: the next one comes.
#[tokio::test]
async fn a_message_dead_lettered_by_the_delivery_limit_frees_its_group() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let queue = unique_name("groups-limit");
    let mut args = group_queue_args();
    args.insert("x-delivery-limit".into(), AMQPValue::LongInt(1));
    within(
        "queue.declare-ok",
        ch.queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions::default(),
            args,
        ),
    )
    .await
    .unwrap();
    for body in ["a1", "a2"] {
        publish_in_group(&ch, &queue, body, Some("A")).await;
    }
    let consuming = conn.create_channel().await.unwrap();
    let mut consumer = consume(&consuming, &queue, 10).await;
    let requeue = BasicNackOptions {
        requeue: true,
        ..Default::default()
    };
    // Delivered, requeued (count 1), delivered again, requeued: past the limit of 1.
    for _ in 0..2 {
        let (body, d) = next_body(&mut consumer).await;
        assert_eq!(body, "a1");
        d.nack(requeue).await.unwrap();
    }
    let (body, d) = next_body(&mut consumer).await;
    assert_eq!(body, "a2");
    d.ack(BasicAckOptions::default()).await.unwrap();
}

/// A durable queue's groups come back after a restart: the recovered messages of one group
/// are again delivered one at a time.
#[tokio::test]
async fn groups_survive_a_restart() {
    if is_external() {
        return;
    }
    let dir = std::env::temp_dir().join(unique_name("warren-groups"));
    let start = || async {
        let mut config = warren_server::Config::for_tests();
        config.data_dir = dir.clone();
        warren_server::start(config).await.expect("start warren")
    };
    let queue = unique_name("groups-durable");
    let server = start().await;
    {
        let conn = connect(&server.amqp_url()).await;
        let ch = confirm_channel(&conn).await;
        within(
            "queue.declare-ok",
            ch.queue_declare(
                queue.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                group_queue_args(),
            ),
        )
        .await
        .unwrap();
        for (body, group) in [("a1", "A"), ("a2", "A"), ("b1", "B")] {
            let mut headers = FieldTable::default();
            headers.insert(HEADER.into(), AMQPValue::LongString(group.into()));
            let props = BasicProperties::default()
                .with_headers(headers)
                .with_delivery_mode(2);
            publish_confirmed(&ch, "", &queue, body.as_bytes(), props).await;
        }
    }
    server.shutdown().await;
    let server = start().await;
    let conn = connect(&server.amqp_url()).await;
    let ch = conn.create_channel().await.unwrap();
    let mut consumer = consume(&ch, &queue, 10).await;
    let (first, a1) = next_body(&mut consumer).await;
    let (second, _b1) = next_body(&mut consumer).await;
    assert_eq!((first.as_str(), second.as_str()), ("a1", "b1"));
    a1.ack(BasicAckOptions::default()).await.unwrap();
    let (third, _) = next_body(&mut consumer).await;
    assert_eq!(third, "a2");
    drop(conn);
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The consumer timeout (visibility timeout): an unacked message of a group comes back to
/// the head of its group, and is delivered again before the group's next message.
#[tokio::test]
async fn a_timed_out_message_goes_back_to_the_head_of_its_group() {
    if is_external() {
        return;
    }
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let queue = unique_name("groups-timeout");
    let mut args = group_queue_args();
    args.insert("x-consumer-timeout".into(), AMQPValue::LongInt(200));
    within(
        "queue.declare-ok",
        ch.queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions::default(),
            args,
        ),
    )
    .await
    .unwrap();
    for body in ["a1", "a2"] {
        publish_in_group(&ch, &queue, body, Some("A")).await;
    }
    let sluggish = conn.create_channel().await.unwrap();
    let mut consumer = consume(&sluggish, &queue, 10).await;
    let (body, _never_acked) = next_body(&mut consumer).await;
    assert_eq!(body, "a1");
    // The broker cancels the sluggish consumer after 200 ms and takes a1 back.
    let ended = within("the consumer's cancellation", consumer.next()).await;
    assert!(ended.is_none(), "a2 must not be delivered while a1 is out");
    let fresh = conn.create_channel().await.unwrap();
    let mut consumer = consume(&fresh, &queue, 10).await;
    let (body, a1) = next_body(&mut consumer).await;
    assert_eq!(body, "a1");
    assert!(a1.redelivered);
    a1.ack(BasicAckOptions::default()).await.unwrap();
    let (body, _) = next_body(&mut consumer).await;
    assert_eq!(body, "a2");
}

/// Groups with priorities and TTL: a higher-priority message of a group waits for the
/// group's message in flight like any other, and an expired waiting message is dropped
/// (dead-lettered) when it reaches the head instead of being delivered.
#[tokio::test]
async fn groups_with_priorities_and_ttl() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let queue = unique_name("groups-prio");
    let dead = unique_name("groups-dead");
    declare_queue(&ch, &dead).await;
    let mut args = group_queue_args();
    args.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(5));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(dead.as_str().into()),
    );
    within(
        "queue.declare-ok",
        ch.queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions::default(),
            args,
        ),
    )
    .await
    .unwrap();
    let send =
        |body: &'static str, group: &'static str, priority: u8, ttl: Option<&'static str>| {
            let mut headers = FieldTable::default();
            headers.insert(HEADER.into(), AMQPValue::LongString(group.into()));
            let mut props = BasicProperties::default()
                .with_headers(headers)
                .with_priority(priority);
            if let Some(ttl) = ttl {
                props = props.with_expiration(ttl.into());
            }
            publish_confirmed(&ch, "", &queue, body.as_bytes(), props)
        };
    send("a1", "A", 0, None).await;
    let consuming = conn.create_channel().await.unwrap();
    let mut consumer = consume(&consuming, &queue, 10).await;
    let (body, a1) = next_body(&mut consumer).await;
    assert_eq!(body, "a1");
    // While a1 is out: a high-priority a2 must wait; b1 (low priority) goes at once; a3
    // expires while it waits.
    send("a2", "A", 5, None).await;
    send("a3", "A", 0, Some("50")).await;
    send("b1", "B", 0, None).await;
    let (body, b1) = next_body(&mut consumer).await;
    assert_eq!(body, "b1", "a2 waits for its group, whatever its priority");
    // a3's TTL passes while it waits behind a1 (polled: nothing tells a client).
    let dead_ch = conn.create_channel().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    a1.ack(BasicAckOptions::default()).await.unwrap();
    let (body, a2) = next_body(&mut consumer).await;
    assert_eq!(body, "a2");
    a2.ack(BasicAckOptions::default()).await.unwrap();
    b1.ack(BasicAckOptions::default()).await.unwrap();
    eventually("a3 is dead-lettered, never delivered", || async {
        queue_counts(&dead_ch, &dead).await.0 == 1
    })
    .await;
    assert_eq!(get_body(&dead_ch, &dead).await.as_deref(), Some(&b"a3"[..]));
    assert_eq!(queue_counts(&ch, &queue).await.0, 0);
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
