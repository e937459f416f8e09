//! `warren`: starts the broker. Owns configuration (flags > environment > TOML file >
//! defaults), logging, signal handling and the data directory's lock (a second broker on the
//! same directory exits with status 1, naming the holder's pid); everything else is
//! `warren-server`'s.

mod settings;

use anyhow::Context;
use clap::Parser;
use tracing::info;

fn main() -> anyhow::Result<()> {
    let started_at = std::time::Instant::now();
    let args = settings::Args::parse();
    let settings = settings::Settings::resolve(args)?;
    let started = warren_runtime::build(settings.runtime).context("cannot start the runtime")?;
    let busy_poll = started.busy_poll;
    started
        .runtime
        .block_on(run(settings, busy_poll, started_at))
}

async fn run(
    settings: settings::Settings,
    busy_poll: std::time::Duration,
    started_at: std::time::Instant,
) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&settings.log_level)
                .context("invalid --log-level")?,
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    // Each connection is a file descriptor: take the hard limit, not the shell's soft 1,024
    // (RabbitMQ's start scripts do the same with ulimit).
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => info!(limit, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
    std::fs::create_dir_all(&settings.config.data_dir).with_context(|| {
        format!(
            "cannot create data directory {}",
            settings.config.data_dir.display()
        )
    })?;
    // Held until the process exits: one broker per data directory.
    let _lock = warren_store::DataDirLock::acquire(&settings.config.data_dir)
        .context("refusing to start")?;
    let handle = warren_server::start(settings.config.clone())
        .await
        .context("cannot start the AMQP listener")?;
    let node = || warren_metrics::Node::new(Some(handle.alarms().clone()), started_at);
    let prometheus =
        start_prometheus(&settings.prometheus_listen, handle.broker(), &node, None).await?;
    let prometheus_https = match &settings.config.tls {
        Some(tls) if !settings.prometheus_tls_listen.is_empty() => {
            let config = warren_server::tls::http_server_config(tls)
                .context("cannot set up HTTPS for Prometheus metrics")?;
            let listen = &settings.prometheus_tls_listen;
            Some(start_prometheus(listen, handle.broker(), &node, Some(config)).await?)
        }
        _ => None,
    };
    // The overview lists the Prometheus listeners as RabbitMQ does.
    let mut extra = prometheus.listed("http/prometheus");
    if let Some(https) = &prometheus_https {
        extra.extend(https.listed("https/prometheus"));
    }
    let mgmt = start_mgmt(
        &settings.mgmt_listen,
        &handle,
        &extra,
        settings.config.tls.as_ref(),
        None,
    )
    .await?;
    let https = match &settings.config.tls {
        Some(tls) if !settings.mgmt_tls_listen.is_empty() => {
            let config = warren_server::tls::http_server_config(tls)
                .context("cannot set up HTTPS for the management API")?;
            Some(
                start_mgmt(
                    &settings.mgmt_tls_listen,
                    &handle,
                    &extra,
                    Some(tls),
                    Some(config),
                )
                .await?,
            )
        }
        _ => None,
    };
    info!(
        version = env!("CARGO_PKG_VERSION"),
        data_dir = %settings.config.data_dir.display(),
        busy_poll_us = busy_poll.as_micros() as u64,
        "Warren started"
    );
    if busy_poll < settings.runtime.busy_poll {
        tracing::warn!("busy polling is unavailable here (no /proc epoll descriptor): off");
    }
    wait_for_signal().await;
    info!("shutting down: closing every connection");
    mgmt.stop().await;
    if let Some(https) = https {
        https.stop().await;
    }
    prometheus.stop().await;
    if let Some(https) = prometheus_https {
        https.stop().await;
    }
    handle.shutdown().await;
    info!("stopped");
    Ok(())
}

/// The management API's or Prometheus's HTTP listeners (one per --bind address) and how
/// to stop them.
struct HttpListeners {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Where they listen (ports chosen by the system included).
    addrs: Vec<std::net::SocketAddr>,
}

impl HttpListeners {
    /// The listeners as the management API's overview shows them.
    fn listed(&self, protocol: &str) -> Vec<warren_mgmt::node::Listener> {
        self.addrs
            .iter()
            .map(|addr| warren_mgmt::node::Listener {
                protocol: protocol.into(),
                addr: *addr,
            })
            .collect()
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Resolves when the listeners are told to stop.
type Shutdown = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Binds every address before serving any, so a taken port stops the start; then serves
/// each listener with `serve` in a task of its own until `HttpListeners::stop`.
async fn start_http<F, Fut>(
    addrs: &[std::net::SocketAddr],
    what: &str,
    serve: F,
) -> anyhow::Result<HttpListeners>
where
    F: Fn(tokio::net::TcpListener, Shutdown) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut listeners = Vec::new();
    let mut bound = Vec::new();
    for addr in addrs {
        let listener = warren_server::bind(*addr)
            .with_context(|| format!("cannot listen for {what} on {addr}"))?;
        let local = listener.local_addr()?;
        info!(addr = %local, "{what} listening");
        bound.push(local);
        listeners.push(listener);
    }
    let tasks = listeners
        .into_iter()
        .map(|listener| {
            let mut stopped = stopped.clone();
            let shutdown: Shutdown = Box::pin(async move {
                let _ = stopped.wait_for(|s| *s).await;
            });
            let served = serve(listener, shutdown);
            let what = what.to_owned();
            tokio::spawn(async move {
                if let Err(e) = served.await {
                    tracing::error!(error = %e, "{what} stopped");
                }
            })
        })
        .collect();
    Ok(HttpListeners {
        stop,
        tasks,
        addrs: bound,
    })
}

/// The management API (over HTTPS with `tls`) on `addrs`; `extra` are listeners it shows
/// besides the AMQP ones and its own.
async fn start_mgmt(
    addrs: &[std::net::SocketAddr],
    handle: &warren_server::ServerHandle,
    extra: &[warren_mgmt::node::Listener],
    tls_config: Option<&warren_server::TlsConfig>,
    tls: Option<std::sync::Arc<warren_server::tls::RustlsServerConfig>>,
) -> anyhow::Result<HttpListeners> {
    let broker = handle.broker();
    let mut node = node_context(handle);
    node.listeners.extend(extra.iter().cloned());
    node.certificates = certificates(tls_config, &node.listeners);
    let what = match tls {
        Some(_) => "the management API (HTTPS)",
        None => "the management API",
    };
    start_http(addrs, what, |listener, shutdown| {
        let (broker, node, tls) = (broker.clone(), node.clone(), tls.clone());
        async move {
            match tls {
                Some(tls) => {
                    warren_mgmt::serve_tls_with(listener, tls, broker, node, shutdown).await
                }
                None => warren_mgmt::serve_with(listener, broker, node, shutdown).await,
            }
        }
    })
    .await
}

/// Prometheus metrics on `addrs` (over HTTPS with `tls`, through the management API's TLS
/// listener: one accept path for every HTTPS port).
async fn start_prometheus(
    addrs: &[std::net::SocketAddr],
    broker: &std::sync::Arc<warren_core::Broker>,
    node: &impl Fn() -> warren_metrics::Node,
    tls: Option<std::sync::Arc<warren_server::tls::RustlsServerConfig>>,
) -> anyhow::Result<HttpListeners> {
    let what = match tls {
        Some(_) => "Prometheus metrics (HTTPS)",
        None => "Prometheus metrics",
    };
    start_http(addrs, what, |listener, shutdown| {
        let router = warren_metrics::router(broker.clone(), node());
        let tls = tls.clone();
        async move {
            match tls {
                Some(tls) => warren_mgmt::https::serve_tls(listener, tls, router, shutdown).await,
                None => warren_metrics::serve_router(listener, router, shutdown).await,
            }
        }
    })
    .await
}

/// The certificate of every TLS listener among `listeners` (they share the amqps one), for
/// the certificate-expiration health check; none if it cannot be read (logged).
fn certificates(
    tls: Option<&warren_server::TlsConfig>,
    listeners: &[warren_mgmt::node::Listener],
) -> Vec<warren_mgmt::node::ListenerCertificate> {
    let Some(tls) = tls else {
        return Vec::new();
    };
    let not_after = match warren_server::tls::leaf_not_after(&tls.cert_chain) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the certificate's expiry");
            return Vec::new();
        }
    };
    listeners
        .iter()
        .filter(|l| {
            matches!(
                l.protocol.as_str(),
                "amqp/ssl" | "https" | "https/prometheus"
            )
        })
        .map(|l| warren_mgmt::node::ListenerCertificate {
            listener: l.clone(),
            certfile: tls.cert_chain.display().to_string(),
            not_after,
        })
        .collect()
}

/// What the management API shows of the node: the AMQP listeners and the resource alarms.
fn node_context(handle: &warren_server::ServerHandle) -> warren_mgmt::node::NodeContext {
    use warren_mgmt::node::{Listener, NodeAlarms, NodeContext};
    let listeners = handle
        .local_addrs()
        .iter()
        .map(|addr| ("amqp", addr))
        .chain(
            handle
                .tls_local_addrs()
                .iter()
                .map(|addr| ("amqp/ssl", addr)),
        )
        .map(|(protocol, addr)| Listener {
            protocol: protocol.into(),
            addr: *addr,
        })
        .collect();
    let alarms = handle.alarms().clone();
    NodeContext {
        listeners,
        alarms: Some(std::sync::Arc::new(move || {
            let state = alarms.state();
            NodeAlarms {
                memory: state.memory,
                disk: state.disk,
                memory_limit_bytes: alarms.memory_limit_bytes(),
                disk_free_limit_bytes: alarms.disk_free_limit_bytes(),
                disk_free_bytes: alarms.disk_free_bytes(),
            }
        })),
        ..NodeContext::default()
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
