//! Users, vhosts, permissions, topic permissions and limits, driven through the broker's
//! admin interface (as the management API will) and observed by real clients over TCP.

use std::sync::Arc;

use warren_core::access::password::{HashingAlgorithm, PasswordHash};
use warren_core::access::{UserLimits, VHostInfo, VHostLimits};
use warren_core::admin::UserSpec;
use warren_core::Broker;
use warren_itest::lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use warren_itest::lapin::types::{AMQPValue, FieldTable, ShortString};
use warren_itest::lapin::{BasicProperties, ConnectionProperties, ExchangeKind};
use warren_itest::*;

fn broker(b: &TestBroker) -> &Arc<Broker> {
    b.broker().expect("an in-process broker")
}

/// Creates `name` with password `pw` and the given permissions in `vhost`.
fn add_user(b: &TestBroker, name: &str, pw: &str, vhost: &str, perms: (&str, &str, &str)) {
    let broker = broker(b);
    broker
        .put_user(UserSpec {
            name: name.into(),
            password: Some(PasswordHash::new(pw)),
            tags: Vec::new(),
        })
        .expect("put user");
    broker
        .set_permissions(name, vhost, perms.0, perms.1, perms.2)
        .expect("set permissions");
}

fn add_vhost(b: &TestBroker, name: &str) {
    broker(b)
        .put_vhost(VHostInfo {
            name: name.into(),
            ..Default::default()
        })
        .expect("put vhost");
}

fn encode_vhost(name: &str) -> String {
    name.replace('%', "%25").replace('/', "%2f")
}

async fn connect_as(
    b: &TestBroker,
    user: &str,
    pw: &str,
    vhost: &str,
) -> warren_itest::lapin::Connection {
    connect(&b.url_with(user, pw, &encode_vhost(vhost), "")).await
}

async fn try_connect_as(
    b: &TestBroker,
    user: &str,
    pw: &str,
    vhost: &str,
) -> warren_itest::lapin::Result<warren_itest::lapin::Connection> {
    try_connect(
        &b.url_with(user, pw, &encode_vhost(vhost), ""),
        ConnectionProperties::default(),
    )
    .await
}

/// A publish without confirm: its refusal comes back as a channel error event.
async fn send(
    ch: &warren_itest::lapin::Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    within(
        "publish",
        ch.basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        ),
    )
    .await
    .expect("basic.publish sent");
}

async fn open_channel(conn: &warren_itest::lapin::Connection) -> warren_itest::lapin::Channel {
    within("channel.open-ok", conn.create_channel())
        .await
        .expect("channel")
}

async fn try_declare(
    ch: &warren_itest::lapin::Channel,
    name: &str,
    args: FieldTable,
) -> warren_itest::lapin::Result<warren_itest::lapin::Queue> {
    within(
        "queue.declare",
        ch.queue_declare(name.into(), QueueDeclareOptions::default(), args),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_log_in_with_their_passwords_and_failures_do_not_say_why() {
    let Some(b) = start_broker_with(|_| {}).await else {
        return;
    };
    add_user(&b, "alice", "wonderland", "/", (".*", ".*", ".*"));
    let conn = connect_as(&b, "alice", "wonderland", "/").await;
    let ch = open_channel(&conn).await;
    declare_temp_queue(&ch).await;

    // Wrong password and unknown user: the same 403 text.
    let wrong = expect_code(try_connect_as(&b, "alice", "nope", "/").await, 403);
    let unknown = expect_code(try_connect_as(&b, "nobody", "wonderland", "/").await, 403);
    assert_eq!(wrong, unknown);
    assert!(
        wrong.contains("Login was refused using authentication mechanism PLAIN"),
        "{wrong}"
    );

    // A user without a password cannot log in with one (certificate login only).
    broker(&b)
        .put_user(UserSpec {
            name: "certonly".into(),
            password: None,
            tags: Vec::new(),
        })
        .unwrap();
    broker(&b)
        .set_permissions("certonly", "/", ".*", ".*", ".*")
        .unwrap();
    expect_code(try_connect_as(&b, "certonly", "", "/").await, 403);

    // Hashes in RabbitMQ's other formats (as a definitions import brings them) work.
    for alg in [HashingAlgorithm::Sha512, HashingAlgorithm::Md5] {
        let hash = PasswordHash::with_salt(alg, [9, 8, 7, 6], "legacy");
        let parsed = PasswordHash::parse(&hash.to_base64(), alg.name()).unwrap();
        broker(&b)
            .put_user(UserSpec {
                name: "old".into(),
                password: Some(parsed),
                tags: Vec::new(),
            })
            .unwrap();
        broker(&b)
            .set_permissions("old", "/", ".*", ".*", ".*")
            .unwrap();
        connect_as(&b, "old", "legacy", "/").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhosts_are_separate_and_refuse_who_has_no_permission() {
    let Some(b) = start_broker_with(|_| {}).await else {
        return;
    };
    add_vhost(&b, "shop");
    add_user(&b, "bob", "pw", "shop", (".*", ".*", ".*"));
    // Missing vhost, and a vhost without permissions: 530.
    let missing = expect_code(try_connect_as(&b, "bob", "pw", "nowhere").await, 530);
    assert!(missing.contains("vhost nowhere not found"), "{missing}");
    let refused = expect_code(try_connect_as(&b, "bob", "pw", "/").await, 530);
    assert!(
        refused.contains("access to vhost '/' refused for user 'bob'"),
        "{refused}"
    );

    let conn = connect_as(&b, "bob", "pw", "shop").await;
    let ch = open_channel(&conn).await;
    declare_queue(&ch, "orders").await;
    publish(&ch, "", "orders", b"in shop").await;
    // The default vhost has no queue of that name.
    let guest = b.connect().await;
    assert!(!queue_exists(&guest, "orders").await);
    assert_eq!(
        get_body(&ch, "orders").await.as_deref(),
        Some(&b"in shop"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_vhost_closes_its_connections_and_deletes_only_its_queues() {
    let Some(b) = start_broker_with(|_| {}).await else {
        return;
    };
    add_vhost(&b, "tmp");
    broker(&b)
        .set_permissions("guest", "tmp", ".*", ".*", ".*")
        .unwrap();
    let conn = connect_as(&b, "guest", "guest", "tmp").await;
    let mut ev = events(&conn);
    let ch = open_channel(&conn).await;
    within(
        "durable declare",
        ch.queue_declare(
            "kept-nowhere".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    publish_with(
        &ch,
        "",
        "kept-nowhere",
        b"x",
        BasicProperties::default().with_delivery_mode(2),
    )
    .await;
    // A queue of the same name in the default vhost must survive.
    let other = b.connect().await;
    let other_ch = open_channel(&other).await;
    declare_queue(&other_ch, "kept-nowhere").await;
    publish(&other_ch, "", "kept-nowhere", b"stays").await;

    let queue_dirs = || {
        std::fs::read_dir(b.data_dir().unwrap().join("queues"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(queue_dirs(), 1, "the durable queue's log");
    within("delete vhost", broker(&b).delete_vhost("tmp"))
        .await
        .unwrap();
    eventually("the deleted vhost's queue files are removed", || async {
        queue_dirs() == 0
    })
    .await;
    let text = expect_error_event(&mut ev, 320).await;
    assert!(text.contains("vhost 'tmp' is down"), "{text}");
    expect_code(try_connect_as(&b, "guest", "guest", "tmp").await, 530);
    assert_eq!(
        get_body(&other_ch, "kept-nowhere").await.as_deref(),
        Some(&b"stays"[..])
    );
    // Recreated, it is empty.
    add_vhost(&b, "tmp");
    broker(&b)
        .set_permissions("guest", "tmp", ".*", ".*", ".*")
        .unwrap();
    let again = connect_as(&b, "guest", "guest", "tmp").await;
    assert!(!queue_exists(&again, "kept-nowhere").await);
}

/// A user with configure on `^cfg-`, write on `^w-`, read on `^r-`.
async fn restricted(b: &TestBroker) -> (warren_itest::lapin::Connection, String) {
    let user = "carol";
    add_user(b, user, "pw", "/", ("^cfg-", "^(w-|cfg-)", "^(r-|cfg-)"));
    (connect_as(b, user, "pw", "/").await, user.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configure_permission_guards_declare_and_delete() {
    let Some(b) = start_broker_with(|_| {}).await else {
        return;
    };
    let (conn, _) = restricted(&b).await;
    let ch = open_channel(&conn).await;
    try_declare(&ch, "cfg-q", FieldTable::default())
        .await
        .unwrap();
    let text = expect_code(
        try_declare(&ch, "other-q", FieldTable::default()).await,
        403,
    );
    assert_eq!(
        text,
        "ACCESS_REFUSED - access to queue 'other-q' in vhost '/' refused for user 'carol'"
    );
    // A server-named queue is checked under its generated name.
    let ch = open_channel(&conn).await;
    let text = expect_code(try_declare(&ch, "", FieldTable::default()).await, 403);
    assert!(text.contains("access to queue 'amq.gen-"), "{text}");
    // Passive declare needs no permission.
    let admin = b.connect().await;
    declare_queue(&open_channel(&admin).await, "other-q").await;
    let ch = open_channel(&conn).await;
    within(
        "passive declare",
        ch.queue_declare(
            "other-q".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    // Delete needs configure.
    let text = expect_code(
        within(
            "queue.delete",
            ch.queue_delete("other-q".into(), Default::default()),
        )
        .await,
        403,
    );
    assert!(text.contains("access to queue 'other-q'"), "{text}");
    // Exchanges too.
    let ch = open_channel(&conn).await;
    let text = expect_code(
        within(
            "exchange.declare",
            ch.exchange_declare(
                "x-other".into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            ),
        )
        .await,
        403,
    );
    assert!(text.contains("access to exchange 'x-other'"), "{text}");
    // A dead-letter exchange needs write on it (and read on the queue).
    let ch = open_channel(&conn).await;
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("amq.fanout".into()),
    );
    let text = expect_code(try_declare(&ch, "cfg-dl", args).await, 403);
    assert!(text.contains("access to exchange 'amq.fanout'"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_and_read_permissions_guard_publish_bind_consume_get_and_purge() {
    let Some(b) = start_broker_with(|_| {}).await else {
        return;
    };
    let admin = b.connect().await;
    let admin_ch = open_channel(&admin).await;
    for q in ["r-q", "w-q", "cfg-q"] {
        declare_queue(&admin_ch, q).await;
    }
    let (conn, _) = restricted(&b).await;

    // Publish to the default exchange is a write on amq.default.
    let ch = open_channel(&conn).await;
    let mut ev = events(&conn);
    send(&ch, "", "r-q", b"x", BasicProperties::default()).await;
    let text = expect_error_event(&mut ev, 403).await;
    assert!(
        text.contains("access to exchange 'amq.default' in vhost '/' refused for user 'carol'"),
        "{text}"
    );

    // Read guards consume, get and purge.
    let ch = open_channel(&conn).await;
    let text = expect_code(
        within(
            "basic.get",
            ch.basic_get("w-q".into(), BasicGetOptions::default()),
        )
        .await,
        403,
    );
    assert!(text.contains("access to queue 'w-q'"), "{text}");
    let ch = open_channel(&conn).await;
    expect_code(
        within(
            "basic.consume",
            ch.basic_consume(
                "w-q".into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await,
        403,
    );
    let ch = open_channel(&conn).await;
    expect_code(
        within(
            "queue.purge",
            ch.queue_purge("w-q".into(), QueuePurgeOptions::default()),
        )
        .await,
        403,
    );
    let ch = open_channel(&conn).await;
    within(
        "basic.get",
        ch.basic_get("r-q".into(), BasicGetOptions::default()),
    )
    .await
    .unwrap();

    // Bind: write on the queue and read on the exchange.
    let bind = |q: &'static str, x: &'static str| {
        let conn = &conn;
        async move {
            let ch = open_channel(conn).await;
            within(
                "queue.bind",
                ch.queue_bind(
                    q.into(),
                    x.into(),
                    "k".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await
        }
    };
    let text = expect_code(bind("r-q", "amq.direct").await, 403);
    assert!(text.contains("access to queue 'r-q'"), "{text}");
    let text = expect_code(bind("w-q", "amq.direct").await, 403);
    assert!(text.contains("access to exchange 'amq.direct'"), "{text}");
    declare_exchange(&admin_ch, "r-x", ExchangeKind::Direct).await;
    bind("w-q", "r-x").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permission_change_applies_to_connected_clients_next_operation() {
    let Some(b) = start_broker_with(|_| {}).await else {
        return;
    };
    add_user(&b, "dave", "pw", "/", (".*", ".*", ".*"));
    let conn = connect_as(&b, "dave", "pw", "/").await;
    let ch = confirm_channel(&conn).await;
    let q = declare_temp_queue(&ch).await;
    // Allowed and cached...
    publish_confirmed(&ch, "", &q, b"one", BasicProperties::default()).await;
    // ... then revoked: the next publish on the same channel is refused.
    broker(&b)
        .set_permissions("dave", "/", ".*", "^nothing$", ".*")
        .unwrap();
    let mut ev = events(&conn);
    send(&ch, "", &q, b"two", BasicProperties::default()).await;
    expect_error_event(&mut ev, 403).await;
    let ch = open_channel(&conn).await;
    assert_eq!(get_body(&ch, &q).await.as_deref(), Some(&b"one"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_permissions_guard_routing_keys_with_variables() {
    let Some(b) = start_broker_with(|_| {}).await else {
        return;
    };
    add_user(&b, "erin", "pw", "/", (".*", ".*", ".*"));
    broker(&b)
        .set_topic_permissions("erin", "/", "amq.topic", "^{username}\\.", "^public\\.")
        .unwrap();
    let conn = connect_as(&b, "erin", "pw", "/").await;
    let ch = confirm_channel(&conn).await;
    let q = declare_temp_queue(&ch).await;
    // Bind needs topic read on the binding key.
    within(
        "queue.bind",
        ch.queue_bind(
            q.as_str().into(),
            "amq.topic".into(),
            "public.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    let ch2 = open_channel(&conn).await;
    let text = expect_code(
        within(
            "queue.bind",
            ch2.queue_bind(
                q.as_str().into(),
                "amq.topic".into(),
                "private.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await,
        403,
    );
    assert!(
        text.contains("access to topic 'private.#' in exchange 'amq.topic'"),
        "{text}"
    );
    // Publish needs topic write on the routing key: {username} expands to erin.
    publish_confirmed(
        &ch,
        "amq.topic",
        "erin.news",
        b"mine",
        BasicProperties::default(),
    )
    .await;
    let mut ev = events(&conn);
    send(
        &ch,
        "amq.topic",
        "public.news",
        b"not mine",
        BasicProperties::default(),
    )
    .await;
    let text = expect_error_event(&mut ev, 403).await;
    assert!(
        text.contains("access to topic 'public.news' in exchange 'amq.topic' in vhost '/' refused for user 'erin'"),
        "{text}"
    );
    // Other exchanges are not restricted.
    let ch = confirm_channel(&conn).await;
    publish_confirmed(
        &ch,
        "amq.direct",
        "anything",
        b"ok",
        BasicProperties::default(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_impersonator_tag_lifts_the_user_id_check() {
    let Some(b) = start_broker_with(|_| {}).await else {
        return;
    };
    add_user(&b, "frank", "pw", "/", (".*", ".*", ".*"));
    let props = BasicProperties::default().with_user_id(ShortString::from("someone-else"));
    let conn = connect_as(&b, "frank", "pw", "/").await;
    let ch = confirm_channel(&conn).await;
    let q = declare_temp_queue(&ch).await;
    let mut ev = events(&conn);
    send(&ch, "", &q, b"x", props.clone()).await;
    expect_error_event(&mut ev, 406).await;
    broker(&b)
        .put_user(UserSpec {
            name: "frank".into(),
            password: Some(PasswordHash::new("pw")),
            tags: vec!["impersonator".into()],
        })
        .unwrap();
    let ch = confirm_channel(&conn).await;
    publish_confirmed(&ch, "", &q, b"as someone else", props).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhost_and_user_limits_refuse_with_rabbitmq_codes() {
    let Some(b) = start_broker_with(|_| {}).await else {
        return;
    };
    add_vhost(&b, "small");
    add_user(&b, "gina", "pw", "small", (".*", ".*", ".*"));
    broker(&b)
        .set_vhost_limits(
            "small",
            VHostLimits {
                max_connections: Some(1),
                max_queues: Some(1),
            },
        )
        .unwrap();
    let first = connect_as(&b, "gina", "pw", "small").await;
    let text = expect_code(try_connect_as(&b, "gina", "pw", "small").await, 530);
    assert!(text.contains("connection limit (1) is reached"), "{text}");
    let ch = open_channel(&first).await;
    declare_queue(&ch, "only").await;
    declare_queue(&ch, "only").await; // a redeclare is not a new queue
    let text = expect_code(try_declare(&ch, "second", FieldTable::default()).await, 406);
    assert!(
        text.contains("queue limit in vhost 'small' (1) is reached"),
        "{text}"
    );
    drop(first);

    // User limits: connections, and channels over all its connections.
    add_user(&b, "hank", "pw", "/", (".*", ".*", ".*"));
    broker(&b)
        .set_user_limits(
            "hank",
            UserLimits {
                max_connections: Some(2),
                max_channels: Some(2),
            },
        )
        .unwrap();
    let c1 = connect_as(&b, "hank", "pw", "/").await;
    let c2 = connect_as(&b, "hank", "pw", "/").await;
    let text = expect_code(try_connect_as(&b, "hank", "pw", "/").await, 530);
    assert!(
        text.contains("user connection limit (2) is reached"),
        "{text}"
    );
    // lapin closes a channel it drops: keep both.
    let _ch1 = open_channel(&c1).await;
    let _ch2 = open_channel(&c2).await;
    let text = expect_code(within("channel.open", c2.create_channel()).await, 530);
    assert!(text.contains("maximum allowed user limit of (2)"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_user_closes_its_connections() {
    let Some(b) = start_broker_with(|_| {}).await else {
        return;
    };
    add_user(&b, "ivan", "pw", "/", (".*", ".*", ".*"));
    let conn = connect_as(&b, "ivan", "pw", "/").await;
    let mut ev = events(&conn);
    broker(&b).delete_user("ivan").unwrap();
    expect_error_event(&mut ev, 320).await;
    expect_code(try_connect_as(&b, "ivan", "pw", "/").await, 403);
    assert_broker_healthy(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_vhosts_permissions_and_limits_survive_a_restart() {
    if is_external() {
        return;
    }
    let dir = std::env::temp_dir().join(unique_name("warren-access-restart"));
    let start = |dir: std::path::PathBuf| async move {
        let mut config = warren_server::Config::for_tests();
        config.data_dir = dir;
        warren_server::start(config).await.expect("start warren")
    };
    let server = start(dir.clone()).await;
    let broker = server.broker().clone();
    broker
        .put_vhost(VHostInfo {
            name: "kept".into(),
            description: "survives".into(),
            ..Default::default()
        })
        .unwrap();
    broker
        .put_user(UserSpec {
            name: "jane".into(),
            password: Some(PasswordHash::new("pw")),
            tags: vec!["monitoring".into()],
        })
        .unwrap();
    broker
        .set_permissions("jane", "kept", "^j", ".*", ".*")
        .unwrap();
    broker
        .set_vhost_limits(
            "kept",
            VHostLimits {
                max_connections: None,
                max_queues: Some(7),
            },
        )
        .unwrap();
    broker.delete_user("guest").unwrap();
    within("shutdown", server.shutdown()).await;

    // Twice: the first start replays the log as written and compacts it, the second reads
    // the compacted log.
    for _ in 0..2 {
        let server = start(dir.clone()).await;
        let broker = server.broker().clone();
        let vhost = broker
            .vhosts()
            .into_iter()
            .find(|v| v.name == "kept")
            .unwrap();
        assert_eq!(vhost.description, "survives");
        assert_eq!(vhost.limits.max_queues, Some(7));
        assert!(
            broker.user("guest").is_none(),
            "a deleted default user stays deleted"
        );
        let url = format!("amqp://jane:pw@{}/kept", server.local_addr());
        let conn = connect(&url).await;
        let ch = open_channel(&conn).await;
        declare_queue(&ch, "jq").await;
        expect_code(try_declare(&ch, "other", FieldTable::default()).await, 403);
        drop(conn);
        within("shutdown", server.shutdown()).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_closes_a_connection_by_its_id() {
    let Some(b) = start_broker_with(|_| {}).await else {
        return;
    };
    add_user(&b, "kim", "pw", "/", (".*", ".*", ".*"));
    let conn = connect_as(&b, "kim", "pw", "/").await;
    let mut ev = events(&conn);
    let listed = broker(&b).connections.list();
    let mine = listed.iter().find(|c| c.user == "kim").expect("listed");
    assert_eq!(mine.vhost, "/");
    assert!(mine.peer.ip().is_loopback());
    broker(&b)
        .close_connection(mine.id, "closed by an operator")
        .unwrap();
    let text = expect_error_event(&mut ev, 320).await;
    assert!(text.contains("closed by an operator"), "{text}");
    assert!(broker(&b).close_connection(u64::MAX, "x").is_err());
    assert_broker_healthy(&b).await;
}
