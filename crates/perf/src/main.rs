//! The `warren-perf` binary: flags in, a report out (text, or one JSON line with `--json`).
//! Exit status 0 when the run found no loss and no error, 1 otherwise, 2 for bad flags.

use std::process::ExitCode;

use clap::Parser;
use warren_perf::{Args, Output};

fn main() -> ExitCode {
    let args = Args::parse();
    let threads = args.threads.unwrap_or_else(|| {
        // Honours taskset/cgroup limits, so a pinned tool runs one worker per core it has.
        std::thread::available_parallelism().map_or(1, usize::from)
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
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
