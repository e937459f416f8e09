//! Messages over the management API, end to end: publish and get (RabbitMQ's bodies and ack
//! modes) and moving messages (Warren's `actions` endpoint and RabbitMQ's shovel parameter),
//! each checked from a lapin client on the same broker.

use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde_json::{json, Value};
use warren_itest::*;

const ADMIN: (&str, &str) = ("guest", "guest");

/// Publishes `n` persistent messages `m0..` to `queue` and waits for the confirms.
async fn fill(conn: &lapin::Connection, queue: &str, n: usize) {
    let ch = confirm_channel(conn).await;
    for i in 0..n {
        let props = BasicProperties::default().with_delivery_mode(2);
        publish_confirmed(&ch, "", queue, format!("m{i}").as_bytes(), props).await;
    }
}

/// The next `n` deliveries of `queue` (acked), as (body, headers).
async fn consume(ch: &lapin::Channel, queue: &str, n: usize) -> Vec<(String, FieldTable)> {
    within("basic.qos", ch.basic_qos(100, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut consumer = within(
        "basic.consume",
        ch.basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let d = next_delivery(&mut consumer).await;
        d.ack(BasicAckOptions::default()).await.unwrap();
        let headers = d.properties.headers().clone().unwrap_or_default();
        out.push((String::from_utf8(d.data.clone()).unwrap(), headers));
    }
    out
}

fn redrive_count(headers: &FieldTable) -> Option<i64> {
    match headers.inner().get("x-redrive-count") {
        Some(AMQPValue::LongLongInt(n)) => Some(*n),
        other => panic!("x-redrive-count: {other:?}"),
    }
}

#[tokio::test]
async fn publish_and_get_over_http() {
    let Some(b) = start_broker_with(|_| {}).await else {
        return;
    };
    let (addr, _stop) = serve_mgmt(b.broker().expect("in-process").clone()).await;
    let (conn, ch) = b.channel().await;
    let q = unique_name("http-get");
    declare_queue(&ch, &q).await;

    let body = json!({
        "properties": {"delivery_mode": 2, "content_type": "text/plain",
                       "headers": {"a": 1, "b": "x"}, "message_id": "id-1"},
        "routing_key": q, "payload": "hello", "payload_encoding": "string",
    });
    let (s, v) = http_json(
        addr,
        "POST",
        "/api/exchanges/%2F/amq.default/publish",
        ADMIN,
        &body.to_string(),
    )
    .await;
    assert_eq!((s, &v), (200, &json!({"routed": true})));
    // Binary payloads travel as base64.
    let binary = json!({"properties": {}, "routing_key": q, "payload": "AAEC/w==",
                        "payload_encoding": "base64"});
    let (s, v) = http_json(
        addr,
        "POST",
        "/api/exchanges/%2F/amq.default/publish",
        ADMIN,
        &binary.to_string(),
    )
    .await;
    assert_eq!((s, &v), (200, &json!({"routed": true})));
    // The publish was confirmed before the answer: the count is exact now.
    assert_eq!(queue_counts(&ch, &q).await.0, 2);

    // Unroutable, missing exchange, bad encoding.
    let (s, v) = http_json(
        addr,
        "POST",
        "/api/exchanges/%2F/amq.direct/publish",
        ADMIN,
        r#"{"properties":{},"routing_key":"nowhere","payload":"x","payload_encoding":"string"}"#,
    )
    .await;
    assert_eq!((s, &v), (200, &json!({"routed": false})));
    let (s, _) = http_json(
        addr,
        "POST",
        "/api/exchanges/%2F/no-such-x/publish",
        ADMIN,
        r#"{"properties":{},"routing_key":"k","payload":"x","payload_encoding":"string"}"#,
    )
    .await;
    assert_eq!(s, 404);
    let (s, v) = http_json(
        addr,
        "POST",
        "/api/exchanges/%2F/amq.default/publish",
        ADMIN,
        r#"{"properties":{"delivery_mode":"fast"},"routing_key":"k","payload":"x"}"#,
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["reason"].as_str().unwrap().contains("delivery_mode"),
        "{v}"
    );

    // The broker counts its own publishes as a publisher's (RabbitMQ's direct channel).
    let (_, o) = http_json(addr, "GET", "/api/overview", ADMIN, "").await;
    let stats = &o["message_stats"];
    assert_eq!(
        (
            &stats["publish"],
            &stats["confirm"],
            &stats["drop_unroutable"]
        ),
        (&json!(3), &json!(2), &json!(1)),
        "{stats}"
    );

    // Get with requeue: both come back, in order, and stay in the queue.
    let get = json!({"count": 5, "ackmode": "ack_requeue_true", "encoding": "auto"});
    let path = format!("/api/queues/%2F/{q}/get");
    let (s, v) = http_json(addr, "POST", &path, ADMIN, &get.to_string()).await;
    assert_eq!(s, 200, "{v}");
    let got = v.as_array().unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["payload"], "hello");
    assert_eq!(got[0]["payload_encoding"], "string");
    assert_eq!(got[0]["payload_bytes"], 5);
    assert_eq!(got[0]["redelivered"], false);
    assert_eq!(got[0]["exchange"], "");
    assert_eq!(got[0]["routing_key"], q.as_str());
    assert_eq!(got[0]["message_count"], 1);
    assert_eq!(got[0]["properties"]["delivery_mode"], 2);
    assert_eq!(got[0]["properties"]["headers"], json!({"a": 1, "b": "x"}));
    assert_eq!(got[0]["properties"]["message_id"], "id-1");
    assert_eq!(got[1]["payload"], "AAEC/w==");
    assert_eq!(got[1]["payload_encoding"], "base64");
    assert_eq!(got[1]["message_count"], 0);
    assert_eq!(queue_counts(&ch, &q).await.0, 2);

    // Get with ack: the first is taken (now redelivered), the second stays.
    let get = json!({"count": 1, "ackmode": "ack_requeue_false", "encoding": "base64",
                     "truncate": 2});
    let (s, v) = http_json(addr, "POST", &path, ADMIN, &get.to_string()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v[0]["redelivered"], true);
    assert_eq!(v[0]["payload"], "aGU="); // "he", truncated to 2 bytes
    assert_eq!(v[0]["payload_bytes"], 5);
    assert_eq!(queue_counts(&ch, &q).await.0, 1);
    let (s, v) = http_json(
        addr,
        "POST",
        &path,
        ADMIN,
        r#"{"count":1,"ackmode":"bogus"}"#,
    )
    .await;
    assert_eq!(s, 400, "{v}");
    let missing = "/api/queues/%2F/no-such-queue/get";
    let (s, _) = http_json(addr, "POST", missing, ADMIN, &get.to_string()).await;
    assert_eq!(s, 404);
    delete_queue(&ch, &q).await;
    conn.close(200, "bye".into()).await.unwrap();
    b.stop().await;
}

#[tokio::test]
async fn move_to_a_queue_and_through_an_exchange() {
    let Some(b) = start_broker_with(|_| {}).await else {
        return;
    };
    let (addr, _stop) = serve_mgmt(b.broker().expect("in-process").clone()).await;
    let (conn, ch) = b.channel().await;
    let (src, dst) = (unique_name("dlq"), unique_name("work"));
    declare_queue(&ch, &src).await;
    declare_queue(&ch, &dst).await;
    fill(&conn, &src, 10).await;
    let actions = format!("/api/queues/%2F/{src}/actions");

    // The first four, straight into a queue.
    let body = json!({"action": "move", "destination_queue": dst, "count": 4});
    let (s, v) = http_json(addr, "POST", &actions, ADMIN, &body.to_string()).await;
    assert_eq!((s, &v), (200, &json!({"moved": 4})));
    assert_eq!(queue_counts(&ch, &src).await.0, 6);
    assert_eq!(queue_counts(&ch, &dst).await.0, 4);

    // A direct exchange bound to the destination with a key the messages do not carry:
    // unroutable, so nothing moves and nothing is lost.
    let x = unique_name("redrive-x");
    declare_exchange(&ch, &x, lapin::ExchangeKind::Direct).await;
    bind_queue(&ch, &dst, &x, "redriven", FieldTable::default()).await;
    let body = json!({"action": "move", "destination_exchange": x});
    let (s, v) = http_json(addr, "POST", &actions, ADMIN, &body.to_string()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["moved"], 0);
    assert!(
        v["stopped"].as_str().unwrap().contains("not routable"),
        "{v}"
    );
    assert_eq!(queue_counts(&ch, &src).await.0, 6);

    // With the binding's key, the other six go through the exchange.
    let body = json!({"action": "move", "destination_exchange": x, "routing_key": "redriven"});
    let (s, v) = http_json(addr, "POST", &actions, ADMIN, &body.to_string()).await;
    assert_eq!((s, &v), (200, &json!({"moved": 6})));
    assert_eq!(queue_counts(&ch, &src).await.0, 0);

    // In the destination: every message once, in order, each marked as moved once.
    let got = consume(&ch, &dst, 10).await;
    let bodies: Vec<&str> = got.iter().map(|(b, _)| b.as_str()).collect();
    let want: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies, want);
    assert!(got.iter().all(|(_, h)| redrive_count(h) == Some(1)));
    assert_eq!(queue_counts(&ch, &dst).await.0, 0);

    // Refusals: to itself, no destination, unknown destination queue.
    for (body, status) in [
        (json!({"action": "move", "destination_queue": src}), 400),
        (json!({"action": "move"}), 400),
        (
            json!({"action": "move", "destination_queue": "no-such-q"}),
            404,
        ),
        (json!({"action": "explode"}), 400),
    ] {
        let (s, v) = http_json(addr, "POST", &actions, ADMIN, &body.to_string()).await;
        assert_eq!(s, status, "{body}: {v}");
    }
    delete_exchange(&ch, &x).await;
    delete_queue(&ch, &src).await;
    delete_queue(&ch, &dst).await;
    conn.close(200, "bye".into()).await.unwrap();
    b.stop().await;
}

#[tokio::test]
async fn moved_twice_counts_two_and_needs_permissions() {
    let Some(b) = start_broker_with(|_| {}).await else {
        return;
    };
    let (addr, _stop) = serve_mgmt(b.broker().expect("in-process").clone()).await;
    let (conn, ch) = b.channel().await;
    let (a, z) = (unique_name("a"), unique_name("z"));
    declare_queue(&ch, &a).await;
    declare_queue(&ch, &z).await;
    fill(&conn, &a, 3).await;
    let to = |q: &str| json!({"action": "move", "destination_queue": q}).to_string();
    let (s, v) = http_json(
        addr,
        "POST",
        &format!("/api/queues/%2F/{a}/actions"),
        ADMIN,
        &to(&z),
    )
    .await;
    assert_eq!((s, &v), (200, &json!({"moved": 3})));
    let (s, v) = http_json(
        addr,
        "POST",
        &format!("/api/queues/%2F/{z}/actions"),
        ADMIN,
        &to(&a),
    )
    .await;
    assert_eq!((s, &v), (200, &json!({"moved": 3})));
    let got = consume(&ch, &a, 3).await;
    assert!(
        got.iter().all(|(_, h)| redrive_count(h) == Some(2)),
        "{got:?}"
    );

    // A management user who may read the source but not write the destination.
    let (s, _) = http(
        addr,
        "PUT",
        "/api/users/mover",
        ADMIN,
        r#"{"password":"p","tags":"management"}"#,
    )
    .await;
    assert_eq!(s, 201);
    let perms = format!(r#"{{"configure":"","write":"^{a}$","read":".*"}}"#);
    let (s, _) = http(addr, "PUT", "/api/permissions/%2F/mover", ADMIN, &perms).await;
    assert_eq!(s, 201);
    fill(&conn, &a, 1).await;
    let mover = ("mover", "p");
    let (s, v) = http_json(
        addr,
        "POST",
        &format!("/api/queues/%2F/{a}/actions"),
        mover,
        &to(&z),
    )
    .await;
    assert_eq!(s, 401, "{v}");
    assert_eq!(queue_counts(&ch, &a).await.0, 1);
    let (s, v) = http_json(
        addr,
        "POST",
        &format!("/api/queues/%2F/{z}/actions"),
        mover,
        &to(&a),
    )
    .await;
    assert_eq!((s, &v), (200, &json!({"moved": 0})));
    delete_queue(&ch, &a).await;
    delete_queue(&ch, &z).await;
    conn.close(200, "bye".into()).await.unwrap();
    b.stop().await;
}

/// The body RabbitMQ's management UI sends for "Move messages" (3.x, shovel plugin).
fn ui_shovel_body(src: &str, dst: &str) -> Value {
    json!({
        "component": "shovel", "vhost": "/", "name": format!("Move from {src}"),
        "value": {
            "src-uri": "amqp:///%2F", "src-queue": src, "src-protocol": "amqp091",
            "src-prefetch-count": 1000, "src-delete-after": "queue-length",
            "dest-protocol": "amqp091", "dest-uri": "amqp:///%2F",
            "dest-add-forward-headers": false, "ack-mode": "on-confirm", "dest-queue": dst,
        }
    })
}

#[tokio::test]
async fn rabbitmq_shovel_parameter_moves_and_goes_away() {
    let Some(b) = start_broker_with(|_| {}).await else {
        return;
    };
    let (addr, _stop) = serve_mgmt(b.broker().expect("in-process").clone()).await;
    let (conn, ch) = b.channel().await;
    let (src, dst) = (unique_name("shovel-src"), unique_name("shovel-dst"));
    declare_queue(&ch, &src).await;
    declare_queue(&ch, &dst).await;
    fill(&conn, &src, 20).await;
    let path = format!("/api/parameters/shovel/%2F/Move%20from%20{src}");
    let (s, v) = http(
        addr,
        "PUT",
        &path,
        ADMIN,
        &ui_shovel_body(&src, &dst).to_string(),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    // RabbitMQ deletes such a shovel once it moved the queue's length; so does Warren.
    // Nothing acknowledges that to a client, hence polling.
    eventually("the shovel parameter is gone", || async {
        http(addr, "GET", &path, ADMIN, "").await.0 == 404
    })
    .await;
    assert_eq!(queue_counts(&ch, &src).await.0, 0);
    let got = consume(&ch, &dst, 20).await;
    let bodies: Vec<&str> = got.iter().map(|(b, _)| b.as_str()).collect();
    let want: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies, want);

    // Remote and standing shovels are refused with the reason.
    let mut remote = ui_shovel_body(&src, &dst);
    remote["value"]["dest-uri"] = json!("amqp://elsewhere.example/%2F");
    let (s, v) = http_json(addr, "PUT", &path, ADMIN, &remote.to_string()).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["reason"].as_str().unwrap().contains("not this broker"),
        "{v}"
    );
    let mut standing = ui_shovel_body(&src, &dst);
    standing["value"]["src-delete-after"] = json!("never");
    let (s, _) = http_json(addr, "PUT", &path, ADMIN, &standing.to_string()).await;
    assert_eq!(s, 400);
    delete_queue(&ch, &src).await;
    delete_queue(&ch, &dst).await;
    conn.close(200, "bye".into()).await.unwrap();
    b.stop().await;
}
