//! Runs the tool's main logic against an in-process Warren: messages flow, every one
//! arrives, the loss check passes. No timing assertions: CI machines vary.

use warren_perf::{Args, Output};

fn args(url: &str, extra: &str) -> Args {
    let line = format!("warren-perf --uri {url} --quiet {extra}");
    Args::try_from_args(line.split_whitespace()).expect("valid flags")
}

const QUIET: Output = Output {
    to_stderr: true,
    quiet: true,
};

/// Starts a Warren with a data directory of its own (tests run in parallel), runs the tool
/// against it, stops it.
async fn run(extra: &str) -> warren_perf::Report {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let data_dir =
        std::env::temp_dir().join(format!("warren-perf-smoke-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&data_dir).expect("data dir");
    let mut config = warren_server::Config::for_tests();
    config.data_dir = data_dir.clone();
    let server = warren_server::start(config).await.expect("Warren starts");
    let report = warren_perf::run_with_output(args(&server.amqp_url(), extra), QUIET)
        .await
        .expect("runs");
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&data_dir);
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_with_confirms_and_manual_acks_loses_nothing() {
    let r = run("--time 2 --confirm 100 --qos 50 --multi-ack-every 10 --size 64").await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.sent > 0);
    assert_eq!(r.received, r.sent);
    assert_eq!(r.confirmed, r.sent);
    assert!(r.loss.checked && r.loss.ok, "{}", r.loss.summary());
    assert!(r.latency.is_some());
    assert!(r.ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_autoack_delivers_to_every_queue() {
    let r = run("--time 1 -x 2 -y 3 --queues 3 -t fanout -a --size 16").await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.sent > 0);
    assert_eq!(r.received, 3 * r.sent);
    assert!(r.loss.checked && r.loss.ok, "{}", r.loss.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_fills_then_drains() {
    let r = run("--scenario backlog -C 2000 -c 500 --persistent --durable --size 1024").await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!((r.sent, r.confirmed, r.received), (2000, 2000, 2000));
    assert!(r.loss.ok, "{}", r.loss.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_scenarios_count_operations() {
    for scenario in [
        "queue-churn",
        "connection-churn",
        "consumer-churn",
        "bind-churn",
    ] {
        let r = run(&format!("--scenario {scenario} -C 20")).await;
        assert!(r.errors.is_empty(), "{scenario}: {:?}", r.errors);
        assert!(!r.ops.is_empty(), "{scenario}");
        assert!(
            r.ops.iter().all(|op| op.count == 20),
            "{scenario}: {:?}",
            r.ops
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_rate_publishes_about_that_many() {
    let r = run("--pmessages 50 --rate 100 -a").await;
    assert_eq!((r.sent, r.received), (50, 50));
    assert!(r.loss.ok, "{}", r.loss.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_rate_with_busy_polling_sends_every_message_once() {
    // The spin-before-send path: a blocking-thread sleep, then yielding until each is due.
    let r = run("--pmessages 50 --rate 200 --busy-poll 300 -a").await;
    assert_eq!((r.sent, r.received), (50, 50));
    assert!(r.loss.ok, "{}", r.loss.summary());
    assert_eq!(r.latency.map(|l| l.count), Some(50), "every message timed");
}
