//! RabbitMQ 3.x behaviours that clients' own test suites check (issue 9, items 7 and 10), each
//! pinned by a test that failed before the fix it names.

use warren_itest::amq_protocol::protocol::{connection, AMQPClass};
use warren_itest::*;

/// Bytes a client that still had publishes buffered keeps writing after connection.close.
const WRITES_AFTER_CLOSE_BYTES: usize = 4 * 1024 * 1024;
const BODY_FRAME_BYTES: usize = 4000;

/// After close-ok to a client's connection.close the broker keeps reading until the client
/// closes its side, as RabbitMQ does (issue 9, item 7: Warren closed its socket at once and a
/// client still flushing publishes got EPIPE / a reset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_is_drained_until_the_client_closes() {
    let broker = start_broker().await;
    let mut raw = broker.raw().await;
    raw.open_channel(1).await;
    raw.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    )
    .await;
    match raw.read_method().await {
        (0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => {}
        other => panic!("expected connection.close-ok, got {other:?}"),
    }
    let frame = raw_frame(FRAME_BODY, 1, &[0u8; BODY_FRAME_BYTES]);
    let mut late = Vec::with_capacity(WRITES_AFTER_CLOSE_BYTES + frame.len());
    while late.len() < WRITES_AFTER_CLOSE_BYTES {
        late.extend_from_slice(&frame);
    }
    if let Err(e) = raw.try_send(&late).await {
        panic!("the broker closed its socket after close-ok while the client still wrote: {e}");
    }
    raw.shutdown_write().await;
    raw.expect_eof().await;
}

/// A content header with no method before it is 505 UNEXPECTED_FRAME whatever its payload
/// (issue 9, item 10: Warren parsed it first and answered a payload it could not read with
/// 501 FRAME_ERROR).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_header_without_method_is_unexpected_frame() {
    let broker = start_broker().await;
    let mut raw = broker.raw().await;
    raw.open_channel(1).await;
    raw.send(&raw_frame(FRAME_HEADER, 1, &[0, 60, 0])).await;
    raw.expect_connection_close(505).await;
}
