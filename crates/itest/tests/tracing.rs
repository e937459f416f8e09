//! The firehose tracer through real clients: tracing switched over the management API, a
//! queue bound to `amq.rabbitmq.trace`, and the `publish.<exchange>` / `deliver.<queue>`
//! copies with RabbitMQ's headers. Trace queues are read with basic.get: a trace copy is in
//! the trace queue's inbox before the publish is confirmed or the delivery written, so a get
//! that follows sees it (no sleeps).

use std::net::SocketAddr;

use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, ExchangeKind};
use serde_json::Value;
use warren_itest::*;

const TRACE: &str = "amq.rabbitmq.trace";
const ADMIN: (&str, &str) = ("guest", "guest");

/// An in-process broker with its management API (tracing is switched over HTTP).
async fn broker_and_api() -> Option<(TestBroker, SocketAddr, tokio::sync::oneshot::Sender<()>)> {
    let b = start_broker_with(|_| {}).await?;
    let (addr, stop) = serve_mgmt(b.broker().expect("in-process").clone()).await;
    Some((b, addr, stop))
}

async fn set_tracing(api: SocketAddr, vhost: &str, on: bool) {
    let body = format!(r#"{{"tracing": {on}}}"#);
    let (status, text) = http(api, "PUT", &format!("/api/vhosts/{vhost}"), ADMIN, &body).await;
    assert_eq!(status, 204, "{text}");
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn longs(items: &[&str]) -> AMQPValue {
    AMQPValue::FieldArray(FieldArray::from(
        items.iter().map(|s| long(s)).collect::<Vec<_>>(),
    ))
}

/// The next trace message (basic.get, auto-ack); fails when the trace queue is empty.
async fn next_trace(ch: &lapin::Channel, queue: &str) -> BasicGetMessage {
    within(
        "basic.get-ok",
        ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("basic.get")
    .unwrap_or_else(|| panic!("no trace message in {queue}"))
}

async fn assert_no_trace(ch: &lapin::Channel, queue: &str) {
    let left = drain_queue(ch, queue).await;
    assert!(left.is_empty(), "unexpected trace messages: {left:?}");
}

fn trace_headers(m: &BasicGetMessage) -> std::collections::BTreeMap<ShortString, AMQPValue> {
    m.delivery
        .properties
        .headers()
        .clone()
        .expect("trace headers")
        .inner()
        .clone()
}

/// A trace queue in the vhost of `ch`, bound to `amq.rabbitmq.trace` with `#`.
async fn trace_queue(ch: &lapin::Channel) -> String {
    let queue = declare_temp_queue(ch).await;
    bind_queue(ch, &queue, TRACE, "#", FieldTable::default()).await;
    queue
}

async fn api_json(api: SocketAddr, path: &str) -> Value {
    let (status, value) = http_json(api, "GET", path, ADMIN, "").await;
    assert_eq!(status, 200, "{path}: {value}");
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_deliver_are_traced_with_rabbitmq_headers() {
    let Some((b, api, _stop)) = broker_and_api().await else {
        return;
    };
    let conn = b.connect().await;
    let ch = confirm_channel(&conn).await;
    let traces = trace_queue(&ch).await;
    declare_exchange(&ch, "x.traced", ExchangeKind::Direct).await;
    declare_queue(&ch, "traced.app").await;
    bind_queue(&ch, "traced.app", "x.traced", "k", FieldTable::default()).await;
    set_tracing(api, "%2F", true).await;

    let mut app_headers = FieldTable::default();
    app_headers.insert("a".into(), AMQPValue::LongInt(1));
    app_headers.insert("CC".into(), longs(&["k2"]));
    let properties = BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_headers(app_headers.clone())
        .with_delivery_mode(2)
        .with_priority(3)
        .with_correlation_id("corr".into())
        .with_reply_to("back".into())
        .with_message_id("m-1".into())
        .with_timestamp(1_700_000_000)
        .with_type("greeting".into())
        .with_app_id("itest".into());
    publish_confirmed(&ch, "x.traced", "k", b"hello", properties).await;

    let published = next_trace(&ch, &traces).await;
    assert_eq!(published.delivery.exchange.as_str(), TRACE);
    assert_eq!(published.delivery.routing_key.as_str(), "publish.x.traced");
    assert_eq!(published.delivery.data, b"hello");
    let h = trace_headers(&published);
    assert_eq!(h.get("exchange_name"), Some(&long("x.traced")));
    assert_eq!(h.get("routing_keys"), Some(&longs(&["k", "k2"])));
    assert_eq!(h.get("routed_queues"), Some(&longs(&["traced.app"])));
    assert_eq!(h.get("vhost"), Some(&long("/")));
    assert_eq!(h.get("user"), Some(&long("guest")));
    assert_eq!(h.get("channel"), Some(&AMQPValue::LongInt(ch.id() as i32)));
    assert_eq!(
        h.get("redelivered"),
        None,
        "publish traces carry no redelivered"
    );
    let overview = api_json(api, "/api/overview").await;
    let node = overview["node"].as_str().expect("node");
    assert_eq!(h.get("node"), Some(&long(node)));
    let connections = api_json(api, "/api/connections").await;
    let names: Vec<AMQPValue> = connections
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| long(c["name"].as_str().expect("name")))
        .collect();
    assert_eq!(names.len(), 1, "{connections}");
    assert_eq!(h.get("connection"), Some(&names[0]));
    let Some(AMQPValue::FieldTable(props)) = h.get("properties") else {
        panic!("no properties table: {h:?}");
    };
    let p = props.inner();
    assert_eq!(p.get("content_type"), Some(&long("text/plain")));
    assert_eq!(
        p.get("headers"),
        Some(&AMQPValue::FieldTable(app_headers.clone()))
    );
    assert_eq!(p.get("delivery_mode"), Some(&AMQPValue::LongInt(2)));
    assert_eq!(p.get("priority"), Some(&AMQPValue::LongInt(3)));
    assert_eq!(p.get("correlation_id"), Some(&long("corr")));
    assert_eq!(p.get("reply_to"), Some(&long("back")));
    assert_eq!(p.get("message_id"), Some(&long("m-1")));
    assert_eq!(
        p.get("timestamp"),
        Some(&AMQPValue::LongLongInt(1_700_000_000))
    );
    assert_eq!(p.get("type"), Some(&long("greeting")));
    assert_eq!(p.get("app_id"), Some(&long("itest")));
    assert_eq!(p.get("expiration"), None);

    // A get-ok is traced (redelivered 0); a nack-requeue then a get: redelivered 1.
    let got = within(
        "basic.get-ok",
        ch.basic_get("traced.app".into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .expect("basic.get")
    .expect("the message");
    within(
        "basic.nack",
        ch.basic_nack(
            got.delivery.delivery_tag,
            BasicNackOptions {
                requeue: true,
                ..Default::default()
            },
        ),
    )
    .await
    .expect("nack");
    let delivered = next_trace(&ch, &traces).await;
    assert_eq!(
        delivered.delivery.routing_key.as_str(),
        "deliver.traced.app"
    );
    assert_eq!(delivered.delivery.data, b"hello");
    let h = trace_headers(&delivered);
    assert_eq!(h.get("redelivered"), Some(&AMQPValue::LongInt(0)));
    assert_eq!(h.get("exchange_name"), Some(&long("x.traced")));
    assert_eq!(h.get("routing_keys"), Some(&longs(&["k", "k2"])));
    assert_eq!(
        h.get("routed_queues"),
        None,
        "deliver traces carry no routed_queues"
    );
    assert_eq!(h.get("connection"), Some(&names[0]));
    assert_eq!(h.get("channel"), Some(&AMQPValue::LongInt(ch.id() as i32)));
    assert_eq!(h.get("vhost"), Some(&long("/")));
    assert_eq!(h.get("user"), Some(&long("guest")));
    assert!(matches!(
        h.get("properties"),
        Some(AMQPValue::FieldTable(_))
    ));

    // A consumer on another channel: deliver.<queue>, redelivered 1.
    let consumer_ch = within("channel.open-ok", conn.create_channel())
        .await
        .expect("channel");
    let mut consumer = within(
        "basic.consume-ok",
        consumer_ch.basic_consume(
            "traced.app".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("consume");
    let d = next_delivery(&mut consumer).await;
    assert!(d.redelivered);
    d.ack(BasicAckOptions::default()).await.expect("ack");
    let delivered = next_trace(&ch, &traces).await;
    assert_eq!(
        delivered.delivery.routing_key.as_str(),
        "deliver.traced.app"
    );
    let h = trace_headers(&delivered);
    assert_eq!(h.get("redelivered"), Some(&AMQPValue::LongInt(1)));
    assert_eq!(
        h.get("channel"),
        Some(&AMQPValue::LongInt(consumer_ch.id() as i32))
    );
    assert_no_trace(&ch, &traces).await;

    // The default exchange traces as `publish.` with an empty exchange_name.
    publish_confirmed(&ch, "", "traced.app", b"direct", BasicProperties::default()).await;
    let published = next_trace(&ch, &traces).await;
    assert_eq!(published.delivery.routing_key.as_str(), "publish.");
    let h = trace_headers(&published);
    assert_eq!(h.get("exchange_name"), Some(&long("")));
    assert_eq!(h.get("routing_keys"), Some(&longs(&["traced.app"])));
    let Some(AMQPValue::FieldTable(props)) = h.get("properties") else {
        panic!("no properties table: {h:?}");
    };
    assert!(
        props.inner().is_empty(),
        "no properties were set: {props:?}"
    );
    drop(consumer);
    delete_queue(&ch, "traced.app").await;
}

/// Consuming the trace queue itself traces nothing (the tracer skips trace messages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consuming_the_trace_queue_does_not_loop() {
    let Some((b, api, _stop)) = broker_and_api().await else {
        return;
    };
    let conn = b.connect().await;
    let ch = confirm_channel(&conn).await;
    let traces = trace_queue(&ch).await;
    let sink = declare_temp_queue(&ch).await;
    set_tracing(api, "%2F", true).await;
    let reader = within("channel.open-ok", conn.create_channel())
        .await
        .expect("channel");
    let mut consumer = within(
        "basic.consume-ok",
        reader.basic_consume(
            traces.as_str().into(),
            "t".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("consume");
    publish_confirmed(&ch, "", &sink, b"one", BasicProperties::default()).await;
    let first = next_delivery(&mut consumer).await;
    assert_eq!(first.routing_key.as_str(), "publish.");
    assert_eq!(first.data, b"one");
    // Had the delivery of `first` been traced, `deliver.<traces>` would come before this.
    publish_confirmed(&ch, "", &sink, b"two", BasicProperties::default()).await;
    let second = next_delivery(&mut consumer).await;
    assert_eq!(second.routing_key.as_str(), "publish.");
    assert_eq!(second.data, b"two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracing_off_and_other_vhosts_trace_nothing() {
    let Some((b, api, _stop)) = broker_and_api().await else {
        return;
    };
    let (status, text) = http(api, "PUT", "/api/vhosts/quiet", ADMIN, "").await;
    assert_eq!(status, 201, "{text}");
    let perms = r#"{"configure":".*","write":".*","read":".*"}"#;
    let (status, text) = http(api, "PUT", "/api/permissions/quiet/guest", ADMIN, perms).await;
    assert_eq!(status, 201, "{text}");

    let conn = b.connect().await;
    let ch = confirm_channel(&conn).await;
    let traces = trace_queue(&ch).await;
    let sink = declare_temp_queue(&ch).await;
    let quiet_conn = connect(&b.url_with("guest", "guest", "quiet", "")).await;
    let quiet = confirm_channel(&quiet_conn).await;
    let quiet_traces = trace_queue(&quiet).await;
    let quiet_sink = declare_temp_queue(&quiet).await;

    let vhosts = api_json(api, "/api/vhosts").await;
    let tracing_of = |vhosts: &Value, name: &str| {
        vhosts
            .as_array()
            .expect("a list")
            .iter()
            .find(|v| v["name"] == name)
            .map(|v| v["tracing"].clone())
    };
    assert_eq!(tracing_of(&vhosts, "/"), Some(Value::Bool(false)));

    let props = BasicProperties::default;
    publish_confirmed(&ch, "", &sink, b"before", props()).await;
    set_tracing(api, "%2F", true).await;
    let vhosts = api_json(api, "/api/vhosts").await;
    assert_eq!(tracing_of(&vhosts, "/"), Some(Value::Bool(true)));
    assert_eq!(tracing_of(&vhosts, "quiet"), Some(Value::Bool(false)));
    assert_eq!(api_json(api, "/api/vhosts/%2F").await["tracing"], true);
    publish_confirmed(&ch, "", &sink, b"one", props()).await;
    publish_confirmed(&quiet, "", &quiet_sink, b"quiet-1", props()).await;
    set_tracing(api, "%2F", false).await;
    publish_confirmed(&ch, "", &sink, b"off", props()).await;
    set_tracing(api, "%2F", true).await;
    publish_confirmed(&ch, "", &sink, b"three", props()).await;
    assert_eq!(drain_queue(&ch, &traces).await, ["one", "three"]);

    // The quiet vhost: nothing until its own tracing is on; then the sentinel comes first.
    set_tracing(api, "quiet", true).await;
    publish_confirmed(&quiet, "", &quiet_sink, b"sentinel", props()).await;
    assert_eq!(drain_queue(&quiet, &quiet_traces).await, ["sentinel"]);
    assert_eq!(api_json(api, "/api/vhosts/quiet").await["tracing"], true);
    // Switching tracing keeps the vhost's metadata; a bad value is refused.
    let (status, text) = http(api, "PUT", "/api/vhosts/quiet", ADMIN, r#"{"tracing": 3}"#).await;
    assert_eq!(status, 400, "{text}");
    let (status, _) = http(
        api,
        "PUT",
        "/api/vhosts/nope",
        ADMIN,
        r#"{"tracing": true}"#,
    )
    .await;
    assert_eq!(status, 201, "an unknown vhost is created, as in RabbitMQ");
    assert_eq!(api_json(api, "/api/vhosts/nope").await["tracing"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_exchange_is_internal_and_listed() {
    let Some((b, api, _stop)) = broker_and_api().await else {
        return;
    };
    let exchange = api_json(api, "/api/exchanges/%2F/amq.rabbitmq.trace").await;
    assert_eq!(exchange["type"], "topic");
    assert_eq!(exchange["internal"], true);
    assert_eq!(exchange["durable"], true);
    let export = api_json(api, "/api/definitions").await;
    let exported: Vec<&Value> = export["exchanges"]
        .as_array()
        .expect("exchanges")
        .iter()
        .filter(|x| x["name"] == TRACE)
        .collect();
    assert!(exported.is_empty(), "RabbitMQ does not export it");

    let conn = b.connect().await;
    let ch = conn.create_channel().await.expect("channel");
    let mut ev = events(&conn);
    publish(&ch, TRACE, "publish.x", b"forged").await;
    let text = expect_error_event(&mut ev, 403).await;
    assert!(
        text.contains("cannot publish to internal exchange 'amq.rabbitmq.trace' in vhost '/'"),
        "{text}"
    );
}
