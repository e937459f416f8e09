//! A real `warren` with `--busy-poll` at its longest window on one worker thread: the option
//! takes effect (the start-up log says so), and everything that needs the worker while it spins
//! still happens: deliveries (socket readiness), publisher confirms of persistent messages
//! (an fsync finishing on a blocking thread), and message expiry into a dead-letter queue
//! (a timer, which the spin cannot see and may delay by at most one window).

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};

mod common;

/// Messages sent each way.
const ROUND_TRIPS: u32 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_polling_broker_delivers_confirms_and_expires() {
    // The longest window `--busy-poll` accepts.
    let window_us = warren_runtime::BUSY_POLL_MAX.as_micros().to_string();
    let dir = std::env::temp_dir().join(format!("warren-busy-poll-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut broker = common::start_with(
        &dir,
        common::free_port(),
        &[
            "--busy-poll",
            &window_us,
            "--worker-threads",
            "1",
            "--log-level",
            "info",
        ],
        Stdio::piped(),
    );
    let stdout = broker.child.stdout.take().expect("stdout");
    // Reads the broker's log to its end (so it never writes into a closed pipe), handing over
    // the start-up line.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("Warren started") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("a start-up line");
    assert!(
        line.contains(&format!("busy_poll_us={window_us}")),
        "busy polling is on: {line}"
    );

    let conn = Connection::connect(&broker.url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("bp-work".into(), durable, FieldTable::default())
        .await
        .expect("declare");
    ch.queue_declare("bp-dead".into(), durable, FieldTable::default())
        .await
        .expect("declare");
    let mut ttl_args = FieldTable::default();
    ttl_args.insert("x-message-ttl".into(), AMQPValue::LongUInt(20));
    ttl_args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    ttl_args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString("bp-dead".into()),
    );
    ch.queue_declare("bp-expiring".into(), durable, ttl_args)
        .await
        .expect("declare");

    let mut work = ch
        .basic_consume(
            "bp-work".into(),
            "work".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let persistent = BasicProperties::default().with_delivery_mode(2);
    for i in 0..ROUND_TRIPS {
        let confirm = ch
            .basic_publish(
                "".into(),
                "bp-work".into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                persistent.clone(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "message {i} confirmed (fsynced)");
        let d = tokio::time::timeout(Duration::from_secs(10), work.next())
            .await
            .expect("delivered")
            .expect("stream open")
            .expect("delivery");
        assert_eq!(d.data, i.to_be_bytes(), "delivered in order");
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }

    let mut dead = ch
        .basic_consume(
            "bp-dead".into(),
            "dead".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    ch.basic_publish(
        "".into(),
        "bp-expiring".into(),
        BasicPublishOptions::default(),
        b"expires",
        persistent,
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
    let d = tokio::time::timeout(Duration::from_secs(10), dead.next())
        .await
        .expect("the expired message is dead-lettered")
        .expect("stream open")
        .expect("delivery");
    assert_eq!(d.data, b"expires");
    d.ack(BasicAckOptions::default()).await.expect("ack");

    conn.close(200, "done".into()).await.expect("close");
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}
