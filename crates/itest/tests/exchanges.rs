//! Exchanges: the built-in ones, declare/delete rules, and routing by every exchange type,
//! exchange-to-exchange bindings and the CC/BCC sender-selected distribution headers.

use warren_itest::amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};
use warren_itest::lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, ExchangeUnbindOptions,
    QueueBindOptions,
};
use warren_itest::lapin::{BasicProperties, ExchangeKind};
use warren_itest::*;

fn passive() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (key, value) in entries {
        t.insert((*key).into(), value.clone());
    }
    t
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn headers(entries: &[(&str, AMQPValue)]) -> BasicProperties {
    BasicProperties::default().with_headers(table(entries))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_in_exchanges_exist() {
    let broker = start_broker().await;
    let (_conn, ch) = broker.channel().await;
    for (name, kind) in [
        ("amq.direct", ExchangeKind::Direct),
        ("amq.fanout", ExchangeKind::Fanout),
        ("amq.topic", ExchangeKind::Topic),
        ("amq.headers", ExchangeKind::Headers),
        ("amq.match", ExchangeKind::Headers),
    ] {
        within(
            "exchange.declare-ok",
            ch.exchange_declare(name.into(), kind, passive(), FieldTable::default()),
        )
        .await
        .unwrap_or_else(|e| panic!("passive declare of {name}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_exchange_routes_by_queue_name() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let queue = declare_temp_queue(&ch).await;
    publish_confirmed(
        &ch,
        "",
        &queue,
        b"direct to queue",
        BasicProperties::default(),
    )
    .await;
    assert_eq!(
        get_body(&ch, &queue).await.as_deref(),
        Some(&b"direct to queue"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_exchange_cannot_be_declared_or_deleted() {
    // It exists (it routes, see above), but RabbitMQ refuses every operation naming it, even
    // a passive declare.
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let result = within(
        "exchange.declare",
        ch.exchange_declare(
            "".into(),
            ExchangeKind::Direct,
            passive(),
            FieldTable::default(),
        ),
    )
    .await;
    let text = expect_code(result, 403);
    assert!(text.contains("default exchange"), "reply text: {text}");
    let ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let result = within(
        "exchange.declare",
        ch.exchange_declare(
            "".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    expect_code(result, 403);
    let ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let result = within(
        "exchange.delete",
        ch.exchange_delete("".into(), ExchangeDeleteOptions::default()),
    )
    .await;
    expect_code(result, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_to_default_exchange_is_access_refused() {
    let broker = start_broker().await;
    let (conn, ch) = broker.channel().await;
    let queue = declare_temp_queue(&ch).await;
    let result = within(
        "queue.bind",
        ch.queue_bind(
            queue.as_str().into(),
            "".into(),
            "x".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    expect_code(result, 403);
    let ch2 = within("channel", conn.create_channel())
        .await
        .expect("channel");
    declare_temp_queue(&ch2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amq_exchanges_route_by_their_type() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let queue = declare_temp_queue(&ch).await;
    // Unique keys and header values: other tests may share these exchanges.
    let key = unique_name("key");
    bind_queue(&ch, &queue, "amq.direct", &key, FieldTable::default()).await;
    bind_queue(
        &ch,
        &queue,
        "amq.topic",
        &format!("{key}.*"),
        FieldTable::default(),
    )
    .await;
    bind_queue(
        &ch,
        &queue,
        "amq.headers",
        "",
        table(&[("itest-key", long(&key))]),
    )
    .await;
    bind_queue(
        &ch,
        &queue,
        "amq.match",
        "",
        table(&[("itest-key2", long(&key))]),
    )
    .await;

    publish_confirmed(
        &ch,
        "amq.direct",
        &key,
        b"direct",
        BasicProperties::default(),
    )
    .await;
    publish_confirmed(
        &ch,
        "amq.direct",
        &format!("{key}.x"),
        b"direct-miss",
        BasicProperties::default(),
    )
    .await;
    publish_confirmed(
        &ch,
        "amq.topic",
        &format!("{key}.x"),
        b"topic",
        BasicProperties::default(),
    )
    .await;
    publish_confirmed(
        &ch,
        "amq.headers",
        "",
        b"headers",
        headers(&[("itest-key", long(&key))]),
    )
    .await;
    publish_confirmed(
        &ch,
        "amq.match",
        "",
        b"match",
        headers(&[("itest-key2", long(&key))]),
    )
    .await;
    assert_eq!(
        drain_queue(&ch, &queue).await,
        ["direct", "topic", "headers", "match"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_declare_of_missing_exchange_is_not_found() {
    let broker = start_broker().await;
    let (conn, ch) = broker.channel().await;
    let name = unique_name("missing-exchange");
    let result = within(
        "exchange.declare",
        ch.exchange_declare(
            name.as_str().into(),
            ExchangeKind::Direct,
            passive(),
            FieldTable::default(),
        ),
    )
    .await;
    expect_code(result, 404);
    assert!(
        !ch.status().connected(),
        "the channel must be closed after a 404"
    );
    let ch2 = within("channel", conn.create_channel())
        .await
        .expect("channel");
    declare_temp_queue(&ch2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclare_with_different_type_is_precondition_failed() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch1 = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let ch2 = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let name = unique_name("x-type");
    declare_exchange(&ch1, &name, ExchangeKind::Direct).await;

    let result = within(
        "exchange.declare",
        ch2.exchange_declare(
            name.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    let text = expect_code(result, 406);
    assert!(
        text.contains("inequivalent arg 'type'"),
        "reply text: {text}"
    );
    // Only the offending channel is closed; the connection and its other channels go on.
    assert!(!ch2.status().connected());
    declare_exchange(&ch1, &name, ExchangeKind::Direct).await;
    let ch3 = within("channel", conn.create_channel())
        .await
        .expect("channel");
    declare_exchange(&ch3, &name, ExchangeKind::Direct).await;
    delete_exchange(&ch3, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclare_with_different_durability_is_precondition_failed() {
    let broker = start_broker().await;
    let (conn, ch) = broker.channel().await;
    let name = unique_name("x-durable");
    declare_exchange(&ch, &name, ExchangeKind::Topic).await;
    let result = within(
        "exchange.declare",
        ch.exchange_declare(
            name.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    let text = expect_code(result, 406);
    assert!(
        text.contains("inequivalent arg 'durable'"),
        "reply text: {text}"
    );
    let ch2 = within("channel", conn.create_channel())
        .await
        .expect("channel");
    // A passive declare ignores the flags and still finds it.
    within(
        "exchange.declare-ok",
        ch2.exchange_declare(
            name.as_str().into(),
            ExchangeKind::Fanout,
            passive(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("passive declare");
    delete_exchange(&ch2, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declaring_an_amq_prefixed_exchange_is_access_refused() {
    let broker = start_broker().await;
    let (conn, ch) = broker.channel().await;
    let result = within(
        "exchange.declare",
        ch.exchange_declare(
            "amq.foo".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    expect_code(result, 403);
    // The 403 is for creating one: an equivalent redeclare of a built-in one is fine, an
    // inequivalent one is the usual 406 (RabbitMQ checks equivalence first).
    let ch2 = within("channel", conn.create_channel())
        .await
        .expect("channel");
    within(
        "exchange.declare-ok",
        ch2.exchange_declare(
            "amq.direct".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("equivalent redeclare of amq.direct");
    let result = within(
        "exchange.declare",
        ch2.exchange_declare(
            "amq.direct".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    expect_code(result, 406);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_if_unused_of_bound_exchange_is_precondition_failed() {
    let broker = start_broker().await;
    let (conn, ch) = broker.channel().await;
    let name = unique_name("x-used");
    declare_exchange(&ch, &name, ExchangeKind::Direct).await;
    let queue = declare_temp_queue(&ch).await;
    bind_queue(&ch, &queue, &name, "k", FieldTable::default()).await;
    let result = within(
        "exchange.delete",
        ch.exchange_delete(
            name.as_str().into(),
            ExchangeDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        ),
    )
    .await;
    expect_code(result, 406);

    let ch2 = within("channel", conn.create_channel())
        .await
        .expect("channel");
    within(
        "exchange.delete-ok",
        ch2.exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default()),
    )
    .await
    .expect("unconditional delete");
    let result = within(
        "exchange.declare",
        ch2.exchange_declare(
            name.as_str().into(),
            ExchangeKind::Direct,
            passive(),
            FieldTable::default(),
        ),
    )
    .await;
    expect_code(result, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_if_unused_of_unbound_exchange_succeeds() {
    let broker = start_broker().await;
    let (_conn, ch) = broker.channel().await;
    let name = unique_name("x-unused");
    declare_exchange(&ch, &name, ExchangeKind::Direct).await;
    within(
        "exchange.delete-ok",
        ch.exchange_delete(
            name.as_str().into(),
            ExchangeDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        ),
    )
    .await
    .expect("delete if-unused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_missing_exchange_succeeds() {
    // RabbitMQ's exchange.delete is idempotent.
    let broker = start_broker().await;
    let (_conn, ch) = broker.channel().await;
    let name = unique_name("x-never");
    within(
        "exchange.delete-ok",
        ch.exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default()),
    )
    .await
    .expect("delete of a missing exchange");
    assert!(ch.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_missing_exchange_closes_channel_with_not_found() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let mut events = events(&conn);
    let ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    publish(&ch, &unique_name("x-nowhere"), "k", b"lost").await;
    expect_error_event(&mut events, 404).await;
    let ch2 = within("channel", conn.create_channel())
        .await
        .expect("channel");
    declare_temp_queue(&ch2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_internal_exchange_is_access_refused() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let mut events = events(&conn);
    let ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let name = unique_name("x-internal");
    within(
        "exchange.declare-ok",
        ch.exchange_declare(
            name.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                internal: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare internal");
    publish(&ch, &name, "", b"refused").await;
    expect_error_event(&mut events, 403).await;
    let ch2 = within("channel", conn.create_channel())
        .await
        .expect("channel");
    delete_exchange(&ch2, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_missing_queue_or_exchange_is_not_found() {
    let broker = start_broker().await;
    let (conn, ch) = broker.channel().await;
    let queue = declare_temp_queue(&ch).await;
    let result = within(
        "queue.bind",
        ch.queue_bind(
            queue.as_str().into(),
            unique_name("x-none").as_str().into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    expect_code(result, 404);
    let ch2 = within("channel", conn.create_channel())
        .await
        .expect("channel");
    let result = within(
        "queue.bind",
        ch2.queue_bind(
            unique_name("q-none").as_str().into(),
            "amq.direct".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    expect_code(result, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_to_exchange_binding_routes() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let source = unique_name("e2e-src");
    let destination = unique_name("e2e-dst");
    declare_exchange(&ch, &source, ExchangeKind::Topic).await;
    declare_exchange(&ch, &destination, ExchangeKind::Direct).await;
    within(
        "exchange.bind-ok",
        ch.exchange_bind(
            destination.as_str().into(),
            source.as_str().into(),
            "a.*".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.bind");
    let queue = declare_temp_queue(&ch).await;
    bind_queue(&ch, &queue, &destination, "a.b", FieldTable::default()).await;

    publish_confirmed(&ch, &source, "a.b", b"through", BasicProperties::default()).await;
    publish_confirmed(
        &ch,
        &source,
        "a.c",
        b"source-only",
        BasicProperties::default(),
    )
    .await;
    publish_confirmed(&ch, &source, "x.b", b"no-match", BasicProperties::default()).await;
    assert_eq!(drain_queue(&ch, &queue).await, ["through"]);

    within(
        "exchange.unbind-ok",
        ch.exchange_unbind(
            destination.as_str().into(),
            source.as_str().into(),
            "a.*".into(),
            ExchangeUnbindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.unbind");
    publish_confirmed(
        &ch,
        &source,
        "a.b",
        b"after-unbind",
        BasicProperties::default(),
    )
    .await;
    assert!(drain_queue(&ch, &queue).await.is_empty());
    delete_exchange(&ch, &source).await;
    delete_exchange(&ch, &destination).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycle_of_exchange_bindings_delivers_once() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let x1 = unique_name("cycle-1");
    let x2 = unique_name("cycle-2");
    let x3 = unique_name("cycle-3");
    for x in [&x1, &x2, &x3] {
        declare_exchange(&ch, x, ExchangeKind::Fanout).await;
    }
    // x1 -> x2 -> x3 -> x1, and the queue hangs off two of them.
    for (dst, src) in [(&x2, &x1), (&x3, &x2), (&x1, &x3)] {
        within(
            "exchange.bind-ok",
            ch.exchange_bind(
                dst.as_str().into(),
                src.as_str().into(),
                "".into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .expect("exchange.bind");
    }
    let queue = declare_temp_queue(&ch).await;
    bind_queue(&ch, &queue, &x2, "", FieldTable::default()).await;
    bind_queue(&ch, &queue, &x3, "", FieldTable::default()).await;

    publish_confirmed(&ch, &x1, "", b"once", BasicProperties::default()).await;
    assert_eq!(drain_queue(&ch, &queue).await, ["once"]);
    for x in [&x1, &x2, &x3] {
        delete_exchange(&ch, x).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_wildcards_match_words() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let x = unique_name("topic");
    declare_exchange(&ch, &x, ExchangeKind::Topic).await;
    let patterns = ["a.*.c", "a.#", "#.c", "*", "#", "a.b.c", "a.*.#.d"];
    let mut queues = Vec::new();
    for pattern in patterns {
        let queue = declare_temp_queue(&ch).await;
        bind_queue(&ch, &queue, &x, pattern, FieldTable::default()).await;
        queues.push(queue);
    }
    for key in [
        "a.b.c",
        "a",
        "a.c",
        "c",
        "x.y.c",
        "a.b.b.c",
        "",
        "a.x.d",
        "a.x.y.z.d",
    ] {
        publish_confirmed(&ch, &x, key, key.as_bytes(), BasicProperties::default()).await;
    }
    let expected: [&[&str]; 7] = [
        &["a.b.c"],                                              // a.*.c
        &["a.b.c", "a", "a.c", "a.b.b.c", "a.x.d", "a.x.y.z.d"], // a.#
        &["a.b.c", "a.c", "c", "x.y.c", "a.b.b.c"],              // #.c
        &["a", "c"],                                             // *
        &[
            "a.b.c",
            "a",
            "a.c",
            "c",
            "x.y.c",
            "a.b.b.c",
            "",
            "a.x.d",
            "a.x.y.z.d",
        ], // #
        &["a.b.c"],                                              // a.b.c
        &["a.x.d", "a.x.y.z.d"],                                 // a.*.#.d
    ];
    for ((pattern, queue), expected) in patterns.iter().zip(&queues).zip(expected) {
        assert_eq!(
            drain_queue(&ch, queue).await,
            expected,
            "pattern {pattern:?}"
        );
    }
    delete_exchange(&ch, &x).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_ignores_routing_key_and_direct_matches_exactly() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let fanout = unique_name("fanout");
    let direct = unique_name("direct");
    declare_exchange(&ch, &fanout, ExchangeKind::Fanout).await;
    declare_exchange(&ch, &direct, ExchangeKind::Direct).await;
    let q1 = declare_temp_queue(&ch).await;
    let q2 = declare_temp_queue(&ch).await;
    bind_queue(&ch, &q1, &fanout, "ignored", FieldTable::default()).await;
    bind_queue(&ch, &q2, &fanout, "", FieldTable::default()).await;
    bind_queue(&ch, &q1, &direct, "k", FieldTable::default()).await;
    publish_confirmed(&ch, &fanout, "anything", b"f", BasicProperties::default()).await;
    publish_confirmed(&ch, &direct, "k", b"d", BasicProperties::default()).await;
    publish_confirmed(&ch, &direct, "K", b"case", BasicProperties::default()).await;
    publish_confirmed(&ch, &direct, "k.x", b"longer", BasicProperties::default()).await;
    assert_eq!(drain_queue(&ch, &q1).await, ["f", "d"]);
    assert_eq!(drain_queue(&ch, &q2).await, ["f"]);
    delete_exchange(&ch, &fanout).await;
    delete_exchange(&ch, &direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_exchange_all_and_any() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let x = unique_name("headers");
    declare_exchange(&ch, &x, ExchangeKind::Headers).await;
    let q_all = declare_temp_queue(&ch).await;
    let q_any = declare_temp_queue(&ch).await;
    let q_default = declare_temp_queue(&ch).await;
    let q_int = declare_temp_queue(&ch).await;
    bind_queue(
        &ch,
        &q_all,
        &x,
        "",
        table(&[
            ("x-match", long("all")),
            ("format", long("pdf")),
            ("type", long("report")),
        ]),
    )
    .await;
    bind_queue(
        &ch,
        &q_any,
        &x,
        "",
        table(&[
            ("x-match", long("any")),
            ("format", long("pdf")),
            ("type", long("report")),
        ]),
    )
    .await;
    // Without x-match, "all" applies.
    bind_queue(
        &ch,
        &q_default,
        &x,
        "",
        table(&[("format", long("pdf")), ("type", long("report"))]),
    )
    .await;
    bind_queue(&ch, &q_int, &x, "", table(&[("n", AMQPValue::LongInt(42))])).await;

    let pdf = ("format", long("pdf"));
    let report = ("type", long("report"));
    publish_confirmed(
        &ch,
        &x,
        "",
        b"both",
        headers(&[pdf.clone(), report.clone()]),
    )
    .await;
    publish_confirmed(
        &ch,
        &x,
        "",
        b"both+extra",
        headers(&[pdf.clone(), report.clone(), ("z", long("1"))]),
    )
    .await;
    publish_confirmed(
        &ch,
        &x,
        "",
        b"format-only",
        headers(std::slice::from_ref(&pdf)),
    )
    .await;
    publish_confirmed(
        &ch,
        &x,
        "",
        b"wrong-value",
        headers(&[("format", long("zip")), report.clone()]),
    )
    .await;
    publish_confirmed(&ch, &x, "", b"none", BasicProperties::default()).await;
    publish_confirmed(
        &ch,
        &x,
        "",
        b"n42",
        headers(&[("n", AMQPValue::LongInt(42))]),
    )
    .await;
    publish_confirmed(
        &ch,
        &x,
        "",
        b"n43",
        headers(&[("n", AMQPValue::LongInt(43))]),
    )
    .await;

    assert_eq!(drain_queue(&ch, &q_all).await, ["both", "both+extra"]);
    assert_eq!(
        drain_queue(&ch, &q_any).await,
        ["both", "both+extra", "format-only", "wrong-value"]
    );
    assert_eq!(drain_queue(&ch, &q_default).await, ["both", "both+extra"]);
    assert_eq!(drain_queue(&ch, &q_int).await, ["n42"]);
    delete_exchange(&ch, &x).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cc_and_bcc_headers_add_routing_keys_and_bcc_is_stripped() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let x = unique_name("cc");
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    let (q_main, q_cc, q_bcc, q_other) = (
        declare_temp_queue(&ch).await,
        declare_temp_queue(&ch).await,
        declare_temp_queue(&ch).await,
        declare_temp_queue(&ch).await,
    );
    bind_queue(&ch, &q_main, &x, "main", FieldTable::default()).await;
    bind_queue(&ch, &q_cc, &x, "cc-key", FieldTable::default()).await;
    bind_queue(&ch, &q_bcc, &x, "bcc-key", FieldTable::default()).await;
    bind_queue(&ch, &q_other, &x, "other", FieldTable::default()).await;

    let props = headers(&[
        (
            "CC",
            AMQPValue::FieldArray(FieldArray::from(vec![long("cc-key")])),
        ),
        (
            "BCC",
            AMQPValue::FieldArray(FieldArray::from(vec![long("bcc-key")])),
        ),
        ("keep", long("me")),
    ]);
    publish_confirmed(&ch, &x, "main", b"memo", props).await;

    for queue in [&q_main, &q_cc, &q_bcc] {
        let message = within(
            "basic.get",
            ch.basic_get(
                queue.as_str().into(),
                warren_itest::lapin::options::BasicGetOptions { no_ack: true },
            ),
        )
        .await
        .expect("basic.get")
        .unwrap_or_else(|| panic!("queue {queue} got nothing"));
        assert_eq!(message.delivery.data, b"memo");
        // The routing key delivered is the one the message was published with.
        assert_eq!(message.delivery.routing_key.as_str(), "main");
        let delivered = message
            .delivery
            .properties
            .headers()
            .clone()
            .expect("headers");
        assert!(
            delivered.contains_key("CC"),
            "CC must be kept: {delivered:?}"
        );
        assert!(
            !delivered.contains_key("BCC"),
            "BCC must be stripped: {delivered:?}"
        );
        assert_eq!(delivered.inner().get("keep"), Some(&long("me")));
    }
    assert!(drain_queue(&ch, &q_other).await.is_empty());
    delete_exchange(&ch, &x).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_matching_two_bindings_to_one_queue_is_delivered_once() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let x = unique_name("dup");
    declare_exchange(&ch, &x, ExchangeKind::Topic).await;
    let queue = declare_temp_queue(&ch).await;
    bind_queue(&ch, &queue, &x, "a.*", FieldTable::default()).await;
    bind_queue(&ch, &queue, &x, "#", FieldTable::default()).await;
    bind_queue(&ch, &queue, &x, "a.b", FieldTable::default()).await;
    // The same destination through the topic exchange and through CC.
    let props = headers(&[(
        "CC",
        AMQPValue::FieldArray(FieldArray::from(vec![long("a.c")])),
    )]);
    publish_confirmed(&ch, &x, "a.b", b"one", props).await;
    assert_eq!(drain_queue(&ch, &queue).await, ["one"]);
    delete_exchange(&ch, &x).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_unbind_stops_routing() {
    let broker = start_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let x = unique_name("unbind");
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    let queue = declare_temp_queue(&ch).await;
    bind_queue(&ch, &queue, &x, "k", FieldTable::default()).await;
    publish_confirmed(&ch, &x, "k", b"before", BasicProperties::default()).await;
    within(
        "queue.unbind-ok",
        ch.queue_unbind(
            queue.as_str().into(),
            x.as_str().into(),
            "k".into(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.unbind");
    publish_confirmed(&ch, &x, "k", b"after", BasicProperties::default()).await;
    assert_eq!(drain_queue(&ch, &queue).await, ["before"]);
    delete_exchange(&ch, &x).await;
}
