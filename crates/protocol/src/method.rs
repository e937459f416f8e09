//! Decoding method frames through `amq-protocol`'s generated parser, with the class and method
//! ids read first so that an error can always name the method it answers.

use amq_protocol::protocol::{parse_class, AMQPClass};

use crate::error::ProtocolError;

/// A decoded method with its ids.
#[derive(Clone, Debug, PartialEq)]
pub struct Method {
    pub class_id: u16,
    pub method_id: u16,
    pub class: AMQPClass,
}

/// The (class, method) ids at the front of a method payload, if it is long enough.
pub fn method_ids(payload: &[u8]) -> Option<(u16, u16)> {
    if payload.len() < 4 {
        return None;
    }
    Some((
        u16::from_be_bytes([payload[0], payload[1]]),
        u16::from_be_bytes([payload[2], payload[3]]),
    ))
}

/// Decodes a method frame's payload. A payload that ends early, has trailing bytes, or holds
/// a malformed field table is a 501 FRAME_ERROR (RabbitMQ's answer to a malformed field).
pub fn decode_method(payload: &[u8]) -> Result<Method, ProtocolError> {
    let (class_id, method_id) =
        method_ids(payload).ok_or_else(|| ProtocolError::frame_error("method frame too short"))?;
    if !known_method(class_id, method_id) {
        return Err(ProtocolError::not_implemented(format!(
            "unknown method class {class_id} method {method_id}"
        ))
        .on(class_id, method_id));
    }
    crate::table::check_method_tables(payload).map_err(|e| {
        e.to_protocol_error(&format!("method {class_id}.{method_id}"))
            .on(class_id, method_id)
    })?;
    match parse_class(payload) {
        Ok(([], class)) => Ok(Method {
            class_id,
            method_id,
            class,
        }),
        Ok(_) => Err(ProtocolError::frame_error(format!(
            "trailing bytes after method {class_id}.{method_id}"
        ))
        .on(class_id, method_id)),
        Err(_) => Err(ProtocolError::frame_error(format!(
            "cannot decode method frame for class {class_id} method {method_id}: malformed or truncated arguments"
        ))
        .on(class_id, method_id)),
    }
}

fn known_method(class_id: u16, method_id: u16) -> bool {
    match class_id {
        10 => matches!(
            method_id,
            10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51 | 60 | 61 | 70 | 71
        ),
        20 => matches!(method_id, 10 | 11 | 20 | 21 | 40 | 41),
        30 => matches!(method_id, 10 | 11),
        40 => matches!(method_id, 10 | 11 | 20 | 21 | 30 | 31 | 40 | 51),
        50 => matches!(method_id, 10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51),
        60 => matches!(
            method_id,
            10 | 11
                | 20
                | 21
                | 30
                | 31
                | 40
                | 50
                | 60
                | 70
                | 71
                | 72
                | 80
                | 90
                | 100
                | 110
                | 111
                | 120
        ),
        85 => matches!(method_id, 10 | 11),
        90 => matches!(method_id, 10 | 11 | 20 | 21 | 30 | 31),
        _ => false,
    }
}

/// basic.publish (60.40) decoded by hand: it arrives once per message, and the generated
/// parser's combinators cost more than the rest of the publish path.
/// Returns None if the payload is not a basic.publish (the caller falls back to
/// `decode_method`, which also reports malformed ones).
pub fn decode_publish(payload: &[u8]) -> Option<amq_protocol::protocol::basic::Publish> {
    if payload.len() < 4 + 2 + 1 || payload[..4] != [0, 60, 0, 40] {
        return None;
    }
    let mut at = 6; // class, method, reserved-1 (ticket)
    let short = |at: &mut usize| -> Option<&str> {
        let len = *payload.get(*at)? as usize;
        let s = payload.get(*at + 1..*at + 1 + len)?;
        *at += 1 + len;
        std::str::from_utf8(s).ok()
    };
    let exchange = short(&mut at)?;
    let routing_key = short(&mut at)?;
    let bits = *payload.get(at)?;
    if at + 1 != payload.len() {
        return None;
    }
    Some(amq_protocol::protocol::basic::Publish {
        exchange: exchange.into(),
        routing_key: routing_key.into(),
        mandatory: bits & 1 != 0,
        immediate: bits & 2 != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::basic;

    #[test]
    fn hand_written_publish_decoder_agrees_with_the_generated_one() {
        for (exchange, key, mandatory, immediate) in [
            ("", "q", false, false),
            ("amq.topic", "a.b.c", true, false),
            ("x", "", false, true),
            ("é", &"k".repeat(255)[..], true, true),
        ] {
            let method = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: exchange.into(),
                routing_key: key.into(),
                mandatory,
                immediate,
            }));
            let mut out = bytes::BytesMut::new();
            crate::encode::method(&mut out, 1, method);
            let payload = &out[7..out.len() - 1];
            let generated = match decode_method(payload).unwrap().class {
                AMQPClass::Basic(basic::AMQPMethod::Publish(p)) => p,
                other => panic!("{other:?}"),
            };
            assert_eq!(decode_publish(payload), Some(generated));
            // Truncated or padded payloads are left to the generated parser.
            assert_eq!(decode_publish(&payload[..payload.len() - 1]), None);
        }
    }
}
