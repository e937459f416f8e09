//! `/api/permissions[/{vhost}/{user}]`, `/api/vhosts/{vhost}/permissions` and
//! `/api/topic-permissions[/{vhost}/{user}]`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use warren_core::access::{Permission, TopicPermission};

use crate::auth::Caller;
use crate::body::{opt_str, JsonObject};
use crate::listing::ListQuery;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/permissions", get(list))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(show).put(put).delete(delete),
        )
        .route("/api/vhosts/{vhost}/permissions", get(list_vhost))
        .route("/api/topic-permissions", get(list_topic))
        .route(
            "/api/topic-permissions/{vhost}/{user}",
            get(show_topic).put(put_topic).delete(delete_topic),
        )
}

pub fn permission_json(user: &str, vhost: &str, p: &Permission) -> Value {
    json!({
        "user": user,
        "vhost": vhost,
        "configure": p.configure.source(),
        "write": p.write.source(),
        "read": p.read.source(),
    })
}

fn topic_json(user: &str, vhost: &str, p: &TopicPermission) -> Value {
    json!({
        "user": user,
        "vhost": vhost,
        "exchange": p.exchange,
        "write": p.write,
        "read": p.read,
    })
}

async fn list(
    caller: Caller,
    State(state): State<AppState>,
    q: ListQuery,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let list = state
        .broker
        .permissions()
        .iter()
        .map(|(u, v, p)| permission_json(u, v, p))
        .collect();
    q.respond(list).map(Json)
}

async fn list_vhost(
    caller: Caller,
    State(state): State<AppState>,
    Path(vhost): Path<String>,
    q: ListQuery,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    caller.require_vhost(&vhost)?;
    let list = state
        .broker
        .permissions()
        .iter()
        .filter(|(_, v, _)| *v == vhost)
        .map(|(u, v, p)| permission_json(u, v, p))
        .collect();
    q.respond(list).map(Json)
}

async fn show(
    caller: Caller,
    State(state): State<AppState>,
    Path((vhost, user)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let access = state.broker.access();
    let p = access.permission(&user, &vhost).ok_or_else(|| {
        ApiError::not_found(format!("permissions of user '{user}' in vhost '{vhost}'"))
    })?;
    Ok(Json(permission_json(&user, &vhost, p)))
}

fn required<'a>(body: &'a serde_json::Map<String, Value>, key: &str) -> Result<&'a str, ApiError> {
    opt_str(body, key)?.ok_or_else(|| ApiError::bad_request(format!("'{key}' is missing")))
}

async fn put(
    caller: Caller,
    State(state): State<AppState>,
    Path((vhost, user)): Path<(String, String)>,
    JsonObject(body): JsonObject,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let existed = state.broker.access().permission(&user, &vhost).is_some();
    let (c, w, r) = (
        required(&body, "configure")?,
        required(&body, "write")?,
        required(&body, "read")?,
    );
    state.broker.set_permissions(&user, &vhost, c, w, r)?;
    Ok(created_or_updated(existed))
}

pub fn created_or_updated(existed: bool) -> StatusCode {
    match existed {
        true => StatusCode::NO_CONTENT,
        false => StatusCode::CREATED,
    }
}

async fn delete(
    caller: Caller,
    State(state): State<AppState>,
    Path((vhost, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    state.broker.clear_permissions(&user, &vhost)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_topic(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let list = state
        .broker
        .topic_permissions()
        .iter()
        .map(|(u, v, p)| topic_json(u, v, p))
        .collect();
    Ok(Json(Value::Array(list)))
}

async fn show_topic(
    caller: Caller,
    State(state): State<AppState>,
    Path((vhost, user)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let list: Vec<Value> = state
        .broker
        .topic_permissions()
        .iter()
        .filter(|(u, v, _)| *u == user && *v == vhost)
        .map(|(u, v, p)| topic_json(u, v, p))
        .collect();
    if list.is_empty() {
        return Err(ApiError::not_found(format!(
            "topic permissions of user '{user}' in vhost '{vhost}'"
        )));
    }
    Ok(Json(Value::Array(list)))
}

async fn put_topic(
    caller: Caller,
    State(state): State<AppState>,
    Path((vhost, user)): Path<(String, String)>,
    JsonObject(body): JsonObject,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let exchange = required(&body, "exchange")?;
    let existed = state
        .broker
        .topic_permissions()
        .iter()
        .any(|(u, v, p)| *u == user && *v == vhost && p.exchange == exchange);
    let (w, r) = (required(&body, "write")?, required(&body, "read")?);
    state
        .broker
        .set_topic_permissions(&user, &vhost, exchange, w, r)?;
    Ok(created_or_updated(existed))
}

async fn delete_topic(
    caller: Caller,
    State(state): State<AppState>,
    Path((vhost, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    state.broker.clear_topic_permissions(&user, &vhost, None)?;
    Ok(StatusCode::NO_CONTENT)
}
