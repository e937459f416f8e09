//! `/api/vhost-limits[/{vhost}[/{name}]]` and `/api/user-limits[/{user}[/{name}]]`. A PUT
//! body is `{"value": N}`; a negative value removes the limit (RabbitMQ's "no limit").

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use warren_core::access::{UserLimits, VHostLimits};

use crate::auth::Caller;
use crate::body::{kind, JsonObject};
use crate::{ApiError, AppState};

pub const VHOST_LIMIT_NAMES: &[&str] = &["max-connections", "max-queues"];
pub const USER_LIMIT_NAMES: &[&str] = &["max-connections", "max-channels"];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/vhost-limits", get(list_vhost_limits))
        .route("/api/vhost-limits/{vhost}", get(show_vhost_limits))
        .route(
            "/api/vhost-limits/{vhost}/{name}",
            put(put_vhost_limit).delete(delete_vhost_limit),
        )
        .route("/api/user-limits", get(list_user_limits))
        .route("/api/user-limits/{user}", get(show_user_limits))
        .route(
            "/api/user-limits/{user}/{name}",
            put(put_user_limit).delete(delete_user_limit),
        )
}

fn limits_json(pairs: &[(&str, Option<u64>)]) -> Map<String, Value> {
    pairs
        .iter()
        .filter_map(|(k, v)| v.map(|v| ((*k).to_owned(), Value::from(v))))
        .collect()
}

fn vhost_limits_json(l: &VHostLimits) -> Map<String, Value> {
    limits_json(&[
        ("max-connections", l.max_connections),
        ("max-queues", l.max_queues),
    ])
}

fn user_limits_json(l: &UserLimits) -> Map<String, Value> {
    limits_json(&[
        ("max-connections", l.max_connections),
        ("max-channels", l.max_channels),
    ])
}

/// The limit of a PUT body: None for a negative value.
fn value(body: &Map<String, Value>) -> Result<Option<u64>, ApiError> {
    match body.get("value") {
        None => Err(ApiError::bad_request("'value' is missing")),
        Some(v) => match (v.as_u64(), v.as_i64()) {
            (Some(n), _) => Ok(Some(n)),
            (None, Some(n)) if n < 0 => Ok(None),
            _ => Err(ApiError::bad_request(format!(
                "'value' must be an integer, got {}",
                kind(v)
            ))),
        },
    }
}

fn check_name(name: &str, known: &[&str], what: &str) -> Result<(), ApiError> {
    match known.contains(&name) {
        true => Ok(()),
        false => Err(ApiError::bad_request(format!(
            "unknown {what} limit '{name}' (known: {})",
            known.join(", ")
        ))),
    }
}

async fn list_vhost_limits(caller: Caller, State(state): State<AppState>) -> Json<Value> {
    let list = state
        .broker
        .vhosts()
        .iter()
        .filter(|v| caller.can_see_vhost(&v.name))
        .map(|v| (v.name.clone(), vhost_limits_json(&v.limits)))
        .filter(|(_, l)| !l.is_empty())
        .map(|(name, l)| json!({"vhost": name, "value": l}))
        .collect();
    Json(Value::Array(list))
}

async fn show_vhost_limits(
    caller: Caller,
    State(state): State<AppState>,
    Path(vhost): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_vhost(&vhost)?;
    let list = state
        .broker
        .vhosts()
        .iter()
        .filter(|v| v.name == vhost)
        .map(|v| vhost_limits_json(&v.limits))
        .filter(|l| !l.is_empty())
        .map(|l| json!({"vhost": vhost, "value": l}))
        .collect();
    Ok(Json(Value::Array(list)))
}

fn set_vhost_limit(
    state: &AppState,
    vhost: &str,
    name: &str,
    limit: Option<u64>,
) -> Result<(), ApiError> {
    check_name(name, VHOST_LIMIT_NAMES, "vhost")?;
    let mut limits = state
        .broker
        .vhosts()
        .into_iter()
        .find(|v| v.name == vhost)
        .ok_or_else(|| ApiError::not_found(format!("vhost '{vhost}'")))?
        .limits;
    match name {
        "max-connections" => limits.max_connections = limit,
        _ => limits.max_queues = limit,
    }
    Ok(state.broker.set_vhost_limits(vhost, limits)?)
}

async fn put_vhost_limit(
    caller: Caller,
    State(state): State<AppState>,
    Path((vhost, name)): Path<(String, String)>,
    JsonObject(body): JsonObject,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    set_vhost_limit(&state, &vhost, &name, value(&body)?)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_vhost_limit(
    caller: Caller,
    State(state): State<AppState>,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    set_vhost_limit(&state, &vhost, &name, None)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_user_limits(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let list = state
        .broker
        .users()
        .iter()
        .map(|u| (u.name.clone(), user_limits_json(&u.limits)))
        .filter(|(_, l)| !l.is_empty())
        .map(|(name, l)| json!({"user": name, "value": l}))
        .collect();
    Ok(Json(Value::Array(list)))
}

async fn show_user_limits(
    caller: Caller,
    State(state): State<AppState>,
    Path(user): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let u = state
        .broker
        .user(&user)
        .ok_or_else(|| ApiError::not_found(format!("user '{user}'")))?;
    let l = user_limits_json(&u.limits);
    let list = match l.is_empty() {
        true => Vec::new(),
        false => vec![json!({"user": user, "value": l})],
    };
    Ok(Json(Value::Array(list)))
}

fn set_user_limit(
    state: &AppState,
    user: &str,
    name: &str,
    limit: Option<u64>,
) -> Result<(), ApiError> {
    check_name(name, USER_LIMIT_NAMES, "user")?;
    let mut limits = state
        .broker
        .user(user)
        .ok_or_else(|| ApiError::not_found(format!("user '{user}'")))?
        .limits;
    match name {
        "max-connections" => limits.max_connections = limit,
        _ => limits.max_channels = limit,
    }
    Ok(state.broker.set_user_limits(user, limits)?)
}

async fn put_user_limit(
    caller: Caller,
    State(state): State<AppState>,
    Path((user, name)): Path<(String, String)>,
    JsonObject(body): JsonObject,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    set_user_limit(&state, &user, &name, value(&body)?)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_user_limit(
    caller: Caller,
    State(state): State<AppState>,
    Path((user, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    set_user_limit(&state, &user, &name, None)?;
    Ok(StatusCode::NO_CONTENT)
}
