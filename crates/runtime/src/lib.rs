//! The tokio runtime Warren's binaries (`warren`, `warren-perf`) run on.
//!
//! Owns one thing: how a worker thread waits for work. By default it parks in the kernel like
//! any tokio worker. With a *busy-poll window* it first spins, for at most that long, checking
//! whether the runtime's I/O has become ready or a task has been queued from outside the
//! runtime, and parks only when the window passes quietly.
//!
//! Why: on a virtual machine a parked thread is woken by an inter-processor interrupt that
//! costs 25–50 µs when its vCPU has gone idle, and a message crosses the broker with up to
//! three such wake-ups (publisher's connection → queue → consumer's connection). Spinning keeps
//! the core awake between messages that arrive less than a window apart — what Erlang's
//! schedulers do by default (`+sbwt`), and what Linux offers per socket as `SO_BUSY_POLL`.
//! The price is CPU: a worker that saw work spins up to the window before sleeping, so a
//! trickle of messages keeps a core busy. Under load the workers never park, so the window
//! costs nothing there; an idle broker parks after one window.
//!
//! The window adapts per worker, as Linux's `haltpoll` idle governor does for guest CPUs: it
//! starts at the configured maximum; a sleep that lasted longer than the maximum (no spin could
//! have caught its end) halves it, down to zero; a sleep shorter than the maximum (a longer
//! spin would have caught it) doubles it, from [`BUSY_POLL_GROW_START`] up to the maximum. So
//! traffic that arrives more than a window apart stops costing CPU, and steady traffic keeps
//! the window open. That rule is a pure state machine in `window.rs`, tested with made-up time.
//!
//! A spin never stands in another thread's way (`spin.rs`): each round offers the CPU
//! (`sched_yield`), and a round in which the thread lost the CPU for longer than a few tens of
//! microseconds ends the spin and closes the window for a while (`window::CONTENDED_PAUSE`).
//! Without that, a client (or anything else)
//! sharing a core with a spinning worker waited for the window to run out before it could run,
//! and busy polling made latency worse than sleeping (issue 9, item 11: p99 ~ one window).
//!
//! How: the spin runs in tokio's `on_thread_park` hook, which tokio calls before the worker
//! counts as parked, so no other worker tries to wake it meanwhile. It polls the runtime's
//! epoll descriptor with a zero timeout (readable when any registered socket, or a wake-up of
//! the driver, is pending) and reads the global queue depth (tasks woken from blocking
//! threads, e.g. a finished fsync). Timers are not visible to the hook, so a timer may fire up
//! to one window late; [`BUSY_POLL_MAX`] keeps that bounded. The epoll descriptor is found by
//! comparing `/proc/self/fd` before and after the runtime is built; where that is not
//! possible (not Linux, or ambiguous), busy polling is off and [`Started::busy_poll`] says so.
//!
//! Must not: touch anything but the runtime; the hook never blocks and never allocates.

mod spin;
mod window;

use std::cell::Cell;
use std::collections::BTreeSet;
use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::runtime::{Builder, Handle, Runtime};

use spin::{spin, SpinEnd};
use window::AdaptiveWindow;

/// The longest busy-poll window accepted: a timer can fire this late at most.
pub const BUSY_POLL_MAX: Duration = Duration::from_millis(10);
/// Where a closed window reopens when a sleep was short enough to have been caught; windows
/// that shrink below it close.
pub const BUSY_POLL_GROW_START: Duration = Duration::from_micros(50);

/// What to build.
#[derive(Debug, Clone, Copy, Default)]
pub struct RuntimeConfig {
    /// Worker threads; `None` = one per CPU this process may run on (honours taskset).
    pub worker_threads: Option<usize>,
    /// Spin this long before parking; zero = park at once (tokio's behaviour).
    pub busy_poll: Duration,
}

/// A built runtime and whether busy polling could be switched on.
pub struct Started {
    pub runtime: Runtime,
    /// The window in force: the requested one, or zero when the epoll descriptor was not found.
    pub busy_poll: Duration,
    /// How the spins ended so far.
    pub spins: Arc<SpinCounts>,
}

/// How busy-poll spins ended: what woke the worker, or that the window passed.
#[derive(Debug, Default)]
pub struct SpinCounts {
    /// A socket, timer wake-up or unpark made the runtime's epoll descriptor ready.
    pub io: AtomicU64,
    /// A task was queued from outside the workers (e.g. a finished blocking job).
    pub queued: AtomicU64,
    /// Another thread took the CPU; the window closed and the worker went to sleep.
    pub preempted: AtomicU64,
    /// The window passed quietly; the worker went to sleep.
    pub timed_out: AtomicU64,
}

/// What the park hook needs, filled in once the runtime exists.
struct PollTarget {
    epoll_fd: RawFd,
    handle: Handle,
    counts: Arc<SpinCounts>,
}

/// Builds a multi-thread runtime with every driver enabled, and the busy-poll hook when
/// `config.busy_poll` is not zero.
pub fn build(config: RuntimeConfig) -> io::Result<Started> {
    let window = config.busy_poll.min(BUSY_POLL_MAX);
    let workers = config.worker_threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let mut builder = Builder::new_multi_thread();
    builder.worker_threads(workers.max(1)).enable_all();
    let counts = Arc::new(SpinCounts::default());
    if window.is_zero() {
        return Ok(Started {
            runtime: builder.build()?,
            busy_poll: Duration::ZERO,
            spins: counts,
        });
    }
    let target: Arc<OnceLock<PollTarget>> = Arc::new(OnceLock::new());
    let hook_target = Arc::clone(&target);
    builder.on_thread_park(move || {
        if let Some(t) = hook_target.get() {
            before_park(t, window);
        }
    });
    builder.on_thread_unpark(move || after_unpark(window));
    let before = epoll_fds();
    let runtime = builder.build()?;
    let created: Vec<RawFd> = epoll_fds().difference(&before).copied().collect();
    // Tokio keeps a duplicate of its epoll descriptor (a cloned mio registry): several new
    // descriptors are fine as long as they are one epoll instance, i.e. watch the same files.
    let one_instance = created
        .windows(2)
        .all(|w| watched(w[0]).is_some() && watched(w[0]) == watched(w[1]));
    let busy_poll = match created.first() {
        Some(&fd) if one_instance => {
            let _ = target.set(PollTarget {
                epoll_fd: fd,
                handle: runtime.handle().clone(),
                counts: Arc::clone(&counts),
            });
            window
        }
        _ => Duration::ZERO,
    };
    Ok(Started {
        runtime,
        busy_poll,
        spins: counts,
    })
}

thread_local! {
    /// This worker's window (see [`window`]); `None` until its first park.
    static WINDOW: Cell<Option<AdaptiveWindow>> = const { Cell::new(None) };
}

/// The park hook: spin for this worker's window, then let tokio park.
fn before_park(target: &PollTarget, max: Duration) {
    WINDOW.with(|cell| {
        let mut state = cell.get().unwrap_or_else(|| AdaptiveWindow::new(max));
        let end = if state.window().is_zero() {
            SpinEnd::TimedOut
        } else {
            let end = spin(
                state.window(),
                Instant::now,
                || check(target),
                std::thread::yield_now,
            );
            let count = match end {
                SpinEnd::Io => &target.counts.io,
                SpinEnd::Queued => &target.counts.queued,
                SpinEnd::Preempted => &target.counts.preempted,
                SpinEnd::TimedOut => &target.counts.timed_out,
            };
            count.fetch_add(1, Relaxed);
            end
        };
        state.spin_ended(end, Instant::now());
        cell.set(Some(state));
    });
}

/// The unpark hook: a sleep that just ended adapts the window.
fn after_unpark(max: Duration) {
    WINDOW.with(|cell| {
        let mut state = cell.get().unwrap_or_else(|| AdaptiveWindow::new(max));
        state.woke(Instant::now());
        cell.set(Some(state));
    });
}

/// One look for work the worker would otherwise sleep through.
fn check(target: &PollTarget) -> Option<SpinEnd> {
    // SAFETY: the descriptor belongs to the runtime's I/O driver, which lives as long as the
    // runtime; this hook only runs on that runtime's worker threads while it is running, so the
    // descriptor is open for the whole borrow. It is only polled, never read or closed.
    #[allow(unsafe_code)]
    let fd = unsafe { BorrowedFd::borrow_raw(target.epoll_fd) };
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match rustix::event::poll(&mut fds, Some(&zero)) {
        Ok(0) => {}
        Ok(_) | Err(_) => return Some(SpinEnd::Io),
    }
    (target.handle.metrics().global_queue_depth() > 0).then_some(SpinEnd::Queued)
}

/// The epoll descriptors this process has open (empty where `/proc` is unavailable).
fn epoll_fds() -> BTreeSet<RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return BTreeSet::new();
    };
    dir.filter_map(|entry| {
        let entry = entry.ok()?;
        let fd: RawFd = entry.file_name().to_str()?.parse().ok()?;
        let link = std::fs::read_link(entry.path()).ok()?;
        (link.as_os_str() == "anon_inode:[eventpoll]").then_some(fd)
    })
    .collect()
}

/// The `tfd:` lines of an epoll descriptor's fdinfo: the files it watches.
fn watched(fd: RawFd) -> Option<Vec<String>> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    let mut lines: Vec<String> = info
        .lines()
        .filter(|l| l.starts_with("tfd:"))
        .map(str::to_owned)
        .collect();
    lines.sort();
    Some(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Tests build runtimes in one process; finding "the new epoll descriptor" needs them to
    /// take turns.
    static BUILD: Mutex<()> = Mutex::new(());

    /// (spins ended by I/O, by a queued task, by the window passing)
    fn counts(c: &SpinCounts) -> (u64, u64, u64) {
        (
            c.io.load(Relaxed),
            c.queued.load(Relaxed),
            c.timed_out.load(Relaxed),
        )
    }

    /// An echo server on a thread outside the runtime; bytes from 128 up are answered only
    /// after a pause longer than the longest window. Ends when the client closes.
    fn echo_server() -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let echo = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut s, _) = listener.accept().unwrap();
            let mut b = [0u8; 1];
            while s.read_exact(&mut b).is_ok() {
                if b[0] >= 128 {
                    std::thread::sleep(BUSY_POLL_MAX * 2);
                }
                s.write_all(&b).unwrap();
            }
        });
        (addr, echo)
    }

    /// Sends the bytes `from .. from + n` one at a time, each after the previous came back.
    async fn echo_rounds(c: &mut tokio::net::TcpStream, from: u8, n: u8) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for i in from..from + n {
            c.write_all(&[i]).await.unwrap();
            let mut b = [0u8; 1];
            c.read_exact(&mut b).await.unwrap();
            assert_eq!(b[0], i);
        }
    }

    /// How long a test may wait for something that scheduling can only delay.
    const PATIENCE: Duration = Duration::from_secs(60);

    // The window's arithmetic and the spin loop are tested with made-up time in `window` and
    // `spin`. With real sockets and threads, how many spins end which way depends on the
    // machine's load, so these tests only assert what holds whatever the scheduling: each kind
    // of wake-up *can* end a spin (retrying until it does), and work is never lost.

    #[test]
    fn spins_end_when_io_or_a_blocking_job_needs_the_worker() {
        let _turn = BUILD.lock().unwrap_or_else(|e| e.into_inner());
        // The longest window: a spin then ends early only because the hook saw work coming.
        let started = build(RuntimeConfig {
            worker_threads: Some(1),
            busy_poll: BUSY_POLL_MAX,
        })
        .expect("runtime");
        assert_eq!(started.busy_poll, BUSY_POLL_MAX);
        let give_up = Instant::now() + PATIENCE;

        // I/O: each round the worker has nothing to do until the echo arrives.
        let (addr, echo) = echo_server();
        let before = counts(&started.spins);
        let spins = Arc::clone(&started.spins);
        let io = started.runtime.spawn(async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut from = 0;
            while counts(&spins).0 == before.0 && Instant::now() < give_up {
                echo_rounds(&mut c, from, 1).await;
                from = (from + 1) % 128;
            }
        });
        started.runtime.block_on(io).expect("echo rounds");
        let after = counts(&started.spins);
        assert!(
            after.0 > before.0,
            "a socket becoming readable ends a spin: {before:?} -> {after:?}"
        );

        // A blocking job finishing wakes its waiter from outside the workers.
        let before = after;
        let spins = Arc::clone(&started.spins);
        let jobs = started.runtime.spawn(async move {
            let caught = |c: (u64, u64, u64)| c.0 + c.1;
            let mut i = 0u64;
            while caught(counts(&spins)) == caught(before) && Instant::now() < give_up {
                let n = tokio::task::spawn_blocking(move || {
                    std::thread::sleep(Duration::from_micros(100));
                    i
                });
                assert_eq!(n.await.unwrap(), i);
                i += 1;
            }
        });
        started.runtime.block_on(jobs).expect("blocking rounds");
        let after = counts(&started.spins);
        assert!(
            after.0 + after.1 > before.0 + before.1,
            "a finished blocking job ends a spin: {before:?} -> {after:?}"
        );

        // Timers are invisible to the hook but still fire (at most one window late).
        started.runtime.block_on(async {
            tokio::time::sleep(Duration::from_millis(1)).await;
        });
        drop(started);
        echo.join().unwrap();
    }

    #[test]
    fn sparse_then_steady_traffic_is_served_whatever_the_window() {
        let _turn = BUILD.lock().unwrap_or_else(|e| e.into_inner());
        let started = build(RuntimeConfig {
            worker_threads: Some(1),
            busy_poll: BUSY_POLL_MAX,
        })
        .expect("runtime");
        let (addr, echo) = echo_server();
        // Sparse echoes (bytes from 128 up) close the window, steady ones reopen it; either
        // way every echo comes back, on the worker.
        let rounds = started.runtime.spawn(async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            echo_rounds(&mut c, 128, 10).await;
            echo_rounds(&mut c, 0, 60).await;
        });
        started.runtime.block_on(rounds).expect("echo rounds");
        let (io, queued, timed_out) = counts(&started.spins);
        assert!(io + queued + timed_out > 0, "the hook ran");
        drop(started);
        echo.join().unwrap();
    }

    #[test]
    fn zero_window_builds_a_plain_runtime() {
        let _turn = BUILD.lock().unwrap_or_else(|e| e.into_inner());
        let started = build(RuntimeConfig::default()).expect("runtime");
        assert_eq!(started.busy_poll, Duration::ZERO);
    }

    #[test]
    fn window_is_capped() {
        let _turn = BUILD.lock().unwrap_or_else(|e| e.into_inner());
        let started = build(RuntimeConfig {
            worker_threads: Some(1),
            busy_poll: Duration::from_secs(5),
        })
        .expect("runtime");
        assert_eq!(started.busy_poll, BUSY_POLL_MAX);
    }
}
