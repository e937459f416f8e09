//! The byte stream under one AMQP connection: a TCP socket (plain AMQP), or one end of a Unix
//! socket pair whose other end the connection's TLS pump serves (amqps, see `tls.rs`). It owns
//! nothing but the two halves and must not look at the bytes.
//!
//! Both kinds give the connection the same non-blocking write (`try_write` + `writable`), so
//! the connection task writes all of one loop iteration's output in one system call either
//! way, and the plain TCP path is the same code it was before TLS: an enum match per call,
//! no boxing and no extra copy.

use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{tcp, unix, TcpStream, UnixStream};

/// A connection's socket before it is split.
pub(crate) enum Stream {
    Tcp(TcpStream),
    /// The broker's end of the pair; the TLS pump holds the other.
    Unix(UnixStream),
}

impl Stream {
    pub(crate) fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Stream::Unix(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Unix(r), WriteHalf::Unix(w))
            }
        }
    }
}

pub(crate) enum ReadHalf {
    Tcp(tcp::OwnedReadHalf),
    Unix(unix::OwnedReadHalf),
}

impl ReadHalf {
    /// Reads what is available into `buf` (0: the peer closed). Cancel-safe, like the
    /// underlying reads: the connection loop uses it in `select!`.
    pub(crate) async fn read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            ReadHalf::Tcp(r) => r.read_buf(buf).await,
            ReadHalf::Unix(r) => r.read_buf(buf).await,
        }
    }
}

pub(crate) enum WriteHalf {
    Tcp(tcp::OwnedWriteHalf),
    Unix(unix::OwnedWriteHalf),
}

impl WriteHalf {
    /// Writes what the socket takes now; `WouldBlock` when it is full.
    #[inline]
    pub(crate) fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            WriteHalf::Tcp(w) => w.try_write(buf),
            WriteHalf::Unix(w) => w.try_write(buf),
        }
    }

    /// Waits until the socket may take more.
    pub(crate) async fn writable(&self) -> io::Result<()> {
        match self {
            WriteHalf::Tcp(w) => w.writable().await,
            WriteHalf::Unix(w) => w.writable().await,
        }
    }

    /// Closes the write direction: a TCP FIN, or (TLS) EOF to the pump, which then sends
    /// close_notify and the FIN.
    pub(crate) async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            WriteHalf::Tcp(w) => w.shutdown().await,
            WriteHalf::Unix(w) => w.shutdown().await,
        }
    }
}
