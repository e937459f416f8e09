//! `/api/vhosts` and `/api/vhosts/{vhost}`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use warren_core::access::VHostInfo;
use warren_core::overview::VHostOverview;

use crate::auth::Caller;
use crate::body::{opt_bool, opt_str, tags, JsonObject};
use crate::listing::ListQuery;
use crate::queues::message_stats;
use crate::rates::QueueRates;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/vhosts", get(list))
        .route("/api/vhosts/{vhost}", get(show).put(put).delete(delete))
}

fn to_json(
    info: &VHostInfo,
    totals: Option<VHostOverview>,
    rates: QueueRates,
    tracing: bool,
) -> Value {
    let totals = totals.unwrap_or_default();
    let q = &totals.queue_totals;
    json!({
        "message_stats": message_stats(q, &rates),
        "messages": q.messages(),
        "messages_ready": q.messages_ready,
        "messages_unacknowledged": q.messages_unacknowledged,
        "name": info.name,
        "description": info.description,
        "tags": info.tags,
        "default_queue_type": info.default_queue_type.as_deref().unwrap_or("classic"),
        "metadata": {
            "description": info.description,
            "tags": info.tags,
            "default_queue_type": info.default_queue_type.as_deref().unwrap_or("classic"),
        },
        "tracing": tracing,
    })
}

/// A vhost's rates: the sum of its queues' (as the overview's).
fn vhost_rates(state: &AppState, vhost: &str) -> QueueRates {
    let mut rates = QueueRates::default();
    if let Some(v) = state.broker.vhost(vhost) {
        let view = state.rates.view();
        for q in v.routing_snapshot().queues.values() {
            rates.add(&view.queue(q.id()));
        }
    }
    rates
}

async fn list(
    caller: Caller,
    State(state): State<AppState>,
    q: ListQuery,
) -> Result<Json<Value>, ApiError> {
    let vhosts: Vec<Value> = state
        .broker
        .vhosts()
        .iter()
        .filter(|v| caller.can_see_vhost(&v.name))
        .map(|v| {
            let tracing = state.broker.vhost_tracing(&v.name);
            to_json(
                v,
                state.broker.vhost_overview(&v.name),
                vhost_rates(&state, &v.name),
                tracing,
            )
        })
        .collect();
    q.respond(vhosts).map(Json)
}

async fn show(
    caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_vhost(&name)?;
    let info = state
        .broker
        .vhosts()
        .into_iter()
        .find(|v| v.name == name)
        .ok_or_else(|| ApiError::not_found(format!("vhost '{name}'")))?;
    let rates = vhost_rates(&state, &name);
    let tracing = state.broker.vhost_tracing(&name);
    Ok(Json(to_json(
        &info,
        state.broker.vhost_overview(&name),
        rates,
        tracing,
    )))
}

async fn put(
    caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonObject(body): JsonObject,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let existing = state.broker.vhosts().into_iter().find(|v| v.name == name);
    let tracing = match body.get("tracing") {
        None => None,
        Some(_) => Some(opt_bool(&body, "tracing", false)?),
    };
    // `{"tracing": ...}` alone (what `warrenctl trace on|off` sends) keeps the metadata.
    if let (Some(on), Some(_), 1) = (tracing, &existing, body.len()) {
        state.broker.set_vhost_tracing(&name, on)?;
        return Ok(StatusCode::NO_CONTENT);
    }
    let info = VHostInfo {
        name: name.clone(),
        description: opt_str(&body, "description")?
            .unwrap_or_default()
            .to_owned(),
        tags: tags(&body, "tags")?,
        default_queue_type: opt_str(&body, "default_queue_type")?
            .map(str::to_owned)
            .or_else(|| existing.as_ref().and_then(|e| e.default_queue_type.clone())),
        limits: Default::default(),
    };
    state.broker.put_vhost(info)?;
    if let Some(on) = tracing {
        state.broker.set_vhost_tracing(&name, on)?;
    }
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
    state.broker.delete_vhost(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
