//! Command-line flags, their environment variables and the optional TOML file, resolved into
//! a `warren_server::Config`. Precedence: flag, then environment variable, then file, then
//! the default.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use serde::Deserialize;
use warren_runtime::{RuntimeConfig, BUSY_POLL_MAX};
use warren_server::alarm::{parse_memory_watermark, parse_size};
use warren_server::config::{
    ConsumerTimeoutAction, DEFAULT_CHANNEL_MAX, DEFAULT_CONSUMER_TIMEOUT_MS, DEFAULT_FRAME_MAX,
    DEFAULT_HEARTBEAT_SECS, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_PORT, DEFAULT_TLS_PORT,
    FRAME_MIN_SIZE,
};
use warren_server::config::{MemoryWatermark, DEFAULT_DISK_FREE_LIMIT_BYTES};
use warren_server::{Config, SyncMode, TlsConfig, UserConfig};

/// Warren: an AMQP 0-9-1 message broker that RabbitMQ clients use unchanged.
///
/// Every option can also be set by its environment variable or by a key of the same name
/// (with underscores) in the TOML file given by --config.
#[derive(Debug, Default, Parser)]
#[command(name = "warren", version)]
pub struct Args {
    /// TOML file with settings (keys: port, bind, data_dir, default_user, default_pass,
    /// default_user_remote, frame_max, channel_max, heartbeat, max_message_size,
    /// consumer_timeout, consumer_timeout_action, sync, busy_poll, worker_threads, log_level,
    /// memory_high_watermark, disk_free_limit, connection_max, consumer_max_per_channel,
    /// loopback_users, definitions, plain_listener, tls_port, tls_cert, tls_key, tls_ca,
    /// tls_verify_peer, tls_fail_if_no_peer_cert, mgmt_port, mgmt_listener, mgmt_tls_port,
    /// prometheus_port, prometheus_listener, prometheus_tls_port).
    #[arg(long, env = "WARREN_CONFIG")]
    pub config: Option<PathBuf>,
    /// AMQP port [default: 5672]
    #[arg(long, env = "WARREN_PORT")]
    pub port: Option<u16>,
    /// Addresses to listen on, comma-separated; the amqps listener uses the same ones
    /// [default: all interfaces, IPv4 and IPv6]
    #[arg(long, env = "WARREN_BIND")]
    pub bind: Option<String>,
    /// Listen for plain (unencrypted) AMQP on --port; `false` leaves only the amqps listener
    /// (RabbitMQ's `listeners.tcp = none`) [default: true]
    #[arg(long, env = "WARREN_PLAIN_LISTENER")]
    pub plain_listener: Option<bool>,
    /// Management HTTP API port (RabbitMQ's `management.tcp.port`), on the --bind addresses
    /// [default: 15672]
    #[arg(long, env = "WARREN_MGMT_PORT")]
    pub mgmt_port: Option<u16>,
    /// Serve the management HTTP API on --mgmt-port; `false` turns it off [default: true]
    #[arg(long, env = "WARREN_MGMT_LISTENER")]
    pub mgmt_listener: Option<bool>,
    /// Management HTTP API over HTTPS (RabbitMQ's `management.ssl.port`), with the amqps
    /// certificate and key: on when --tls-cert is given and the management listener is on
    /// [default: 15671]
    #[arg(long, env = "WARREN_MGMT_TLS_PORT")]
    pub mgmt_tls_port: Option<u16>,
    /// Prometheus metrics port (RabbitMQ's `prometheus.tcp.port`: /metrics,
    /// /metrics/per-object, /metrics/detailed), on the --bind addresses [default: 15692]
    #[arg(long, env = "WARREN_PROMETHEUS_PORT")]
    pub prometheus_port: Option<u16>,
    /// Serve Prometheus metrics on --prometheus-port; `false` turns it off [default: true]
    #[arg(long, env = "WARREN_PROMETHEUS_LISTENER")]
    pub prometheus_listener: Option<bool>,
    /// Prometheus metrics over HTTPS (RabbitMQ's `prometheus.ssl.port`), with the amqps
    /// certificate and key: on when --tls-cert is given and the Prometheus listener is on
    /// [default: 15691]
    #[arg(long, env = "WARREN_PROMETHEUS_TLS_PORT")]
    pub prometheus_tls_port: Option<u16>,
    /// amqps (AMQP over TLS) port; the TLS listener is on only when --tls-cert is given
    /// [default: 5671]
    #[arg(long, env = "WARREN_TLS_PORT")]
    pub tls_port: Option<u16>,
    /// The server's certificate chain, PEM, leaf first; turns the amqps listener on
    /// (RabbitMQ's `ssl_options.certfile`)
    #[arg(long, env = "WARREN_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The server's private key, PEM: PKCS#8, RSA or SEC1, unencrypted
    /// (`ssl_options.keyfile`)
    #[arg(long, env = "WARREN_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA bundle, PEM, that verifies client certificates (`ssl_options.cacertfile`); needed
    /// by --tls-verify-peer
    #[arg(long, env = "WARREN_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Ask clients for a certificate and verify it against --tls-ca; a verified certificate
    /// also allows SASL EXTERNAL login (`ssl_options.verify = verify_peer`) [default: false]
    #[arg(long, env = "WARREN_TLS_VERIFY_PEER")]
    pub tls_verify_peer: Option<bool>,
    /// With --tls-verify-peer: refuse clients that send no certificate
    /// (`ssl_options.fail_if_no_peer_cert`) [default: true]
    #[arg(long, env = "WARREN_TLS_FAIL_IF_NO_PEER_CERT")]
    pub tls_fail_if_no_peer_cert: Option<bool>,
    /// Where the broker keeps its data [default: ./data]
    #[arg(long, env = "WARREN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The user created at start [default: guest]
    #[arg(long, env = "WARREN_DEFAULT_USER")]
    pub default_user: Option<String>,
    /// The default user's password [default: guest]
    #[arg(long, env = "WARREN_DEFAULT_PASS")]
    pub default_pass: Option<String>,
    /// Let the default user `guest` log in from other hosts than loopback (RabbitMQ's
    /// `loopback_users = none`) [default: false]; users with other names may always.
    #[arg(long, env = "WARREN_DEFAULT_USER_REMOTE")]
    pub default_user_remote: Option<bool>,
    /// Largest frame offered to clients, in bytes [default: 131072]
    #[arg(long, env = "WARREN_FRAME_MAX")]
    pub frame_max: Option<u32>,
    /// Highest channel number offered to clients [default: 2047]
    #[arg(long, env = "WARREN_CHANNEL_MAX")]
    pub channel_max: Option<u16>,
    /// Heartbeat interval suggested to clients, in seconds; 0 disables [default: 60]
    #[arg(long, env = "WARREN_HEARTBEAT")]
    pub heartbeat: Option<u16>,
    /// Largest message body accepted, in bytes [default: 134217728 (128 MiB)]
    #[arg(long, env = "WARREN_MAX_MESSAGE_SIZE")]
    pub max_message_size: Option<u64>,
    /// How long a delivery may stay unacknowledged, in milliseconds; 0 disables. A queue's
    /// `x-consumer-timeout` argument overrides it [default: 1800000 (30 minutes)]
    #[arg(long, env = "WARREN_CONSUMER_TIMEOUT")]
    pub consumer_timeout: Option<u64>,
    /// What a consumer timeout does: `requeue` (the delivery returns to the queue, the consumer
    /// is cancelled, the channel stays open) or `close-channel` (RabbitMQ's 406) [default: requeue]
    #[arg(long, env = "WARREN_CONSUMER_TIMEOUT_ACTION")]
    pub consumer_timeout_action: Option<String>,
    /// `always`: a publisher confirm for a persistent message means it is fsynced (group
    /// commit). `none`: data is handed to the OS only, faster but a power loss can lose
    /// confirmed messages [default: always]
    #[arg(long, env = "WARREN_SYNC")]
    pub sync: Option<String>,
    /// Longest time, in microseconds, a worker thread spins watching for work before it
    /// sleeps; 0 sleeps at once. Spinning saves the 25-50 us a sleeping core takes to wake (on
    /// VMs especially) at the cost of a core while messages come less than the window apart;
    /// the window closes by itself for sparser traffic. At most 10000 [default: 0]
    #[arg(long, env = "WARREN_BUSY_POLL")]
    pub busy_poll: Option<u64>,
    /// Worker threads [default: one per CPU the process may use]
    #[arg(long, env = "WARREN_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Log filter: error, warn, info, debug, trace, or a tracing filter [default: info]
    #[arg(long, env = "WARREN_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Memory alarm: above this resident memory, publishing connections are blocked. A
    /// number up to 1 is a fraction of the machine's (or cgroup's) memory; anything else a
    /// size (`2GB`, `512MiB`, bytes) [default: 0.4]
    #[arg(long, env = "WARREN_MEMORY_HIGH_WATERMARK")]
    pub memory_high_watermark: Option<String>,
    /// Disk alarm: below this free space on the data directory's disk, publishing
    /// connections are blocked (`50MB`, `1GiB`, bytes) [default: 50MB]
    #[arg(long, env = "WARREN_DISK_FREE_LIMIT")]
    pub disk_free_limit: Option<String>,
    /// Most open connections; more are refused with 530 at connection.open [default: no limit]
    #[arg(long, env = "WARREN_CONNECTION_MAX")]
    pub connection_max: Option<usize>,
    /// Most consumers on one channel; more are refused with 530 [default: no limit]
    #[arg(long, env = "WARREN_CONSUMER_MAX_PER_CHANNEL")]
    pub consumer_max_per_channel: Option<usize>,
    /// Users who may connect only from loopback addresses, comma-separated (RabbitMQ's
    /// `loopback_users`); empty for none [default: guest]
    #[arg(long, env = "WARREN_LOOPBACK_USERS")]
    pub loopback_users: Option<String>,
    /// A definitions file in RabbitMQ's JSON format (`rabbitmqctl export_definitions`)
    /// imported at every start, as RabbitMQ's `load_definitions`: what exists is kept, and a
    /// bad entry stops the start [default: none]
    #[arg(long, env = "WARREN_DEFINITIONS")]
    pub definitions: Option<PathBuf>,
}

/// The TOML file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    port: Option<u16>,
    bind: Option<String>,
    plain_listener: Option<bool>,
    mgmt_port: Option<u16>,
    mgmt_listener: Option<bool>,
    mgmt_tls_port: Option<u16>,
    prometheus_port: Option<u16>,
    prometheus_listener: Option<bool>,
    prometheus_tls_port: Option<u16>,
    tls_port: Option<u16>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    tls_verify_peer: Option<bool>,
    tls_fail_if_no_peer_cert: Option<bool>,
    data_dir: Option<PathBuf>,
    default_user: Option<String>,
    default_pass: Option<String>,
    default_user_remote: Option<bool>,
    frame_max: Option<u32>,
    channel_max: Option<u16>,
    heartbeat: Option<u16>,
    max_message_size: Option<u64>,
    consumer_timeout: Option<u64>,
    consumer_timeout_action: Option<String>,
    sync: Option<String>,
    busy_poll: Option<u64>,
    worker_threads: Option<usize>,
    log_level: Option<String>,
    memory_high_watermark: Option<toml::Value>,
    disk_free_limit: Option<toml::Value>,
    connection_max: Option<usize>,
    consumer_max_per_channel: Option<usize>,
    loopback_users: Option<String>,
    definitions: Option<PathBuf>,
}

/// A TOML value written as a number or a string (`0.4`, `"2GB"`), as text.
fn toml_text(value: toml::Value) -> String {
    match value {
        toml::Value::String(s) => s,
        other => other.to_string(),
    }
}

/// The management HTTP API's port (RabbitMQ's).
pub const DEFAULT_MGMT_PORT: u16 = 15672;
/// The management HTTP API's HTTPS port (RabbitMQ's `management.ssl.port` as documented).
pub const DEFAULT_MGMT_TLS_PORT: u16 = 15671;
/// Prometheus metrics over HTTPS (RabbitMQ's `prometheus.ssl.port` as documented).
pub const DEFAULT_PROMETHEUS_TLS_PORT: u16 = 15691;
/// The Prometheus metrics port (RabbitMQ's).
pub use warren_metrics::DEFAULT_PROMETHEUS_PORT;

pub struct Settings {
    pub config: Config,
    /// Where the management HTTP API listens (empty: off).
    pub mgmt_listen: Vec<SocketAddr>,
    /// Where it listens over HTTPS (empty: off; on with the amqps certificate).
    pub mgmt_tls_listen: Vec<SocketAddr>,
    /// Where Prometheus metrics are served (empty: off).
    pub prometheus_listen: Vec<SocketAddr>,
    /// Where they are served over HTTPS (empty: off; on with the amqps certificate).
    pub prometheus_tls_listen: Vec<SocketAddr>,
    pub runtime: RuntimeConfig,
    pub log_level: String,
}

impl Settings {
    pub fn resolve(args: Args) -> anyhow::Result<Settings> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str::<FileSettings>(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => FileSettings::default(),
        };
        let port = args.port.or(file.port).unwrap_or(DEFAULT_PORT);
        let bind = args.bind.or(file.bind);
        let ips: Vec<IpAddr> = match bind {
            None => Config::default().listen.iter().map(|a| a.ip()).collect(),
            Some(list) => list
                .split(',')
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.trim_matches(|c| c == '[' || c == ']')
                        .parse::<IpAddr>()
                        .with_context(|| format!("invalid --bind address '{s}'"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
        };
        if ips.is_empty() {
            bail!("--bind names no address");
        }
        let listen_on = |port: u16| -> Vec<SocketAddr> {
            ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect()
        };
        let plain_listener = args.plain_listener.or(file.plain_listener).unwrap_or(true);
        let listen = if plain_listener {
            listen_on(port)
        } else {
            Vec::new()
        };
        let mgmt_port = args
            .mgmt_port
            .or(file.mgmt_port)
            .unwrap_or(DEFAULT_MGMT_PORT);
        let mgmt_listen = match args.mgmt_listener.or(file.mgmt_listener).unwrap_or(true) {
            true => listen_on(mgmt_port),
            false => Vec::new(),
        };
        if plain_listener && mgmt_port == port && port != 0 && !mgmt_listen.is_empty() {
            bail!("--mgmt-port and --port are both {port}");
        }
        let prometheus_port = args
            .prometheus_port
            .or(file.prometheus_port)
            .unwrap_or(DEFAULT_PROMETHEUS_PORT);
        let prometheus_listen = match args
            .prometheus_listener
            .or(file.prometheus_listener)
            .unwrap_or(true)
        {
            true => listen_on(prometheus_port),
            false => Vec::new(),
        };
        if !prometheus_listen.is_empty() && prometheus_port != 0 {
            if plain_listener && prometheus_port == port {
                bail!("--prometheus-port and --port are both {port}");
            }
            if !mgmt_listen.is_empty() && prometheus_port == mgmt_port {
                bail!("--prometheus-port and --mgmt-port are both {mgmt_port}");
            }
        }
        let tls = resolve_tls(
            TlsArgs {
                port: args.tls_port.or(file.tls_port),
                cert: args.tls_cert.or(file.tls_cert),
                key: args.tls_key.or(file.tls_key),
                ca: args.tls_ca.or(file.tls_ca),
                verify_peer: args.tls_verify_peer.or(file.tls_verify_peer),
                fail_if_no_peer_cert: args
                    .tls_fail_if_no_peer_cert
                    .or(file.tls_fail_if_no_peer_cert),
            },
            listen_on,
        )?;
        match &tls {
            None if !plain_listener => {
                bail!("--plain-listener false needs the amqps listener (--tls-cert and --tls-key)")
            }
            Some(t) if plain_listener && t.listen[0].port() == port && port != 0 => {
                bail!("--tls-port and --port are both {port}")
            }
            _ => {}
        }
        let mgmt_tls_port = args.mgmt_tls_port.or(file.mgmt_tls_port);
        let mgmt_tls_listen = match (&tls, mgmt_listen.is_empty()) {
            (Some(_), false) => listen_on(mgmt_tls_port.unwrap_or(DEFAULT_MGMT_TLS_PORT)),
            (None, _) if mgmt_tls_port.is_some() => {
                bail!("--mgmt-tls-port is set but HTTPS needs --tls-cert and --tls-key")
            }
            _ => Vec::new(),
        };
        let prometheus_tls_port = args.prometheus_tls_port.or(file.prometheus_tls_port);
        let prometheus_tls_listen = match (&tls, prometheus_listen.is_empty()) {
            (Some(_), false) => {
                listen_on(prometheus_tls_port.unwrap_or(DEFAULT_PROMETHEUS_TLS_PORT))
            }
            (None, _) if prometheus_tls_port.is_some() => {
                bail!("--prometheus-tls-port is set but HTTPS needs --tls-cert and --tls-key")
            }
            _ => Vec::new(),
        };
        let frame_max = args
            .frame_max
            .or(file.frame_max)
            .unwrap_or(DEFAULT_FRAME_MAX);
        if frame_max < FRAME_MIN_SIZE {
            bail!("--frame-max must be at least {FRAME_MIN_SIZE}");
        }
        let user = args
            .default_user
            .or(file.default_user)
            .unwrap_or_else(|| "guest".into());
        let password = args
            .default_pass
            .or(file.default_pass)
            .unwrap_or_else(|| "guest".into());
        let remote = args
            .default_user_remote
            .or(file.default_user_remote)
            .unwrap_or(false);
        // RabbitMQ's default `loopback_users` is guest; --default-user-remote lifts it.
        let loopback_users: Vec<String> = match args.loopback_users.or(file.loopback_users) {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            None if remote => Vec::new(),
            None => vec!["guest".to_owned()],
        };
        let consumer_timeout_ms = match args
            .consumer_timeout
            .or(file.consumer_timeout)
            .unwrap_or(DEFAULT_CONSUMER_TIMEOUT_MS)
        {
            0 => None,
            ms => Some(ms),
        };
        let consumer_timeout_action = match args
            .consumer_timeout_action
            .or(file.consumer_timeout_action)
            .as_deref()
        {
            None | Some("requeue") => ConsumerTimeoutAction::Requeue,
            Some("close-channel") => ConsumerTimeoutAction::CloseChannel,
            Some(other) => bail!(
                "--consumer-timeout-action must be 'requeue' or 'close-channel', not '{other}'"
            ),
        };
        let sync = match args.sync.or(file.sync).as_deref() {
            None | Some("always") => SyncMode::Always,
            Some("none") => SyncMode::None,
            Some(other) => bail!("--sync must be 'always' or 'none', not '{other}'"),
        };
        let busy_poll = Duration::from_micros(args.busy_poll.or(file.busy_poll).unwrap_or(0));
        if busy_poll > BUSY_POLL_MAX {
            bail!(
                "--busy-poll must be at most {} microseconds",
                BUSY_POLL_MAX.as_micros()
            );
        }
        let worker_threads = args.worker_threads.or(file.worker_threads);
        if worker_threads == Some(0) {
            bail!("--worker-threads must be at least 1");
        }
        let memory_high_watermark = match args
            .memory_high_watermark
            .or(file.memory_high_watermark.map(toml_text))
        {
            None => MemoryWatermark::default(),
            Some(text) => parse_memory_watermark(&text).with_context(|| {
                format!(
                    "--memory-high-watermark {text:?}: expected a fraction (0.4) or a size (2GB)"
                )
            })?,
        };
        let disk_free_limit_bytes =
            match args.disk_free_limit.or(file.disk_free_limit.map(toml_text)) {
                None => DEFAULT_DISK_FREE_LIMIT_BYTES,
                Some(text) => parse_size(&text).with_context(|| {
                    format!("--disk-free-limit {text:?}: expected a size (50MB, 1GiB, bytes)")
                })?,
            };
        let config = Config {
            sync,
            consumer_timeout_ms,
            consumer_timeout_action,
            listen,
            tls,
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./data")),
            users: vec![UserConfig {
                loopback_only: false,
                name: user,
                password,
            }],
            loopback_users,
            definitions_file: args.definitions.or(file.definitions),
            frame_max,
            channel_max: args
                .channel_max
                .or(file.channel_max)
                .unwrap_or(DEFAULT_CHANNEL_MAX),
            heartbeat_secs: args
                .heartbeat
                .or(file.heartbeat)
                .unwrap_or(DEFAULT_HEARTBEAT_SECS),
            max_message_bytes: args
                .max_message_size
                .or(file.max_message_size)
                .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES),
            memory_high_watermark,
            disk_free_limit_bytes,
            connection_max: args.connection_max.or(file.connection_max),
            consumer_max_per_channel: args
                .consumer_max_per_channel
                .or(file.consumer_max_per_channel),
            ..Config::default()
        };
        Ok(Settings {
            config,
            mgmt_listen,
            mgmt_tls_listen,
            prometheus_listen,
            prometheus_tls_listen,
            runtime: RuntimeConfig {
                worker_threads,
                busy_poll,
            },
            log_level: args
                .log_level
                .or(file.log_level)
                .unwrap_or_else(|| "info".into()),
        })
    }
}

/// The TLS settings as given (flag, environment or file), before defaults.
struct TlsArgs {
    port: Option<u16>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    verify_peer: Option<bool>,
    fail_if_no_peer_cert: Option<bool>,
}

/// The amqps listener: on when a certificate is given (with its key); the other TLS settings
/// without a certificate are a mistake worth stopping for. The files are read by the server
/// at start, which names any it cannot use.
fn resolve_tls(
    args: TlsArgs,
    listen_on: impl Fn(u16) -> Vec<SocketAddr>,
) -> anyhow::Result<Option<TlsConfig>> {
    let (cert_chain, key) = match (args.cert, args.key) {
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) => bail!("--tls-cert needs --tls-key (the certificate's private key)"),
        (None, Some(_)) => bail!("--tls-key needs --tls-cert"),
        (None, None) => {
            let given = [
                ("--tls-port", args.port.is_some()),
                ("--tls-ca", args.ca.is_some()),
                ("--tls-verify-peer", args.verify_peer.is_some()),
                (
                    "--tls-fail-if-no-peer-cert",
                    args.fail_if_no_peer_cert.is_some(),
                ),
            ];
            if let Some((name, _)) = given.iter().find(|(_, set)| *set) {
                bail!("{name} is set but the amqps listener is off: give --tls-cert and --tls-key");
            }
            return Ok(None);
        }
    };
    let verify_peer = args.verify_peer.unwrap_or(false);
    if verify_peer && args.ca.is_none() {
        bail!("--tls-verify-peer needs --tls-ca (the CA bundle that verifies client certificates)");
    }
    Ok(Some(TlsConfig {
        listen: listen_on(args.port.unwrap_or(DEFAULT_TLS_PORT)),
        cert_chain,
        key,
        ca: args.ca,
        verify_peer,
        // Erlang/OTP 26 and later (what RabbitMQ runs on) default it to true once
        // verify_peer is set: a client without a certificate is refused.
        fail_if_no_peer_cert: args.fail_if_no_peer_cert.unwrap_or(true),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mgmt_https_follows_the_amqps_certificate() {
        let s = Settings::resolve(Args::parse_from(["warren"])).unwrap();
        assert!(s.mgmt_tls_listen.is_empty(), "no certificate, no HTTPS");
        let with_cert = [
            "warren",
            "--tls-cert",
            "/c.pem",
            "--tls-key",
            "/k.pem",
            "--bind",
            "127.0.0.1",
        ];
        let s = Settings::resolve(Args::parse_from(with_cert)).unwrap();
        assert_eq!(
            s.mgmt_tls_listen,
            [SocketAddr::from(([127, 0, 0, 1], DEFAULT_MGMT_TLS_PORT))]
        );
        let mut off = with_cert.to_vec();
        off.extend(["--mgmt-listener", "false"]);
        let s = Settings::resolve(Args::parse_from(off)).unwrap();
        assert!(s.mgmt_tls_listen.is_empty(), "off with the management API");
        let err = Settings::resolve(Args::parse_from(["warren", "--mgmt-tls-port", "1"]));
        assert!(
            err.is_err(),
            "an HTTPS port without a certificate is refused"
        );
    }

    #[test]
    fn prometheus_https_follows_the_amqps_certificate() {
        let s = Settings::resolve(Args::parse_from(["warren"])).unwrap();
        assert!(
            s.prometheus_tls_listen.is_empty(),
            "no certificate, no HTTPS"
        );
        let with_cert = [
            "warren",
            "--tls-cert",
            "/c.pem",
            "--tls-key",
            "/k.pem",
            "--bind",
            "127.0.0.1",
        ];
        let s = Settings::resolve(Args::parse_from(with_cert)).unwrap();
        assert_eq!(
            s.prometheus_tls_listen,
            [SocketAddr::from((
                [127, 0, 0, 1],
                DEFAULT_PROMETHEUS_TLS_PORT
            ))]
        );
        let mut off = with_cert.to_vec();
        off.extend(["--prometheus-listener", "false"]);
        let s = Settings::resolve(Args::parse_from(off)).unwrap();
        assert!(s.prometheus_tls_listen.is_empty(), "off with Prometheus");
        let err = Settings::resolve(Args::parse_from(["warren", "--prometheus-tls-port", "1"]));
        assert!(
            err.is_err(),
            "an HTTPS port without a certificate is refused"
        );
    }

    #[test]
    fn mgmt_listener_port_and_off_switch() {
        let s = Settings::resolve(Args::default()).unwrap();
        assert!(s.mgmt_listen.iter().all(|a| a.port() == DEFAULT_MGMT_PORT));
        assert_eq!(
            s.mgmt_listen.len(),
            s.config.listen.len(),
            "the --bind addresses"
        );
        let dir = std::env::temp_dir().join(format!("warren-mgmt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("warren.toml");
        std::fs::write(&file, "mgmt_port = 15999\nbind = \"127.0.0.1\"\n").unwrap();
        let s = Settings::resolve(Args {
            config: Some(file.clone()),
            ..Args::default()
        })
        .unwrap();
        assert_eq!(s.mgmt_listen, ["127.0.0.1:15999".parse().unwrap()]);
        let s = Settings::resolve(Args {
            config: Some(file),
            mgmt_listener: Some(false),
            ..Args::default()
        })
        .unwrap();
        assert!(s.mgmt_listen.is_empty());
        let err = Settings::resolve(Args {
            port: Some(5800),
            mgmt_port: Some(5800),
            ..Args::default()
        });
        assert!(err.is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn prometheus_listener_port_and_off_switch() {
        let s = Settings::resolve(Args::default()).unwrap();
        assert!(s
            .prometheus_listen
            .iter()
            .all(|a| a.port() == DEFAULT_PROMETHEUS_PORT));
        assert_eq!(
            s.prometheus_listen.len(),
            s.config.listen.len(),
            "the --bind addresses"
        );
        let dir = std::env::temp_dir().join(format!("warren-prometheus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("warren.toml");
        std::fs::write(&file, "prometheus_port = 15999\nbind = \"127.0.0.1\"\n").unwrap();
        let s = Settings::resolve(Args {
            config: Some(file.clone()),
            ..Args::default()
        })
        .unwrap();
        assert_eq!(s.prometheus_listen, ["127.0.0.1:15999".parse().unwrap()]);
        let s = Settings::resolve(Args {
            config: Some(file.clone()),
            prometheus_port: Some(0),
            ..Args::default()
        })
        .unwrap();
        assert_eq!(
            s.prometheus_listen,
            ["127.0.0.1:0".parse().unwrap()],
            "a free port"
        );
        let s = Settings::resolve(Args {
            config: Some(file),
            prometheus_listener: Some(false),
            ..Args::default()
        })
        .unwrap();
        assert!(s.prometheus_listen.is_empty());
        for clash in [
            Args {
                port: Some(5800),
                prometheus_port: Some(5800),
                ..Args::default()
            },
            Args {
                mgmt_port: Some(5800),
                prometheus_port: Some(5800),
                ..Args::default()
            },
        ] {
            assert!(Settings::resolve(clash).is_err());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn defaults_then_file_then_flags() {
        let s = Settings::resolve(Args::default()).unwrap();
        assert_eq!(s.config.listen[0].port(), 5672);
        assert_eq!(s.config.data_dir, PathBuf::from("./data"));
        assert_eq!(s.config.loopback_users, ["guest"]);
        let remote = Settings::resolve(Args {
            default_user_remote: Some(true),
            ..Args::default()
        })
        .unwrap();
        assert!(remote.config.loopback_users.is_empty());
        let listed = Settings::resolve(Args {
            loopback_users: Some("a, b".into()),
            ..Args::default()
        })
        .unwrap();
        assert_eq!(listed.config.loopback_users, ["a", "b"]);

        let dir = std::env::temp_dir().join(format!("warren-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("warren.toml");
        std::fs::write(
            &file,
            "port = 5800\nframe_max = 8192\nbind = \"127.0.0.1\"\n",
        )
        .unwrap();
        let s = Settings::resolve(Args {
            config: Some(file.clone()),
            frame_max: Some(65536),
            ..Args::default()
        })
        .unwrap();
        assert_eq!(s.config.listen, vec!["127.0.0.1:5800".parse().unwrap()]);
        assert_eq!(s.config.frame_max, 65536, "a flag beats the file");

        std::fs::write(&file, "prot = 1\n").unwrap();
        assert!(
            Settings::resolve(Args {
                config: Some(file),
                ..Args::default()
            })
            .is_err(),
            "unknown keys are refused"
        );
        assert!(Settings::resolve(Args {
            frame_max: Some(100),
            ..Args::default()
        })
        .is_err());
        assert_eq!(s_busy(Some(200)).unwrap(), Duration::from_micros(200));
        assert_eq!(s_busy(None).unwrap(), Duration::ZERO);
        assert!(
            s_busy(Some(1_000_000)).is_err(),
            "longer than BUSY_POLL_MAX"
        );
    }

    #[test]
    fn tls_is_on_with_a_certificate_and_listens_where_plain_does() {
        let s = Settings::resolve(Args::default()).unwrap();
        assert!(s.config.tls.is_none(), "off without a certificate");

        let s = Settings::resolve(Args {
            bind: Some("127.0.0.1,::1".into()),
            tls_cert: Some("cert.pem".into()),
            tls_key: Some("key.pem".into()),
            ..Args::default()
        })
        .unwrap();
        let tls = s.config.tls.expect("on");
        assert_eq!(
            tls.listen,
            vec![
                "127.0.0.1:5671".parse().unwrap(),
                "[::1]:5671".parse().unwrap()
            ]
        );
        assert!(!tls.verify_peer, "verify_none, as RabbitMQ");
        assert!(tls.fail_if_no_peer_cert, "Erlang/OTP 26's default");
        assert_eq!(s.config.listen.len(), 2, "the plain listener stays on");

        let dir = std::env::temp_dir().join(format!("warren-settings-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("warren.toml");
        std::fs::write(
            &file,
            "plain_listener = false\ntls_port = 5999\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n\
             tls_ca = \"ca.pem\"\ntls_verify_peer = true\ntls_fail_if_no_peer_cert = false\n",
        )
        .unwrap();
        let s = Settings::resolve(Args {
            config: Some(file.clone()),
            ..Args::default()
        })
        .unwrap();
        assert!(s.config.listen.is_empty(), "plain listener off");
        let tls = s.config.tls.unwrap();
        assert_eq!(tls.listen[0].port(), 5999);
        assert_eq!(tls.ca, Some(PathBuf::from("ca.pem")));
        assert!(tls.verify_peer && !tls.fail_if_no_peer_cert);
        let _ = std::fs::remove_dir_all(dir);

        let refused = |args: Args| Settings::resolve(args).err().map(|e| e.to_string());
        assert!(refused(Args {
            plain_listener: Some(false),
            ..Args::default()
        })
        .unwrap()
        .contains("--plain-listener"));
        assert!(refused(Args {
            tls_cert: Some("c.pem".into()),
            ..Args::default()
        })
        .unwrap()
        .contains("--tls-key"));
        assert!(refused(Args {
            tls_ca: Some("ca.pem".into()),
            ..Args::default()
        })
        .unwrap()
        .contains("--tls-ca"));
        assert!(refused(Args {
            tls_cert: Some("c.pem".into()),
            tls_key: Some("k.pem".into()),
            tls_verify_peer: Some(true),
            ..Args::default()
        })
        .unwrap()
        .contains("--tls-ca"));
        assert!(refused(Args {
            port: Some(5671),
            tls_cert: Some("c.pem".into()),
            tls_key: Some("k.pem".into()),
            ..Args::default()
        })
        .is_some());
    }

    fn s_busy(us: Option<u64>) -> anyhow::Result<Duration> {
        Settings::resolve(Args {
            busy_poll: us,
            ..Args::default()
        })
        .map(|s| s.runtime.busy_poll)
    }
}
