//! Policies and operator policies, applied live: set and cleared through the broker's admin
//! interface in-process (as the management API will), observed through lapin over TCP.
//! Every expectation is RabbitMQ's (docs/access.md, "Policies"); the tests need an
//! in-process Warren and pass without checking anything against an external broker.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;
use warren_core::policy::{Policy, PolicyKind};
use warren_core::VHost;
use warren_itest::amq_protocol::types::AMQPValue;
use warren_itest::lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicRejectOptions,
    QueueDeclareOptions,
};
use warren_itest::lapin::types::FieldTable;
use warren_itest::lapin::{BasicProperties, Channel, ExchangeKind};
use warren_itest::*;
use warren_server::{Config, ServerHandle};

fn vhost_of(broker: &TestBroker) -> Arc<VHost> {
    broker
        .broker()
        .expect("in-process broker")
        .vhost("/")
        .expect("vhost /")
}

fn policy(kind: PolicyKind, entry: serde_json::Value) -> Policy {
    Policy::from_json(kind, &entry).unwrap_or_else(|e| panic!("{entry}: {e}"))
}

fn set(vhost: &VHost, kind: PolicyKind, entry: serde_json::Value) {
    vhost
        .set_policy(policy(kind, entry))
        .expect("set the policy");
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

async fn declare_with(ch: &Channel, name: &str, durable: bool, args: FieldTable) {
    within(
        "queue.declare",
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable,
                ..Default::default()
            },
            args,
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("declare {name}: {e}"));
}

/// Publishes `from..to` (bodies are the numbers) to `queue` and waits for the confirms.
async fn publish_range(ch: &Channel, queue: &str, from: u32, to: u32) {
    for i in from..to {
        publish_confirmed(
            ch,
            "",
            queue,
            i.to_string().as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
}

fn header(delivery: &warren_itest::lapin::message::Delivery, key: &str) -> Option<AMQPValue> {
    delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(key).cloned())
}

/// Takes one message with a manual-ack basic.get and rejects it without requeue.
async fn reject_one(ch: &Channel, queue: &str) {
    let got = within(
        "basic.get",
        ch.basic_get(queue.into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .expect("basic.get")
    .expect("a message");
    within(
        "basic.reject",
        got.reject(BasicRejectOptions { requeue: false }),
    )
    .await
    .expect("reject");
}

async fn consume(ch: &Channel, queue: &str) -> warren_itest::lapin::Consumer {
    within(
        "basic.consume-ok",
        ch.basic_consume(
            queue.into(),
            format!("{queue}-consumer").as_str().into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("basic.consume")
}

/// The first example: a max-length policy trims an existing queue at once (drop-head:
/// the oldest go), applies to a queue declared later, and once cleared the queue takes new
/// messages beyond the old limit again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_max_length_policy_trims_existing_queues_at_once_and_applies_to_new_ones() {
    if is_external() {
        return;
    }
    let broker = start_broker().await;
    let vhost = vhost_of(&broker);
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, "limited.old").await;
    publish_range(&ch, "limited.old", 0, 10).await;
    assert_eq!(queue_counts(&ch, "limited.old").await.0, 10);

    set(
        &vhost,
        PolicyKind::Regular,
        json!({"name": "cap", "pattern": "^limited\\.", "apply-to": "queues",
               "definition": {"max-length": 3}}),
    );
    assert_eq!(queue_counts(&ch, "limited.old").await.0, 3);
    assert_eq!(
        vhost.queue_policy("limited.old").and_then(|n| n.policy),
        Some("cap".to_owned())
    );

    declare_queue(&ch, "limited.new").await;
    publish_range(&ch, "limited.new", 0, 8).await;
    assert_eq!(queue_counts(&ch, "limited.new").await.0, 3);
    assert_eq!(drain_queue(&ch, "limited.new").await, ["5", "6", "7"]);
    // A queue the pattern does not match is untouched.
    declare_queue(&ch, "unlimited").await;
    publish_range(&ch, "unlimited", 0, 5).await;
    assert_eq!(queue_counts(&ch, "unlimited").await.0, 5);

    vhost
        .clear_policy(PolicyKind::Regular, "cap")
        .expect("clear");
    assert_eq!(
        vhost.queue_policy("limited.old").and_then(|n| n.policy),
        None
    );
    publish_range(&ch, "limited.old", 10, 15).await;
    assert_eq!(queue_counts(&ch, "limited.old").await.0, 8);
    assert_eq!(
        drain_queue(&ch, "limited.old").await,
        ["7", "8", "9", "10", "11", "12", "13", "14"]
    );
}

/// A message-ttl policy expires messages published after it, and its dead-letter keys send
/// them on: the expired message arrives in the dead-letter queue, marked `expired`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_ttl_policy_expires_messages() {
    if is_external() {
        return;
    }
    let broker = start_broker().await;
    let vhost = vhost_of(&broker);
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, "expired").await;
    declare_queue(&ch, "short").await;
    set(
        &vhost,
        PolicyKind::Regular,
        json!({"name": "ttl", "pattern": "^short$", "definition": {
            "message-ttl": 100, "dead-letter-exchange": "", "dead-letter-routing-key": "expired"
        }}),
    );
    let mut consumer = consume(&ch, "expired").await;
    publish_confirmed(&ch, "", "short", b"fleeting", BasicProperties::default()).await;
    let delivery = next_delivery(&mut consumer).await;
    assert_eq!(delivery.data, b"fleeting");
    assert_eq!(
        header(&delivery, "x-first-death-reason"),
        Some(long("expired"))
    );
    assert_eq!(
        header(&delivery, "x-first-death-queue"),
        Some(long("short"))
    );
    assert_eq!(queue_counts(&ch, "short").await.0, 0);
}

/// A dead-letter-exchange policy dead-letters rejected messages to the DLX's queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_exchange_policy_dead_letters_rejected_messages() {
    if is_external() {
        return;
    }
    let broker = start_broker().await;
    let vhost = vhost_of(&broker);
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "dlx", ExchangeKind::Fanout).await;
    declare_queue(&ch, "dead").await;
    bind_queue(&ch, "dead", "dlx", "", FieldTable::default()).await;
    declare_queue(&ch, "work").await;
    publish_confirmed(&ch, "", "work", b"before", BasicProperties::default()).await;
    // Set on an existing queue: it applies to the next dead-lettering.
    set(
        &vhost,
        PolicyKind::Regular,
        json!({"name": "dl", "pattern": "^work$", "definition": {"dead-letter-exchange": "dlx"}}),
    );
    let mut consumer = consume(&ch, "dead").await;
    reject_one(&ch, "work").await;
    let delivery = next_delivery(&mut consumer).await;
    assert_eq!(delivery.data, b"before");
    assert_eq!(
        header(&delivery, "x-first-death-reason"),
        Some(long("rejected"))
    );
    assert_eq!(header(&delivery, "x-first-death-exchange"), Some(long("")));
}

/// An alternate-exchange policy routes what an exchange cannot; cleared, such messages are
/// unroutable again (the routing snapshot follows both changes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alternate_exchange_policy_routes_unroutable_messages() {
    if is_external() {
        return;
    }
    let broker = start_broker().await;
    let vhost = vhost_of(&broker);
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "orders", ExchangeKind::Direct).await;
    declare_exchange(&ch, "ae", ExchangeKind::Fanout).await;
    declare_queue(&ch, "unrouted").await;
    bind_queue(&ch, "unrouted", "ae", "", FieldTable::default()).await;
    set(
        &vhost,
        PolicyKind::Regular,
        json!({"name": "ae", "pattern": "^orders$", "apply-to": "exchanges",
               "definition": {"alternate-exchange": "ae"}}),
    );
    assert_eq!(
        vhost.exchange_policy("orders").and_then(|n| n.policy),
        Some("ae".to_owned())
    );
    publish_confirmed(
        &ch,
        "orders",
        "nowhere",
        b"caught",
        BasicProperties::default(),
    )
    .await;
    assert_eq!(
        get_body(&ch, "unrouted").await.as_deref(),
        Some(&b"caught"[..])
    );

    vhost
        .clear_policy(PolicyKind::Regular, "ae")
        .expect("clear");
    let confirm = within(
        "basic.publish",
        ch.basic_publish(
            "orders".into(),
            "nowhere".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"lost",
            BasicProperties::default(),
        ),
    )
    .await
    .expect("publish");
    let confirmation = within("publisher confirm", confirm).await.expect("confirm");
    assert!(
        confirmation.take_message().is_some(),
        "the message should come back unroutable once the policy is cleared"
    );
    assert_eq!(queue_counts(&ch, "unrouted").await.0, 0);
}

/// Of two matching policies the higher priority applies; an operator policy and the
/// queue's own `x-` arguments then resolve key by key as in RabbitMQ: the smallest
/// max-length of all three, the argument's dead-letter exchange over the policy's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_and_the_resolution_of_arguments_policies_and_operator_policies() {
    if is_external() {
        return;
    }
    let broker = start_broker().await;
    let vhost = vhost_of(&broker);
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let regular = |name: &str, priority: i64, max_length: u64| {
        json!({"name": name, "pattern": "^app\\.", "priority": priority, "definition": {
            "max-length": max_length, "dead-letter-exchange": format!("{name}-dlx")
        }})
    };
    set(&vhost, PolicyKind::Regular, regular("low", 1, 2));
    set(&vhost, PolicyKind::Regular, regular("high", 5, 6));
    declare_queue(&ch, "app.plain").await;
    publish_range(&ch, "app.plain", 0, 10).await;
    assert_eq!(
        queue_counts(&ch, "app.plain").await.0,
        6,
        "the higher priority wins"
    );

    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(4));
    args.insert("x-dead-letter-exchange".into(), long("arg-dlx"));
    declare_with(&ch, "app.args", false, args).await;
    for x in ["arg-dlx", "high-dlx"] {
        declare_exchange(&ch, x, ExchangeKind::Fanout).await;
        declare_queue(&ch, &format!("{x}-q")).await;
        bind_queue(&ch, &format!("{x}-q"), x, "", FieldTable::default()).await;
    }
    publish_range(&ch, "app.args", 0, 10).await;
    assert_eq!(
        queue_counts(&ch, "app.args").await.0,
        4,
        "x-max-length 4 < policy's 6"
    );

    // The argument's DLX, not the policy's: the six messages dropped past the limit of 4
    // and one rejected all went to arg-dlx.
    let mut consumer = consume(&ch, "arg-dlx-q").await;
    reject_one(&ch, "app.args").await;
    let mut reasons = Vec::new();
    for _ in 0..7 {
        let d = next_delivery(&mut consumer).await;
        reasons.push(header(&d, "x-first-death-reason"));
    }
    assert_eq!(
        reasons
            .iter()
            .filter(|r| **r == Some(long("maxlen")))
            .count(),
        6
    );
    assert_eq!(reasons.last(), Some(&Some(long("rejected"))));
    assert_eq!(queue_counts(&ch, "high-dlx-q").await.0, 0);
    assert_eq!(queue_counts(&ch, "app.args").await.0, 3);

    // An operator policy lowers both at once (the smallest of argument, policy and operator
    // policy), and names itself beside the policy.
    set(
        &vhost,
        PolicyKind::Operator,
        json!({"name": "guardrail", "pattern": "^app\\.", "apply-to": "queues",
               "definition": {"max-length": 2}}),
    );
    assert_eq!(queue_counts(&ch, "app.plain").await.0, 2);
    assert_eq!(queue_counts(&ch, "app.args").await.0, 2);
    let names = vhost.queue_policy("app.args").expect("queue");
    assert_eq!(names.policy.as_deref(), Some("high"));
    assert_eq!(names.operator_policy.as_deref(), Some("guardrail"));

    // Cleared: the argument's and the policy's limits apply again to new messages.
    vhost
        .clear_policy(PolicyKind::Operator, "guardrail")
        .expect("clear");
    publish_range(&ch, "app.plain", 10, 20).await;
    publish_range(&ch, "app.args", 10, 20).await;
    assert_eq!(queue_counts(&ch, "app.plain").await.0, 6);
    assert_eq!(queue_counts(&ch, "app.args").await.0, 4);
}

/// Bad regexes, unknown keys and wrong types are refused naming the policy and the key,
/// and nothing is applied: the vhost has no policy and its queue keeps every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_policies_are_refused_and_nothing_is_applied() {
    if is_external() {
        return;
    }
    let broker = start_broker().await;
    let vhost = vhost_of(&broker);
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, "victim").await;
    publish_range(&ch, "victim", 0, 5).await;
    let cases = [
        (
            json!({"name": "bad-regex", "pattern": "vic(tim", "definition": {"max-length": 1}}),
            "invalid policy 'bad-regex': pattern \"vic(tim\": not a valid regular expression",
        ),
        (
            json!({"name": "bad-key", "pattern": "victim",
                   "definition": {"max-length": 1, "max-lenght": 1}}),
            "invalid policy 'bad-key': definition: 'max-lenght' is not a recognised policy setting",
        ),
        (
            json!({"name": "bad-type", "pattern": "victim", "definition": {"max-length": "1"}}),
            "invalid policy 'bad-type': definition: 'max-length': \"1\" is not a valid maximum length",
        ),
    ];
    for (entry, expected) in cases {
        let error = Policy::from_json(PolicyKind::Regular, &entry).expect_err("refused");
        assert_eq!(error.http_status(), 400);
        assert!(
            error.text().starts_with(expected),
            "{entry}: {error} (expected {expected:?})"
        );
    }
    let error = Policy::from_json(
        PolicyKind::Operator,
        &json!({"name": "op", "pattern": "victim", "definition": {"alternate-exchange": "x"}}),
    )
    .expect_err("not an operator key");
    assert!(
        error.text().starts_with("invalid operator policy 'op'"),
        "{error}"
    );
    assert!(vhost.policies(PolicyKind::Regular).is_empty());
    assert!(vhost.policies(PolicyKind::Operator).is_empty());
    assert_eq!(
        vhost.queue_policy("victim"),
        Some(warren_core::vhost::PolicyNames::default())
    );
    assert_eq!(queue_counts(&ch, "victim").await.0, 5);
}

async fn start_on(dir: &std::path::Path) -> ServerHandle {
    let mut config = Config::for_tests();
    config.data_dir = dir.to_path_buf();
    warren_server::start(config).await.expect("start warren")
}

/// A policy is in the definitions log: after a restart it is there and the durable queue
/// it matches comes back with it applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_survives_a_restart() {
    if is_external() {
        return;
    }
    let dir: PathBuf = std::env::temp_dir().join(unique_name("warren-policies"));
    let _ = std::fs::remove_dir_all(&dir);
    let server = start_on(&dir).await;
    {
        let vhost = server.broker().vhost("/").expect("vhost");
        set(
            &vhost,
            PolicyKind::Operator,
            json!({"name": "cap", "pattern": "^kept$", "definition": {"max-length": 2}}),
        );
        let conn = connect(&server.amqp_url()).await;
        let ch = confirm_channel(&conn).await;
        declare_with(&ch, "kept", true, FieldTable::default()).await;
    }
    server.shutdown().await;

    let server = start_on(&dir).await;
    let vhost = server.broker().vhost("/").expect("vhost");
    let policies = vhost.policies(PolicyKind::Operator);
    assert_eq!(policies.len(), 1);
    assert_eq!(policies[0].name, "cap");
    assert_eq!(
        vhost.queue_policy("kept").and_then(|n| n.operator_policy),
        Some("cap".to_owned())
    );
    let conn = connect(&server.amqp_url()).await;
    let ch = confirm_channel(&conn).await;
    publish_range(&ch, "kept", 0, 5).await;
    assert_eq!(queue_counts(&ch, "kept").await.0, 2);
    drop(conn);
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
