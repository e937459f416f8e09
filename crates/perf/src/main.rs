//! The `warren-perf` binary: flags in, a report out (text, or one JSON line with `--json`).
//! Exit status 0 when the run found no loss and no error, 1 otherwise, 2 for bad flags.

use std::process::ExitCode;

use clap::Parser;
use warren_perf::{Args, Output};

fn main() -> ExitCode {
    let args = Args::parse();
    // Default workers honour taskset/cgroup limits: a pinned tool runs one per core it has.
    let runtime = match warren_runtime::build(warren_runtime::RuntimeConfig {
        worker_threads: args.threads,
        busy_poll: std::time::Duration::from_micros(args.busy_poll),
    }) {
        Ok(started) => started.runtime,
        Err(e) => {
            eprintln!("warren-perf: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = Output {
        to_stderr: args.json,
        quiet: args.quiet,
    };
    let json = args.json;
    let report = match runtime.block_on(warren_perf::run_with_output(args, out)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warren-perf: {e}");
            return ExitCode::from(2);
        }
    };
    for line in report.summary_lines() {
        out.say(&line);
    }
    if json {
        match serde_json::to_string(&report) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("warren-perf: cannot encode the report: {e}"),
        }
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
