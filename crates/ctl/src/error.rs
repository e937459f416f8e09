//! `CtlError` and the exit codes scripts test: every failure of a command maps to exactly one
//! code, and the text printed to stderr carries the API's `reason` when there is one.
//!
//! Owns: the exit-code table (also in `--help` and `docs/cli.md`). Must not touch: stdout.

use std::fmt;

/// Success.
pub const EXIT_OK: u8 = 0;
/// A local failure: a file that cannot be read or written, an answer that is not JSON.
pub const EXIT_FAILURE: u8 = 1;
/// Usage error: unknown command or flag, a missing or malformed argument (clap's own code,
/// also used for arguments that parse but are invalid, such as `--arguments` that is not JSON).
pub const EXIT_USAGE: u8 = 2;
/// The API answered 404: the vhost, user, queue ... does not exist (or the endpoint is not
/// served by this broker).
pub const EXIT_NOT_FOUND: u8 = 3;
/// The API answered 401 (wrong user or password, or — as RabbitMQ and Warren answer it — the
/// user's tags or permissions do not allow it) or 403 (the same, from other servers).
pub const EXIT_ACCESS_REFUSED: u8 = 4;
/// The API refused the request as it stands: 400 (bad request), 409 (conflict or failed
/// precondition, e.g. `--if-empty` on a queue with messages), 405, 413 or another 4xx.
pub const EXIT_BAD_REQUEST: u8 = 5;
/// The broker failed: a 5xx answer.
pub const EXIT_SERVER_ERROR: u8 = 6;
/// The broker could not be reached: connection refused, name not resolved, timeout, a
/// connection closed mid-answer.
pub const EXIT_UNREACHABLE: u8 = 7;

/// The exit-code table as `--help` shows it.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  local failure (a file cannot be read or written, an answer is not JSON)
  2  usage error (unknown command or flag, missing or malformed argument)
  3  not found (HTTP 404)
  4  access refused (HTTP 401 or 403: wrong credentials, or not allowed)
  5  bad request or failed precondition (HTTP 400, 409, other 4xx)
  6  server error (HTTP 5xx)
  7  broker unreachable (connection refused, timeout)";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtlError {
    /// An argument that clap accepted but that is invalid.
    Usage(String),
    /// A non-2xx answer: its status and the `reason` of RabbitMQ's error body.
    Api { status: u16, reason: String },
    /// The object is not there, found out without a 404 (e.g. no binding matches).
    NotFound(String),
    /// No answer at all.
    Unreachable(String),
    /// Anything local.
    Local(String),
}

impl CtlError {
    pub fn usage(why: impl Into<String>) -> Self {
        CtlError::Usage(why.into())
    }

    pub fn local(why: impl Into<String>) -> Self {
        CtlError::Local(why.into())
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage(_) => EXIT_USAGE,
            CtlError::Local(_) => EXIT_FAILURE,
            CtlError::NotFound(_) => EXIT_NOT_FOUND,
            CtlError::Unreachable(_) => EXIT_UNREACHABLE,
            CtlError::Api { status, .. } => match status {
                404 => EXIT_NOT_FOUND,
                401 | 403 => EXIT_ACCESS_REFUSED,
                500.. => EXIT_SERVER_ERROR,
                _ => EXIT_BAD_REQUEST,
            },
        }
    }
}

impl fmt::Display for CtlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CtlError::Usage(why) => write!(f, "usage: {why}"),
            CtlError::Api { status, reason } => write!(f, "HTTP {status}: {reason}"),
            CtlError::Unreachable(why) => write!(f, "cannot reach the broker: {why}"),
            CtlError::NotFound(what) => write!(f, "not found: {what}"),
            CtlError::Local(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for CtlError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16) -> CtlError {
        CtlError::Api {
            status,
            reason: String::new(),
        }
    }

    #[test]
    fn each_kind_of_failure_has_its_own_code() {
        assert_eq!(api(404).exit_code(), EXIT_NOT_FOUND);
        assert_eq!(api(401).exit_code(), EXIT_ACCESS_REFUSED);
        assert_eq!(api(403).exit_code(), EXIT_ACCESS_REFUSED);
        assert_eq!(api(400).exit_code(), EXIT_BAD_REQUEST);
        assert_eq!(api(409).exit_code(), EXIT_BAD_REQUEST);
        assert_eq!(api(413).exit_code(), EXIT_BAD_REQUEST);
        assert_eq!(api(500).exit_code(), EXIT_SERVER_ERROR);
        assert_eq!(api(503).exit_code(), EXIT_SERVER_ERROR);
        assert_eq!(CtlError::usage("x").exit_code(), EXIT_USAGE);
        assert_eq!(CtlError::local("x").exit_code(), EXIT_FAILURE);
        assert_eq!(CtlError::NotFound("x".into()).exit_code(), EXIT_NOT_FOUND);
        assert_eq!(
            CtlError::Unreachable("x".into()).exit_code(),
            EXIT_UNREACHABLE
        );
    }
}
