//! `/api/queues[/{vhost}[/{name}[/contents|/bindings]]]`: list, show, declare (PUT), delete
//! (with `if-unused` / `if-empty`), purge, and a queue's bindings.
//!
//! Owns: the queue JSON (RabbitMQ's fields, statistics from each queue's metrics atomics and
//! rates from `rates.rs`; no command is sent to a queue for a listing). Must not touch:
//! queue state except through the vhost's declare/delete and the queue's Purge command.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use warren_core::access::permission::Access;
use warren_core::admin::definitions::table_to_json;
use warren_core::policy::PolicyKind;
use warren_core::queue::{QueueCommand, QueueDef};
use warren_core::vhost::{QueueInfo, VHost};
use warren_protocol::ShortString;

use crate::auth::Caller;
use crate::bindings::binding_json;
use crate::body::{arguments, opt_bool, JsonObject};
use crate::listing::{ListQuery, NameFilter};
use crate::overview::node_name;
use crate::rates::{QueueRates, RatesView};
use crate::{ApiError, AppState};

/// The connection id the API acts as on queues (no AMQP connection owns what it declares).
const API_CONNECTION: u64 = 0;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/queues", get(list_all))
        .route("/api/queues/{vhost}", get(list_vhost))
        .route(
            "/api/queues/{vhost}/{name}",
            get(show).put(put).delete(remove),
        )
        .route("/api/queues/{vhost}/{name}/contents", delete(purge))
        .route("/api/queues/{vhost}/{name}/bindings", get(bindings))
}

/// `{"rate": r}`, RabbitMQ's `*_details`.
pub fn details(rate: f64) -> Value {
    json!({ "rate": (rate * 10.0).round() / 10.0 })
}

/// RabbitMQ's `message_stats` of a queue (or of a sum of queues).
pub fn message_stats(m: &warren_core::queue::metrics::QueueCounters, r: &QueueRates) -> Value {
    let deliver_get = m.deliver + m.deliver_no_ack + m.get + m.get_no_ack;
    json!({
        "publish": m.publish, "publish_details": details(r.publish),
        "deliver_get": deliver_get, "deliver_get_details": details(r.deliver_get),
        "deliver": m.deliver, "deliver_details": details(r.deliver),
        "deliver_no_ack": m.deliver_no_ack, "deliver_no_ack_details": details(r.deliver_no_ack),
        "get": m.get, "get_details": details(r.get),
        "get_no_ack": m.get_no_ack, "get_no_ack_details": details(r.get_no_ack),
        "get_empty": m.get_empty,
        "ack": m.ack, "ack_details": details(r.ack),
        "redeliver": m.redeliver, "redeliver_details": details(r.redeliver),
    })
}

/// Policy definitions by (kind, name), looked up once per listing.
#[derive(Default)]
pub struct PolicyCache(HashMap<(bool, String), Map<String, Value>>);

impl PolicyCache {
    fn definition(&mut self, vhost: &VHost, operator: bool, name: &str) -> Map<String, Value> {
        self.0
            .entry((operator, name.to_owned()))
            .or_insert_with(|| {
                let kind = match operator {
                    true => PolicyKind::Operator,
                    false => PolicyKind::Regular,
                };
                vhost
                    .policy(kind, name)
                    .map(|p| p.definition_json)
                    .unwrap_or_default()
            })
            .clone()
    }

    /// The policy's definition overlaid by the operator policy's (an approximation of
    /// RabbitMQ's per-key merge, where the operator policy wins for the keys it sets).
    pub fn effective(
        &mut self,
        vhost: &VHost,
        policy: &warren_core::vhost::PolicyNames,
    ) -> Map<String, Value> {
        let mut out = match &policy.policy {
            Some(p) => self.definition(vhost, false, p),
            None => Map::new(),
        };
        if let Some(op) = &policy.operator_policy {
            out.extend(self.definition(vhost, true, op));
        }
        out
    }
}

/// The queue type named in its arguments (Warren runs every queue as a classic one).
fn queue_type(q: &QueueInfo) -> String {
    q.arguments
        .inner()
        .get("x-queue-type")
        .and_then(warren_core::args::as_str)
        .unwrap_or_else(|| "classic".to_owned())
}

/// Approximation of RabbitMQ's `consumer_utilisation` (the share of time the queue could
/// deliver at once): null without consumers, 1.0 while they keep up (nothing ready), else
/// 0.0 (messages wait for consumer credit).
fn consumer_utilisation(m: &warren_core::queue::metrics::QueueCounters) -> Value {
    match (m.consumers, m.messages_ready) {
        (0, _) => Value::Null,
        (_, 0) => json!(1.0),
        _ => json!(0.0),
    }
}

pub fn queue_json(
    vhost: &VHost,
    q: &QueueInfo,
    r: &QueueRates,
    policies: &mut PolicyCache,
) -> Value {
    let m = &q.metrics;
    json!({
        "name": q.name.as_str(),
        "vhost": vhost.name(),
        "durable": q.durable,
        "auto_delete": q.auto_delete,
        "exclusive": q.exclusive(),
        "arguments": table_to_json(&q.arguments),
        "node": node_name(),
        "state": "running",
        "type": queue_type(q),
        "messages": m.messages(),
        "messages_details": details(r.messages),
        "messages_ready": m.messages_ready,
        "messages_ready_details": details(r.messages_ready),
        "messages_unacknowledged": m.messages_unacknowledged,
        "messages_unacknowledged_details": details(r.messages_unacknowledged),
        "message_bytes": m.message_bytes(),
        "message_bytes_ready": m.message_bytes_ready,
        "message_bytes_unacknowledged": m.message_bytes_unacknowledged,
        "consumers": m.consumers,
        "consumer_utilisation": consumer_utilisation(m),
        "policy": q.policy.policy,
        "operator_policy": q.policy.operator_policy,
        "effective_policy_definition": policies.effective(vhost, &q.policy),
        "exclusive_consumer_tag": Value::Null,
        "message_stats": message_stats(m, r),
    })
}

fn infos_json(vhost: &VHost, infos: &[QueueInfo], rates: &RatesView) -> Vec<Value> {
    let mut policies = PolicyCache::default();
    infos
        .iter()
        .map(|q| queue_json(vhost, q, &rates.queue(q.handle.id()), &mut policies))
        .collect()
}

/// Whether the page can come straight from `VHost::queues_page` (sorted by name, plain
/// substring filter): then 100,000 queues cost a sort of names, not 100,000 JSON objects.
fn pages_from_broker(q: &ListQuery, vhosts: usize) -> bool {
    let by_name = match q.sort.as_deref() {
        None => true,
        Some("name") => vhosts <= 1,
        Some(_) => false,
    };
    q.page.is_some() && by_name && !q.sort_reverse && !matches!(q.name, Some(NameFilter::Regex(_)))
}

fn list(state: &AppState, vhosts: &[Arc<VHost>], q: &ListQuery) -> Result<Value, ApiError> {
    if pages_from_broker(q, vhosts.len()) {
        let page = q.page.unwrap_or(1);
        let filter = match &q.name {
            Some(NameFilter::Contains(s)) => Some(s.as_str()),
            _ => None,
        };
        let mut skip = (page - 1).saturating_mul(q.page_size);
        let (mut filtered, mut total, mut items) = (0, 0, Vec::new());
        for vhost in vhosts {
            let want = q.page_size - items.len().min(q.page_size);
            let got = vhost.queues_page(skip, want, filter);
            skip = skip.saturating_sub(got.total);
            filtered += got.total;
            total += vhost.routing().queues.len();
            let rates = state.rates.view();
            items.extend(infos_json(vhost, &got.items, &rates));
        }
        q.check_page(page, filtered)?;
        return Ok(q.envelope(q.trim_all(items), page, filtered, total));
    }
    let mut items = Vec::new();
    for vhost in vhosts {
        let infos = vhost.queue_infos();
        let rates = state.rates.view();
        items.extend(infos_json(vhost, &infos, &rates));
    }
    q.respond(items)
}

async fn list_all(
    caller: Caller,
    State(state): State<AppState>,
    q: ListQuery,
) -> Result<Json<Value>, ApiError> {
    list(&state, &caller.visible_vhosts(), &q).map(Json)
}

async fn list_vhost(
    caller: Caller,
    State(state): State<AppState>,
    Path(vhost): Path<String>,
    q: ListQuery,
) -> Result<Json<Value>, ApiError> {
    let vhost = caller.vhost(&vhost)?;
    list(&state, &[vhost], &q).map(Json)
}

fn not_found(vhost: &str, name: &str) -> ApiError {
    ApiError::not_found(format!("no queue '{name}' in vhost '{vhost}'"))
}

async fn show(
    caller: Caller,
    State(state): State<AppState>,
    Path((vhost_name, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let vhost = caller.vhost(&vhost_name)?;
    let info = vhost
        .queue_info(&name)
        .ok_or_else(|| not_found(&vhost_name, &name))?;
    let rates = state.rates.view().queue(info.handle.id());
    let mut json = queue_json(&vhost, &info, &rates, &mut PolicyCache::default());
    let consumers = crate::consumers::of_queue(&caller, &state, &vhost_name, &info.handle).await;
    json["consumer_details"] = Value::Array(consumers);
    Ok(Json(json))
}

/// queue.declare: 201 when created, 204 when an equivalent queue exists, 400 with
/// RabbitMQ's PRECONDITION_FAILED text when it is not equivalent.
async fn put(
    caller: Caller,
    Path((vhost_name, name)): Path<(String, String)>,
    JsonObject(body): JsonObject,
) -> Result<StatusCode, ApiError> {
    caller.require_access(&vhost_name, Access::Configure, "queue", &name)?;
    let vhost = caller.vhost(&vhost_name)?;
    let def = QueueDef {
        name: ShortString::try_new(name.as_str())
            .map_err(|_| ApiError::bad_request("queue name longer than 255 bytes"))?,
        durable: opt_bool(&body, "durable", false)?,
        exclusive_owner: None,
        auto_delete: opt_bool(&body, "auto_delete", false)?,
        arguments: arguments(&body)?,
    };
    let existed = vhost.routing().queues.contains_key(name.as_str());
    vhost.declare_queue(def, false)?;
    Ok(match existed {
        true => StatusCode::NO_CONTENT,
        false => StatusCode::CREATED,
    })
}

/// queue.delete; `if-unused=true` / `if-empty=true` answer 400 when the queue is in use or
/// not empty (RabbitMQ's PRECONDITION_FAILED text); a missing queue is 404.
async fn remove(
    caller: Caller,
    Path((vhost_name, name)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<StatusCode, ApiError> {
    caller.require_access(&vhost_name, Access::Configure, "queue", &name)?;
    let vhost = caller.vhost(&vhost_name)?;
    if !vhost.routing().queues.contains_key(name.as_str()) {
        return Err(not_found(&vhost_name, &name));
    }
    let flag = |k: &str| params.get(k).is_some_and(|v| v == "true");
    vhost
        .delete_queue(&name, API_CONNECTION, flag("if-unused"), flag("if-empty"))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// queue.purge (needs `read` on the queue, as RabbitMQ).
async fn purge(
    caller: Caller,
    Path((vhost_name, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require_access(&vhost_name, Access::Read, "queue", &name)?;
    let vhost = caller.vhost(&vhost_name)?;
    let handle = vhost
        .routing()
        .queues
        .get(name.as_str())
        .cloned()
        .ok_or_else(|| not_found(&vhost_name, &name))?;
    handle.ask(QueueCommand::Purge).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn bindings(
    caller: Caller,
    Path((vhost_name, name)): Path<(String, String)>,
    q: ListQuery,
) -> Result<Json<Value>, ApiError> {
    let vhost = caller.vhost(&vhost_name)?;
    if !vhost.routing().queues.contains_key(name.as_str()) {
        return Err(not_found(&vhost_name, &name));
    }
    let items = vhost
        .bindings()
        .iter()
        .filter(|b| b.destination_type == "queue" && b.destination.as_str() == name)
        .map(|b| binding_json(&vhost_name, b))
        .collect();
    q.respond(items).map(Json)
}
