//! The message record: everything needed to rebuild a message after a restart.
//!
//! Layout (little-endian):
//! ```text
//! version u8 (=1) | flags u8 | expires_at_ms u64 (0 = none)
//! [flags & FLAG_MOVED: move nonce u64 | source message id u64]
//! exchange: len u8, bytes | routing_key: len u8, bytes
//! header_raw: len u32, bytes (the content header payload as received)
//! body: the rest
//! ```
//! The store adds its own framing and checksum around this.

use bytes::{BufMut, Bytes, BytesMut};
use warren_protocol::content::parse_header;
use warren_protocol::ShortString;

use crate::message::Message;

pub const RECORD_VERSION: u8 = 1;
const FIXED_BYTES: usize = 1 + 1 + 8;
/// Flag: the record carries a `MoveOrigin` after the fixed part. Other flag bits are unused
/// (written 0, ignored when read).
pub const FLAG_MOVED: u8 = 1;
const ORIGIN_BYTES: usize = 16;

/// Where a moved message came from (DLQ redrive, `admin::move_journal`): the move's nonce and
/// the message's id in the source queue's log. Kept in the destination's record, invisible to
/// clients, so that recovery can tell which journaled messages reached the destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MoveOrigin {
    pub nonce: u64,
    pub source_id: u64,
}

/// Encodes a message with its absolute expiry.
pub fn encode(message: &Message, expires_at_ms: Option<u64>) -> Bytes {
    encode_with_origin(message, expires_at_ms, None)
}

/// `encode`, with the move the message arrived by, if any.
pub fn encode_with_origin(
    message: &Message,
    expires_at_ms: Option<u64>,
    origin: Option<MoveOrigin>,
) -> Bytes {
    let exchange = message.exchange.as_str().as_bytes();
    let routing_key = message.routing_key.as_str().as_bytes();
    let mut out = BytesMut::with_capacity(
        FIXED_BYTES
            + if origin.is_some() { ORIGIN_BYTES } else { 0 }
            + 2
            + exchange.len()
            + routing_key.len()
            + 4
            + message.header_raw.len()
            + message.body.len(),
    );
    out.put_u8(RECORD_VERSION);
    out.put_u8(if origin.is_some() { FLAG_MOVED } else { 0 });
    out.put_u64_le(expires_at_ms.unwrap_or(0));
    if let Some(o) = origin {
        out.put_u64_le(o.nonce);
        out.put_u64_le(o.source_id);
    }
    out.put_u8(exchange.len() as u8);
    out.put_slice(exchange);
    out.put_u8(routing_key.len() as u8);
    out.put_slice(routing_key);
    out.put_u32_le(message.header_raw.len() as u32);
    out.put_slice(&message.header_raw);
    out.put_slice(&message.body);
    out.freeze()
}

/// Why a record could not be decoded (the store's checksum passed, so this means a bug or a
/// record from a newer version).
#[derive(Debug, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

/// Decodes a record; the message's body and header are slices of `record` (no copy).
pub fn decode(record: Bytes) -> Result<(Message, Option<u64>), DecodeError> {
    decode_with_origin(record).map(|(m, expires, _)| (m, expires))
}

/// A decoded record: the message, its absolute expiry, the move it arrived by.
pub type Decoded = (Message, Option<u64>, Option<MoveOrigin>);

/// `decode`, with the move the message arrived by, if the record says.
pub fn decode_with_origin(record: Bytes) -> Result<Decoded, DecodeError> {
    let mut at = 0usize;
    let take = |at: &mut usize, n: usize| -> Result<std::ops::Range<usize>, DecodeError> {
        let end = at.checked_add(n).ok_or(DecodeError("length overflow"))?;
        if end > record.len() {
            return Err(DecodeError("record too short"));
        }
        let r = *at..end;
        *at = end;
        Ok(r)
    };
    let fixed = take(&mut at, FIXED_BYTES)?;
    if record[fixed.start] != RECORD_VERSION {
        return Err(DecodeError("unknown record version"));
    }
    let expires = u64::from_le_bytes(
        record[fixed.start + 2..fixed.end]
            .try_into()
            .map_err(|_| DecodeError("bad expiry"))?,
    );
    let origin = match record[fixed.start + 1] & FLAG_MOVED {
        0 => None,
        _ => {
            let r = take(&mut at, ORIGIN_BYTES)?;
            let word = |i: usize| {
                u64::from_le_bytes(
                    record[r.start + i..r.start + i + 8]
                        .try_into()
                        .unwrap_or_default(),
                )
            };
            Some(MoveOrigin {
                nonce: word(0),
                source_id: word(8),
            })
        }
    };
    let short = |at: &mut usize| -> Result<ShortString, DecodeError> {
        let len = record[take(at, 1)?.start] as usize;
        let r = take(at, len)?;
        std::str::from_utf8(&record[r])
            .map(ShortString::from)
            .map_err(|_| DecodeError("name is not UTF-8"))
    };
    let exchange = short(&mut at)?;
    let routing_key = short(&mut at)?;
    let len_range = take(&mut at, 4)?;
    let header_len = u32::from_le_bytes(
        record[len_range]
            .try_into()
            .map_err(|_| DecodeError("bad header length"))?,
    ) as usize;
    let header_range = take(&mut at, header_len)?;
    let header_raw = record.slice(header_range);
    let body = record.slice(at..);
    let header = parse_header(header_raw).map_err(|_| DecodeError("bad content header"))?;
    Ok((
        Message {
            exchange,
            routing_key,
            properties: header.properties,
            header_raw: header.raw,
            body,
            properties_bytes: header.decoded_bytes,
        },
        (expires != 0).then_some(expires),
        origin,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_protocol::basic::AMQPProperties;

    #[test]
    fn round_trips_and_rejects_damage() {
        let props = AMQPProperties::default()
            .with_delivery_mode(2)
            .with_message_id("m1".into());
        let body = Bytes::from_static(b"hello body");
        let message = Message {
            exchange: "ex".into(),
            routing_key: "rk".into(),
            header_raw: warren_protocol::encode::header_payload(&props, body.len() as u64),
            properties: Box::new(props),
            body,
            properties_bytes: 0,
        };
        let record = encode(&message, Some(12345));
        let (back, expires) = decode(record.clone()).unwrap();
        assert_eq!(expires, Some(12345));
        assert_eq!(back.exchange.as_str(), "ex");
        assert_eq!(back.routing_key.as_str(), "rk");
        assert_eq!(back.body, message.body);
        assert_eq!(back.header_raw, message.header_raw);
        assert_eq!(back.properties, message.properties);
        assert_eq!(decode(encode(&message, None)).unwrap().1, None);
        for cut in 0..FIXED_BYTES + 6 {
            assert!(decode(record.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut bad = BytesMut::from(&record[..]);
        bad[0] = 9;
        assert!(decode(bad.freeze()).is_err());

        let origin = MoveOrigin {
            nonce: 7,
            source_id: 42,
        };
        let moved = encode_with_origin(&message, None, Some(origin));
        let (back, expires, got) = decode_with_origin(moved.clone()).unwrap();
        assert_eq!((expires, got), (None, Some(origin)));
        assert_eq!(back.body, message.body);
        assert_eq!(back.routing_key.as_str(), "rk");
        assert_eq!(decode_with_origin(record).unwrap().2, None);
        for cut in FIXED_BYTES..FIXED_BYTES + ORIGIN_BYTES {
            assert!(decode(moved.slice(..cut)).is_err(), "cut at {cut}");
        }
    }
}
