//! Raw-socket AMQP for tests that must send exactly the bytes they choose (malformed frames,
//! odd tune values, out-of-order content): frame builders, and `RawConn`, a client that writes
//! what it is given and parses what the broker sends. Every read has a deadline.

use std::io;
use std::net::SocketAddr;

use amq_protocol::frame::{gen_frame, parse_frame, AMQPContentHeader, AMQPFrame, WriteContext};
use amq_protocol::protocol::{basic, channel, connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::within;

/// The protocol header a 0-9-1 broker answers a bad header with.
pub const AMQP_0_9_1_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;
/// Size of the frame header (type, channel, size) that precedes every payload.
pub const FRAME_HEADER_BYTES: usize = 7;
/// Class id of `basic` (content headers carry it).
pub const CLASS_BASIC: u16 = 60;

/// Serializes a well-formed frame.
pub fn frame_bytes(frame: &AMQPFrame) -> Vec<u8> {
    let (buf, _) = gen_frame(frame)(WriteContext::from(Vec::new()))
        .unwrap_or_else(|e| panic!("cannot serialize {frame:?}: {e:?}"))
        .into_inner();
    buf
}

/// A method frame on `channel`.
pub fn method_frame(channel: u16, method: AMQPClass) -> Vec<u8> {
    frame_bytes(&AMQPFrame::Method(channel, method))
}

/// The payload of a method frame (class id, method id, arguments), to edit by hand.
pub fn method_payload(method: AMQPClass) -> Vec<u8> {
    let frame = method_frame(0, method);
    frame[FRAME_HEADER_BYTES..frame.len() - 1].to_vec()
}

/// A frame with any type, channel and payload; the size field matches the payload.
pub fn raw_frame(frame_type: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let size = u32::try_from(payload.len()).expect("payload fits a frame");
    let mut frame = Vec::with_capacity(payload.len() + FRAME_HEADER_BYTES + 1);
    frame.push(frame_type);
    frame.extend_from_slice(&channel.to_be_bytes());
    frame.extend_from_slice(&size.to_be_bytes());
    frame.extend_from_slice(payload);
    frame.push(FRAME_END);
    frame
}

/// A content header frame for a basic message of `body_size` bytes.
pub fn header_frame(channel: u16, body_size: u64, properties: BasicProperties) -> Vec<u8> {
    frame_bytes(&AMQPFrame::Header(
        channel,
        AMQPContentHeader {
            class_id: CLASS_BASIC,
            body_size,
            properties,
        },
    ))
}

/// A content body frame.
pub fn body_frame(channel: u16, body: &[u8]) -> Vec<u8> {
    frame_bytes(&AMQPFrame::Body(channel, body.to_vec()))
}

/// basic.publish method frame.
pub fn publish_frame(channel: u16, exchange: &str, routing_key: &str) -> Vec<u8> {
    method_frame(
        channel,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            mandatory: false,
            immediate: false,
        })),
    )
}

/// channel.open method frame.
pub fn channel_open_frame(channel: u16) -> Vec<u8> {
    method_frame(
        channel,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    )
}

/// The SASL PLAIN response: `\0user\0password`.
pub fn plain_response(user: &str, password: &str) -> Vec<u8> {
    format!("\0{user}\0{password}").into_bytes()
}

/// The AMQPLAIN response: a field table with LOGIN and PASSWORD, *without* its length prefix.
pub fn amqplain_response(user: &str, password: &str) -> Vec<u8> {
    let mut table = FieldTable::default();
    table.insert("LOGIN".into(), AMQPValue::LongString(user.into()));
    table.insert("PASSWORD".into(), AMQPValue::LongString(password.into()));
    let (buf, _) =
        amq_protocol::types::generation::gen_field_table(&table)(WriteContext::from(Vec::new()))
            .expect("serialize AMQPLAIN table")
            .into_inner();
    buf[4..].to_vec()
}

// ---------------------------------------------------------------------------------------------
// Raw connections

/// What a [`RawConn`] runs over: a TCP socket, or a TLS stream ([`RawConn::over`]).
pub trait RawStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> RawStream for T {}

/// A raw AMQP client over TCP (or TLS): writes exactly the bytes a test gives it and parses
/// what the broker sends. Every read has a deadline ([`WAIT`](crate::WAIT)) whose expiry
/// fails the test.
pub struct RawConn {
    stream: Box<dyn RawStream>,
    buf: Vec<u8>,
    /// Filled in by the handshake helpers.
    pub server_properties: FieldTable,
    pub mechanisms: String,
    pub tune: Option<connection::Tune>,
}

impl RawConn {
    /// Opens the TCP connection; nothing is sent.
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = within("TCP connect", TcpStream::connect(addr))
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        let _ = stream.set_nodelay(true);
        RawConn::over(stream)
    }

    /// A raw connection over an already connected stream (e.g. a client TLS stream).
    pub fn over(stream: impl RawStream + 'static) -> RawConn {
        RawConn {
            stream: Box::new(stream),
            buf: Vec::new(),
            server_properties: FieldTable::default(),
            mechanisms: String::new(),
            tune: None,
        }
    }

    /// Opens the TCP connection with a small receive buffer (`SO_RCVBUF`, set before connect so
    /// the window is never larger): a client that stops reading then holds little in the kernel.
    pub async fn connect_with_recv_buffer(addr: SocketAddr, bytes: u32) -> RawConn {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .expect("socket");
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        let stream = within("TCP connect", socket.connect(addr))
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        let _ = stream.set_nodelay(true);
        RawConn::over(stream)
    }

    /// Writes bytes; fails the test if the socket refuses them.
    pub async fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.try_send(bytes).await {
            panic!("write failed: {e}");
        }
    }

    /// Writes bytes, returning the error (the broker may already have closed the socket).
    pub async fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        within("socket write", async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await
    }

    /// Closes our writing side (TCP FIN); reading goes on.
    pub async fn shutdown_write(&mut self) {
        let _ = within("socket shutdown", self.stream.shutdown()).await;
    }

    pub async fn send_frame(&mut self, frame: &AMQPFrame) {
        self.send(&frame_bytes(frame)).await;
    }

    pub async fn send_method(&mut self, channel: u16, method: AMQPClass) {
        self.send(&method_frame(channel, method)).await;
    }

    /// Reads more bytes into the buffer; `Ok(0)` is EOF (a reset counts as EOF).
    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16 * 1024];
        match within("bytes from the broker", self.stream.read(&mut chunk)).await {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n
            }
            Err(e) if is_disconnect(&e) => 0,
            Err(e) => panic!("read failed: {e}"),
        }
    }

    /// Exactly `n` bytes; fails the test on EOF or timeout.
    pub async fn read_bytes(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            if self.fill().await == 0 {
                panic!(
                    "EOF after {} of {n} expected bytes: {:?}",
                    self.buf.len(),
                    self.buf
                );
            }
        }
        self.buf.drain(..n).collect()
    }

    /// Everything the broker sends until it closes the socket.
    pub async fn read_to_eof(&mut self) -> Vec<u8> {
        while self.fill().await != 0 {}
        std::mem::take(&mut self.buf)
    }

    /// The next frame, or `None` if the broker closed the socket (cleanly, between frames).
    pub async fn next_frame(&mut self) -> Option<AMQPFrame> {
        while self.buf.len() < FRAME_HEADER_BYTES {
            if self.fill().await == 0 {
                assert!(
                    self.buf.is_empty(),
                    "EOF inside a frame header: {:?}",
                    self.buf
                );
                return None;
            }
        }
        let size = u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]]);
        let total = FRAME_HEADER_BYTES + size as usize + 1;
        let frame = self.read_bytes(total).await;
        assert_eq!(
            frame[total - 1],
            FRAME_END,
            "broker sent a bad frame end: {frame:?}"
        );
        match parse_frame(&frame[..]) {
            Ok((_, frame)) => Some(frame),
            Err(e) => panic!("cannot parse a frame from the broker ({e}): {frame:?}"),
        }
    }

    /// The next frame; fails the test on EOF.
    pub async fn read_frame(&mut self) -> AMQPFrame {
        match self.next_frame().await {
            Some(frame) => frame,
            None => panic!("broker closed the connection while a frame was expected"),
        }
    }

    /// The next method frame, skipping heartbeats; fails on any other frame.
    pub async fn read_method(&mut self) -> (u16, AMQPClass) {
        loop {
            match self.read_frame().await {
                AMQPFrame::Heartbeat => continue,
                AMQPFrame::Method(channel, method) => return (channel, method),
                other => panic!("expected a method frame, got {other:?}"),
            }
        }
    }

    /// Expects connection.close with `code`, answers close-ok and waits for the socket to close.
    /// Returns the reply text.
    pub async fn expect_connection_close(&mut self, code: u16) -> String {
        let close = match self.read_method().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::Close(close))) => close,
            other => panic!("expected connection.close {code}, got {other:?}"),
        };
        assert_eq!(
            close.reply_code, code,
            "expected connection.close {code}, got {} {}",
            close.reply_code, close.reply_text
        );
        let close_ok = method_frame(
            0,
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
        );
        // The broker may close the socket without waiting; a failed write is fine then.
        let _ = self.try_send(&close_ok).await;
        self.expect_eof().await;
        close.reply_text.to_string()
    }

    /// Expects the broker to end the connection: either connection.close with `code` (answered
    /// with close-ok) or the socket closing with no frame at all. Anything else fails.
    ///
    /// For errors where RabbitMQ just drops the socket: during the handshake it sends no
    /// connection.close (except 403 with `authentication_failure_close` and 530 for the vhost),
    /// it waits a few seconds and closes; and an undecodable method id crashes its reader.
    /// `code` is what Warren is expected to send instead.
    pub async fn expect_close_or_eof(&mut self, code: u16) {
        match self.next_frame().await {
            None => {}
            Some(AMQPFrame::Method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Close(close)),
            )) => {
                assert_eq!(
                    close.reply_code, code,
                    "expected connection.close {code} or a silent close, got {} {}",
                    close.reply_code, close.reply_text
                );
                let _ = self
                    .try_send(&method_frame(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                            connection::CloseOk {},
                        )),
                    ))
                    .await;
                self.expect_eof().await;
            }
            Some(other) => panic!("expected connection.close {code} or EOF, got {other:?}"),
        }
    }

    /// Expects channel.close with `code` on `channel`, answers close-ok. Returns the reply text.
    pub async fn expect_channel_close(&mut self, channel: u16, code: u16) -> String {
        let close = match self.read_method().await {
            (ch, AMQPClass::Channel(channel::AMQPMethod::Close(close))) if ch == channel => close,
            other => panic!("expected channel.close {code} on channel {channel}, got {other:?}"),
        };
        assert_eq!(
            close.reply_code, code,
            "expected channel.close {code}, got {} {}",
            close.reply_code, close.reply_text
        );
        self.send_method(
            channel,
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
        )
        .await;
        close.reply_text.to_string()
    }

    /// Waits until the broker closes the socket, skipping heartbeats; other frames fail the test.
    pub async fn expect_eof(&mut self) {
        while let Some(frame) = self.next_frame().await {
            assert!(
                matches!(frame, AMQPFrame::Heartbeat),
                "expected the broker to close the socket, got {frame:?}"
            );
        }
    }

    // --- handshake steps -----------------------------------------------------------------

    /// Sends the 0-9-1 protocol header and reads connection.start.
    pub async fn send_header_and_read_start(&mut self) -> connection::Start {
        self.send(AMQP_0_9_1_HEADER).await;
        match self.read_method().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::Start(start))) => {
                self.server_properties = start.server_properties.clone();
                self.mechanisms = String::from_utf8_lossy(start.mechanisms.as_bytes()).into_owned();
                start
            }
            other => panic!("expected connection.start, got {other:?}"),
        }
    }

    /// connection.start-ok with empty client properties.
    pub async fn send_start_ok(&mut self, mechanism: &str, response: Vec<u8>) {
        self.send_start_ok_with(FieldTable::default(), mechanism, response)
            .await;
    }

    pub async fn send_start_ok_with(
        &mut self,
        client_properties: FieldTable,
        mechanism: &str,
        response: Vec<u8>,
    ) {
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties,
                mechanism: mechanism.into(),
                response: LongString::from(response),
                locale: "en_US".into(),
            })),
        )
        .await;
    }

    pub async fn read_tune(&mut self) -> connection::Tune {
        match self.read_method().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::Tune(tune))) => {
                self.tune = Some(tune.clone());
                tune
            }
            other => panic!("expected connection.tune, got {other:?}"),
        }
    }

    pub async fn send_tune_ok(&mut self, channel_max: u16, frame_max: u32, heartbeat: u16) {
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max,
                frame_max,
                heartbeat,
            })),
        )
        .await;
    }

    pub async fn send_open(&mut self, vhost: &str) {
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: vhost.into(),
            })),
        )
        .await;
    }

    pub async fn expect_open_ok(&mut self) {
        match self.read_method().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))) => {}
            other => panic!("expected connection.open-ok, got {other:?}"),
        }
    }

    /// Header, start, start-ok with `mechanism`/`response`, then tune. Stops before tune-ok.
    pub async fn handshake_to_tune(
        addr: SocketAddr,
        mechanism: &str,
        response: Vec<u8>,
    ) -> (RawConn, connection::Tune) {
        let mut conn = RawConn::connect(addr).await;
        conn.send_header_and_read_start().await;
        conn.send_start_ok(mechanism, response).await;
        let tune = conn.read_tune().await;
        (conn, tune)
    }

    /// The whole handshake with the server's channel_max/frame_max and the given heartbeat.
    pub async fn handshake_with_heartbeat(addr: SocketAddr, heartbeat_secs: u16) -> RawConn {
        let (mut conn, tune) =
            RawConn::handshake_to_tune(addr, "PLAIN", plain_response("guest", "guest")).await;
        conn.send_tune_ok(tune.channel_max, tune.frame_max, heartbeat_secs)
            .await;
        conn.send_open("/").await;
        conn.expect_open_ok().await;
        conn
    }

    /// The negotiated frame_max (the server's offer, which the handshake accepts).
    pub fn frame_max(&self) -> u32 {
        self.tune.as_ref().map(|t| t.frame_max).unwrap_or(4096)
    }

    /// channel.open on `channel`, expecting open-ok.
    pub async fn open_channel(&mut self, channel: u16) {
        self.send(&channel_open_frame(channel)).await;
        match self.read_method().await {
            (ch, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))) if ch == channel => {}
            other => panic!("expected channel.open-ok on {channel}, got {other:?}"),
        }
    }

    /// Sends a method and returns the reply on the same channel.
    pub async fn call(&mut self, channel: u16, method: AMQPClass) -> AMQPClass {
        self.send_method(channel, method).await;
        match self.read_method().await {
            (ch, reply) if ch == channel => reply,
            other => panic!("expected a reply on channel {channel}, got {other:?}"),
        }
    }
}

fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Protocol header → start → start-ok (PLAIN guest/guest) → tune → tune-ok (server's values,
/// heartbeats off) → open("/") → open-ok.
pub async fn raw_handshake(addr: SocketAddr) -> RawConn {
    RawConn::handshake_with_heartbeat(addr, 0).await
}
