//! Outbound: requests from the local application to the mesh. Route by authority, split by
//! weight, balance over endpoints. Destinations outside the mesh go to their original
//! destination unchanged in transparent mode (the mesh never breaks egress), and get 503 "not in
//! mesh" in explicit mode (where there is no original destination to go to).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};

use crate::balance::{self, EndpointCache};
use crate::control::discovery::Destinations;
use crate::http::body::Body;
use crate::http::errors::{ProxyError, is_grpc};
use crate::http::forward::{self, ForwardError, Observation, authority_of};
use crate::http::pool::Io;
use crate::listener::{ConnMeta, Handler};
use crate::route::snapshot::{BackendTarget, RequestInfo, Routes};
use crate::telemetry::metrics::{Direction, Label, Metrics};

/// Endpoints a request may try when connecting fails (connect errors are quick; a connect
/// timeout costs `PILLION_CONNECT_TIMEOUT` each).
const MAX_CONNECT_ATTEMPTS: usize = 4;

pub struct Outbound {
    pub dests: Arc<Destinations>,
    pub metrics: Arc<Metrics>,
    pub namespace: String,
    pub passthrough: EndpointCache,
    pub connect_timeout: Duration,
    /// The wait for response headers when the route sets no timeout.
    pub request_timeout: Option<Duration>,
    /// One log line per request (`PILLION_ACCESS_LOG`).
    pub access_log: bool,
    /// Records a CLIENT span per sampled request, when tracing is on.
    pub tracer: Option<Arc<crate::telemetry::trace::Tracer>>,
    /// The proxy's own listeners: a redirected connection to one of them would loop.
    pub own_ports: Vec<u16>,
    /// This proxy's identity, when it has one: requests to meshed endpoints wait (bounded)
    /// for its first certificate rather than fail the handshake without one.
    pub identity: Option<Arc<crate::identity::LocalIdentity>>,
    pub discovery_timeout: Duration,
    /// Client configuration for opaque TCP over mTLS (ALPN `pillion.tcp/1`).
    pub tcp_tls: Option<Arc<rustls::ClientConfig>>,
    /// Where the inside of an accepted CONNECT tunnel goes to be served (see `lib.rs`: a
    /// channel, so that serving a tunnel is not a future inside this handler's own future).
    pub tunnels: tokio::sync::mpsc::UnboundedSender<(Box<dyn Io>, ConnMeta)>,
}

impl Outbound {
    fn loops(&self, conn: &ConnMeta) -> bool {
        conn.orig_dst
            .is_some_and(|d| self.own_ports.contains(&d.port()) && is_local(d))
    }

    async fn route(
        &self,
        req: Request<Body>,
        conn: ConnMeta,
        obs: &mut Observation,
    ) -> Result<Response<Body>, ProxyError> {
        if self.loops(&conn) {
            return Err(ProxyError::Loop);
        }
        if req.method() == http::Method::CONNECT {
            return self.connect(req, conn, obs).await;
        }
        forward::check_host(&req)?;
        let authority = authority_of(&req);
        let target = authority
            .as_deref()
            .and_then(|a| pillion_proto::names::parse_authority(a, &self.namespace));
        // By name first; in transparent mode also by the original destination's address (a
        // Service's cluster IP, or a meshed endpoint), which is all an app calling by IP gives.
        let mut snapshot = match target {
            Some(target) => Some(self.dests.get(&target.fqdn()).await?),
            None => None,
        };
        if snapshot.as_ref().is_none_or(|s| !s.in_mesh())
            && let Some(dst) = conn.orig_dst
        {
            snapshot = Some(self.dests.get(&dst.to_string()).await?);
        }
        let Some(snapshot) = snapshot.filter(|s| s.in_mesh()) else {
            return self.passthrough(req, conn, authority).await;
        };
        obs.authority = Label(snapshot.fqdn.clone());
        let grpc_timeout = forward::grpc_timeout(req.headers());
        let info = RequestInfo {
            method: req.method(),
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
        };
        let rule = snapshot.route(&info)?;
        obs.route = Label(rule.name.clone());
        let backend = rule.split.pick().ok_or(ProxyError::NoEndpoints)?;
        match &backend.target {
            BackendTarget::Failure { status, reason } => Err(ProxyError::BackendFailure {
                status: *status,
                reason: reason.clone(),
            }),
            BackendTarget::Service { name, endpoints } => {
                obs.backend = Label(name.clone());
                let endpoint = balance::pick(endpoints)
                    .ok_or(ProxyError::NoEndpoints)?
                    .clone();
                obs.tls = endpoint.conns.is_tls();
                let remote = endpoint
                    .meshed
                    .as_ref()
                    .map_or(endpoint.addr, |m| m.proxy_addr);
                obs.remote(remote, Some(name.clone()));
                if let Some(m) = &endpoint.meshed {
                    obs.peer_identity = Label(m.identity.clone());
                }
                // Before our first certificate, a handshake would fail: wait for it (bounded).
                if endpoint.meshed.is_some()
                    && let Some(id) = &self.identity
                    && !id.is_ready()
                    && tokio::time::timeout(self.discovery_timeout, id.ready())
                        .await
                        .is_err()
                {
                    return Err(ProxyError::Unavailable("no certificate yet"));
                }
                // The route's own timeouts (and the caller's deadline) win over the default.
                let timeout =
                    forward::shortest([rule.request_timeout, rule.backend_timeout, grpc_timeout])
                        .or(self.request_timeout);
                let authority = authority.unwrap_or_default();
                let opts = || forward::ForwardOpts {
                    authority: &authority,
                    timeout,
                    protocol: None,
                };
                // Nothing reached an endpoint that failed to connect: the request goes to another
                // endpoint of the same backend, up to MAX_CONNECT_ATTEMPTS in all.
                let mut tried = vec![endpoint.clone()];
                let mut req = req;
                loop {
                    let current = tried.last().cloned().ok_or(ProxyError::NoEndpoints)?;
                    match forward::forward(&current, req, opts()).await {
                        Ok(resp) => return Ok(resp),
                        Err(ForwardError::Failed(e)) => return Err(e),
                        Err(ForwardError::NotSent(e, back)) => {
                            let others: Vec<_> = endpoints
                                .iter()
                                .filter(|ep| !tried.iter().any(|t| Arc::ptr_eq(t, ep)))
                                .cloned()
                                .collect();
                            let next = match balance::pick(&others) {
                                Some(next) if tried.len() < MAX_CONNECT_ATTEMPTS => next.clone(),
                                _ => return Err(e),
                            };
                            tracing::debug!(failed = %current.addr, error = %e, next = %next.addr, "endpoint unreachable; trying another");
                            tried.push(next);
                            req = *back;
                        }
                    }
                }
            }
        }
    }

    /// `CONNECT host:port` to a mesh destination (an `http_proxy` client such as grpc-js, or
    /// `curl -p`): answered 200, then the tunnel is served like a connection of its own.
    /// Destinations outside the mesh are refused (the proxy is no open forward proxy).
    async fn connect(
        &self,
        mut req: Request<Body>,
        conn: ConnMeta,
        obs: &mut Observation,
    ) -> Result<Response<Body>, ProxyError> {
        // Tunnels are HTTP/1.1's (what http_proxy clients send); HTTP/2 CONNECT is refused.
        if req.version() == http::Version::HTTP_2 {
            return Err(ProxyError::MethodNotAllowed("CONNECT over HTTP/2"));
        }
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .ok_or(ProxyError::BadRequest("CONNECT needs host:port"))?;
        let target = pillion_proto::names::parse_authority(&authority, &self.namespace)
            .ok_or(ProxyError::NotInMesh)?;
        let snapshot = self.dests.get(&target.fqdn()).await?;
        if !snapshot.in_mesh() {
            return Err(ProxyError::NotInMesh);
        }
        obs.authority = Label(snapshot.fqdn.clone());
        let upgrade = hyper::upgrade::on(&mut req);
        let tunnels = self.tunnels.clone();
        let inside = ConnMeta {
            orig_dst: None,
            tunnel: Some(snapshot.fqdn.clone()),
            ..conn
        };
        tokio::spawn(async move {
            match upgrade.await {
                Ok(upgraded) => {
                    let io: Box<dyn Io> = Box::new(hyper_util::rt::TokioIo::new(upgraded));
                    let _ = tunnels.send((io, inside));
                }
                Err(e) => tracing::debug!(error = %e, "CONNECT tunnel not established"),
            }
        });
        Ok(Response::new(crate::http::body::empty()))
    }

    /// Outside the mesh: to the original destination if there is one.
    async fn passthrough(
        &self,
        req: Request<Body>,
        conn: ConnMeta,
        authority: Option<String>,
    ) -> Result<Response<Body>, ProxyError> {
        let Some(dst) = conn.orig_dst else {
            return Err(ProxyError::NotInMesh);
        };
        let endpoint = self.passthrough.get(dst);
        let timeout = forward::grpc_timeout(req.headers()).or(self.request_timeout);
        let authority = authority.unwrap_or_else(|| dst.to_string());
        let opts = forward::ForwardOpts {
            authority: &authority,
            timeout,
            protocol: None,
        };
        forward::forward(&endpoint, req, opts)
            .await
            .map_err(ForwardError::into_error)
    }
}

impl Outbound {
    /// The mesh endpoint for an opaque connection to `dst`: split and balance as for HTTP,
    /// over the most general rule. `None`: not in the mesh.
    async fn tcp_endpoint(&self, dst: &str) -> Option<Arc<crate::balance::Endpoint>> {
        let snapshot = self.dests.get(dst).await.ok()?;
        let Routes::InMesh { matches, rules } = &snapshot.routes else {
            return None;
        };
        let rule = rules.get(matches.last()?.rule)?;
        match &rule.split.pick()?.target {
            BackendTarget::Service { endpoints, .. } => balance::pick(endpoints).cloned(),
            BackendTarget::Failure { .. } => None,
        }
    }

    /// Opaque bytes to a mesh endpoint: over mTLS (ALPN `pillion.tcp/1`, then the application
    /// port in two bytes) when it is meshed and this proxy has an identity; as they are otherwise.
    async fn tcp_to_endpoint(&self, mut io: Box<dyn Io>, endpoint: &crate::balance::Endpoint) {
        let (Some(meshed), Some(config)) = (&endpoint.meshed, &self.tcp_tls) else {
            return forward::tcp(io, endpoint.addr, self.connect_timeout).await;
        };
        let server_name = pillion_proto::names::Identity::from_spiffe_id(&meshed.identity)
            .and_then(|id| rustls_pki_types::ServerName::try_from(id.dns_name()).ok());
        let Some(server_name) = server_name else {
            return;
        };
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(meshed.proxy_addr).await?;
            let _ = tcp.set_nodelay(true);
            let mut tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(server_name, tcp)
                .await?;
            tokio::io::AsyncWriteExt::write_all(&mut tls, &endpoint.addr.port().to_be_bytes())
                .await?;
            Ok::<_, std::io::Error>(tls)
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(mut upstream)) => {
                if let Err(e) = tokio::io::copy_bidirectional(&mut io, &mut upstream).await {
                    tracing::debug!(addr = %meshed.proxy_addr, error = %e, "opaque mTLS connection ended");
                }
            }
            Ok(Err(e)) => {
                tracing::info!(addr = %meshed.proxy_addr, error = %e, "opaque mTLS connect failed")
            }
            Err(_) => tracing::info!(addr = %meshed.proxy_addr, "opaque mTLS connect timed out"),
        }
    }
}

fn is_local(addr: SocketAddr) -> bool {
    addr.ip().is_loopback() || addr.ip().is_unspecified()
}

impl Handler for Outbound {
    fn direction(&self) -> Direction {
        Direction::outbound
    }

    async fn http(self: Arc<Self>, mut req: Request<Body>, conn: ConnMeta) -> Response<Body> {
        let grpc = is_grpc(req.headers());
        // Counted under the destination's name once routing finds it in the mesh; anything
        // else (made-up hosts, egress) under one `unknown` authority.
        let mut obs = Observation::new(Direction::outbound, Label::default());
        if self.access_log {
            obs.access = Some(forward::Access::of(&req, conn.peer));
        }
        if let Some(tracer) = &self.tracer
            && req.method() != http::Method::CONNECT
        {
            obs.span = tracer
                .start(crate::telemetry::trace::Kind::Client, &mut req)
                .map(|span| (tracer.clone(), span));
        }
        let result = self.route(req, conn.clone(), &mut obs).await;
        obs.finish(&self.metrics, result, grpc)
    }

    async fn opaque(self: Arc<Self>, io: Box<dyn Io>, conn: ConnMeta) {
        if let Some(fqdn) = &conn.tunnel {
            match self.tcp_endpoint(fqdn).await {
                Some(endpoint) => self.tcp_to_endpoint(io, &endpoint).await,
                None => tracing::info!(%fqdn, "tunnel destination has no endpoint; closed"),
            }
            return;
        }
        let Some(dst) = conn.orig_dst else {
            tracing::info!(peer = %conn.peer, "opaque connection in explicit mode has no destination; closed");
            return;
        };
        if self.loops(&conn) {
            tracing::warn!(peer = %conn.peer, "opaque connection to the proxy itself refused");
            return;
        }
        match self.tcp_endpoint(&dst.to_string()).await {
            Some(endpoint) => self.tcp_to_endpoint(io, &endpoint).await,
            None => forward::tcp(io, dst, self.connect_timeout).await,
        }
    }
}
