//! Message content: bodies split across many frames (large messages, small frame_max), all
//! basic properties and every field-table type round-tripping exactly, and the size limit.

use warren_itest::amq_protocol::frame::AMQPFrame;
use warren_itest::amq_protocol::protocol::{basic, AMQPClass};
use warren_itest::amq_protocol::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString,
};
use warren_itest::lapin::options::{BasicConsumeOptions, BasicGetOptions};
use warren_itest::lapin::BasicProperties;
use warren_itest::*;

/// A body whose every byte depends on its position, so reordering or loss shows.
fn patterned_body(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + i / 251) % 256) as u8).collect()
}

async fn round_trip(url: &str, body: &[u8]) {
    let conn = connect(url).await;
    let ch = confirm_channel(&conn).await;
    let queue = declare_temp_queue(&ch).await;
    publish_confirmed(&ch, "", &queue, body, BasicProperties::default()).await;
    // Once through basic.get and once through a consumer.
    let got = get_body(&ch, &queue).await.expect("a message");
    assert_eq!(got.len(), body.len());
    assert!(got == body, "body differs after basic.get");
    publish_confirmed(&ch, "", &queue, body, BasicProperties::default()).await;
    let mut consumer = within(
        "basic.consume-ok",
        ch.basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("consume");
    let delivery = next_delivery(&mut consumer).await;
    assert!(delivery.data == body, "body differs after basic.deliver");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mebibyte_message_round_trips() {
    let broker = start_broker().await;
    round_trip(&broker.url, &patterned_body(1024 * 1024)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_body_round_trips() {
    let broker = start_broker().await;
    round_trip(&broker.url, b"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_round_trips_with_client_negotiated_small_frame_max() {
    let broker = start_broker().await;
    let url = broker.url_query("frame_max=4096");
    let conn = connect(&url).await;
    assert_eq!(conn.configuration().frame_max(), 4096);
    drop(conn);
    round_trip(&url, &patterned_body(100_000)).await;
    // Exactly one frame's worth, and one byte more.
    round_trip(&url, &patterned_body(4096 - 8)).await;
    round_trip(&url, &patterned_body(4096 - 7)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_round_trips_with_server_configured_small_frame_max() {
    // 8192, not 4096: lapin never answers a tune with less than 8192 (its FRAME_MIN_SIZE,
    // from RabbitMQ's spec file) unless the URL asks for less, so with a 4096 server it
    // would send tune-ok 8192 and be refused with 530.
    let Some(broker) = start_broker_with(|c| c.frame_max = 8192).await else {
        return;
    };
    let conn = broker.connect().await;
    assert_eq!(conn.configuration().frame_max(), 8192);
    drop(conn);
    round_trip(&broker.url, &patterned_body(300_000)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_splits_deliveries_to_fit_negotiated_frame_max() {
    let broker = start_broker().await;
    let body = patterned_body(20_000);
    // The raw client is another connection: the queue cannot be exclusive.
    let shared = unique_name("q-frames");
    let pub_conn = broker.connect().await;
    let pub_ch = confirm_channel(&pub_conn).await;
    declare_queue(&pub_ch, &shared).await;
    publish_confirmed(&pub_ch, "", &shared, &body, BasicProperties::default()).await;

    let (mut raw, tune) =
        RawConn::handshake_to_tune(broker.addr, "PLAIN", plain_response("guest", "guest")).await;
    raw.send_tune_ok(tune.channel_max, 4096, 0).await;
    raw.send_open("/").await;
    raw.expect_open_ok().await;
    raw.open_channel(1).await;
    raw.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: shared.as_str().into(),
            no_ack: true,
        })),
    )
    .await;
    match raw.read_method().await {
        (1, AMQPClass::Basic(basic::AMQPMethod::GetOk(_))) => {}
        other => panic!("expected basic.get-ok, got {other:?}"),
    }
    let header = match raw.read_frame().await {
        AMQPFrame::Header(1, header) => header,
        other => panic!("expected a content header, got {other:?}"),
    };
    assert_eq!(header.body_size, body.len() as u64);
    let mut received = Vec::new();
    while received.len() < body.len() {
        match raw.read_frame().await {
            AMQPFrame::Body(1, chunk) => {
                assert!(
                    chunk.len() <= 4096 - 8,
                    "body frame of {} bytes exceeds frame_max 4096",
                    chunk.len()
                );
                received.extend_from_slice(&chunk);
            }
            other => panic!("expected a body frame, got {other:?}"),
        }
    }
    assert!(received == body, "body differs");
    delete_queue(&pub_ch, &shared).await;
}

fn every_property() -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("string".into(), AMQPValue::LongString("value".into()));
    BasicProperties::default()
        .with_content_type("application/octet-stream".into())
        .with_content_encoding("gzip".into())
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_priority(7)
        .with_correlation_id("corr-1".into())
        .with_reply_to("reply-queue".into())
        .with_expiration("600000".into())
        .with_message_id("msg-1".into())
        .with_timestamp(1_700_000_000)
        .with_type("kind-1".into())
        .with_user_id("guest".into())
        .with_app_id("itest".into())
        .with_cluster_id("cluster-1".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_basic_properties_round_trip() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let queue = declare_temp_queue(&ch).await;
    let sent = every_property();
    publish_confirmed(&ch, "", &queue, b"props", sent.clone()).await;
    let got = within(
        "basic.get-ok",
        ch.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("get")
    .expect("a message");
    assert_eq!(got.delivery.properties, sent);

    let mut consumer = within(
        "basic.consume-ok",
        ch.basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("consume");
    publish_confirmed(&ch, "", &queue, b"props", sent.clone()).await;
    assert_eq!(next_delivery(&mut consumer).await.properties, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_id_must_match_the_authenticated_user() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let mut events = events(&conn);
    let ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let queue = declare_temp_queue(&ch).await;
    publish_with(
        &ch,
        "",
        &queue,
        b"spoof",
        BasicProperties::default().with_user_id("someone-else".into()),
    )
    .await;
    expect_error_event(&mut events, 406).await;
}

fn every_field_type() -> FieldTable {
    let mut nested = FieldTable::default();
    nested.insert("inner".into(), AMQPValue::LongString("deep".into()));
    nested.insert("n".into(), AMQPValue::LongInt(-5));
    let mut t = FieldTable::default();
    t.insert("bool".into(), AMQPValue::Boolean(true));
    t.insert("i8".into(), AMQPValue::ShortShortInt(-8));
    t.insert("u8".into(), AMQPValue::ShortShortUInt(200));
    t.insert("i16".into(), AMQPValue::ShortInt(-1600));
    t.insert("u16".into(), AMQPValue::ShortUInt(60000));
    t.insert("i32".into(), AMQPValue::LongInt(-320_000));
    t.insert("u32".into(), AMQPValue::LongUInt(4_000_000_000));
    t.insert("i64".into(), AMQPValue::LongLongInt(-6_400_000_000_000));
    t.insert("f32".into(), AMQPValue::Float(1.5));
    t.insert("f64".into(), AMQPValue::Double(-2.25e100));
    t.insert(
        "decimal".into(),
        AMQPValue::DecimalValue(DecimalValue {
            scale: 2,
            value: 12345,
        }),
    );
    t.insert(
        "longstr".into(),
        AMQPValue::LongString(LongString::from(vec![0u8, 1, 2, 255])),
    );
    t.insert(
        "array".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::LongInt(1),
            AMQPValue::LongString("two".into()),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Boolean(false)])),
            AMQPValue::Void,
        ])),
    );
    t.insert("timestamp".into(), AMQPValue::Timestamp(1_700_000_000));
    t.insert("table".into(), AMQPValue::FieldTable(nested));
    t.insert("void".into(), AMQPValue::Void);
    t.insert(
        "bytes".into(),
        AMQPValue::ByteArray(ByteArray::from(vec![9u8, 8, 7, 0])),
    );
    t.insert(
        "empty-array".into(),
        AMQPValue::FieldArray(FieldArray::default()),
    );
    t.insert(
        "empty-table".into(),
        AMQPValue::FieldTable(FieldTable::default()),
    );
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_with_every_field_type_round_trip() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let queue = declare_temp_queue(&ch).await;
    let headers = every_field_type();
    publish_confirmed(
        &ch,
        "",
        &queue,
        b"typed",
        BasicProperties::default().with_headers(headers.clone()),
    )
    .await;
    let got = within(
        "basic.get-ok",
        ch.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("get")
    .expect("a message");
    let got_headers = got.delivery.properties.headers().clone().expect("headers");
    for (key, value) in &headers {
        assert_eq!(got_headers.inner().get(key), Some(value), "header {key}");
    }
    assert_eq!(got_headers, headers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_above_max_size_is_precondition_failed() {
    let Some(broker) = start_broker_with(|c| c.max_message_bytes = 1024 * 1024).await else {
        return;
    };
    let conn = broker.connect().await;
    let mut events = events(&conn);
    let ch = confirm_channel(&conn).await;
    let queue = declare_temp_queue(&ch).await;
    // Exactly the limit is fine.
    publish_confirmed(
        &ch,
        "",
        &queue,
        &patterned_body(1024 * 1024),
        BasicProperties::default(),
    )
    .await;
    assert_eq!(
        get_body(&ch, &queue).await.map(|b| b.len()),
        Some(1024 * 1024)
    );
    publish(&ch, "", &queue, &patterned_body(1024 * 1024 + 1)).await;
    let text = expect_error_event(&mut events, 406).await;
    assert!(
        text.contains("larger than configured max size"),
        "reply text: {text}"
    );
    assert_broker_healthy(&broker).await;
}
