//! Durability through a real client across a restart of an in-process broker on the same
//! data directory: which definitions and messages survive (RabbitMQ's rules), the redelivered
//! flag, and disk space given back as messages are acked.

use std::path::{Path, PathBuf};

use warren_itest::futures_lite::StreamExt;
use warren_itest::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use warren_itest::lapin::types::FieldTable;
use warren_itest::lapin::{BasicProperties, ExchangeKind};
use warren_itest::*;
use warren_server::{Config, ServerHandle};

async fn start_on(dir: &Path) -> ServerHandle {
    let mut config = Config::for_tests();
    config.data_dir = dir.to_path_buf();
    warren_server::start(config).await.expect("start warren")
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name(name));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

async fn declare(ch: &warren_itest::lapin::Channel, name: &str, durable: bool) {
    within(
        "queue.declare",
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare");
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            total += if p.is_dir() {
                dir_bytes(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            };
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_definitions_survive_a_restart_and_transient_ones_do_not() {
    if is_external() {
        return;
    }
    let dir = fresh_dir("warren-durable-defs");
    let server = start_on(&dir).await;
    {
        let conn = connect(&server.amqp_url()).await;
        let ch = conn.create_channel().await.expect("channel");
        for (name, durable) in [("dx", true), ("tx", false)] {
            within(
                "exchange.declare",
                ch.exchange_declare(
                    name.into(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        durable,
                        ..Default::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await
            .expect("exchange");
        }
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), 10i32.into());
        within(
            "queue.declare",
            ch.queue_declare(
                "dq".into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            ),
        )
        .await
        .expect("durable queue");
        declare(&ch, "tq", false).await;
        let server_named = declare_temp_queue(&ch).await;
        for (queue, exchange) in [("dq", "dx"), ("dq", "tx"), ("tq", "dx")] {
            within(
                "queue.bind",
                ch.queue_bind(
                    queue.into(),
                    exchange.into(),
                    "a.#".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await
            .expect("bind");
        }
        assert!(queue_exists(&conn, &server_named).await);
    }
    server.shutdown().await;

    let server = start_on(&dir).await;
    let conn = connect(&server.amqp_url()).await;
    assert!(queue_exists(&conn, "dq").await, "durable queue restored");
    assert!(!queue_exists(&conn, "tq").await, "transient queue gone");
    let ch = conn.create_channel().await.expect("channel");
    // The durable queue kept its arguments: an inequivalent redeclare is refused.
    let result = within(
        "queue.declare",
        ch.queue_declare(
            "dq".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    expect_code(result, 406);
    // The durable binding routes; the one to the transient exchange is gone with it.
    let ch = confirm_channel(&conn).await;
    publish_confirmed(&ch, "dx", "a.b", b"via durable binding", persistent()).await;
    assert_eq!(
        get_body(&ch, "dq").await.as_deref(),
        Some(&b"via durable binding"[..])
    );
    let result = within(
        "basic.publish",
        ch.basic_publish(
            "tx".into(),
            "a.b".into(),
            Default::default(),
            b"x",
            BasicProperties::default(),
        ),
    )
    .await
    .expect("publish")
    .await;
    assert!(
        result.is_err(),
        "the transient exchange must be gone: {result:?}"
    );
    drop(conn);
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_messages_survive_in_order_and_unacked_ones_come_back_redelivered() {
    if is_external() {
        return;
    }
    let dir = fresh_dir("warren-durable-msgs");
    let server = start_on(&dir).await;
    {
        let conn = connect(&server.amqp_url()).await;
        let ch = confirm_channel(&conn).await;
        declare(&ch, "jobs", true).await;
        for i in 0..6 {
            let props = if i % 2 == 0 {
                persistent()
            } else {
                BasicProperties::default()
            };
            publish_confirmed(&ch, "", "jobs", format!("m{i}").as_bytes(), props).await;
        }
        // Take m0 and ack it (gone for good); take m1 (transient, lost at restart anyway)
        // and m2 without acking (it must come back redelivered).
        let consumer_ch = conn.create_channel().await.expect("channel");
        consumer_ch
            .basic_qos(3, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut consumer = consumer_ch
            .basic_consume(
                "jobs".into(),
                "c".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let first = next_delivery(&mut consumer).await;
        assert_eq!(first.data, b"m0");
        assert!(!first.redelivered);
        first.ack(BasicAckOptions::default()).await.expect("ack");
        let _m1 = next_delivery(&mut consumer).await;
        let m2 = next_delivery(&mut consumer).await;
        assert_eq!(m2.data, b"m2");
        // With prefetch 3, m3 arrives only once the queue has processed the ack of m0.
        let m3 = next_delivery(&mut consumer).await;
        assert_eq!(m3.data, b"m3");
    }
    server.shutdown().await;

    let server = start_on(&dir).await;
    let conn = connect(&server.amqp_url()).await;
    let ch = conn.create_channel().await.expect("channel");
    let mut consumer = ch
        .basic_consume(
            "jobs".into(),
            "after".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut got = Vec::new();
    for _ in 0..2 {
        let d = next_delivery(&mut consumer).await;
        got.push((String::from_utf8_lossy(&d.data).into_owned(), d.redelivered));
    }
    // m0 was acked; m1, m3, m5 were transient; m2 and m3 were delivered but not acked.
    assert_eq!(got[0], ("m2".to_owned(), true));
    assert_eq!(got[1].0, "m4");
    let extra = tokio::time::timeout(std::time::Duration::from_millis(300), consumer.next()).await;
    assert!(extra.is_err(), "nothing else may come back: {extra:?}");
    drop(conn);
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_usage_falls_as_messages_are_acked() {
    if is_external() {
        return;
    }
    let dir = fresh_dir("warren-durable-disk");
    let server = start_on(&dir).await;
    let conn = connect(&server.amqp_url()).await;
    let ch = confirm_channel(&conn).await;
    declare(&ch, "big", true).await;
    let body = vec![7u8; 64 * 1024];
    // 400 × 64 KiB = 25 MiB: several 8 MiB segments.
    for _ in 0..400 {
        within(
            "basic.publish",
            ch.basic_publish(
                "".into(),
                "big".into(),
                Default::default(),
                &body,
                persistent(),
            ),
        )
        .await
        .expect("publish");
    }
    assert!(ch.wait_for_confirms().await.expect("confirms").is_empty());
    let full = dir_bytes(&dir);
    assert!(
        full > 20 * 1024 * 1024,
        "data dir holds the messages: {full} bytes"
    );
    let drain = conn.create_channel().await.expect("channel");
    drain
        .basic_qos(100, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = drain
        .basic_consume(
            "big".into(),
            "d".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    for _ in 0..400 {
        let d = next_delivery(&mut consumer).await;
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    eventually("segments of acked messages to be deleted", || {
        let dir = dir.clone();
        async move { dir_bytes(&dir) < 9 * 1024 * 1024 }
    })
    .await;
    drop(conn);
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

async fn declare_with(ch: &warren_itest::lapin::Channel, name: &str, args: FieldTable) {
    within(
        "queue.declare",
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        ),
    )
    .await
    .expect("declare");
}

/// A message's TTL deadline is kept on disk: after a restart it still expires on time and is
/// dead-lettered; and a dead-lettered persistent message survives a restart in its DLQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_deadlines_and_dead_lettered_messages_survive_a_restart() {
    if is_external() {
        return;
    }
    let dir = fresh_dir("warren-durable-ttl");
    let server = start_on(&dir).await;
    {
        let conn = connect(&server.amqp_url()).await;
        let ch = confirm_channel(&conn).await;
        declare(&ch, "dlq", true).await;
        let mut args = FieldTable::default();
        args.insert(
            "x-dead-letter-exchange".into(),
            warren_itest::amq_protocol::types::AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            warren_itest::amq_protocol::types::AMQPValue::LongString("dlq".into()),
        );
        declare_with(&ch, "rejects", args.clone()).await;
        args.insert("x-message-ttl".into(), 1500i32.into());
        declare_with(&ch, "short-lived", args).await;
        publish_confirmed(&ch, "", "short-lived", b"will expire", persistent()).await;
        publish_confirmed(&ch, "", "rejects", b"rejected before restart", persistent()).await;
        // Reject it: it moves to the DLQ (a persistent message in a durable queue).
        let got = within(
            "basic.get",
            ch.basic_get("rejects".into(), Default::default()),
        )
        .await
        .expect("get")
        .expect("a message");
        got.reject(warren_itest::lapin::options::BasicRejectOptions { requeue: false })
            .await
            .expect("reject");
        eventually("the rejected message to reach the DLQ", || {
            let ch = ch.clone();
            async move { queue_counts(&ch, "dlq").await.0 == 1 }
        })
        .await;
    }
    server.shutdown().await;

    let server = start_on(&dir).await;
    let conn = connect(&server.amqp_url()).await;
    let ch = conn.create_channel().await.expect("channel");
    // Restarted well within the TTL: the message is still there (and not yet expired).
    assert_eq!(
        queue_counts(&ch, "dlq").await.0,
        1,
        "the dead-lettered message survived"
    );
    let mut consumer = ch
        .basic_consume(
            "dlq".into(),
            "dl".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let first = next_delivery(&mut consumer).await;
    assert_eq!(first.data, b"rejected before restart");
    let death = first
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-first-death-reason").cloned());
    assert_eq!(
        death,
        Some(warren_itest::amq_protocol::types::AMQPValue::LongString(
            "rejected".into()
        ))
    );
    // The TTL'd message expires after the restart, on its original deadline, into the DLQ.
    let expired = next_delivery(&mut consumer).await;
    assert_eq!(expired.data, b"will expire");
    let reason = expired
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-first-death-reason").cloned());
    assert_eq!(
        reason,
        Some(warren_itest::amq_protocol::types::AMQPValue::LongString(
            "expired".into()
        ))
    );
    drop(conn);
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
