//! Crash tests of a real `warren` process: a publisher with confirms publishes persistent
//! messages with unique ids while the test kills the broker with SIGKILL at random moments;
//! after every restart, and at the end, every confirmed id must be there, intact, once.
//! Also: restarts after a segment file was truncated or had a byte flipped.
//!
//! `WARREN_CRASH_CYCLES` sets the number of kill cycles (default 20; more for a long run).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rand::Rng;

mod common;
use common::{free_port, start};

const QUEUE: &str = "crash-test";
/// Most publishes awaiting their confirm at once.
const IN_FLIGHT_MAX: usize = 256;

/// The body of message `id`: the id and a pattern derived from it, so corruption shows.
fn body(id: u64) -> Vec<u8> {
    let mut b = id.to_be_bytes().to_vec();
    let len = 64 + (id % 512) as usize;
    b.extend((0..len).map(|i| (id as usize).wrapping_mul(31).wrapping_add(i) as u8));
    b
}

fn id_of(data: &[u8]) -> u64 {
    assert!(data.len() >= 8, "short body {data:?}");
    let id = u64::from_be_bytes(data[..8].try_into().expect("8 bytes"));
    assert_eq!(data, &body(id)[..], "body of message {id} is corrupted");
    id
}

async fn connect(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect")
}

async fn declare(ch: &lapin::Channel) {
    ch.queue_declare(
        QUEUE.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare");
}

/// A publishing channel in confirm mode with the queue declared, or None if the broker died
/// meanwhile (a kill may land at any moment, also during this set-up: that flaked the test).
async fn open_publisher(url: &str) -> Option<(Connection, lapin::Channel)> {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .ok()?;
    let ch = conn.create_channel().await.ok()?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .ok()?;
    ch.queue_declare(
        QUEUE.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .ok()?;
    Some((conn, ch))
}

/// Publishes ids from `next` on until the connection dies; returns the confirmed ids.
async fn publish_until_killed(url: &str, mut next: u64, confirmed: &mut BTreeSet<u64>) -> u64 {
    // Killed before publishing anything: the final drain checks that some cycles confirmed.
    let Some((_conn, ch)) = open_publisher(url).await else {
        return next;
    };
    let mut pending = std::collections::VecDeque::new();
    loop {
        let props = BasicProperties::default().with_delivery_mode(2);
        let sent = ch
            .basic_publish(
                "".into(),
                QUEUE.into(),
                BasicPublishOptions::default(),
                &body(next),
                props,
            )
            .await;
        let Ok(confirm) = sent else { break };
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
    next
}

/// Consumes everything in the queue (acking), returning the ids in order of arrival.
async fn drain(url: &str, expected_at_least: usize) -> Vec<u64> {
    let conn = connect(url).await;
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch).await;
    ch.basic_qos(1000, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = ch
        .basic_consume(
            QUEUE.into(),
            "drain".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut ids = Vec::new();
    loop {
        // Wait long for what must be there; then a short quiet period ends the drain.
        let wait = if ids.len() < expected_at_least {
            Duration::from_secs(20)
        } else {
            Duration::from_millis(500)
        };
        match tokio::time::timeout(wait, consumer.next()).await {
            Ok(Some(Ok(d))) => {
                ids.push(id_of(&d.data));
                d.ack(BasicAckOptions::default()).await.expect("ack");
            }
            Ok(other) => panic!("consumer ended: {other:?}"),
            Err(_) => break,
        }
    }
    ids
}

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("warren-crash-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_kill_9_at_random_moments() {
    let cycles: usize = std::env::var("WARREN_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = data_dir("kill");
    let mut confirmed = BTreeSet::new();
    let mut next = 0u64;
    let mut rng = rand::thread_rng();
    for cycle in 0..cycles {
        let broker = start(&dir, free_port());
        let url = broker.url();
        let kill_after = Duration::from_millis(rng.gen_range(20..400));
        let publisher = tokio::spawn({
            let url = url.clone();
            let mut confirmed = std::mem::take(&mut confirmed);
            async move {
                let next = publish_until_killed(&url, next, &mut confirmed).await;
                (next, confirmed)
            }
        });
        tokio::time::sleep(kill_after).await; // the random moment of the crash, not a wait
        broker.kill9();
        let (n, c) = publisher.await.expect("publisher task");
        next = n;
        confirmed = c;
        eprintln!(
            "cycle {cycle}: {} confirmed of {next} published",
            confirmed.len()
        );
    }
    let broker = start(&dir, free_port());
    let ids = drain(&broker.url(), confirmed.len()).await;
    let got: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(got.len(), ids.len(), "a message was delivered twice");
    let lost: Vec<_> = confirmed.difference(&got).take(10).collect();
    assert!(
        lost.is_empty(),
        "confirmed messages lost after kill -9: {lost:?} ..."
    );
    assert!(
        !confirmed.is_empty(),
        "nothing was confirmed: the test proved nothing"
    );
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The segment files of the crash-test queue's log.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for q in std::fs::read_dir(dir.join("queues"))
        .expect("queues dir")
        .flatten()
    {
        for f in std::fs::read_dir(q.path()).expect("queue dir").flatten() {
            if f.file_name().to_string_lossy().starts_with("msgs.") {
                out.push(f.path());
            }
        }
    }
    out.sort();
    out
}

async fn publish_confirmed(url: &str, ids: std::ops::Range<u64>) {
    let conn = connect(url).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    declare(&ch).await;
    for id in ids {
        ch.basic_publish(
            "".into(),
            QUEUE.into(),
            BasicPublishOptions::default(),
            &body(id),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish");
    }
    assert!(
        ch.wait_for_confirms().await.expect("confirms").is_empty(),
        "nacked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_after_a_truncated_or_bit_flipped_segment() {
    const N: u64 = 200;
    // Truncated tail: the last record is torn; every other message comes back intact.
    let dir = data_dir("truncated");
    let broker = start(&dir, free_port());
    publish_confirmed(&broker.url(), 0..N).await;
    broker.kill9();
    let seg = segments(&dir).pop().expect("a segment");
    let len = std::fs::metadata(&seg).expect("metadata").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("open");
    f.set_len(len - 7).expect("truncate");
    drop(f);
    let broker = start(&dir, free_port());
    let ids = drain(&broker.url(), (N - 1) as usize).await;
    assert_eq!(
        ids,
        (0..N - 1).collect::<Vec<_>>(),
        "all but the torn last record, in order"
    );
    drop(broker);

    // A flipped byte in the middle: that record is skipped, all others come back intact.
    let dir = data_dir("flipped");
    let broker = start(&dir, free_port());
    publish_confirmed(&broker.url(), 0..N).await;
    broker.kill9();
    let seg = segments(&dir).pop().expect("a segment");
    let mut bytes = std::fs::read(&seg).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&seg, &bytes).expect("write");
    let broker = start(&dir, free_port());
    let ids = drain(&broker.url(), (N - 1) as usize).await;
    let got: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(got.len(), ids.len(), "no duplicates");
    assert!(
        got.len() as u64 >= N - 1 && got.len() as u64 <= N,
        "one damaged record at most is lost: got {} of {N}",
        got.len()
    );
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted, "order is kept");
    drop(broker);
    let _ = std::fs::remove_dir_all(data_dir("truncated"));
    let _ = std::fs::remove_dir_all(data_dir("flipped"));
}
