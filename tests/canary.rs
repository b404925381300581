//! Progressive delivery end to end: a Canary in the configuration directory, the control
//! plane's controller measuring the candidate from the proxies' own reports, and the weights it
//! decides reaching a real client proxy under steady load.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use serde_json::Value;
use tokio::net::TcpListener;

/// A version of the web app: answers with its `x-version`, fails every request whose number
/// ends in 0, 1 or 2 (30 %) when `errors`, and waits `delay` before answering.
async fn app(version: &'static str, errors: bool, delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let count = count.clone();
            let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                let n = count.fetch_add(1, Ordering::Relaxed);
                async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
                    resp.headers_mut()
                        .insert("x-version", http::HeaderValue::from_static(version));
                    if errors && n % 10 < 3 {
                        *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    Ok::<_, Infallible>(resp)
                }
            });
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(tcp);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    addr
}

/// Steady traffic to `web` through the client proxy, recording (version, status) in order.
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(String, u16)>>>,
}

impl Load {
    fn start(proxy: SocketAddr, host: &'static str, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        for _ in 0..workers {
            let (stop, seen) = (stop.clone(), seen.clone());
            tokio::spawn(async move {
                let client = http1_client();
                while !stop.load(Ordering::Relaxed) {
                    let answer = match get(&client, proxy, host, "/").await {
                        Ok(a) => (a.version, a.status),
                        Err(e) => (e, 0),
                    };
                    seen.lock().unwrap().push(answer);
                }
            });
        }
        Load { stop, seen }
    }

    fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Answers from `from` on.
    fn since(&self, from: usize) -> Vec<(String, u16)> {
        self.seen.lock().unwrap()[from..].to_vec()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn canary_yaml(spec: &str) -> String {
    format!(
        "apiVersion: pillion.dev/v1alpha1\nkind: Canary\nmetadata:\n  name: web\n  namespace: default\nspec:\n  service: web\n  stable: web-v1\n  candidate: web-v2\n{spec}"
    )
}

/// A mesh whose `web` declares all traffic to v1, with the given v2 app.
async fn mesh(v2: SocketAddr) -> Mesh {
    let v1 = app("v1", false, Duration::ZERO).await;
    let mesh = Mesh::start_with_apps(100, 0, vec![v1, v2], &[]).await;
    mesh.wait_for_versions(&["v1"]).await;
    mesh
}

/// The release as the control plane shows it (`null` until it has read the file).
async fn canary(cp: SocketAddr) -> Value {
    let (status, body) = admin_get(cp, "/canaries/default/web").await;
    match status {
        200 => serde_json::from_str(&body).unwrap(),
        404 => Value::Null,
        _ => panic!("{status}: {body}"),
    }
}

/// Polls the release until `done` holds, and returns it.
async fn wait_canary(cp: SocketAddr, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let c = canary(cp).await;
        if !c.is_null() && done(&c) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not reached: {}",
            serde_json::to_string_pretty(&c).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn phase(c: &Value) -> &str {
    c["status"]["phase"].as_str().unwrap_or_default()
}

fn events(c: &Value) -> Vec<String> {
    c["status"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect()
}

/// Waits until `n` answers in a row came from `version`, and says how long that took.
async fn until_only(load: &Load, version: &str, n: usize) -> Duration {
    let started = Instant::now();
    let deadline = started + DEADLINE;
    loop {
        let all = load.since(0);
        if all.len() >= n && all[all.len() - n..].iter().all(|(v, _)| v == version) {
            return started.elapsed();
        }
        assert!(Instant::now() < deadline, "never only {version}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_candidate_is_promoted_step_by_step() {
    let v2 = app("v2", false, Duration::ZERO).await;
    let mesh = mesh(v2).await;
    let load = Load::start(mesh.client.outbound, "web", 4);
    write_config(
        &mesh.path("canary.yaml"),
        &canary_yaml(
            "  steps: [20, 50, 100]\n  interval: 1s\n  analysis:\n    successRate: 99\n    minRequests: 10\n",
        ),
    );
    let done = wait_canary(mesh.cp.admin, "promotion", |c| phase(c) == "Promoted").await;
    assert_eq!(done["status"]["weight"], 100);
    let events = events(&done);
    let steps: Vec<&String> = events
        .iter()
        .filter(|e| e.starts_with("check passed"))
        .collect();
    assert_eq!(
        steps,
        [
            "check passed: 50% of traffic",
            "check passed: 100% of traffic"
        ],
        "{events:?}"
    );
    assert!(events[0].contains("takes 20% of traffic"), "{events:?}");
    assert!(done["status"]["lastAnalysis"]["requests"].as_u64().unwrap() >= 10);
    until_only(&load, "v2", 50).await;
    let failed: Vec<_> = load
        .since(0)
        .into_iter()
        .filter(|(_, s)| *s != 200)
        .collect();
    assert!(failed.is_empty(), "{failed:?}");

    // The CLI shows it.
    let out = std::process::Command::new(bin("pillion"))
        .args(["canary", "status", "--admin", &mesh.cp.admin.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("default/web") && text.contains("Promoted") && text.contains("100%"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_candidate_is_rolled_back_with_its_error_budget() {
    let v2 = app("v2", true, Duration::ZERO).await;
    let mesh = mesh(v2).await;
    let load = Load::start(mesh.client.outbound, "web", 4);
    write_config(
        &mesh.path("canary.yaml"),
        &canary_yaml(
            "  steps: [20, 50, 100]\n  interval: 1s\n  analysis:\n    successRate: 95\n    minRequests: 20\n    failureLimit: 1\n",
        ),
    );
    let done = wait_canary(mesh.cp.admin, "rollback", |c| phase(c) != "Progressing").await;
    assert_eq!(phase(&done), "RolledBack", "{done:#}");
    let decided = Instant::now();
    assert_eq!(done["status"]["weight"], 0);
    let message = done["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("rolled back: success rate"),
        "{message}"
    );
    // It never got past the first step.
    assert!(!events(&done).iter().any(|e| e.contains("50%")), "{done:#}");
    let budget = &done["status"]["errorBudget"];
    let (requests, failures) = (
        budget["requests"].as_u64().unwrap(),
        budget["failures"].as_u64().unwrap(),
    );
    assert!(requests >= 20 && failures > 0, "{budget}");
    let share = failures as f64 / requests as f64;
    assert!((0.2..0.4).contains(&share), "{failures} of {requests}");
    // The client proxy runs the rollback: web-v2 at weight 0 in its /config.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, config) = admin_get(mesh.client.admin, "/config").await;
        let config: Value = serde_json::from_str(&config).unwrap();
        let rules = &config["destinations"]["web.default.svc.cluster.local:80"]["rules"];
        let v2_off = rules[0]["backends"].as_array().is_some_and(|b| {
            b.iter().any(|b| {
                b["service"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("web-v2."))
                    && b["weight"] == 0
            })
        });
        if v2_off {
            break;
        }
        assert!(Instant::now() < deadline, "{config:#}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "rolled back after {requests} candidate requests ({failures} failed); the client proxy ran it {:?} after the decision was seen",
        decided.elapsed()
    );
    until_only(&load, "v1", 50).await;
    // The control plane's metrics say so too.
    let (_, metrics) = admin_get(mesh.cp.admin, "/metrics").await;
    for line in [
        "pillion_control_plane_canary_phase{canary=\"default/web\",phase=\"RolledBack\"} 1",
        "pillion_control_plane_canary_phase{canary=\"default/web\",phase=\"Progressing\"} 0",
        "pillion_control_plane_canary_weight{canary=\"default/web\"} 0",
        "pillion_control_plane_canary_checks_total{canary=\"default/web\",result=\"failed\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in {metrics}"
        );
    }
    assert!(metric_sum(&metrics, "pillion_control_plane_reports_total", "") > 0.0);
    let from = load.len();
    until_only(&load, "v1", 100).await;
    assert!(load.since(from).iter().all(|(v, s)| v == "v1" && *s == 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_candidate_is_rolled_back_on_the_latency_rule() {
    let v2 = app("v2", false, Duration::from_millis(150)).await;
    let mesh = mesh(v2).await;
    let _load = Load::start(mesh.client.outbound, "web", 4);
    write_config(
        &mesh.path("canary.yaml"),
        &canary_yaml(
            "  steps: [50, 100]\n  interval: 1s\n  analysis:\n    maxP99Latency: 50ms\n    minRequests: 5\n    failureLimit: 1\n",
        ),
    );
    let done = wait_canary(mesh.cp.admin, "rollback", |c| phase(c) != "Progressing").await;
    assert_eq!(phase(&done), "RolledBack", "{done:#}");
    let message = done["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("p99 latency") && message.contains("above 50.0 ms"),
        "{message}"
    );
    assert!(done["status"]["lastAnalysis"]["p99Ms"].as_f64().unwrap() > 50.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_switches_and_switches_back_without_a_failed_request() {
    let v2 = app("v2", false, Duration::ZERO).await;
    let mesh = mesh(v2).await;
    let load = Load::start(mesh.client.outbound, "web", 4);
    // The candidate's own test traffic, which its checks judge while `web` stays on blue.
    let _tests = Load::start(mesh.client.outbound, "web-v2", 1);
    write_config(
        &mesh.path("canary.yaml"),
        &canary_yaml(
            "  strategy: blueGreen\n  checks: 2\n  interval: 1s\n  analysis:\n    minRequests: 5\n",
        ),
    );
    let done = wait_canary(mesh.cp.admin, "switch", |c| phase(c) == "Promoted").await;
    let before_switch = events(&done);
    assert!(
        before_switch.iter().any(|e| e == "check passed (1 of 2)"),
        "{before_switch:?}"
    );
    until_only(&load, "v2", 50).await;

    // Switch back with the CLI.
    let out = std::process::Command::new(bin("pillion"))
        .args([
            "canary",
            "abort",
            "web",
            "--admin",
            &mesh.cp.admin.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(phase(&canary(mesh.cp.admin).await), "RolledBack");
    until_only(&load, "v1", 50).await;
    let all = load.since(0);
    let failed: Vec<_> = all.iter().filter(|(_, s)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} failed of {}: {failed:?}",
        failed.len(),
        all.len()
    );
    assert!(all.iter().any(|(v, _)| v == "v2"));

    // A command that does not apply is refused, with exit status 1.
    let out = std::process::Command::new(bin("pillion"))
        .args([
            "canary",
            "abort",
            "default/web",
            "--admin",
            &mesh.cp.admin.to_string(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already rolled back"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ab_test_sends_matching_requests_to_the_candidate_then_everyone() {
    let v2 = app("v2", false, Duration::ZERO).await;
    let mesh = mesh(v2).await;
    write_config(
        &mesh.path("canary.yaml"),
        &canary_yaml(
            "  strategy: abTest\n  checks: 1000\n  interval: 1s\n  match:\n    cookies:\n    - name: group\n      value: beta\n",
        ),
    );
    wait_canary(mesh.cp.admin, "A/B", |c| c["status"]["abActive"] == true).await;
    let client = http1_client();
    let with_cookie = |cookie: &'static str| {
        let client = client.clone();
        let proxy = mesh.client.outbound;
        async move {
            let b = http::Request::builder().header("cookie", cookie);
            request(&client, proxy, b, "web", "/", Bytes::new())
                .await
                .unwrap()
                .version
        }
    };
    let deadline = Instant::now() + DEADLINE;
    while with_cookie("a=1; group=beta").await != "v2" {
        assert!(
            Instant::now() < deadline,
            "the A/B route never reached the proxy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..20 {
        assert_eq!(with_cookie("a=1; group=beta").await, "v2");
        assert_eq!(with_cookie("group=alpha").await, "v1");
        assert_eq!(
            get(&client, mesh.client.outbound, "web", "/")
                .await
                .unwrap()
                .version,
            "v1"
        );
    }
    // Promoted by hand: everyone.
    let (status, body) = admin_request(
        http::Method::POST,
        mesh.cp.admin,
        "/canaries/default/web/promote",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let load = Load::start(mesh.client.outbound, "web", 2);
    until_only(&load, "v2", 30).await;
}

/// A real Prometheus (Debian's `prometheus`, which `scripts/test.sh` installs) scraping the
/// client proxy every 500 ms, on a port picked free just before.
struct PrometheusServer {
    _proc: Process,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_prometheus(port: u16, target: SocketAddr) -> PrometheusServer {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 500ms\n  evaluation_interval: 500ms\nscrape_configs:\n- job_name: proxies\n  static_configs:\n  - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let proc = Process::spawn(
        "prometheus",
        std::path::Path::new("prometheus"),
        &[
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            &format!("--web.listen-address=127.0.0.1:{port}"),
            "--log.level=warn",
        ],
        &[],
    );
    // Ready, and the proxy scraped at least once.
    let client = http1_client();
    let deadline = Instant::now() + DEADLINE;
    let query = format!("http://127.0.0.1:{port}/api/v1/query?query=up");
    loop {
        let up = async {
            let resp = client
                .request(
                    http::Request::get(&query)
                        .body(Full::new(Bytes::new()))
                        .ok()?,
                )
                .await
                .ok()?;
            use http_body_util::BodyExt;
            let body = resp.into_body().collect().await.ok()?.to_bytes();
            let v: Value = serde_json::from_slice(&body).ok()?;
            (v["data"]["result"][0]["value"][1] == "1").then_some(())
        };
        if up.await.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped {target}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    PrometheusServer {
        _proc: proc,
        _dir: dir,
    }
}

/// With `PILLION_PROMETHEUS_URL` the checks ask a real Prometheus (PromQL over its HTTP API);
/// the proxies' own reports are off, so the figures can only come from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_can_ask_a_real_prometheus() {
    let port = free_port();
    let v1 = app("v1", false, Duration::ZERO).await;
    let v2 = app("v2", true, Duration::ZERO).await;
    let url = format!("http://127.0.0.1:{port}");
    let mesh = Mesh::start_with_cp_args(
        100,
        0,
        vec![v1, v2],
        &[("PILLION_REPORT_INTERVAL", "0".to_string())],
        &["--prometheus-url", &url],
    )
    .await;
    mesh.wait_for_versions(&["v1"]).await;
    let _prometheus = start_prometheus(port, mesh.client.admin).await;
    let _load = Load::start(mesh.client.outbound, "web", 4);
    write_config(
        &mesh.path("canary.yaml"),
        &canary_yaml(
            "  steps: [50, 100]\n  interval: 3s\n  analysis:\n    successRate: 95\n    minRequests: 20\n    failureLimit: 1\n",
        ),
    );
    let done = wait_canary(mesh.cp.admin, "rollback", |c| phase(c) != "Progressing").await;
    assert_eq!(phase(&done), "RolledBack", "{done:#}");
    let a = &done["status"]["lastAnalysis"];
    let rate = a["successRate"].as_f64().unwrap();
    assert!((55.0..85.0).contains(&rate), "{a}");
    assert!(a["requests"].as_u64().unwrap() >= 20, "{a}");
    assert!(
        a["p99Ms"].as_f64().is_some(),
        "histogram_quantile answered: {a}"
    );
}

/// Files mode with `--state-dir`: a restarted control plane resumes a release where it stood
/// (here promoted: 100 %) instead of starting it over at its first step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_mode_resumes_a_release_from_its_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    write_config(&dir.path().join("services.yaml"), SERVICES);
    // No traffic needed: with minRequests 0 each check passes.
    write_config(
        &dir.path().join("canary.yaml"),
        &canary_yaml("  steps: [30, 100]\n  interval: 200ms\n  analysis:\n    minRequests: 0\n"),
    );
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().display().to_string();
    let args = ["--state-dir", state_dir.as_str()];
    let mut cp = start_control_plane_with(dir.path(), "127.0.0.1:0", &args);
    let promoted = wait_canary(cp.admin, "promotion", |c| phase(c) == "Promoted").await;
    cp.proc.signal(nix::sys::signal::Signal::SIGTERM);
    cp.proc.wait_exit();

    let cp = start_control_plane_with(dir.path(), "127.0.0.1:0", &args);
    cp.proc.wait_log("resumed", |v| {
        message_is(v, "release resumed from its status")
    });
    let resumed = canary(cp.admin).await;
    assert_eq!(phase(&resumed), "Promoted", "{resumed:#}");
    assert_eq!(resumed["status"]["weight"], 100);
    assert_eq!(resumed["status"]["events"], promoted["status"]["events"]);
}
