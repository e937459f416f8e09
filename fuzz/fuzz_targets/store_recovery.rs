//! Fuzz target `store_recovery`: its checks live in
//! `warren_store::fuzz_support::recovery`, shared with the stable-Rust replay test
//! that runs them over fuzz/corpus/store_recovery and fuzz/regressions/store_recovery.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_store::fuzz_support::recovery(data));
