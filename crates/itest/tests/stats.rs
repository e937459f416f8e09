//! Statistics (issue 11): what a client's actions do to the per-queue, per-connection and
//! node figures the management API will show. The figures are read in-process from
//! `warren-core` (as the management API will); everything else goes over TCP through lapin.
//! A passive queue.declare is answered by the queue actor after it published its metrics,
//! so a figure read after one is exact; `eventually` is used only for the requeue that
//! follows a channel close (nothing acknowledges it to the client).

use std::sync::Arc;

use warren_core::queue::metrics::QueueMetricsSnapshot;
use warren_core::VHost;
use warren_itest::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions,
};
use warren_itest::lapin::types::FieldTable;
use warren_itest::lapin::BasicProperties;
use warren_itest::*;

fn vhost_of(broker: &TestBroker) -> Arc<VHost> {
    broker
        .broker()
        .expect("in-process broker")
        .vhost("/")
        .expect("vhost /")
}

fn metrics(vhost: &VHost, queue: &str) -> QueueMetricsSnapshot {
    vhost.queue_info(queue).expect("queue listed").metrics
}

#[tokio::test]
async fn queue_figures_follow_publish_consume_ack_and_get() {
    if is_external() {
        return;
    }
    let broker = start_broker().await;
    let vhost = vhost_of(&broker);
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, "stats.q").await;
    for _ in 0..10 {
        publish_confirmed(&ch, "", "stats.q", &[7; 100], BasicProperties::default()).await;
    }
    assert_eq!(queue_counts(&ch, "stats.q").await, (10, 0));
    let m = metrics(&vhost, "stats.q");
    assert_eq!((m.publish, m.messages(), m.messages_ready), (10, 10, 10));
    assert_eq!(m.message_bytes(), 1000);

    let consuming = within("channel.open-ok", conn.create_channel())
        .await
        .unwrap();
    within(
        "basic.qos-ok",
        consuming.basic_qos(3, BasicQosOptions::default()),
    )
    .await
    .unwrap();
    let mut consumer = within(
        "basic.consume-ok",
        consuming.basic_consume(
            "stats.q".into(),
            "c1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    let first = next_delivery(&mut consumer).await;
    next_delivery(&mut consumer).await;
    next_delivery(&mut consumer).await;
    within("ack", first.ack(BasicAckOptions::default()))
        .await
        .unwrap();
    // The ack gave the consumer room for a fourth.
    next_delivery(&mut consumer).await;
    assert_eq!(queue_counts(&ch, "stats.q").await, (6, 1));
    let m = metrics(&vhost, "stats.q");
    assert_eq!(m.consumers, 1);
    assert_eq!((m.messages_ready, m.messages_unacknowledged), (6, 3));
    assert_eq!(
        (m.message_bytes_ready, m.message_bytes_unacknowledged),
        (600, 300)
    );
    assert_eq!((m.deliver, m.ack, m.deliver_get()), (4, 1, 4));

    let got = within(
        "basic.get-ok",
        ch.basic_get("stats.q".into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .unwrap();
    assert!(got.is_some());
    queue_counts(&ch, "stats.q").await;
    let m = metrics(&vhost, "stats.q");
    assert_eq!((m.get_no_ack, m.deliver_get(), m.messages()), (1, 5, 8));

    // Closing the consumer's channel puts its three deliveries back.
    within("channel.close-ok", consuming.close(200, "bye".into()))
        .await
        .unwrap();
    eventually("the deliveries are requeued", || async {
        let m = metrics(&vhost, "stats.q");
        m.messages_unacknowledged == 0 && m.consumers == 0
    })
    .await;
    let m = metrics(&vhost, "stats.q");
    assert_eq!((m.messages_ready, m.message_bytes_ready), (8, 800));

    let again = within(
        "basic.get-ok",
        ch.basic_get("stats.q".into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .unwrap()
    .expect("a message");
    assert!(again.delivery.redelivered);
    queue_counts(&ch, "stats.q").await;
    let m = metrics(&vhost, "stats.q");
    assert_eq!((m.get, m.redeliver, m.messages_unacknowledged), (1, 1, 1));

    let overview = broker.broker().unwrap().overview();
    assert_eq!(overview.connections, 1);
    assert_eq!(overview.channels, 1);
    assert_eq!(overview.queues, 1);
    assert_eq!(overview.messages(), 8);
    assert!(overview.exchanges >= 6, "{}", overview.exchanges);
    assert!(overview.resident_memory_bytes.is_some_and(|b| b > 0));
    assert!(overview.open_file_descriptors.is_some_and(|n| n > 0));
    broker.stop().await;
}

#[tokio::test]
async fn connection_figures_show_the_client_and_its_traffic() {
    if is_external() {
        return;
    }
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = within("channel.open-ok", conn.create_channel())
        .await
        .unwrap();
    let confirming = confirm_channel(&conn).await;
    let before = broker.broker().unwrap().connections.stats();
    assert_eq!(before.len(), 1);
    let c = &before[0];
    assert_eq!(c.channels, 2);
    assert_eq!(c.info.protocol, "AMQP 0-9-1");
    assert!(!c.info.tls);
    assert_eq!(c.info.user, "guest");
    assert_eq!(c.info.auth_mechanism, "PLAIN");
    assert!(c.info.frame_max > 0);
    assert!(c.info.connected_at_ms > 0);
    let product = c.info.client_properties.inner().get("product");
    assert!(product.is_some(), "{:?}", c.info.client_properties);
    assert!(c
        .info
        .client_properties
        .inner()
        .contains_key("capabilities"));
    // Protocol header, start-ok, tune-ok, open and two channel.opens at least.
    assert!(
        c.metrics.recv_cnt >= 1 && c.metrics.recv_oct > 8,
        "{:?}",
        c.metrics
    );
    assert!(
        c.metrics.send_cnt >= 1 && c.metrics.send_oct > 0,
        "{:?}",
        c.metrics
    );

    declare_queue(&ch, "stats.traffic").await;
    for _ in 0..5 {
        publish(&ch, "", "stats.traffic", &[1; 1000]).await;
    }
    // The declare-ok came after the publishes were read: they are counted.
    queue_counts(&ch, "stats.traffic").await;
    let after = broker
        .broker()
        .unwrap()
        .connections
        .connection_stats(c.info.id)
        .unwrap();
    assert!(
        after.metrics.recv_oct >= c.metrics.recv_oct + 5000,
        "{:?}",
        after.metrics
    );
    assert!(after.metrics.send_oct > c.metrics.send_oct);
    assert!(after.metrics.send_cnt > c.metrics.send_cnt);

    // Channels are asked of the connection task: what it answers follows what the client
    // saw (the deliveries below were written before the listing was handled).
    within("basic.qos-ok", ch.basic_qos(3, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut consumer = within(
        "basic.consume-ok",
        ch.basic_consume(
            "stats.traffic".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    for _ in 0..3 {
        next_delivery(&mut consumer).await;
    }
    let connections = &broker.broker().unwrap().connections;
    let channels = within("the channel list", connections.channels(c.info.id))
        .await
        .expect("the connection answers");
    assert_eq!(channels.len(), 2);
    let plain = channels.iter().find(|x| x.number == ch.id()).unwrap();
    assert_eq!((plain.prefetch_count, plain.consumer_count), (3, 1));
    assert_eq!(plain.messages_unacknowledged, 3);
    assert!(!plain.confirm && !plain.transactional);
    let other = channels
        .iter()
        .find(|x| x.number == confirming.id())
        .unwrap();
    assert!(other.confirm);
    assert_eq!(
        (other.consumer_count, other.messages_unacknowledged),
        (0, 0)
    );
    assert!(connections.channels(u64::MAX).await.is_none());
    broker.stop().await;
}
