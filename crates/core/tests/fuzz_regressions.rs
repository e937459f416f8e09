//! Replays every saved fuzz input (fuzz/corpus/<target>, and every crash the fuzzers found,
//! fuzz/regressions/<target>) through the same checks the durable records' fuzz targets run,
//! so that `cargo test` on stable Rust keeps fixed crashes fixed. How to fuzz:
//! docs/fuzzing.md.

use warren_core::durable::fuzz_support;

#[test]
fn message_record_inputs_replay() {
    replay("message_record", fuzz_support::message_record);
}

#[test]
fn definition_record_inputs_replay() {
    replay("definition_record", fuzz_support::definition_record);
}

include!("../../../fuzz/replay.rs");
