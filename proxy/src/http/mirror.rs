//! HTTPRoute `RequestMirror`: a copy of a request goes to another backend, its answer dropped.
//!
//! The copy never slows the request it copies. A body is shared frame by frame as it streams
//! through (a `Bytes` clone, no copy); a mirror that falls more than `LAG_BYTES` behind (a slow
//! or unreachable mirror backend: the bytes wait in memory) is abandoned, its stream reset and
//! never sent a truncated body, and the request goes on at its own pace.
//!
//! Nor can a mirror backend that stops answering exhaust the proxy: at most `MAX_COPIES` copies
//! are in flight at once and `MAX_BUFFERED` bytes of their bodies wait in memory, process-wide
//! (a copy waiting for a connection that never completes holds its body until its timeout).
//! Past either, copies are not made or are abandoned, and counted as failed.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot};

use crate::balance::{self, Endpoint};
use crate::http::body::{self, Body, BoxError};
use crate::http::forward::{self, ForwardOpts};

/// Bytes a mirror may lag behind its request before it is abandoned.
const LAG_BYTES: usize = 1 << 20;
/// Copies in flight at once, process-wide.
const MAX_COPIES: usize = 1024;
/// Bytes of request bodies handed to copies and not yet sent by them, process-wide. What they
/// hold in memory is more (the read buffers the bytes are slices of): 8 MiB of them measured
/// 20-25 MiB more resident memory, against 120 MiB for 300 stuck copies without the bound.
const MAX_BUFFERED: usize = 8 << 20;

static COPIES: AtomicUsize = AtomicUsize::new(0);
static BUFFERED: AtomicUsize = AtomicUsize::new(0);

/// One of the `MAX_COPIES` places, held by a copy's task.
struct Slot;

impl Slot {
    fn take() -> Option<Slot> {
        if COPIES.fetch_add(1, Ordering::Relaxed) >= MAX_COPIES {
            COPIES.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        COPIES.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What one copy has been handed and has not sent yet, counted in `BUFFERED` too until the
/// last of the request's and the copy's bodies lets go of it (then its frames are freed).
#[derive(Default)]
struct Lag(AtomicUsize);

impl Lag {
    /// Counts `n` more bytes waiting: whether the copy is still within both limits.
    fn add(&self, n: usize, max_lag: usize) -> bool {
        let own = self.0.fetch_add(n, Ordering::Relaxed) + n;
        let all = BUFFERED.fetch_add(n, Ordering::Relaxed) + n;
        own <= max_lag && all <= MAX_BUFFERED
    }

    fn sent(&self, n: usize) {
        self.0.fetch_sub(n, Ordering::Relaxed);
        BUFFERED.fetch_sub(n, Ordering::Relaxed);
    }
}

impl Drop for Lag {
    fn drop(&mut self) {
        BUFFERED.fetch_sub(*self.0.get_mut(), Ordering::Relaxed);
    }
}

/// Copies sent, and copies that got no answer (unreachable, reset, abandoned, timed out):
/// process-wide, like the other counters of requests the proxy makes on its own.
pub static MIRRORED: std::sync::LazyLock<Counter> = std::sync::LazyLock::new(Counter::default);
pub static MIRROR_FAILURES: std::sync::LazyLock<Counter> =
    std::sync::LazyLock::new(Counter::default);

/// Sends a copy of `req` (as it is now: after the rule's edits) to one of `endpoints`, in a
/// task of its own. `req`'s body, if it has one, is replaced by one that feeds the copy. An
/// endpoint with `limit` requests in flight gets no copy, nor does any once `MAX_COPIES` are in
/// flight (a mirror backend that stops answering must not pile up copies in the proxy).
pub fn send(
    endpoints: &[Arc<Endpoint>],
    req: &mut Request<Body>,
    authority: &str,
    timeout: Duration,
    limit: u32,
) {
    let Some(endpoint) = balance::pick(endpoints).cloned() else {
        return;
    };
    MIRRORED.inc();
    let slot = match Slot::take() {
        Some(slot) if endpoint.pending() < limit => slot,
        _ => {
            MIRROR_FAILURES.inc();
            return;
        }
    };
    let mut copy = Request::new(body::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    // Sent when the request's body gives up on the copy. Dropped unsent (no body, or the copy
    // had all of it), the branch that waits for it is simply disabled.
    let (abandon_tx, mut abandoned) = oneshot::channel();
    if !req.body().is_end_stream() {
        let (tee, copied) = tee(
            std::mem::replace(req.body_mut(), body::empty()),
            LAG_BYTES,
            abandon_tx,
        );
        *req.body_mut() = UnsyncBoxBody::new(tee);
        *copy.body_mut() = UnsyncBoxBody::new(copied);
    }
    let authority = authority.to_string();
    tokio::spawn(async move {
        let _slot = slot;
        let opts = ForwardOpts {
            authority: &authority,
            timeout: Some(timeout),
            protocol: None,
        };
        let answered = async {
            let resp = forward::forward(&endpoint, Box::new(copy), opts)
                .await
                .map_err(|_| ())?;
            // Read to the end, so that an HTTP/1.1 connection can be used again.
            resp.into_body().collect().await.map_err(|_| ())?;
            Ok::<(), ()>(())
        };
        // An abandoned copy ends now, and with it the body it held (up to LAG_BYTES).
        let outcome = tokio::select! {
            r = tokio::time::timeout(timeout, answered) => r.ok().and_then(Result::ok),
            Ok(()) = &mut abandoned => None,
        };
        match outcome {
            Some(()) => {}
            None => {
                MIRROR_FAILURES.inc();
                tracing::debug!(endpoint = %endpoint.addr, "mirrored request got no answer");
            }
        }
    });
}

/// `inner` split in two: the request's body, and the copy's, at most `max_lag` bytes behind;
/// `abandon` is told when the copy is given up.
fn tee(inner: Body, max_lag: usize, abandon: oneshot::Sender<()>) -> (Tee, Copied) {
    let (tx, rx) = mpsc::unbounded_channel();
    let lag = Arc::new(Lag::default());
    let tee = Tee {
        inner,
        feed: Some((tx, lag.clone())),
        max_lag,
        abandon: Some(abandon),
    };
    (tee, Copied { rx, lag })
}

/// A copy's frames; `None` marks the end of its body.
type FrameSender = mpsc::UnboundedSender<Option<Frame<Bytes>>>;

/// The request's body, handing each frame to the copy on its way through.
struct Tee {
    inner: Body,
    /// The copy's frames, and what of them it has not taken; `None` once the copy was
    /// abandoned or has everything.
    feed: Option<(FrameSender, Arc<Lag>)>,
    max_lag: usize,
    abandon: Option<oneshot::Sender<()>>,
}

/// What became of the copy after one frame of the request's body.
enum Handed {
    More,
    /// The copy has the whole body.
    All,
    /// Too far behind, or the request's body failed: the copy is given up.
    GaveUp,
}

impl HttpBody for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        let Some((tx, lag)) = &self.feed else {
            return poll;
        };
        let handed = match &poll {
            Poll::Pending => return poll,
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, Bytes::len);
                let copy = match (frame.data_ref(), frame.trailers_ref()) {
                    (Some(d), _) => Some(Frame::data(d.clone())),
                    (None, Some(t)) => Some(Frame::trailers(t.clone())),
                    (None, None) => None,
                };
                let sent =
                    lag.add(len, self.max_lag) && copy.is_none_or(|c| tx.send(Some(c)).is_ok());
                if !sent {
                    Handed::GaveUp
                } else if self.inner.is_end_stream() {
                    // A reader that knows the body has ended (the last frame carried
                    // END_STREAM) polls no more: the copy learns of the end now.
                    let _ = tx.send(None);
                    Handed::All
                } else {
                    Handed::More
                }
            }
            // The end: `None` tells the copy its body is whole.
            Poll::Ready(None) => {
                let _ = tx.send(None);
                Handed::All
            }
            // The client's body failed: the copy's fails too (its sender dropped).
            Poll::Ready(Some(Err(_))) => Handed::GaveUp,
        };
        match handed {
            Handed::More => {}
            Handed::All => {
                self.feed = None;
                self.abandon = None;
            }
            Handed::GaveUp => {
                self.feed = None;
                if let Some(a) = self.abandon.take() {
                    let _ = a.send(());
                }
            }
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The copy's body: the frames the request's `Tee` handed over. Its sender gone before the
/// end marker means the copy was abandoned: an error, so the copy is reset, not cut short.
struct Copied {
    rx: mpsc::UnboundedReceiver<Option<Frame<Bytes>>>,
    lag: Arc<Lag>,
}

impl HttpBody for Copied {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Some(frame))) => {
                let len = frame.data_ref().map_or(0, Bytes::len);
                self.lag.sent(len);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(None)) => {
                self.rx.close();
                Poll::Ready(None)
            }
            Poll::Ready(None) => Poll::Ready(Some(Err(
                "mirror abandoned: it fell behind its request".into(),
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn streamed(chunks: Vec<Result<Frame<Bytes>, BoxError>>) -> Body {
        body::boxed(StreamBody::new(futures_util::stream::iter(chunks)))
    }

    #[tokio::test]
    async fn the_copy_gets_every_frame_and_its_end() {
        let frames = vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::data(Bytes::from_static(b"cd"))),
        ];
        let (tee, copied) = tee(streamed(frames), 4, oneshot::channel().0);
        let main = tee.collect().await.unwrap().to_bytes();
        assert_eq!(main, "abcd");
        let copy = copied.collect().await.unwrap().to_bytes();
        assert_eq!(copy, "abcd");
    }

    /// A body whose end is known from its last frame (as an HTTP/2 DATA frame with END_STREAM),
    /// so a reader may stop before it returns `None`.
    struct KnownEnd(Option<Bytes>);

    impl HttpBody for KnownEnd {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
        }
        fn is_end_stream(&self) -> bool {
            self.0.is_none()
        }
    }

    #[tokio::test]
    async fn the_copy_ends_when_the_last_frame_says_so() {
        let (abandon, mut abandoned) = oneshot::channel();
        let (mut tee, copied) = tee(
            body::boxed(KnownEnd(Some(Bytes::from_static(b"xy")))),
            10,
            abandon,
        );
        let frame = tee.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "xy");
        assert!(tee.is_end_stream());
        drop(tee); // never polled to its `None`
        assert_eq!(copied.collect().await.unwrap().to_bytes(), "xy");
        assert!(
            abandoned.try_recv().is_err(),
            "a whole copy is not given up"
        );
    }

    #[tokio::test]
    async fn a_copy_that_falls_behind_fails_and_the_request_does_not() {
        let frames = (0..5)
            .map(|i| Ok(Frame::data(Bytes::from(vec![b'a' + i; 3]))))
            .collect();
        let (abandon, mut abandoned) = oneshot::channel();
        let (tee, mut copy) = tee(streamed(frames), 5, abandon);
        let main = tee.collect().await.unwrap().to_bytes();
        assert_eq!(main.len(), 15);
        assert!(
            abandoned.try_recv().is_ok(),
            "the copy's task is told to give up"
        );
        let first = copy.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "aaa");
        assert!(
            copy.frame().await.unwrap().is_err(),
            "abandoned, not cut short"
        );
    }

    #[tokio::test]
    async fn a_failed_request_body_fails_the_copy() {
        let frames = vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Err::<Frame<Bytes>, BoxError>("client went away".into()),
        ];
        let (tee, mut copy) = tee(streamed(frames), LAG_BYTES, oneshot::channel().0);
        assert!(tee.collect().await.is_err());
        assert_eq!(
            copy.frame().await.unwrap().unwrap().into_data().unwrap(),
            "ab"
        );
        assert!(copy.frame().await.unwrap().is_err());
    }
}
