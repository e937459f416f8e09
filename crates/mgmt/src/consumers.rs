//! `/api/consumers` and `/api/consumers/{vhost}`.
//!
//! Owns: the consumer JSON. Consumers belong to their queue's actor, so a listing asks
//! (`QueueCommand::Consumers`) only the queues whose metrics count consumers, all at once,
//! each bounded by `CONSUMER_LIST_TIMEOUT` (a queue that does not answer is left out), and
//! joins them to their channels by channel key. Must not touch: queue or channel state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use warren_core::queue::{ConsumerInfo, QueueCommand};
use warren_core::{QueueHandle, VHost};

use crate::auth::Caller;
use crate::channels::{channels_of, ChannelOf};
use crate::connections::{name_of, visible};
use crate::listing::ListQuery;
use crate::{ApiError, AppState};

/// How long a listing waits for one queue's consumers.
pub const CONSUMER_LIST_TIMEOUT: Duration = Duration::from_secs(5);

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/consumers", get(list_all))
        .route("/api/consumers/{vhost}", get(list_vhost))
}

/// (vhost, queue, consumer) of every queue in `vhosts` that has consumers.
async fn consumers_in(vhosts: &[Arc<VHost>]) -> Vec<(String, String, ConsumerInfo)> {
    let mut asks = tokio::task::JoinSet::new();
    for vhost in vhosts {
        let routing = vhost.routing_snapshot();
        for (name, handle) in routing.queues.iter() {
            if handle.metrics().consumers == 0 {
                continue;
            }
            let (vhost, name, handle) = (vhost.name().to_owned(), name.to_string(), handle.clone());
            asks.spawn(async move {
                let list = tokio::time::timeout(
                    CONSUMER_LIST_TIMEOUT,
                    handle.ask(QueueCommand::Consumers),
                )
                .await;
                (
                    vhost,
                    name,
                    list.ok().and_then(Result::ok).unwrap_or_default(),
                )
            });
        }
    }
    let mut out = Vec::new();
    while let Some(answer) = asks.join_next().await {
        if let Ok((vhost, queue, list)) = answer {
            out.extend(list.into_iter().map(|c| (vhost.clone(), queue.clone(), c)));
        }
    }
    out.sort_by(|a, b| (&a.0, &a.1, a.2.tag.as_str()).cmp(&(&b.0, &b.1, b.2.tag.as_str())));
    out
}

fn consumer_json(vhost: &str, queue: &str, c: &ConsumerInfo, channel: Option<&ChannelOf>) -> Value {
    let channel_details = match channel {
        Some(ch) => json!({
            "name": ch.name(),
            "number": ch.channel.number,
            "connection_name": name_of(&ch.connection),
            "peer_host": ch.connection.peer.ip().to_string(),
            "peer_port": ch.connection.peer.port(),
            "user": ch.connection.user,
        }),
        None => json!({}),
    };
    let mut arguments = serde_json::Map::new();
    if c.priority != 0 {
        arguments.insert("x-priority".into(), json!(c.priority));
    }
    json!({
        "consumer_tag": c.tag.as_str(),
        "queue": {"name": queue, "vhost": vhost},
        "channel_details": channel_details,
        "ack_required": c.ack_required,
        "exclusive": c.exclusive,
        "prefetch_count": c.prefetch_count,
        "arguments": arguments,
        "active": true,
        "activity_status": "up",
    })
}

async fn list(
    caller: &Caller,
    state: &AppState,
    vhosts: Vec<Arc<VHost>>,
    q: &ListQuery,
) -> Result<Value, ApiError> {
    let consumers = consumers_in(&vhosts).await;
    let channels: HashMap<u64, ChannelOf> = match consumers.is_empty() {
        true => HashMap::new(),
        false => channels_of(state, visible(caller, state))
            .await
            .into_iter()
            .map(|c| (c.channel.key, c))
            .collect(),
    };
    let items = consumers
        .iter()
        .map(|(v, queue, c)| consumer_json(v, queue, c, channels.get(&c.channel_key)))
        .collect();
    q.respond(items)
}

/// The consumers of one queue (`consumer_details` of `GET /api/queues/{vhost}/{name}`):
/// one command to that queue, none when its metrics count no consumer.
pub async fn of_queue(
    caller: &Caller,
    state: &AppState,
    vhost: &str,
    queue: &QueueHandle,
) -> Vec<Value> {
    if queue.metrics().consumers == 0 {
        return Vec::new();
    }
    let asked = tokio::time::timeout(CONSUMER_LIST_TIMEOUT, queue.ask(QueueCommand::Consumers));
    let consumers = asked.await.ok().and_then(Result::ok).unwrap_or_default();
    let channels: HashMap<u64, ChannelOf> = channels_of(state, visible(caller, state))
        .await
        .into_iter()
        .map(|c| (c.channel.key, c))
        .collect();
    consumers
        .iter()
        .map(|c| {
            consumer_json(
                vhost,
                queue.name().as_str(),
                c,
                channels.get(&c.channel_key),
            )
        })
        .collect()
}

async fn list_all(
    caller: Caller,
    State(state): State<AppState>,
    q: ListQuery,
) -> Result<Json<Value>, ApiError> {
    let vhosts = caller.visible_vhosts();
    list(&caller, &state, vhosts, &q).await.map(Json)
}

async fn list_vhost(
    caller: Caller,
    State(state): State<AppState>,
    Path(vhost): Path<String>,
    q: ListQuery,
) -> Result<Json<Value>, ApiError> {
    let vhost = caller.vhost(&vhost)?;
    list(&caller, &state, vec![vhost], &q).await.map(Json)
}
