//! One worker's adaptive busy-poll window, as a pure state machine: it is told when a spin
//! ended (and whether it caught work) and when the worker woke, each with the time, and keeps
//! the window for the next spin. No clock, no thread-locals, no tokio: the park hook feeds it
//! real instants, the tests feed it made-up ones.
//!
//! The rule is Linux's `haltpoll` idle governor's: the window starts at the maximum; a sleep
//! longer than the maximum (no spin could have caught its end) halves it, and a half below
//! [`BUSY_POLL_GROW_START`] closes it; a sleep no longer than the maximum (a longer spin would
//! have caught it) doubles it, from [`BUSY_POLL_GROW_START`], up to the maximum. A spin that
//! caught work means no sleep, and leaves the window as it is. A spin that lost the CPU to
//! another thread closes the window at once and keeps it closed for [`CONTENDED_PAUSE`]: the
//! core is shared, and every spin would hand it to the other thread for a whole time slice
//! while this one waits runnable (not sleeping, so without a sleeper's quick wake-up). After
//! the pause the usual rule reopens it from the next short sleep on.

use std::time::{Duration, Instant};

use crate::spin::SpinEnd;
use crate::BUSY_POLL_GROW_START;

/// How long a window stays closed after a spin lost the CPU to another thread. Under lasting
/// contention the worker tries spinning again once per pause, which costs it at most one
/// time slice per pause.
pub(crate) const CONTENDED_PAUSE: Duration = Duration::from_secs(1);

/// The window and, while the worker sleeps after a fruitless spin, when that sleep began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AdaptiveWindow {
    max: Duration,
    window: Duration,
    slept_at: Option<Instant>,
    /// After a contended spin: the window stays closed until then.
    closed_until: Option<Instant>,
}

impl AdaptiveWindow {
    /// A window that starts fully open at `max`.
    pub(crate) fn new(max: Duration) -> AdaptiveWindow {
        AdaptiveWindow {
            max,
            window: max,
            slept_at: None,
            closed_until: None,
        }
    }

    /// How long the next spin may last (zero: park at once).
    pub(crate) fn window(&self) -> Duration {
        self.window
    }

    /// The spin before a park ended at `now`, as `end` says: with work found (the worker parks
    /// only to pick it up) or without (the worker is going to sleep).
    pub(crate) fn spin_ended(&mut self, end: SpinEnd, now: Instant) {
        if end == SpinEnd::Preempted {
            self.window = Duration::ZERO;
            self.closed_until = Some(now + CONTENDED_PAUSE);
        }
        self.slept_at = (!end.caught()).then_some(now);
    }

    /// The worker woke at `now`; if it had gone to sleep, the sleep's length adapts the window.
    pub(crate) fn woke(&mut self, now: Instant) {
        let Some(at) = self.slept_at.take() else {
            return;
        };
        if let Some(until) = self.closed_until {
            if now < until {
                return;
            }
            self.closed_until = None;
        }
        let slept = now.saturating_duration_since(at);
        self.window = if slept <= self.max {
            // A spin of up to `max` would have caught this wake-up: open the window wider.
            (self.window * 2).max(BUSY_POLL_GROW_START).min(self.max)
        } else if self.window / 2 < BUSY_POLL_GROW_START {
            Duration::ZERO
        } else {
            self.window / 2
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BUSY_POLL_MAX;

    /// What happens between two parks, on a made-up clock.
    #[derive(Debug, Clone, Copy)]
    enum Event {
        /// The spin saw work; the worker did not sleep.
        Caught,
        /// The spin found nothing and the worker slept this long.
        Slept(Duration),
        /// The spin lost the CPU to another thread, then the worker slept this long.
        Preempted(Duration),
    }

    fn apply(w: &mut AdaptiveWindow, now: &mut Instant, event: Event) {
        match event {
            Event::Caught => {
                *now += w.window();
                w.spin_ended(SpinEnd::Io, *now);
            }
            Event::Slept(d) => {
                *now += w.window();
                w.spin_ended(SpinEnd::TimedOut, *now);
                *now += d;
            }
            Event::Preempted(d) => {
                *now += w.window() / 2;
                w.spin_ended(SpinEnd::Preempted, *now);
                *now += d;
            }
        }
        w.woke(*now);
    }

    fn run(max: Duration, events: &[Event]) -> Vec<Duration> {
        let mut w = AdaptiveWindow::new(max);
        let mut now = Instant::now();
        events
            .iter()
            .map(|&e| {
                apply(&mut w, &mut now, e);
                w.window()
            })
            .collect()
    }

    const LONG: Event = Event::Slept(Duration::from_millis(25));
    const SHORT: Event = Event::Slept(Duration::from_micros(1));

    #[test]
    fn starts_open_at_the_maximum() {
        assert_eq!(AdaptiveWindow::new(BUSY_POLL_MAX).window(), BUSY_POLL_MAX);
    }

    #[test]
    fn long_sleeps_halve_the_window_until_it_closes() {
        let us = Duration::from_micros;
        assert_eq!(
            run(BUSY_POLL_MAX, &[LONG; 9]),
            [
                us(5000),
                us(2500),
                us(1250),
                us(625),
                Duration::from_nanos(312_500),
                Duration::from_nanos(156_250),
                Duration::from_nanos(78_125),
                Duration::ZERO,
                Duration::ZERO,
            ]
        );
    }

    #[test]
    fn short_sleeps_reopen_a_closed_window_by_doubling() {
        let us = Duration::from_micros;
        let mut events = vec![LONG; 8];
        events.extend([SHORT; 10]);
        let windows = run(us(2000), &events);
        assert_eq!(windows[5], Duration::ZERO, "2 ms closes after 6 halvings");
        assert_eq!(
            windows[8..],
            [
                us(50),
                us(100),
                us(200),
                us(400),
                us(800),
                us(1600),
                us(2000),
                us(2000),
                us(2000),
                us(2000)
            ]
        );
    }

    #[test]
    fn a_sleep_exactly_the_maximum_counts_as_short() {
        let max = Duration::from_micros(2000);
        let exactly = Event::Slept(max);
        assert_eq!(run(max, &[LONG, exactly]), [max / 2, max]);
        let longer = Event::Slept(max + Duration::from_nanos(1));
        assert_eq!(run(max, &[longer]), [max / 2]);
    }

    #[test]
    fn caught_spins_leave_the_window_alone() {
        let max = Duration::from_micros(2000);
        assert_eq!(
            run(max, &[Event::Caught, LONG, Event::Caught, Event::Caught]),
            [max, max / 2, max / 2, max / 2]
        );
    }

    #[test]
    fn a_wake_without_a_sleep_changes_nothing() {
        let mut w = AdaptiveWindow::new(BUSY_POLL_MAX);
        let now = Instant::now();
        w.woke(now + Duration::from_secs(1));
        assert_eq!(w, AdaptiveWindow::new(BUSY_POLL_MAX));
        // Only the first wake after a sleep adapts.
        w.spin_ended(SpinEnd::TimedOut, now);
        w.woke(now + Duration::from_secs(1));
        let once = w;
        w.woke(now + Duration::from_secs(2));
        assert_eq!(w, once);
    }

    #[test]
    fn a_maximum_below_the_grow_start_opens_to_the_maximum() {
        // Regression: `clamp(BUSY_POLL_GROW_START, max)` panicked for `--busy-poll 20`.
        let max = Duration::from_micros(20);
        assert_eq!(
            run(max, &[LONG, SHORT, SHORT, LONG]),
            [Duration::ZERO, max, max, Duration::ZERO]
        );
    }

    #[test]
    fn a_spin_that_lost_the_cpu_closes_the_window() {
        let us = Duration::from_micros;
        let max = us(2000);
        // Closed whatever the sleep after it, and kept closed by short sleeps (for the pause).
        assert_eq!(
            run(max, &[Event::Preempted(us(1)), SHORT, SHORT]),
            [Duration::ZERO; 3]
        );
        assert_eq!(
            run(max, &[SHORT, Event::Preempted(us(5000)), SHORT]),
            [max, Duration::ZERO, Duration::ZERO]
        );
        // A queued task found by the spin is work, not contention.
        let mut w = AdaptiveWindow::new(max);
        w.spin_ended(SpinEnd::Queued, Instant::now());
        w.woke(Instant::now() + Duration::from_secs(1));
        assert_eq!(w.window(), max);
    }

    #[test]
    fn a_contended_window_stays_closed_for_the_pause() {
        let max = Duration::from_micros(2000);
        let mut w = AdaptiveWindow::new(max);
        let start = Instant::now();
        w.spin_ended(SpinEnd::Preempted, start);
        w.woke(start + Duration::from_micros(10));
        assert_eq!(w.window(), Duration::ZERO);
        // Short sleeps within the pause do not reopen it.
        let mut now = start + Duration::from_micros(10);
        while now + Duration::from_millis(1) < start + CONTENDED_PAUSE {
            w.spin_ended(SpinEnd::TimedOut, now);
            now += Duration::from_millis(1);
            w.woke(now);
            assert_eq!(w.window(), Duration::ZERO, "closed at {:?}", now - start);
        }
        // The first short sleep that ends after the pause reopens it.
        w.spin_ended(
            SpinEnd::TimedOut,
            start + CONTENDED_PAUSE - Duration::from_micros(1),
        );
        w.woke(start + CONTENDED_PAUSE);
        assert_eq!(w.window(), BUSY_POLL_GROW_START);
        // And a new contended spin starts a new pause.
        let again = start + CONTENDED_PAUSE * 2;
        w.spin_ended(SpinEnd::Preempted, again);
        w.woke(again + Duration::from_micros(1));
        w.spin_ended(SpinEnd::TimedOut, again + Duration::from_micros(2));
        w.woke(again + Duration::from_micros(3));
        assert_eq!(w.window(), Duration::ZERO);
    }

    #[test]
    fn every_sequence_keeps_the_window_in_range_and_follows_the_rule() {
        // All 6^6 sequences of six events, for a few maxima: the window is always zero or
        // between the grow start (or the maximum, if smaller) and the maximum, and each step
        // is the one the rule prescribes. One sleep outlasts the contention pause.
        let sleeps = [
            Event::Caught,
            Event::Slept(Duration::from_micros(30)),
            Event::Slept(Duration::from_millis(30)),
            Event::Slept(CONTENDED_PAUSE + Duration::from_millis(1)),
            Event::Preempted(Duration::from_micros(30)),
            Event::Preempted(Duration::from_millis(30)),
        ];
        const KINDS: u32 = 6;
        const LENGTH: u32 = 6;
        for max_us in [1, 49, 50, 51, 1000, 2000, 10_000] {
            let max = Duration::from_micros(max_us);
            let floor = BUSY_POLL_GROW_START.min(max);
            for code in 0..KINDS.pow(LENGTH) {
                let events: Vec<Event> = (0..LENGTH)
                    .map(|i| sleeps[(code / KINDS.pow(i) % KINDS) as usize])
                    .collect();
                // The rule, restated: the window and the end of a pause, on the same clock.
                let mut before = max;
                let mut now = Duration::ZERO;
                let mut paused_until = None;
                for (event, after) in events.iter().zip(run(max, &events)) {
                    assert!(
                        after.is_zero() || (floor..=max).contains(&after),
                        "{max:?} {events:?}: window {after:?} out of range"
                    );
                    let (start, slept) = match *event {
                        Event::Caught => {
                            now += before;
                            (before, None)
                        }
                        Event::Slept(d) => {
                            now += before + d;
                            (before, Some(d))
                        }
                        Event::Preempted(d) => {
                            now += before / 2;
                            paused_until = Some(now + CONTENDED_PAUSE);
                            now += d;
                            (Duration::ZERO, Some(d))
                        }
                    };
                    let paused = paused_until.is_some_and(|until| now < until);
                    let expected = match slept {
                        None => start,
                        Some(_) if paused => Duration::ZERO,
                        Some(d) if d <= max => (start * 2).max(floor).min(max),
                        Some(_) if start / 2 < BUSY_POLL_GROW_START => Duration::ZERO,
                        Some(_) => start / 2,
                    };
                    assert_eq!(after, expected, "{max:?} {events:?}");
                    before = after;
                }
            }
        }
    }
}
