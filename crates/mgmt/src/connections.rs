//! `/api/connections` and `/api/connections/{name}`. A connection's name is
//! `"<peer ip>:<peer port> -> #<id>"` (RabbitMQ's is `"<peer> -> <local address>"`; Warren's
//! registry knows the peer and its own id); DELETE also accepts the bare id.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use warren_core::connections::ConnectionInfo;

use warren_core::admin::definitions::table_to_json;

use crate::auth::Caller;
use crate::listing::ListQuery;
use crate::overview::node_name;
use crate::queues::details;
use crate::{ApiError, AppState};

/// The close reason when a DELETE has no `X-Reason` header (RabbitMQ's).
pub const DEFAULT_CLOSE_REASON: &str = "Closed via management plugin";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/connections", get(list))
        .route("/api/connections/{name}", get(show).delete(close))
        .route("/api/vhosts/{vhost}/connections", get(list_vhost))
}

pub fn name_of(c: &ConnectionInfo) -> String {
    warren_core::connections::connection_name(c.peer, c.id)
}

fn to_json(state: &AppState, c: &ConnectionInfo) -> Value {
    let channels = state
        .broker
        .connections
        .connection_stats(c.id)
        .map_or(0, |s| s.channels);
    let m = c.metrics.snapshot();
    let rates = state.rates.view().connection(c.id);
    json!({
        "channels": channels,
        "name": name_of(c),
        "user": c.user,
        "user_who_performed_action": c.user,
        "vhost": c.vhost,
        "peer_host": c.peer.ip().to_string(),
        "peer_port": c.peer.port(),
        "node": node_name(),
        "protocol": c.protocol,
        "type": "network",
        "state": "running",
        "ssl": c.tls,
        "auth_mechanism": c.auth_mechanism,
        "connected_at": c.connected_at_ms,
        "frame_max": c.frame_max,
        "channel_max": c.channel_max,
        "timeout": c.heartbeat_secs,
        "client_properties": table_to_json(&c.client_properties),
        "recv_oct": m.recv_oct,
        "recv_oct_details": details(rates.recv_oct),
        "recv_cnt": m.recv_cnt,
        "send_oct": m.send_oct,
        "send_oct_details": details(rates.send_oct),
        "send_cnt": m.send_cnt,
    })
}

pub fn visible(caller: &Caller, state: &AppState) -> Vec<std::sync::Arc<ConnectionInfo>> {
    state
        .broker
        .connections
        .list()
        .into_iter()
        .filter(|c| caller.is_monitor() || c.user == caller.name())
        .collect()
}

async fn list(
    caller: Caller,
    State(state): State<AppState>,
    q: ListQuery,
) -> Result<Json<Value>, ApiError> {
    let mut all = visible(&caller, &state);
    all.sort_unstable_by_key(|c| c.id);
    q.respond(all.iter().map(|c| to_json(&state, c)).collect())
        .map(Json)
}

async fn list_vhost(
    caller: Caller,
    State(state): State<AppState>,
    Path(vhost): Path<String>,
    q: ListQuery,
) -> Result<Json<Value>, ApiError> {
    caller.require_vhost(&vhost)?;
    let mut all = visible(&caller, &state);
    all.retain(|c| c.vhost == vhost);
    all.sort_unstable_by_key(|c| c.id);
    q.respond(all.iter().map(|c| to_json(&state, c)).collect())
        .map(Json)
}

pub fn find(
    caller: &Caller,
    state: &AppState,
    name: &str,
) -> Result<std::sync::Arc<ConnectionInfo>, ApiError> {
    visible(caller, state)
        .into_iter()
        .find(|c| name_of(c) == name || c.id.to_string() == name)
        .ok_or_else(|| ApiError::not_found(format!("connection '{name}'")))
}

async fn show(
    caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let c = find(&caller, &state, &name)?;
    Ok(Json(to_json(&state, &c)))
}

/// Closes the connection with 320 CONNECTION_FORCED and the `X-Reason` header as the text.
async fn close(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let c = find(&caller, &state, &name)?;
    if !caller.is_admin() && c.user != caller.name() {
        return Err(ApiError::refused("Not administrator user"));
    }
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or(DEFAULT_CLOSE_REASON);
    state.broker.close_connection(c.id, reason)?;
    Ok(StatusCode::NO_CONTENT)
}
