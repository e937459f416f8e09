//! Malformed and out-of-order input over a raw socket. Each test checks the exact reply the
//! broker sends, then that a second, well-behaved connection still works: a bad client must
//! only ever hurt itself.

use warren_itest::amq_protocol::frame::AMQPFrame;
use warren_itest::amq_protocol::protocol::{basic, confirm, queue, AMQPClass};
use warren_itest::amq_protocol::types::FieldTable;
use warren_itest::lapin::options::QueueDeclareOptions;
use warren_itest::lapin::BasicProperties;
use warren_itest::*;

fn queue_declare(name: &str, passive: bool) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: name.into(),
        passive,
        durable: false,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::default(),
    }))
}

fn expect_declare_ok(reply: AMQPClass, name: &str) {
    match reply {
        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => assert_eq!(ok.queue.as_str(), name),
        other => panic!("expected queue.declare-ok, got {other:?}"),
    }
}

/// A raw connection with channel 1 open.
async fn raw_with_channel(broker: &TestBroker) -> RawConn {
    let mut raw = broker.raw().await;
    raw.open_channel(1).await;
    raw
}

/// A raw connection that negotiated frame_max 4096, with channel 1 open.
async fn raw_with_small_frames(broker: &TestBroker) -> RawConn {
    let (mut raw, tune) =
        RawConn::handshake_to_tune(broker.addr, "PLAIN", plain_response("guest", "guest")).await;
    raw.send_tune_ok(tune.channel_max, 4096, 0).await;
    raw.send_open("/").await;
    raw.expect_open_ok().await;
    raw.open_channel(1).await;
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_protocol_header_gets_our_header_and_close() {
    let broker = start_broker().await;
    for header in [
        &b"GET / HT"[..],
        b"AMQP\x00\x00\x0a\x00",
        b"AMQP\x00\x00\x09\x02",
    ] {
        let mut raw = RawConn::connect(broker.addr).await;
        raw.send(header).await;
        let reply = raw.read_to_eof().await;
        assert_eq!(reply, AMQP_0_9_1_HEADER, "reply to header {header:?}");
    }
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_larger_than_frame_max_is_frame_error() {
    let broker = start_broker().await;
    let mut raw = raw_with_small_frames(&broker).await;
    // A body frame of exactly frame_max bytes in total is fine...
    let fits = vec![b'x'; 4096 - 8];
    raw.send(&publish_frame(1, "", "nowhere")).await;
    raw.send(&header_frame(
        1,
        (fits.len() * 2) as u64,
        BasicProperties::default(),
    ))
    .await;
    raw.send(&body_frame(1, &fits)).await;
    // ...a payload above frame_max is not. (RabbitMQ tolerates up to 8 bytes over the limit
    // for buggy clients, so the boundary itself is not pinned here.)
    let too_big = vec![b'x'; 4096 + 1];
    raw.send(&body_frame(1, &too_big)).await;
    raw.expect_connection_close(501).await;
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_frame_larger_than_frame_max_is_frame_error() {
    let broker = start_broker().await;
    let mut raw = raw_with_small_frames(&broker).await;
    let mut payload = method_payload(queue_declare("padded", false));
    payload.resize(5000, 0);
    raw.send(&raw_frame(FRAME_METHOD, 1, &payload)).await;
    raw.expect_connection_close(501).await;
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_frame_end_is_frame_error() {
    let broker = start_broker().await;
    let mut raw = broker.raw().await;
    let mut frame = channel_open_frame(1);
    *frame.last_mut().expect("frame end") = 0x00;
    raw.send(&frame).await;
    raw.expect_connection_close(501).await;
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_frame_type_is_frame_error() {
    let broker = start_broker().await;
    let mut raw = broker.raw().await;
    raw.send(&raw_frame(9, 0, b"????")).await;
    raw.expect_connection_close(501).await;
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_on_unopened_channel_is_channel_error() {
    let broker = start_broker().await;
    let mut raw = broker.raw().await;
    raw.send_method(5, queue_declare("never", false)).await;
    raw.expect_connection_close(504).await;
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_open_on_open_channel_is_channel_error() {
    let broker = start_broker().await;
    let mut raw = raw_with_channel(&broker).await;
    raw.send(&channel_open_frame(1)).await;
    raw.expect_connection_close(504).await;
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_frame_without_header_is_unexpected_frame() {
    let broker = start_broker().await;
    let mut raw = raw_with_channel(&broker).await;
    raw.send(&body_frame(1, b"orphan")).await;
    raw.expect_connection_close(505).await;
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_frame_without_publish_is_unexpected_frame() {
    let broker = start_broker().await;
    let mut raw = raw_with_channel(&broker).await;
    raw.send(&header_frame(1, 3, BasicProperties::default()))
        .await;
    raw.expect_connection_close(505).await;
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_on_a_channel_is_unexpected_frame() {
    let broker = start_broker().await;
    let mut raw = raw_with_channel(&broker).await;
    raw.send(&raw_frame(FRAME_HEARTBEAT, 5, &[])).await;
    raw.expect_connection_close(505).await;
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_header_of_wrong_class_is_unexpected_frame() {
    let broker = start_broker().await;
    let mut raw = raw_with_channel(&broker).await;
    raw.send(&publish_frame(1, "", "anywhere")).await;
    // Class 50 (queue) has no content.
    let mut payload = Vec::new();
    payload.extend_from_slice(&50u16.to_be_bytes()); // class
    payload.extend_from_slice(&0u16.to_be_bytes()); // weight
    payload.extend_from_slice(&3u64.to_be_bytes()); // body size
    payload.extend_from_slice(&0u16.to_be_bytes()); // no properties
    raw.send(&raw_frame(FRAME_HEADER, 1, &payload)).await;
    raw.expect_connection_close(505).await;
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_where_content_header_was_expected_is_unexpected_frame() {
    let broker = start_broker().await;
    let mut raw = raw_with_channel(&broker).await;
    raw.send(&publish_frame(1, "", "anywhere")).await;
    raw.send_method(1, queue_declare("interloper", false)).await;
    raw.expect_connection_close(505).await;
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_where_body_was_expected_is_unexpected_frame() {
    let broker = start_broker().await;
    let mut raw = raw_with_channel(&broker).await;
    raw.send(&publish_frame(1, "", "anywhere")).await;
    raw.send(&header_frame(1, 10, BasicProperties::default()))
        .await;
    raw.send(&body_frame(1, b"12345")).await;
    raw.send_method(1, queue_declare("interloper", false)).await;
    raw.expect_connection_close(505).await;
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_after_complete_content_is_unexpected_frame() {
    let broker = start_broker().await;
    let mut raw = raw_with_channel(&broker).await;
    raw.send(&publish_frame(1, "", "anywhere")).await;
    // body_size 0: the message is complete with its header.
    raw.send(&header_frame(1, 0, BasicProperties::default()))
        .await;
    raw.send(&body_frame(1, b"surplus")).await;
    raw.expect_connection_close(505).await;
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_longer_than_declared_size_is_never_delivered() {
    let broker = start_broker().await;
    let (_conn, ch) = broker.channel().await;
    let queue = unique_name("q-overflow");
    declare_queue(&ch, &queue).await;
    let mut raw = raw_with_channel(&broker).await;
    raw.send(&publish_frame(1, "", &queue)).await;
    raw.send(&header_frame(1, 4, BasicProperties::default()))
        .await;
    raw.send(&body_frame(1, b"123456789")).await;
    // RabbitMQ does not notice the overflow itself: the channel keeps waiting for content
    // and the next method on it is the unexpected frame. Warren may close at the body.
    raw.send_method(1, queue_declare("after-overflow", false))
        .await;
    raw.expect_connection_close(505).await;
    assert_eq!(queue_counts(&ch, &queue).await, (0, 0));
    delete_queue(&ch, &queue).await;
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_field_table_is_rejected() {
    let broker = start_broker().await;
    let mut raw = raw_with_channel(&broker).await;
    // queue.declare whose arguments table claims 100 bytes but the payload ends after 4.
    let mut payload = method_payload(queue_declare("truncated", false));
    let table_len_at = payload.len() - 4;
    payload[table_len_at..].copy_from_slice(&100u32.to_be_bytes());
    raw.send(&raw_frame(FRAME_METHOD, 1, &payload)).await;
    raw.expect_connection_close(501).await;
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_method_is_rejected() {
    let broker = start_broker().await;
    let mut raw = raw_with_channel(&broker).await;
    // Class 50 (queue), method 99 does not exist.
    raw.send(&raw_frame(FRAME_METHOD, 1, &[0, 50, 0, 99])).await;
    // RabbitMQ cannot decode it and drops the socket without a close.
    raw.expect_close_or_eof(540).await;
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_method_on_channel_zero_is_rejected() {
    let broker = start_broker().await;
    let mut raw = broker.raw().await;
    raw.send_method(0, queue_declare("on-zero", false)).await;
    raw.expect_connection_close(504).await;
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_error_leaves_other_channels_working() {
    let broker = start_broker().await;
    let mut raw = raw_with_channel(&broker).await;
    raw.open_channel(2).await;
    let missing = unique_name("q-missing");
    raw.send_method(1, queue_declare(&missing, true)).await;
    let text = raw.expect_channel_close(1, 404).await;
    assert!(text.starts_with("NOT_FOUND"), "reply text: {text}");

    let name = unique_name("q-ch2");
    let reply = raw.call(2, queue_declare(&name, false)).await;
    expect_declare_ok(reply, &name);
    // The closed channel can be opened again.
    raw.open_channel(1).await;
    let reply = raw.call(1, queue_declare(&name, true)).await;
    expect_declare_ok(reply, &name);
    let reply = raw
        .call(
            2,
            AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                queue: name.as_str().into(),
                if_unused: false,
                if_empty: false,
                nowait: false,
            })),
        )
        .await;
    assert!(
        matches!(reply, AMQPClass::Queue(queue::AMQPMethod::DeleteOk(_))),
        "got {reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_after_channel_close_are_discarded_until_close_ok() {
    let broker = start_broker().await;
    let mut raw = raw_with_channel(&broker).await;
    // Both sent before the broker's channel.close can arrive: the second must be ignored.
    raw.send_method(1, queue_declare(&unique_name("q-missing"), true))
        .await;
    raw.send_method(1, queue_declare(&unique_name("q-ignored"), false))
        .await;
    raw.send(&publish_frame(1, "", "ignored")).await;
    raw.send(&header_frame(1, 2, BasicProperties::default()))
        .await;
    raw.send(&body_frame(1, b"no")).await;
    raw.expect_channel_close(1, 404).await;
    raw.open_channel(1).await;
    let name = unique_name("q-after");
    let reply = raw.call(1, queue_declare(&name, false)).await;
    expect_declare_ok(reply, &name);
    raw.call(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
            queue: name.as_str().into(),
            if_unused: false,
            if_empty: false,
            nowait: false,
        })),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_channel_error_leaves_other_channels_working() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch1 = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let ch2 = confirm_channel(&conn).await;
    let result = within(
        "queue.declare",
        ch1.queue_declare(
            unique_name("q-missing").as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    expect_code(result, 404);
    let queue = declare_temp_queue(&ch2).await;
    publish_confirmed(&ch2, "", &queue, b"fine", BasicProperties::default()).await;
    assert_eq!(get_body(&ch2, &queue).await.as_deref(), Some(&b"fine"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_publish_split_over_frames_is_assembled() {
    let broker = start_broker().await;
    let (_conn, ch) = broker.channel().await;
    let queue = unique_name("q-raw");
    declare_queue(&ch, &queue).await;
    let mut raw = raw_with_small_frames(&broker).await;
    let reply = raw
        .call(
            1,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
        )
        .await;
    assert!(
        matches!(reply, AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_))),
        "got {reply:?}"
    );
    raw.send(&publish_frame(1, "", &queue)).await;
    raw.send(&header_frame(
        1,
        10_000,
        BasicProperties::default().with_message_id("raw".into()),
    ))
    .await;
    let body: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
    // Uneven chunks, all within frame_max, written in one go.
    let mut bytes = Vec::new();
    for chunk in body.chunks(3001) {
        bytes.extend_from_slice(&body_frame(1, chunk));
    }
    raw.send(&bytes).await;
    match raw.read_method().await {
        (1, AMQPClass::Basic(basic::AMQPMethod::Ack(ack))) => assert_eq!(ack.delivery_tag, 1),
        other => panic!("expected the publisher confirm, got {other:?}"),
    }
    let reply = raw.call(1, queue_declare(&queue, true)).await;
    match reply {
        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => assert_eq!(ok.message_count, 1),
        other => panic!("expected declare-ok, got {other:?}"),
    }
    raw.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: queue.as_str().into(),
            no_ack: true,
        })),
    )
    .await;
    match raw.read_method().await {
        (1, AMQPClass::Basic(basic::AMQPMethod::GetOk(ok))) => {
            assert_eq!(ok.routing_key.as_str(), queue)
        }
        other => panic!("expected get-ok, got {other:?}"),
    }
    match raw.read_frame().await {
        AMQPFrame::Header(1, header) => {
            assert_eq!(header.body_size, 10_000);
            assert_eq!(
                header.properties.message_id().as_ref().map(|s| s.as_str()),
                Some("raw")
            );
        }
        other => panic!("expected a content header, got {other:?}"),
    }
    let mut received = Vec::new();
    while received.len() < body.len() {
        match raw.read_frame().await {
            AMQPFrame::Body(1, chunk) => received.extend_from_slice(&chunk),
            other => panic!("expected a body frame, got {other:?}"),
        }
    }
    assert!(received == body);
    delete_queue(&ch, &queue).await;
}
