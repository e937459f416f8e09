//! One consuming connection: basic.consume on one queue, then a loop that reads big chunks,
//! walks the frames in place (deliver → header → body), records latency and sequence numbers
//! from each body's stamp, and writes the acks for a whole chunk at once. No allocation per
//! message.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::client::{ClientError, Connection, READ_BUFFER_BYTES};
use crate::payload::{now_ns, Stamp, STAMP_BYTES};
use crate::stats::{new_histogram, Shared};
use crate::tracker::SeqSet;
use crate::uri::AmqpUri;
use crate::wire::{
    content_body_size, parse_frame, Frame, Method, ServerMethod, WireError, FRAME_BODY,
    FRAME_HEADER, FRAME_METHOD,
};

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub index: u16,
    pub queue: String,
    pub queue_index: usize,
    pub autoack: bool,
    pub qos: u16,
    pub multi_ack_every: u32,
}

impl ConsumerConfig {
    /// Acks go out every N deliveries, but never later than the prefetch window fills, or the
    /// broker would stop delivering and the consumer would wait forever.
    fn ack_every(&self) -> u64 {
        let every = u64::from(self.multi_ack_every.max(1));
        if self.qos > 0 {
            every.min(u64::from(self.qos))
        } else {
            every
        }
    }
}

#[derive(Debug)]
pub struct ConsumerResult {
    pub queue_index: usize,
    /// Sequence numbers received, per producer.
    pub received: Vec<SeqSet>,
    pub latency: Histogram<u64>,
    pub unique: u64,
    pub duplicates: u64,
    pub foreign: u64,
    pub last_message: Option<Instant>,
}

/// Where a delivery's content stands.
#[derive(Debug, Clone, Copy)]
enum Assembly {
    Idle,
    AwaitingHeader { tag: u64 },
    Body { tag: u64, remaining: u64 },
}

struct State {
    assembly: Assembly,
    stamp: [u8; STAMP_BYTES],
    stamp_len: usize,
    run_tag: u16,
    received: Vec<SeqSet>,
    latency: Histogram<u64>,
    unique: u64,
    duplicates: u64,
    foreign: u64,
    /// The newest delivery tag seen, and how often one was not its predecessor + 1.
    last_delivery_tag: u64,
    tag_gaps: u64,
    /// Acks not yet sent, and the newest delivery tag among them.
    unacked: u64,
    last_tag: u64,
    ack_every: u64,
    autoack: bool,
    // Per read batch, flushed into the shared counters.
    batch_fresh: u64,
    batch_latency_sum: u64,
    batch_latency_max: u64,
}

impl State {
    fn complete(&mut self, tag: u64, now: u64, acks: &mut Vec<u8>) {
        match Stamp::read(&self.stamp[..self.stamp_len]) {
            Some(s) if s.run_tag == self.run_tag && (s.producer as usize) < self.received.len() => {
                let latency = now.saturating_sub(s.sent_ns);
                self.latency.saturating_record(latency.max(1));
                if self.received[s.producer as usize].insert(u64::from(s.seq)) {
                    self.unique += 1;
                    self.batch_fresh += 1;
                    self.batch_latency_sum += latency;
                    self.batch_latency_max = self.batch_latency_max.max(latency);
                } else {
                    self.duplicates += 1;
                }
            }
            _ => self.foreign += 1,
        }
        self.stamp_len = 0;
        self.assembly = Assembly::Idle;
        if !self.autoack {
            self.unacked += 1;
            self.last_tag = tag;
            if self.unacked >= self.ack_every {
                self.flush_acks(acks);
            }
        }
    }

    fn flush_acks(&mut self, acks: &mut Vec<u8>) {
        if self.unacked == 0 {
            return;
        }
        Method::BasicAck {
            delivery_tag: self.last_tag,
            multiple: self.unacked > 1 || self.ack_every > 1,
        }
        .encode(acks, 1);
        self.unacked = 0;
    }

    fn body(&mut self, payload: &[u8], now: u64, acks: &mut Vec<u8>) -> Result<(), WireError> {
        let Assembly::Body { tag, remaining } = self.assembly else {
            return Err(WireError::Truncated("body frame without a delivery"));
        };
        if self.stamp_len < STAMP_BYTES {
            let take = (STAMP_BYTES - self.stamp_len).min(payload.len());
            self.stamp[self.stamp_len..self.stamp_len + take].copy_from_slice(&payload[..take]);
            self.stamp_len += take;
        }
        let remaining = remaining.saturating_sub(payload.len() as u64);
        if remaining == 0 {
            self.complete(tag, now, acks);
        } else {
            self.assembly = Assembly::Body { tag, remaining };
        }
        Ok(())
    }
}

/// Why the consuming loop ended.
enum End {
    Stopped,
    Cancelled,
}

impl State {
    fn new(cfg: &ConsumerConfig, shared: &Shared) -> State {
        State {
            assembly: Assembly::Idle,
            stamp: [0; STAMP_BYTES],
            stamp_len: 0,
            run_tag: shared.run_tag,
            received: vec![SeqSet::default(); shared.producers as usize],
            latency: new_histogram(),
            unique: 0,
            duplicates: 0,
            foreign: 0,
            last_delivery_tag: 0,
            tag_gaps: 0,
            unacked: 0,
            last_tag: 0,
            ack_every: cfg.ack_every(),
            autoack: cfg.autoack,
            batch_fresh: 0,
            batch_latency_sum: 0,
            batch_latency_max: 0,
        }
    }

    fn messages(&self) -> u64 {
        self.unique + self.duplicates + self.foreign
    }

    /// Takes one frame of the consumer's channel; `Some(End)` when the server ended it.
    fn frame(
        &mut self,
        frame: Frame,
        now: u64,
        acks: &mut Vec<u8>,
    ) -> Result<Option<End>, ClientError> {
        match frame.kind {
            FRAME_BODY => self.body(frame.payload, now, acks)?,
            FRAME_HEADER => {
                let Assembly::AwaitingHeader { tag } = self.assembly else {
                    return Err(WireError::Truncated("header without a delivery").into());
                };
                match content_body_size(frame.payload)? {
                    0 => self.complete(tag, now, acks),
                    remaining => self.assembly = Assembly::Body { tag, remaining },
                }
            }
            FRAME_METHOD => match ServerMethod::decode(frame.payload)? {
                ServerMethod::BasicDeliver { delivery_tag } => {
                    // Tags count deliveries on the channel from 1: a jump means frames
                    // went missing between the socket and here.
                    if delivery_tag != self.last_delivery_tag + 1 {
                        self.tag_gaps += 1;
                    }
                    self.last_delivery_tag = delivery_tag;
                    self.assembly = Assembly::AwaitingHeader { tag: delivery_tag }
                }
                ServerMethod::BasicCancel => return Ok(Some(End::Cancelled)),
                ServerMethod::ChannelClose { code, text } => {
                    return Err(ClientError::ChannelClosed {
                        code,
                        text: text.to_string(),
                    })
                }
                ServerMethod::ConnectionClose { code, text } => {
                    return Err(ClientError::ConnectionClosed {
                        code,
                        text: text.to_string(),
                    })
                }
                _ => {}
            },
            _ => {} // heartbeats
        }
        Ok(None)
    }
}

/// Opens the consumer's connection, sets its prefetch and starts consuming.
async fn subscribe(uri: &AmqpUri, cfg: &ConsumerConfig) -> Result<Connection, ClientError> {
    let mut conn = Connection::open(uri, &format!("warren-perf consumer {}", cfg.index)).await?;
    conn.open_channel(1).await?;
    if cfg.qos > 0 {
        conn.call(
            1,
            Method::BasicQos {
                prefetch_count: cfg.qos,
            },
            |m| matches!(m, ServerMethod::BasicQosOk),
        )
        .await?;
    }
    conn.call(
        1,
        Method::BasicConsume {
            queue: &cfg.queue,
            consumer_tag: &format!("warren-perf-{}", cfg.index),
            no_ack: cfg.autoack,
        },
        |m| matches!(m, ServerMethod::BasicConsumeOk),
    )
    .await?;
    Ok(conn)
}

/// Consumes until `stop` (or the server cancels); says on `ready` once consuming.
pub async fn run_consumer(
    uri: AmqpUri,
    cfg: ConsumerConfig,
    shared: Arc<Shared>,
    ready: mpsc::Sender<Result<(), String>>,
    stop: watch::Receiver<bool>,
) -> Result<ConsumerResult, ClientError> {
    let conn = match subscribe(&uri, &cfg).await {
        Ok(c) => {
            let _ = ready.send(Ok(())).await;
            c
        }
        Err(e) => {
            let _ = ready
                .send(Err(format!("consumer {} on {}: {e}", cfg.index, cfg.queue)))
                .await;
            return Err(e);
        }
    };
    drop(ready);
    let (mut stream, mut buffer, frame_max) = conn.into_parts();
    let mut st = State::new(&cfg, &shared);
    let mut acks = Vec::with_capacity(64 * 1024);
    let (end, last_message) = consume(
        &mut stream,
        &mut buffer,
        frame_max,
        &mut st,
        &mut acks,
        &shared,
        stop,
    )
    .await?;
    st.flush_acks(&mut acks);
    if !acks.is_empty() {
        stream.write_all(&acks).await?;
    }
    if st.tag_gaps > 0 {
        shared.error(format!(
            "consumer {}: {} jumps in delivery tags (a parsing bug in warren-perf, or a broker skipping tags)",
            cfg.index, st.tag_gaps
        ));
    }
    if let End::Cancelled = end {
        shared.error(format!(
            "consumer {} on {}: cancelled by the server",
            cfg.index, cfg.queue
        ));
    }
    Connection::from_parts(stream, buffer, frame_max)
        .close()
        .await;
    Ok(ConsumerResult {
        queue_index: cfg.queue_index,
        received: st.received,
        latency: st.latency,
        unique: st.unique,
        duplicates: st.duplicates,
        foreign: st.foreign,
        last_message,
    })
}

/// The hot loop: read a chunk, handle every whole frame in it, write its acks.
async fn consume(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
    frame_max: u32,
    st: &mut State,
    acks: &mut Vec<u8>,
    shared: &Shared,
    mut stop: watch::Receiver<bool>,
) -> Result<(End, Option<Instant>), ClientError> {
    let mut last_message = None;
    loop {
        if *stop.borrow() {
            return Ok((End::Stopped, last_message));
        }
        tokio::select! {
            n = stream.read_buf(buffer) => {
                if n? == 0 {
                    return Err(ClientError::Eof);
                }
            }
            _ = stop.changed() => return Ok((End::Stopped, last_message)),
        }
        // One clock read per chunk: every message in it had arrived by now.
        let now = now_ns();
        let before = st.messages();
        let mut used = 0;
        let mut ended = None;
        while let Some((frame, len)) = parse_frame(&buffer[used..], frame_max)? {
            used += len;
            if let Some(end) = st.frame(frame, now, acks)? {
                ended = Some(end);
            }
        }
        buffer.advance(used);
        buffer.reserve(READ_BUFFER_BYTES);
        if !acks.is_empty() {
            stream.write_all(acks).await?;
            acks.clear();
        }
        if st.messages() > before {
            last_message = Some(Instant::now());
        }
        flush_batch(st, shared);
        if let Some(end) = ended {
            return Ok((end, last_message));
        }
    }
}

fn flush_batch(st: &mut State, shared: &Shared) {
    let c = &shared.counters;
    if st.batch_fresh > 0 {
        c.received.fetch_add(st.batch_fresh, Relaxed);
        c.latency_sum_ns.fetch_add(st.batch_latency_sum, Relaxed);
        c.latency_count.fetch_add(st.batch_fresh, Relaxed);
        c.latency_max_ns.fetch_max(st.batch_latency_max, Relaxed);
    }
    st.batch_fresh = 0;
    st.batch_latency_sum = 0;
    st.batch_latency_max = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_never_wait_past_the_prefetch() {
        let cfg = |every, qos| ConsumerConfig {
            index: 0,
            queue: String::new(),
            queue_index: 0,
            autoack: false,
            qos,
            multi_ack_every: every,
        };
        assert_eq!(cfg(1, 0).ack_every(), 1);
        assert_eq!(cfg(1000, 100).ack_every(), 100);
        assert_eq!(cfg(10, 100).ack_every(), 10);
        assert_eq!(cfg(50, 0).ack_every(), 50);
    }
}
