//! Warren's AMQP server: accepts TCP connections (plain AMQP, and amqps through `tls`) and runs
//! one task per connection.
//! It owns sockets, connection and channel state; broker state (vhosts, exchanges, queues)
//! belongs to `warren-core` and is reached only through its handles and snapshots.

mod access;
pub mod alarm;
mod basic;
mod channel;
pub mod config;
mod confirms;
mod connection;
mod definitions;
mod firehose;
#[doc(hidden)]
pub mod fuzz_support;
mod properties;
mod reply_to;
mod sasl;
pub mod tls;
mod transport;

pub use config::{Config, SyncMode, TlsConfig, UserConfig};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{error, info, warn};
use warren_core::broker::{BrokerSettings, DefaultUser};
use warren_core::queue::settings::QueueDefaults;
use warren_core::Broker;

use crate::connection::{ServerContext, CLOSE_OK_TIMEOUT};
use crate::transport::Stream;

/// A running broker. Dropping it does not stop the broker; call [`ServerHandle::shutdown`].
pub struct ServerHandle {
    addrs: Vec<SocketAddr>,
    tls_addrs: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
    /// Closes (recv returns None) when the listeners and every connection task have ended.
    finished: mpsc::Receiver<()>,
    alarms: Arc<alarm::Alarms>,
    broker: Arc<Broker>,
}

impl ServerHandle {
    /// The broker's core: its admin interface (users, vhosts, permissions, policies, limits)
    /// for the management API, the CLI and tests.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// The address of the first plain AMQP listener (with the real port when the config
    /// asked for 0). Panics when the plain listener is off (`Config::listen` empty).
    pub fn local_addr(&self) -> SocketAddr {
        *self
            .addrs
            .first()
            .expect("the plain AMQP listener is off: use tls_local_addr")
    }

    /// The address of the first amqps listener; None when TLS is off.
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.tls_addrs.first().copied()
    }

    /// All amqps listening addresses.
    pub fn tls_local_addrs(&self) -> &[SocketAddr] {
        &self.tls_addrs
    }

    /// The memory and disk alarms (thresholds can be changed while running).
    pub fn alarms(&self) -> &Arc<alarm::Alarms> {
        &self.alarms
    }

    /// All plain AMQP listening addresses.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// `amqp://guest:guest@<addr>/%2f` for the first plain listener (panics when it is off).
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.local_addr())
    }

    /// Stops accepting, closes every connection with 320 CONNECTION_FORCED and waits until
    /// all are gone.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.finished.recv().await.is_some() {}
        // Every connection is gone (their acks reached the queues): the queues sync their
        // logs, so nothing a client acked comes back after a clean restart.
        self.broker.flush_queues().await;
    }
}

/// Binds every listener in `config.listen` (and `config.tls.listen`) and starts serving in
/// the background. Bad TLS files are an error naming the file, before anything is opened.
pub async fn start(config: Config) -> std::io::Result<ServerHandle> {
    let tls_acceptor = match &config.tls {
        Some(tls) => Some(TlsAcceptor::from(tls::server_config(tls)?)),
        None => None,
    };
    let tls_listen = config
        .tls
        .as_ref()
        .map(|t| t.listen.clone())
        .unwrap_or_default();
    if config.listen.is_empty() && tls_listen.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "no listener: the plain AMQP listener is off and TLS is not configured",
        ));
    }
    let settings = BrokerSettings {
        queue_defaults: QueueDefaults {
            consumer_timeout_ms: config.consumer_timeout_ms,
            consumer_timeout_action: config.consumer_timeout_action,
        },
        default_users: config
            .users
            .iter()
            .map(|u| DefaultUser {
                name: u.name.clone(),
                password: u.password.clone(),
                tags: vec!["administrator".into()],
            })
            .collect(),
        loopback_users: config
            .users
            .iter()
            .filter(|u| u.loopback_only)
            .map(|u| u.name.clone())
            .chain(config.loopback_users.iter().cloned())
            .collect(),
    };
    let broker = Broker::open(&config.data_dir, config.sync, settings)
        .map_err(|e| std::io::Error::other(format!("cannot open the data directory: {e}")))?;
    if let Some(path) = &config.definitions_file {
        load_definitions(&broker, path).await?;
    }
    let mut listeners = Vec::new();
    for addr in &config.listen {
        let listener = bind(*addr)?;
        info!(address = %listener.local_addr()?, "listening for AMQP 0-9-1");
        listeners.push(listener);
    }
    let addrs = listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut tls_listeners = Vec::new();
    for addr in &tls_listen {
        let listener = bind(*addr)?;
        info!(address = %listener.local_addr()?, "listening for AMQP 0-9-1 over TLS");
        tls_listeners.push(listener);
    }
    let tls_addrs = tls_listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<std::io::Result<Vec<_>>>()?;
    let alarms = Arc::new(alarm::Alarms::new(
        config.memory_high_watermark,
        config.disk_free_limit_bytes,
        config.data_dir.clone(),
    ));
    alarms.check();
    let ctx = Arc::new(ServerContext {
        broker: broker.clone(),
        config,
        alarms: alarms.clone(),
        open_connections: AtomicUsize::new(0),
    });
    let (shutdown, shutdown_rx) = watch::channel(false);
    tokio::spawn(alarm::monitor(alarms.clone(), shutdown_rx.clone()));
    let (done_tx, finished) = mpsc::channel(1);
    let next_id = Arc::new(AtomicU64::new(1));
    let tagged = listeners
        .into_iter()
        .map(|l| (l, None))
        .chain(tls_listeners.into_iter().map(|l| (l, tls_acceptor.clone())));
    for (listener, tls) in tagged {
        tokio::spawn(accept_loop(
            listener,
            tls,
            ctx.clone(),
            shutdown_rx.clone(),
            done_tx.clone(),
            next_id.clone(),
        ));
    }
    Ok(ServerHandle {
        addrs,
        tls_addrs,
        shutdown,
        finished,
        alarms,
        broker,
    })
}

/// Imports a definitions file at start (RabbitMQ's `load_definitions`); any error stops the
/// start, naming the file and the entry.
async fn load_definitions(broker: &Arc<Broker>, path: &std::path::Path) -> std::io::Result<()> {
    let fail =
        |e: String| std::io::Error::other(format!("definitions file {}: {e}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let defs =
        warren_core::definitions_json::parse(&text).map_err(|e| fail(e.text().to_owned()))?;
    let report = broker
        .import_definitions(&defs)
        .await
        .map_err(|e| fail(e.text().to_owned()))?;
    info!(
        file = %path.display(),
        users = defs.users.len(),
        vhosts = defs.vhosts.len(),
        queues = defs.queues.len(),
        skipped = report.skipped.len(),
        "definitions loaded"
    );
    Ok(())
}

/// Binds with SO_REUSEADDR so a restarted broker gets its port back at once. The IPv6
/// wildcard (the default) is dual-stack on Linux and so also serves IPv4; where the machine
/// has no IPv6, it falls back to the IPv4 wildcard.
/// (Public: the `warren` binary binds the management listener the same way.)
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    match bind_one(addr) {
        Err(e) if addr.ip().is_unspecified() && addr.is_ipv6() => {
            tracing::warn!(error = %e, "cannot listen on IPv6, falling back to IPv4 only");
            bind_one(SocketAddr::from(([0, 0, 0, 0], addr.port())))
        }
        other => other,
    }
}

fn bind_one(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts on one listener; `tls` is Some on an amqps listener. The TLS handshake runs in
/// the connection's task, never here.
async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    ctx: Arc<ServerContext>,
    mut shutdown: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
    next_id: Arc<AtomicU64>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let _ = socket.set_nodelay(true);
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    let ctx = ctx.clone();
                    let shutdown = shutdown.clone();
                    let done = done.clone();
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        match tls {
                            None => {
                                let stream = Stream::Tcp(socket);
                                connection::serve(stream, peer, id, ctx, shutdown, None).await;
                            }
                            Some(acceptor) => {
                                serve_tls(acceptor, socket, peer, id, ctx, shutdown).await;
                            }
                        }
                        drop(done);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: keep serving the others.
                    error!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// One amqps connection: the TLS handshake (bounded by the handshake timeout; a broker
/// shutdown ends it too), then the pump in a task of its own and the ordinary connection over
/// a Unix socket pair (see `tls.rs`). Returns once both have ended.
async fn serve_tls(
    acceptor: TlsAcceptor,
    socket: TcpStream,
    peer: SocketAddr,
    id: u64,
    ctx: Arc<ServerContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = ctx.config.handshake_timeout;
    let handshake = tokio::select! {
        result = tls::handshake(&acceptor, socket, limit) => result,
        _ = shutdown.changed() => return,
    };
    let (stream, tls_peer) = match handshake {
        Ok(done) => done,
        Err(e) => {
            warn!(connection = id, peer = %peer, error = %e, "TLS handshake failed");
            return;
        }
    };
    let (pump_end, connection_end) = match UnixStream::pair() {
        Ok(pair) => pair,
        Err(e) => {
            error!(connection = id, peer = %peer, error = %e, "cannot create the TLS socket pair");
            return;
        }
    };
    let pump = tokio::spawn(tls::pump(stream, pump_end, peer));
    let stream = Stream::Unix(connection_end);
    connection::serve(stream, peer, id, ctx, shutdown, Some(tls_peer)).await;
    // The connection has shut its end: the pump delivers what is left and close_notify, but a
    // client that stopped reading does not keep it.
    let abort = pump.abort_handle();
    if tokio::time::timeout(CLOSE_OK_TIMEOUT, pump).await.is_err() {
        abort.abort();
    }
}
