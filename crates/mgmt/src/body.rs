//! Request bodies: JSON read by hand so that a malformed body is RabbitMQ's 400 with a reason
//! and an oversized one its 413 (axum's own rejections are plain text).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde_json::{Map, Value};

use crate::ApiError;

/// A request body that is a JSON object (an empty body is an empty object, as RabbitMQ
/// accepts `PUT /api/vhosts/x` with no body).
pub struct JsonObject(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = read(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonObject(Map::new()));
        }
        match parse(&bytes)? {
            Value::Object(map) => Ok(JsonObject(map)),
            other => Err(ApiError::bad_request(format!(
                "expected a JSON object, got {}",
                kind(&other)
            ))),
        }
    }
}

/// The raw body, with the size limit applied.
pub async fn read<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge("request body too large".into())
        } else {
            ApiError::bad_request(e.body_text())
        }
    })
}

pub fn parse(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))
}

pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An optional string field.
pub fn opt_str<'a>(map: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, ApiError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ApiError::bad_request(format!(
            "'{key}' must be a string, got {}",
            kind(other)
        ))),
    }
}

/// Tags as RabbitMQ takes them: a comma-separated string or a list of strings.
pub fn tags(map: &Map<String, Value>, key: &str) -> Result<Vec<String>, ApiError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str().map(|s| s.trim().to_owned()).ok_or_else(|| {
                    ApiError::bad_request(format!("'{key}' must hold strings, got {}", kind(v)))
                })
            })
            .collect(),
        Some(other) => Err(ApiError::bad_request(format!(
            "'{key}' must be a string or a list, got {}",
            kind(other)
        ))),
    }
}

/// An optional boolean, also as the strings `"true"`/`"false"` (rabbitmqadmin sends those).
pub fn opt_bool(map: &Map<String, Value>, key: &str, default: bool) -> Result<bool, ApiError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" => Ok(true),
        Some(Value::String(s)) if s == "false" => Ok(false),
        Some(other) => Err(ApiError::bad_request(format!(
            "'{key}' must be a boolean, got {}",
            kind(other)
        ))),
    }
}

/// The `arguments` object as an AMQP field table (absent: empty).
pub fn arguments(map: &Map<String, Value>) -> Result<warren_protocol::FieldTable, ApiError> {
    match map.get("arguments") {
        None | Some(Value::Null) => Ok(Default::default()),
        Some(Value::Object(args)) => {
            warren_core::admin::definitions::json_to_table(args).map_err(ApiError::bad_request)
        }
        // The management UI and some scripts send "" for no arguments.
        Some(Value::String(s)) if s.is_empty() => Ok(Default::default()),
        Some(other) => Err(ApiError::bad_request(format!(
            "'arguments' must be an object, got {}",
            kind(other)
        ))),
    }
}
