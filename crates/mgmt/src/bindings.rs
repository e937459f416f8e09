//! `/api/bindings[/{vhost}]` and `/api/bindings/{vhost}/e/{source}/{q|e}/{destination}[/{props}]`:
//! list, create (POST, answering 201 with a `Location` naming the binding's
//! `properties_key`), show and delete one binding. The default exchange's implicit
//! binding of every queue is listed, as RabbitMQ does, but cannot be changed.
//!
//! Owns: the binding JSON and the lookup by `properties_key`. Must not touch: bindings except
//! through the vhost's bind/unbind.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use warren_core::access::permission::Access;
use warren_core::admin::definitions::table_to_json;
use warren_core::routing::Destination;
use warren_core::vhost::BindingInfo;
use warren_core::VHost;
use warren_protocol::ShortString;

use crate::auth::Caller;
use crate::body::{arguments, opt_str, JsonObject};
use crate::exchanges::from_path;
use crate::listing::ListQuery;
use crate::{ApiError, AppState};

/// The connection id the API binds as (bindings of exclusive queues are refused, 405→400).
const API_CONNECTION: u64 = 0;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/bindings", get(list_all))
        .route("/api/bindings/{vhost}", get(list_vhost))
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{destination}",
            get(between).post(create),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}",
            get(show).delete(remove),
        )
}

pub fn binding_json(vhost: &str, b: &BindingInfo) -> Value {
    json!({
        "source": b.source.as_str(),
        "vhost": vhost,
        "destination": b.destination.as_str(),
        "destination_type": b.destination_type,
        "routing_key": b.routing_key.as_str(),
        "arguments": table_to_json(&b.arguments),
        "properties_key": b.properties_key,
    })
}

/// Everything but RFC 3986's unreserved characters.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes a path segment (everything but RFC 3986's unreserved characters).
pub fn encode_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, PATH_SEGMENT).to_string()
}

async fn list_all(caller: Caller, q: ListQuery) -> Result<Json<Value>, ApiError> {
    let items = caller
        .visible_vhosts()
        .iter()
        .flat_map(|v| {
            v.bindings()
                .iter()
                .map(|b| binding_json(v.name(), b))
                .collect::<Vec<_>>()
        })
        .collect();
    q.respond(items).map(Json)
}

async fn list_vhost(
    caller: Caller,
    Path(vhost): Path<String>,
    q: ListQuery,
) -> Result<Json<Value>, ApiError> {
    let vhost = caller.vhost(&vhost)?;
    let items = vhost
        .bindings()
        .iter()
        .map(|b| binding_json(vhost.name(), b))
        .collect();
    q.respond(items).map(Json)
}

/// The `q` / `e` path segment as the binding's destination type.
fn destination_type(kind: &str) -> Result<&'static str, ApiError> {
    match kind {
        "q" => Ok("queue"),
        "e" => Ok("exchange"),
        _ => Err(ApiError::not_found("Object Not Found")),
    }
}

/// Bindings from `source` to `destination` (of `kind`) in `vhost`; 404 when an end is missing.
fn between_ends(
    vhost: &VHost,
    source: &str,
    dtype: &str,
    destination: &str,
) -> Result<Vec<BindingInfo>, ApiError> {
    let routing = vhost.routing();
    let source_exists = source.is_empty() || routing.exchanges.contains_key(source);
    let destination_exists = match dtype {
        "queue" => routing.queues.contains_key(destination),
        _ => routing.exchanges.contains_key(destination),
    };
    if !source_exists || !destination_exists {
        return Err(ApiError::not_found(format!(
            "no binding ends '{source}' → {dtype} '{destination}' in vhost '{}'",
            vhost.name()
        )));
    }
    Ok(vhost
        .bindings()
        .into_iter()
        .filter(|b| {
            b.source.as_str() == source
                && b.destination_type == dtype
                && b.destination.as_str() == destination
        })
        .collect())
}

async fn between(
    caller: Caller,
    Path((vhost_name, source, kind, destination)): Path<(String, String, String, String)>,
    q: ListQuery,
) -> Result<Json<Value>, ApiError> {
    let dtype = destination_type(&kind)?;
    let vhost = caller.vhost(&vhost_name)?;
    let items = between_ends(&vhost, from_path(&source), dtype, &destination)?
        .iter()
        .map(|b| binding_json(&vhost_name, b))
        .collect();
    q.respond(items).map(Json)
}

fn destination(dtype: &str, name: &str) -> Result<Destination, ApiError> {
    let name = ShortString::try_new(name).map_err(|_| ApiError::bad_request("name too long"))?;
    Ok(match dtype {
        "queue" => Destination::Queue(name),
        _ => Destination::Exchange(name),
    })
}

/// queue.bind / exchange.bind: `write` on the destination and `read` on the source, as
/// RabbitMQ checks them. 201 with `Location: <this path>/<properties_key>`.
async fn create(
    caller: Caller,
    Path((vhost_name, source, kind, dest)): Path<(String, String, String, String)>,
    JsonObject(body): JsonObject,
) -> Result<(StatusCode, HeaderMap), ApiError> {
    let dtype = destination_type(&kind)?;
    let source = from_path(&source);
    caller.require_access(&vhost_name, Access::Write, dtype, &dest)?;
    caller.require_access(&vhost_name, Access::Read, "exchange", source)?;
    let vhost = caller.vhost(&vhost_name)?;
    let routing_key = opt_str(&body, "routing_key")?.unwrap_or_default();
    let args = arguments(&body)?;
    let key = ShortString::try_new(routing_key)
        .map_err(|_| ApiError::bad_request("routing_key longer than 255 bytes"))?;
    vhost.bind(
        source,
        destination(dtype, &dest)?,
        key,
        args.clone(),
        API_CONNECTION,
    )?;
    let props = vhost
        .bindings()
        .into_iter()
        .find(|b| {
            b.source.as_str() == source
                && b.destination_type == dtype
                && b.destination.as_str() == dest
                && b.routing_key.as_str() == routing_key
                && b.arguments == args
        })
        .map(|b| b.properties_key)
        .unwrap_or_else(|| warren_core::vhost::properties_key(routing_key, &[]));
    let location = format!(
        "/api/bindings/{}/e/{}/{kind}/{}/{}",
        encode_segment(&vhost_name),
        encode_segment(if source.is_empty() {
            "amq.default"
        } else {
            source
        }),
        encode_segment(&dest),
        encode_segment(&props)
    );
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, v);
    }
    Ok((StatusCode::CREATED, headers))
}

fn find(
    vhost: &VHost,
    source: &str,
    dtype: &str,
    dest: &str,
    props: &str,
) -> Result<BindingInfo, ApiError> {
    between_ends(vhost, source, dtype, dest)?
        .into_iter()
        .find(|b| b.properties_key == props)
        .ok_or_else(|| ApiError::not_found(format!("no binding with properties_key '{props}'")))
}

async fn show(
    caller: Caller,
    Path((vhost_name, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let dtype = destination_type(&kind)?;
    let vhost = caller.vhost(&vhost_name)?;
    let b = find(&vhost, from_path(&source), dtype, &dest, &props)?;
    Ok(Json(binding_json(&vhost_name, &b)))
}

/// queue.unbind / exchange.unbind of the binding `props` names (same permissions as create).
async fn remove(
    caller: Caller,
    Path((vhost_name, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let dtype = destination_type(&kind)?;
    let source = from_path(&source);
    caller.require_access(&vhost_name, Access::Write, dtype, &dest)?;
    caller.require_access(&vhost_name, Access::Read, "exchange", source)?;
    let vhost = caller.vhost(&vhost_name)?;
    let b = find(&vhost, source, dtype, &dest, &props)?;
    vhost.unbind(
        source,
        destination(dtype, &dest)?,
        b.routing_key.as_str(),
        &b.arguments,
        API_CONNECTION,
    )?;
    Ok(StatusCode::NO_CONTENT)
}
