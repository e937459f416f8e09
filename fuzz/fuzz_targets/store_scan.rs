//! Fuzz target `store_scan`: its checks live in
//! `warren_store::fuzz_support::scan`, shared with the stable-Rust replay test
//! that runs them over fuzz/corpus/store_scan and fuzz/regressions/store_scan.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_store::fuzz_support::scan(data));
