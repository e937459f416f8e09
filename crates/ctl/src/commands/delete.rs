//! `delete <queue|exchange|binding|user|vhost|permission|policy>` and `purge queue`: DELETEs
//! on RabbitMQ's paths (`if-empty`/`if-unused` as query parameters, a binding by its
//! `properties_key`).
//!
//! Owns: finding a binding's `properties_key` from its routing key and arguments.

use serde_json::Value;

use super::declare::bindings_path;
use super::{json_object, Ctx};
use crate::cli::{BindingArgs, Delete, Purge};
use crate::error::CtlError;
use crate::path::{api, segment};

pub fn delete(ctx: &Ctx, what: Delete) -> Result<(), CtlError> {
    let vhost = ctx.vhost();
    let v = segment(vhost);
    let (path, message) = match what {
        Delete::Queue {
            name,
            if_empty,
            if_unused,
        } => {
            let path = api(&["queues", &v, &segment(&name)]);
            let query = conditions(&[("if-empty", if_empty), ("if-unused", if_unused)]);
            (
                format!("{path}{query}"),
                format!("deleted queue '{name}' in vhost '{vhost}'"),
            )
        }
        Delete::Exchange { name, if_unused } => {
            let path = api(&["exchanges", &v, &segment(&name)]);
            let query = conditions(&[("if-unused", if_unused)]);
            (
                format!("{path}{query}"),
                format!("deleted exchange '{name}' in vhost '{vhost}'"),
            )
        }
        Delete::Binding {
            binding,
            properties_key,
        } => {
            let key = match properties_key {
                Some(key) => key,
                None => find_properties_key(ctx, &binding)?,
            };
            (
                format!("{}/{}", bindings_path(vhost, &binding), segment(&key)),
                format!(
                    "deleted the binding of '{}' to '{}' in vhost '{vhost}'",
                    binding.source, binding.destination
                ),
            )
        }
        Delete::User { name } => (
            api(&["users", &segment(&name)]),
            format!("deleted user '{name}'"),
        ),
        Delete::Vhost { name } => (
            api(&["vhosts", &segment(&name)]),
            format!("deleted vhost '{name}'"),
        ),
        Delete::Permission { user } => (
            api(&["permissions", &v, &segment(&user)]),
            format!("deleted the permissions of user '{user}' in vhost '{vhost}'"),
        ),
        Delete::Policy { name } => (
            api(&["policies", &v, &segment(&name)]),
            format!("deleted policy '{name}' in vhost '{vhost}'"),
        ),
    };
    let answer = ctx.client.delete(&path, &[])?;
    ctx.done(&message, answer.body.as_ref());
    Ok(())
}

pub fn purge(ctx: &Ctx, what: Purge) -> Result<(), CtlError> {
    let Purge::Queue { name } = what;
    let path = api(&["queues", &segment(ctx.vhost()), &segment(&name), "contents"]);
    let answer = ctx.client.delete(&path, &[])?;
    let message = format!("purged queue '{name}' in vhost '{}'", ctx.vhost());
    ctx.done(&message, answer.body.as_ref());
    Ok(())
}

/// `?a=true&b=true` for the conditions that are set; empty when none is.
fn conditions(flags: &[(&str, bool)]) -> String {
    let set: Vec<String> = flags
        .iter()
        .filter(|(_, on)| *on)
        .map(|(name, _)| format!("{name}=true"))
        .collect();
    if set.is_empty() {
        String::new()
    } else {
        format!("?{}", set.join("&"))
    }
}

/// The `properties_key` of the binding between the two objects with this routing key and
/// these arguments, from the list of their bindings.
fn find_properties_key(ctx: &Ctx, binding: &BindingArgs) -> Result<String, CtlError> {
    let arguments = json_object("arguments", binding.arguments.as_deref())?;
    let list = ctx.client.get(&bindings_path(ctx.vhost(), binding))?;
    matching_key(&list, &binding.routing_key, &arguments).ok_or_else(|| {
        CtlError::NotFound(format!(
            "no binding of '{}' to '{}' with routing key '{}' and arguments {arguments} in vhost '{}'",
            binding.source,
            binding.destination,
            binding.routing_key,
            ctx.vhost()
        ))
    })
}

fn matching_key(list: &Value, routing_key: &str, arguments: &Value) -> Option<String> {
    list.as_array()?
        .iter()
        .find(|b| {
            // A binding listed without arguments has none.
            let same_arguments = match &b["arguments"] {
                Value::Null => arguments.as_object().is_some_and(|m| m.is_empty()),
                theirs => theirs == arguments,
            };
            b["routing_key"].as_str() == Some(routing_key) && same_arguments
        })
        .and_then(|b| b["properties_key"].as_str().map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conditions_become_a_query_string() {
        assert_eq!(conditions(&[("if-empty", false), ("if-unused", false)]), "");
        assert_eq!(
            conditions(&[("if-empty", true), ("if-unused", false)]),
            "?if-empty=true"
        );
        assert_eq!(
            conditions(&[("if-empty", true), ("if-unused", true)]),
            "?if-empty=true&if-unused=true"
        );
    }

    #[test]
    fn the_binding_with_the_same_key_and_arguments_is_found() {
        let list = json!([
            {"routing_key": "a", "arguments": {}, "properties_key": "a"},
            {"routing_key": "a", "arguments": {"x": 1}, "properties_key": "a~xyz"},
            {"routing_key": "", "properties_key": "~"}
        ]);
        assert_eq!(matching_key(&list, "a", &json!({})).as_deref(), Some("a"));
        assert_eq!(
            matching_key(&list, "a", &json!({"x": 1})).as_deref(),
            Some("a~xyz")
        );
        assert_eq!(matching_key(&list, "", &json!({})).as_deref(), Some("~"));
        assert_eq!(matching_key(&list, "b", &json!({})), None);
    }
}
