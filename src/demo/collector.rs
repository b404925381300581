//! The demo's span collector: a Zipkin v2 endpoint of its own (`POST /api/v2/spans`, a JSON
//! list of spans) that keeps the last traces, so the live view can show a request's hops with
//! no Zipkin running. With `--zipkin-url`, each batch is also passed on to that collector.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};

/// Traces kept (oldest dropped first).
const KEEP: usize = 100;
/// A batch larger than this is refused (the proxies send at most a few hundred spans).
const MAX_BODY: usize = 4 << 20;

/// The fields of a Zipkin v2 span the view uses.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    pub trace_id: String,
    pub id: String,
    #[serde(default)]
    pub parent_id: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub timestamp: Option<u64>,
    #[serde(default)]
    pub duration: Option<u64>,
    #[serde(default)]
    pub local_endpoint: Option<Endpoint>,
    #[serde(default)]
    pub remote_endpoint: Option<Endpoint>,
    #[serde(default)]
    pub tags: HashMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    #[serde(default)]
    pub service_name: Option<String>,
}

#[derive(Default)]
struct Store {
    order: VecDeque<String>,
    traces: HashMap<String, Vec<Span>>,
    spans: u64,
}

/// The collector's handle: where it listens and what it holds.
#[derive(Clone)]
pub struct Collector {
    pub url: String,
    store: Arc<Mutex<Store>>,
}

impl Collector {
    /// Listens on loopback (a port the OS picks); `forward`: a Zipkin to pass batches on to.
    pub async fn start(forward: Option<String>) -> std::io::Result<Collector> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let collector = Collector {
            url: format!("http://{addr}/api/v2/spans"),
            store: Arc::default(),
        };
        let serving = collector.clone();
        tokio::spawn(async move {
            let forward = forward.map(Arc::new);
            while let Ok((stream, _)) = listener.accept().await {
                let (serving, forward) = (serving.clone(), forward.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (serving, forward) = (serving.clone(), forward.clone());
                        async move { Ok::<_, Infallible>(serving.take(req, forward).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(collector)
    }

    async fn take(
        &self,
        req: http::Request<Incoming>,
        forward: Option<Arc<String>>,
    ) -> http::Response<Full<Bytes>> {
        let answer = |status: http::StatusCode, text: &str| {
            let mut resp = http::Response::new(Full::new(Bytes::from(text.to_string())));
            *resp.status_mut() = status;
            resp
        };
        if req.method() != http::Method::POST || req.uri().path() != "/api/v2/spans" {
            return answer(http::StatusCode::NOT_FOUND, "POST /api/v2/spans\n");
        }
        let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => return answer(http::StatusCode::PAYLOAD_TOO_LARGE, &e.to_string()),
        };
        let spans: Vec<Span> = match serde_json::from_slice(&body) {
            Ok(s) => s,
            Err(e) => {
                return answer(
                    http::StatusCode::BAD_REQUEST,
                    &format!("not a JSON list of Zipkin v2 spans: {e}\n"),
                );
            }
        };
        self.keep(spans);
        if let Some(url) = forward {
            tokio::spawn(pass_on(url, body));
        }
        answer(http::StatusCode::ACCEPTED, "")
    }

    fn keep(&self, spans: Vec<Span>) {
        let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        for span in spans {
            store.spans += 1;
            let id = span.trace_id.clone();
            if !store.traces.contains_key(&id) {
                store.order.push_back(id.clone());
                if store.order.len() > KEEP
                    && let Some(old) = store.order.pop_front()
                {
                    store.traces.remove(&old);
                }
            }
            store.traces.entry(id).or_default().push(span);
        }
    }

    /// Spans received so far.
    pub fn spans(&self) -> u64 {
        self.store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .spans
    }

    /// The newest trace with at least `min_spans` spans whose root span is in (the proxies
    /// send a trace's spans in separate batches), its spans in time order.
    pub fn latest(&self, min_spans: usize) -> Option<Vec<Span>> {
        let store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        store.order.iter().rev().find_map(|id| {
            let spans = store.traces.get(id)?;
            let rooted = spans.iter().any(|s| s.parent_id.is_none());
            (rooted && spans.len() >= min_spans).then(|| {
                let mut spans = spans.clone();
                spans.sort_by_key(|s| s.timestamp.unwrap_or_default());
                spans
            })
        })
    }
}

async fn pass_on(url: Arc<String>, body: Bytes) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let Ok(req) = http::Request::post(url.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
    else {
        return;
    };
    if let Err(e) = client.request(req).await {
        tracing::debug!(%url, error = %e, "spans not passed on");
    }
}
