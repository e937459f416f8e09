//! A queue's resolved settings: what its arguments (and, later, policies) ask for, validated
//! with RabbitMQ's names, types and error texts. The queue actor reads only this struct, so a
//! policy can feed it the same way arguments do.

use warren_protocol::{AMQPValue, FieldTable, ProtocolError, ShortString};

use crate::args::{as_i64, as_str, type_name};

/// Longest TTL or expiry RabbitMQ accepts (`x-message-ttl`, `x-expires`, `expiration`):
/// ten years, in milliseconds.
pub const TTL_MS_MAX: i64 = 315_360_000_000;
/// Highest `x-max-priority`.
pub const MAX_PRIORITY_MAX: i64 = 255;

/// What a full queue does with a new message (`x-overflow`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overflow {
    #[default]
    DropHead,
    RejectPublish,
    RejectPublishDlx,
}

/// What happens when a delivery is not acked within the consumer timeout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConsumerTimeoutAction {
    /// Warren's default: the delivery goes back to the queue and the consumer is cancelled.
    #[default]
    Requeue,
    /// RabbitMQ's: the channel is closed with 406.
    CloseChannel,
}

/// Broker-wide defaults a queue falls back to.
#[derive(Clone, Debug)]
pub struct QueueDefaults {
    /// None disables the consumer timeout.
    pub consumer_timeout_ms: Option<u64>,
    pub consumer_timeout_action: ConsumerTimeoutAction,
}

/// RabbitMQ's default `consumer_timeout`: 30 minutes.
pub const DEFAULT_CONSUMER_TIMEOUT_MS: u64 = 30 * 60 * 1000;

impl Default for QueueDefaults {
    fn default() -> Self {
        QueueDefaults {
            consumer_timeout_ms: Some(DEFAULT_CONSUMER_TIMEOUT_MS),
            consumer_timeout_action: ConsumerTimeoutAction::Requeue,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueSettings {
    pub message_ttl_ms: Option<u64>,
    pub expires_ms: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    pub dead_letter_exchange: Option<ShortString>,
    pub dead_letter_routing_key: Option<ShortString>,
    pub delivery_limit: Option<u64>,
    pub max_priority: Option<u8>,
    pub single_active_consumer: bool,
    pub consumer_timeout_ms: Option<u64>,
    /// `x-message-deduplication` (the deduplication plugin's queue argument).
    pub message_deduplication: bool,
    /// `x-message-group-header`: the header naming a message's FIFO group (`ready.rs`).
    pub message_group_header: Option<ShortString>,
}

fn invalid(name: &str, what: &str, detail: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::precondition_failed(format!("invalid arg '{name}' for {what}: {detail}"))
}

/// An integer argument; `check` refines the range (None means "no argument").
fn integer(args: &FieldTable, name: &str, what: &str) -> Result<Option<i64>, ProtocolError> {
    let Some(value) = args.inner().get(name) else {
        return Ok(None);
    };
    match as_i64(value) {
        Some(v) => Ok(Some(v)),
        None => Err(invalid(
            name,
            what,
            format!("\"expected integer, got {}\"", type_name(value)),
        )),
    }
}

fn non_negative(args: &FieldTable, name: &str, what: &str) -> Result<Option<u64>, ProtocolError> {
    match integer(args, name, what)? {
        Some(v) if v < 0 => Err(invalid(name, what, format!("{{value_negative,{v}}}"))),
        Some(v) => Ok(Some(v as u64)),
        None => Ok(None),
    }
}

impl QueueSettings {
    /// Reads and validates queue arguments. `what` is e.g. "queue 'q' in vhost '/'".
    pub fn from_arguments(args: &FieldTable, what: &str) -> Result<QueueSettings, ProtocolError> {
        let mut s = QueueSettings {
            message_ttl_ms: match non_negative(args, "x-message-ttl", what)? {
                Some(v) if v as i64 > TTL_MS_MAX => {
                    return Err(invalid(
                        "x-message-ttl",
                        what,
                        format!("{{value_too_large,{v}}}"),
                    ))
                }
                v => v,
            },
            max_length: non_negative(args, "x-max-length", what)?,
            max_length_bytes: non_negative(args, "x-max-length-bytes", what)?,
            delivery_limit: non_negative(args, "x-delivery-limit", what)?,
            consumer_timeout_ms: non_negative(args, "x-consumer-timeout", what)?,
            ..QueueSettings::default()
        };
        s.expires_ms = match integer(args, "x-expires", what)? {
            Some(0) => return Err(invalid("x-expires", what, "{value_zero,0}")),
            Some(v) if v < 0 => {
                return Err(invalid(
                    "x-expires",
                    what,
                    format!("{{value_negative,{v}}}"),
                ))
            }
            Some(v) if v > TTL_MS_MAX => {
                return Err(invalid(
                    "x-expires",
                    what,
                    format!("{{value_too_large,{v}}}"),
                ))
            }
            Some(v) => Some(v as u64),
            None => None,
        };
        s.max_priority = match non_negative(args, "x-max-priority", what)? {
            Some(v) if v as i64 > MAX_PRIORITY_MAX => {
                return Err(invalid(
                    "x-max-priority",
                    what,
                    format!("{{max_value_exceeded,{v}}}"),
                ))
            }
            Some(v) => Some(v as u8),
            None => None,
        };
        if let Some(value) = args.inner().get("x-overflow") {
            s.overflow = match as_str(value).as_deref() {
                Some("drop-head") => Overflow::DropHead,
                Some("reject-publish") => Overflow::RejectPublish,
                Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
                Some(_) => return Err(invalid("x-overflow", what, "invalid_overflow")),
                None => {
                    return Err(invalid(
                        "x-overflow",
                        what,
                        format!("{{unacceptable_type,{}}}", type_name(value)),
                    ))
                }
            };
        }
        s.dead_letter_exchange = string_arg(args, "x-dead-letter-exchange", what)?;
        s.dead_letter_routing_key = string_arg(args, "x-dead-letter-routing-key", what)?;
        if s.dead_letter_routing_key.is_some() && s.dead_letter_exchange.is_none() {
            return Err(invalid(
                "x-dead-letter-routing-key",
                what,
                "routing_key_but_no_dlx_defined",
            ));
        }
        if let Some(value) = args.inner().get("x-single-active-consumer") {
            s.single_active_consumer = match value {
                AMQPValue::Boolean(b) => *b,
                other => {
                    return Err(invalid(
                        "x-single-active-consumer",
                        what,
                        format!("{{unacceptable_type,{}}}", type_name(other)),
                    ))
                }
            };
        }
        s.message_group_header = string_arg(args, "x-message-group-header", what)?;
        s.message_deduplication = crate::exchange::deduplication::queue_enabled(args)
            .map_err(|e| ProtocolError::precondition_failed(format!("{e} for {what}")))?;
        if let Some(value) = args.inner().get("x-queue-type") {
            match as_str(value).as_deref() {
                // Quorum queues are accepted as Warren's one queue type, which already has
                // their delivery limit; streams are not implemented.
                Some("classic") | Some("quorum") => {}
                Some(other) => {
                    return Err(invalid(
                        "x-queue-type",
                        what,
                        format!("\"unsupported queue type '{other}'\""),
                    ))
                }
                None => {
                    return Err(invalid(
                        "x-queue-type",
                        what,
                        format!("{{unacceptable_type,{}}}", type_name(value)),
                    ))
                }
            }
        }
        Ok(s)
    }
}

fn string_arg(
    args: &FieldTable,
    name: &str,
    what: &str,
) -> Result<Option<ShortString>, ProtocolError> {
    match args.inner().get(name) {
        None => Ok(None),
        Some(value) => match as_str(value) {
            Some(s) => ShortString::try_new(s).map(Some).map_err(|_| {
                ProtocolError::precondition_failed(format!(
                    "invalid arg '{name}' for {what}: longer than 255 bytes"
                ))
            }),
            None => Err(ProtocolError::precondition_failed(format!(
                "invalid type '{}' for arg '{name}' in {what}",
                type_name(value)
            ))),
        },
    }
}

/// The `x-priority` consumer argument (default 0).
pub fn consumer_priority(args: &FieldTable, what: &str) -> Result<i32, ProtocolError> {
    Ok(integer(args, "x-priority", what)?
        .map(|v| v.clamp(i32::MIN as i64, i32::MAX as i64) as i32)
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn err(pairs: &[(&str, AMQPValue)]) -> String {
        QueueSettings::from_arguments(&table(pairs), "queue 'q' in vhost '/'")
            .unwrap_err()
            .reply_text()
    }

    /// Texts as RabbitMQ 3.10 sends them (checked against a real broker).
    #[test]
    fn validation_texts_match_rabbitmq() {
        let ls = |s: &str| AMQPValue::LongString(s.as_bytes().to_vec().into());
        assert_eq!(
            err(&[("x-message-ttl", ls("abc"))]),
            "PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'q' in vhost '/': \"expected integer, got longstr\""
        );
        assert_eq!(
            err(&[("x-message-ttl", AMQPValue::LongInt(-1))]),
            "PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'q' in vhost '/': {value_negative,-1}"
        );
        assert_eq!(
            err(&[("x-expires", AMQPValue::LongInt(0))]),
            "PRECONDITION_FAILED - invalid arg 'x-expires' for queue 'q' in vhost '/': {value_zero,0}"
        );
        assert_eq!(
            err(&[("x-max-priority", AMQPValue::LongInt(256))]),
            "PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue 'q' in vhost '/': {max_value_exceeded,256}"
        );
        assert_eq!(
            err(&[("x-overflow", ls("foo"))]),
            "PRECONDITION_FAILED - invalid arg 'x-overflow' for queue 'q' in vhost '/': invalid_overflow"
        );
        assert_eq!(
            err(&[("x-dead-letter-exchange", AMQPValue::LongInt(1))]),
            "PRECONDITION_FAILED - invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue 'q' in vhost '/'"
        );
        assert_eq!(
            err(&[("x-dead-letter-routing-key", ls("rk"))]),
            "PRECONDITION_FAILED - invalid arg 'x-dead-letter-routing-key' for queue 'q' in vhost '/': routing_key_but_no_dlx_defined"
        );
        assert_eq!(
            err(&[("x-single-active-consumer", ls("yes"))]),
            "PRECONDITION_FAILED - invalid arg 'x-single-active-consumer' for queue 'q' in vhost '/': {unacceptable_type,longstr}"
        );
        let ok = QueueSettings::from_arguments(
            &table(&[
                ("x-max-priority", AMQPValue::ShortShortUInt(10)),
                ("x-unknown", AMQPValue::LongInt(1)),
                ("x-overflow", ls("reject-publish-dlx")),
            ]),
            "q",
        )
        .unwrap();
        assert_eq!(ok.max_priority, Some(10));
        assert_eq!(ok.overflow, Overflow::RejectPublishDlx);
    }
}
