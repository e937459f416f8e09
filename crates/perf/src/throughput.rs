//! The `throughput` and `backlog` scenarios: declares the topology, starts consumers and
//! producers, stops publishing on time (or count), waits for confirms and deliveries to
//! drain, runs the loss check and tidies up.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::args::{Args, ExchangeType, Scenario};
use crate::client::{ClientError, Connection};
use crate::consumer::{run_consumer, ConsumerConfig, ConsumerResult};
use crate::producer::{run_producer, ProducerConfig, ProducerResult};
use crate::stats::{
    new_histogram, rate, report_every_second, LatencySummary, Output, Report, Shared,
};
use crate::tracker::{check_loss, LossReport, SeqSet};
use crate::uri::AmqpUri;
use crate::wire::{Method, ServerMethod};

/// How often the drain loop looks at the received counter.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// The drain's patience when queue arguments let the broker drop messages.
const DROPPING_DRAIN_IDLE: Duration = Duration::from_secs(1);
/// How long consumers may take to start consuming.
const CONSUMER_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Who publishes where and who consumes what.
#[derive(Debug, Clone)]
pub struct Topology {
    pub exchange: String,
    pub exchange_type: ExchangeType,
    pub queues: Vec<String>,
    /// Routing key per producer.
    pub routing_keys: Vec<String>,
    /// Queues each producer's messages reach.
    pub routes: Vec<Vec<usize>>,
    /// Queue per consumer.
    pub consumer_queue: Vec<usize>,
}

impl Topology {
    pub fn plan(args: &Args) -> Topology {
        let queues = args.queue_list();
        let exchange = args.exchange_name();
        let q = queues.len();
        let fanout = args.exchange_type == ExchangeType::Fanout && !exchange.is_empty();
        let routes = (0..args.producers as usize)
            .map(|p| {
                if fanout {
                    (0..q).collect()
                } else {
                    vec![p % q]
                }
            })
            .collect();
        let routing_keys = (0..args.producers as usize)
            .map(|p| {
                let queue = &queues[p % q];
                match (exchange.is_empty(), args.exchange_type) {
                    (true, _) | (false, ExchangeType::Direct) => queue.clone(),
                    (false, ExchangeType::Fanout) => String::new(),
                    (false, ExchangeType::Topic) => format!("{queue}.p{p}"),
                }
            })
            .collect();
        Topology {
            exchange,
            exchange_type: args.exchange_type,
            routing_keys,
            routes,
            consumer_queue: (0..args.consumers as usize).map(|c| c % q).collect(),
            queues,
        }
    }

    /// The key that binds queue `i` to the exchange.
    pub fn binding_key(&self, i: usize) -> String {
        match self.exchange_type {
            ExchangeType::Direct => self.queues[i].clone(),
            ExchangeType::Fanout => String::new(),
            ExchangeType::Topic => format!("{}.#", self.queues[i]),
        }
    }

    fn consumed(&self) -> BTreeSet<usize> {
        self.consumer_queue.iter().copied().collect()
    }

    /// Deliveries needed for every expected message to reach every consumed queue.
    pub fn deliveries_expected(&self, expected_per_producer: &[u64]) -> u64 {
        let consumed = self.consumed();
        expected_per_producer
            .iter()
            .zip(&self.routes)
            .map(|(n, routes)| n * routes.iter().filter(|q| consumed.contains(q)).count() as u64)
            .sum()
    }
}

async fn declare(
    uri: &AmqpUri,
    args: &Args,
    topo: &Topology,
    out: Output,
) -> Result<(), ClientError> {
    let mut conn = Connection::open(uri, "warren-perf setup").await?;
    conn.open_channel(1).await?;
    let predefined = topo.exchange.is_empty() || topo.exchange.starts_with("amq.");
    if !predefined {
        conn.call(
            1,
            Method::ExchangeDeclare {
                name: &topo.exchange,
                kind: topo.exchange_type.name(),
                durable: args.durable,
            },
            |m| matches!(m, ServerMethod::ExchangeDeclareOk),
        )
        .await?;
    }
    let arguments = args.queue_arguments();
    for (i, queue) in topo.queues.iter().enumerate() {
        let reply = conn
            .call(
                1,
                Method::QueueDeclare {
                    name: queue,
                    durable: args.durable,
                    exclusive: false,
                    auto_delete: false,
                    arguments: &arguments,
                },
                |m| matches!(m, ServerMethod::QueueDeclareOk { .. }),
            )
            .await?;
        if reply.messages > 0 {
            out.say(&format!(
                "note: queue {queue} already holds {} messages (they are counted as foreign)",
                reply.messages
            ));
        }
        if topo.exchange.is_empty() {
            continue;
        }
        let keys = std::iter::once(topo.binding_key(i))
            .chain((0..args.extra_bindings).map(|k| format!("{queue}.unused.{k}")));
        for key in keys {
            conn.call(
                1,
                Method::QueueBind {
                    queue,
                    exchange: &topo.exchange,
                    routing_key: &key,
                },
                |m| matches!(m, ServerMethod::QueueBindOk),
            )
            .await?;
        }
    }
    conn.close().await;
    Ok(())
}

async fn delete(uri: &AmqpUri, topo: &Topology) -> Result<(), ClientError> {
    let mut conn = Connection::open(uri, "warren-perf cleanup").await?;
    conn.open_channel(1).await?;
    for queue in &topo.queues {
        conn.call(1, Method::QueueDelete { name: queue }, |m| {
            matches!(m, ServerMethod::QueueDeleteOk { .. })
        })
        .await?;
    }
    if !topo.exchange.is_empty() && !topo.exchange.starts_with("amq.") {
        conn.call(
            1,
            Method::ExchangeDelete {
                name: &topo.exchange,
            },
            |m| matches!(m, ServerMethod::ExchangeDeleteOk),
        )
        .await?;
    }
    conn.close().await;
    Ok(())
}

/// Starts every consumer and waits until all consume (or one fails).
async fn start_consumers(
    uri: &AmqpUri,
    args: &Args,
    topo: &Topology,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
) -> (
    JoinSet<Result<ConsumerResult, ClientError>>,
    Result<(), String>,
) {
    let mut set = JoinSet::new();
    let (ready_tx, mut ready_rx) = mpsc::channel(args.consumers.max(1) as usize);
    for (c, &q) in topo.consumer_queue.iter().enumerate() {
        let cfg = ConsumerConfig {
            index: c as u16,
            queue: topo.queues[q].clone(),
            queue_index: q,
            autoack: args.autoack,
            qos: args.qos,
            multi_ack_every: args.multi_ack_every,
        };
        set.spawn(run_consumer(
            uri.clone(),
            cfg,
            shared.clone(),
            ready_tx.clone(),
            stop.clone(),
        ));
    }
    drop(ready_tx);
    let wait = async {
        for _ in 0..topo.consumer_queue.len() {
            match ready_rx.recv().await {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(e),
                None => return Err("a consumer ended before consuming".to_string()),
            }
        }
        Ok(())
    };
    let ready = tokio::time::timeout(CONSUMER_START_TIMEOUT, wait)
        .await
        .unwrap_or_else(|_| Err("consumers did not start in time".to_string()));
    (set, ready)
}

fn producer_configs(args: &Args, topo: &Topology) -> Vec<ProducerConfig> {
    (0..args.producers)
        .map(|p| ProducerConfig {
            index: p,
            exchange: topo.exchange.clone(),
            routing_key: topo.routing_keys[p as usize].clone(),
            size: args.size,
            persistent: args.persistent,
            confirm: args.confirm,
            rate: args.rate,
            busy_poll: Duration::from_micros(args.busy_poll),
            count: args.pmessages,
            drain_timeout: Duration::from_secs_f64(args.drain_timeout),
            groups: args.message_groups,
        })
        .collect()
}

/// Publishes until the time is up or every producer reached its count.
async fn publish(
    uri: &AmqpUri,
    args: &Args,
    topo: &Topology,
    shared: &Arc<Shared>,
) -> Vec<Option<ProducerResult>> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut set = JoinSet::new();
    for cfg in producer_configs(args, topo) {
        let index = cfg.index as usize;
        let fut = run_producer(uri.clone(), cfg, shared.clone(), stop_rx.clone());
        set.spawn(async move { (index, fut.await) });
    }
    let deadline = args
        .time
        .map(|t| tokio::time::Instant::now() + Duration::from_secs_f64(t));
    let mut results: Vec<Option<ProducerResult>> = (0..args.producers).map(|_| None).collect();
    if args.producers == 0 {
        // Consumers only: they run for the time given.
        if deadline.is_some() {
            sleep_until_opt(deadline).await;
        }
        return results;
    }
    loop {
        tokio::select! {
            joined = set.join_next() => match joined {
                None => break,
                Some(Ok((i, Ok(r)))) => results[i] = Some(r),
                Some(Ok((i, Err(e)))) => shared.error(format!("producer {i}: {e}")),
                Some(Err(e)) => shared.error(format!("producer task: {e}")),
            },
            _ = sleep_until_opt(deadline), if !*stop_tx.borrow() => {
                let _ = stop_tx.send(true);
            }
        }
    }
    results
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Waits until `expected` deliveries arrived, or nothing arrived for `idle` (or, with nothing
/// expected, returns at once).
async fn drain(shared: &Shared, expected: u64, idle: Duration) {
    let mut last = shared.counters.received.load(Relaxed);
    let mut last_change = Instant::now();
    while last < expected {
        tokio::time::sleep(DRAIN_POLL).await;
        let now = shared.counters.received.load(Relaxed);
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() > idle {
            break;
        }
    }
}

pub async fn run(args: &Args, uri: &AmqpUri, out: Output) -> Report {
    let mut report = Report::new(args, uri.to_string());
    let topo = Topology::plan(args);
    let shared = Shared::new(crate::payload::new_run_tag(), args.producers);
    let started = Instant::now();
    if !args.predeclared {
        if let Err(e) = declare(uri, args, &topo, out).await {
            report.errors.push(format!("declaring the topology: {e}"));
            return report;
        }
    }
    let (stop_reporter, reporter_rx) = watch::channel(false);
    let reporter = tokio::spawn(report_every_second(
        shared.clone(),
        Instant::now(),
        reporter_rx,
        out,
        false,
    ));
    let (stop_consumers, consumers_rx) = watch::channel(false);
    let backlog = args.scenario == Scenario::Backlog;
    let mut consumers = None;
    let mut consume_start = Instant::now();
    if !backlog {
        let (set, ready) = start_consumers(uri, args, &topo, &shared, &consumers_rx).await;
        if let Err(e) = ready {
            shared.error(e);
        }
        consumers = Some(set);
        consume_start = Instant::now();
    }
    let publish_start = Instant::now();
    let producers = publish(uri, args, &topo, &shared).await;
    let publish_end = producers
        .iter()
        .flatten()
        .map(|r| r.publish_done)
        .max()
        .unwrap_or(publish_start);
    if backlog {
        out.say(&format!(
            "backlog: {} messages published in {:.2} s; consuming",
            shared.counters.published.load(Relaxed),
            publish_end.duration_since(publish_start).as_secs_f64()
        ));
        consume_start = Instant::now();
        let (set, ready) = start_consumers(uri, args, &topo, &shared, &consumers_rx).await;
        if let Err(e) = ready {
            shared.error(e);
        }
        consumers = Some(set);
    }
    let expected: Vec<SeqSet> = producers
        .iter()
        .map(|r| r.as_ref().map(|r| r.expected.clone()).unwrap_or_default())
        .collect();
    let counts: Vec<u64> = expected.iter().map(SeqSet::len).collect();
    let mut idle = Duration::from_secs_f64(args.drain_timeout);
    if args.may_drop_messages().is_some() {
        // Dropped messages never come: waiting the full timeout for them measures nothing.
        idle = idle.min(DROPPING_DRAIN_IDLE);
    }
    drain(&shared, topo.deliveries_expected(&counts), idle).await;
    let _ = stop_consumers.send(true);
    let mut consumed = Vec::new();
    if let Some(mut set) = consumers {
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(Ok(r)) => consumed.push(r),
                Ok(Err(e)) => shared.error(format!("consumer: {e}")),
                Err(e) => shared.error(format!("consumer task: {e}")),
            }
        }
    }
    let _ = stop_reporter.send(true);
    report.per_second = reporter.await.unwrap_or_default();
    if !args.predeclared && !args.keep_queues {
        if let Err(e) = delete(uri, &topo).await {
            shared.error(format!("deleting the topology: {e}"));
        }
    }
    report.elapsed_secs = started.elapsed().as_secs_f64();
    fill_report(
        &mut report,
        args,
        &topo,
        &producers,
        &expected,
        &consumed,
        publish_start,
        consume_start,
    );
    report.errors = shared.take_errors();
    report
}

#[allow(clippy::too_many_arguments)]
fn fill_report(
    report: &mut Report,
    args: &Args,
    topo: &Topology,
    producers: &[Option<ProducerResult>],
    expected: &[SeqSet],
    consumed: &[ConsumerResult],
    publish_start: Instant,
    consume_start: Instant,
) {
    let done = producers.iter().flatten();
    report.sent = done.clone().map(|r| r.sent).sum();
    report.confirmed = done.clone().map(|r| r.confirmed).sum();
    report.nacked = done.clone().map(|r| r.nacked).sum();
    report.returned = done.clone().map(|r| r.returned).sum();
    let publish_end = done.clone().map(|r| r.publish_done).max();
    report.publish_secs =
        publish_end.map_or(0.0, |t| t.duration_since(publish_start).as_secs_f64());
    let confirm_end = done.clone().filter_map(|r| r.last_confirm).max();
    let confirm_secs = confirm_end.map_or(0.0, |t| t.duration_since(publish_start).as_secs_f64());
    report.publish_rate = rate(report.sent, report.publish_secs);
    report.confirm_rate = rate(report.confirmed, confirm_secs);

    let mut latency = new_histogram();
    let mut received: Vec<Option<Vec<SeqSet>>> = vec![None; topo.queues.len()];
    for c in consumed {
        report.received += c.unique;
        report.duplicates += c.duplicates;
        report.foreign += c.foreign;
        let _ = latency.add(&c.latency);
        let per_producer = received[c.queue_index]
            .get_or_insert_with(|| vec![SeqSet::default(); args.producers as usize]);
        for (mine, theirs) in per_producer.iter_mut().zip(&c.received) {
            mine.union_with(theirs);
        }
    }
    let last_message = consumed.iter().filter_map(|c| c.last_message).max();
    report.consume_secs = last_message.map_or(0.0, |t| {
        t.saturating_duration_since(consume_start).as_secs_f64()
    });
    report.consume_rate = rate(report.received, report.consume_secs);
    report.latency = LatencySummary::from_histogram(&latency);
    report.loss = if args.producers == 0 {
        LossReport::skipped("no producers")
    } else if args.consumers == 0 {
        LossReport::skipped("no consumers")
    } else if let Some(arg) = args.may_drop_messages() {
        LossReport::skipped(format!("{arg} lets the broker drop messages"))
    } else if producers.iter().any(Option::is_none) {
        LossReport {
            checked: true,
            ok: false,
            note: "a producer failed; its messages are unaccounted for".into(),
            ..LossReport::default()
        }
    } else {
        let note = if args.confirm.is_some() {
            "every confirmed message arrived"
        } else {
            "no confirms: every sent message arrived"
        };
        check_loss(&topo.queues, expected, &topo.routes, &received, note)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Args {
        let mut a =
            Args::try_from_args(std::iter::once("warren-perf").chain(line.split_whitespace()))
                .unwrap();
        a.validate().unwrap();
        a
    }

    #[test]
    fn direct_spreads_producers_and_consumers_over_queues() {
        let t = Topology::plan(&args("-x 3 -y 2 --queues 2"));
        assert_eq!(t.routes, vec![vec![0], vec![1], vec![0]]);
        assert_eq!(
            t.routing_keys,
            vec!["warren-perf-1", "warren-perf-2", "warren-perf-1"]
        );
        assert_eq!(t.consumer_queue, vec![0, 1]);
        assert_eq!(t.binding_key(1), "warren-perf-2");
        assert_eq!(t.deliveries_expected(&[10, 20, 30]), 60);
    }

    #[test]
    fn fanout_reaches_every_queue_but_only_consumed_ones_count() {
        let t = Topology::plan(&args("-t fanout --queues 3 -y 2"));
        assert_eq!(t.routes, vec![vec![0, 1, 2]]);
        assert_eq!(t.routing_keys, vec![""]);
        assert_eq!(t.deliveries_expected(&[10]), 20);
    }

    #[test]
    fn topic_keys_match_their_queue_binding() {
        let t = Topology::plan(&args("-t topic --queues 2 -x 2"));
        assert_eq!(t.routing_keys, vec!["warren-perf-1.p0", "warren-perf-2.p1"]);
        assert_eq!(t.binding_key(0), "warren-perf-1.#");
    }
}
