//! Moving messages (DLQ redrive) when the broker dies midway: a real `warren` process is
//! killed with SIGKILL while it moves persistent messages between durable queues over the
//! management API. After a restart every message is still there: in the source, or in the
//! destination marked `x-redrive-count`. A copy in both can only come from the one batch
//! that was confirmed by the destination but not yet acked on the source when the process
//! died (at most `MOVE_BATCH_MAX` messages).

use std::collections::HashMap;
use std::process::Stdio;

use futures_lite::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use warren_core::admin::messages::MOVE_BATCH_MAX;

mod common;
use common::{free_port, start_with, wait_listening};

const MESSAGES: usize = 20_000;

async fn declare(ch: &lapin::Channel, name: &str, passive: bool) -> u32 {
    let options = QueueDeclareOptions {
        durable: true,
        passive,
        ..Default::default()
    };
    ch.queue_declare(name.into(), options, FieldTable::default())
        .await
        .expect("queue.declare")
        .message_count()
}

/// Every body in `queue`, with how many times each was seen (consumed with no-ack until the
/// queue's count at the start has arrived).
async fn bodies(conn: &Connection, queue: &str, into: &mut HashMap<String, usize>) {
    let ch = conn.create_channel().await.expect("channel");
    let n = declare(&ch, queue, true).await;
    ch.basic_qos(1000, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    for _ in 0..n {
        let d = warren_itest::within("a delivery", consumer.next())
            .await
            .expect("stream open")
            .expect("delivery");
        *into.entry(String::from_utf8(d.data).unwrap()).or_default() += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_cut_by_kill_9_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (port, mgmt) = (free_port(), free_port());
    let mgmt_flag = mgmt.to_string();
    let flags = ["--log-level", "warn", "--mgmt-port", mgmt_flag.as_str()];
    let broker = start_with(&data, port, &flags, Stdio::null());
    wait_listening(mgmt);
    let conn = Connection::connect(&broker.url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch, "dlq", false).await;
    declare(&ch, "work", false).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut confirms = Vec::with_capacity(MESSAGES);
    for i in 0..MESSAGES {
        let props = BasicProperties::default().with_delivery_mode(2);
        let body = format!("m{i}");
        let c = ch
            .basic_publish(
                "".into(),
                "dlq".into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                props,
            )
            .await
            .expect("publish");
        confirms.push(c);
    }
    for c in confirms {
        assert!(c.await.expect("confirm").is_ack());
    }

    // The move runs in the background; the process dies once part of it is done.
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], mgmt));
    let mover = tokio::spawn(async move {
        warren_itest::http(
            addr,
            "POST",
            "/api/queues/%2F/dlq/actions",
            ("guest", "guest"),
            r#"{"action":"move","destination_queue":"work"}"#,
        )
        .await
    });
    // Polled: a move in progress acknowledges nothing to anyone.
    warren_itest::eventually("part of the messages moved", || async {
        declare(&ch, "work", true).await as usize >= MESSAGES / 10
    })
    .await;
    broker.kill9();
    mover.abort();
    drop(conn);

    let port = free_port();
    let broker = start_with(&data, port, &["--log-level", "warn"], Stdio::null());
    let conn = Connection::connect(&broker.url(), ConnectionProperties::default())
        .await
        .expect("reconnect");
    let mut seen = HashMap::new();
    bodies(&conn, "dlq", &mut seen).await;
    let left_in_source = seen.len();
    bodies(&conn, "work", &mut seen).await;
    let missing: Vec<usize> = (0..MESSAGES)
        .filter(|i| !seen.contains_key(&format!("m{i}")))
        .collect();
    assert!(
        missing.is_empty(),
        "lost {} messages: {:?}...",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let twice = seen.values().filter(|n| **n > 1).count();
    assert!(
        twice <= MOVE_BATCH_MAX,
        "{twice} messages in both queues; at most one batch ({MOVE_BATCH_MAX}) may be"
    );
    assert!(seen.values().all(|n| *n <= 2));
    // Some were moved before the kill (polled above). That some were left is likely but not
    // certain on a fast disk, so it is reported rather than asserted.
    assert!(left_in_source < MESSAGES, "{left_in_source} left");
    eprintln!("killed midway: {left_in_source} messages left in the source, {twice} in both");
}
