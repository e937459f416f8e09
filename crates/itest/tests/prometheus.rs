//! Prometheus metrics (`warren-metrics`) over a real socket: the router serves on
//! 127.0.0.1:0 beside an in-process broker, lapin publishes, confirms, gets, consumes and
//! acks, and the scrapes must move by exactly that. Counters are written by the connection
//! task as it handles each frame, so after a synchronous round trip on the same connection
//! they are exact; queue gauges are published by the queue actor after each batch, so they
//! are awaited with `eventually`.

use std::net::SocketAddr;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_itest::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, QueueDeclareOptions,
};
use warren_itest::lapin::types::FieldTable;
use warren_itest::lapin::BasicProperties;
use warren_itest::*;

/// Serves the metrics router for `broker` on a free loopback port.
async fn serve_metrics(broker: &TestBroker) -> SocketAddr {
    let handle = broker.handle().expect("in-process broker");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let node = warren_metrics::Node::new(Some(handle.alarms().clone()), Instant::now());
    let router = warren_metrics::router(handle.broker().clone(), node);
    tokio::spawn(async move { axum_serve(listener, router).await });
    addr
}

async fn axum_serve(listener: tokio::net::TcpListener, router: warren_metrics::Router) {
    let _ = warren_metrics::serve_router(listener, router, std::future::pending()).await;
}

/// `GET path` over HTTP/1.1 (Connection: close): the content type and body.
async fn scrape(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = within("connect", tokio::net::TcpStream::connect(addr))
        .await
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    within("response", stream.read_to_end(&mut response))
        .await
        .unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_owned();
    (content_type, body.to_owned())
}

/// The value of sample `name` (with its labels, as written), or None.
fn sample(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

fn value(text: &str, name: &str) -> u64 {
    sample(text, name).unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test]
async fn counters_and_gauges_move_with_traffic() {
    let Some(broker) = start_broker_with(|_| {}).await else {
        return;
    };
    let addr = serve_metrics(&broker).await;
    let (content_type, before) = scrape(addr, "/metrics").await;
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");

    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let queue = "prom.q";
    declare_queue(&ch, queue).await;
    for _ in 0..3 {
        publish_confirmed(&ch, "", queue, b"hello", BasicProperties::default()).await;
    }
    let ready = format!("rabbitmq_queue_messages_ready{{vhost=\"/\",queue=\"{queue}\"}}");
    eventually("3 ready in the per-object scrape", || async {
        sample(&scrape(addr, "/metrics/per-object").await.1, &ready) == Some(3)
    })
    .await;
    // Unroutable: one mandatory (returned), one not (dropped); both are confirmed.
    for mandatory in [true, false] {
        let confirm = ch
            .basic_publish(
                "amq.direct".into(),
                "nowhere".into(),
                BasicPublishOptions {
                    mandatory,
                    ..Default::default()
                },
                b"lost",
                BasicProperties::default(),
            )
            .await
            .unwrap();
        assert!(within("confirm", confirm).await.unwrap().is_ack());
    }
    let got = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("a message");
    got.ack(BasicAckOptions::default()).await.unwrap();
    let got = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(got.is_some());

    // The last message: delivered, nacked back, delivered again (redelivered), acked.
    let consumer_ch = conn.create_channel().await.unwrap();
    consumer_ch
        .basic_qos(1, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = consumer_ch
        .basic_consume(
            queue.into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let first = next_delivery(&mut consumer).await;
    first
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let again = next_delivery(&mut consumer).await;
    assert!(again.redelivered);
    again.ack(BasicAckOptions::default()).await.unwrap();
    // A round trip on the same connection: the ack has been handled when it returns.
    consumer_ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();

    let (_, after) = scrape(addr, "/metrics").await;
    let moved = |name: &str| value(&after, name) - value(&before, name);
    assert_eq!(moved("rabbitmq_channel_messages_published_total"), 5);
    assert_eq!(moved("rabbitmq_channel_messages_confirmed_total"), 5);
    assert_eq!(
        moved("rabbitmq_channel_messages_unroutable_returned_total"),
        1
    );
    assert_eq!(
        moved("rabbitmq_channel_messages_unroutable_dropped_total"),
        1
    );
    assert_eq!(moved("rabbitmq_channel_get_ack_total"), 1);
    assert_eq!(moved("rabbitmq_channel_get_total"), 1);
    assert_eq!(moved("rabbitmq_channel_get_empty_total"), 0);
    assert_eq!(moved("rabbitmq_channel_messages_delivered_ack_total"), 2);
    assert_eq!(moved("rabbitmq_channel_messages_delivered_total"), 0);
    assert_eq!(moved("rabbitmq_channel_messages_redelivered_total"), 1);
    assert_eq!(moved("rabbitmq_channel_messages_acked_total"), 2);
    assert_eq!(moved("rabbitmq_connections_opened_total"), 1);
    assert_eq!(moved("rabbitmq_channels_opened_total"), 2);
    assert_eq!(moved("rabbitmq_queues_declared_total"), 1);
    assert_eq!(moved("rabbitmq_queues_created_total"), 1);
    assert_eq!(moved("rabbitmq_queue_messages_published_total"), 3);
    assert_eq!(value(&after, "rabbitmq_connections"), 1);
    assert_eq!(value(&after, "rabbitmq_channels"), 2);
    assert!(moved("rabbitmq_connection_incoming_bytes_total") > 0);
    assert!(moved("rabbitmq_connection_outgoing_bytes_total") > 0);

    eventually("the queue's gauges settle", || async {
        let (_, text) = scrape(addr, "/metrics").await;
        sample(&text, "rabbitmq_queue_messages") == Some(0)
            && sample(&text, "rabbitmq_queue_consumers") == Some(1)
            && sample(&text, "rabbitmq_consumers") == Some(1)
    })
    .await;

    let (_, detailed) = scrape(
        addr,
        "/metrics/detailed?family=queue_coarse_metrics&family=connection_churn_metrics&vhost=%2F",
    )
    .await;
    assert_eq!(
        value(
            &detailed,
            &format!("rabbitmq_detailed_queue_messages{{vhost=\"/\",queue=\"{queue}\"}}")
        ),
        0
    );
    assert_eq!(
        value(&detailed, "rabbitmq_detailed_connections_opened_total"),
        1
    );

    // Closing keeps the closed connection's counts in the totals.
    conn.close(200, "bye".into()).await.unwrap();
    eventually("the connection is counted closed", || async {
        let (_, text) = scrape(addr, "/metrics").await;
        sample(&text, "rabbitmq_connections_closed_total") == Some(1)
            && sample(&text, "rabbitmq_channels_closed_total") == Some(2)
            && sample(&text, "rabbitmq_connections") == Some(0)
    })
    .await;
    // Deleting the queue keeps what it counted in the node's sum.
    let other = broker.connect().await;
    let ch = other.create_channel().await.unwrap();
    delete_queue(&ch, queue).await;
    let (_, closed) = scrape(addr, "/metrics").await;
    assert_eq!(
        value(&closed, "rabbitmq_channel_messages_published_total"),
        value(&after, "rabbitmq_channel_messages_published_total")
    );
    assert_eq!(value(&closed, "rabbitmq_queues_deleted_total"), 1);
    assert_eq!(value(&closed, "rabbitmq_queue_messages_published_total"), 3);

    broker.stop().await;
}
