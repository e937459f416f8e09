//! Publisher confirms (confirm.select, basic.ack to the publisher) and transactions
//! (tx.select/commit/rollback), and the rule that a channel is one or the other.

use warren_itest::amq_protocol::types::FieldTable;
use warren_itest::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    ConfirmSelectOptions,
};
use warren_itest::lapin::{BasicProperties, Confirmation};
use warren_itest::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_publishes_are_all_acked() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    assert!(ch.status().confirm());
    let queue = declare_temp_queue(&ch).await;
    let mut confirms = Vec::new();
    for i in 0..20 {
        let confirm = within(
            "basic.publish",
            ch.basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                format!("c{i}").as_bytes(),
                BasicProperties::default(),
            ),
        )
        .await
        .expect("publish");
        confirms.push(confirm);
    }
    let returned = within("all confirms", ch.wait_for_confirms())
        .await
        .expect("wait_for_confirms");
    assert!(returned.is_empty());
    for confirm in confirms {
        let confirmation = within("confirm", confirm).await.expect("confirm");
        assert!(
            matches!(confirmation, Confirmation::Ack(None)),
            "got {confirmation:?}"
        );
    }
    assert_eq!(queue_counts(&ch, &queue).await, (20, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_publish_is_still_acked() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let confirm = within(
        "basic.publish",
        ch.basic_publish(
            "amq.direct".into(),
            unique_name("nowhere").as_str().into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        ),
    )
    .await
    .expect("publish");
    let confirmation = within("confirm", confirm).await.expect("confirm");
    assert!(
        matches!(confirmation, Confirmation::Ack(None)),
        "got {confirmation:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_without_confirm_mode_are_not_confirmed() {
    let broker = start_broker().await;
    let (_conn, ch) = broker.channel().await;
    let queue = declare_temp_queue(&ch).await;
    let confirm = within(
        "basic.publish",
        ch.basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        ),
    )
    .await
    .expect("publish");
    let confirmation = within("confirm", confirm).await.expect("confirm");
    assert!(
        matches!(confirmation, Confirmation::NotRequested),
        "got {confirmation:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_rollback_discards_and_commit_delivers_publishes() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let (observer_conn, observer) = broker.channel().await;
    let ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let queue = unique_name("q-tx");
    declare_queue(&ch, &queue).await;
    within("tx.select-ok", ch.tx_select())
        .await
        .expect("tx.select");

    publish(&ch, "", &queue, b"rolled-back-1").await;
    publish(&ch, "", &queue, b"rolled-back-2").await;
    // A round trip on the same channel, so the publishes have at least reached the broker.
    queue_counts(&ch, &queue).await;
    assert_eq!(
        queue_counts(&observer, &queue).await,
        (0, 0),
        "uncommitted publishes are invisible"
    );
    within("tx.rollback-ok", ch.tx_rollback())
        .await
        .expect("tx.rollback");
    assert_eq!(queue_counts(&observer, &queue).await, (0, 0));

    publish(&ch, "", &queue, b"committed").await;
    // commit-ok comes once the committed messages are in their queues.
    within("tx.commit-ok", ch.tx_commit())
        .await
        .expect("tx.commit");
    assert_eq!(queue_counts(&observer, &queue).await, (1, 0));
    assert_eq!(
        get_body(&observer, &queue).await.as_deref(),
        Some(&b"committed"[..])
    );
    delete_queue(&observer, &queue).await;
    drop(observer_conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_rollback_discards_acks_and_commit_applies_them() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let pub_ch = confirm_channel(&conn).await;
    let queue = declare_temp_queue(&pub_ch).await;
    publish_confirmed(
        &pub_ch,
        "",
        &queue,
        b"acked-in-tx",
        BasicProperties::default(),
    )
    .await;

    let ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    within("tx.select-ok", ch.tx_select())
        .await
        .expect("tx.select");
    let message = within(
        "basic.get-ok",
        ch.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .expect("get")
    .expect("a message");
    let tag = message.delivery.delivery_tag;
    within("basic.ack", ch.basic_ack(tag, BasicAckOptions::default()))
        .await
        .expect("ack");
    within("tx.rollback-ok", ch.tx_rollback())
        .await
        .expect("tx.rollback");
    // The rolled-back ack is forgotten: the message is still unacked and can be acked again.
    within("basic.ack", ch.basic_ack(tag, BasicAckOptions::default()))
        .await
        .expect("ack");
    within("tx.commit-ok", ch.tx_commit())
        .await
        .expect("tx.commit");
    within("channel.close-ok", ch.close(200, "bye".into()))
        .await
        .expect("close");
    // Committed: nothing comes back when the channel closes.
    assert_eq!(queue_counts(&pub_ch, &queue).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_ack_leaves_message_to_be_requeued_on_close() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let pub_ch = confirm_channel(&conn).await;
    let queue = declare_temp_queue(&pub_ch).await;
    publish_confirmed(&pub_ch, "", &queue, b"kept", BasicProperties::default()).await;

    let ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    within("tx.select-ok", ch.tx_select())
        .await
        .expect("tx.select");
    let message = within(
        "basic.get-ok",
        ch.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .expect("get")
    .expect("a message");
    within(
        "basic.ack",
        ch.basic_ack(message.delivery.delivery_tag, BasicAckOptions::default()),
    )
    .await
    .expect("ack");
    within("tx.rollback-ok", ch.tx_rollback())
        .await
        .expect("tx.rollback");
    within("channel.close-ok", ch.close(200, "bye".into()))
        .await
        .expect("close");

    let ch2 = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let mut consumer = within(
        "basic.consume-ok",
        ch2.basic_consume(
            queue.as_str().into(),
            "heir".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("consume");
    let delivery = next_delivery(&mut consumer).await;
    assert_eq!(delivery.data, b"kept");
    assert!(delivery.redelivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_commit_without_select_is_precondition_failed() {
    let broker = start_broker().await;
    let (conn, ch) = broker.channel().await;
    expect_code(within("tx.commit", ch.tx_commit()).await, 406);
    let ch2 = within("channel", conn.create_channel())
        .await
        .expect("channel");
    expect_code(within("tx.rollback", ch2.tx_rollback()).await, 406);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_select_on_tx_channel_is_precondition_failed() {
    let broker = start_broker().await;
    let (_conn, ch) = broker.channel().await;
    within("tx.select-ok", ch.tx_select())
        .await
        .expect("tx.select");
    let result = within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await;
    expect_code(result, 406);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_select_on_confirm_channel_is_precondition_failed() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let result = within("tx.select", ch.tx_select()).await;
    expect_code(result, 406);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_select_twice_is_fine() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    within(
        "confirm.select-ok",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("second confirm.select");
    let queue = declare_temp_queue(&ch).await;
    publish_confirmed(&ch, "", &queue, b"x", BasicProperties::default()).await;
}
