//! Content assembly: a publish method is followed by one content header and as many body
//! frames as the header's body size requires. This is a pure state machine per channel; any
//! frame out of sequence is a 505 UNEXPECTED_FRAME (a connection error).
//!
//! A body that arrives in one frame is kept as a slice of the read buffer (no copy) unless it
//! is smaller than `BODY_COPY_BELOW_BYTES`: a slice keeps its whole read-buffer block alive,
//! so a queue of 1-byte messages would otherwise pin 64 KiB each. A body split over several
//! frames is gathered once into a buffer sized from the header. Header payloads are always
//! copied (they are small, and long-lived with their message).

use amq_protocol::frame::parsing::parse_content_header;
use amq_protocol::protocol::basic::AMQPProperties;
use bytes::{Bytes, BytesMut};

use crate::error::ProtocolError;

/// The basic class: the only content-bearing class in 0-9-1.
pub const BASIC_CLASS_ID: u16 = 60;
/// Single-frame bodies below this are copied out of the read buffer (see the module doc); a
/// retained slice is then at least a quarter of a 64 KiB read block.
pub const BODY_COPY_BELOW_BYTES: usize = 16 * 1024;

/// A parsed content header, with its payload kept as received so that it can be forwarded
/// to consumers without re-encoding.
#[derive(Clone, Debug, PartialEq)]
pub struct ContentHeader {
    pub body_size: u64,
    /// Boxed: the properties are large and the header moves through several hands per
    /// message; a pointer moves cheaply.
    pub properties: Box<AMQPProperties>,
    /// The header frame's payload: class id, weight, body size, property flags and list.
    pub raw: Bytes,
    /// Estimated memory the decoded `headers` table takes beyond `raw` (see
    /// `table::DECODED_VALUE_BYTES`): counted in a message's footprint.
    pub decoded_bytes: usize,
}

/// Parses a content header frame payload.
pub fn parse_header(payload: Bytes) -> Result<ContentHeader, ProtocolError> {
    let shape = crate::table::check_header_tables(&payload)
        .map_err(|e| e.to_protocol_error("content header"))?;
    match parse_content_header(&payload[..]) {
        Ok(([], header)) => {
            if header.class_id != BASIC_CLASS_ID {
                return Err(ProtocolError::unexpected_frame(format!(
                    "content header for class {} when expecting class {}",
                    header.class_id, BASIC_CLASS_ID
                )));
            }
            Ok(ContentHeader {
                body_size: header.body_size,
                properties: Box::new(header.properties),
                decoded_bytes: shape.decoded_bytes(),
                // Still a slice of the read block: the assembler copies it out when the
                // message is complete (together with a small body, in one allocation).
                raw: payload,
            })
        }
        _ => Err(ProtocolError::frame_error(
            "cannot decode content header: malformed or truncated properties",
        )),
    }
}

// One per channel and moved only within it: boxing would add an allocation per message.
#[allow(clippy::large_enum_variant)]
enum State<M> {
    Idle,
    AwaitHeader(M),
    AwaitBody {
        method: M,
        header: ContentHeader,
        body: Body,
    },
}

enum Body {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

/// What feeding a frame produced.
#[allow(clippy::large_enum_variant)]
pub enum Assembled<M> {
    /// More frames are needed.
    Pending,
    /// A complete message: its method, header and body.
    Complete(M, ContentHeader, Bytes),
}

/// Assembles one channel's content. `M` is the content-bearing method (basic.publish).
pub struct ContentAssembler<M> {
    state: State<M>,
}

impl<M> Default for ContentAssembler<M> {
    fn default() -> Self {
        ContentAssembler { state: State::Idle }
    }
}

impl<M> ContentAssembler<M> {
    /// True when no content is in progress (a method frame may come next).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle)
    }

    /// Drops any content in progress (the channel closed).
    pub fn reset(&mut self) {
        self.state = State::Idle;
    }

    /// A content-bearing method arrived; its header must come next.
    pub fn start(&mut self, method: M) {
        self.state = State::AwaitHeader(method);
    }

    /// The error for a method frame that arrived while content was expected.
    pub fn unexpected_method(&self) -> ProtocolError {
        match self.state {
            State::AwaitHeader(_) => ProtocolError::unexpected_frame(
                "expected content header for class 60, got method frame",
            ),
            _ => ProtocolError::unexpected_frame("expected content body, got method frame"),
        }
    }

    /// A header frame arrived. `check_size` may refuse the announced body size (its error is
    /// returned as is and the content is dropped).
    pub fn header(
        &mut self,
        header: ContentHeader,
        check_size: impl FnOnce(u64) -> Result<(), ProtocolError>,
    ) -> Result<Assembled<M>, ProtocolError> {
        let method = match std::mem::replace(&mut self.state, State::Idle) {
            State::AwaitHeader(method) => method,
            State::Idle => {
                return Err(ProtocolError::unexpected_frame(
                    "content header without a preceding method",
                ))
            }
            State::AwaitBody { .. } => {
                return Err(ProtocolError::unexpected_frame(
                    "expected content body, got content header",
                ))
            }
        };
        check_size(header.body_size)?;
        if header.body_size == 0 {
            let mut header = header;
            header.raw = Bytes::copy_from_slice(&header.raw);
            return Ok(Assembled::Complete(method, header, Bytes::new()));
        }
        self.state = State::AwaitBody {
            method,
            header,
            body: Body::Empty,
        };
        Ok(Assembled::Pending)
    }

    /// A body frame arrived.
    pub fn body(&mut self, payload: Bytes) -> Result<Assembled<M>, ProtocolError> {
        let State::AwaitBody { header, body, .. } = &mut self.state else {
            return Err(ProtocolError::unexpected_frame(
                "content body without a preceding content header",
            ));
        };
        let expected = header.body_size;
        let received = match body {
            Body::Empty => 0,
            Body::One(b) => b.len() as u64,
            Body::Many(b) => b.len() as u64,
        };
        let total = received + payload.len() as u64;
        if total > expected {
            return Err(ProtocolError::unexpected_frame(format!(
                "content body of {total} bytes exceeds the {expected} announced in its header"
            )));
        }
        *body = match std::mem::replace(body, Body::Empty) {
            Body::Empty => Body::One(payload),
            Body::One(first) => {
                // The announced size was checked against the message size limit already.
                let mut all = BytesMut::with_capacity(expected as usize);
                all.extend_from_slice(&first);
                all.extend_from_slice(&payload);
                Body::Many(all)
            }
            Body::Many(mut all) => {
                all.extend_from_slice(&payload);
                Body::Many(all)
            }
        };
        if total < expected {
            return Ok(Assembled::Pending);
        }
        let State::AwaitBody {
            method,
            mut header,
            body,
        } = std::mem::replace(&mut self.state, State::Idle)
        else {
            unreachable!("state checked above")
        };
        // Out of the read block (see the module doc): a small body and the header share one
        // allocation; a large body stays a slice.
        let body = match body {
            Body::One(b) if b.len() < BODY_COPY_BELOW_BYTES => {
                let mut both = BytesMut::with_capacity(header.raw.len() + b.len());
                both.extend_from_slice(&header.raw);
                both.extend_from_slice(&b);
                let mut both = both.freeze();
                header.raw = both.split_to(header.raw.len());
                both
            }
            Body::Empty => {
                header.raw = Bytes::copy_from_slice(&header.raw);
                Bytes::new()
            }
            Body::One(b) => {
                header.raw = Bytes::copy_from_slice(&header.raw);
                b
            }
            Body::Many(b) => {
                header.raw = Bytes::copy_from_slice(&header.raw);
                b.freeze()
            }
        };
        Ok(Assembled::Complete(method, header, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::basic::AMQPProperties;
    use amq_protocol::types::{AMQPValue, FieldArray, FieldTable};

    fn header(body_size: u64, properties: AMQPProperties) -> Bytes {
        crate::encode::header_payload(&properties, body_size)
    }

    fn within(slice: &Bytes, block: &Bytes) -> bool {
        let start = block.as_ptr() as usize;
        let at = slice.as_ptr() as usize;
        at >= start && at < start + block.len()
    }

    /// Pins: a 1-byte body kept its whole 64 KiB read block alive for as long as it was queued.
    #[test]
    fn small_bodies_and_headers_are_copied_out_of_the_read_block_large_bodies_are_not() {
        let block = Bytes::from(vec![7u8; 64 * 1024]);
        for (len, shared) in [
            (1, false),
            (BODY_COPY_BELOW_BYTES - 1, false),
            (40_000, true),
        ] {
            let mut assembler = ContentAssembler::default();
            assembler.start(());
            let raw = header(len as u64, AMQPProperties::default());
            let mut framed = BytesMut::from(&block[..]);
            framed[..raw.len()].copy_from_slice(&raw);
            let framed = framed.freeze();
            let parsed = parse_header(framed.slice(..raw.len())).unwrap();
            assert!(matches!(
                assembler.header(parsed, |_| Ok(())),
                Ok(Assembled::Pending)
            ));
            match assembler.body(block.slice(..len)) {
                Ok(Assembled::Complete(_, header, body)) => {
                    assert!(!within(&header.raw, &framed), "header stays a slice");
                    assert_eq!(header.raw, raw);
                    assert_eq!(body.len(), len);
                    assert_eq!(within(&body, &block), shared, "body of {len} bytes");
                }
                _ => panic!("body of {len} bytes did not complete"),
            }
        }
    }

    #[test]
    fn decoded_headers_are_counted() {
        let many = FieldArray::from(vec![AMQPValue::Void; 10_000]);
        let mut headers = FieldTable::default();
        headers.insert("big".into(), AMQPValue::FieldArray(many));
        let raw = header(0, AMQPProperties::default().with_headers(headers));
        let parsed = parse_header(raw.clone()).unwrap();
        assert!(parsed.decoded_bytes >= 10_000 * crate::table::DECODED_VALUE_BYTES);
        let plain = parse_header(header(0, AMQPProperties::default())).unwrap();
        assert_eq!(plain.decoded_bytes, 0);
    }
}
