//! Every input the fuzzers (`fuzz/`, `docs/fuzzing.md`) kept, replayed through the same
//! harnesses: the seeds, and each input that once found a defect (`fuzz/regressions/`), so a
//! defect fixed stays fixed without the fuzzer.

mod harness;
#[path = "../../fuzz/replay.rs"]
mod replay;

#[test]
fn server_inputs() {
    replay::replay("http2_server", harness::server);
}

#[test]
fn client_inputs() {
    replay::replay("http2_client", harness::client);
}

#[test]
fn hpack_inputs() {
    replay::replay("hpack", harness::hpack);
}
