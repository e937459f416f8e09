//! Fuzz target `handshake`: its checks live in
//! `warren_server::fuzz_support::handshake_input`, shared with the stable-Rust replay test
//! that runs them over fuzz/corpus/handshake and fuzz/regressions/handshake.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_server::fuzz_support::handshake_input(data));
