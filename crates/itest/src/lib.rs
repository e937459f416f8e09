//! Test harness for integration tests: starts a real Warren in-process on 127.0.0.1:0, or
//! points at an external broker when `WARREN_TEST_AMQP_URL` is set (used to check that the
//! tests' expectations match a real RabbitMQ).
//!
//! It owns broker start-up for tests, lapin helpers, and `RawConn`, a raw-socket AMQP client for
//! tests that must send exactly the bytes they choose (malformed frames, odd tune values). It
//! must not reach into the broker's internals: everything a test observes goes over TCP.
//!
//! Every wait has a deadline and a missed deadline is a test failure, so a broker that stops
//! answering fails the suite instead of hanging it.
//!
//! Run against Warren: `cargo test -p warren-itest`. Check the expectations against RabbitMQ:
//! `/work/shared/tools/rabbitmq.sh start`, then
//! `WARREN_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5680/%2f cargo test -p warren-itest`
//! (tests that need a custom broker config print "skipped" and pass).

use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use amq_protocol;
pub use futures_lite;
pub use lapin;

mod http;
mod raw;
pub use http::*;
pub use raw::*;

use amq_protocol::types::{AMQPValue, FieldTable};
use futures_lite::Stream;
use futures_lite::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeBindOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use warren_server::{Config, ServerHandle};

/// Set this to an `amqp://` URL to run the suite against an external broker (e.g. RabbitMQ).
pub const EXTERNAL_URL_ENV: &str = "WARREN_TEST_AMQP_URL";
/// How long any single wait (a reply, a delivery, a frame) may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `fut` for at most [`WAIT`]; a timeout fails the test, naming `what` was awaited.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Brokers

/// A broker for one test: an in-process Warren on its own port and data dir, or the external
/// broker named by [`EXTERNAL_URL_ENV`].
pub struct TestBroker {
    pub url: String,
    pub addr: SocketAddr,
    handle: Option<ServerHandle>,
    pub external: bool,
    /// `host:port` as written in the URL, so derived URLs keep the same authority.
    authority: String,
    data_dir: Option<PathBuf>,
}

/// Starts a broker with the default test config (or uses the external one).
pub async fn start_broker() -> TestBroker {
    match external_url() {
        Some(url) => external_broker(url),
        None => start_warren(test_config()).await,
    }
}

/// Starts a Warren whose config `f` adjusts. Returns `None` (after printing why) when the suite
/// runs against an external broker, whose config the test cannot choose.
pub async fn start_broker_with(f: impl FnOnce(&mut Config)) -> Option<TestBroker> {
    if external_url().is_some() {
        eprintln!(
            "skipped: this test needs an in-process Warren with a custom config \
             and {EXTERNAL_URL_ENV} is set"
        );
        return None;
    }
    let mut config = test_config();
    f(&mut config);
    Some(start_warren(config).await)
}

/// Whether the suite runs against an external broker.
pub fn is_external() -> bool {
    external_url().is_some()
}

fn external_url() -> Option<String> {
    std::env::var(EXTERNAL_URL_ENV)
        .ok()
        .filter(|url| !url.is_empty())
}

fn external_broker(url: String) -> TestBroker {
    let uri: amq_protocol::uri::AMQPUri = url
        .parse()
        .unwrap_or_else(|e| panic!("{EXTERNAL_URL_ENV}={url} is not an AMQP URL: {e}"));
    let host = uri.authority.host.clone();
    let port = uri.authority.port;
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("cannot resolve {host}:{port} from {EXTERNAL_URL_ENV}"));
    TestBroker {
        url,
        addr,
        handle: None,
        external: true,
        authority: format!("{host}:{port}"),
        data_dir: None,
    }
}

fn test_config() -> Config {
    let mut config = Config::for_tests();
    config.data_dir = std::env::temp_dir().join(unique_name("warren-itest-data"));
    config
}

async fn start_warren(config: Config) -> TestBroker {
    let data_dir = config.data_dir.clone();
    if let Err(e) = std::fs::create_dir_all(&data_dir) {
        panic!("cannot create test data dir {}: {e}", data_dir.display());
    }
    let handle = match warren_server::start(config).await {
        Ok(handle) => handle,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&data_dir);
            panic!("Warren did not start: {e}")
        }
    };
    // With the plain listener off (amqps only), `addr` and `url` name the TLS listener.
    let addr = match handle.local_addrs().first() {
        Some(addr) => *addr,
        None => handle.tls_local_addr().expect("a listener"),
    };
    TestBroker {
        url: format!("amqp://guest:guest@{addr}/%2f"),
        addr,
        handle: Some(handle),
        external: false,
        authority: addr.to_string(),
        data_dir: Some(data_dir),
    }
}

impl TestBroker {
    /// A URL for this broker with other credentials, vhost (already percent-encoded) and query.
    pub fn url_with(&self, user: &str, password: &str, vhost: &str, query: &str) -> String {
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        format!("amqp://{user}:{password}@{}/{vhost}{query}", self.authority)
    }

    /// This broker's URL with a query string (e.g. `frame_max=4096`).
    pub fn url_query(&self, query: &str) -> String {
        self.url_with("guest", "guest", "%2f", query)
    }

    /// A fresh lapin connection (the test fails if it cannot connect).
    pub async fn connect(&self) -> Connection {
        connect(&self.url).await
    }

    /// A fresh lapin connection and one channel on it.
    pub async fn channel(&self) -> (Connection, lapin::Channel) {
        let conn = self.connect().await;
        let ch = within("channel.open-ok", conn.create_channel())
            .await
            .expect("create channel");
        (conn, ch)
    }

    /// Raw socket through the whole handshake as guest.
    pub async fn raw(&self) -> RawConn {
        raw_handshake(self.addr).await
    }

    /// The in-process broker's handle (None for an external broker).
    pub fn handle(&self) -> Option<&warren_server::ServerHandle> {
        self.handle.as_ref()
    }

    /// The in-process broker's data directory (None for an external broker).
    pub fn data_dir(&self) -> Option<&std::path::Path> {
        self.data_dir.as_deref()
    }

    /// The in-process broker's core, to drive its admin interface (users, vhosts, policies)
    /// as the management API will; None for an external broker.
    pub fn broker(&self) -> Option<&std::sync::Arc<warren_core::Broker>> {
        self.handle.as_ref().map(|h| h.broker())
    }

    /// Shuts an in-process broker down (closing its connections with 320); no-op when external.
    pub async fn stop(mut self) {
        if let Some(handle) = self.handle.take() {
            within("broker shutdown", handle.shutdown()).await;
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        // The server's tasks die with the test's runtime; only the data dir needs cleaning.
        if let Some(dir) = self.data_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Connects with lapin, failing the test on error or timeout.
pub async fn connect(url: &str) -> Connection {
    within(
        "lapin connect",
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

/// Connects with lapin and returns the result (for tests expecting a refusal).
pub async fn try_connect(url: &str, properties: ConnectionProperties) -> lapin::Result<Connection> {
    within("lapin connect", Connection::connect(url, properties)).await
}

/// A name no other test (or earlier run against the same external broker) uses.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("itest-{prefix}-{}-{nanos:x}-{n}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// lapin helpers

/// The AMQP reply code carried by a lapin error, if it is a protocol error.
pub fn reply_code(error: &lapin::Error) -> Option<u16> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e) => Some(e.get_id()),
        _ => None,
    }
}

/// Asserts that `result` failed with AMQP reply `code`; returns the reply text.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(result: lapin::Result<T>, code: u16) -> String {
    match result {
        Ok(value) => panic!("expected AMQP error {code}, got success: {value:?}"),
        Err(e) => match e.kind() {
            lapin::ErrorKind::ProtocolError(amqp) => {
                assert_eq!(amqp.get_id(), code, "unexpected reply code: {e}");
                amqp.get_message().to_string()
            }
            _ => panic!("expected AMQP error {code}, got: {e}"),
        },
    }
}

/// The next delivery of a consumer; fails the test on timeout, error or cancellation.
pub async fn next_delivery(consumer: &mut lapin::Consumer) -> lapin::message::Delivery {
    match within("a delivery", consumer.next()).await {
        Some(Ok(delivery)) => delivery,
        Some(Err(e)) => panic!("consumer failed: {e}"),
        None => panic!("consumer was cancelled while a delivery was expected"),
    }
}

/// Publishes to `exchange` with `routing_key` and default properties. Nothing tells when the
/// message is enqueued (RabbitMQ may answer a later basic.get or passive declare on the same
/// channel before it is): use [`publish_confirmed`] when a count or get follows.
pub async fn publish(ch: &lapin::Channel, exchange: &str, routing_key: &str, body: &[u8]) {
    publish_with(ch, exchange, routing_key, body, BasicProperties::default()).await;
}

/// Publishes with the given properties (no mandatory flag).
pub async fn publish_with(
    ch: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) {
    within(
        "basic.publish",
        ch.basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        ),
    )
    .await
    .expect("basic.publish");
}

/// Declares a server-named, exclusive queue and returns its name.
pub async fn declare_temp_queue(ch: &lapin::Channel) -> String {
    let queue = within(
        "queue.declare-ok",
        ch.queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.declare");
    queue.name().to_string()
}

/// Declares (non-passively, non-exclusively) the queue `name` with default flags.
pub async fn declare_queue(ch: &lapin::Channel, name: &str) -> lapin::Queue {
    within(
        "queue.declare-ok",
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.declare")
}

/// Passive declare: (message_count, consumer_count) of an existing queue.
pub async fn queue_counts(ch: &lapin::Channel, name: &str) -> (u32, u32) {
    let queue = within(
        "passive queue.declare-ok",
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("passive queue.declare");
    (queue.message_count(), queue.consumer_count())
}

/// Deletes a queue, ignoring whether it existed (cleanup on external brokers).
pub async fn delete_queue(ch: &lapin::Channel, name: &str) {
    let _ = within(
        "queue.delete-ok",
        ch.queue_delete(name.into(), QueueDeleteOptions::default()),
    )
    .await;
}

/// basic.get with auto-ack; the body, or `None` on get-empty.
pub async fn get_body(ch: &lapin::Channel, queue: &str) -> Option<Vec<u8>> {
    within(
        "basic.get-ok / get-empty",
        ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("basic.get")
    .map(|message| message.delivery.data)
}

/// A lapin channel in confirm mode on `conn`.
pub async fn confirm_channel(conn: &Connection) -> lapin::Channel {
    let ch = within("channel.open-ok", conn.create_channel())
        .await
        .expect("create channel");
    within(
        "confirm.select-ok",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    ch
}

/// Publishes on a confirm-mode channel and waits for the broker's ack: once it arrives the
/// message sits in every queue it was routed to, so counts and gets that follow are exact.
pub async fn publish_confirmed(
    ch: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) {
    let confirm = within(
        "basic.publish",
        ch.basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        ),
    )
    .await
    .expect("basic.publish");
    let confirmation = within("publisher confirm", confirm).await.expect("confirm");
    assert!(
        confirmation.is_ack(),
        "publish was not acked: {confirmation:?}"
    );
}

/// Every message left in `queue`, taken with basic.get (auto-ack), as UTF-8 strings.
pub async fn drain_queue(ch: &lapin::Channel, queue: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    while let Some(body) = get_body(ch, queue).await {
        bodies.push(String::from_utf8_lossy(&body).into_owned());
    }
    bodies
}

/// Declares a non-durable exchange of `kind`.
pub async fn declare_exchange(ch: &lapin::Channel, name: &str, kind: ExchangeKind) {
    within(
        "exchange.declare-ok",
        ch.exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("exchange.declare {name}: {e}"));
}

/// Deletes an exchange, ignoring errors (cleanup on external brokers).
pub async fn delete_exchange(ch: &lapin::Channel, name: &str) {
    let _ = within(
        "exchange.delete-ok",
        ch.exchange_delete(name.into(), ExchangeDeleteOptions::default()),
    )
    .await;
}

/// Binds `queue` to `exchange`.
pub async fn bind_queue(
    ch: &lapin::Channel,
    queue: &str,
    exchange: &str,
    routing_key: &str,
    arguments: FieldTable,
) {
    within(
        "queue.bind-ok",
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            arguments,
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("queue.bind {queue} -> {exchange} ({routing_key}): {e}"));
}

/// Binds exchange `destination` to exchange `source` (exchange-to-exchange).
pub async fn bind_exchange(
    ch: &lapin::Channel,
    destination: &str,
    source: &str,
    routing_key: &str,
) {
    within(
        "exchange.bind-ok",
        ch.exchange_bind(
            destination.into(),
            source.into(),
            routing_key.into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("exchange.bind {destination} -> {source} ({routing_key}): {e}"));
}

/// A consumer on `queue` whose deliveries must be acked.
pub async fn consume_with_ack(ch: &lapin::Channel, queue: &str) -> lapin::Consumer {
    within(
        "basic.consume-ok",
        ch.basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("consume")
}

/// The delayed-message exchange type.
pub const DELAYED_TYPE: &str = "x-delayed-message";

/// Declares an `x-delayed-message` exchange routing as `base` (`x-delayed-type`).
pub async fn declare_delayed(ch: &lapin::Channel, name: &str, base: &str, durable: bool) {
    let mut args = FieldTable::default();
    args.insert("x-delayed-type".into(), AMQPValue::LongString(base.into()));
    within(
        "exchange.declare-ok",
        ch.exchange_declare(
            name.into(),
            ExchangeKind::Custom(DELAYED_TYPE.into()),
            ExchangeDeclareOptions {
                durable,
                ..Default::default()
            },
            args,
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("declare {name}: {e}"));
}

/// Properties carrying `x-delay: ms`.
pub fn delay(ms: i64) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("x-delay".into(), AMQPValue::LongLongInt(ms));
    BasicProperties::default().with_headers(headers)
}

/// The connection's event stream (channel and connection errors show up here).
pub type Events = Pin<Box<dyn Stream<Item = lapin::Event> + Send>>;

/// Subscribes to a connection's events; do it *before* the action whose error you expect.
pub fn events(conn: &Connection) -> Events {
    Box::pin(conn.events_listener())
}

/// Waits for the next error event and asserts its AMQP reply code; returns the reply text.
/// Used for errors that arrive asynchronously (after a publish or an ack, which have no reply).
pub async fn expect_error_event(events: &mut Events, code: u16) -> String {
    loop {
        match within("an error event", events.next()).await {
            Some(lapin::Event::Error(e)) => match e.kind() {
                lapin::ErrorKind::ProtocolError(amqp) => {
                    assert_eq!(amqp.get_id(), code, "unexpected reply code: {e}");
                    return amqp.get_message().to_string();
                }
                _ => panic!("expected AMQP error {code}, got {e}"),
            },
            Some(_) => continue,
            None => panic!("event stream ended while expecting error {code}"),
        }
    }
}

/// Polls `check` until it returns true, failing the test after [`WAIT`]. Only for effects the
/// protocol does not acknowledge (e.g. an exclusive queue is deleted *after* its connection
/// closed, with no reply to anyone); everything else awaits a reply or a delivery.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: still not true after {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `queue` exists (passive declare on a fresh channel of `conn`).
pub async fn queue_exists(conn: &Connection, queue: &str) -> bool {
    let ch = within("channel.open-ok", conn.create_channel())
        .await
        .expect("create channel");
    let result = within(
        "passive queue.declare",
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    match result {
        Ok(_) => {
            let _ = within("channel.close-ok", ch.close(200, "done".into())).await;
            true
        }
        Err(e) if reply_code(&e) == Some(404) => false,
        Err(e) => panic!("passive declare of {queue}: {e}"),
    }
}

/// Proves a broker is still serving: a fresh connection declares a queue, publishes to it and
/// gets the message back. Used after a test has made another connection misbehave.
pub async fn assert_broker_healthy(broker: &TestBroker) {
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let queue = declare_temp_queue(&ch).await;
    publish_confirmed(&ch, "", &queue, b"still alive", BasicProperties::default()).await;
    assert_eq!(
        get_body(&ch, &queue).await.as_deref(),
        Some(&b"still alive"[..])
    );
    let _ = within("connection.close-ok", conn.close(200, "bye".into())).await;
}
