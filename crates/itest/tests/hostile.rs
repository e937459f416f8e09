//! Input an attacker would send: tables nested thousands deep, strings too long for the short
//! strings they end up in, frames pipelined into the handshake, and a connection task that
//! fails. Each test pins a bug that crashed the broker or stranded messages, and then checks
//! that the broker still serves a well-behaved client.

use warren_itest::amq_protocol::protocol::{basic, queue, AMQPClass};
use warren_itest::amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};
use warren_itest::lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use warren_itest::lapin::types::ShortString;
use warren_itest::lapin::BasicProperties;
use warren_itest::*;

/// An encoded field table (length first) holding one entry whose value is `levels` arrays
/// nested in each other. Built by hand: an encoder that recursed would overflow here first.
fn nested_table(levels: usize) -> Vec<u8> {
    let mut inner: Vec<u8> = Vec::new();
    for _ in 0..levels {
        let mut next = Vec::with_capacity(inner.len() + 5);
        next.push(b'A');
        next.extend_from_slice(&(inner.len() as u32).to_be_bytes());
        next.extend_from_slice(&inner);
        inner = next;
    }
    let mut entry = vec![1, b'k'];
    entry.extend_from_slice(&inner);
    let mut out = (entry.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&entry);
    out
}

fn short(out: &mut Vec<u8>, s: &str) {
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

fn long(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

/// Deep enough to overflow a worker's stack in a recursive parser (debug or release) while
/// fitting in the 4,096-byte frames allowed before tune-ok.
const DEEP_BEFORE_LOGIN: usize = 800;
/// Deeper still once 128 KiB frames are allowed.
const DEEP: usize = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_client_properties_close_the_connection_not_the_broker() {
    let broker = start_broker().await;
    let mut raw = RawConn::connect(broker.addr).await;
    raw.send_header_and_read_start().await;
    let mut payload = vec![0, 10, 0, 11];
    payload.extend(nested_table(DEEP_BEFORE_LOGIN));
    short(&mut payload, "PLAIN");
    long(&mut payload, &plain_response("guest", "guest"));
    short(&mut payload, "en_US");
    assert!(payload.len() + 8 <= 4096);
    raw.send(&raw_frame(1, 0, &payload)).await;
    let text = raw.expect_connection_close(501).await;
    assert!(text.contains("nested deeper than"), "{text}");
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_amqplain_response_is_refused() {
    let broker = start_broker().await;
    let mut raw = RawConn::connect(broker.addr).await;
    raw.send_header_and_read_start().await;
    // AMQPLAIN's response is a field table without its length.
    let response = nested_table(DEEP_BEFORE_LOGIN)[4..].to_vec();
    let client = FieldTable::from(std::collections::BTreeMap::from([(
        ShortString::from("capabilities"),
        AMQPValue::FieldTable(FieldTable::from(std::collections::BTreeMap::from([(
            ShortString::from("authentication_failure_close"),
            AMQPValue::Boolean(true),
        )]))),
    )]));
    raw.send_start_ok_with(client, "AMQPLAIN", response).await;
    raw.expect_connection_close(403).await;
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_queue_arguments_close_the_connection() {
    let broker = start_broker().await;
    let mut raw = raw_handshake(broker.addr).await;
    raw.open_channel(1).await;
    let mut payload = vec![0, 50, 0, 10, 0, 0];
    short(&mut payload, "deep-args");
    payload.push(0);
    payload.extend(nested_table(DEEP));
    raw.send(&raw_frame(1, 1, &payload)).await;
    let text = raw.expect_connection_close(501).await;
    assert!(text.contains("nested deeper than"), "{text}");
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_message_headers_close_the_connection() {
    let broker = start_broker().await;
    let mut raw = raw_handshake(broker.addr).await;
    raw.open_channel(1).await;
    raw.send(&publish_frame(1, "", "nowhere")).await;
    let mut header = vec![0, 60, 0, 0];
    header.extend_from_slice(&0u64.to_be_bytes());
    header.extend_from_slice(&0x2000u16.to_be_bytes());
    header.extend(nested_table(DEEP));
    raw.send(&raw_frame(2, 1, &header)).await;
    let text = raw.expect_connection_close(501).await;
    assert!(text.contains("nested deeper than"), "{text}");
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_over_4096_bytes_before_tune_ok_are_refused() {
    let broker = start_broker().await;
    let mut raw = RawConn::connect(broker.addr).await;
    raw.send_header_and_read_start().await;
    let mut payload = vec![0, 10, 0, 11];
    long(&mut payload, &[0u8; 5000]);
    raw.send(&raw_frame(1, 0, &payload)).await;
    raw.expect_close_or_eof(501).await;
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_open_pipelined_with_connection_open_is_answered() {
    // Pins: frames that arrived in the same segment as connection.open waited for the next
    // read; with heartbeats off the client hung forever.
    let broker = start_broker().await;
    let (mut raw, tune) =
        RawConn::handshake_to_tune(broker.addr, "PLAIN", plain_response("guest", "guest")).await;
    raw.send_tune_ok(tune.channel_max, tune.frame_max, 0).await;
    let mut both = method_frame(
        0,
        AMQPClass::Connection(
            warren_itest::amq_protocol::protocol::connection::AMQPMethod::Open(
                warren_itest::amq_protocol::protocol::connection::Open {
                    virtual_host: "/".into(),
                },
            ),
        ),
    );
    both.extend(channel_open_frame(1));
    raw.send(&both).await;
    raw.expect_open_ok().await;
    match raw.read_method().await {
        (1, AMQPClass::Channel(_)) => {}
        other => panic!("expected channel.open-ok, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_cc_entries_route_without_a_panic() {
    // Pins: a CC entry over 255 bytes became a short string and panicked the connection task.
    let broker = start_broker().await;
    let (conn, ch) = broker.channel().await;
    let q = declare_temp_queue(&ch).await;
    bind_queue(&ch, &q, "amq.topic", "#", FieldTable::default()).await;
    let long_key = "k".repeat(300);
    let headers = FieldTable::from(std::collections::BTreeMap::from([(
        ShortString::from("CC"),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(
            LongString::from(long_key.as_bytes().to_vec()),
        )])),
    )]));
    publish_with(
        &ch,
        "amq.topic",
        "short",
        b"cc",
        BasicProperties::default().with_headers(headers),
    )
    .await;
    assert_eq!(get_body(&ch, &q).await.as_deref(), Some(&b"cc"[..]));
    drop(conn);
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_names_over_255_bytes_are_refused() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    for arg in ["x-dead-letter-exchange", "x-dead-letter-routing-key"] {
        let ch = conn.create_channel().await.expect("channel.open");
        let args = FieldTable::from(std::collections::BTreeMap::from([(
            ShortString::from(arg),
            AMQPValue::LongString(LongString::from(vec![b'x'; 300])),
        )]));
        let result = ch
            .queue_declare(
                unique_name("dlx-long").as_str().into(),
                QueueDeclareOptions::default(),
                args,
            )
            .await;
        let text = expect_code(result, 406);
        assert!(text.contains(arg), "{text}");
    }
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connection_task_releases_unacked_messages_and_exclusive_queues() {
    const FAULT: &str = "warren.test.fault";
    let Some(broker) = start_broker_with(|c| c.fault_panic_queue = Some(FAULT.into())).await else {
        return;
    };
    let (keeper, ch) = broker.channel().await;
    let work = unique_name("work");
    declare_queue(&ch, &work).await;
    publish(&ch, "", &work, b"job").await;

    // The victim: one unacked delivery and an exclusive queue.
    let mut victim = raw_handshake(broker.addr).await;
    victim.open_channel(1).await;
    let exclusive = unique_name("excl");
    let declare = |name: &str, exclusive: bool| {
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: name.into(),
            passive: false,
            durable: false,
            exclusive,
            auto_delete: false,
            nowait: false,
            arguments: FieldTable::default(),
        }))
    };
    victim.call(1, declare(&exclusive, true)).await;
    victim
        .call(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: work.as_str().into(),
                consumer_tag: "victim".into(),
                no_local: false,
                no_ack: false,
                exclusive: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        )
        .await;
    match victim.read_method().await {
        (1, AMQPClass::Basic(basic::AMQPMethod::Deliver(_))) => {}
        other => panic!("expected basic.deliver, got {other:?}"),
    }
    victim.read_frame().await; // content header
    victim.read_frame().await; // body
                               // The task panics; the socket closes without connection.close.
    victim.send_method(1, declare(FAULT, false)).await;
    victim.expect_eof().await;

    // The delivery is back, redelivered, for another consumer.
    let mut consumer = ch
        .basic_consume(
            work.as_str().into(),
            "rescuer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("basic.consume");
    let d = next_delivery(&mut consumer).await;
    assert_eq!(d.data, b"job");
    assert!(d.redelivered);
    // The exclusive queue was deleted with its owner.
    // (405 RESOURCE_LOCKED while its owner's cleanup is still running, then 404.)
    eventually("the exclusive queue is released", || {
        let conn = &keeper;
        let q = exclusive.clone();
        async move {
            let ch = conn.create_channel().await.expect("channel.open");
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            let result = ch
                .queue_declare(q.as_str().into(), passive, FieldTable::default())
                .await;
            matches!(result, Err(e) if reply_code(&e) == Some(404))
        }
    })
    .await;
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_max_and_consumer_max_per_channel_are_enforced() {
    let Some(broker) = start_broker_with(|c| {
        c.connection_max = Some(2);
        c.consumer_max_per_channel = Some(2);
    })
    .await
    else {
        return;
    };
    let first = broker.connect().await;
    let mut second = raw_handshake(broker.addr).await;
    let (mut third, tune) =
        RawConn::handshake_to_tune(broker.addr, "PLAIN", plain_response("guest", "guest")).await;
    third
        .send_tune_ok(tune.channel_max, tune.frame_max, 0)
        .await;
    third.send_open("/").await;
    let text = third.expect_connection_close(530).await;
    assert!(text.contains("node connection limit (2)"), "{text}");
    // A closed connection gives its place back.
    second.open_channel(1).await;
    second
        .send_method(
            0,
            AMQPClass::Connection(
                warren_itest::amq_protocol::protocol::connection::AMQPMethod::Close(
                    warren_itest::amq_protocol::protocol::connection::Close {
                        reply_code: 200,
                        reply_text: "bye".into(),
                        class_id: 0,
                        method_id: 0,
                    },
                ),
            ),
        )
        .await;
    match second.read_method().await {
        (0, AMQPClass::Connection(_)) => {}
        other => panic!("expected close-ok, got {other:?}"),
    }
    second.expect_eof().await;
    let ch = first.create_channel().await.expect("channel");
    let q = declare_temp_queue(&ch).await;
    eventually("a place is free again", || async {
        warren_itest::try_connect(&broker.url, Default::default())
            .await
            .is_ok()
    })
    .await;
    // (Kept: lapin cancels a consumer it drops.)
    let mut consumers = Vec::new();
    for n in 0..2 {
        let consumer = ch
            .basic_consume(
                q.as_str().into(),
                format!("c{n}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume within the limit");
        consumers.push(consumer);
    }
    let result = ch
        .basic_consume(
            q.as_str().into(),
            "c2".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await;
    let text = expect_code(result, 530);
    assert!(
        text.contains("reached maximum (2) of consumers per channel"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alternate_exchange_name_over_255_bytes_is_harmless() {
    // Pins: `alternate-exchange` became a short string and panicked the connection task.
    let broker = start_broker().await;
    let (_conn, ch) = broker.channel().await;
    let name = unique_name("ae-long");
    let args = FieldTable::from(std::collections::BTreeMap::from([(
        ShortString::from("alternate-exchange"),
        AMQPValue::LongString(LongString::from(vec![b'a'; 300])),
    )]));
    ch.exchange_declare(
        name.as_str().into(),
        warren_itest::lapin::ExchangeKind::Direct,
        Default::default(),
        args,
    )
    .await
    .expect("exchange.declare");
    publish(&ch, &name, "nowhere", b"unroutable").await;
    assert_broker_healthy(&broker).await;
}
