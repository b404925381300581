//! The admission webhook over HTTPS: `POST /inject` answers AdmissionReviews; `/live`,
//! `/ready` and `/metrics` serve kubelet and Prometheus. A pod is never blocked: whatever goes
//! wrong inside, the answer admits it unchanged with a warning.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::admission;
use crate::config::Sidecar;
use crate::namespaces::Namespaces;
use crate::patch::{self, Pod};

/// An AdmissionReview holds one object; the API server's own limit on objects is ~1.5 MB.
const MAX_BODY: usize = 8 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    /// `injected`, `skipped`, `ignored` (not a pod creation) or `error`.
    outcome: &'static str,
    /// Why a pod was skipped (`opted_out`, ...), else empty.
    reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    admissions: Family<OutcomeLabels, Counter>,
    duration: Histogram,
    invalid_annotations: Counter,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pillion_injector");
        let admissions = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "admissions",
            "AdmissionReviews answered, by outcome and skip reason",
            admissions.clone(),
        );
        let duration = Histogram::new([
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5,
        ]);
        registry.register(
            "admission_duration_seconds",
            "Time to answer one AdmissionReview, namespace lookup included",
            duration.clone(),
        );
        let invalid_annotations = Counter::default();
        registry.register(
            "invalid_annotations",
            "config.pillion.dev annotations refused (the default was used and the pod's owner warned)",
            invalid_annotations.clone(),
        );
        registry.register_collector(Box::new(pillion_core::process::ProcessCollector::default()));
        Metrics {
            registry,
            admissions,
            duration,
            invalid_annotations,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        out
    }
}

pub struct Injector {
    pub sidecar: Sidecar,
    pub namespaces: Namespaces,
    pub metrics: Metrics,
}

impl Injector {
    pub fn new(sidecar: Sidecar, namespaces: Namespaces) -> Injector {
        Injector {
            sidecar,
            namespaces,
            metrics: Metrics::new(),
        }
    }

    fn count(&self, outcome: &'static str, reason: &'static str) {
        self.metrics
            .admissions
            .get_or_create(&OutcomeLabels { outcome, reason })
            .inc();
    }

    /// One review in, one response body out; `Err` is a request the API server sent wrong.
    pub async fn review(&self, body: &[u8]) -> Result<Vec<u8>, String> {
        let request = admission::parse(body).inspect_err(|_| self.count("error", ""))?;
        if !request.is_pod_creation() {
            self.count("ignored", "");
            return Ok(admission::respond(&request.uid, &[], &[]));
        }
        let Some(pod) = request.object.as_ref().filter(|o| o.is_object()) else {
            self.count("error", "");
            let warning =
                "Pillion: the AdmissionReview carries no pod object; admitted without the sidecar";
            return Ok(admission::respond(
                &request.uid,
                &[],
                &[warning.to_string()],
            ));
        };
        let namespace = request
            .namespace
            .clone()
            .or_else(|| {
                pod.pointer("/metadata/namespace")
                    .and_then(|n| n.as_str())
                    .map(String::from)
            })
            .unwrap_or_else(|| "default".into());
        let mut warnings = Vec::new();
        let ns_annotations = match self.namespaces.annotations(&namespace).await {
            Ok(a) => Some(a),
            Err(e) => {
                // Only matters when the pod itself says nothing.
                if pod
                    .pointer(&format!(
                        "/metadata/annotations/{}",
                        patch::escape(patch::INJECT)
                    ))
                    .is_none()
                {
                    tracing::warn!(namespace, error = %e, "namespace annotations unknown; pod annotations only");
                    warnings.push(format!("Pillion: namespace {namespace} could not be read ({e}); only the pod's own {} counts", patch::INJECT));
                }
                None
            }
        };
        let outcome = patch::inject(
            &Pod {
                object: pod,
                namespace_annotations: ns_annotations.as_deref(),
                workload: None,
            },
            &self.sidecar,
        );
        self.metrics
            .invalid_annotations
            .inc_by(outcome.errors.len() as u64);
        let name = pod
            .pointer("/metadata/name")
            .or_else(|| pod.pointer("/metadata/generateName"))
            .and_then(|n| n.as_str())
            .unwrap_or_default();
        match &outcome.skipped {
            None => {
                self.count("injected", "");
                tracing::info!(namespace, pod = name, "sidecar injected");
            }
            Some(skip) => {
                self.count("skipped", skip.label());
                tracing::debug!(namespace, pod = name, reason = %skip, "not injected");
            }
        }
        for e in &outcome.errors {
            tracing::warn!(namespace, pod = name, error = %e, "pod annotation refused; default used");
        }
        warnings.extend(outcome.warnings);
        Ok(admission::respond(&request.uid, &outcome.patch, &warnings))
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

async fn handle(
    injector: Arc<Injector>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    Ok(match (req.method(), path.as_str()) {
        (&Method::POST, "/inject") => {
            let started = Instant::now();
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return Ok(text(
                        StatusCode::BAD_REQUEST,
                        format!("reading the request body: {e}\n"),
                    ));
                }
            };
            let resp = match injector.review(&body).await {
                Ok(json) => {
                    let mut resp = Response::new(Full::new(Bytes::from(json)));
                    resp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("application/json"),
                    );
                    resp
                }
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            };
            injector
                .metrics
                .duration
                .observe(started.elapsed().as_secs_f64());
            resp
        }
        (&Method::GET, "/live") | (&Method::GET, "/ready") => text(StatusCode::OK, "ok\n".into()),
        (&Method::GET, "/metrics") => {
            let mut resp = text(StatusCode::OK, injector.metrics.encode());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        (_, "/inject" | "/live" | "/ready" | "/metrics") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: the webhook is POST /inject\n".into(),
        ),
    })
}

/// Serves HTTPS on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    injector: Arc<Injector>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let injector = injector.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(stream),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |req| handle(injector.clone(), req));
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
