//! `pillion stat` and `pillion top` against a running mesh: the client proxy's figures per
//! backend, read from its admin port or found through the control plane's list of proxies.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn pillion(args: &[&str]) -> Output {
    std::process::Command::new(bin("pillion"))
        .args(args)
        .output()
        .unwrap()
}

/// Requests through the client proxy until dropped.
fn traffic(mesh: &Mesh) -> tokio::task::JoinHandle<()> {
    let client = http1_client();
    let proxy = mesh.client.outbound;
    tokio::spawn(async move {
        loop {
            let _ = get(&client, proxy, "web", "/").await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

fn json_docs(out: &Output) -> Vec<Value> {
    serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter::<Value>()
        .map(|v| v.unwrap())
        .collect()
}

/// The outbound row of `backend` (a Service name) in one JSON document.
fn backend_row<'a>(doc: &'a Value, backend: &str) -> Option<&'a Value> {
    doc["rows"].as_array()?.iter().find(|r| {
        r["direction"] == "outbound"
            && r["backend"]
                .as_str()
                .is_some_and(|b| b.starts_with(&format!("{backend}.default.")))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_reads_a_proxys_figures_per_backend() {
    let mesh = Mesh::start(80, 20).await;
    mesh.wait_for_versions(&["v1", "v2"]).await;
    let load = traffic(&mesh);
    let admin = mesh.client.admin.to_string();
    let out = pillion(&["stat", "--proxy", &admin, "--window", "1s", "-o", "json"]);
    load.abort();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let doc = &json_docs(&out)[0];
    assert_eq!(doc["proxies"], 1);
    let v1 = backend_row(doc, "web-v1").unwrap_or_else(|| panic!("{doc:#}"));
    let v2 = backend_row(doc, "web-v2").unwrap_or_else(|| panic!("{doc:#}"));
    for row in [v1, v2] {
        assert!(
            row["authority"].as_str().unwrap().starts_with("web."),
            "{row}"
        );
        assert!(row["rps"].as_f64().unwrap() > 0.0, "{row}");
        assert_eq!(row["successRate"], 1.0, "{row}");
        let p50 = row["latencyMsP50"].as_f64().unwrap();
        let p99 = row["latencyMsP99"].as_f64().unwrap();
        assert!(p50 > 0.0 && p50 <= p99, "{row}");
        assert_eq!(row["routes"][0], "default/web-canary", "{row}");
    }
    // The 80/20 split shows in the window's requests.
    let (a, b) = (
        v1["requests"].as_f64().unwrap(),
        v2["requests"].as_f64().unwrap(),
    );
    let share = a / (a + b);
    assert!((0.6..=0.95).contains(&share), "v1 share {share}: {doc:#}");

    // The table: one row per backend, the filter keeps only what it names.
    let out = pillion(&["stat", "--proxy", &admin, "--window", "200ms", "web-v2"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    assert!(
        lines.next().unwrap().starts_with("DIRECTION  AUTHORITY"),
        "{text}"
    );
    let row = lines.next().unwrap();
    assert!(
        row.starts_with("outbound") && row.contains("web-v2.default:80"),
        "{text}"
    );
    assert!(!text.contains("web-v1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_finds_the_proxies_through_the_control_plane_and_redraws() {
    let mesh = Mesh::start_with(50, 50, &[("PILLION_REPORT_INTERVAL", "200ms".into())]).await;
    mesh.wait_for_versions(&["v1", "v2"]).await;
    // The client proxy has reported where its admin port is.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, proxies) = admin_get(mesh.cp.admin, "/proxies").await;
        if proxies.contains("default/client") {
            break;
        }
        assert!(Instant::now() < deadline, "{proxies}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let load = traffic(&mesh);
    let cp_admin = mesh.cp.admin.to_string();
    let out = pillion(&[
        "top",
        "--admin",
        &cp_admin,
        "--window",
        "500ms",
        "--iterations",
        "2",
        "-o",
        "json",
    ]);
    load.abort();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let docs = json_docs(&out);
    assert_eq!(docs.len(), 2, "one document per window");
    let last = &docs[1];
    assert!(last["proxies"].as_u64().unwrap() >= 1, "{last:#}");
    for backend in ["web-v1", "web-v2"] {
        let row = backend_row(last, backend).unwrap_or_else(|| panic!("{last:#}"));
        assert!(row["requests"].as_u64().unwrap() > 0, "{row}");
        assert!(row["total"].as_u64() >= row["requests"].as_u64(), "{row}");
    }
}

#[test]
fn no_proxy_to_read_exits_3() {
    // A port nothing listens on: bound, then closed.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let out = pillion(&["stat", "--proxy", &addr, "--window", "100ms"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&addr),
        "{out:?}"
    );
    let out = pillion(&["stat", "--admin", &addr]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("did not answer"),
        "{out:?}"
    );
}
