//! Writing frames into an output buffer. Methods go through `amq-protocol`'s generated
//! encoder; the frames on the delivery path (basic.deliver, content header, body, confirms)
//! are written by hand because they are per-message and must not allocate.

use amq_protocol::frame::{gen_frame, AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::protocol::AMQPClass;
use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::{
    FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEADER_SIZE, FRAME_HEARTBEAT, FRAME_METHOD,
    FRAME_OVERHEAD,
};

/// Appends a method frame.
pub fn method(out: &mut BytesMut, channel: u16, class: AMQPClass) {
    let frame = AMQPFrame::Method(channel, class);
    // Generated encoding of a well-formed method into a Vec cannot fail; if it ever did, the
    // frame is dropped rather than sending half of one.
    if let Ok(bytes) = cookie_gen(&frame) {
        out.extend_from_slice(&bytes);
    }
}

fn cookie_gen(frame: &AMQPFrame) -> Result<Vec<u8>, amq_protocol::frame::GenError> {
    cookie_factory::gen_simple(gen_frame(frame), Vec::new())
}

/// Encodes a content header payload (class, weight, size, properties) from parsed
/// properties: used when the broker changes a message's properties (e.g. strips `BCC`).
pub fn header_payload(properties: &AMQPProperties, body_size: u64) -> Bytes {
    let frame = AMQPFrame::Header(
        0,
        AMQPContentHeader {
            class_id: 60,
            body_size,
            properties: properties.clone(),
        },
    );
    match cookie_gen(&frame) {
        Ok(bytes) if bytes.len() > FRAME_OVERHEAD => {
            Bytes::copy_from_slice(&bytes[FRAME_HEADER_SIZE..bytes.len() - 1])
        }
        _ => Bytes::new(),
    }
}

/// Appends a heartbeat frame.
pub fn heartbeat(out: &mut BytesMut) {
    out.put_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

fn frame_start(out: &mut BytesMut, kind: u8, channel: u16, size: usize) {
    out.put_u8(kind);
    out.put_u16(channel);
    out.put_u32(size as u32);
}

fn short_str_len(s: &str) -> usize {
    s.len().min(255)
}

fn put_short_str(out: &mut BytesMut, s: &str) {
    let len = short_str_len(s);
    out.put_u8(len as u8);
    out.put_slice(&s.as_bytes()[..len]);
}

/// basic.deliver (60.60).
pub fn deliver(
    out: &mut BytesMut,
    channel: u16,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
) {
    let size = 4
        + 1
        + short_str_len(consumer_tag)
        + 8
        + 1
        + 1
        + short_str_len(exchange)
        + 1
        + short_str_len(routing_key);
    frame_start(out, FRAME_METHOD, channel, size);
    out.put_u16(60);
    out.put_u16(60);
    put_short_str(out, consumer_tag);
    out.put_u64(delivery_tag);
    out.put_u8(redelivered as u8);
    put_short_str(out, exchange);
    put_short_str(out, routing_key);
    out.put_u8(FRAME_END);
}

/// basic.get-ok (60.71).
pub fn get_ok(
    out: &mut BytesMut,
    channel: u16,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
    message_count: u32,
) {
    let size = 4 + 8 + 1 + 1 + short_str_len(exchange) + 1 + short_str_len(routing_key) + 4;
    frame_start(out, FRAME_METHOD, channel, size);
    out.put_u16(60);
    out.put_u16(71);
    out.put_u64(delivery_tag);
    out.put_u8(redelivered as u8);
    put_short_str(out, exchange);
    put_short_str(out, routing_key);
    out.put_u32(message_count);
    out.put_u8(FRAME_END);
}

/// basic.ack (60.80) or basic.nack (60.120) from the broker, for publisher confirms.
pub fn confirm(out: &mut BytesMut, channel: u16, delivery_tag: u64, multiple: bool, ack: bool) {
    frame_start(out, FRAME_METHOD, channel, 4 + 8 + 1);
    out.put_u16(60);
    out.put_u16(if ack { 80 } else { 120 });
    out.put_u64(delivery_tag);
    // nack's bits are multiple (bit 0) and requeue (bit 1); requeue is meaningless here.
    out.put_u8(multiple as u8);
    out.put_u8(FRAME_END);
}

/// A content header frame from a header payload as received (class, weight, size, properties).
pub fn content_header_raw(out: &mut BytesMut, channel: u16, payload: &[u8]) {
    frame_start(out, FRAME_HEADER, channel, payload.len());
    out.put_slice(payload);
    out.put_u8(FRAME_END);
}

/// The body in frames no larger than `frame_max` (including frame overhead).
pub fn body(out: &mut BytesMut, channel: u16, body: &[u8], frame_max: u32) {
    let chunk_max = (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1);
    for chunk in body.chunks(chunk_max) {
        frame_start(out, FRAME_BODY, channel, chunk.len());
        out.put_slice(chunk);
        out.put_u8(FRAME_END);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::basic;

    fn generated(channel: u16, class: AMQPClass) -> Vec<u8> {
        let mut out = BytesMut::new();
        method(&mut out, channel, class);
        out.to_vec()
    }

    #[test]
    fn hand_written_frames_match_the_generated_encoder() {
        let mut out = BytesMut::new();
        deliver(&mut out, 7, "ctag", 42, true, "ex", "rk");
        let want = generated(
            7,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: "ctag".into(),
                delivery_tag: 42,
                redelivered: true,
                exchange: "ex".into(),
                routing_key: "rk".into(),
            })),
        );
        assert_eq!(out.to_vec(), want);

        let mut out = BytesMut::new();
        get_ok(&mut out, 1, 9, false, "", "q", 3);
        let want = generated(
            1,
            AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                delivery_tag: 9,
                redelivered: false,
                exchange: "".into(),
                routing_key: "q".into(),
                message_count: 3,
            })),
        );
        assert_eq!(out.to_vec(), want);

        let mut out = BytesMut::new();
        confirm(&mut out, 2, 5, true, false);
        let want = generated(
            2,
            AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: 5,
                multiple: true,
                requeue: false,
            })),
        );
        assert_eq!(out.to_vec(), want);
    }

    #[test]
    fn body_is_split_at_frame_max() {
        let mut out = BytesMut::new();
        let data = vec![7u8; 10_000];
        body(&mut out, 1, &data, 4096);
        // 4088 + 4088 + 1824 bytes of payload in three frames.
        assert_eq!(out.len(), 10_000 + 3 * FRAME_OVERHEAD);
        let mut buf = out;
        let mut total = 0;
        while let Some(f) = crate::frame::decode_frame(&mut buf, 4096).unwrap() {
            assert!(f.payload.len() <= 4088);
            total += f.payload.len();
        }
        assert_eq!(total, 10_000);
    }

    #[test]
    fn header_payload_round_trips_through_the_parser() {
        let props = AMQPProperties::default()
            .with_content_type("text/plain".into())
            .with_priority(3);
        let raw = header_payload(&props, 12);
        let parsed = crate::content::parse_header(raw).unwrap();
        assert_eq!(parsed.body_size, 12);
        assert_eq!(*parsed.properties, props);
    }
}
