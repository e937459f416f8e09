//! A durable deduplication exchange across `kill -9`: a publisher in confirm mode publishes
//! persistent messages with unique `x-deduplication-header` keys through a durable
//! `x-message-deduplication` exchange into a durable queue; the broker is killed with
//! SIGKILL while hundreds of publishes await their confirm. After a restart the publisher
//! retries every message it got no confirm for, and a few that were confirmed: each key
//! must then be in the queue exactly once (none lost by a key that reached disk before its
//! message, none twice by a key forgotten in the crash). And a message whose key was not
//! written yet is not given to consumers: consumed then, it would be gone from the queue
//! with nothing on disk to know its key by, and the retry would deliver it again.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::process::Stdio;
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

mod common;
use common::{free_port, start_with, start_with_env};

const EXCHANGE: &str = "dedup-crash";
const QUEUE: &str = "dedup-crash-q";
/// Most publishes awaiting their confirm at once.
const IN_FLIGHT_MAX: usize = 256;
/// The broker is killed once this many publishes were confirmed.
const KILL_AFTER_CONFIRMED: usize = 3000;
/// Confirmed messages published again after the restart (must be dropped).
const CONFIRMED_RETRIED: usize = 100;

fn properties(id: u64) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "x-deduplication-header".into(),
        AMQPValue::LongString(format!("key-{id}").into()),
    );
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers)
}

async fn confirm_channel(url: &str) -> (Connection, lapin::Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    (conn, ch)
}

async fn declare(ch: &lapin::Channel) {
    let mut args = FieldTable::default();
    args.insert("x-cache-size".into(), AMQPValue::LongInt(1_000_000));
    args.insert(
        "x-cache-persistence".into(),
        AMQPValue::LongString("disk".into()),
    );
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        EXCHANGE.into(),
        ExchangeKind::Custom("x-message-deduplication".into()),
        durable,
        args,
    )
    .await
    .expect("exchange.declare");
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(QUEUE.into(), durable, FieldTable::default())
        .await
        .expect("queue.declare");
    ch.queue_bind(
        QUEUE.into(),
        EXCHANGE.into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.bind");
}

async fn publish(ch: &lapin::Channel, id: u64) -> lapin::Result<lapin::PublisherConfirm> {
    ch.basic_publish(
        EXCHANGE.into(),
        "".into(),
        BasicPublishOptions::default(),
        format!("m{id}").as_bytes(),
        properties(id),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_after_kill_9_leave_each_key_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let broker = start_with(&data, free_port(), &["--log-level", "warn"], Stdio::null());
    let (conn, ch) = confirm_channel(&broker.url()).await;
    declare(&ch).await;

    let mut broker = Some(broker);
    let mut confirmed = BTreeSet::new();
    let mut pending = VecDeque::new();
    let mut next = 0u64;
    loop {
        let Ok(confirm) = publish(&ch, next).await else {
            break;
        };
        pending.push_back((next, confirm));
        next += 1;
        if pending.len() >= IN_FLIGHT_MAX {
            let (id, confirm) = pending.pop_front().expect("non-empty");
            match confirm.await {
                Ok(c) if c.is_ack() => {
                    confirmed.insert(id);
                }
                _ => break,
            }
            if confirmed.len() == KILL_AFTER_CONFIRMED {
                // Mid-stream: IN_FLIGHT_MAX publishes await their confirm.
                if let Some(b) = broker.take() {
                    b.kill9();
                }
            }
        }
    }
    // Confirms that arrived before the kill still count.
    for (id, confirm) in pending {
        if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_millis(100), confirm).await {
            if c.is_ack() {
                confirmed.insert(id);
            }
        }
    }
    drop(conn);
    assert!(broker.is_none(), "the broker was killed");
    let published = next;
    let unconfirmed: Vec<u64> = (0..published)
        .filter(|id| !confirmed.contains(id))
        .collect();
    // Almost always some are unconfirmed (IN_FLIGHT_MAX were in flight at the kill); the
    // confirmed ones retried below are checked either way.

    let broker = start_with(&data, free_port(), &["--log-level", "warn"], Stdio::null());
    let (conn, ch) = confirm_channel(&broker.url()).await;
    let retried: Vec<u64> = unconfirmed
        .iter()
        .copied()
        .chain(confirmed.iter().copied().take(CONFIRMED_RETRIED))
        .collect();
    let mut confirms = Vec::with_capacity(retried.len());
    for id in &retried {
        confirms.push(publish(&ch, *id).await.expect("publish"));
    }
    for c in confirms {
        assert!(c.await.expect("confirm").is_ack(), "a retry was nacked");
    }

    // Everything in the queue, counted by body.
    let count = ch
        .queue_declare(
            QUEUE.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare")
        .message_count();
    ch.basic_qos(1000, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = ch
        .basic_consume(
            QUEUE.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..count {
        let d = warren_itest::within("a delivery", consumer.next())
            .await
            .expect("stream open")
            .expect("delivery");
        *seen
            .entry(String::from_utf8(d.data).expect("utf-8"))
            .or_default() += 1;
    }
    let missing: Vec<u64> = (0..published)
        .filter(|id| !seen.contains_key(&format!("m{id}")))
        .collect();
    let twice: Vec<&String> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, _)| k)
        .collect();
    assert!(
        missing.is_empty(),
        "lost {} keys: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        twice.is_empty(),
        "{} keys twice: {:?}",
        twice.len(),
        &twice[..twice.len().min(10)]
    );
    assert_eq!(count as u64, published);
    eprintln!(
        "published {published}, {} confirmed before the kill, {} unconfirmed, {} retried",
        confirmed.len(),
        unconfirmed.len(),
        retried.len()
    );
    drop(conn);
    drop(broker);
}

/// The moment that matters, made certain by a test hook (`WARREN_FAULT_DEDUP_KEY_STALL=1`:
/// keys are never written, as if the process died right after each message's fsync): a
/// consumer waiting on the queue does not get the message, which stays in the queue, so that
/// after `kill -9` and a restart its key is read back from the queue and the publisher's retry
/// is dropped. Delivered at once instead, it would have been consumed, and the retry would
/// deliver it a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_not_consumed_before_its_key_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let fault = [("WARREN_FAULT_DEDUP_KEY_STALL", "1")];
    let flags = ["--log-level", "error"];
    let broker = start_with_env(&data, free_port(), &flags, Stdio::null(), &fault);
    let (conn, ch) = confirm_channel(&broker.url()).await;
    declare(&ch).await;
    let consuming = conn.create_channel().await.expect("channel");
    let mut consumer = consuming
        .basic_consume(
            QUEUE.into(),
            "waiting".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    // Never confirmed: its key is never written.
    let _unconfirmed = publish(&ch, 0).await.expect("publish");
    // The queue holds it (ready, with a consumer that could take it) and nothing arrives.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(delivery) = futures_lite::future::poll_once(consumer.next()).await {
            panic!("delivered before its key was written: {delivery:?}");
        }
        let ready = ch
            .queue_declare(
                QUEUE.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive declare")
            .message_count();
        if ready == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the message never reached the queue"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    broker.kill9();
    drop(conn);

    let broker = start_with(&data, free_port(), &["--log-level", "warn"], Stdio::null());
    let (conn, ch) = confirm_channel(&broker.url()).await;
    let retry = publish(&ch, 0).await.expect("publish");
    assert!(retry.await.expect("confirm").is_ack(), "the retry is acked");
    let mut bodies = Vec::new();
    while let Some(m) = ch
        .basic_get(
            QUEUE.into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic.get")
    {
        bodies.push(String::from_utf8(m.delivery.data).expect("utf-8"));
    }
    assert_eq!(
        bodies,
        ["m0"],
        "exactly one copy, the one published before the kill"
    );
    drop(conn);
    drop(broker);
}

/// Ready messages in `queue` (a passive declare).
async fn count(ch: &lapin::Channel, queue: &str) -> u32 {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive declare")
    .message_count()
}

/// Polls until `queue` holds `n` ready messages (at most 10 s).
async fn until_count(ch: &lapin::Channel, queue: &str, n: u32) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while count(ch, queue).await != n {
        assert!(
            std::time::Instant::now() < deadline,
            "{queue} never held {n} messages"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A held message can also leave its queue without a consumer: here it expires (TTL) into
/// a dead-letter queue while its key is not written (the stall hook). Its exit waits for
/// the key: nothing is dead-lettered and it stays in the queue's log, so after `kill -9`
/// the recovered message gives the key back, the retry is dropped, and the dead-letter
/// queue ends with exactly one copy. Acked and dead-lettered at once, it would leave no
/// trace of its key, and the retry would be a second copy beside the dead-lettered one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_message_that_expires_keeps_its_key_across_a_crash() {
    const TTL_QUEUE: &str = "dedup-crash-ttl";
    const DEAD: &str = "dedup-crash-dead";
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let fault = [("WARREN_FAULT_DEDUP_KEY_STALL", "1")];
    let broker = start_with_env(
        &data,
        free_port(),
        &["--log-level", "error"],
        Stdio::null(),
        &fault,
    );
    let (conn, ch) = confirm_channel(&broker.url()).await;
    declare(&ch).await;
    // Only the queues below take the message (a durable queue keeping it would give its
    // key back at the restart whatever the queue with a TTL did).
    ch.queue_delete(QUEUE.into(), Default::default())
        .await
        .expect("queue.delete");
    // A transient witness: once it has the message, the queue with the TTL had it too.
    let witness = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue.declare");
    let witness = witness.name().as_str().to_owned();
    ch.queue_bind(
        witness.as_str().into(),
        EXCHANGE.into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.bind");
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(DEAD.into(), durable, FieldTable::default())
        .await
        .expect("queue.declare");
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(200));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(DEAD.into()),
    );
    ch.queue_declare(TTL_QUEUE.into(), durable, args)
        .await
        .expect("queue.declare");
    ch.queue_bind(
        TTL_QUEUE.into(),
        EXCHANGE.into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.bind");
    // Never confirmed: its key is never written.
    let _unconfirmed = publish(&ch, 0).await.expect("publish");
    // The queue with the TTL got it before the witness answers (routing sent it to both
    // first), so once the witness has it, a ready count of 0 there means it expired.
    until_count(&ch, &witness, 1).await;
    until_count(&ch, TTL_QUEUE, 0).await;
    // ...but is not dead-lettered while its key is not on disk (checked for a while: an
    // absence, so there is no event to await).
    for _ in 0..30 {
        assert_eq!(
            count(&ch, DEAD).await,
            0,
            "dead-lettered before its key was written"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    broker.kill9();
    drop(conn);

    let broker = start_with(&data, free_port(), &["--log-level", "warn"], Stdio::null());
    let (conn, ch) = confirm_channel(&broker.url()).await;
    let retry = publish(&ch, 0).await.expect("publish");
    assert!(retry.await.expect("confirm").is_ack(), "the retry is acked");
    // The recovered message expires (again) into the dead-letter queue; a retry taken for a
    // new message would follow it there once it expired too.
    until_count(&ch, TTL_QUEUE, 0).await;
    until_count(&ch, DEAD, 1).await;
    let mut bodies = Vec::new();
    while let Some(m) = ch
        .basic_get(
            DEAD.into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic.get")
    {
        bodies.push(String::from_utf8(m.delivery.data).expect("utf-8"));
    }
    assert_eq!(bodies, ["m0"], "exactly one copy, dead-lettered once");
    drop(conn);
    drop(broker);
}
