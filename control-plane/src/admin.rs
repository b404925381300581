//! The control plane's admin port: `/metrics` (Prometheus text 0.0.4), `/live`, `/ready`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum WatchKind {
    discovery,
    policy,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: WatchKind,
}

type PushHistogram = Family<KindLabel, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CanaryLabel {
    /// `namespace/name` of the Canary.
    pub canary: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CanaryPhaseLabels {
    pub canary: String,
    pub phase: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CanaryCheckLabels {
    pub canary: String,
    /// `passed`, `failed` or `waiting` (too few requests to judge).
    pub result: String,
}

pub struct Metrics {
    registry: Registry,
    pub proxies: Gauge<i64, AtomicI64>,
    pub watches: Family<KindLabel, Gauge<i64, AtomicI64>>,
    pub pushes: Family<KindLabel, Counter>,
    pub push_latency: PushHistogram,
    pub config_errors: Gauge<i64, AtomicI64>,
    pub config_generation: Gauge<i64, AtomicI64>,
    pub certificates_issued: Counter,
    pub reports: Counter,
    pub canary_weight: Family<CanaryLabel, Gauge<i64, AtomicI64>>,
    pub canary_phase: Family<CanaryPhaseLabels, Gauge<i64, AtomicI64>>,
    pub canary_checks: Family<CanaryCheckLabels, Counter>,
    /// Open watches by the address of the connection they came on.
    connections: Mutex<HashMap<SocketAddr, usize>>,
}

fn push_histogram() -> Histogram {
    Histogram::new([
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pillion_control_plane");
        let proxies = Gauge::default();
        registry.register(
            "proxies",
            "Proxy connections holding at least one watch",
            proxies.clone(),
        );
        let watches = Family::<KindLabel, Gauge<i64, AtomicI64>>::default();
        registry.register("watches", "Open watch streams, by kind", watches.clone());
        let pushes = Family::<KindLabel, Counter>::default();
        registry.register(
            "pushes",
            "States sent to proxies (the first answer of a watch and every change)",
            pushes.clone(),
        );
        let push_latency: PushHistogram = Family::new_with_constructor(push_histogram);
        registry.register(
            "push_latency_seconds",
            "From a configuration change being published to a watch sending the state it changed",
            push_latency.clone(),
        );
        let config_errors = Gauge::default();
        registry.register(
            "config_errors",
            "Documents refused in the configuration in force (the last good version of each stays)",
            config_errors.clone(),
        );
        let config_generation = Gauge::default();
        registry.register(
            "config_generation",
            "The configuration generation in force (one more per accepted change)",
            config_generation.clone(),
        );
        let certificates_issued = Counter::default();
        registry.register(
            "certificates_issued",
            "Workload certificates the CA issued",
            certificates_issued.clone(),
        );
        let reports = Counter::default();
        registry.register(
            "reports",
            "Reports received from proxies (their destination versions and per-backend figures)",
            reports.clone(),
        );
        let canary_weight = Family::<CanaryLabel, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "canary_weight",
            "The candidate's share of its apex Service's traffic, percent, by Canary",
            canary_weight.clone(),
        );
        let canary_phase = Family::<CanaryPhaseLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "canary_phase",
            "1 for the phase each Canary's release is in, 0 for the others",
            canary_phase.clone(),
        );
        let canary_checks = Family::<CanaryCheckLabels, Counter>::default();
        registry.register(
            "canary_checks",
            "Checks of a release's candidate, by result",
            canary_checks.clone(),
        );
        registry.register_collector(Box::new(pillion_core::process::ProcessCollector::default()));
        Metrics {
            registry,
            proxies,
            watches,
            pushes,
            push_latency,
            config_errors,
            config_generation,
            certificates_issued,
            reports,
            canary_weight,
            canary_phase,
            canary_checks,
            connections: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a watch open until the guard drops.
    pub fn watch_opened(self: &Arc<Self>, kind: WatchKind, peer: Option<SocketAddr>) -> WatchGuard {
        self.watches.get_or_create(&KindLabel { kind }).inc();
        if let Some(peer) = peer {
            let mut conns = self.connections.lock().unwrap_or_else(|p| p.into_inner());
            *conns.entry(peer).or_default() += 1;
            self.proxies.set(conns.len() as i64);
        }
        WatchGuard {
            metrics: self.clone(),
            kind,
            peer,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            let _ = writeln!(out, "# encoding failed: {e}");
        }
        out
    }
}

pub struct WatchGuard {
    metrics: Arc<Metrics>,
    kind: WatchKind,
    peer: Option<SocketAddr>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.metrics
            .watches
            .get_or_create(&KindLabel { kind: self.kind })
            .dec();
        if let Some(peer) = self.peer {
            let mut conns = self
                .metrics
                .connections
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(n) = conns.get_mut(&peer) {
                *n -= 1;
                if *n == 0 {
                    conns.remove(&peer);
                }
            }
            self.metrics.proxies.set(conns.len() as i64);
        }
    }
}

/// What the admin port serves besides metrics.
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub fleet: Arc<crate::fleet::Fleet>,
    pub canaries: crate::canary::controller::Handle,
    /// When set, commands (POST) need `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// What the proxies are served.
    pub model: tokio::sync::watch::Receiver<Arc<crate::model::Model>>,
}

type Answer = (http::StatusCode, &'static str, String);

const JSON: &str = "application/json";

/// Serves the admin port until the process ends:
/// - `GET /metrics`, `/live`, `/ready`;
/// - `GET /canaries`, `GET /canaries/{namespace}/{name}`: releases and their status;
/// - `POST /canaries/{namespace}/{name}/{promote|pause|resume|abort}`;
/// - `GET /proxies`: the proxies that report, with the version of each destination they run;
/// - `GET /authorities`: every Service port served; `GET /resolve?authority=A&namespace=NS`:
///   the state (and version) a proxy of namespace NS watching A is sent.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let admin = admin.clone();
        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let admin = admin.clone();
            async move {
                let (status, content_type, body) = admin.answer(&req).await;
                let resp = http::Response::builder()
                    .status(status)
                    .header(http::header::CONTENT_TYPE, content_type)
                    .body(Full::new(Bytes::from(body)))
                    .unwrap_or_default();
                Ok::<_, Infallible>(resp)
            }
        });
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}

impl Admin {
    async fn answer<B>(&self, req: &http::Request<B>) -> Answer {
        let path = req.uri().path();
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (req.method(), parts.as_slice()) {
            (&http::Method::GET, ["metrics"]) => (
                http::StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics.encode(),
            ),
            (&http::Method::GET, ["live" | "ready"]) => {
                (http::StatusCode::OK, "text/plain", "ok\n".to_string())
            }
            (&http::Method::GET, ["proxies"]) => json(http::StatusCode::OK, &self.fleet.proxies()),
            (&http::Method::GET, ["authorities"]) => {
                let model = self.model.borrow().clone();
                json(http::StatusCode::OK, &model.service_authorities())
            }
            (&http::Method::GET, ["resolve"]) => {
                let query = req.uri().query().unwrap_or_default();
                let param = |k: &str| {
                    query
                        .split('&')
                        .filter_map(|kv| kv.split_once('='))
                        .find(|(key, _)| *key == k)
                        .map(|(_, v)| v.to_string())
                };
                let Some(authority) = param("authority").filter(|a| !a.is_empty()) else {
                    return error(
                        http::StatusCode::BAD_REQUEST,
                        "needs ?authority=NAME.NAMESPACE.svc.cluster.local:PORT".into(),
                    );
                };
                let namespace = param("namespace").unwrap_or_else(|| "default".into());
                let model = self.model.borrow().clone();
                let update = crate::api::discovery::versioned(&model, &authority, &namespace);
                json(
                    http::StatusCode::OK,
                    &crate::api::discovery::describe(&update),
                )
            }
            (&http::Method::GET, ["canaries"]) => {
                let views = self.canaries.views.borrow().clone();
                json(http::StatusCode::OK, &*views)
            }
            (&http::Method::GET, ["canaries", ns, name]) => {
                let views = self.canaries.views.borrow().clone();
                match views.iter().find(|v| v.namespace == *ns && v.name == *name) {
                    Some(v) => json(http::StatusCode::OK, v),
                    None => error(
                        http::StatusCode::NOT_FOUND,
                        format!("no Canary {ns}/{name}"),
                    ),
                }
            }
            (&http::Method::POST, ["canaries", ns, name, command]) => {
                if let Some(token) = &self.token {
                    let given = req
                        .headers()
                        .get(http::header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("Bearer "));
                    if given != Some(token.as_str()) {
                        return error(
                            http::StatusCode::UNAUTHORIZED,
                            "commands need Authorization: Bearer <PILLION_CONTROL_ADMIN_TOKEN>"
                                .into(),
                        );
                    }
                }
                self.command(ns, name, command).await
            }
            _ => (
                http::StatusCode::NOT_FOUND,
                "text/plain",
                "not found: GET /metrics, /live, /ready, /proxies, /authorities, \
                 /resolve?authority=A&namespace=NS, /canaries[/NS/NAME]; \
                 POST /canaries/NS/NAME/{promote,pause,resume,abort}\n"
                    .to_string(),
            ),
        }
    }

    async fn command(&self, ns: &str, name: &str, command: &str) -> Answer {
        let command = match command.parse() {
            Ok(c) => c,
            Err(e) => return error(http::StatusCode::BAD_REQUEST, e),
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = crate::canary::controller::Request {
            namespace: ns.to_string(),
            name: name.to_string(),
            command,
            reply,
        };
        if self.canaries.commands.send(request).await.is_err() {
            return error(
                http::StatusCode::SERVICE_UNAVAILABLE,
                "the canary controller is not running".into(),
            );
        }
        match answer.await {
            Ok(Ok(view)) => json(http::StatusCode::OK, &view),
            Ok(Err(e)) if e.starts_with("no Canary") => error(http::StatusCode::NOT_FOUND, e),
            Ok(Err(e)) => error(http::StatusCode::CONFLICT, e),
            Err(_) => error(
                http::StatusCode::SERVICE_UNAVAILABLE,
                "the canary controller stopped".into(),
            ),
        }
    }
}

fn json<T: serde::Serialize + ?Sized>(status: http::StatusCode, value: &T) -> Answer {
    match serde_json::to_string_pretty(value) {
        Ok(body) => (status, JSON, body + "\n"),
        Err(e) => error(http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn error(status: http::StatusCode, message: String) -> Answer {
    let body = serde_json::json!({ "error": message }).to_string() + "\n";
    (status, JSON, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family is in docs/metrics.md, and every control-plane family there exists.
    #[test]
    fn docs_list_every_family() {
        let m = Arc::new(Metrics::new());
        let _guard = m.watch_opened(WatchKind::discovery, Some(([127, 0, 0, 1], 1).into()));
        m.pushes
            .get_or_create(&KindLabel {
                kind: WatchKind::discovery,
            })
            .inc();
        m.push_latency
            .get_or_create(&KindLabel {
                kind: WatchKind::policy,
            })
            .observe(0.001);
        m.reports.inc();
        let canary = || CanaryLabel {
            canary: "default/web".into(),
        };
        m.canary_weight.get_or_create(&canary()).set(10);
        m.canary_phase
            .get_or_create(&CanaryPhaseLabels {
                canary: "default/web".into(),
                phase: "Progressing".into(),
            })
            .set(1);
        m.canary_checks
            .get_or_create(&CanaryCheckLabels {
                canary: "default/web".into(),
                result: "passed".into(),
            })
            .inc();
        let text = m.encode();
        assert!(text.contains("pillion_control_plane_proxies 1"), "{text}");
        let all = include_str!("../../docs/metrics.md");
        let docs = &all[all.find("## Control-plane metrics").unwrap_or(0)..];
        let docs = &docs[..docs.find("\n## Injector metrics").unwrap_or(docs.len())];
        let problems = pillion_core::metrics_doc::disagreements(&text, docs);
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
