//! Splitting the input byte stream into frames. Written by hand rather than with
//! `amq_protocol::frame::parse_frame` because that copies every body frame into a `Vec<u8>`;
//! here a frame's payload is a `Bytes` slice of the read buffer, so bodies are never copied.
//!
//! Needing more bytes is `Ok(None)`, not an error (mini-redis's `check`/`parse` split).

use bytes::{Buf, Bytes, BytesMut};

use crate::error::ProtocolError;

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;
/// type (1) + channel (2) + size (4).
pub const FRAME_HEADER_SIZE: usize = 7;
/// Header plus the end octet: what a frame costs beyond its payload.
pub const FRAME_OVERHEAD: usize = FRAME_HEADER_SIZE + 1;
/// The most `decode_frame` reserves ahead for a frame still arriving. With `frame_max` 0 a
/// header may announce 4 GiB, and a reservation must not trust what the peer announces.
pub const FRAME_RESERVE_BYTES_MAX: usize = 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    Method,
    Header,
    Body,
    Heartbeat,
}

/// One frame with its payload sliced out of the input buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub channel: u16,
    pub payload: Bytes,
}

/// Takes one complete frame off the front of `buf`, if there is one.
///
/// `frame_max` is the negotiated maximum frame size including header and end octet
/// (0 means the spec's "no limit", which we never negotiate but accept during the handshake).
pub fn decode_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, ProtocolError> {
    if buf.len() < FRAME_HEADER_SIZE {
        return Ok(None);
    }
    let kind = match buf[0] {
        FRAME_METHOD => FrameKind::Method,
        FRAME_HEADER => FrameKind::Header,
        FRAME_BODY => FrameKind::Body,
        FRAME_HEARTBEAT => FrameKind::Heartbeat,
        other => {
            return Err(ProtocolError::frame_error(format!(
                "unknown frame type {other}"
            )))
        }
    };
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);
    let total = (size as u64) + FRAME_OVERHEAD as u64;
    if frame_max != 0 && total > frame_max as u64 {
        return Err(ProtocolError::frame_error(format!(
            "type {} frame size {} exceeds frame_max {}",
            buf[0], total, frame_max
        )));
    }
    let total = total as usize;
    if buf.len() < total {
        buf.reserve((total - buf.len()).min(FRAME_RESERVE_BYTES_MAX));
        return Ok(None);
    }
    if buf[total - 1] != FRAME_END {
        return Err(ProtocolError::frame_error(format!(
            "invalid frame end marker {:#04x}",
            buf[total - 1]
        )));
    }
    let mut frame = buf.split_to(total);
    frame.advance(FRAME_HEADER_SIZE);
    frame.truncate(size as usize);
    Ok(Some(Frame {
        kind,
        channel,
        payload: frame.freeze(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_bytes(kind: u8, channel: u16, payload: &[u8], end: u8) -> Vec<u8> {
        let mut v = vec![kind];
        v.extend_from_slice(&channel.to_be_bytes());
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v.push(end);
        v
    }

    #[test]
    fn decodes_a_frame_split_at_every_offset() {
        let mut stream = frame_bytes(FRAME_BODY, 3, b"hello", FRAME_END);
        stream.extend(frame_bytes(FRAME_HEARTBEAT, 0, b"", FRAME_END));
        for split in 0..=stream.len() {
            let mut buf = BytesMut::new();
            let mut frames = Vec::new();
            for part in [&stream[..split], &stream[split..]] {
                buf.extend_from_slice(part);
                while let Some(f) = decode_frame(&mut buf, 4096).unwrap() {
                    frames.push(f);
                }
            }
            assert_eq!(frames.len(), 2, "split at {split}");
            assert_eq!(frames[0].payload.as_ref(), b"hello");
            assert_eq!(frames[0].channel, 3);
            assert_eq!(frames[1].kind, FrameKind::Heartbeat);
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn rejects_bad_end_octet_oversize_and_unknown_type() {
        let mut buf = BytesMut::from(&frame_bytes(FRAME_BODY, 1, b"x", 0xAB)[..]);
        assert_eq!(
            decode_frame(&mut buf, 4096).unwrap_err().code,
            crate::ReplyCode::FrameError
        );
        let mut buf = BytesMut::from(&frame_bytes(FRAME_BODY, 1, &[0; 5000], FRAME_END)[..]);
        assert!(decode_frame(&mut buf, 4096).is_err());
        // Oversize is detected from the header alone, before the payload arrives.
        let mut buf = BytesMut::from(&frame_bytes(FRAME_BODY, 1, &[0; 5000], FRAME_END)[..7]);
        assert!(decode_frame(&mut buf, 4096).is_err());
        let mut buf = BytesMut::from(&frame_bytes(9, 1, b"", FRAME_END)[..]);
        assert!(decode_frame(&mut buf, 4096).is_err());
    }

    /// Seen while writing the `frame` fuzz target (without a sanitizer libFuzzer does not see
    /// allocations): with no `frame_max`, a header announcing 4 GiB made the decoder reserve
    /// 4 GiB for the frame before a byte of it arrived.
    #[test]
    fn an_announced_size_is_not_reserved_beyond_the_cap() {
        let mut buf = BytesMut::from(&[FRAME_BODY, 0, 1, 0xff, 0xff, 0xff, 0xff][..]);
        assert_eq!(decode_frame(&mut buf, 0), Ok(None));
        assert!(buf.capacity() <= FRAME_HEADER_SIZE + FRAME_RESERVE_BYTES_MAX);
    }
}
