//! One server stream of complete states: sent at once, and again whenever the model changes in
//! a way that changes it.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tokio::sync::watch;
use tonic::Status;

use crate::admin::{KindLabel, Metrics, WatchGuard, WatchKind};
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
/// goes away (the transport drops it) or the model's sender does.
///
/// `key` names the answer completely (every input of `compute` besides the model): watches
/// with the same key and message type share one computed answer per model (`model::Memo`).
///
/// The stream computes when the transport polls it, not in a task of its own: a proxy that
/// reads slowly gets the latest state when it can take one, never a queue of stale ones, and
/// an idle watch costs only its state here (a task and a channel per watch were half of the
/// control plane's memory with 10,000 watches: `cargo bench -p pillion-control-plane --bench
/// scale`).
pub fn watch_stream<M, F>(
    model: watch::Receiver<Arc<Model>>,
    key: String,
    compute: F,
    set_version: fn(&mut M, String),
    counted: Counted,
) -> UpdateStream<M>
where
    M: prost::Message + Clone + Sync + 'static,
    F: Fn(&Model) -> M + Send + 'static,
{
    let state = Watch {
        _open: counted.metrics.watch_opened(counted.kind, counted.peer),
        metrics: counted.metrics,
        kind: KindLabel { kind: counted.kind },
        model,
        key,
        compute,
        set_version,
        last: None,
    };
    Box::pin(futures_util::stream::unfold(
        state,
        |mut watch| async move {
            let msg = watch.next().await?;
            Some((Ok(msg), watch))
        },
    ))
}

struct Watch<M, F> {
    _open: WatchGuard,
    metrics: Arc<Metrics>,
    kind: KindLabel,
    model: watch::Receiver<Arc<Model>>,
    key: String,
    compute: F,
    set_version: fn(&mut M, String),
    /// The last answer sent (`None` until the first): held, so that the model's memo keeps
    /// it for the other watches that ask the same.
    last: Option<Arc<Versioned<M>>>,
}

/// One computed answer and its version (the hash of its encoding).
struct Versioned<M> {
    msg: M,
    version: String,
}

impl<M, F> Watch<M, F>
where
    M: prost::Message + Clone + Sync + 'static,
    F: Fn(&Model) -> M,
{
    /// The next message to send: the current state at once, then each changed one. `None` when
    /// the model's sender is gone.
    async fn next(&mut self) -> Option<M> {
        loop {
            if self.last.is_some() && self.model.changed().await.is_err() {
                return None;
            }
            let current = self.model.borrow_and_update().clone();
            let answer = current.memo.get_or_compute(&self.key, || {
                let msg = (self.compute)(&current);
                let version = model::version_of_bytes(&msg.encode_to_vec());
                Versioned { msg, version }
            });
            if self
                .last
                .as_ref()
                .is_some_and(|l| l.version == answer.version)
            {
                self.last = Some(answer);
                continue;
            }
            let version = answer.version.clone();
            let mut msg = answer.msg.clone();
            (self.set_version)(&mut msg, version.clone());
            self.metrics.pushes.get_or_create(&self.kind).inc();
            // A change (not the first answer): how long since the change was published.
            if self.last.is_some() {
                self.metrics
                    .push_latency
                    .get_or_create(&self.kind)
                    .observe(current.published.elapsed().as_secs_f64());
            }
            tracing::debug!(key = %self.key, %version, "update sent");
            self.last = Some(answer);
            return Some(msg);
        }
    }
}

impl<M, F> Drop for Watch<M, F> {
    fn drop(&mut self) {
        tracing::debug!(key = %self.key, "watch closed");
    }
}
