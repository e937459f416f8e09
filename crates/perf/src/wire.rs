//! The AMQP 0-9-1 wire format as far as a load tool needs it: frame splitting over a byte
//! slice (no allocation, no copy), encoders for the client methods it sends, and a decoder for
//! the server methods it reads. It owns no socket; `client` does the I/O.
//!
//! Hand-written rather than generated because the hot paths (publish, deliver, ack) must not
//! allocate per message, and the rest is a dozen small methods.

use bytes::{Buf, BufMut};

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;
/// Type (1) + channel (2) + size (4).
pub const FRAME_HEADER_BYTES: usize = 7;
/// Header plus the end octet: what a frame costs beyond its payload.
pub const FRAME_OVERHEAD_BYTES: usize = FRAME_HEADER_BYTES + 1;
/// The largest frame this tool asks for; also its bound on frames it accepts.
pub const FRAME_MAX_BYTES: u32 = 131_072;
/// The spec's minimum frame_max; a server offering less is refused.
pub const FRAME_MIN_BYTES: u32 = 4096;

pub const CLASS_CONNECTION: u16 = 10;
pub const CLASS_CHANNEL: u16 = 20;
pub const CLASS_EXCHANGE: u16 = 40;
pub const CLASS_QUEUE: u16 = 50;
pub const CLASS_BASIC: u16 = 60;
pub const CLASS_CONFIRM: u16 = 85;

pub const DELIVERY_MODE_TRANSIENT: u8 = 1;
pub const DELIVERY_MODE_PERSISTENT: u8 = 2;
/// The delivery-mode bit of basic's property flags.
const PROPERTY_DELIVERY_MODE: u16 = 0x1000;
const PROPERTY_HEADERS: u16 = 0x2000;
/// Digits of a message's group id (`--message-groups`), written in place per message.
pub const GROUP_DIGITS: usize = 8;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {0} bytes exceeds frame_max")]
    FrameTooLarge(u32),
    #[error("frame does not end with 0xCE")]
    BadFrameEnd,
    #[error("truncated {0}")]
    Truncated(&'static str),
    #[error("server sent protocol header {0:?}: it does not speak AMQP 0-9-1")]
    ProtocolHeader(Vec<u8>),
}

/// One frame borrowed from the read buffer.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub kind: u8,
    pub channel: u16,
    pub payload: &'a [u8],
}

/// Splits one frame off the front of `buf`. `Ok(None)` means more bytes are needed; on
/// success returns the frame and how many bytes it used.
pub fn parse_frame(buf: &[u8], frame_max: u32) -> Result<Option<(Frame<'_>, usize)>, WireError> {
    if buf.len() < FRAME_HEADER_BYTES {
        return Ok(None);
    }
    if buf.starts_with(b"AMQP") {
        return Err(WireError::ProtocolHeader(buf[..buf.len().min(8)].to_vec()));
    }
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);
    if size > frame_max {
        return Err(WireError::FrameTooLarge(size));
    }
    let total = FRAME_OVERHEAD_BYTES + size as usize;
    if buf.len() < total {
        return Ok(None);
    }
    if buf[total - 1] != FRAME_END {
        return Err(WireError::BadFrameEnd);
    }
    let frame = Frame {
        kind: buf[0],
        channel: u16::from_be_bytes([buf[1], buf[2]]),
        payload: &buf[FRAME_HEADER_BYTES..total - 1],
    };
    Ok(Some((frame, total)))
}

/// The body size announced by a content header frame's payload.
pub fn content_body_size(payload: &[u8]) -> Result<u64, WireError> {
    if payload.len() < 12 {
        return Err(WireError::Truncated("content header"));
    }
    Ok(u64::from_be_bytes(
        payload[4..12].try_into().expect("8 bytes"),
    ))
}

// ---------------------------------------------------------------------------------------
// Encoding

/// A field-table value as the tool sends them (queue arguments, client properties).
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Bool(bool),
    Long(i64),
    Str(String),
    Table(Vec<(String, FieldValue)>),
}

impl FieldValue {
    /// `10` → long, `true`/`false` → bool, anything else → string: how `--queue-args`
    /// values are typed (RabbitMQ wants numbers for x-max-length, x-message-ttl and kin).
    pub fn infer(text: &str) -> FieldValue {
        if let Ok(n) = text.parse::<i64>() {
            FieldValue::Long(n)
        } else if text == "true" || text == "false" {
            FieldValue::Bool(text == "true")
        } else {
            FieldValue::Str(text.to_string())
        }
    }
}

pub fn put_shortstr(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let len = bytes.len().min(255);
    buf.put_u8(len as u8);
    buf.extend_from_slice(&bytes[..len]);
}

pub fn put_longstr(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.put_u32(bytes.len() as u32);
    buf.extend_from_slice(bytes);
}

pub fn put_table(buf: &mut Vec<u8>, table: &[(String, FieldValue)]) {
    let at = buf.len();
    buf.put_u32(0);
    for (key, value) in table {
        put_shortstr(buf, key);
        match value {
            FieldValue::Bool(b) => {
                buf.put_u8(b't');
                buf.put_u8(u8::from(*b));
            }
            FieldValue::Long(n) => {
                buf.put_u8(b'l');
                buf.put_i64(*n);
            }
            FieldValue::Str(s) => {
                buf.put_u8(b'S');
                put_longstr(buf, s.as_bytes());
            }
            FieldValue::Table(t) => {
                buf.put_u8(b'F');
                put_table(buf, t);
            }
        }
    }
    let len = (buf.len() - at - 4) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends one method frame; `args` writes the arguments after class and method ids.
pub fn put_method(
    buf: &mut Vec<u8>,
    channel: u16,
    class: u16,
    method: u16,
    args: impl FnOnce(&mut Vec<u8>),
) {
    buf.put_u8(FRAME_METHOD);
    buf.put_u16(channel);
    let at = buf.len();
    buf.put_u32(0);
    buf.put_u16(class);
    buf.put_u16(method);
    args(buf);
    let size = (buf.len() - at - 4) as u32;
    buf[at..at + 4].copy_from_slice(&size.to_be_bytes());
    buf.put_u8(FRAME_END);
}

/// The client methods the tool sends, encoded by [`Method::encode`].
#[derive(Debug, Clone)]
pub enum Method<'a> {
    StartOk {
        user: &'a str,
        password: &'a str,
        connection_name: &'a str,
    },
    TuneOk {
        channel_max: u16,
        frame_max: u32,
        heartbeat_secs: u16,
    },
    ConnectionOpen {
        vhost: &'a str,
    },
    ConnectionClose,
    ConnectionCloseOk,
    ChannelOpen,
    ChannelCloseOk,
    ExchangeDeclare {
        name: &'a str,
        kind: &'a str,
        durable: bool,
    },
    ExchangeDelete {
        name: &'a str,
    },
    QueueDeclare {
        name: &'a str,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: &'a [(String, FieldValue)],
    },
    QueueBind {
        queue: &'a str,
        exchange: &'a str,
        routing_key: &'a str,
    },
    QueueUnbind {
        queue: &'a str,
        exchange: &'a str,
        routing_key: &'a str,
    },
    QueueDelete {
        name: &'a str,
    },
    BasicQos {
        prefetch_count: u16,
    },
    BasicConsume {
        queue: &'a str,
        consumer_tag: &'a str,
        no_ack: bool,
    },
    BasicCancel {
        consumer_tag: &'a str,
    },
    BasicAck {
        delivery_tag: u64,
        multiple: bool,
    },
    ConfirmSelect,
}

impl Method<'_> {
    pub fn encode(&self, buf: &mut Vec<u8>, channel: u16) {
        use Method::*;
        match self {
            StartOk {
                user,
                password,
                connection_name,
            } => put_method(buf, channel, CLASS_CONNECTION, 11, |b| {
                put_table(b, &client_properties(connection_name));
                put_shortstr(b, "PLAIN");
                let mut response = Vec::with_capacity(user.len() + password.len() + 2);
                response.push(0);
                response.extend_from_slice(user.as_bytes());
                response.push(0);
                response.extend_from_slice(password.as_bytes());
                put_longstr(b, &response);
                put_shortstr(b, "en_US");
            }),
            TuneOk {
                channel_max,
                frame_max,
                heartbeat_secs,
            } => put_method(buf, channel, CLASS_CONNECTION, 31, |b| {
                b.put_u16(*channel_max);
                b.put_u32(*frame_max);
                b.put_u16(*heartbeat_secs);
            }),
            ConnectionOpen { vhost } => put_method(buf, channel, CLASS_CONNECTION, 40, |b| {
                put_shortstr(b, vhost);
                put_shortstr(b, "");
                b.put_u8(0);
            }),
            ConnectionClose => put_method(buf, channel, CLASS_CONNECTION, 50, |b| {
                b.put_u16(200);
                put_shortstr(b, "Goodbye");
                b.put_u16(0);
                b.put_u16(0);
            }),
            ConnectionCloseOk => put_method(buf, channel, CLASS_CONNECTION, 51, |_| {}),
            ChannelOpen => put_method(buf, channel, CLASS_CHANNEL, 10, |b| put_shortstr(b, "")),
            ChannelCloseOk => put_method(buf, channel, CLASS_CHANNEL, 41, |_| {}),
            ExchangeDeclare {
                name,
                kind,
                durable,
            } => put_method(buf, channel, CLASS_EXCHANGE, 10, |b| {
                b.put_u16(0);
                put_shortstr(b, name);
                put_shortstr(b, kind);
                b.put_u8(if *durable { 2 } else { 0 });
                put_table(b, &[]);
            }),
            ExchangeDelete { name } => put_method(buf, channel, CLASS_EXCHANGE, 20, |b| {
                b.put_u16(0);
                put_shortstr(b, name);
                b.put_u8(0);
            }),
            QueueDeclare {
                name,
                durable,
                exclusive,
                auto_delete,
                arguments,
            } => put_method(buf, channel, CLASS_QUEUE, 10, |b| {
                b.put_u16(0);
                put_shortstr(b, name);
                let bits = (u8::from(*durable) << 1)
                    | (u8::from(*exclusive) << 2)
                    | (u8::from(*auto_delete) << 3);
                b.put_u8(bits);
                put_table(b, arguments);
            }),
            QueueBind {
                queue,
                exchange,
                routing_key,
            } => put_method(buf, channel, CLASS_QUEUE, 20, |b| {
                b.put_u16(0);
                put_shortstr(b, queue);
                put_shortstr(b, exchange);
                put_shortstr(b, routing_key);
                b.put_u8(0);
                put_table(b, &[]);
            }),
            QueueUnbind {
                queue,
                exchange,
                routing_key,
            } => put_method(buf, channel, CLASS_QUEUE, 50, |b| {
                b.put_u16(0);
                put_shortstr(b, queue);
                put_shortstr(b, exchange);
                put_shortstr(b, routing_key);
                put_table(b, &[]);
            }),
            QueueDelete { name } => put_method(buf, channel, CLASS_QUEUE, 40, |b| {
                b.put_u16(0);
                put_shortstr(b, name);
                b.put_u8(0);
            }),
            BasicQos { prefetch_count } => put_method(buf, channel, CLASS_BASIC, 10, |b| {
                b.put_u32(0);
                b.put_u16(*prefetch_count);
                b.put_u8(0);
            }),
            BasicConsume {
                queue,
                consumer_tag,
                no_ack,
            } => put_method(buf, channel, CLASS_BASIC, 20, |b| {
                b.put_u16(0);
                put_shortstr(b, queue);
                put_shortstr(b, consumer_tag);
                b.put_u8(u8::from(*no_ack) << 1);
                put_table(b, &[]);
            }),
            BasicCancel { consumer_tag } => put_method(buf, channel, CLASS_BASIC, 30, |b| {
                put_shortstr(b, consumer_tag);
                b.put_u8(0);
            }),
            BasicAck {
                delivery_tag,
                multiple,
            } => put_method(buf, channel, CLASS_BASIC, 80, |b| {
                b.put_u64(*delivery_tag);
                b.put_u8(u8::from(*multiple));
            }),
            ConfirmSelect => put_method(buf, channel, CLASS_CONFIRM, 10, |b| b.put_u8(0)),
        }
    }
}

fn client_properties(connection_name: &str) -> Vec<(String, FieldValue)> {
    let capabilities = vec![
        ("publisher_confirms".to_string(), FieldValue::Bool(true)),
        ("consumer_cancel_notify".to_string(), FieldValue::Bool(true)),
        ("basic.nack".to_string(), FieldValue::Bool(true)),
    ];
    vec![
        ("product".into(), FieldValue::Str("warren-perf".into())),
        (
            "version".into(),
            FieldValue::Str(env!("CARGO_PKG_VERSION").into()),
        ),
        (
            "connection_name".into(),
            FieldValue::Str(connection_name.into()),
        ),
        ("capabilities".into(), FieldValue::Table(capabilities)),
    ]
}

/// Bytes of one published message, built once per producer and copied per message: the
/// basic.publish method frame, the content header and the body frame(s). Only the payload's
/// first bytes (see `payload`) change between messages; they sit at `stamp_offset`.
#[derive(Debug, Clone)]
pub struct PublishTemplate {
    pub bytes: Vec<u8>,
    pub stamp_offset: usize,
    /// Where the `GROUP_DIGITS` ASCII digits of the group header's value sit, if any.
    pub group_offset: Option<usize>,
}

impl PublishTemplate {
    pub fn new(
        channel: u16,
        exchange: &str,
        routing_key: &str,
        body_bytes: usize,
        persistent: bool,
        group_header: Option<&str>,
        frame_max: u32,
    ) -> PublishTemplate {
        let mut bytes = Vec::with_capacity(body_bytes + 128);
        put_method(&mut bytes, channel, CLASS_BASIC, 40, |b| {
            b.put_u16(0);
            put_shortstr(b, exchange);
            put_shortstr(b, routing_key);
            b.put_u8(0);
        });
        bytes.put_u8(FRAME_HEADER);
        bytes.put_u16(channel);
        // The headers table (if any): name, 'S', long string of GROUP_DIGITS digits.
        let table_len = group_header.map_or(0, |name| 1 + name.len() + 1 + 4 + GROUP_DIGITS);
        let headers_len = if group_header.is_some() {
            4 + table_len
        } else {
            0
        };
        bytes.put_u32((15 + headers_len) as u32);
        bytes.put_u16(CLASS_BASIC);
        bytes.put_u16(0);
        bytes.put_u64(body_bytes as u64);
        let mut group_offset = None;
        match group_header {
            Some(name) => {
                bytes.put_u16(PROPERTY_HEADERS | PROPERTY_DELIVERY_MODE);
                bytes.put_u32(table_len as u32);
                put_shortstr(&mut bytes, name);
                bytes.put_u8(b'S');
                bytes.put_u32(GROUP_DIGITS as u32);
                group_offset = Some(bytes.len());
                bytes.resize(bytes.len() + GROUP_DIGITS, b'0');
            }
            None => bytes.put_u16(PROPERTY_DELIVERY_MODE),
        }
        bytes.put_u8(if persistent {
            DELIVERY_MODE_PERSISTENT
        } else {
            DELIVERY_MODE_TRANSIENT
        });
        bytes.put_u8(FRAME_END);
        let chunk_max = frame_max as usize - FRAME_OVERHEAD_BYTES;
        let mut stamp_offset = 0;
        let mut left = body_bytes;
        while left > 0 {
            let chunk = left.min(chunk_max);
            bytes.put_u8(FRAME_BODY);
            bytes.put_u16(channel);
            bytes.put_u32(chunk as u32);
            if stamp_offset == 0 {
                stamp_offset = bytes.len();
            }
            bytes.resize(bytes.len() + chunk, 0);
            bytes.put_u8(FRAME_END);
            left -= chunk;
        }
        PublishTemplate {
            bytes,
            stamp_offset,
            group_offset,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Decoding

/// A server method, decoded from a method frame's payload. Strings borrow from the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMethod<'a> {
    ConnectionStart,
    ConnectionTune {
        channel_max: u16,
        frame_max: u32,
    },
    ConnectionOpenOk,
    ConnectionClose {
        code: u16,
        text: &'a str,
    },
    ConnectionCloseOk,
    ConnectionBlocked,
    ConnectionUnblocked,
    ChannelOpenOk,
    ChannelClose {
        code: u16,
        text: &'a str,
    },
    ChannelCloseOk,
    ExchangeDeclareOk,
    ExchangeDeleteOk,
    QueueDeclareOk {
        name: &'a str,
        messages: u32,
        consumers: u32,
    },
    QueueBindOk,
    QueueUnbindOk,
    QueueDeleteOk {
        messages: u32,
    },
    BasicQosOk,
    BasicConsumeOk,
    BasicCancelOk,
    /// The server cancelled a consumer (queue deleted and the like).
    BasicCancel,
    BasicDeliver {
        delivery_tag: u64,
    },
    BasicReturn {
        code: u16,
    },
    BasicAck {
        delivery_tag: u64,
        multiple: bool,
    },
    BasicNack {
        delivery_tag: u64,
        multiple: bool,
    },
    ConfirmSelectOk,
    Other {
        class: u16,
        method: u16,
    },
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn need(&self, n: usize) -> Result<(), WireError> {
        if self.buf.len() < n {
            Err(WireError::Truncated("method arguments"))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        self.need(8)?;
        Ok(self.buf.get_u64())
    }
    fn shortstr(&mut self) -> Result<&'a str, WireError> {
        let len = self.u8()? as usize;
        self.need(len)?;
        let (s, rest) = self.buf.split_at(len);
        self.buf = rest;
        // Names are UTF-8 per RabbitMQ; a server sending otherwise gets a placeholder, not an error.
        Ok(std::str::from_utf8(s).unwrap_or("<non-utf8>"))
    }
}

impl<'a> ServerMethod<'a> {
    pub fn decode(payload: &'a [u8]) -> Result<ServerMethod<'a>, WireError> {
        let mut r = Reader { buf: payload };
        let class = r.u16()?;
        let method = r.u16()?;
        use ServerMethod::*;
        Ok(match (class, method) {
            (CLASS_CONNECTION, 10) => ConnectionStart,
            (CLASS_CONNECTION, 30) => ConnectionTune {
                channel_max: r.u16()?,
                frame_max: r.u32()?,
            },
            (CLASS_CONNECTION, 41) => ConnectionOpenOk,
            (CLASS_CONNECTION, 50) => ConnectionClose {
                code: r.u16()?,
                text: r.shortstr()?,
            },
            (CLASS_CONNECTION, 51) => ConnectionCloseOk,
            (CLASS_CONNECTION, 60) => ConnectionBlocked,
            (CLASS_CONNECTION, 61) => ConnectionUnblocked,
            (CLASS_CHANNEL, 11) => ChannelOpenOk,
            (CLASS_CHANNEL, 40) => ChannelClose {
                code: r.u16()?,
                text: r.shortstr()?,
            },
            (CLASS_CHANNEL, 41) => ChannelCloseOk,
            (CLASS_EXCHANGE, 11) => ExchangeDeclareOk,
            (CLASS_EXCHANGE, 21) => ExchangeDeleteOk,
            (CLASS_QUEUE, 11) => QueueDeclareOk {
                name: r.shortstr()?,
                messages: r.u32()?,
                consumers: r.u32()?,
            },
            (CLASS_QUEUE, 21) => QueueBindOk,
            (CLASS_QUEUE, 51) => QueueUnbindOk,
            (CLASS_QUEUE, 41) => QueueDeleteOk { messages: r.u32()? },
            (CLASS_BASIC, 11) => BasicQosOk,
            (CLASS_BASIC, 21) => BasicConsumeOk,
            (CLASS_BASIC, 31) => BasicCancelOk,
            (CLASS_BASIC, 30) => BasicCancel,
            (CLASS_BASIC, 60) => {
                r.shortstr()?;
                BasicDeliver {
                    delivery_tag: r.u64()?,
                }
            }
            (CLASS_BASIC, 50) => BasicReturn { code: r.u16()? },
            (CLASS_BASIC, 80) => BasicAck {
                delivery_tag: r.u64()?,
                multiple: r.u8()? & 1 != 0,
            },
            (CLASS_BASIC, 120) => BasicNack {
                delivery_tag: r.u64()?,
                multiple: r.u8()? & 1 != 0,
            },
            (CLASS_CONFIRM, 11) => ConfirmSelectOk,
            (class, method) => Other { class, method },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_only_when_complete() {
        let mut buf = Vec::new();
        Method::BasicAck {
            delivery_tag: 7,
            multiple: true,
        }
        .encode(&mut buf, 3);
        for cut in 0..buf.len() {
            assert!(parse_frame(&buf[..cut], FRAME_MAX_BYTES).unwrap().is_none());
        }
        let (frame, used) = parse_frame(&buf, FRAME_MAX_BYTES).unwrap().unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(frame.channel, 3);
        assert_eq!(
            ServerMethod::decode(frame.payload).unwrap(),
            ServerMethod::BasicAck {
                delivery_tag: 7,
                multiple: true
            }
        );
    }

    #[test]
    fn oversized_and_malformed_frames_are_errors() {
        let mut buf = vec![FRAME_METHOD, 0, 1];
        buf.extend_from_slice(&(FRAME_MAX_BYTES + 1).to_be_bytes());
        assert!(matches!(
            parse_frame(&buf, FRAME_MAX_BYTES),
            Err(WireError::FrameTooLarge(_))
        ));
        let bad = [FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, 0x00];
        assert_eq!(
            parse_frame(&bad, FRAME_MAX_BYTES).unwrap_err(),
            WireError::BadFrameEnd
        );
    }

    #[test]
    fn publish_template_with_a_group_header_keeps_its_digits_in_the_content_header() {
        let t = PublishTemplate::new(1, "x", "k", 100, false, Some("grp"), FRAME_MIN_BYTES);
        let offset = t.group_offset.unwrap();
        let (method, used) = parse_frame(&t.bytes, FRAME_MIN_BYTES).unwrap().unwrap();
        assert_eq!(method.kind, FRAME_METHOD);
        let (header, header_len) = parse_frame(&t.bytes[used..], FRAME_MIN_BYTES)
            .unwrap()
            .unwrap();
        assert_eq!(header.kind, FRAME_HEADER);
        assert_eq!(content_body_size(header.payload).unwrap(), 100);
        // flags, then the table: its length, "grp", 'S', the value's length, the digits.
        let p = header.payload;
        assert_eq!(u16::from_be_bytes([p[12], p[13]]), 0x3000);
        assert_eq!(&p[18..22], b"\x03grp");
        assert_eq!(p[22], b'S');
        assert_eq!(&p[27..27 + GROUP_DIGITS], b"00000000");
        assert_eq!(p.len(), 27 + GROUP_DIGITS + 1, "then the delivery mode");
        assert!(offset > used && offset + GROUP_DIGITS < used + header_len);
    }

    #[test]
    fn publish_template_splits_bodies_at_frame_max() {
        let t = PublishTemplate::new(1, "x", "k", 10_000, true, None, FRAME_MIN_BYTES);
        let mut rest = &t.bytes[..];
        let mut kinds = Vec::new();
        let mut body = 0;
        while let Some((frame, used)) = parse_frame(rest, FRAME_MIN_BYTES).unwrap() {
            kinds.push(frame.kind);
            if frame.kind == FRAME_HEADER {
                assert_eq!(content_body_size(frame.payload).unwrap(), 10_000);
            }
            if frame.kind == FRAME_BODY {
                body += frame.payload.len();
            }
            rest = &rest[used..];
        }
        assert!(rest.is_empty());
        assert_eq!(body, 10_000);
        assert_eq!(kinds, [1, 2, 3, 3, 3]);
        // The stamp lands at the start of the first body frame's payload.
        assert_eq!(t.bytes[t.stamp_offset - FRAME_HEADER_BYTES], FRAME_BODY);
    }

    #[test]
    fn queue_argument_values_are_typed() {
        assert_eq!(FieldValue::infer("10"), FieldValue::Long(10));
        assert_eq!(FieldValue::infer("true"), FieldValue::Bool(true));
        assert_eq!(
            FieldValue::infer("quorum"),
            FieldValue::Str("quorum".into())
        );
    }
}
