//! The churn scenarios: the broker's costs besides moving messages. Each worker owns one
//! connection and runs one synchronous operation after another (the next starts when the
//! previous `-ok` arrived), until the time is up or it did --pmessages operations.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::args::{Args, Scenario};
use crate::client::{ClientError, Connection};
use crate::stats::{rate, report_every_second, OpRate, Output, Report, Shared};
use crate::uri::AmqpUri;
use crate::wire::{Method, ServerMethod};

/// When to stop: a deadline, a count, or both.
#[derive(Debug, Clone, Copy)]
struct Budget {
    deadline: Option<Instant>,
    count: Option<u64>,
}

impl Budget {
    fn more(&self, done: u64) -> bool {
        self.count.is_none_or(|c| done < c) && self.deadline.is_none_or(|d| Instant::now() < d)
    }
}

/// One worker's operations: (name, count, seconds).
type Measured = Vec<(&'static str, u64, f64)>;

pub async fn run(args: &Args, uri: &AmqpUri, out: Output) -> Report {
    if args.scenario == Scenario::QueueScale {
        return scale(args, uri, out).await;
    }
    let mut report = Report::new(args, uri.to_string());
    let shared = Shared::new(crate::payload::new_run_tag(), 0);
    let started = Instant::now();
    let budget = Budget {
        deadline: args.time.map(|t| started + Duration::from_secs_f64(t)),
        count: args.pmessages,
    };
    let (stop_reporter, reporter_rx) = watch::channel(false);
    let reporter = tokio::spawn(report_every_second(
        shared.clone(),
        started,
        reporter_rx,
        out,
        true,
    ));
    let mut set = JoinSet::new();
    for w in 0..args.concurrency {
        let (uri, args, shared) = (uri.clone(), args.clone(), shared.clone());
        set.spawn(async move { worker(&uri, &args, w, budget, &shared).await });
    }
    let mut totals: Vec<(&'static str, u64, f64)> = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(measured)) => {
                for (name, count, secs) in measured {
                    match totals.iter_mut().find(|t| t.0 == name) {
                        // Workers run side by side: counts add up, the slowest sets the time.
                        Some(t) => {
                            t.1 += count;
                            t.2 = t.2.max(secs);
                        }
                        None => totals.push((name, count, secs)),
                    }
                }
            }
            Ok(Err(e)) => shared.error(format!("{:?} worker: {e}", args.scenario)),
            Err(e) => shared.error(format!("worker task: {e}")),
        }
    }
    let _ = stop_reporter.send(true);
    report.per_second = reporter.await.unwrap_or_default();
    report.elapsed_secs = started.elapsed().as_secs_f64();
    report.ops = totals
        .into_iter()
        .map(|(name, count, secs)| OpRate {
            name: name.to_string(),
            count,
            secs,
            rate: rate(count, secs),
        })
        .collect();
    report.loss = crate::tracker::LossReport::skipped("no messages in a churn scenario");
    report.errors = shared.take_errors();
    report
}

async fn worker(
    uri: &AmqpUri,
    args: &Args,
    w: u16,
    budget: Budget,
    shared: &Arc<Shared>,
) -> Result<Measured, ClientError> {
    let tag = shared.run_tag;
    let ops = &shared.counters.ops;
    match args.scenario {
        Scenario::ConnectionChurn => {
            let started = Instant::now();
            let mut done = 0;
            while budget.more(done) {
                let mut conn = Connection::open(uri, "warren-perf churn").await?;
                conn.open_channel(1).await?;
                conn.close().await;
                done += 1;
                ops.fetch_add(1, Relaxed);
            }
            Ok(vec![("connections opened and closed", done, secs(started))])
        }
        Scenario::QueueChurn => {
            let mut conn = Connection::open(uri, "warren-perf churn").await?;
            conn.open_channel(1).await?;
            let arguments = args.queue_arguments();
            let started = Instant::now();
            let mut done = 0;
            while budget.more(done) {
                let name = format!("warren-perf-churn-{tag}-{w}-{done}");
                declare_queue(&mut conn, &name, args.durable, &arguments).await?;
                delete_queue(&mut conn, &name).await?;
                done += 1;
                ops.fetch_add(1, Relaxed);
            }
            conn.close().await;
            Ok(vec![("queues declared and deleted", done, secs(started))])
        }
        Scenario::ConsumerChurn => {
            let mut conn = Connection::open(uri, "warren-perf churn").await?;
            conn.open_channel(1).await?;
            let queue = format!("warren-perf-consumer-churn-{tag}-{w}");
            declare_queue(&mut conn, &queue, false, &[]).await?;
            let started = Instant::now();
            let mut done = 0;
            while budget.more(done) {
                let consumer_tag = format!("c{done}");
                conn.call(
                    1,
                    Method::BasicConsume {
                        queue: &queue,
                        consumer_tag: &consumer_tag,
                        no_ack: true,
                    },
                    |m| matches!(m, ServerMethod::BasicConsumeOk),
                )
                .await?;
                conn.call(
                    1,
                    Method::BasicCancel {
                        consumer_tag: &consumer_tag,
                    },
                    |m| matches!(m, ServerMethod::BasicCancelOk),
                )
                .await?;
                done += 1;
                ops.fetch_add(1, Relaxed);
            }
            let elapsed = secs(started);
            delete_queue(&mut conn, &queue).await?;
            conn.close().await;
            Ok(vec![("consumers started and cancelled", done, elapsed)])
        }
        Scenario::BindChurn => bind_churn(uri, args, w, budget, shared).await,
        Scenario::QueueScale => Ok(Vec::new()),
        Scenario::Throughput | Scenario::Backlog => Ok(Vec::new()),
    }
}

/// Binds many keys to one queue, then unbinds them: the cost of a binding while the
/// exchange already has many.
async fn bind_churn(
    uri: &AmqpUri,
    args: &Args,
    w: u16,
    budget: Budget,
    shared: &Arc<Shared>,
) -> Result<Measured, ClientError> {
    let tag = shared.run_tag;
    let mut conn = Connection::open(uri, "warren-perf churn").await?;
    conn.open_channel(1).await?;
    let exchange = format!("warren-perf-bind-churn-{tag}-{w}");
    let queue = exchange.clone();
    conn.call(
        1,
        Method::ExchangeDeclare {
            name: &exchange,
            kind: "direct",
            durable: false,
        },
        |m| matches!(m, ServerMethod::ExchangeDeclareOk),
    )
    .await?;
    declare_queue(&mut conn, &queue, false, &[]).await?;
    let wanted = args.pmessages.unwrap_or(args.bindings);
    let bind_budget = Budget {
        count: Some(wanted),
        ..budget
    };
    let started = Instant::now();
    let mut bound = 0;
    while bind_budget.more(bound) {
        let key = format!("key.{bound}");
        conn.call(
            1,
            Method::QueueBind {
                queue: &queue,
                exchange: &exchange,
                routing_key: &key,
            },
            |m| matches!(m, ServerMethod::QueueBindOk),
        )
        .await?;
        bound += 1;
        shared.counters.ops.fetch_add(1, Relaxed);
    }
    let bind_secs = secs(started);
    let started = Instant::now();
    for i in 0..bound {
        let key = format!("key.{i}");
        conn.call(
            1,
            Method::QueueUnbind {
                queue: &queue,
                exchange: &exchange,
                routing_key: &key,
            },
            |m| matches!(m, ServerMethod::QueueUnbindOk),
        )
        .await?;
        shared.counters.ops.fetch_add(1, Relaxed);
    }
    let unbind_secs = secs(started);
    delete_queue(&mut conn, &queue).await?;
    conn.call(1, Method::ExchangeDelete { name: &exchange }, |m| {
        matches!(m, ServerMethod::ExchangeDeleteOk)
    })
    .await?;
    conn.close().await;
    Ok(vec![
        ("bindings created", bound, bind_secs),
        ("bindings removed", bound, unbind_secs),
    ])
}

/// Existing queues at which queue-scale reports declare and delete rates.
const SCALE_CHECKPOINTS: [u64; 4] = [1_000, 10_000, 50_000, 100_000];
/// A checkpoint's rate is measured over the operations that take the queue count from
/// `checkpoint - checkpoint / SCALE_WINDOW_DIVISOR` to the checkpoint (declare) or back down
/// (delete).
const SCALE_WINDOW_DIVISOR: u64 = 10;

/// When the shared queue count passed each mark, for one phase.
struct Marks {
    /// Counts whose moment is recorded: each checkpoint and the start of its window.
    wanted: Vec<u64>,
    seen: std::sync::Mutex<Vec<(u64, Instant)>>,
    count: std::sync::atomic::AtomicU64,
}

impl Marks {
    fn new(checkpoints: &[u64]) -> Marks {
        let mut wanted: Vec<u64> = checkpoints
            .iter()
            .flat_map(|&c| [c, c - c / SCALE_WINDOW_DIVISOR])
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        Marks {
            wanted,
            seen: std::sync::Mutex::new(Vec::new()),
            count: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// One more operation done; returns how many so far.
    fn done(&self) -> u64 {
        let n = self.count.fetch_add(1, Relaxed) + 1;
        if self.wanted.binary_search(&n).is_ok() {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.push((n, Instant::now()));
        }
        n
    }

    fn at(&self, n: u64) -> Option<Instant> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.iter().find(|(m, _)| *m == n).map(|(_, t)| *t)
    }

    /// The rate between the start of a checkpoint's window and the checkpoint, `done`
    /// counting operations (declared, or deleted so far).
    fn rate(&self, name: String, from: u64, to: u64, out: &mut Vec<OpRate>) {
        let (Some(start), Some(end)) = (self.at(from), self.at(to)) else {
            return;
        };
        let count = to - from;
        let secs = end.duration_since(start).as_secs_f64();
        out.push(OpRate {
            name,
            count,
            secs,
            rate: rate(count, secs),
        });
    }
}

/// The queue-scale scenario: declare `total` queues, then delete them all, and report the
/// rates at each checkpoint of existing queues. A broker whose declare or delete costs
/// O(queues) shows falling rates; one that costs O(log n) or less, flat ones.
async fn scale(args: &Args, uri: &AmqpUri, out: Output) -> Report {
    let mut report = Report::new(args, uri.to_string());
    let shared = Shared::new(crate::payload::new_run_tag(), 0);
    let total = args.pmessages.unwrap_or(crate::args::QUEUE_SCALE_DEFAULT);
    let mut checkpoints: Vec<u64> = SCALE_CHECKPOINTS
        .iter()
        .copied()
        .filter(|&c| c <= total)
        .collect();
    if checkpoints.last() != Some(&total) && total > 0 {
        checkpoints.push(total);
    }
    let declared = Arc::new(Marks::new(&checkpoints));
    // Deletes count down: the checkpoint "c existing" is reached after total - c deletes.
    let delete_marks: Vec<u64> = checkpoints
        .iter()
        .flat_map(|&c| [total - c, total - c + c / SCALE_WINDOW_DIVISOR])
        .collect();
    let deleted = Arc::new(Marks {
        wanted: {
            let mut w = delete_marks;
            w.sort_unstable();
            w.dedup();
            w
        },
        seen: std::sync::Mutex::new(Vec::new()),
        count: std::sync::atomic::AtomicU64::new(0),
    });
    let started = Instant::now();
    let (stop_reporter, reporter_rx) = watch::channel(false);
    let reporter = tokio::spawn(report_every_second(
        shared.clone(),
        started,
        reporter_rx,
        out,
        true,
    ));
    let workers = u64::from(args.concurrency);
    let barrier = Arc::new(tokio::sync::Barrier::new(usize::from(args.concurrency)));
    let mut set = JoinSet::new();
    for w in 0..workers {
        let share = total / workers + u64::from(w < total % workers);
        let (uri, args, shared) = (uri.clone(), args.clone(), shared.clone());
        let (declared, deleted, barrier) = (declared.clone(), deleted.clone(), barrier.clone());
        set.spawn(async move {
            scale_worker(
                &uri, &args, w, share, &shared, &declared, &deleted, &barrier,
            )
            .await
        });
    }
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => shared.error(format!("queue-scale worker: {e}")),
            Err(e) => shared.error(format!("worker task: {e}")),
        }
    }
    let _ = stop_reporter.send(true);
    report.per_second = reporter.await.unwrap_or_default();
    report.elapsed_secs = started.elapsed().as_secs_f64();
    for &c in &checkpoints {
        let from = c - c / SCALE_WINDOW_DIVISOR;
        declared.rate(
            format!("queue.declare at {c} queues"),
            from,
            c,
            &mut report.ops,
        );
    }
    for &c in checkpoints.iter().rev() {
        let to = total - c + c / SCALE_WINDOW_DIVISOR;
        deleted.rate(
            format!("queue.delete at {c} queues"),
            total - c,
            to,
            &mut report.ops,
        );
    }
    report.loss = crate::tracker::LossReport::skipped("no messages in a churn scenario");
    report.errors = shared.take_errors();
    report
}

/// One queue-scale worker: declares its share, waits for every worker to finish declaring
/// (even if it failed, so the others are not stuck), then deletes its share.
#[allow(clippy::too_many_arguments)]
async fn scale_worker(
    uri: &AmqpUri,
    args: &Args,
    w: u64,
    share: u64,
    shared: &Arc<Shared>,
    declared: &Marks,
    deleted: &Marks,
    barrier: &tokio::sync::Barrier,
) -> Result<(), ClientError> {
    let tag = shared.run_tag;
    let name = |i: u64| format!("warren-perf-scale-{tag}-{w}-{i}");
    let opened = async {
        let mut conn = Connection::open(uri, "warren-perf queue-scale").await?;
        conn.open_channel(1).await?;
        let arguments = args.queue_arguments();
        for i in 0..share {
            declare_queue(&mut conn, &name(i), args.durable, &arguments).await?;
            declared.done();
            shared.counters.ops.fetch_add(1, Relaxed);
        }
        Ok::<_, ClientError>(conn)
    }
    .await;
    if barrier.wait().await.is_leader() {
        let mut seen = deleted.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.push((0, Instant::now()));
    }
    let mut conn = opened?;
    for i in 0..share {
        delete_queue(&mut conn, &name(i)).await?;
        deleted.done();
        shared.counters.ops.fetch_add(1, Relaxed);
    }
    conn.close().await;
    Ok(())
}

async fn declare_queue(
    conn: &mut Connection,
    name: &str,
    durable: bool,
    arguments: &[(String, crate::wire::FieldValue)],
) -> Result<(), ClientError> {
    conn.call(
        1,
        Method::QueueDeclare {
            name,
            durable,
            exclusive: false,
            auto_delete: false,
            arguments,
        },
        |m| matches!(m, ServerMethod::QueueDeclareOk { .. }),
    )
    .await
    .map(|_| ())
}

async fn delete_queue(conn: &mut Connection, name: &str) -> Result<(), ClientError> {
    conn.call(1, Method::QueueDelete { name }, |m| {
        matches!(m, ServerMethod::QueueDeleteOk { .. })
    })
    .await
    .map(|_| ())
}

fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}
