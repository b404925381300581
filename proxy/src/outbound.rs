//! Outbound: requests from the local application to the mesh. Route by authority, split by
//! weight, balance over endpoints. Destinations outside the mesh go to their original
//! destination unchanged in transparent mode (the mesh never breaks egress), and get 503 "not in
//! mesh" in explicit mode (where there is no original destination to go to).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::balance::{self, EndpointCache};
use crate::body::Body;
use crate::discovery::Destinations;
use crate::errors::{ProxyError, is_grpc};
use crate::forward::{self, Observation, authority_of};
use crate::metrics::{Direction, Label, Metrics};
use crate::pool::Io;
use crate::routing::{BackendTarget, RequestInfo, Routes};
use crate::server::{ConnMeta, Handler};

pub struct Outbound {
    pub dests: Arc<Destinations>,
    pub metrics: Arc<Metrics>,
    pub namespace: String,
    pub passthrough: EndpointCache,
    pub connect_timeout: Duration,
    /// The proxy's own listeners: a redirected connection to one of them would loop.
    pub own_ports: Vec<u16>,
    /// This proxy's identity, when it has one: requests to meshed endpoints wait (bounded)
    /// for its first certificate rather than fail the handshake without one.
    pub identity: Option<Arc<crate::identity::LocalIdentity>>,
    pub discovery_timeout: Duration,
}

impl Outbound {
    fn loops(&self, conn: &ConnMeta) -> bool {
        conn.orig_dst
            .is_some_and(|d| self.own_ports.contains(&d.port()) && is_local(d))
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        conn: ConnMeta,
        obs: &mut Observation,
    ) -> Result<Response<Body>, ProxyError> {
        if self.loops(&conn) {
            return Err(ProxyError::Loop);
        }
        // RFC 9112 §3.2: a request with more than one Host header is answered 400.
        if req
            .headers()
            .get_all(http::header::HOST)
            .iter()
            .nth(1)
            .is_some()
        {
            return Err(ProxyError::BadRequest("several Host headers"));
        }
        let authority = authority_of(&req);
        let target = authority
            .as_deref()
            .and_then(|a| pillion_proto::names::parse_authority(a, &self.namespace));
        let Some(target) = target else {
            return self.passthrough(req, conn, authority).await;
        };
        let snapshot = self.dests.get(&target.fqdn()).await?;
        if let Routes::NotInMesh { .. } = snapshot.routes {
            return self.passthrough(req, conn, authority).await;
        }
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
                let timeout =
                    forward::shortest([rule.request_timeout, rule.backend_timeout, grpc_timeout]);
                let authority = authority.unwrap_or_default();
                let opts = forward::ForwardOpts {
                    authority: &authority,
                    timeout,
                    protocol: None,
                };
                forward::forward(&endpoint, req, opts).await
            }
        }
    }

    /// Outside the mesh: to the original destination if there is one.
    async fn passthrough(
        &self,
        req: Request<Incoming>,
        conn: ConnMeta,
        authority: Option<String>,
    ) -> Result<Response<Body>, ProxyError> {
        let Some(dst) = conn.orig_dst else {
            return Err(ProxyError::NotInMesh);
        };
        let endpoint = self.passthrough.get(dst);
        let timeout = forward::grpc_timeout(req.headers());
        let authority = authority.unwrap_or_else(|| dst.to_string());
        let opts = forward::ForwardOpts {
            authority: &authority,
            timeout,
            protocol: None,
        };
        forward::forward(&endpoint, req, opts).await
    }
}

fn is_local(addr: SocketAddr) -> bool {
    addr.ip().is_loopback() || addr.ip().is_unspecified()
}

impl Handler for Outbound {
    fn direction(&self) -> Direction {
        Direction::outbound
    }

    async fn http(self: Arc<Self>, req: Request<Incoming>, conn: ConnMeta) -> Response<Body> {
        let grpc = is_grpc(req.headers());
        let authority = authority_of(&req).unwrap_or_default();
        let mut obs = Observation::new(Direction::outbound, Label::from(authority.as_str()));
        let result = self.route(req, conn.clone(), &mut obs).await;
        obs.finish(&self.metrics, result, grpc)
    }

    async fn opaque(self: Arc<Self>, io: Box<dyn Io>, conn: ConnMeta) {
        match conn.orig_dst {
            Some(_) if self.loops(&conn) => {
                tracing::warn!(peer = %conn.peer, "opaque connection to the proxy itself refused");
            }
            Some(dst) => forward::tcp(io, dst, self.connect_timeout).await,
            None => {
                tracing::info!(peer = %conn.peer, "opaque connection in explicit mode has no destination; closed");
            }
        }
    }
}
