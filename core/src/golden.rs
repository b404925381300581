//! Golden signals read back from a proxy's `/metrics` text: per (direction, authority,
//! backend), the responses, the failures and the latency histogram. The proxy reports them to
//! the control plane (whose canary controller adds them up across the fleet), and `pillion
//! stat` / `pillion top` show them.

use std::collections::{BTreeMap, BTreeSet};

use crate::exposition;

/// Responses, failures and the latency histogram of one leg, cumulative (or, from
/// [`Totals::since`], over an interval).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub responses: u64,
    pub failures: u64,
    /// Upper bounds (seconds, the last +Inf) and cumulative counts.
    pub bounds: Vec<f64>,
    pub counts: Vec<u64>,
}

impl Totals {
    /// Adds another histogram's figures (bounds merged in order).
    pub fn add(&mut self, responses: u64, failures: u64, bounds: &[f64], counts: &[u64]) {
        self.responses += responses;
        self.failures += failures;
        for (b, c) in bounds.iter().zip(counts) {
            match self.bounds.iter().position(|x| x == b) {
                Some(i) => self.counts[i] += c,
                None => {
                    let at = self.bounds.partition_point(|x| x < b);
                    self.bounds.insert(at, *b);
                    self.counts.insert(at, *c);
                }
            }
        }
    }

    /// What happened between `earlier` and `self` (both from the same running totals).
    pub fn since(&self, earlier: &Totals) -> Totals {
        let mut out = Totals {
            responses: self.responses.saturating_sub(earlier.responses),
            failures: self.failures.saturating_sub(earlier.failures),
            bounds: self.bounds.clone(),
            counts: self.counts.clone(),
        };
        for (b, c) in earlier.bounds.iter().zip(&earlier.counts) {
            if let Some(i) = out.bounds.iter().position(|x| x == b) {
                out.counts[i] = out.counts[i].saturating_sub(*c);
            }
        }
        out
    }

    /// The share of responses that did not fail; `None` without responses.
    pub fn success_rate(&self) -> Option<f64> {
        (self.responses > 0).then(|| 1.0 - self.failures as f64 / self.responses as f64)
    }

    /// The `q` quantile (0..1) of the latency in seconds, interpolated within its bucket as
    /// Prometheus' `histogram_quantile` does; `None` without responses.
    pub fn latency_quantile(&self, q: f64) -> Option<f64> {
        let total = *self.counts.last()?;
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut lower = (0.0, 0u64);
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if (*c as f64) >= rank {
                if b.is_infinite() {
                    // Past the last finite bound: that bound is all that can be said.
                    return Some(lower.0);
                }
                let in_bucket = (*c - lower.1) as f64;
                let frac = if in_bucket > 0.0 {
                    (rank - lower.1 as f64) / in_bucket
                } else {
                    1.0
                };
                return Some(lower.0 + (b - lower.0) * frac);
            }
            lower = (*b, *c);
        }
        None
    }
}

/// Which traffic a leg is: `outbound` or `inbound`, the authority asked for, and the backend
/// Service that answered (`name.namespace.svc.cluster.local:port`; empty for inbound).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LegKey {
    pub direction: String,
    pub authority: String,
    pub backend: String,
}

/// One leg's figures, the routes (`namespace/name` of the split or route rule) that sent
/// requests along it, and how the hop was secured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Leg {
    pub totals: Totals,
    pub routes: BTreeSet<String>,
    /// Responses whose hop between proxies was mTLS.
    pub mtls_responses: u64,
    /// The peers' SPIFFE IDs (outbound: the endpoints' proxies; inbound: the clients).
    pub peer_identities: BTreeSet<String>,
}

/// Every leg in a proxy's metrics text (`pillion_responses_total` and
/// `pillion_response_latency_seconds`).
pub fn legs(text: &str) -> BTreeMap<LegKey, Leg> {
    let mut legs: BTreeMap<LegKey, Leg> = BTreeMap::new();
    let key = |s: &exposition::Sample| LegKey {
        direction: s.label("direction").to_string(),
        authority: s.label("authority").to_string(),
        backend: s.label("backend").to_string(),
    };
    for s in exposition::samples(text, "pillion_responses_total") {
        let leg = legs.entry(key(&s)).or_default();
        let n = s.value as u64;
        leg.totals.responses += n;
        if s.label("classification") == "failure" {
            leg.totals.failures += n;
        }
        if !s.label("route").is_empty() {
            leg.routes.insert(s.label("route").to_string());
        }
        if s.label("tls") == "true" {
            leg.mtls_responses += n;
        }
        if !s.label("peer_identity").is_empty() {
            leg.peer_identities
                .insert(s.label("peer_identity").to_string());
        }
    }
    for s in exposition::samples(text, "pillion_response_latency_seconds_bucket") {
        let le = match s.label("le") {
            "+Inf" => f64::INFINITY,
            v => match v.parse::<f64>() {
                Ok(b) => b,
                Err(_) => continue,
            },
        };
        let leg = legs.entry(key(&s)).or_default();
        leg.totals.add(0, 0, &[le], &[s.value as u64]);
    }
    legs
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE pillion_responses_total counter
pillion_responses_total{direction="outbound",authority="web",route="default/web",backend="v1:80",status_code="200",tls="true",peer_identity="spiffe://td/ns/default/sa/web",classification="success"} 90
pillion_responses_total{direction="outbound",authority="web",route="default/web",backend="v1:80",status_code="503",classification="failure"} 10
pillion_responses_total{direction="inbound",authority="web",route="",backend="",status_code="200",classification="success"} 5
pillion_response_latency_seconds_bucket{direction="outbound",authority="web",backend="v1:80",le="0.01"} 50
pillion_response_latency_seconds_bucket{direction="outbound",authority="web",backend="v1:80",le="0.1"} 100
pillion_response_latency_seconds_bucket{direction="outbound",authority="web",backend="v1:80",le="+Inf"} 100
"#;

    #[test]
    fn legs_add_up_responses_failures_routes_and_latency() {
        let legs = legs(TEXT);
        assert_eq!(legs.len(), 2);
        let out = &legs[&LegKey {
            direction: "outbound".into(),
            authority: "web".into(),
            backend: "v1:80".into(),
        }];
        assert_eq!((out.totals.responses, out.totals.failures), (100, 10));
        assert_eq!(out.totals.success_rate(), Some(0.9));
        assert_eq!(out.routes.iter().collect::<Vec<_>>(), ["default/web"]);
        assert_eq!(out.mtls_responses, 90);
        assert_eq!(
            out.peer_identities.iter().collect::<Vec<_>>(),
            ["spiffe://td/ns/default/sa/web"]
        );
        // Half the responses under 10 ms: the median is the bucket's top.
        assert_eq!(out.totals.latency_quantile(0.5), Some(0.01));
        let p99 = out.totals.latency_quantile(0.99).unwrap();
        assert!((p99 - 0.0982).abs() < 1e-9, "{p99}");
    }

    #[test]
    fn since_is_the_increase() {
        let before = legs(TEXT);
        let after = legs(
            &TEXT
                .replace("} 90", "} 190")
                .replace("le=\"+Inf\"} 100", "le=\"+Inf\"} 200"),
        );
        let key = before
            .keys()
            .find(|k| k.direction == "outbound")
            .unwrap()
            .clone();
        let d = after[&key].totals.since(&before[&key].totals);
        assert_eq!(d.responses, 100);
        assert_eq!(d.counts.last(), Some(&100));
        assert_eq!(Totals::default().success_rate(), None);
    }
}
