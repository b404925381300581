//! `pillion demo` as a user runs it: it starts, shows both versions answering over HTTP and
//! gRPC, and stops by itself with no error.

use std::process::Command;

#[test]
fn the_demo_runs_and_shows_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pillion"))
        .args(["demo", "--duration", "5s", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run pillion demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("traffic-split.yaml"), "{stdout}");
    assert!(stdout.contains("mTLS between proxies"), "{stdout}");
    assert!(stdout.contains("HTTP  v1"), "{stdout}");
    assert!(stdout.contains("gRPC  v1"), "{stdout}");
    assert!(stdout.contains(", 0 errors."), "{stdout}");
    assert!(dir.path().join("traffic-split.yaml").exists());
}
