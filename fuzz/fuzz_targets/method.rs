//! Fuzz target `method`: its checks live in
//! `warren_protocol::fuzz_support::method`, shared with the stable-Rust replay test
//! that runs them over fuzz/corpus/method and fuzz/regressions/method.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_protocol::fuzz_support::method(data));
