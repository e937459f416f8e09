//! Message rates (`*_details.rate`): a sampler task reads every queue's metrics atomics every
//! `SAMPLE_INTERVAL` and keeps, per queue id, the previous reading and the rates it derived
//! (delta / seconds). Entries of queues that are gone are dropped at the next sample; at
//! most `SAMPLED_QUEUES_MAX` queues are sampled (the rest read as 0/s). Node and vhost
//! rates are sums of the queues' rates, so a deleted queue does not show as a negative rate.
//!
//! Connections are sampled the same way (their socket and publisher counters), and so are
//! the registry's totals (open and closed connections), which give the overview's publisher
//! rates (`publish`, `confirm`, `return_unroutable`, `drop_unroutable`).
//!
//! Owns: the samples. Must not touch: queue actors (no command is sent; only the metrics
//! atomics are read) or anything on the message path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use warren_core::connections::ConnectionMetricsSnapshot;
use warren_core::exchange_counters::ExchangeCounters;
use warren_core::queue::metrics::QueueMetricsSnapshot;
use warren_core::Broker;

/// How often the sampler reads the counters (RabbitMQ's default `collect_statistics_interval`).
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// Most queues whose rates are kept: twice the 100,000-queue scale target. A sample is
/// ~230 bytes (two readings' worth of counters and the map entry), so at most ~46 MB.
pub const SAMPLED_QUEUES_MAX: usize = 200_000;
/// Most exchanges whose rates are kept (~100 bytes a sample).
pub const SAMPLED_EXCHANGES_MAX: usize = 200_000;

/// An exchange's incarnation for the sampler: the address of its counters.
pub fn exchange_key(counters: &Arc<ExchangeCounters>) -> usize {
    Arc::as_ptr(counters) as usize
}

/// Per-second rates of an exchange's `publish_in` and `publish_out`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ExchangeRates {
    pub publish_in: f64,
    pub publish_out: f64,
}

struct ExchangeSample {
    counters: (u64, u64),
    rates: ExchangeRates,
    round: u64,
}

/// Per-second rates of one queue (or a sum of queues).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct QueueRates {
    pub publish: f64,
    pub deliver_get: f64,
    pub deliver: f64,
    pub deliver_no_ack: f64,
    pub get: f64,
    pub get_no_ack: f64,
    pub ack: f64,
    pub redeliver: f64,
    /// Gauges: may be negative (the queue shrinks).
    pub messages: f64,
    pub messages_ready: f64,
    pub messages_unacknowledged: f64,
}

impl QueueRates {
    fn between(old: &QueueMetricsSnapshot, new: &QueueMetricsSnapshot, secs: f64) -> Self {
        let counter = |o: u64, n: u64| n.saturating_sub(o) as f64 / secs;
        let gauge = |o: u64, n: u64| (n as f64 - o as f64) / secs;
        QueueRates {
            publish: counter(old.publish, new.publish),
            deliver_get: counter(old.deliver_get(), new.deliver_get()),
            deliver: counter(old.deliver, new.deliver),
            deliver_no_ack: counter(old.deliver_no_ack, new.deliver_no_ack),
            get: counter(old.get, new.get),
            get_no_ack: counter(old.get_no_ack, new.get_no_ack),
            ack: counter(old.ack, new.ack),
            redeliver: counter(old.redeliver, new.redeliver),
            messages: gauge(old.messages(), new.messages()),
            messages_ready: gauge(old.messages_ready, new.messages_ready),
            messages_unacknowledged: gauge(
                old.messages_unacknowledged,
                new.messages_unacknowledged,
            ),
        }
    }

    pub fn add(&mut self, o: &QueueRates) {
        self.publish += o.publish;
        self.deliver_get += o.deliver_get;
        self.deliver += o.deliver;
        self.deliver_no_ack += o.deliver_no_ack;
        self.get += o.get;
        self.get_no_ack += o.get_no_ack;
        self.ack += o.ack;
        self.redeliver += o.redeliver;
        self.messages += o.messages;
        self.messages_ready += o.messages_ready;
        self.messages_unacknowledged += o.messages_unacknowledged;
    }
}

/// Per-second rates of a connection's counters (or of the broker's totals).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ConnectionRates {
    pub recv_oct: f64,
    pub send_oct: f64,
    pub publish: f64,
    pub confirm: f64,
    pub return_unroutable: f64,
    pub drop_unroutable: f64,
}

impl ConnectionRates {
    fn between(
        old: &ConnectionMetricsSnapshot,
        new: &ConnectionMetricsSnapshot,
        secs: f64,
    ) -> Self {
        let counter = |o: u64, n: u64| n.saturating_sub(o) as f64 / secs;
        let (o, n) = (&old.messages, &new.messages);
        ConnectionRates {
            recv_oct: counter(old.recv_oct, new.recv_oct),
            send_oct: counter(old.send_oct, new.send_oct),
            publish: counter(o.published, n.published),
            confirm: counter(o.confirmed, n.confirmed),
            return_unroutable: counter(o.returned_unroutable, n.returned_unroutable),
            drop_unroutable: counter(o.dropped_unroutable, n.dropped_unroutable),
        }
    }

    pub fn add(&mut self, o: &ConnectionRates) {
        self.recv_oct += o.recv_oct;
        self.send_oct += o.send_oct;
        self.publish += o.publish;
        self.confirm += o.confirm;
        self.return_unroutable += o.return_unroutable;
        self.drop_unroutable += o.drop_unroutable;
    }
}

struct ConnectionSample {
    counters: ConnectionMetricsSnapshot,
    rates: ConnectionRates,
    round: u64,
}

struct Sample {
    counters: QueueMetricsSnapshot,
    rates: QueueRates,
    /// The sampling round that last saw the queue.
    round: u64,
}

#[derive(Default)]
struct Inner {
    queues: HashMap<u64, Sample>,
    connections: HashMap<u64, ConnectionSample>,
    exchanges: HashMap<usize, ExchangeSample>,
    /// The registry's totals at the last sample, and their rates.
    totals: Option<ConnectionMetricsSnapshot>,
    total_rates: ConnectionRates,
    last: Option<Instant>,
    round: u64,
}

/// The rates of every sampled queue.
#[derive(Default)]
pub struct Rates {
    inner: Mutex<Inner>,
}

/// A read of the rates, held for the duration of one listing (no `.await` while held).
pub struct RatesView<'a>(MutexGuard<'a, Inner>);

impl RatesView<'_> {
    /// A queue's rates (0/s for a queue not sampled yet).
    pub fn queue(&self, id: u64) -> QueueRates {
        self.0.queues.get(&id).map(|s| s.rates).unwrap_or_default()
    }

    /// A connection's rates (0/s for one not sampled yet).
    pub fn connection(&self, id: u64) -> ConnectionRates {
        self.0
            .connections
            .get(&id)
            .map(|s| s.rates)
            .unwrap_or_default()
    }

    /// An exchange's rates (0/s for one not sampled yet); `key` is `exchange_key`.
    pub fn exchange(&self, key: usize) -> ExchangeRates {
        self.0
            .exchanges
            .get(&key)
            .map(|s| s.rates)
            .unwrap_or_default()
    }

    /// The rates of every connection's counters, open and closed ones.
    pub fn totals(&self) -> ConnectionRates {
        self.0.total_rates
    }
}

impl Rates {
    pub fn view(&self) -> RatesView<'_> {
        RatesView(self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// How many queues have a sample.
    pub fn sampled_queues(&self) -> usize {
        self.view().0.queues.len()
    }

    /// Reads every queue's counters once; rates are relative to the previous call.
    pub fn sample(&self, broker: &Broker, now: Instant) {
        let readings: Vec<(u64, QueueMetricsSnapshot)> = broker
            .vhost_handles()
            .values()
            .flat_map(|v| {
                let routing = v.routing_snapshot();
                routing
                    .queues
                    .values()
                    .map(|q| (q.id(), q.metrics()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let exchanges: Vec<(usize, (u64, u64))> = broker
            .vhost_handles()
            .values()
            .flat_map(|v| {
                let routing = v.routing_snapshot();
                routing
                    .exchanges
                    .values()
                    .map(|x| &x.counters)
                    .chain(std::iter::once(&routing.default_counters))
                    .map(|c| (exchange_key(c), c.read()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let connections: Vec<(u64, ConnectionMetricsSnapshot)> = broker
            .connections
            .list()
            .iter()
            .map(|c| (c.id, c.metrics.snapshot()))
            .collect();
        let totals = broker.connections.counters().metrics;
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let secs = inner
            .last
            .map(|l| now.saturating_duration_since(l).as_secs_f64())
            .filter(|s| *s > 0.0);
        inner.last = Some(now);
        inner.round += 1;
        let round = inner.round;
        for (id, counters) in readings {
            if let Some(s) = inner.queues.get_mut(&id) {
                s.rates = secs
                    .map(|secs| QueueRates::between(&s.counters, &counters, secs))
                    .unwrap_or_default();
                s.counters = counters;
                s.round = round;
            } else if inner.queues.len() < SAMPLED_QUEUES_MAX {
                inner.queues.insert(
                    id,
                    Sample {
                        counters,
                        rates: QueueRates::default(),
                        round,
                    },
                );
            }
        }
        inner.queues.retain(|_, s| s.round == round);
        for (id, counters) in connections {
            let sample = inner.connections.entry(id).or_insert(ConnectionSample {
                counters,
                rates: ConnectionRates::default(),
                round,
            });
            sample.rates = secs
                .map(|secs| ConnectionRates::between(&sample.counters, &counters, secs))
                .unwrap_or_default();
            sample.counters = counters;
            sample.round = round;
        }
        inner.connections.retain(|_, s| s.round == round);
        for (key, counters) in exchanges {
            if let Some(s) = inner.exchanges.get_mut(&key) {
                let per_sec =
                    |o: u64, n: u64| secs.map_or(0.0, |secs| n.saturating_sub(o) as f64 / secs);
                s.rates = ExchangeRates {
                    publish_in: per_sec(s.counters.0, counters.0),
                    publish_out: per_sec(s.counters.1, counters.1),
                };
                s.counters = counters;
                s.round = round;
            } else if inner.exchanges.len() < SAMPLED_EXCHANGES_MAX {
                let rates = ExchangeRates::default();
                inner.exchanges.insert(
                    key,
                    ExchangeSample {
                        counters,
                        rates,
                        round,
                    },
                );
            }
        }
        inner.exchanges.retain(|_, s| s.round == round);
        inner.total_rates = match (inner.totals, secs) {
            (Some(old), Some(secs)) => ConnectionRates::between(&old, &totals, secs),
            _ => ConnectionRates::default(),
        };
        inner.totals = Some(totals);
    }
}

/// Samples every `SAMPLE_INTERVAL` until the broker or the rates are dropped (the router's
/// last clone went away). Needs a tokio runtime; without one, rates stay 0.
pub fn spawn_sampler(broker: Weak<Broker>, rates: Weak<Rates>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (Some(broker), Some(rates)) = (broker.upgrade(), rates.upgrade()) else {
                return;
            };
            sample_owned(broker, rates);
        }
    });
}

fn sample_owned(broker: Arc<Broker>, rates: Arc<Rates>) {
    rates.sample(&broker, Instant::now());
}
