//! `GET /api/whoami` and `GET /api/overview` (a minimal overview: no message rates yet).

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::AppState;

/// The version Warren's API imitates.
pub const MANAGEMENT_VERSION: &str = "3.13.0";

/// RabbitMQ names nodes `rabbit@host`; Warren is one node.
pub fn node_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    format!("warren@{host}")
}

pub async fn whoami(caller: Caller) -> Json<Value> {
    Json(json!({"name": caller.name(), "tags": caller.user.tags}))
}

pub async fn overview(caller: Caller, State(state): State<AppState>) -> Json<Value> {
    let broker = &state.broker;
    let (mut queues, mut exchanges) = (0usize, 0usize);
    for (name, vhost) in broker.vhost_handles().iter() {
        if caller.can_see_vhost(name) {
            let routing = vhost.routing();
            queues += routing.queues.len();
            exchanges += routing.exchanges.len();
        }
    }
    let connections = broker
        .connections
        .list()
        .iter()
        .filter(|c| caller.is_monitor() || c.user == caller.name())
        .count();
    Json(json!({
        "management_version": MANAGEMENT_VERSION,
        "rabbitmq_version": MANAGEMENT_VERSION,
        "product_name": "Warren",
        "product_version": env!("CARGO_PKG_VERSION"),
        "cluster_name": node_name(),
        "node": node_name(),
        "object_totals": {
            "connections": connections,
            "channels": 0,
            "queues": queues,
            "exchanges": exchanges,
            "consumers": 0,
        },
    }))
}
