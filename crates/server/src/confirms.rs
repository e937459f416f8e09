//! A channel's publisher-confirm bookkeeping. Queues confirm each publish asynchronously (in
//! any order); the channel answers the client with as few frames as possible: one
//! `basic.ack multiple=true` covering every sequence number up to the lowest one still
//! outstanding, and a single `basic.nack` for each failure (never covered by a multiple ack).

use std::collections::BTreeSet;

use bytes::BytesMut;
use warren_protocol::encode;

#[derive(Debug)]
pub(crate) struct ConfirmTracker {
    next_seq: u64,
    unconfirmed: BTreeSet<u64>,
    /// Everything up to here has been answered.
    answered_upto: u64,
    /// Nacks to send at the next flush.
    nacks: Vec<u64>,
    /// Nacked sequence numbers above `answered_upto`, which a multiple ack must skip.
    nacked: BTreeSet<u64>,
}

impl Default for ConfirmTracker {
    fn default() -> Self {
        ConfirmTracker {
            next_seq: 1,
            unconfirmed: BTreeSet::new(),
            answered_upto: 0,
            nacks: Vec::new(),
            nacked: BTreeSet::new(),
        }
    }
}

impl ConfirmTracker {
    /// Numbers the next publish.
    pub fn publish(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.unconfirmed.insert(seq);
        seq
    }

    pub fn confirmed(&mut self, seq: u64, ack: bool) {
        if self.unconfirmed.remove(&seq) && !ack {
            self.nacks.push(seq);
            self.nacked.insert(seq);
        }
    }

    /// Writes the acks and nacks that can be sent now; returns how many publishes the acks
    /// confirmed (RabbitMQ's `messages_confirmed`, nacks not included).
    pub fn flush(&mut self, out: &mut BytesMut, channel: u16) -> u64 {
        for seq in self.nacks.drain(..) {
            encode::confirm(out, channel, seq, false, false);
        }
        let low = self.unconfirmed.first().copied().unwrap_or(self.next_seq);
        let upto = low - 1;
        if upto <= self.answered_upto {
            return 0;
        }
        let from = self.answered_upto + 1;
        let mut confirmed = 0;
        if self.nacked.range(from..=upto).next().is_none() {
            encode::confirm(out, channel, upto, true, true);
            confirmed = upto - from + 1;
        } else {
            for seq in from..=upto {
                if !self.nacked.contains(&seq) {
                    encode::confirm(out, channel, seq, false, true);
                    confirmed += 1;
                }
            }
            self.nacked = self.nacked.split_off(&(upto + 1));
        }
        self.answered_upto = upto;
        confirmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_protocol::frame::decode_frame;

    /// (tag, multiple, ack) of each frame written.
    fn frames(out: &mut BytesMut) -> Vec<(u64, bool, bool)> {
        let mut v = Vec::new();
        while let Some(f) = decode_frame(out, 0).unwrap() {
            let p = &f.payload;
            let ack = p[3] == 80;
            let tag = u64::from_be_bytes(p[4..12].try_into().unwrap());
            v.push((tag, p[12] & 1 == 1, ack));
        }
        v
    }

    #[test]
    fn out_of_order_confirms_wait_for_the_gap_and_nacks_are_never_covered() {
        let mut t = ConfirmTracker::default();
        let mut out = BytesMut::new();
        for _ in 0..5 {
            t.publish();
        }
        t.confirmed(2, true);
        t.confirmed(3, true);
        t.flush(&mut out, 1);
        assert!(frames(&mut out).is_empty(), "1 is still outstanding");
        t.confirmed(1, true);
        t.flush(&mut out, 1);
        assert_eq!(frames(&mut out), vec![(3, true, true)]);
        t.confirmed(5, true);
        t.confirmed(4, false);
        t.flush(&mut out, 1);
        assert_eq!(frames(&mut out), vec![(4, false, false), (5, false, true)]);
        t.flush(&mut out, 1);
        assert!(frames(&mut out).is_empty());
    }
}
