//! The gRPC Report service: each proxy's periodic report goes into the fleet.

use std::sync::Arc;
use std::time::Duration;

use pillion_proto::report::v1 as pb;
use tonic::{Request, Response, Status};

use crate::fleet::Fleet;

/// What proxies report at unless asked otherwise (their `PILLION_REPORT_INTERVAL` default).
const PROXY_DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

pub struct ReportService {
    pub fleet: Arc<Fleet>,
    pub metrics: Arc<crate::admin::Metrics>,
}

#[tonic::async_trait]
impl pb::report_server::Report for ReportService {
    async fn report(
        &self,
        request: Request<pb::ProxyReport>,
    ) -> Result<Response<pb::ReportAck>, Status> {
        // A proxy with a certificate reports for its own namespace only.
        if let Some(peer) = crate::pki::serving::peer_identity(&request)
            && peer.namespace != request.get_ref().namespace
        {
            return Err(Status::permission_denied(format!(
                "a proxy of namespace {} may not report as namespace {}",
                peer.namespace,
                request.get_ref().namespace
            )));
        }
        let peer = crate::pki::serving::peer_addr(&request);
        let report = request.into_inner();
        if report.proxy_id.is_empty() {
            return Err(Status::invalid_argument("proxy_id is empty"));
        }
        self.metrics.reports.inc();
        let wanted = self.fleet.wanted_interval();
        self.fleet
            .report(report, peer, wanted.unwrap_or(PROXY_DEFAULT_INTERVAL));
        Ok(Response::new(pb::ReportAck {
            interval_ms: wanted.map_or(0, |w| w.as_millis() as u64),
        }))
    }
}
