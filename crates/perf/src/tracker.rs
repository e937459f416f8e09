//! Bookkeeping for the loss check: which sequence numbers a producer had confirmed, which a
//! consumer received, and the comparison at the end. Bitsets, so a long run costs one bit per
//! message and no allocation per message.

use serde::Serialize;

/// A set of sequence numbers (from 1), one bit each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqSet {
    words: Vec<u64>,
}

impl SeqSet {
    /// {1, …, n}.
    pub fn first_n(n: u64) -> SeqSet {
        let mut set = SeqSet::default();
        if n == 0 {
            return set;
        }
        set.grow(n);
        let full = (n / 64) as usize;
        for w in &mut set.words[..full] {
            *w = u64::MAX;
        }
        let rest = n % 64;
        if rest != 0 {
            set.words[full] = (1u64 << rest) - 1;
        }
        set
    }

    fn grow(&mut self, max_seq: u64) {
        let need = (max_seq / 64 + 1) as usize;
        if self.words.len() < need {
            // Doubling keeps growth amortised over a long run.
            let len = need.max(self.words.len() * 2);
            self.words.resize(len, 0);
        }
    }

    /// Bit index of `seq`: sequence numbers start at 1.
    fn slot(seq: u64) -> (usize, u64) {
        let i = seq - 1;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    /// Adds `seq`; false when it was already there.
    pub fn insert(&mut self, seq: u64) -> bool {
        debug_assert!(seq > 0, "sequence numbers start at 1");
        if seq == 0 {
            return false;
        }
        self.grow(seq);
        let (w, bit) = Self::slot(seq);
        let fresh = self.words[w] & bit == 0;
        self.words[w] |= bit;
        fresh
    }

    pub fn contains(&self, seq: u64) -> bool {
        if seq == 0 {
            return false;
        }
        let (w, bit) = Self::slot(seq);
        self.words.get(w).is_some_and(|x| x & bit != 0)
    }

    pub fn len(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    pub fn union_with(&mut self, other: &SeqSet) {
        if self.words.len() < other.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
    }

    /// How many of `self` are not in `other`.
    pub fn count_missing_from(&self, other: &SeqSet) -> u64 {
        self.words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let o = other.words.get(i).copied().unwrap_or(0);
                u64::from((w & !o).count_ones())
            })
            .sum()
    }

    /// The first few runs of members of `self` missing from `other`, as inclusive
    /// (first, last) ranges, for the report.
    pub fn missing_ranges_from(&self, other: &SeqSet, limit: usize) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (i, w) in self.words.iter().enumerate() {
            let mut m = w & !other.words.get(i).copied().unwrap_or(0);
            while m != 0 {
                let seq = i as u64 * 64 + u64::from(m.trailing_zeros()) + 1;
                m &= m - 1;
                let extends = out.last().is_some_and(|last| last.1 + 1 == seq);
                if extends {
                    if let Some(last) = out.last_mut() {
                        last.1 = seq;
                    }
                } else if out.len() == limit {
                    return out;
                } else {
                    out.push((seq, seq));
                }
            }
        }
        out
    }
}

/// A producer's outstanding publisher confirms. Delivery tags equal sequence numbers (both
/// count publishes on the channel from 1). `basic.ack`/`basic.nack` with `multiple` settle
/// every outstanding tag up to theirs.
#[derive(Debug, Default)]
pub struct ConfirmWindow {
    settled: SeqSet,
    pub acked: SeqSet,
    /// Every tag below this is settled.
    low: u64,
    pub acked_count: u64,
    pub nacked_count: u64,
}

impl ConfirmWindow {
    pub fn new() -> ConfirmWindow {
        ConfirmWindow {
            low: 1,
            ..ConfirmWindow::default()
        }
    }

    /// Settles `tag` (and, if `multiple`, every unsettled tag below it). Returns how many
    /// publishes this settled, so the producer can reopen that much of its window.
    pub fn settle(&mut self, tag: u64, multiple: bool, ack: bool) -> u64 {
        let mut newly = 0;
        let from = if multiple { self.low } else { tag };
        for t in from..=tag {
            if self.settled.insert(t) {
                newly += 1;
                if ack {
                    self.acked.insert(t);
                }
            }
        }
        while self.settled.contains(self.low) {
            self.low += 1;
        }
        if ack {
            self.acked_count += newly;
        } else {
            self.nacked_count += newly;
        }
        newly
    }

    pub fn settled_count(&self) -> u64 {
        self.acked_count + self.nacked_count
    }
}

/// How many runs of missing messages a report lists.
const MISSING_RANGES_SHOWN: usize = 10;

/// What the loss check found.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct LossReport {
    /// False when nothing could be checked (no consumers, no producers, a length limit…).
    pub checked: bool,
    pub ok: bool,
    /// Messages that had to arrive (counting once per queue they were routed to).
    pub expected: u64,
    pub missing: u64,
    /// The first runs of messages that never arrived: (queue, producer, first, last sequence).
    pub missing_ranges: Vec<(String, u16, u64, u64)>,
    pub note: String,
}

impl LossReport {
    pub fn skipped(note: impl Into<String>) -> LossReport {
        LossReport {
            checked: false,
            ok: true,
            note: note.into(),
            ..LossReport::default()
        }
    }

    pub fn summary(&self) -> String {
        if !self.checked {
            format!("loss check: skipped ({})", self.note)
        } else if self.ok {
            format!("loss check: OK ({} messages, {})", self.expected, self.note)
        } else {
            format!(
                "loss check: FAILED, {} of {} missing ({}); first missing (queue, producer, sequences): {}",
                self.missing,
                self.expected,
                self.note,
                self.missing_ranges
                    .iter()
                    .map(|(q, p, a, b)| format!("{q} p{p} {a}..={b}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    }
}

/// Compares what each queue should have delivered with what its consumers received.
/// `expected[p]` is producer p's set that must arrive (confirmed, or everything sent);
/// `routes[p]` the queues p's messages go to; `received[q][p]` what consumers of queue q got
/// from p (`None` for a queue nobody consumed, which is not checked).
pub fn check_loss(
    queue_names: &[String],
    expected: &[SeqSet],
    routes: &[Vec<usize>],
    received: &[Option<Vec<SeqSet>>],
    note: &str,
) -> LossReport {
    let mut report = LossReport {
        checked: true,
        note: note.to_string(),
        ..LossReport::default()
    };
    let empty = SeqSet::default();
    for (p, want) in expected.iter().enumerate() {
        for &q in &routes[p] {
            let Some(got) = &received[q] else { continue };
            let got = got.get(p).unwrap_or(&empty);
            report.expected += want.len();
            let missing = want.count_missing_from(got);
            report.missing += missing;
            if missing > 0 && report.missing_ranges.len() < MISSING_RANGES_SHOWN {
                for (first, last) in want.missing_ranges_from(got, MISSING_RANGES_SHOWN) {
                    report
                        .missing_ranges
                        .push((queue_names[q].clone(), p as u16, first, last));
                }
            }
        }
    }
    report.ok = report.missing == 0;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqset_counts_and_differences() {
        let all = SeqSet::first_n(130);
        assert_eq!(all.len(), 130);
        assert!(all.contains(1) && all.contains(130) && !all.contains(131) && !all.contains(0));
        let mut got = SeqSet::default();
        for s in 1..=130 {
            if s != 64 && s != 65 && s != 129 {
                assert!(got.insert(s));
            }
        }
        assert!(!got.insert(1), "a duplicate is reported");
        assert_eq!(all.count_missing_from(&got), 3);
        assert_eq!(
            all.missing_ranges_from(&got, 10),
            vec![(64, 65), (129, 129)]
        );
        assert_eq!(all.missing_ranges_from(&got, 1), vec![(64, 65)]);
        assert_eq!(SeqSet::first_n(64).len(), 64);
        assert_eq!(SeqSet::first_n(0).len(), 0);
    }

    #[test]
    fn confirm_window_settles_multiple_and_single_acks() {
        let mut w = ConfirmWindow::new();
        assert_eq!(w.settle(3, false, true), 1); // out of order
        assert_eq!(w.settle(5, true, true), 4); // 1, 2, 4, 5
        assert_eq!(w.settle(5, true, true), 0); // repeated
        assert_eq!(w.settle(6, false, false), 1); // nack
        assert_eq!(w.settle(8, true, true), 2);
        assert_eq!(
            (w.acked_count, w.nacked_count, w.settled_count()),
            (7, 1, 8)
        );
        assert!(w.acked.contains(5) && !w.acked.contains(6) && w.acked.contains(8));
    }

    #[test]
    fn loss_check_finds_a_gap() {
        // Producer 0 had 1..=100 confirmed; the consumer of queue 0 missed 50.
        let names = vec!["q0".to_string(), "q1".to_string()];
        let expected = vec![SeqSet::first_n(100)];
        let mut got = SeqSet::default();
        (1..=100).filter(|s| *s != 50).for_each(|s| {
            got.insert(s);
        });
        let routes = vec![vec![0, 1]];
        // Queue 1 had no consumer: not checked.
        let received = vec![Some(vec![got]), None];
        let r = check_loss(&names, &expected, &routes, &received, "confirmed");
        assert!(r.checked && !r.ok);
        assert_eq!((r.expected, r.missing), (100, 1));
        assert_eq!(r.missing_ranges, vec![("q0".to_string(), 0, 50, 50)]);
        assert!(r.summary().contains("1 of 100 missing"));

        let received = vec![Some(vec![SeqSet::first_n(100)]), None];
        let r = check_loss(&names, &expected, &routes, &received, "confirmed");
        assert!(r.ok && r.summary().starts_with("loss check: OK"));
    }

    #[test]
    fn loss_check_counts_fanout_per_queue() {
        let names = vec!["a".to_string(), "b".to_string()];
        let expected = vec![SeqSet::first_n(10), SeqSet::first_n(5)];
        let routes = vec![vec![0, 1], vec![0, 1]];
        let full = vec![SeqSet::first_n(10), SeqSet::first_n(5)];
        let partial = vec![SeqSet::first_n(10), SeqSet::first_n(3)];
        let r = check_loss(&names, &expected, &routes, &[Some(full), Some(partial)], "");
        assert_eq!((r.expected, r.missing), (30, 2));
    }
}
