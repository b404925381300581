//! Gateway API `GRPCRoute` (standard channel, `gateway.networking.k8s.io/v1`), attached to a
//! Service as GAMMA says: its shapes, the checks the API server's schema makes (the files source
//! has none), and the HTTPRoute it routes as.
//!
//! A gRPC call is an HTTP/2 POST to `/{service}/{method}`, so a GRPCRoute is an HTTPRoute whose
//! matches are on that path: `service` and `method` together an exact path, `service` alone the
//! prefix `/{service}`, `method` alone or a `RegularExpression` an anchored expression on the
//! path. Everything after parsing (the model, the proxies) then needs nothing new, except the
//! GRPCRoute's own precedence, which counts the characters of the matched service and method
//! rather than the path's (kept on each match as [`HttpRouteMatch::grpc_chars`]).

use serde::Deserialize;

use super::filters::HttpRouteFilter;
use super::{
    BackendRef, FieldError, HttpPathMatch, HttpRoute, HttpRouteMatch, HttpRouteRule, HttpRouteSpec,
    HttpValueMatch, Metadata, ParentRef, RouteKind, check_regex,
};

#[derive(Debug, Clone, Deserialize)]
pub struct GrpcRoute {
    pub metadata: Metadata,
    pub spec: GrpcRouteSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<GrpcRouteRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcRouteRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Option<Vec<GrpcRouteMatch>>,
    /// HTTPRoute's filter shape; only GRPCRoute's types are accepted (`check_filter_types`).
    #[serde(default)]
    pub filters: Option<Vec<HttpRouteFilter>>,
    #[serde(default)]
    pub backend_refs: Option<Vec<BackendRef>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcRouteMatch {
    #[serde(default)]
    pub method: Option<GrpcMethodMatch>,
    #[serde(default)]
    pub headers: Option<Vec<HttpValueMatch>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcMethodMatch {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
}

const FILTER_TYPES: [&str; 4] = [
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestMirror",
    "ExtensionRef",
];

/// The schema's limits on a method match's names (for `Exact`; an expression is checked by
/// compiling it).
const NAME_MAX: usize = 1024;

/// Checks what is GRPCRoute's own (method matches, filter types) with its own field names, then
/// gives the HTTPRoute it routes as; the caller checks that like any HTTPRoute, and the fields
/// the two share have the same names.
pub fn to_http_route(route: GrpcRoute) -> Result<HttpRoute, FieldError> {
    let GrpcRoute { metadata, spec } = route;
    let mut rules = Vec::with_capacity(spec.rules.len());
    for (i, rule) in spec.rules.into_iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        let matches = match rule.matches {
            Some(list) => Some(
                list.into_iter()
                    .enumerate()
                    .map(|(j, m)| to_http_match(&format!("{at}.matches[{j}]"), m))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };
        check_filter_types(&format!("{at}.filters"), rule.filters.as_deref())?;
        for (j, b) in rule.backend_refs.iter().flatten().enumerate() {
            check_filter_types(
                &format!("{at}.backendRefs[{j}].filters"),
                b.filters.as_deref(),
            )?;
        }
        rules.push(HttpRouteRule {
            name: rule.name,
            matches,
            backend_refs: rule.backend_refs,
            timeouts: None,
            filters: rule.filters,
        });
    }
    Ok(HttpRoute {
        metadata,
        spec: HttpRouteSpec {
            parent_refs: spec.parent_refs,
            hostnames: spec.hostnames,
            rules,
        },
        kind: RouteKind::Grpc,
    })
}

/// GRPCRoute has HTTPRoute's header modifiers and mirrors, not its redirects, rewrites or CORS.
fn check_filter_types(at: &str, filters: Option<&[HttpRouteFilter]>) -> Result<(), FieldError> {
    for (i, f) in filters.unwrap_or_default().iter().enumerate() {
        if !FILTER_TYPES.contains(&f.kind.as_str()) {
            return Err(FieldError::new(
                format!("{at}[{i}].type"),
                format!(
                    "`{}` is not a GRPCRoute filter type ({})",
                    f.kind,
                    FILTER_TYPES.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

fn to_http_match(at: &str, m: GrpcRouteMatch) -> Result<HttpRouteMatch, FieldError> {
    let (path, chars) = match m.method {
        Some(method) => method_path(&format!("{at}.method"), &method)?,
        None => (None, (0, 0)),
    };
    Ok(HttpRouteMatch {
        path,
        headers: m.headers,
        query_params: None,
        method: None,
        grpc_chars: Some(chars),
    })
}

/// The path match for a method match, and the characters of service and method it names
/// (GRPCRoute's precedence). Neither name given matches every call: that is the API server's
/// default (`method: {type: Exact}`) for a rule without matches.
fn method_path(
    at: &str,
    m: &GrpcMethodMatch,
) -> Result<(Option<HttpPathMatch>, (usize, usize)), FieldError> {
    let service = m.service.as_deref().filter(|s| !s.is_empty());
    let method = m.method.as_deref().filter(|s| !s.is_empty());
    let chars = (service.map_or(0, str::len), method.map_or(0, str::len));
    for (name, value) in [("service", service), ("method", method)] {
        if value.is_some_and(|v| v.len() > NAME_MAX) {
            return Err(FieldError::new(
                format!("{at}.{name}"),
                format!("longer than {NAME_MAX} characters"),
            ));
        }
    }
    let path = |kind: &str, value: String| {
        Some(HttpPathMatch {
            kind: Some(kind.into()),
            value: Some(value),
        })
    };
    match m.kind.as_deref().unwrap_or("Exact") {
        "Exact" => {
            if let Some(s) = service
                && !is_service_name(s)
            {
                return Err(FieldError::new(
                    format!("{at}.service"),
                    format!("`{s}` is not a protobuf service name (like `pkg.v1.Service`)"),
                ));
            }
            if let Some(name) = method
                && !is_identifier(name)
            {
                return Err(FieldError::new(
                    format!("{at}.method"),
                    format!("`{name}` is not a protobuf method name (like `GetThing`)"),
                ));
            }
            // A leading dot makes a protobuf name fully qualified; the call's path has none.
            let service = service.map(|s| s.trim_start_matches('.'));
            let path = match (service, method) {
                (Some(s), Some(name)) => path("Exact", format!("/{s}/{name}")),
                (Some(s), None) => path("PathPrefix", format!("/{s}")),
                (None, Some(name)) => path("RegularExpression", format!("/[^/]+/{name}")),
                (None, None) => None,
            };
            Ok((path, chars))
        }
        "RegularExpression" => {
            for (name, value) in [("service", service), ("method", method)] {
                if let Some(re) = value {
                    check_regex(format!("{at}.{name}"), re)?;
                }
            }
            if service.is_none() && method.is_none() {
                return Ok((None, chars));
            }
            // Each expression compiled on its own, so wrapping it cannot change its meaning.
            let part = |re: Option<&str>| re.map_or("[^/]+".to_string(), |re| format!("(?:{re})"));
            let value = format!("/{}/{}", part(service), part(method));
            // Two expressions within the size limit each may not be together.
            check_regex(at.to_string(), &value)?;
            Ok((path("RegularExpression", value), chars))
        }
        other => Err(FieldError::new(
            format!("{at}.type"),
            format!("`{other}` is not one of Exact, RegularExpression"),
        )),
    }
}

/// `^(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$`, the schema's pattern for an exact service.
fn is_service_name(s: &str) -> bool {
    let s = s.strip_prefix('.').unwrap_or(s);
    s.split('.').all(is_identifier)
}

/// `^[A-Za-z_][A-Za-z_0-9]*$`: the schema's pattern for an exact method, and for each part of
/// a service name.
fn is_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn method(kind: Option<&str>, service: Option<&str>, name: Option<&str>) -> GrpcMethodMatch {
        GrpcMethodMatch {
            kind: kind.map(Into::into),
            service: service.map(Into::into),
            method: name.map(Into::into),
        }
    }

    /// The path match as `type value (service chars, method chars)`, or the refusal.
    fn path_of(m: GrpcMethodMatch) -> Result<String, String> {
        match method_path("m", &m) {
            Ok((Some(p), chars)) => Ok(format!(
                "{} {} {chars:?}",
                p.kind.unwrap_or_default(),
                p.value.unwrap_or_default()
            )),
            Ok((None, chars)) => Ok(format!("every call {chars:?}")),
            Err(e) => Err(format!("{}: {}", e.field, e.reason)),
        }
    }

    #[test]
    fn exact_names_become_paths() {
        let p = |s, m| path_of(method(None, s, m)).unwrap();
        assert_eq!(
            p(Some("demo.v1.Echo"), Some("Hello")),
            "Exact /demo.v1.Echo/Hello (12, 5)"
        );
        assert_eq!(
            p(Some(".demo.v1.Echo"), None),
            "PathPrefix /demo.v1.Echo (13, 0)"
        );
        assert_eq!(
            p(None, Some("Hello")),
            "RegularExpression /[^/]+/Hello (0, 5)"
        );
        // The API server's default for a rule without matches.
        assert_eq!(p(None, None), "every call (0, 0)");
    }

    #[test]
    fn expressions_are_wrapped_whole() {
        let p = path_of(method(
            Some("RegularExpression"),
            Some("demo\\..*"),
            Some("Get|List"),
        ))
        .unwrap();
        assert_eq!(p, "RegularExpression /(?:demo\\..*)/(?:Get|List) (8, 8)");
        let re = regex::Regex::new("^(?:/(?:demo\\..*)/(?:Get|List))$").unwrap();
        assert!(re.is_match("/demo.v1.Echo/Get"));
        assert!(re.is_match("/demo.v1.Echo/List"));
        assert!(!re.is_match("/other.Svc/List"));
        // Unwrapped, the alternation would have split the whole path: `.../Get` or `List`.
        assert!(!re.is_match("List"));
        let p = path_of(method(Some("RegularExpression"), None, Some("Get.*"))).unwrap();
        assert_eq!(p, "RegularExpression /[^/]+/(?:Get.*) (0, 5)");
    }

    #[test]
    fn bad_names_are_refused_naming_the_field() {
        let err = |m| path_of(m).unwrap_err();
        assert!(err(method(None, Some("demo/Echo"), None)).starts_with("m.service: `demo/Echo`"));
        assert!(err(method(Some("Exact"), None, Some(".*"))).starts_with("m.method: `.*`"));
        assert!(err(method(None, Some("9lives"), None)).starts_with("m.service"));
        assert!(
            err(method(Some("RegularExpression"), Some("("), None))
                .starts_with("m.service: invalid regular expression")
        );
        assert!(
            err(method(Some("Prefix"), Some("a"), None))
                .starts_with("m.type: `Prefix` is not one of Exact, RegularExpression")
        );
        // Each part compiles, the two together exceed the compiled-size limit: refused here,
        // naming the method match rather than a path the GRPCRoute does not have.
        let big = r"\w{1,200}";
        assert!(regex::Regex::new(big).is_ok());
        let e = err(method(Some("RegularExpression"), Some(big), Some(big)));
        assert!(e.starts_with("m: invalid regular expression"), "{e}");
        let long = "a".repeat(NAME_MAX + 1);
        assert!(err(method(None, None, Some(&long))).starts_with("m.method: longer than"));
    }

    #[test]
    fn names_follow_the_schema_patterns() {
        for ok in [
            "Echo",
            "demo.v1.Echo",
            ".demo.v1.Echo",
            "_x.Y_2",
            "grpc.health.v1.Health",
        ] {
            assert!(is_service_name(ok), "{ok}");
        }
        for bad in ["", ".", "a..b", "a.", "1a", "a-b", "a/b", "..a"] {
            assert!(!is_service_name(bad), "{bad}");
        }
        for ok in ["Hello", "_x", "Get2"] {
            assert!(is_identifier(ok), "{ok}");
        }
        for bad in ["", "2x", "a.b", "a b"] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }
}
