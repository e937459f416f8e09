//! `warrenctl`: Warren's command-line tool. It speaks only the management HTTP API (RabbitMQ's
//! paths and JSON), so it also works against RabbitMQ. Reference: `docs/cli.md`.
//!
//! Modules: `cli` (flags), `commands` (one file per group of commands), `client` (HTTP),
//! `path` (percent-encoding of names), `table` (table output), `error` (exit codes).

mod cli;
mod client;
mod commands;
mod error;
mod path;
mod table;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Parse errors exit with clap's 2, which is also `EXIT_USAGE`.
    let args = cli::Args::parse();
    match commands::run(args) {
        Ok(()) => ExitCode::from(error::EXIT_OK),
        Err(e) => {
            eprintln!("warrenctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
