//! warren-perf: a load tool for AMQP 0-9-1 brokers, in the spirit of RabbitMQ PerfTest and
//! lavinmqperf. It speaks plain AMQP through its own lean client (hand-encoded publish frames
//! batched into few writes, deliveries parsed in place), so it measures Warren and RabbitMQ
//! alike without being the bottleneck. It depends on no other Warren crate.
//!
//! [`run`] is the whole tool as a library call: the binary and the smoke test both use it.

pub mod args;
mod churn;
pub mod client;
mod consumer;
pub mod payload;
mod producer;
pub mod stats;
mod throughput;
pub mod tracker;
pub mod uri;
pub mod wire;

pub use args::{Args, ExchangeType, Scenario};
pub use stats::{Output, Report};

/// Runs the scenario the arguments describe and reports what it measured. Progress lines
/// go to `out`. Errors met along the way are in [`Report::errors`]; only bad arguments
/// fail the call.
pub async fn run_with_output(mut args: Args, out: Output) -> Result<Report, String> {
    for warning in args.validate()? {
        out.say(&format!("warning: {warning}"));
    }
    let uri = uri::AmqpUri::parse(&args.uri)?;
    payload::now_ns(); // fixes the clock base before the first stamp
    let cpu_before = stats::process_cpu_secs();
    let mut report = match args.scenario {
        Scenario::Throughput | Scenario::Backlog => throughput::run(&args, &uri, out).await,
        _ => churn::run(&args, &uri, out).await,
    };
    report.tool_cpu_secs = cpu_before
        .zip(stats::process_cpu_secs())
        .map(|(before, after)| after - before);
    Ok(report)
}

/// [`run_with_output`] printing to stdout (stderr with `--json`), quiet if `--quiet`.
pub async fn run(args: Args) -> Result<Report, String> {
    let out = Output {
        to_stderr: args.json,
        quiet: args.quiet,
    };
    run_with_output(args, out).await
}
