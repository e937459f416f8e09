//! The delayed-message exchange (`x-delayed-message`) through lapin: a message with `x-delay`
//! is routed no earlier than its delay, in due-time order, by the exchange's `x-delayed-type`
//! and the bindings present at due time; no delay routes at once; mandatory is checked at
//! publish; bad `x-delayed-type` is refused; persistent messages survive a restart; deleting
//! the exchange deletes its schedule. Times are only ever asserted as lower bounds.

use std::path::Path;
use std::time::{Duration, Instant};

use warren_itest::lapin::options::{
    BasicAckOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueDeclareOptions,
};
use warren_itest::lapin::types::{AMQPValue, FieldTable};
use warren_itest::lapin::{BasicProperties, Channel, Confirmation, Consumer, ExchangeKind};
use warren_itest::*;
use warren_server::{Config, ServerHandle};

/// Takes the next delivery, acks it, returns its body.
async fn next_body(consumer: &mut Consumer) -> String {
    let d = next_delivery(consumer).await;
    d.ack(BasicAckOptions::default()).await.expect("ack");
    String::from_utf8_lossy(&d.data).into_owned()
}

/// A delayed exchange of `base` type with one fresh queue bound by `key`.
async fn setup(ch: &Channel, base: &str, key: &str, args: FieldTable) -> (String, String) {
    let x = unique_name("dx");
    declare_delayed(ch, &x, base, false).await;
    let q = declare_temp_queue(ch).await;
    bind_queue(ch, &q, &x, key, args).await;
    (x, q)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_message_arrives_no_earlier_than_its_delay_with_the_delay_negated() {
    let broker = start_broker().await;
    let (_conn, ch) = broker.channel().await;
    let (x, q) = setup(&ch, "direct", "k", FieldTable::default()).await;
    let mut consumer = consume_with_ack(&ch, &q).await;
    let published = Instant::now();
    publish_with(&ch, &x, "k", b"later", delay(200)).await;
    let d = next_delivery(&mut consumer).await;
    assert!(
        published.elapsed() >= Duration::from_millis(200),
        "arrived after {:?}",
        published.elapsed()
    );
    assert_eq!(d.data, b"later");
    assert_eq!(d.exchange.as_str(), x);
    // As the plugin: the header now says minus the delay, so it is not delayed again.
    let header = d
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delay").cloned());
    assert_eq!(header, Some(AMQPValue::LongInt(-200)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_arrive_in_due_time_order_not_publish_order() {
    let broker = start_broker().await;
    let (_conn, ch) = broker.channel().await;
    let (x, q) = setup(&ch, "direct", "k", FieldTable::default()).await;
    let mut consumer = consume_with_ack(&ch, &q).await;
    publish_with(&ch, &x, "k", b"300", delay(300)).await;
    publish_with(&ch, &x, "k", b"100", delay(100)).await;
    assert_eq!(next_body(&mut consumer).await, "100");
    assert_eq!(next_body(&mut consumer).await, "300");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_negative_or_missing_delays_route_at_once() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let (x, q) = setup(&ch, "direct", "k", FieldTable::default()).await;
    publish_confirmed(&ch, &x, "k", b"far", delay(600_000)).await;
    publish_confirmed(&ch, &x, "k", b"zero", delay(0)).await;
    publish_confirmed(&ch, &x, "k", b"negative", delay(-5)).await;
    publish_confirmed(&ch, &x, "k", b"none", BasicProperties::default()).await;
    // Confirmed means enqueued for the immediate ones; the far one is still scheduled.
    assert_eq!(
        drain_queue(&ch, &q).await,
        vec!["zero".to_string(), "negative".into(), "none".into()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_delayed_type_routes_as_that_type() {
    let broker = start_broker().await;
    let (_conn, ch) = broker.channel().await;
    // Topic: the pattern decides. The miss is due first, so had it been routed it would
    // have arrived first.
    let (x, q) = setup(&ch, "topic", "a.*", FieldTable::default()).await;
    let mut consumer = consume_with_ack(&ch, &q).await;
    publish_with(&ch, &x, "b.c", b"miss", delay(30)).await;
    publish_with(&ch, &x, "a.b", b"hit", delay(60)).await;
    assert_eq!(next_body(&mut consumer).await, "hit");

    // Headers: x-match all on one header.
    let mut args = FieldTable::default();
    args.insert("color".into(), AMQPValue::LongString("red".into()));
    let (x, q) = setup(&ch, "headers", "", args).await;
    let mut consumer = consume_with_ack(&ch, &q).await;
    let with_color = |color: &str, ms: i64| {
        let mut h = FieldTable::default();
        h.insert("x-delay".into(), AMQPValue::LongLongInt(ms));
        h.insert("color".into(), AMQPValue::LongString(color.into()));
        BasicProperties::default().with_headers(h)
    };
    publish_with(&ch, &x, "", b"blue", with_color("blue", 30)).await;
    publish_with(&ch, &x, "", b"red", with_color("red", 60)).await;
    assert_eq!(next_body(&mut consumer).await, "red");

    // Fanout: every bound queue, whatever the key.
    let (x, q1) = setup(&ch, "fanout", "", FieldTable::default()).await;
    let q2 = declare_temp_queue(&ch).await;
    bind_queue(&ch, &q2, &x, "other", FieldTable::default()).await;
    let mut c1 = consume_with_ack(&ch, &q1).await;
    let mut c2 = consume_with_ack(&ch, &q2).await;
    publish_with(&ch, &x, "any", b"both", delay(30)).await;
    assert_eq!(next_body(&mut c1).await, "both");
    assert_eq!(next_body(&mut c2).await, "both");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_added_before_the_due_time_are_used() {
    let broker = start_broker().await;
    let (_conn, ch) = broker.channel().await;
    let x = unique_name("dx");
    declare_delayed(&ch, &x, "direct", false).await;
    publish_with(&ch, &x, "k", b"bound-later", delay(400)).await;
    let q = declare_temp_queue(&ch).await;
    bind_queue(&ch, &q, &x, "k", FieldTable::default()).await;
    let mut consumer = consume_with_ack(&ch, &q).await;
    assert_eq!(next_body(&mut consumer).await, "bound-later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mandatory_message_no_binding_would_route_now_is_returned() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let x = unique_name("dx");
    declare_delayed(&ch, &x, "direct", false).await;
    let confirm = within(
        "basic.publish",
        ch.basic_publish(
            x.as_str().into(),
            "nobody".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"boomerang",
            delay(100),
        ),
    )
    .await
    .expect("publish");
    match within("publisher confirm", confirm).await.expect("confirm") {
        Confirmation::Ack(Some(returned)) => {
            assert_eq!(returned.reply_code, 312);
            assert_eq!(returned.delivery.data, b"boomerang");
        }
        other => panic!("expected a returned message, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_unknown_delayed_type_is_refused() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let declare = |ch: Channel, args: FieldTable| async move {
        within(
            "exchange.declare",
            ch.exchange_declare(
                unique_name("dx").as_str().into(),
                ExchangeKind::Custom(DELAYED_TYPE.into()),
                ExchangeDeclareOptions::default(),
                args,
            ),
        )
        .await
    };
    let ch = conn.create_channel().await.expect("channel");
    let reply = expect_code(declare(ch, FieldTable::default()).await, 406);
    assert!(reply.contains("'x-delayed-type' must be"), "{reply}");
    let ch = conn.create_channel().await.expect("channel");
    let mut args = FieldTable::default();
    args.insert(
        "x-delayed-type".into(),
        AMQPValue::LongString(DELAYED_TYPE.into()),
    );
    expect_code(declare(ch, args).await, 406);
    // An unknown type is what any exchange.declare of it gets: 503, a connection error.
    let ch = conn.create_channel().await.expect("channel");
    let mut args = FieldTable::default();
    args.insert(
        "x-delayed-type".into(),
        AMQPValue::LongString("nope".into()),
    );
    expect_code(declare(ch, args).await, 503);
}

async fn start_on(dir: &Path) -> ServerHandle {
    let mut config = Config::for_tests();
    config.data_dir = dir.to_path_buf();
    warren_server::start(config).await.expect("start warren")
}

async fn durable_queue(ch: &Channel, name: &str) {
    within(
        "queue.declare-ok",
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.declare");
}

fn persistent(ms: i64) -> BasicProperties {
    delay(ms).with_delivery_mode(2)
}

/// Confirmed persistent messages on a durable delayed exchange survive a restart (transient
/// ones do not) and are routed after it, overdue ones at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_delayed_messages_survive_a_restart() {
    if is_external() {
        return;
    }
    let dir = std::env::temp_dir().join(unique_name("warren-delayed-restart"));
    let (x, q) = ("dx.durable", "dx.durable.q");
    let server = start_on(&dir).await;
    let published = Instant::now();
    {
        let conn = connect(&server.amqp_url()).await;
        let ch = confirm_channel(&conn).await;
        declare_delayed(&ch, x, "direct", true).await;
        durable_queue(&ch, q).await;
        bind_queue(&ch, q, x, "k", FieldTable::default()).await;
        // Overdue by the time the broker is back, and due after it is back.
        publish_confirmed(&ch, x, "k", b"overdue", persistent(1000)).await;
        publish_confirmed(&ch, x, "k", b"after", persistent(3000)).await;
        publish_confirmed(&ch, x, "k", b"transient", delay(1000)).await;
        assert_eq!(queue_counts(&ch, q).await, (0, 0), "nothing is due yet");
    }
    server.shutdown().await;
    // Waits for wall-clock time to pass a due time (no event to await): "overdue" is.
    tokio::time::sleep(Duration::from_millis(1200).saturating_sub(published.elapsed())).await;

    let server = start_on(&dir).await;
    let conn = connect(&server.amqp_url()).await;
    let ch = conn.create_channel().await.expect("channel");
    let mut consumer = consume_with_ack(&ch, q).await;
    assert_eq!(next_body(&mut consumer).await, "overdue");
    assert_eq!(next_body(&mut consumer).await, "after");
    assert!(published.elapsed() >= Duration::from_millis(3000));
    // Closing the channel settles its acks first; a transient survivor would be ready.
    ch.close(200, "done".into()).await.expect("channel.close");
    let ch = conn.create_channel().await.expect("channel");
    assert_eq!(
        queue_counts(&ch, q).await,
        (0, 0),
        "the transient one is gone"
    );
    drop(conn);
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_exchange_deletes_its_schedule() {
    let Some(broker) = start_broker_with(|_| {}).await else {
        return;
    };
    let dir = broker.data_dir().expect("data dir").to_path_buf();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let x = unique_name("dx");
    declare_delayed(&ch, &x, "direct", true).await;
    publish_confirmed(&ch, &x, "k", b"a", persistent(600_000)).await;
    // Confirmed: the message is in a bucket file.
    assert!(schedule_files(&dir) >= 1);
    delete_exchange(&ch, &x).await;
    eventually("the schedule's files are deleted", || async {
        !dir.join("delayed")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some())
    })
    .await;
    // Declared again, it starts empty: the old schedule is not routed through it.
    declare_delayed(&ch, &x, "direct", true).await;
    let q = declare_temp_queue(&ch).await;
    bind_queue(&ch, &q, &x, "k", FieldTable::default()).await;
    publish_confirmed(&ch, &x, "k", b"b", persistent(600_000)).await;
    assert_eq!(schedule_files(&dir), 1);
}

/// Definitions and the management API treat it as any exchange with its type and
/// `x-delayed-type` argument (as RabbitMQ exports it); an imported one delays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_and_the_management_api_carry_the_type_and_its_argument() {
    use serde_json::json;
    let Some(broker) = start_broker_with(|_| {}).await else {
        return;
    };
    let (addr, _stop) = serve_mgmt(broker.broker().expect("in-process").clone()).await;
    let admin = ("guest", "guest");
    let definitions = json!({
        "exchanges": [{"name": "dx.defs", "vhost": "/", "type": DELAYED_TYPE, "durable": true,
                       "auto_delete": false, "internal": false,
                       "arguments": {"x-delayed-type": "topic"}}],
        "queues": [{"name": "dx.defs.q", "vhost": "/", "durable": true,
                    "auto_delete": false, "arguments": {}}],
        "bindings": [{"source": "dx.defs", "vhost": "/", "destination": "dx.defs.q",
                      "destination_type": "queue", "routing_key": "a.#", "arguments": {}}],
    });
    let (status, body) = http(
        addr,
        "POST",
        "/api/definitions",
        admin,
        &definitions.to_string(),
    )
    .await;
    assert!((200..300).contains(&status), "import: {status} {body}");
    let (status, exported) = http_json(addr, "GET", "/api/definitions", admin, "").await;
    assert_eq!(status, 200);
    let exchange = exported["exchanges"]
        .as_array()
        .and_then(|xs| xs.iter().find(|x| x["name"] == "dx.defs"))
        .unwrap_or_else(|| panic!("exported: {exported}"));
    assert_eq!(exchange["type"], DELAYED_TYPE);
    assert_eq!(exchange["arguments"]["x-delayed-type"], "topic");
    let (status, listed) = http_json(addr, "GET", "/api/exchanges/%2F/dx.defs", admin, "").await;
    assert_eq!(status, 200);
    assert_eq!(listed["type"], DELAYED_TYPE);
    // The imported exchange delays and routes as a topic exchange.
    let (_conn, ch) = broker.channel().await;
    let mut consumer = consume_with_ack(&ch, "dx.defs.q").await;
    let published = Instant::now();
    publish_with(&ch, "dx.defs", "a.b.c", b"imported", delay(100)).await;
    assert_eq!(next_body(&mut consumer).await, "imported");
    assert!(published.elapsed() >= Duration::from_millis(100));
    // Without its argument an import is refused like the declare.
    let bad = json!({"exchanges": [{"name": "dx.bad", "vhost": "/", "type": DELAYED_TYPE,
        "durable": true, "auto_delete": false, "internal": false, "arguments": {}}]});
    let (status, body) = http(addr, "POST", "/api/definitions", admin, &bad.to_string()).await;
    assert!(
        status >= 400,
        "imported without x-delayed-type: {status} {body}"
    );
}
