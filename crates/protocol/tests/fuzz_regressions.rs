//! Replays every saved fuzz input (fuzz/corpus/<target>, and every crash the fuzzers found,
//! fuzz/regressions/<target>) through the same checks the codec's fuzz targets run, so that
//! `cargo test` on stable Rust keeps fixed crashes fixed. How to fuzz: docs/fuzzing.md.

use warren_protocol::fuzz_support;

#[test]
fn frame_inputs_replay() {
    replay("frame", fuzz_support::frame);
}

#[test]
fn method_inputs_replay() {
    replay("method", fuzz_support::method);
}

#[test]
fn content_inputs_replay() {
    replay("content", fuzz_support::content);
}

#[test]
fn table_inputs_replay() {
    replay("table", fuzz_support::table);
}

include!("../../../fuzz/replay.rs");
