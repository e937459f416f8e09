//! Queues: declare (counts, server names, equivalence), purge, delete with conditions, and the
//! lifetimes of exclusive and auto-delete queues.

use warren_itest::amq_protocol::types::{AMQPValue, FieldTable};
use warren_itest::futures_lite::StreamExt;
use warren_itest::lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use warren_itest::lapin::BasicProperties;
use warren_itest::*;

fn ttl_args(ms: i32) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(ms));
    args
}

async fn consume(ch: &lapin::Channel, queue: &str, tag: &str) -> lapin::Consumer {
    within(
        "basic.consume-ok",
        ch.basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("basic.consume on {queue}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_ok_reports_message_and_consumer_counts() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let queue = unique_name("q-counts");
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    within(
        "queue.declare-ok",
        ch.queue_declare(queue.as_str().into(), exclusive, FieldTable::default()),
    )
    .await
    .expect("declare");
    for i in 0..3 {
        publish_confirmed(
            &ch,
            "",
            &queue,
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    // A non-passive redeclare reports the counts too.
    let declared = within(
        "queue.declare-ok",
        ch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("redeclare");
    assert_eq!(
        (declared.message_count(), declared.consumer_count()),
        (3, 0)
    );
    assert_eq!(declared.name().as_str(), queue);

    let idle = declare_temp_queue(&ch).await;
    let consumer_ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let _c1 = consume(&consumer_ch, &idle, "c1").await;
    let _c2 = consume(&consumer_ch, &idle, "c2").await;
    assert_eq!(queue_counts(&ch, &idle).await, (0, 2));
    assert_eq!(queue_counts(&ch, &queue).await, (3, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_named_queues_get_unique_amq_gen_names() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let a = declare_temp_queue(&ch).await;
    let b = declare_temp_queue(&ch).await;
    assert!(a.starts_with("amq.gen-"), "server-generated name: {a}");
    assert!(b.starts_with("amq.gen-"), "server-generated name: {b}");
    assert_ne!(a, b);
    // The generated name is usable like any other...
    publish_confirmed(&ch, "", &a, b"x", BasicProperties::default()).await;
    assert_eq!(get_body(&ch, &a).await.as_deref(), Some(&b"x"[..]));
    assert_eq!(queue_counts(&ch, &a).await, (0, 0));
    // ...except that a non-passive redeclare hits the reserved `amq.` prefix rule.
    let result = within(
        "queue.declare",
        ch.queue_declare(
            a.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    expect_code(result, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declaring_an_amq_prefixed_queue_is_access_refused() {
    let broker = start_broker().await;
    let (_conn, ch) = broker.channel().await;
    let result = within(
        "queue.declare",
        ch.queue_declare(
            "amq.itest".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    expect_code(result, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclare_with_different_arguments_is_precondition_failed() {
    let broker = start_broker().await;
    let (conn, ch) = broker.channel().await;
    let queue = unique_name("q-args");
    within(
        "queue.declare-ok",
        ch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            ttl_args(60_000),
        ),
    )
    .await
    .expect("declare");
    let result = within(
        "queue.declare",
        ch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            ttl_args(30_000),
        ),
    )
    .await;
    let text = expect_code(result, 406);
    assert!(
        text.contains("inequivalent arg 'x-message-ttl'"),
        "reply text: {text}"
    );

    let ch2 = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let result = within(
        "queue.declare",
        ch2.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            ttl_args(60_000),
        ),
    )
    .await;
    let text = expect_code(result, 406);
    assert!(
        text.contains("inequivalent arg 'durable'"),
        "reply text: {text}"
    );

    let ch3 = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let result = within(
        "queue.declare",
        ch3.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            ttl_args(60_000),
        ),
    )
    .await;
    let text = expect_code(result, 406);
    assert!(
        text.contains("inequivalent arg 'auto_delete'"),
        "reply text: {text}"
    );

    // The same declaration again is fine, and a passive one ignores the arguments.
    let ch4 = within("channel", conn.create_channel())
        .await
        .expect("channel");
    within(
        "queue.declare-ok",
        ch4.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            ttl_args(60_000),
        ),
    )
    .await
    .expect("equivalent redeclare");
    queue_counts(&ch4, &queue).await;
    delete_queue(&ch4, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_argument_of_wrong_type_is_precondition_failed() {
    let broker = start_broker().await;
    let (_conn, ch) = broker.channel().await;
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongString("soon".into()));
    let result = within(
        "queue.declare",
        ch.queue_declare(
            unique_name("q-badarg").as_str().into(),
            QueueDeclareOptions::default(),
            args,
        ),
    )
    .await;
    expect_code(result, 406);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_declare_of_missing_queue_is_not_found() {
    let broker = start_broker().await;
    let (conn, ch) = broker.channel().await;
    let result = within(
        "queue.declare",
        ch.queue_declare(
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
    assert!(!ch.status().connected());
    let ch2 = within("channel", conn.create_channel())
        .await
        .expect("channel");
    declare_temp_queue(&ch2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_returns_count_and_empties_queue() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let queue = declare_temp_queue(&ch).await;
    for _ in 0..4 {
        publish_confirmed(&ch, "", &queue, b"p", BasicProperties::default()).await;
    }
    let purged = within(
        "queue.purge-ok",
        ch.queue_purge(queue.as_str().into(), QueuePurgeOptions::default()),
    )
    .await
    .expect("purge");
    assert_eq!(purged, 4);
    assert_eq!(queue_counts(&ch, &queue).await, (0, 0));
    assert_eq!(get_body(&ch, &queue).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_leaves_unacked_messages_alone() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let queue = declare_temp_queue(&ch).await;
    for body in ["a", "b", "c"] {
        publish_confirmed(&ch, "", &queue, body.as_bytes(), BasicProperties::default()).await;
    }
    let held = within(
        "basic.get",
        ch.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .expect("get")
    .expect("a message");
    let purged = within(
        "queue.purge-ok",
        ch.queue_purge(queue.as_str().into(), QueuePurgeOptions::default()),
    )
    .await
    .expect("purge");
    assert_eq!(purged, 2);
    // Rejecting the held message puts it back.
    within(
        "basic.reject",
        held.delivery
            .acker
            .reject(lapin::options::BasicRejectOptions { requeue: true }),
    )
    .await
    .expect("reject");
    assert_eq!(get_body(&ch, &queue).await.as_deref(), Some(&b"a"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_of_missing_queue_is_not_found() {
    let broker = start_broker().await;
    let (_conn, ch) = broker.channel().await;
    let result = within(
        "queue.purge",
        ch.queue_purge(
            unique_name("q-missing").as_str().into(),
            QueuePurgeOptions::default(),
        ),
    )
    .await;
    expect_code(result, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_returns_message_count() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let queue = declare_temp_queue(&ch).await;
    for _ in 0..2 {
        publish_confirmed(&ch, "", &queue, b"d", BasicProperties::default()).await;
    }
    let count = within(
        "queue.delete-ok",
        ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("delete");
    assert_eq!(count, 2);
    assert!(!queue_exists(&conn, &queue).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_missing_queue_succeeds() {
    // RabbitMQ's queue.delete is idempotent: delete-ok with a count of 0.
    let broker = start_broker().await;
    let (_conn, ch) = broker.channel().await;
    let count = within(
        "queue.delete-ok",
        ch.queue_delete(
            unique_name("q-never").as_str().into(),
            QueueDeleteOptions::default(),
        ),
    )
    .await
    .expect("delete of a missing queue");
    assert_eq!(count, 0);
    assert!(ch.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_if_empty_on_nonempty_queue_is_precondition_failed() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let queue = declare_temp_queue(&ch).await;
    publish_confirmed(&ch, "", &queue, b"x", BasicProperties::default()).await;
    let result = within(
        "queue.delete",
        ch.queue_delete(
            queue.as_str().into(),
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        ),
    )
    .await;
    expect_code(result, 406);
    assert!(queue_exists(&conn, &queue).await);

    let ch2 = within("channel", conn.create_channel())
        .await
        .expect("channel");
    assert_eq!(get_body(&ch2, &queue).await.as_deref(), Some(&b"x"[..]));
    within(
        "queue.delete-ok",
        ch2.queue_delete(
            queue.as_str().into(),
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        ),
    )
    .await
    .expect("delete if-empty of an empty queue");
    assert!(!queue_exists(&conn, &queue).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_if_unused_on_consumed_queue_is_precondition_failed() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let consumer_ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let queue = declare_temp_queue(&ch).await;
    let _consumer = consume(&consumer_ch, &queue, "busy").await;
    let result = within(
        "queue.delete",
        ch.queue_delete(
            queue.as_str().into(),
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        ),
    )
    .await;
    expect_code(result, 406);
    assert!(queue_exists(&conn, &queue).await);
    within(
        "basic.cancel-ok",
        consumer_ch.basic_cancel("busy".into(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel");
    let ch2 = within("channel", conn.create_channel())
        .await
        .expect("channel");
    within(
        "queue.delete-ok",
        ch2.queue_delete(
            queue.as_str().into(),
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        ),
    )
    .await
    .expect("delete if-unused without consumers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_queue_cancels_its_consumers() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let consumer_ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let queue = declare_temp_queue(&ch).await;
    let mut consumer = consume(&consumer_ch, &queue, "doomed").await;
    within(
        "queue.delete-ok",
        ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("delete");
    // The broker's basic.cancel ends lapin's consumer stream.
    match within("consumer cancellation", consumer.next()).await {
        None => {}
        Some(other) => panic!("expected the consumer to be cancelled, got {other:?}"),
    }
    // The consumer's channel stays open.
    declare_temp_queue(&consumer_ch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_queue_is_locked_to_its_connection() {
    let broker = start_broker().await;
    let (_owner, owner_ch) = broker.channel().await;
    let queue = declare_temp_queue(&owner_ch).await;
    let other = broker.connect().await;

    let ch = within("channel", other.create_channel())
        .await
        .expect("channel");
    let result = within(
        "queue.declare",
        ch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    expect_code(result, 405);

    let ch = within("channel", other.create_channel())
        .await
        .expect("channel");
    let result = within(
        "basic.consume",
        ch.basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    expect_code(result, 405);

    let ch = within("channel", other.create_channel())
        .await
        .expect("channel");
    let result = within(
        "basic.get",
        ch.basic_get(queue.as_str().into(), BasicGetOptions::default()),
    )
    .await;
    expect_code(result, 405);

    let ch = within("channel", other.create_channel())
        .await
        .expect("channel");
    let result = within(
        "queue.delete",
        ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()),
    )
    .await;
    expect_code(result, 405);

    // Publishing to it is allowed from anywhere.
    let ch = confirm_channel(&other).await;
    publish_confirmed(&ch, "", &queue, b"to the owner", BasicProperties::default()).await;
    assert_eq!(
        get_body(&owner_ch, &queue).await.as_deref(),
        Some(&b"to the owner"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_queue_dies_with_its_connection() {
    let broker = start_broker().await;
    let (owner, owner_ch) = broker.channel().await;
    let queue = declare_temp_queue(&owner_ch).await;
    let observer = broker.connect().await;
    let _ = within("connection.close-ok", owner.close(200, "bye".into())).await;
    eventually(
        "exclusive queue deleted after its connection closed",
        || {
            let observer = &observer;
            let queue = &queue;
            async move { !queue_exists(observer, queue).await }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_queue_dies_when_last_consumer_cancels() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let queue = unique_name("q-autodelete");
    within(
        "queue.declare-ok",
        ch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare");
    let _c1 = consume(&ch, &queue, "c1").await;
    let _c2 = consume(&ch, &queue, "c2").await;
    within(
        "basic.cancel-ok",
        ch.basic_cancel("c1".into(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel c1");
    // One consumer left: the queue is still there.
    assert_eq!(queue_counts(&ch, &queue).await, (0, 1));
    within(
        "basic.cancel-ok",
        ch.basic_cancel("c2".into(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel c2");
    eventually(
        "auto-delete queue deleted after its last consumer left",
        || {
            let conn = &conn;
            let queue = &queue;
            async move { !queue_exists(conn, queue).await }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_queue_without_consumers_stays() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let queue = unique_name("q-autodelete-idle");
    within(
        "queue.declare-ok",
        ch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare");
    publish_confirmed(&ch, "", &queue, b"kept", BasicProperties::default()).await;
    assert_eq!(get_body(&ch, &queue).await.as_deref(), Some(&b"kept"[..]));
    assert!(queue_exists(&conn, &queue).await);
    delete_queue(&ch, &queue).await;
}
