//! Counters shared by every task of a run, the once-a-second progress line, latency
//! percentiles and the final [`Report`]. Tasks add to the counters once per batch, not per
//! message, so the counters cost nothing measurable.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::watch;

use crate::args::Args;
use crate::tracker::LossReport;

/// Latencies are recorded in nanoseconds up to an hour, three significant digits.
const LATENCY_MAX_NS: u64 = 3_600_000_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3).expect("valid histogram bounds")
}

#[derive(Debug, Default)]
pub struct Counters {
    pub published: AtomicU64,
    pub confirmed: AtomicU64,
    pub nacked: AtomicU64,
    pub returned: AtomicU64,
    /// This run's messages received for the first time (per consumer).
    pub received: AtomicU64,
    /// Churn scenarios: operations completed.
    pub ops: AtomicU64,
    pub latency_sum_ns: AtomicU64,
    pub latency_count: AtomicU64,
    pub latency_max_ns: AtomicU64,
}

/// What every task of a run shares.
#[derive(Debug)]
pub struct Shared {
    pub counters: Counters,
    pub errors: Mutex<Vec<String>>,
    pub run_tag: u16,
    pub producers: u16,
}

impl Shared {
    pub fn new(run_tag: u16, producers: u16) -> Arc<Shared> {
        Arc::new(Shared {
            counters: Counters::default(),
            errors: Mutex::new(Vec::new()),
            run_tag,
            producers,
        })
    }

    pub fn error(&self, what: String) {
        if let Ok(mut errors) = self.errors.lock() {
            // A broken broker can fail every task the same way; a few lines tell the story.
            if errors.len() < 50 {
                errors.push(what);
            }
        }
    }

    pub fn take_errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default()
    }
}

/// Where human-readable lines go: stdout, or stderr when stdout carries the JSON result.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub to_stderr: bool,
    pub quiet: bool,
}

impl Output {
    pub fn say(&self, line: &str) {
        if self.to_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
}

/// One second of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub t_secs: f64,
    pub published: u64,
    pub confirmed: u64,
    pub received: u64,
    pub ops: u64,
    pub latency_mean_us: Option<f64>,
    pub latency_max_us: Option<f64>,
}

/// Prints a line every second until `stop` turns true; returns the seconds seen.
pub async fn report_every_second(
    shared: Arc<Shared>,
    started: Instant,
    mut stop: watch::Receiver<bool>,
    out: Output,
    churn: bool,
) -> Vec<Second> {
    let c = &shared.counters;
    let mut seconds = Vec::new();
    let mut last = [0u64; 4];
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::from_std(started) + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return seconds,
        }
        if *stop.borrow() {
            return seconds;
        }
        let now = [
            c.published.load(Relaxed),
            c.confirmed.load(Relaxed),
            c.received.load(Relaxed),
            c.ops.load(Relaxed),
        ];
        let sum = c.latency_sum_ns.swap(0, Relaxed);
        let count = c.latency_count.swap(0, Relaxed);
        let max = c.latency_max_ns.swap(0, Relaxed);
        let second = Second {
            t_secs: started.elapsed().as_secs_f64(),
            published: now[0] - last[0],
            confirmed: now[1] - last[1],
            received: now[2] - last[2],
            ops: now[3] - last[3],
            latency_mean_us: (count > 0).then(|| sum as f64 / count as f64 / 1e3),
            latency_max_us: (count > 0).then(|| max as f64 / 1e3),
        };
        last = now;
        if !out.quiet {
            out.say(&second_line(&second, churn));
        }
        seconds.push(second);
    }
}

fn second_line(s: &Second, churn: bool) -> String {
    if churn {
        return format!("{:6.1}s  ops {:>9}/s", s.t_secs, group(s.ops));
    }
    let latency = match (s.latency_mean_us, s.latency_max_us) {
        (Some(mean), Some(max)) => format!("  latency mean {} max {}", micros(mean), micros(max)),
        _ => String::new(),
    };
    format!(
        "{:6.1}s  sent {:>9} msg/s  confirmed {:>9} msg/s  received {:>9} msg/s{}",
        s.t_secs,
        group(s.published),
        group(s.confirmed),
        group(s.received),
        latency
    )
}

/// Thousands separated by commas.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn micros(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p95_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl LatencySummary {
    pub fn from_histogram(h: &Histogram<u64>) -> Option<LatencySummary> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1e3;
        Some(LatencySummary {
            count: h.len(),
            min_us: us(h.min()),
            mean_us: h.mean() / 1e3,
            p50_us: us(h.value_at_quantile(0.50)),
            p95_us: us(h.value_at_quantile(0.95)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        })
    }
}

/// A churn scenario's operation and its rate.
#[derive(Debug, Clone, Serialize)]
pub struct OpRate {
    pub name: String,
    pub count: u64,
    pub secs: f64,
    pub rate: f64,
}

/// Everything a run measured; `--json` prints it as one line.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    pub args: Args,
    /// The broker's URI without password.
    pub broker: String,
    pub elapsed_secs: f64,
    /// From the first publish until the last producer stopped publishing.
    pub publish_secs: f64,
    /// From consumers starting until the last message arrived.
    pub consume_secs: f64,
    pub sent: u64,
    pub confirmed: u64,
    pub nacked: u64,
    pub returned: u64,
    /// This run's messages received (each counted once per consumer that got it).
    pub received: u64,
    /// Deliveries of a message the same consumer had already received (redeliveries).
    pub duplicates: u64,
    /// Deliveries without this run's stamp (leftovers in a reused queue).
    pub foreign: u64,
    pub publish_rate: f64,
    pub confirm_rate: f64,
    pub consume_rate: f64,
    pub latency: Option<LatencySummary>,
    pub loss: LossReport,
    pub ops: Vec<OpRate>,
    pub per_second: Vec<Second>,
    pub errors: Vec<String>,
    /// CPU seconds this tool used (user + system), to show it was not the bottleneck.
    pub tool_cpu_secs: Option<f64>,
}

impl Report {
    pub fn new(args: &Args, broker: String) -> Report {
        Report {
            tool: "warren-perf",
            version: env!("CARGO_PKG_VERSION"),
            args: args.clone(),
            broker,
            elapsed_secs: 0.0,
            publish_secs: 0.0,
            consume_secs: 0.0,
            sent: 0,
            confirmed: 0,
            nacked: 0,
            returned: 0,
            received: 0,
            duplicates: 0,
            foreign: 0,
            publish_rate: 0.0,
            confirm_rate: 0.0,
            consume_rate: 0.0,
            latency: None,
            loss: LossReport::skipped("not run"),
            ops: Vec::new(),
            per_second: Vec::new(),
            errors: Vec::new(),
            tool_cpu_secs: None,
        }
    }

    /// True when the run found no loss and no error.
    pub fn ok(&self) -> bool {
        self.loss.ok && self.errors.is_empty()
    }

    pub fn summary_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if !self.ops.is_empty() {
            for op in &self.ops {
                lines.push(format!(
                    "{}: {} in {:.2} s = {:.0} ops/s",
                    op.name,
                    group(op.count),
                    op.secs,
                    op.rate
                ));
            }
        } else {
            lines.push(format!(
                "sent {} ({:.0} msg/s over {:.2} s), confirmed {} ({:.0} msg/s), nacked {}, received {} ({:.0} msg/s over {:.2} s)",
                group(self.sent),
                self.publish_rate,
                self.publish_secs,
                group(self.confirmed),
                self.confirm_rate,
                group(self.nacked),
                group(self.received),
                self.consume_rate,
                self.consume_secs,
            ));
            if self.duplicates > 0 || self.foreign > 0 || self.returned > 0 {
                lines.push(format!(
                    "duplicates {}, foreign {}, returned {}",
                    self.duplicates, self.foreign, self.returned
                ));
            }
            if let Some(l) = &self.latency {
                lines.push(format!(
                    "latency: min {} p50 {} p95 {} p99 {} p99.9 {} max {} ({} samples)",
                    micros(l.min_us),
                    micros(l.p50_us),
                    micros(l.p95_us),
                    micros(l.p99_us),
                    micros(l.p999_us),
                    micros(l.max_us),
                    group(l.count)
                ));
            }
            lines.push(self.loss.summary());
        }
        if let Some(cpu) = self.tool_cpu_secs {
            let share = if self.elapsed_secs > 0.0 {
                cpu / self.elapsed_secs * 100.0
            } else {
                0.0
            };
            lines.push(format!(
                "tool CPU: {cpu:.2} s over {:.2} s ({share:.0} % of one core)",
                self.elapsed_secs
            ));
        }
        for e in &self.errors {
            lines.push(format!("error: {e}"));
        }
        lines
    }
}

/// This process's CPU time so far (Linux: /proc/self/stat, in clock ticks of 1/100 s).
pub fn process_cpu_secs() -> Option<f64> {
    const TICKS_PER_SEC: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let user: f64 = fields.next()?.parse().ok()?;
    let system: f64 = fields.next()?.parse().ok()?;
    Some((user + system) / TICKS_PER_SEC)
}

pub fn rate(count: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1234567), "1,234,567");
    }

    #[test]
    fn latency_percentiles_come_from_the_histogram() {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let s = LatencySummary::from_histogram(&h).unwrap();
        assert_eq!(s.count, 1000);
        assert!((s.p50_us - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.p99_us - 990.0).abs() < 1.0, "{s:?}");
        assert!((s.max_us - 1000.0).abs() < 1.0, "{s:?}");
        assert!(LatencySummary::from_histogram(&new_histogram()).is_none());
    }

    #[test]
    fn own_cpu_time_is_readable_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(process_cpu_secs().is_some_and(|s| s >= 0.0));
        }
    }
}
