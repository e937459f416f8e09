//! Fuzz target `table`: its checks live in
//! `warren_protocol::fuzz_support::table`, shared with the stable-Rust replay test
//! that runs them over fuzz/corpus/table and fuzz/regressions/table.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_protocol::fuzz_support::table(data));
