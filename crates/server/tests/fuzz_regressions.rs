//! Replays every saved `handshake` fuzz input (fuzz/corpus/handshake, and every crash the
//! fuzzer found, fuzz/regressions/handshake) against a real in-process broker through the
//! same check the fuzz target runs, then checks the broker still serves a fresh client.
//! How to fuzz: docs/fuzzing.md.

use warren_server::fuzz_support;

#[test]
fn handshake_inputs_replay() {
    replay("handshake", fuzz_support::handshake_input);
    let fuzzer = fuzz_support::shared().lock();
    fuzzer
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .check_alive();
}

include!("../../../fuzz/replay.rs");
