//! `/api/policies[/{vhost}[/{name}]]` and `/api/operator-policies[/{vhost}[/{name}]]`.
//! Regular policies: read by whoever sees the vhost, set by policymakers with permissions
//! in it (and administrators). Operator policies: read by monitors, set by administrators.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;
use warren_core::policy::{Policy, PolicyKind};

use crate::auth::Caller;
use crate::body::JsonObject;
use crate::listing::ListQuery;
use crate::permissions::created_or_updated;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    let mut router = Router::new();
    for (base, kind) in [
        ("/api/policies", PolicyKind::Regular),
        ("/api/operator-policies", PolicyKind::Operator),
    ] {
        router = router
            .route(
                base,
                get(move |c: Caller, s: State<AppState>, q: ListQuery| list(kind, c, s, q)),
            )
            .route(
                &format!("{base}/{{vhost}}"),
                get(
                    move |c: Caller, s: State<AppState>, p: Path<String>, q: ListQuery| {
                        list_vhost(kind, c, s, p, q)
                    },
                ),
            )
            .route(
                &format!("{base}/{{vhost}}/{{name}}"),
                get(move |c: Caller, s, p| show(kind, c, s, p))
                    .put(move |c: Caller, s, p, b| put(kind, c, s, p, b))
                    .delete(move |c: Caller, s, p| delete(kind, c, s, p)),
            );
    }
    router
}

fn check_read(kind: PolicyKind, caller: &Caller, vhost: &str) -> Result<(), ApiError> {
    if kind == PolicyKind::Operator {
        caller.require_monitor()?;
    }
    caller.require_vhost(vhost)
}

fn check_write(kind: PolicyKind, caller: &Caller, vhost: &str) -> Result<(), ApiError> {
    match kind {
        PolicyKind::Operator => {
            caller.require_admin()?;
            caller.require_vhost(vhost)
        }
        PolicyKind::Regular => caller.require_policymaker_in(vhost),
    }
}

fn of_vhost(state: &AppState, kind: PolicyKind, vhost: &str) -> Vec<Value> {
    state
        .broker
        .vhost(vhost)
        .map(|v| {
            v.policies(kind)
                .iter()
                .map(|p| p.to_json(Some(vhost)))
                .collect()
        })
        .unwrap_or_default()
}

async fn list(
    kind: PolicyKind,
    caller: Caller,
    State(state): State<AppState>,
    q: ListQuery,
) -> Result<Json<Value>, ApiError> {
    if kind == PolicyKind::Operator {
        caller.require_monitor()?;
    }
    let mut all = Vec::new();
    for info in state.broker.vhosts() {
        if caller.can_see_vhost(&info.name) {
            all.extend(of_vhost(&state, kind, &info.name));
        }
    }
    q.respond(all).map(Json)
}

async fn list_vhost(
    kind: PolicyKind,
    caller: Caller,
    State(state): State<AppState>,
    Path(vhost): Path<String>,
    q: ListQuery,
) -> Result<Json<Value>, ApiError> {
    check_read(kind, &caller, &vhost)?;
    q.respond(of_vhost(&state, kind, &vhost)).map(Json)
}

fn not_found(kind: PolicyKind, vhost: &str, name: &str) -> ApiError {
    ApiError::not_found(format!("{} '{name}' in vhost '{vhost}'", kind.noun()))
}

async fn show(
    kind: PolicyKind,
    caller: Caller,
    State(state): State<AppState>,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    check_read(kind, &caller, &vhost)?;
    let policy = state
        .broker
        .vhost(&vhost)
        .and_then(|v| v.policy(kind, &name))
        .ok_or_else(|| not_found(kind, &vhost, &name))?;
    Ok(Json(policy.to_json(Some(&vhost))))
}

async fn put(
    kind: PolicyKind,
    caller: Caller,
    State(state): State<AppState>,
    Path((vhost, name)): Path<(String, String)>,
    JsonObject(mut body): JsonObject,
) -> Result<StatusCode, ApiError> {
    check_write(kind, &caller, &vhost)?;
    // The path names the policy and its vhost, whatever the body says (rabbitmqadmin sends
    // both).
    body.insert("name".into(), Value::String(name.clone()));
    body.remove("vhost");
    body.remove("component");
    let policy = Policy::from_json(kind, &Value::Object(body))?;
    let vh = state
        .broker
        .vhost(&vhost)
        .ok_or_else(|| ApiError::not_found(format!("vhost '{vhost}'")))?;
    let existed = vh.policy(kind, &name).is_some();
    vh.set_policy(policy)?;
    Ok(created_or_updated(existed))
}

async fn delete(
    kind: PolicyKind,
    caller: Caller,
    State(state): State<AppState>,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    check_write(kind, &caller, &vhost)?;
    let vh = state
        .broker
        .vhost(&vhost)
        .ok_or_else(|| ApiError::not_found(format!("vhost '{vhost}'")))?;
    if vh.policy(kind, &name).is_none() {
        return Err(not_found(kind, &vhost, &name));
    }
    vh.clear_policy(kind, &name)?;
    Ok(StatusCode::NO_CONTENT)
}
