//! A minimal AMQP client connection: the handshake, synchronous methods (declare, bind,
//! consume…) answered by their `-ok`, and the close. The hot paths (publishing, consuming)
//! take the socket and read buffer over with [`Connection::into_parts`] and run their own
//! loops in `producer` and `consumer`.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::uri::AmqpUri;
use crate::wire::{
    parse_frame, Method, ServerMethod, WireError, FRAME_MAX_BYTES, FRAME_METHOD, FRAME_MIN_BYTES,
};

/// How long the handshake and each synchronous method may take before the tool gives up.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a consumer or a setup connection waits for close-ok.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Read buffer capacity; reads are issued for at least this much free space.
pub const READ_BUFFER_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Wire(#[from] WireError),
    #[error("the server closed the connection: {code} {text}")]
    ConnectionClosed { code: u16, text: String },
    #[error("the server closed the channel: {code} {text}")]
    ChannelClosed { code: u16, text: String },
    #[error("the server closed the socket")]
    Eof,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("unexpected {0}")]
    Unexpected(String),
}

/// What a synchronous method's reply carried that callers need.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub queue: String,
    pub messages: u32,
}

pub struct Connection {
    stream: TcpStream,
    read: BytesMut,
    write: Vec<u8>,
    pub frame_max: u32,
}

impl Connection {
    pub async fn open(uri: &AmqpUri, name: &str) -> Result<Connection, ClientError> {
        tokio::time::timeout(RPC_TIMEOUT, Self::handshake(uri, name))
            .await
            .map_err(|_| ClientError::Timeout(RPC_TIMEOUT))?
    }

    async fn handshake(uri: &AmqpUri, name: &str) -> Result<Connection, ClientError> {
        let stream = TcpStream::connect(uri.address()).await?;
        stream.set_nodelay(true)?;
        let mut conn = Connection {
            stream,
            read: BytesMut::with_capacity(READ_BUFFER_BYTES),
            write: Vec::with_capacity(4096),
            frame_max: FRAME_MAX_BYTES,
        };
        conn.stream.write_all(b"AMQP\x00\x00\x09\x01").await?;
        conn.expect(0, |m| matches!(m, ServerMethod::ConnectionStart))
            .await?;
        conn.send(
            0,
            Method::StartOk {
                user: &uri.user,
                password: &uri.password,
                connection_name: name,
            },
        )
        .await?;
        let (channel, payload) = conn.next_method().await?;
        let (channel_max, server_frame_max) = match ServerMethod::decode(&payload)? {
            ServerMethod::ConnectionTune {
                channel_max,
                frame_max,
            } => (channel_max, frame_max),
            // A refused login arrives here as connection.close.
            other => return Err(conn.unexpected(channel, other).await),
        };
        conn.frame_max = match server_frame_max {
            0 => FRAME_MAX_BYTES,
            n => n.min(FRAME_MAX_BYTES),
        };
        if conn.frame_max < FRAME_MIN_BYTES {
            return Err(ClientError::Unexpected(format!(
                "frame_max {} below the spec's minimum",
                conn.frame_max
            )));
        }
        conn.send(
            0,
            Method::TuneOk {
                channel_max: if channel_max == 0 { 2047 } else { channel_max },
                frame_max: conn.frame_max,
                // No heartbeats: runs are short and a busy load tool must not be disconnected
                // for answering late.
                heartbeat_secs: 0,
            },
        )
        .await?;
        conn.send(0, Method::ConnectionOpen { vhost: &uri.vhost })
            .await?;
        conn.expect(0, |m| matches!(m, ServerMethod::ConnectionOpenOk))
            .await?;
        Ok(conn)
    }

    /// Sends one method and flushes it.
    pub async fn send(&mut self, channel: u16, method: Method<'_>) -> Result<(), ClientError> {
        self.write.clear();
        method.encode(&mut self.write, channel);
        self.stream.write_all(&self.write).await?;
        Ok(())
    }

    /// Sends a synchronous method and waits for the reply that `is_reply` accepts.
    pub async fn call(
        &mut self,
        channel: u16,
        method: Method<'_>,
        is_reply: fn(&ServerMethod) -> bool,
    ) -> Result<Reply, ClientError> {
        self.send(channel, method).await?;
        tokio::time::timeout(RPC_TIMEOUT, self.expect(channel, is_reply))
            .await
            .map_err(|_| ClientError::Timeout(RPC_TIMEOUT))?
    }

    pub async fn open_channel(&mut self, channel: u16) -> Result<(), ClientError> {
        self.call(channel, Method::ChannelOpen, |m| {
            matches!(m, ServerMethod::ChannelOpenOk)
        })
        .await
        .map(|_| ())
    }

    /// Reads methods until one on `channel` that `is_reply` accepts. Closes are answered and
    /// turned into errors; anything else (a late delivery, a confirm) is skipped.
    async fn expect(
        &mut self,
        channel: u16,
        is_reply: fn(&ServerMethod) -> bool,
    ) -> Result<Reply, ClientError> {
        loop {
            let (ch, payload) = self.next_method().await?;
            let method = ServerMethod::decode(&payload)?;
            if ch == channel && is_reply(&method) {
                return Ok(match method {
                    ServerMethod::QueueDeclareOk { name, messages, .. } => Reply {
                        queue: name.to_string(),
                        messages,
                    },
                    ServerMethod::QueueDeleteOk { messages } => Reply {
                        queue: String::new(),
                        messages,
                    },
                    _ => Reply::default(),
                });
            }
            match method {
                ServerMethod::ConnectionClose { .. } | ServerMethod::ChannelClose { .. } => {
                    return Err(self.unexpected(ch, method).await)
                }
                _ => continue,
            }
        }
    }

    /// Answers a close (so the server can clean up) and describes what arrived.
    async fn unexpected(&mut self, channel: u16, method: ServerMethod<'_>) -> ClientError {
        match method {
            ServerMethod::ConnectionClose { code, text } => {
                let err = ClientError::ConnectionClosed {
                    code,
                    text: text.to_string(),
                };
                let _ = self.send(0, Method::ConnectionCloseOk).await;
                err
            }
            ServerMethod::ChannelClose { code, text } => {
                let err = ClientError::ChannelClosed {
                    code,
                    text: text.to_string(),
                };
                let _ = self.send(channel, Method::ChannelCloseOk).await;
                err
            }
            other => ClientError::Unexpected(format!("{other:?}")),
        }
    }

    /// The next method frame (channel, payload copy); other frames are skipped. Only for the
    /// slow path: it copies.
    async fn next_method(&mut self) -> Result<(u16, Vec<u8>), ClientError> {
        loop {
            if let Some((frame, used)) = parse_frame(&self.read, self.frame_max)? {
                let out =
                    (frame.kind == FRAME_METHOD).then(|| (frame.channel, frame.payload.to_vec()));
                self.read.advance(used);
                match out {
                    Some(m) => return Ok(m),
                    None => continue,
                }
            }
            self.read.reserve(READ_BUFFER_BYTES);
            if self.stream.read_buf(&mut self.read).await? == 0 {
                return Err(ClientError::Eof);
            }
        }
    }

    /// Closes the connection politely, waiting a little for close-ok.
    pub async fn close(self) {
        let _ = self.close_within(CLOSE_TIMEOUT).await;
    }

    /// Sends connection.close and waits up to `timeout` for close-ok; true if it came.
    ///
    /// close-ok is the only proof that the broker read every frame sent before it: a
    /// publisher that drops its socket earlier can lose its last unconfirmed messages
    /// (RabbitMQ, throttling a publisher with flow control, discards what it had not read
    /// yet when the socket closes).
    pub async fn close_within(mut self, timeout: Duration) -> bool {
        if self.send(0, Method::ConnectionClose).await.is_err() {
            return false;
        }
        let wait = self.expect(0, |m| matches!(m, ServerMethod::ConnectionCloseOk));
        matches!(tokio::time::timeout(timeout, wait).await, Ok(Ok(_)))
    }

    /// Hands the socket and whatever has been read but not parsed to a hot loop.
    pub fn into_parts(self) -> (TcpStream, BytesMut, u32) {
        (self.stream, self.read, self.frame_max)
    }

    pub fn from_parts(stream: TcpStream, read: BytesMut, frame_max: u32) -> Connection {
        Connection {
            stream,
            read,
            write: Vec::with_capacity(4096),
            frame_max,
        }
    }
}
