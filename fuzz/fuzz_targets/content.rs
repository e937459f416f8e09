//! Fuzz target `content`: its checks live in
//! `warren_protocol::fuzz_support::content`, shared with the stable-Rust replay test
//! that runs them over fuzz/corpus/content and fuzz/regressions/content.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_protocol::fuzz_support::content(data));
