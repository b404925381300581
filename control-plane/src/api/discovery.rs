//! The gRPC Discovery service: one server stream per (proxy, authority), each sending the
//! destination's complete state whenever it changes.

use std::sync::Arc;

use pillion_proto::discovery::v1 as pb;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::api::watch::{UpdateStream, watch_stream};
use crate::model::Model;

pub struct DiscoveryService {
    model: watch::Receiver<Arc<Model>>,
    metrics: Arc<crate::admin::Metrics>,
}

impl DiscoveryService {
    pub fn new(model: watch::Receiver<Arc<Model>>, metrics: Arc<crate::admin::Metrics>) -> Self {
        Self { model, metrics }
    }
}

#[tonic::async_trait]
impl pb::discovery_server::Discovery for DiscoveryService {
    type WatchStream = UpdateStream<pb::DestinationUpdate>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        // A proxy with a certificate speaks for its own namespace only.
        if let Some(peer) = crate::pki::serving::peer_identity(&request)
            && !request.get_ref().source_namespace.is_empty()
            && peer.namespace != request.get_ref().source_namespace
        {
            return Err(Status::permission_denied(format!(
                "a proxy of namespace {} may not watch as namespace {}",
                peer.namespace,
                request.get_ref().source_namespace
            )));
        }
        let counted = crate::api::watch::Counted {
            metrics: self.metrics.clone(),
            kind: crate::admin::WatchKind::discovery,
            peer: crate::pki::serving::peer_addr(&request),
        };
        let req = request.into_inner();
        if req.authority.is_empty() {
            return Err(Status::invalid_argument("authority is empty"));
        }
        let source_ns = if req.source_namespace.is_empty() {
            "default".to_string()
        } else {
            req.source_namespace
        };
        let authority = req.authority.clone();
        tracing::debug!(%authority, workload = %req.source_workload, "watch opened");
        let stream = watch_stream(
            self.model.clone(),
            authority,
            move |m: &Model| {
                let state = m.resolve(&req.authority, &source_ns);
                pb::DestinationUpdate {
                    version: String::new(),
                    state: Some(state),
                }
            },
            |u, version| u.version = version,
            counted,
        );
        Ok(Response::new(stream))
    }

    async fn info(
        &self,
        _request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        Ok(Response::new(pb::InfoResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            generation: self.model.borrow().generation,
        }))
    }
}
