//! One task per client connection: the handshake, then a loop that reads frames, runs the
//! methods of its channels, turns queue events into deliveries, and keeps heartbeats. The
//! task owns all connection and channel state and both halves of the socket (TCP, or for
//! amqps the Unix socket pair whose other end the TLS pump serves: `transport.rs`). Output is
//! gathered in one buffer per loop iteration and written with non-blocking writes; only when
//! the socket is full does the loop wait for it to become writable (no writer task: a hop
//! between tasks per delivery would cost latency).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::sync::{mpsc, watch};
use tokio::time::{timeout, Instant};
use tracing::{info, warn};
use warren_core::connections::{ConnectionMetrics, PROTOCOL_AMQP_0_9_1};
use warren_core::consumer::{ClientEvent, OutputGauge};
use warren_core::{Broker, VHost};
use warren_protocol::frame::{decode_frame, Frame, FrameKind};
use warren_protocol::method::{decode_method, Method};
use warren_protocol::{connection, encode, AMQPClass, ProtocolError, ReplyCode, PROTOCOL_HEADER};

use crate::alarm::{AlarmState, Alarms};
use crate::channel::Channel;
use crate::config::{Config, FRAME_MIN_SIZE};
use crate::properties::{client_has, server_properties};
use crate::sasl;
use crate::tls::TlsPeer;
use crate::transport::{ReadHalf, Stream, WriteHalf};

/// How long we wait for close-ok after sending connection.close.
pub const CLOSE_OK_TIMEOUT: Duration = Duration::from_secs(3);
/// After close-ok to a client's connection.close, how long we keep reading (and discarding)
/// until the client closes its side: closing ours at once would reset a socket that still has
/// the client's unread frames, and a client still writing would get EPIPE.
pub const CLOSE_LINGER_TIMEOUT: Duration = Duration::from_secs(3);
/// Most queue events handled in one loop iteration before reading the socket again.
pub const EVENTS_PER_ITERATION_MAX: usize = 1024;
/// Most read buffer room one read may fill (reached by connections that keep it busy).
pub const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Read buffer room right after the handshake: an idle connection never needs more. It
/// doubles, up to `READ_BUFFER_BYTES`, whenever a read fills half of it.
pub const READ_BUFFER_MIN_BYTES: usize = 4 * 1024;
/// Buffers before the handshake ends: a connection that never logs in costs little (no frame
/// may exceed `FRAME_MIN_SIZE` before tune-ok).
pub const HANDSHAKE_BUFFER_BYTES: usize = 512;
/// An output buffer that grew past this (a burst of deliveries) is released once it is empty,
/// so an idle connection gives its memory back.
pub const OUTPUT_BUFFER_KEEP_BYTES: usize = 256 * 1024;

/// What every connection shares.
pub struct ServerContext {
    pub broker: Arc<Broker>,
    pub config: Config,
    pub alarms: Arc<Alarms>,
    /// Connections past connection.open (for `connection_max`).
    pub open_connections: std::sync::atomic::AtomicUsize,
}

/// Why a connection loop ended.
enum End {
    /// The peer closed the socket or it failed.
    SocketClosed,
    /// A close handshake finished (either side started it).
    Closed,
    /// We answered the client's connection.close: its side closes next.
    ClosedByClient,
    /// The peer missed heartbeats.
    HeartbeatTimeout,
}

pub(crate) struct Connection {
    pub(crate) id: u64,
    /// The client's TCP address (for amqps too: the pump is in between, not a proxy).
    pub(crate) peer: SocketAddr,
    pub(crate) ctx: Arc<ServerContext>,
    reader: ReadHalf,
    inbuf: BytesMut,
    pub(crate) out: BytesMut,
    writer: WriteHalf,
    /// amqps: what the TLS handshake learned (None: plain AMQP).
    tls: Option<TlsPeer>,
    /// The socket refused a write: the connection is over.
    write_failed: bool,
    pub(crate) frame_max: u32,
    channel_max: u16,
    heartbeat_secs: u16,
    pub(crate) user: String,
    pub(crate) vhost: Option<Arc<VHost>>,
    /// The user's rights in the vhost, for the current access generation (`access.rs`).
    pub(crate) grants: crate::access::Grants,
    /// The client's `client_id` property (topic permissions may name it).
    pub(crate) client_id: String,
    /// Registered in the broker's connection registry (deregistered on drop).
    registered: bool,
    /// The broker asked to close this connection (`ClientEvent::Close`).
    pub(crate) forced_close: Option<ProtocolError>,
    pub(crate) channels: HashMap<u16, Channel>,
    pub(crate) events_tx: mpsc::UnboundedSender<ClientEvent>,
    events_rx: mpsc::UnboundedReceiver<ClientEvent>,
    /// Client capability: it understands basic.cancel from the broker.
    pub(crate) cancel_notify: bool,
    /// Client capability: it understands connection.blocked / unblocked.
    blocked_notify: bool,
    /// The connection has published: a resource alarm blocks it.
    pub(crate) publisher: bool,
    /// The resource alarms as last seen.
    alarm: AlarmState,
    /// Blocked by an alarm: the socket is not read (and heartbeats are not expected).
    blocked: bool,
    /// Deliveries handed to this connection and not yet written out (see `OutputGauge`).
    pub(crate) output_gauge: Arc<OutputGauge>,
    /// How much of `out` is counted in `output_gauge`.
    out_counted: u64,
    /// Channels with confirms to send at the end of this batch.
    pub(crate) pending_confirms: Vec<u16>,
    /// Queue sends that found a full inbox; awaited before the next frame is read.
    pub(crate) blocked_sends: Vec<(warren_core::QueueHandle, warren_core::queue::QueueCommand)>,
    /// Delayed-exchange sends that found a full inbox, awaited with `blocked_sends`.
    pub(crate) blocked_delayed: Vec<(
        warren_core::delayed::DelayedHandle,
        warren_core::delayed::DelayedCommand,
    )>,
    /// Queues whose flow control asked this publisher to wait.
    pub(crate) flow_waits: Vec<warren_core::QueueHandle>,
    auth_failure_close: bool,
    last_read: Instant,
    last_write: Instant,
    /// Channels released and exclusive queues handed back (see `Drop`).
    cleaned_up: bool,
    /// Counted in `ServerContext::open_connections` (given back on drop).
    counted: bool,
    /// Read room to keep after the handshake (see `READ_BUFFER_MIN_BYTES`).
    read_chunk: usize,
    /// Socket counters for the management API: one update per read or write call.
    pub(crate) metrics: Arc<ConnectionMetrics>,
    /// From connection.start-ok, for the registry.
    client_properties: warren_protocol::FieldTable,
    auth_mechanism: String,
    connected_at_ms: u64,
}

/// Serves one accepted socket until it closes. `tls` is Some for amqps (`stream` is then the
/// connection's end of the pump's socket pair).
pub(crate) async fn serve(
    stream: Stream,
    peer: SocketAddr,
    id: u64,
    ctx: Arc<ServerContext>,
    shutdown: watch::Receiver<bool>,
    tls: Option<TlsPeer>,
) {
    let (reader, writer) = stream.into_split();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let now = Instant::now();
    let mut conn = Connection {
        id,
        peer,
        // Until tune-ok, frames are limited to the spec's minimum, as RabbitMQ does.
        frame_max: FRAME_MIN_SIZE,
        channel_max: ctx.config.channel_max,
        heartbeat_secs: 0,
        ctx,
        reader,
        inbuf: BytesMut::with_capacity(HANDSHAKE_BUFFER_BYTES),
        out: BytesMut::with_capacity(HANDSHAKE_BUFFER_BYTES),
        writer,
        tls,
        write_failed: false,
        user: String::new(),
        vhost: None,
        grants: crate::access::Grants::empty(),
        client_id: String::new(),
        registered: false,
        forced_close: None,
        channels: HashMap::new(),
        events_tx,
        events_rx,
        cancel_notify: false,
        blocked_notify: false,
        publisher: false,
        alarm: AlarmState::default(),
        blocked: false,
        output_gauge: Arc::new(OutputGauge::default()),
        out_counted: 0,
        pending_confirms: Vec::new(),
        blocked_sends: Vec::new(),
        blocked_delayed: Vec::new(),
        flow_waits: Vec::new(),
        auth_failure_close: false,
        last_read: now,
        last_write: now,
        cleaned_up: false,
        counted: false,
        read_chunk: READ_BUFFER_MIN_BYTES,
        metrics: Arc::default(),
        client_properties: Default::default(),
        auth_mechanism: String::new(),
        connected_at_ms: warren_core::message::now_ms(),
    };
    let handshake_timeout = conn.ctx.config.handshake_timeout;
    match timeout(handshake_timeout, conn.handshake()).await {
        Ok(Ok(())) => {
            info!(
                connection = id,
                peer = %peer,
                user = %conn.user,
                vhost = conn.vhost.as_ref().map(|v| v.name()).unwrap_or(""),
                tls = conn.tls.is_some(),
                "connection opened"
            );
            let end = conn.run(shutdown).await;
            conn.cleanup().await;
            if matches!(end, End::ClosedByClient) {
                conn.linger().await;
            }
            let reason = match end {
                End::SocketClosed => "socket closed",
                End::Closed | End::ClosedByClient => "closed",
                End::HeartbeatTimeout => "missed heartbeats",
            };
            info!(connection = id, peer = %peer, user = %conn.user, reason, "connection closed");
        }
        Ok(Err(Some(err))) => {
            warn!(connection = id, peer = %peer, code = err.code.code(), error = %err.reply_text(), "handshake failed");
        }
        Ok(Err(None)) => {}
        Err(_) => {
            warn!(connection = id, peer = %peer, "handshake timed out");
        }
    }
    let _ = timeout(CLOSE_OK_TIMEOUT, conn.flush_all()).await;
    let _ = conn.writer.shutdown().await;
}

impl Connection {
    /// Writes as much pending output as the socket takes now, without waiting.
    pub(crate) fn flush(&mut self) {
        while !self.out.is_empty() && !self.write_failed {
            match self.writer.try_write(&self.out) {
                Ok(0) => self.write_failed = true,
                Ok(n) => {
                    self.metrics.sent(n);
                    self.out.advance(n);
                    self.last_write = Instant::now();
                }
                // The socket is full: what stays in `out` must still be counted below.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => self.write_failed = true,
            }
        }
        if self.write_failed {
            self.out.clear();
        }
        self.release_output_buffer();
        self.count_output();
    }

    /// Keeps the output gauge equal to the event backlog plus `out`, and resumes the queues
    /// that stopped delivering to this connection once it has room again.
    fn count_output(&mut self) {
        self.adjust_output_gauge(0);
        if self.output_gauge.take_stalled() {
            for channel in self.channels.values() {
                for queue in channel.consumers.values() {
                    queue.send_now(warren_core::queue::QueueCommand::Resume);
                }
            }
        }
    }

    /// Brings the gauge to the event backlog plus `out`, after `released` bytes of delivery
    /// charges left the event channel: one atomic operation for the net change, so the gauge
    /// never dips between taking a delivery off the channel and counting its frames.
    pub(crate) fn adjust_output_gauge(&mut self, released: u64) {
        let now = self.out.len() as u64;
        let grown = now as i128 - self.out_counted as i128 - released as i128;
        self.out_counted = now;
        match grown.cmp(&0) {
            std::cmp::Ordering::Greater => self.output_gauge.charge(grown as u64),
            std::cmp::Ordering::Less => self.output_gauge.discharge(grown.unsigned_abs() as u64),
            std::cmp::Ordering::Equal => {}
        }
    }

    /// Gives back an output buffer a burst made large, once it has been written out.
    fn release_output_buffer(&mut self) {
        if self.out.is_empty() && self.out.capacity() > OUTPUT_BUFFER_KEEP_BYTES {
            self.out = BytesMut::new();
        }
    }

    /// Makes room for the next read: `read_chunk` after the handshake. The
    /// old block is left to the frames sliced from it (small bodies are copied out, so what
    /// stays pinned is proportionate).
    fn reserve_read(&mut self) {
        let want = if self.vhost.is_some() {
            self.read_chunk
        } else {
            HANDSHAKE_BUFFER_BYTES
        };
        if self.inbuf.is_empty() && self.inbuf.capacity() > 2 * READ_BUFFER_BYTES {
            // A large frame grew it: give that back once it has been read.
            self.inbuf = BytesMut::new();
        }
        if self.inbuf.capacity() - self.inbuf.len() < want / 4 {
            self.inbuf.reserve(want);
        }
    }

    /// Writes all pending output, waiting for the socket when it is full.
    async fn flush_all(&mut self) {
        loop {
            self.flush();
            if self.out.is_empty() || self.write_failed {
                self.release_output_buffer();
                return;
            }
            if self.writer.writable().await.is_err() {
                self.write_failed = true;
            }
        }
    }

    pub(crate) fn send_method(&mut self, channel: u16, class: AMQPClass) {
        encode::method(&mut self.out, channel, class);
    }

    /// Reads until one complete frame is buffered. `None` when the socket closed.
    async fn read_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        loop {
            if let Some(frame) = decode_frame(&mut self.inbuf, self.frame_max)? {
                return Ok(Some(frame));
            }
            self.reserve_read();
            match self.reader.read_buf(&mut self.inbuf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(n) => {
                    self.metrics.received(n);
                    self.last_read = Instant::now();
                }
            }
        }
    }

    /// Reads the next method on channel 0 during the handshake.
    async fn read_handshake_method(&mut self) -> Result<Method, Option<ProtocolError>> {
        loop {
            let frame = match self.read_frame().await {
                Ok(Some(f)) => f,
                Ok(None) => return Err(None),
                Err(e) => return Err(Some(self.send_close(e))),
            };
            match frame.kind {
                FrameKind::Heartbeat => continue,
                FrameKind::Method if frame.channel == 0 => {
                    return decode_method(&frame.payload).map_err(|e| Some(self.send_close(e)));
                }
                _ => {
                    let e = ProtocolError::unexpected_frame(
                        "expected a connection method on channel 0 during the handshake",
                    );
                    return Err(Some(self.send_close(e)));
                }
            }
        }
    }

    /// Sends connection.close for `err` and returns it.
    fn send_close(&mut self, err: ProtocolError) -> ProtocolError {
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: err.code.code(),
                reply_text: err.reply_text().into(),
                class_id: err.class_id,
                method_id: err.method_id,
            })),
        );
        err
    }

    /// Protocol header, start/start-ok, tune/tune-ok, open/open-ok.
    async fn handshake(&mut self) -> Result<(), Option<ProtocolError>> {
        while self.inbuf.len() < PROTOCOL_HEADER.len() {
            self.reserve_read();
            match self.reader.read_buf(&mut self.inbuf).await {
                Ok(0) | Err(_) => return Err(None),
                Ok(n) => self.metrics.received(n),
            }
        }
        if &self.inbuf[..PROTOCOL_HEADER.len()] != PROTOCOL_HEADER {
            self.out.extend_from_slice(PROTOCOL_HEADER);
            warn!(connection = self.id, peer = %self.peer, "bad protocol header");
            return Err(None);
        }
        let _ = self.inbuf.split_to(PROTOCOL_HEADER.len());
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: server_properties("warren"),
                mechanisms: sasl::mechanisms(self.external_offered())
                    .as_bytes()
                    .to_vec()
                    .into(),
                locales: b"en_US".to_vec().into(),
            })),
        );
        self.flush_all().await;

        let start_ok = match self.read_handshake_method().await? {
            Method {
                class: AMQPClass::Connection(connection::AMQPMethod::StartOk(m)),
                ..
            } => m,
            m => {
                return Err(Some(
                    self.send_close(unexpected_in_handshake(&m, "connection.start-ok")),
                ))
            }
        };
        self.cancel_notify = client_has(&start_ok.client_properties, "consumer_cancel_notify");
        self.blocked_notify = client_has(&start_ok.client_properties, "connection.blocked");
        self.auth_failure_close =
            client_has(&start_ok.client_properties, "authentication_failure_close");
        self.client_id = start_ok
            .client_properties
            .inner()
            .get("client_id")
            .and_then(warren_core::args::as_str)
            .map(|s| s.to_string())
            .unwrap_or_default();
        self.client_properties = start_ok.client_properties.clone();
        self.auth_mechanism = start_ok.mechanism.as_str().to_owned();
        let login = sasl::login(
            start_ok.mechanism.as_str(),
            start_ok.response.as_bytes(),
            self.external_offered(),
        )
        .map_err(|e| Some(self.refuse(e.on(10, 11))))?;
        self.user = self
            .authenticate(start_ok.mechanism.as_str(), login)
            .map_err(|e| Some(self.refuse(e.on(10, 11))))?;

        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                channel_max: self.ctx.config.channel_max,
                frame_max: self.ctx.config.frame_max,
                heartbeat: self.ctx.config.heartbeat_secs,
            })),
        );
        self.flush_all().await;
        let tune_ok = match self.read_handshake_method().await? {
            Method {
                class: AMQPClass::Connection(connection::AMQPMethod::TuneOk(m)),
                ..
            } => m,
            m => {
                return Err(Some(
                    self.send_close(unexpected_in_handshake(&m, "connection.tune-ok")),
                ))
            }
        };
        self.negotiate(&tune_ok)
            .map_err(|e| Some(self.send_close(e.on(10, 31))))?;

        let open = match self.read_handshake_method().await? {
            Method {
                class: AMQPClass::Connection(connection::AMQPMethod::Open(m)),
                ..
            } => m,
            m => {
                return Err(Some(
                    self.send_close(unexpected_in_handshake(&m, "connection.open")),
                ))
            }
        };
        self.count_connection()
            .map_err(|e| Some(self.send_close(e.on(10, 40))))?;
        let vhost_name = open.virtual_host.as_str();
        let vhost = match self.ctx.broker.open_vhost(&self.user, vhost_name) {
            Ok(v) => v,
            Err(e) => return Err(Some(self.send_close(e.on(10, 40)))),
        };
        let limits = self.ctx.broker.connection_limits(&self.user, vhost_name);
        let info = warren_core::connections::ConnectionInfo {
            id: self.id,
            user: self.user.clone(),
            vhost: vhost_name.to_owned(),
            peer: self.peer,
            client_properties: std::mem::take(&mut self.client_properties),
            connected_at_ms: self.connected_at_ms,
            frame_max: self.frame_max,
            channel_max: self.channel_max,
            heartbeat_secs: self.heartbeat_secs,
            protocol: PROTOCOL_AMQP_0_9_1,
            tls: self.tls.is_some(),
            auth_mechanism: std::mem::take(&mut self.auth_mechanism),
            metrics: self.metrics.clone(),
        };
        if let Err(e) = self
            .ctx
            .broker
            .connections
            .register(info, self.events_tx.clone(), limits)
        {
            return Err(Some(self.send_close(e.on(10, 40))));
        }
        self.registered = true;
        // Deleted between the lookup and the registration: its connections were closed
        // before this one was registered.
        if vhost.is_deleted() {
            let e = ProtocolError::connection_forced(format!("vhost '{vhost_name}' is down"));
            return Err(Some(self.send_close(e.on(10, 40))));
        }
        self.vhost = Some(vhost);
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
        );
        self.flush_all().await;
        Ok(())
    }

    /// SASL EXTERNAL is offered only to an amqps client that presented a certificate the CA
    /// bundle verified (so only with peer verification on).
    fn external_offered(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.client_certificate)
    }

    /// Checks a login; the user name, or the 403 to send.
    fn authenticate(&self, mechanism: &str, login: sasl::Login) -> Result<String, ProtocolError> {
        let broker = &self.ctx.broker;
        match login {
            sasl::Login::Password { user, password } => {
                broker.authenticate(mechanism, &user, Some(&password), self.peer.ip())?;
                Ok(user)
            }
            sasl::Login::External => {
                let name = self.tls.as_ref().and_then(|t| t.common_name.clone());
                let Some(name) = name else {
                    warn!(connection = self.id, peer = %self.peer, "EXTERNAL login: the client certificate has no subject common name");
                    return Err(sasl::refused("EXTERNAL"));
                };
                // No password: the certificate, verified by the TLS layer, is the credential.
                broker.authenticate("EXTERNAL", &name, None, self.peer.ip())?;
                Ok(name)
            }
        }
    }

    /// Takes a place among the open connections, or refuses as RabbitMQ does when
    /// `connection_max` is reached.
    fn count_connection(&mut self) -> Result<(), ProtocolError> {
        use std::sync::atomic::Ordering;
        let max = self.ctx.config.connection_max.unwrap_or(usize::MAX);
        let open = &self.ctx.open_connections;
        if open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(ProtocolError::not_allowed(format!(
                "connection refused: node connection limit ({max}) is reached"
            )));
        }
        self.counted = true;
        Ok(())
    }

    /// An authentication failure: connection.close 403 if the client asked for it
    /// (`authentication_failure_close`), otherwise just the closed socket.
    fn refuse(&mut self, err: ProtocolError) -> ProtocolError {
        if self.auth_failure_close || err.code != ReplyCode::AccessRefused {
            self.send_close(err)
        } else {
            err
        }
    }

    fn negotiate(&mut self, tune_ok: &connection::TuneOk) -> Result<(), ProtocolError> {
        let config = &self.ctx.config;
        let frame_max = if tune_ok.frame_max == 0 {
            config.frame_max
        } else {
            tune_ok.frame_max
        };
        if frame_max > config.frame_max {
            return Err(ProtocolError::not_allowed(format!(
                "negotiated frame_max = {frame_max} is higher than the maximum allowed value ({})",
                config.frame_max
            )));
        }
        if frame_max < FRAME_MIN_SIZE {
            return Err(ProtocolError::not_allowed(format!(
                "negotiated frame_max = {frame_max} is lower than the minimum allowed value ({FRAME_MIN_SIZE})"
            )));
        }
        let channel_max = if tune_ok.channel_max == 0 {
            config.channel_max
        } else {
            tune_ok.channel_max
        };
        if channel_max > config.channel_max {
            return Err(ProtocolError::not_allowed(format!(
                "negotiated channel_max = {channel_max} is higher than the maximum allowed value ({})",
                config.channel_max
            )));
        }
        self.frame_max = frame_max;
        self.channel_max = channel_max;
        self.heartbeat_secs = tune_ok.heartbeat;
        Ok(())
    }

    /// The main loop after the handshake.
    async fn run(&mut self, mut shutdown: watch::Receiver<bool>) -> End {
        let beat = Duration::from_secs(self.heartbeat_secs.max(1) as u64);
        let mut ticker = tokio::time::interval(beat / 2);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut alarms = self.ctx.alarms.subscribe();
        self.alarm = *alarms.borrow_and_update();
        // Frames that arrived with connection.open (e.g. channel.open in the same segment)
        // are already buffered: run them before waiting for the socket.
        if let Some(end) = self.process_input().await {
            return end;
        }
        self.flush_confirms();
        self.flush();
        loop {
            if let Some(end) = self.apply_alarm().await {
                return end;
            }
            self.reserve_read();
            tokio::select! {
                read = self.reader.read_buf(&mut self.inbuf), if !self.blocked => {
                    match read {
                        Ok(0) | Err(_) => return End::SocketClosed,
                        Ok(n) => {
                            self.metrics.received(n);
                            self.last_read = Instant::now();
                            if n >= self.read_chunk / 2 && self.read_chunk < READ_BUFFER_BYTES {
                                self.read_chunk *= 2;
                            }
                            if let Some(end) = self.process_input().await {
                                return end;
                            }
                        }
                    }
                }
                Some(event) = self.events_rx.recv() => {
                    self.handle_event(event);
                    for _ in 1..EVENTS_PER_ITERATION_MAX {
                        match self.events_rx.try_recv() {
                            Ok(event) => self.handle_event(event),
                            Err(_) => break,
                        }
                    }
                }
                changed = alarms.changed() => {
                    if changed.is_ok() {
                        self.alarm = *alarms.borrow_and_update();
                    }
                }
                _ = ticker.tick(), if self.heartbeat_secs > 0 => {
                    let now = Instant::now();
                    // A blocked connection is not read, so its heartbeats are not expected
                    // (RabbitMQ pauses its heartbeat monitor the same way).
                    if !self.blocked && now.duration_since(self.last_read) > beat * 2 {
                        warn!(connection = self.id, peer = %self.peer, "missed heartbeats from client, closing connection");
                        return End::HeartbeatTimeout;
                    }
                    if now.duration_since(self.last_write) >= beat / 2 {
                        encode::heartbeat(&mut self.out);
                    }
                }
                writable = self.writer.writable(), if !self.out.is_empty() => {
                    if writable.is_err() {
                        return End::SocketClosed;
                    }
                }
                _ = shutdown.changed() => {
                    let err = ProtocolError::connection_forced(
                        "broker forced connection closure with reason 'shutdown'",
                    );
                    return self.close_with(err).await;
                }
            }
            if let Some(err) = self.forced_close.take() {
                return self.close_with(err).await;
            }
            self.flush_confirms();
            self.flush();
            if self.write_failed {
                return End::SocketClosed;
            }
        }
    }

    /// Runs every complete frame in the input buffer.
    async fn process_input(&mut self) -> Option<End> {
        loop {
            let frame = match decode_frame(&mut self.inbuf, self.frame_max) {
                Ok(Some(frame)) => frame,
                Ok(None) => return None,
                Err(e) => return Some(self.close_with(e).await),
            };
            match self.handle_frame(frame).await {
                Ok(None) => {}
                Ok(Some(end)) => return Some(end),
                Err(e) => return Some(self.close_with(e).await),
            }
            if !self.blocked_sends.is_empty() || !self.blocked_delayed.is_empty() {
                self.wait_blocked_sends().await;
            }
            if self.publisher && self.alarm.any() {
                // Blocked by a resource alarm: the rest of the buffer waits (`apply_alarm`).
                return None;
            }
            if !self.flow_waits.is_empty() {
                // Send what this batch produced (confirms) before holding the reader.
                self.flush_confirms();
                self.flush();
                self.wait_flow().await;
            }
        }
    }

    /// Blocks a publishing connection while a resource alarm is raised (connection.blocked
    /// if the client asked for it, and its socket is no longer read), and unblocks it once
    /// the alarm clears, running the frames that waited in its buffer.
    async fn apply_alarm(&mut self) -> Option<End> {
        let should_block = self.publisher && self.alarm.any();
        if should_block && !self.blocked {
            self.blocked = true;
            info!(connection = self.id, peer = %self.peer, reason = self.alarm.reason(), "connection blocked by a resource alarm");
            if self.blocked_notify {
                self.send_method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                        reason: self.alarm.reason().into(),
                    })),
                );
                self.flush();
            }
        } else if !should_block && self.blocked {
            self.blocked = false;
            self.last_read = Instant::now();
            info!(connection = self.id, peer = %self.peer, "connection unblocked");
            if self.blocked_notify {
                self.send_method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Unblocked(
                        connection::Unblocked {},
                    )),
                );
            }
            let end = self.process_input().await;
            self.flush_confirms();
            self.flush();
            return end;
        }
        None
    }

    /// Handles one frame; `Err` is a connection error, `Ok(Some)` the end of the connection.
    async fn handle_frame(&mut self, frame: Frame) -> Result<Option<End>, ProtocolError> {
        if frame.kind == FrameKind::Heartbeat {
            if frame.channel != 0 {
                return Err(ProtocolError::unexpected_frame(format!(
                    "heartbeat frame on channel {}, expected channel 0",
                    frame.channel
                )));
            }
            return Ok(None);
        }
        if frame.channel == 0 {
            return self.handle_channel_zero(frame).await;
        }
        self.handle_channel_frame(frame).await?;
        Ok(None)
    }

    async fn handle_channel_zero(&mut self, frame: Frame) -> Result<Option<End>, ProtocolError> {
        if frame.kind != FrameKind::Method {
            return Err(ProtocolError::unexpected_frame(
                "content frame on channel 0",
            ));
        }
        let method = decode_method(&frame.payload)?;
        match method.class {
            AMQPClass::Connection(connection::AMQPMethod::Close(close)) => {
                info!(
                    connection = self.id,
                    code = close.reply_code,
                    text = close.reply_text.as_str(),
                    "client closed the connection"
                );
                self.close_channels().await;
                self.send_method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                Ok(Some(End::ClosedByClient))
            }
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => Ok(Some(End::Closed)),
            AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(_)) => {
                self.send_method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(
                        connection::UpdateSecretOk {},
                    )),
                );
                Ok(None)
            }
            _ => Err(ProtocolError::channel_error(format!(
                "method {}.{} is not allowed on channel 0",
                method.class_id, method.method_id
            ))
            .on(method.class_id, method.method_id)),
        }
    }

    /// Sends connection.close for a hard error (or shutdown), then waits for close-ok,
    /// discarding everything else, as the spec requires.
    async fn close_with(&mut self, err: ProtocolError) -> End {
        if err.code != ReplyCode::ConnectionForced {
            warn!(
                connection = self.id,
                peer = %self.peer,
                code = err.code.code(),
                error = %err.reply_text(),
                class_id = err.class_id,
                method_id = err.method_id,
                "connection error"
            );
        }
        self.close_channels().await;
        self.send_close(err);
        // A peer that does not read must not hold the connection task forever.
        let _ = timeout(CLOSE_OK_TIMEOUT, self.flush_all()).await;
        let wait = async {
            loop {
                match self.read_frame().await {
                    Ok(Some(frame)) if frame.kind == FrameKind::Method && frame.channel == 0 => {
                        match decode_method(&frame.payload) {
                            Ok(Method {
                                class: AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)),
                                ..
                            }) => return,
                            Ok(Method {
                                class: AMQPClass::Connection(connection::AMQPMethod::Close(_)),
                                ..
                            }) => {
                                self.send_method(
                                    0,
                                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                                        connection::CloseOk {},
                                    )),
                                );
                                return;
                            }
                            _ => {}
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return,
                }
            }
        };
        let _ = timeout(CLOSE_OK_TIMEOUT, wait).await;
        End::Closed
    }

    /// After close-ok to the client's connection.close: sends it, then reads and discards until
    /// the client closes its side (or `CLOSE_LINGER_TIMEOUT`), so frames it wrote meanwhile
    /// never meet a closed socket.
    async fn linger(&mut self) {
        let _ = timeout(CLOSE_OK_TIMEOUT, self.flush_all()).await;
        let drain = async {
            loop {
                self.inbuf.clear();
                self.reserve_read();
                match self.reader.read_buf(&mut self.inbuf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        let _ = timeout(CLOSE_LINGER_TIMEOUT, drain).await;
    }

    /// Releases every channel's resources (unacked messages go back to their queues).
    async fn close_channels(&mut self) {
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        for id in ids {
            if let Some(mut channel) = self.channels.remove(&id) {
                channel.release();
            }
        }
    }

    async fn cleanup(&mut self) {
        self.close_channels().await;
        self.flush();
        if let Some(vhost) = self.vhost.clone() {
            vhost.connection_closed(self.id).await;
        }
        self.cleaned_up = true;
    }

    pub(crate) fn channel_max(&self) -> u16 {
        self.channel_max
    }
}

impl Drop for Connection {
    /// A connection task that panicked (or was cancelled) never reached `cleanup`: release
    /// its channels (their unacked messages go back to their queues) and its exclusive queues
    /// here, so nothing stays stranded until a restart.
    fn drop(&mut self) {
        if self.registered {
            self.ctx.broker.connections.deregister(self.id);
        }
        if self.counted {
            self.ctx
                .open_connections
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
        if self.cleaned_up {
            return;
        }
        for (_, mut channel) in self.channels.drain() {
            channel.release();
        }
        if let Some(vhost) = self.vhost.take() {
            tracing::error!(
                connection = self.id,
                peer = %self.peer,
                "connection task ended without cleanup (a bug); releasing its channels and queues"
            );
            let id = self.id;
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { vhost.connection_closed(id).await });
            }
        }
    }
}

fn unexpected_in_handshake(method: &Method, expected: &str) -> ProtocolError {
    ProtocolError::command_invalid(format!(
        "expected {expected}, got method {}.{}",
        method.class_id, method.method_id
    ))
    .on(method.class_id, method.method_id)
}
