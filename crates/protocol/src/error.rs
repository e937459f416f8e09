//! Reply codes and the protocol-level error type. Every error the broker sends carries one of
//! these codes, a text, and the class/method it answers; `is_hard` says whether the spec makes
//! it a connection error (close the connection) or a channel error (close the channel).

use std::fmt;

/// AMQP 0-9-1 reply codes (spec `constants`), with RabbitMQ's usage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ReplyCode {
    ReplySuccess = 200,
    ContentTooLarge = 311,
    NoRoute = 312,
    NoConsumers = 313,
    ConnectionForced = 320,
    InvalidPath = 402,
    AccessRefused = 403,
    NotFound = 404,
    ResourceLocked = 405,
    PreconditionFailed = 406,
    FrameError = 501,
    SyntaxError = 502,
    CommandInvalid = 503,
    ChannelError = 504,
    UnexpectedFrame = 505,
    ResourceError = 506,
    NotAllowed = 530,
    NotImplemented = 540,
    InternalError = 541,
}

impl ReplyCode {
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The spec's name, as RabbitMQ prefixes its reply texts with it.
    pub fn name(self) -> &'static str {
        match self {
            ReplyCode::ReplySuccess => "REPLY_SUCCESS",
            ReplyCode::ContentTooLarge => "CONTENT_TOO_LARGE",
            ReplyCode::NoRoute => "NO_ROUTE",
            ReplyCode::NoConsumers => "NO_CONSUMERS",
            ReplyCode::ConnectionForced => "CONNECTION_FORCED",
            ReplyCode::InvalidPath => "INVALID_PATH",
            ReplyCode::AccessRefused => "ACCESS_REFUSED",
            ReplyCode::NotFound => "NOT_FOUND",
            ReplyCode::ResourceLocked => "RESOURCE_LOCKED",
            ReplyCode::PreconditionFailed => "PRECONDITION_FAILED",
            ReplyCode::FrameError => "FRAME_ERROR",
            ReplyCode::SyntaxError => "SYNTAX_ERROR",
            ReplyCode::CommandInvalid => "COMMAND_INVALID",
            ReplyCode::ChannelError => "CHANNEL_ERROR",
            ReplyCode::UnexpectedFrame => "UNEXPECTED_FRAME",
            ReplyCode::ResourceError => "RESOURCE_ERROR",
            ReplyCode::NotAllowed => "NOT_ALLOWED",
            ReplyCode::NotImplemented => "NOT_IMPLEMENTED",
            ReplyCode::InternalError => "INTERNAL_ERROR",
        }
    }

    /// Hard errors close the connection; soft ones only the channel.
    pub fn is_hard(self) -> bool {
        matches!(
            self,
            ReplyCode::ConnectionForced
                | ReplyCode::InvalidPath
                | ReplyCode::FrameError
                | ReplyCode::SyntaxError
                | ReplyCode::CommandInvalid
                | ReplyCode::ChannelError
                | ReplyCode::UnexpectedFrame
                | ReplyCode::ResourceError
                | ReplyCode::NotAllowed
                | ReplyCode::NotImplemented
                | ReplyCode::InternalError
        )
    }
}

/// An error to report to the peer: code, text and the (class, method) it answers (0, 0 if none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError {
    pub code: ReplyCode,
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
}

impl ProtocolError {
    pub fn new(code: ReplyCode, text: impl Into<String>) -> Self {
        ProtocolError {
            code,
            text: text.into(),
            class_id: 0,
            method_id: 0,
        }
    }

    /// Attaches the class/method ids of the method that caused the error.
    pub fn on(mut self, class_id: u16, method_id: u16) -> Self {
        if self.class_id == 0 && self.method_id == 0 {
            self.class_id = class_id;
            self.method_id = method_id;
        }
        self
    }

    /// The reply text as sent: `NAME - text`, as RabbitMQ writes it (truncated to a short string).
    pub fn reply_text(&self) -> String {
        let mut text = format!("{} - {}", self.code.name(), self.text);
        if text.len() > 255 {
            let mut end = 255;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        text
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code.code(), self.reply_text())
    }
}

impl std::error::Error for ProtocolError {}

macro_rules! ctor {
    ($($fn:ident => $code:ident),* $(,)?) => {
        impl ProtocolError {
            $(pub fn $fn(text: impl Into<String>) -> Self { ProtocolError::new(ReplyCode::$code, text) })*
        }
    };
}

ctor! {
    not_found => NotFound,
    access_refused => AccessRefused,
    resource_locked => ResourceLocked,
    precondition_failed => PreconditionFailed,
    frame_error => FrameError,
    syntax_error => SyntaxError,
    command_invalid => CommandInvalid,
    channel_error => ChannelError,
    unexpected_frame => UnexpectedFrame,
    resource_error => ResourceError,
    not_allowed => NotAllowed,
    not_implemented => NotImplemented,
    internal_error => InternalError,
    connection_forced => ConnectionForced,
}
