//! Connections to one endpoint: multiplexed HTTP/2 connections (one, and another only while
//! every one has as many streams open as the server allows), and a pool of idle HTTP/1.1
//! connections. Requests that provably never reached the peer (the connection was found dead
//! before the request was written) are sent again on a fresh connection.
//!
//! HTTP/2 is spoken with Pillion's own client (`pillion_http2`; the `h2` crate's with
//! `PILLION_HTTP2=h2`): the request's own task sends the headers and awaits the response.
//! (hyper's HTTP/2 client hands every request to the connection's task over a channel and
//! spawns a task per request to await its response: two task hops and a spawn per request.)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Body as _;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::http::body::{self, Body};
use crate::http::errors::ProxyError;
use crate::http::h2_server;
use crate::http::replay::Replay;

/// HTTP/1.1 connections kept per endpoint (busy or idle), and how long an idle one is kept.
const MAX_IDLE: usize = 64;
/// HTTP/2 connections per endpoint at most. A server limits the streams open at once on each
/// connection (SETTINGS_MAX_CONCURRENT_STREAMS: 100 to 250 in common servers); past it on every
/// connection, a request opens another rather than waiting for a stream to end, as a client
/// talking to the server directly would. With 64 x 100 requests in flight, they wait.
const MAX_H2_CONNS: usize = 64;
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Sends of one request that the servers may refuse (see `send_pillion`):
/// enough for a server closing its connection after so many requests under load, not so many
/// that a server refusing everything multiplies the load on it.
const REFUSED_ATTEMPTS: u32 = 5;
/// Request body bytes kept for sending again until the response starts (Envoy's default
/// buffer limit): a larger body is not sent again when refused after this much was read. All
/// replays together keep at most `replay::BUDGET`.
const RESEND_BODY_MAX: usize = 1 << 20;

/// An idle HTTP/1.1 connection and when it became idle.
type IdleH1 = (http1::SendRequest<Body>, Instant);

/// A connection checked out for one request.
pub enum Sender {
    H1(http1::SendRequest<Body>),
    H2(H2Sender),
}

/// An HTTP/2 connection to an endpoint, on Pillion's client or the `h2` crate's.
#[derive(Clone)]
pub enum H2Sender {
    Pillion(pillion_http2::client::SendRequest),
    Crate(h2::client::SendRequest<Bytes>),
}

impl H2Sender {
    /// Whether a request gets a stream at once (`Err`: the connection takes no new one). The
    /// `h2` crate's client does not say: one connection per endpoint there, as before.
    fn has_room(&self) -> Result<bool, pillion_http2::ConnError> {
        match self {
            H2Sender::Pillion(s) => s.has_room(),
            H2Sender::Crate(_) => Ok(true),
        }
    }

    fn max_streams(&self) -> usize {
        match self {
            H2Sender::Pillion(s) => s.max_streams(),
            H2Sender::Crate(_) => usize::MAX,
        }
    }

    fn is_idle(&self) -> bool {
        match self {
            H2Sender::Pillion(s) => s.is_idle(),
            H2Sender::Crate(_) => false,
        }
    }
}

/// New HTTP/2 connections use the `h2` crate's client (`PILLION_HTTP2=h2`): one setting for
/// the whole process, set once at start.
static H2_CRATE: AtomicBool = AtomicBool::new(false);

pub fn use_h2_crate(yes: bool) {
    H2_CRATE.store(yes, Ordering::Relaxed);
}

/// What this proxy lets an endpoint's HTTP/2 responses be: their header sections up to 1 MiB
/// (as clients commonly allow; the endpoint is trusted more than a client), the windows the
/// server side uses.
fn client_config() -> pillion_http2::Config {
    pillion_http2::Config {
        max_concurrent_streams: 0,
        stream_window: h2_server::STREAM_WINDOW,
        connection_window: h2_server::CONNECTION_WINDOW,
        max_header_list_size: 1 << 20,
        // A server's resets are not judged: it is the one being protected.
        early_reset_floor: u64::MAX,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// A connection to an endpoint: plain TCP or mTLS.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Client configurations for meshed endpoints: ALPN `h2` for requests, `http/1.1` for the
/// HTTP/1.1 upgrades (WebSocket) HTTP/2 cannot carry.
#[derive(Clone)]
pub struct MeshTls {
    pub h2: Arc<rustls::ClientConfig>,
    pub h1: Arc<rustls::ClientConfig>,
}

/// How to reach a meshed endpoint's proxy: mTLS, checking that it presents `server_name`.
#[derive(Clone)]
pub struct TlsTarget {
    pub configs: MeshTls,
    pub server_name: rustls_pki_types::ServerName<'static>,
}

/// A request body as kept for sending again (see `Conns::send_pillion`).
enum Kept {
    /// All of it was here before the request went out (the common case for small bodies,
    /// such as a unary gRPC call's, which arrive with their headers): it is sent from this copy
    /// each time, with nothing more to keep.
    Whole(Option<Bytes>),
    /// It is still arriving: it streams out as it comes, what was read is kept.
    Replay(Replay),
}

impl Kept {
    /// Looks at what has arrived of `content` without waiting for more.
    async fn new(mut content: Body) -> Kept {
        if content.is_end_stream() {
            return Kept::Whole(None);
        }
        // Polled once with this task's waker: if nothing is there yet, the first send polls
        // again from the same task, so no wake-up is lost.
        let first = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::pin::Pin::new(&mut content).poll_frame(cx))
        })
        .await;
        match first {
            std::task::Poll::Ready(None) => Kept::Whole(None),
            std::task::Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) if content.is_end_stream() => Kept::Whole(Some(data)),
                Ok(data) => Kept::Replay(Replay::started(
                    http_body::Frame::data(data),
                    content,
                    RESEND_BODY_MAX,
                )),
                Err(frame) => Kept::Replay(Replay::started(frame, content, RESEND_BODY_MAX)),
            },
            std::task::Poll::Ready(Some(Err(e))) => Kept::Replay(Replay::failed(e)),
            std::task::Poll::Pending => Kept::Replay(Replay::new(content, RESEND_BODY_MAX)),
        }
    }
}

pub struct Conns {
    addr: SocketAddr,
    connect_timeout: Duration,
    tls: Option<TlsTarget>,
    /// Held across the handshake so that concurrent requests share one new connection. Each
    /// with when a request last took it (kept only while there is more than one).
    h2: tokio::sync::Mutex<Vec<(H2Sender, Instant)>>,
    h1_idle: Arc<Mutex<Vec<IdleH1>>>,
}

impl Conns {
    /// Connections to `addr`, over mTLS when `tls` is given.
    pub fn new(addr: SocketAddr, connect_timeout: Duration, tls: Option<TlsTarget>) -> Self {
        Conns {
            addr,
            connect_timeout,
            tls,
            h2: tokio::sync::Mutex::new(Vec::new()),
            h1_idle: Arc::new(Mutex::new(Vec::new())),
        }
    }

    async fn connect(&self, protocol: Protocol) -> Result<TokioIo<Box<dyn Io>>, ProxyError> {
        let connect = async {
            let stream = TcpStream::connect(self.addr)
                .await
                .map_err(|e| ProxyError::Connect(self.addr, e))?;
            let _ = stream.set_nodelay(true);
            let Some(tls) = &self.tls else {
                return Ok(Box::new(stream) as Box<dyn Io>);
            };
            let config = match protocol {
                Protocol::Http2 => tls.configs.h2.clone(),
                Protocol::Http1 => tls.configs.h1.clone(),
            };
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(tls.server_name.clone(), stream)
                .await
                .map_err(|e| ProxyError::Tls(self.addr, e.to_string()))?;
            Ok(Box::new(stream) as Box<dyn Io>)
        };
        // The connect timeout covers the TLS handshake too.
        let io = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| ProxyError::ConnectTimeout(self.addr))??;
        Ok(TokioIo::new(io))
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A connection ready for one request: pooled, or new (this is where connecting fails,
    /// before any request is committed to the endpoint).
    pub async fn checkout(&self, protocol: Protocol) -> Result<Sender, ProxyError> {
        Ok(match protocol {
            Protocol::Http2 => Sender::H2(self.h2_sender(false).await?),
            Protocol::Http1 => Sender::H1(self.h1_sender(false).await?),
        })
    }

    /// Sends a request on `sender`, retrying once on a new connection if that one was found
    /// dead before the request went out.
    #[allow(clippy::manual_async_fn)]
    pub fn send(
        &self,
        sender: Sender,
        req: crate::http::BoxRequest,
    ) -> impl std::future::Future<Output = Result<http::Response<Body>, ProxyError>> {
        // Not an `async fn`: its state would hold each by-value argument twice (see `forward::forward`).
        async move {
            match sender {
                Sender::H2(s) => self.send_h2(s, req).await,
                // Boxed: hyper's HTTP/1.1 send (and the retry on a dead connection) is twice the
                // size of the HTTP/2 path, and every request in flight would carry it inline.
                Sender::H1(s) => Box::pin(self.send_h1(s, *req)).await,
            }
        }
    }

    #[allow(clippy::manual_async_fn)]
    fn send_h1(
        &self,
        sender: http1::SendRequest<Body>,
        req: http::Request<Body>,
    ) -> impl std::future::Future<Output = Result<http::Response<Body>, ProxyError>> {
        // Not an `async fn`: its state would hold each by-value argument twice (see `forward::forward`).
        async move {
            let (mut sender, mut req) = (sender, req);
            for attempt in 0..2 {
                match sender.try_send_request(req).await {
                    Ok(resp) => {
                        self.release_h1(sender);
                        return Ok(resp.map(body::boxed::<hyper::body::Incoming>));
                    }
                    Err(mut e) => match e.take_message() {
                        Some(r) if attempt == 0 => {
                            tracing::debug!(addr = %self.addr, error = %e.error(), "connection was dead before the request was sent; retrying");
                            req = r;
                            sender = self.h1_sender(true).await?;
                        }
                        _ => return Err(ProxyError::Upstream(e.into_error().into())),
                    },
                }
            }
            Err(ProxyError::Unavailable("retry budget exhausted"))
        }
    }

    #[allow(clippy::manual_async_fn)]
    fn send_h2(
        &self,
        sender: H2Sender,
        req: crate::http::BoxRequest,
    ) -> impl std::future::Future<Output = Result<http::Response<Body>, ProxyError>> {
        // Not an `async fn`: its state would hold each by-value argument twice (see `forward::forward`).
        async move {
            match sender {
                H2Sender::Pillion(sender) => self.send_pillion(sender, req).await,
                H2Sender::Crate(sender) => Box::pin(self.send_h2_crate(sender, req)).await,
            }
        }
    }

    #[allow(clippy::manual_async_fn)]
    fn send_pillion(
        &self,
        sender: pillion_http2::client::SendRequest,
        req: crate::http::BoxRequest,
    ) -> impl std::future::Future<Output = Result<http::Response<Body>, ProxyError>> {
        async move {
            let mut req = req;
            let mut sender = self.with_room(sender).await?;
            // A stream the server refused, or left unprocessed when it went away (GOAWAY: a
            // server restarting, or closing a connection after so many requests, as nginx does
            // after 1,000 and gRPC servers do at their maximum connection age), goes out once
            // more on a connection that takes it. The server did nothing with it (RFC 9113
            // §8.7), so this holds for any method. A body streams out as it comes; what was
            // read of it is kept (up to `RESEND_BODY_MAX`) until the response starts, so that
            // it can be sent again.
            let content = std::mem::replace(req.body_mut(), body::empty());
            let kept = Kept::new(content).await;
            let mut attempt = 1;
            loop {
                let sent = match &kept {
                    Kept::Whole(None) => {
                        sender.send(req.method(), req.uri(), req.headers(), body::empty())
                    }
                    Kept::Whole(Some(data)) => sender.send(
                        req.method(),
                        req.uri(),
                        req.headers(),
                        http_body_util::Full::new(data.clone()),
                    ),
                    Kept::Replay(r) => {
                        sender.send(req.method(), req.uri(), req.headers(), r.attempt())
                    }
                };
                let (error, unsent) = match sent {
                    Ok(response) => match response.await {
                        Ok(resp) => {
                            if let Kept::Replay(r) = &kept {
                                r.stop_keeping();
                            }
                            return Ok(resp.map(body::boxed));
                        }
                        Err(e) => {
                            let refused = e.is_refused();
                            (e, refused)
                        }
                    },
                    // Closed since `with_room` looked: the request did not go out.
                    Err(e) => (e.into(), true),
                };
                let whole = match &kept {
                    Kept::Whole(_) => true,
                    Kept::Replay(r) => r.can_replay(),
                };
                if !unsent || !whole || attempt == REFUSED_ATTEMPTS {
                    return Err(ProxyError::Upstream(error.into()));
                }
                tracing::debug!(addr = %self.addr, %error, attempt, "request not processed by the server; sending it again");
                crate::telemetry::metrics::REQUESTS_RESENT.inc();
                attempt += 1;
                sender = self.with_room(sender).await?;
            }
        }
    }

    /// `sender`, or another connection of the pool, with a stream free for a request now:
    /// another request may have taken the last one since checkout (on another thread of the
    /// runtime), or the connection closed. At the pool's limit, it waits for one.
    async fn with_room(
        &self,
        sender: pillion_http2::client::SendRequest,
    ) -> Result<pillion_http2::client::SendRequest, ProxyError> {
        let mut sender = sender;
        // A connection found closed is replaced, a few times at most: a server that closes
        // every new connection at once is not dialled without end.
        let mut closed = 0;
        loop {
            let wait = match sender.has_room() {
                Ok(true) => return Ok(sender),
                Ok(false) => {
                    let (next, room) = self.pillion_pick(false).await?;
                    sender = next;
                    !room
                }
                // A connection found closed here has not seen the request: a new one.
                Err(e) => {
                    tracing::debug!(addr = %self.addr, error = %e, "connection was dead before the request was sent; retrying");
                    closed += 1;
                    if closed == REFUSED_ATTEMPTS {
                        return Err(ProxyError::Upstream(e.into()));
                    }
                    sender = self.pillion_pick(true).await?.0;
                    true
                }
            };
            // Waiting for a stream, the connection may close (the server going away once
            // others have used it up): then round again.
            if wait && sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
    }

    /// `h2_pick` for callers on Pillion's own HTTP/2 client.
    async fn pillion_pick(
        &self,
        fresh: bool,
    ) -> Result<(pillion_http2::client::SendRequest, bool), ProxyError> {
        match self.h2_pick(fresh).await? {
            (H2Sender::Pillion(s), room) => Ok((s, room)),
            (H2Sender::Crate(_), _) => Err(ProxyError::Unavailable("HTTP/2 client changed")),
        }
    }

    async fn send_h2_crate(
        &self,
        sender: h2::client::SendRequest<Bytes>,
        req: crate::http::BoxRequest,
    ) -> Result<http::Response<Body>, ProxyError> {
        // Waits for a stream slot under the peer's limit. A connection found closed here has
        // not seen the request: once more on a new one.
        let mut ready = match sender.ready().await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(addr = %self.addr, error = %e, "connection was dead before the request was sent; retrying");
                match self.h2_sender(true).await? {
                    H2Sender::Crate(s) => s
                        .ready()
                        .await
                        .map_err(|e| ProxyError::Upstream(e.into()))?,
                    H2Sender::Pillion(_) => {
                        return Err(ProxyError::Unavailable("HTTP/2 client changed"));
                    }
                }
            }
        };
        let (parts, body) = (*req).into_parts();
        let end = body.is_end_stream();
        let (response, stream) = ready
            .send_request(http::Request::from_parts(parts, ()), end)
            .map_err(|e| ProxyError::Upstream(e.into()))?;
        if !end {
            // The body goes up beside the wait for the response (a server may answer first).
            let mut pipe = Box::pin(h2_server::send_body(body, stream, h2::Reason::CANCEL));
            if futures_util::poll!(pipe.as_mut()).is_pending() {
                tokio::spawn(pipe);
            }
        }
        let resp = response.await.map_err(|e| ProxyError::Upstream(e.into()))?;
        let (parts, recv) = resp.into_parts();
        Ok(http::Response::from_parts(
            parts,
            h2_server::RequestBody::response(recv),
        ))
    }

    /// A connection for one request (see `h2_pick`).
    async fn h2_sender(&self, fresh: bool) -> Result<H2Sender, ProxyError> {
        Ok(self.h2_pick(fresh).await?.0)
    }

    /// The first connection with a stream free, else a new one (the server's limit is reached
    /// on every one), else, at `MAX_H2_CONNS`, the first, with `false`: the request waits there
    /// for a stream. `fresh`: the caller found its connection dead.
    async fn h2_pick(&self, fresh: bool) -> Result<(H2Sender, bool), ProxyError> {
        let mut conns = self.h2.lock().await;
        if fresh {
            // The `h2` crate's client says nothing of a dead connection: replace it.
            conns.retain(|(s, _)| matches!(s, H2Sender::Pillion(_)));
        }
        // The first with room, so that load gathers on the first connections and the others
        // fall idle once a peak has passed.
        let mut full_at = None;
        let mut i = 0;
        while i < conns.len() {
            match conns[i].0.has_room() {
                Ok(true) => {
                    let picked = conns[i].0.clone();
                    if conns.len() > 1 {
                        reap_idle_h2(&mut conns, i);
                    }
                    return Ok((picked, true));
                }
                Ok(false) => {
                    full_at = Some(conns[i].0.max_streams());
                    i += 1;
                }
                Err(_) => {
                    conns.remove(i);
                }
            }
        }
        // At the pool's limit, or the server takes no stream at all now (a limit of 0: more
        // connections would get none either), the request waits on the first.
        if (conns.len() >= MAX_H2_CONNS || full_at == Some(0))
            && let Some((s, _)) = conns.first()
        {
            return Ok((s.clone(), false));
        }
        // Boxed, as every new connection is: its futures (TCP connect, TLS and HTTP/2
        // handshakes: a rustls connection alone is kilobytes) would otherwise be part of every
        // request's future, and so of the memory of every request in flight.
        let sender = Box::pin(self.dial_h2()).await?;
        // At the server's limit on the others: presume the same of this one until its
        // SETTINGS come (presuming none, a burst would be refused).
        if let (Some(n), H2Sender::Pillion(s)) = (full_at, &sender) {
            s.presume_max_streams(n);
        }
        if !conns.is_empty() {
            tracing::debug!(addr = %self.addr, connections = conns.len() + 1, "every HTTP/2 connection at the server's stream limit: another opened");
        }
        conns.push((sender.clone(), Instant::now()));
        Ok((sender, true))
    }

    async fn dial_h2(&self) -> Result<H2Sender, ProxyError> {
        let io = self.connect(Protocol::Http2).await?;
        let addr = self.addr;
        if !H2_CRATE.load(Ordering::Relaxed) {
            let (sender, conn) = pillion_http2::client::handshake(
                io.into_inner(),
                client_config(),
                Some(h2_server::KEEP_ALIVE),
            );
            // The connection is driven by its own task (which pings the peer, too).
            let conn = super::batch::Batched::new(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%addr, error = %e, "HTTP/2 connection ended");
                }
            });
            return Ok(H2Sender::Pillion(sender));
        }
        let (sender, mut conn) = h2::client::Builder::new()
            .initial_window_size(h2_server::STREAM_WINDOW)
            .initial_connection_window_size(h2_server::CONNECTION_WINDOW)
            .handshake::<_, Bytes>(io.into_inner())
            .await
            .map_err(|e| ProxyError::Upstream(e.into()))?;
        // The connection is driven by its own task; pings find a peer that stopped answering.
        let (dead_tx, dead_rx) = tokio::sync::oneshot::channel();
        if let Some(pings) = conn.ping_pong() {
            tokio::spawn(h2_server::keep_alive(pings, dead_tx));
        }
        let mut conn = super::batch::Batched::new(conn);
        tokio::spawn(async move {
            tokio::select! {
                result = &mut conn => if let Err(e) = result {
                    tracing::debug!(%addr, error = %e, "HTTP/2 connection ended");
                },
                Ok(()) = dead_rx => tracing::debug!(%addr, "HTTP/2 peer stopped answering pings; closed"),
            }
        });
        Ok(H2Sender::Crate(sender))
    }

    async fn h1_sender(&self, fresh: bool) -> Result<http1::SendRequest<Body>, ProxyError> {
        if !fresh {
            // Connections go back into the pool as soon as their response headers arrive; one
            // becomes ready again when its response body has been read. Take a ready one; drop
            // closed and long-idle ones; leave busy ones.
            let mut pool = lock(&self.h1_idle);
            let mut found = None;
            pool.retain(|(sender, since)| {
                if sender.is_closed() || since.elapsed() >= IDLE_TIMEOUT {
                    return false;
                }
                true
            });
            if let Some(i) = pool.iter().rposition(|(sender, _)| sender.is_ready()) {
                found = Some(pool.swap_remove(i).0);
            }
            if let Some(sender) = found {
                return Ok(sender);
            }
        }
        Box::pin(self.dial_h1()).await
    }

    /// A new HTTP/1.1 connection (boxed by its caller, as `dial_h2`).
    async fn dial_h1(&self) -> Result<http1::SendRequest<Body>, ProxyError> {
        let io = self.connect(Protocol::Http1).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| ProxyError::Upstream(e.into()))?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "HTTP/1.1 connection ended");
            }
        });
        Ok(sender)
    }

    /// Puts an HTTP/1.1 connection back at once (no task to wait for it to be ready: checkout
    /// skips it until its response body has been read).
    fn release_h1(&self, sender: http1::SendRequest<Body>) {
        let mut pool = lock(&self.h1_idle);
        if pool.len() < MAX_IDLE {
            pool.push((sender, Instant::now()));
        }
    }
}

/// Notes that a request took connection `picked`, and closes the last connection if no stream
/// has been open on it for `IDLE_TIMEOUT` (one opened for a peak: not at once, or a load that
/// hovers at the server's limit would open and close connections without end).
fn reap_idle_h2(conns: &mut Vec<(H2Sender, Instant)>, picked: usize) {
    let now = Instant::now();
    conns[picked].1 = now;
    let last = conns.len() - 1;
    if last != picked {
        if !conns[last].0.is_idle() {
            conns[last].1 = now;
        } else if now.duration_since(conns[last].1) >= IDLE_TIMEOUT {
            conns.pop();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection as the pool holds it, last taken `ago`; its task's half is returned too,
    /// to be kept alive (dropping it closes the connection).
    fn conn(ago: Duration) -> ((H2Sender, Instant), impl Sized) {
        let (io, peer) = tokio::io::duplex(64);
        let (sender, task) = pillion_http2::client::handshake(io, client_config(), None);
        let taken = Instant::now().checked_sub(ago).unwrap();
        ((H2Sender::Pillion(sender), taken), (task, peer))
    }

    /// The last connection (one opened for a peak) closes once nothing has used it for
    /// `IDLE_TIMEOUT`; not sooner, and not while a request takes it.
    #[test]
    fn an_extra_connection_closes_after_a_minute_idle() {
        let long = IDLE_TIMEOUT + Duration::from_secs(1);
        let (first, _a) = conn(Duration::ZERO);
        let (recent, _b) = conn(Duration::from_secs(1));
        let mut conns = vec![first.clone(), recent];
        reap_idle_h2(&mut conns, 0);
        assert_eq!(conns.len(), 2, "idle for a second only");

        let (old, _c) = conn(long);
        let mut conns = vec![first.clone(), old.clone()];
        reap_idle_h2(&mut conns, 1);
        assert_eq!(conns.len(), 2, "the one taken stays");
        let mut conns = vec![first, old];
        reap_idle_h2(&mut conns, 0);
        assert_eq!(conns.len(), 1, "idle for over a minute");
    }
}
