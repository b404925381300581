//! The HTTP/2 server side of a connection, on the `h2` crate directly rather than through
//! hyper, for the one thing hyper's HTTP/2 server cannot do: send an interim `100 Continue`.
//! A client that sends `Expect: 100-continue` (curl does for uploads over 1 MiB) waits for it
//! before sending the body; without it, every such upload waited a second for nothing.
//!
//! The rest is what hyper's server did for us: keep-alive pings, flow control as the body is
//! read, trailers, resets in both directions, graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::oneshot;

use crate::http::body::{self, Body, BoxError};

/// How often an idle peer is pinged, and how long it has to answer.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// Streams reset by the client before the server took them, allowed per connection (h2's
/// default is 20: a peer proxy whose callers cancelled a burst of requests had the shared
/// connection, and every request on it, closed). Still bounded against rapid reset
/// (CVE-2023-44487), which needs far more.
pub const MAX_PENDING_RESETS: usize = 1024;
/// What one client connection may ask of the proxy (`PILLION_MAX_HEADER_BYTES`,
/// `PILLION_MAX_CONCURRENT_STREAMS`, `PILLION_HEADER_READ_TIMEOUT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A request's header section, in bytes; larger ones are answered 431.
    pub max_header_bytes: u32,
    /// Concurrent HTTP/2 streams per connection (a peer proxy multiplexes all its callers on one).
    pub max_streams: u32,
    /// An HTTP/1.1 client must send a request's whole header section within this.
    pub header_read_timeout: std::time::Duration,
    /// Which HTTP/2 implementation serves clients and reaches endpoints (`PILLION_HTTP2`).
    pub server: Implementation,
    /// Requests an HTTP/2 connection is judged over before streams its client resets at
    /// once close it (rapid reset: `pillion_http2::Config::early_reset_floor`).
    pub early_reset_floor: u64,
}

/// The HTTP/2 implementation, both as a server and as a client: Pillion's own
/// (`pillion_http2`, the default), or the `h2` crate's, kept for a release as a way back
/// should a peer meet a difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Implementation {
    #[default]
    Pillion,
    H2,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 * 1024,
            max_streams: 2048,
            header_read_timeout: std::time::Duration::from_secs(30),
            server: Implementation::default(),
            early_reset_floor: EARLY_RESET_FLOOR,
        }
    }
}
/// Rapid reset: a connection whose client resets at once half of at least this many requests
/// is closed (Envoy's default). Connections from peer proxies get `PEER_EARLY_RESET_FLOOR`:
/// each carries the cancellations of all the callers behind its proxy, which is also the
/// proxy that judges each caller's own connection, and so cuts off an abusive one first.
pub const EARLY_RESET_FLOOR: u64 = 500;
pub const PEER_EARLY_RESET_FLOOR: u64 = 10 * EARLY_RESET_FLOOR;

/// Flow-control windows: large enough that one stream fills a loopback or data-centre path.
pub(crate) const STREAM_WINDOW: u32 = 2 << 20;
pub(crate) const CONNECTION_WINDOW: u32 = 8 << 20;

/// Serves requests until the connection ends, or until `stop` resolves (then gracefully: no
/// new streams, those in flight finish). `serve` answers one request.
pub async fn serve<I, S, F>(
    io: I,
    peer: SocketAddr,
    limits: Limits,
    serve: S,
    stop: impl Future<Output = ()>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    S: Fn(Request<Body>) -> F + Clone + Send + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    if limits.server == Implementation::H2 {
        return serve_h2(io, peer, limits, serve, stop).await;
    }
    let config = pillion_http2::Config {
        max_concurrent_streams: limits.max_streams,
        stream_window: STREAM_WINDOW,
        connection_window: CONNECTION_WINDOW,
        max_header_list_size: limits.max_header_bytes,
        early_reset_floor: limits.early_reset_floor,
    };
    let handler = move |req: Request<pillion_http2::server::RecvBody>| serve(req.map(body::boxed));
    if let Err(e) = pillion_http2::server::serve(io, config, Some(KEEP_ALIVE), handler, stop).await
    {
        // ENHANCE_YOUR_CALM: rapid reset, a header block flood; worth an operator's eye.
        let abuse = matches!(e, pillion_http2::ConnError::Local { reason, .. }
            if reason == pillion_http2::frame::Reason::ENHANCE_YOUR_CALM);
        if abuse {
            tracing::warn!(%peer, error = %e, "HTTP/2 client connection closed: it abused the protocol");
        } else {
            tracing::debug!(%peer, error = %e, "HTTP/2 connection ended with an error");
        }
    }
}

/// `serve` on the `h2` crate's server.
async fn serve_h2<I, S, F>(
    io: I,
    peer: SocketAddr,
    limits: Limits,
    serve: S,
    stop: impl Future<Output = ()>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    S: Fn(Request<Body>) -> F + Clone + Send + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let mut builder = h2::server::Builder::new();
    builder
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_concurrent_streams(limits.max_streams)
        .max_header_list_size(limits.max_header_bytes)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW);
    let mut conn = match builder.handshake::<_, Bytes>(io).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "HTTP/2 handshake failed");
            return;
        }
    };
    // Pings run beside the accept loop (which drives the connection); a missed pong closes it.
    let (dead_tx, mut dead_rx) = oneshot::channel::<()>();
    if let Some(pings) = conn.ping_pong() {
        tokio::spawn(keep_alive(pings, dead_tx));
    }
    tokio::pin!(stop);
    let mut stopping = false;
    let mut watching = true;
    loop {
        tokio::select! {
            accepted = conn.accept() => match accepted {
                Some(Ok((req, respond))) => {
                    tokio::spawn(stream(req, respond, serve.clone()));
                }
                Some(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "HTTP/2 connection ended with an error");
                    return;
                }
                None => return,
            },
            _ = &mut stop, if !stopping => {
                stopping = true;
                conn.graceful_shutdown();
            }
            // Polled until it answers once: Ok is a missed pong; Err, the pinger ended.
            dead = &mut dead_rx, if watching => {
                watching = false;
                if dead.is_ok() {
                    tracing::debug!(%peer, "HTTP/2 peer stopped answering pings; closed");
                    conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                    return;
                }
            }
        }
    }
}

/// Pings every `KEEP_ALIVE`; tells `dead` when a pong does not come in time. Ends with the
/// connection.
pub(crate) async fn keep_alive(mut pings: h2::PingPong, dead: oneshot::Sender<()>) {
    loop {
        tokio::time::sleep(KEEP_ALIVE).await;
        match tokio::time::timeout(KEEP_ALIVE, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                let _ = dead.send(());
                return;
            }
        }
    }
}

/// One request: hand it to `serve`, send `100 Continue` when its body is first read (if the
/// client asked), then send the response and stream its body.
///
/// The request is handed over before the returned future (the stream's task) exists: that task
/// lives as long as the request, and an `async fn` would keep the request head, and the
/// parts it is taken apart into, in its state all that time (~1 KB a stream).
fn stream<S, F>(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    serve: S,
) -> impl Future<Output = ()>
where
    S: Fn(Request<Body>) -> F,
    F: Future<Output = Response<Body>>,
{
    let expects_continue = req
        .headers()
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (mut parts, recv) = req.into_parts();
    // Answered here; the upstream hop must not wait for a 100 of its own.
    parts.headers.remove(http::header::EXPECT);
    // The channel only for a client that asked (an allocation saved on every other request).
    let (continue_tx, mut continue_rx) = match expects_continue {
        true => {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        }
        false => (None, None),
    };
    let body = RequestBody {
        recv,
        data_done: false,
        wants_continue: continue_tx,
    };
    // On the heap from the start: the handler's future is several KB, and a task that held it
    // inline was copied whole at every move of the spawn (memmove was 16 % of the proxy's
    // time at saturation).
    let mut handled = Box::pin(serve(Request::from_parts(parts, body::boxed(body))));
    let mut continue_pending = expects_continue;
    async move {
        // In a block: the response and its parts would otherwise stay in the task while its
        // body streams.
        let (send, body) = {
            let resp = loop {
                tokio::select! {
                    resp = &mut handled => break resp,
                    asked = async {
                        match continue_rx.as_mut() {
                            Some(rx) => rx.await,
                            None => std::future::pending().await,
                        }
                    }, if continue_pending => {
                        continue_pending = false;
                        if asked.is_ok() {
                            let mut interim = Response::new(());
                            *interim.status_mut() = StatusCode::CONTINUE;
                            let _ = respond.send_informational(interim);
                        }
                    }
                    // The client gave up on the request: drop it (cancelling the upstream request).
                    _ = std::future::poll_fn(|cx| respond.poll_reset(cx)) => return,
                }
            };
            let (parts, body) = resp.into_parts();
            let end = body.is_end_stream();
            match respond.send_response(Response::from_parts(parts, ()), end) {
                Ok(_) if end => return,
                Ok(send) => (send, body),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot send response headers");
                    return;
                }
            }
        };
        send_body(body, send, h2::Reason::INTERNAL_ERROR).await;
    }
}

/// Streams a body: data as the peer's window allows, then trailers or end of stream. A body
/// that fails resets the stream with `on_error`.
pub(crate) async fn send_body(mut body: Body, mut send: SendStream<Bytes>, on_error: h2::Reason) {
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = std::future::poll_fn(|cx| send.poll_reset(cx)) => return,
        };
        match frame {
            None => {
                let _ = send.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "body failed; stream reset");
                send.send_reset(on_error);
                return;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if send_data(&mut send, data).await.is_err() {
                        return;
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        let _ = send.send_trailers(trailers);
                        return;
                    }
                }
            },
        }
    }
}

/// Sends one chunk, in as many pieces as flow control grants.
async fn send_data(send: &mut SendStream<Bytes>, mut data: Bytes) -> Result<(), h2::Error> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let granted = std::future::poll_fn(|cx| send.poll_capacity(cx))
            .await
            .ok_or_else(|| h2::Error::from(h2::Reason::CANCEL))??;
        if granted == 0 {
            continue;
        }
        let piece = data.split_to(granted.min(data.len()));
        send.send_data(piece, false)?;
    }
    Ok(())
}

/// A body read from an h2 stream (a request's here, a response's in the client), giving
/// flow-control capacity back as it is read, and asking for `100 Continue` the first time it
/// is read when the client asked for one.
pub(crate) struct RequestBody {
    recv: RecvStream,
    data_done: bool,
    wants_continue: Option<oneshot::Sender<()>>,
}

impl RequestBody {
    /// A response body, as the client side reads it.
    pub(crate) fn response(recv: RecvStream) -> Body {
        body::boxed(RequestBody {
            recv,
            data_done: false,
            wants_continue: None,
        })
    }
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(tx) = self.wants_continue.take() {
            let _ = tx.send(());
        }
        if !self.data_done {
            match self.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => self.data_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        match self.recv.poll_trailers(cx) {
            Poll::Ready(Ok(Some(trailers))) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
