//! Gateway API HTTPRoute filters as the request path applies them: header modifiers on the
//! request and the response, a redirect answered by the proxy, a URL rewrite, mirrors, CORS.
//!
//! Compiled once per snapshot from the control plane's `Filters` (names and values already
//! parsed, so a request pays only for the edits themselves). A rule without filters carries
//! `None` and its requests take no branch here beyond that check.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Uri};
use http::{Request, Response, StatusCode};
use pillion_proto::discovery::v1 as pb;

use crate::http::body::{self, Body};
use crate::route::split::Backend;

pub struct Filters {
    pub request_headers: Option<HeaderModifier>,
    pub response_headers: Option<HeaderModifier>,
    pub redirect: Option<Redirect>,
    pub rewrite: Option<Rewrite>,
    pub mirrors: Vec<Mirror>,
    pub cors: Option<Cors>,
}

/// `set`, `add` and `remove` of one modifier. Removals go first, then sets, then additions
/// (Envoy's order): a header both removed and set ends up set.
#[derive(Default)]
pub struct HeaderModifier {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

pub struct Redirect {
    scheme: Option<&'static str>,
    hostname: Option<String>,
    path: Option<PathModifier>,
    port: Option<u16>,
    status: StatusCode,
}

pub struct Rewrite {
    /// The authority the backend sees instead of the request's.
    pub hostname: Option<String>,
    path: Option<PathModifier>,
}

enum PathModifier {
    Full(String),
    Prefix {
        matched: String,
        replacement: String,
    },
}

/// A copy of a share of the requests, sent to another backend; its answer is dropped.
pub struct Mirror {
    pub backend: Backend,
    pub ppm: u32,
}

impl Filters {
    /// Compiles the control plane's filters; `backend` compiles a mirror's target (with the
    /// snapshot's endpoint state).
    pub fn compile(
        f: pb::Filters,
        mut backend: impl FnMut(pb::WeightedBackend) -> Result<Backend, String>,
    ) -> Result<Filters, String> {
        let mut mirrors = Vec::with_capacity(f.mirrors.len());
        for m in f.mirrors {
            if let Some(b) = m.backend {
                mirrors.push(Mirror {
                    backend: backend(b)?,
                    ppm: m.ppm.min(1_000_000),
                });
            }
        }
        Ok(Filters {
            request_headers: f.request_headers.map(HeaderModifier::compile).transpose()?,
            response_headers: f
                .response_headers
                .map(HeaderModifier::compile)
                .transpose()?,
            redirect: f.redirect.map(Redirect::compile).transpose()?,
            rewrite: f
                .rewrite
                .map(|r| -> Result<Rewrite, String> {
                    Ok(Rewrite {
                        hostname: (!r.hostname.is_empty()).then_some(r.hostname),
                        path: r.path.and_then(PathModifier::compile),
                    })
                })
                .transpose()?,
            mirrors,
            cors: f.cors.map(Cors::compile).transpose()?,
        })
    }

    /// Edits a request this rule (or backend) takes: headers, then path. The new authority, if
    /// the rewrite sets one, is the caller's to use (it decides the `Host` the backend sees).
    pub fn edit_request(&self, req: &mut Request<Body>) -> Result<(), &'static str> {
        if let Some(m) = &self.request_headers {
            m.apply(req.headers_mut(), false);
        }
        if let Some(path) = self.rewrite.as_ref().and_then(|r| r.path.as_ref()) {
            let query = req.uri().query();
            let new = path.apply(req.uri().path());
            let pq = match query {
                Some(q) => format!("{new}?{q}"),
                None => new,
            };
            let mut parts = req.uri().clone().into_parts();
            parts.path_and_query =
                Some(PathAndQuery::try_from(pq).map_err(|_| "rewritten path is not valid")?);
            *req.uri_mut() = Uri::from_parts(parts).map_err(|_| "rewritten path is not valid")?;
        }
        Ok(())
    }

    /// The authority a rewrite sends instead of the request's.
    pub fn rewritten_authority(&self) -> Option<&str> {
        self.rewrite.as_ref()?.hostname.as_deref()
    }

    /// For `/config`: which filters, by their Gateway API type names.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut has = |set: bool, name: &str| {
            if set {
                out.push(name.to_string());
            }
        };
        has(self.request_headers.is_some(), "RequestHeaderModifier");
        has(self.response_headers.is_some(), "ResponseHeaderModifier");
        has(self.redirect.is_some(), "RequestRedirect");
        has(self.rewrite.is_some(), "URLRewrite");
        has(self.cors.is_some(), "CORS");
        for m in &self.mirrors {
            out.push(format!("RequestMirror {}", m.backend.target.name()));
        }
        out
    }

    /// `origin`: the request's `Origin` when CORS allows it (`cors_origin`).
    pub fn edit_response(&self, resp: &mut Response<Body>, origin: Option<&HeaderValue>) {
        if let Some(m) = &self.response_headers {
            m.apply(resp.headers_mut(), true);
        }
        if let (Some(cors), Some(origin)) = (&self.cors, origin) {
            cors.answer_headers(resp.headers_mut(), origin);
        }
    }

    /// The request's `Origin`, when a CORS filter allows it: what `edit_response` needs.
    pub fn cors_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        self.cors.as_ref()?.allows(origin).then(|| origin.clone())
    }
}

/// The `CORS` filter: which origins may read the answers, and what a preflight answers.
pub struct Cors {
    origins: Vec<OriginPattern>,
    any_origin: bool,
    /// `Access-Control-Allow-Methods` as configured (None: `*`, or none configured).
    methods: Option<HeaderValue>,
    any_method: bool,
    headers: Option<HeaderValue>,
    any_header: bool,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

struct OriginPattern {
    scheme: String,
    /// `None`: any host; `Some(".example.com")` with `suffix`: any host under it.
    host: Option<String>,
    suffix: bool,
    port: u16,
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" { 443 } else { 80 }
}

/// `scheme://host[:port]`, lowercased, the port made explicit.
fn split_origin(o: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = o.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (rest, default_port(&scheme)),
    };
    Some((scheme, host.to_ascii_lowercase(), port))
}

impl Cors {
    fn compile(c: pb::Cors) -> Result<Cors, String> {
        let joined = |list: &[String]| -> Result<Option<HeaderValue>, String> {
            let items: Vec<&str> = list
                .iter()
                .map(String::as_str)
                .filter(|v| *v != "*")
                .collect();
            if items.is_empty() {
                return Ok(None);
            }
            HeaderValue::from_str(&items.join(", "))
                .map(Some)
                .map_err(|_| format!("bad CORS list {items:?}"))
        };
        let mut origins = Vec::new();
        for o in c.allow_origins.iter().filter(|o| *o != "*") {
            let (scheme, host, port) =
                split_origin(o).ok_or_else(|| format!("bad CORS origin {o}"))?;
            let (host, suffix) = match host.as_str() {
                "*" => (None, false),
                h => match h.strip_prefix('*') {
                    Some(rest) => (Some(rest.to_string()), true),
                    None => (Some(h.to_string()), false),
                },
            };
            origins.push(OriginPattern {
                scheme,
                host,
                suffix,
                port,
            });
        }
        let star = |list: &[String]| list.iter().any(|v| v == "*");
        // With credentials a `*` is not a wildcard to browsers: such lists name what is allowed.
        let expose: Vec<String> = c
            .expose_headers
            .iter()
            .filter(|h| !(c.allow_credentials && *h == "*"))
            .cloned()
            .collect();
        Ok(Cors {
            any_origin: star(&c.allow_origins),
            origins,
            methods: joined(&c.allow_methods)?,
            any_method: star(&c.allow_methods),
            headers: joined(&c.allow_headers)?,
            any_header: star(&c.allow_headers),
            expose: match expose.as_slice() {
                [] => None,
                list => Some(
                    HeaderValue::from_str(&list.join(", "))
                        .map_err(|_| "bad CORS expose list".to_string())?,
                ),
            },
            credentials: c.allow_credentials,
            max_age: HeaderValue::from(c.max_age.max(1)),
        })
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        if self.any_origin {
            return true;
        }
        let Some((scheme, host, port)) = origin.to_str().ok().and_then(split_origin) else {
            return false;
        };
        self.origins.iter().any(|p| {
            p.scheme == scheme
                && p.port == port
                && match (&p.host, p.suffix) {
                    (None, _) => true,
                    (Some(h), false) => *h == host,
                    // `*.example.com`: one or more labels to the left.
                    (Some(h), true) => host.len() > h.len() && host.ends_with(h.as_str()),
                }
        })
    }

    /// A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered
    /// here: 204, with the CORS headers when the origin is allowed, without them when not (the
    /// browser then refuses the actual request).
    pub fn preflight(&self, req: &Request<Body>) -> Option<Response<Body>> {
        let h = req.headers();
        if req.method() != http::Method::OPTIONS {
            return None;
        }
        let origin = h.get(header::ORIGIN)?;
        let method = h.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
        let mut resp = Response::new(body::empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        if !self.allows(origin) {
            return Some(resp);
        }
        let out = resp.headers_mut();
        self.answer_headers(out, origin);
        out.remove(header::ACCESS_CONTROL_EXPOSE_HEADERS);
        // `*` with credentials must name the request's own method and headers instead.
        let methods = match (&self.methods, self.any_method) {
            (_, true) if self.credentials => Some(method.clone()),
            (_, true) => Some(HeaderValue::from_static("*")),
            (m, false) => m.clone(),
        };
        if let Some(m) = methods {
            out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, m);
        }
        let asked = h.get(header::ACCESS_CONTROL_REQUEST_HEADERS);
        let headers = match (&self.headers, self.any_header) {
            (_, true) if self.credentials => asked.cloned(),
            (_, true) => Some(HeaderValue::from_static("*")),
            (v, false) => v.clone(),
        };
        if let Some(v) = headers {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        out.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        Some(resp)
    }

    /// The headers of an answer to an allowed origin: the origin echoed (never `*`, so that
    /// credentials work and caches keep answers apart: `Vary: Origin`), credentials, exposure.
    fn answer_headers(&self, out: &mut HeaderMap, origin: &HeaderValue) {
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if self.credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(e) = &self.expose {
            out.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
        }
        out.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

impl HeaderModifier {
    fn compile(m: pb::HeaderModifier) -> Result<HeaderModifier, String> {
        let pair = |h: pb::Header| -> Result<(HeaderName, HeaderValue), String> {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| format!("bad header name {}", h.name))?;
            let value = HeaderValue::from_str(&h.value)
                .map_err(|_| format!("bad value for header {}", h.name))?;
            Ok((name, value))
        };
        Ok(HeaderModifier {
            set: m.set.into_iter().map(pair).collect::<Result<_, _>>()?,
            add: m.add.into_iter().map(pair).collect::<Result<_, _>>()?,
            remove: m
                .remove
                .iter()
                .map(|n| {
                    HeaderName::from_bytes(n.as_bytes()).map_err(|_| format!("bad header name {n}"))
                })
                .collect::<Result<_, _>>()?,
        })
    }

    /// `response`: `set-cookie` values are added as lines of their own (RFC 6265: never
    /// joined); everything else appends to what is there with `,` (`;` for `cookie`).
    pub fn apply(&self, headers: &mut HeaderMap, response: bool) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            if response && name == header::SET_COOKIE {
                headers.append(name.clone(), value.clone());
                continue;
            }
            let sep: &[u8] = if name == header::COOKIE { b"; " } else { b"," };
            let mut joined: Vec<u8> = Vec::new();
            for old in headers.get_all(name) {
                joined.extend_from_slice(old.as_bytes());
                joined.extend_from_slice(sep);
            }
            if joined.is_empty() {
                headers.insert(name.clone(), value.clone());
                continue;
            }
            joined.extend_from_slice(value.as_bytes());
            // Both parts were valid values, so their join is one.
            if let Ok(v) = HeaderValue::from_bytes(&joined) {
                headers.insert(name.clone(), v);
            }
        }
    }
}

impl PathModifier {
    fn compile(p: pb::PathModifier) -> Option<PathModifier> {
        Some(match p.kind? {
            pb::path_modifier::Kind::Full(f) => PathModifier::Full(f),
            pb::path_modifier::Kind::Prefix(r) => PathModifier::Prefix {
                matched: p.matched_prefix,
                replacement: r,
            },
        })
    }

    /// The new path for `path` (no query). `Prefix` follows the Gateway API's table: whole
    /// segments, a trailing `/` of the prefix or the replacement ignored, never empty.
    fn apply(&self, path: &str) -> String {
        let new = match self {
            PathModifier::Full(p) => p.clone(),
            PathModifier::Prefix {
                matched,
                replacement,
            } => {
                let prefix = matched.trim_end_matches('/');
                let rest = match path.strip_prefix(prefix) {
                    Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
                    // Not under the prefix (a backend's filter on a rule matched otherwise).
                    _ => return path.to_string(),
                };
                format!("{}{rest}", replacement.trim_end_matches('/'))
            }
        };
        if new.is_empty() { "/".to_string() } else { new }
    }
}

impl Redirect {
    fn compile(r: pb::Redirect) -> Result<Redirect, String> {
        let scheme = match r.scheme.as_str() {
            "" => None,
            "http" => Some("http"),
            "https" => Some("https"),
            s => return Err(format!("bad redirect scheme {s}")),
        };
        let status = match r.status_code {
            0 => StatusCode::FOUND,
            c => StatusCode::from_u16(u16::try_from(c).unwrap_or(0))
                .ok()
                .filter(StatusCode::is_redirection)
                .ok_or_else(|| format!("bad redirect status {c}"))?,
        };
        Ok(Redirect {
            scheme,
            hostname: (!r.hostname.is_empty()).then_some(r.hostname),
            path: r.path.and_then(PathModifier::compile),
            port: u16::try_from(r.port).ok().filter(|p| *p != 0),
            status,
        })
    }

    /// The answer to `req`, addressed by `authority` (the one it was routed by): a `Location`
    /// built from the request with the filter's parts replaced, as the Gateway API says.
    pub fn response(&self, req: &Request<Body>, authority: &str) -> Response<Body> {
        let req_scheme = req.uri().scheme_str().unwrap_or("http");
        let scheme = self.scheme.unwrap_or(if req_scheme == "https" {
            "https"
        } else {
            "http"
        });
        let parsed = authority.parse::<Authority>().ok();
        let host = match (&self.hostname, &parsed) {
            (Some(h), _) => h.as_str(),
            (None, Some(a)) => a.host(),
            (None, None) => authority,
        };
        // The port: the filter's; else the scheme's own when the filter sets the scheme; else
        // the one the request was sent to.
        let port = self.port.or_else(|| match self.scheme {
            Some("https") => Some(443),
            Some(_) => Some(80),
            None => parsed.as_ref().and_then(Authority::port_u16),
        });
        let port = port.filter(|&p| !matches!((scheme, p), ("http", 80) | ("https", 443)));
        let path = match &self.path {
            Some(p) => p.apply(req.uri().path()),
            None => req.uri().path().to_string(),
        };
        let mut location = format!("{scheme}://{host}");
        if let Some(p) = port {
            location.push_str(&format!(":{p}"));
        }
        location.push_str(&path);
        if let Some(q) = req.uri().query() {
            location.push('?');
            location.push_str(q);
        }
        let mut resp = Response::new(body::empty());
        *resp.status_mut() = self.status;
        match HeaderValue::try_from(location) {
            Ok(v) => {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            // Only a host the request brought could make it invalid; the status still says
            // where the route stands.
            Err(_) => *resp.status_mut() = StatusCode::BAD_REQUEST,
        }
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(matched: &str, replacement: &str) -> PathModifier {
        PathModifier::Prefix {
            matched: matched.into(),
            replacement: replacement.into(),
        }
    }

    #[test]
    fn prefix_replacement_follows_the_gateway_api_table() {
        // Request path, prefix match, replacement, modified path: the API's own table.
        let table = [
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo/bar", "/foo", "", "/bar"),
            ("/foo/", "/foo", "", "/"),
            ("/foo", "/foo", "", "/"),
            ("/foo/", "/foo", "/", "/"),
            ("/foo", "/foo", "/", "/"),
            ("/anything", "/", "/api", "/api/anything"),
        ];
        for (path, matched, replacement, want) in table {
            assert_eq!(
                prefix(matched, replacement).apply(path),
                want,
                "{path} with {matched} -> {replacement}"
            );
        }
        assert_eq!(PathModifier::Full("/new".into()).apply("/old/x"), "/new");
        assert_eq!(prefix("/foo", "/x").apply("/foobar"), "/foobar");
    }

    fn modifier(set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> HeaderModifier {
        let h = |l: &[(&str, &str)]| {
            l.iter()
                .map(|(n, v)| pb::Header {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect()
        };
        HeaderModifier::compile(pb::HeaderModifier {
            set: h(set),
            add: h(add),
            remove: remove.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn headers_are_set_added_and_removed() {
        let m = modifier(
            &[("x-set", "new")],
            &[("x-add", "bar,baz"), ("x-fresh", "1"), ("cookie", "b=2")],
            &["x-gone"],
        );
        let mut h = HeaderMap::new();
        h.insert("x-set", HeaderValue::from_static("old"));
        h.append("x-set", HeaderValue::from_static("older"));
        h.insert("x-add", HeaderValue::from_static("foo"));
        h.insert("x-gone", HeaderValue::from_static("1"));
        h.insert("cookie", HeaderValue::from_static("a=1"));
        m.apply(&mut h, false);
        assert_eq!(h.get_all("x-set").iter().collect::<Vec<_>>(), ["new"]);
        assert_eq!(
            h.get_all("x-add").iter().collect::<Vec<_>>(),
            ["foo,bar,baz"]
        );
        assert_eq!(h.get("x-fresh").unwrap(), "1");
        assert_eq!(h.get("cookie").unwrap(), "a=1; b=2");
        assert!(h.get("x-gone").is_none());
    }

    #[test]
    fn set_cookie_is_added_as_its_own_line() {
        let m = modifier(&[], &[("set-cookie", "b=2")], &[]);
        let mut h = HeaderMap::new();
        h.insert("set-cookie", HeaderValue::from_static("a=1"));
        m.apply(&mut h, true);
        assert_eq!(
            h.get_all("set-cookie").iter().collect::<Vec<_>>(),
            ["a=1", "b=2"]
        );
    }

    fn redirect(r: pb::Redirect) -> Redirect {
        Redirect::compile(r).unwrap()
    }

    fn location(r: &Redirect, uri: &str, authority: &str) -> (u16, String) {
        let req = Request::builder().uri(uri).body(body::empty()).unwrap();
        let resp = r.response(&req, authority);
        let loc = resp
            .headers()
            .get(header::LOCATION)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (resp.status().as_u16(), loc)
    }

    #[test]
    fn redirects_keep_what_the_filter_does_not_replace() {
        let plain = redirect(pb::Redirect::default());
        assert_eq!(
            location(&plain, "/a?b=1", "web:8080"),
            (302, "http://web:8080/a?b=1".into())
        );
        assert_eq!(location(&plain, "/a", "web"), (302, "http://web/a".into()));
        let host = redirect(pb::Redirect {
            hostname: "example.org".into(),
            status_code: 301,
            ..Default::default()
        });
        assert_eq!(
            location(&host, "/x", "web:8080"),
            (301, "http://example.org:8080/x".into())
        );
        // A scheme set: its own port, left out of the Location.
        let https = redirect(pb::Redirect {
            scheme: "https".into(),
            ..Default::default()
        });
        assert_eq!(
            location(&https, "/x", "web:8080"),
            (302, "https://web/x".into())
        );
        let port = redirect(pb::Redirect {
            port: 8443,
            scheme: "https".into(),
            path: Some(pb::PathModifier {
                kind: Some(pb::path_modifier::Kind::Prefix("/v2".into())),
                matched_prefix: "/v1".into(),
            }),
            status_code: 308,
            ..Default::default()
        });
        assert_eq!(
            location(&port, "/v1/items?id=3", "web"),
            (308, "https://web:8443/v2/items?id=3".into())
        );
        let http80 = redirect(pb::Redirect {
            port: 80,
            ..Default::default()
        });
        assert_eq!(
            location(&http80, "/", "web:8080"),
            (302, "http://web/".into())
        );
        assert!(
            Redirect::compile(pb::Redirect {
                status_code: 200,
                ..Default::default()
            })
            .is_err()
        );
    }

    fn cors(origins: &[&str], credentials: bool, any: bool) -> Cors {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Cors::compile(pb::Cors {
            allow_origins: list(origins),
            allow_methods: if any {
                list(&["*"])
            } else {
                list(&["GET", "PUT"])
            },
            allow_headers: if any {
                list(&["*"])
            } else {
                list(&["x-a", "x-b"])
            },
            expose_headers: list(&["x-total", "*"]),
            allow_credentials: credentials,
            max_age: 600,
        })
        .unwrap()
    }

    fn preflight(c: &Cors, origin: &str) -> Response<Body> {
        let req = Request::builder()
            .method("OPTIONS")
            .uri("/x")
            .header("origin", origin)
            .header("access-control-request-method", "PUT")
            .header("access-control-request-headers", "x-a, x-custom")
            .body(body::empty())
            .unwrap();
        c.preflight(&req).expect("a preflight")
    }

    #[test]
    fn origins_match_exactly_by_wildcard_host_or_all() {
        let c = cors(
            &["https://*.example.com", "http://app.local:8080"],
            false,
            false,
        );
        let ok = |o: &str| c.allows(&HeaderValue::from_str(o).unwrap());
        assert!(ok("https://a.example.com"));
        assert!(ok("https://a.b.example.com"));
        assert!(ok("https://a.example.com:443"));
        assert!(!ok("https://example.com"));
        assert!(!ok("http://a.example.com"));
        assert!(!ok("https://a.example.com.evil.org"));
        assert!(ok("http://app.local:8080"));
        assert!(!ok("http://app.local"));
        assert!(!ok("null"));
        assert!(cors(&["*"], false, false).allows(&HeaderValue::from_static("null")));
    }

    #[test]
    fn a_preflight_is_answered_with_what_is_allowed() {
        let c = cors(&["https://app.example"], false, false);
        let r = preflight(&c, "https://app.example");
        assert_eq!(r.status(), 204);
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], "https://app.example");
        assert_eq!(h["access-control-allow-methods"], "GET, PUT");
        assert_eq!(h["access-control-allow-headers"], "x-a, x-b");
        assert_eq!(h["access-control-max-age"], "600");
        assert!(h.get("access-control-allow-credentials").is_none());
        assert!(h.get("access-control-expose-headers").is_none());
        // An origin not allowed: 204 without the headers.
        let r = preflight(&c, "https://other.example");
        assert_eq!(r.status(), 204);
        assert!(r.headers().get("access-control-allow-origin").is_none());
        // Not a preflight: forwarded.
        let get = Request::builder()
            .method("OPTIONS")
            .header("origin", "https://app.example")
            .body(body::empty())
            .unwrap();
        assert!(c.preflight(&get).is_none());
    }

    #[test]
    fn wildcards_with_credentials_name_what_the_request_asked() {
        let c = cors(&["*"], true, true);
        let r = preflight(&c, "https://any.example");
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], "https://any.example");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-allow-methods"], "PUT");
        assert_eq!(h["access-control-allow-headers"], "x-a, x-custom");
        let open = cors(&["*"], false, true);
        let h = preflight(&open, "https://any.example").headers().clone();
        assert_eq!(h["access-control-allow-methods"], "*");
        assert_eq!(h["access-control-allow-headers"], "*");
        // An actual answer: origin echoed, exposure (no `*` with credentials), Vary.
        let mut resp = Response::new(body::empty());
        c.answer_headers(
            resp.headers_mut(),
            &HeaderValue::from_static("https://any.example"),
        );
        assert_eq!(resp.headers()["access-control-expose-headers"], "x-total");
        assert_eq!(resp.headers()["vary"], "Origin");
        let mut resp = Response::new(body::empty());
        open.answer_headers(
            resp.headers_mut(),
            &HeaderValue::from_static("https://x.example"),
        );
        assert_eq!(
            resp.headers()["access-control-expose-headers"],
            "x-total, *"
        );
    }

    #[test]
    fn a_rewrite_changes_the_path_and_keeps_the_query() {
        let f = Filters::compile(
            pb::Filters {
                rewrite: Some(pb::Rewrite {
                    hostname: "elsewhere".into(),
                    path: Some(pb::PathModifier {
                        kind: Some(pb::path_modifier::Kind::Full("/new".into())),
                        matched_prefix: "/".into(),
                    }),
                }),
                ..Default::default()
            },
            |_| unreachable!("no mirrors"),
        )
        .unwrap();
        let mut req = Request::builder()
            .uri("http://web/old/path?q=1")
            .body(body::empty())
            .unwrap();
        f.edit_request(&mut req).unwrap();
        assert_eq!(req.uri().to_string(), "http://web/new?q=1");
        assert_eq!(f.rewritten_authority(), Some("elsewhere"));
        let mut origin = Request::builder().uri("/old").body(body::empty()).unwrap();
        f.edit_request(&mut origin).unwrap();
        assert_eq!(origin.uri().to_string(), "/new");
    }
}
