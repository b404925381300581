//! Zipkin v2 JSON (`POST /api/v2/spans`, `../shared/specs/zipkin/zipkin2-api.yaml`), sent in
//! batches by a background task. The request path only queues a span: a full queue or a
//! collector that is down drops spans and counts them; it never delays a request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use prometheus_client::metrics::counter::Counter;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

/// Spans waiting for export; past this they are dropped.
const QUEUE: usize = 10_000;
/// Spans per POST, and the longest a span waits for its batch.
const BATCH: usize = 256;
const LINGER: Duration = Duration::from_secs(1);
const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// A finished span.
pub struct Span {
    pub trace_id: String,
    pub id: String,
    pub parent_id: Option<String>,
    pub kind: &'static str,
    pub name: String,
    pub timestamp_us: u64,
    pub duration_us: u64,
    pub service_name: Arc<str>,
    pub remote: Option<SocketAddr>,
    pub remote_service: Option<String>,
    pub tags: Vec<(&'static str, String)>,
    pub debug: bool,
}

fn endpoint(service: Option<&str>, addr: Option<SocketAddr>) -> Value {
    let mut e = Map::new();
    if let Some(s) = service {
        e.insert("serviceName".into(), json!(s));
    }
    match addr {
        Some(SocketAddr::V4(a)) => {
            e.insert("ipv4".into(), json!(a.ip().to_string()));
            e.insert("port".into(), json!(a.port()));
        }
        Some(SocketAddr::V6(a)) => {
            e.insert("ipv6".into(), json!(a.ip().to_string()));
            e.insert("port".into(), json!(a.port()));
        }
        None => {}
    }
    Value::Object(e)
}

impl Span {
    pub fn to_json(&self) -> Value {
        let mut s = Map::new();
        s.insert("traceId".into(), json!(self.trace_id));
        s.insert("id".into(), json!(self.id));
        if let Some(p) = &self.parent_id {
            s.insert("parentId".into(), json!(p));
        }
        s.insert("kind".into(), json!(self.kind));
        s.insert("name".into(), json!(self.name));
        s.insert("timestamp".into(), json!(self.timestamp_us));
        s.insert("duration".into(), json!(self.duration_us));
        s.insert(
            "localEndpoint".into(),
            endpoint(Some(&self.service_name), None),
        );
        if self.remote.is_some() || self.remote_service.is_some() {
            s.insert(
                "remoteEndpoint".into(),
                endpoint(self.remote_service.as_deref(), self.remote),
            );
        }
        if !self.tags.is_empty() {
            let tags: Map<String, Value> = self
                .tags
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            s.insert("tags".into(), Value::Object(tags));
        }
        if self.debug {
            s.insert("debug".into(), json!(true));
        }
        Value::Object(s)
    }
}

/// Where the request path queues finished spans.
#[derive(Clone)]
pub struct Exporter {
    tx: mpsc::Sender<Span>,
    dropped: Counter,
}

impl Exporter {
    /// Starts the background task that POSTs batches to `url`.
    pub fn spawn(url: http::Uri, sent: Counter, dropped: Counter) -> Exporter {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(export(rx, url, sent, dropped.clone()));
        Exporter { tx, dropped }
    }

    /// An exporter whose spans go to the returned receiver (tests).
    pub fn detached(capacity: usize) -> (Exporter, mpsc::Receiver<Span>) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            Exporter {
                tx,
                dropped: Counter::default(),
            },
            rx,
        )
    }

    pub fn send(&self, span: Span) {
        if self.tx.try_send(span).is_err() {
            self.dropped.inc();
        }
    }
}

async fn export(mut rx: mpsc::Receiver<Span>, url: http::Uri, sent: Counter, dropped: Counter) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        // Wait for a first span, then gather more for up to LINGER.
        match rx.recv().await {
            Some(span) => batch.push(span),
            None => return,
        }
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let body = Value::Array(batch.drain(..).map(|s| s.to_json()).collect());
        let req = http::Request::post(url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())));
        let Ok(req) = req else {
            dropped.inc_by(n);
            continue;
        };
        match tokio::time::timeout(POST_TIMEOUT, client.request(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => {
                sent.inc_by(n);
            }
            Ok(Ok(resp)) => {
                tracing::debug!(status = %resp.status(), spans = n, "Zipkin collector refused spans; dropped");
                dropped.inc_by(n);
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, spans = n, "Zipkin collector unreachable; spans dropped");
                dropped.inc_by(n);
            }
            Err(_) => {
                tracing::debug!(spans = n, "Zipkin collector timed out; spans dropped");
                dropped.inc_by(n);
            }
        }
    }
}
