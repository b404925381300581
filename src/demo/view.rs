//! What the demo shows: per service and version, the configured weight next to the observed
//! share, the rate, success rate and latency, whether the hop was mTLS; the canary's progress;
//! and the latest trace. Read the way an operator would read a real mesh: the client proxy's
//! `/metrics` (as `pillion stat` does), the control plane's `/resolve` and `/canaries`, and
//! the span collector.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use pillion_core::golden::{self, LegKey, Totals};
use serde::Serialize;
use serde_json::Value;

use super::collector::{Collector, Span};
use super::mesh::{SERVICES, VERSIONS};
use super::traffic::{Seen, Traffic};
use crate::cmd::http_json::{get, get_text};

/// Rates, shares and percentiles of the live view are over about this long.
const WINDOW: Duration = Duration::from_secs(5);
const TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub elapsed_seconds: f64,
    pub mtls: bool,
    pub config_dir: String,
    pub services: Vec<ServiceView>,
    pub spans_received: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_trace: Option<TraceView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    pub service: &'static str,
    pub protocol: &'static str,
    /// What decides the split: `TrafficSplit default/web-canary`, `Canary default/echo`.
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryView>,
    /// What the traffic loop saw (its own count of sent and failed requests).
    pub client: Seen,
    pub versions: Vec<VersionView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CanaryView {
    pub phase: String,
    /// The candidate's share, percent.
    pub weight: u64,
    pub message: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionView {
    pub version: &'static str,
    pub backend: String,
    /// The weight in force and its share of the rule's total.
    pub weight: u64,
    pub configured_share: f64,
    /// Share of the service's responses this version gave: over the view's window, and over
    /// the whole run.
    pub observed_share: Option<f64>,
    pub observed_share_total: Option<f64>,
    pub responses_total: u64,
    pub rps: f64,
    pub success_rate: Option<f64>,
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p99: Option<f64>,
    /// Every response of the run came over mTLS, and from which identity.
    pub mtls: bool,
    pub peer_identity: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceView {
    pub trace_id: String,
    pub hops: Vec<Hop>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hop {
    /// The proxy's service name (`localEndpoint`), the span's kind and name, how deep in the
    /// trace, how long.
    pub service: String,
    pub kind: String,
    pub name: String,
    pub depth: usize,
    pub duration_ms: f64,
}

/// Reads the figures every time it is asked, keeping the last few seconds for rates.
pub struct Sampler {
    pub cp_admin: String,
    pub client_admin: String,
    pub config_dir: String,
    pub mtls: bool,
    started: Instant,
    history: VecDeque<(Instant, BTreeMap<LegKey, golden::Leg>)>,
}

impl Sampler {
    pub fn new(cp_admin: String, client_admin: String, config_dir: String, mtls: bool) -> Self {
        Sampler {
            cp_admin,
            client_admin,
            config_dir,
            mtls,
            started: Instant::now(),
            history: VecDeque::new(),
        }
    }

    pub async fn sample(&mut self, traffic: &Traffic, collector: &Collector) -> Snapshot {
        let now = Instant::now();
        let legs = match get_text(&self.client_admin, "/metrics", TIMEOUT).await {
            Ok(text) => golden::legs(&text),
            Err(_) => self
                .history
                .back()
                .map(|(_, l)| l.clone())
                .unwrap_or_default(),
        };
        self.history.push_back((now, legs.clone()));
        while self.history.len() > 2 && now.duration_since(self.history[1].0) >= WINDOW {
            self.history.pop_front();
        }
        let (then, earlier) = &self.history[0];
        let window = now.duration_since(*then);
        // One read of the releases for all services.
        let canaries = get(&self.cp_admin, "/canaries", TIMEOUT)
            .await
            .unwrap_or(Value::Null);
        let mut services = Vec::new();
        for (service, _, protocol) in SERVICES {
            let resolved = get(
                &self.cp_admin,
                &format!(
                    "/resolve?authority={service}.default.svc.cluster.local:80&namespace=default"
                ),
                TIMEOUT,
            )
            .await
            .unwrap_or(Value::Null);
            let canary = canary_of(&canaries, service);
            let client = if protocol == "grpc" {
                traffic.grpc.seen()
            } else {
                traffic.http.seen()
            };
            services.push(ServiceView {
                service,
                protocol,
                source: resolved["source"].as_str().unwrap_or_default().to_string(),
                canary,
                client,
                versions: versions(service, &resolved, &legs, earlier, window),
            });
        }
        Snapshot {
            elapsed_seconds: self.started.elapsed().as_secs_f64(),
            mtls: self.mtls,
            config_dir: self.config_dir.clone(),
            services,
            spans_received: collector.spans(),
            latest_trace: collector.latest(2).map(trace_view),
        }
    }
}

/// The release of `service` in the control plane's `/canaries`, if one runs.
fn canary_of(canaries: &Value, service: &str) -> Option<CanaryView> {
    let c = canaries
        .as_array()?
        .iter()
        .find(|c| c["service"] == service)?;
    Some(CanaryView {
        phase: c["status"]["phase"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        weight: c["status"]["weight"].as_u64().unwrap_or_default(),
        message: c["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    })
}

/// Whether a leg of the client proxy's metrics is `service`'s traffic to `version`.
fn is_leg(key: &LegKey, service: &str, version: &str) -> bool {
    key.direction == "outbound"
        && key.authority.starts_with(&format!("{service}."))
        && key.backend.starts_with(&format!("{service}-{version}."))
}

fn sum<'a>(legs: impl Iterator<Item = &'a golden::Leg>) -> (Totals, u64, Option<String>) {
    let mut t = Totals::default();
    let mut mtls = 0;
    let mut identity = None;
    for leg in legs {
        let l = &leg.totals;
        t.add(l.responses, l.failures, &l.bounds, &l.counts);
        mtls += leg.mtls_responses;
        identity = identity.or_else(|| leg.peer_identities.iter().next().cloned());
    }
    (t, mtls, identity)
}

fn versions(
    service: &'static str,
    resolved: &Value,
    legs: &BTreeMap<LegKey, golden::Leg>,
    earlier: &BTreeMap<LegKey, golden::Leg>,
    window: Duration,
) -> Vec<VersionView> {
    // The catch-all rule (the last) carries the split; an A/B rule in front of it sends only
    // the requests it matches.
    let backends = resolved["rules"]
        .as_array()
        .and_then(|r| r.last())
        .and_then(|r| r["backends"].as_array())
        .cloned()
        .unwrap_or_default();
    let weight_of = |version: &str| {
        let name = format!("{service}-{version}");
        backends
            .iter()
            .filter(|b| {
                b["service"]
                    .as_str()
                    .is_some_and(|s| s == name || s.starts_with(&format!("{name}.")))
            })
            .map(|b| b["weight"].as_u64().unwrap_or_default())
            .sum::<u64>()
    };
    let weights: Vec<u64> = VERSIONS.iter().map(|v| weight_of(v)).collect();
    let all_weights: u64 = weights.iter().sum();
    let figures: Vec<_> = VERSIONS
        .iter()
        .map(|v| {
            let (total, mtls, identity) = sum(legs
                .iter()
                .filter(|(k, _)| is_leg(k, service, v))
                .map(|(_, l)| l));
            let (before, _, _) = sum(earlier
                .iter()
                .filter(|(k, _)| is_leg(k, service, v))
                .map(|(_, l)| l));
            (total.since(&before), total, mtls, identity)
        })
        .collect();
    let in_window: u64 = figures.iter().map(|f| f.0.responses).sum();
    let in_total: u64 = figures.iter().map(|f| f.1.responses).sum();
    let share = |n: u64, of: u64| (of > 0).then(|| n as f64 / of as f64);
    let secs = window.as_secs_f64().max(1e-3);
    VERSIONS
        .iter()
        .zip(weights)
        .zip(figures)
        .map(
            |((version, weight), (win, total, mtls, identity))| VersionView {
                version,
                backend: format!("{service}-{version}"),
                weight,
                configured_share: share(weight, all_weights).unwrap_or_default(),
                observed_share: share(win.responses, in_window),
                observed_share_total: share(total.responses, in_total),
                responses_total: total.responses,
                rps: win.responses as f64 / secs,
                success_rate: win.success_rate(),
                latency_ms_p50: win.latency_quantile(0.5).map(|s| s * 1e3),
                latency_ms_p99: win.latency_quantile(0.99).map(|s| s * 1e3),
                mtls: total.responses > 0 && mtls == total.responses,
                peer_identity: identity,
            },
        )
        .collect()
}

fn trace_view(spans: Vec<Span>) -> TraceView {
    let depth_of = |span: &Span| {
        let mut depth = 0;
        let mut parent = span.parent_id.clone();
        while let Some(p) = parent {
            depth += 1;
            parent = spans
                .iter()
                .find(|s| s.id == p)
                .and_then(|s| s.parent_id.clone());
            if depth > spans.len() {
                break;
            }
        }
        depth
    };
    TraceView {
        trace_id: spans
            .first()
            .map(|s| s.trace_id.clone())
            .unwrap_or_default(),
        hops: spans
            .iter()
            .map(|s| Hop {
                service: s
                    .local_endpoint
                    .as_ref()
                    .and_then(|e| e.service_name.clone())
                    .unwrap_or_default(),
                kind: s.kind.clone().unwrap_or_default(),
                name: s.name.clone().unwrap_or_default(),
                depth: depth_of(s),
                duration_ms: s.duration.unwrap_or_default() as f64 / 1e3,
            })
            .collect(),
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{:.0}%", s * 100.0))
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |m| format!("{m:.1}ms"))
}

/// The full screen of the live view.
pub fn screen(s: &Snapshot, header: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{header}");
    let _ = writeln!(
        out,
        "running {:.0}s; mTLS between proxies: {}; Ctrl-C stops everything\n",
        s.elapsed_seconds,
        if s.mtls { "on" } else { "off (--no-mtls)" }
    );
    for svc in &s.services {
        let what = match &svc.canary {
            Some(c) => format!(
                "Canary: {} with {}% on {}-v2 ({})",
                c.phase, c.weight, svc.service, c.message
            ),
            None => svc.source.clone(),
        };
        let _ = writeln!(
            out,
            "{} ({}) <- {what}",
            svc.service,
            svc.protocol.to_uppercase()
        );
        let _ = writeln!(
            out,
            "  {:<8} {:>6} {:>6} {:<10} {:>7} {:>8} {:>8} {:>8}  mTLS",
            "VERSION", "WEIGHT", "SHARE", "", "RPS", "SUCCESS", "P50", "P99"
        );
        for v in &svc.versions {
            let observed = v.observed_share.unwrap_or_default();
            let bar = "#".repeat((observed * 10.0).round() as usize);
            let _ = writeln!(
                out,
                "  {:<8} {:>6} {:>6} {:<10} {:>7.1} {:>8} {:>8} {:>8}  {}",
                v.version,
                format!("{:.0}%", v.configured_share * 100.0),
                pct(v.observed_share),
                bar,
                v.rps,
                v.success_rate
                    .map_or("-".into(), |r| format!("{:.2}%", r * 100.0)),
                ms(v.latency_ms_p50),
                ms(v.latency_ms_p99),
                match (&v.peer_identity, v.mtls) {
                    (Some(id), true) => format!("yes, {id}"),
                    _ if v.responses_total == 0 => "-".into(),
                    _ => "no".into(),
                }
            );
        }
        let _ = writeln!(
            out,
            "  client: {} sent, {} failed{}\n",
            svc.client.sent,
            svc.client.failed,
            svc.client
                .last_error
                .as_deref()
                .map_or(String::new(), |e| format!(" (last: {e})"))
        );
    }
    match &s.latest_trace {
        Some(t) => {
            let _ = writeln!(
                out,
                "latest trace {} ({} spans received in all):",
                t.trace_id, s.spans_received
            );
            for h in &t.hops {
                let _ = writeln!(
                    out,
                    "  {}{:<6} {:<24} {:<40} {:>8.2}ms",
                    "  ".repeat(h.depth),
                    h.kind,
                    h.service,
                    h.name,
                    h.duration_ms
                );
            }
        }
        None => {
            let _ = writeln!(
                out,
                "no complete trace yet ({} spans received)",
                s.spans_received
            );
        }
    }
    let _ = writeln!(
        out,
        "\nEdit a weight and save:  {}/traffic-split.yaml\nThe echo release:        {}/canary.yaml",
        s.config_dir, s.config_dir
    );
    out
}

/// One plain line per service, for logs and pipes.
pub fn lines(s: &Snapshot) -> String {
    let mut out = String::new();
    for svc in &s.services {
        let _ = write!(out, "[{:>4.0}s] {:<4}", s.elapsed_seconds, svc.service);
        for v in &svc.versions {
            let _ = write!(
                out,
                "  {} weight {:.0}% share {} {:.1}/s ok {} p99 {}{}",
                v.version,
                v.configured_share * 100.0,
                pct(v.observed_share),
                v.rps,
                pct(v.success_rate),
                ms(v.latency_ms_p99),
                if v.mtls { " mTLS" } else { "" }
            );
        }
        if let Some(c) = &svc.canary {
            let _ = write!(out, "  canary {} {}%", c.phase, c.weight);
        }
        let _ = writeln!(
            out,
            "  ({} sent, {} failed)",
            svc.client.sent, svc.client.failed
        );
    }
    out
}
