//! Flow control: a queue whose consumers fall behind makes pure publishers wait (as
//! RabbitMQ's credit flow does) instead of growing its backlog without bound.

use std::time::Duration;

use warren_itest::lapin::options::{BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use warren_itest::lapin::types::FieldTable;
use warren_itest::lapin::BasicProperties;
use warren_itest::*;

const MESSAGES: u32 = 50_000;
/// FLOW_HIGH_MESSAGES (5,000) plus a queue inbox (4,096) plus what was in flight.
const BACKLOG_BOUND: u32 = 12_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_with_lagging_consumers_holds_back_publishers() {
    let Some(broker) = start_broker_with(|_| {}).await else {
        return;
    };
    let consumer_conn = broker.connect().await;
    let ch = consumer_conn.create_channel().await.expect("channel");
    let queue = unique_name("flow");
    declare_queue(&ch, &queue).await;
    // A consumer that takes one message and never acks: the backlog can only grow.
    ch.basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos");
    let consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "slow".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");

    let publisher = broker.connect().await;
    let pch = publisher.create_channel().await.expect("channel");
    let target = queue.clone();
    let publishing = tokio::spawn(async move {
        for i in 0..MESSAGES {
            pch.basic_publish(
                "".into(),
                target.as_str().into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish");
        }
        pch
    });
    // While the consumer lags, the backlog stays near the threshold (the publisher's reads
    // are held; the rest waits in socket buffers).
    let probe = broker.connect().await;
    let pr = probe.create_channel().await.expect("channel");
    let mut peak = 0;
    // 1.5 s: without flow control a lapin publisher (about 20k msg/s here) passes the
    // bound well within it.
    for _ in 0..30 {
        let (ready, _) = queue_counts(&pr, &queue).await;
        peak = peak.max(ready);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(peak > 0, "the publisher got nothing through");
    assert!(
        peak <= BACKLOG_BOUND,
        "backlog grew to {peak} while the only consumer held its delivery"
    );
    // Without consumers the queue is being filled on purpose: everything goes in.
    drop(consumer);
    ch.close(200, "bye".into()).await.expect("close");
    let pch = within("all publishes", publishing)
        .await
        .expect("publisher task");
    eventually("all messages to be in the queue", || {
        let pr = pr.clone();
        let queue = queue.clone();
        async move { queue_counts(&pr, &queue).await.0 == MESSAGES }
    })
    .await;
    drop(pch);
    delete_queue(&pr, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_ack_consumer_that_stops_reading_holds_a_bounded_backlog() {
    // Pins: a no-ack consumer that never read its socket pulled the whole queue (paged-out
    // messages included) into its connection's output buffer.
    use warren_itest::amq_protocol::frame::AMQPFrame;
    use warren_itest::amq_protocol::protocol::{basic, AMQPClass};
    const MESSAGES: usize = 30_000;
    const BODY_BYTES: usize = 1_000;
    let broker = start_broker().await;
    let (_conn, ch) = broker.channel().await;
    let queue = unique_name("slow-no-ack");
    declare_queue(&ch, &queue).await;
    let confirmed = confirm_channel(&_conn).await;
    let body = vec![b'x'; BODY_BYTES];
    let mut confirms = Vec::with_capacity(MESSAGES);
    for _ in 0..MESSAGES {
        confirms.push(
            confirmed
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    Default::default(),
                    &body,
                    Default::default(),
                )
                .await
                .expect("publish"),
        );
    }
    for c in confirms {
        within("confirm", c).await.expect("confirm");
    }

    // A small receive window, so what the kernel holds is known: the broker's send buffer
    // (at most tcp_wmem's maximum) and this one.
    const RECV_BUFFER_BYTES: u32 = 64 * 1024;
    let mut slow = RawConn::connect_with_recv_buffer(broker.addr, RECV_BUFFER_BYTES).await;
    slow.send_header_and_read_start().await;
    slow.send_start_ok("PLAIN", plain_response("guest", "guest"))
        .await;
    let tune = slow.read_tune().await;
    slow.send_tune_ok(tune.channel_max, tune.frame_max, 0).await;
    slow.send_open("/").await;
    slow.expect_open_ok().await;
    slow.open_channel(1).await;
    slow.call(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: queue.as_str().into(),
            consumer_tag: "slow".into(),
            no_local: false,
            no_ack: true,
            exclusive: false,
            nowait: false,
            arguments: Default::default(),
        })),
    )
    .await;
    // Without a bound the whole queue goes at once. With one, what left the queue is the
    // connection's budget (Warren: 4 MiB) plus what the kernel buffers (the broker's send
    // buffer, at most tcp_wmem's maximum, and our receive buffer, which Linux doubles).
    let kernel_bytes = tcp_buffer_max("tcp_wmem") + 2 * RECV_BUFFER_BYTES as usize;
    // (Frames add about 100 bytes to each 1,000-byte body.)
    let allowed = (4 * 1024 * 1024 + kernel_bytes) / BODY_BYTES;
    // Asked several times: each answer comes after any resume the connection sent before it.
    for _ in 0..10 {
        let (ready, _) = queue_counts(&ch, &queue).await;
        assert!(
            ready as usize + allowed >= MESSAGES && ready > 0,
            "{ready} of {MESSAGES} left in the queue: the slow consumer took more than \
             the budget and socket buffers ({allowed} messages)"
        );
    }
    // Once the client reads, the queue resumes and everything arrives.
    let mut delivered = 0;
    while delivered < MESSAGES {
        if let AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Deliver(_))) =
            slow.read_frame().await
        {
            delivered += 1;
        }
    }
    assert_eq!(queue_counts(&ch, &queue).await.0, 0);
}

/// The largest buffer the kernel may give a TCP socket (`net.ipv4.tcp_wmem`).
fn tcp_buffer_max(name: &str) -> usize {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
        .unwrap_or(4 * 1024 * 1024)
}
