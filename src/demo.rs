//! `pillion demo`: a whole mesh in this one process, on loopback ports the OS picks.
//!
//! A control plane reads `examples/demo` (copied into a work directory the user can edit), two
//! versions of a `web` service run behind their own proxies, and a client proxy carries a steady
//! loop of HTTP and gRPC requests. The live share per version is printed as it changes.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pillion_proto::demo::v1::HelloRequest;
use pillion_proto::demo::v1::echo_client::EchoClient;

use crate::demo_app;

const SERVICES: &str = include_str!("../examples/demo/services.yaml");
const SPLIT: &str = include_str!("../examples/demo/traffic-split.yaml");
/// Shares are computed over this many most recent answers.
const WINDOW: usize = 50;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Work directory for the demo's configuration (default: a new temporary directory).
    #[arg(long, env = "PILLION_DEMO_DIR")]
    pub dir: Option<PathBuf>,
    /// Stop after this long (for example `30s`); runs until Ctrl-C when absent.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Pause between requests.
    #[arg(long, default_value = "50ms", value_parser = positive_duration)]
    pub interval: Duration,
    /// Run the proxies without identities: plaintext between them.
    #[arg(long)]
    pub no_mtls: bool,
    /// Send every request's spans (100 % sampling) to this Zipkin collector
    /// (`http://localhost:9411/api/v2/spans`).
    #[arg(long, env = "PILLION_ZIPKIN_URL")]
    pub zipkin_url: Option<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    pillion_core::duration::parse(s)
}

/// A duration that must be more than zero (a zero interval would spin, or panic a timer).
fn positive_duration(s: &str) -> Result<Duration, String> {
    match pillion_core::duration::parse(s)? {
        d if d.is_zero() => Err(format!("`{s}` must be more than zero")),
        d => Ok(d),
    }
}

/// A proxy's environment, as the sidecar injector would set it, on loopback ports.
/// The demo's workload identities, and the bootstrap tokens that prove them.
const TOKENS: &str = "# Bootstrap tokens of `pillion demo`: <token> <namespace>/<service-account>\n\
    demo-web-token default/web\ndemo-client-token default/client\n";
const WEB_ID: &str = "spiffe://cluster.local/ns/default/sa/web";

/// mTLS settings of one demo proxy: its service account and token file.
struct Mtls<'a> {
    anchors: &'a Path,
    service_account: &'a str,
    token_file: PathBuf,
}

fn proxy_env(
    cp: SocketAddr,
    workload: &str,
    forward: Option<SocketAddr>,
    mtls: Option<Mtls<'_>>,
    zipkin: Option<&str>,
) -> HashMap<&'static str, String> {
    let mut env = HashMap::from([
        ("PILLION_CONTROL_PLANE_ADDR", cp.to_string()),
        ("PILLION_OUTBOUND_LISTEN", "127.0.0.1:0".to_string()),
        ("PILLION_INBOUND_LISTEN", "127.0.0.1:0".to_string()),
        ("PILLION_ADMIN_LISTEN", "127.0.0.1:0".to_string()),
        ("PILLION_WORKLOAD", workload.to_string()),
        ("PILLION_SHUTDOWN_GRACE", "2s".to_string()),
    ]);
    if let Some(f) = forward {
        env.insert("PILLION_INBOUND_FORWARD", f.to_string());
    }
    if let Some(url) = zipkin {
        env.insert("PILLION_ZIPKIN_URL", url.to_string());
        env.insert("PILLION_TRACE_SAMPLE_RATE", "1".to_string());
    }
    if let Some(m) = mtls {
        env.insert("PILLION_TRUST_ANCHORS", m.anchors.display().to_string());
        env.insert("PILLION_SERVICE_ACCOUNT", m.service_account.to_string());
        env.insert(
            "PILLION_IDENTITY_TOKEN_FILE",
            m.token_file.display().to_string(),
        );
    }
    env
}

async fn start_proxy(env: HashMap<&'static str, String>) -> anyhow::Result<pillion_proxy::Proxy> {
    let config = pillion_proxy::Config::from_env(&env)?;
    let (proxy, run) = pillion_proxy::Proxy::bind(config).await?;
    tokio::spawn(run);
    Ok(proxy)
}

/// One version's endpoint, as the demo (and the tests) describe it.
pub struct DemoEndpoint<'a> {
    pub version: &'a str,
    /// Where requests for this version go: its proxy's inbound port (plaintext), or the
    /// application itself when `meshed` says which proxy fronts it.
    pub addr: SocketAddr,
    /// `(identity, proxy port)`: a Pillion proxy fronts the endpoint (mTLS).
    pub meshed: Option<(&'a str, u16)>,
}

/// EndpointSlices for the versions, in the files-mode shape `docs/identity.md` describes.
pub fn endpoints_yaml(endpoints: &[DemoEndpoint<'_>]) -> String {
    slices_yaml(endpoints, false)
}

/// The EndpointSlices of each version's Service, and with `apex` also of `web` itself (whose
/// selector, `app: web`, covers the pods of both versions, as in Kubernetes): so that with no
/// TrafficSplit in force, `web` is still served, by both versions.
fn slices_yaml(endpoints: &[DemoEndpoint<'_>], apex: bool) -> String {
    let mut out = String::from(
        "# Written by `pillion demo`: where each version's pods (their proxies) listen.\n",
    );
    let services = endpoints
        .iter()
        .map(|e| {
            (
                format!("web-{}", e.version),
                format!("web-{}-demo", e.version),
                e,
            )
        })
        .chain(
            endpoints
                .iter()
                .filter(|_| apex)
                .map(|e| ("web".to_string(), format!("web-{}-pods", e.version), e)),
        )
        .collect::<Vec<_>>();
    for (service, name, e) in services {
        let annotations = match e.meshed {
            Some((identity, port)) => format!(
                "  annotations:\n    pillion.dev/identity: {identity}\n    pillion.dev/proxy-port: \"{port}\"\n"
            ),
            None => String::new(),
        };
        out.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {service}\n{annotations}addressType: IPv4\nports:\n- name: http\n  port: {port}\nendpoints:\n- addresses: [\"{ip}\"]\n  conditions: {{ready: true}}\n  targetRef: {{kind: Pod, name: web-{version}-0, namespace: default}}\n",
            version = e.version,
            port = e.addr.port(),
            ip = e.addr.ip(),
        ));
    }
    out
}

fn prepare_dir(dir: Option<PathBuf>) -> anyhow::Result<(PathBuf, bool)> {
    let (dir, temporary) = match dir {
        Some(d) => (d, false),
        None => (
            std::env::temp_dir().join(format!("pillion-demo-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, text) in [("services.yaml", SERVICES), ("traffic-split.yaml", SPLIT)] {
        let path = dir.join(name);
        if !path.exists() {
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok((dir, temporary))
}

/// The last answers of one kind, for the live share.
#[derive(Default)]
struct Tally {
    recent: VecDeque<String>,
    errors: u64,
    total: u64,
}

impl Tally {
    fn record(&mut self, result: Result<String, String>) {
        self.total += 1;
        let v = result.unwrap_or_else(|e| {
            self.errors += 1;
            format!("error: {e}")
        });
        self.recent.push_back(v);
        if self.recent.len() > WINDOW {
            self.recent.pop_front();
        }
    }

    fn line(&self) -> String {
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for v in &self.recent {
            match counts.iter_mut().find(|(k, _)| *k == v.as_str()) {
                Some((_, n)) => *n += 1,
                None => counts.push((v.as_str(), 1)),
            }
        }
        counts.sort();
        let n = self.recent.len().max(1);
        counts
            .iter()
            .map(|(k, c)| {
                let pct = c * 100 / n;
                format!("{k} {:<10} {pct:>3}%", "#".repeat(pct / 10))
            })
            .collect::<Vec<_>>()
            .join("  ")
    }
}

async fn http_call(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    outbound: SocketAddr,
) -> Result<String, String> {
    let req = http::Request::get(format!("http://{outbound}/"))
        .header(http::header::HOST, "web")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let version = resp
        .headers()
        .get("x-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    match version {
        Some(v) if status.is_success() => Ok(v),
        _ => Err(format!(
            "{status} {}",
            String::from_utf8_lossy(&body.to_bytes()).trim()
        )),
    }
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    // Ctrl-C, SIGTERM and SIGHUP (a closed terminal) all stop the demo the same way, so that
    // its temporary directory, CA keys included, is always removed. Installed first: a signal
    // that comes while the mesh starts waits for the loop below instead of killing the process.
    let mut stop = StopSignals::install()?;
    let (dir, temporary) = prepare_dir(args.dir)?;
    let mtls = !args.no_mtls;
    let mut cp_args = pillion_control_plane::Args::new(dir.clone(), "127.0.0.1:0".parse()?);
    // Identity state lives beside, not inside, the watched configuration directory.
    let state = dir.join(".pillion");
    if mtls {
        std::fs::create_dir_all(&state)?;
        std::fs::write(state.join("tokens"), TOKENS)?;
        for (sa, token) in [("web", "demo-web-token"), ("client", "demo-client-token")] {
            std::fs::write(state.join(format!("token-{sa}")), token)?;
        }
        cp_args.ca_dir = Some(state.join("ca"));
        cp_args.identity_tokens = Some(state.join("tokens"));
    }
    let anchors = state.join("ca").join("trust-anchors.pem");
    let identity = |sa: &'static str| {
        mtls.then(|| Mtls {
            anchors: &anchors,
            service_account: sa,
            token_file: state.join(format!("token-{sa}")),
        })
    };
    let (cp_stop_tx, cp_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (cp, serve) = pillion_control_plane::ControlPlane::bind(cp_args, async {
        let _ = cp_stop_rx.await;
    })
    .await?;
    tokio::spawn(serve);

    let mut endpoints = Vec::new();
    let mut proxies = Vec::new();
    for version in ["v1", "v2"] {
        let (app, _) = demo_app::spawn("127.0.0.1:0".parse()?, version).await?;
        let proxy = start_proxy(proxy_env(
            cp.addr,
            &format!("default/web-{version}"),
            Some(app),
            identity("web"),
            args.zipkin_url.as_deref(),
        ))
        .await?;
        endpoints.push(if mtls {
            DemoEndpoint {
                version,
                addr: app,
                meshed: Some((WEB_ID, proxy.inbound_addr.port())),
            }
        } else {
            DemoEndpoint {
                version,
                addr: proxy.inbound_addr,
                meshed: None,
            }
        });
        proxies.push(proxy);
    }
    let generation = cp.generation();
    std::fs::write(dir.join("endpoints.yaml"), slices_yaml(&endpoints, true))?;
    // Start the traffic once the control plane has read where the versions listen.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cp.generation() == generation && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client_proxy = start_proxy(proxy_env(
        cp.addr,
        "default/client",
        None,
        identity("client"),
        args.zipkin_url.as_deref(),
    ))
    .await?;
    let outbound = client_proxy.outbound_addr;

    println!(
        "Pillion demo: a control plane, three proxies and two versions of `web`, all on loopback."
    );
    println!("  control plane   {}", cp.addr);
    println!(
        "  client proxy    outbound {outbound}, admin http://{}/metrics",
        client_proxy.admin_addr
    );
    for (e, p) in endpoints.iter().zip(&proxies) {
        println!(
            "  web-{} proxy   inbound {}, admin http://{}/config",
            e.version, p.inbound_addr, p.admin_addr
        );
    }
    if let Some(url) = &args.zipkin_url {
        println!("  spans of every request go to {url}");
    }
    if mtls {
        println!(
            "  mTLS between proxies: the client is spiffe://cluster.local/ns/default/sa/client, \
             both versions are {WEB_ID}"
        );
    } else {
        println!("  plaintext between proxies (--no-mtls)");
    }
    println!();
    println!("To shift traffic, edit the weights in:");
    println!("  {}", dir.join("traffic-split.yaml").display());
    println!("Try it yourself:  curl -H 'Host: web' http://{outbound}/");
    println!("Ctrl-C stops everything.\n");

    let http = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{outbound}"))?
        .origin("http://web.default:80".parse()?)
        .connect_lazy();
    let mut grpc = EchoClient::new(channel);

    let mut http_tally = Tally::default();
    let mut grpc_tally = Tally::default();
    let started = Instant::now();
    let mut last_print = Instant::now();
    let mut ticker = tokio::time::interval(args.interval);
    loop {
        tokio::select! {
            _ = stop.recv() => break,
            _ = ticker.tick() => {}
        }
        if args.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        http_tally.record(http_call(&http, outbound).await);
        let reply = grpc
            .hello(HelloRequest {
                name: "demo".into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().version)
            .map_err(|s| format!("{:?} {}", s.code(), s.message()));
        grpc_tally.record(reply);
        if last_print.elapsed() >= Duration::from_secs(2) {
            last_print = Instant::now();
            println!(
                "[{:>4}s] HTTP  {}\n        gRPC  {}   (requests {}, errors {})",
                started.elapsed().as_secs(),
                http_tally.line(),
                grpc_tally.line(),
                http_tally.total + grpc_tally.total,
                http_tally.errors + grpc_tally.errors,
            );
        }
    }
    println!(
        "\nStopping: {} requests, {} errors.",
        http_tally.total + grpc_tally.total,
        http_tally.errors + grpc_tally.errors
    );
    client_proxy.shutdown();
    for p in &proxies {
        p.shutdown();
    }
    let _ = cp_stop_tx.send(());
    if temporary {
        remove_dir(&dir);
    }
    Ok(())
}

/// Ctrl-C, SIGTERM and SIGHUP, listened for from the moment they are installed.
struct StopSignals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
        }
    }
}

fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        eprintln!("could not remove {}: {e}", dir.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With no TrafficSplit (`traffic-split.yaml` deleted), `web` is served by both versions.
    #[test]
    fn web_has_endpoints_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("services.yaml"), SERVICES).unwrap();
        let endpoints = [
            DemoEndpoint {
                version: "v1",
                addr: "127.0.0.1:1001".parse().unwrap(),
                meshed: Some((WEB_ID, 2001)),
            },
            DemoEndpoint {
                version: "v2",
                addr: "127.0.0.1:1002".parse().unwrap(),
                meshed: Some((WEB_ID, 2002)),
            },
        ];
        std::fs::write(
            dir.path().join("endpoints.yaml"),
            slices_yaml(&endpoints, true),
        )
        .unwrap();
        let mut store = pillion_control_plane::source::files::Store::new(dir.path());
        store.scan().unwrap();
        assert!(store.errors().is_empty(), "{:?}", store.errors());
        let model = pillion_control_plane::model::Model::new(store.objects(), 1);
        let state = model.resolve("web", "default");
        let text = format!("{state:?}");
        assert!(
            text.contains("127.0.0.1:1001") && text.contains("127.0.0.1:1002"),
            "{text}"
        );
    }
}
