//! `ApiError`: every refusal as RabbitMQ's JSON body `{"error": ..., "reason": ...}` with its
//! status code.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use warren_core::admin::AdminError;
use warren_protocol::ProtocolError;

use crate::AUTH_REALM;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 400 `bad_request`.
    BadRequest(String),
    /// 401 `not_authorised`, with the basic-auth challenge: no or wrong credentials.
    Unauthorized(String),
    /// 401 `not_authorised` without the challenge: logged in, but the user's tags or
    /// permissions do not allow it. RabbitMQ 3.x answers these 401 too, never 403 (probed on
    /// 3.10.8: "Not administrator user", "Access refused.", "User not authorised to access
    /// virtual host").
    Refused(String),
    /// 404 `not_found`.
    NotFound(String),
    /// 405 `method_not_allowed`.
    MethodNotAllowed,
    /// 409 `conflict`.
    Conflict(String),
    /// 413 `payload_too_large`.
    PayloadTooLarge(String),
    /// 500 `internal_server_error`.
    Internal(String),
}

impl ApiError {
    pub fn bad_request(why: impl Into<String>) -> Self {
        ApiError::BadRequest(why.into())
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        ApiError::NotFound(what.into())
    }

    pub fn refused(why: impl Into<String>) -> Self {
        ApiError::Refused(why.into())
    }

    fn parts(&self) -> (StatusCode, &'static str, &str) {
        match self {
            ApiError::BadRequest(r) => (StatusCode::BAD_REQUEST, "bad_request", r),
            ApiError::Unauthorized(r) => (StatusCode::UNAUTHORIZED, "not_authorised", r),
            ApiError::Refused(r) => (StatusCode::UNAUTHORIZED, "not_authorised", r),
            ApiError::NotFound(r) => (StatusCode::NOT_FOUND, "not_found", r),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method Not Allowed",
            ),
            ApiError::Conflict(r) => (StatusCode::CONFLICT, "conflict", r),
            ApiError::PayloadTooLarge(r) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", r),
            ApiError::Internal(r) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_server_error",
                r,
            ),
        }
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::NotFound(t) => ApiError::NotFound(t),
            AdminError::BadRequest(t) => ApiError::BadRequest(t),
            AdminError::Conflict(t) => ApiError::Conflict(t),
            AdminError::Internal(t) => ApiError::Internal(t),
        }
    }
}

/// An AMQP refusal from the broker's core, with RabbitMQ's management wording
/// (`"PRECONDITION_FAILED - inequivalent arg ..."`): 401 for ACCESS_REFUSED, 404 for
/// NOT_FOUND, 500 for INTERNAL_ERROR, 400 for the rest.
impl From<ProtocolError> for ApiError {
    fn from(e: ProtocolError) -> Self {
        let text = format!("{} - {}", e.code.name(), e.text);
        match e.code.code() {
            403 => ApiError::Refused(text),
            404 => ApiError::NotFound(e.text),
            541 => ApiError::Internal(text),
            _ => ApiError::BadRequest(text),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error, reason) = self.parts();
        let mut response = (
            status,
            axum::Json(json!({"error": error, "reason": reason})),
        )
            .into_response();
        if matches!(self, ApiError::Unauthorized(_)) {
            let challenge = format!("Basic realm=\"{AUTH_REALM}\"");
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, value);
            }
        }
        response
    }
}

/// Unknown paths: RabbitMQ's 404 body.
pub async fn not_found_fallback() -> ApiError {
    ApiError::not_found("Object Not Found")
}

/// Axum's own 405 (a known path, another method) has no body: give it RabbitMQ's.
pub async fn json_for_bare_errors(response: Response) -> Response {
    if response.status() == StatusCode::METHOD_NOT_ALLOWED
        && !response.headers().contains_key(header::CONTENT_TYPE)
    {
        let allow = response.headers().get(header::ALLOW).cloned();
        let mut replaced = ApiError::MethodNotAllowed.into_response();
        if let Some(allow) = allow {
            replaced.headers_mut().insert(header::ALLOW, allow);
        }
        return replaced;
    }
    response
}
