#![no_main]

#[path = "../../proxy/tests/harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::proxy_headers(data));
