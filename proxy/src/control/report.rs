//! Reports to the control plane, every few seconds: who this proxy is, the version of each
//! destination it runs, and what its outbound requests to each backend gave. The canary
//! controller measures a candidate from these figures without any other system, and
//! `pillion diff` finds proxies that missed an update.
//!
//! The figures are read back from the proxy's own `/metrics` text once per report rather than
//! counted a second time on the request path: a report costs one encode every few seconds, a
//! second set of counters would cost every request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pillion_core::golden;
use pillion_proto::report::v1 as pb;
use pillion_proto::report::v1::report_client::ReportClient;
use tonic::transport::Channel;

use crate::control::discovery::Destinations;
use crate::telemetry::metrics::Metrics;

/// The fastest a control plane may ask for reports.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// The slowest: a control plane that asks for more is not believed.
const MAX_INTERVAL: Duration = Duration::from_secs(60);

pub struct Reporter {
    pub channel: Channel,
    pub metrics: Arc<Metrics>,
    pub dests: Arc<Destinations>,
    pub workload: String,
    pub namespace: String,
    /// Where the admin port answers; an unspecified IP is filled in by the control plane with
    /// the address the report came from.
    pub admin: SocketAddr,
    pub interval: Duration,
}

impl Reporter {
    /// Reports at once, then every interval (the control plane may ask for another), until the
    /// process ends. A control plane without the Report service is asked again every minute.
    pub async fn run(self) {
        let mut client = ReportClient::new(self.channel.clone());
        let proxy_id = format!(
            "{}/{}-{:08x}",
            self.workload,
            std::process::id(),
            rand::random::<u32>()
        );
        let mut interval = self.interval;
        loop {
            let report = self.report(&proxy_id);
            match client.report(report).await {
                Ok(ack) => {
                    let asked = Duration::from_millis(ack.into_inner().interval_ms);
                    interval = if asked.is_zero() {
                        self.interval
                    } else {
                        asked.clamp(MIN_INTERVAL, MAX_INTERVAL)
                    };
                }
                Err(status) if status.code() == tonic::Code::Unimplemented => {
                    tracing::debug!("the control plane takes no reports");
                    interval = MAX_INTERVAL;
                }
                Err(status) => {
                    tracing::debug!(error = %status, "report not delivered");
                }
            }
            tokio::time::sleep(interval).await;
        }
    }

    fn report(&self, proxy_id: &str) -> pb::ProxyReport {
        pb::ProxyReport {
            proxy_id: proxy_id.to_string(),
            workload: self.workload.clone(),
            namespace: self.namespace.clone(),
            admin_address: self.admin.to_string(),
            destinations: self
                .dests
                .versions()
                .into_iter()
                .map(|(authority, version)| pb::DestinationVersion { authority, version })
                .collect(),
            legs: legs(&self.metrics.encode()),
        }
    }
}

/// The outbound figures of each (authority, backend) in a proxy's metrics text.
pub fn legs(text: &str) -> Vec<pb::Leg> {
    golden::legs(text)
        .into_iter()
        .filter(|(key, _)| key.direction == "outbound" && !key.backend.is_empty())
        .map(|(key, leg)| pb::Leg {
            authority: key.authority,
            backend: key.backend,
            responses: leg.totals.responses,
            failures: leg.totals.failures,
            latency_bounds: leg.totals.bounds,
            latency_counts: leg.totals.counts,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::{Classification, Direction, Label, ResponseLabels};

    #[test]
    fn legs_sum_responses_failures_and_latency_per_backend() {
        let m = Metrics::new();
        let count = |backend: &str, status: u16, secs: f64| {
            let authority = Label::from("web.default.svc.cluster.local:80");
            let backend = Label::from(backend);
            m.leg(
                Direction::outbound,
                &authority,
                &Label::from("default/web"),
                &backend,
            )
            .count_request(secs);
            m.count_response(ResponseLabels {
                direction: Direction::outbound,
                authority,
                route: Label::from("default/web"),
                backend,
                status_code: status,
                grpc_status: None,
                error: None,
                tls: false,
                peer_identity: Label::default(),
                classification: if status >= 500 {
                    Classification::failure
                } else {
                    Classification::success
                },
            });
        };
        for _ in 0..7 {
            count("v1.default.svc.cluster.local:80", 200, 0.002);
        }
        count("v2.default.svc.cluster.local:80", 200, 0.002);
        count("v2.default.svc.cluster.local:80", 503, 0.3);
        count("v2.default.svc.cluster.local:80", 500, 0.3);
        let legs = legs(&m.encode());
        assert_eq!(legs.len(), 2, "{legs:?}");
        let v2 = &legs[1];
        assert_eq!(v2.backend, "v2.default.svc.cluster.local:80");
        assert_eq!((v2.responses, v2.failures), (3, 2));
        assert_eq!(v2.latency_bounds.last(), Some(&f64::INFINITY));
        assert_eq!(v2.latency_counts.last(), Some(&3));
        let at =
            |b: f64| v2.latency_counts[v2.latency_bounds.iter().position(|x| *x == b).unwrap()];
        assert_eq!((at(0.0025), at(0.25), at(0.5)), (1, 1, 3));
        assert_eq!((legs[0].responses, legs[0].failures), (7, 0));
    }
}
