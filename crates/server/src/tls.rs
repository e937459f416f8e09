//! amqps: TLS (rustls, ring provider, TLS 1.2 and 1.3 only) in front of the AMQP connection.
//!
//! It owns loading the certificate, key and CA files into a `rustls::ServerConfig`, the TLS
//! handshake of each accepted socket (bounded by the handshake timeout, run in the
//! connection's own task so a slow client never holds the accept loop), reading the client
//! certificate's subject CN for SASL EXTERNAL, and the pump: a task that moves bytes between
//! the `TlsStream` and one end of a Unix socket pair whose other end the ordinary connection
//! task reads and writes (`transport.rs`). It must not parse AMQP.
//!
//! Why a pump and not a `Connection` generic over a TLS stream: the connection's output path
//! is one non-blocking `try_write` per loop iteration, which a TLS stream has no equivalent of
//! (rustls buffers and encrypts inside `poll_write`), and making the connection generic would
//! either slow the plain path or compile every connection method twice. The pump costs a
//! copy through the kernel per direction, paid by amqps connections only, and runs the
//! encryption in its own task, so on a multi-core machine it overlaps with the AMQP work.
//!
//! Closing: when the connection task shuts its end down (it has sent connection.close-ok or
//! given up), the pump sees EOF, sends close_notify and the TCP FIN, and ends; the caller gives
//! it `CLOSE_OK_TIMEOUT` for that, so a client that stopped reading cannot keep it. When the
//! client closes (close_notify, FIN or a TLS error), the pump shuts the pair's write side and
//! the connection task reads EOF as from a closed TCP socket.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::timeout;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// rustls's server configuration, for callers that build listeners of their own.
pub use rustls::ServerConfig as RustlsServerConfig;

/// Buffer of each direction of a pump: one TLS record's plaintext (16 KiB).
pub const TLS_PUMP_BUFFER_BYTES: usize = 16 * 1024;

/// What the TLS handshake learned about the client.
#[derive(Clone, Debug, Default)]
pub(crate) struct TlsPeer {
    /// The client presented a certificate and the CA bundle verified it (only possible with
    /// peer verification on: without it, no certificate is asked for).
    pub client_certificate: bool,
    /// The verified certificate's subject common name (the SASL EXTERNAL user name).
    pub common_name: Option<String>,
}

/// Builds the rustls configuration from the files named in `config`. Every error names the
/// file (or the setting) at fault, so the broker refuses to start with a clear message.
pub fn server_config(config: &TlsConfig) -> io::Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = load_certs(&config.cert_chain, "--tls-cert")?;
    let key = load_key(&config.key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| invalid(format!("TLS protocol versions: {e}")))?;
    let builder = if config.verify_peer {
        let Some(ca) = &config.ca else {
            return Err(invalid(
                "--tls-verify-peer needs --tls-ca (the CA bundle that verifies client certificates)"
                    .into(),
            ));
        };
        let mut roots = RootCertStore::empty();
        for cert in load_certs(ca, "--tls-ca")? {
            roots.add(cert).map_err(|e| {
                invalid(format!(
                    "--tls-ca {}: not a usable CA certificate: {e}",
                    ca.display()
                ))
            })?;
        }
        let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        if !config.fail_if_no_peer_cert {
            verifier = verifier.allow_unauthenticated();
        }
        let verifier = verifier
            .build()
            .map_err(|e| invalid(format!("--tls-ca {}: {e}", ca.display())))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let server = builder.with_single_cert(certs, key).map_err(|e| {
        invalid(format!(
            "--tls-cert {} / --tls-key {}: {e}",
            config.cert_chain.display(),
            config.key.display()
        ))
    })?;
    Ok(Arc::new(server))
}

/// The rustls configuration of the HTTPS listeners (management API): the same certificate
/// and key as amqps, TLS 1.2 and 1.3, ALPN `http/1.1`, no client certificates (HTTP clients
/// log in with basic auth).
pub fn http_server_config(config: &TlsConfig) -> io::Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = load_certs(&config.cert_chain, "--tls-cert")?;
    let key = load_key(&config.key)?;
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| invalid(format!("TLS protocol versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            invalid(format!(
                "--tls-cert {} / --tls-key {}: {e}",
                config.cert_chain.display(),
                config.key.display()
            ))
        })?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

fn invalid(text: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, text)
}

fn read_file(path: &Path, setting: &str) -> io::Result<Vec<u8>> {
    fs::read(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{setting} {}: {e}", path.display())))
}

fn load_certs(path: &Path, setting: &str) -> io::Result<Vec<CertificateDer<'static>>> {
    let pem = read_file(path, setting)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("{setting} {}: bad PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(format!(
            "{setting} {}: no PEM certificate (BEGIN CERTIFICATE) in the file",
            path.display()
        )));
    }
    Ok(certs)
}

/// The first private key in the file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
fn load_key(path: &Path) -> io::Result<PrivateKeyDer<'static>> {
    let pem = read_file(path, "--tls-key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        invalid(format!(
            "--tls-key {}: no usable private key (PKCS#8, RSA or SEC1 PEM): {e}",
            path.display()
        ))
    })
}

/// Runs the TLS handshake on an accepted socket, at most `limit` long.
pub(crate) async fn handshake(
    acceptor: &TlsAcceptor,
    socket: TcpStream,
    limit: Duration,
) -> io::Result<(TlsStream<TcpStream>, TlsPeer)> {
    let stream = match timeout(limit, acceptor.accept(socket)).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            ))
        }
    };
    let peer = match stream.get_ref().1.peer_certificates() {
        Some([leaf, ..]) => TlsPeer {
            client_certificate: true,
            common_name: common_name(leaf),
        },
        _ => TlsPeer::default(),
    };
    Ok((stream, peer))
}

/// When the first (leaf) certificate of a PEM chain expires: its `notAfter`, in Unix seconds
/// (the certificate-expiration health check).
pub fn leaf_not_after(chain: &Path) -> io::Result<i64> {
    let certs = load_certs(chain, "--tls-cert")?;
    let (_, parsed) = x509_parser::parse_x509_certificate(certs[0].as_ref())
        .map_err(|e| invalid(format!("--tls-cert {}: {e}", chain.display())))?;
    Ok(parsed.validity().not_after.timestamp())
}

/// The subject's first common name (RabbitMQ's `ssl_cert_login_from = common_name`).
pub(crate) fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let name = parsed
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(name)
}

/// Moves bytes between the client's TLS stream and the connection task's end of the pair
/// until the connection task closes its end (see the module comment for both directions).
pub(crate) async fn pump(tls: TlsStream<TcpStream>, pair: UnixStream, peer: SocketAddr) {
    let (tls_read, mut tls_write) = tokio::io::split(tls);
    let (pair_read, mut pair_write) = pair.into_split();
    let inbound = async move {
        let mut from_client = BufReader::with_capacity(TLS_PUMP_BUFFER_BYTES, tls_read);
        if let Err(e) = tokio::io::copy_buf(&mut from_client, &mut pair_write).await {
            tracing::debug!(peer = %peer, error = %e, "TLS connection read failed");
        }
        // The connection task reads EOF, as from a TCP socket the client closed.
        let _ = pair_write.shutdown().await;
    };
    let outbound = async move {
        let mut to_client = BufReader::with_capacity(TLS_PUMP_BUFFER_BYTES, pair_read);
        let _ = tokio::io::copy_buf(&mut to_client, &mut tls_write).await;
        // close_notify, then the TCP FIN.
        let _ = tls_write.shutdown().await;
    };
    tokio::pin!(outbound);
    tokio::select! {
        _ = &mut outbound => return,
        _ = inbound => {}
    }
    outbound.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("warren-tls-{}-{name}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn files(dir: &Path) -> TlsConfig {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        TlsConfig {
            listen: vec![],
            cert_chain: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            ca: Some(dir.join("ca.pem")),
            verify_peer: true,
            fail_if_no_peer_cert: true,
        }
    }

    fn error_of(config: &TlsConfig) -> String {
        server_config(config).unwrap_err().to_string()
    }

    #[test]
    fn loads_good_files_and_names_the_bad_one() {
        let dir = dir("files");
        let good = files(&dir);
        assert!(server_config(&good).is_ok());

        let missing = TlsConfig {
            cert_chain: dir.join("nope.pem"),
            ..good.clone()
        };
        assert!(
            error_of(&missing).contains("nope.pem"),
            "{}",
            error_of(&missing)
        );

        fs::write(dir.join("garbage.pem"), "not a certificate").unwrap();
        let garbage_cert = TlsConfig {
            cert_chain: dir.join("garbage.pem"),
            ..good.clone()
        };
        let e = error_of(&garbage_cert);
        assert!(e.contains("--tls-cert") && e.contains("garbage.pem"), "{e}");
        let garbage_key = TlsConfig {
            key: dir.join("garbage.pem"),
            ..good.clone()
        };
        let e = error_of(&garbage_key);
        assert!(e.contains("--tls-key") && e.contains("garbage.pem"), "{e}");
        let garbage_ca = TlsConfig {
            ca: Some(dir.join("garbage.pem")),
            ..good.clone()
        };
        let e = error_of(&garbage_ca);
        assert!(e.contains("--tls-ca") && e.contains("garbage.pem"), "{e}");

        // A key that does not belong to the certificate.
        fs::write(
            dir.join("other-key.pem"),
            rcgen::KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        let mismatched = TlsConfig {
            key: dir.join("other-key.pem"),
            ..good.clone()
        };
        let e = error_of(&mismatched);
        assert!(e.contains("cert.pem") && e.contains("other-key.pem"), "{e}");

        let no_ca = TlsConfig {
            ca: None,
            ..good.clone()
        };
        assert!(error_of(&no_ca).contains("--tls-ca"));
        let no_verification = TlsConfig {
            ca: None,
            verify_peer: false,
            ..good
        };
        assert!(server_config(&no_verification).is_ok());
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn reads_the_subject_common_name() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Warren");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(common_name(cert.der()).as_deref(), Some("alice"));

        let params = rcgen::CertificateParams::new(vec!["x".to_string()]).unwrap();
        let mut params = params;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(common_name(cert.der()), None);
        assert_eq!(common_name(&CertificateDer::from(vec![1, 2, 3])), None);
    }
}
