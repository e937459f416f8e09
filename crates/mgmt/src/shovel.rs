//! RabbitMQ's way of moving messages, accepted so that its UI's "Move messages" button and
//! scripts written for it work: a dynamic shovel parameter
//! (`PUT /api/parameters/shovel/{vhost}/{name}` with `src-queue`, `dest-queue` or
//! `dest-exchange` [+ `dest-exchange-key`], `src-delete-after`). Warren runs it as a move
//! within the broker (`Broker::move_messages_until`) and forgets the parameter when the move
//! ends, as RabbitMQ deletes a shovel whose `src-delete-after` is reached.
//!
//! Only that form is served: both URIs must name this broker (`amqp://`, `amqp:///vhost`,
//! or localhost) and the parameter's vhost, and `src-delete-after` must be `queue-length` or
//! a count; a standing or remote shovel is refused with 400.
//!
//! Owns: the running moves (`Shovels`). Must not touch: queues except through the broker's
//! move operation.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use warren_core::admin::messages::MoveTarget;

use crate::auth::Caller;
use crate::body::{kind, opt_str, JsonObject};
use crate::messages::{move_checked, required_str};
use crate::overview::node_name;
use crate::{ApiError, AppState};

/// The parameter component RabbitMQ's shovel plugin registers.
pub const SHOVEL_COMPONENT: &str = "shovel";

/// One running move: its parameter as given, and the switch that stops it.
struct Running {
    value: Map<String, Value>,
    stop: Arc<AtomicBool>,
}

/// The moves started through shovel parameters and still running, by (vhost, name).
#[derive(Default)]
pub struct Shovels {
    running: Mutex<BTreeMap<(String, String), Running>>,
}

impl Shovels {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/parameters/shovel", get(list))
        .route("/api/parameters/shovel/{vhost}", get(list_vhost))
        .route(
            "/api/parameters/shovel/{vhost}/{name}",
            get(show).put(put).delete(delete),
        )
        .route("/api/shovels", get(status))
        .route("/api/shovels/{vhost}", get(status_vhost))
}

fn parameter_json(vhost: &str, name: &str, value: &Map<String, Value>) -> Value {
    json!({
        "component": SHOVEL_COMPONENT,
        "vhost": vhost,
        "name": name,
        "value": value,
    })
}

fn listed(caller: &Caller, state: &AppState, vhost: Option<&str>) -> Vec<Value> {
    state
        .shovels
        .lock()
        .iter()
        .filter(|((v, _), _)| vhost.is_none_or(|want| want == v) && caller.can_see_vhost(v))
        .map(|((v, n), r)| parameter_json(v, n, &r.value))
        .collect()
}

async fn list(caller: Caller, State(state): State<AppState>) -> Json<Value> {
    Json(Value::Array(listed(&caller, &state, None)))
}

async fn list_vhost(
    caller: Caller,
    State(state): State<AppState>,
    Path(vhost): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_vhost(&vhost)?;
    Ok(Json(Value::Array(listed(&caller, &state, Some(&vhost)))))
}

async fn show(
    caller: Caller,
    State(state): State<AppState>,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    caller.require_vhost(&vhost)?;
    let shovels = state.shovels.lock();
    let r = shovels
        .get(&(vhost.clone(), name.clone()))
        .ok_or_else(|| ApiError::not_found("Object Not Found"))?;
    Ok(Json(parameter_json(&vhost, &name, &r.value)))
}

/// RabbitMQ's `/api/shovels` status form: every running one is `running`.
fn status_json(caller: &Caller, state: &AppState, vhost: Option<&str>) -> Value {
    Value::Array(
        state
            .shovels
            .lock()
            .keys()
            .filter(|(v, _)| vhost.is_none_or(|want| want == v) && caller.can_see_vhost(v))
            .map(|(v, n)| {
                json!({
                    "node": node_name(),
                    "vhost": v,
                    "name": n,
                    "type": "dynamic",
                    "state": "running",
                })
            })
            .collect(),
    )
}

async fn status(caller: Caller, State(state): State<AppState>) -> Json<Value> {
    Json(status_json(&caller, &state, None))
}

async fn status_vhost(
    caller: Caller,
    State(state): State<AppState>,
    Path(vhost): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_vhost(&vhost)?;
    Ok(Json(status_json(&caller, &state, Some(&vhost))))
}

/// Stops a running move between two batches (what it moved stays moved).
async fn delete(
    caller: Caller,
    State(state): State<AppState>,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require_policymaker_in(&vhost)?;
    let removed = state.shovels.lock().remove(&(vhost, name));
    match removed {
        Some(r) => {
            r.stop.store(true, Ordering::Relaxed);
            Ok(StatusCode::NO_CONTENT)
        }
        None => Err(ApiError::not_found("Object Not Found")),
    }
}

async fn put(
    caller: Caller,
    State(state): State<AppState>,
    Path((vhost, name)): Path<(String, String)>,
    JsonObject(body): JsonObject,
) -> Result<StatusCode, ApiError> {
    caller.require_policymaker_in(&vhost)?;
    let value = match body.get("value") {
        Some(Value::Object(v)) => v.clone(),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "'value' must be an object, got {}",
                kind(other)
            )))
        }
        None => return Err(ApiError::bad_request("'value' is required")),
    };
    let (queue, target, count) = parse_shovel(&vhost, &value)?;
    // Checked now, so that a refusal is this request's answer and not a silent failure.
    let probe = state
        .broker
        .vhost(&vhost)
        .ok_or_else(|| ApiError::not_found(format!("vhost '{vhost}'")))?;
    probe
        .queue(&queue, 0)
        .map_err(warren_core::admin::AdminError::from)?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let mut shovels = state.shovels.lock();
        let key = (vhost.clone(), name.clone());
        if shovels.contains_key(&key) {
            return Err(ApiError::bad_request(format!(
                "shovel '{name}' in vhost '{vhost}' is still moving messages"
            )));
        }
        shovels.insert(
            key,
            Running {
                value,
                stop: stop.clone(),
            },
        );
    }
    let task_state = state.clone();
    tokio::spawn(async move {
        let result = match count {
            Some(Count::QueueLength) => {
                move_checked_until(&caller, &task_state, &vhost, &queue, &target, None, &stop).await
            }
            Some(Count::Messages(n)) => {
                move_checked_until(
                    &caller,
                    &task_state,
                    &vhost,
                    &queue,
                    &target,
                    Some(n),
                    &stop,
                )
                .await
            }
            None => unreachable!("parse_shovel refuses standing shovels"),
        };
        match result {
            Ok(report) => tracing::info!(
                vhost, shovel = %name, moved = report.moved, stopped = ?report.stopped,
                "shovel move finished"
            ),
            Err(e) => tracing::warn!(vhost, shovel = %name, error = ?e, "shovel move failed"),
        }
        let mut shovels = task_state.shovels.lock();
        let key = (vhost, name);
        // Only this run's entry (a DELETE and a new PUT may have replaced it).
        if shovels
            .get(&key)
            .is_some_and(|r| Arc::ptr_eq(&r.stop, &stop))
        {
            shovels.remove(&key);
        }
    });
    Ok(StatusCode::CREATED)
}

async fn move_checked_until(
    caller: &Caller,
    state: &AppState,
    vhost: &str,
    queue: &str,
    target: &MoveTarget,
    count: Option<u64>,
    stop: &AtomicBool,
) -> Result<warren_core::admin::messages::MoveReport, ApiError> {
    if stop.load(Ordering::Relaxed) {
        return Ok(Default::default());
    }
    move_checked(caller, state, vhost, queue, target, count, Some(stop)).await
}

enum Count {
    QueueLength,
    Messages(u64),
}

/// The source queue, the target and how many to move, from a shovel definition.
fn parse_shovel(
    vhost: &str,
    v: &Map<String, Value>,
) -> Result<(String, MoveTarget, Option<Count>), ApiError> {
    for key in ["src-uri", "dest-uri"] {
        let uris: Vec<&str> = match v.get(key) {
            None | Some(Value::Null) => vec![],
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "'{key}' must be a string or a list, got {}",
                    kind(other)
                )))
            }
        };
        for uri in uris {
            match local_vhost(uri) {
                Some(v) if v == vhost => {}
                Some(other) => {
                    return Err(ApiError::bad_request(format!(
                        "'{key}' names vhost '{other}': Warren moves messages within the \
                         shovel's vhost '{vhost}' only"
                    )))
                }
                None => {
                    return Err(ApiError::bad_request(format!(
                        "'{key}' {uri:?} is not this broker: Warren runs only local \
                         move-style shovels"
                    )))
                }
            }
        }
    }
    for key in ["src-protocol", "dest-protocol"] {
        if let Some(p) = opt_str(v, key)? {
            if p != "amqp091" {
                return Err(ApiError::bad_request(format!(
                    "'{key}' must be amqp091, got '{p}'"
                )));
            }
        }
    }
    if opt_str(v, "src-exchange")?.is_some() {
        return Err(ApiError::bad_request(
            "a shovel from an exchange is not supported: give 'src-queue'",
        ));
    }
    let queue = required_str(v, "src-queue")?.to_owned();
    let target = match (opt_str(v, "dest-queue")?, opt_str(v, "dest-exchange")?) {
        (Some(q), None) => MoveTarget::Queue(q.to_owned()),
        (None, Some(x)) => MoveTarget::Exchange {
            name: x.to_owned(),
            routing_key: opt_str(v, "dest-exchange-key")?.map(str::to_owned),
        },
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of 'dest-queue' and 'dest-exchange'",
            ))
        }
    };
    let count = match v.get("src-delete-after") {
        Some(Value::String(s)) if s == "queue-length" => Some(Count::QueueLength),
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64().map(Count::Messages),
        _ => None,
    };
    if count.is_none() {
        return Err(ApiError::bad_request(
            "'src-delete-after' must be \"queue-length\" or a number: Warren runs shovels \
             that move messages and end, not standing ones",
        ));
    }
    Ok((queue, target, count))
}

/// The vhost an `amqp://` URI names if it points at this broker (no host, or a loopback
/// one); `amqp://` alone is the default vhost.
fn local_vhost(uri: &str) -> Option<String> {
    let rest = uri
        .strip_prefix("amqp://")
        .or_else(|| uri.strip_prefix("amqps://"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.split(':').next().unwrap_or(""),
    };
    if !matches!(host, "" | "localhost" | "127.0.0.1" | "::1") {
        return None;
    }
    let path = path.map(|p| p.split('?').next().unwrap_or(""));
    match path {
        None | Some("") => Some("/".to_owned()),
        Some(p) => percent_encoding::percent_decode_str(p)
            .decode_utf8()
            .ok()
            .map(|v| v.into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_uris_name_their_vhost() {
        assert_eq!(local_vhost("amqp://").as_deref(), Some("/"));
        assert_eq!(local_vhost("amqp:///%2F").as_deref(), Some("/"));
        assert_eq!(local_vhost("amqp:///v%25h").as_deref(), Some("v%h"));
        assert_eq!(
            local_vhost("amqp://guest:guest@localhost:5672/x").as_deref(),
            Some("x")
        );
        assert_eq!(local_vhost("amqp://[::1]:5672/x").as_deref(), Some("x"));
        assert_eq!(local_vhost("amqp://other.host/x"), None);
        assert_eq!(local_vhost("http://localhost/"), None);
    }

    #[test]
    fn standing_and_remote_shovels_are_refused() {
        let v = |j: Value| j.as_object().unwrap().clone();
        let ok = v(
            json!({"src-uri": "amqp:///%2F", "src-queue": "a", "dest-uri": "amqp://",
            "dest-queue": "b", "src-delete-after": "queue-length"}),
        );
        assert!(parse_shovel("/", &ok).is_ok());
        let standing = v(json!({"src-queue": "a", "dest-queue": "b"}));
        assert!(parse_shovel("/", &standing).is_err());
        let remote = v(json!({"src-uri": "amqp://elsewhere/", "src-queue": "a",
            "dest-queue": "b", "src-delete-after": 10}));
        assert!(parse_shovel("/", &remote).is_err());
        let other_vhost = v(json!({"src-uri": "amqp:///x", "src-queue": "a",
            "dest-queue": "b", "src-delete-after": 10}));
        assert!(parse_shovel("/", &other_vhost).is_err());
    }
}
