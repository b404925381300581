//! A stream as the application holds it: the handle that keeps it open, the body read from
//! it, and the body sent on it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body::{Body, Frame as BodyFrame, SizeHint};

use crate::conn::StreamError;
use crate::frame::{Reason, StreamId};
use crate::io::{Shared, lock};

/// Holds a stream open; the last one dropped lets it go (resetting it if it is unfinished).
pub(crate) struct StreamRef {
    pub shared: Shared,
    pub id: StreamId,
}

impl Drop for StreamRef {
    fn drop(&mut self) {
        lock(&self.shared).drop_ref(self.id);
    }
}

/// Streams a body as the windows allow; a body that fails resets the stream with `on_error`.
pub(crate) async fn send_body<B>(responder: &StreamRef, body: B, on_error: Reason)
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let id = responder.id;
    let mut body = std::pin::pin!(body);
    loop {
        let ready =
            std::future::poll_fn(|cx| lock(&responder.shared).poll_send_ready(id, cx)).await;
        if ready.is_err() {
            return;
        }
        let frame = std::future::poll_fn(|cx| {
            if let Poll::Ready(f) = body.as_mut().poll_frame(cx) {
                return Poll::Ready(Some(f));
            }
            match lock(&responder.shared).poll_reset(id, cx) {
                Poll::Ready(_) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        // The body is asked nothing while the lock is held: it may be this very connection's
        // (a handler echoing the request body).
        let end = body.is_end_stream();
        let mut conn = lock(&responder.shared);
        match frame {
            None => return,
            Some(None) => {
                let _ = conn.send_data(id, Bytes::new(), true);
                return;
            }
            Some(Some(Err(_))) => {
                conn.reset_stream(id, on_error);
                return;
            }
            Some(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    if conn.send_data(id, data, end).is_err() || end {
                        return;
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        let _ = conn.send_trailers(id, trailers);
                        return;
                    }
                }
            },
        }
    }
}

/// A request's body: its data as it arrives (flow-control credit given back as it is read),
/// then its trailers. Asks the client for the body with `100 Continue` when first read, if the
/// client is waiting for one.
pub struct RecvBody {
    stream: StreamRef,
    data_done: bool,
    /// The message ended with its HEADERS: no data and no trailers will come. Known without
    /// the connection's lock, which `is_end_stream` (asked several times a request by the
    /// proxy's layers) would otherwise take each time.
    empty: bool,
    wants_continue: bool,
}

impl RecvBody {
    pub(crate) fn new(stream: StreamRef, data_done: bool, wants_continue: bool) -> Self {
        RecvBody {
            stream,
            data_done,
            empty: data_done,
            wants_continue,
        }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, StreamError>>> {
        let this = self.get_mut();
        let id = this.stream.id;
        let mut conn = lock(&this.stream.shared);
        if this.wants_continue {
            this.wants_continue = false;
            let mut interim = Response::new(()).into_parts().0;
            interim.status = StatusCode::CONTINUE;
            let _ = conn.send_headers(id, &interim, false);
        }
        if !this.data_done {
            match conn.poll_data(id, cx) {
                Poll::Ready(Some(Ok(data))) => {
                    conn.release(id, data.len() as i64);
                    return Poll::Ready(Some(Ok(BodyFrame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => this.data_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        match conn.poll_trailers(id, cx) {
            Poll::Ready(Ok(Some(t))) => Poll::Ready(Some(Ok(BodyFrame::trailers(t)))),
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        // Without `data_done`: a stream that ended with nothing (a gRPC trailers-only
        // response) is at its end before it is read, and says so (the proxy then sends the
        // response's HEADERS with END_STREAM, as the trailers-only form requires).
        self.empty || lock(&self.stream.shared).is_recv_end(self.stream.id)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl std::fmt::Debug for RecvBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBody")
            .field("stream", &self.stream.id)
            .finish()
    }
}
