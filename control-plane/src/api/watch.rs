//! One server stream of complete states: sent at once, and again whenever the model changes in
//! a way that changes it.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tokio::sync::{mpsc, watch};
use tonic::Status;

use crate::model::{self, Model};

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
