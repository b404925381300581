//! Where a check's figures come from: the proxies' own reports (the default, nothing else to
//! run), or a Prometheus server that scrapes the proxies (`PILLION_PROMETHEUS_URL`), asked with
//! PromQL over its HTTP API. Either way only the candidate's leg is measured: outbound responses
//! whose backend is one of the candidate Service's ports.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pillion_proto::names::CLUSTER_DOMAIN;

use super::Analysis;
use crate::config::canary::Plan;
use crate::fleet::{Fleet, Totals};

/// A Prometheus query that takes longer is a failed measurement.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

pub enum Source {
    Proxies(Arc<Fleet>),
    Prometheus(Box<Prometheus>),
}

/// Where a check's window began.
pub struct Window {
    totals: Totals,
    started: Instant,
}

impl Source {
    /// Opens a window over the candidate's leg, from now.
    pub fn open(&self, plan: &Plan) -> Window {
        Window {
            totals: match self {
                Source::Proxies(fleet) => fleet.service_totals(&plan.namespace, &plan.candidate),
                Source::Prometheus(_) => Totals::default(),
            },
            started: Instant::now(),
        }
    }

    /// The candidate's figures since the window opened.
    pub async fn measure(&self, plan: &Plan, window: &Window) -> Result<Analysis, String> {
        match self {
            Source::Proxies(fleet) => {
                let d = fleet
                    .service_totals(&plan.namespace, &plan.candidate)
                    .since(&window.totals);
                Ok(Analysis::new(
                    d.responses,
                    d.failures,
                    d.latency_quantile(0.99)
                        .map(std::time::Duration::from_secs_f64),
                ))
            }
            Source::Prometheus(p) => p.measure(plan, window.started.elapsed()).await,
        }
    }
}

pub struct Prometheus {
    base: String,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Prometheus {
    /// `url`: the server's base URL (`http://prometheus:9090`).
    pub fn new(url: &str) -> Result<Self, String> {
        let base = url.trim_end_matches('/').to_string();
        let uri: http::Uri = format!("{base}/api/v1/query")
            .parse()
            .map_err(|e| format!("PILLION_PROMETHEUS_URL `{url}`: {e}"))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(format!(
                "PILLION_PROMETHEUS_URL `{url}`: expected http://host:port"
            ));
        }
        Ok(Prometheus {
            base,
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    async fn measure(&self, plan: &Plan, window: Duration) -> Result<Analysis, String> {
        // Whole seconds, at least one: PromQL ranges are durations like `30s`.
        let range = format!("{}s", window.as_secs_f64().ceil().max(1.0) as u64);
        let backend = format!("{}.{}.svc.{CLUSTER_DOMAIN}", plan.candidate, plan.namespace)
            .replace('.', "\\\\.");
        let selector = format!("direction=\"outbound\",backend=~\"{backend}:[0-9]+\"");
        let requests = self
            .scalar(&format!(
                "sum(increase(pillion_responses_total{{{selector}}}[{range}]))"
            ))
            .await?
            .unwrap_or(0.0);
        let failures = self
            .scalar(&format!(
                "sum(increase(pillion_responses_total{{{selector},classification=\"failure\"}}[{range}]))"
            ))
            .await?
            .unwrap_or(0.0);
        let p99 = self
            .scalar(&format!(
                "histogram_quantile(0.99, sum by (le) (increase(pillion_response_latency_seconds_bucket{{{selector}}}[{range}])))"
            ))
            .await?;
        Ok(Analysis::new(
            requests.round() as u64,
            failures.round() as u64,
            p99.filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64),
        ))
    }

    /// The single value of an instant query; `None` when it has no series or is NaN.
    async fn scalar(&self, query: &str) -> Result<Option<f64>, String> {
        let uri = format!("{}/api/v1/query?query={}", self.base, percent_encode(query));
        let request = http::Request::get(&uri)
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let fail = |what: String| format!("Prometheus at {}: {what}", self.base);
        let response = tokio::time::timeout(QUERY_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| fail("no answer in 10s".into()))?
            .map_err(|e| fail(e.to_string()))?;
        let status = response.status();
        let body = tokio::time::timeout(QUERY_TIMEOUT, response.into_body().collect())
            .await
            .map_err(|_| fail("no answer in 10s".into()))?
            .map_err(|e| fail(e.to_string()))?
            .to_bytes();
        let json: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| fail(format!("{status}, not JSON: {e}")))?;
        if json["status"] != "success" {
            return Err(fail(format!(
                "{status}: {}",
                json["error"].as_str().unwrap_or("query failed")
            )));
        }
        let result = json["data"]["result"]
            .as_array()
            .ok_or_else(|| fail("no data.result in the answer".into()))?;
        let Some(first) = result.first() else {
            return Ok(None);
        };
        let value = first["value"][1]
            .as_str()
            .ok_or_else(|| fail("a result without a value".into()))?;
        match value.parse::<f64>() {
            Ok(v) if v.is_nan() => Ok(None),
            Ok(v) => Ok(Some(v)),
            Err(_) => Err(fail(format!("`{value}` is not a number"))),
        }
    }
}

/// Percent-encoding for a query parameter (RFC 3986 unreserved characters kept).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            percent_encode("sum(a{b=\"c\"}[5s])"),
            "sum%28a%7Bb%3D%22c%22%7D%5B5s%5D%29"
        );
    }

    #[test]
    fn only_http_urls_are_taken() {
        assert!(Prometheus::new("http://127.0.0.1:9090/").is_ok());
        assert!(Prometheus::new("https://prom:9090").is_err());
        assert!(Prometheus::new("prom:9090").is_err());
    }
}
