//! Request metrics, served on the admin port in the Prometheus text format (0.0.4).
//!
//! Label values are `Arc<str>` shared with the routing snapshot, so counting a request clones
//! pointers rather than strings. `docs/metrics.md` lists every family; a test keeps them in step.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, RwLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A label value shared with the routing state.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Label(pub Arc<str>);

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

impl From<&str> for Label {
    fn from(s: &str) -> Self {
        Label(Arc::from(s))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Direction {
    inbound,
    outbound,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: Direction,
    pub authority: Label,
    pub route: Label,
    pub backend: Label,
}

/// A leg's labels borrowed, as a request has them: what [`Metrics::leg`] looks the leg up by,
/// so that a lookup clones (and later drops) no `Arc`: each is an atomic operation.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct LegKey<'a> {
    direction: Direction,
    authority: &'a str,
    route: &'a str,
    backend: &'a str,
}

/// The std map looks keys up through `Borrow`; a key of borrowed parts cannot be borrowed
/// from `RequestLabels`, but both can be seen as this trait's objects. `LegKey`'s derived
/// `Hash` writes what `RequestLabels`'s does (the direction, then each `str`), so the map
/// finds a leg by either.
trait AsLegKey {
    fn key(&self) -> LegKey<'_>;
}

impl AsLegKey for RequestLabels {
    fn key(&self) -> LegKey<'_> {
        LegKey {
            direction: self.direction,
            authority: &self.authority.0,
            route: &self.route.0,
            backend: &self.backend.0,
        }
    }
}

impl AsLegKey for LegKey<'_> {
    fn key(&self) -> LegKey<'_> {
        *self
    }
}

impl<'a> std::borrow::Borrow<dyn AsLegKey + 'a> for RequestLabels {
    fn borrow(&self) -> &(dyn AsLegKey + 'a) {
        self
    }
}

impl std::hash::Hash for dyn AsLegKey + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state)
    }
}

impl PartialEq for dyn AsLegKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for dyn AsLegKey + '_ {}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResponseLabels {
    pub direction: Direction,
    pub authority: Label,
    pub route: Label,
    pub backend: Label,
    pub status_code: u16,
    /// The `grpc-status` of the response headers (trailers-only answers), empty otherwise.
    pub grpc_status: Option<Label>,
    /// The proxy's own error reason, empty when the answer came from the application.
    pub error: Option<Label>,
    /// The hop between proxies was mTLS.
    pub tls: bool,
    /// The peer's SPIFFE ID (inbound: the client; outbound: the endpoint's proxy), or empty.
    pub peer_identity: Label,
    /// `success`, or `failure`: a 5xx, a proxy error, or a gRPC status other than OK.
    pub classification: Classification,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Classification {
    success,
    failure,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ErrorLabels {
    pub direction: Direction,
    /// The proxy's reason (`connect failed`, `timeout`, `not in mesh`, ...).
    pub reason: Label,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct VersionLabels {
    pub authority: Label,
    /// The version of the destination state in force (a content hash from the control plane).
    pub version: Label,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LatencyLabels {
    pub direction: Direction,
    pub authority: Label,
    pub backend: Label,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DenialLabels {
    /// The authorization (`namespace/name`) that did not allow the caller, or `default`.
    pub authorization: Label,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: Direction,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ConnLabels {
    pub direction: Direction,
    pub protocol: Label,
}

/// A retry sent, or one not sent, and why.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RetryLabels {
    pub authority: Label,
    pub route: Label,
    /// Sent: what failed (`503`, `grpc-14`, `reset`). Not sent: `budget` or `body too large`.
    pub reason: Label,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FaultLabels {
    pub authority: Label,
    pub route: Label,
    /// `abort` or `delay`.
    pub fault: Label,
}

/// Endpoints ejected by outlier detection since the proxy started. A process-wide counter:
/// the balancer that ejects knows no `Metrics`.
pub static OUTLIER_EJECTIONS: std::sync::LazyLock<Counter> =
    std::sync::LazyLock::new(Counter::default);

/// HTTP/2 requests sent again because the endpoint refused or did not process them
/// (`http::pool`): process-wide, as the pool knows no `Metrics`.
pub static REQUESTS_RESENT: std::sync::LazyLock<Counter> =
    std::sync::LazyLock::new(Counter::default);

type HistogramFamily = Family<LatencyLabels, Histogram, fn() -> Histogram>;

/// Distinct authority label values at once; requests for more are counted as `unknown`, so
/// that callers cycling through made-up Host names cannot grow `/metrics` without bound.
pub const MAX_AUTHORITIES: usize = 1000;
/// The authority label of requests for destinations outside the mesh, or past the bound.
pub const UNKNOWN_AUTHORITY: &str = "unknown";

/// The series created for one authority, so that they can be dropped once it is idle.
#[derive(Default)]
struct AuthoritySeries {
    requests: Vec<RequestLabels>,
    responses: Vec<ResponseLabels>,
    latency: Vec<LatencyLabels>,
    /// Requests counted at the last sweep, and since when that number has not moved.
    last_total: u64,
    still_since: Option<std::time::Instant>,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub responses: Family<ResponseLabels, Counter>,
    pub latency: HistogramFamily,
    pub connections: Family<ConnLabels, Counter>,
    pub tls_handshake_failures: Family<DirectionLabel, Counter>,
    pub authorization_denials: Family<DenialLabels, Counter>,
    pub control_plane_connected: Gauge<i64, AtomicI64>,
    pub destination_updates: Counter,
    pub destinations: Gauge<i64, AtomicI64>,
    pub spans_sent: Counter,
    pub spans_dropped: Counter,
    pub proxy_errors: Family<ErrorLabels, Counter>,
    pub tcp_open: Family<DirectionLabel, Counter>,
    pub tcp_close: Family<DirectionLabel, Counter>,
    pub tcp_read_bytes: Family<DirectionLabel, Counter>,
    pub tcp_write_bytes: Family<DirectionLabel, Counter>,
    pub destination_version: Family<VersionLabels, Gauge<i64, AtomicI64>>,
    pub certificate_expiry: Gauge<i64, AtomicI64>,
    pub retries: Family<RetryLabels, Counter>,
    pub retries_skipped: Family<RetryLabels, Counter>,
    pub faults: Family<FaultLabels, Counter>,
    series: RwLock<HashMap<Arc<str>, AuthoritySeries>>,
    unknown: Label,
    /// The series handles of each leg in use, found with one fast lookup per request instead of
    /// one SipHash of every label per family (three of them: ~3,000 instructions a request).
    legs: RwLock<foldhash::HashMap<RequestLabels, Arc<Leg>>>,
}

/// Responses of distinct kinds (status, gRPC status, error, peer) one leg keeps handles for;
/// rarer kinds past these are counted through the family's own lookup.
const RESPONSE_KINDS_PER_LEG: usize = 16;

/// One leg's series (direction, authority, route, backend), created on its first request.
pub struct Leg {
    /// The authority label counted: the request's, or `unknown` past [`MAX_AUTHORITIES`].
    pub authority: Label,
    requests: Counter,
    latency: Histogram,
    responses: std::sync::Mutex<Vec<(ResponseLabels, Counter)>>,
}

impl Leg {
    /// Counts one request and the latency of its response headers.
    pub fn count_request(&self, secs: f64) {
        self.requests.inc();
        self.latency.observe(secs);
    }

    /// Counts one response of this leg (`labels` carry the leg's own direction, authority,
    /// route and backend).
    pub fn count_response(&self, metrics: &Metrics, labels: ResponseLabels) {
        let mut known = self.responses.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = known.iter().find(|(l, _)| *l == labels) {
            c.inc();
            return;
        }
        if known.len() >= RESPONSE_KINDS_PER_LEG {
            drop(known);
            metrics.count_response(labels);
            return;
        }
        let counter = metrics.response_counter(&labels);
        counter.inc();
        known.push((labels, counter));
    }
}

fn latency_histogram() -> Histogram {
    // From 100 µs: a proxy's own latency is well under a millisecond.
    Histogram::new([
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pillion");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests the proxy routed, by direction, authority, route and backend",
            requests.clone(),
        );
        let responses = Family::<ResponseLabels, Counter>::default();
        registry.register(
            "responses",
            "Responses, by direction, authority, route, backend, status and proxy error",
            responses.clone(),
        );
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "response_latency_seconds",
            "Time from receiving a request to receiving the response headers",
            latency.clone(),
        );
        let connections = Family::<ConnLabels, Counter>::default();
        registry.register(
            "connections",
            "Connections accepted, by direction and detected protocol",
            connections.clone(),
        );
        let tls_handshake_failures = Family::<DirectionLabel, Counter>::default();
        registry.register(
            "tls_handshake_failures",
            "mTLS handshakes refused or timed out (no or untrusted client certificate, ...)",
            tls_handshake_failures.clone(),
        );
        let authorization_denials = Family::<DenialLabels, Counter>::default();
        registry.register(
            "inbound_denials",
            "Inbound requests and connections refused by policy, by the authorization that refused",
            authorization_denials.clone(),
        );
        let control_plane_connected = Gauge::default();
        registry.register(
            "control_plane_connected",
            "1 while the control plane answered the last call, 0 otherwise",
            control_plane_connected.clone(),
        );
        let destination_updates = Counter::default();
        registry.register(
            "destination_updates",
            "Destination states received from the control plane",
            destination_updates.clone(),
        );
        let destinations = Gauge::default();
        registry.register(
            "destinations",
            "Destinations the proxy currently watches",
            destinations.clone(),
        );
        let spans_sent = Counter::default();
        registry.register(
            "spans_sent",
            "Spans the Zipkin collector accepted",
            spans_sent.clone(),
        );
        let spans_dropped = Counter::default();
        registry.register(
            "spans_dropped",
            "Spans dropped: the export queue was full, or the collector refused them or was unreachable",
            spans_dropped.clone(),
        );
        let proxy_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "proxy_errors",
            "Requests the proxy answered itself with an error, by direction and reason",
            proxy_errors.clone(),
        );
        let tcp_open = Family::<DirectionLabel, Counter>::default();
        registry.register("tcp_open", "TCP connections accepted", tcp_open.clone());
        let tcp_close = Family::<DirectionLabel, Counter>::default();
        registry.register("tcp_close", "TCP connections closed", tcp_close.clone());
        let tcp_read_bytes = Family::<DirectionLabel, Counter>::default();
        registry.register(
            "tcp_read_bytes",
            "Bytes read from accepted connections (counted at least every 64 KiB and at close)",
            tcp_read_bytes.clone(),
        );
        let tcp_write_bytes = Family::<DirectionLabel, Counter>::default();
        registry.register(
            "tcp_write_bytes",
            "Bytes written to accepted connections (counted at least every 64 KiB and at close)",
            tcp_write_bytes.clone(),
        );
        let destination_version = Family::<VersionLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "destination_version_info",
            "1 for the version of each watched destination's state in force",
            destination_version.clone(),
        );
        let certificate_expiry = Gauge::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the proxy's workload certificate expires (Unix seconds; 0 without one)",
            certificate_expiry.clone(),
        );
        let retries = Family::<RetryLabels, Counter>::default();
        registry.register(
            "retries",
            "Attempts sent again, by authority, route and what failed",
            retries.clone(),
        );
        let retries_skipped = Family::<RetryLabels, Counter>::default();
        registry.register(
            "retries_skipped",
            "Retries a policy asked for but not sent: the budget was spent or the body too large",
            retries_skipped.clone(),
        );
        let faults = Family::<FaultLabels, Counter>::default();
        registry.register(
            "faults_injected",
            "Requests aborted or delayed by a FaultInjection",
            faults.clone(),
        );
        registry.register(
            "requests_resent",
            "HTTP/2 requests sent again because the endpoint refused them or went away without processing them",
            REQUESTS_RESENT.clone(),
        );
        registry.register(
            "requests_mirrored",
            "Copies of requests sent to an HTTPRoute RequestMirror filter's backend (their answers are dropped)",
            crate::http::mirror::MIRRORED.clone(),
        );
        registry.register(
            "requests_mirrored_failed",
            "Mirrored copies that got no complete answer (unreachable, reset, timed out, or abandoned when they fell behind the request)",
            crate::http::mirror::MIRROR_FAILURES.clone(),
        );
        registry.register(
            "outlier_ejections",
            "Endpoints ejected after failing several times in a row",
            OUTLIER_EJECTIONS.clone(),
        );
        registry.register_collector(Box::new(pillion_core::process::ProcessCollector::default()));
        registry.register_collector(Box::new(crate::http::replay::KeptCollector));
        Metrics {
            retries,
            retries_skipped,
            faults,
            proxy_errors,
            tcp_open,
            tcp_close,
            tcp_read_bytes,
            tcp_write_bytes,
            destination_version,
            certificate_expiry,
            spans_sent,
            spans_dropped,
            registry,
            requests,
            responses,
            latency,
            connections,
            tls_handshake_failures,
            authorization_denials,
            control_plane_connected,
            destination_updates,
            destinations,
            series: RwLock::new(HashMap::new()),
            legs: RwLock::new(foldhash::HashMap::default()),
            unknown: Label::from(UNKNOWN_AUTHORITY),
        }
    }

    /// The label to count a request for `authority` under: itself while fewer than
    /// [`MAX_AUTHORITIES`] are tracked (or it already is), `unknown` otherwise.
    pub fn authority_label(&self, authority: &Label) -> Label {
        if authority.0.is_empty()
            || authority.0.len() > pillion_proto::names::MAX_AUTHORITY_LEN
            || *authority.0 == *UNKNOWN_AUTHORITY
        {
            return self.unknown.clone();
        }
        if read(&self.series).contains_key(&authority.0) {
            return authority.clone();
        }
        let mut series = write(&self.series);
        if series.len() >= MAX_AUTHORITIES && !series.contains_key(&authority.0) {
            return self.unknown.clone();
        }
        series.entry(authority.0.clone()).or_default();
        authority.clone()
    }

    /// The series of the leg `direction`, `authority`, `route`, `backend`, created (and noted
    /// under its authority, for expiry) on first use.
    pub fn leg(
        &self,
        direction: Direction,
        authority: &Label,
        route: &Label,
        backend: &Label,
    ) -> Arc<Leg> {
        let borrowed = LegKey {
            direction,
            authority: &authority.0,
            route: &route.0,
            backend: &backend.0,
        };
        if let Some(leg) = read(&self.legs).get(&borrowed as &dyn AsLegKey) {
            return leg.clone();
        }
        let key = RequestLabels {
            direction,
            authority: authority.clone(),
            route: route.clone(),
            backend: backend.clone(),
        };
        let counted = self.authority_label(authority);
        let requests = RequestLabels {
            authority: counted.clone(),
            ..key.clone()
        };
        let latency = LatencyLabels {
            direction,
            authority: counted.clone(),
            backend: backend.clone(),
        };
        self.track(&counted, |e| {
            e.requests.push(requests.clone());
            e.latency.push(latency.clone());
        });
        let leg = Arc::new(Leg {
            authority: counted.clone(),
            requests: self.requests.get_or_create_owned(&requests),
            latency: self.latency.get_or_create_owned(&latency),
            responses: std::sync::Mutex::new(Vec::new()),
        });
        // Requests for made-up authorities all count as `unknown`: not kept, so that they
        // cannot grow this map.
        if *counted.0 != *UNKNOWN_AUTHORITY {
            write(&self.legs).insert(key, leg.clone());
        }
        leg
    }

    /// The counter of a response series, created (and noted for expiry) if new.
    fn response_counter(&self, labels: &ResponseLabels) -> Counter {
        if let Some(c) = self.responses.get(labels) {
            return c.clone();
        }
        self.track(&labels.authority, |e| e.responses.push(labels.clone()));
        self.responses.get_or_create_owned(labels)
    }

    /// Counts one response (for gRPC, once its trailers say its status) through the family's
    /// own lookup: [`Leg::count_response`] is the per-request path.
    pub fn count_response(&self, resp: ResponseLabels) {
        self.response_counter(&resp).inc();
    }

    /// Notes a new series of `authority`, so that it can be dropped when idle.
    fn track(&self, authority: &Label, note: impl FnOnce(&mut AuthoritySeries)) {
        if *authority.0 != *UNKNOWN_AUTHORITY {
            let mut series = write(&self.series);
            note(series.entry(authority.0.clone()).or_default());
        }
    }

    /// Drops the series of authorities that have had no request for `idle` (run periodically).
    pub fn expire_idle_series(&self, idle: std::time::Duration) {
        let now = std::time::Instant::now();
        let mut series = write(&self.series);
        let before = series.len();
        series.retain(|authority, s| {
            let total: u64 = s
                .requests
                .iter()
                .filter_map(|l| self.requests.get(l).map(|c| c.get()))
                .sum();
            if total != s.last_total || s.still_since.is_none() {
                s.last_total = total;
                s.still_since = Some(now);
                return true;
            }
            if s.still_since.is_some_and(|t| now.duration_since(t) < idle) {
                return true;
            }
            tracing::debug!(%authority, "idle metric series dropped");
            for l in &s.requests {
                self.requests.remove(l);
            }
            for l in &s.responses {
                self.responses.remove(l);
            }
            for l in &s.latency {
                self.latency.remove(l);
            }
            false
        });
        if series.len() != before {
            // The legs' handles point at series just dropped: look them up again.
            write(&self.legs).clear();
        }
    }

    /// The Prometheus text format 0.0.4, which `promtool check metrics` reads.
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

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(m: &Metrics, req: RequestLabels, resp: ResponseLabels, _: LatencyLabels) {
        m.leg(req.direction, &req.authority, &req.route, &req.backend)
            .count_request(0.001);
        m.count_response(resp);
    }

    fn labels(authority: &str) -> (RequestLabels, ResponseLabels, LatencyLabels) {
        let (direction, authority, route, backend) = (
            Direction::inbound,
            Label::from(authority),
            Label::default(),
            Label::default(),
        );
        (
            RequestLabels {
                direction,
                authority: authority.clone(),
                route: route.clone(),
                backend: backend.clone(),
            },
            ResponseLabels {
                direction,
                authority: authority.clone(),
                route,
                backend: backend.clone(),
                status_code: 200,
                grpc_status: None,
                error: None,
                tls: false,
                peer_identity: Label::default(),
                classification: Classification::success,
            },
            LatencyLabels {
                direction,
                authority,
                backend,
            },
        )
    }

    #[test]
    fn authorities_are_bounded_and_idle_series_expire() {
        let m = Metrics::new();
        for i in 0..MAX_AUTHORITIES + 500 {
            let label = m.authority_label(&Label::from(format!("host-{i}").as_str()));
            let (a, b, c) = labels(&label.0);
            count(&m, a, b, c);
        }
        let text = m.encode();
        let series = text
            .lines()
            .filter(|l| l.starts_with("pillion_requests_total{"))
            .count();
        assert_eq!(
            series,
            MAX_AUTHORITIES + 1,
            "the rest are counted as unknown"
        );
        assert!(text.contains("authority=\"unknown\""));
        assert_eq!(
            m.authority_label(&Label::from("x".repeat(300).as_str()))
                .0
                .as_ref(),
            UNKNOWN_AUTHORITY
        );

        // Idle: the first sweep notes the counts, the next (after `idle`) drops what did not move.
        let (a, b, c) = labels("host-0");
        m.expire_idle_series(std::time::Duration::ZERO);
        count(&m, a, b, c);
        m.expire_idle_series(std::time::Duration::ZERO);
        m.expire_idle_series(std::time::Duration::ZERO);
        let text = m.encode();
        assert!(!text.contains("host-1\""), "idle series dropped");
        // Room for new authorities again.
        assert_eq!(m.authority_label(&Label::from("fresh")).0.as_ref(), "fresh");
    }

    #[test]
    fn a_leg_is_found_by_its_labels_borrowed() {
        use std::hash::BuildHasher as _;
        let hasher = foldhash::fast::RandomState::default();
        let labels = RequestLabels {
            direction: Direction::outbound,
            authority: Label::from("web.default.svc.cluster.local:80"),
            route: Label::from("canary"),
            backend: Label::default(),
        };
        let borrowed = LegKey {
            direction: Direction::outbound,
            authority: "web.default.svc.cluster.local:80",
            route: "canary",
            backend: "",
        };
        // The map hashes stored keys as `RequestLabels` and looks them up as `dyn AsLegKey`.
        assert_eq!(
            hasher.hash_one(&labels),
            hasher.hash_one(&borrowed as &dyn AsLegKey)
        );
        let mut map = foldhash::HashMap::default();
        map.insert(labels.clone(), 1);
        assert_eq!(map.get(&borrowed as &dyn AsLegKey), Some(&1));
        let other = LegKey {
            route: "stable",
            ..borrowed
        };
        assert_eq!(map.get(&other as &dyn AsLegKey), None);
    }

    #[test]
    fn legs_count_into_the_families_and_are_looked_up_again_after_expiry() {
        let m = Metrics::new();
        let (req, resp, lat) = labels("web");
        let leg = |m: &Metrics| {
            // Fresh label values each time, equal in content: the same leg.
            m.leg(
                Direction::inbound,
                &Label::from("web"),
                &Label::default(),
                &Label::default(),
            )
        };
        let first = leg(&m);
        assert!(Arc::ptr_eq(&first, &leg(&m)));
        for status in [200, 200, 503] {
            leg(&m).count_request(0.002);
            leg(&m).count_response(
                &m,
                ResponseLabels {
                    status_code: status,
                    ..resp.clone()
                },
            );
        }
        assert_eq!(m.requests.get(&req).map(|c| c.get()), Some(3));
        assert_eq!(m.responses.get(&resp).map(|c| c.get()), Some(2));
        let failed = ResponseLabels {
            status_code: 503,
            ..resp.clone()
        };
        assert_eq!(m.responses.get(&failed).map(|c| c.get()), Some(1));
        assert!(m.latency.get(&lat).is_some());

        // More kinds of response than a leg keeps handles for: all still counted.
        for status in 300..340 {
            leg(&m).count_response(
                &m,
                ResponseLabels {
                    status_code: status,
                    ..resp.clone()
                },
            );
        }
        let text = m.encode();
        for status in 300..340 {
            assert!(
                text.contains(&format!("status_code=\"{status}\"")),
                "{status}"
            );
        }

        // Idle, the series are dropped; the next request creates them again.
        m.expire_idle_series(std::time::Duration::ZERO);
        m.expire_idle_series(std::time::Duration::ZERO);
        assert!(m.requests.get(&req).is_none());
        leg(&m).count_request(0.001);
        assert_eq!(m.requests.get(&req).map(|c| c.get()), Some(1));
        assert!(!Arc::ptr_eq(&first, &leg(&m)));
    }

    #[test]
    fn legs_of_authorities_past_the_bound_count_as_unknown_and_are_not_kept() {
        let m = Metrics::new();
        for i in 0..MAX_AUTHORITIES {
            m.authority_label(&Label::from(format!("host-{i}").as_str()));
        }
        let before = read(&m.legs).len();
        let leg = m.leg(
            Direction::outbound,
            &Label::from("one-too-many"),
            &Label::default(),
            &Label::default(),
        );
        assert_eq!(&*leg.authority.0, UNKNOWN_AUTHORITY);
        leg.count_request(0.001);
        assert_eq!(read(&m.legs).len(), before);
        assert!(m.encode().contains("authority=\"unknown\""));
    }

    #[test]
    fn docs_list_every_family() {
        let m = Metrics::new();
        let labels = LatencyLabels {
            direction: Direction::outbound,
            authority: Label::from("a"),
            backend: Label::from("b"),
        };
        m.latency.get_or_create(&labels).observe(0.1);
        // Families without samples are not printed: give each one.
        let (direction, authority, route, backend) = (
            Direction::outbound,
            Label::from("a"),
            Label::from("r"),
            Label::from("b"),
        );
        m.requests
            .get_or_create(&RequestLabels {
                direction,
                authority: authority.clone(),
                route: route.clone(),
                backend: backend.clone(),
            })
            .inc();
        m.responses
            .get_or_create(&ResponseLabels {
                direction,
                authority,
                route,
                backend,
                status_code: 200,
                grpc_status: None,
                error: None,
                tls: false,
                peer_identity: Label::default(),
                classification: Classification::success,
            })
            .inc();
        m.tls_handshake_failures
            .get_or_create(&DirectionLabel { direction })
            .inc();
        m.authorization_denials
            .get_or_create(&DenialLabels {
                authorization: Label::from("default"),
            })
            .inc();
        m.connections
            .get_or_create(&ConnLabels {
                direction,
                protocol: Label::from("h2"),
            })
            .inc();
        m.proxy_errors
            .get_or_create(&ErrorLabels {
                direction,
                reason: Label::from("timeout"),
            })
            .inc();
        for family in [
            &m.tcp_open,
            &m.tcp_close,
            &m.tcp_read_bytes,
            &m.tcp_write_bytes,
        ] {
            family.get_or_create(&DirectionLabel { direction }).inc();
        }
        m.destination_version
            .get_or_create(&VersionLabels {
                authority: Label::from("a"),
                version: Label::from("v"),
            })
            .set(1);
        let retry = RetryLabels {
            authority: Label::from("a"),
            route: Label::from("r"),
            reason: Label::from("503"),
        };
        m.retries.get_or_create(&retry).inc();
        m.retries_skipped.get_or_create(&retry).inc();
        m.faults
            .get_or_create(&FaultLabels {
                authority: Label::from("a"),
                route: Label::from("r"),
                fault: Label::from("abort"),
            })
            .inc();
        let text = m.encode();
        let all = include_str!("../../../docs/metrics.md");
        let docs = &all[..all.find("## Control-plane metrics").unwrap_or(all.len())];
        let problems = pillion_core::metrics_doc::disagreements(&text, docs);
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
