//! Every input the request-header fuzzer (`fuzz/`, docs/fuzzing.md) kept, replayed through the
//! same harness: its seeds, and each input that once found a defect (`fuzz/regressions/`).

mod harness;
#[path = "../../fuzz/replay.rs"]
mod replay;

#[test]
fn proxy_header_inputs() {
    replay::replay("proxy_headers", harness::proxy_headers);
}
