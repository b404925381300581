//! A real Prometheus server scrapes a proxy on loopback: the target is up, and a PromQL query
//! returns the number of requests the test sent.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Prometheus {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The TCP port a process listens on, found from its sockets in `/proc` (Prometheus is told
/// to bind port 0 and does not say which port it got).
fn listening_port(pid: u32) -> Option<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_string)
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // local_address, state 0A = LISTEN, inode
        let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
        if *state != "0A" || !inodes.iter().any(|i| i == inode) {
            return None;
        }
        u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
    })
}

fn start_prometheus(target: SocketAddr) -> (Prometheus, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n- job_name: pillion\n  metrics_path: /metrics\n  static_configs:\n  - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg("--web.listen-address=127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (scripts/test.sh installs it: apt-get install prometheus)");
    let pid = child.id();
    let prometheus = Prometheus { child, _dir: dir };
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(port) = listening_port(pid) {
            return (prometheus, SocketAddr::from(([127, 0, 0, 1], port)));
        }
        assert!(Instant::now() < deadline, "Prometheus did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of a PromQL query's single result, if there is one.
async fn query(prometheus: SocketAddr, promql: &str) -> Option<f64> {
    let mut url = String::from("/api/v1/query?query=");
    for b in promql.bytes() {
        if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    let (status, body) = admin_get(prometheus, &url).await;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_proxy() {
    let mesh = Mesh::start(1, 1).await;
    let client = http1_client();
    for _ in 0..40 {
        let a = get(&client, mesh.client.outbound, "web", "/")
            .await
            .unwrap();
        assert_eq!(a.status, 200);
    }
    // What the proxy says it counted (the mesh's own start-up requests included).
    let series = "pillion_requests_total{direction=\"outbound\",authority=\"web.default.svc.cluster.local:80\"";
    let (_, text) = admin_get(mesh.client.admin, "/metrics").await;
    let counted: f64 = text
        .lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(counted >= 40.0, "{text}");

    let (_prometheus, addr) = start_prometheus(mesh.client.admin);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let up = query(addr, "up{job=\"pillion\"}").await;
        let total = query(
            addr,
            "sum(pillion_requests_total{direction=\"outbound\",authority=\"web.default.svc.cluster.local:80\"})",
        )
        .await;
        if up == Some(1.0) && total == Some(counted) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus saw up={up:?} requests={total:?}, the proxy counted {counted}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
