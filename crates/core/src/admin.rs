//! The one administrative interface of the broker: users, vhosts, permissions, policies,
//! limits and definitions import/export. The management HTTP API, the CLI and a definitions
//! file all call these operations; none of them changes access state any other way.
//!
//! Every operation validates its whole input before it changes anything, and makes what it
//! changed durable (the definitions log) before it returns.

use std::fmt;

/// Why an administrative operation was refused. Each variant maps to one HTTP status in the
/// management API (404, 400, 409, 500).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminError {
    /// A named thing (user, vhost, policy, queue ...) does not exist.
    NotFound(String),
    /// The input is malformed or refers to something it must not: the text names the entry.
    BadRequest(String),
    /// The operation conflicts with the current state (e.g. deleting the last vhost).
    Conflict(String),
    /// The broker could not carry it out (e.g. the definitions log cannot be written).
    Internal(String),
}

impl AdminError {
    pub fn not_found(what: impl Into<String>) -> Self {
        AdminError::NotFound(what.into())
    }

    pub fn bad_request(why: impl Into<String>) -> Self {
        AdminError::BadRequest(why.into())
    }

    /// The HTTP status the management API answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            AdminError::NotFound(_) => 404,
            AdminError::BadRequest(_) => 400,
            AdminError::Conflict(_) => 409,
            AdminError::Internal(_) => 500,
        }
    }

    /// The text without the kind.
    pub fn text(&self) -> &str {
        match self {
            AdminError::NotFound(t)
            | AdminError::BadRequest(t)
            | AdminError::Conflict(t)
            | AdminError::Internal(t) => t,
        }
    }
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminError::NotFound(t) => write!(f, "not found: {t}"),
            AdminError::BadRequest(t) => write!(f, "bad request: {t}"),
            AdminError::Conflict(t) => write!(f, "conflict: {t}"),
            AdminError::Internal(t) => write!(f, "internal error: {t}"),
        }
    }
}

impl std::error::Error for AdminError {}

impl From<warren_protocol::ProtocolError> for AdminError {
    fn from(e: warren_protocol::ProtocolError) -> Self {
        match e.code.code() {
            404 => AdminError::NotFound(e.text),
            541 => AdminError::Internal(e.text),
            _ => AdminError::BadRequest(e.text),
        }
    }
}
