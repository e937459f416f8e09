//! `publish`, `get` and `move`: messages through the HTTP API (RabbitMQ's
//! `/api/exchanges/{vhost}/{name}/publish` and `/api/queues/{vhost}/{name}/get`, and Warren's
//! move action `/api/queues/{vhost}/{name}/actions`). Meant for tests and repairs, not for
//! throughput: every message is one HTTP request.
//!
//! Owns: payload encoding (a payload that is not UTF-8 goes as base64) and the columns of
//! fetched messages.

use std::io::Read;

use base64::Engine;
use serde_json::{json, Map, Value};

use super::{json_object, out, print_json, Ctx};
use crate::cli::{Format, Get, Move, Publish};
use crate::error::CtlError;
use crate::path::{api, segment};
use crate::table::{col, render, Column};

/// The default exchange's name in paths (it has no name of its own).
pub const DEFAULT_EXCHANGE: &str = "amq.default";

const MESSAGES: &[Column] = &[
    col("routing_key", "routing_key"),
    col("exchange", "exchange"),
    col("remaining", "message_count"),
    col("redelivered", "redelivered"),
    col("bytes", "payload_bytes"),
    col("encoding", "payload_encoding"),
    col("payload", "payload"),
];

/// The body of a publish: a UTF-8 payload as a string, any other as base64.
pub fn publish_body(routing_key: &str, payload: Vec<u8>, properties: Value) -> Value {
    let (payload, encoding) = match String::from_utf8(payload) {
        Ok(text) => (text, "string"),
        Err(e) => (
            base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
            "base64",
        ),
    };
    json!({
        "properties": properties,
        "routing_key": routing_key,
        "payload": payload,
        "payload_encoding": encoding,
    })
}

pub fn publish(ctx: &Ctx, publish: Publish) -> Result<(), CtlError> {
    let properties = json_object("properties", publish.properties.as_deref())?;
    let payload = match publish.payload {
        Some(text) => text.into_bytes(),
        None => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .map_err(|e| CtlError::local(format!("cannot read the payload from stdin: {e}")))?;
            bytes
        }
    };
    let exchange = match publish.exchange.as_str() {
        "" => DEFAULT_EXCHANGE,
        name => name,
    };
    let path = api(&[
        "exchanges",
        &segment(ctx.vhost()),
        &segment(exchange),
        "publish",
    ]);
    let body = publish_body(&publish.routing_key, payload, properties);
    let answer = ctx.client.post(&path, &body)?;
    let routed = answer
        .body
        .as_ref()
        .and_then(|b| b["routed"].as_bool())
        .unwrap_or(false);
    let message = if routed {
        "published: routed".to_owned()
    } else {
        format!(
            "published: NOT routed (no queue bound to '{exchange}' matches routing key '{}')",
            publish.routing_key
        )
    };
    ctx.done(&message, answer.body.as_ref());
    Ok(())
}

pub fn get(ctx: &Ctx, get: Get) -> Result<(), CtlError> {
    let path = api(&["queues", &segment(ctx.vhost()), &segment(&get.queue), "get"]);
    let mut body = json!({
        "count": get.count,
        "ackmode": get.ackmode.api_name(),
        "encoding": "auto",
    });
    if let Some(truncate) = get.truncate {
        body["truncate"] = json!(truncate);
    }
    let answer = ctx.client.post(&path, &body)?;
    let messages = answer.body.unwrap_or(Value::Array(Vec::new()));
    match ctx.format {
        Format::Json => print_json(&messages),
        Format::Table => {
            let rows = messages.as_array().map(Vec::as_slice).unwrap_or_default();
            out(&render(MESSAGES, rows));
        }
    }
    Ok(())
}

/// The move action's body (`destination_queue`, or `destination_exchange` with an optional
/// `routing_key`; `count` when limited).
pub fn move_body(moving: &Move) -> Value {
    let mut body = Map::new();
    body.insert("action".into(), json!("move"));
    if let Some(queue) = &moving.to_queue {
        body.insert("destination_queue".into(), json!(queue));
    }
    if let Some(exchange) = &moving.to_exchange {
        body.insert("destination_exchange".into(), json!(exchange));
    }
    if let Some(key) = &moving.routing_key {
        body.insert("routing_key".into(), json!(key));
    }
    if let Some(count) = moving.count {
        body.insert("count".into(), json!(count));
    }
    Value::Object(body)
}

pub fn move_messages(ctx: &Ctx, moving: Move) -> Result<(), CtlError> {
    let path = api(&[
        "queues",
        &segment(ctx.vhost()),
        &segment(&moving.queue),
        "actions",
    ]);
    let answer = ctx.client.post(&path, &move_body(&moving))?;
    let moved = answer.body.as_ref().and_then(|b| b["moved"].as_u64());
    let message = match moved {
        Some(n) => format!("moved {n} message(s) from '{}'", moving.queue),
        None => format!("moved the messages of '{}'", moving.queue),
    };
    ctx.done(&message, answer.body.as_ref());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_payloads_go_as_strings_and_binary_ones_as_base64() {
        let body = publish_body("k", b"hello".to_vec(), json!({}));
        assert_eq!(
            body,
            json!({"properties": {}, "routing_key": "k", "payload": "hello",
                   "payload_encoding": "string"})
        );
        let body = publish_body("k", vec![0xff, 0x00], json!({"delivery_mode": 2}));
        assert_eq!(body["payload"], "/wA=");
        assert_eq!(body["payload_encoding"], "base64");
        assert_eq!(body["properties"]["delivery_mode"], 2);
    }

    #[test]
    fn move_bodies() {
        let to_queue = Move {
            queue: "a".into(),
            to_queue: Some("b".into()),
            to_exchange: None,
            routing_key: None,
            count: None,
        };
        assert_eq!(
            move_body(&to_queue),
            json!({"action": "move", "destination_queue": "b"})
        );
        let to_exchange = Move {
            queue: "a".into(),
            to_queue: None,
            to_exchange: Some("x".into()),
            routing_key: Some("k".into()),
            count: Some(3),
        };
        assert_eq!(
            move_body(&to_exchange),
            json!({"action": "move", "destination_exchange": "x", "routing_key": "k", "count": 3})
        );
    }
}
