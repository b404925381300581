//! Gateway API HTTPRoute `filters` (a rule's, and a backendRef's): their shapes, the checks the
//! API server's schema would make (the files source has no API server), and what the proxies get.
//!
//! Supported: `RequestHeaderModifier` and `RequestRedirect` (core), `ResponseHeaderModifier`,
//! `URLRewrite`, `RequestMirror` and `CORS` (extended). `ExternalAuth` and `ExtensionRef` are
//! refused with a reason, never ignored: a filter skipped would change what the route does.

use pillion_proto::discovery::v1 as pb;
use serde::Deserialize;
use serde_json::Value;

use super::{FieldError, HttpRouteMatch};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteFilter {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub request_header_modifier: Option<HeaderModifier>,
    #[serde(default)]
    pub response_header_modifier: Option<HeaderModifier>,
    #[serde(default)]
    pub request_redirect: Option<RequestRedirect>,
    #[serde(default)]
    pub url_rewrite: Option<UrlRewrite>,
    #[serde(default)]
    pub request_mirror: Option<RequestMirror>,
    // Read so that their presence gets a reason rather than "unknown field".
    #[serde(default)]
    pub extension_ref: Option<Value>,
    #[serde(default)]
    pub cors: Option<Cors>,
    #[serde(default)]
    pub external_auth: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderModifier {
    #[serde(default)]
    pub set: Vec<HttpHeader>,
    #[serde(default)]
    pub add: Vec<HttpHeader>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestRedirect {
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub path: Option<PathModifier>,
    #[serde(default)]
    pub port: Option<i64>,
    #[serde(default)]
    pub status_code: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlRewrite {
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub path: Option<PathModifier>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathModifier {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub replace_full_path: Option<String>,
    #[serde(default)]
    pub replace_prefix_match: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestMirror {
    pub backend_ref: MirrorBackendRef,
    #[serde(default)]
    pub percent: Option<i64>,
    #[serde(default)]
    pub fraction: Option<Fraction>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorBackendRef {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub port: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Cors {
    #[serde(default)]
    pub allow_origins: Vec<String>,
    #[serde(default)]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub allow_credentials: Option<bool>,
    #[serde(default)]
    pub max_age: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fraction {
    pub numerator: i64,
    #[serde(default)]
    pub denominator: Option<i64>,
}

/// Where a list of filters sits: a rule's apply to all its requests; a backendRef's only to
/// those sent to that backend, where answering (a redirect) or copying (a mirror) makes no sense.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Rule,
    Backend,
}

/// Headers a modifier may not touch: the proxy owns them (framing, the connection, the
/// authority it routes by, and every `pillion-*` header between proxies); changing them would
/// break the hop rather than the request.
const RESERVED: [&str; 8] = [
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "upgrade",
    "content-length",
];

/// Checks one list of filters. `matches` are the rule's (a prefix replacement needs exactly one
/// `PathPrefix` match); `has_backends`: whether the rule forwards at all.
pub fn validate(
    at: &str,
    filters: &[HttpRouteFilter],
    scope: Scope,
    matches: Option<&[HttpRouteMatch]>,
    has_backends: bool,
) -> Result<(), FieldError> {
    let mut seen: Vec<&str> = Vec::new();
    for (i, f) in filters.iter().enumerate() {
        let at = format!("{at}[{i}]");
        let kind = f.kind.as_str();
        let present = [
            (
                "RequestHeaderModifier",
                "requestHeaderModifier",
                f.request_header_modifier.is_some(),
            ),
            (
                "ResponseHeaderModifier",
                "responseHeaderModifier",
                f.response_header_modifier.is_some(),
            ),
            (
                "RequestRedirect",
                "requestRedirect",
                f.request_redirect.is_some(),
            ),
            ("URLRewrite", "urlRewrite", f.url_rewrite.is_some()),
            ("RequestMirror", "requestMirror", f.request_mirror.is_some()),
            ("ExtensionRef", "extensionRef", f.extension_ref.is_some()),
            ("CORS", "cors", f.cors.is_some()),
            ("ExternalAuth", "externalAuth", f.external_auth.is_some()),
        ];
        let Some(&(_, field, set)) = present.iter().find(|(k, _, _)| *k == kind) else {
            return Err(FieldError::new(
                format!("{at}.type"),
                format!(
                    "`{kind}` is not a filter type (RequestHeaderModifier, ResponseHeaderModifier, \
                     RequestRedirect, URLRewrite, RequestMirror)"
                ),
            ));
        };
        if !set {
            return Err(FieldError::new(
                format!("{at}.{field}"),
                format!("must be set for a {kind} filter"),
            ));
        }
        if let Some((_, other, _)) = present.iter().find(|(k, _, s)| *s && *k != kind) {
            return Err(FieldError::new(
                format!("{at}.{other}"),
                format!("must not be set on a {kind} filter"),
            ));
        }
        if matches!(kind, "ExtensionRef" | "ExternalAuth") {
            return Err(FieldError::new(
                format!("{at}.type"),
                format!("{kind} filters are not supported by Pillion"),
            ));
        }
        if scope == Scope::Backend && matches!(kind, "RequestRedirect" | "RequestMirror" | "CORS") {
            return Err(FieldError::new(
                format!("{at}.type"),
                format!("a {kind} filter belongs in the rule's filters, not a backendRef's"),
            ));
        }
        if kind != "RequestMirror" && seen.contains(&kind) {
            return Err(FieldError::new(
                format!("{at}.type"),
                format!("{kind} may appear only once in a list of filters"),
            ));
        }
        seen.push(kind);
        let at = format!("{at}.{field}");
        if let Some(m) = &f.request_header_modifier {
            validate_modifier(&at, m)?;
        }
        if let Some(m) = &f.response_header_modifier {
            validate_modifier(&at, m)?;
        }
        if let Some(r) = &f.request_redirect {
            if has_backends {
                return Err(FieldError::new(
                    at,
                    "a rule that redirects must not have backendRefs (the redirect is its answer)",
                ));
            }
            validate_redirect(&at, r, matches)?;
        }
        if let Some(r) = &f.url_rewrite {
            if let Some(h) = &r.hostname {
                check_hostname(&format!("{at}.hostname"), h)?;
            }
            if let Some(p) = &r.path {
                validate_path(&format!("{at}.path"), p, matches)?;
            }
        }
        if let Some(m) = &f.request_mirror {
            validate_mirror(&at, m)?;
        }
        if let Some(c) = &f.cors {
            validate_cors(&at, c)?;
        }
    }
    if seen.contains(&"RequestRedirect") && seen.contains(&"URLRewrite") {
        return Err(FieldError::new(
            at,
            "RequestRedirect and URLRewrite may not be combined",
        ));
    }
    Ok(())
}

fn validate_modifier(at: &str, m: &HeaderModifier) -> Result<(), FieldError> {
    let mut names: Vec<String> = Vec::new();
    for (list, what) in [(&m.set, "set"), (&m.add, "add")] {
        if list.len() > 16 {
            return Err(FieldError::new(
                format!("{at}.{what}"),
                "at most 16 headers",
            ));
        }
        for (i, h) in list.iter().enumerate() {
            let at = format!("{at}.{what}[{i}]");
            check_name(&format!("{at}.name"), &h.name)?;
            let lower = h.name.to_ascii_lowercase();
            if names.contains(&lower) {
                return Err(FieldError::new(
                    format!("{at}.name"),
                    format!("`{}` is already set or added by this filter", h.name),
                ));
            }
            names.push(lower);
            if h.value.is_empty() || h.value.len() > 4096 {
                return Err(FieldError::new(
                    format!("{at}.value"),
                    "must be 1 to 4096 characters",
                ));
            }
            if http::HeaderValue::from_str(&h.value).is_err() {
                return Err(FieldError::new(
                    format!("{at}.value"),
                    "is not a valid header value (control characters)",
                ));
            }
        }
    }
    if m.remove.len() > 16 {
        return Err(FieldError::new(
            format!("{at}.remove"),
            "at most 16 headers",
        ));
    }
    for (i, name) in m.remove.iter().enumerate() {
        check_name(&format!("{at}.remove[{i}]"), name)?;
    }
    Ok(())
}

fn check_name(at: &str, name: &str) -> Result<(), FieldError> {
    if name.is_empty() || name.len() > 256 || !super::http_header_name_ok(name) {
        return Err(FieldError::new(
            at,
            format!("`{name}` is not a valid header name"),
        ));
    }
    let lower = name.to_ascii_lowercase();
    if RESERVED.contains(&lower.as_str()) || lower.starts_with("pillion-") {
        let hint = if lower == "host" {
            " (a URLRewrite filter's hostname changes it)"
        } else {
            ""
        };
        return Err(FieldError::new(
            at,
            format!("`{name}` is managed by the proxy and cannot be modified{hint}"),
        ));
    }
    Ok(())
}

/// A precise hostname, as the API's schema allows it (lowercase DNS labels).
fn check_hostname(at: &str, h: &str) -> Result<(), FieldError> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if h.is_empty() || h.len() > 253 || !h.split('.').all(label_ok) {
        return Err(FieldError::new(
            at,
            format!("`{h}` is not a hostname (lowercase DNS labels, no port)"),
        ));
    }
    Ok(())
}

fn validate_redirect(
    at: &str,
    r: &RequestRedirect,
    matches: Option<&[HttpRouteMatch]>,
) -> Result<(), FieldError> {
    if let Some(s) = &r.scheme
        && s != "http"
        && s != "https"
    {
        return Err(FieldError::new(
            format!("{at}.scheme"),
            format!("`{s}` is not one of http, https"),
        ));
    }
    if let Some(h) = &r.hostname {
        check_hostname(&format!("{at}.hostname"), h)?;
    }
    if let Some(p) = r.port
        && !(1..=65535).contains(&p)
    {
        return Err(FieldError::new(
            format!("{at}.port"),
            format!("{p} is not a port (1-65535)"),
        ));
    }
    if let Some(c) = r.status_code
        && ![301, 302, 303, 307, 308].contains(&c)
    {
        return Err(FieldError::new(
            format!("{at}.statusCode"),
            format!("{c} is not one of 301, 302, 303, 307, 308"),
        ));
    }
    if let Some(p) = &r.path {
        validate_path(&format!("{at}.path"), p, matches)?;
    }
    Ok(())
}

fn validate_path(
    at: &str,
    p: &PathModifier,
    matches: Option<&[HttpRouteMatch]>,
) -> Result<(), FieldError> {
    let (value, field, other) = match p.kind.as_str() {
        "ReplaceFullPath" => (
            &p.replace_full_path,
            "replaceFullPath",
            &p.replace_prefix_match,
        ),
        "ReplacePrefixMatch" => (
            &p.replace_prefix_match,
            "replacePrefixMatch",
            &p.replace_full_path,
        ),
        k => {
            return Err(FieldError::new(
                format!("{at}.type"),
                format!("`{k}` is not one of ReplaceFullPath, ReplacePrefixMatch"),
            ));
        }
    };
    let Some(value) = value else {
        return Err(FieldError::new(
            format!("{at}.{field}"),
            format!("must be set when type is {}", p.kind),
        ));
    };
    if other.is_some() {
        return Err(FieldError::new(
            at,
            format!("only {field} may be set when type is {}", p.kind),
        ));
    }
    let path_ok = value
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#');
    if value.len() > 1024 || !path_ok || !(value.is_empty() || value.starts_with('/')) {
        return Err(FieldError::new(
            format!("{at}.{field}"),
            format!("`{value}` is not a path (starting with `/`, without `?` or `#`)"),
        ));
    }
    if p.kind == "ReplacePrefixMatch" && matched_prefix(matches).is_none() {
        return Err(FieldError::new(
            at,
            "ReplacePrefixMatch needs the rule to have exactly one match, of type PathPrefix",
        ));
    }
    Ok(())
}

/// The prefix a `ReplacePrefixMatch` replaces: the rule's one match, which must be a
/// `PathPrefix` one (no matches at all is the API's default, `PathPrefix` `/`).
pub fn matched_prefix(matches: Option<&[HttpRouteMatch]>) -> Option<String> {
    match matches {
        None | Some([]) => Some("/".into()),
        Some([m]) => match &m.path {
            None => Some("/".into()),
            Some(p) if p.kind.as_deref().unwrap_or("PathPrefix") == "PathPrefix" => {
                Some(p.value.clone().unwrap_or_else(|| "/".into()))
            }
            Some(_) => None,
        },
        Some(_) => None,
    }
}

fn validate_cors(at: &str, c: &Cors) -> Result<(), FieldError> {
    let lists = [
        ("allowOrigins", &c.allow_origins, 64),
        ("allowMethods", &c.allow_methods, 9),
        ("allowHeaders", &c.allow_headers, 64),
        ("exposeHeaders", &c.expose_headers, 64),
    ];
    for (field, list, max) in lists {
        if list.len() > max {
            return Err(FieldError::new(
                format!("{at}.{field}"),
                format!("at most {max} entries"),
            ));
        }
        if field != "exposeHeaders" && list.len() > 1 && list.iter().any(|v| v == "*") {
            return Err(FieldError::new(
                format!("{at}.{field}"),
                "`*` must be the only entry when present",
            ));
        }
        for (i, v) in list.iter().enumerate() {
            let at = format!("{at}.{field}[{i}]");
            let ok = match field {
                "allowOrigins" => v == "*" || origin_ok(v),
                "allowMethods" => v == "*" || super::METHODS.contains(&v.as_str()),
                _ => (v == "*" && field == "allowHeaders") || super::http_header_name_ok(v),
            };
            if !ok {
                let what = match field {
                    "allowOrigins" => {
                        "an origin (`*`, or `http(s)://host[:port]` with `*` or `*.` leading the host)"
                    }
                    "allowMethods" => "an HTTP method the Gateway API allows, or `*`",
                    _ => "a header name",
                };
                return Err(FieldError::new(at, format!("`{v}` is not {what}")));
            }
        }
    }
    if let Some(age) = c.max_age
        && !(1..=i64::from(i32::MAX)).contains(&age)
    {
        return Err(FieldError::new(
            format!("{at}.maxAge"),
            format!("{age} is not a number of seconds of at least 1"),
        ));
    }
    Ok(())
}

/// `http(s)://host[:port]`, the host DNS labels (the first may be `*`) or `*` alone.
fn origin_ok(o: &str) -> bool {
    let Some(rest) = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"))
    else {
        return false;
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let host = host.strip_prefix("*.").unwrap_or(host);
    let label_ok =
        |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    port_ok && (host == "*" || host.split('.').all(label_ok))
}

fn validate_mirror(at: &str, m: &RequestMirror) -> Result<(), FieldError> {
    let b = &m.backend_ref;
    let is_service = b.group.as_deref().unwrap_or_default().is_empty()
        && b.kind.as_deref().unwrap_or("Service") == "Service";
    if !is_service {
        return Err(FieldError::new(
            format!("{at}.backendRef.kind"),
            "only a Service can be mirrored to",
        ));
    }
    match b.port {
        None => {
            return Err(FieldError::new(
                format!("{at}.backendRef.port"),
                "required when the backend is a Service",
            ));
        }
        Some(p) if !(1..=65535).contains(&p) => {
            return Err(FieldError::new(
                format!("{at}.backendRef.port"),
                format!("{p} is not a port (1-65535)"),
            ));
        }
        Some(_) => {}
    }
    if m.percent.is_some() && m.fraction.is_some() {
        return Err(FieldError::new(
            at,
            "only one of percent or fraction may be set",
        ));
    }
    if let Some(p) = m.percent
        && !(0..=100).contains(&p)
    {
        return Err(FieldError::new(
            format!("{at}.percent"),
            format!("{p} is not between 0 and 100"),
        ));
    }
    if let Some(f) = &m.fraction {
        let d = f.denominator.unwrap_or(100);
        if d < 1 || f.numerator < 0 || f.numerator > d {
            return Err(FieldError::new(
                format!("{at}.fraction"),
                "needs 0 <= numerator <= denominator and a denominator of at least 1",
            ));
        }
    }
    Ok(())
}

impl RequestMirror {
    /// The share of requests mirrored, in parts per million (all when unset).
    pub fn ppm(&self) -> u32 {
        let share = match (&self.percent, &self.fraction) {
            (Some(p), _) => *p as f64 / 100.0,
            (None, Some(f)) => f.numerator as f64 / f.denominator.unwrap_or(100).max(1) as f64,
            (None, None) => 1.0,
        };
        (share.clamp(0.0, 1.0) * 1_000_000.0).round() as u32
    }
}

/// What the proxies get for a (validated) list of filters; `None` when it is empty. `prefix`:
/// the rule's matched prefix (for `ReplacePrefixMatch`); `mirror`: resolves a mirror's Service.
pub fn to_pb(
    filters: &[HttpRouteFilter],
    prefix: Option<&str>,
    mut mirror: impl FnMut(&MirrorBackendRef) -> pb::WeightedBackend,
) -> Option<pb::Filters> {
    if filters.is_empty() {
        return None;
    }
    let modifier = |m: &HeaderModifier| pb::HeaderModifier {
        set: m.set.iter().map(header).collect(),
        add: m.add.iter().map(header).collect(),
        remove: m.remove.iter().map(|n| n.to_ascii_lowercase()).collect(),
    };
    let path = |p: &PathModifier| {
        let kind = match p.kind.as_str() {
            "ReplaceFullPath" => {
                pb::path_modifier::Kind::Full(p.replace_full_path.clone().unwrap_or_default())
            }
            _ => {
                pb::path_modifier::Kind::Prefix(p.replace_prefix_match.clone().unwrap_or_default())
            }
        };
        pb::PathModifier {
            kind: Some(kind),
            matched_prefix: prefix.unwrap_or("/").to_string(),
        }
    };
    let mut out = pb::Filters::default();
    for f in filters {
        if let Some(m) = &f.request_header_modifier {
            out.request_headers = Some(modifier(m));
        }
        if let Some(m) = &f.response_header_modifier {
            out.response_headers = Some(modifier(m));
        }
        if let Some(r) = &f.request_redirect {
            out.redirect = Some(pb::Redirect {
                scheme: r.scheme.clone().unwrap_or_default(),
                hostname: r.hostname.clone().unwrap_or_default(),
                path: r.path.as_ref().map(path),
                port: r.port.unwrap_or(0).clamp(0, 65535) as u32,
                status_code: r.status_code.unwrap_or(302).clamp(0, 999) as u32,
            });
        }
        if let Some(r) = &f.url_rewrite {
            out.rewrite = Some(pb::Rewrite {
                hostname: r.hostname.clone().unwrap_or_default(),
                path: r.path.as_ref().map(path),
            });
        }
        if let Some(c) = &f.cors {
            out.cors = Some(pb::Cors {
                allow_origins: c.allow_origins.clone(),
                allow_methods: c.allow_methods.clone(),
                allow_headers: c.allow_headers.clone(),
                expose_headers: c.expose_headers.clone(),
                allow_credentials: c.allow_credentials.unwrap_or(false),
                max_age: c.max_age.unwrap_or(5).clamp(1, i64::from(i32::MAX)) as u32,
            });
        }
        if let Some(m) = &f.request_mirror {
            out.mirrors.push(pb::Mirror {
                backend: Some(mirror(&m.backend_ref)),
                ppm: m.ppm(),
            });
        }
    }
    Some(out)
}

fn header(h: &HttpHeader) -> pb::Header {
    pb::Header {
        name: h.name.to_ascii_lowercase(),
        value: h.value.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Parsed, Rejected, Resource, parse_document};
    use super::*;

    /// An HTTPRoute on Service `web` with one rule: `rule` is its YAML body (flow style).
    fn route(rule: &str) -> Result<Parsed, Rejected> {
        let yaml = format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r}}\n\
             spec:\n  parentRefs: [{{kind: Service, group: '', name: web, port: 80}}]\n  rules:\n  - {rule}\n"
        );
        parse_document(serde_saphyr::from_str(&yaml).expect("yaml"))
    }

    fn refused(rule: &str) -> (String, String) {
        let e = route(rule).expect_err(rule).error;
        (e.field, e.reason)
    }

    #[test]
    fn every_supported_filter_parses() {
        let ok = [
            "{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-A, value: '1'}], add: [{name: x-b, value: '2'}], remove: [x-c]}}], backendRefs: [{name: web, port: 80}]}",
            "{filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: set-cookie, value: 'a=1'}]}}], backendRefs: [{name: web, port: 80}]}",
            "{filters: [{type: RequestRedirect, requestRedirect: {scheme: https, hostname: example.org, port: 8443, statusCode: 301, path: {type: ReplaceFullPath, replaceFullPath: /x}}}]}",
            "{matches: [{path: {type: PathPrefix, value: /v1}}], filters: [{type: URLRewrite, urlRewrite: {hostname: elsewhere, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}], backendRefs: [{name: web, port: 80}]}",
            "{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 80}, percent: 10}}, {type: RequestMirror, requestMirror: {backendRef: {name: other, port: 80}, fraction: {numerator: 1, denominator: 3}}}], backendRefs: [{name: web, port: 80}]}",
            "{backendRefs: [{name: web, port: 80, filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-version, value: v2}]}}]}]}",
            "{filters: [{type: CORS, cors: {allowOrigins: ['https://*.example.com', 'http://app.local:8080'], allowMethods: [GET, PUT], allowHeaders: ['*'], exposeHeaders: [x-total], allowCredentials: true, maxAge: 600}}], backendRefs: [{name: web, port: 80}]}",
        ];
        for rule in ok {
            match route(rule) {
                Ok(Parsed::Resource(_, r)) => assert!(matches!(*r, Resource::HttpRoute(_))),
                other => panic!("{rule}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_filters_are_refused_by_field_with_a_reason() {
        let cases = [
            (
                "{filters: [{type: ExtensionRef, extensionRef: {group: x.io, kind: Auth, name: a}}], backendRefs: [{name: web, port: 80}]}",
                "spec.rules[0].filters[0].type",
                "not supported",
            ),
            (
                "{filters: [{type: CORS, cors: {allowOrigins: ['*', 'https://a.example']}}], backendRefs: [{name: web, port: 80}]}",
                "spec.rules[0].filters[0].cors.allowOrigins",
                "only entry",
            ),
            (
                "{filters: [{type: CORS, cors: {allowOrigins: ['example.com']}}], backendRefs: [{name: web, port: 80}]}",
                "spec.rules[0].filters[0].cors.allowOrigins[0]",
                "not an origin",
            ),
            (
                "{filters: [{type: CORS, cors: {allowMethods: [get]}}], backendRefs: [{name: web, port: 80}]}",
                "spec.rules[0].filters[0].cors.allowMethods[0]",
                "HTTP method",
            ),
            (
                "{filters: [{type: CORS, cors: {maxAge: 0}}], backendRefs: [{name: web, port: 80}]}",
                "spec.rules[0].filters[0].cors.maxAge",
                "at least 1",
            ),
            (
                "{backendRefs: [{name: web, port: 80, filters: [{type: CORS, cors: {}}]}]}",
                "spec.rules[0].backendRefs[0].filters[0].type",
                "rule's filters",
            ),
            (
                "{filters: [{type: Bogus}], backendRefs: [{name: web, port: 80}]}",
                "spec.rules[0].filters[0].type",
                "not a filter type",
            ),
            (
                "{filters: [{type: RequestHeaderModifier}], backendRefs: [{name: web, port: 80}]}",
                "spec.rules[0].filters[0].requestHeaderModifier",
                "must be set",
            ),
            (
                "{filters: [{type: URLRewrite, requestHeaderModifier: {}, urlRewrite: {}}], backendRefs: [{name: web, port: 80}]}",
                "spec.rules[0].filters[0].requestHeaderModifier",
                "must not be set",
            ),
            (
                "{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: 'bad name', value: x}]}}], backendRefs: [{name: web, port: 80}]}",
                "spec.rules[0].filters[0].requestHeaderModifier.set[0].name",
                "not a valid header name",
            ),
            (
                "{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: Host, value: x}]}}], backendRefs: [{name: web, port: 80}]}",
                "spec.rules[0].filters[0].requestHeaderModifier.set[0].name",
                "URLRewrite",
            ),
            (
                "{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: \"a\\nb\"}]}}], backendRefs: [{name: web, port: 80}]}",
                "spec.rules[0].filters[0].requestHeaderModifier.set[0].value",
                "not a valid header value",
            ),
            (
                "{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: '1'}], add: [{name: X-A, value: '2'}]}}], backendRefs: [{name: web, port: 80}]}",
                "spec.rules[0].filters[0].requestHeaderModifier.add[0].name",
                "already",
            ),
            (
                "{filters: [{type: RequestRedirect, requestRedirect: {statusCode: 200}}]}",
                "spec.rules[0].filters[0].requestRedirect.statusCode",
                "301",
            ),
            (
                "{filters: [{type: RequestRedirect, requestRedirect: {scheme: ftp}}]}",
                "spec.rules[0].filters[0].requestRedirect.scheme",
                "http, https",
            ),
            (
                "{filters: [{type: RequestRedirect, requestRedirect: {hostname: 'Web:80'}}]}",
                "spec.rules[0].filters[0].requestRedirect.hostname",
                "not a hostname",
            ),
            (
                "{filters: [{type: RequestRedirect, requestRedirect: {}}], backendRefs: [{name: web, port: 80}]}",
                "spec.rules[0].filters[0].requestRedirect",
                "must not have backendRefs",
            ),
            (
                "{filters: [{type: RequestRedirect, requestRedirect: {}}, {type: URLRewrite, urlRewrite: {}}]}",
                "spec.rules[0].filters",
                "may not be combined",
            ),
            (
                "{filters: [{type: URLRewrite, urlRewrite: {}}, {type: URLRewrite, urlRewrite: {}}], backendRefs: [{name: web, port: 80}]}",
                "spec.rules[0].filters[1].type",
                "only once",
            ),
            (
                "{matches: [{path: {type: Exact, value: /a}}], filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}], backendRefs: [{name: web, port: 80}]}",
                "spec.rules[0].filters[0].urlRewrite.path",
                "exactly one match",
            ),
            (
                "{filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath}}}], backendRefs: [{name: web, port: 80}]}",
                "spec.rules[0].filters[0].urlRewrite.path.replaceFullPath",
                "must be set",
            ),
            (
                "{filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: 'no-slash'}}}], backendRefs: [{name: web, port: 80}]}",
                "spec.rules[0].filters[0].urlRewrite.path.replaceFullPath",
                "not a path",
            ),
            (
                "{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow}}}], backendRefs: [{name: web, port: 80}]}",
                "spec.rules[0].filters[0].requestMirror.backendRef.port",
                "required",
            ),
            (
                "{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 80}, percent: 101}}], backendRefs: [{name: web, port: 80}]}",
                "spec.rules[0].filters[0].requestMirror.percent",
                "between 0 and 100",
            ),
            (
                "{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 80}, fraction: {numerator: 5, denominator: 4}}}], backendRefs: [{name: web, port: 80}]}",
                "spec.rules[0].filters[0].requestMirror.fraction",
                "numerator",
            ),
            (
                "{backendRefs: [{name: web, port: 80, filters: [{type: RequestRedirect, requestRedirect: {}}]}]}",
                "spec.rules[0].backendRefs[0].filters[0].type",
                "rule's filters",
            ),
            (
                "{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {sett: []}}], backendRefs: [{name: web, port: 80}]}",
                "spec.rules[0].filters[0].requestHeaderModifier.sett",
                "unknown field",
            ),
        ];
        for (rule, field, reason) in cases {
            let (f, r) = refused(rule);
            assert_eq!(f, field, "{rule}: {r}");
            assert!(r.contains(reason), "{rule}: {r}");
        }
    }

    #[test]
    fn mirror_shares_are_parts_per_million() {
        let m = |percent, fraction| RequestMirror {
            backend_ref: MirrorBackendRef {
                group: None,
                kind: None,
                name: "s".into(),
                namespace: None,
                port: Some(80),
            },
            percent,
            fraction,
        };
        assert_eq!(m(None, None).ppm(), 1_000_000);
        assert_eq!(m(Some(10), None).ppm(), 100_000);
        let third = Fraction {
            numerator: 1,
            denominator: Some(3),
        };
        assert_eq!(m(None, Some(third)).ppm(), 333_333);
    }

    #[test]
    fn the_prefix_a_rewrite_replaces_is_the_rules_one_prefix_match() {
        assert_eq!(matched_prefix(None).as_deref(), Some("/"));
        let m: Vec<HttpRouteMatch> = serde_json::from_value(
            serde_json::json!([{"path": {"type": "PathPrefix", "value": "/v1"}}]),
        )
        .unwrap();
        assert_eq!(matched_prefix(Some(&m)).as_deref(), Some("/v1"));
        let two = [m[0].clone(), m[0].clone()];
        assert_eq!(matched_prefix(Some(&two)), None);
    }
}
