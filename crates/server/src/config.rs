//! The broker's runtime settings, as the server sees them. Parsing flags, environment variables
//! and the TOML file belongs to the `warren` binary; this module only holds the resolved values
//! and their defaults (each default a named constant).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use warren_core::queue::settings::{ConsumerTimeoutAction, DEFAULT_CONSUMER_TIMEOUT_MS};
pub use warren_core::SyncMode;

pub use crate::alarm::{MemoryWatermark, DEFAULT_DISK_FREE_LIMIT_BYTES};

/// AMQP's IANA port.
pub const DEFAULT_PORT: u16 = 5672;
/// amqps' IANA port (AMQP over TLS).
pub const DEFAULT_TLS_PORT: u16 = 5671;
/// Largest frame we offer in connection.tune (RabbitMQ's default).
pub const DEFAULT_FRAME_MAX: u32 = 131_072;
/// The smallest frame_max a client may ask for (the spec's minimum frame size).
pub const FRAME_MIN_SIZE: u32 = 4096;
/// Highest channel number we offer in connection.tune (RabbitMQ's default).
pub const DEFAULT_CHANNEL_MAX: u16 = 2047;
/// Heartbeat interval we suggest in connection.tune.
pub const DEFAULT_HEARTBEAT_SECS: u16 = 60;
/// Largest message body accepted (RabbitMQ's default `max_message_size`).
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 128 * 1024 * 1024;
/// How long a client has to finish the handshake (RabbitMQ's `handshake_timeout`).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A user known to the broker at start-up.
#[derive(Clone, Debug)]
pub struct UserConfig {
    pub name: String,
    pub password: String,
    /// As RabbitMQ's `loopback_users`: such a user may connect only from 127.0.0.0/8 or ::1.
    pub loopback_only: bool,
}

/// The amqps listener: where it listens and the files it serves (RabbitMQ's `listeners.ssl`
/// and `ssl_options`).
#[derive(Clone, Debug)]
pub struct TlsConfig {
    /// Addresses to listen on for amqps. Port 0 picks a free port (tests).
    pub listen: Vec<SocketAddr>,
    /// The server's certificate chain, PEM, leaf first (`ssl_options.certfile`).
    pub cert_chain: PathBuf,
    /// The server's private key, PEM: PKCS#8, RSA or SEC1 (`ssl_options.keyfile`).
    pub key: PathBuf,
    /// CA bundle, PEM, that verifies client certificates (`ssl_options.cacertfile`).
    pub ca: Option<PathBuf>,
    /// Ask for and verify client certificates (`ssl_options.verify = verify_peer`).
    pub verify_peer: bool,
    /// With `verify_peer`: refuse a client that sends no certificate
    /// (`ssl_options.fail_if_no_peer_cert`).
    pub fail_if_no_peer_cert: bool,
}

/// Everything the server needs to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Addresses to listen on for plain AMQP. Port 0 picks a free port (tests). Empty: no
    /// plain listener (RabbitMQ's `listeners.tcp = none`), only amqps.
    pub listen: Vec<SocketAddr>,
    /// The amqps listener; None: off.
    pub tls: Option<TlsConfig>,
    pub data_dir: PathBuf,
    pub users: Vec<UserConfig>,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat_secs: u16,
    pub max_message_bytes: u64,
    pub handshake_timeout: Duration,
    /// How long a delivery may stay unacked (None: forever); a queue's
    /// `x-consumer-timeout` overrides it.
    pub consumer_timeout_ms: Option<u64>,
    /// What a consumer timeout does: requeue and cancel (Warren) or close the channel (RabbitMQ).
    pub consumer_timeout_action: ConsumerTimeoutAction,
    /// `Always` (default): a confirm for a persistent message means it is fsynced.
    pub sync: SyncMode,
    /// Tests only (no flag sets it): a `queue.declare` of this name panics the connection
    /// task, to check that a failed connection still releases what it held.
    pub fault_panic_queue: Option<String>,
    /// Above this resident memory, publishers are blocked (RabbitMQ's memory alarm).
    pub memory_high_watermark: MemoryWatermark,
    /// Below this free space on the data directory's disk, publishers are blocked.
    pub disk_free_limit_bytes: u64,
    /// Most open connections (RabbitMQ's `connection_max`; None: no limit, its default).
    pub connection_max: Option<usize>,
    /// Most consumers on one channel (RabbitMQ's `consumer_max_per_channel`; None: no limit).
    pub consumer_max_per_channel: Option<usize>,
    /// Users who may connect only from loopback addresses (RabbitMQ's `loopback_users`),
    /// besides those in `users` marked `loopback_only`.
    pub loopback_users: Vec<String>,
    /// A definitions file (RabbitMQ's JSON) imported at every start, as RabbitMQ's
    /// `load_definitions`: idempotent; a bad entry stops the start.
    pub definitions_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            // The IPv6 wildcard is dual-stack: every interface, IPv4 and IPv6.
            listen: vec![SocketAddr::from(([0u16; 8], DEFAULT_PORT))],
            tls: None,
            data_dir: PathBuf::from("./data"),
            users: vec![UserConfig {
                name: "guest".into(),
                password: "guest".into(),
                loopback_only: true,
            }],
            frame_max: DEFAULT_FRAME_MAX,
            channel_max: DEFAULT_CHANNEL_MAX,
            heartbeat_secs: DEFAULT_HEARTBEAT_SECS,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            consumer_timeout_ms: Some(DEFAULT_CONSUMER_TIMEOUT_MS),
            consumer_timeout_action: ConsumerTimeoutAction::Requeue,
            sync: SyncMode::Always,
            fault_panic_queue: None,
            memory_high_watermark: MemoryWatermark::default(),
            disk_free_limit_bytes: DEFAULT_DISK_FREE_LIMIT_BYTES,
            connection_max: None,
            consumer_max_per_channel: None,
            loopback_users: Vec::new(),
            definitions_file: None,
        }
    }
}

impl Config {
    /// A config for tests: one listener on 127.0.0.1 with an OS-chosen port and a fresh data
    /// directory under the system's temp dir (the caller removes it).
    pub fn for_tests() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Config {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            data_dir: std::env::temp_dir().join(format!("warren-test-{}-{n}", std::process::id())),
            ..Config::default()
        }
    }
}
