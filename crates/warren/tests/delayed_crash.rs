//! Delayed messages when the broker dies: a real `warren` process is killed with SIGKILL
//! right after its publisher confirms arrived for persistent messages on a durable delayed
//! exchange. After a restart every confirmed message is routed (overdue ones at once):
//! a confirm means the schedule's bucket file was fsynced. Messages due before the kill may
//! arrive twice (routed, but their bucket not yet deleted): at least once, never lost. And a
//! kill while a bucket is being routed sends again only what was routed in the last moment
//! (the records whose queues confirmed them are marked routed), not the whole bucket.

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

mod common;
use common::{free_port, start_with};

const MESSAGES: usize = 2_000;

async fn declare(ch: &lapin::Channel) {
    let mut args = FieldTable::default();
    args.insert(
        "x-delayed-type".into(),
        AMQPValue::LongString("direct".into()),
    );
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        "later".into(),
        ExchangeKind::Custom("x-delayed-message".into()),
        durable,
        args,
    )
    .await
    .expect("exchange.declare");
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("due".into(), options, FieldTable::default())
        .await
        .expect("queue.declare");
    ch.queue_bind(
        "due".into(),
        "later".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.bind");
}

async fn consume_due(ch: &lapin::Channel) -> lapin::Consumer {
    ch.basic_consume(
        "due".into(),
        "".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("consume")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_delayed_messages_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let port = free_port();
    let broker = start_with(&data, port, &["--log-level", "warn"], Stdio::null());
    let conn = Connection::connect(&broker.url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut confirms = Vec::with_capacity(MESSAGES);
    for i in 0..MESSAGES {
        // Half due while the first process still runs, half well after the restart.
        let delay_ms: i64 = if i % 2 == 0 {
            1 + (i as i64 % 300)
        } else {
            2_000 + i as i64
        };
        let mut headers = FieldTable::default();
        headers.insert("x-delay".into(), AMQPValue::LongLongInt(delay_ms));
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers);
        let c = ch
            .basic_publish(
                "later".into(),
                "k".into(),
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                props,
            )
            .await
            .expect("publish");
        confirms.push(c);
    }
    for c in confirms {
        assert!(c.await.expect("confirm").is_ack());
    }
    broker.kill9();
    drop(conn);

    let port = free_port();
    let broker = start_with(&data, port, &["--log-level", "warn"], Stdio::null());
    let conn = Connection::connect(&broker.url(), ConnectionProperties::default())
        .await
        .expect("reconnect");
    let ch = conn.create_channel().await.expect("channel");
    let mut consumer = consume_due(&ch).await;
    let mut seen = HashSet::new();
    while seen.len() < MESSAGES {
        let next = tokio::time::timeout(Duration::from_secs(30), consumer.next()).await;
        let Ok(Some(Ok(d))) = next else {
            let missing: Vec<usize> = (0..MESSAGES)
                .filter(|i| !seen.contains(&format!("m{i}")))
                .take(10)
                .collect();
            panic!(
                "{} of {MESSAGES} arrived; missing {missing:?}...",
                seen.len()
            );
        };
        seen.insert(String::from_utf8(d.data).unwrap());
    }
}

/// Messages in one bucket (one second), due ~1 ms apart.
const BUCKET_MESSAGES: usize = 900;
/// The broker is killed once this many of them were delivered.
const KILL_AFTER_DELIVERED: usize = 450;
/// Most messages delivered twice: those routed in the last moment before the kill (a queue
/// fsync and a mark write: a few on an idle machine, room here for ~200 ms of a busy one).
/// Without marks, all `KILL_AFTER_DELIVERED` or more come again.
const DUPLICATES_MAX: usize = KILL_AFTER_DELIVERED / 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_while_a_bucket_is_routed_sends_again_only_the_last_routed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let broker = start_with(&data, free_port(), &["--log-level", "warn"], Stdio::null());
    let conn = Connection::connect(&broker.url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch).await;
    let mut consumer = consume_due(&conn.create_channel().await.expect("channel")).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    // Every message due in the same second, spread over it (so it is routed over ~1 s).
    // Far enough ahead that a busy machine publishes them all before it comes due.
    let bucket = (now_ms() + 5_000) / 1_000 * 1_000 + 1_000;
    let mut confirms = Vec::with_capacity(BUCKET_MESSAGES);
    for i in 0..BUCKET_MESSAGES {
        let due = bucket + i as i64;
        let mut headers = FieldTable::default();
        headers.insert("x-delay".into(), AMQPValue::LongLongInt(due - now_ms()));
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers);
        let c = ch
            .basic_publish(
                "later".into(),
                "k".into(),
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                props,
            )
            .await
            .expect("publish");
        confirms.push(c);
    }
    for c in confirms {
        assert!(c.await.expect("confirm").is_ack());
    }
    assert!(now_ms() < bucket, "published before the bucket came due");
    let mut first = HashSet::new();
    while first.len() < KILL_AFTER_DELIVERED {
        let next = tokio::time::timeout(Duration::from_secs(30), consumer.next()).await;
        let Ok(Some(Ok(d))) = next else {
            panic!("only {} delivered before the kill", first.len());
        };
        first.insert(String::from_utf8(d.data).expect("utf-8"));
    }
    broker.kill9();
    drop(conn);

    let broker = start_with(&data, free_port(), &["--log-level", "warn"], Stdio::null());
    let conn = Connection::connect(&broker.url(), ConnectionProperties::default())
        .await
        .expect("reconnect");
    let ch = conn.create_channel().await.expect("channel");
    let mut consumer = consume_due(&ch).await;
    let mut again = 0;
    let mut seen = first.clone();
    while seen.len() < BUCKET_MESSAGES {
        let next = tokio::time::timeout(Duration::from_secs(30), consumer.next()).await;
        let Ok(Some(Ok(d))) = next else {
            panic!("{} of {BUCKET_MESSAGES} arrived", seen.len());
        };
        let body = String::from_utf8(d.data).expect("utf-8");
        again += usize::from(first.contains(&body));
        seen.insert(body);
    }
    // Routed in due order: the copies of earlier messages came before the last new one.
    assert!(
        again <= DUPLICATES_MAX,
        "{again} of the {} delivered before the kill came again",
        first.len()
    );
}
