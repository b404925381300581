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
    // Not a terminal: plain lines, with the file to edit.
    assert!(stdout.contains("traffic-split.yaml"), "{stdout}");
    assert!(stdout.contains("s] web   v1 weight 90%"), "{stdout}");
    assert!(stdout.contains("s] echo  v1 weight 90%"), "{stdout}");
    assert!(stdout.contains("canary Progressing"), "{stdout}");
    assert!(stdout.contains(", 0 errors."), "{stdout}");
    for file in ["traffic-split.yaml", "canary.yaml", "services.yaml"] {
        assert!(dir.path().join(file).exists(), "{file}");
    }
}

/// The headless run CI (and scripts) use: a JSON summary with traffic on both versions of
/// both services near the configured weights, every response over mTLS, and traces.
#[test]
fn a_headless_demo_reports_traffic_near_the_weights_with_mtls() {
    let out = Command::new(env!("CARGO_BIN_EXE_pillion"))
        .args(["demo", "--duration", "10s", "--no-tui", "--output", "json"])
        .output()
        .expect("run pillion demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is one JSON document ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(summary["mtls"], true);
    let services = summary["services"].as_array().unwrap();
    assert_eq!(services.len(), 2, "{summary:#}");
    for service in services {
        assert_eq!(service["client"]["failed"], 0, "{service:#}");
        assert!(
            service["client"]["sent"].as_u64().unwrap() > 50,
            "{service:#}"
        );
        let mut shares = 0.0;
        for v in service["versions"].as_array().unwrap() {
            let configured = v["configuredShare"].as_f64().unwrap();
            let observed = v["observedShareTotal"].as_f64().unwrap();
            assert!(
                v["responsesTotal"].as_u64().unwrap() > 0,
                "no traffic on {v:#}"
            );
            assert!(
                (observed - configured).abs() <= 0.1,
                "observed {observed} vs configured {configured}: {v:#}"
            );
            assert_eq!(v["mtls"], true, "{v:#}");
            assert!(
                v["peerIdentity"]
                    .as_str()
                    .unwrap()
                    .starts_with("spiffe://cluster.local/ns/default/sa/"),
                "{v:#}"
            );
            assert_eq!(v["successRate"], 1.0, "{v:#}");
            shares += observed;
        }
        assert!((shares - 1.0).abs() < 1e-9, "{service:#}");
    }
    assert_eq!(services[0]["source"], "TrafficSplit default/web-canary");
    assert_eq!(services[1]["canary"]["phase"], "Progressing", "{summary:#}");
    // The demo's own collector holds the traces: the client's hop and the server's.
    assert!(summary["spansReceived"].as_u64().unwrap() > 0);
    let hops = summary["latestTrace"]["hops"].as_array().unwrap();
    assert!(hops.iter().any(|h| h["kind"] == "CLIENT"), "{hops:?}");
    assert!(hops.iter().any(|h| h["kind"] == "SERVER"), "{hops:?}");
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

/// The demo's story: a user edits the weights in the file it names, saves, and the live lines
/// show the traffic move to the new weights.
#[test]
fn an_edited_weight_moves_the_traffic_the_view_shows() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pillion"))
        .args(["demo", "--no-tui", "--dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run pillion demo");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let wait_for = |what: &dyn Fn(&str) -> bool| loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if what(&line) => return line,
            Ok(_) => {}
            Err(e) => panic!("no such line before the deadline: {e}"),
        }
    };
    wait_for(&|l| l.contains("] web ") && l.contains("v1 weight 90% share 90%"));
    let split = dir.path().join("traffic-split.yaml");
    let text = std::fs::read_to_string(&split)
        .unwrap()
        .replace("weight: 90", "weight: 0")
        .replace("weight: 10", "weight: 100");
    std::fs::write(&split, text).unwrap();
    // Shares are over the last 5 s: wait until the old ones have left the window.
    let line = wait_for(&|l| l.contains("] web ") && l.contains("v2 weight 100% share 100%"));
    assert!(line.contains("v1 weight 0% share 0%"), "{line}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
}
