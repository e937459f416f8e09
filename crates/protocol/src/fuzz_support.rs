//! The checks the fuzz targets in `fuzz/` run on each input, shared with the stable-Rust
//! replay test (`tests/fuzz_regressions.rs`) that feeds them every saved crash and corpus file.
//! Each function takes arbitrary bytes and panics when the codec breaks one of its promises:
//! never panic on hostile input, and agree with `amq-protocol` wherever both decode.
//!
//! Not part of the codec's API: nothing in the broker calls these.

use amq_protocol::protocol::basic::AMQPMethod as BasicMethod;
use amq_protocol::protocol::AMQPClass;
use amq_protocol::types::parsing::parse_field_table;
use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::{Bytes, BytesMut};

use crate::content::{parse_header, Assembled, ContentAssembler};
use crate::frame::{
    decode_frame, Frame, FRAME_END, FRAME_HEADER_SIZE, FRAME_OVERHEAD, FRAME_RESERVE_BYTES_MAX,
};
use crate::method::{decode_method, decode_publish};
use crate::table::{check_table, FIELD_TABLE_DEPTH_MAX};

/// Inputs up to this long are split at every offset; longer ones at `SPLIT_SAMPLES` offsets
/// (every offset would cost O(n²) and starve the fuzzer of executions).
pub const SPLIT_EVERY_OFFSET_MAX: usize = 256;
/// Split offsets tried on inputs longer than `SPLIT_EVERY_OFFSET_MAX`.
pub const SPLIT_SAMPLES: usize = 64;
/// The `frame_max` values a frame input may select with its first byte: the spec's "no limit"
/// (only during the handshake), the spec minimum, and common negotiated values.
pub const FRAME_MAX_CHOICES: [u32; 4] = [0, 4096, 131_072, 1024 * 1024];
/// The largest body the content target lets a header announce, like the broker's message
/// size limit: the assembler allocates the announced size once the second body frame arrives.
pub const CONTENT_BODY_BYTES_MAX: u64 = 1024 * 1024;

/// What decoding a stream gave: the frames, then how it stopped.
#[derive(Debug, PartialEq)]
struct Decoded {
    frames: Vec<Frame>,
    /// The error's reply code and text, or None when the stream ended needing more bytes.
    error: Option<(u16, String)>,
    /// Bytes left undecoded.
    rest: Vec<u8>,
}

fn decode_parts(parts: &[&[u8]], frame_max: u32) -> Decoded {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let total: usize = parts.iter().map(|part| part.len()).sum();
    for (index, part) in parts.iter().enumerate() {
        buf.extend_from_slice(part);
        loop {
            match decode_frame(&mut buf, frame_max) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => {
                    let bound = 2 * (total + FRAME_HEADER_SIZE + FRAME_RESERVE_BYTES_MAX);
                    assert!(buf.capacity() <= bound, "reserved what the peer announced");
                    break;
                }
                Err(e) => {
                    let mut rest = buf.to_vec();
                    let unread = parts.iter().skip(index + 1);
                    unread.for_each(|part| rest.extend_from_slice(part));
                    return Decoded {
                        frames,
                        error: Some((e.code.code(), e.text)),
                        rest,
                    };
                }
            }
        }
    }
    Decoded {
        frames,
        error: None,
        rest: buf.to_vec(),
    }
}

/// Target `frame`: the first byte picks `frame_max`, the rest is a byte stream. Decoding it
/// whole, split in two at every offset (nats-server's parser test), or one byte at a time
/// must give the same frames and the same end; the frames must re-encode to the input.
pub fn frame(data: &[u8]) {
    let Some((&choice, stream)) = data.split_first() else {
        return;
    };
    let frame_max = FRAME_MAX_CHOICES[choice as usize % FRAME_MAX_CHOICES.len()];
    let whole = decode_parts(&[stream], frame_max);
    let mut encoded = Vec::new();
    for frame in &whole.frames {
        assert!(frame_max == 0 || frame.payload.len() + FRAME_OVERHEAD <= frame_max as usize);
        let kind = match frame.kind {
            crate::FrameKind::Method => crate::frame::FRAME_METHOD,
            crate::FrameKind::Header => crate::frame::FRAME_HEADER,
            crate::FrameKind::Body => crate::frame::FRAME_BODY,
            crate::FrameKind::Heartbeat => crate::frame::FRAME_HEARTBEAT,
        };
        encoded.push(kind);
        encoded.extend_from_slice(&frame.channel.to_be_bytes());
        encoded.extend_from_slice(&(frame.payload.len() as u32).to_be_bytes());
        encoded.extend_from_slice(&frame.payload);
        encoded.push(FRAME_END);
    }
    assert_eq!(&stream[..encoded.len()], &encoded[..], "frames re-encode");
    assert_eq!(&stream[encoded.len()..], &whole.rest[..], "nothing lost");
    let offsets: Vec<usize> = if stream.len() <= SPLIT_EVERY_OFFSET_MAX {
        (0..=stream.len()).collect()
    } else {
        (0..SPLIT_SAMPLES)
            .map(|i| i * stream.len() / SPLIT_SAMPLES)
            .collect()
    };
    for split in offsets {
        let (a, b) = stream.split_at(split);
        assert_eq!(decode_parts(&[a, b], frame_max), whole, "split at {split}");
    }
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(decode_parts(&bytes, frame_max), whole, "one byte at a time");
}

/// Target `method`: a method frame's payload. Whatever decodes must re-encode and decode to
/// the same method; the hand-written basic.publish decoder must agree with the generated one.
pub fn method(payload: &[u8]) {
    let decoded = decode_method(payload);
    let publish = decode_publish(payload);
    if let Some(publish) = &publish {
        match &decoded {
            Ok(m) => assert_eq!(
                m.class,
                AMQPClass::Basic(BasicMethod::Publish(publish.clone()))
            ),
            Err(e) => panic!("decode_publish accepted what decode_method refused: {e:?}"),
        }
    }
    let Ok(method) = decoded else {
        return;
    };
    if let AMQPClass::Basic(BasicMethod::Publish(p)) = &method.class {
        assert_eq!(publish.as_ref(), Some(p), "decode_publish missed a publish");
    }
    let encoded = encode_method(method.class);
    let again = decode_method(&encoded)
        .unwrap_or_else(|e| panic!("re-encoded method does not decode: {e:?}"));
    // Compared as bytes: a NaN in a table is not equal to itself.
    assert_eq!(encode_method(again.class), encoded);
}

/// A method's payload as `amq-protocol` encodes it.
fn encode_method(class: AMQPClass) -> Vec<u8> {
    let mut out = BytesMut::new();
    crate::encode::method(&mut out, 1, class);
    assert!(out.len() >= FRAME_OVERHEAD, "a decoded method re-encodes");
    out[crate::frame::FRAME_HEADER_SIZE..out.len() - 1].to_vec()
}

/// Target `content`: a sequence of pseudo-frames `kind u8, len u16 (big-endian), payload`
/// fed to one channel's assembler as the connection would: kind % 4 is a content-bearing
/// method, a content header, a body frame, or the channel closing. A completed message must
/// carry exactly the announced body; a parsed header must re-encode to the same properties.
pub fn content(data: &[u8]) {
    let mut assembler = ContentAssembler::<u64>::default();
    let mut methods = 0u64;
    let mut rest = data;
    while rest.len() >= 3 {
        let kind = rest[0] % 4;
        let len = (u16::from_be_bytes([rest[1], rest[2]]) as usize).min(rest.len() - 3);
        let payload = Bytes::copy_from_slice(&rest[3..3 + len]);
        rest = &rest[3 + len..];
        let fed = match kind {
            0 if assembler.is_idle() => {
                methods += 1;
                assembler.start(methods);
                continue;
            }
            0 => {
                _ = assembler.unexpected_method();
                assembler.reset();
                continue;
            }
            1 => match parse_header(payload.clone()) {
                Ok(header) => {
                    check_parsed_header(&payload, &header);
                    assembler.header(header, |size| match size <= CONTENT_BODY_BYTES_MAX {
                        true => Ok(()),
                        false => Err(crate::ProtocolError::frame_error("too large")),
                    })
                }
                Err(_) => {
                    assembler.reset();
                    continue;
                }
            },
            2 => assembler.body(payload),
            _ => {
                assembler.reset();
                continue;
            }
        };
        match fed {
            Ok(Assembled::Pending) => assert!(!assembler.is_idle()),
            Ok(Assembled::Complete(method, header, body)) => {
                assert_eq!(method, methods, "the message carries its own method");
                assert_eq!(body.len() as u64, header.body_size);
                assert!(assembler.is_idle());
            }
            // The broker closes the connection; here the channel starts over.
            Err(_) => assembler.reset(),
        }
    }
}

fn check_parsed_header(payload: &Bytes, header: &crate::content::ContentHeader) {
    assert_eq!(&header.raw, payload, "the raw header is kept as received");
    assert_eq!(
        payload
            .get(4..12)
            .map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default())),
        Some(header.body_size)
    );
    let encoded = crate::encode::header_payload(&header.properties, header.body_size);
    let again = parse_header(encoded.clone())
        .unwrap_or_else(|e| panic!("re-encoded properties do not parse: {e:?}"));
    // Compared as bytes: a NaN in the headers table is not equal to itself.
    let twice = crate::encode::header_payload(&again.properties, again.body_size);
    assert_eq!(twice, encoded);
}

/// Target `table`: an encoded field table. Whenever the depth pre-check accepts, the
/// recursive parser must accept too and consume the same bytes; the depth limit must hold, and
/// the pre-check's depth and value count (used to charge memory) must not be below what the
/// parser built (they may be above: a repeated key keeps only its last value). When the pre-check refuses, the parser is not
/// called (that is the pre-check's purpose: a deep table would overflow its stack).
pub fn table(data: &[u8]) {
    let Ok((shape, used)) = check_table(data) else {
        return;
    };
    assert!(shape.depth <= FIELD_TABLE_DEPTH_MAX);
    let (rest, parsed) = parse_field_table(data)
        .unwrap_or_else(|e| panic!("check_table accepted what the parser refused: {e}"));
    assert_eq!(data.len() - rest.len(), used, "same bytes consumed");
    let (values, depth) = table_shape(&parsed, 1);
    assert!(values <= shape.values && depth <= shape.depth, "{shape:?}");
}

fn table_shape(table: &FieldTable, depth: usize) -> (usize, usize) {
    table
        .inner()
        .values()
        .map(|v| value_shape(v, depth))
        .fold((0, depth), |(n, d), (vn, vd)| (n + vn, d.max(vd)))
}

fn value_shape(value: &AMQPValue, depth: usize) -> (usize, usize) {
    let (n, d) = match value {
        AMQPValue::FieldTable(t) => table_shape(t, depth + 1),
        AMQPValue::FieldArray(a) => a
            .as_slice()
            .iter()
            .map(|v| value_shape(v, depth + 1))
            .fold((0, depth + 1), |(n, d), (vn, vd)| (n + vn, d.max(vd))),
        _ => return (1, depth),
    };
    (n + 1, d)
}
