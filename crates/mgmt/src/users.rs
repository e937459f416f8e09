//! `/api/users`, `/api/users/{user}` and `/api/users/{user}/permissions`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use warren_core::access::{PasswordHash, User};
use warren_core::admin::UserSpec;

use crate::auth::Caller;
use crate::body::{opt_str, tags, JsonObject};
use crate::listing::ListQuery;
use crate::permissions::permission_json;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/users", get(list))
        .route("/api/users/{user}", get(show).put(put).delete(delete))
        .route("/api/users/{user}/permissions", get(permissions))
}

pub fn to_json(user: &User) -> Value {
    let (hash, algorithm) = match &user.password {
        Some(h) => (h.to_base64(), h.algorithm().name()),
        None => (String::new(), "rabbit_password_hashing_sha256"),
    };
    let mut limits = serde_json::Map::new();
    if let Some(n) = user.limits.max_connections {
        limits.insert("max-connections".into(), n.into());
    }
    if let Some(n) = user.limits.max_channels {
        limits.insert("max-channels".into(), n.into());
    }
    json!({
        "name": user.name,
        "password_hash": hash,
        "hashing_algorithm": algorithm,
        "tags": user.tags,
        "limits": limits,
    })
}

async fn list(
    caller: Caller,
    State(state): State<AppState>,
    q: ListQuery,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let users = state.broker.users().iter().map(|u| to_json(u)).collect();
    q.respond(users).map(Json)
}

async fn show(
    caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let user = state
        .broker
        .user(&name)
        .ok_or_else(|| ApiError::not_found(format!("user '{name}'")))?;
    Ok(Json(to_json(&user)))
}

/// The password of a PUT: `password` (hashed here), or `password_hash` with an optional
/// `hashing_algorithm`; neither keeps an existing user's password, and creates a new user without one
/// (certificate login only); `password_hash: ""` clears it.
fn password(
    body: &serde_json::Map<String, Value>,
    existing: Option<&User>,
) -> Result<Option<PasswordHash>, ApiError> {
    if let Some(pw) = opt_str(body, "password")? {
        return Ok(Some(PasswordHash::new(pw)));
    }
    if let Some(hash) = opt_str(body, "password_hash")? {
        if hash.is_empty() {
            return Ok(None);
        }
        let algorithm =
            opt_str(body, "hashing_algorithm")?.unwrap_or("rabbit_password_hashing_sha256");
        return PasswordHash::parse(hash, algorithm)
            .map(Some)
            .map_err(|e| ApiError::bad_request(format!("password_hash: {e}")));
    }
    Ok(existing.and_then(|user| user.password.clone()))
}

async fn put(
    caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonObject(body): JsonObject,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let existing = state.broker.user(&name);
    let spec = UserSpec {
        password: password(&body, existing.as_deref())?,
        tags: tags(&body, "tags")?,
        name,
    };
    state.broker.put_user(spec)?;
    Ok(match existing {
        Some(_) => StatusCode::NO_CONTENT,
        None => StatusCode::CREATED,
    })
}

async fn delete(
    caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    state.broker.delete_user(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn permissions(
    caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    if state.broker.user(&name).is_none() {
        return Err(ApiError::not_found(format!("user '{name}'")));
    }
    let list = state
        .broker
        .permissions()
        .iter()
        .filter(|(u, _, _)| *u == name)
        .map(|(u, v, p)| permission_json(u, v, p))
        .collect();
    Ok(Json(Value::Array(list)))
}
