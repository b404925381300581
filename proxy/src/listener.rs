//! Accepting connections: detect the protocol, then serve HTTP/1.1 or HTTP/2 with hyper, or
//! hand opaque bytes to the direction's TCP forwarder. Connections are tracked so that a
//! shutdown can stop accepting and wait for them (gracefully closing idle HTTP connections).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::http::body::Body;
use crate::http::h2_server::{EARLY_RESET_FLOOR, PEER_EARLY_RESET_FLOOR};
use crate::http::pool::Io;
use crate::identity;
use crate::telemetry::metrics::{ConnLabels, Direction, DirectionLabel, Label, Metrics};
use crate::transport::detect::{self, Detected, Prefixed};

/// What a handler knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnMeta {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Where the client meant to connect, when iptables redirected it here.
    pub orig_dst: Option<SocketAddr>,
    /// The connection was mTLS, terminated here.
    pub tls: bool,
    /// The client's verified SPIFFE ID (mTLS only).
    pub client_id: Option<Arc<str>>,
    /// Inside a CONNECT tunnel: the mesh destination it was opened to.
    pub tunnel: Option<Arc<str>>,
}

pub trait Handler: Send + Sync + 'static {
    fn direction(&self) -> Direction;
    fn http(
        self: Arc<Self>,
        req: crate::http::BoxRequest,
        conn: Arc<ConnMeta>,
    ) -> impl Future<Output = http::Response<Body>> + Send;
    fn opaque(self: Arc<Self>, io: Box<dyn Io>, conn: ConnMeta) -> impl Future<Output = ()> + Send;
    /// The TLS configuration to terminate mTLS with; `None`: TLS passes through as bytes.
    fn tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        None
    }
}

/// A TLS handshake from a client gets this long.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ListenerConfig {
    pub detect_timeout: Duration,
    pub opaque_ports: Vec<u16>,
    /// Connections held at once; past it, accepting waits until one closes.
    pub max_connections: usize,
    /// An HTTP connection with no new request for this long is closed gracefully (HTTP/2
    /// pings keep dead peers out; this keeps live but unused ones from piling up).
    pub idle_timeout: Duration,
    pub limits: crate::http::h2_server::Limits,
}

/// Counts live connections; shutdown waits for the count to reach zero.
#[derive(Clone)]
pub struct Tracker {
    tx: Arc<watch::Sender<usize>>,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            tx: Arc::new(watch::channel(0).0),
        }
    }
}

pub struct Tracked(Arc<watch::Sender<usize>>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl Tracker {
    pub fn track(&self) -> Tracked {
        self.tx.send_modify(|n| *n += 1);
        Tracked(self.tx.clone())
    }

    /// Resolves when no tracked connection is left.
    pub async fn idle(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    pub fn count(&self) -> usize {
        *self.tx.borrow()
    }
}

/// Accepts until `shutdown` turns true; each connection then finishes what it has in flight.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    cfg: Arc<ListenerConfig>,
    metrics: Arc<Metrics>,
    tracker: Tracker,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections));
    loop {
        let permit = match limit.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                tracing::warn!(
                    max = cfg.max_connections,
                    "connection limit reached; new connections wait (PILLION_MAX_CONNECTIONS)"
                );
                tokio::select! {
                    p = limit.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    _ = signalled(&mut shutdown) => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = signalled(&mut shutdown) => break,
        };
        let tracked = tracker.track();
        let handler = handler.clone();
        let cfg = cfg.clone();
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _tracked = tracked;
            let _permit = permit;
            serve_conn(stream, peer, handler, cfg, metrics, shutdown).await;
        });
    }
}

async fn serve_conn<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    handler: Arc<H>,
    cfg: Arc<ListenerConfig>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let orig_dst = crate::transport::orig_dst::original_dst(&stream);
    let direction = handler.direction();
    let by_direction = DirectionLabel { direction };
    metrics.tcp_open.get_or_create(&by_direction).inc();
    let mut stream = crate::transport::counted::Counted::new(
        stream,
        metrics.tcp_read_bytes.get_or_create(&by_direction).clone(),
        metrics.tcp_write_bytes.get_or_create(&by_direction).clone(),
        metrics.tcp_close.get_or_create(&by_direction).clone(),
    );
    let mut conn = ConnMeta {
        peer,
        local,
        orig_dst,
        tls: false,
        client_id: None,
        tunnel: None,
    };
    let port = orig_dst.unwrap_or(local).port();
    let (detected, prefix) = if cfg.opaque_ports.contains(&port) {
        (Detected::Opaque, bytes::Bytes::new())
    } else {
        // Boxed, like each protocol's future below: the connection's task is as large as its
        // largest state for the connection's whole life, and detection (its timer and read)
        // lasts only until the first bytes.
        match Box::pin(detect::detect(&mut stream, cfg.detect_timeout)).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "connection failed before detection");
                return;
            }
        }
    };
    let count = |protocol: &'static str| {
        metrics
            .connections
            .get_or_create(&ConnLabels {
                direction,
                protocol: Label::from(protocol),
            })
            .inc();
    };
    let io = Prefixed::new(prefix, stream);
    match detected {
        Detected::Closed => {}
        // Each branch's future is boxed: inline, the task of every connection would be as
        // large as the largest branch (11 KB), whichever protocol it speaks.
        Detected::Http1 => {
            count("http/1");
            Box::pin(serve_h1(io, handler, conn, &cfg, shutdown)).await;
        }
        Detected::Http2 => {
            count("h2");
            Box::pin(serve_h2(io, handler, conn, &cfg, shutdown)).await;
        }
        Detected::Tls if handler.tls().is_some() => {
            let Some(config) = handler.tls() else { return };
            let accept = tokio_rustls::TlsAcceptor::from(config).accept(io);
            let tls = match Box::pin(tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, accept)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    metrics
                        .tls_handshake_failures
                        .get_or_create(&DirectionLabel { direction })
                        .inc();
                    tracing::info!(%peer, error = %e, "mTLS handshake refused");
                    return;
                }
                Err(_) => {
                    metrics
                        .tls_handshake_failures
                        .get_or_create(&DirectionLabel { direction })
                        .inc();
                    tracing::info!(%peer, "mTLS handshake timed out");
                    return;
                }
            };
            let (_, session) = tls.get_ref();
            let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
            conn.tls = true;
            conn.client_id = session
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(identity::peer_identity)
                .map(Arc::from);
            match alpn.as_deref() {
                Some(identity::ALPN_H2) => {
                    count("h2+mtls");
                    Box::pin(serve_h2(tls, handler, conn, &cfg, shutdown)).await;
                }
                Some(identity::ALPN_TCP) => {
                    count("opaque+mtls");
                    Box::pin(handler.opaque(Box::new(tls), conn)).await;
                }
                _ => {
                    count("http/1+mtls");
                    Box::pin(serve_h1(tls, handler, conn, &cfg, shutdown)).await;
                }
            }
        }
        Detected::Tls | Detected::Opaque => {
            count("opaque");
            Box::pin(handler.opaque(Box::new(io), conn)).await;
        }
    }
}

/// Serves the inside of a CONNECT tunnel like a new connection: HTTP is served (requests
/// route by their own authority), anything else goes to the tunnel's destination as bytes.
pub async fn serve_tunnel<H: Handler>(
    mut io: Box<dyn Io>,
    handler: Arc<H>,
    conn: ConnMeta,
    cfg: Arc<ListenerConfig>,
    shutdown: watch::Receiver<bool>,
) {
    let (detected, prefix) = match detect::detect(&mut io, cfg.detect_timeout).await {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(peer = %conn.peer, error = %e, "tunnel failed before detection");
            return;
        }
    };
    let io = Prefixed::new(prefix, io);
    match detected {
        Detected::Closed => {}
        Detected::Http1 => serve_h1(io, handler, conn, &cfg, shutdown).await,
        Detected::Http2 => serve_h2(io, handler, conn, &cfg, shutdown).await,
        Detected::Tls | Detected::Opaque => handler.opaque(Box::new(io), conn).await,
    }
}

// HTTP/1.1 and HTTP/2 are served by two functions, not by one with a branch for each: a
// connection's future is as large as its largest branch, and HTTP/2's (its connection state
// inline) made every idle HTTP/1.1 connection's 5 KB.

/// Serves HTTP/2 on one connection until it ends; on shutdown, or once no request came for the
/// idle timeout, closes it gracefully (in-flight requests finish).
async fn serve_h2<I: Io, H: Handler>(
    io: I,
    handler: Arc<H>,
    conn: ConnMeta,
    cfg: &ListenerConfig,
    shutdown: watch::Receiver<bool>,
) {
    let peer = conn.peer;
    let direction = handler.direction();
    // Shared by the connection's requests: each request's future holds a pointer, not a copy.
    let conn = Arc::new(conn);
    let activity = Arc::new(Activity::default());
    let seen = activity.clone();
    let serve = move |req: http::Request<Body>| {
        let handler = handler.clone();
        let conn = conn.clone();
        let seen = seen.clone();
        // Boxed before the `async` block: a by-value request would stay in its state.
        let req = Box::new(req);
        // The request's future boxed: the per-request task that runs it is moved several
        // times on its way into tokio's task cell, each a copy of its whole size.
        Box::pin(async move {
            let _busy = seen.start();
            handler.http(req, conn).await
        })
    };
    let stop = idle_or_shutdown(peer, activity, cfg.idle_timeout, shutdown);
    let mut limits = cfg.limits;
    if direction == Direction::inbound {
        // Most of what comes in is from peer proxies: see `PEER_EARLY_RESET_FLOOR`.
        limits.early_reset_floor = limits
            .early_reset_floor
            .saturating_mul(PEER_EARLY_RESET_FLOOR / EARLY_RESET_FLOOR);
    }
    crate::http::batch::Batched::new(crate::http::h2_server::serve(io, peer, limits, serve, stop))
        .await;
}

/// Serves HTTP/1.1 (with upgrades) on one connection until it ends; on shutdown, or once no
/// request came for the idle timeout, closes it gracefully (in-flight requests finish, idle
/// keep-alive ends).
async fn serve_h1<I: Io, H: Handler>(
    io: I,
    handler: Arc<H>,
    conn: ConnMeta,
    cfg: &ListenerConfig,
    shutdown: watch::Receiver<bool>,
) {
    let peer = conn.peer;
    let conn = Arc::new(conn);
    let activity = Arc::new(Activity::default());
    let seen = activity.clone();
    let max_header_bytes = cfg.limits.max_header_bytes as usize;
    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let handler = handler.clone();
        let conn = conn.clone();
        let seen = seen.clone();
        async move {
            let _busy = seen.start();
            // hyper's own bound is its read buffer, which a head read in one piece (as
            // detection hands it over) passes unchecked: the proxy's bound is checked here.
            if header_bytes(req.headers()) > max_header_bytes {
                tracing::debug!(%peer, "request headers too large; answered 431");
                let grpc = crate::http::errors::is_grpc(req.headers());
                return Ok(crate::http::errors::ProxyError::HeadersTooLarge.into_response(grpc));
            }
            let req = Box::new(req.map(crate::http::body::boxed::<hyper::body::Incoming>));
            // Boxed: hyper keeps a connection's service future in an allocation of its own for
            // the connection's life, as large as this one's state; with the handler's future
            // inline that was ~1.7 KB for every idle HTTP/1.1 connection.
            Ok::<_, Infallible>(Box::pin(handler.http(req, conn)).await)
        }
    });
    // hyper answers 431 to a header section past its read buffer (at least 8 KiB).
    // Half-closes are kept: a client may shut down its sending side once its request is out
    // and still read the answer (`nc`, scripts, some HTTP/1.0 clients); without the sidecar the
    // application would answer it, so the proxy does too (as HAProxy does by default). The
    // cost: a client that closes altogether is noticed when its answer is written, not when
    // its end of the connection is read.
    let conn = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.limits.header_read_timeout)
        .max_buf_size((cfg.limits.max_header_bytes as usize).max(8192))
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    let graceful = |c: std::pin::Pin<&mut _>| {
        hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(c)
    };
    drive(conn, graceful, peer, activity, cfg.idle_timeout, shutdown).await;
}

/// A header section's size as HTTP/2 counts it (RFC 9113 §6.5.2): names and values plus 32
/// bytes each.
fn header_bytes(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum()
}

/// Runs a connection until it ends, closing it gracefully on shutdown or when idle.
async fn drive<C, G>(
    conn: C,
    graceful: G,
    peer: SocketAddr,
    activity: Arc<Activity>,
    idle_timeout: Duration,
    shutdown: watch::Receiver<bool>,
) where
    C: Future<Output = Result<(), hyper::Error>>,
    G: Fn(std::pin::Pin<&mut C>),
{
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => return log_end(peer, r),
        _ = idle_or_shutdown(peer, activity, idle_timeout, shutdown) => {}
    }
    graceful(conn.as_mut());
    log_end(peer, conn.await);
}

/// Resolves on shutdown, or once the connection has had no request for `idle_timeout`: when
/// it should be closed gracefully.
async fn idle_or_shutdown(
    peer: SocketAddr,
    activity: Arc<Activity>,
    idle_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let check = (idle_timeout / 8).max(Duration::from_millis(10));
    let mut quiet = IdleWatch::new();
    loop {
        tokio::select! {
            _ = signalled(&mut shutdown) => return,
            _ = tokio::time::sleep(check) => {
                if quiet.idle(&activity, idle_timeout) {
                    tracing::debug!(%peer, "idle connection closed");
                    return;
                }
            }
        }
    }
}

/// Requests in flight on a connection, and how many have ended. The idle check compares the
/// count between its rounds rather than each request reading the clock as it ends (a clock
/// read costs ~75 ns in a VM: several percent of a request through one hop).
#[derive(Default)]
struct Activity {
    in_flight: AtomicUsize,
    ended: AtomicU64,
}

struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.ended.fetch_add(1, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Activity {
    fn start(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }
}

/// The idle check's memory between its rounds: the count it saw, and since when nothing
/// happened, as of its own rounds. Rounds come every eighth of the timeout: a connection is
/// closed after between one and one and a quarter timeouts without a request.
struct IdleWatch {
    seen: u64,
    quiet_since: Instant,
}

impl IdleWatch {
    fn new() -> Self {
        IdleWatch {
            seen: 0,
            quiet_since: Instant::now(),
        }
    }

    /// Whether no request was in flight, and none ended, for `timeout`.
    fn idle(&mut self, activity: &Activity, timeout: Duration) -> bool {
        self.idle_at(activity, timeout, Instant::now())
    }

    fn idle_at(&mut self, activity: &Activity, timeout: Duration, now: Instant) -> bool {
        let ended = activity.ended.load(Ordering::Relaxed);
        if activity.in_flight.load(Ordering::Relaxed) > 0 || ended != self.seen {
            self.seen = ended;
            self.quiet_since = now;
            return false;
        }
        now.saturating_duration_since(self.quiet_since) >= timeout
    }
}

/// Resolves once the shutdown switch is on (the guard `wait_for` returns must not be held).
async fn signalled(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn log_end(peer: SocketAddr, r: Result<(), hyper::Error>) {
    if let Err(e) = r {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_idle_after_a_quiet_timeout() {
        let timeout = Duration::from_secs(10);
        let activity = Arc::new(Activity::default());
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut quiet = IdleWatch {
            seen: 0,
            quiet_since: t0,
        };
        assert!(!quiet.idle_at(&activity, timeout, at(5)));
        assert!(quiet.idle_at(&activity, timeout, at(10)));

        // A request in flight holds it open however long it takes.
        let mut quiet = IdleWatch {
            seen: 0,
            quiet_since: t0,
        };
        let busy = activity.start();
        assert!(!quiet.idle_at(&activity, timeout, at(20)));
        assert!(!quiet.idle_at(&activity, timeout, at(40)));
        // Once it ends, the quiet starts over from the round that saw it end.
        drop(busy);
        assert!(!quiet.idle_at(&activity, timeout, at(45)));
        assert!(!quiet.idle_at(&activity, timeout, at(50)));
        assert!(quiet.idle_at(&activity, timeout, at(55)));

        // A request that started and ended between two rounds counts as activity.
        drop(activity.start());
        assert!(!quiet.idle_at(&activity, timeout, at(60)));
        assert!(quiet.idle_at(&activity, timeout, at(70)));
    }
}
