//! `/api/channels`, `/api/channels/{name}`, `/api/vhosts/{vhost}/channels` and
//! `/api/connections/{name}/channels`. A channel's name is RabbitMQ's
//! `"<connection name> (<channel number>)"`.
//!
//! Owns: the channel JSON and asking connections for their channels (one event per
//! connection per listing, all connections asked concurrently, each bounded by
//! `CHANNEL_LIST_TIMEOUT`; a connection that does not answer is left out). Must not touch:
//! channel state (its connection task owns it).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use warren_core::connections::{ChannelStats, ConnectionInfo, MessageCounts};

use crate::auth::Caller;
use crate::connections::{name_of, visible};
use crate::listing::ListQuery;
use crate::overview::node_name;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/channels", get(list_all))
        .route("/api/channels/{name}", get(show))
        .route("/api/vhosts/{vhost}/channels", get(list_vhost))
        .route("/api/connections/{name}/channels", get(list_connection))
}

/// A channel with the connection it belongs to.
pub struct ChannelOf {
    pub connection: Arc<ConnectionInfo>,
    pub channel: ChannelStats,
}

impl ChannelOf {
    pub fn name(&self) -> String {
        format!("{} ({})", name_of(&self.connection), self.channel.number)
    }
}

/// The channels of `connections`, asked of every connection at once, sorted by connection
/// id then channel number.
pub async fn channels_of(
    state: &AppState,
    connections: Vec<Arc<ConnectionInfo>>,
) -> Vec<ChannelOf> {
    let mut asks = tokio::task::JoinSet::new();
    for c in connections {
        let broker = state.broker.clone();
        asks.spawn(async move {
            let channels = broker.connections.channels(c.id).await.unwrap_or_default();
            (c, channels)
        });
    }
    let mut out = Vec::new();
    while let Some(answer) = asks.join_next().await {
        if let Ok((connection, channels)) = answer {
            out.extend(channels.into_iter().map(|channel| ChannelOf {
                connection: connection.clone(),
                channel,
            }));
        }
    }
    out.sort_unstable_by_key(|c| (c.connection.id, c.channel.number));
    out
}

fn channel_json(c: &ChannelOf) -> Value {
    let (conn, ch) = (&c.connection, &c.channel);
    json!({
        "name": c.name(),
        "number": ch.number,
        "node": node_name(),
        "connection_details": {
            "name": name_of(conn),
            "peer_host": conn.peer.ip().to_string(),
            "peer_port": conn.peer.port(),
        },
        "user": conn.user,
        "vhost": conn.vhost,
        "prefetch_count": ch.prefetch_count,
        "global_prefetch_count": ch.global_prefetch_count,
        "messages_unacknowledged": ch.messages_unacknowledged,
        "messages_unconfirmed": 0,
        "messages_uncommitted": 0,
        "acks_uncommitted": 0,
        "consumer_count": ch.consumer_count,
        "confirm": ch.confirm,
        "transactional": ch.transactional,
        "state": "running",
        "message_stats": channel_message_stats(&ch.messages),
    })
}

/// RabbitMQ's `message_stats` of a channel: counts since it opened (no `_details` rates:
/// channels are read by asking their connection, not sampled).
fn channel_message_stats(m: &MessageCounts) -> Value {
    json!({
        "publish": m.published,
        "confirm": m.confirmed,
        "return_unroutable": m.returned_unroutable,
        "drop_unroutable": m.dropped_unroutable,
        "deliver": m.delivered_ack,
        "deliver_no_ack": m.delivered_no_ack,
        "get": m.get_ack,
        "get_no_ack": m.get_no_ack,
        "get_empty": m.get_empty,
        "deliver_get": m.delivered_ack + m.delivered_no_ack + m.get_ack + m.get_no_ack,
        "redeliver": m.redelivered,
        "ack": m.acked,
    })
}

async fn list_all(
    caller: Caller,
    State(state): State<AppState>,
    q: ListQuery,
) -> Result<Json<Value>, ApiError> {
    let all = channels_of(&state, visible(&caller, &state)).await;
    q.respond(all.iter().map(channel_json).collect()).map(Json)
}

async fn list_vhost(
    caller: Caller,
    State(state): State<AppState>,
    Path(vhost): Path<String>,
    q: ListQuery,
) -> Result<Json<Value>, ApiError> {
    caller.require_vhost(&vhost)?;
    let mut connections = visible(&caller, &state);
    connections.retain(|c| c.vhost == vhost);
    let all = channels_of(&state, connections).await;
    q.respond(all.iter().map(channel_json).collect()).map(Json)
}

async fn list_connection(
    caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
    q: ListQuery,
) -> Result<Json<Value>, ApiError> {
    let connection = crate::connections::find(&caller, &state, &name)?;
    let all = channels_of(&state, vec![connection]).await;
    q.respond(all.iter().map(channel_json).collect()).map(Json)
}

async fn show(
    caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let missing = || ApiError::not_found(format!("channel '{name}'"));
    let (connection, number) = name
        .strip_suffix(')')
        .and_then(|n| n.rsplit_once(" ("))
        .ok_or_else(missing)?;
    let number: u16 = number.parse().map_err(|_| missing())?;
    let connection = crate::connections::find(&caller, &state, connection)?;
    channels_of(&state, vec![connection])
        .await
        .iter()
        .find(|c| c.channel.number == number)
        .map(|c| Json(channel_json(c)))
        .ok_or_else(missing)
}
