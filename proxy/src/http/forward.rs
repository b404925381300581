//! Sending one request to one endpoint: hop-by-hop headers (RFC 9110 §7.6.1), the request
//! target's form for the protocol spoken upstream, timeouts (the route's and `grpc-timeout`),
//! HTTP/1.1 upgrades (WebSocket) passed through, and the balancer's bookkeeping.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version};
use hyper_util::rt::TokioIo;

use crate::balance::Endpoint;
use crate::http::body::{self, Body, Guarded};
use crate::http::errors::ProxyError;
use crate::http::pool::Protocol;
use crate::telemetry::metrics::{
    Classification, Direction, ErrorLabels, Label, Metrics, ResponseLabels,
};
use crate::telemetry::trace::{ActiveSpan, Tracer};

/// Headers that describe one connection, never forwarded.
const HOP_BY_HOP: [&str; 6] = [
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
];

/// Whether any header needs removing. Most requests have none (HTTP/2 forbids them) or only
/// the `te: trailers` that stays: one pass over the names costs ~30 ns where removing each
/// hop-by-hop name in turn cost ~400 (`cargo bench -p pillion-proxy --bench headers`).
fn has_hop_by_hop(headers: &HeaderMap) -> bool {
    headers.iter().any(|(name, value)| {
        if name == header::TE {
            return !value.as_bytes().eq_ignore_ascii_case(b"trailers");
        }
        name == header::CONNECTION || HOP_BY_HOP.contains(&name.as_str())
    })
}

/// Removes hop-by-hop headers, keeping `te: trailers` (gRPC needs it at every hop) and, for
/// an upgrade, the `Upgrade` header with `Connection: upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    if !has_hop_by_hop(headers) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    let upgrade = headers.get(header::UPGRADE).cloned();
    for name in listed {
        headers.remove(name);
    }
    headers.remove(header::CONNECTION);
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if upgrading && let Some(u) = upgrade {
        headers.insert(header::UPGRADE, u);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// An HTTP/1.1 upgrade to pass through (WebSocket, ...). Not an h2c upgrade (what `curl
/// --http2` asks on a plain URL): that one is between the client and the proxy, which answers
/// in HTTP/1.1 as a server may (RFC 9110 §7.8). Passed on, the application switched to HTTP/2
/// and the client got an empty reply.
pub fn wants_upgrade(req: &Request<Body>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().get(header::UPGRADE).is_some_and(|u| {
            u.to_str().map_or(true, |u| {
                u.split(',').any(|p| !p.trim().eq_ignore_ascii_case("h2c"))
            })
        })
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
    let v = headers.get(GRPC_TIMEOUT)?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (num, unit) = v.split_at(v.len() - 1);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// RFC 9112 §3.2: a request with several Host headers, or with a Host that is not a valid
/// authority, or an HTTP/1.1 request with none, is answered 400.
pub fn check_host(req: &Request<Body>) -> Result<(), ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(ProxyError::BadRequest("several Host headers")),
        (Some(h), None) => {
            let valid = h
                .to_str()
                .ok()
                .filter(|h| !h.is_empty())
                .is_some_and(|h| h.parse::<http::uri::Authority>().is_ok());
            if valid {
                Ok(())
            } else {
                Err(ProxyError::BadRequest("invalid Host header"))
            }
        }
        (None, _) if req.version() == Version::HTTP_11 && req.uri().authority().is_none() => {
            Err(ProxyError::BadRequest("no Host header"))
        }
        (None, _) => Ok(()),
    }
}

/// The request's authority: the URI's (HTTP/2, absolute-form) or the Host header's.
pub fn authority_of(req: &Request<Body>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_string());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
}

/// Picks the protocol for an endpoint: its hint if it has one, else the request's own.
pub fn protocol_for(endpoint: &Endpoint, req: &Request<Body>) -> Protocol {
    use pillion_proto::discovery::v1::ProtocolHint;
    match endpoint.hint {
        ProtocolHint::H2 => Protocol::Http2,
        ProtocolHint::Http1 => Protocol::Http1,
        _ if req.version() == Version::HTTP_2 => Protocol::Http2,
        _ => Protocol::Http1,
    }
}

/// Looked up on every response: a constant name skips parsing (and lowercasing) a `&str`.
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

// The headers between proxies are names, not `&str`s, for the same reason: removing the three
// by `&str` from every request cost ~1,200 instructions (of ~50,000).

/// Between proxies, the protocol the application spoke when it was not HTTP/2 (the hop itself is
/// always HTTP/2), and the application port the request is for. Never reach an application.
pub const ORIG_PROTO_HEADER: HeaderName = HeaderName::from_static("pillion-orig-proto");
pub const TARGET_PORT_HEADER: HeaderName = HeaderName::from_static("pillion-target-port");
/// Between proxies, the protocol discovery says the application speaks (`h2` or `http/1.1`,
/// from the endpoint's `appProtocol`), so that the server proxy speaks it to the application.
pub const APP_PROTO_HEADER: HeaderName = HeaderName::from_static("pillion-app-protocol");

/// How to forward one request.
pub struct ForwardOpts<'a> {
    /// The authority to send (`:authority` or `Host`).
    pub authority: &'a str,
    pub timeout: Option<Duration>,
    /// The protocol to speak to the endpoint, when the caller knows better than the request's
    /// own version (the inbound side of a proxy-to-proxy hop).
    pub protocol: Option<Protocol>,
}

/// Why forwarding failed: `NotSent` means nothing reached the endpoint (connecting failed), so
/// the request comes back and may go to another endpoint.
pub enum ForwardError {
    NotSent(ProxyError, crate::http::BoxRequest),
    Failed(ProxyError),
}

impl ForwardError {
    pub fn into_error(self) -> ProxyError {
        match self {
            ForwardError::NotSent(e, _) | ForwardError::Failed(e) => e,
        }
    }
}

impl From<ProxyError> for ForwardError {
    fn from(e: ProxyError) -> Self {
        ForwardError::Failed(e)
    }
}

/// Rewrites the client's request, in place, into the one `endpoint` gets: hop-by-hop headers
/// and the headers between proxies handled, the target and version of `protocol`. Returns the
/// flag the request body raises if the client's body fails (none if it has ended). Not part of
/// `forward`'s `async` block: the parts it works on would stay in the request's future across
/// the send.
fn upstream_request(
    req: &mut Request<Body>,
    endpoint: &Endpoint,
    protocol: Protocol,
    client_version: Version,
    upgrading: bool,
    authority: &str,
) -> Result<Option<Arc<std::sync::atomic::AtomicBool>>, ProxyError> {
    // Taken out of the box, which then carries the upstream request (no new allocation).
    let (mut parts, incoming) = std::mem::take(&mut *req).into_parts();
    strip_hop_by_hop(&mut parts.headers, upgrading);
    // One pass over the names instead of four lookups that each hash a name: the headers
    // between proxies, and a Host header on an HTTP/2 request, are rarely there.
    let (mut ours, mut host) = (false, false);
    for name in parts.headers.keys() {
        ours |= name == ORIG_PROTO_HEADER || name == TARGET_PORT_HEADER || name == APP_PROTO_HEADER;
        host |= name == header::HOST;
    }
    if ours {
        parts.headers.remove(ORIG_PROTO_HEADER);
        parts.headers.remove(TARGET_PORT_HEADER);
        parts.headers.remove(APP_PROTO_HEADER);
    }
    if endpoint.meshed.is_some() {
        use pillion_proto::discovery::v1::ProtocolHint;
        match endpoint.hint {
            ProtocolHint::H2 => {
                parts
                    .headers
                    .insert(APP_PROTO_HEADER, HeaderValue::from_static("h2"));
            }
            ProtocolHint::Http1 => {
                parts
                    .headers
                    .insert(APP_PROTO_HEADER, HeaderValue::from_static("http/1.1"));
            }
            _ => {}
        }
        if client_version != Version::HTTP_2 {
            parts
                .headers
                .insert(ORIG_PROTO_HEADER, HeaderValue::from_static("HTTP/1.1"));
        }
        parts
            .headers
            .insert(TARGET_PORT_HEADER, HeaderValue::from(endpoint.addr.port()));
    }
    let path = || {
        parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string()
    };
    match protocol {
        Protocol::Http1 => {
            parts.version = Version::HTTP_11;
            parts.uri =
                Uri::try_from(path()).map_err(|_| ProxyError::BadRequest("bad request target"))?;
            // The authority the request was routed by is the Host the endpoint sees: for an
            // absolute-form target it replaces the Host header (RFC 9112 §3.2.2).
            let host = HeaderValue::from_str(authority)
                .map_err(|_| ProxyError::BadRequest("bad authority"))?;
            parts.headers.insert(header::HOST, host);
        }
        Protocol::Http2 => {
            parts.version = Version::HTTP_2;
            // An HTTP/2 client's request usually has this very target already: keep it
            // rather than copy and parse it again.
            let same = parts.uri.scheme() == Some(&http::uri::Scheme::HTTP)
                && parts.uri.authority().map(|a| a.as_str()) == Some(authority);
            if !same {
                parts.uri = Uri::builder()
                    .scheme("http")
                    .authority(authority)
                    .path_and_query(path())
                    .build()
                    .map_err(|_| ProxyError::BadRequest("bad authority"))?;
            }
            if host {
                parts.headers.remove(header::HOST);
            }
        }
    }
    let (client_body, client_failed) = body::ClientBody::wrap(incoming);
    *req = Request::from_parts(parts, client_body);
    Ok(client_failed)
}

/// Sends `req` to `endpoint` and returns the response to give the client.
#[allow(clippy::manual_async_fn)]
pub fn forward(
    endpoint: &Arc<Endpoint>,
    mut req: crate::http::BoxRequest,
    opts: ForwardOpts<'_>,
) -> impl std::future::Future<Output = Result<Response<Body>, ForwardError>> {
    // Not an `async fn`: rustc keeps an async fn's by-value arguments twice in its state (the argument, and the local it is moved into, never overlapped), at every level of the request path; an `async move` block uses its captures in place.
    async move {
        let authority = opts.authority;
        let timeout = opts.timeout;
        let client_version = req.version();
        let protocol = if endpoint.meshed.is_some() {
            // Between proxies everything is HTTP/2, except an HTTP/1.1 upgrade, which HTTP/2
            // cannot carry: it gets its own HTTP/1.1 connection over mTLS.
            if wants_upgrade(&req) {
                Protocol::Http1
            } else {
                Protocol::Http2
            }
        } else {
            opts.protocol
                .unwrap_or_else(|| protocol_for(endpoint, &req))
        };
        let sender = match endpoint.conns.checkout(protocol).await {
            Ok(s) => s,
            Err(e) => {
                // Failures are not latency: they count towards ejecting the endpoint (a penalty
                // in the estimate would keep a recovered endpoint idle long after it came back).
                endpoint.outlier.failure();
                return Err(ForwardError::NotSent(e, req));
            }
        };
        let upgrading = protocol == Protocol::Http1 && wants_upgrade(&req);
        let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut *req));

        let client_failed = upstream_request(
            &mut req,
            endpoint,
            protocol,
            client_version,
            upgrading,
            authority,
        )?;

        let guard = endpoint.start();
        let started = Instant::now();
        let send = endpoint.conns.send(sender, req);
        let result = within(timeout, send).await;
        let mut resp = match result {
            Ok(resp) => {
                let now = Instant::now();
                endpoint.observe_at(now.saturating_duration_since(started), now);
                if resp.status().is_server_error() {
                    endpoint.outlier.failure();
                } else {
                    endpoint.outlier.success();
                }
                resp
            }
            Err(e) => {
                // The client's own body failed (a malformed chunk, a client gone): a bad request,
                // and nothing to hold against the endpoint.
                if client_failed
                    .as_ref()
                    .is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed))
                    && let ProxyError::Upstream(e) = e
                {
                    return Err(ForwardError::Failed(ProxyError::ClientBody(e)));
                }
                endpoint.outlier.failure();
                return Err(ForwardError::Failed(e));
            }
        };

        if let Some(client_upgrade) = client_upgrade
            && resp.status() == http::StatusCode::SWITCHING_PROTOCOLS
        {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                let _guard = guard;
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((client, upstream)) => {
                        let mut client = TokioIo::new(client);
                        let mut upstream = TokioIo::new(upstream);
                        if let Err(e) =
                            tokio::io::copy_bidirectional(&mut client, &mut upstream).await
                        {
                            tracing::debug!(error = %e, "upgraded connection ended");
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                }
            });
            let (mut parts, _) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers, true);
            parts.version = client_version;
            return Ok(Response::from_parts(parts, body::empty()));
        }

        let (mut parts, incoming) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        parts.version = client_version;
        Ok(Response::from_parts(parts, Guarded::wrap(incoming, guard)))
    }
}

/// Forwards an opaque TCP connection to `addr`, bytes as they are.
pub async fn tcp<S>(mut io: S, addr: std::net::SocketAddr, connect_timeout: Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let upstream =
        tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr)).await;
    let mut upstream = match upstream {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(%addr, error = %e, "opaque connect failed");
            return;
        }
        Err(_) => {
            tracing::info!(%addr, "opaque connect timed out");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    if let Err(e) = tokio::io::copy_bidirectional(&mut io, &mut upstream).await {
        tracing::debug!(%addr, error = %e, "opaque connection ended");
    }
}

/// Runs `work` within `timeout` (none: without limit); past it, [`ProxyError::Timeout`].
///
/// Not an `async fn`: one would keep `work` twice (as its argument, and again inside the
/// timeout it awaits, as rustc does not overlap the two), doubling every future it wraps, at
/// every level it is used (the handler's future was 19.8 KB, nearly all of a proxy's memory
/// with 1,000 requests in flight).
pub fn within<T, F>(
    timeout: Option<Duration>,
    work: F,
) -> impl std::future::Future<Output = Result<T, ProxyError>>
where
    F: std::future::Future<Output = Result<T, ProxyError>>,
{
    use futures_util::FutureExt as _;
    use futures_util::future::Either;
    match timeout {
        Some(t) => Either::Left(
            tokio::time::timeout(t, work).map(|r| r.unwrap_or(Err(ProxyError::Timeout))),
        ),
        None => Either::Right(work),
    }
}

/// The shortest of the timeouts that apply.
pub fn shortest(timeouts: impl IntoIterator<Item = Option<Duration>>) -> Option<Duration> {
    timeouts.into_iter().flatten().min()
}

/// What a request is counted under; filled in as routing learns more.
pub struct Observation {
    pub direction: Direction,
    pub authority: Label,
    pub route: Label,
    pub backend: Label,
    /// The hop between proxies was mTLS (inbound: the client's; outbound: to the endpoint).
    pub tls: bool,
    /// The peer's SPIFFE ID: the client (inbound) or the endpoint's proxy (outbound).
    pub peer_identity: Label,
    pub started: Instant,
    /// The span this hop records, when the request is sampled. Boxed, as `access`: both are
    /// rare, and this struct is in every request's future.
    pub span: Option<Box<(Arc<Tracer>, ActiveSpan)>>,
    /// What the access log says of the request, when `PILLION_ACCESS_LOG` is on.
    pub access: Option<Box<Access>>,
}

/// The request's side of an access-log line.
pub struct Access {
    pub method: http::Method,
    pub path: String,
    pub peer: std::net::SocketAddr,
}

impl Access {
    pub fn of(req: &Request<Body>, peer: std::net::SocketAddr) -> Box<Access> {
        Box::new(Access {
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            peer,
        })
    }
}

impl Observation {
    pub fn new(direction: Direction, authority: Label) -> Self {
        Observation {
            direction,
            authority,
            route: Label::default(),
            backend: Label::default(),
            tls: false,
            peer_identity: Label::default(),
            started: Instant::now(),
            span: None,
            access: None,
        }
    }

    /// Tags the span, when the request is sampled.
    pub fn tag(&mut self, key: &'static str, value: impl Into<crate::telemetry::trace::TagValue>) {
        if let Some((_, span)) = self.span.as_deref_mut() {
            span.tag(key, value);
        }
    }

    /// The span's remote end: the endpoint (outbound) or the caller (inbound).
    /// `backend`: the Service's canonical name (`web.default.svc.cluster.local:80`).
    /// `backend` is cloned only for a sampled request.
    pub fn remote(&mut self, addr: std::net::SocketAddr, backend: Option<&Arc<str>>) {
        if let Some((_, span)) = self.span.as_deref_mut() {
            span.remote = Some(addr);
            span.remote_service = backend.cloned();
        }
    }

    /// Counts the request and its response (or the proxy's error), and turns an error into the
    /// response the client gets.
    pub fn finish(
        mut self,
        metrics: &Arc<Metrics>,
        result: Result<Response<Body>, ProxyError>,
        grpc: bool,
    ) -> Response<Body> {
        let (resp, error) = match result {
            Ok(resp) => (resp, None),
            Err(e) => {
                let reason = e.reason();
                match &e {
                    ProxyError::Upstream(_) | ProxyError::Connect(..) => {
                        tracing::info!(authority = %self.authority.0, backend = %self.backend.0, error = %e, "request failed");
                    }
                    _ => {
                        tracing::debug!(authority = %self.authority.0, error = %e, "request refused")
                    }
                }
                (e.into_response(grpc), Some(Label::from(reason)))
            }
        };
        let header_status = grpc_status(resp.headers());
        let leg = metrics.leg(self.direction, &self.authority, &self.route, &self.backend);
        leg.count_request(self.started.elapsed().as_secs_f64());
        // The counted authority is the request's own unless it is past the bound: then moved,
        // not cloned.
        let authority = if Arc::ptr_eq(&leg.authority.0, &self.authority.0) {
            self.authority
        } else {
            leg.authority.clone()
        };
        let mut pending_span = None;
        if let Some((tracer, mut span)) = self.span.take().map(|b| *b) {
            span.tag("http.status_code", resp.status().as_u16());
            if let Some(g) = &header_status {
                span.tag("grpc.status_code", g.0.clone());
            }
            if let Some(error) = &error {
                span.tag("error", error.0.clone());
            } else if resp.status().is_server_error() {
                span.tag("error", resp.status().as_u16());
            }
            span.tag("pillion.authority", authority.0.clone());
            span.tag("pillion.route", self.route.0.clone());
            span.tag("pillion.backend", self.backend.0.clone());
            span.tag("pillion.peer_identity", self.peer_identity.0.clone());
            pending_span = Some((tracer, span));
        }
        if let Some(error) = &error {
            metrics
                .proxy_errors
                .get_or_create(&ErrorLabels {
                    direction: self.direction,
                    reason: error.clone(),
                })
                .inc();
        }
        let classification = classify(resp.status(), header_status.as_ref());
        if let Some(a) = self.access.take() {
            // One line per request, after the response headers (target `pillion_access`).
            tracing::info!(
                target: "pillion_access",
                direction = ?self.direction,
                method = %a.method,
                authority = %authority.0,
                path = %a.path,
                status = resp.status().as_u16(),
                grpc_status = header_status.as_ref().map_or("", |g| &*g.0),
                error = error.as_ref().map_or("", |e| &*e.0),
                route = %self.route.0,
                backend = %self.backend.0,
                peer = %a.peer,
                peer_identity = %self.peer_identity.0,
                duration_us = self.started.elapsed().as_micros() as u64,
                "request"
            );
        }
        let labels = ResponseLabels {
            direction: self.direction,
            authority,
            route: self.route,
            backend: self.backend,
            status_code: resp.status().as_u16(),
            grpc_status: header_status.clone(),
            error,
            tls: self.tls,
            peer_identity: self.peer_identity,
            classification,
        };
        // A gRPC answer that is not trailers-only says its status in the trailers: count the
        // response when they arrive.
        if grpc && header_status.is_none() && resp.status() == http::StatusCode::OK {
            let (parts, body) = resp.into_parts();
            let metrics = metrics.clone();
            let body = body::OnEnd::wrap(body, move |trailers| {
                let mut labels = labels;
                let status = trailers.and_then(grpc_status);
                // A gRPC stream that ends without a status (cancelled, reset) failed.
                labels.classification = match &status {
                    Some(s) if &*s.0 == "0" => Classification::success,
                    _ => Classification::failure,
                };
                // The span ends with the stream too, with its status.
                if let Some((tracer, mut span)) = pending_span {
                    match &status {
                        Some(s) => {
                            span.tag("grpc.status_code", s.0.clone());
                            if &*s.0 != "0" {
                                span.tag("error", format!("grpc-status {}", s.0));
                            }
                        }
                        None => span.tag("error", "stream ended without grpc-status"),
                    }
                    tracer.finish(span);
                }
                labels.grpc_status = status;
                leg.count_response(&metrics, labels);
            });
            return Response::from_parts(parts, body);
        }
        if let Some((tracer, span)) = pending_span {
            tracer.finish(span);
        }
        leg.count_response(metrics, labels);
        resp
    }
}

/// The `grpc-status` of headers or trailers as a label value; none when absent, or empty (a
/// label `Some("")` would be a second series printed exactly as the one without).
fn grpc_status(headers: &HeaderMap) -> Option<Label> {
    headers
        .get(GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(Label::from)
}

/// A response failed when its status is 5xx or a gRPC status other than OK came with it. A
/// 4xx (the proxy's own 403, 404 or 400 included) is the caller's doing, not a failure.
fn classify(status: http::StatusCode, grpc: Option<&Label>) -> Classification {
    let grpc_failed = grpc.is_some_and(|g| &*g.0 != "0");
    if status.is_server_error() || grpc_failed {
        Classification::failure
    } else {
        Classification::success
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_grpc_status_is_no_status() {
        let mut h = HeaderMap::new();
        assert_eq!(grpc_status(&h), None);
        h.insert(GRPC_STATUS, HeaderValue::from_static(""));
        assert_eq!(grpc_status(&h), None, "one series, not two printed alike");
        h.insert(GRPC_STATUS, HeaderValue::from_static("14"));
        assert_eq!(grpc_status(&h), Some(Label::from("14")));
    }

    #[test]
    fn responses_are_classified() {
        let ok = http::StatusCode::OK;
        assert_eq!(classify(ok, None), Classification::success);
        assert_eq!(
            classify(ok, Some(&Label::from("0"))),
            Classification::success
        );
        assert_eq!(
            classify(http::StatusCode::NOT_FOUND, None),
            Classification::success,
            "a 4xx is the caller's doing"
        );
        assert_eq!(
            classify(http::StatusCode::BAD_GATEWAY, None),
            Classification::failure
        );
        assert_eq!(
            classify(ok, Some(&Label::from("14"))),
            Classification::failure
        );
    }

    #[test]
    fn hop_by_hop_headers_go_and_te_trailers_stays() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers, deflate"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h[header::TE], "trailers");
        assert_eq!(h["x-kept"], "1");
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_removed() {
        for (name, value) in [
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("trailer", "grpc-status"),
            ("te", "deflate"),
        ] {
            let mut h = HeaderMap::new();
            h.insert("x-kept", HeaderValue::from_static("1"));
            h.insert(name, HeaderValue::from_static(value));
            strip_hop_by_hop(&mut h, false);
            assert_eq!(h.len(), 1, "{name}: {h:?}");
        }
        // `te: trailers` alone (any case) is what gRPC needs at every hop: kept as it is.
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("Trailers"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h[header::TE], "Trailers");
        // With a second `te` value the whole field is rewritten to `trailers`.
        h.append(header::TE, HeaderValue::from_static("deflate"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(
            h.get_all(header::TE).iter().collect::<Vec<_>>(),
            ["trailers"]
        );
    }

    #[test]
    fn grpc_timeouts_parse() {
        let t = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", HeaderValue::from_static(v));
            grpc_timeout(&h)
        };
        assert_eq!(t("100m"), Some(Duration::from_millis(100)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("123456789S"), None);
        assert_eq!(t("10x"), None);
    }
}
