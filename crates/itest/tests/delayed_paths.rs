//! The delayed-message exchange reached by paths other than a client's publish to it:
//! dead-lettering into it, an exchange-to-exchange binding into it, the management API's
//! publish, and a persistent dead-lettered message surviving a restart on its schedule.
//! Times are only ever asserted as lower bounds.

use std::path::Path;
use std::time::{Duration, Instant};

use warren_itest::lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicRejectOptions, QueueDeclareOptions,
};
use warren_itest::lapin::types::{AMQPValue, FieldTable};
use warren_itest::lapin::{BasicProperties, Channel, ExchangeKind};
use warren_itest::*;
use warren_server::{Config, ServerHandle};

/// The delay the tests ask for: long enough that an undelayed route is plainly earlier.
const DELAY_MS: i64 = 400;

/// A queue dead-lettering into `dlx`.
async fn dead_lettering_queue(ch: &Channel, name: &str, dlx: &str, durable: bool) {
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(dlx.into()),
    );
    within(
        "queue.declare-ok",
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable,
                ..Default::default()
            },
            args,
        ),
    )
    .await
    .expect("queue.declare");
}

/// Takes the message waiting in `queue` and rejects it without requeue (dead-letters it).
async fn reject_one(ch: &Channel, queue: &str) {
    let got = within(
        "basic.get-ok",
        ch.basic_get(queue.into(), BasicGetOptions::default()),
    )
    .await
    .expect("basic.get")
    .expect("a message");
    got.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
}

fn has_x_death(properties: &BasicProperties) -> bool {
    properties
        .headers()
        .as_ref()
        .is_some_and(|h| h.inner().contains_key("x-death"))
}

/// "Retry with backoff": a rejected message dead-lettered into a delayed exchange waits its
/// `x-delay` there, and arrives with its x-death header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_dead_lettered_into_a_delayed_exchange_waits_its_delay() {
    let broker = start_broker().await;
    let (_conn, ch) = broker.channel().await;
    let dx = unique_name("dx-dlx");
    declare_delayed(&ch, &dx, "direct", false).await;
    let source = unique_name("dlx-src");
    dead_lettering_queue(&ch, &source, &dx, false).await;
    let target = declare_temp_queue(&ch).await;
    // Dead-lettered with its own routing key: the source queue's name.
    bind_queue(&ch, &target, &dx, &source, FieldTable::default()).await;
    let mut consumer = consume_with_ack(&ch, &target).await;
    publish_with(&ch, "", &source, b"retry", delay(DELAY_MS)).await;
    // Taken before the reject: no later than the broker's dead-lettering.
    let rejected = Instant::now();
    reject_one(&ch, &source).await;
    let d = next_delivery(&mut consumer).await;
    assert!(
        rejected.elapsed() >= Duration::from_millis(DELAY_MS as u64),
        "arrived after {:?}",
        rejected.elapsed()
    );
    assert_eq!(d.data, b"retry");
    assert!(has_x_death(&d.properties), "{:?}", d.properties);
    d.ack(BasicAckOptions::default()).await.expect("ack");
}

/// A message reaching a delayed exchange through an exchange-to-exchange binding waits on
/// its schedule once, then goes through its bindings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_reaching_a_delayed_exchange_through_a_binding_is_delayed() {
    let broker = start_broker().await;
    let (_conn, ch) = broker.channel().await;
    let source = unique_name("e2e-src");
    declare_exchange(&ch, &source, ExchangeKind::Direct).await;
    let dx = unique_name("dx-e2e");
    declare_delayed(&ch, &dx, "direct", false).await;
    bind_exchange(&ch, &dx, &source, "k").await;
    let q = declare_temp_queue(&ch).await;
    bind_queue(&ch, &q, &dx, "k", FieldTable::default()).await;
    let mut consumer = consume_with_ack(&ch, &q).await;
    let published = Instant::now();
    let ch_confirm = confirm_channel(&_conn).await;
    // Confirmed once it is on the schedule, not routed anywhere yet.
    publish_confirmed(&ch_confirm, &source, "k", b"via-e2e", delay(DELAY_MS)).await;
    let d = next_delivery(&mut consumer).await;
    assert!(
        published.elapsed() >= Duration::from_millis(DELAY_MS as u64),
        "arrived after {:?}",
        published.elapsed()
    );
    assert_eq!(d.data, b"via-e2e");
    d.ack(BasicAckOptions::default()).await.expect("ack");
}

/// The management API's publish to a delayed exchange is delayed (and reported routed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_management_api_publish_to_a_delayed_exchange_is_delayed() {
    use serde_json::json;
    let Some(broker) = start_broker_with(|_| {}).await else {
        return;
    };
    let (addr, _stop) = serve_mgmt(broker.broker().expect("in-process").clone()).await;
    let (_conn, ch) = broker.channel().await;
    let dx = unique_name("dx-http");
    declare_delayed(&ch, &dx, "direct", false).await;
    let q = declare_temp_queue(&ch).await;
    bind_queue(&ch, &q, &dx, "k", FieldTable::default()).await;
    let mut consumer = consume_with_ack(&ch, &q).await;
    let body = json!({
        "properties": {"headers": {"x-delay": DELAY_MS}},
        "routing_key": "k", "payload": "via-http", "payload_encoding": "string",
    });
    let published = Instant::now();
    let (status, answer) = http_json(
        addr,
        "POST",
        &format!("/api/exchanges/%2F/{dx}/publish"),
        ("guest", "guest"),
        &body.to_string(),
    )
    .await;
    assert_eq!((status, &answer), (200, &json!({"routed": true})));
    let d = next_delivery(&mut consumer).await;
    assert!(
        published.elapsed() >= Duration::from_millis(DELAY_MS as u64),
        "arrived after {:?}",
        published.elapsed()
    );
    assert_eq!(d.data, b"via-http");
    d.ack(BasicAckOptions::default()).await.expect("ack");
}

async fn start_on(dir: &Path) -> ServerHandle {
    let mut config = Config::for_tests();
    config.data_dir = dir.to_path_buf();
    warren_server::start(config).await.expect("start warren")
}

fn schedule_files(dir: &Path) -> usize {
    let Ok(exchanges) = std::fs::read_dir(dir.join("delayed")) else {
        return 0;
    };
    exchanges
        .flatten()
        .map(|e| std::fs::read_dir(e.path()).map_or(0, |f| f.count()))
        .sum()
}

/// A persistent message dead-lettered into a durable delayed exchange is on its schedule's
/// disk: it survives a restart and is routed after it, with its x-death header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_message_dead_lettered_into_a_durable_delayed_exchange_survives_a_restart() {
    if is_external() {
        return;
    }
    let dir = std::env::temp_dir().join(unique_name("warren-delayed-dlx-restart"));
    let (dx, source, target) = ("dx.dlx.durable", "dx.dlx.src", "dx.dlx.dst");
    let server = start_on(&dir).await;
    let rejected;
    {
        let conn = connect(&server.amqp_url()).await;
        let ch = confirm_channel(&conn).await;
        declare_delayed(&ch, dx, "direct", true).await;
        dead_lettering_queue(&ch, source, dx, true).await;
        dead_lettering_queue(&ch, target, "", true).await;
        bind_queue(&ch, target, dx, source, FieldTable::default()).await;
        let props = delay(1500).with_delivery_mode(2);
        publish_confirmed(&ch, "", source, b"persistent-retry", props).await;
        rejected = Instant::now();
        reject_one(&ch, source).await;
        // Nothing tells a client the dead-lettered message is stored: poll for its file.
        eventually(
            "the dead-lettered message is on the schedule's disk",
            || async { schedule_files(&dir) >= 1 },
        )
        .await;
    }
    server.shutdown().await;

    let server = start_on(&dir).await;
    let conn = connect(&server.amqp_url()).await;
    let ch = conn.create_channel().await.expect("channel");
    let mut consumer = consume_with_ack(&ch, target).await;
    let d = next_delivery(&mut consumer).await;
    assert!(rejected.elapsed() >= Duration::from_millis(1500));
    assert_eq!(d.data, b"persistent-retry");
    assert!(has_x_death(&d.properties), "{:?}", d.properties);
    d.ack(BasicAckOptions::default()).await.expect("ack");
    drop(conn);
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
