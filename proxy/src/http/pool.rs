//! Connections to one endpoint: one multiplexed HTTP/2 connection, and a pool of idle HTTP/1.1
//! connections. Requests that provably never reached the peer (the connection was found dead
//! before the request was written) are sent again on a fresh connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::http::body::Body;
use crate::http::errors::ProxyError;

/// HTTP/1.1 connections kept per endpoint (busy or idle), and how long an idle one is kept.
const MAX_IDLE: usize = 64;
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// An idle HTTP/1.1 connection and when it became idle.
type IdleH1 = (http1::SendRequest<Body>, Instant);

/// A connection checked out for one request.
pub enum Sender {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
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

pub struct Conns {
    addr: SocketAddr,
    connect_timeout: Duration,
    tls: Option<TlsTarget>,
    /// Held across the handshake so that concurrent requests share one new connection.
    h2: tokio::sync::Mutex<Option<http2::SendRequest<Body>>>,
    h1_idle: Arc<Mutex<Vec<IdleH1>>>,
}

impl Conns {
    /// Connections to `addr`, over mTLS when `tls` is given.
    pub fn new(addr: SocketAddr, connect_timeout: Duration, tls: Option<TlsTarget>) -> Self {
        Conns {
            addr,
            connect_timeout,
            tls,
            h2: tokio::sync::Mutex::new(None),
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
    pub async fn send(
        &self,
        sender: Sender,
        req: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, ProxyError> {
        let (mut sender, mut req) = (sender, req);
        for attempt in 0..2 {
            let result = match &mut sender {
                Sender::H2(s) => s.try_send_request(req).await,
                Sender::H1(s) => s.try_send_request(req).await,
            };
            match result {
                Ok(resp) => {
                    if let Sender::H1(s) = sender {
                        self.release_h1(s);
                    }
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(r) if attempt == 0 => {
                        tracing::debug!(addr = %self.addr, error = %e.error(), "connection was dead before the request was sent; retrying");
                        req = r;
                        sender = match sender {
                            Sender::H2(_) => Sender::H2(self.h2_sender(true).await?),
                            Sender::H1(_) => Sender::H1(self.h1_sender(true).await?),
                        };
                    }
                    _ => return Err(ProxyError::Upstream(e.into_error())),
                },
            }
        }
        Err(ProxyError::Unavailable("retry budget exhausted"))
    }

    async fn h2_sender(&self, fresh: bool) -> Result<http2::SendRequest<Body>, ProxyError> {
        let mut slot = self.h2.lock().await;
        if !fresh
            && let Some(s) = slot.as_ref()
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        let io = self.connect(Protocol::Http2).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .adaptive_window(true)
            .keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .handshake(io)
            .await
            .map_err(ProxyError::Upstream)?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "HTTP/2 connection ended");
            }
        });
        *slot = Some(sender.clone());
        Ok(sender)
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
        let io = self.connect(Protocol::Http1).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(ProxyError::Upstream)?;
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}
