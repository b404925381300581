//! Zipkin v2 JSON (`POST /api/v2/spans`, `../shared/specs/zipkin/zipkin2-api.yaml`), sent in
//! batches by a background task. The request path only queues a span: a full queue or a
//! collector that is down drops spans and counts them; it never delays a request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use prometheus_client::metrics::counter::Counter;
use std::io::Write as _;
use std::sync::Mutex;
use tokio::sync::Notify;

use super::digits;

/// Spans waiting for export; past this they are dropped.
const QUEUE: usize = 10_000;
/// Spans per POST, and the longest a span waits for its batch.
const BATCH: usize = 256;
const LINGER: Duration = Duration::from_secs(1);
const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// A finished span.
pub struct Span {
    pub trace_id: String,
    pub id: u64,
    pub parent_id: Option<u64>,
    pub kind: &'static str,
    pub name: std::borrow::Cow<'static, str>,
    pub timestamp_us: u64,
    pub duration_us: u64,
    pub service_name: Arc<str>,
    pub remote: Option<SocketAddr>,
    /// The remote Service's canonical name (`web.default.svc.cluster.local:80`).
    pub remote_service: Option<Arc<str>>,
    pub tags: Vec<(&'static str, super::TagValue)>,
    pub debug: bool,
}

/// `web.default` of `web.default.svc.cluster.local:80`: a span's remote service name.
fn service_of(backend: &str) -> Option<&str> {
    let b = backend.as_bytes();
    let host = b.iter().position(|&c| c == b':').unwrap_or(b.len());
    let name = b[..host].iter().position(|&c| c == b'.')?;
    let end = b[name + 1..host]
        .iter()
        .position(|&c| c == b'.')
        .map_or(host, |ns| name + 1 + ns);
    backend.get(..end)
}

/// Writes `s` as a JSON string.
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Almost every string needs no escaping: one pass without early exit (vectorized) says so.
    let clean = bytes
        .iter()
        .fold(true, |ok, &b| ok & (b != b'"') & (b != b'\\') & (b >= 0x20));
    if clean {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    for &b in bytes {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b if b < 0x20 => {
                out.extend_from_slice(b"\\u00");
                out.extend_from_slice(&digits::hex2(b));
            }
            b => out.push(b),
        }
    }
    out.push(b'"');
}

/// Writes `s`, one of the proxy's own constants (a tag's key, a method, a kind), as a JSON
/// string: they need no escaping.
fn json_const(out: &mut Vec<u8>, s: &'static str) {
    debug_assert!(!s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20));
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

fn endpoint(out: &mut Vec<u8>, service: Option<&str>, addr: Option<SocketAddr>) {
    out.push(b'{');
    if let Some(s) = service {
        out.extend_from_slice(b"\"serviceName\":");
        json_str(out, s);
    }
    if let Some(a) = addr {
        if service.is_some() {
            out.push(b',');
        }
        match a.ip() {
            std::net::IpAddr::V4(ip) => {
                out.extend_from_slice(b"\"ipv4\":\"");
                for (i, octet) in ip.octets().into_iter().enumerate() {
                    if i > 0 {
                        out.push(b'.');
                    }
                    digits::push_decimal(out, u64::from(octet));
                }
            }
            std::net::IpAddr::V6(ip) => {
                let _ = write!(out, "\"ipv6\":\"{ip}");
            }
        }
        out.extend_from_slice(b"\",\"port\":");
        digits::push_decimal(out, u64::from(a.port()));
    }
    out.push(b'}');
}

impl Span {
    /// Appends the span as Zipkin v2 JSON. Written by hand: building `serde_json::Value` maps
    /// for every span was most of what tracing cost a proxy (and `core::fmt`, later, a third).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // The trace ID was read as hex digits (context.rs checks), or made here: no escaping.
        out.extend_from_slice(b"{\"traceId\":\"");
        out.extend_from_slice(self.trace_id.as_bytes());
        out.extend_from_slice(b"\",\"id\":\"");
        out.extend_from_slice(&digits::hex16(self.id));
        if let Some(p) = self.parent_id {
            out.extend_from_slice(b"\",\"parentId\":\"");
            out.extend_from_slice(&digits::hex16(p));
        }
        out.extend_from_slice(b"\",\"kind\":");
        json_const(out, self.kind);
        out.extend_from_slice(b",\"timestamp\":");
        digits::push_decimal(out, self.timestamp_us);
        out.extend_from_slice(b",\"duration\":");
        digits::push_decimal(out, self.duration_us);
        out.extend_from_slice(b",\"name\":");
        match &self.name {
            std::borrow::Cow::Borrowed(name) => json_const(out, name),
            std::borrow::Cow::Owned(name) => json_str(out, name),
        }
        out.extend_from_slice(b",\"localEndpoint\":");
        endpoint(out, Some(&self.service_name), None);
        if self.remote.is_some() || self.remote_service.is_some() {
            out.extend_from_slice(b",\"remoteEndpoint\":");
            let service = self.remote_service.as_deref().and_then(service_of);
            endpoint(out, service, self.remote);
        }
        if !self.tags.is_empty() {
            out.extend_from_slice(b",\"tags\":{");
            for (i, (k, v)) in self.tags.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_const(out, k);
                out.push(b':');
                match v {
                    super::TagValue::Number(n) => {
                        out.push(b'"');
                        digits::push_decimal(out, *n);
                        out.push(b'"');
                    }
                    super::TagValue::Static(t) => json_const(out, t),
                    super::TagValue::Shared(t) => json_str(out, t),
                    super::TagValue::Owned(t) => json_str(out, t),
                }
            }
            out.push(b'}');
        }
        if self.debug {
            out.extend_from_slice(b",\"debug\":true");
        }
        out.push(b'}');
    }
}

/// Finished spans waiting for the exporter: one short lock per span, and the exporter takes
/// them all at once. (Simpler than the bounded mpsc it replaced; measured the same.)
#[derive(Default)]
pub struct Queue {
    spans: Mutex<Vec<Span>>,
    full_batch: Notify,
}

impl Queue {
    /// Everything queued so far.
    pub fn take(&self) -> Vec<Span> {
        std::mem::take(&mut *self.spans.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Where the request path queues finished spans.
#[derive(Clone)]
pub struct Exporter {
    queue: Arc<Queue>,
    dropped: Counter,
}

impl Exporter {
    /// Starts the background task that POSTs batches to `url`.
    pub fn spawn(url: http::Uri, sent: Counter, dropped: Counter) -> Exporter {
        let queue = Arc::new(Queue::default());
        tokio::spawn(export(queue.clone(), url, sent, dropped.clone()));
        Exporter { queue, dropped }
    }

    /// An exporter whose spans stay in the returned queue (tests and benchmarks).
    pub fn detached() -> (Exporter, Arc<Queue>) {
        let queue = Arc::new(Queue::default());
        let exporter = Exporter {
            queue: queue.clone(),
            dropped: Counter::default(),
        };
        (exporter, queue)
    }

    pub fn send(&self, span: Span) {
        let len = {
            let mut spans = self.queue.spans.lock().unwrap_or_else(|p| p.into_inner());
            if spans.len() >= QUEUE {
                drop(spans);
                self.dropped.inc();
                return;
            }
            spans.push(span);
            spans.len()
        };
        // Woken once a batch is full, not per span.
        if len.is_multiple_of(BATCH) {
            self.queue.full_batch.notify_one();
        }
    }
}

async fn export(queue: Arc<Queue>, url: http::Uri, sent: Counter, dropped: Counter) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    loop {
        // A full batch, or LINGER since the last look: whichever comes first.
        tokio::select! {
            _ = queue.full_batch.notified() => {}
            _ = tokio::time::sleep(LINGER) => {}
        }
        let mut spans = queue.take();
        while !spans.is_empty() {
            let rest = spans.split_off(spans.len().min(BATCH));
            post(&client, &url, &mut spans, &sent, &dropped).await;
            spans = rest;
        }
    }
}

/// POSTs one batch (and empties it); counts it sent or dropped.
async fn post(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    url: &http::Uri,
    batch: &mut Vec<Span>,
    sent: &Counter,
    dropped: &Counter,
) {
    let n = batch.len() as u64;
    // A span with a few tags is 500-700 bytes: room for all without growing (a large
    // String's growth copies it whole).
    let mut body = Vec::with_capacity(batch.len() * 800);
    body.push(b'[');
    for (i, span) in batch.drain(..).enumerate() {
        if i > 0 {
            body.push(b',');
        }
        span.write_json(&mut body);
    }
    body.push(b']');
    let req = http::Request::post(url.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)));
    let Ok(req) = req else {
        dropped.inc_by(n);
        return;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_valid_json_with_every_field() {
        let span = Span {
            trace_id: "463ac35c9f6413ad48485a3953bb6124".into(),
            id: 0xa2fb4a1d1a96d312,
            parent_id: Some(0x0020000000000001),
            kind: "CLIENT",
            name: "get".into(),
            timestamp_us: 1,
            duration_us: 2,
            service_name: Arc::from("web.default"),
            remote: Some("[::1]:80".parse().unwrap()),
            remote_service: Some(Arc::from("api.\"quoted\".svc.cluster.local:80")),
            tags: vec![
                ("http.path", String::from("/a\\b\n\u{1}").into()),
                ("http.status_code", 200u16.into()),
            ],
            debug: true,
        };
        let mut out = Vec::new();
        span.write_json(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["parentId"], "0020000000000001");
        assert_eq!(v["remoteEndpoint"]["ipv6"], "::1");
        assert_eq!(v["remoteEndpoint"]["port"], 80);
        assert_eq!(v["remoteEndpoint"]["serviceName"], "api.\"quoted\"");
        assert_eq!(
            service_of("web.default.svc.cluster.local:80"),
            Some("web.default")
        );
        assert_eq!(v["tags"]["http.path"], "/a\\b\n\u{1}");
        assert_eq!(v["tags"]["http.status_code"], "200");
        assert_eq!(v["id"], "a2fb4a1d1a96d312");
        assert_eq!(v["localEndpoint"]["serviceName"], "web.default");
        assert_eq!(v["debug"], true);
    }
}
