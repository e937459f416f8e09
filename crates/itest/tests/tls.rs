//! amqps: the TLS listener, client certificate verification (RabbitMQ's `verify_peer` /
//! `fail_if_no_peer_cert`) and SASL EXTERNAL. Certificates are made here with rcgen: a CA, a
//! server certificate for 127.0.0.1 and localhost, and client certificates (good, expired,
//! self-signed, from another CA). Clients: lapin over rustls (it can present a client
//! certificate), and `RawConn` over a tokio-rustls stream where a test must see the exact
//! frames (the mechanisms in connection.start, a 403).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{ConnectionBuilder, ConnectionProperties};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use warren_itest::*;
use warren_server::TlsConfig;

// ---------------------------------------------------------------------------------------------
// Certificates

/// A client's certificate and key, PEM.
#[derive(Clone)]
struct Identity {
    cert_pem: String,
    key_pem: String,
}

/// The test's PKI, written to a temporary directory the broker reads.
struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
    other_ca: CertifiedIssuer<'static, KeyPair>,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA")
}

fn leaf_params(names: &[&str], cn: &str, usage: ExtendedKeyUsagePurpose) -> CertificateParams {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![usage];
    params
}

impl Pki {
    fn new() -> Pki {
        let dir = std::env::temp_dir().join(unique_name("warren-tls-pki"));
        std::fs::create_dir_all(&dir).expect("pki dir");
        let pki = Pki {
            dir,
            ca: ca("Warren test CA"),
            other_ca: ca("Another CA"),
        };
        let key = KeyPair::generate().expect("server key");
        let cert = leaf_params(
            &["127.0.0.1", "localhost"],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        )
        .signed_by(&key, &pki.ca)
        .expect("server cert");
        std::fs::write(pki.dir.join("server.pem"), cert.pem()).expect("write");
        std::fs::write(pki.dir.join("server-key.pem"), key.serialize_pem()).expect("write");
        std::fs::write(pki.dir.join("ca.pem"), pki.ca.pem()).expect("write");
        pki
    }

    fn tls_config(&self, verify_peer: bool, fail_if_no_peer_cert: bool) -> TlsConfig {
        TlsConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            cert_chain: self.dir.join("server.pem"),
            key: self.dir.join("server-key.pem"),
            ca: Some(self.dir.join("ca.pem")),
            verify_peer,
            fail_if_no_peer_cert,
        }
    }

    /// A client certificate for `cn` signed by our CA.
    fn client(&self, cn: &str) -> Identity {
        self.client_signed_by(cn, &self.ca, |_| {})
    }

    fn client_signed_by(
        &self,
        cn: &str,
        issuer: &CertifiedIssuer<'static, KeyPair>,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Identity {
        let key = KeyPair::generate().expect("client key");
        let mut params = leaf_params(&[], cn, ExtendedKeyUsagePurpose::ClientAuth);
        adjust(&mut params);
        let cert = params.signed_by(&key, issuer).expect("client cert");
        Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn expired_client(&self, cn: &str) -> Identity {
        self.client_signed_by(cn, &self.ca, |p| {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        })
    }

    fn self_signed_client(&self, cn: &str) -> Identity {
        let key = KeyPair::generate().expect("client key");
        let cert = leaf_params(&[], cn, ExtendedKeyUsagePurpose::ClientAuth)
            .self_signed(&key)
            .expect("self-signed");
        Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn other_ca_client(&self, cn: &str) -> Identity {
        self.client_signed_by(cn, &self.other_ca, |_| {})
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Brokers and clients

/// A broker with the amqps listener (and the plain one); None (the test is skipped) when the
/// suite runs against an external broker.
async fn tls_broker(
    pki: &Pki,
    verify_peer: bool,
    fail_if_no_peer_cert: bool,
) -> Option<TestBroker> {
    let tls = pki.tls_config(verify_peer, fail_if_no_peer_cert);
    start_broker_with(|c| c.tls = Some(tls)).await
}

fn tls_addr(broker: &TestBroker) -> SocketAddr {
    broker
        .handle()
        .and_then(|h| h.tls_local_addr())
        .expect("the amqps listener")
}

fn amqps_url(addr: SocketAddr, query: &str) -> String {
    format!("amqps://guest:guest@{addr}/%2f{query}")
}

/// The ring provider for every rustls client here (lapin's and ours): the workspace builds
/// rustls with two providers, and rustls then wants the process default chosen.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// lapin over amqps, trusting our CA and presenting `identity` if given.
async fn lapin_tls(
    url: &str,
    pki: &Pki,
    identity: Option<&Identity>,
) -> lapin::Result<lapin::Connection> {
    install_crypto_provider();
    let tls = OwnedTLSConfig {
        identity: identity.map(|id| OwnedIdentity::PKCS8 {
            pem: id.cert_pem.clone().into_bytes(),
            key: id.key_pem.clone().into_bytes(),
        }),
        cert_chain: Some(pki.ca.pem()),
    };
    let builder = ConnectionBuilder::new()?
        .with_uri_str(url.to_string())
        .with_properties(ConnectionProperties::default())
        .with_tls_config(tls);
    within("lapin amqps connect", builder.connect()).await
}

/// A tokio-rustls client stream (TLS 1.2 or 1.3) trusting our CA.
async fn tls_stream(
    addr: SocketAddr,
    pki: &Pki,
    identity: Option<&Identity>,
) -> std::io::Result<TlsStream<TcpStream>> {
    install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(pki.ca.der().clone())
        .expect("CA into the root store");
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match identity {
        Some(id) => {
            let chain = CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("client cert PEM");
            let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).expect("key PEM");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth config")
        }
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = within("TCP connect", TcpStream::connect(addr)).await?;
    let name = ServerName::try_from("localhost").expect("server name");
    within("TLS handshake", connector.connect(name, tcp)).await
}

/// `RawConn` over TLS, through connection.start; returns it and the offered mechanisms.
async fn raw_tls_start(
    addr: SocketAddr,
    pki: &Pki,
    identity: Option<&Identity>,
) -> (RawConn, Vec<String>) {
    let stream = tls_stream(addr, pki, identity)
        .await
        .expect("TLS handshake");
    let mut conn = RawConn::over(stream);
    conn.send_header_and_read_start().await;
    let mechanisms = conn
        .mechanisms
        .split_whitespace()
        .map(str::to_string)
        .collect();
    (conn, mechanisms)
}

/// Asserts that a client presenting `identity` (or none) gets no AMQP on the TLS port: the
/// handshake fails, or (TLS 1.3, where the client finishes first) its first read does.
async fn assert_refused(addr: SocketAddr, pki: &Pki, identity: Option<&Identity>, what: &str) {
    let mut stream = match tls_stream(addr, pki, identity).await {
        Err(_) => return,
        Ok(stream) => stream,
    };
    let _ = stream.write_all(AMQP_0_9_1_HEADER).await;
    let _ = stream.flush().await;
    let mut buf = [0u8; 64];
    match within("the refusal", stream.read(&mut buf)).await {
        Err(_) | Ok(0) => {}
        Ok(n) => panic!("{what}: the broker answered {:?}", &buf[..n]),
    }
}

/// Client properties that ask for connection.close on a failed login.
fn auth_failure_close() -> FieldTable {
    let mut capabilities = FieldTable::default();
    capabilities.insert(
        "authentication_failure_close".into(),
        AMQPValue::Boolean(true),
    );
    let mut properties = FieldTable::default();
    properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    properties
}

/// Whether another connection's exclusive queue exists: a passive declare gets 405
/// RESOURCE_LOCKED while it does, 404 once it is gone.
async fn exclusive_queue_exists(conn: &lapin::Connection, queue: &str) -> bool {
    let ch = within("channel.open-ok", conn.create_channel())
        .await
        .expect("channel");
    let declared = within(
        "passive queue.declare",
        ch.queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    match declared.map_err(|e| reply_code(&e)) {
        Ok(_) | Err(Some(405)) => true,
        Err(Some(404)) => false,
        Err(code) => panic!("passive declare of {queue}: {code:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn a_good_client_certificate_logs_in_with_plain_and_with_external() {
    let pki = Pki::new();
    let Some(broker) = tls_broker(&pki, true, true).await else {
        return;
    };
    let addr = tls_addr(&broker);
    let guest = pki.client("guest");

    let (mut raw, mechanisms) = raw_tls_start(addr, &pki, Some(&guest)).await;
    assert!(
        mechanisms.iter().any(|m| m == "EXTERNAL"),
        "EXTERNAL offered with a verified certificate: {mechanisms:?}"
    );
    assert!(mechanisms.iter().any(|m| m == "PLAIN"));
    raw.send_start_ok("EXTERNAL", Vec::new()).await;
    raw.read_tune().await;
    drop(raw); // one left inside the handshake would hold the shutdown below

    for query in ["", "?auth_mechanism=external"] {
        let conn = lapin_tls(&amqps_url(addr, query), &pki, Some(&guest))
            .await
            .unwrap_or_else(|e| panic!("amqps login ({query:?}): {e}"));
        let ch = within("channel.open-ok", conn.create_channel())
            .await
            .expect("channel");
        let queue = declare_temp_queue(&ch).await;
        publish(&ch, "", &queue, b"over TLS").await;
        assert_eq!(
            get_body(&ch, &queue).await.as_deref(),
            Some(&b"over TLS"[..])
        );
        within("connection.close-ok", conn.close(200, "bye".into()))
            .await
            .expect("close");
    }
    broker.stop().await;
}

#[tokio::test]
async fn external_is_offered_only_on_tls_with_a_verified_certificate() {
    let pki = Pki::new();
    let Some(broker) = tls_broker(&pki, false, false).await else {
        return;
    };
    // The plain port: not offered, and asking for it is an unknown mechanism (503).
    let mut plain = RawConn::connect(broker.addr).await;
    plain.send_header_and_read_start().await;
    assert_eq!(plain.mechanisms, "PLAIN AMQPLAIN");
    plain.send_start_ok("EXTERNAL", Vec::new()).await;
    plain.expect_connection_close(503).await;

    // TLS without peer verification: no certificate is asked for, so no EXTERNAL, even from
    // a client that has one.
    let addr = tls_addr(&broker);
    let (mut raw, mechanisms) = raw_tls_start(addr, &pki, Some(&pki.client("guest"))).await;
    assert_eq!(mechanisms, ["PLAIN", "AMQPLAIN"]);
    raw.send_start_ok("EXTERNAL", Vec::new()).await;
    raw.expect_connection_close(503).await;
    broker.stop().await;

    // verify_peer without fail_if_no_peer_cert: a client without a certificate gets in with
    // PLAIN, and is not offered EXTERNAL.
    let Some(broker) = tls_broker(&pki, true, false).await else {
        return;
    };
    let addr = tls_addr(&broker);
    // (Each raw connection is dropped at once: one left inside the handshake would hold the
    // broker's shutdown until the handshake timeout.)
    let (_, mechanisms) = raw_tls_start(addr, &pki, None).await;
    assert_eq!(mechanisms, ["PLAIN", "AMQPLAIN"]);
    let conn = lapin_tls(&amqps_url(addr, ""), &pki, None)
        .await
        .expect("no certificate, PLAIN login");
    assert!(conn.status().connected());
    // ... and one with a good certificate is offered EXTERNAL.
    let (_, mechanisms) = raw_tls_start(addr, &pki, Some(&pki.client("guest"))).await;
    assert!(mechanisms.iter().any(|m| m == "EXTERNAL"));
    broker.stop().await;
}

#[tokio::test]
async fn external_for_a_certificate_naming_an_unknown_user_is_refused_with_403() {
    let pki = Pki::new();
    let Some(broker) = tls_broker(&pki, true, true).await else {
        return;
    };
    let addr = tls_addr(&broker);
    let (mut raw, _) = raw_tls_start(addr, &pki, Some(&pki.client("nobody"))).await;
    raw.send_start_ok_with(auth_failure_close(), "EXTERNAL", Vec::new())
        .await;
    let text = raw.expect_connection_close(403).await;
    assert!(text.contains("EXTERNAL"), "{text}");

    // The password is never what EXTERNAL checks, and PLAIN still checks it.
    let (mut raw, _) = raw_tls_start(addr, &pki, Some(&pki.client("guest"))).await;
    raw.send_start_ok_with(
        auth_failure_close(),
        "PLAIN",
        plain_response("guest", "wrong"),
    )
    .await;
    raw.expect_connection_close(403).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_user_without_a_password_logs_in_by_certificate_only() {
    let pki = Pki::new();
    let Some(broker) = tls_broker(&pki, true, true).await else {
        return;
    };
    let core = broker.broker().expect("in-process broker");
    core.put_user(warren_core::admin::UserSpec {
        name: "certonly".into(),
        password: None,
        tags: Vec::new(),
    })
    .expect("put user");
    core.set_permissions("certonly", "/", ".*", ".*", ".*")
        .expect("permissions");
    let addr = tls_addr(&broker);
    let certonly = pki.client("certonly");
    let url = format!("amqps://certonly:@{addr}/%2f?auth_mechanism=external");
    let conn = lapin_tls(&url, &pki, Some(&certonly))
        .await
        .expect("EXTERNAL login of a password-less user");
    let ch = within("channel.open-ok", conn.create_channel())
        .await
        .expect("channel");
    declare_temp_queue(&ch).await;

    let (mut raw, _) = raw_tls_start(addr, &pki, Some(&certonly)).await;
    raw.send_start_ok_with(
        auth_failure_close(),
        "PLAIN",
        plain_response("certonly", ""),
    )
    .await;
    raw.expect_connection_close(403).await;
    broker.stop().await;
}

#[tokio::test]
async fn expired_self_signed_and_foreign_client_certificates_are_refused() {
    let pki = Pki::new();
    let Some(broker) = tls_broker(&pki, true, true).await else {
        return;
    };
    let addr = tls_addr(&broker);
    assert_refused(addr, &pki, Some(&pki.expired_client("guest")), "expired").await;
    assert_refused(
        addr,
        &pki,
        Some(&pki.self_signed_client("guest")),
        "self-signed",
    )
    .await;
    assert_refused(addr, &pki, Some(&pki.other_ca_client("guest")), "other CA").await;
    assert_refused(addr, &pki, None, "no certificate (fail_if_no_peer_cert)").await;
    assert!(
        lapin_tls(
            &amqps_url(addr, ""),
            &pki,
            Some(&pki.expired_client("guest"))
        )
        .await
        .is_err(),
        "lapin with an expired certificate"
    );
    // The broker keeps serving good clients.
    let conn = lapin_tls(&amqps_url(addr, ""), &pki, Some(&pki.client("guest")))
        .await
        .expect("a good certificate still gets in");
    assert!(conn.status().connected());
    broker.stop().await;
}

#[tokio::test]
async fn a_plain_amqp_client_on_the_tls_port_gets_no_connection_start() {
    let pki = Pki::new();
    let Some(broker) = tls_broker(&pki, false, false).await else {
        return;
    };
    let mut raw = RawConn::connect(tls_addr(&broker)).await;
    raw.send(AMQP_0_9_1_HEADER).await;
    let answer = raw.read_to_eof().await;
    // At most a TLS alert record (content type 21), never AMQP.
    assert!(
        answer.is_empty() || answer[0] == 21,
        "expected nothing or a TLS alert, got {answer:?}"
    );
    assert_broker_healthy(&broker).await;
    broker.stop().await;
}

#[tokio::test]
async fn tls_1_1_is_refused() {
    let pki = Pki::new();
    let Some(broker) = tls_broker(&pki, false, false).await else {
        return;
    };
    // rustls cannot speak TLS 1.1, so the ClientHello is written by hand: version 3.2, no
    // supported_versions extension, one TLS 1.0/1.1 cipher suite.
    let mut hello = vec![0x03, 0x02]; // client_version TLS 1.1
    hello.extend_from_slice(&[7u8; 32]); // random
    hello.push(0); // session id
    hello.extend_from_slice(&[0x00, 0x02, 0xc0, 0x13]); // ECDHE_RSA_WITH_AES_128_CBC_SHA
    hello.extend_from_slice(&[0x01, 0x00]); // compression: null
    let mut handshake = vec![0x01, 0x00, 0x00, hello.len() as u8]; // ClientHello
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x02, 0x00, handshake.len() as u8];
    record.extend_from_slice(&handshake);

    let mut raw = RawConn::connect(tls_addr(&broker)).await;
    raw.send(&record).await;
    let answer = raw.read_to_eof().await;
    // A fatal (2) alert record (21): handshake_failure (40, what rustls sends) or
    // protocol_version (70) — or just the closed socket.
    if !answer.is_empty() {
        assert_eq!(answer[0], 21, "expected a TLS alert, got {answer:?}");
        assert_eq!(
            answer.get(5),
            Some(&2),
            "expected a fatal alert: {answer:?}"
        );
        assert!(
            matches!(answer.get(6), Some(40 | 70)),
            "expected handshake_failure or protocol_version: {answer:?}"
        );
    }
    broker.stop().await;
}

#[tokio::test]
async fn a_message_larger_than_a_tls_record_crosses_intact() {
    let pki = Pki::new();
    let Some(broker) = tls_broker(&pki, true, true).await else {
        return;
    };
    let conn = lapin_tls(
        &amqps_url(tls_addr(&broker), ""),
        &pki,
        Some(&pki.client("guest")),
    )
    .await
    .expect("amqps connect");
    let ch = within("channel.open-ok", conn.create_channel())
        .await
        .expect("channel");
    let queue = declare_temp_queue(&ch).await;
    let big: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let bodies = [b"small".to_vec(), big.clone(), Vec::new(), big];
    let confirms = confirm_channel(&conn).await;
    for body in &bodies {
        publish_confirmed(
            &confirms,
            "",
            &queue,
            body,
            lapin::BasicProperties::default(),
        )
        .await;
    }
    let mut consumer = within(
        "basic.consume-ok",
        ch.basic_consume(
            queue.as_str().into(),
            "tls-consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("consume");
    for (i, body) in bodies.iter().enumerate() {
        let delivery = next_delivery(&mut consumer).await;
        assert!(delivery.data == *body, "body {i} changed on the way");
        within("ack", delivery.ack(BasicAckOptions::default()))
            .await
            .expect("ack");
    }
    within("connection.close-ok", conn.close(200, "bye".into()))
        .await
        .expect("close");
    broker.stop().await;
}

#[tokio::test]
async fn closing_works_both_ways_over_tls() {
    let pki = Pki::new();
    let Some(broker) = tls_broker(&pki, true, true).await else {
        return;
    };
    let addr = tls_addr(&broker);
    let observer = broker.connect().await;

    // The client goes away (TCP closed under TLS): the broker's connection ends and its
    // exclusive queue goes with it.
    let (mut raw, _) = raw_tls_start(addr, &pki, Some(&pki.client("guest"))).await;
    raw.send_start_ok("EXTERNAL", Vec::new()).await;
    let tune = raw.read_tune().await;
    raw.send_tune_ok(tune.channel_max, tune.frame_max, 0).await;
    raw.send_open("/").await;
    raw.expect_open_ok().await;
    raw.open_channel(1).await;
    let queue = unique_name("tls-exclusive");
    raw.call(
        1,
        lapin::protocol::AMQPClass::Queue(lapin::protocol::queue::AMQPMethod::Declare(
            lapin::protocol::queue::Declare {
                queue: queue.as_str().into(),
                passive: false,
                durable: false,
                exclusive: true,
                auto_delete: false,
                nowait: false,
                arguments: FieldTable::default(),
            },
        )),
    )
    .await;
    assert!(exclusive_queue_exists(&observer, &queue).await);
    drop(raw);
    eventually(
        "the exclusive queue of a vanished TLS client is deleted",
        || async { !exclusive_queue_exists(&observer, &queue).await },
    )
    .await;

    // The broker closes (shutdown): connection.close 320, then close_notify (a TLS stream
    // that ends without it is an error in RawConn, not an EOF).
    let (mut raw, _) = raw_tls_start(addr, &pki, Some(&pki.client("guest"))).await;
    raw.send_start_ok("PLAIN", plain_response("guest", "guest"))
        .await;
    let tune = raw.read_tune().await;
    raw.send_tune_ok(tune.channel_max, tune.frame_max, 0).await;
    raw.send_open("/").await;
    raw.expect_open_ok().await;
    drop(observer);
    let stopping = tokio::spawn(broker.stop());
    raw.expect_connection_close(320).await;
    within("broker shutdown", stopping).await.expect("stop");
}

#[tokio::test]
async fn with_the_plain_listener_off_only_amqps_is_served() {
    let pki = Pki::new();
    let tls = pki.tls_config(true, true);
    let Some(broker) = start_broker_with(|c| {
        c.listen.clear();
        c.tls = Some(tls);
    })
    .await
    else {
        return;
    };
    let handle = broker.handle().expect("in-process broker");
    assert!(handle.local_addrs().is_empty(), "no plain listener");
    let conn = lapin_tls(
        &amqps_url(tls_addr(&broker), ""),
        &pki,
        Some(&pki.client("guest")),
    )
    .await
    .expect("amqps connect");
    assert!(conn.status().connected());
    broker.stop().await;
}

#[tokio::test]
async fn the_broker_refuses_to_start_with_unusable_tls_files() {
    if is_external() {
        eprintln!("skipped: needs an in-process broker");
        return;
    }
    let pki = Pki::new();
    let mut config = warren_server::Config::for_tests();
    let missing = pki.dir.join("missing-cert.pem");
    config.tls = Some(TlsConfig {
        cert_chain: missing.clone(),
        ..pki.tls_config(false, false)
    });
    let error = match warren_server::start(config.clone()).await {
        Ok(_) => panic!("started without its certificate"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("missing-cert.pem"), "{error}");

    std::fs::write(
        pki.dir.join("junk.pem"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n",
    )
    .expect("write");
    config.tls = Some(TlsConfig {
        key: pki.dir.join("junk.pem"),
        ..pki.tls_config(false, false)
    });
    let error = match warren_server::start(config.clone()).await {
        Ok(_) => panic!("started with a junk key"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("junk.pem"), "{error}");
    let _ = std::fs::remove_dir_all(&config.data_dir);
}

#[tokio::test]
async fn the_management_api_is_served_over_https_with_the_same_certificate() {
    let pki = Pki::new();
    let Some(b) = start_broker_with(|_| {}).await else {
        println!("skipped: needs an in-process broker");
        return;
    };
    install_crypto_provider();
    let config = warren_server::tls::http_server_config(&pki.tls_config(false, false))
        .expect("HTTPS config from the amqps files");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = warren_mgmt::router(b.broker().expect("in-process").clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(warren_mgmt::https::serve_tls(
        listener,
        config,
        app,
        async {
            let _ = stopped.await;
        },
    ));

    // guest may log in only from loopback: a 200 also shows the peer address got through.
    let stream = tls_stream(addr, &pki, None).await.expect("TLS handshake");
    let (s, body) = http_over(
        stream,
        "localhost",
        "GET",
        "/api/whoami",
        ("guest", "guest"),
        "",
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains(r#""name":"guest""#), "{body}");
    let stream = tls_stream(addr, &pki, None).await.expect("TLS handshake");
    let (s, _) = http_over(
        stream,
        "localhost",
        "GET",
        "/api/whoami",
        ("guest", "nope"),
        "",
    )
    .await;
    assert_eq!(s, 401);
    // Plain HTTP on the HTTPS port gets no HTTP answer.
    let (s, _) = http(addr, "GET", "/api/whoami", ("guest", "guest"), "").await;
    assert_eq!(s, 0);
    let _ = stop.send(());
    b.stop().await;
}
