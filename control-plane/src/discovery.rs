//! The gRPC Discovery service: one server stream per (proxy, authority), each sending the
//! destination's complete state whenever it changes.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use pillion_proto::discovery::v1 as pb;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status};

use crate::model::{self, Model};

pub struct DiscoveryService {
    model: watch::Receiver<Arc<Model>>,
}

impl DiscoveryService {
    pub fn new(model: watch::Receiver<Arc<Model>>) -> Self {
        Self { model }
    }
}

pub type UpdateStream<M> = Pin<Box<dyn Stream<Item = Result<M, Status>> + Send>>;

/// A server stream that sends `compute(model)` at once and again whenever the model changes
/// in a way that changes it, with a version that is the content's hash. Ends when the client
/// goes away.
pub fn watch_stream<M, F>(
    mut model: watch::Receiver<Arc<Model>>,
    what: String,
    compute: F,
    set_version: fn(&mut M, String),
) -> UpdateStream<M>
where
    M: prost::Message + Send + 'static,
    F: Fn(&Model) -> M + Send + 'static,
{
    // Small: each message is complete, so a slow proxy only ever needs the latest.
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut last_version = String::new();
        loop {
            let mut msg = compute(&model.borrow_and_update());
            let version = model::version_of_bytes(&msg.encode_to_vec());
            if version != last_version {
                set_version(&mut msg, version.clone());
                if tx.send(Ok(msg)).await.is_err() {
                    break;
                }
                tracing::debug!(%what, %version, "update sent");
                last_version = version;
            }
            tokio::select! {
                changed = model.changed() => if changed.is_err() { break },
                _ = tx.closed() => break,
            }
        }
        tracing::debug!(%what, "watch closed");
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl pb::discovery_server::Discovery for DiscoveryService {
    type WatchStream = UpdateStream<pb::DestinationUpdate>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        // A proxy with a certificate speaks for its own namespace only.
        if let Some(peer) = crate::tls::peer_identity(&request)
            && !request.get_ref().source_namespace.is_empty()
            && peer.namespace != request.get_ref().source_namespace
        {
            return Err(Status::permission_denied(format!(
                "a proxy of namespace {} may not watch as namespace {}",
                peer.namespace,
                request.get_ref().source_namespace
            )));
        }
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
