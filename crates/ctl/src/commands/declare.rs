//! `declare <queue|exchange|binding|user|vhost|permission|policy>`: PUTs (and for bindings a
//! POST) with RabbitMQ's bodies.
//!
//! Owns: the request body of each kind of object.

use serde_json::{json, Map, Value};

use super::{json_object, Ctx};
use crate::cli::{ApplyTo, BindingArgs, Declare, DestinationType};
use crate::error::CtlError;
use crate::path::{api, segment};

pub fn declare(ctx: &Ctx, what: Declare) -> Result<(), CtlError> {
    let vhost = ctx.vhost();
    let v = segment(vhost);
    let (path, body, message) = match what {
        Declare::Queue {
            name,
            durable,
            auto_delete,
            arguments,
        } => (
            api(&["queues", &v, &segment(&name)]),
            json!({
                "durable": durable,
                "auto_delete": auto_delete,
                "arguments": json_object("arguments", arguments.as_deref())?,
            }),
            format!("declared queue '{name}' in vhost '{vhost}'"),
        ),
        Declare::Exchange {
            name,
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
        } => (
            api(&["exchanges", &v, &segment(&name)]),
            json!({
                "type": kind,
                "durable": durable,
                "auto_delete": auto_delete,
                "internal": internal,
                "arguments": json_object("arguments", arguments.as_deref())?,
            }),
            format!("declared exchange '{name}' in vhost '{vhost}'"),
        ),
        Declare::Binding(binding) => return declare_binding(ctx, &binding),
        Declare::User {
            name,
            password,
            password_hash,
            tags,
        } => {
            // clap requires exactly one of the two.
            let secret = match (password, password_hash) {
                (Some(password), _) => ("password", password),
                (None, Some(hash)) => ("password_hash", hash),
                (None, None) => return Err(CtlError::usage("--password or --password-hash")),
            };
            let mut body = json!({"tags": tags});
            body[secret.0] = Value::String(secret.1);
            (
                api(&["users", &segment(&name)]),
                body,
                format!("declared user '{name}'"),
            )
        }
        Declare::Vhost {
            name,
            description,
            tags,
            default_queue_type,
        } => {
            let mut body = Map::new();
            let optional = [
                ("description", description),
                ("tags", tags),
                ("default_queue_type", default_queue_type),
            ];
            for (key, value) in optional {
                if let Some(value) = value {
                    body.insert(key.to_owned(), Value::String(value));
                }
            }
            (
                api(&["vhosts", &segment(&name)]),
                Value::Object(body),
                format!("declared vhost '{name}'"),
            )
        }
        Declare::Permission {
            user,
            configure,
            write,
            read,
        } => (
            api(&["permissions", &v, &segment(&user)]),
            json!({"configure": configure, "write": write, "read": read}),
            format!("set the permissions of user '{user}' in vhost '{vhost}'"),
        ),
        Declare::Policy {
            name,
            pattern,
            definition,
            apply_to,
            priority,
        } => (
            api(&["policies", &v, &segment(&name)]),
            json!({
                "pattern": pattern,
                "definition": json_object("definition", Some(&definition))?,
                "apply-to": apply_to_name(apply_to),
                "priority": priority,
            }),
            format!("declared policy '{name}' in vhost '{vhost}'"),
        ),
    };
    let answer = ctx.client.put(&path, &body)?;
    ctx.done(&message, answer.body.as_ref());
    Ok(())
}

fn apply_to_name(apply_to: ApplyTo) -> &'static str {
    match apply_to {
        ApplyTo::Queues => "queues",
        ApplyTo::Exchanges => "exchanges",
        ApplyTo::All => "all",
    }
}

/// `/api/bindings/{vhost}/e/{source}/{q|e}/{destination}`: the bindings between two objects.
pub fn bindings_path(vhost: &str, binding: &BindingArgs) -> String {
    let kind = match binding.destination_type {
        DestinationType::Queue => "q",
        DestinationType::Exchange => "e",
    };
    api(&[
        "bindings",
        &segment(vhost),
        "e",
        &segment(&binding.source),
        kind,
        &segment(&binding.destination),
    ])
}

fn declare_binding(ctx: &Ctx, binding: &BindingArgs) -> Result<(), CtlError> {
    let body = json!({
        "routing_key": binding.routing_key,
        "arguments": json_object("arguments", binding.arguments.as_deref())?,
    });
    let answer = ctx
        .client
        .post(&bindings_path(ctx.vhost(), binding), &body)?;
    let message = format!(
        "bound '{}' to '{}' with routing key '{}' in vhost '{}'",
        binding.source,
        binding.destination,
        binding.routing_key,
        ctx.vhost()
    );
    ctx.done(&message, answer.body.as_ref());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_paths_name_the_destination_kind() {
        let mut b = BindingArgs {
            source: "amq.topic".into(),
            destination: "q/1".into(),
            destination_type: DestinationType::Queue,
            routing_key: String::new(),
            arguments: None,
        };
        assert_eq!(
            bindings_path("/", &b),
            "/api/bindings/%2F/e/amq.topic/q/q%2F1"
        );
        b.destination_type = DestinationType::Exchange;
        assert_eq!(
            bindings_path("v", &b),
            "/api/bindings/v/e/amq.topic/e/q%2F1"
        );
    }
}
