//! A destination's routing state, compiled from the control plane's message into what the
//! request path reads: ordered matches, rules, weighted splits, endpoints.
//!
//! A snapshot is immutable and shared (`Arc`); an update builds a new one and swaps it in.
//! Endpoint state (latency estimates, connection pools) is carried over by address, so an update
//! never resets the balancer or drops a connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pillion_proto::discovery::v1 as pb;
use regex::Regex;

use crate::balance::{Endpoint, Meshed};
use crate::http::errors::ProxyError;
use crate::http::pool::{MeshTls, TlsTarget};
use crate::route::fault::Fault;
use crate::route::filters::Filters;
use crate::route::retry::{Budget, RetryPolicy};
pub use crate::route::split::{Backend, BackendTarget, Split};
use rustls_pki_types::ServerName;

/// The request attributes routing looks at.
pub struct RequestInfo<'a> {
    pub method: &'a http::Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
}

pub struct Snapshot {
    pub version: String,
    pub fqdn: Arc<str>,
    pub source: String,
    pub routes: Routes,
}

pub enum Routes {
    InMesh {
        matches: Vec<Match>,
        rules: Vec<Rule>,
    },
    NotInMesh {
        reason: String,
    },
}

pub struct Rule {
    pub name: Arc<str>,
    pub split: Split,
    pub request_timeout: Option<Duration>,
    pub backend_timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    pub fault: Option<Fault>,
    /// Where a request's sticky key is read, when the split is sticky.
    pub sticky: Option<StickyKey>,
    /// HTTPRoute filters (header edits, redirect, rewrite, mirrors); `None` for most rules.
    pub filters: Option<Box<Filters>>,
}

/// Where a request carries the key that keeps it on one backend.
pub enum StickyKey {
    Header(http::HeaderName),
    Cookie(String),
}

impl StickyKey {
    /// The request's key, if it has one.
    pub fn of<'a>(&self, headers: &'a http::HeaderMap) -> Option<&'a [u8]> {
        match self {
            StickyKey::Header(name) => headers
                .get(name)
                .map(|v| v.as_bytes())
                .filter(|v| !v.is_empty()),
            StickyKey::Cookie(name) => headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    (k == name && !v.is_empty()).then_some(v.as_bytes())
                }),
        }
    }
}

/// What one destination's snapshots hand on to the next: balancer state and connections by
/// endpoint address, retry budgets by rule name.
#[derive(Default)]
pub struct Carried {
    pub endpoints: HashMap<SocketAddr, Arc<Endpoint>>,
    pub budgets: HashMap<Arc<str>, Arc<Budget>>,
}

pub struct Match {
    pub rule: usize,
    path: PathMatch,
    headers: Vec<(http::HeaderName, ValueMatch)>,
    query: Vec<(String, ValueMatch)>,
    method: Option<http::Method>,
}

enum PathMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

enum ValueMatch {
    Exact(String),
    Regex(Regex),
}

impl ValueMatch {
    fn matches(&self, v: &str) -> bool {
        match self {
            ValueMatch::Exact(e) => e == v,
            ValueMatch::Regex(r) => r.is_match(v),
        }
    }
}

impl Match {
    fn matches(&self, req: &RequestInfo<'_>) -> bool {
        let path_ok = match &self.path {
            PathMatch::Exact(p) => req.path == p,
            PathMatch::Prefix(p) => prefix_matches(p, req.path),
            PathMatch::Regex(r) => r.is_match(req.path),
        };
        path_ok
            && self.method.as_ref().is_none_or(|m| m == req.method)
            && self.headers.iter().all(|(name, v)| {
                // HTTP/2 may split `cookie` into one field per pair (RFC 9113 8.2.3): a cookie
                // match is tried on each; any other header by its first value (Gateway API).
                if name == http::header::COOKIE {
                    return req
                        .headers
                        .get_all(name)
                        .iter()
                        .filter_map(|h| h.to_str().ok())
                        .any(|h| v.matches(h));
                }
                req.headers
                    .get(name)
                    .and_then(|h| h.to_str().ok())
                    .is_some_and(|h| v.matches(h))
            })
            && self
                .query
                .iter()
                .all(|(name, v)| query_value(req.query, name).is_some_and(|q| v.matches(&q)))
    }
}

/// Gateway API `PathPrefix`: whole path elements, so `/api` matches `/api` and `/api/x` but not
/// `/apix`; a trailing slash in the prefix is ignored.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The first value of a query parameter, percent-decoded only for `+` and `%XX` bytes.
fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where and how to reach a meshed endpoint's proxy.
fn mesh_target(
    addr: SocketAddr,
    m: &pb::MeshedEndpoint,
    tls: Option<&MeshTls>,
) -> Result<(Option<Meshed>, Option<TlsTarget>), String> {
    let identity = pillion_proto::names::Identity::from_spiffe_id(&m.identity)
        .ok_or_else(|| format!("endpoint {addr}: bad identity {}", m.identity))?;
    let port = match m.proxy_port {
        0 => addr.port(),
        p => u16::try_from(p).map_err(|_| format!("endpoint {addr}: bad proxy port {p}"))?,
    };
    let meshed = Meshed {
        identity: Arc::from(m.identity.as_str()),
        proxy_addr: SocketAddr::new(addr.ip(), port),
    };
    let target = match tls {
        Some(configs) => Some(TlsTarget {
            configs: configs.clone(),
            server_name: ServerName::try_from(identity.dns_name())
                .map_err(|e| format!("endpoint {addr}: {e}"))?,
        }),
        None => None,
    };
    Ok((Some(meshed), target))
}

/// One weighted backend of an update: its endpoints, each taken from `old` (the previous
/// snapshot's, keeping balancer state and connections) when unchanged, and recorded in `live`.
fn compile_backend(
    b: pb::WeightedBackend,
    live: &mut HashMap<SocketAddr, Arc<Endpoint>>,
    old: &HashMap<SocketAddr, Arc<Endpoint>>,
    connect_timeout: Duration,
    tls: Option<&MeshTls>,
) -> Result<Backend, String> {
    let target = match b.kind {
        Some(pb::weighted_backend::Kind::Service(svc)) => {
            let mut eps = Vec::with_capacity(svc.endpoints.len());
            for ep in svc.endpoints {
                let addr: SocketAddr = ep
                    .address
                    .parse()
                    .map_err(|_| format!("bad endpoint address {}", ep.address))?;
                let hint = pb::ProtocolHint::try_from(ep.protocol_hint)
                    .unwrap_or(pb::ProtocolHint::Unspecified);
                let (meshed, target) = match &ep.meshed {
                    Some(m) => mesh_target(addr, m, tls)?,
                    None => (None, None),
                };
                let e = live
                    .entry(addr)
                    .or_insert_with(|| match old.get(&addr) {
                        Some(old) if old.hint == hint && old.meshed == meshed => old.clone(),
                        _ => Arc::new(Endpoint::with_mesh(
                            addr,
                            hint,
                            connect_timeout,
                            meshed,
                            target,
                        )),
                    })
                    .clone();
                eps.push(e);
            }
            BackendTarget::Service {
                name: Arc::from(svc.name),
                endpoints: eps,
            }
        }
        Some(pb::weighted_backend::Kind::Failure(f)) => BackendTarget::Failure {
            status: u16::try_from(f.http_status).unwrap_or(500),
            reason: f.reason,
        },
        None => BackendTarget::Failure {
            status: 500,
            reason: "backend without target".into(),
        },
    };
    let filters = match b.filters {
        // A backend's own filters have no mirrors (the control plane refuses them there).
        Some(f) => Some(Box::new(Filters::compile(f, |_| {
            Err("a backend's filters cannot mirror".to_string())
        })?)),
        None => None,
    };
    Ok(Backend {
        weight: b.weight,
        target,
        filters,
    })
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn anchored(re: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{re})$")).map_err(|e| e.to_string())
}

impl Snapshot {
    /// Compiles an update. `carried` is the state of the previous snapshot: endpoints that
    /// stay keep their balancer state and connections, rules that stay keep their retry budget.
    /// `tls` is the client configuration for meshed endpoints (when this proxy has an identity).
    pub fn compile(
        update: pb::DestinationUpdate,
        carried: &mut Carried,
        connect_timeout: Duration,
        tls: Option<&MeshTls>,
    ) -> Result<Snapshot, String> {
        let version = update.version;
        let Some(state) = update.state else {
            return Err("update without state".into());
        };
        let dest = match state {
            pb::destination_update::State::NotInMesh(n) => {
                return Ok(Snapshot {
                    version,
                    fqdn: Arc::from(""),
                    source: String::new(),
                    routes: Routes::NotInMesh { reason: n.reason },
                });
            }
            pb::destination_update::State::Destination(d) => d,
        };
        let endpoints = &carried.endpoints;
        let mut live: HashMap<SocketAddr, Arc<Endpoint>> = HashMap::new();
        let mut budgets: HashMap<Arc<str>, Arc<Budget>> = HashMap::new();
        let mut rules = Vec::with_capacity(dest.rules.len());
        let mut compile_backend =
            |b: pb::WeightedBackend| compile_backend(b, &mut live, endpoints, connect_timeout, tls);
        for rule in dest.rules {
            let mut backends = Vec::with_capacity(rule.backends.len());
            for b in rule.backends {
                backends.push(compile_backend(b)?);
            }
            let filters = match rule.filters {
                Some(f) => Some(Box::new(Filters::compile(f, &mut compile_backend)?)),
                None => None,
            };
            let ms = |v: u64| (v > 0).then(|| Duration::from_millis(v));
            let timeouts = rule.timeouts.unwrap_or_default();
            let name: Arc<str> = Arc::from(rule.name);
            let retry = rule.retry.as_ref().map(|p| {
                let budget = match carried.budgets.get(&name) {
                    Some(b) if b.same_settings(p) => b.clone(),
                    _ => Arc::new(Budget::from_pb(p)),
                };
                budgets.insert(name.clone(), budget.clone());
                RetryPolicy::from_pb(p, budget)
            });
            rules.push(Rule {
                name,
                split: Split::new(backends),
                request_timeout: ms(timeouts.request_ms),
                backend_timeout: ms(timeouts.backend_request_ms),
                retry,
                fault: rule.fault.as_ref().map(Fault::from_pb),
                sticky: match rule.sticky.and_then(|k| k.source) {
                    Some(pb::sticky_key::Source::Header(h)) => Some(StickyKey::Header(
                        http::HeaderName::from_bytes(h.as_bytes())
                            .map_err(|_| format!("bad sticky header {h}"))?,
                    )),
                    Some(pb::sticky_key::Source::Cookie(c)) => Some(StickyKey::Cookie(c)),
                    None => None,
                },
                filters,
            });
        }
        let mut matches = Vec::with_capacity(dest.matches.len());
        for m in dest.matches {
            let rule = m.rule_index as usize;
            if rule >= rules.len() {
                return Err(format!("match refers to rule {rule} of {}", rules.len()));
            }
            let path = match m.path {
                None => PathMatch::Prefix("/".into()),
                Some(p) => match pb::path_match::Kind::try_from(p.kind) {
                    Ok(pb::path_match::Kind::Exact) => PathMatch::Exact(p.value),
                    Ok(pb::path_match::Kind::Regex) => PathMatch::Regex(anchored(&p.value)?),
                    _ => PathMatch::Prefix(p.value),
                },
            };
            let value = |v: Option<pb::header_match::Value>| -> Result<ValueMatch, String> {
                Ok(match v {
                    Some(pb::header_match::Value::Regex(r)) => ValueMatch::Regex(anchored(&r)?),
                    Some(pb::header_match::Value::Exact(e)) => ValueMatch::Exact(e),
                    None => ValueMatch::Regex(anchored(".*")?),
                })
            };
            let mut headers = Vec::with_capacity(m.headers.len());
            for h in m.headers {
                let name = http::HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| format!("bad header name {}", h.name))?;
                headers.push((name, value(h.value)?));
            }
            let mut query = Vec::with_capacity(m.query_params.len());
            for q in m.query_params {
                let v = q.value.map(|v| match v {
                    pb::query_param_match::Value::Exact(e) => pb::header_match::Value::Exact(e),
                    pb::query_param_match::Value::Regex(r) => pb::header_match::Value::Regex(r),
                });
                query.push((q.name, value(v)?));
            }
            let method = if m.method.is_empty() {
                None
            } else {
                Some(
                    http::Method::from_bytes(m.method.as_bytes())
                        .map_err(|_| format!("bad method {}", m.method))?,
                )
            };
            matches.push(Match {
                rule,
                path,
                headers,
                query,
                method,
            });
        }
        carried.endpoints = live;
        carried.budgets = budgets;
        Ok(Snapshot {
            version,
            fqdn: Arc::from(dest.fqdn),
            source: dest.source,
            routes: Routes::InMesh { matches, rules },
        })
    }

    pub fn in_mesh(&self) -> bool {
        matches!(self.routes, Routes::InMesh { .. })
    }

    /// The rule for a request: the first match in precedence order.
    pub fn route(&self, req: &RequestInfo<'_>) -> Result<&Rule, ProxyError> {
        match &self.routes {
            Routes::NotInMesh { .. } => Err(ProxyError::NotInMesh),
            Routes::InMesh { matches, rules } => matches
                .iter()
                .find(|m| m.matches(req))
                .and_then(|m| rules.get(m.rule))
                .ok_or(ProxyError::NoRoute),
        }
    }

    /// For `/config`: the rules with their backends and weights.
    pub fn describe(&self) -> serde_json::Value {
        match &self.routes {
            Routes::NotInMesh { reason } => serde_json::json!({
                "version": self.version,
                "inMesh": false,
                "reason": reason,
            }),
            Routes::InMesh { matches, rules } => serde_json::json!({
                "version": self.version,
                "inMesh": true,
                "fqdn": &*self.fqdn,
                "source": self.source,
                "matches": matches.len(),
                "rules": rules.iter().map(|r| serde_json::json!({
                    "name": &*r.name,
                    "requestTimeoutMs": r.request_timeout.map(|d| d.as_millis() as u64),
                    "backendRequestTimeoutMs": r.backend_timeout.map(|d| d.as_millis() as u64),
                    "retry": r.retry.as_ref().map(|p| p.source.clone()),
                    "fault": r.fault.as_ref().map(|f| f.source.clone()),
                    "filters": r.filters.as_ref().map(|f| f.describe()),
                    "stickyKey": r.sticky.as_ref().map(|k| match k {
                        StickyKey::Header(h) => format!("header:{h}"),
                        StickyKey::Cookie(c) => format!("cookie:{c}"),
                    }),
                    "backends": r.split.backends.iter().map(|b| match &b.target {
                        BackendTarget::Service { name, endpoints } => serde_json::json!({
                            "service": &**name,
                            "weight": b.weight,
                            "filters": b.filters.as_ref().map(|f| f.describe()),
                            "endpoints": endpoints.iter().map(|e| e.describe()).collect::<Vec<_>>(),
                        }),
                        BackendTarget::Failure { status, reason } => serde_json::json!({
                            "failure": status,
                            "reason": reason,
                            "weight": b.weight,
                        }),
                    }).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_prefix_matches_whole_segments() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api/", "/api/v1"));
        assert!(!prefix_matches("/api", "/apiv1"));
    }

    #[test]
    fn sticky_keys_are_read_from_a_header_or_a_cookie() {
        let mut h = http::HeaderMap::new();
        h.insert("x-user", "alice".parse().unwrap());
        h.append(http::header::COOKIE, "a=1; uid=bob".parse().unwrap());
        h.append(http::header::COOKIE, "theme=dark".parse().unwrap());
        let header = StickyKey::Header(http::HeaderName::from_static("x-user"));
        assert_eq!(header.of(&h), Some(&b"alice"[..]));
        assert_eq!(StickyKey::Cookie("uid".into()).of(&h), Some(&b"bob"[..]));
        assert_eq!(StickyKey::Cookie("theme".into()).of(&h), Some(&b"dark"[..]));
        assert_eq!(StickyKey::Cookie("none".into()).of(&h), None);
    }

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(
            query_value(Some("a=1&b=x%20y+z"), "b").as_deref(),
            Some("x y z")
        );
        assert_eq!(query_value(Some("a=1"), "b"), None);
        assert_eq!(query_value(Some("a=%zz%"), "a").as_deref(), Some("%zz%"));
    }
}
