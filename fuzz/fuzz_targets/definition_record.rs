//! Fuzz target `definition_record`: its checks live in
//! `warren_core::durable::fuzz_support::definition_record`, shared with the stable-Rust replay test
//! that runs them over fuzz/corpus/definition_record and fuzz/regressions/definition_record.
#![no_main]

libfuzzer_sys::fuzz_target!(
    |data: &[u8]| warren_core::durable::fuzz_support::definition_record(data)
);
