//! One publishing connection. The writer (this task) copies a prebuilt message template into a
//! reused buffer, stamps it, and writes many messages per syscall; a reader task settles
//! publisher confirms and reopens the confirm window. They share only a semaphore (the window)
//! and a watch (how many were published in the end).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{watch, Semaphore};

use crate::client::{ClientError, Connection, READ_BUFFER_BYTES};
use crate::payload::{now_ns, Stamp, STAMP_BYTES};
use crate::stats::Shared;
use crate::tracker::{ConfirmWindow, SeqSet};
use crate::uri::AmqpUri;
use crate::wire::{parse_frame, Method, PublishTemplate, ServerMethod, FRAME_METHOD, GROUP_DIGITS};

/// The header that carries a message's group id with `--message-groups` (the tool declares
/// its queues with `x-message-group-header` naming it).
pub const GROUP_HEADER: &str = "warren-perf-group";

/// A write batch stops growing past this many bytes.
const BATCH_BYTES_MAX: usize = 64 * 1024;
/// How long a producer waits for close-ok: a broker throttling it may still be reading its
/// last messages, and only close-ok says it has read them all.
const PRODUCER_CLOSE_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a waiting reader looks at its drain deadline.
const DRAIN_POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub index: u16,
    pub exchange: String,
    pub routing_key: String,
    pub size: usize,
    pub persistent: bool,
    pub confirm: Option<u32>,
    pub rate: Option<f64>,
    /// With a rate: the last stretch before a message is due is spent spinning (yielding to
    /// the runtime, which polls sockets without sleeping) instead of in a timer, so neither
    /// the send nor the next delivery waits for a sleeping core to wake. Zero: timers only.
    pub busy_poll: Duration,
    pub count: Option<u64>,
    pub drain_timeout: Duration,
    /// Message groups: message `seq` carries group `seq % groups` in `GROUP_HEADER`.
    pub groups: Option<u32>,
}

#[derive(Debug)]
pub struct ProducerResult {
    pub sent: u64,
    /// What must reach the queues: the confirmed messages, or every sent one without confirms.
    pub expected: SeqSet,
    pub confirmed: u64,
    pub nacked: u64,
    pub returned: u64,
    pub publish_done: Instant,
    pub last_confirm: Option<Instant>,
}

struct ReaderResult {
    read: OwnedReadHalf,
    buffer: BytesMut,
    window: ConfirmWindow,
    returned: u64,
    last_confirm: Option<Instant>,
}

pub async fn run_producer(
    uri: AmqpUri,
    cfg: ProducerConfig,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Result<ProducerResult, ClientError> {
    let mut conn = Connection::open(&uri, &format!("warren-perf producer {}", cfg.index)).await?;
    conn.open_channel(1).await?;
    if cfg.confirm.is_some() {
        conn.call(1, Method::ConfirmSelect, |m| {
            matches!(m, ServerMethod::ConfirmSelectOk)
        })
        .await?;
    }
    let template = PublishTemplate::new(
        1,
        &cfg.exchange,
        &cfg.routing_key,
        cfg.size,
        cfg.persistent,
        cfg.groups.map(|_| GROUP_HEADER),
        conn.frame_max,
    );
    let (stream, buffer, frame_max) = conn.into_parts();
    let (read, mut write) = stream.into_split();
    let window = Arc::new(Semaphore::new(cfg.confirm.unwrap_or(0) as usize));
    let (final_tx, final_rx) = watch::channel(None::<u64>);
    let reader = tokio::spawn(read_confirms(
        read,
        buffer,
        frame_max,
        window.clone(),
        shared.clone(),
        final_rx,
        cfg.confirm.is_some(),
        cfg.drain_timeout,
    ));

    let (seq, write_error) =
        publish(&mut write, &template, &cfg, &shared, &window, &mut stop).await;
    let publish_done = Instant::now();
    let _ = final_tx.send(Some(seq));
    let joined = reader.await;
    if let Some(e) = write_error {
        shared.error(format!("producer {}: write failed: {e}", cfg.index));
    }
    let r = match joined {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(e),
        Err(e) => return Err(ClientError::Unexpected(format!("reader task: {e}"))),
    };
    let expected = if cfg.confirm.is_some() {
        r.window.acked.clone()
    } else {
        SeqSet::first_n(seq)
    };
    let result = ProducerResult {
        sent: seq,
        expected,
        confirmed: r.window.acked_count,
        nacked: r.window.nacked_count,
        returned: r.returned,
        publish_done,
        last_confirm: r.last_confirm,
    };
    if let Ok(stream) = r.read.reunite(write) {
        let conn = Connection::from_parts(stream, r.buffer, frame_max);
        if !conn.close_within(PRODUCER_CLOSE_TIMEOUT).await {
            shared.error(format!(
                "producer {}: no connection.close-ok within {PRODUCER_CLOSE_TIMEOUT:?}; its last messages may not have reached the broker",
                cfg.index
            ));
        }
    }
    Ok(result)
}

/// Publishes until `stop`, the count, or a failure; returns how many were written and the
/// write error, if any. The confirm window (`window`) bounds unconfirmed messages.
async fn publish(
    write: &mut OwnedWriteHalf,
    template: &PublishTemplate,
    cfg: &ProducerConfig,
    shared: &Shared,
    window: &Semaphore,
    stop: &mut watch::Receiver<bool>,
) -> (u64, Option<std::io::Error>) {
    let per_batch_max = (BATCH_BYTES_MAX / template.bytes.len()).max(1) as u64;
    let mut out = Vec::with_capacity(BATCH_BYTES_MAX + template.bytes.len());
    let mut seq: u64 = 0;
    let started = Instant::now();
    let mut write_error = None;
    loop {
        if *stop.borrow() {
            break;
        }
        let mut n = per_batch_max;
        if let Some(count) = cfg.count {
            if seq >= count {
                break;
            }
            n = n.min(count - seq);
        }
        if let Some(rate) = cfg.rate {
            // Message k (from 0) is due at k / rate seconds.
            let due = (started.elapsed().as_secs_f64() * rate) as u64 + 1;
            if due <= seq {
                let at = started + Duration::from_secs_f64(seq as f64 / rate);
                let wake = at.checked_sub(cfg.busy_poll).unwrap_or(at);
                let now = Instant::now();
                if now >= wake {
                    tokio::task::yield_now().await;
                } else if cfg.busy_poll.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep_until(wake.into()) => {}
                        changed = stop.changed() => if changed.is_err() { break },
                    }
                } else {
                    // tokio's timers tick in milliseconds; a blocking thread's sleep is precise
                    // to tens of microseconds, so the spin before the send stays short.
                    let nap = wake - now;
                    tokio::select! {
                        _ = tokio::task::spawn_blocking(move || std::thread::sleep(nap)) => {}
                        changed = stop.changed() => if changed.is_err() { break },
                    }
                }
                continue;
            }
            n = n.min(due - seq);
        }
        if cfg.confirm.is_some() {
            let available = window.available_permits() as u64;
            if available == 0 {
                tokio::select! {
                    permit = window.acquire() => match permit {
                        Ok(p) => { p.forget(); n = 1; }
                        Err(_) => break, // closed: the reader saw the channel fail
                    },
                    changed = stop.changed() => if changed.is_err() { break } else { continue },
                }
            } else {
                n = n.min(available);
                match window.try_acquire_many(n as u32) {
                    Ok(p) => p.forget(),
                    Err(_) => break,
                }
            }
        }
        fill_batch(
            &mut out,
            template,
            seq,
            n,
            cfg.index,
            shared.run_tag,
            cfg.groups,
        );
        seq += n;
        if let Err(e) = write.write_all(&out).await {
            seq -= n;
            write_error = Some(e);
            break;
        }
        shared.counters.published.fetch_add(n, Relaxed);
    }
    (seq, write_error)
}

/// Replaces `out` with messages `after + 1 ..= after + n`, each stamped as it is copied.
fn fill_batch(
    out: &mut Vec<u8>,
    template: &PublishTemplate,
    after: u64,
    n: u64,
    producer: u16,
    run_tag: u16,
    groups: Option<u32>,
) {
    out.clear();
    for seq in after + 1..=after + n {
        let at = out.len();
        out.extend_from_slice(&template.bytes);
        let stamp = Stamp {
            sent_ns: now_ns(),
            seq: seq as u32,
            producer,
            run_tag,
        };
        let start = at + template.stamp_offset;
        stamp.write(&mut out[start..start + STAMP_BYTES]);
        if let (Some(offset), Some(groups)) = (template.group_offset, groups) {
            let mut group = seq % u64::from(groups.max(1));
            for digit in out[at + offset..at + offset + GROUP_DIGITS]
                .iter_mut()
                .rev()
            {
                *digit = b'0' + (group % 10) as u8;
                group /= 10;
            }
        }
    }
}

/// Reads the producer's socket: confirms, returns, closes. Ends when every published message
/// is settled (or without confirms, as soon as the writer is done), or when the drain timeout
/// passes without progress.
#[allow(clippy::too_many_arguments)]
async fn read_confirms(
    mut read: OwnedReadHalf,
    mut buffer: BytesMut,
    frame_max: u32,
    window_permits: Arc<Semaphore>,
    shared: Arc<Shared>,
    mut final_rx: watch::Receiver<Option<u64>>,
    confirms: bool,
    drain_timeout: Duration,
) -> Result<ReaderResult, ClientError> {
    let mut window = ConfirmWindow::new();
    let mut returned = 0;
    let mut last_confirm = None;
    let mut final_count: Option<u64> = None;
    let mut last_progress = Instant::now();
    loop {
        if let Some(total) = final_count {
            if !confirms || window.settled_count() >= total {
                break;
            }
            if last_progress.elapsed() > drain_timeout {
                shared.error(format!(
                    "{} of {total} publishes still unconfirmed {drain_timeout:?} after the last confirm",
                    total - window.settled_count()
                ));
                break;
            }
        }
        tokio::select! {
            n = read.read_buf(&mut buffer) => {
                if n? == 0 {
                    window_permits.close();
                    return Err(ClientError::Eof);
                }
            }
            changed = final_rx.changed(), if final_count.is_none() => {
                final_count = match changed {
                    Ok(()) => *final_rx.borrow(),
                    Err(_) => Some(0),
                };
                last_progress = Instant::now();
                continue;
            }
            _ = tokio::time::sleep(DRAIN_POLL), if final_count.is_some() => continue,
        }
        let mut used = 0;
        let (mut acked, mut nacked) = (0, 0);
        while let Some((frame, len)) = parse_frame(&buffer[used..], frame_max)? {
            used += len;
            if frame.kind != FRAME_METHOD {
                continue; // content of a basic.return, heartbeats
            }
            match ServerMethod::decode(frame.payload)? {
                ServerMethod::BasicAck {
                    delivery_tag,
                    multiple,
                } => acked += window.settle(delivery_tag, multiple, true),
                ServerMethod::BasicNack {
                    delivery_tag,
                    multiple,
                } => nacked += window.settle(delivery_tag, multiple, false),
                ServerMethod::BasicReturn { .. } => returned += 1,
                ServerMethod::ChannelClose { code, text } => {
                    window_permits.close();
                    return Err(ClientError::ChannelClosed {
                        code,
                        text: text.to_string(),
                    });
                }
                ServerMethod::ConnectionClose { code, text } => {
                    window_permits.close();
                    return Err(ClientError::ConnectionClosed {
                        code,
                        text: text.to_string(),
                    });
                }
                _ => {}
            }
        }
        buffer.advance(used);
        buffer.reserve(READ_BUFFER_BYTES);
        if acked + nacked > 0 {
            let now = Instant::now();
            last_progress = now;
            last_confirm = Some(now);
            shared.counters.confirmed.fetch_add(acked, Relaxed);
            shared.counters.nacked.fetch_add(nacked, Relaxed);
            window_permits.add_permits((acked + nacked) as usize);
        }
    }
    shared.counters.returned.fetch_add(returned, Relaxed);
    Ok(ReaderResult {
        read,
        buffer,
        window,
        returned,
        last_confirm,
    })
}
