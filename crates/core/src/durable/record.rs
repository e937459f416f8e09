//! The message record: everything needed to rebuild a message after a restart.
//!
//! Layout (little-endian):
//! ```text
//! version u8 (=1) | flags u8 | expires_at_ms u64 (0 = none)
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

/// Encodes a message with its absolute expiry.
pub fn encode(message: &Message, expires_at_ms: Option<u64>) -> Bytes {
    let exchange = message.exchange.as_str().as_bytes();
    let routing_key = message.routing_key.as_str().as_bytes();
    let mut out = BytesMut::with_capacity(
        FIXED_BYTES
            + 2
            + exchange.len()
            + routing_key.len()
            + 4
            + message.header_raw.len()
            + message.body.len(),
    );
    out.put_u8(RECORD_VERSION);
    out.put_u8(0);
    out.put_u64_le(expires_at_ms.unwrap_or(0));
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
    }
}
