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

/// SIGTERM (and SIGHUP) stop the demo like Ctrl-C: its temporary directory, with the CA's
/// keys, is removed.
#[test]
fn a_terminated_demo_leaves_no_keys_behind() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_pillion"))
        .args(["demo"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run pillion demo");
    let dir = std::env::temp_dir().join(format!("pillion-demo-{}", child.id()));
    let stdout = child.stdout.take().unwrap();
    // Read all of it (a closed pipe would make the demo's next print fail).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("Ctrl-C stops everything") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(std::time::Duration::from_secs(120))
        .expect("the demo started");
    assert!(dir.join(".pillion/ca").exists(), "{}", dir.display());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn a_zero_interval_is_refused_not_a_panic() {
    let out = Command::new(env!("CARGO_BIN_EXE_pillion"))
        .args(["demo", "--interval", "0", "--duration", "1s"])
        .output()
        .expect("run pillion demo");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("more than zero"), "{err}");
}
