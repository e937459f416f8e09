//! Delayed messages when the broker dies: a real `warren` process is killed with SIGKILL
//! right after its publisher confirms arrived for persistent messages on a durable delayed
//! exchange. After a restart every confirmed message is routed (overdue ones at once):
//! a confirm means the schedule's bucket file was fsynced. Messages due before the kill may
//! arrive twice (routed, but their bucket not yet deleted): at least once, never lost.

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
    let mut consumer = ch
        .basic_consume(
            "due".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
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
