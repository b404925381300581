//! The proxies as their reports describe them: who is connected, where their admin port
//! answers, which version of each destination they run, and the outbound figures of every
//! backend added up over all of them (what the canary controller measures a candidate by).
//!
//! Proxies report cumulative counters; the fleet adds each report's increase to running totals
//! per backend, so a proxy that restarts (its counters start again from zero) or goes away
//! takes nothing back from the totals.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pillion_proto::names::CLUSTER_DOMAIN;
use pillion_proto::report::v1 as pb;

/// A proxy that has not reported for this long (and three of its intervals) is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Fleet {
    inner: Mutex<Inner>,
    /// The report interval proxies are asked for, in ms (0: their own setting). The canary
    /// controller shortens it while a release runs, so a check sees fresh figures.
    wanted_ms: AtomicU64,
}

#[derive(Default)]
struct Inner {
    proxies: HashMap<String, Proxy>,
    /// Backend (`name.namespace.svc.cluster.local:port`) → figures since the control plane
    /// started.
    totals: HashMap<String, Totals>,
}

struct Proxy {
    workload: String,
    namespace: String,
    admin: String,
    destinations: Vec<(String, String)>,
    legs: HashMap<(String, String), pb::Leg>,
    seen: Instant,
    interval: Duration,
}

/// Responses, failures and the latency histogram of a backend, added up.
pub use pillion_core::golden::Totals;

/// One connected proxy, for `/proxies` and `pillion diff`.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyInfo {
    pub id: String,
    pub workload: String,
    pub namespace: String,
    pub admin_address: String,
    pub last_report_ms_ago: u64,
    /// Destination → version in force.
    pub destinations: std::collections::BTreeMap<String, String>,
}

impl Fleet {
    /// Takes one report. `peer`: where it came from, which fills in an admin address whose IP
    /// the proxy did not know (it listens on all addresses).
    pub fn report(&self, report: pb::ProxyReport, peer: Option<SocketAddr>, interval: Duration) {
        let admin = match (report.admin_address.parse::<SocketAddr>(), peer) {
            (Ok(a), Some(p)) if a.ip().is_unspecified() => {
                SocketAddr::new(p.ip(), a.port()).to_string()
            }
            _ => report.admin_address.clone(),
        };
        let mut inner = self.lock();
        let Inner { proxies, totals } = &mut *inner;
        let proxy = proxies
            .entry(report.proxy_id.clone())
            .or_insert_with(|| Proxy {
                workload: String::new(),
                namespace: String::new(),
                admin: String::new(),
                destinations: Vec::new(),
                legs: HashMap::new(),
                seen: Instant::now(),
                interval,
            });
        proxy.workload = report.workload;
        proxy.namespace = report.namespace;
        proxy.admin = admin;
        proxy.seen = Instant::now();
        proxy.interval = interval;
        proxy.destinations = report
            .destinations
            .into_iter()
            .map(|d| (d.authority, d.version))
            .collect();
        let mut legs = HashMap::with_capacity(report.legs.len());
        for leg in report.legs {
            if leg.latency_bounds.len() != leg.latency_counts.len() {
                continue;
            }
            let key = (leg.authority.clone(), leg.backend.clone());
            let total = totals.entry(leg.backend.clone()).or_default();
            match proxy.legs.get(&key) {
                // Counters that went down started again (a restart, a forgotten destination).
                Some(before)
                    if leg.responses >= before.responses
                        && leg.failures >= before.failures
                        && leg.latency_bounds == before.latency_bounds
                        && leg
                            .latency_counts
                            .iter()
                            .zip(&before.latency_counts)
                            .all(|(a, b)| a >= b) =>
                {
                    let counts: Vec<u64> = leg
                        .latency_counts
                        .iter()
                        .zip(&before.latency_counts)
                        .map(|(a, b)| a - b)
                        .collect();
                    total.add(
                        leg.responses - before.responses,
                        leg.failures - before.failures,
                        &leg.latency_bounds,
                        &counts,
                    );
                }
                _ => total.add(
                    leg.responses,
                    leg.failures,
                    &leg.latency_bounds,
                    &leg.latency_counts,
                ),
            }
            legs.insert(key, leg);
        }
        proxy.legs = legs;
        proxies.retain(|_, p| p.seen.elapsed() < FORGET_AFTER.max(p.interval * 3));
    }

    /// The report interval to ask proxies for (`None`: their own).
    pub fn want_interval(&self, interval: Option<Duration>) {
        let ms = interval.map_or(0, |i| i.as_millis().max(1) as u64);
        self.wanted_ms.store(ms, Ordering::Relaxed);
    }

    pub fn wanted_interval(&self) -> Option<Duration> {
        match self.wanted_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// The running totals of every port of a Service (`name.namespace`'s backends).
    pub fn service_totals(&self, namespace: &str, name: &str) -> Totals {
        let prefix = format!("{name}.{namespace}.svc.{CLUSTER_DOMAIN}:");
        let inner = self.lock();
        let mut out = Totals::default();
        for (backend, t) in &inner.totals {
            if backend.starts_with(&prefix) {
                out.add(t.responses, t.failures, &t.bounds, &t.counts);
            }
        }
        out
    }

    /// The proxies that reported lately.
    pub fn proxies(&self) -> Vec<ProxyInfo> {
        let inner = self.lock();
        let mut out: Vec<ProxyInfo> = inner
            .proxies
            .iter()
            .filter(|(_, p)| p.seen.elapsed() < FORGET_AFTER.max(p.interval * 3))
            .map(|(id, p)| ProxyInfo {
                id: id.clone(),
                workload: p.workload.clone(),
                namespace: p.namespace.clone(),
                admin_address: p.admin.clone(),
                last_report_ms_ago: p.seen.elapsed().as_millis() as u64,
                destinations: p.destinations.iter().cloned().collect(),
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg(backend: &str, responses: u64, failures: u64, counts: [u64; 3]) -> pb::Leg {
        pb::Leg {
            authority: "web.default.svc.cluster.local:80".into(),
            backend: backend.into(),
            responses,
            failures,
            latency_bounds: vec![0.01, 0.1, f64::INFINITY],
            latency_counts: counts.to_vec(),
        }
    }

    fn report(id: &str, legs: Vec<pb::Leg>) -> pb::ProxyReport {
        pb::ProxyReport {
            proxy_id: id.into(),
            workload: "default/client".into(),
            namespace: "default".into(),
            admin_address: "0.0.0.0:4191".into(),
            destinations: vec![],
            legs,
        }
    }

    const V2: &str = "v2.default.svc.cluster.local:80";

    #[test]
    fn increases_add_up_across_proxies_and_restarts() {
        let fleet = Fleet::default();
        let i = Duration::from_secs(1);
        fleet.report(report("a", vec![leg(V2, 10, 1, [8, 10, 10])]), None, i);
        let start = fleet.service_totals("default", "v2");
        fleet.report(report("a", vec![leg(V2, 15, 2, [12, 15, 15])]), None, i);
        fleet.report(report("b", vec![leg(V2, 4, 4, [0, 2, 4])]), None, i);
        // `a` restarted: its counters start from zero again; the 3 count as new.
        fleet.report(report("a", vec![leg(V2, 3, 0, [3, 3, 3])]), None, i);
        let d = fleet.service_totals("default", "v2").since(&start);
        assert_eq!((d.responses, d.failures), (5 + 4 + 3, 1 + 4));
        assert_eq!(d.counts, vec![4 + 3, 5 + 2 + 3, 12], "b added 0, 2 and 4");
        assert_eq!(fleet.service_totals("default", "v1"), Totals::default());
        assert_eq!(fleet.proxies().len(), 2);
    }

    #[test]
    fn admin_address_takes_the_reporting_ip_when_unspecified() {
        let fleet = Fleet::default();
        let peer: SocketAddr = "10.1.2.3:55000".parse().unwrap();
        fleet.report(report("a", vec![]), Some(peer), Duration::from_secs(1));
        assert_eq!(fleet.proxies()[0].admin_address, "10.1.2.3:4191");
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let t = Totals {
            responses: 100,
            failures: 0,
            bounds: vec![0.01, 0.1, 1.0, f64::INFINITY],
            counts: vec![50, 90, 100, 100],
        };
        let p50 = t.latency_quantile(0.5).unwrap();
        assert!((p50 - 0.01).abs() < 1e-9, "{p50}");
        let p99 = t.latency_quantile(0.99).unwrap();
        assert!((p99 - 0.91).abs() < 1e-9, "{p99}");
        let slow = Totals {
            counts: vec![0, 0, 0, 10],
            ..t.clone()
        };
        assert_eq!(slow.latency_quantile(0.99), Some(1.0));
        assert_eq!(Totals::default().latency_quantile(0.99), None);
    }
}
