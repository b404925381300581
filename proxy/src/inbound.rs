//! Inbound: requests from the mesh to the local application (plaintext for now).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::TcpStream;

use crate::balance::EndpointCache;
use crate::body::Body;
use crate::detect::Prefixed;
use crate::errors::{ProxyError, is_grpc};
use crate::forward::{self, Observation, authority_of};
use crate::metrics::{Direction, Label, Metrics};
use crate::server::{ConnMeta, Handler};

pub struct Inbound {
    /// The local application; `None`: 127.0.0.1 at the original destination's port.
    pub forward_to: Option<SocketAddr>,
    pub app: EndpointCache,
    pub metrics: Arc<Metrics>,
    pub connect_timeout: Duration,
}

impl Inbound {
    fn target(&self, conn: &ConnMeta) -> Result<SocketAddr, ProxyError> {
        let target = self.forward_to.unwrap_or_else(|| {
            let port = conn.orig_dst.unwrap_or(conn.local).port();
            SocketAddr::from(([127, 0, 0, 1], port))
        });
        // Forwarding to our own listener would loop forever.
        if target == conn.local {
            return Err(ProxyError::Loop);
        }
        Ok(target)
    }
}

impl Handler for Inbound {
    fn direction(&self) -> Direction {
        Direction::inbound
    }

    async fn http(self: Arc<Self>, req: Request<Incoming>, conn: ConnMeta) -> Response<Body> {
        let grpc = is_grpc(req.headers());
        let authority = authority_of(&req).unwrap_or_default();
        let obs = Observation::new(Direction::inbound, Label::from(authority.as_str()));
        let result = match self.target(&conn) {
            Ok(target) => {
                let endpoint = self.app.get(target);
                let authority = if authority.is_empty() {
                    target.to_string()
                } else {
                    authority
                };
                let timeout = forward::grpc_timeout(req.headers());
                forward::forward(&endpoint, req, &authority, timeout).await
            }
            Err(e) => Err(e),
        };
        obs.finish(&self.metrics, result, grpc)
    }

    async fn opaque(self: Arc<Self>, io: Prefixed<TcpStream>, conn: ConnMeta) {
        match self.target(&conn) {
            Ok(target) => forward::tcp(io, target, self.connect_timeout).await,
            Err(e) => tracing::warn!(peer = %conn.peer, error = %e, "inbound connection refused"),
        }
    }
}
