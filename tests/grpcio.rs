//! gRPC through the mesh with a real third-party implementation on both ends: Python grpcio
//! servers behind the server proxies and a grpcio client through the client proxy.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;

struct PyServer {
    child: std::process::Child,
    port: u16,
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A grpcio server with these environment variables (see echo.py).
fn py_server(version: &str, env: &[(&str, &str)]) -> PyServer {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/echo.py");
    let mut child = Command::new(python())
        .args([script, "server", version])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the grpcio server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("grpcio server said {line:?}"));
    PyServer { child, port }
}

/// The mesh with a grpcio server behind each version's proxy (kept running while held).
async fn python_mesh() -> ([PyServer; 2], Mesh) {
    python_mesh_with(&[]).await
}

async fn python_mesh_with(env: &[(&str, &str)]) -> ([PyServer; 2], Mesh) {
    let servers = [py_server("v1", env), py_server("v2", env)];
    let apps = servers
        .iter()
        .map(|s| std::net::SocketAddr::from(([127, 0, 0, 1], s.port)))
        .collect();
    let mesh = Mesh::start_with_apps(1, 1, apps, &[]).await;
    (servers, mesh)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_client_and_servers_through_two_proxies() {
    let (_servers, mesh) = python_mesh().await;
    check_client_run(&mut echo_client("client", &mesh));
}

/// grpcio with the proxy as its `http_proxy`: it opens a CONNECT tunnel to `web:80` and speaks
/// HTTP/2 inside it, as grpc-js and grpc-go clients configured the same way do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_through_the_proxy_as_its_http_proxy() {
    let (_servers, mesh) = python_mesh().await;
    check_client_run(
        Command::new(python())
            .args([
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/echo.py"),
                "client",
                "web:80",
                "web:80",
            ])
            .env("http_proxy", format!("http://{}", mesh.client.outbound))
            .env_remove("no_proxy")
            .env_remove("NO_PROXY")
            .env_remove("no_grpc_proxy"),
    );
}

/// echo.py's client `mode` (`client`, `many`) through the client proxy to `web`.
fn echo_client(mode: &str, mesh: &Mesh) -> Command {
    let mut cmd = Command::new(python());
    cmd.args([
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/echo.py"),
        mode,
        &mesh.client.outbound.to_string(),
        "web.default.svc.cluster.local:80",
    ]);
    cmd
}

/// Runs a Python client; the JSON it printed.
fn client_json(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.output().expect("run the grpcio client");
    assert!(
        out.status.success(),
        "grpcio client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs the Python client and checks every call it made.
fn check_client_run(cmd: &mut Command) {
    let result = client_json(cmd);
    let versions: Vec<String> = result["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(count(&versions, "v1"), 10, "{versions:?}");
    assert_eq!(count(&versions, "v2"), 10, "{versions:?}");
    assert!(
        result["trailer"].as_str().unwrap().starts_with("grpcio-v"),
        "trailing metadata lost: {result}"
    );
    assert_eq!(result["status"], "NOT_FOUND");
    assert_eq!(result["message"], "python failed as asked by boom");
    assert_eq!(result["big"], 4 << 20);
    let stream: Vec<String> = (0..10).map(|i| format!("hello s{i}")).collect();
    assert_eq!(result["stream"], serde_json::json!(stream));
    assert_eq!(result["stream_versions"].as_array().unwrap().len(), 1);
    assert!(result["errors"].as_array().unwrap().is_empty(), "{result}");
}

/// Servers that close each connection after a maximum age (GOAWAY, then streams above its
/// last one unprocessed: Go, Java and grpcio servers do this to rebalance clients) lose no
/// call: the proxies send the unprocessed ones again, bodies and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_fails_when_servers_close_connections_at_their_maximum_age() {
    let (_servers, mesh) = python_mesh_with(&[("ECHO_MAX_AGE_MS", "100")]).await;
    let counts = client_json(echo_client("many", &mesh).arg("2000"));
    assert_eq!(counts, serde_json::json!({"OK": 2000}));
}

/// A GRPCRoute steering a grpcio client's calls by method: unary `Hello` to v1, the `Chat`
/// stream to v2 (both grpcio servers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_calls_follow_a_grpcroute_by_method() {
    let (_servers, mesh) = python_mesh().await;
    write_config(
        &mesh.path("route.yaml"),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: echo}\n\
         spec:\n  parentRefs: [{group: '', kind: Service, name: web}]\n  rules:\n\
         \x20 - matches: [{method: {service: pillion.demo.v1.Echo, method: Chat}}]\n\
         \x20   backendRefs: [{name: web-v2, port: 80}]\n\
         \x20 - matches: [{method: {service: pillion.demo.v1.Echo}}]\n\
         \x20   backendRefs: [{name: web-v1, port: 80}]\n",
    );
    // In force once plain HTTP, which no rule matches, gets 404.
    let h1 = http1_client();
    let deadline = std::time::Instant::now() + DEADLINE;
    while get(&h1, mesh.client.outbound, "web", "/")
        .await
        .unwrap()
        .status
        != 404
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the GRPCRoute never applied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let result = client_json(&mut echo_client("client", &mesh));
    let versions = result["versions"].as_array().unwrap();
    assert!(
        versions.len() == 20 && versions.iter().all(|v| v == "v1"),
        "{result}"
    );
    assert_eq!(
        result["stream_versions"],
        serde_json::json!(["v2"]),
        "{result}"
    );
    assert!(result["errors"].as_array().unwrap().is_empty(), "{result}");
}
