//! Replays every saved fuzz input (fuzz/corpus/<target>, and every crash the fuzzers found,
//! fuzz/regressions/<target>) through the same checks the store's fuzz targets run, so that
//! `cargo test` on stable Rust keeps fixed crashes fixed. How to fuzz: docs/fuzzing.md.

use warren_store::fuzz_support;

#[test]
fn store_scan_inputs_replay() {
    replay("store_scan", fuzz_support::scan);
}

#[test]
fn store_recovery_inputs_replay() {
    replay("store_recovery", fuzz_support::recovery);
}

#[test]
fn definitions_log_inputs_replay() {
    replay("definitions_log", fuzz_support::definitions_log);
}

include!("../../../fuzz/replay.rs");
