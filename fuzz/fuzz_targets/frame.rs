//! Fuzz target `frame`: its checks live in
//! `warren_protocol::fuzz_support::frame`, shared with the stable-Rust replay test
//! that runs them over fuzz/corpus/frame and fuzz/regressions/frame.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_protocol::fuzz_support::frame(data));
