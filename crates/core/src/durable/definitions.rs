//! Definition records: one per change to a durable exchange, queue, binding or policy, replayed in
//! order at start-up. Each record is an AMQP field table (the codec Warren already has), so
//! it is self-describing and new keys can be added without a format change.

use amq_protocol::types::generation::gen_field_table;
use amq_protocol::types::parsing::parse_field_table;
use bytes::Bytes;
use warren_protocol::{AMQPValue, FieldTable, LongString, ShortString};

use crate::args::as_str;
use crate::exchange::{ExchangeDef, ExchangeKind};
use crate::policy::{Policy, PolicyKind};
use crate::queue::QueueDef;
use crate::routing::Destination;

/// One change to the durable definitions of a vhost.
#[derive(Clone, Debug, PartialEq)]
pub enum DefinitionOp {
    ExchangeDeclared(ExchangeDef),
    ExchangeDeleted(ShortString),
    QueueDeclared(QueueDef),
    QueueDeleted(ShortString),
    Bound {
        source: ShortString,
        destination: Destination,
        routing_key: ShortString,
        arguments: FieldTable,
    },
    Unbound {
        source: ShortString,
        destination: Destination,
        routing_key: ShortString,
        arguments: FieldTable,
    },
    /// A policy or operator policy set (or replaced: same kind and name).
    PolicySet(Policy),
    PolicyCleared {
        kind: PolicyKind,
        name: String,
    },
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn dest_fields(t: &mut FieldTable, d: &Destination) {
    let (kind, name) = match d {
        Destination::Queue(q) => ("queue", q),
        Destination::Exchange(x) => ("exchange", x),
    };
    t.insert("destination_kind".into(), long(kind));
    t.insert("destination".into(), long(name.as_str()));
}

/// Encodes `op` for `vhost`.
pub fn encode(vhost: &str, op: &DefinitionOp) -> Bytes {
    let mut t = FieldTable::default();
    t.insert("vhost".into(), long(vhost));
    let kind = match op {
        DefinitionOp::ExchangeDeclared(x) => {
            t.insert("name".into(), long(x.name.as_str()));
            t.insert("type".into(), long(x.kind.as_str()));
            t.insert("durable".into(), AMQPValue::Boolean(x.durable));
            t.insert("auto_delete".into(), AMQPValue::Boolean(x.auto_delete));
            t.insert("internal".into(), AMQPValue::Boolean(x.internal));
            t.insert(
                "arguments".into(),
                AMQPValue::FieldTable(x.arguments.clone()),
            );
            "exchange.declared"
        }
        DefinitionOp::ExchangeDeleted(name) => {
            t.insert("name".into(), long(name.as_str()));
            "exchange.deleted"
        }
        DefinitionOp::QueueDeclared(q) => {
            t.insert("name".into(), long(q.name.as_str()));
            t.insert("durable".into(), AMQPValue::Boolean(q.durable));
            t.insert("auto_delete".into(), AMQPValue::Boolean(q.auto_delete));
            t.insert(
                "arguments".into(),
                AMQPValue::FieldTable(q.arguments.clone()),
            );
            "queue.declared"
        }
        DefinitionOp::QueueDeleted(name) => {
            t.insert("name".into(), long(name.as_str()));
            "queue.deleted"
        }
        DefinitionOp::Bound {
            source,
            destination,
            routing_key,
            arguments,
        }
        | DefinitionOp::Unbound {
            source,
            destination,
            routing_key,
            arguments,
        } => {
            t.insert("source".into(), long(source.as_str()));
            dest_fields(&mut t, destination);
            t.insert("routing_key".into(), long(routing_key.as_str()));
            t.insert("arguments".into(), AMQPValue::FieldTable(arguments.clone()));
            if matches!(op, DefinitionOp::Bound { .. }) {
                "bound"
            } else {
                "unbound"
            }
        }
        DefinitionOp::PolicySet(policy) => {
            t.insert("kind".into(), long(policy.kind.component()));
            t.insert("name".into(), long(&policy.name));
            // The entry as a definitions export holds it: validated again when replayed.
            t.insert("json".into(), long(&policy.to_json(None).to_string()));
            "policy.set"
        }
        DefinitionOp::PolicyCleared { kind, name } => {
            t.insert("kind".into(), long(kind.component()));
            t.insert("name".into(), long(name));
            "policy.cleared"
        }
    };
    t.insert("op".into(), long(kind));
    match cookie_factory::gen_simple(gen_field_table(&t), Vec::new()) {
        Ok(v) => Bytes::from(v),
        // Encoding an in-memory table into a Vec cannot fail.
        Err(_) => Bytes::new(),
    }
}

/// A field table's wire encoding (used as a hashable identity for binding arguments).
pub fn encode_table(t: &FieldTable) -> Vec<u8> {
    cookie_factory::gen_simple(gen_field_table(t), Vec::new()).unwrap_or_default()
}

/// Decodes a record into (vhost, op).
pub fn decode(record: &[u8]) -> Result<(String, DefinitionOp), String> {
    // Checked first: the parser recurses without limit on nested tables.
    warren_protocol::table::check_table(record).map_err(|e| format!("bad table: {e:?}"))?;
    let (_, t) = parse_field_table(record).map_err(|e| format!("undecodable table: {e}"))?;
    let get = |k: &str| t.inner().get(k);
    let text = |k: &str| -> Result<ShortString, String> {
        get(k)
            .and_then(as_str)
            .ok_or_else(|| format!("missing '{k}'"))
            .and_then(|s| ShortString::try_new(s).map_err(|e| format!("'{k}': {e}")))
    };
    let flag = |k: &str| matches!(get(k), Some(AMQPValue::Boolean(true)));
    let table = |k: &str| match get(k) {
        Some(AMQPValue::FieldTable(t)) => t.clone(),
        _ => FieldTable::default(),
    };
    let destination = || -> Result<Destination, String> {
        let name = text("destination")?;
        match text("destination_kind")?.as_str() {
            "queue" => Ok(Destination::Queue(name)),
            "exchange" => Ok(Destination::Exchange(name)),
            other => Err(format!("unknown destination kind '{other}'")),
        }
    };
    let policy_kind = || -> Result<PolicyKind, String> {
        let kind = text("kind")?;
        PolicyKind::from_component(kind.as_str())
            .ok_or_else(|| format!("unknown policy kind '{}'", kind.as_str()))
    };
    let vhost = text("vhost")?.as_str().to_owned();
    let op = match text("op")?.as_str() {
        "exchange.declared" => DefinitionOp::ExchangeDeclared(ExchangeDef {
            name: text("name")?,
            kind: ExchangeKind::parse(text("type")?.as_str()).map_err(|e| e.text)?,
            durable: flag("durable"),
            auto_delete: flag("auto_delete"),
            internal: flag("internal"),
            arguments: table("arguments"),
        }),
        "exchange.deleted" => DefinitionOp::ExchangeDeleted(text("name")?),
        "queue.declared" => DefinitionOp::QueueDeclared(QueueDef {
            name: text("name")?,
            durable: flag("durable"),
            exclusive_owner: None,
            auto_delete: flag("auto_delete"),
            arguments: table("arguments"),
        }),
        "queue.deleted" => DefinitionOp::QueueDeleted(text("name")?),
        "bound" => DefinitionOp::Bound {
            source: text("source")?,
            destination: destination()?,
            routing_key: text("routing_key")?,
            arguments: table("arguments"),
        },
        "unbound" => DefinitionOp::Unbound {
            source: text("source")?,
            destination: destination()?,
            routing_key: text("routing_key")?,
            arguments: table("arguments"),
        },
        "policy.set" => {
            let json = get("json").and_then(as_str).ok_or("missing 'json'")?;
            let entry: serde_json::Value =
                serde_json::from_str(&json).map_err(|e| format!("'json': {e}"))?;
            DefinitionOp::PolicySet(
                Policy::from_json(policy_kind()?, &entry).map_err(|e| e.to_string())?,
            )
        }
        "policy.cleared" => DefinitionOp::PolicyCleared {
            kind: policy_kind()?,
            name: get("name").and_then(as_str).ok_or("missing 'name'")?,
        },
        other => return Err(format!("unknown op '{other}'")),
    };
    Ok((vhost, op))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_round_trips() {
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), AMQPValue::LongInt(5));
        let ops = vec![
            DefinitionOp::ExchangeDeclared(ExchangeDef {
                name: "x".into(),
                kind: ExchangeKind::Topic,
                durable: true,
                auto_delete: false,
                internal: true,
                arguments: args.clone(),
            }),
            DefinitionOp::ExchangeDeleted("x".into()),
            DefinitionOp::QueueDeclared(QueueDef {
                name: "q".into(),
                durable: true,
                exclusive_owner: None,
                auto_delete: true,
                arguments: args.clone(),
            }),
            DefinitionOp::QueueDeleted("q".into()),
            DefinitionOp::Bound {
                source: "x".into(),
                destination: Destination::Queue("q".into()),
                routing_key: "a.*".into(),
                arguments: args.clone(),
            },
            DefinitionOp::Unbound {
                source: "x".into(),
                destination: Destination::Exchange("y".into()),
                routing_key: "".into(),
                arguments: FieldTable::default(),
            },
        ];
        let mut ops = ops;
        for kind in [PolicyKind::Regular, PolicyKind::Operator] {
            let entry = serde_json::json!({
                "name": "limits", "pattern": "^q\\.", "apply-to": "queues", "priority": -3,
                "definition": {"max-length": 10, "message-ttl": 500}
            });
            ops.push(DefinitionOp::PolicySet(
                Policy::from_json(kind, &entry).expect("valid policy"),
            ));
            ops.push(DefinitionOp::PolicyCleared {
                kind,
                name: "limits".into(),
            });
        }
        for op in ops {
            let (vhost, back) = decode(&encode("/v", &op)).unwrap();
            assert_eq!(vhost, "/v");
            assert_eq!(back, op);
        }
        assert!(decode(b"\x00\x00\x00\x05abc").is_err());
    }
}
