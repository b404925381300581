//! The admin port: `/live`, `/ready`, `/metrics`, `/config`, and `/shutdown` (loopback only).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::control::discovery::Destinations;
use crate::http::body::{self, Body};
use crate::telemetry::metrics::Metrics;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub dests: Arc<Destinations>,
    pub shutdown: Arc<watch::Sender<bool>>,
    pub workload: String,
    pub identity: Option<Arc<crate::identity::LocalIdentity>>,
    pub policies: crate::control::policy::Policies,
}

impl Admin {
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(req, peer)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }

    fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
            (&Method::GET, "/ready") => {
                if !self.dests.is_ready() {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: the control plane has not answered yet\n",
                    )
                } else if self.identity.as_ref().is_some_and(|i| !i.is_ready()) {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: no certificate yet\n",
                    )
                } else {
                    text(StatusCode::OK, "ready\n")
                }
            }
            (&Method::GET, "/metrics") => {
                let mut resp = Response::new(body::full(self.metrics.encode()));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                resp
            }
            (&Method::GET, "/config") => {
                let config = serde_json::json!({
                    "workload": self.workload,
                    "identity": self.identity.as_ref().map(|i| i.spiffe_id.to_string()),
                    "ready": self.dests.is_ready(),
                    "inboundAuthorizations": self.policies.describe(),
                    "destinations": self.dests.describe(),
                });
                let mut resp = Response::new(body::full(
                    serde_json::to_string_pretty(&config).unwrap_or_default(),
                ));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                resp
            }
            (&Method::POST, "/shutdown") => {
                if peer.ip().is_loopback() {
                    tracing::info!("shutdown requested on the admin port");
                    self.shutdown.send_replace(true);
                    text(StatusCode::OK, "shutting down\n")
                } else {
                    text(
                        StatusCode::FORBIDDEN,
                        "shutdown is only answered on loopback\n",
                    )
                }
            }
            (_, "/live" | "/ready" | "/metrics" | "/config" | "/shutdown") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

fn text(status: StatusCode, msg: &'static str) -> Response<Body> {
    let mut resp = Response::new(body::full(msg));
    *resp.status_mut() = status;
    resp
}
