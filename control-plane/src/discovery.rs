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

type UpdateStream = Pin<Box<dyn Stream<Item = Result<pb::DestinationUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl pb::discovery_server::Discovery for DiscoveryService {
    type WatchStream = UpdateStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = request.into_inner();
        if req.authority.is_empty() {
            return Err(Status::invalid_argument("authority is empty"));
        }
        let source_ns = if req.source_namespace.is_empty() {
            "default".to_string()
        } else {
            req.source_namespace
        };
        let mut model = self.model.clone();
        // Small: each message is a complete state, so a slow proxy only ever needs the latest.
        let (tx, rx) = mpsc::channel(4);
        tracing::debug!(authority = %req.authority, workload = %req.source_workload, "watch opened");
        tokio::spawn(async move {
            let mut last_version = String::new();
            loop {
                let state = model
                    .borrow_and_update()
                    .resolve(&req.authority, &source_ns);
                let version = model::version_of(&state);
                if version != last_version {
                    let update = pb::DestinationUpdate {
                        version: version.clone(),
                        state: Some(state),
                    };
                    if tx.send(Ok(update)).await.is_err() {
                        break;
                    }
                    tracing::debug!(authority = %req.authority, %version, "destination sent");
                    last_version = version;
                }
                tokio::select! {
                    changed = model.changed() => if changed.is_err() { break },
                    _ = tx.closed() => break,
                }
            }
            tracing::debug!(authority = %req.authority, "watch closed");
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(stream)))
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
