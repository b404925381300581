//! Errors the proxy itself produces, and the responses they become: an HTTP status with a
//! `pillion-proxy-error` header, or for gRPC callers a trailers-only response with the matching
//! `grpc-status`.

use std::net::SocketAddr;

use http::{HeaderValue, Response, StatusCode};

use crate::http::body::{self, Body};

pub const ERROR_HEADER: &str = "pillion-proxy-error";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("not in mesh")]
    NotInMesh,
    #[error("no route matches the request")]
    NoRoute,
    #[error("no ready endpoint")]
    NoEndpoints,
    #[error("backend failure: {reason}")]
    BackendFailure { status: u16, reason: String },
    #[error("connect to {0} failed: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("connect to {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("mTLS handshake with {0} failed: {1}")]
    Tls(SocketAddr, String),
    #[error("denied by policy: {0}")]
    Forbidden(&'static str),
    #[error("upstream error: {0}")]
    Upstream(crate::http::body::BoxError),
    #[error("request timed out")]
    Timeout,
    #[error("destination unavailable: {0}")]
    Unavailable(&'static str),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("reading the request body failed: {0}")]
    ClientBody(crate::http::body::BoxError),
    #[error("method {0} is not supported by the proxy")]
    MethodNotAllowed(&'static str),
    #[error("connection loops back to the proxy")]
    Loop,
    #[error("DNS resolution failed: {0}")]
    Dns(String),
    #[error("request header section larger than PILLION_MAX_HEADER_BYTES")]
    HeadersTooLarge,
    /// A FaultInjection's abort: `grpc` 0 means the status matching `status`.
    #[error("fault injected by {source_name}")]
    FaultInjected {
        status: u16,
        grpc: u8,
        source_name: String,
    },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NotInMesh
            | ProxyError::NoEndpoints
            | ProxyError::Unavailable(_)
            | ProxyError::Dns(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BackendFailure { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            ProxyError::Connect(..)
            | ProxyError::ConnectTimeout(_)
            | ProxyError::Upstream(_)
            | ProxyError::Tls(..) => StatusCode::BAD_GATEWAY,
            ProxyError::Forbidden(_) => StatusCode::FORBIDDEN,
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) | ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Loop => StatusCode::LOOP_DETECTED,
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::FaultInjected { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
        }
    }

    /// A short, stable reason for the header and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::NotInMesh => "not in mesh",
            ProxyError::NoRoute => "no route",
            ProxyError::NoEndpoints => "no ready endpoint",
            ProxyError::BackendFailure { .. } => "backend failure",
            ProxyError::Connect(..) => "connect failed",
            ProxyError::ConnectTimeout(_) => "connect timeout",
            ProxyError::Upstream(_) => "upstream error",
            ProxyError::Tls(..) => "tls handshake failed",
            ProxyError::Forbidden(_) => "forbidden",
            ProxyError::Timeout => "timeout",
            ProxyError::Unavailable(r) => r,
            ProxyError::BadRequest(r) => r,
            ProxyError::ClientBody(_) => "bad request body",
            ProxyError::MethodNotAllowed(_) => "method not allowed",
            ProxyError::Loop => "loop detected",
            ProxyError::Dns(_) => "dns resolution failed",
            ProxyError::HeadersTooLarge => "request headers too large",
            ProxyError::FaultInjected { .. } => "fault injected",
        }
    }

    /// The gRPC status a gRPC caller gets instead of the HTTP status.
    pub fn grpc_code(&self) -> u8 {
        if let ProxyError::FaultInjected { grpc, .. } = self
            && *grpc != 0
        {
            return *grpc;
        }
        match self.status() {
            StatusCode::NOT_FOUND => 12,      // UNIMPLEMENTED
            StatusCode::GATEWAY_TIMEOUT => 4, // DEADLINE_EXCEEDED
            StatusCode::FORBIDDEN => 7,       // PERMISSION_DENIED
            StatusCode::BAD_REQUEST | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => 13, // INTERNAL
            StatusCode::INTERNAL_SERVER_ERROR => 13,
            _ => 14, // UNAVAILABLE
        }
    }

    pub fn into_response(self, grpc: bool) -> Response<Body> {
        let reason = HeaderValue::from_static(self.reason());
        let message = self.to_string();
        if grpc {
            let mut resp = Response::new(body::empty());
            let h = resp.headers_mut();
            h.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert(
                "grpc-status",
                HeaderValue::from(i32::from(self.grpc_code())),
            );
            if let Ok(v) = HeaderValue::from_str(&percent_encode(&message)) {
                h.insert("grpc-message", v);
            }
            h.insert(ERROR_HEADER, reason);
            return resp;
        }
        let mut resp = Response::new(body::full(format!("{message}\n")));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(ERROR_HEADER, reason);
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }
}

/// gRPC's percent-encoding of `grpc-message`: printable ASCII except `%` passes.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether a request is gRPC (and so wants errors as gRPC statuses).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}
