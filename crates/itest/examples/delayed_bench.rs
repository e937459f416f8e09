//! Lateness of delayed messages: publishes `--messages` messages to a delayed exchange with
//! due times spread so that `--rate` come due per second (starting `--lead-ms` from now),
//! consumes them, and prints how late each arrived (arrival − intended due time) as
//! p50 / p99 / max. With `--no-consume` it only builds a backlog (for memory measurements).
//! `--persistent` sets delivery_mode 2, `--durable` declares the exchange durable.
//! `--no-bind` binds no queue (implies `--no-consume`): due messages are routed nowhere, so
//! the broker's memory is the schedule's alone (`--rate` equal to `--messages` makes them
//! all due in the same second).
//!
//! ```text
//! cargo run --release -p warren-itest --example delayed_bench -- \
//!     --url amqp://guest:guest@127.0.0.1:5672/%2f --messages 100000 --rate 10000
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_lite::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

struct Args {
    url: String,
    messages: u64,
    rate: u64,
    lead_ms: u64,
    consume: bool,
    persistent: bool,
    durable: bool,
    bind: bool,
}

fn args() -> Args {
    let mut a = Args {
        url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
        messages: 100_000,
        rate: 10_000,
        lead_ms: 5_000,
        consume: true,
        persistent: false,
        durable: false,
        bind: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().expect("a value after the flag");
        match flag.as_str() {
            "--url" => a.url = value(),
            "--messages" => a.messages = value().parse().expect("--messages N"),
            "--rate" => a.rate = value().parse().expect("--rate N"),
            "--lead-ms" => a.lead_ms = value().parse().expect("--lead-ms N"),
            "--no-consume" => a.consume = false,
            "--persistent" => a.persistent = true,
            "--durable" => a.durable = true,
            "--no-bind" => {
                a.bind = false;
                a.consume = false;
            }
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let a = args();
    let conn = Connection::connect(&a.url, ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let exchange = format!("bench.delayed.{}", std::process::id());
    let mut xargs = FieldTable::default();
    xargs.insert(
        "x-delayed-type".into(),
        AMQPValue::LongString("direct".into()),
    );
    ch.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Custom("x-delayed-message".into()),
        ExchangeDeclareOptions {
            durable: a.durable,
            ..Default::default()
        },
        xargs,
    )
    .await
    .expect("exchange.declare");
    let queue = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue.declare")
        .name()
        .clone();
    if a.bind {
        ch.queue_bind(
            queue.clone(),
            exchange.as_str().into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue.bind");
    }

    let consumer = if a.consume {
        let cch = conn.create_channel().await.expect("channel");
        let mut consumer = cch
            .basic_consume(
                queue.clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let n = a.messages;
        Some(tokio::spawn(async move {
            let mut late_us: Vec<i64> = Vec::with_capacity(n as usize);
            while (late_us.len() as u64) < n {
                let next = tokio::time::timeout(Duration::from_secs(60), consumer.next()).await;
                let Ok(Some(Ok(d))) = next else { break };
                let arrived = now_us() as i64;
                let due = d
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|h| match h.inner().get("due-us") {
                        Some(AMQPValue::LongLongInt(v)) => Some(*v),
                        _ => None,
                    })
                    .unwrap_or(arrived);
                late_us.push(arrived - due);
            }
            late_us
        }))
    } else {
        None
    };

    let start_us = now_us() + a.lead_ms * 1000;
    let step_us = 1_000_000 / a.rate.max(1);
    let mut overdue_at_publish = 0u64;
    let publish_started = std::time::Instant::now();
    for i in 0..a.messages {
        let due_us = start_us + i * step_us;
        let now = now_us();
        // x-delay is whole milliseconds: round up so no message is asked to be early.
        let delay_ms = due_us.saturating_sub(now).div_ceil(1000) as i64;
        if delay_ms <= 0 {
            overdue_at_publish += 1;
        }
        let mut headers = FieldTable::default();
        headers.insert("x-delay".into(), AMQPValue::LongLongInt(delay_ms.max(1)));
        headers.insert("due-us".into(), AMQPValue::LongLongInt(due_us as i64));
        let mut props = BasicProperties::default().with_headers(headers);
        if a.persistent {
            props = props.with_delivery_mode(2);
        }
        ch.basic_publish(
            exchange.as_str().into(),
            "k".into(),
            BasicPublishOptions::default(),
            b"delayed-bench",
            props,
        )
        .await
        .expect("publish");
    }
    let took = publish_started.elapsed();
    println!(
        "published {} in {:.2} s ({:.0}/s); {} were already due when published",
        a.messages,
        took.as_secs_f64(),
        a.messages as f64 / took.as_secs_f64(),
        overdue_at_publish
    );
    let Some(consumer) = consumer else {
        println!("backlog built; not consuming (exchange {exchange}); press Ctrl-C to end");
        // Keep the connection (and its exclusive queue) while memory is measured.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return;
    };
    let mut late = consumer.await.expect("consumer task");
    late.sort_unstable();
    let pct = |p: f64| late[((late.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0;
    if late.is_empty() {
        println!("nothing arrived");
        return;
    }
    println!(
        "received {} at {} due/s: lateness p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, min {:.2} ms",
        late.len(),
        a.rate,
        pct(0.5),
        pct(0.99),
        pct(1.0),
        pct(0.0)
    );
}
