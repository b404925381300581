//! End-to-end harness: the real `pillion-control-plane` and `pillion-proxy` binaries as child
//! processes, the demo application in-process as the server app, all on loopback ports the OS
//! picks. Addresses are read from the processes' JSON logs; every wait polls a condition with a
//! generous deadline.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub const DEADLINE: Duration = Duration::from_secs(60);

/// Where cargo put the workspace's binaries (next to this package's `pillion`).
pub fn bin(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_pillion"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    // `cargo test` builds the binaries of packages with integration tests only. scripts/test.sh
    // builds every binary before the tests start, with this same command, so that here it
    // finds nothing to do; run alone (`cargo test --test x`) it brings them up to date. The
    // same flags both times matter: another feature set would rebuild the dependencies.
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--workspace", "--bins", "--locked", "--quiet"]);
        if cfg!(not(debug_assertions)) {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo build");
        assert!(status.success(), "cannot build the workspace's binaries");
    });
    dir.join(name)
}

pub struct Process {
    pub name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Process {
    pub fn spawn(name: &str, bin: &Path, args: &[&str], env: &[(&str, String)]) -> Process {
        Self::spawn_in(None, name, bin, args, env)
    }

    /// Spawns `bin`, inside network namespace `ns` when given. Its stdout and stderr lines
    /// are collected.
    pub fn spawn_in(
        ns: Option<&Netns>,
        name: &str,
        bin: &Path,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Process {
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.0]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(args)
            .env("PILLION_LOG_FORMAT", "json")
            .env("PILLION_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        collect(name, stdout, lines.clone());
        collect(name, stderr, lines.clone());
        Process {
            name: name.to_string(),
            child,
            lines,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a plain-text line containing `text`; returns it.
    pub fn wait_text(&self, text: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| l.contains(text)) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{}: no line with {text:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The first JSON log line for which `pred` holds, waiting for it.
    pub fn wait_log(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(v) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| pred(v))
            {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no log line {what} in time; log:\n{}",
                self.name,
                self.lines.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig).expect("kill");
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "{} did not exit", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn collect(label: &str, from: impl std::io::Read + Send + 'static, sink: Arc<Mutex<Vec<String>>>) {
    let label = label.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if std::env::var_os("PILLION_TEST_LOGS").is_some() {
                eprintln!("[{label}] {line}");
            }
            sink.lock().unwrap().push(line);
        }
    });
}

/// A network namespace of the test's own, with loopback up; deleted on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("pillion-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        run("ip", &["netns", "add", &name]);
        let ns = Netns(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace and asserts it succeeded; returns its stdout.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.0];
        full.extend_from_slice(args);
        run("ip", &full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} {args:?}: {e} (scripts/test.sh installs iproute2 and iptables)")
        });
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field(v: &Value, name: &str) -> Option<String> {
    v["fields"][name].as_str().map(str::to_string)
}

pub fn message_is(v: &Value, m: &str) -> bool {
    v["fields"]["message"].as_str() == Some(m)
}

pub struct ControlPlaneProc {
    pub proc: Process,
    pub addr: SocketAddr,
    /// `/metrics`, `/live`, `/ready`.
    pub admin: SocketAddr,
}

pub fn start_control_plane(dir: &Path, listen: &str) -> ControlPlaneProc {
    start_control_plane_in(None, dir, listen, &[])
}

pub fn start_control_plane_with(dir: &Path, listen: &str, extra: &[&str]) -> ControlPlaneProc {
    start_control_plane_in(None, dir, listen, extra)
}

/// The bootstrap tokens of the mTLS mesh.
pub const TOKENS: &str =
    "# token namespace/service-account\ntoken-web default/web\ntoken-client default/client\n";
pub const CP_ID: &str = "spiffe://cluster.local/ns/pillion/sa/control-plane";

/// How `Mesh::start_full` sets up identities.
pub struct MtlsOpts<'a> {
    pub lifetime: &'a str,
    pub server_env: &'a [(&'a str, String)],
    pub cp_tls: bool,
}

pub const WEB_ID: &str = "spiffe://cluster.local/ns/default/sa/web";
pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";

pub fn start_control_plane_in(
    ns: Option<&Netns>,
    dir: &Path,
    listen: &str,
    extra: &[&str],
) -> ControlPlaneProc {
    // The admin port on the same host, on a port the OS picks.
    let admin = listen
        .parse::<SocketAddr>()
        .map(|a| SocketAddr::new(a.ip(), 0).to_string())
        .unwrap_or_else(|_| "127.0.0.1:0".to_string());
    let mut args = vec![
        "--config-dir",
        dir.to_str().unwrap(),
        "--listen",
        listen,
        "--admin-listen",
        &admin,
    ];
    args.extend_from_slice(extra);
    let proc = Process::spawn_in(
        ns,
        "control-plane",
        &bin("pillion-control-plane"),
        &args,
        &[],
    );
    let line = proc.wait_log("`control plane listening`", |v| {
        message_is(v, "control plane listening")
    });
    let addr = field(&line, "addr").unwrap().parse().unwrap();
    let admin = field(&line, "admin_addr").unwrap().parse().unwrap();
    ControlPlaneProc { proc, addr, admin }
}

pub struct ProxyProc {
    pub proc: Process,
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
}

pub fn start_proxy(
    name: &str,
    cp: SocketAddr,
    workload: &str,
    forward: Option<SocketAddr>,
    extra: &[(&str, String)],
) -> ProxyProc {
    start_proxy_in(None, None, name, cp, workload, forward, extra)
}

/// The proxy's user in transparent-mode tests: iptables skips its own connections by uid, as
/// `pillion-init` will, so that what the proxy sends is not redirected back to it.
pub const PROXY_UID: u32 = 2102;

pub fn start_proxy_in(
    ns: Option<&Netns>,
    run_as: Option<u32>,
    name: &str,
    cp: SocketAddr,
    workload: &str,
    forward: Option<SocketAddr>,
    extra: &[(&str, String)],
) -> ProxyProc {
    let mut env = vec![
        ("PILLION_CONTROL_PLANE_ADDR", cp.to_string()),
        ("PILLION_OUTBOUND_LISTEN", "127.0.0.1:0".to_string()),
        ("PILLION_INBOUND_LISTEN", "127.0.0.1:0".to_string()),
        ("PILLION_ADMIN_LISTEN", "127.0.0.1:0".to_string()),
        ("PILLION_WORKLOAD", workload.to_string()),
    ];
    if let Some(f) = forward {
        env.push(("PILLION_INBOUND_FORWARD", f.to_string()));
    }
    env.extend(extra.iter().cloned());
    let proxy = bin("pillion-proxy");
    let proc = match run_as {
        Some(uid) => {
            let (u, g) = (format!("--reuid={uid}"), format!("--regid={uid}"));
            let args = [
                u.as_str(),
                g.as_str(),
                "--clear-groups",
                proxy.to_str().unwrap(),
            ];
            Process::spawn_in(ns, name, Path::new("setpriv"), &args, &env)
        }
        None => Process::spawn_in(ns, name, &proxy, &[], &env),
    };
    let line = proc.wait_log("`proxy listening`", |v| message_is(v, "proxy listening"));
    let get = |k: &str| field(&line, k).unwrap().parse().unwrap();
    ProxyProc {
        outbound: get("outbound_addr"),
        inbound: get("inbound_addr"),
        admin: get("admin_addr"),
        proc,
    }
}

pub const SERVICES: &str = include_str!("../../examples/demo/services.yaml");

pub fn split_yaml(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata:\n  name: web-canary\n  namespace: default\nspec:\n  service: web\n  backends:\n  - service: web-v1\n    weight: {v1}\n  - service: web-v2\n    weight: {v2}\n"
    )
}

/// Writes a file so that a poller surely sees a new version (a new mtime, even within the
/// file system's timestamp granularity).
pub fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
    let f = std::fs::File::options().write(true).open(path).unwrap();
    let now = std::time::SystemTime::now() + Duration::from_millis(1);
    f.set_modified(now).unwrap();
}

/// A two-version mesh: `web` split over `web-v1` and `web-v2`, each version an in-process demo
/// app behind its own proxy process, and a client proxy process.
pub struct Mesh {
    pub dir: tempfile::TempDir,
    pub cp: ControlPlaneProc,
    pub server_proxies: Vec<ProxyProc>,
    pub client: ProxyProc,
    pub apps: Vec<SocketAddr>,
}

/// The demo app's two versions, `v1` and `v2`, in-process on loopback.
pub async fn demo_apps() -> Vec<SocketAddr> {
    let mut apps = Vec::new();
    for version in ["v1", "v2"] {
        let (app, _) = pillion::demo_app::spawn("127.0.0.1:0".parse().unwrap(), version)
            .await
            .unwrap();
        apps.push(app);
    }
    apps
}

impl Mesh {
    pub async fn start(v1: u32, v2: u32) -> Mesh {
        Self::start_with(v1, v2, &[]).await
    }

    pub async fn start_with(v1: u32, v2: u32, client_env: &[(&str, String)]) -> Mesh {
        Self::start_with_apps(v1, v2, demo_apps().await, client_env)
            .await
            .started()
            .await
    }

    /// The same mesh with the two versions' applications already listening at `apps`.
    pub async fn start_with_apps(
        v1: u32,
        v2: u32,
        apps: Vec<SocketAddr>,
        client_env: &[(&str, String)],
    ) -> Mesh {
        Self::start_full(v1, v2, apps, client_env, None).await
    }

    /// The mesh with mTLS: the control plane runs a CA (leaves living `leaf_lifetime`), every
    /// proxy gets an identity (`default/web` for the servers, `default/client` for the client)
    /// and the endpoints say they are meshed.
    pub async fn start_mtls(leaf_lifetime: &str, client_env: &[(&str, String)]) -> Mesh {
        Self::start_mtls_with(leaf_lifetime, client_env, &[]).await
    }

    /// `start_mtls` with extra environment for the two server proxies.
    pub async fn start_mtls_with(
        leaf_lifetime: &str,
        client_env: &[(&str, String)],
        server_env: &[(&str, String)],
    ) -> Mesh {
        Self::start_mtls_opts(leaf_lifetime, client_env, server_env, false).await
    }

    /// `start_mtls_with`, and with `cp_tls` the control plane serves TLS as `CP_ID` and every
    /// proxy verifies it.
    pub async fn start_mtls_opts(
        leaf_lifetime: &str,
        client_env: &[(&str, String)],
        server_env: &[(&str, String)],
        cp_tls: bool,
    ) -> Mesh {
        let apps = demo_apps().await;
        let mtls = MtlsOpts {
            lifetime: leaf_lifetime,
            server_env,
            cp_tls,
        };
        Self::start_full(1, 1, apps, client_env, Some(mtls))
            .await
            .started()
            .await
    }

    /// The mTLS mesh with the two versions' applications already listening at `apps`, each
    /// with an optional `appProtocol` on its EndpointSlice port (`kubernetes.io/h2c`, `http`).
    pub async fn start_mtls_apps(apps: Vec<SocketAddr>, hints: [Option<&str>; 2]) -> Mesh {
        Self::start_mtls_apps_env(apps, hints, &[], &[]).await
    }

    /// `start_mtls_apps` with extra environment for the client and the server proxies.
    pub async fn start_mtls_apps_env(
        apps: Vec<SocketAddr>,
        hints: [Option<&str>; 2],
        client_env: &[(&str, String)],
        server_env: &[(&str, String)],
    ) -> Mesh {
        let mtls = MtlsOpts {
            lifetime: "24h",
            server_env,
            cp_tls: false,
        };
        Self::start_hinted(1, 1, apps, client_env, Some(mtls), hints, &[])
            .await
            .started()
            .await
    }

    async fn start_full(
        v1: u32,
        v2: u32,
        apps: Vec<SocketAddr>,
        client_env: &[(&str, String)],
        mtls: Option<MtlsOpts<'_>>,
    ) -> Mesh {
        Self::start_hinted(v1, v2, apps, client_env, mtls, [None, None], &[]).await
    }

    /// The plain mesh with more control-plane flags (`--prometheus-url ...`).
    pub async fn start_with_cp_args(
        v1: u32,
        v2: u32,
        apps: Vec<SocketAddr>,
        client_env: &[(&str, String)],
        cp_args: &[&str],
    ) -> Mesh {
        Self::start_hinted(v1, v2, apps, client_env, None, [None, None], cp_args).await
    }

    async fn start_hinted(
        v1: u32,
        v2: u32,
        apps: Vec<SocketAddr>,
        client_env: &[(&str, String)],
        mtls: Option<MtlsOpts<'_>>,
        hints: [Option<&str>; 2],
        cp_args: &[&str],
    ) -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        write_config(&dir.path().join("services.yaml"), SERVICES);
        write_config(&dir.path().join("split.yaml"), &split_yaml(v1, v2));
        let cp = match &mtls {
            None => start_control_plane_with(dir.path(), "127.0.0.1:0", cp_args),
            Some(m) => {
                std::fs::write(dir.path().join("tokens"), TOKENS).unwrap();
                let ca = dir.path().join("ca").display().to_string();
                let tokens = dir.path().join("tokens").display().to_string();
                let mut args = vec![
                    "--ca-dir",
                    &ca,
                    "--identity-tokens",
                    &tokens,
                    "--leaf-lifetime",
                    m.lifetime,
                ];
                if m.cp_tls {
                    args.extend(["--tls-identity", CP_ID]);
                }
                start_control_plane_with(dir.path(), "127.0.0.1:0", &args)
            }
        };
        let identity_env = |sa: &str, token: &str| -> Vec<(&'static str, String)> {
            if mtls.is_none() {
                return vec![];
            }
            let token_file = dir.path().join(format!("token-{sa}"));
            std::fs::write(&token_file, token).unwrap();
            let cp_identity = mtls
                .as_ref()
                .filter(|m| m.cp_tls)
                .map(|_| ("PILLION_CONTROL_PLANE_IDENTITY", CP_ID.to_string()));
            cp_identity
                .into_iter()
                .chain(identity_env(dir.path(), sa, &token_file))
                .collect()
        };
        let mut server_proxies = Vec::new();
        let mut endpoints = Vec::new();
        for (version, app) in ["v1", "v2"].into_iter().zip(&apps) {
            let mut env = identity_env("web", "token-web");
            if let Some(m) = &mtls {
                env.extend(m.server_env.iter().cloned());
            }
            let p = start_proxy(
                &format!("proxy-{version}"),
                cp.addr,
                &format!("default/web-{version}"),
                Some(*app),
                &env,
            );
            endpoints.push(match mtls {
                None => pillion::demo::DemoEndpoint {
                    version,
                    addr: p.inbound,
                    meshed: None,
                },
                Some(_) => pillion::demo::DemoEndpoint {
                    version,
                    addr: *app,
                    meshed: Some((WEB_ID, p.inbound.port())),
                },
            });
            server_proxies.push(p);
        }
        let mut yaml = String::new();
        for (e, hint) in endpoints.iter().zip(hints) {
            let one = pillion::demo::endpoints_yaml(std::slice::from_ref(e));
            yaml.push_str(&match hint {
                Some(h) => one.replace(
                    "- name: http\n",
                    &format!("- name: http\n  appProtocol: {h}\n"),
                ),
                None => one,
            });
        }
        write_config(&dir.path().join("endpoints.yaml"), &yaml);
        // The control plane has published the endpoints before any client asks.
        cp.proc.wait_log("endpoints published", |v| {
            message_is(v, "configuration change published")
                && v["fields"]["files"]
                    .as_str()
                    .is_some_and(|f| f.contains("endpoints.yaml"))
        });
        let mut env = identity_env("client", "token-client");
        env.extend(client_env.iter().cloned());
        let client = start_proxy("proxy-client", cp.addr, "default/client", None, &env);
        Mesh {
            dir,
            cp,
            server_proxies,
            client,
            apps,
        }
    }

    /// `start_with_apps`, then wait until both demo-app versions answer through the client proxy.
    async fn started(self) -> Mesh {
        self.wait_for_versions(&["v1", "v2"]).await;
        self
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Sends requests until every version in `want` has answered.
    pub async fn wait_for_versions(&self, want: &[&str]) {
        let client = http1_client();
        let deadline = Instant::now() + DEADLINE;
        let mut seen: Vec<String> = Vec::new();
        let mut last = None;
        while !want.iter().all(|w| seen.iter().any(|s| s == w)) {
            assert!(
                Instant::now() < deadline,
                "versions {want:?} not reached; saw {seen:?}, last failure {last:?}"
            );
            match get(&client, self.client.outbound, "web", "/").await {
                Ok(r) if r.status == 200 => seen.push(r.version),
                other => {
                    last = Some(other.map(|a| (a.status, a.error)));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

pub type H1Client = Client<HttpConnector, Full<Bytes>>;

pub fn http1_client() -> H1Client {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2c_client() -> H1Client {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub struct Answer {
    pub status: u16,
    pub version: String,
    pub error: Option<String>,
    pub body: Bytes,
    pub headers: http::HeaderMap,
}

pub async fn request(
    client: &H1Client,
    proxy: SocketAddr,
    req: http::request::Builder,
    host: &str,
    path: &str,
    body: Bytes,
) -> Result<Answer, String> {
    let req = req
        .uri(format!("http://{proxy}{path}"))
        .header(http::header::HOST, host)
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    let header = |n: &str| {
        parts
            .headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    Ok(Answer {
        status: parts.status.as_u16(),
        version: header("x-version").unwrap_or_default(),
        error: header("pillion-proxy-error"),
        body,
        headers: parts.headers,
    })
}

pub async fn get(
    client: &H1Client,
    proxy: SocketAddr,
    host: &str,
    path: &str,
) -> Result<Answer, String> {
    request(
        client,
        proxy,
        http::Request::builder(),
        host,
        path,
        Bytes::new(),
    )
    .await
}

/// POSTs `len` bytes (a pattern that is not a multiple of a power of two) to the demo app's
/// `/echo` through `proxy` and asserts they come back intact, streamed as hyper sends them.
pub async fn assert_echoed(client: &H1Client, proxy: SocketAddr, host: &str, len: usize) {
    let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let a = request(
        client,
        proxy,
        http::Request::builder().method("POST"),
        host,
        "/echo",
        Bytes::from(payload.clone()),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200, "{:?}", a.error);
    assert_eq!(a.body.len(), payload.len());
    assert!(a.body == payload, "the body came back changed");
}

/// A plain HTTP/1.1 GET to an admin port.
pub async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    admin_request(http::Method::GET, admin, path).await
}

/// A plain HTTP/1.1 request without a body to an admin port.
pub async fn admin_request(method: http::Method, admin: SocketAddr, path: &str) -> (u16, String) {
    let client = http1_client();
    let resp = client
        .request(
            http::Request::builder()
                .method(method)
                .uri(format!("http://{admin}{path}"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The sum of every series in a metrics text that starts with `prefix` (a family name, or a
/// family and the start of its labels) and contains `labels`.
pub fn metric_sum(text: &str, prefix: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Counts answers by version.
pub fn count(answers: &[String], version: &str) -> usize {
    answers.iter().filter(|v| *v == version).count()
}

/// The Python with grpcio that `scripts/test.sh` installs (`PILLION_TEST_PYTHON` overrides).
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("PILLION_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run scripts/test.sh, which installs grpcio into .venv",
        venv.display()
    );
    venv
}

// mTLS helpers: certificates made by the test itself, and TLS clients that present them.

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::time::SystemTime;

pub const WEB_DNS: &str = "web.default.serviceaccount.identity.pillion.cluster.local";

pub fn ca_file(mesh: &Mesh, name: &str) -> String {
    std::fs::read_to_string(mesh.dir.path().join("ca").join(name)).unwrap()
}

/// A leaf for `spiffe_id` signed by `issuer`, valid from `from` to `until`.
pub fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    spiffe_id: &str,
    dns: &str,
    from: SystemTime,
    until: SystemTime,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = vec![
        SanType::URI(spiffe_id.try_into().unwrap()),
        SanType::DnsName(dns.try_into().unwrap()),
    ];
    p.not_before = from.into();
    p.not_after = until.into();
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let cert = p.signed_by(&key, issuer).unwrap();
    (
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

pub fn mesh_issuer(mesh: &Mesh) -> (Issuer<'static, KeyPair>, CertificateDer<'static>) {
    let cert_pem = ca_file(mesh, "issuer.crt");
    let key = KeyPair::from_pem(&ca_file(mesh, "issuer.key")).unwrap();
    let der = {
        use rustls_pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()
    };
    (Issuer::from_ca_cert_pem(&cert_pem, key).unwrap(), der)
}

pub fn foreign_issuer() -> Issuer<'static, KeyPair> {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Issuer::new(p, key)
}

pub fn client_config(
    anchors_pem: &str,
    cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for c in CertificateDer::pem_slice_iter(anchors_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match cert {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// The environment of a proxy with identity `sa`, trusting the CA in `dir/ca`, proving itself
/// with the token in `token_file`.
pub fn identity_env(dir: &Path, sa: &str, token_file: &Path) -> Vec<(&'static str, String)> {
    vec![
        (
            "PILLION_TRUST_ANCHORS",
            dir.join("ca/trust-anchors.pem").display().to_string(),
        ),
        (
            "PILLION_IDENTITY_TOKEN_FILE",
            token_file.display().to_string(),
        ),
        ("PILLION_SERVICE_ACCOUNT", sa.to_string()),
    ]
}

/// A certificate for `spiffe_id` from the mesh's own CA, valid for the next hour, with its chain.
pub fn valid_client_cert(
    mesh: &Mesh,
    spiffe_id: &str,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let (issuer, issuer_der) = mesh_issuer(mesh);
    let now = SystemTime::now();
    let (mut chain, key) = leaf(
        &issuer,
        spiffe_id,
        "client.default.x",
        now - Duration::from_secs(60),
        now + Duration::from_secs(3600),
    );
    chain.push(issuer_der);
    (chain, key)
}

/// A tonic Echo client through the mesh's client proxy, to `web`.
pub async fn grpc_client(
    mesh: &Mesh,
) -> pillion_proto::demo::v1::echo_client::EchoClient<tonic::transport::Channel> {
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", mesh.client.outbound))
            .unwrap()
            .origin("http://web.default.svc.cluster.local:80".parse().unwrap())
            .connect()
            .await
            .unwrap();
    pillion_proto::demo::v1::echo_client::EchoClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// Runs `cmd` with `input` on its standard input; its output (stdout and stderr captured).
pub fn with_stdin(cmd: &mut Command, input: &str) -> std::process::Output {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

/// `kubernetes-validate --strict` (installed in .venv by scripts/test.sh) on a YAML stream for
/// Kubernetes `version`; asserts that every document passed and returns the report.
pub fn kubernetes_validate(yaml: &str, version: &str) -> String {
    let tool = python().parent().unwrap().join("kubernetes-validate");
    let out = with_stdin(
        Command::new(tool).args(["--strict", "-k", version, "-"]),
        yaml,
    );
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "kubernetes-validate refused:\n{report}\n{yaml}"
    );
    report
}

/// The documents of a YAML stream as JSON, read by PyYAML (a parser the product does not use).
pub fn yaml_documents(yaml: &str) -> Vec<Value> {
    let script = "import sys, json, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))";
    let out = with_stdin(Command::new(python()).args(["-c", script]), yaml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The port a demo app printed it listens on (`… listening on ADDR:PORT`).
pub fn printed_port(p: &Process) -> u16 {
    let line = p.wait_text("listening on");
    line.rsplit(':').next().unwrap().trim().parse().unwrap()
}

/// A test directory for an mTLS mesh: the bootstrap tokens file (`TOKENS`), each account's
/// token file (`token-web`, `token-client`), and an empty `config/` directory, returned.
pub fn mtls_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokens"), TOKENS).unwrap();
    for (sa, token) in [("web", "token-web"), ("client", "token-client")] {
        std::fs::write(dir.path().join(format!("token-{sa}")), token).unwrap();
    }
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    (dir, config)
}
