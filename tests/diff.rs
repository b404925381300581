//! `pillion diff` end to end: a directory against a running control plane and real proxies.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

fn diff(dir: &Path, admin: std::net::SocketAddr, json: bool) -> Output {
    let mut args = vec![
        "diff".to_string(),
        "--config-dir".into(),
        dir.display().to_string(),
        "--admin".into(),
        admin.to_string(),
    ];
    if json {
        args.extend(["--output".into(), "json".into()]);
    }
    std::process::Command::new(bin("pillion"))
        .args(&args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Polls `pillion diff` until its exit status is `code`.
fn diff_until(dir: &Path, admin: std::net::SocketAddr, code: i32) -> Output {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let o = diff(dir, admin, false);
        if o.status.code() == Some(code) {
            return o;
        }
        assert!(Instant::now() < deadline, "never exit {code}: {}", text(&o));
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_reports_a_directory_that_differs_and_a_proxy_that_missed_an_update() {
    let mesh = Mesh::start_with(90, 10, &[("PILLION_REPORT_INTERVAL", "200ms".into())]).await;
    let web = "web.default.svc.cluster.local:80";
    // The client proxy has reported that it runs `web`.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, proxies) = admin_get(mesh.cp.admin, "/proxies").await;
        if proxies.contains("default/client") && proxies.contains(web) {
            break;
        }
        assert!(Instant::now() < deadline, "{proxies}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let o = diff_until(mesh.dir.path(), mesh.cp.admin, 0);
    assert!(
        text(&o).contains("in step: 6 destinations, 3 proxies"),
        "{}",
        text(&o)
    );

    // A checkout that says something else.
    let other = tempfile::tempdir().unwrap();
    for f in ["services.yaml", "endpoints.yaml"] {
        std::fs::copy(mesh.path(f), other.path().join(f)).unwrap();
    }
    write_config(&other.path().join("split.yaml"), &split_yaml(50, 50));
    let o = diff(other.path(), mesh.cp.admin, false);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("DIRECTORY"), "{out}");
    assert!(
        out.contains(&format!("{web}: the directory declares [default/web-canary: web-v1 50 (1 endpoint), web-v2 50 (1 endpoint)]")),
        "{out}"
    );
    assert!(
        out.contains("the control plane serves [default/web-canary: web-v1 90"),
        "{out}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&diff(other.path(), mesh.cp.admin, true).stdout).unwrap();
    assert_eq!(json["drift"], true);
    assert_eq!(json["findings"][0]["kind"], "directory");

    // A proxy that hangs misses the next update: the directory and the control plane agree,
    // the proxy does not.
    mesh.client.proc.signal(Signal::SIGSTOP);
    write_config(&mesh.path("split.yaml"), &split_yaml(50, 50));
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, served) = admin_get(mesh.cp.admin, &format!("/resolve?authority={web}")).await;
        if served.contains("\"weight\": 50") {
            break;
        }
        assert!(Instant::now() < deadline, "{served}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let o = diff(mesh.dir.path(), mesh.cp.admin, false);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("PROXY"), "{out}");
    assert!(!out.contains("DIRECTORY"), "{out}");
    assert!(out.contains("proxy default/client/"), "{out}");
    assert!(
        out.contains("did not answer"),
        "read from its report: {out}"
    );
    assert!(out.contains(&format!("{web} at version")), "{out}");

    // Back, it catches up.
    mesh.client.proc.signal(Signal::SIGCONT);
    let o = diff_until(mesh.dir.path(), mesh.cp.admin, 0);
    assert!(text(&o).contains("in step"), "{}", text(&o));
}
