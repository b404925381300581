//! One server stream of complete states: sent at once, and again whenever the model changes in
//! a way that changes it.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tokio::sync::{mpsc, watch};
use tonic::Status;

use crate::admin::{KindLabel, Metrics, WatchKind};
use crate::model::{self, Model};

/// What a watch is counted as: its kind, and the connection it came on.
pub struct Counted {
    pub metrics: Arc<Metrics>,
    pub kind: WatchKind,
    pub peer: Option<std::net::SocketAddr>,
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
    counted: Counted,
) -> UpdateStream<M>
where
    M: prost::Message + Send + 'static,
    F: Fn(&Model) -> M + Send + 'static,
{
    // Small: each message is complete, so a slow proxy only ever needs the latest.
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let _open = counted.metrics.watch_opened(counted.kind, counted.peer);
        let kind = KindLabel { kind: counted.kind };
        let mut last_version = String::new();
        loop {
            let current = model.borrow_and_update().clone();
            let mut msg = compute(&current);
            let version = model::version_of_bytes(&msg.encode_to_vec());
            if version != last_version {
                set_version(&mut msg, version.clone());
                if tx.send(Ok(msg)).await.is_err() {
                    break;
                }
                counted.metrics.pushes.get_or_create(&kind).inc();
                // A change (not the first answer): how long since the change was published.
                if !last_version.is_empty() {
                    counted
                        .metrics
                        .push_latency
                        .get_or_create(&kind)
                        .observe(current.published.elapsed().as_secs_f64());
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
