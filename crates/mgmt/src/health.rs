//! RabbitMQ's health checks (`/api/health/checks/...`: 200 `{"status":"ok"}` or 503
//! `{"status":"failed","reason":...}`) and `GET /api/aliveness-test/{vhost}`, which declares
//! the `aliveness-test` queue, publishes one message to it and gets it back, as RabbitMQ does.
//!
//! Owns: the checks' verdicts. Must not touch: anything but the `aliveness-test` queue of
//! the vhost tested (through the vhost's declare and the queue's own commands).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use warren_core::message::Message;
use warren_core::queue::{QueueCommand, QueueDef};
use warren_protocol::basic::AMQPProperties;
use warren_protocol::{FieldTable, ShortString};

use crate::auth::Caller;
use crate::{ApiError, AppState};

/// The queue the aliveness test uses (RabbitMQ's name).
pub const ALIVENESS_QUEUE: &str = "aliveness-test";
/// The body it publishes and expects back.
pub const ALIVENESS_BODY: &[u8] = b"test_message";
/// The channel key its basic.get uses: no channel has it (keys start at 1 << 16).
const ALIVENESS_CHANNEL_KEY: u64 = 0;
/// Units `certificate-expiration/{within}/{unit}` accepts (RabbitMQ's).
pub const CERTIFICATE_EXPIRATION_UNITS: [&str; 4] = ["days", "weeks", "months", "years"];
/// Each unit in days (a month is 30, a year 365).
const CERTIFICATE_EXPIRATION_UNIT_DAYS: [i64; 4] = [1, 7, 30, 365];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/aliveness-test/{vhost}", get(aliveness))
        .route("/api/health/checks/alarms", get(alarms))
        .route("/api/health/checks/local-alarms", get(alarms))
        .route("/api/health/checks/virtual-hosts", get(virtual_hosts))
        .route(
            "/api/health/checks/port-listener/{port}",
            get(port_listener),
        )
        .route(
            "/api/health/checks/protocol-listener/{protocol}",
            get(protocol_listener),
        )
        .route("/api/health/checks/node-is-quorum-critical", get(ok))
        .route("/api/health/checks/node-is-mirror-sync-critical", get(ok))
        .route(
            "/api/health/checks/certificate-expiration/{within}/{unit}",
            get(certificate_expiration),
        )
        .route("/api/health/checks/is-in-service", get(ok))
        .route("/api/health/checks/ready-to-serve-clients", get(ok))
}

fn passed() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// 503 with RabbitMQ's failure body plus the check's own fields.
fn failed(reason: String, extra: Value) -> Response {
    let mut body = json!({"status": "failed", "reason": reason});
    if let (Some(b), Value::Object(extra)) = (body.as_object_mut(), extra) {
        b.extend(extra);
    }
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// Single node, classic queues only: nothing is quorum- or mirror-critical; always in service.
async fn ok(_caller: Caller) -> Response {
    passed()
}

async fn alarms(_caller: Caller, State(state): State<AppState>) -> Response {
    let a = state.node.alarms();
    let mut raised = Vec::new();
    if a.memory {
        raised.push(json!({"node": crate::overview::node_name(), "resource": "memory"}));
    }
    if a.disk {
        raised.push(json!({"node": crate::overview::node_name(), "resource": "disk"}));
    }
    match raised.is_empty() {
        true => passed(),
        false => failed(
            "resource alarm(s) in effect in the cluster".into(),
            json!({ "alarms": raised }),
        ),
    }
}

/// Every vhost is running when it has its broker-side state (`Broker::vhost`).
async fn virtual_hosts(_caller: Caller, State(state): State<AppState>) -> Response {
    let down: Vec<String> = state
        .broker
        .vhosts()
        .into_iter()
        .filter(|v| state.broker.vhost(&v.name).is_none())
        .map(|v| v.name)
        .collect();
    match down.is_empty() {
        true => passed(),
        false => failed(
            "Some virtual hosts are down".into(),
            json!({ "virtual-hosts": down }),
        ),
    }
}

async fn port_listener(
    _caller: Caller,
    State(state): State<AppState>,
    Path(port): Path<String>,
) -> Result<Response, ApiError> {
    let port: u16 = port
        .parse()
        .map_err(|_| ApiError::bad_request(format!("invalid port '{port}'")))?;
    let ports: Vec<u16> = state.node.listeners.iter().map(|l| l.addr.port()).collect();
    Ok(match ports.contains(&port) {
        true => passed(),
        false => failed(
            format!("No active listener on port {port}"),
            json!({"missing": port, "ports": ports}),
        ),
    })
}

/// RabbitMQ's protocol names, with the aliases its health check accepts.
fn normalise_protocol(p: &str) -> String {
    match p.to_ascii_lowercase().as_str() {
        "amqp091" | "amqp0.9.1" | "amqp0-9-1" | "amqp" => "amqp".into(),
        "amqps" | "amqp/ssl" => "amqp/ssl".into(),
        other => other.to_owned(),
    }
}

async fn protocol_listener(
    _caller: Caller,
    State(state): State<AppState>,
    Path(protocol): Path<String>,
) -> Response {
    let wanted = normalise_protocol(&protocol);
    let protocols: Vec<String> = state
        .node
        .listeners
        .iter()
        .map(|l| l.protocol.clone())
        .collect();
    match protocols.contains(&wanted) {
        true => passed(),
        false => failed(
            format!("No active listener for protocol {protocol}"),
            json!({"missing": protocol, "protocols": protocols}),
        ),
    }
}

/// The API has no view of the TLS certificates: a valid request always passes (see
/// docs/management.md).
async fn certificate_expiration(
    _caller: Caller,
    State(state): State<AppState>,
    Path((within, unit)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let Ok(within) = within.parse::<u32>() else {
        return Err(ApiError::bad_request(format!(
            "invalid expiration value '{within}'"
        )));
    };
    let Some(days) = CERTIFICATE_EXPIRATION_UNITS
        .iter()
        .position(|u| *u == unit)
        .map(|i| CERTIFICATE_EXPIRATION_UNIT_DAYS[i])
    else {
        return Err(ApiError::bad_request(format!(
            "invalid unit '{unit}': use one of {}",
            CERTIFICATE_EXPIRATION_UNITS.join(", ")
        )));
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let deadline = now.saturating_add(i64::from(within) * days * 86_400);
    let expiring: Vec<Value> = state
        .node
        .certificates
        .iter()
        .filter(|c| c.not_after <= deadline)
        .map(|c| {
            json!({
                "node": crate::overview::node_name(),
                "protocol": c.listener.protocol,
                "interface": c.listener.addr.ip().to_string(),
                "port": c.listener.addr.port(),
                "certfile": c.certfile,
                "expires": c.not_after,
            })
        })
        .collect();
    if expiring.is_empty() {
        return Ok(passed());
    }
    Ok(failed(
        "Certificates expiring".into(),
        json!({ "expired": expiring }),
    ))
}

/// Declares `aliveness-test` (durable=false), publishes one message into it and gets it back
/// (no-ack); `{"status":"ok"}` when the same body comes back, else 503 as RabbitMQ.
async fn aliveness(caller: Caller, Path(vhost_name): Path<String>) -> Result<Response, ApiError> {
    let vhost = caller.vhost(&vhost_name)?;
    let queue = vhost.declare_queue(
        QueueDef {
            name: ShortString::from(ALIVENESS_QUEUE),
            durable: false,
            exclusive_owner: None,
            auto_delete: false,
            arguments: FieldTable::default(),
        },
        false,
    )?;
    let properties = AMQPProperties::default();
    let message = Arc::new(Message {
        exchange: ShortString::from(""),
        routing_key: ShortString::from(ALIVENESS_QUEUE),
        header_raw: warren_protocol::encode::header_payload(
            &properties,
            ALIVENESS_BODY.len() as u64,
        ),
        properties: Box::new(properties),
        body: bytes::Bytes::from_static(ALIVENESS_BODY),
        properties_bytes: 0,
    });
    queue.send(QueueCommand::Publish(message, None)).await?;
    let got = queue
        .ask(|reply| QueueCommand::Get {
            channel_key: ALIVENESS_CHANNEL_KEY,
            no_ack: true,
            reply,
        })
        .await?;
    Ok(match got {
        Some((d, _)) if d.message.body.as_ref() == ALIVENESS_BODY => passed(),
        Some(_) => failed(
            "aliveness-test queue returned another message".into(),
            json!({}),
        ),
        None => failed("aliveness-test queue is empty".into(), json!({})),
    })
}
