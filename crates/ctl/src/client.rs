//! The HTTP client of the management API: one blocking `ureq` agent, basic auth on every
//! request, JSON in and out, and every non-2xx answer turned into `CtlError::Api` carrying
//! RabbitMQ's `reason`.
//!
//! Owns: the connection to the broker. Must not touch: paths (callers build them with
//! `path`), what is printed.

use std::time::Duration;

use base64::Engine;
use serde_json::Value;

use crate::error::CtlError;

/// How long one request may take, connecting included, before the broker counts as
/// unreachable. Generous: an import of a large definitions file is one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest answer read (a definitions export of a big broker is the largest).
pub const ANSWER_BYTES_MAX: u64 = 512 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Post,
    Delete,
}

/// A 2xx answer: its JSON body, if it had one.
#[derive(Debug)]
pub struct Answer {
    pub body: Option<Value>,
}

pub struct Client {
    agent: ureq::Agent,
    base: String,
    authorization: String,
}

impl Client {
    /// `url` is the API's base, e.g. `http://localhost:15672` (a trailing `/` is ignored).
    pub fn new(url: &str, user: &str, password: &str) -> Result<Self, CtlError> {
        let base = url.trim_end_matches('/').to_owned();
        if base.starts_with("https://") {
            return Err(CtlError::usage(
                "https:// is not supported yet (the broker serves the API over plain HTTP)",
            ));
        }
        if !base.starts_with("http://") {
            return Err(CtlError::usage(format!(
                "--url must start with http:// (got '{url}')"
            )));
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .user_agent(concat!("warrenctl/", env!("CARGO_PKG_VERSION")))
            .build();
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Ok(Client {
            agent: ureq::Agent::new_with_config(config),
            base,
            authorization: format!("Basic {token}"),
        })
    }

    pub fn get(&self, path: &str) -> Result<Value, CtlError> {
        let answer = self.request(Method::Get, path, None, &[])?;
        answer
            .body
            .ok_or_else(|| CtlError::local(format!("GET {path} answered with no body")))
    }

    pub fn put(&self, path: &str, body: &Value) -> Result<Answer, CtlError> {
        self.request(Method::Put, path, Some(body.to_string().as_bytes()), &[])
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Answer, CtlError> {
        self.request(Method::Post, path, Some(body.to_string().as_bytes()), &[])
    }

    /// POST of a body that is already JSON text (a definitions file, sent as it is).
    pub fn post_raw(&self, path: &str, body: &[u8]) -> Result<Answer, CtlError> {
        self.request(Method::Post, path, Some(body), &[])
    }

    pub fn delete(&self, path: &str, headers: &[(&str, &str)]) -> Result<Answer, CtlError> {
        self.request(Method::Delete, path, None, headers)
    }

    /// One request. `path` starts with `/api/` and may carry a query string.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, CtlError> {
        let url = format!("{}{path}", self.base);
        let sent = match method {
            Method::Get | Method::Delete => {
                let mut request = match method {
                    Method::Get => self.agent.get(&url),
                    _ => self.agent.delete(&url),
                };
                request = request.header("Authorization", &self.authorization);
                for (name, value) in headers {
                    request = request.header(*name, *value);
                }
                request.call()
            }
            Method::Put | Method::Post => {
                let mut request = match method {
                    Method::Put => self.agent.put(&url),
                    _ => self.agent.post(&url),
                };
                request = request
                    .header("Authorization", &self.authorization)
                    .content_type("application/json");
                for (name, value) in headers {
                    request = request.header(*name, *value);
                }
                request.send(body.unwrap_or_default())
            }
        };
        let mut response = sent.map_err(|e| CtlError::Unreachable(format!("{url}: {e}")))?;
        let status = response.status().as_u16();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(ANSWER_BYTES_MAX)
            .read_to_vec()
            .map_err(|e| CtlError::Unreachable(format!("{url}: reading the answer: {e}")))?;
        if (200..300).contains(&status) {
            let body = parse_body(&bytes)
                .map_err(|e| CtlError::local(format!("{url}: the answer is not JSON: {e}")))?;
            Ok(Answer { body })
        } else {
            Err(CtlError::Api {
                status,
                reason: reason_of(status, &bytes),
            })
        }
    }
}

fn parse_body(bytes: &[u8]) -> Result<Option<Value>, serde_json::Error> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(bytes).map(Some)
}

/// The `reason` of RabbitMQ's error body `{"error": ..., "reason": ...}`; the body itself
/// when it is not one; the status alone when it is empty.
pub fn reason_of(status: u16, bytes: &[u8]) -> String {
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(bytes) {
        if let Some(reason) = map.get("reason") {
            return match reason {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
        }
    }
    let text = String::from_utf8_lossy(bytes).trim().to_owned();
    if text.is_empty() {
        format!("status {status}")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_of_rabbitmq_error_bodies() {
        let body = br#"{"error":"not_found","reason":"vhost 'x'"}"#;
        assert_eq!(reason_of(404, body), "vhost 'x'");
        assert_eq!(reason_of(502, b"Bad Gateway\n"), "Bad Gateway");
        assert_eq!(reason_of(500, b""), "status 500");
    }

    #[test]
    fn only_http_urls_are_taken() {
        assert!(Client::new("http://localhost:15672/", "u", "p").is_ok());
        assert!(matches!(
            Client::new("https://h", "u", "p"),
            Err(CtlError::Usage(_))
        ));
        assert!(matches!(
            Client::new("localhost:15672", "u", "p"),
            Err(CtlError::Usage(_))
        ));
    }

    #[test]
    fn empty_bodies_are_none() {
        assert_eq!(parse_body(b"").unwrap(), None);
        assert_eq!(parse_body(b" \n").unwrap(), None);
        assert!(parse_body(b"{\"moved\":1}").unwrap().is_some());
    }
}
