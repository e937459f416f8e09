//! The stamp at the front of every message body: when it was sent, by whom, and its sequence
//! number, so consumers can measure end-to-end latency and the loss check can tell which
//! messages arrived. Producers and consumers run in one process and share one clock base.
//!
//! Layout, little-endian, 16 bytes: send time in nanoseconds since the process's clock base
//! (u64), sequence number from 1 (u32), producer index (u16), run tag (u16). The run tag tells
//! this run's messages from leftovers of an earlier run in the same queue.

use std::sync::OnceLock;
use std::time::Instant;

pub const STAMP_BYTES: usize = 16;

static CLOCK_BASE: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the process's clock base (monotonic).
pub fn now_ns() -> u64 {
    CLOCK_BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub sent_ns: u64,
    pub seq: u32,
    pub producer: u16,
    pub run_tag: u16,
}

impl Stamp {
    pub fn write(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.sent_ns.to_le_bytes());
        out[8..12].copy_from_slice(&self.seq.to_le_bytes());
        out[12..14].copy_from_slice(&self.producer.to_le_bytes());
        out[14..16].copy_from_slice(&self.run_tag.to_le_bytes());
    }

    /// `None` for a body too short to carry a stamp.
    pub fn read(body_start: &[u8]) -> Option<Stamp> {
        let b: &[u8; STAMP_BYTES] = body_start.get(..STAMP_BYTES)?.try_into().ok()?;
        Some(Stamp {
            sent_ns: u64::from_le_bytes(b[0..8].try_into().ok()?),
            seq: u32::from_le_bytes(b[8..12].try_into().ok()?),
            producer: u16::from_le_bytes([b[12], b[13]]),
            run_tag: u16::from_le_bytes([b[14], b[15]]),
        })
    }
}

/// A run tag that differs between runs (never 0, so a zero-filled body never matches).
pub fn new_run_tag() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ d.as_secs() as u32)
        .unwrap_or(0);
    let mixed = nanos ^ std::process::id().rotate_left(16);
    match (mixed ^ (mixed >> 16)) as u16 {
        0 => 1,
        tag => tag,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips() {
        let s = Stamp {
            sent_ns: 123_456_789_012,
            seq: 42,
            producer: 7,
            run_tag: 0xBEEF,
        };
        let mut buf = [0u8; 20];
        s.write(&mut buf);
        assert_eq!(Stamp::read(&buf), Some(s));
        assert_eq!(Stamp::read(&buf[..15]), None);
        assert_ne!(new_run_tag(), 0);
    }
}
