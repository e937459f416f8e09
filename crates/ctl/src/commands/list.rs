//! `list <kind>` and `overview`: GETs of RabbitMQ's collection paths, printed as a table with
//! the columns that matter for each kind, or as the API's JSON.
//!
//! Owns: the columns of each kind and which path lists it (per vhost when --vhost is given).

use serde_json::Value;

use super::{out, print_json, Ctx};
use crate::cli::{Format, ListKind};
use crate::error::CtlError;
use crate::path::{api, segment};
use crate::table::{col, render, render_object, Column};

const QUEUES: &[Column] = &[
    col("vhost", "vhost"),
    col("name", "name"),
    col("type", "type"),
    col("messages", "messages"),
    col("ready", "messages_ready"),
    col("unacked", "messages_unacknowledged"),
    col("consumers", "consumers"),
];
const EXCHANGES: &[Column] = &[
    col("vhost", "vhost"),
    col("name", "name"),
    col("type", "type"),
    col("durable", "durable"),
    col("auto_delete", "auto_delete"),
    col("internal", "internal"),
];
const BINDINGS: &[Column] = &[
    col("vhost", "vhost"),
    col("source", "source"),
    col("destination", "destination"),
    col("destination_type", "destination_type"),
    col("routing_key", "routing_key"),
    col("arguments", "arguments"),
];
const CONNECTIONS: &[Column] = &[
    col("name", "name"),
    col("user", "user"),
    col("vhost", "vhost"),
    col("peer_host", "peer_host"),
    col("peer_port", "peer_port"),
    col("state", "state"),
    col("channels", "channels"),
];
const CHANNELS: &[Column] = &[
    col("name", "name"),
    col("user", "user"),
    col("vhost", "vhost"),
    col("number", "number"),
    col("consumers", "consumer_count"),
    col("unacked", "messages_unacknowledged"),
    col("prefetch", "prefetch_count"),
    col("state", "state"),
];
const CONSUMERS: &[Column] = &[
    col("vhost", "queue.vhost"),
    col("queue", "queue.name"),
    col("consumer_tag", "consumer_tag"),
    col("channel", "channel_details.name"),
    col("ack_required", "ack_required"),
    col("prefetch", "prefetch_count"),
    col("exclusive", "exclusive"),
    col("active", "active"),
];
const USERS: &[Column] = &[col("name", "name"), col("tags", "tags")];
const VHOSTS: &[Column] = &[
    col("name", "name"),
    col("description", "description"),
    col("tags", "tags"),
    col("default_queue_type", "default_queue_type"),
];
const PERMISSIONS: &[Column] = &[
    col("user", "user"),
    col("vhost", "vhost"),
    col("configure", "configure"),
    col("write", "write"),
    col("read", "read"),
];
const POLICIES: &[Column] = &[
    col("vhost", "vhost"),
    col("name", "name"),
    col("pattern", "pattern"),
    col("apply-to", "apply-to"),
    col("priority", "priority"),
    col("definition", "definition"),
];

/// The columns of a kind in table format.
pub fn columns(kind: ListKind) -> &'static [Column] {
    match kind {
        ListKind::Queues => QUEUES,
        ListKind::Exchanges => EXCHANGES,
        ListKind::Bindings => BINDINGS,
        ListKind::Connections => CONNECTIONS,
        ListKind::Channels => CHANNELS,
        ListKind::Consumers => CONSUMERS,
        ListKind::Users => USERS,
        ListKind::Vhosts => VHOSTS,
        ListKind::Permissions => PERMISSIONS,
        ListKind::Policies => POLICIES,
    }
}

/// RabbitMQ's path listing `kind`, in one vhost or all (users and vhosts are not per vhost).
pub fn list_path(kind: ListKind, vhost: Option<&str>) -> String {
    let v = vhost.map(segment);
    match (kind, v.as_deref()) {
        (ListKind::Users, _) => api(&["users"]),
        (ListKind::Vhosts, _) => api(&["vhosts"]),
        (ListKind::Queues, None) => api(&["queues"]),
        (ListKind::Queues, Some(v)) => api(&["queues", v]),
        (ListKind::Exchanges, None) => api(&["exchanges"]),
        (ListKind::Exchanges, Some(v)) => api(&["exchanges", v]),
        (ListKind::Bindings, None) => api(&["bindings"]),
        (ListKind::Bindings, Some(v)) => api(&["bindings", v]),
        (ListKind::Connections, None) => api(&["connections"]),
        (ListKind::Connections, Some(v)) => api(&["vhosts", v, "connections"]),
        (ListKind::Channels, None) => api(&["channels"]),
        (ListKind::Channels, Some(v)) => api(&["vhosts", v, "channels"]),
        (ListKind::Consumers, None) => api(&["consumers"]),
        (ListKind::Consumers, Some(v)) => api(&["consumers", v]),
        (ListKind::Permissions, None) => api(&["permissions"]),
        (ListKind::Permissions, Some(v)) => api(&["vhosts", v, "permissions"]),
        (ListKind::Policies, None) => api(&["policies"]),
        (ListKind::Policies, Some(v)) => api(&["policies", v]),
    }
}

pub fn list(ctx: &Ctx, kind: ListKind) -> Result<(), CtlError> {
    let answer = ctx.client.get(&list_path(kind, ctx.vhost.as_deref()))?;
    match ctx.format {
        Format::Json => print_json(&answer),
        Format::Table => {
            // Paged answers (`?page=`) wrap the list in `items`; plain ones are the list.
            let rows = match &answer {
                Value::Array(rows) => rows.as_slice(),
                Value::Object(map) => map
                    .get("items")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default(),
                _ => &[],
            };
            out(&render(columns(kind), rows));
        }
    }
    Ok(())
}

pub fn overview(ctx: &Ctx) -> Result<(), CtlError> {
    let answer = ctx.client.get(&api(&["overview"]))?;
    match ctx.format {
        Format::Json => print_json(&answer),
        Format::Table => out(&render_object(&answer)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_per_vhost_when_one_is_given() {
        assert_eq!(list_path(ListKind::Queues, None), "/api/queues");
        assert_eq!(list_path(ListKind::Queues, Some("/")), "/api/queues/%2F");
        assert_eq!(
            list_path(ListKind::Permissions, Some("a/b")),
            "/api/vhosts/a%2Fb/permissions"
        );
        assert_eq!(
            list_path(ListKind::Connections, Some("v")),
            "/api/vhosts/v/connections"
        );
        assert_eq!(list_path(ListKind::Users, Some("v")), "/api/users");
        assert_eq!(
            list_path(ListKind::Consumers, Some("v")),
            "/api/consumers/v"
        );
    }

    #[test]
    fn queues_show_counts() {
        let headers: Vec<_> = columns(ListKind::Queues).iter().map(|c| c.header).collect();
        for wanted in ["name", "messages", "ready", "unacked", "consumers"] {
            assert!(headers.contains(&wanted), "{wanted}");
        }
    }
}
