//! Messages over HTTP, as RabbitMQ's management API carries them:
//! `POST /api/exchanges/{vhost}/{name}/publish`, `POST /api/queues/{vhost}/{name}/get`, and
//! moving messages: Warren's `POST /api/queues/{vhost}/{name}/actions` with
//! `{"action": "move", ...}` and RabbitMQ's form, the dynamic shovel its UI's "Move
//! messages" button creates (`PUT /api/parameters/shovel/{vhost}/{name}`, see `shovel.rs`).
//!
//! Owns: the JSON ↔ AMQP properties conversion of these endpoints. Must not touch: queues
//! except through `Broker`'s message operations (`warren_core::admin::messages`).

use std::sync::atomic::AtomicBool;

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Map, Value};
use warren_core::access::Access;
use warren_core::admin::definitions::{json_to_table, table_to_json};
use warren_core::admin::messages::{AckMode, GotMessage, MoveTarget, Publish};
use warren_protocol::basic::AMQPProperties;

use crate::auth::Caller;
use crate::body::{kind, opt_str, JsonObject};
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/exchanges/{vhost}/{name}/publish", post(publish))
        .route("/api/queues/{vhost}/{name}/get", post(get))
        .route("/api/queues/{vhost}/{name}/actions", post(action))
}

/// `{"properties": {...}, "routing_key": "...", "payload": "...", "payload_encoding":
/// "string"|"base64"}` → `{"routed": bool}`.
async fn publish(
    caller: Caller,
    State(state): State<AppState>,
    Path((vhost, exchange)): Path<(String, String)>,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    caller.require_vhost(&vhost)?;
    let checked = if exchange == "amq.default" {
        ""
    } else {
        &exchange
    };
    // RabbitMQ's publish endpoint reports the channel's refusal as a bad request carrying the
    // AMQP code (probed on 3.10.8), unlike every other endpoint's 401.
    caller
        .require_resource(&vhost, Access::Write, "exchange", checked)
        .map_err(|e| match e {
            ApiError::Refused(text) => {
                ApiError::bad_request(format!("403 ACCESS_REFUSED - {text}"))
            }
            other => other,
        })?;
    let routing_key = required_str(&body, "routing_key")?.to_owned();
    let payload = required_str(&body, "payload")?;
    let body_bytes = match opt_str(&body, "payload_encoding")?.unwrap_or("string") {
        "string" => payload.as_bytes().to_vec(),
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(payload)
            .map_err(|e| ApiError::bad_request(format!("payload is not base64: {e}")))?,
        other => {
            return Err(ApiError::bad_request(format!(
                "payload_encoding must be 'string' or 'base64', got '{other}'"
            )))
        }
    };
    let properties = match body.get("properties") {
        None | Some(Value::Null) => AMQPProperties::default(),
        Some(Value::Object(p)) => properties_from_json(p)?,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "'properties' must be an object, got {}",
                kind(other)
            )))
        }
    };
    if let Some(user_id) = properties.user_id() {
        if user_id.as_str() != caller.name() && !caller.user.has_tag("impersonator") {
            return Err(ApiError::bad_request(format!(
                "user_id property set to '{}' but authenticated user was '{}'",
                user_id.as_str(),
                caller.name()
            )));
        }
    }
    let routed = state
        .broker
        .publish_message(
            &vhost,
            Publish {
                exchange,
                routing_key,
                properties,
                body: body_bytes.into(),
            },
        )
        .await?;
    Ok(Json(json!({ "routed": routed })))
}

/// `{"count": n, "ackmode": "...", "encoding": "auto"|"base64", "truncate": n}` → the
/// messages, each with `payload_bytes`, `redelivered`, `exchange`, `routing_key`,
/// `message_count`, `properties`, `payload`, `payload_encoding`.
async fn get(
    caller: Caller,
    State(state): State<AppState>,
    Path((vhost, queue)): Path<(String, String)>,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    caller.require_vhost(&vhost)?;
    caller.require_resource(&vhost, Access::Read, "queue", &queue)?;
    let count = required_u64(&body, "count")? as usize;
    let mode = match opt_str(&body, "ackmode")? {
        Some(m) => AckMode::parse(m).ok_or_else(|| {
            ApiError::bad_request(format!(
                "ackmode must be one of ack_requeue_true, ack_requeue_false, \
                 reject_requeue_true, reject_requeue_false; got '{m}'"
            ))
        })?,
        // RabbitMQ before 3.7 took `requeue`.
        None => match body.get("requeue") {
            Some(Value::Bool(false)) => AckMode::Ack,
            Some(Value::Bool(true)) => AckMode::RequeueAfterRead,
            _ => return Err(ApiError::bad_request("'ackmode' is required")),
        },
    };
    let base64_always = match opt_str(&body, "encoding")?.unwrap_or("auto") {
        "auto" => false,
        "base64" => true,
        other => {
            return Err(ApiError::bad_request(format!(
                "encoding must be 'auto' or 'base64', got '{other}'"
            )))
        }
    };
    let truncate = match body.get("truncate") {
        None | Some(Value::Null) => None,
        Some(_) => Some(required_u64(&body, "truncate")? as usize),
    };
    let got = state
        .broker
        .get_messages(&vhost, &queue, count, mode)
        .await?;
    Ok(Json(Value::Array(
        got.iter()
            .map(|g| got_to_json(g, base64_always, truncate))
            .collect(),
    )))
}

/// `{"action": "move", "destination_queue": "q2"}` or `{"action": "move",
/// "destination_exchange": "x", "routing_key": "k"}`, with an optional `count` →
/// `{"moved": n}` (and `"stopped": reason` when it could not move them all).
async fn action(
    caller: Caller,
    State(state): State<AppState>,
    Path((vhost, queue)): Path<(String, String)>,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    caller.require_vhost(&vhost)?;
    match required_str(&body, "action")? {
        "move" => {}
        // RabbitMQ's actions are mirror-queue syncs, which have no meaning here.
        "sync" | "cancel_sync" => return Ok(Json(json!({}))),
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown action '{other}' (Warren knows 'move')"
            )))
        }
    }
    let target = move_target(&body)?;
    let count = match body.get("count") {
        None | Some(Value::Null) => None,
        Some(_) => Some(required_u64(&body, "count")?),
    };
    // In a task of its own: a client that hangs up must not cut a move between a batch's
    // confirm and its ack on the source (it would be left in both queues until a restart).
    let task = tokio::spawn(async move {
        move_checked(&caller, &state, &vhost, &queue, &target, count, None).await
    });
    let report = task
        .await
        .map_err(|e| ApiError::Internal(format!("the move failed: {e}")))??;
    let mut out = json!({ "moved": report.moved });
    if let Some(why) = report.stopped {
        out["stopped"] = Value::String(why);
    }
    Ok(Json(out))
}

fn move_target(body: &Map<String, Value>) -> Result<MoveTarget, ApiError> {
    let queue = opt_str(body, "destination_queue")?;
    let exchange = opt_str(body, "destination_exchange")?;
    match (queue, exchange) {
        (Some(q), None) => Ok(MoveTarget::Queue(q.to_owned())),
        (None, Some(x)) => Ok(MoveTarget::Exchange {
            name: x.to_owned(),
            routing_key: opt_str(body, "routing_key")?.map(str::to_owned),
        }),
        _ => Err(ApiError::bad_request(
            "give exactly one of 'destination_queue' and 'destination_exchange'",
        )),
    }
}

/// A move with the caller's permissions checked: read on the source, write on the
/// destination (as consuming and publishing would need).
pub async fn move_checked(
    caller: &Caller,
    state: &AppState,
    vhost: &str,
    queue: &str,
    target: &MoveTarget,
    count: Option<u64>,
    stop: Option<&AtomicBool>,
) -> Result<warren_core::admin::messages::MoveReport, ApiError> {
    caller.require_resource(vhost, Access::Read, "queue", queue)?;
    match target {
        MoveTarget::Queue(q) => caller.require_resource(vhost, Access::Write, "queue", q)?,
        MoveTarget::Exchange { name, .. } => {
            caller.require_resource(vhost, Access::Write, "exchange", name)?
        }
    }
    let never = AtomicBool::new(false);
    Ok(state
        .broker
        .move_messages_until(vhost, queue, target, count, stop.unwrap_or(&never))
        .await?)
}

pub fn required_str<'a>(map: &'a Map<String, Value>, key: &str) -> Result<&'a str, ApiError> {
    opt_str(map, key)?.ok_or_else(|| ApiError::bad_request(format!("'{key}' is required")))
}

fn required_u64(map: &Map<String, Value>, key: &str) -> Result<u64, ApiError> {
    match map.get(key) {
        Some(Value::Number(n)) => n.as_u64(),
        // RabbitMQ's UI sends numbers as strings.
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| ApiError::bad_request(format!("'{key}' must be a non-negative integer")))
}

/// AMQP basic properties from RabbitMQ's JSON form (unknown keys are refused, as RabbitMQ).
fn properties_from_json(p: &Map<String, Value>) -> Result<AMQPProperties, ApiError> {
    let mut out = AMQPProperties::default();
    for (key, value) in p {
        let text = || -> Result<String, ApiError> {
            match value {
                Value::String(s) => Ok(s.clone()),
                other => Err(ApiError::bad_request(format!(
                    "property '{key}' must be a string, got {}",
                    kind(other)
                ))),
            }
        };
        let short = || -> Result<warren_protocol::ShortString, ApiError> {
            warren_protocol::ShortString::try_new(text()?.as_str()).map_err(|_| {
                ApiError::bad_request(format!("property '{key}' is longer than 255 bytes"))
            })
        };
        let number = |max: u64| -> Result<u64, ApiError> {
            let n = match value {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            };
            n.filter(|n| *n <= max).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "property '{key}' must be an integer from 0 to {max}"
                ))
            })
        };
        out = match key.as_str() {
            "content_type" => out.with_content_type(short()?),
            "content_encoding" => out.with_content_encoding(short()?),
            "headers" => match value {
                Value::Object(h) => out.with_headers(
                    json_to_table(h)
                        .map_err(|e| ApiError::bad_request(format!("property 'headers': {e}")))?,
                ),
                other => {
                    return Err(ApiError::bad_request(format!(
                        "property 'headers' must be an object, got {}",
                        kind(other)
                    )))
                }
            },
            "delivery_mode" => out.with_delivery_mode(number(2)? as u8),
            "priority" => out.with_priority(number(255)? as u8),
            "correlation_id" => out.with_correlation_id(short()?),
            "reply_to" => out.with_reply_to(short()?),
            "expiration" => out.with_expiration(short()?),
            "message_id" => out.with_message_id(short()?),
            "timestamp" => out.with_timestamp(number(u64::MAX)?),
            "type" => out.with_type(short()?),
            "user_id" => out.with_user_id(short()?),
            "app_id" => out.with_app_id(short()?),
            "cluster_id" => out.with_cluster_id(short()?),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown message property '{other}'"
                )))
            }
        };
    }
    Ok(out)
}

/// The message's properties in RabbitMQ's JSON form (only the ones set).
fn properties_to_json(p: &AMQPProperties) -> Value {
    let mut out = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            out.insert(k.to_owned(), v);
        }
    };
    let s = |v: &Option<warren_protocol::ShortString>| {
        v.as_ref().map(|s| Value::String(s.as_str().to_owned()))
    };
    put("content_type", s(p.content_type()));
    put("content_encoding", s(p.content_encoding()));
    put(
        "headers",
        p.headers()
            .as_ref()
            .map(|h| Value::Object(table_to_json(h))),
    );
    put("delivery_mode", p.delivery_mode().map(Value::from));
    put("priority", p.priority().map(Value::from));
    put("correlation_id", s(p.correlation_id()));
    put("reply_to", s(p.reply_to()));
    put("expiration", s(p.expiration()));
    put("message_id", s(p.message_id()));
    put("timestamp", p.timestamp().map(Value::from));
    put("type", s(p.kind()));
    put("user_id", s(p.user_id()));
    put("app_id", s(p.app_id()));
    put("cluster_id", s(p.cluster_id()));
    Value::Object(out)
}

fn got_to_json(g: &GotMessage, base64_always: bool, truncate: Option<usize>) -> Value {
    let body = &g.message.body;
    let shown = &body[..truncate.map_or(body.len(), |t| t.min(body.len()))];
    let (payload, encoding) = match (base64_always, std::str::from_utf8(shown)) {
        (false, Ok(text)) => (text.to_owned(), "string"),
        _ => (
            base64::engine::general_purpose::STANDARD.encode(shown),
            "base64",
        ),
    };
    json!({
        "payload_bytes": body.len(),
        "redelivered": g.redelivered,
        "exchange": g.message.exchange.as_str(),
        "routing_key": g.message.routing_key.as_str(),
        "message_count": g.message_count,
        "properties": properties_to_json(&g.message.properties),
        "payload": payload,
        "payload_encoding": encoding,
    })
}
