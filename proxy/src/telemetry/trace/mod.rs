//! Distributed tracing: each proxy hop records one span (CLIENT on outbound, SERVER on
//! inbound) in the trace its request carries, and passes the context on in the format it came
//! with. Spans go to a Zipkin collector in the background; nothing here waits on it.

pub mod context;
mod digits;
pub mod zipkin;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;

use context::{Context, Format, Sampling};

/// Which side of a hop a span records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Client,
    Server,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Client => "CLIENT",
            Kind::Server => "SERVER",
        }
    }
}

/// Starts spans and hands finished ones to the exporter.
pub struct Tracer {
    /// Probability that a request arriving without a decision starts a sampled trace.
    sample_rate: f64,
    /// `localEndpoint.serviceName` of every span.
    service_name: Arc<str>,
    exporter: zipkin::Exporter,
}

/// A span in progress: where it sits in its trace, and what the request path learns.
pub struct ActiveSpan {
    trace_id: String,
    id: u64,
    parent_id: Option<u64>,
    kind: Kind,
    debug: bool,
    started_at: SystemTime,
    started: Instant,
    name: Cow<'static, str>,
    pub remote: Option<SocketAddr>,
    /// The remote Service's canonical name; the span says `name.namespace` of it.
    pub remote_service: Option<Arc<str>>,
    tags: Vec<(&'static str, TagValue)>,
}

/// A tag's value, kept without copying where it can be: most are label values the request
/// path already shares (`Arc<str>`), or constants. Spans are freed on the exporter's thread, so
/// every allocation saved here is one less cross-thread free.
#[derive(Debug, Clone)]
pub enum TagValue {
    Static(&'static str),
    Shared(Arc<str>),
    Owned(String),
    Number(u64),
}

impl TagValue {
    fn is_empty(&self) -> bool {
        match self {
            TagValue::Static(s) => s.is_empty(),
            TagValue::Shared(s) => s.is_empty(),
            TagValue::Owned(s) => s.is_empty(),
            TagValue::Number(_) => false,
        }
    }
}

impl From<&'static str> for TagValue {
    fn from(s: &'static str) -> Self {
        TagValue::Static(s)
    }
}

impl From<Arc<str>> for TagValue {
    fn from(s: Arc<str>) -> Self {
        TagValue::Shared(s)
    }
}

impl From<String> for TagValue {
    fn from(s: String) -> Self {
        TagValue::Owned(s)
    }
}

impl From<u16> for TagValue {
    fn from(n: u16) -> Self {
        TagValue::Number(u64::from(n))
    }
}

impl ActiveSpan {
    pub fn tag(&mut self, key: &'static str, value: impl Into<TagValue>) {
        let value = value.into();
        if !value.is_empty() {
            self.tags.retain(|(k, _)| *k != key);
            self.tags.push((key, value));
        }
    }
}

/// The span name (the method in lowercase, as Zipkin names HTTP spans), without allocating for
/// the standard methods.
fn span_name(method: &http::Method) -> Cow<'static, str> {
    use http::Method;
    Cow::Borrowed(match *method {
        Method::GET => "get",
        Method::POST => "post",
        Method::PUT => "put",
        Method::DELETE => "delete",
        Method::HEAD => "head",
        Method::OPTIONS => "options",
        Method::PATCH => "patch",
        Method::CONNECT => "connect",
        Method::TRACE => "trace",
        _ => return Cow::Owned(method.as_str().to_ascii_lowercase()),
    })
}

fn method_tag(method: &http::Method) -> TagValue {
    match span_name(method) {
        Cow::Borrowed(_) => TagValue::Static(match *method {
            http::Method::GET => "GET",
            http::Method::POST => "POST",
            http::Method::PUT => "PUT",
            http::Method::DELETE => "DELETE",
            http::Method::HEAD => "HEAD",
            http::Method::OPTIONS => "OPTIONS",
            http::Method::PATCH => "PATCH",
            http::Method::CONNECT => "CONNECT",
            _ => "TRACE",
        }),
        Cow::Owned(_) => TagValue::Owned(method.as_str().to_string()),
    }
}

fn random_id() -> u64 {
    // Zero is no valid span ID.
    rand::rng().random_range(1..=u64::MAX)
}

impl Tracer {
    pub fn new(sample_rate: f64, service_name: &str, exporter: zipkin::Exporter) -> Self {
        Tracer {
            sample_rate: sample_rate.clamp(0.0, 1.0),
            service_name: Arc::from(service_name),
            exporter,
        }
    }

    /// Reads the request's context (or starts one), writes the context for the next hop into
    /// its headers, and returns the span to record when the request is sampled.
    pub fn start(
        &self,
        kind: Kind,
        req: &mut http::Request<crate::http::body::Body>,
    ) -> Option<ActiveSpan> {
        let incoming = context::extract(req.headers());
        let sampling = incoming.as_ref().map_or(Sampling::Defer, |c| c.sampling);
        let sampled = match sampling {
            Sampling::Accept | Sampling::Debug => true,
            Sampling::Deny => false,
            Sampling::Defer => rand::rng().random_bool(self.sample_rate),
        };
        // Continue the caller's trace, or start one (W3C unless the caller chose B3).
        let ctx = match incoming {
            Some(c) if !c.trace_id.is_empty() => c,
            other => Context {
                trace_id: digits::trace_id(random_id(), random_id()),
                span_id: None,
                sampling: other.as_ref().map_or(Sampling::Defer, |c| c.sampling),
                format: other.as_ref().map_or(Format::W3c, |c| c.format),
                w3c_flags: 0,
            },
        };
        let id = random_id();
        // The next hop's parent is this span; the decision made here travels with it, so one
        // request is sampled at every hop or at none.
        context::inject(req.headers_mut(), &ctx, id, ctx.span_id, sampled);
        if !sampled {
            return None;
        }
        let mut span = ActiveSpan {
            trace_id: ctx.trace_id,
            id,
            parent_id: ctx.span_id,
            kind,
            debug: ctx.sampling == Sampling::Debug,
            started_at: SystemTime::now(),
            started: Instant::now(),
            name: span_name(req.method()),
            remote: None,
            remote_service: None,
            tags: Vec::with_capacity(8),
        };
        span.tag("http.method", method_tag(req.method()));
        span.tag("http.path", req.uri().path().to_string());
        Some(span)
    }

    /// Ends a span and queues it for export (dropped and counted when the queue is full).
    pub fn finish(&self, span: ActiveSpan) {
        let duration_us = span.started.elapsed().as_micros().max(1) as u64;
        let timestamp_us = span
            .started_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or_default();
        self.exporter.send(zipkin::Span {
            trace_id: span.trace_id,
            id: span.id,
            parent_id: span.parent_id,
            kind: span.kind.as_str(),
            name: span.name,
            timestamp_us,
            duration_us,
            service_name: self.service_name.clone(),
            remote: span.remote,
            remote_service: span.remote_service,
            tags: span.tags,
            debug: span.debug,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(pairs: &[(&'static str, &str)]) -> http::Request<crate::http::body::Body> {
        let mut req = http::Request::get("http://web/x")
            .body(crate::http::body::empty())
            .unwrap();
        for (k, v) in pairs {
            req.headers_mut()
                .insert(*k, http::HeaderValue::from_str(v).unwrap());
        }
        req
    }

    #[test]
    fn decisions_are_honoured_and_travel_on() {
        let (exporter, _queue) = zipkin::Exporter::detached();
        let never = Tracer::new(0.0, "web.default", exporter.clone());
        let always = Tracer::new(1.0, "web.default", exporter);

        // No context, rate 0: not sampled, and the next hop is told so.
        let mut req = request(&[]);
        assert!(never.start(Kind::Client, &mut req).is_none());
        let next = context::extract(req.headers()).unwrap();
        assert_eq!(next.sampling, Sampling::Deny);
        assert_eq!(next.format, Format::W3c);

        // An accept from the caller wins over rate 0; its span is the parent.
        let mut req = request(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")]);
        let span = never.start(Kind::Client, &mut req).unwrap();
        assert_eq!(span.parent_id, Some(0xe457b5a2e4d86bd1));
        let next = context::extract(req.headers()).unwrap();
        assert_eq!(next.format, Format::B3Single);
        assert_eq!(next.span_id, Some(span.id));

        // A deny wins over rate 1; debug forces sampling and marks the span.
        let mut req = request(&[("x-b3-sampled", "0")]);
        assert!(always.start(Kind::Server, &mut req).is_none());
        let mut req = request(&[("b3", "d")]);
        let span = always.start(Kind::Server, &mut req).unwrap();
        assert!(span.debug);
        assert_eq!(span.trace_id.len(), 32);
    }
}
