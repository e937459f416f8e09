//! Per-exchange message counters (`message_stats.publish_in` / `publish_out` of the
//! management API): how many messages clients published to an exchange, and how many queue
//! copies its routing produced.
//!
//! The publish path adds to them once per message, from every connection task at once, so a
//! single pair of atomics would bounce its cache line between cores. Each exchange has
//! `COUNTER_SHARDS` pairs, each on a cache line of its own; a thread always adds to the same
//! shard (chosen round-robin the first time it counts), so a core mostly writes a line no
//! other core writes. Readers (the management API) sum the shards.
//!
//! Owns: the counters. Must not touch: routing decisions (the routing snapshot holds an
//! `Arc` to them and counts after it routed).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Counter pairs per exchange (each 64 bytes): 4 covers the worker threads of most
/// machines without contention; more threads share shards (still correct, a little slower).
pub const COUNTER_SHARDS: usize = 4;

#[derive(Default)]
#[repr(align(64))]
struct Shard {
    publish_in: AtomicU64,
    publish_out: AtomicU64,
}

/// One exchange's counters, shared by every routing snapshot of it (a binding change keeps
/// them; deleting the exchange drops them, as RabbitMQ resets a redeclared exchange's).
#[derive(Default)]
pub struct ExchangeCounters {
    shards: [Shard; COUNTER_SHARDS],
}

impl std::fmt::Debug for ExchangeCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (i, o) = self.read();
        write!(f, "ExchangeCounters(in {i}, out {o})")
    }
}

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn my_shard() -> usize {
    SHARD.with(|s| {
        let mut i = s.get();
        if i == usize::MAX {
            i = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % COUNTER_SHARDS;
            s.set(i);
        }
        i
    })
}

impl ExchangeCounters {
    /// One message published to the exchange, routed to `queues` queues.
    #[inline]
    pub fn count(&self, queues: usize) {
        let shard = &self.shards[my_shard()];
        shard.publish_in.fetch_add(1, Ordering::Relaxed);
        if queues > 0 {
            shard
                .publish_out
                .fetch_add(queues as u64, Ordering::Relaxed);
        }
    }

    /// (publish_in, publish_out) so far.
    pub fn read(&self) -> (u64, u64) {
        self.shards.iter().fold((0, 0), |(i, o), s| {
            (
                i + s.publish_in.load(Ordering::Relaxed),
                o + s.publish_out.load(Ordering::Relaxed),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_sum_up() {
        let c = std::sync::Arc::new(ExchangeCounters::default());
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        c.count(i % 3);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        // Per thread: 334 × 0 + 333 × 1 + 333 × 2 queues.
        assert_eq!(c.read(), (6000, 6 * 999));
    }
}
