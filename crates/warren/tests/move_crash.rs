//! Moving messages (DLQ redrive) when the broker dies midway: a real `warren` process dies
//! while it moves persistent messages between durable queues over the management API. After
//! a restart every message is in exactly one place: still in the source, or in the
//! destination marked `x-redrive-count` — even when the process died after a batch was
//! confirmed by the destination and before it was acked on the source (the move journal,
//! `warren_core::admin::move_journal`, settles it at start).

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
use common::{free_port, start_with, start_with_env, wait_listening};

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
    fill(&ch, MESSAGES).await;

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
    assert_eq!(twice, 0, "{twice} messages in both queues");
    // Some were moved before the kill (polled above). That some were left is likely but not
    // certain on a fast disk, so it is reported rather than asserted.
    assert!(left_in_source < MESSAGES, "{left_in_source} left");
    eprintln!("killed midway: {left_in_source} messages left in the source");
}

/// `MESSAGES` persistent messages `m0`, `m1`, ... into durable queue `dlq`, confirmed; also
/// declares the durable destination `work`.
async fn fill(ch: &lapin::Channel, n: usize) {
    declare(ch, "dlq", false).await;
    declare(ch, "work", false).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut confirms = Vec::with_capacity(n);
    for i in 0..n {
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
}

/// The worst moment, made certain: the process aborts right after the first batch was
/// confirmed by the destination (fsynced) and before it was acked on the source. Without the
/// journal that batch would come back in both queues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_confirm_and_source_ack_leaves_each_message_once() {
    crash_between_confirm_and_source_ack(false).await;
}

/// The same with a consumer waiting on the destination: it must not get the batch before the
/// batch's acks on the source are on disk. Consumed then, the batch would be gone from the
/// destination, the journal could not tell it from one that never arrived, and it would come
/// back in the source: each message consumed, and then still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_consumer_gets_nothing_before_the_source_acks_are_on_disk() {
    crash_between_confirm_and_source_ack(true).await;
}

async fn crash_between_confirm_and_source_ack(consumer_on_destination: bool) {
    const N: usize = 3 * MOVE_BATCH_MAX;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (port, mgmt) = (free_port(), free_port());
    let mgmt_flag = mgmt.to_string();
    let flags = ["--log-level", "error", "--mgmt-port", mgmt_flag.as_str()];
    let fault = [("WARREN_FAULT_MOVE_ABORT_AFTER_CONFIRM", "1")];
    let mut broker = start_with_env(&data, port, &flags, Stdio::null(), &fault);
    wait_listening(mgmt);
    let conn = Connection::connect(&broker.url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    fill(&ch, N).await;
    let mut waiting = match consumer_on_destination {
        false => None,
        true => Some(
            ch.basic_consume(
                "work".into(),
                "waiting".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume"),
        ),
    };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], mgmt));
    let (status, _) = warren_itest::http(
        addr,
        "POST",
        "/api/queues/%2F/dlq/actions",
        ("guest", "guest"),
        r#"{"action":"move","destination_queue":"work"}"#,
    )
    .await;
    assert_ne!(status, 200, "the move must not have finished");
    let exit = broker.child.wait().expect("wait");
    assert!(!exit.success(), "the broker aborted: {exit:?}");
    if let Some(consumer) = waiting.as_mut() {
        // Everything the consumer got before the broker died (the stream ends with it).
        let mut got = Vec::new();
        while let Some(Ok(d)) = consumer.next().await {
            got.push(String::from_utf8(d.data).unwrap());
        }
        assert!(
            got.is_empty(),
            "{} moved messages were consumed before their source acks were on disk, e.g. {:?}",
            got.len(),
            &got[..got.len().min(3)]
        );
    }
    drop(conn);

    let port = free_port();
    let broker = start_with(&data, port, &["--log-level", "warn"], Stdio::null());
    let conn = Connection::connect(&broker.url(), ConnectionProperties::default())
        .await
        .expect("reconnect");
    let mut in_source = HashMap::new();
    bodies(&conn, "dlq", &mut in_source).await;
    let mut in_work = HashMap::new();
    bodies(&conn, "work", &mut in_work).await;
    let first_batch: Vec<String> = (0..MOVE_BATCH_MAX).map(|i| format!("m{i}")).collect();
    for body in &first_batch {
        assert_eq!(
            in_work.get(body),
            Some(&1),
            "{body} is in the destination once"
        );
        assert!(
            !in_source.contains_key(body),
            "{body} also came back in the source"
        );
    }
    assert_eq!(in_work.len(), MOVE_BATCH_MAX, "only the first batch moved");
    for i in MOVE_BATCH_MAX..N {
        assert_eq!(
            in_source.get(&format!("m{i}")),
            Some(&1),
            "m{i} is still in the source"
        );
    }
    assert_eq!(in_source.len(), N - MOVE_BATCH_MAX);
}
