//! Command-line flags, named after RabbitMQ PerfTest's where one exists (short letters too),
//! and their checks. Owns no I/O.

use clap::{Parser, ValueEnum};
use serde::Serialize;

use crate::payload::STAMP_BYTES;
use crate::uri::AmqpUri;
use crate::wire::FieldValue;

/// When neither --time nor --pmessages is given, a run lasts this long.
pub const DEFAULT_TIME_SECS: u64 = 10;
/// Queues the queue-scale scenario declares when -C is not given.
pub const QUEUE_SCALE_DEFAULT: u64 = 100_000;

/// warren-perf: load generator for AMQP 0-9-1 brokers (Warren, RabbitMQ), like PerfTest.
///
/// Every message carries a 16-byte stamp (send time, producer, sequence number) in its first
/// bytes, so the tool reports end-to-end latency and checks at the end that every confirmed
/// (or, without confirms, every sent) message reached each queue it was routed to.
/// Exit status: 0 on success, 1 on loss or error, 2 on bad flags.
#[derive(Debug, Clone, Parser, Serialize)]
#[command(name = "warren-perf", version)]
pub struct Args {
    /// Broker to load.
    #[arg(
        long,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        env = "WARREN_PERF_URI"
    )]
    pub uri: String,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Scenario::Throughput)]
    pub scenario: Scenario,
    /// Publishing connections (one channel each).
    #[arg(short = 'x', long, default_value_t = 1)]
    pub producers: u16,
    /// Consuming connections (one channel and one consumer each).
    #[arg(short = 'y', long, default_value_t = 1)]
    pub consumers: u16,
    /// Message body size in bytes (at least 16: the stamp).
    #[arg(short = 's', long, default_value_t = 16)]
    pub size: usize,
    /// Seconds to publish for (default 10 unless --pmessages is given). Churn scenarios run
    /// this long too.
    #[arg(short = 'z', long)]
    pub time: Option<f64>,
    /// Messages each producer publishes, then stops (churn scenarios: operations per worker).
    #[arg(short = 'C', long)]
    pub pmessages: Option<u64>,
    /// Publish with delivery-mode 2.
    #[arg(long)]
    pub persistent: bool,
    /// Publisher confirms, with at most N unconfirmed messages per producer.
    #[arg(short = 'c', long, value_name = "N")]
    pub confirm: Option<u32>,
    /// Consume with no-ack (else manual acks).
    #[arg(short = 'a', long)]
    pub autoack: bool,
    /// Manual acks: one multiple-ack every N deliveries (1 = ack each message). Never more
    /// than the prefetch, so a small --qos cannot stall the consumer.
    #[arg(short = 'A', long, default_value_t = 1, value_name = "N")]
    pub multi_ack_every: u32,
    /// Consumer prefetch (basic.qos); 0 = unlimited.
    #[arg(short = 'q', long, default_value_t = 0)]
    pub qos: u16,
    /// Number of queues (named by --queue-pattern); producers and consumers are spread over
    /// them round-robin.
    #[arg(long, default_value_t = 1)]
    pub queues: usize,
    /// Queue names, comma-separated or repeated (overrides --queues/--queue-pattern).
    #[arg(short = 'u', long = "queue", value_delimiter = ',')]
    pub queue_names: Vec<String>,
    /// Queue name pattern; %d is the queue number from 1.
    #[arg(long, default_value = "warren-perf-%d")]
    pub queue_pattern: String,
    /// Exchange type for the run's exchange.
    #[arg(short = 't', long, value_enum, default_value_t = ExchangeType::Direct)]
    pub exchange_type: ExchangeType,
    /// Exchange name [default: warren-perf-<type>; "" = the default exchange].
    #[arg(short = 'e', long)]
    pub exchange: Option<String>,
    /// Fixed publishing rate per producer, messages per second (default: as fast as possible).
    #[arg(short = 'r', long)]
    pub rate: Option<f64>,
    /// Queue arguments, key=value, comma-separated or repeated (x-max-length=10,x-queue-type=quorum).
    /// Numbers are sent as longs, true/false as booleans, the rest as strings.
    #[arg(long, value_delimiter = ',', value_parser = parse_queue_arg)]
    pub queue_args: Vec<(String, String)>,
    /// Declare durable queues (and exchange).
    #[arg(long)]
    pub durable: bool,
    /// Queues, exchange and bindings exist already: declare nothing, delete nothing.
    #[arg(long)]
    pub predeclared: bool,
    /// Leave the queues and exchange the run declared (default: delete them at the end).
    #[arg(long)]
    pub keep_queues: bool,
    /// After publishing stops, wait at most this many seconds without progress for confirms
    /// and deliveries to arrive.
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout: f64,
    /// Print one JSON line with all results at the end (on stdout; progress goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// No per-second lines.
    #[arg(long)]
    pub quiet: bool,
    /// Runtime worker threads [default: the CPUs this process may run on].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Microseconds the tool's threads spin before sleeping (0: sleep at once). For latency
    /// runs: a sleeping core takes 25-50 us to wake on a VM, which would be counted as broker
    /// latency. At most 10000 (`warren_runtime::BUSY_POLL_MAX`).
    #[arg(long, default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=warren_runtime::BUSY_POLL_MAX.as_micros() as u64))]
    pub busy_poll: u64,
    /// Churn scenarios: parallel workers (one connection each).
    #[arg(long, default_value_t = 1)]
    pub concurrency: u16,
    /// bind-churn: bindings to create (then remove) per worker.
    #[arg(long, default_value_t = 10_000)]
    pub bindings: u64,
    /// throughput: extra bindings with keys that match nothing, per queue, to measure routing
    /// with many bindings.
    #[arg(long, default_value_t = 0)]
    pub extra_bindings: u64,
    /// throughput: FIFO message groups (Warren's `x-message-group-header`). Message k of a
    /// producer carries group k mod N in the header `warren-perf-group`, and the queues are
    /// declared with `x-message-group-header=warren-perf-group`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub message_groups: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Producers and consumers at once; rates, latency, loss check.
    Throughput,
    /// Publish everything first (no consumer), then consume it all: fill and drain rates.
    Backlog,
    /// queue.declare + queue.delete in a loop.
    QueueChurn,
    /// Open (full handshake + channel) and close connections in a loop.
    ConnectionChurn,
    /// basic.consume + basic.cancel on one queue in a loop.
    ConsumerChurn,
    /// Bind --bindings routing keys to one queue, then unbind them.
    BindChurn,
    /// Declare -C queues (100,000 by default; --concurrency workers share them), then delete
    /// them all: declare and delete rates at 1k, 10k, 50k and 100k existing queues.
    QueueScale,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeType {
    Direct,
    Fanout,
    Topic,
}

impl ExchangeType {
    pub fn name(self) -> &'static str {
        match self {
            ExchangeType::Direct => "direct",
            ExchangeType::Fanout => "fanout",
            ExchangeType::Topic => "topic",
        }
    }
}

fn parse_queue_arg(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{text:?} is not key=value")),
    }
}

impl Args {
    /// Parses like the binary does (for tests and embedding).
    pub fn try_from_args<I, T>(args: I) -> Result<Args, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Args::try_parse_from(args)
    }

    /// Checks what clap cannot; returns warnings to print.
    pub fn validate(&mut self) -> Result<Vec<String>, String> {
        let mut warnings = Vec::new();
        AmqpUri::parse(&self.uri)?;
        if self.size < STAMP_BYTES {
            warnings.push(format!(
                "--size {} raised to {STAMP_BYTES}: every message carries a {STAMP_BYTES}-byte stamp",
                self.size
            ));
            self.size = STAMP_BYTES;
        }
        if self.confirm == Some(0) {
            return Err("--confirm needs at least 1 outstanding message".into());
        }
        if self.multi_ack_every == 0 {
            return Err("--multi-ack-every must be at least 1".into());
        }
        if matches!(self.rate, Some(r) if !(r > 0.0 && r.is_finite())) {
            return Err("--rate must be a positive number".into());
        }
        if matches!(self.time, Some(t) if !(t > 0.0 && t.is_finite())) {
            return Err("--time must be a positive number of seconds".into());
        }
        if !(self.drain_timeout >= 0.0 && self.drain_timeout.is_finite()) {
            return Err("--drain-timeout must be a number of seconds".into());
        }
        if self.queue_names.is_empty() && self.queues == 0 {
            return Err("--queues must be at least 1".into());
        }
        if self.queue_names.is_empty() && !self.queue_pattern.contains("%d") && self.queues > 1 {
            return Err("--queue-pattern needs %d when --queues > 1".into());
        }
        if self.scenario == Scenario::Backlog && self.pmessages.is_none() {
            return Err("--scenario backlog needs --pmessages".into());
        }
        if self.concurrency == 0 {
            return Err("--concurrency must be at least 1".into());
        }
        if self.scenario == Scenario::QueueScale && self.pmessages.is_none() {
            self.pmessages = Some(QUEUE_SCALE_DEFAULT);
        }
        if self.time.is_none() && self.pmessages.is_none() {
            self.time = Some(DEFAULT_TIME_SECS as f64);
        }
        Ok(warnings)
    }

    pub fn queue_list(&self) -> Vec<String> {
        if !self.queue_names.is_empty() {
            return self.queue_names.clone();
        }
        (1..=self.queues)
            .map(|i| self.queue_pattern.replace("%d", &i.to_string()))
            .collect()
    }

    pub fn exchange_name(&self) -> String {
        self.exchange
            .clone()
            .unwrap_or_else(|| format!("warren-perf-{}", self.exchange_type.name()))
    }

    pub fn queue_arguments(&self) -> Vec<(String, FieldValue)> {
        let mut arguments: Vec<(String, FieldValue)> = self
            .queue_args
            .iter()
            .map(|(k, v)| (k.clone(), FieldValue::infer(v)))
            .collect();
        if self.message_groups.is_some() {
            arguments.push((
                "x-message-group-header".to_string(),
                FieldValue::infer(crate::producer::GROUP_HEADER),
            ));
        }
        arguments
    }

    /// Queue arguments under which a broker may drop messages on purpose: the loss check
    /// cannot hold then.
    pub fn may_drop_messages(&self) -> Option<&str> {
        const DROPPING: [&str; 4] = [
            "x-max-length",
            "x-max-length-bytes",
            "x-message-ttl",
            "x-expires",
        ];
        self.queue_args
            .iter()
            .map(|(k, _)| k.as_str())
            .find(|k| DROPPING.contains(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Args {
        let mut a =
            Args::try_from_args(std::iter::once("warren-perf").chain(line.split_whitespace()))
                .expect("parses");
        a.validate().expect("valid");
        a
    }

    #[test]
    fn defaults() {
        let a = parse("");
        assert_eq!(a.scenario, Scenario::Throughput);
        assert_eq!((a.producers, a.consumers, a.size), (1, 1, 16));
        assert_eq!(a.time, Some(DEFAULT_TIME_SECS as f64));
        assert_eq!(a.queue_list(), vec!["warren-perf-1"]);
        assert_eq!(a.exchange_name(), "warren-perf-direct");
        assert!(!a.autoack && a.confirm.is_none() && a.multi_ack_every == 1);
    }

    #[test]
    fn perftest_style_flags() {
        let a = parse(
            "--uri amqp://u:p@h:1/v -x 4 -y 3 -s 1024 -z 5 --persistent -c 1000 -A 10 -q 100 \
             --queues 3 --queue-pattern q-%d -t fanout -r 250 --durable --json --busy-poll 500 \
             --queue-args x-max-length=10,x-queue-type=classic --queue-args x-overflow=reject-publish",
        );
        assert_eq!((a.producers, a.consumers, a.size), (4, 3, 1024));
        assert_eq!(a.time, Some(5.0));
        assert_eq!(a.confirm, Some(1000));
        assert_eq!((a.multi_ack_every, a.qos), (10, 100));
        assert_eq!(a.queue_list(), vec!["q-1", "q-2", "q-3"]);
        assert_eq!(a.exchange_type, ExchangeType::Fanout);
        assert_eq!(a.exchange_name(), "warren-perf-fanout");
        assert_eq!(a.rate, Some(250.0));
        assert_eq!(a.busy_poll, 500);
        assert!(a.persistent && a.durable && a.json);
        assert_eq!(
            a.queue_arguments(),
            vec![
                ("x-max-length".to_string(), FieldValue::Long(10)),
                (
                    "x-queue-type".to_string(),
                    FieldValue::Str("classic".into())
                ),
                (
                    "x-overflow".to_string(),
                    FieldValue::Str("reject-publish".into())
                ),
            ]
        );
        assert_eq!(a.may_drop_messages(), Some("x-max-length"));
    }

    #[test]
    fn queue_names_and_scenarios() {
        let a = parse("-u a,b --queue c --scenario queue-churn -C 100");
        assert_eq!(a.queue_list(), vec!["a", "b", "c"]);
        assert_eq!(a.scenario, Scenario::QueueChurn);
        assert_eq!(a.time, None, "a count alone bounds the run");
        let a = parse("--scenario backlog -C 10 --predeclared -a");
        assert!(a.predeclared && a.autoack);
    }

    #[test]
    fn bad_flags_are_refused() {
        let bad = |line: &str| {
            Args::try_from_args(std::iter::once("warren-perf").chain(line.split_whitespace()))
                .map_err(|e| e.to_string())
                .and_then(|mut a| a.validate())
                .is_err()
        };
        assert!(bad("-c 0"));
        assert!(bad("--rate 0"));
        assert!(bad("--queue-args nokey"));
        assert!(bad("--scenario backlog"));
        assert!(bad("--queues 2 --queue-pattern fixed"));
        assert!(bad("--uri http://x"));
        assert!(bad("-t headers"));
        assert!(
            bad("--busy-poll 10001"),
            "longer than the runtime's window cap"
        );
        let mut a = Args::try_from_args(["warren-perf", "-s", "4"]).unwrap();
        let warnings = a.validate().unwrap();
        assert_eq!((a.size, warnings.len()), (16, 1));
    }
}
