//! Every input the request-header fuzzer (`fuzz/`, docs/fuzzing.md) kept, replayed through the
//! same harness: its seeds, and each input that once found a defect (`fuzz/regressions/`).

mod harness;

use std::path::Path;

#[test]
fn proxy_header_inputs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut inputs = Vec::new();
    for kind in ["seeds", "regressions"] {
        if let Ok(dir) = std::fs::read_dir(root.join(kind).join("proxy_headers")) {
            inputs.extend(dir.map(|e| e.expect("a directory entry").path()));
        }
    }
    inputs.sort();
    assert!(!inputs.is_empty(), "no inputs under {}", root.display());
    for path in inputs {
        let data = std::fs::read(&path).expect("an input");
        let outcome = std::panic::catch_unwind(|| harness::proxy_headers(&data));
        assert!(outcome.is_ok(), "{} failed", path.display());
    }
}
