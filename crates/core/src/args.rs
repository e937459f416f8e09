//! Argument tables of exchanges and queues: how two declarations are compared (RabbitMQ's
//! "inequivalent arg" errors) and how values are shown in error texts.

use warren_protocol::{AMQPValue, FieldTable, ProtocolError};

/// RabbitMQ's name for a field value's type (the atom its parser tags the value with), as
/// used in its error texts.
pub fn type_name(value: &AMQPValue) -> &'static str {
    match value {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "byte",
        AMQPValue::ShortShortUInt(_) => "unsignedbyte",
        AMQPValue::ShortInt(_) => "short",
        AMQPValue::ShortUInt(_) => "unsignedshort",
        AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongUInt(_) => "unsignedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        // RabbitMQ's tables have no short-string type; it reads them as long strings.
        AMQPValue::ShortString(_) | AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}

/// A value as RabbitMQ prints it in error texts.
pub fn show(value: &AMQPValue) -> String {
    match value {
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(v) => v.to_string(),
        AMQPValue::ShortShortUInt(v) => v.to_string(),
        AMQPValue::ShortInt(v) => v.to_string(),
        AMQPValue::ShortUInt(v) => v.to_string(),
        AMQPValue::LongInt(v) => v.to_string(),
        AMQPValue::LongUInt(v) => v.to_string(),
        AMQPValue::LongLongInt(v) => v.to_string(),
        AMQPValue::Float(v) => v.to_string(),
        AMQPValue::Double(v) => v.to_string(),
        AMQPValue::Timestamp(v) => v.to_string(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => format!("{other:?}"),
    }
}

/// The integer in a numeric field, whatever its width (RabbitMQ accepts any integer type for
/// numeric arguments).
pub fn as_i64(value: &AMQPValue) -> Option<i64> {
    Some(match *value {
        AMQPValue::ShortShortInt(v) => v.into(),
        AMQPValue::ShortShortUInt(v) => v.into(),
        AMQPValue::ShortInt(v) => v.into(),
        AMQPValue::ShortUInt(v) => v.into(),
        AMQPValue::LongInt(v) => v.into(),
        AMQPValue::LongUInt(v) => v.into(),
        AMQPValue::LongLongInt(v) => v,
        AMQPValue::Timestamp(v) => i64::try_from(v).ok()?,
        _ => return None,
    })
}

/// The text of a string field (short or long string).
pub fn as_str(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

/// The queue arguments a redeclaration is compared on: those RabbitMQ compares (its queue
/// types' declare arguments) and Warren's own. Any other key is ignored, as in RabbitMQ.
pub const QUEUE_EQUIVALENCE_KEYS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-single-active-consumer",
    "x-queue-type",
    "x-delivery-limit",
    "x-consumer-timeout",
];

/// The exchange arguments a redeclaration is compared on (RabbitMQ compares only this one).
pub const EXCHANGE_EQUIVALENCE_KEYS: &[&str] = &["alternate-exchange", "x-delayed-type"];

/// Compares the argument tables of a redeclaration with the existing ones, on the `keys` that
/// matter (unknown arguments are ignored, as in RabbitMQ); the first difference is a 406 in
/// RabbitMQ's words. `what` is e.g. "queue 'q' in vhost '/'".
pub fn check_equivalent(
    received: &FieldTable,
    current: &FieldTable,
    keys: &[&str],
    what: &str,
) -> Result<(), ProtocolError> {
    for &key in keys {
        let r = received.inner().get(key);
        let c = current.inner().get(key);
        if r == c || same_integer(r, c) {
            continue;
        }
        // RabbitMQ's words: plain values when both sides have one, typed otherwise.
        let text = match (r, c) {
            (Some(r), Some(c)) => {
                format!("received '{}' but current is '{}'", plain(r), plain(c))
            }
            _ => {
                let describe = |v: Option<&AMQPValue>| match v {
                    Some(v) => format!("the value '{}' of type '{}'", show(v), type_name(v)),
                    None => "none".to_owned(),
                };
                format!("received {} but current is {}", describe(r), describe(c))
            }
        };
        return Err(ProtocolError::precondition_failed(format!(
            "inequivalent arg '{key}' for {what}: {text}"
        )));
    }
    Ok(())
}

/// A value as RabbitMQ prints it in the plain form: numbers and text as they are.
fn plain(value: &AMQPValue) -> String {
    match as_str(value) {
        Some(s) => s,
        None => match as_i64(value) {
            Some(n) => n.to_string(),
            None => show(value),
        },
    }
}

/// Integers of different widths with the same value are equivalent (clients pick the width:
/// pika sends 60000 as a signed int, lapin may send a long).
fn same_integer(a: Option<&AMQPValue>, b: Option<&AMQPValue>) -> bool {
    match (a.and_then(as_i64), b.and_then(as_i64)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// A 406 for a boolean property that differs between declarations.
pub fn check_flag(
    name: &str,
    received: bool,
    current: bool,
    what: &str,
) -> Result<(), ProtocolError> {
    if received == current {
        return Ok(());
    }
    Err(ProtocolError::precondition_failed(format!(
        "inequivalent arg '{name}' for {what}: received '{received}' but current is '{current}'"
    )))
}
