//! What the request-header fuzz target (`fuzz/fuzz_targets/proxy_headers.rs`) runs, shared
//! with `tests/fuzz_inputs.rs`, which replays the inputs it kept on each test run.
//!
//! The input is what a caller controls before any routing: its first bytes (protocol
//! detection), its authority (Service names), and header lines (trace context, gRPC
//! deadline). Besides "no panic": the tracer reads the context and writes the next hop's, which
//! must read back as one context continuing the caller's trace (or a new one) with the
//! proxy's span as parent and the decision made; a span recorded encodes as Zipkin JSON
//! naming that trace.

#![allow(dead_code)]

use http::{HeaderName, HeaderValue, Request};
use pillion_proto::names::parse_authority;
use pillion_proxy::http::body;
use pillion_proxy::http::forward::grpc_timeout;
use pillion_proxy::telemetry::trace::context;
use pillion_proxy::telemetry::trace::zipkin::Exporter;
use pillion_proxy::telemetry::trace::{Kind, Tracer};
use pillion_proxy::transport::detect::classify;

/// The headers a caller can set that the proxy reads before routing (the trace context's and
/// three more); an input line `N value` sets the N-th (modulo their number).
fn names() -> impl Iterator<Item = &'static str> {
    context::NAMES
        .into_iter()
        .chain(["tracestate", "grpc-timeout", "x-request-id"])
}

pub fn proxy_headers(data: &[u8]) {
    let _ = classify(data);
    let mut lines = data.split(|&b| b == b'\n');
    let mut req = Request::new(body::empty());
    if let Some(first) = lines.next()
        && let Ok(authority) = std::str::from_utf8(first)
    {
        let _ = parse_authority(authority, "default");
        if let Ok(uri) = format!("http://{authority}/").parse() {
            *req.uri_mut() = uri;
        }
    }
    for line in lines {
        let Some((&which, value)) = line.split_first() else {
            continue;
        };
        let count = names().count();
        let Some(name) = names().nth(usize::from(which) % count) else {
            continue;
        };
        let name = HeaderName::from_static(name);
        if let Ok(value) = HeaderValue::from_bytes(value.strip_prefix(b" ").unwrap_or(value)) {
            req.headers_mut().append(name, value);
        }
    }
    let _ = grpc_timeout(req.headers());
    let incoming = context::extract(req.headers());
    let (exporter, queue) = Exporter::detached();
    let tracer = Tracer::new(0.5, "fuzz", exporter);
    let span = tracer.start(Kind::Server, &mut req);
    let next =
        context::extract(req.headers()).expect("the context written is read at the next hop");
    if let Some(caller) = incoming.as_ref().filter(|c| !c.trace_id.is_empty()) {
        assert_eq!(next.trace_id, caller.trace_id, "the caller's trace goes on");
    } else {
        assert!(!next.trace_id.is_empty(), "a trace is started");
    }
    assert_eq!(
        next.sampling != context::Sampling::Deny,
        span.is_some(),
        "the next hop is sampled exactly when this one is"
    );
    if let Some(span) = span {
        tracer.finish(span);
        for span in queue.take() {
            let mut json = Vec::new();
            span.write_json(&mut json);
            let value: serde_json::Value =
                serde_json::from_slice(&json).expect("a span is valid JSON");
            assert_eq!(value["traceId"].as_str(), Some(next.trace_id.as_str()));
        }
    }
}
