//! Pillion's control plane: reads Kubernetes-shaped YAML from a directory and serves each proxy
//! the complete, versioned state of every destination it asks about.

//! Modules by layer: `api`, `source` and `canary` → `model`, `fleet` → `config`, `pki`.

pub mod admin;
pub mod api;
pub mod canary;
pub mod config;
pub mod fleet;
pub mod model;
pub mod pki;
pub mod source;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pillion_proto::discovery::v1::discovery_server::DiscoveryServer;
use pillion_proto::identity::v1::identity_server::IdentityServer;
use pillion_proto::policy::v1::inbound_policy_server::InboundPolicyServer;
use pillion_proto::report::v1::report_server::ReportServer;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{discovery, identity, policy};
use crate::model::Model;
use crate::pki::{ca, serving as tls};
use crate::source::files::Store;

/// How often the directory is looked at. A changed file is read once it held still for one scan
/// (so 50-100 ms after a write). A scan costs one `stat` per file; polling (rather than
/// inotify) also sees the symlink swaps a Kubernetes ConfigMap mount makes.
const SCAN_INTERVAL: Duration = Duration::from_millis(50);

/// Concurrent watches one proxy connection may hold.
pub const MAX_STREAMS_PER_PROXY: u32 = 16_384;

/// Where the configuration is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// A directory of YAML files (`--config-dir`).
    Files,
    /// The Kubernetes API (in-cluster, or `KUBECONFIG`).
    Kubernetes,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Where the configuration comes from.
    #[arg(long, env = "PILLION_SOURCE", value_enum, default_value = "files")]
    pub source: Source,
    /// Directory of YAML files (Service, EndpointSlice, TrafficSplit, HTTPRoute, ...), watched.
    /// Required with `--source files`.
    #[arg(long, env = "PILLION_CONFIG_DIR", required_if_eq("source", "files"))]
    pub config_dir: Option<PathBuf>,
    /// Kubernetes mode: the audience of the service-account tokens proxies present (checked
    /// with a TokenReview).
    #[arg(
        long,
        env = "PILLION_TOKEN_AUDIENCE",
        default_value = "identity.pillion.dev"
    )]
    pub token_audience: String,
    /// Address of the gRPC API the proxies connect to.
    #[arg(
        long = "listen",
        env = "PILLION_CONTROL_LISTEN",
        default_value = "0.0.0.0:8086"
    )]
    pub listen: SocketAddr,
    /// Address of the admin port (`/metrics`, `/live`, `/ready`).
    #[arg(
        long = "admin-listen",
        env = "PILLION_CONTROL_ADMIN_LISTEN",
        default_value = "0.0.0.0:8087"
    )]
    pub admin_listen: SocketAddr,
    /// Directory of the certificate authority (generated there on first start if empty).
    /// Without it the Identity service is off and proxies run without mTLS.
    #[arg(long, env = "PILLION_CA_DIR")]
    pub ca_dir: Option<PathBuf>,
    /// The trust domain of workload identities (`spiffe://<trust-domain>/ns/../sa/..`).
    #[arg(long, env = "PILLION_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Lifetime of workload certificates (`24h`, `90s`).
    #[arg(long, env = "PILLION_LEAF_LIFETIME", default_value = "24h", value_parser = parse_lifetime)]
    pub leaf_lifetime: Duration,
    /// Files mode: the tokens file mapping bootstrap tokens to `namespace/service-account`.
    #[arg(long, env = "PILLION_IDENTITY_TOKENS")]
    pub identity_tokens: Option<PathBuf>,
    /// Serve the gRPC API over TLS with a certificate for this SPIFFE ID, issued by the CA
    /// (needs --ca-dir). Proxies then set PILLION_CONTROL_PLANE_IDENTITY to it.
    #[arg(long, env = "PILLION_CONTROL_TLS_IDENTITY")]
    pub tls_identity: Option<String>,
    /// Canary analysis asks this Prometheus server (PromQL over its HTTP API,
    /// `http://host:port`) instead of the proxies' own reports.
    #[arg(long, env = "PILLION_PROMETHEUS_URL")]
    pub prometheus_url: Option<String>,
    /// Files mode: a directory where the canary controller keeps each release's status, so a
    /// restart resumes releases (Kubernetes mode keeps it in each Canary's status).
    #[arg(long, env = "PILLION_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// When set, canary commands on the admin port need `Authorization: Bearer <token>`.
    #[arg(long, env = "PILLION_CONTROL_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

fn parse_lifetime(s: &str) -> Result<Duration, String> {
    let d = pillion_core::duration::parse(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("`{s}` is shorter than a second"));
    }
    Ok(d)
}

impl Args {
    /// Defaults for an embedded control plane reading `config_dir` (no CA).
    pub fn new(config_dir: PathBuf, listen: SocketAddr) -> Self {
        Args {
            source: Source::Files,
            config_dir: Some(config_dir),
            token_audience: "identity.pillion.dev".into(),
            listen,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ca_dir: None,
            trust_domain: "cluster.local".into(),
            leaf_lifetime: Duration::from_secs(24 * 3600),
            identity_tokens: None,
            tls_identity: None,
            prometheus_url: None,
            state_dir: None,
            admin_token: None,
        }
    }
}

/// A running control plane's handles, for embedding (the CLI demo and tests).
pub struct ControlPlane {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    model: watch::Receiver<Arc<Model>>,
}

impl ControlPlane {
    /// Binds the listener and reads the directory once, so that the first proxy is answered
    /// with the whole configuration. The returned future serves until `shutdown` resolves.
    pub async fn bind(
        args: Args,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<(Self, impl std::future::Future<Output = anyhow::Result<()>>)> {
        let listener = TcpListener::bind(args.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
        let addr = listener.local_addr()?;
        let admin_listener = TcpListener::bind(args.admin_listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.admin_listen))?;
        let admin_addr = admin_listener.local_addr()?;
        let metrics = Arc::new(admin::Metrics::new());
        let (watcher, rx, kube_client, source_name) = match (args.source, &args.config_dir) {
            (Source::Files, Some(dir)) => {
                let mut store = Store::new(dir);
                store.scan().map_err(|e| {
                    anyhow::anyhow!("cannot read config dir {}: {e}", dir.display())
                })?;
                let model = Model::new(store.objects(), 1);
                warn_about(&model);
                metrics.config_generation.set(1);
                metrics.config_errors.set(store.errors().len() as i64);
                let (tx, rx) = watch::channel(Arc::new(model));
                let watcher = tokio::spawn(watch_dir(store, tx, metrics.clone()));
                (watcher, rx, None, dir.display().to_string())
            }
            (Source::Files, None) => anyhow::bail!("--source files needs --config-dir"),
            (Source::Kubernetes, _) => {
                let client = kube::Client::try_default().await.map_err(|e| {
                    anyhow::anyhow!("--source kubernetes: no Kubernetes API configuration (in-cluster or KUBECONFIG): {e}")
                })?;
                // Generation 0 is empty; the first model follows the first list of every kind.
                let (tx, rx) = watch::channel(Arc::new(Model::new(Vec::new(), 0)));
                let cluster = source::kubernetes::Cluster::new(&args.trust_domain);
                let watcher =
                    source::kubernetes::start(client.clone(), cluster, tx, metrics.clone());
                (watcher, rx, Some(client), "kubernetes".to_string())
            }
        };
        // The canary controller stands between the source and the proxies: what they are
        // served is the source's objects with each release's routing laid over them.
        let fleet = Arc::new(fleet::Fleet::default());
        let source = match &args.prometheus_url {
            Some(url) => canary::metrics::Source::Prometheus(Box::new(
                canary::metrics::Prometheus::new(url).map_err(anyhow::Error::msg)?,
            )),
            None => canary::metrics::Source::Proxies(fleet.clone()),
        };
        let state_file = match (&args.state_dir, args.source) {
            (Some(dir), Source::Files) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    anyhow::anyhow!("--state-dir {}: cannot create it: {e}", dir.display())
                })?;
                Some(dir.join("canaries.json"))
            }
            _ => None,
        };
        let (rx, canaries, controller) = canary::controller::start(
            rx,
            canary::controller::Setup {
                source,
                fleet: fleet.clone(),
                metrics: metrics.clone(),
                state_file,
            },
        );
        let report_metrics = metrics.clone();
        let status_writer = kube_client
            .clone()
            .map(|client| tokio::spawn(canary::status_writer::run(client, canaries.views.clone())));
        let admin_server = tokio::spawn(admin::serve(
            admin_listener,
            Arc::new(admin::Admin {
                metrics: metrics.clone(),
                fleet: fleet.clone(),
                canaries,
                token: args.admin_token.clone(),
                model: rx.clone(),
            }),
        ));
        let service = discovery::DiscoveryService::new(rx.clone(), metrics.clone());
        let policy = policy::PolicyService::new(rx.clone(), metrics.clone());
        let ca = match &args.ca_dir {
            Some(dir) => Some(Arc::new(ca::Ca::load_or_generate(
                dir,
                &args.trust_domain,
                args.leaf_lifetime,
            )?)),
            None => None,
        };
        let tls = match (&args.tls_identity, &ca) {
            (None, _) => None,
            (Some(id), Some(ca)) => {
                let identity = pillion_proto::names::Identity::from_spiffe_id(id)
                    .filter(|i| i.trust_domain == args.trust_domain)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "--tls-identity {id}: not a SPIFFE ID of trust domain {}",
                            args.trust_domain
                        )
                    })?;
                Some(tls::serving_config(ca.clone(), identity)?)
            }
            (Some(_), None) => anyhow::bail!("--tls-identity needs --ca-dir (the CA issues it)"),
        };
        let identity = ca.map(|ca| {
            IdentityServer::new(identity::IdentityService::new(
                ca,
                args.identity_tokens.clone(),
                kube_client.map(|client| identity::TokenReviews {
                    client,
                    audience: args.token_audience.clone(),
                }),
                metrics.clone(),
            ))
        });
        // Logged once everything a proxy needs exists (the CA files included).
        tracing::info!(%addr, %admin_addr, source = %source_name, "control plane listening");

        let serve = async move {
            let router = tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(10)))
                .http2_keepalive_timeout(Some(Duration::from_secs(5)))
                // A proxy holds one stream per destination it talks to, all on one connection:
                // allow far more than HTTP/2's usual 100-200 (each idle watch costs a task), but
                // not without bound: a proxy keeps at most PILLION_MAX_DESTINATIONS (10,000).
                .max_concurrent_streams(MAX_STREAMS_PER_PROXY)
                .add_service(DiscoveryServer::new(service))
                .add_optional_service(identity)
                .add_service(InboundPolicyServer::new(policy))
                .add_service(ReportServer::new(api::report::ReportService {
                    fleet,
                    metrics: report_metrics,
                }));
            let result = match tls {
                Some(config) => {
                    router
                        .serve_with_incoming_shutdown(tls::incoming(listener, config), shutdown)
                        .await
                }
                None => {
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                    router
                        .serve_with_incoming_shutdown(incoming, shutdown)
                        .await
                }
            };
            watcher.abort();
            controller.abort();
            if let Some(w) = status_writer {
                w.abort();
            }
            admin_server.abort();
            result.map_err(anyhow::Error::from)
        };
        Ok((
            Self {
                addr,
                admin_addr,
                model: rx,
            },
            serve,
        ))
    }

    /// The configuration generation in force (it grows by one per accepted change).
    pub fn generation(&self) -> u64 {
        self.model.borrow().generation
    }
}

/// Polls the directory and publishes a new model whenever a file changes.
async fn watch_dir(mut store: Store, tx: watch::Sender<Arc<Model>>, metrics: Arc<admin::Metrics>) {
    let mut generation = 1;
    let mut interval = tokio::time::interval(SCAN_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let started = Instant::now();
        let changed = match store.scan() {
            Ok(Some(change)) => change,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(dir = %store.dir().display(), error = %e, "cannot read config dir; the last configuration stays in force");
                continue;
            }
        };
        generation += 1;
        let model = Model::new(store.objects(), generation);
        warn_about(&model);
        metrics.config_generation.set(generation as i64);
        metrics.config_errors.set(store.errors().len() as i64);
        tx.send_replace(Arc::new(model));
        tracing::info!(
            generation,
            files = ?changed.files,
            elapsed_us = started.elapsed().as_micros() as u64,
            "configuration change published"
        );
    }
}

/// Logs what is valid but almost surely a mistake (see [`Model::warnings`]).
fn warn_about(model: &Model) {
    for warning in model.warnings() {
        tracing::warn!(%warning, "configuration accepted with a warning");
    }
}
