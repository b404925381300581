//! Control-plane scale: 1,000 simulated proxies (each its own connection, each watching 10
//! destinations) on a control plane holding 1,000 Services with 10 endpoints each (10,000
//! endpoints). One TrafficSplit every proxy watches changes weight, several times; for each
//! change it reports how long until every proxy had the new version, from the file write and
//! from the control plane's publish (the difference is the files source's settle time), and the
//! control plane's memory.
//!
//!     cargo build --release --locked --workspace --bins
//!     cargo bench -p pillion-control-plane --bench scale
//!     PROXIES=200 CHANGES=3 cargo bench -p pillion-control-plane --bench scale
//!
//! The control plane is the real binary (target/release), in its own process so its memory is
//! its own; the proxies are tonic clients in this one.

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use pillion_proto::discovery::v1::WatchRequest;
use pillion_proto::discovery::v1::discovery_client::DiscoveryClient;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn write_config(dir: &Path, services: usize, endpoints: usize) {
    let mut text = String::new();
    for s in 0..services {
        let addresses: Vec<String> = (0..endpoints)
            .map(|e| format!("\"10.{}.{}.{}\"", s / 250, s % 250, e + 1))
            .collect();
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc-{s}-1, labels: {{kubernetes.io/service-name: svc-{s}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [{}]}}]\n",
            addresses.join(", ")
        ));
    }
    text.push_str("---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{name: http, port: 80}]}\n");
    std::fs::write(dir.join("mesh.yaml"), text).expect("write config");
    write_split(dir, 50);
}

fn write_split(dir: &Path, v1: u32) {
    let text = format!(
        "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {{name: web}}\n\
         spec: {{service: web, backends: [{{service: svc-0, weight: {v1}}}, {{service: svc-1, weight: {}}}]}}\n",
        100 - v1
    );
    // Written whole and renamed, as an editor or a ConfigMap update does.
    let tmp = dir.join(".split.tmp");
    std::fs::write(&tmp, text).expect("write split");
    std::fs::rename(tmp, dir.join("split.yaml")).expect("rename split");
}

fn memory_mb(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

/// Kills the control plane however this bench ends (a panic included).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Per proxy, each version of `web` it received and when.
type Arrivals = Arc<Mutex<Vec<Vec<(String, SystemTime)>>>>;

/// When the control plane published each generation (from its JSON log), by generation.
type Published = Arc<Mutex<Vec<(u64, SystemTime)>>>;

fn main() {
    let proxies = knob("PROXIES", 1000);
    let services = knob("SERVICES", 1000);
    let endpoints = knob("ENDPOINTS_PER_SERVICE", 10);
    let watches = knob("WATCHES_PER_PROXY", 10).max(1);
    let changes = knob("CHANGES", 5);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let binary = root.join("target/release/pillion-control-plane");
    assert!(
        binary.exists(),
        "{} is missing: cargo build --release --locked --workspace --bins",
        binary.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), services, endpoints);

    let mut cp = KillOnDrop(
        Command::new(&binary)
            .args(["--config-dir", dir.path().to_str().unwrap_or_default()])
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .env("PILLION_LOG_FORMAT", "json")
            .env("PILLION_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the control plane"),
    );
    let pid = cp.0.id();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let published: Published = Arc::default();
    {
        let published = published.clone();
        let stderr = cp.0.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let fields = &v["fields"];
                if v["level"] == "ERROR" {
                    eprintln!("control plane: {line}");
                }
                if let Some(addr) = fields["addr"].as_str() {
                    let _ = addr_tx.send(addr.to_string());
                }
                if fields["message"] == "configuration change published"
                    && let (Some(g), Some(t)) =
                        (fields["generation"].as_u64(), v["timestamp"].as_str())
                    && let Ok(at) = humantime::parse_rfc3339_weak(t.trim_end_matches('Z'))
                {
                    published
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((g, at));
                }
            }
        });
    }
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the control plane's address");
    println!(
        "control plane at {addr}: {services} services x {endpoints} endpoints; RSS {:.1} MB",
        memory_mb(pid, "VmRSS")
    );

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // Each proxy: its own connection; `web` and watches-1 other services. The time each new
    // version of `web` arrived goes into its slot.
    let arrivals: Arrivals = Arc::new(Mutex::new(vec![Vec::new(); proxies]));
    let connect_started = Instant::now();
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for p in 0..proxies {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .expect("endpoint")
                .connect()
                .await
                .expect("connect");
            for w in 0..watches {
                let authority = if w == 0 {
                    "web".to_string()
                } else {
                    format!("svc-{}", (p * 7 + w * 13) % services)
                };
                let mut client = DiscoveryClient::new(channel.clone()).max_decoding_message_size(64 << 20);
                let arrivals = arrivals.clone();
                tasks.push(tokio::spawn(async move {
                    let req = WatchRequest {
                        authority,
                        source_namespace: "default".into(),
                        source_workload: format!("default/proxy-{p}"),
                    };
                    let Ok(resp) = client.watch(req).await else {
                        return;
                    };
                    let mut stream = resp.into_inner();
                    while let Ok(Some(update)) = stream.message().await {
                        if w == 0 {
                            arrivals.lock().unwrap_or_else(|e| e.into_inner())[p].push((update.version, SystemTime::now()));
                        }
                    }
                }));
            }
        }
        // Everyone has the first state of `web`.
        let deadline = Instant::now() + Duration::from_secs(120);
        while arrivals.lock().unwrap_or_else(|e| e.into_inner()).iter().any(Vec::is_empty) {
            assert!(Instant::now() < deadline, "not every proxy got its first state");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        println!(
            "{proxies} proxies x {watches} watches connected and served in {:.2} s; control plane RSS {:.1} MB",
            connect_started.elapsed().as_secs_f64(),
            memory_mb(pid, "VmRSS")
        );

        let mut all_from_write = Vec::new();
        let mut all_from_publish = Vec::new();
        for change in 0..changes {
            let before: Vec<usize> = arrivals.lock().unwrap_or_else(|e| e.into_inner()).iter().map(Vec::len).collect();
            let generations_before = published.lock().unwrap_or_else(|e| e.into_inner()).len();
            let written = SystemTime::now();
            write_split(dir.path(), if change % 2 == 0 { 90 } else { 10 });
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let done = arrivals
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .zip(&before)
                    .all(|(a, b)| a.len() > *b);
                if done {
                    break;
                }
                assert!(Instant::now() < deadline, "not every proxy got change {change}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let publish = published
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(generations_before)
                .map(|(_, at)| *at);
            let mut from_write: Vec<f64> = arrivals
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .zip(&before)
                .map(|(a, b)| a[*b].1.duration_since(written).unwrap_or_default().as_secs_f64() * 1e3)
                .collect();
            from_write.sort_by(f64::total_cmp);
            let from_publish: Vec<f64> = match publish {
                Some(p) => {
                    let mut v: Vec<f64> = arrivals
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .iter()
                        .zip(&before)
                        .map(|(a, b)| a[*b].1.duration_since(p).unwrap_or_default().as_secs_f64() * 1e3)
                        .collect();
                    v.sort_by(f64::total_cmp);
                    v
                }
                None => Vec::new(),
            };
            print!(
                "change {}: every proxy had it {:.1} ms after the write (p50 {:.1}, p99 {:.1})",
                change + 1,
                from_write[from_write.len() - 1],
                percentile(&from_write, 0.5),
                percentile(&from_write, 0.99)
            );
            if !from_publish.is_empty() {
                print!(
                    "; after the publish p50 {:.1} ms, p99 {:.1} ms",
                    percentile(&from_publish, 0.5),
                    percentile(&from_publish, 0.99)
                );
            }
            println!();
            all_from_write.extend(from_write);
            all_from_publish.extend(from_publish);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        all_from_write.sort_by(f64::total_cmp);
        all_from_publish.sort_by(f64::total_cmp);
        if !all_from_write.is_empty() {
            println!(
                "over {changes} changes x {proxies} proxies: from the write p50 {:.1} ms, p99 {:.1} ms; from the publish p50 {:.1} ms, p99 {:.1} ms",
                percentile(&all_from_write, 0.5),
                percentile(&all_from_write, 0.99),
                all_from_publish.get(all_from_publish.len() / 2).copied().unwrap_or(f64::NAN),
                if all_from_publish.is_empty() { f64::NAN } else { percentile(&all_from_publish, 0.99) },
            );
        }
        println!(
            "control plane RSS now {:.1} MB, peak {:.1} MB",
            memory_mb(pid, "VmRSS"),
            memory_mb(pid, "VmHWM")
        );
        for t in tasks {
            t.abort();
        }
    });
    drop(cp);
}
