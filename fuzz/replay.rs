//! Replays every input kept for a fuzz target (`fuzz/seeds/<target>`, `fuzz/regressions/<target>`)
//! through its harness; included by each crate's `tests/fuzz_inputs.rs` (docs/fuzzing.md).

use std::path::Path;

/// Runs `run` on each input of `target`; fails naming the first input that panics.
pub fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut inputs = Vec::new();
    for kind in ["seeds", "regressions"] {
        if let Ok(dir) = std::fs::read_dir(root.join(kind).join(target)) {
            inputs.extend(dir.map(|e| e.expect("a directory entry").path()));
        }
    }
    inputs.sort();
    assert!(
        !inputs.is_empty(),
        "no inputs for {target} under {}",
        root.display()
    );
    for path in inputs {
        let data = std::fs::read(&path).expect("an input");
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{} failed", path.display());
    }
}
