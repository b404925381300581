//! Every input the configuration fuzzer (`fuzz/`, docs/fuzzing.md) kept, replayed through the
//! same harness: its seeds, and each input that once found a defect (`fuzz/regressions/`).

mod harness;
#[path = "../../fuzz/replay.rs"]
mod replay;

#[test]
fn config_inputs() {
    replay::replay("config", harness::config);
}
