//! Request metrics, served on the admin port in the Prometheus text format (0.0.4).
//!
//! Label values are `Arc<str>` shared with the routing snapshot, so counting a request clones
//! pointers rather than strings. `docs/metrics.md` lists every family; a test keeps them in step.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;

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

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResponseLabels {
    pub direction: Direction,
    pub authority: Label,
    pub route: Label,
    pub backend: Label,
    pub status_code: u16,
    /// The `grpc-status` of the response headers (trailers-only answers), empty otherwise.
    pub grpc_status: Label,
    /// The proxy's own error reason, empty when the answer came from the application.
    pub error: Label,
    /// The hop between proxies was mTLS.
    pub tls: bool,
    /// The peer's SPIFFE ID (inbound: the client; outbound: the endpoint's proxy), or empty.
    pub peer_identity: Label,
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

type HistogramFamily = Family<LatencyLabels, Histogram, fn() -> Histogram>;

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
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
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
        Metrics {
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

#[cfg(test)]
mod tests {
    use super::*;

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
                grpc_status: Label::default(),
                error: Label::default(),
                tls: false,
                peer_identity: Label::default(),
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
        let text = m.encode();
        let docs = include_str!("../../docs/metrics.md");
        let mut families = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                let name = if kind == "counter" && !name.ends_with("_total") {
                    format!("{name}_total")
                } else {
                    name.to_string()
                };
                assert!(
                    docs.contains(&format!("`{name}`")),
                    "{name} is missing from docs/metrics.md"
                );
                families.push(name);
            }
        }
        for line in docs.lines().filter(|l| l.starts_with("| `pillion_")) {
            let name = line.split('`').nth(1).unwrap();
            assert!(
                families.iter().any(|f| f == name),
                "docs/metrics.md lists {name}, which the proxy does not have"
            );
        }
    }
}
