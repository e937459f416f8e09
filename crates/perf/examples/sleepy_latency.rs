//! Publish → deliver latency as an ordinary application sees it: one producer and one consumer
//! connection through `amqprs` (a third-party client) on a stock tokio runtime, the producer
//! *sleeping* between messages (a tokio interval) instead of spinning as `warren-perf` does.
//! This is the client that showed busy polling making latency worse (issue 9, item 11): a
//! broker is only as fast as its slowest wake-up, and a client that sleeps never keeps the
//! broker's cores warm for it.
//!
//! Each message carries its send time (nanoseconds since the run started, little-endian) in
//! the first 8 bytes of its body; the consumer (autoack, its own connection, a server-named
//! exclusive queue) records the difference. The first [`WARMUP`] of messages are not counted.
//!
//! ```sh
//! cargo run --release -p warren-perf --example sleepy_latency -- \
//!     --port 5672 --rate 1000 --size 16 --seconds 10
//! ```
//!
//! Prints one line: `sent=… received=… p50_us=… p99_us=… p999_us=… max_us=…`, or with
//! `--json` one JSON object shaped like `warren-perf --json`'s report (`sent`, `received`,
//! `latency.p50_us` …), which is what `bench/run.sh` reads.

use std::time::{Duration, Instant};

use amqprs::channel::{BasicConsumeArguments, BasicPublishArguments, QueueDeclareArguments};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::BasicProperties;
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use tokio::time::MissedTickBehavior;

/// Messages sent in this first stretch are not counted (connections and windows settle).
const WARMUP: Duration = Duration::from_secs(1);
/// Bytes of the body that carry the send time.
const STAMP_BYTES: usize = 8;
/// How long the consumer waits for stragglers after the producer stopped.
const DRAIN: Duration = Duration::from_secs(2);
/// The highest latency the histogram records (microseconds); above is clamped.
const LATENCY_MAX_US: u64 = 60_000_000;

struct Options {
    host: String,
    port: u16,
    rate: u32,
    size: usize,
    seconds: u64,
    json: bool,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        host: "127.0.0.1".into(),
        port: 5672,
        rate: 1000,
        size: 16,
        seconds: 10,
        json: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--json" {
            o.json = true;
            continue;
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--host" => o.host = value,
            "--port" => o.port = value.parse()?,
            "--rate" => o.rate = value.parse()?,
            "--size" => o.size = value.parse()?,
            "--seconds" => o.seconds = value.parse()?,
            _ => bail!("unknown flag {flag} (--host --port --rate --size --seconds --json)"),
        }
    }
    if o.rate == 0 || o.size < STAMP_BYTES {
        bail!("--rate must be positive and --size at least {STAMP_BYTES}");
    }
    Ok(o)
}

async fn open(o: &Options) -> anyhow::Result<Connection> {
    let args = OpenConnectionArguments::new(&o.host, o.port, "guest", "guest");
    Connection::open(&args).await.context("connect")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = options()?;
    let consumer_conn = open(&o).await?;
    let consumer = consumer_conn.open_channel(None).await?;
    let (queue, _, _) = consumer
        .queue_declare(QueueDeclareArguments::exclusive_server_named())
        .await?
        .context("queue.declare-ok")?;
    let mut consume = BasicConsumeArguments::new(&queue, "sleepy");
    consume.manual_ack(false);
    let (_tag, mut deliveries) = consumer.basic_consume_rx(consume).await?;

    let producer_conn = open(&o).await?;
    let producer = producer_conn.open_channel(None).await?;
    let start = Instant::now();
    let run = Duration::from_secs(o.seconds);
    let size = o.size;
    let rate = o.rate;
    let publish_to = queue.clone();
    let publisher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut sent = 0u64;
        let args = BasicPublishArguments::new("", &publish_to);
        while start.elapsed() < run {
            tick.tick().await;
            let mut body = vec![0u8; size];
            let now = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            body[..STAMP_BYTES].copy_from_slice(&now.to_le_bytes());
            producer
                .basic_publish(BasicProperties::default(), body, args.clone())
                .await?;
            sent += 1;
        }
        anyhow::Ok((sent, producer))
    });

    let mut histogram = Histogram::<u64>::new_with_bounds(1, LATENCY_MAX_US, 3)?;
    let mut received = 0u64;
    let warmup_ns = u64::try_from(WARMUP.as_nanos())?;
    loop {
        let wait = (run + DRAIN).saturating_sub(start.elapsed());
        let Ok(Some(message)) = tokio::time::timeout(wait, deliveries.recv()).await else {
            break;
        };
        let now = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let body = message.content.unwrap_or_default();
        let Some(stamp) = body.get(..STAMP_BYTES) else {
            bail!("a body shorter than its time stamp");
        };
        let sent_ns = u64::from_le_bytes(stamp.try_into()?);
        received += 1;
        if sent_ns >= warmup_ns {
            let us = now.saturating_sub(sent_ns) / 1000;
            histogram.saturating_record(us.clamp(1, LATENCY_MAX_US));
        }
        if start.elapsed() >= run && publisher.is_finished() {
            let (sent, _) = publisher.await??;
            if received >= sent {
                return report(&o, sent, received, &histogram);
            }
            // Lost messages: wait out the drain time, then report.
            let received = drain(sent, received, &mut deliveries, start + run + DRAIN).await;
            return report(&o, sent, received, &histogram);
        }
    }
    let (sent, _) = publisher.await??;
    report(&o, sent, received, &histogram)
}

/// Counts deliveries until `sent` arrived or `until` passed; returns the new count.
async fn drain(
    sent: u64,
    mut received: u64,
    deliveries: &mut tokio::sync::mpsc::UnboundedReceiver<amqprs::channel::ConsumerMessage>,
    until: Instant,
) -> u64 {
    while received < sent {
        let wait = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(wait, deliveries.recv()).await {
            Ok(Some(_)) => received += 1,
            _ => break,
        }
    }
    received
}

fn report(o: &Options, sent: u64, received: u64, h: &Histogram<u64>) -> anyhow::Result<()> {
    let q = |quantile| h.value_at_quantile(quantile);
    if o.json {
        println!(
            "{{\"sent\":{sent},\"received\":{received},\"latency\":{{\"p50_us\":{},\"p95_us\":{},\
             \"p99_us\":{},\"p999_us\":{},\"max_us\":{}}}}}",
            q(0.5),
            q(0.95),
            q(0.99),
            q(0.999),
            h.max()
        );
    } else {
        println!(
            "sent={sent} received={received} p50_us={} p99_us={} p999_us={} max_us={}",
            q(0.5),
            q(0.99),
            q(0.999),
            h.max()
        );
    }
    if received < sent {
        bail!("{} messages lost", sent - received);
    }
    Ok(())
}
