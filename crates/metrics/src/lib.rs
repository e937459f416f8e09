//! Prometheus metrics on RabbitMQ's `rabbitmq_prometheus` names, types and labels, so that
//! RabbitMQ's Grafana dashboards and alerts work unchanged: `GET /metrics` (aggregated),
//! `GET /metrics/per-object` and `GET /metrics/detailed?family=...&vhost=...`, in the text
//! exposition format 0.0.4, without authentication (RabbitMQ's default). Families and
//! approximations: `docs/metrics.md`.
//!
//! Owns: the HTTP endpoint and the text. Must not touch: broker state except by reading
//! what it publishes for readers (the connection registry's counters, queues' metrics
//! atomics, vhost listings, the alarms); it sends no command to any queue actor. A scrape
//! is written on the blocking pool, so a large one never holds up an async worker.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{RawQuery, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
pub use axum::Router;
use warren_core::Broker;
use warren_server::alarm::Alarms;

mod detailed;
mod families;
mod process;
mod text;

pub use detailed::GROUPS as DETAILED_GROUPS;
pub use families::{render, Mode};
pub use text::CONTENT_TYPE as TEXT_CONTENT_TYPE;

/// RabbitMQ's Prometheus port.
pub const DEFAULT_PROMETHEUS_PORT: u16 = 15692;

/// What the node families report besides the broker.
pub struct Node {
    /// `rabbitmq_node` (the management API's node name).
    pub name: String,
    pub cluster_name: String,
    pub cluster_id: String,
    /// Start of the process, for `rabbitmq_erlang_uptime_seconds`.
    pub started: Instant,
    /// Thresholds, state and free disk space (None: those families are left out).
    pub alarms: Option<Arc<Alarms>>,
}

impl Node {
    /// This process: `warren@$HOSTNAME`, as the management API names it.
    pub fn new(alarms: Option<Arc<Alarms>>, started: Instant) -> Node {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
        let name = format!("warren@{host}");
        Node {
            cluster_id: format!("warren-cluster-id-{name}"),
            cluster_name: name.clone(),
            name,
            started,
            alarms,
        }
    }
}

#[derive(Clone)]
struct AppState {
    broker: Arc<Broker>,
    node: Arc<Node>,
}

/// The three endpoints.
pub fn router(broker: Arc<Broker>, node: Node) -> Router {
    let state = AppState {
        broker,
        node: Arc::new(node),
    };
    Router::new()
        .route("/metrics", get(aggregated))
        .route("/metrics/per-object", get(per_object))
        .route("/metrics/detailed", get(detailed_metrics))
        .with_state(state)
}

/// Serves the endpoints on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    broker: Arc<Broker>,
    node: Node,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(listener, router(broker, node), shutdown).await
}

/// Serves a `router` made earlier (tests).
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn aggregated(State(s): State<AppState>) -> Response {
    scrape(move || render(&s.broker, &s.node, Mode::Aggregated)).await
}

async fn per_object(State(s): State<AppState>) -> Response {
    scrape(move || render(&s.broker, &s.node, Mode::PerObject)).await
}

async fn detailed_metrics(State(s): State<AppState>, RawQuery(query): RawQuery) -> Response {
    let request = detailed::Request::parse(query.as_deref().unwrap_or(""));
    let channels = detailed::list_channels(&s.broker, &request).await;
    scrape(move || detailed::render(&s.broker, &s.node, &request, &channels)).await
}

/// Writes a scrape on the blocking pool.
async fn scrape(write: impl FnOnce() -> String + Send + 'static) -> Response {
    match tokio::task::spawn_blocking(write).await {
        Ok(text) => ([(CONTENT_TYPE, text::CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a metrics scrape failed");
            axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[cfg(test)]
mod tests;
