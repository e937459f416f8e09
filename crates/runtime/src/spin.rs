//! The spin itself: check for work until some appears, the window passes, or the spinning
//! thread turns out to be in another thread's way. The clock, the checks and the way to offer
//! the CPU are passed in, so the loop is tested with a made-up clock and scripted checks; the
//! park hook passes `Instant::now`, its epoll / queue check and `std::thread::yield_now`.
//!
//! Giving way is what keeps busy polling from ever costing latency. A spinning worker looks
//! busy to the kernel: a thread that wants its core (the client on a shared machine, another
//! process, the broker's own blocking threads) would wait until the window ran out or the
//! scheduler preempted the spinner, milliseconds later. So every round offers the core
//! (`sched_yield`, which returns at once when no one else wants it), and a round that took
//! longer than [`PREEMPTED_GAP`] (the thread was off the CPU: another thread ran, or the
//! hypervisor took the vCPU) ends the spin: the core is contended, and sleeping is the
//! better neighbour. Linux's idle polling stops the same way, on `need_resched()`.

use std::time::{Duration, Instant};

/// A round of the spin (one check and one yield) takes a microsecond or two; one that took
/// this long means the thread was descheduled in between.
pub(crate) const PREEMPTED_GAP: Duration = Duration::from_micros(50);

/// How a spin ended: what woke the worker, or that the window passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpinEnd {
    /// The runtime's epoll descriptor became ready: a socket, or a wake-up of the driver.
    Io,
    /// A task was queued from outside the workers (e.g. a finished blocking job).
    Queued,
    /// Another thread took the CPU during the spin; the worker goes to sleep.
    Preempted,
    /// The window passed quietly; the worker goes to sleep.
    TimedOut,
}

impl SpinEnd {
    /// Whether the spin found work (the worker will not really sleep).
    pub(crate) fn caught(self) -> bool {
        matches!(self, SpinEnd::Io | SpinEnd::Queued)
    }
}

/// Spins for at most `window` (as `now` tells time), calling `check` until it finds work and
/// `give_way` after each empty check. `check` runs at least once, even for a zero window, so
/// work that is already there is never slept on.
pub(crate) fn spin(
    window: Duration,
    mut now: impl FnMut() -> Instant,
    mut check: impl FnMut() -> Option<SpinEnd>,
    mut give_way: impl FnMut(),
) -> SpinEnd {
    let mut last = now();
    let deadline = last + window;
    let mut preempted = false;
    loop {
        // Checked first, also after a preemption: work that came meanwhile is taken.
        if let Some(end) = check() {
            return end;
        }
        if preempted {
            return SpinEnd::Preempted;
        }
        if last >= deadline {
            return SpinEnd::TimedOut;
        }
        give_way();
        let t = now();
        preempted = t.saturating_duration_since(last) > PREEMPTED_GAP;
        last = t;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A clock that advances `step` each time it is read.
    fn ticking(start: Instant, step: Duration) -> impl FnMut() -> Instant {
        let t = Cell::new(start);
        move || {
            let now = t.get();
            t.set(now + step);
            now
        }
    }

    #[test]
    fn ends_on_the_first_check_that_finds_work() {
        for (found, after) in [(SpinEnd::Io, 0), (SpinEnd::Queued, 5), (SpinEnd::Io, 99)] {
            let mut checks = 0;
            let end = spin(
                Duration::from_secs(1),
                ticking(Instant::now(), Duration::from_micros(1)),
                || {
                    checks += 1;
                    (checks > after).then_some(found)
                },
                || {},
            );
            assert_eq!(end, found);
            assert_eq!(checks, after + 1, "no check after the one that found work");
        }
    }

    #[test]
    fn times_out_when_the_window_passes_quietly() {
        // The clock advances 1 us per reading; the first reading sets the deadline.
        let (mut checks, mut yields) = (0, 0);
        let end = spin(
            Duration::from_micros(10),
            ticking(Instant::now(), Duration::from_micros(1)),
            || {
                checks += 1;
                None
            },
            || yields += 1,
        );
        assert_eq!(end, SpinEnd::TimedOut);
        assert_eq!(
            checks, 11,
            "one check per clock reading, the deadline's included"
        );
        assert_eq!(yields, 10, "the CPU is offered between checks");
        assert!(!end.caught());
    }

    #[test]
    fn a_zero_window_still_checks_once() {
        let mut checks = 0;
        let end = spin(
            Duration::ZERO,
            ticking(Instant::now(), Duration::ZERO),
            || {
                checks += 1;
                None
            },
            || {},
        );
        assert_eq!((end, checks), (SpinEnd::TimedOut, 1));
        let end = spin(
            Duration::ZERO,
            ticking(Instant::now(), Duration::ZERO),
            || Some(SpinEnd::Queued),
            || {},
        );
        assert!(end.caught());
    }

    #[test]
    fn a_round_that_lost_the_cpu_ends_the_spin() {
        // Rounds of 1 us, then one in which another thread ran for just over the gap.
        let start = Instant::now();
        let readings = [0, 1, 2, 3, 3 + PREEMPTED_GAP.as_micros() as u64 + 1, 5];
        let mut clock = readings.iter().map(|&us| start + Duration::from_micros(us));
        let end = spin(
            Duration::from_secs(1),
            || clock.next().expect("no reading after the spin ended"),
            || None,
            || {},
        );
        assert_eq!(end, SpinEnd::Preempted);
        assert!(!end.caught(), "a preempted spin sleeps");
        assert_eq!(clock.next(), Some(start + Duration::from_micros(5)));

        // A round of exactly the gap is still a round: the window ends the spin.
        let mut t = start;
        let end = spin(
            PREEMPTED_GAP * 3,
            || {
                let now = t;
                t += PREEMPTED_GAP;
                now
            },
            || None,
            || {},
        );
        assert_eq!(end, SpinEnd::TimedOut);
    }

    #[test]
    fn work_found_after_a_preemption_still_counts_as_work() {
        // The thread lost the CPU in the second round, and the socket became readable
        // meanwhile: the check after the gap picks it up instead of sleeping on it.
        let start = Instant::now();
        let readings = [0, 1, 500];
        let mut clock = readings.iter().map(|&us| start + Duration::from_micros(us));
        let mut rounds = 0;
        let end = spin(
            Duration::from_secs(1),
            || clock.next().expect("no reading after the spin ended"),
            || {
                rounds += 1;
                (rounds == 3).then_some(SpinEnd::Io)
            },
            || {},
        );
        assert_eq!(end, SpinEnd::Io);
    }
}
