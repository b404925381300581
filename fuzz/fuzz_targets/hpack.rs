#![no_main]

#[path = "../../http2/tests/harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::hpack(data));
