//! Fuzz target `message_record`: its checks live in
//! `warren_core::durable::fuzz_support::message_record`, shared with the stable-Rust replay test
//! that runs them over fuzz/corpus/message_record and fuzz/regressions/message_record.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_core::durable::fuzz_support::message_record(data));
