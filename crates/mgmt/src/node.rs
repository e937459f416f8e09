//! `GET /api/nodes` and `/api/nodes/{name}`: Warren is one node. Also what the API knows of
//! the node beyond the broker (`NodeContext`: its listeners and its resource alarms), given
//! by whoever runs the API (the `warren` binary), since alarms and listeners belong to
//! `warren-server`, which this crate must not depend on.
//!
//! Owns: the node JSON and the process figures read from /proc. Must not touch: the alarms
//! (only reads them through `NodeContext::alarms`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::listing::ListQuery;
use crate::overview::node_name;
use crate::{ApiError, AppState};

/// RabbitMQ's default Erlang process limit, reported as `proc_total`.
pub const PROC_TOTAL: u64 = 1_048_576;

/// The resource alarms and their thresholds, as the broker's alarm monitor has them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeAlarms {
    pub memory: bool,
    pub disk: bool,
    pub memory_limit_bytes: u64,
    pub disk_free_limit_bytes: u64,
    /// None: not readable.
    pub disk_free_bytes: Option<u64>,
}

/// Reads the alarm state now.
pub type AlarmReader = Arc<dyn Fn() -> NodeAlarms + Send + Sync>;

/// One listener of the node: RabbitMQ's protocol name (`amqp`, `amqp/ssl`, `http`) and address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub protocol: String,
    pub addr: SocketAddr,
}

/// A TLS listener's certificate, for the certificate-expiration health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerCertificate {
    pub listener: Listener,
    pub certfile: String,
    /// The leaf certificate's `notAfter`, Unix seconds.
    pub not_after: i64,
}

/// What the API knows of the node besides the broker. `Default`: no listeners known and no
/// alarm reader (alarms read as off, limits as 0).
#[derive(Clone)]
pub struct NodeContext {
    pub listeners: Vec<Listener>,
    pub alarms: Option<AlarmReader>,
    /// When the node started (`uptime`).
    pub started: Instant,
    /// The TLS listeners' certificates (empty without TLS).
    pub certificates: Vec<ListenerCertificate>,
}

impl Default for NodeContext {
    fn default() -> Self {
        NodeContext {
            listeners: Vec::new(),
            alarms: None,
            started: Instant::now(),
            certificates: Vec::new(),
        }
    }
}

impl NodeContext {
    pub fn alarms(&self) -> NodeAlarms {
        self.alarms.as_ref().map(|read| read()).unwrap_or_default()
    }

    /// `listeners` in RabbitMQ's overview and node JSON.
    pub fn listeners_json(&self) -> Value {
        Value::Array(
            self.listeners
                .iter()
                .map(|l| {
                    json!({
                        "node": node_name(),
                        "protocol": l.protocol,
                        "ip_address": l.addr.ip().to_string(),
                        "port": l.addr.port(),
                        "socket_opts": {},
                    })
                })
                .collect(),
        )
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/nodes", get(list))
        .route("/api/nodes/{name}", get(show))
}

/// The soft `Max open files` limit from /proc/self/limits.
fn fd_total() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Open sockets: entries of /proc/self/fd that link to `socket:[...]`.
fn sockets_used() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    let sockets = entries
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count();
    Some(sockets as u64)
}

/// The process's threads (RabbitMQ counts Erlang processes; Warren's unit is the thread).
fn threads() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Threads:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub fn node_json(state: &AppState) -> Value {
    let alarms = state.node.alarms();
    let fd_total = fd_total().unwrap_or(0);
    json!({
        "name": node_name(),
        "type": "disc",
        "running": true,
        "os_pid": std::process::id().to_string(),
        "mem_used": warren_core::overview::resident_memory_bytes().unwrap_or(0),
        "mem_limit": alarms.memory_limit_bytes,
        "mem_alarm": alarms.memory,
        "mem_calculation_strategy": "rss",
        "disk_free": alarms.disk_free_bytes.unwrap_or(0),
        "disk_free_limit": alarms.disk_free_limit_bytes,
        "disk_free_alarm": alarms.disk,
        "fd_used": warren_core::overview::open_file_descriptors().unwrap_or(0),
        "fd_total": fd_total,
        "sockets_used": sockets_used().unwrap_or(0),
        "sockets_total": fd_total,
        "proc_used": threads().unwrap_or(0),
        "proc_total": PROC_TOTAL,
        "uptime": state.node.started.elapsed().as_millis() as u64,
        "processors": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "run_queue": 0,
        "rates_mode": "basic",
        "partitions": [],
        "listeners": state.node.listeners_json(),
        "being_drained": false,
    })
}

async fn list(
    caller: Caller,
    State(state): State<AppState>,
    q: ListQuery,
) -> Result<Json<Value>, ApiError> {
    caller.require_monitor()?;
    q.respond(vec![node_json(&state)]).map(Json)
}

async fn show(
    caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_monitor()?;
    if name != node_name() {
        return Err(ApiError::not_found(format!("node '{name}'")));
    }
    Ok(Json(node_json(&state)))
}
