//! The gRPC InboundPolicy service: each proxy watches the authorizations for its identity.

use std::sync::Arc;

use pillion_proto::policy::v1 as pb;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::api::watch::{UpdateStream, watch_stream};
use crate::model::Model;

pub struct PolicyService {
    model: watch::Receiver<Arc<Model>>,
    metrics: Arc<crate::admin::Metrics>,
}

impl PolicyService {
    pub fn new(model: watch::Receiver<Arc<Model>>, metrics: Arc<crate::admin::Metrics>) -> Self {
        Self { model, metrics }
    }
}

#[tonic::async_trait]
impl pb::inbound_policy_server::InboundPolicy for PolicyService {
    type WatchStream = UpdateStream<pb::InboundPolicyUpdate>;

    async fn watch(
        &self,
        request: Request<pb::InboundPolicyRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        if let Some(peer) = crate::pki::serving::peer_identity(&request)
            && peer.spiffe_id() != request.get_ref().identity
        {
            tracing::warn!(peer = %peer.spiffe_id(), asked = %request.get_ref().identity, "policy watch refused: another identity's policy");
            return Err(Status::permission_denied(
                "a proxy may only watch the policy of its own identity",
            ));
        }
        let counted = crate::api::watch::Counted {
            metrics: self.metrics.clone(),
            kind: crate::admin::WatchKind::policy,
            peer: crate::pki::serving::peer_addr(&request),
        };
        let req = request.into_inner();
        if pillion_proto::names::Identity::from_spiffe_id(&req.identity).is_none() {
            return Err(Status::invalid_argument(format!(
                "`{}` is not a SPIFFE ID",
                req.identity
            )));
        }
        tracing::debug!(identity = %req.identity, workload = %req.workload, "policy watch opened");
        let identity = req.identity.clone();
        Ok(Response::new(watch_stream(
            self.model.clone(),
            req.identity,
            move |m: &Model| pb::InboundPolicyUpdate {
                version: String::new(),
                authorizations: m.inbound_policy(&identity),
            },
            |u, version| u.version = version,
            counted,
        )))
    }
}
