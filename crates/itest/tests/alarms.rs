//! Memory and disk alarms through real clients: a publishing connection gets
//! connection.blocked and is no longer read while an alarm is raised, consumers keep
//! draining, and after connection.unblocked the held publishes go through.

use std::collections::BTreeMap;

use futures_lite::StreamExt;
use warren_itest::amq_protocol::protocol::{basic, confirm, connection, AMQPClass};
use warren_itest::amq_protocol::types::{AMQPValue, FieldTable as RawTable};
use warren_itest::lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use warren_itest::lapin::types::{FieldTable, ShortString};
use warren_itest::lapin::{BasicProperties, Event};
use warren_itest::*;

/// The next blocked/unblocked notification (other events are skipped).
async fn next_block_event(events: &mut Events) -> Event {
    loop {
        match within("connection.blocked / unblocked", events.next()).await {
            Some(e @ (Event::ConnectionBlocked(_) | Event::ConnectionUnblocked)) => return e,
            Some(_) => continue,
            None => panic!("event stream ended"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_sees_blocked_and_unblocked_and_consumers_keep_draining() {
    let Some(broker) = start_broker_with(|_| {}).await else {
        return;
    };
    let alarms = broker.handle().expect("in-process broker").alarms().clone();
    let publisher = broker.connect().await;
    let mut publisher_events = events(&publisher);
    let pch = confirm_channel(&publisher).await;
    let consumer = broker.connect().await;
    let cch = consumer.create_channel().await.expect("channel");
    let queue = unique_name("alarmed");
    declare_queue(&cch, &queue).await;

    for (memory, reason) in [(true, "low on memory"), (false, "low on disk space")] {
        let before = format!("before {reason}");
        publish_confirmed(
            &pch,
            "",
            &queue,
            before.as_bytes(),
            BasicProperties::default(),
        )
        .await;
        if memory {
            alarms.set_memory_limit_bytes(1);
        } else {
            alarms.set_disk_free_limit_bytes(u64::MAX);
        }
        alarms.check();
        match next_block_event(&mut publisher_events).await {
            Event::ConnectionBlocked(r) => assert_eq!(r, reason),
            other => panic!("expected connection.blocked, got {other:?}"),
        }
        // lapin holds publishes while blocked; this one goes out after unblocked.
        let (ch, q, body) = (pch.clone(), queue.clone(), reason.as_bytes().to_vec());
        let held = tokio::spawn(async move {
            ch.basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await
            .expect("basic.publish")
            .await
            .expect("confirm")
        });
        // The consumer's connection never published: it is not blocked and drains the queue.
        let mut deliveries = within(
            "basic.consume-ok",
            cch.basic_consume(
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
        .expect("basic.consume");
        assert_eq!(next_delivery(&mut deliveries).await.data, before.as_bytes());
        alarms.set_memory_limit_bytes(u64::MAX);
        alarms.set_disk_free_limit_bytes(0);
        alarms.check();
        match next_block_event(&mut publisher_events).await {
            Event::ConnectionUnblocked => {}
            other => panic!("expected connection.unblocked, got {other:?}"),
        }
        within("the held publish's confirm", held)
            .await
            .expect("publisher task");
        assert_eq!(next_delivery(&mut deliveries).await.data, reason.as_bytes());
        within(
            "basic.cancel-ok",
            cch.basic_cancel(deliveries.tag().as_str().into(), Default::default()),
        )
        .await
        .expect("basic.cancel");
    }
    assert_broker_healthy(&broker).await;
}

fn publish_message(raw_channel: u16, queue: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes = publish_frame(raw_channel, "", queue);
    bytes.extend(header_frame(
        raw_channel,
        body.len() as u64,
        BasicProperties::default(),
    ));
    bytes.extend(body_frame(raw_channel, body));
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_connection_is_not_read_until_the_alarm_clears() {
    let Some(broker) = start_broker_with(|_| {}).await else {
        return;
    };
    let alarms = broker.handle().expect("in-process broker").alarms().clone();
    let (_keeper, ch) = broker.channel().await;
    let queue = declare_temp_queue(&ch).await;

    let mut raw = RawConn::connect(broker.addr).await;
    raw.send_header_and_read_start().await;
    let capabilities = RawTable::from(BTreeMap::from([(
        ShortString::from("connection.blocked"),
        AMQPValue::Boolean(true),
    )]));
    let client = RawTable::from(BTreeMap::from([(
        ShortString::from("capabilities"),
        AMQPValue::FieldTable(capabilities),
    )]));
    raw.send_start_ok_with(client, "PLAIN", plain_response("guest", "guest"))
        .await;
    let tune = raw.read_tune().await;
    raw.send_tune_ok(tune.channel_max, tune.frame_max, 0).await;
    raw.send_open("/").await;
    raw.expect_open_ok().await;
    raw.open_channel(1).await;
    raw.call(
        1,
        AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false,
        })),
    )
    .await;
    raw.send(&publish_message(1, &queue, b"one")).await;
    match raw.read_method().await {
        (1, AMQPClass::Basic(basic::AMQPMethod::Ack(ack))) => assert_eq!(ack.delivery_tag, 1),
        other => panic!("expected basic.ack, got {other:?}"),
    }

    alarms.set_memory_limit_bytes(1);
    alarms.check();
    match raw.read_method().await {
        (0, AMQPClass::Connection(connection::AMQPMethod::Blocked(b))) => {
            assert_eq!(b.reason.as_str(), "low on memory")
        }
        other => panic!("expected connection.blocked, got {other:?}"),
    }
    raw.send(&publish_message(1, &queue, b"two")).await;
    // Another connection's round trips pass while the blocked one's publish waits unread.
    for _ in 0..3 {
        assert_eq!(queue_counts(&ch, &queue).await.0, 1);
    }
    alarms.set_memory_limit_bytes(u64::MAX);
    alarms.check();
    match raw.read_method().await {
        (0, AMQPClass::Connection(connection::AMQPMethod::Unblocked(_))) => {}
        other => panic!("expected connection.unblocked, got {other:?}"),
    }
    match raw.read_method().await {
        (1, AMQPClass::Basic(basic::AMQPMethod::Ack(ack))) => assert_eq!(ack.delivery_tag, 2),
        other => panic!("expected basic.ack for the held publish, got {other:?}"),
    }
    assert_eq!(queue_counts(&ch, &queue).await.0, 2);
}
