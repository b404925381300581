//! The demo's mesh, in this process on loopback ports the OS picks: a control plane on the
//! work directory, one proxy per "pod" (each version of each service, and the client), and the
//! demo application behind each server proxy.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::demo_app;

/// The demo's services: name, Service port name, protocol the client speaks.
pub const SERVICES: [(&str, &str, &str); 2] = [("web", "http", "http"), ("echo", "grpc", "grpc")];
pub const VERSIONS: [&str; 2] = ["v1", "v2"];

/// The demo's workload identities, and the bootstrap tokens that prove them.
const TOKENS: &str = "# Bootstrap tokens of `pillion demo`: <token> <namespace>/<service-account>\n\
    demo-web-token default/web\ndemo-echo-token default/echo\ndemo-client-token default/client\n";

pub fn identity_of(service_account: &str) -> String {
    format!("spiffe://cluster.local/ns/default/sa/{service_account}")
}

/// mTLS settings of one demo proxy: its service account and token file.
struct Mtls<'a> {
    anchors: &'a Path,
    service_account: &'a str,
    token_file: PathBuf,
}

/// A proxy's environment, as the sidecar injector would set it, on loopback ports.
fn proxy_env(
    cp: SocketAddr,
    workload: &str,
    forward: Option<SocketAddr>,
    mtls: Option<Mtls<'_>>,
    zipkin: &str,
) -> HashMap<&'static str, String> {
    let mut env = HashMap::from([
        ("PILLION_CONTROL_PLANE_ADDR", cp.to_string()),
        ("PILLION_OUTBOUND_LISTEN", "127.0.0.1:0".to_string()),
        ("PILLION_INBOUND_LISTEN", "127.0.0.1:0".to_string()),
        ("PILLION_ADMIN_LISTEN", "127.0.0.1:0".to_string()),
        ("PILLION_WORKLOAD", workload.to_string()),
        ("PILLION_SHUTDOWN_GRACE", "2s".to_string()),
        // Every request traced, to the demo's own collector.
        ("PILLION_ZIPKIN_URL", zipkin.to_string()),
        ("PILLION_TRACE_SAMPLE_RATE", "1".to_string()),
        // Frequent reports: the canary is judged on fresh figures.
        ("PILLION_REPORT_INTERVAL", "1s".to_string()),
    ]);
    if let Some(f) = forward {
        env.insert("PILLION_INBOUND_FORWARD", f.to_string());
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

/// EndpointSlices of `web`'s versions, in the files-mode shape `docs/identity.md` describes.
pub fn endpoints_yaml(endpoints: &[DemoEndpoint<'_>]) -> String {
    slices_yaml("web", "http", endpoints, false)
}

/// The EndpointSlices of each version's Service, and with `apex` also of the service itself
/// (whose selector covers the pods of both versions, as in Kubernetes): so that with no
/// TrafficSplit or Canary in force, the service is still served, by both versions.
pub fn slices_yaml(
    service: &str,
    port_name: &str,
    endpoints: &[DemoEndpoint<'_>],
    apex: bool,
) -> String {
    let mut out = String::new();
    let slices = endpoints
        .iter()
        .map(|e| {
            (
                format!("{service}-{}", e.version),
                format!("{service}-{}-demo", e.version),
                e,
            )
        })
        .chain(endpoints.iter().filter(|_| apex).map(|e| {
            (
                service.to_string(),
                format!("{service}-{}-pods", e.version),
                e,
            )
        }));
    for (owner, name, e) in slices {
        let annotations = match e.meshed {
            Some((identity, port)) => format!(
                "  annotations:\n    pillion.dev/identity: {identity}\n    pillion.dev/proxy-port: \"{port}\"\n"
            ),
            None => String::new(),
        };
        out.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {owner}\n{annotations}addressType: IPv4\nports:\n- name: {port_name}\n  port: {port}\nendpoints:\n- addresses: [\"{ip}\"]\n  conditions: {{ready: true}}\n  targetRef: {{kind: Pod, name: {service}-{version}-0, namespace: default}}\n",
            version = e.version,
            port = e.addr.port(),
            ip = e.addr.ip(),
        ));
    }
    out
}

/// The running mesh.
pub struct Mesh {
    pub cp_addr: SocketAddr,
    pub cp_admin: SocketAddr,
    pub client: pillion_proxy::Proxy,
    /// (service, version, proxy) of every server pod.
    pub servers: Vec<(&'static str, &'static str, pillion_proxy::Proxy)>,
    cp_stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Mesh {
    /// Starts everything on `dir` (the configuration directory the user edits); identity
    /// state goes to `dir/.pillion`, which the control plane does not read.
    pub async fn start(dir: &Path, mtls: bool, zipkin: &str) -> anyhow::Result<Mesh> {
        let mut cp_args =
            pillion_control_plane::Args::new(dir.to_path_buf(), "127.0.0.1:0".parse()?);
        let state = dir.join(".pillion");
        std::fs::create_dir_all(&state)?;
        // The canary controller keeps its releases here: a demo restarted on the same
        // directory resumes them.
        cp_args.state_dir = Some(state.join("state"));
        if mtls {
            std::fs::write(state.join("tokens"), TOKENS)?;
            for sa in ["web", "echo", "client"] {
                std::fs::write(
                    state.join(format!("token-{sa}")),
                    format!("demo-{sa}-token"),
                )?;
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
        let (cp_stop, cp_stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (cp, serve) = pillion_control_plane::ControlPlane::bind(cp_args, async {
            let _ = cp_stop_rx.await;
        })
        .await?;
        tokio::spawn(serve);

        let mut servers = Vec::new();
        let mut yaml = String::from(
            "# Written by `pillion demo`: where each version's pods (their proxies) listen.\n",
        );
        for (service, port_name, _) in SERVICES {
            let id = identity_of(service);
            let mut endpoints = Vec::new();
            for version in VERSIONS {
                let (app, _) = demo_app::spawn("127.0.0.1:0".parse()?, version).await?;
                let proxy = start_proxy(proxy_env(
                    cp.addr,
                    &format!("default/{service}-{version}"),
                    Some(app),
                    identity(service),
                    zipkin,
                ))
                .await?;
                endpoints.push(if mtls {
                    DemoEndpoint {
                        version,
                        addr: app,
                        meshed: Some((id.as_str(), proxy.inbound_addr.port())),
                    }
                } else {
                    DemoEndpoint {
                        version,
                        addr: proxy.inbound_addr,
                        meshed: None,
                    }
                });
                servers.push((service, version, proxy));
            }
            yaml.push_str(&slices_yaml(service, port_name, &endpoints, true));
        }
        let generation = cp.generation();
        std::fs::write(dir.join("endpoints.yaml"), yaml)?;
        // Start the client once the control plane has read where the versions listen.
        let deadline = Instant::now() + Duration::from_secs(10);
        while cp.generation() == generation && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let client = start_proxy(proxy_env(
            cp.addr,
            "default/client",
            None,
            identity("client"),
            zipkin,
        ))
        .await?;
        Ok(Mesh {
            cp_addr: cp.addr,
            cp_admin: cp.admin_addr,
            client,
            servers,
            cp_stop: Some(cp_stop),
        })
    }

    /// Stops every proxy (each drains its connections) and the control plane.
    pub fn shutdown(&mut self) {
        self.client.shutdown();
        for (_, _, p) in &self.servers {
            p.shutdown();
        }
        if let Some(stop) = self.cp_stop.take() {
            let _ = stop.send(());
        }
    }
}
