//! `/api/exchanges[/{vhost}[/{name}[/bindings/source|destination]]]`: list, show, declare
//! (PUT), delete (with `if-unused`) and an exchange's bindings. The default exchange is
//! listed with the name `""` and addressed in paths as `amq.default`, as in RabbitMQ.
//!
//! Owns: the exchange JSON. Must not touch: exchanges except through the vhost's
//! declare/delete (which refuse `amq.*` and the default exchange as AMQP does).

use std::collections::HashMap;

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use warren_core::access::permission::Access;
use warren_core::admin::definitions::table_to_json;
use warren_core::exchange::{ExchangeDef, ExchangeKind};
use warren_core::vhost::ExchangeInfo;
use warren_protocol::ShortString;

use crate::auth::Caller;
use crate::bindings::binding_json;
use crate::body::{arguments, opt_bool, opt_str, JsonObject};
use crate::listing::ListQuery;
use crate::queues::details;
use crate::rates::{exchange_key, RatesView};
use crate::{ApiError, AppState};

/// How RabbitMQ's paths name the default exchange (its real name is "").
pub const DEFAULT_EXCHANGE_PATH_NAME: &str = "amq.default";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/exchanges", get(list_all))
        .route("/api/exchanges/{vhost}", get(list_vhost))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(show).put(put).delete(remove),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/source",
            get(bindings_source),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/destination",
            get(bindings_destination),
        )
}

/// An exchange name from a path (`amq.default` is the default exchange "").
pub fn from_path(name: &str) -> &str {
    match name {
        DEFAULT_EXCHANGE_PATH_NAME => "",
        other => other,
    }
}

fn exchange_json(vhost: &str, x: &ExchangeInfo, rates: &RatesView<'_>) -> Value {
    let mut out = json!({
        "name": x.name.as_str(),
        "vhost": vhost,
        "type": x.kind.as_str(),
        "durable": x.durable,
        "auto_delete": x.auto_delete,
        "internal": x.internal,
        "arguments": table_to_json(&x.arguments),
        "user_who_performed_action": "",
        "policy": x.policy.policy,
    });
    // As RabbitMQ: only once something was published to it.
    let (publish_in, publish_out) = x.counters.read();
    if publish_in > 0 {
        let r = rates.exchange(exchange_key(&x.counters));
        out["message_stats"] = json!({
            "publish_in": publish_in,
            "publish_in_details": details(r.publish_in),
            "publish_out": publish_out,
            "publish_out_details": details(r.publish_out),
        });
    }
    out
}

fn list(
    caller: &Caller,
    vhosts: Vec<std::sync::Arc<warren_core::VHost>>,
    q: &ListQuery,
) -> Result<Value, ApiError> {
    let infos: Vec<_> = vhosts.iter().map(|v| (v, v.exchange_infos())).collect();
    let rates = caller.state.rates.view();
    let items = infos
        .iter()
        .flat_map(|(v, xs)| xs.iter().map(|x| exchange_json(v.name(), x, &rates)))
        .collect();
    q.respond(items)
}

async fn list_all(caller: Caller, q: ListQuery) -> Result<Json<Value>, ApiError> {
    let vhosts = caller.visible_vhosts();
    list(&caller, vhosts, &q).map(Json)
}

async fn list_vhost(
    caller: Caller,
    Path(vhost): Path<String>,
    q: ListQuery,
) -> Result<Json<Value>, ApiError> {
    let vhost = caller.vhost(&vhost)?;
    list(&caller, vec![vhost], &q).map(Json)
}

fn not_found(vhost: &str, name: &str) -> ApiError {
    ApiError::not_found(format!("no exchange '{name}' in vhost '{vhost}'"))
}

async fn show(
    caller: Caller,
    Path((vhost_name, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let vhost = caller.vhost(&vhost_name)?;
    let name = from_path(&name);
    let infos = vhost.exchange_infos();
    let rates = caller.state.rates.view();
    infos
        .iter()
        .find(|x| x.name.as_str() == name)
        .map(|x| Json(exchange_json(&vhost_name, x, &rates)))
        .ok_or_else(|| not_found(&vhost_name, name))
}

/// exchange.declare: 201 created, 204 an equivalent one exists, 400 inequivalent, 403 for a
/// new `amq.*` name or the default exchange (ACCESS_REFUSED).
async fn put(
    caller: Caller,
    Path((vhost_name, name)): Path<(String, String)>,
    JsonObject(body): JsonObject,
) -> Result<StatusCode, ApiError> {
    let name = from_path(&name);
    caller.require_access(&vhost_name, Access::Configure, "exchange", name)?;
    let vhost = caller.vhost(&vhost_name)?;
    let kind =
        opt_str(&body, "type")?.ok_or_else(|| ApiError::bad_request("'type' is required"))?;
    let def = ExchangeDef {
        name: ShortString::try_new(name)
            .map_err(|_| ApiError::bad_request("exchange name longer than 255 bytes"))?,
        kind: ExchangeKind::parse(kind)
            .map_err(|_| ApiError::bad_request(format!("unknown exchange type '{kind}'")))?,
        durable: opt_bool(&body, "durable", false)?,
        auto_delete: opt_bool(&body, "auto_delete", false)?,
        internal: opt_bool(&body, "internal", false)?,
        arguments: arguments(&body)?,
    };
    let existed = vhost.routing().exchanges.contains_key(name);
    vhost.declare_exchange(def, false)?;
    Ok(match existed {
        true => StatusCode::NO_CONTENT,
        false => StatusCode::CREATED,
    })
}

/// exchange.delete: 404 when missing, 400 when `if-unused=true` and bound, 403 for `amq.*`.
async fn remove(
    caller: Caller,
    Path((vhost_name, name)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<StatusCode, ApiError> {
    let name = from_path(&name);
    caller.require_access(&vhost_name, Access::Configure, "exchange", name)?;
    let vhost = caller.vhost(&vhost_name)?;
    if !name.is_empty() && !vhost.routing().exchanges.contains_key(name) {
        return Err(not_found(&vhost_name, name));
    }
    let if_unused = params.get("if-unused").is_some_and(|v| v == "true");
    vhost.delete_exchange(name, if_unused)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn bindings_of(
    caller: Caller,
    vhost_name: String,
    name: String,
    q: ListQuery,
    as_source: bool,
) -> Result<Json<Value>, ApiError> {
    let vhost = caller.vhost(&vhost_name)?;
    let name = from_path(&name);
    if !vhost
        .exchange_infos()
        .iter()
        .any(|x| x.name.as_str() == name)
    {
        return Err(not_found(&vhost_name, name));
    }
    let items = vhost
        .bindings()
        .iter()
        .filter(|b| match as_source {
            true => b.source.as_str() == name,
            false => b.destination_type == "exchange" && b.destination.as_str() == name,
        })
        .map(|b| binding_json(&vhost_name, b))
        .collect();
    q.respond(items).map(Json)
}

async fn bindings_source(
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    q: ListQuery,
) -> Result<Json<Value>, ApiError> {
    bindings_of(caller, vhost, name, q, true).await
}

async fn bindings_destination(
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    q: ListQuery,
) -> Result<Json<Value>, ApiError> {
    bindings_of(caller, vhost, name, q, false).await
}
