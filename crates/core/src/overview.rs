//! Node- and vhost-wide totals for the management API's overview and `/metrics`, computed
//! from the per-queue metrics and the connection registry (no queue actor is asked), plus
//! the process's resident memory and open file descriptors from /proc.

use crate::broker::Broker;
use crate::queue::metrics::QueueMetricsSnapshot;
use crate::vhost::{QueueChurn, VHost};

/// Totals of one vhost.
#[derive(Clone, Debug, Default)]
pub struct VHostOverview {
    pub name: String,
    pub connections: u64,
    pub queues: u64,
    pub exchanges: u64,
    /// The sum of its queues' metrics (messages, ready, unacked, bytes, consumers and the
    /// message_stats counters).
    pub queue_totals: QueueMetricsSnapshot,
}

/// Totals of the whole broker.
#[derive(Clone, Debug, Default)]
pub struct Overview {
    pub connections: u64,
    pub channels: u64,
    pub queues: u64,
    pub exchanges: u64,
    pub queue_totals: QueueMetricsSnapshot,
    /// Per vhost, sorted by name.
    pub vhosts: Vec<VHostOverview>,
    /// The process's resident set (None off Linux).
    pub resident_memory_bytes: Option<u64>,
    /// Open file descriptors of the process (None off Linux).
    pub open_file_descriptors: Option<u64>,
}

impl Overview {
    pub fn consumers(&self) -> u64 {
        self.queue_totals.consumers
    }

    pub fn messages(&self) -> u64 {
        self.queue_totals.messages()
    }
}

impl Broker {
    /// One vhost's totals (None: no such vhost).
    pub fn vhost_overview(&self, name: &str) -> Option<VHostOverview> {
        let vhost = self.vhost(name)?;
        Some(self.vhost_totals(&vhost))
    }

    fn vhost_totals(&self, vhost: &VHost) -> VHostOverview {
        let (queues, queue_totals) = vhost.queue_totals();
        VHostOverview {
            name: vhost.name().to_owned(),
            connections: self.connections.count_in_vhost(vhost.name()),
            queues: queues as u64,
            exchanges: vhost.exchange_count() as u64,
            queue_totals,
        }
    }

    /// Queues declared, created and deleted since start over every vhost, deleted ones
    /// included (one short definitions lock per vhost).
    pub fn queue_churn(&self) -> QueueChurn {
        let mut churn = *self
            .retired_queue_churn
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for vhost in self.vhost_handles().values() {
            churn.add(&vhost.queue_churn());
        }
        churn
    }

    /// Totals over every vhost and connection: O(queues) atomic loads, no actor asked.
    pub fn overview(&self) -> Overview {
        let (connections, channels) = self.connections.totals();
        let mut overview = Overview {
            connections,
            channels,
            resident_memory_bytes: resident_memory_bytes(),
            open_file_descriptors: open_file_descriptors(),
            ..Overview::default()
        };
        for vhost in self.vhost_handles().values() {
            let v = self.vhost_totals(vhost);
            overview.queues += v.queues;
            overview.exchanges += v.exchanges;
            overview.queue_totals.add(&v.queue_totals);
            overview.vhosts.push(v);
        }
        overview.vhosts.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        overview
    }
}

/// VmRSS from /proc/self/status.
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Entries of /proc/self/fd (the directory's own descriptor, open while counting, is
/// left out).
pub fn open_file_descriptors() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    Some((entries.count() as u64).saturating_sub(1))
}
