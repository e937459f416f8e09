//! Content assembly: a publish method is followed by one content header and as many body
//! frames as the header's body size requires. This is a pure state machine per channel; any
//! frame out of sequence is a 505 UNEXPECTED_FRAME (a connection error).
//!
//! A body that arrives in one frame is kept as a slice of the read buffer (no copy); a body
//! split over several frames is gathered once into a buffer sized from the header.

use amq_protocol::frame::parsing::parse_content_header;
use amq_protocol::protocol::basic::AMQPProperties;
use bytes::{Bytes, BytesMut};

use crate::error::ProtocolError;

/// The basic class: the only content-bearing class in 0-9-1.
pub const BASIC_CLASS_ID: u16 = 60;

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
            header,
            body,
        } = std::mem::replace(&mut self.state, State::Idle)
        else {
            unreachable!("state checked above")
        };
        let body = match body {
            Body::Empty => Bytes::new(),
            Body::One(b) => b,
            Body::Many(b) => b.freeze(),
        };
        Ok(Assembled::Complete(method, header, body))
    }
}
