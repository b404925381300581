//! The body type the proxy moves around, and a wrapper that runs something when a body ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Any body, streamed: requests and responses pass through without being buffered.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn boxed<B>(body: B) -> Body
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    boxed(http_body_util::Full::new(bytes.into()).map_err(|never| match never {}))
}

pub fn empty() -> Body {
    boxed(http_body_util::Empty::new().map_err(|never| match never {}))
}

/// A body that holds `guard` until it is read to the end or dropped: how long a response
/// "is in flight" for the balancer includes streaming its body.
pub struct Guarded<G> {
    inner: Body,
    guard: Option<G>,
}

impl<G: Send + Unpin + 'static> Guarded<G> {
    pub fn wrap(inner: Body, guard: G) -> Body {
        if inner.is_end_stream() {
            drop(guard);
            return inner;
        }
        UnsyncBoxBody::new(Guarded {
            inner,
            guard: Some(guard),
        })
    }
}

impl<G: Unpin> HttpBody for Guarded<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(poll, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.guard = None;
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

/// The client's request body, noting whether reading it failed (a malformed chunk, a client
/// gone mid-upload): a failed forward is then the client's fault, not the endpoint's.
pub struct ClientBody {
    inner: Body,
    failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl ClientBody {
    /// The body, and the flag it raises when reading it fails; no flag (and no wrapping, two
    /// allocations saved) for a body that has already ended, as most requests' have.
    pub fn wrap(inner: Body) -> (Body, Option<std::sync::Arc<std::sync::atomic::AtomicBool>>) {
        if inner.is_end_stream() {
            return (inner, None);
        }
        let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let body = ClientBody {
            inner,
            failed: failed.clone(),
        };
        (UnsyncBoxBody::new(body), Some(failed))
    }
}

impl HttpBody for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &poll {
            self.failed
                .store(true, std::sync::atomic::Ordering::Relaxed);
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

/// A body that calls `on_end` once: with its trailers when they arrive, or with `None` when it
/// ends without them or is dropped first. How a gRPC response's status (in its trailers) is
/// counted.
pub struct OnEnd<F: FnOnce(Option<&http::HeaderMap>)> {
    inner: Body,
    on_end: Option<F>,
}

impl<F: FnOnce(Option<&http::HeaderMap>) + Send + Unpin + 'static> OnEnd<F> {
    pub fn wrap(inner: Body, on_end: F) -> Body {
        UnsyncBoxBody::new(OnEnd {
            inner,
            on_end: Some(on_end),
        })
    }
}

impl<F: FnOnce(Option<&http::HeaderMap>)> Drop for OnEnd<F> {
    fn drop(&mut self) {
        if let Some(f) = self.on_end.take() {
            f(None);
        }
    }
}

impl<F: FnOnce(Option<&http::HeaderMap>) + Unpin> HttpBody for OnEnd<F> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(f) = self.on_end.take()
                {
                    f(Some(trailers));
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                if let Some(f) = self.on_end.take() {
                    f(None);
                }
            }
            Poll::Pending => {}
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
