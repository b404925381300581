//! Every input the fuzzers (`fuzz/`, `docs/fuzzing.md`) kept, replayed through the same
//! harnesses: the seeds, and each input that once found a defect (`fuzz/regressions/`), so a
//! defect fixed stays fixed without the fuzzer.

mod harness;

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut found = Vec::new();
    for kind in ["seeds", "regressions"] {
        let Ok(dir) = std::fs::read_dir(root.join(kind).join(target)) else {
            continue;
        };
        for entry in dir {
            found.push(entry.expect("a directory entry").path());
        }
    }
    found.sort();
    assert!(
        !found.is_empty(),
        "no inputs for {target} under {}",
        root.display()
    );
    found
}

fn replay(target: &str, run: fn(&[u8])) {
    for path in inputs(target) {
        let data = std::fs::read(&path).expect("an input");
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{} failed", path.display());
    }
}

#[test]
fn server_inputs() {
    replay("http2_server", harness::server);
}

#[test]
fn client_inputs() {
    replay("http2_client", harness::client);
}

#[test]
fn hpack_inputs() {
    replay("hpack", harness::hpack);
}
