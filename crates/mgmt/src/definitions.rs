//! `GET/POST /api/definitions` (the whole broker) and `/api/definitions/{vhost}` (one vhost:
//! its queues, exchanges, bindings, policies and parameters, without `vhost` fields on
//! export; on import every entry goes to the vhost of the path). Administrators only.
//! An import is validated whole before anything is applied (`Broker::import_definitions`).

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use warren_core::definitions_json;

use crate::auth::Caller;
use crate::body::{parse, read};
use crate::{ApiError, AppState};

/// The arrays of a definitions document that hold vhost-scoped entries.
const VHOST_SCOPED: &[&str] = &[
    "queues",
    "exchanges",
    "bindings",
    "policies",
    "operator_policies",
    "parameters",
];
/// What a per-vhost document does not carry.
const BROKER_SCOPED: &[&str] = &[
    "users",
    "vhosts",
    "permissions",
    "topic_permissions",
    "global_parameters",
];

fn json_response(value: &Value) -> Response {
    axum::Json(value).into_response()
}

fn exported(state: &AppState) -> Result<Value, ApiError> {
    let text = definitions_json::to_json(&state.broker.export_definitions());
    serde_json::from_str(&text).map_err(|e| ApiError::Internal(format!("export: {e}")))
}

pub async fn export(caller: Caller, State(state): State<AppState>) -> Result<Response, ApiError> {
    caller.require_admin()?;
    Ok(json_response(&exported(&state)?))
}

pub async fn export_vhost(
    caller: Caller,
    State(state): State<AppState>,
    Path(vhost): Path<String>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    caller.require_vhost(&vhost)?;
    let mut doc = exported(&state)?;
    if let Value::Object(map) = &mut doc {
        for key in BROKER_SCOPED {
            map.remove(*key);
        }
        for key in VHOST_SCOPED {
            if let Some(Value::Array(entries)) = map.get_mut(*key) {
                entries.retain(|e| e.get("vhost").and_then(Value::as_str) == Some(&vhost));
                for e in entries.iter_mut() {
                    if let Value::Object(e) = e {
                        e.remove("vhost");
                    }
                }
            }
        }
    }
    Ok(json_response(&doc))
}

async fn apply(state: &AppState, doc: &Value) -> Result<StatusCode, ApiError> {
    let defs = definitions_json::parse(&doc.to_string())?;
    let report = state.broker.import_definitions(&defs).await?;
    for skipped in &report.skipped {
        tracing::warn!(%skipped, "definitions import: entry skipped");
    }
    Ok(StatusCode::NO_CONTENT)
}

pub async fn import(
    caller: Caller,
    State(state): State<AppState>,
    req: Request,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let doc = parse(&read(req, &state).await?)?;
    if !doc.is_object() {
        return Err(ApiError::bad_request("definitions must be a JSON object"));
    }
    apply(&state, &doc).await
}

pub async fn import_vhost(
    caller: Caller,
    State(state): State<AppState>,
    Path(vhost): Path<String>,
    req: Request,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    caller.require_vhost(&vhost)?;
    let mut doc = parse(&read(req, &state).await?)?;
    let Value::Object(map) = &mut doc else {
        return Err(ApiError::bad_request("definitions must be a JSON object"));
    };
    for key in BROKER_SCOPED {
        map.remove(*key);
    }
    for key in VHOST_SCOPED {
        if let Some(Value::Array(entries)) = map.get_mut(*key) {
            for e in entries.iter_mut() {
                if let Value::Object(e) = e {
                    e.insert("vhost".into(), Value::String(vhost.clone()));
                }
            }
        }
    }
    apply(&state, &doc).await
}
