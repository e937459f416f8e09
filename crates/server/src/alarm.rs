//! Node-wide resource alarms, as RabbitMQ's memory and disk alarms: a monitor samples the
//! process's resident memory and the data directory's free space; above the memory high
//! watermark or below the disk free limit, the alarm is raised and every publishing
//! connection is blocked (`connection.blocked`, and its socket is no longer read) until the
//! alarm clears. Consumers keep draining, which is what clears it.
//!
//! This module owns the thresholds and the current alarm state (a `watch` channel the
//! connections subscribe to); it never touches a connection or a queue.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

/// How often memory and disk are sampled.
pub const ALARM_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// RabbitMQ's default `vm_memory_high_watermark.relative`.
pub const DEFAULT_MEMORY_HIGH_WATERMARK_FRACTION: f64 = 0.4;
/// RabbitMQ's default `disk_free_limit.absolute` (50 MB).
pub const DEFAULT_DISK_FREE_LIMIT_BYTES: u64 = 50_000_000;
/// Assumed when the machine's memory cannot be read (/proc missing).
const FALLBACK_TOTAL_MEMORY_BYTES: u64 = 1 << 30;

/// The memory high watermark: a fraction of the machine's (or cgroup's) memory, or bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MemoryWatermark {
    Relative(f64),
    Absolute(u64),
}

impl Default for MemoryWatermark {
    fn default() -> Self {
        MemoryWatermark::Relative(DEFAULT_MEMORY_HIGH_WATERMARK_FRACTION)
    }
}

impl MemoryWatermark {
    /// The limit in bytes on this machine.
    pub fn bytes(self) -> u64 {
        match self {
            MemoryWatermark::Absolute(b) => b,
            MemoryWatermark::Relative(f) => {
                let total = total_memory_bytes().unwrap_or(FALLBACK_TOTAL_MEMORY_BYTES);
                (total as f64 * f.clamp(0.0, 1.0)) as u64
            }
        }
    }
}

/// Which alarms are raised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AlarmState {
    pub memory: bool,
    pub disk: bool,
}

impl AlarmState {
    pub fn any(self) -> bool {
        self.memory || self.disk
    }

    /// The reason sent in connection.blocked (RabbitMQ's words).
    pub fn reason(self) -> &'static str {
        match (self.memory, self.disk) {
            (true, true) => "low on memory and disk space",
            (true, false) => "low on memory",
            _ => "low on disk space",
        }
    }
}

/// The thresholds and the alarm state.
pub struct Alarms {
    state: watch::Sender<AlarmState>,
    memory_limit_bytes: AtomicU64,
    disk_free_limit_bytes: AtomicU64,
    data_dir: PathBuf,
}

impl Alarms {
    pub fn new(memory: MemoryWatermark, disk_free_limit_bytes: u64, data_dir: PathBuf) -> Alarms {
        let (state, _) = watch::channel(AlarmState::default());
        Alarms {
            state,
            memory_limit_bytes: AtomicU64::new(memory.bytes()),
            disk_free_limit_bytes: AtomicU64::new(disk_free_limit_bytes),
            data_dir,
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<AlarmState> {
        self.state.subscribe()
    }

    pub fn state(&self) -> AlarmState {
        *self.state.borrow()
    }

    pub fn memory_limit_bytes(&self) -> u64 {
        self.memory_limit_bytes.load(Ordering::Relaxed)
    }

    /// Changes the memory high watermark (takes effect at the next check).
    pub fn set_memory_limit_bytes(&self, bytes: u64) {
        self.memory_limit_bytes.store(bytes, Ordering::Relaxed);
    }

    /// The disk free limit in bytes.
    pub fn disk_free_limit_bytes(&self) -> u64 {
        self.disk_free_limit_bytes.load(Ordering::Relaxed)
    }

    /// Free space on the data directory's file system now (None: cannot be read).
    pub fn disk_free_bytes(&self) -> Option<u64> {
        fs4::available_space(&self.data_dir).ok()
    }

    /// Changes the disk free limit (takes effect at the next check).
    pub fn set_disk_free_limit_bytes(&self, bytes: u64) {
        self.disk_free_limit_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Samples memory and disk now and raises or clears the alarms.
    pub fn check(&self) {
        let memory_used = resident_memory_bytes();
        let disk_free = fs4::available_space(&self.data_dir).ok();
        let limit = self.memory_limit_bytes();
        let disk_limit = self.disk_free_limit_bytes.load(Ordering::Relaxed);
        let next = AlarmState {
            memory: memory_used.is_some_and(|used| used > limit),
            disk: disk_free.is_some_and(|free| free < disk_limit),
        };
        let previous = self.state();
        if next == previous {
            return;
        }
        if next.memory != previous.memory {
            if next.memory {
                warn!(used_bytes = ?memory_used, limit_bytes = limit, "memory alarm raised: publishers are blocked");
            } else {
                info!(used_bytes = ?memory_used, limit_bytes = limit, "memory alarm cleared");
            }
        }
        if next.disk != previous.disk {
            if next.disk {
                warn!(free_bytes = ?disk_free, limit_bytes = disk_limit, "disk alarm raised: publishers are blocked");
            } else {
                info!(free_bytes = ?disk_free, limit_bytes = disk_limit, "disk alarm cleared");
            }
        }
        self.state.send_replace(next);
    }
}

/// Samples every `ALARM_CHECK_INTERVAL` until `shutdown` fires.
pub async fn monitor(alarms: Arc<Alarms>, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(ALARM_CHECK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => alarms.check(),
            _ = shutdown.changed() => return,
        }
    }
}

/// The process's resident set (VmRSS in /proc/self/status).
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    kib_field(&status, "VmRSS:")
}

/// The machine's memory, or the cgroup's limit if lower (a container's share).
pub fn total_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total = kib_field(&meminfo, "MemTotal:")?;
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    Some(cgroup.map_or(total, |c| c.min(total)))
}

fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// Parses a size with RabbitMQ's memory units: bytes, `k`/`KiB`, `M`/`MiB`, `G`/`GiB`,
/// `T`/`TiB` (powers of 2), `kB`, `MB`, `GB`, `TB` (powers of 10).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "k" | "K" | "KiB" | "kiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return None,
    };
    let bytes = number * scale as f64;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// Parses `--memory-high-watermark`: a number up to 1 is a fraction of memory (`0.4`, as
/// RabbitMQ's `vm_memory_high_watermark.relative`); anything else a size (`2GB`, `512MiB`,
/// `1000000`), as its `.absolute`.
pub fn parse_memory_watermark(text: &str) -> Option<MemoryWatermark> {
    match text.trim().parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Some(MemoryWatermark::Relative(f)),
        _ => parse_size(text).map(MemoryWatermark::Absolute),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_watermarks_parse_as_rabbitmq_writes_them() {
        assert_eq!(parse_size("50MB"), Some(50_000_000));
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("1073741824"), Some(1 << 30));
        assert_eq!(parse_size("2 GB"), Some(2_000_000_000));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(
            parse_memory_watermark("0.4"),
            Some(MemoryWatermark::Relative(0.4))
        );
        assert_eq!(
            parse_memory_watermark("2GB"),
            Some(MemoryWatermark::Absolute(2_000_000_000))
        );
        assert_eq!(
            parse_memory_watermark("1000000"),
            Some(MemoryWatermark::Absolute(1_000_000))
        );
    }

    #[test]
    fn memory_figures_come_from_proc() {
        let rss = resident_memory_bytes().expect("VmRSS");
        let total = total_memory_bytes().expect("MemTotal");
        assert!(rss > 0 && rss < total, "rss {rss} total {total}");
        let relative = MemoryWatermark::Relative(0.4).bytes();
        assert!(relative > 0 && relative < total);
    }
}
