//! The gRPC Discovery service: one server stream per (proxy, authority), each sending the
//! destination's complete state whenever it changes.

use std::sync::Arc;

use pillion_proto::discovery::v1 as pb;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::api::watch::{UpdateStream, watch_stream};
use crate::model::Model;

/// The state a watch of `authority` from `source_ns` sends, before its version is set.
fn unversioned(model: &Model, authority: &str, source_ns: &str) -> pb::DestinationUpdate {
    pb::DestinationUpdate {
        version: String::new(),
        state: Some(model.resolve(authority, source_ns)),
    }
}

/// The state a watch of `authority` from `source_ns` sends, with the version it has (what a
/// proxy's `/config` shows once it runs it): for `pillion diff` and the admin port.
pub fn versioned(model: &Model, authority: &str, source_ns: &str) -> pb::DestinationUpdate {
    use prost::Message as _;
    let mut update = unversioned(model, authority, source_ns);
    update.version = crate::model::version_of_bytes(&update.encode_to_vec());
    update
}

/// A state in short, for people: each rule's backends with their weights and endpoints.
pub fn describe(update: &pb::DestinationUpdate) -> serde_json::Value {
    use pb::destination_update::State;
    match &update.state {
        Some(State::Destination(d)) => serde_json::json!({
            "version": update.version,
            "inMesh": true,
            "source": d.source,
            "matches": d.matches.len(),
            "rules": d.rules.iter().map(|r| serde_json::json!({
                "name": r.name,
                "backends": r.backends.iter().map(|b| match &b.kind {
                    Some(pb::weighted_backend::Kind::Service(s)) => serde_json::json!({
                        "service": s.name,
                        "weight": b.weight,
                        "endpoints": s.endpoints.iter().map(|e| e.address.clone()).collect::<Vec<_>>(),
                    }),
                    Some(pb::weighted_backend::Kind::Failure(f)) => serde_json::json!({
                        "failure": f.http_status,
                        "reason": f.reason,
                        "weight": b.weight,
                    }),
                    None => serde_json::Value::Null,
                }).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }),
        Some(State::NotInMesh(n)) => serde_json::json!({
            "version": update.version,
            "inMesh": false,
            "reason": n.reason,
        }),
        None => serde_json::json!({ "version": update.version }),
    }
}

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
        tracing::debug!(authority = %req.authority, workload = %req.source_workload, "watch opened");
        // The answer depends on the authority and the namespace asking (nothing else).
        let key = format!("{} {source_ns}", req.authority);
        let stream = watch_stream(
            self.model.clone(),
            key,
            move |m: &Model| unversioned(m, &req.authority, &source_ns),
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
