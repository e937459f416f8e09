//! Connection handshake, authentication, tuning, heartbeats and connection-level methods.

use std::time::Duration;

use warren_itest::amq_protocol::protocol::{channel, connection, AMQPClass};
use warren_itest::amq_protocol::types::{AMQPValue, FieldTable};
use warren_itest::lapin::options::ChannelFlowOptions;
use warren_itest::lapin::ConnectionProperties;
use warren_itest::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_handshake_opens_connection() {
    let broker = start_broker().await;
    let mut raw = RawConn::connect(broker.addr).await;
    let start = raw.send_header_and_read_start().await;
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    assert!(
        raw.mechanisms.split(' ').any(|m| m == "PLAIN"),
        "mechanisms: {}",
        raw.mechanisms
    );
    raw.send_start_ok("PLAIN", plain_response("guest", "guest"))
        .await;
    let tune = raw.read_tune().await;
    assert!(tune.frame_max >= 4096, "frame_max {}", tune.frame_max);
    raw.send_tune_ok(tune.channel_max, tune.frame_max, 0).await;
    raw.send_open("/").await;
    raw.expect_open_ok().await;
    raw.open_channel(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqplain_handshake_opens_connection() {
    let broker = start_broker().await;
    let mut raw = RawConn::connect(broker.addr).await;
    raw.send_header_and_read_start().await;
    assert!(
        raw.mechanisms.split(' ').any(|m| m == "AMQPLAIN"),
        "mechanisms: {}",
        raw.mechanisms
    );
    raw.send_start_ok("AMQPLAIN", amqplain_response("guest", "guest"))
        .await;
    let tune = raw.read_tune().await;
    raw.send_tune_ok(tune.channel_max, tune.frame_max, 0).await;
    raw.send_open("/").await;
    raw.expect_open_ok().await;
    raw.open_channel(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqplain_with_wrong_password_is_refused() {
    let broker = start_broker().await;
    let mut raw = RawConn::connect(broker.addr).await;
    raw.send_header_and_read_start().await;
    raw.send_start_ok_with(
        auth_failure_close_properties(),
        "AMQPLAIN",
        amqplain_response("guest", "wrong"),
    )
    .await;
    raw.expect_connection_close(403).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_connects_and_opens_channels() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let ch = within("channel.open-ok", conn.create_channel())
            .await
            .expect("channel");
        ids.push(ch.id());
    }
    ids.dedup();
    assert_eq!(ids.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_lapin_gets_access_refused() {
    let broker = start_broker().await;
    let url = broker.url_with("guest", "not-the-password", "%2f", "");
    let result = try_connect(&url, ConnectionProperties::default()).await;
    expect_code(result, 403);
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_raw_with_capability_gets_close_403() {
    let broker = start_broker().await;
    let mut raw = RawConn::connect(broker.addr).await;
    raw.send_header_and_read_start().await;
    raw.send_start_ok_with(
        auth_failure_close_properties(),
        "PLAIN",
        plain_response("guest", "not-the-password"),
    )
    .await;
    let text = raw.expect_connection_close(403).await;
    assert!(text.starts_with("ACCESS_REFUSED"), "reply text: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_raw_without_capability_just_closes_socket() {
    let broker = start_broker().await;
    let mut raw = RawConn::connect(broker.addr).await;
    raw.send_header_and_read_start().await;
    raw.send_start_ok("PLAIN", plain_response("guest", "not-the-password"))
        .await;
    raw.expect_eof().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_users_can_log_in() {
    let Some(broker) = start_broker_with(|c| {
        c.users.push(warren_server::UserConfig {
            name: "alice".into(),
            password: "s3cret".into(),
            loopback_only: false,
        })
    })
    .await
    else {
        return;
    };
    let conn = connect(&broker.url_with("alice", "s3cret", "%2f", "")).await;
    within("channel.open-ok", conn.create_channel())
        .await
        .expect("channel");
    let result = try_connect(
        &broker.url_with("alice", "guest", "%2f", ""),
        ConnectionProperties::default(),
    )
    .await;
    expect_code(result, 403);
    // guest still works beside her.
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_gets_access_refused() {
    let broker = start_broker().await;
    let url = broker.url_with("nobody-here", "guest", "%2f", "");
    let result = try_connect(&url, ConnectionProperties::default()).await;
    expect_code(result, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sasl_mechanism_is_command_invalid() {
    let broker = start_broker().await;
    let mut raw = RawConn::connect(broker.addr).await;
    raw.send_header_and_read_start().await;
    raw.send_start_ok_with(
        auth_failure_close_properties(),
        "NOT-A-MECHANISM",
        plain_response("guest", "guest"),
    )
    .await;
    raw.expect_close_or_eof(503).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_vhost_is_not_allowed() {
    let broker = start_broker().await;
    let url = broker.url_with("guest", "guest", "no-such-vhost", "");
    let result = try_connect(&url, ConnectionProperties::default()).await;
    expect_code(result, 530);

    let (mut raw, tune) =
        RawConn::handshake_to_tune(broker.addr, "PLAIN", plain_response("guest", "guest")).await;
    raw.send_tune_ok(tune.channel_max, tune.frame_max, 0).await;
    raw.send_open("no-such-vhost").await;
    raw.expect_connection_close(530).await;
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tune_ok_frame_max_above_server_offer_is_not_allowed() {
    let broker = start_broker().await;
    let (mut raw, tune) =
        RawConn::handshake_to_tune(broker.addr, "PLAIN", plain_response("guest", "guest")).await;
    assert!(
        tune.frame_max > 0,
        "test assumes the server limits frame_max"
    );
    raw.send_tune_ok(tune.channel_max, tune.frame_max + 1, 0)
        .await;
    raw.send_open("/").await;
    raw.expect_close_or_eof(530).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tune_ok_channel_max_above_server_offer_is_not_allowed() {
    let broker = start_broker().await;
    let (mut raw, tune) =
        RawConn::handshake_to_tune(broker.addr, "PLAIN", plain_response("guest", "guest")).await;
    assert!(
        tune.channel_max > 0 && tune.channel_max < u16::MAX,
        "test assumes the server limits channel_max"
    );
    raw.send_tune_ok(tune.channel_max + 1, tune.frame_max, 0)
        .await;
    raw.send_open("/").await;
    raw.expect_close_or_eof(530).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tune_ok_frame_max_below_minimum_is_not_allowed() {
    let broker = start_broker().await;
    let (mut raw, tune) =
        RawConn::handshake_to_tune(broker.addr, "PLAIN", plain_response("guest", "guest")).await;
    raw.send_tune_ok(tune.channel_max, 4095, 0).await;
    raw.send_open("/").await;
    raw.expect_close_or_eof(530).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tune_ok_with_minimum_frame_max_is_accepted() {
    let broker = start_broker().await;
    let (mut raw, tune) =
        RawConn::handshake_to_tune(broker.addr, "PLAIN", plain_response("guest", "guest")).await;
    raw.send_tune_ok(tune.channel_max, 4096, 0).await;
    raw.send_open("/").await;
    raw.expect_open_ok().await;
    raw.open_channel(1).await;
}

/// channel_max limits how many channels are open, not the channel numbers (issue 9, item 7:
/// Warren refused channel 65535 when channel_max was 2047, which RabbitMQ accepts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_max_counts_open_channels_not_numbers() {
    let broker = start_broker().await;
    let (mut raw, tune) =
        RawConn::handshake_to_tune(broker.addr, "PLAIN", plain_response("guest", "guest")).await;
    raw.send_tune_ok(2, tune.frame_max, 0).await;
    raw.send_open("/").await;
    raw.expect_open_ok().await;
    raw.open_channel(u16::MAX).await;
    raw.open_channel(7).await;
    raw.send(&channel_open_frame(1)).await;
    let text = raw.expect_connection_close(530).await;
    assert!(
        text.contains("number of channels opened (2) has reached the negotiated channel_max (2)"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_dropped_after_missed_heartbeats() {
    let broker = start_broker().await;
    let mut raw = RawConn::handshake_with_heartbeat(broker.addr, 1).await;
    // We never send anything: the broker must give up on us after ~2 intervals.
    let deadline = Duration::from_secs(10);
    match tokio::time::timeout(deadline, raw.expect_eof()).await {
        Ok(()) => {}
        Err(_) => panic!("a silent client with heartbeat=1 was not dropped within {deadline:?}"),
    }
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_sends_heartbeats_and_keeps_a_live_client() {
    let broker = start_broker().await;
    let mut raw = RawConn::handshake_with_heartbeat(broker.addr, 1).await;
    // Answer three of the broker's heartbeats; the connection must stay usable.
    for _ in 0..3 {
        match raw.read_frame().await {
            warren_itest::amq_protocol::frame::AMQPFrame::Heartbeat => {}
            other => panic!("expected a heartbeat, got {other:?}"),
        }
        raw.send(&raw_frame(FRAME_HEARTBEAT, 0, &[])).await;
    }
    raw.open_channel(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_heartbeat_is_offered_in_tune() {
    let Some(broker) = start_broker_with(|c| c.heartbeat_secs = 1).await else {
        return;
    };
    let (mut raw, tune) =
        RawConn::handshake_to_tune(broker.addr, "PLAIN", plain_response("guest", "guest")).await;
    assert_eq!(tune.heartbeat, 1);
    raw.send_tune_ok(tune.channel_max, tune.frame_max, tune.heartbeat)
        .await;
    raw.send_open("/").await;
    raw.expect_open_ok().await;
    match raw.read_frame().await {
        warren_itest::amq_protocol::frame::AMQPFrame::Heartbeat => {}
        other => panic!("expected a heartbeat, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_limits_are_offered_in_tune() {
    let Some(broker) = start_broker_with(|c| {
        c.frame_max = 8192;
        c.channel_max = 7;
    })
    .await
    else {
        return;
    };
    let (_raw, tune) =
        RawConn::handshake_to_tune(broker.addr, "PLAIN", plain_response("guest", "guest")).await;
    assert_eq!((tune.frame_max, tune.channel_max), (8192, 7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_gets_close_ok_and_socket_closes() {
    let broker = start_broker().await;
    let mut raw = broker.raw().await;
    raw.open_channel(1).await;
    let reply = raw
        .call(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            })),
        )
        .await;
    assert!(
        matches!(
            reply,
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))
        ),
        "expected connection.close-ok, got {reply:?}"
    );
    // The client closes the socket after close-ok (RabbitMQ waits for it to).
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_close_gets_close_ok_and_channel_can_reopen() {
    let broker = start_broker().await;
    let mut raw = broker.raw().await;
    raw.open_channel(1).await;
    let reply = raw
        .call(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            })),
        )
        .await;
    assert!(
        matches!(reply, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))),
        "expected channel.close-ok, got {reply:?}"
    );
    raw.open_channel(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_flow_active_is_acknowledged() {
    let broker = start_broker().await;
    let (_conn, ch) = broker.channel().await;
    let active = within(
        "channel.flow-ok",
        ch.channel_flow(ChannelFlowOptions { active: true }),
    )
    .await
    .expect("channel.flow");
    assert!(active);
}

/// RabbitMQ answers a client's channel.flow(active=false) with 540 NOT_IMPLEMENTED, which
/// closes the connection (issue 9, item 7: Warren paused the channel's deliveries instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_flow_inactive_is_not_implemented() {
    let broker = start_broker().await;
    let mut raw = broker.raw().await;
    raw.open_channel(1).await;
    raw.send_method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow { active: false })),
    )
    .await;
    let text = raw.expect_connection_close(540).await;
    assert!(text.contains("active=false"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_properties_advertise_capabilities() {
    let broker = start_broker().await;
    let mut raw = RawConn::connect(broker.addr).await;
    raw.send_header_and_read_start().await;
    let props = &raw.server_properties;
    for key in ["product", "version", "platform"] {
        assert!(
            props.contains_key(key),
            "server_properties lacks {key}: {props:?}"
        );
    }
    let capabilities = match props.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(t)) => t.clone(),
        other => panic!("capabilities is not a table: {other:?}"),
    };
    for capability in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "per_consumer_qos",
        "authentication_failure_close",
    ] {
        assert_eq!(
            capabilities.inner().get(capability),
            Some(&AMQPValue::Boolean(true)),
            "capability {capability} missing or false in {capabilities:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_closes_idle_socket() {
    let Some(broker) =
        start_broker_with(|c| c.handshake_timeout = Duration::from_millis(500)).await
    else {
        return;
    };
    let mut raw = RawConn::connect(broker.addr).await;
    raw.send_header_and_read_start().await;
    // We never answer connection.start.
    raw.expect_eof().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_connections_with_connection_forced() {
    let Some(broker) = start_broker_with(|_| {}).await else {
        return;
    };
    let mut raw = broker.raw().await;
    let stop = tokio::spawn(broker.stop());
    raw.expect_connection_close(320).await;
    within("broker shutdown", stop)
        .await
        .expect("shutdown task");
}

fn auth_failure_close_properties() -> FieldTable {
    let mut capabilities = FieldTable::default();
    capabilities.insert(
        "authentication_failure_close".into(),
        AMQPValue::Boolean(true),
    );
    let mut props = FieldTable::default();
    props.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    props
}
