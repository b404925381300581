//! The proxy's side of discovery: one watch per destination, opened the first time a request
//! needs it, each keeping the latest snapshot in a `watch` channel that requests read without
//! waiting. A lost control plane leaves every snapshot in force; watches reconnect with backoff.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use pb::discovery_client::DiscoveryClient;
use pillion_proto::discovery::v1 as pb;
use rand::Rng;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::http::errors::ProxyError;
use crate::route::snapshot::{Carried, Snapshot};
use crate::telemetry::metrics::{Label, Metrics, VersionLabels};

/// A destination nobody asked for in this long is forgotten (its watch closed).
const IDLE_AFTER: Duration = Duration::from_secs(600);
/// Destinations watched at once; past this the least recently used one is forgotten. Each
/// watch costs a task and a stream here and in the control plane, so a caller cycling through
/// made-up Host names must not be able to open them without bound.
pub const MAX_WATCHES: usize = 10_000;
/// Authorities the control plane said are not in the mesh are remembered this long, without a
/// watch; a Service created meanwhile is seen at the next request after that.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Not-in-mesh answers remembered at once (the oldest is dropped past this).
const MAX_NEGATIVE: usize = 10_000;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

struct Watched {
    /// Tells this watch apart from a later one for the same name.
    id: u64,
    rx: watch::Receiver<Option<Arc<Snapshot>>>,
    task: tokio::task::AbortHandle,
    /// Milliseconds since `Destinations::epoch` of the last request.
    last_used: AtomicU64,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How to reach the control plane over TLS: its identity's DNS form as the server name, our
/// mesh certificate (once held) as the client certificate.
#[derive(Clone)]
pub struct ControlPlaneTls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: rustls_pki_types::ServerName<'static>,
    /// Connect only once this identity holds a certificate, so that the control plane can
    /// authenticate the connection (not for the bootstrap channel that obtains it).
    pub wait_for: Option<Arc<crate::identity::LocalIdentity>>,
}

/// A lazily connecting channel to the control plane (plaintext, or TLS when `tls` is given).
pub fn control_plane_channel(addr: &str, tls: Option<ControlPlaneTls>) -> anyhow::Result<Channel> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    Ok(match tls {
        None => endpoint
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy(),
        Some(tls) => endpoint.connect_with_connector_lazy(TlsConnector {
            addr: addr.to_string(),
            tls,
        }),
    })
}

#[derive(Clone)]
struct TlsConnector {
    addr: String,
    tls: ControlPlaneTls,
}

type TlsIo = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

fn timed_out(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{what} timed out"))
}

impl tonic::codegen::Service<http::Uri> for TlsConnector {
    type Response = TlsIo;
    type Error = std::io::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<TlsIo, std::io::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            if let Some(id) = &this.tls.wait_for {
                id.ready().await;
            }
            let connect = tokio::net::TcpStream::connect(&this.addr);
            let tcp = tokio::time::timeout(Duration::from_secs(2), connect)
                .await
                .map_err(|_| timed_out("connect"))??;
            let _ = tcp.set_nodelay(true);
            let handshake = tokio_rustls::TlsConnector::from(this.tls.config)
                .connect(this.tls.server_name, tcp);
            let tls = tokio::time::timeout(Duration::from_secs(10), handshake)
                .await
                .map_err(|_| timed_out("TLS handshake"))??;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

pub struct Destinations {
    client: DiscoveryClient<Channel>,
    namespace: String,
    workload: String,
    connect_timeout: Duration,
    discovery_timeout: Duration,
    metrics: Arc<Metrics>,
    /// Client configurations for meshed endpoints, when this proxy has an identity.
    tls: Option<crate::http::pool::MeshTls>,
    epoch: Instant,
    map: RwLock<foldhash::HashMap<String, Arc<Watched>>>,
    /// Not-in-mesh answers: authority → (when answered, the answer).
    negative: RwLock<foldhash::HashMap<String, (Instant, Arc<Snapshot>)>>,
    /// How many `negative` holds, read without its lock: most proxies never hold one, and a
    /// request then skips that lock (two atomic operations).
    negative_len: AtomicUsize,
    next_id: AtomicU64,
    max_watches: AtomicUsize,
    ready: AtomicBool,
}

impl Destinations {
    pub fn new(
        channel: Channel,
        namespace: String,
        workload: String,
        connect_timeout: Duration,
        discovery_timeout: Duration,
        metrics: Arc<Metrics>,
        tls: Option<crate::http::pool::MeshTls>,
    ) -> Arc<Self> {
        Arc::new(Destinations {
            client: DiscoveryClient::new(channel),
            tls,
            namespace,
            workload,
            connect_timeout,
            discovery_timeout,
            metrics,
            epoch: Instant::now(),
            map: RwLock::new(foldhash::HashMap::default()),
            negative: RwLock::new(foldhash::HashMap::default()),
            negative_len: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            max_watches: AtomicUsize::new(MAX_WATCHES),
            ready: AtomicBool::new(false),
        })
    }

    /// Holds at most `max` watches from now on (`PILLION_MAX_DESTINATIONS`).
    pub fn set_max_watches(&self, max: usize) {
        self.max_watches.store(max.max(1), Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    fn ms_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Remembers that `fqdn` is not in the mesh and closes its watch (if it is still `id`).
    fn forget_as_not_in_mesh(&self, fqdn: &str, id: u64, snapshot: Arc<Snapshot>) {
        {
            let mut negative = write(&self.negative);
            if negative.len() >= MAX_NEGATIVE {
                negative.retain(|_, (at, _)| at.elapsed() < NEGATIVE_TTL);
                if negative.len() >= MAX_NEGATIVE
                    && let Some(oldest) = negative
                        .iter()
                        .min_by_key(|(_, (at, _))| *at)
                        .map(|(k, _)| k.clone())
                {
                    negative.remove(&oldest);
                }
            }
            negative.insert(fqdn.to_string(), (Instant::now(), snapshot));
            self.negative_len.store(negative.len(), Ordering::Relaxed);
        }
        let mut map = write(&self.map);
        if map.get(fqdn).is_some_and(|w| w.id == id) {
            map.remove(fqdn);
            self.metrics.destinations.set(map.len() as i64);
        }
    }

    /// How many destinations are watched now.
    pub fn watched_count(&self) -> usize {
        read(&self.map).len()
    }

    /// Ready once the control plane has answered once; it stays ready when the control plane
    /// goes away later, since the proxy keeps serving with what it has.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn connected(&self, yes: bool) {
        if yes {
            self.ready.store(true, Ordering::Relaxed);
        }
        self.metrics.control_plane_connected.set(i64::from(yes));
    }

    /// Asks the control plane who it is until it answers, then every few seconds, to keep the
    /// `control_plane_connected` gauge true.
    pub async fn probe(self: Arc<Self>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let req = pb::InfoRequest {
                source_workload: self.workload.clone(),
            };
            let ok = tokio::time::timeout(Duration::from_secs(5), self.client.clone().info(req))
                .await
                .is_ok_and(|r| r.is_ok());
            self.connected(ok);
            let wait = if ok {
                backoff = BACKOFF_MIN;
                Duration::from_secs(5)
            } else {
                backoff = next_backoff(backoff);
                backoff
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// The current snapshot for a canonical destination name, opening a watch the first time.
    /// Only a destination never seen before waits (for its first answer, bounded).
    pub async fn get(self: &Arc<Self>, fqdn: &str) -> Result<Arc<Snapshot>, ProxyError> {
        self.get_at(fqdn, Instant::now()).await
    }

    /// `get` for a request that read the clock when it started (`now`, which marks the
    /// destination used): one clock read fewer per request.
    pub async fn get_at(
        self: &Arc<Self>,
        fqdn: &str,
        now: Instant,
    ) -> Result<Arc<Snapshot>, ProxyError> {
        if self.negative_len.load(Ordering::Relaxed) > 0
            && let Some((at, snapshot)) = read(&self.negative).get(fqdn)
            && at.elapsed() < NEGATIVE_TTL
        {
            return Ok(snapshot.clone());
        }
        // A destination watched and answered: its snapshot, read under the map's lock (no
        // clone of the watch itself).
        if let Some(w) = read(&self.map).get(fqdn) {
            w.last_used.store(self.ms_at(now), Ordering::Relaxed);
            if let Some(s) = w.rx.borrow().as_ref() {
                return Ok(s.clone());
            }
        }
        let watched = self.watched(fqdn);
        watched.last_used.store(self.ms_at(now), Ordering::Relaxed);
        if let Some(s) = watched.rx.borrow().as_ref() {
            return Ok(s.clone());
        }
        let mut rx = watched.rx.clone();
        match tokio::time::timeout(self.discovery_timeout, rx.wait_for(Option::is_some)).await {
            Ok(Ok(s)) => s
                .as_ref()
                .cloned()
                .ok_or(ProxyError::Unavailable("control plane unavailable")),
            _ => Err(ProxyError::Unavailable("control plane unavailable")),
        }
    }

    fn watched(self: &Arc<Self>, fqdn: &str) -> Arc<Watched> {
        if let Some(w) = read(&self.map).get(fqdn) {
            return w.clone();
        }
        let mut map = write(&self.map);
        if let Some(w) = map.get(fqdn) {
            return w.clone();
        }
        if map.len() >= self.max_watches.load(Ordering::Relaxed) {
            // Full: forget the least recently used destination (a scan, but only when a new
            // destination arrives at a full map).
            let lru = map
                .iter()
                .min_by_key(|(_, w)| w.last_used.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone());
            if let Some(lru) = lru {
                tracing::debug!(fqdn = %lru, "destination forgotten to make room");
                map.remove(&lru);
            }
        }
        let (tx, rx) = watch::channel(None);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let task = tokio::spawn(self.clone().watch(fqdn.to_string(), id, tx)).abort_handle();
        let w = Arc::new(Watched {
            id,
            rx,
            task,
            last_used: AtomicU64::new(self.now_ms()),
        });
        map.insert(fqdn.to_string(), w.clone());
        self.metrics.destinations.set(map.len() as i64);
        w
    }

    /// Keeps one destination's snapshot current, reconnecting with backoff.
    async fn watch(
        self: Arc<Self>,
        fqdn: String,
        id: u64,
        tx: watch::Sender<Option<Arc<Snapshot>>>,
    ) {
        let mut carried = Carried::default();
        // The version series this watch shows, removed when it changes or the watch ends.
        let mut shown = VersionShown {
            metrics: self.metrics.clone(),
            labels: None,
        };
        let mut backoff = BACKOFF_MIN;
        loop {
            let req = pb::WatchRequest {
                authority: fqdn.clone(),
                source_namespace: self.namespace.clone(),
                source_workload: self.workload.clone(),
            };
            match self.client.clone().watch(req).await {
                Ok(resp) => {
                    let mut stream = resp.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(update)) => {
                                backoff = BACKOFF_MIN;
                                self.connected(true);
                                self.metrics.destination_updates.inc();
                                let version = update.version.clone();
                                match Snapshot::compile(
                                    update,
                                    &mut carried,
                                    self.connect_timeout,
                                    self.tls.as_ref(),
                                ) {
                                    Ok(s) => {
                                        tracing::debug!(%fqdn, %version, "destination updated");
                                        let s = Arc::new(s);
                                        self.show_version(&mut shown, &s);
                                        tx.send_replace(Some(s.clone()));
                                        if !s.in_mesh() {
                                            // No watch is kept for what is not in the mesh:
                                            // the answer is remembered a while instead.
                                            self.forget_as_not_in_mesh(&fqdn, id, s);
                                            return;
                                        }
                                    }
                                    Err(e) => {
                                        tracing::warn!(%fqdn, %version, error = %e, "destination update refused; keeping the previous one");
                                    }
                                }
                            }
                            Ok(None) => {
                                tracing::info!(%fqdn, "control plane closed the watch; reconnecting");
                                break;
                            }
                            Err(status) => {
                                tracing::warn!(%fqdn, error = %status, "watch failed; keeping the last state and reconnecting");
                                break;
                            }
                        }
                    }
                }
                Err(status) => {
                    tracing::warn!(%fqdn, error = %status.message(), "cannot reach the control plane; retrying");
                    self.connected(false);
                }
            }
            backoff = next_backoff(backoff);
            tokio::time::sleep(backoff).await;
        }
    }

    /// `pillion_destination_version_info{authority, version}`: the version in force.
    fn show_version(&self, shown: &mut VersionShown, s: &Snapshot) {
        if !s.in_mesh() {
            return;
        }
        let labels = VersionLabels {
            authority: Label(s.fqdn.clone()),
            version: Label::from(s.version.as_str()),
        };
        if let Some(old) = shown.labels.replace(labels.clone()) {
            self.metrics.destination_version.remove(&old);
        }
        self.metrics
            .destination_version
            .get_or_create(&labels)
            .set(1);
    }

    /// Forgets destinations not used for a while; run periodically.
    pub async fn sweep(self: Arc<Self>) {
        let mut interval = tokio::time::interval(Duration::from_secs(60));
        loop {
            interval.tick().await;
            let now = self.now_ms();
            let mut map = write(&self.map);
            map.retain(|fqdn, w| {
                let keep = now.saturating_sub(w.last_used.load(Ordering::Relaxed))
                    < IDLE_AFTER.as_millis() as u64;
                if !keep {
                    tracing::debug!(%fqdn, "idle destination forgotten");
                }
                keep
            });
            self.metrics.destinations.set(map.len() as i64);
            drop(map);
            let mut negative = write(&self.negative);
            negative.retain(|_, (at, _)| at.elapsed() < NEGATIVE_TTL);
            self.negative_len.store(negative.len(), Ordering::Relaxed);
            drop(negative);
            self.metrics.expire_idle_series(IDLE_AFTER);
        }
    }

    /// The version in force of each destination that has one (canonical name, version), for
    /// the reports to the control plane.
    pub fn versions(&self) -> Vec<(String, String)> {
        read(&self.map)
            .iter()
            .filter_map(|(fqdn, w)| {
                let s = w.rx.borrow();
                let s = s.as_ref()?;
                let name = if s.fqdn.is_empty() {
                    fqdn.clone()
                } else {
                    s.fqdn.to_string()
                };
                Some((name, s.version.clone()))
            })
            .collect()
    }

    /// For `/config`.
    pub fn describe(&self) -> serde_json::Value {
        let map = read(&self.map);
        let mut out = serde_json::Map::new();
        for (fqdn, w) in map.iter() {
            // Keyed by the canonical name (`web` and `web:80` are one destination).
            let (key, v) = match w.rx.borrow().as_ref() {
                Some(s) if !s.fqdn.is_empty() => (s.fqdn.to_string(), s.describe()),
                Some(s) => (fqdn.clone(), s.describe()),
                None => (fqdn.clone(), serde_json::json!({ "pending": true })),
            };
            out.insert(key, v);
        }
        serde_json::Value::Object(out)
    }
}

/// The version series a watch shows; dropped with the watch (task aborted or ended).
struct VersionShown {
    metrics: Arc<Metrics>,
    labels: Option<VersionLabels>,
}

impl Drop for VersionShown {
    fn drop(&mut self) {
        if let Some(l) = self.labels.take() {
            self.metrics.destination_version.remove(&l);
        }
    }
}

/// Doubles, with jitter, up to the maximum.
fn next_backoff(current: Duration) -> Duration {
    let doubled = (current * 2).min(BACKOFF_MAX);
    let jitter = rand::rng().random_range(0..=doubled.as_millis() as u64 / 4);
    doubled - Duration::from_millis(jitter)
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    match l.read() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    match l.write() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_destination_not_in_the_mesh_is_answered_from_memory() {
        // A control plane that is never reached: an answer can only come from memory.
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        let dests = Destinations::new(
            channel,
            "default".into(),
            "default/client".into(),
            Duration::from_millis(50),
            Duration::from_millis(200),
            Arc::new(Metrics::new()),
            None,
        );
        let update = pb::DestinationUpdate {
            version: "1".into(),
            state: Some(pb::destination_update::State::NotInMesh(pb::NotInMesh {
                reason: "no such Service".into(),
            })),
        };
        let snapshot = Arc::new(
            Snapshot::compile(
                update,
                &mut Carried::default(),
                Duration::from_secs(1),
                None,
            )
            .unwrap(),
        );
        dests.forget_as_not_in_mesh("example.com:80", 0, snapshot.clone());
        let got = dests.get("example.com:80").await.unwrap();
        assert!(Arc::ptr_eq(&got, &snapshot));
        assert_eq!(dests.watched_count(), 0, "no watch opened for it again");
    }
}
