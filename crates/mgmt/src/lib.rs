//! The management HTTP API on RabbitMQ's paths, methods, status codes and JSON field names
//! (`/api/users`, `/api/vhosts`, `/api/permissions`, `/api/policies`, `/api/definitions`,
//! `/api/connections`, `/api/queues`, `/api/exchanges`, `/api/bindings`, `/api/channels`,
//! `/api/consumers`, `/api/nodes`, `/api/health/checks` ...), so that `rabbitmqadmin`,
//! scripts and client test suites written for RabbitMQ work against Warren. Coverage and approximations: `docs/management.md`.
//!
//! Owns: the HTTP ↔ admin interface (routing, basic auth with RabbitMQ's tag rules and AMQP
//! resource permissions, JSON in and out, error bodies, listing parameters, the rate
//! sampler). Must not touch: broker state except through `Broker`'s admin API
//! (`warren_core::admin`), the vhosts' declare/delete/bind/unbind, queue commands that
//! answer a request (purge, consumers, the aliveness test's publish and get) and read-only
//! accessors; sockets other than its own listener.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;
use warren_core::Broker;

mod auth;
mod bindings;
mod body;
mod channels;
mod connections;
mod consumers;
mod definitions;
mod error;
mod exchanges;
mod health;
pub mod https;
mod limits;
pub mod listing;
mod messages;
pub mod node;
mod overview;
mod permissions;
mod policies;
mod queues;
pub mod rates;
mod shovel;
mod ui;
mod users;
mod vhosts;

pub use error::ApiError;

/// Largest request body of any endpoint but definitions import (RabbitMQ answers 413 past it).
pub const BODY_BYTES_MAX: usize = 1024 * 1024;
/// Largest definitions document `POST /api/definitions` accepts.
pub const DEFINITIONS_BODY_BYTES_MAX: usize = 100 * 1024 * 1024;
/// The realm of the `WWW-Authenticate` challenge (RabbitMQ's).
pub const AUTH_REALM: &str = "RabbitMQ Management";

/// The API's shared state: the broker, reached only through its admin interface.
#[derive(Clone)]
pub struct AppState {
    pub broker: Arc<Broker>,
    /// Moves started through RabbitMQ's shovel parameters, while they run.
    shovels: Arc<shovel::Shovels>,
    /// Message rates, sampled by a task `router` starts (`rates.rs`).
    pub rates: Arc<rates::Rates>,
    /// Listeners and alarms, as the binary running the API knows them (`node.rs`).
    pub node: Arc<node::NodeContext>,
}

/// Every endpoint. Handlers need the peer address (`ConnectInfo<SocketAddr>`) for the
/// loopback rule: serve with `into_make_service_with_connect_info`, or in tests add
/// `axum::extract::connect_info::MockConnectInfo`.
pub fn router(broker: Arc<Broker>) -> Router {
    router_with(broker, node::NodeContext::default())
}

/// `router` with what is known of the node (listeners, alarms). Starts the rate sampler
/// (`rates.rs`) when called inside a tokio runtime.
pub fn router_with(broker: Arc<Broker>, node: node::NodeContext) -> Router {
    let rates = Arc::new(rates::Rates::default());
    rates::spawn_sampler(Arc::downgrade(&broker), Arc::downgrade(&rates));
    let state = AppState {
        broker,
        rates,
        node: Arc::new(node),
        shovels: Arc::default(),
    };
    let definitions = Router::new()
        .route(
            "/api/definitions",
            get(definitions::export).post(definitions::import),
        )
        .route(
            "/api/definitions/{vhost}",
            get(definitions::export_vhost).post(definitions::import_vhost),
        )
        .layer(DefaultBodyLimit::max(DEFINITIONS_BODY_BYTES_MAX));
    Router::new()
        .route("/api/whoami", get(overview::whoami))
        .route("/api/overview", get(overview::overview))
        .merge(vhosts::routes())
        .merge(users::routes())
        .merge(permissions::routes())
        .merge(policies::routes())
        .merge(limits::routes())
        .merge(connections::routes())
        .merge(messages::routes())
        .merge(shovel::routes())
        .merge(queues::routes())
        .merge(exchanges::routes())
        .merge(bindings::routes())
        .merge(channels::routes())
        .merge(consumers::routes())
        .merge(node::routes())
        .merge(health::routes())
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .merge(definitions)
        .merge(ui::routes())
        .fallback(error::not_found_fallback)
        .layer(axum::middleware::map_response(error::json_for_bare_errors))
        .layer(axum::middleware::from_fn(ui::no_browser_login_prompt))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    broker: Arc<Broker>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, broker, node::NodeContext::default(), shutdown).await
}

/// `serve` with what is known of the node; the API's own listener is added to its
/// listeners as `http`.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    broker: Arc<Broker>,
    mut node: node::NodeContext,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    node.listeners.push(node::Listener {
        protocol: "http".into(),
        addr: listener.local_addr()?,
    });
    let app = router_with(broker, node).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// `serve_with` over HTTPS: TLS with `tls` (the amqps certificate and key) in front of the
/// same API and UI.
pub async fn serve_tls_with(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    broker: Arc<Broker>,
    mut node: node::NodeContext,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    node.listeners.push(node::Listener {
        protocol: "https".into(),
        addr: listener.local_addr()?,
    });
    https::serve_tls(listener, tls, router_with(broker, node), shutdown).await
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_objects;
