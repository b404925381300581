//! Inbound: requests from the mesh to the local application. mTLS from other proxies is
//! terminated here (the client's identity is learnt and passed on in `pillion-client-id`);
//! plaintext from unmeshed callers is accepted when the policy allows it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Response};

use crate::balance::EndpointCache;
use crate::control::policy::Policies;
use crate::http::BoxRequest;
use crate::http::body::Body;
use crate::http::errors::{ProxyError, is_grpc};
use crate::http::forward::{
    self, APP_PROTO_HEADER, ORIG_PROTO_HEADER, Observation, TARGET_PORT_HEADER, authority_of,
};
use crate::http::pool::{Io, Protocol};
use crate::identity::LocalIdentity;
use crate::listener::{ConnMeta, Handler};
use crate::telemetry::metrics::{DenialLabels, Direction, Label, Metrics};

/// The verified SPIFFE ID of the calling workload, set by the proxy only.
pub const CLIENT_ID_HEADER: &str = "pillion-client-id";

pub struct Inbound {
    /// The local application; `None`: 127.0.0.1 at the original destination's port.
    pub forward_to: Option<SocketAddr>,
    pub app: EndpointCache,
    pub app_protocols: crate::http::app_protocol::AppProtocols,
    pub metrics: Arc<Metrics>,
    pub connect_timeout: Duration,
    /// How long a request waits for the application's response headers (`None`: no limit).
    pub request_timeout: Option<Duration>,
    /// One log line per request (`PILLION_ACCESS_LOG`).
    pub access_log: bool,
    /// Records a SERVER span per sampled request, when tracing is on.
    pub tracer: Option<Arc<crate::telemetry::trace::Tracer>>,
    pub identity: Option<Arc<LocalIdentity>>,
    pub policies: Policies,
}

impl Inbound {
    /// The application address: the configured one, else 127.0.0.1 at the port the peer proxy
    /// named (mTLS hops), else at the original destination's port.
    fn target(&self, conn: &ConnMeta, named_port: Option<u16>) -> Result<SocketAddr, ProxyError> {
        let target = self.forward_to.unwrap_or_else(|| {
            let port = named_port.unwrap_or_else(|| conn.orig_dst.unwrap_or(conn.local).port());
            SocketAddr::from(([127, 0, 0, 1], port))
        });
        // Forwarding to our own listener would loop forever.
        if target == conn.local {
            return Err(ProxyError::Loop);
        }
        Ok(target)
    }

    /// Whether the caller may reach application port `port`; a refusal is counted and logged
    /// with the caller's identity.
    fn authorize(&self, conn: &ConnMeta, port: u16) -> Result<(), ProxyError> {
        match self.policies.decide(port, conn.client_id.as_deref()) {
            Ok(()) => Ok(()),
            Err(denied) => {
                self.metrics
                    .authorization_denials
                    .get_or_create(&DenialLabels {
                        authorization: Label(denied.by.clone()),
                    })
                    .inc();
                tracing::info!(
                    peer = %conn.peer,
                    client_id = conn.client_id.as_deref().unwrap_or("(none: plaintext)"),
                    port,
                    by = %denied.by,
                    "inbound denied by policy"
                );
                Err(ProxyError::Forbidden("not authorized"))
            }
        }
    }

    #[allow(clippy::manual_async_fn)]
    fn handle(
        &self,
        mut req: BoxRequest,
        conn: &ConnMeta,
        authority: String,
    ) -> impl std::future::Future<Output = Result<Response<Body>, ProxyError>> {
        // Not an `async fn`: its state would hold each by-value argument twice (see `forward::forward`).
        async move {
            // CONNECT is the outbound side's (to a mesh destination); nothing tunnels inbound.
            if req.method() == http::Method::CONNECT {
                return Err(ProxyError::MethodNotAllowed("CONNECT"));
            }
            forward::check_host(&req)?;
            let headers = req.headers_mut();
            // Only the proxy says who the client is.
            headers.remove(CLIENT_ID_HEADER);
            if let Some(id) = &conn.client_id
                && let Ok(v) = HeaderValue::from_str(id)
            {
                headers.insert(CLIENT_ID_HEADER, v);
            }
            // What the peer proxy says about the original request counts only on an mTLS hop.
            let (named_port, hint, caller_http1) = if conn.tls {
                let port = headers
                    .get(TARGET_PORT_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u16>().ok());
                let http1 = headers
                    .get(ORIG_PROTO_HEADER)
                    .is_some_and(|v| v.as_bytes().starts_with(b"HTTP/1"));
                let hint = match headers.get(APP_PROTO_HEADER).map(HeaderValue::as_bytes) {
                    Some(b"h2") => Some(Protocol::Http2),
                    Some(b"http/1.1") => Some(Protocol::Http1),
                    _ => None,
                };
                (port, hint, http1)
            } else {
                (None, None, req.version() != http::Version::HTTP_2)
            };
            let target = self.target(conn, named_port)?;
            self.authorize(conn, target.port())?;
            // The application's protocol: discovery's hint; else HTTP/2 for gRPC; else the
            // caller's own protocol when it was HTTP/1.1; else (an HTTP/2 caller) what a probe of
            // the application finds, so that an HTTP/1.1-only application still gets HTTP/1.1.
            let protocol = match hint {
                // An upgrade (WebSocket) exists only in HTTP/1.1.
                _ if forward::wants_upgrade(&req) => Protocol::Http1,
                Some(p) => p,
                None if is_grpc(req.headers()) => Protocol::Http2,
                None if caller_http1 => Protocol::Http1,
                None => self.app_protocols.of(target, self.connect_timeout).await,
            };
            let endpoint = self.app.get(target);
            let authority = if authority.is_empty() {
                target.to_string()
            } else {
                authority
            };
            let opts = forward::ForwardOpts {
                authority: &authority,
                timeout: forward::grpc_timeout(req.headers()).or(self.request_timeout),
                protocol: Some(protocol),
            };
            forward::forward(&endpoint, req, opts)
                .await
                .map_err(forward::ForwardError::into_error)
        }
    }
}

impl Handler for Inbound {
    fn direction(&self) -> Direction {
        Direction::inbound
    }

    #[allow(clippy::manual_async_fn)]
    fn http(
        self: Arc<Self>,
        mut req: BoxRequest,
        conn: Arc<ConnMeta>,
    ) -> impl std::future::Future<Output = Response<Body>> + Send {
        // Not an `async fn`: its state would hold each by-value argument twice (see `forward::forward`).
        async move {
            let grpc = is_grpc(req.headers());
            let authority = authority_of(&req).unwrap_or_default();
            let mut obs = Observation::new(Direction::inbound, Label::from(authority.as_str()));
            if self.access_log {
                obs.access = Some(forward::Access::of(&req, conn.peer));
            }
            if let Some(tracer) = &self.tracer {
                obs.span = tracer
                    .start(crate::telemetry::trace::Kind::Server, &mut req)
                    .map(|span| Box::new((tracer.clone(), span)));
                obs.remote(conn.peer, None);
            }
            obs.tls = conn.tls;
            if let Some(id) = &conn.client_id {
                obs.peer_identity = Label(id.clone());
            }
            let result = self.handle(req, &conn, authority).await;
            obs.finish(&self.metrics, result, grpc)
        }
    }

    async fn opaque(self: Arc<Self>, mut io: Box<dyn Io>, conn: ConnMeta) {
        // Over mTLS the peer proxy first names the application port, in two bytes.
        let named_port = if conn.tls {
            let mut port = [0u8; 2];
            let read = tokio::io::AsyncReadExt::read_exact(&mut io, &mut port);
            match tokio::time::timeout(Duration::from_secs(10), read).await {
                Ok(Ok(_)) => Some(u16::from_be_bytes(port)),
                _ => {
                    tracing::info!(peer = %conn.peer, "opaque mTLS connection without its port; closed");
                    return;
                }
            }
        } else {
            None
        };
        match self.target(&conn, named_port) {
            // A denied connection is closed.
            Ok(target) if self.authorize(&conn, target.port()).is_err() => {}
            Ok(target) => forward::tcp(io, target, self.connect_timeout).await,
            Err(e) => tracing::warn!(peer = %conn.peer, error = %e, "inbound connection refused"),
        }
    }

    fn tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.identity.as_ref().map(|i| i.server_config.clone())
    }
}
