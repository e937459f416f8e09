//! `close connection`, `set limits` / `set user-limits` and `trace on|off`: the operator's
//! levers on clients.
//!
//! Owns: the names of limits on RabbitMQ's paths (`max-connections`, `max-queues`,
//! `max-channels`).

use serde_json::json;

use super::Ctx;
use crate::cli::{Close, Set, TraceSwitch};
use crate::error::CtlError;
use crate::path::{api, segment};

pub fn close(ctx: &Ctx, what: Close) -> Result<(), CtlError> {
    let Close::Connection { name, reason } = what;
    let path = api(&["connections", &segment(&name)]);
    let headers: Vec<(&str, &str)> = reason.iter().map(|r| ("X-Reason", r.as_str())).collect();
    let answer = ctx.client.delete(&path, &headers)?;
    ctx.done(&format!("closed connection '{name}'"), answer.body.as_ref());
    Ok(())
}

pub fn set(ctx: &Ctx, what: Set) -> Result<(), CtlError> {
    let (base, owner, limits) = match what {
        Set::Limits {
            max_connections,
            max_queues,
        } => (
            api(&["vhost-limits", &segment(ctx.vhost())]),
            format!("vhost '{}'", ctx.vhost()),
            vec![
                ("max-connections", max_connections),
                ("max-queues", max_queues),
            ],
        ),
        Set::UserLimits {
            user,
            max_connections,
            max_channels,
        } => (
            api(&["user-limits", &segment(&user)]),
            format!("user '{user}'"),
            vec![
                ("max-connections", max_connections),
                ("max-channels", max_channels),
            ],
        ),
    };
    for (name, value) in limits {
        let Some(value) = value else { continue };
        let answer = ctx
            .client
            .put(&format!("{base}/{name}"), &json!({"value": value}))?;
        let message = if value < 0 {
            format!("removed the {name} limit of {owner}")
        } else {
            format!("set {name} of {owner} to {value}")
        };
        ctx.done(&message, answer.body.as_ref());
    }
    Ok(())
}

/// `trace on|off`: `PUT /api/vhosts/{vhost}` with `{"tracing": bool}` alone (the broker keeps
/// the vhost's description and tags). The vhost is looked up first: a PUT would create a
/// misspelt one, so a missing vhost is "not found" (exit 3) instead.
pub fn trace(ctx: &Ctx, switch: TraceSwitch) -> Result<(), CtlError> {
    let on = switch == TraceSwitch::On;
    let path = api(&["vhosts", &segment(ctx.vhost())]);
    ctx.client.get(&path)?;
    let answer = ctx.client.put(&path, &json!({ "tracing": on }))?;
    let state = if on { "on" } else { "off" };
    ctx.done(
        &format!("tracing of vhost '{}' is {state}", ctx.vhost()),
        answer.body.as_ref(),
    );
    Ok(())
}
