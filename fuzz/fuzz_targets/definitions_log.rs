//! Fuzz target `definitions_log`: its checks live in
//! `warren_store::fuzz_support::definitions_log`, shared with the stable-Rust replay test
//! that runs them over fuzz/corpus/definitions_log and fuzz/regressions/definitions_log.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_store::fuzz_support::definitions_log(data));
