//! The Kubernetes-shaped objects the control plane reads, and their parsing and validation.
//!
//! Parsing goes YAML → `serde_json::Value` → typed struct through `serde_path_to_error`, so that
//! every rejection names the field (`spec.backends[1].weight`) and not only a line number. The
//! parts we read deny unknown fields (a typo must not silently change routing); the parts of
//! standard objects we do not read (a Service's `selector`, `clusterIP`, ...) are left alone.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde_json::Value;

pub mod canary;
pub mod filters;
pub mod grpc;
mod resilience;
pub use canary::Canary;
pub use resilience::{FaultInjection, RetryPolicy, Target as PolicyTarget};

/// Where an object lives and who it is: `kind namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct ObjectId {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

impl ObjectId {
    pub fn of(kind: &str, meta: &Metadata) -> Self {
        ObjectId {
            kind: kind.to_string(),
            namespace: namespace_of(meta).to_string(),
            name: meta.name.clone(),
        }
    }

    /// `Kind/name` as in a diagnostic (`kubectl` style), with ` (namespace ns)` when the
    /// namespace is not `default`.
    pub fn short(&self) -> String {
        if self.namespace == DEFAULT_NAMESPACE {
            format!("{}/{}", self.kind, self.name)
        } else {
            format!("{}/{} (namespace {})", self.kind, self.name, self.namespace)
        }
    }
}

/// A field of an object and why it was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339; used only to order conflicting objects (oldest first), as the Gateway API does.
    #[serde(default)]
    pub creation_timestamp: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    String(String),
}

#[derive(Debug, Clone, Deserialize)]
pub struct Service {
    pub metadata: Metadata,
    pub spec: ServiceSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServiceSpec {
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// The Service's virtual IP (`None` for headless Services); transparent-mode traffic to it
    /// is routed as traffic to the Service.
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default)]
    pub name: Option<String>,
    pub port: i64,
    #[serde(default)]
    pub target_port: Option<IntOrString>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub app_protocol: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    pub metadata: Metadata,
    pub address_type: String,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub ports: Option<Vec<EndpointPort>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub addresses: Vec<String>,
    #[serde(default)]
    pub conditions: Option<EndpointConditions>,
    #[serde(default)]
    pub node_name: Option<String>,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub target_ref: Option<ObjectReference>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct EndpointConditions {
    #[serde(default)]
    pub ready: Option<bool>,
    #[serde(default)]
    pub serving: Option<bool>,
    #[serde(default)]
    pub terminating: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ObjectReference {
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPort {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub port: Option<i64>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub app_protocol: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TrafficSplit {
    pub metadata: Metadata,
    pub spec: TrafficSplitSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficSplitSpec {
    pub service: String,
    pub backends: Vec<TrafficSplitBackend>,
    /// v1alpha4 only: references to `HTTPRouteGroup`s whose matches select this split.
    #[serde(default)]
    pub matches: Option<Vec<TypedLocalObjectReference>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficSplitBackend {
    pub service: String,
    pub weight: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TypedLocalObjectReference {
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub api_group: Option<String>,
}

/// `specs.smi-spec.io/v1alpha4` `HTTPRouteGroup`: the header/path/method filters a v1alpha4
/// TrafficSplit refers to.
#[derive(Debug, Clone, Deserialize)]
pub struct HttpRouteGroup {
    pub metadata: Metadata,
    pub spec: HttpRouteGroupSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRouteGroupSpec {
    #[serde(default)]
    pub matches: Vec<HttpRouteGroupMatch>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteGroupMatch {
    pub name: String,
    #[serde(default)]
    pub path_regex: Option<String>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Header name → regex on its value.
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpRoute {
    pub metadata: Metadata,
    pub spec: HttpRouteSpec,
    /// Which kind of route this was written as (a GRPCRoute is read as the HTTPRoute it is
    /// the same as: `grpc.rs`).
    #[serde(skip)]
    pub kind: RouteKind,
}

/// The Gateway API route kinds Pillion reads. Routes of one kind only apply to a Service at a
/// time: the Gateway API does not merge HTTPRoutes and GRPCRoutes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RouteKind {
    #[default]
    Http,
    Grpc,
}

impl RouteKind {
    pub fn name(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<HttpRouteRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParentRef {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub port: Option<i64>,
    #[serde(default)]
    pub section_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Option<Vec<HttpRouteMatch>>,
    #[serde(default)]
    pub backend_refs: Option<Vec<BackendRef>>,
    #[serde(default)]
    pub timeouts: Option<HttpRouteTimeouts>,
    /// Applied to every request the rule takes (see `filters.rs` for what is supported).
    #[serde(default)]
    pub filters: Option<Vec<filters::HttpRouteFilter>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteMatch {
    #[serde(default)]
    pub path: Option<HttpPathMatch>,
    #[serde(default)]
    pub headers: Option<Vec<HttpValueMatch>>,
    #[serde(default)]
    pub query_params: Option<Vec<HttpValueMatch>>,
    #[serde(default)]
    pub method: Option<String>,
    /// From a GRPCRoute: the characters of the service and method it names, which order its
    /// matches (the path's length does not: `grpc.rs`).
    #[serde(skip)]
    pub grpc_chars: Option<(usize, usize)>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpPathMatch {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpValueMatch {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackendRef {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub port: Option<i64>,
    #[serde(default)]
    pub weight: Option<i64>,
    /// Applied only to requests sent to this backend.
    #[serde(default)]
    pub filters: Option<Vec<filters::HttpRouteFilter>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteTimeouts {
    #[serde(default)]
    pub request: Option<String>,
    #[serde(default)]
    pub backend_request: Option<String>,
}

/// `pillion.dev/v1alpha1` `AuthorizationPolicy`: which callers may reach a server.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthorizationPolicy {
    pub metadata: Metadata,
    pub spec: AuthorizationPolicySpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// The server: a `Service` (its meshed endpoints) or a `ServiceAccount` (every proxy
    /// running as it), in the policy's namespace.
    pub target_ref: PolicyTargetRef,
    /// For a Service, some of its ports; for a ServiceAccount, application ports. Empty: all.
    #[serde(default)]
    pub ports: Vec<i64>,
    pub allow: Vec<AllowRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyTargetRef {
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    /// SPIFFE IDs; `*` matches any run of characters.
    #[serde(default)]
    pub identities: Vec<String>,
    /// Callers without a mesh identity.
    #[serde(default)]
    pub unauthenticated: bool,
}

/// One object the control plane understands, parsed and validated.
#[derive(Debug, Clone)]
pub enum Resource {
    AuthorizationPolicy(AuthorizationPolicy),
    Service(Service),
    EndpointSlice(EndpointSlice),
    TrafficSplit(TrafficSplit),
    HttpRouteGroup(HttpRouteGroup),
    HttpRoute(HttpRoute),
    RetryPolicy(RetryPolicy),
    FaultInjection(FaultInjection),
    Canary(Canary),
}

/// What reading one YAML document gave.
#[derive(Debug)]
pub enum Parsed {
    /// An object of a kind Pillion reads, valid.
    Resource(ObjectId, Box<Resource>),
    /// A kind Pillion does not read (skipped with a log line).
    Skipped { api_version: String, kind: String },
    /// An empty document (`---` at the end of a file).
    Empty,
}

/// A document refused, with as much of its identity as could be read.
#[derive(Debug)]
pub struct Rejected {
    pub id: Option<ObjectId>,
    pub error: FieldError,
}

const DEFAULT_NAMESPACE: &str = "default";

/// Parses one YAML document (already loaded as a JSON value).
pub fn parse_document(doc: Value) -> Result<Parsed, Rejected> {
    if doc.is_null() {
        return Ok(Parsed::Empty);
    }
    let no_id = |field: &str, reason: &str| Rejected {
        id: None,
        error: FieldError::new(field, reason),
    };
    let Some(obj) = doc.as_object() else {
        return Err(no_id("", "a document must be a mapping (an object)"));
    };
    let api_version = match obj.get("apiVersion") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(no_id("apiVersion", "must be a string")),
        None => return Err(no_id("apiVersion", "missing")),
    };
    let kind = match obj.get("kind") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(no_id("kind", "must be a string")),
        None => return Err(no_id("kind", "missing")),
    };
    let group = api_version.split_once('/').map_or("", |(g, _)| g);
    let version = api_version.rsplit('/').next().unwrap_or_default();
    let known = matches!(
        (group, version, kind.as_str()),
        ("", "v1", "Service")
            | ("discovery.k8s.io", "v1", "EndpointSlice")
            | ("split.smi-spec.io", "v1alpha2" | "v1alpha4", "TrafficSplit")
            | ("specs.smi-spec.io", "v1alpha4", "HTTPRouteGroup")
            | ("gateway.networking.k8s.io", "v1", "HTTPRoute" | "GRPCRoute")
            | (
                "pillion.dev",
                "v1alpha1",
                "AuthorizationPolicy" | "RetryPolicy" | "FaultInjection" | "Canary"
            )
    );
    if !known {
        // A kind we read under a version we do not (`split.smi-spec.io/v1alpha3`), or a kind
        // of a group only Pillion's kinds live in: a typo, which must not read as "delete".
        let ours = matches!(
            kind.as_str(),
            "Service"
                | "EndpointSlice"
                | "TrafficSplit"
                | "HTTPRouteGroup"
                | "HTTPRoute"
                | "GRPCRoute"
                | "AuthorizationPolicy"
                | "RetryPolicy"
                | "FaultInjection"
                | "Canary"
        );
        let our_group = matches!(group, "split.smi-spec.io" | "pillion.dev");
        if ours || our_group {
            let id = object_id(&kind, obj).ok();
            return Err(Rejected {
                id,
                error: FieldError::new(
                    if ours { "apiVersion" } else { "kind" },
                    format!(
                        "{kind} of {api_version} is not supported (Pillion reads v1 Service, \
                         discovery.k8s.io/v1 EndpointSlice, split.smi-spec.io/v1alpha2 and \
                         v1alpha4 TrafficSplit, specs.smi-spec.io/v1alpha4 HTTPRouteGroup, \
                         gateway.networking.k8s.io/v1 HTTPRoute and GRPCRoute, pillion.dev/v1alpha1 \
                         AuthorizationPolicy, RetryPolicy, FaultInjection and Canary)"
                    ),
                ),
            });
        }
        return Ok(Parsed::Skipped { api_version, kind });
    }
    let id = object_id(&kind, obj).map_err(|error| Rejected { id: None, error })?;
    let reject = |error: FieldError| Rejected {
        id: Some(id.clone()),
        error,
    };
    let resource = match kind.as_str() {
        "Service" => Resource::Service(typed(doc).map_err(reject)?),
        "EndpointSlice" => Resource::EndpointSlice(typed(doc).map_err(reject)?),
        "TrafficSplit" => {
            let split: TrafficSplit = typed(doc).map_err(reject)?;
            if version == "v1alpha2" && split.spec.matches.is_some() {
                return Err(reject(FieldError::new(
                    "spec.matches",
                    "matches exist only in split.smi-spec.io/v1alpha4",
                )));
            }
            Resource::TrafficSplit(split)
        }
        "HTTPRouteGroup" => Resource::HttpRouteGroup(typed(doc).map_err(reject)?),
        "AuthorizationPolicy" => Resource::AuthorizationPolicy(typed(doc).map_err(reject)?),
        "RetryPolicy" => Resource::RetryPolicy(typed(doc).map_err(reject)?),
        "FaultInjection" => Resource::FaultInjection(typed(doc).map_err(reject)?),
        "Canary" => Resource::Canary(typed(doc).map_err(reject)?),
        "GRPCRoute" => {
            Resource::HttpRoute(grpc::to_http_route(typed(doc).map_err(reject)?).map_err(reject)?)
        }
        _ => Resource::HttpRoute(typed(doc).map_err(reject)?),
    };
    validate(&resource).map_err(reject)?;
    Ok(Parsed::Resource(id, Box::new(resource)))
}

fn object_id(kind: &str, obj: &serde_json::Map<String, Value>) -> Result<ObjectId, FieldError> {
    let meta = obj
        .get("metadata")
        .and_then(Value::as_object)
        .ok_or_else(|| FieldError::new("metadata", "missing"))?;
    let name = match meta.get("name") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(FieldError::new("metadata.name", "missing or not a string")),
    };
    let namespace = match meta.get("namespace") {
        None | Some(Value::Null) => DEFAULT_NAMESPACE.to_string(),
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => return Err(FieldError::new("metadata.namespace", "must be a string")),
    };
    Ok(ObjectId {
        kind: kind.to_string(),
        namespace,
        name,
    })
}

fn typed<T: serde::de::DeserializeOwned>(doc: Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        FieldError::new(field, e.inner().to_string())
    })
}

/// The namespace an object lives in (`default` when the YAML names none).
pub fn namespace_of(meta: &Metadata) -> &str {
    meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
}

fn validate(resource: &Resource) -> Result<(), FieldError> {
    match resource {
        Resource::Service(s) => validate_service(s),
        Resource::EndpointSlice(s) => validate_slice(s),
        Resource::TrafficSplit(s) => validate_split(s),
        Resource::HttpRouteGroup(g) => validate_route_group(g),
        Resource::HttpRoute(r) => validate_route(r),
        Resource::AuthorizationPolicy(p) => validate_policy(p),
        Resource::RetryPolicy(p) => p.to_pb().map(|_| ()),
        Resource::FaultInjection(f) => f.to_pb().map(|_| ()),
        Resource::Canary(c) => {
            sticky_key(&c.metadata)?;
            c.plan().map(|_| ())
        }
    }
}

fn validate_policy(p: &AuthorizationPolicy) -> Result<(), FieldError> {
    let spec = &p.spec;
    if !matches!(spec.target_ref.kind.as_str(), "Service" | "ServiceAccount") {
        return Err(FieldError::new(
            "spec.targetRef.kind",
            format!(
                "`{}` is not one of Service, ServiceAccount",
                spec.target_ref.kind
            ),
        ));
    }
    if spec.target_ref.name.is_empty() {
        return Err(FieldError::new("spec.targetRef.name", "must not be empty"));
    }
    for (i, port) in spec.ports.iter().enumerate() {
        check_port(format!("spec.ports[{i}]"), *port)?;
    }
    if spec.allow.is_empty() {
        return Err(FieldError::new(
            "spec.allow",
            "needs at least one rule (to deny everyone, use PILLION_INBOUND_DEFAULT_POLICY=deny)",
        ));
    }
    for (i, rule) in spec.allow.iter().enumerate() {
        if rule.identities.is_empty() && !rule.unauthenticated {
            return Err(FieldError::new(
                format!("spec.allow[{i}]"),
                "allows nobody: give identities or unauthenticated: true",
            ));
        }
        for (j, id) in rule.identities.iter().enumerate() {
            if id != "*" && !id.starts_with("spiffe://") {
                return Err(FieldError::new(
                    format!("spec.allow[{i}].identities[{j}]"),
                    format!("`{id}` is not a SPIFFE ID pattern (spiffe://..., `*` as wildcard)"),
                ));
            }
        }
    }
    Ok(())
}

fn check_port(field: String, port: i64) -> Result<(), FieldError> {
    if (1..=65535).contains(&port) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("port {port} is out of range (1 to 65535)"),
        ))
    }
}

fn check_weight(field: String, weight: i64) -> Result<(), FieldError> {
    // 1,000,000 is the Gateway API's bound; it keeps sums far from overflow.
    if (0..=1_000_000).contains(&weight) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("weight {weight} must be between 0 and 1000000"),
        ))
    }
}

fn check_regex(field: String, re: &str) -> Result<(), FieldError> {
    regex::Regex::new(re)
        .map(|_| ())
        .map_err(|e| FieldError::new(field, format!("invalid regular expression: {e}")))
}

fn validate_service(s: &Service) -> Result<(), FieldError> {
    for (i, p) in s.spec.ports.iter().enumerate() {
        check_port(format!("spec.ports[{i}].port"), p.port)?;
        if let Some(IntOrString::Int(t)) = p.target_port {
            check_port(format!("spec.ports[{i}].targetPort"), t)?;
        }
    }
    if s.spec.ports.len() > 1 {
        for (i, p) in s.spec.ports.iter().enumerate() {
            if p.name.as_deref().unwrap_or_default().is_empty() {
                return Err(FieldError::new(
                    format!("spec.ports[{i}].name"),
                    "a Service with several ports must name each of them",
                ));
            }
        }
    }
    Ok(())
}

fn validate_slice(s: &EndpointSlice) -> Result<(), FieldError> {
    if !matches!(s.address_type.as_str(), "IPv4" | "IPv6" | "FQDN") {
        return Err(FieldError::new(
            "addressType",
            format!("`{}` is not one of IPv4, IPv6, FQDN", s.address_type),
        ));
    }
    if !s.metadata.labels.contains_key(SERVICE_NAME_LABEL) {
        return Err(FieldError::new(
            format!("metadata.labels.{SERVICE_NAME_LABEL}"),
            "missing: it names the Service these endpoints belong to",
        ));
    }
    if let Some(id) = s.metadata.annotations.get(IDENTITY_ANNOTATION)
        && pillion_proto::names::Identity::from_spiffe_id(id).is_none()
    {
        return Err(FieldError::new(
            format!("metadata.annotations.{IDENTITY_ANNOTATION}"),
            format!(
                "`{id}` is not a SPIFFE ID like spiffe://cluster.local/ns/<namespace>/sa/<service-account>"
            ),
        ));
    }
    if let Some(port) = s.metadata.annotations.get(PROXY_PORT_ANNOTATION) {
        let field = format!("metadata.annotations.{PROXY_PORT_ANNOTATION}");
        match port.parse::<i64>() {
            Ok(p) => check_port(field, p)?,
            Err(_) => {
                return Err(FieldError::new(
                    field,
                    format!("`{port}` is not a port number"),
                ));
            }
        }
    }
    for (i, p) in s.ports.iter().flatten().enumerate() {
        if let Some(port) = p.port {
            check_port(format!("ports[{i}].port"), port)?;
        }
    }
    for (i, e) in s.endpoints.iter().enumerate() {
        for (j, a) in e.addresses.iter().enumerate() {
            let ok = match s.address_type.as_str() {
                "IPv4" => a.parse::<std::net::Ipv4Addr>().is_ok(),
                "IPv6" => a.parse::<std::net::Ipv6Addr>().is_ok(),
                _ => !a.is_empty(),
            };
            if !ok {
                return Err(FieldError::new(
                    format!("endpoints[{i}].addresses[{j}]"),
                    format!("`{a}` is not an {} address", s.address_type),
                ));
            }
        }
    }
    Ok(())
}

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const IDENTITY_ANNOTATION: &str = "pillion.dev/identity";
pub const PROXY_PORT_ANNOTATION: &str = "pillion.dev/proxy-port";

/// Annotation on a TrafficSplit or HTTPRoute: requests with the same key go to the same
/// backend (`header:<name>` or `cookie:<name>`).
pub const STICKY_ANNOTATION: &str = "pillion.dev/sticky-key";

/// The sticky key an object's annotation names, or why it is not one.
pub fn sticky_key(
    meta: &Metadata,
) -> Result<Option<pillion_proto::discovery::v1::StickyKey>, FieldError> {
    use pillion_proto::discovery::v1::{StickyKey, sticky_key::Source};
    let Some(value) = meta.annotations.get(STICKY_ANNOTATION) else {
        return Ok(None);
    };
    let bad = |why: &str| {
        FieldError::new(
            format!("metadata.annotations.{STICKY_ANNOTATION}"),
            format!("`{value}` {why}; use header:<name> or cookie:<name>"),
        )
    };
    let (kind, name) = value
        .split_once(':')
        .ok_or_else(|| bad("names no source"))?;
    let name = name.trim();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b';' && b != b'=')
    {
        return Err(bad("has no valid name"));
    }
    let source = match kind.trim() {
        "header" => {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(bad("is not a header name"));
            }
            Source::Header(name.to_ascii_lowercase())
        }
        "cookie" => Source::Cookie(name.to_string()),
        _ => return Err(bad("is neither header nor cookie")),
    };
    Ok(Some(StickyKey {
        source: Some(source),
    }))
}

fn validate_split(s: &TrafficSplit) -> Result<(), FieldError> {
    sticky_key(&s.metadata)?;
    if s.spec.service.is_empty() {
        return Err(FieldError::new(
            "spec.service",
            "must name the root service",
        ));
    }
    if s.spec.backends.is_empty() {
        return Err(FieldError::new(
            "spec.backends",
            "needs at least one backend",
        ));
    }
    for (i, b) in s.spec.backends.iter().enumerate() {
        if b.service.is_empty() {
            return Err(FieldError::new(
                format!("spec.backends[{i}].service"),
                "must name a service",
            ));
        }
        check_weight(format!("spec.backends[{i}].weight"), b.weight)?;
    }
    if s.spec.backends.iter().all(|b| b.weight == 0) {
        return Err(FieldError::new(
            "spec.backends",
            "all weights are 0: no backend would get traffic",
        ));
    }
    for (i, m) in s.spec.matches.iter().flatten().enumerate() {
        if m.kind != "HTTPRouteGroup" {
            return Err(FieldError::new(
                format!("spec.matches[{i}].kind"),
                format!("`{}` is not supported; use HTTPRouteGroup", m.kind),
            ));
        }
    }
    Ok(())
}

fn validate_route_group(g: &HttpRouteGroup) -> Result<(), FieldError> {
    for (i, m) in g.spec.matches.iter().enumerate() {
        if let Some(re) = &m.path_regex {
            check_regex(format!("spec.matches[{i}].pathRegex"), re)?;
        }
        for (name, re) in m.headers.iter().flatten() {
            check_regex(format!("spec.matches[{i}].headers.{name}"), re)?;
            check_header_name(format!("spec.matches[{i}].headers"), name)?;
        }
    }
    Ok(())
}

fn check_header_name(field: String, name: &str) -> Result<(), FieldError> {
    http_header_name_ok(name)
        .then_some(())
        .ok_or_else(|| FieldError::new(field, format!("`{name}` is not a valid header name")))
}

fn http_header_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn validate_route(r: &HttpRoute) -> Result<(), FieldError> {
    sticky_key(&r.metadata)?;
    if r.spec.parent_refs.is_empty() {
        return Err(FieldError::new(
            "spec.parentRefs",
            format!("a mesh {} needs a Service parent", r.kind.name()),
        ));
    }
    for (i, p) in r.spec.parent_refs.iter().enumerate() {
        if let Some(port) = p.port {
            check_port(format!("spec.parentRefs[{i}].port"), port)?;
        }
    }
    for (i, rule) in r.spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        for (j, m) in rule.matches.iter().flatten().enumerate() {
            validate_match(&format!("{at}.matches[{j}]"), m)?;
        }
        let refs = rule.backend_refs.as_deref().unwrap_or_default();
        filters::validate(
            &format!("{at}.filters"),
            rule.filters.as_deref().unwrap_or_default(),
            filters::Scope::Rule,
            rule.matches.as_deref(),
            !refs.is_empty(),
        )?;
        for (j, b) in refs.iter().enumerate() {
            let at = format!("{at}.backendRefs[{j}]");
            check_weight(format!("{at}.weight"), b.weight.unwrap_or(1))?;
            filters::validate(
                &format!("{at}.filters"),
                b.filters.as_deref().unwrap_or_default(),
                filters::Scope::Backend,
                rule.matches.as_deref(),
                true,
            )?;
            let is_service = b.group.as_deref().unwrap_or_default().is_empty()
                && b.kind.as_deref().unwrap_or("Service") == "Service";
            match b.port {
                Some(port) => check_port(format!("{at}.port"), port)?,
                None if is_service => {
                    return Err(FieldError::new(
                        format!("{at}.port"),
                        "required when the backend is a Service",
                    ));
                }
                None => {}
            }
        }
        if !refs.is_empty() && refs.iter().all(|b| b.weight == Some(0)) {
            return Err(FieldError::new(
                format!("{at}.backendRefs"),
                "all weights are 0: no backend would get traffic",
            ));
        }
        if let Some(t) = &rule.timeouts {
            let request = match &t.request {
                Some(s) => Some(
                    parse_duration(s)
                        .map_err(|e| FieldError::new(format!("{at}.timeouts.request"), e))?,
                ),
                None => None,
            };
            if let Some(s) = &t.backend_request {
                let backend = parse_duration(s)
                    .map_err(|e| FieldError::new(format!("{at}.timeouts.backendRequest"), e))?;
                if let Some(request) = request
                    && request != 0
                    && (backend == 0 || backend > request)
                {
                    return Err(FieldError::new(
                        format!("{at}.timeouts.backendRequest"),
                        "must not be longer than timeouts.request",
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The HTTP methods the Gateway API's schema allows (route matches, CORS `allowMethods`).
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

fn validate_match(at: &str, m: &HttpRouteMatch) -> Result<(), FieldError> {
    if let Some(p) = &m.path {
        let kind = p.kind.as_deref().unwrap_or("PathPrefix");
        let value = p.value.as_deref().unwrap_or("/");
        match kind {
            "Exact" | "PathPrefix" => {
                if !value.starts_with('/') {
                    return Err(FieldError::new(
                        format!("{at}.path.value"),
                        "must start with `/`",
                    ));
                }
            }
            "RegularExpression" => check_regex(format!("{at}.path.value"), value)?,
            other => {
                return Err(FieldError::new(
                    format!("{at}.path.type"),
                    format!("`{other}` is not one of Exact, PathPrefix, RegularExpression"),
                ));
            }
        }
    }
    for (list, what) in [(&m.headers, "headers"), (&m.query_params, "queryParams")] {
        for (k, h) in list.iter().flatten().enumerate() {
            let at = format!("{at}.{what}[{k}]");
            match h.kind.as_deref().unwrap_or("Exact") {
                "Exact" => {}
                "RegularExpression" => check_regex(format!("{at}.value"), &h.value)?,
                other => {
                    return Err(FieldError::new(
                        format!("{at}.type"),
                        format!("`{other}` is not one of Exact, RegularExpression"),
                    ));
                }
            }
            if what == "headers" {
                check_header_name(format!("{at}.name"), &h.name)?;
            } else if h.name.is_empty() {
                return Err(FieldError::new(format!("{at}.name"), "must not be empty"));
            }
        }
    }
    if let Some(method) = &m.method
        && !METHODS.contains(&method.as_str())
    {
        return Err(FieldError::new(
            format!("{at}.method"),
            format!("`{method}` is not an HTTP method the Gateway API allows"),
        ));
    }
    Ok(())
}

/// Parses a Gateway API duration (GEP-2257: `1h`, `10s`, `500ms`, `1h30m`) into milliseconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let bad = || format!("`{s}` is not a duration like `10s`, `500ms` or `1h30m`");
    if s.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut rest = s;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else {
            return Err(bad());
        };
        rest = &rest[len..];
        total += n * unit_ms;
        parts += 1;
        if parts > 4 {
            return Err(bad());
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Parsed, Rejected> {
        let doc: Value = serde_saphyr::from_str(yaml).expect("yaml");
        parse_document(doc)
    }

    fn grpc_route(rule: &str) -> Result<Parsed, Rejected> {
        parse(&format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: g}}\n\
             spec:\n  parentRefs: [{{kind: Service, group: '', name: web}}]\n  rules:\n  - {rule}\n"
        ))
    }

    fn refusal(r: Result<Parsed, Rejected>) -> String {
        let e = r.expect_err("refused");
        format!("{}: {}: {}", e.id.unwrap(), e.error.field, e.error.reason)
    }

    #[test]
    fn a_grpcroute_reads_as_its_httproute() {
        let Ok(Parsed::Resource(id, r)) = grpc_route(
            "matches: [{method: {service: a.B, method: Get}, headers: [{name: x-a, value: b}]}]\n    \
             filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-b, value: c}]}}]\n    \
             backendRefs: [{name: web-v1, port: 80, weight: 3}]",
        ) else {
            panic!("not parsed");
        };
        assert_eq!(id.to_string(), "GRPCRoute default/g");
        let Resource::HttpRoute(route) = *r else {
            panic!("not a route");
        };
        assert_eq!(route.kind, RouteKind::Grpc);
        let rule = &route.spec.rules[0];
        let m = &rule.matches.as_ref().unwrap()[0];
        let path = m.path.as_ref().unwrap();
        assert_eq!(
            (path.kind.as_deref(), path.value.as_deref(), m.grpc_chars),
            (Some("Exact"), Some("/a.B/Get"), Some((3, 3)))
        );
        assert_eq!(m.headers.as_ref().unwrap()[0].name, "x-a");
        assert_eq!(
            rule.filters.as_ref().unwrap()[0].kind,
            "RequestHeaderModifier"
        );
        assert_eq!(rule.backend_refs.as_ref().unwrap()[0].weight, Some(3));
        // What the API server stores for a rule without matches: every call.
        assert!(
            grpc_route(
                "matches: [{method: {type: Exact}}]\n    backendRefs: [{name: a, port: 80}]"
            )
            .is_ok()
        );
    }

    #[test]
    fn a_grpcroute_is_refused_by_its_own_fields() {
        let cases = [
            (
                "matches: [{method: {service: 'a/b'}}]",
                "spec.rules[0].matches[0].method.service: `a/b` is not a protobuf service name",
            ),
            (
                "matches: [{method: {type: Prefix, service: a}}]",
                "spec.rules[0].matches[0].method.type: `Prefix` is not one of Exact, RegularExpression",
            ),
            (
                "matches: [{headers: [{name: 'bad name', value: v}]}]",
                "spec.rules[0].matches[0].headers[0].name: `bad name` is not a valid header name",
            ),
            // HTTPRoute's filters and fields are not GRPCRoute's.
            (
                "filters: [{type: URLRewrite}]",
                "spec.rules[0].filters[0].type: `URLRewrite` is not a GRPCRoute filter type",
            ),
            (
                "filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301}}]",
                "spec.rules[0].filters[0].type: `RequestRedirect` is not a GRPCRoute filter type",
            ),
            (
                "filters: [{type: RequestHeaderModifier, requestHeaderModifier: {}, cors: {}}]",
                "spec.rules[0].filters[0].cors: must not be set on a RequestHeaderModifier filter",
            ),
            (
                "backendRefs: [{name: a, port: 80, filters: [{type: CORS, cors: {}}]}]",
                "spec.rules[0].backendRefs[0].filters[0].type: `CORS` is not a GRPCRoute filter type",
            ),
            (
                "timeouts: {request: 1s}",
                "spec.rules[0].timeouts: unknown field `timeouts`",
            ),
            (
                "filters: [{type: ExtensionRef, extensionRef: {group: x, kind: Y, name: z}}]",
                "spec.rules[0].filters[0].type: ExtensionRef filters are not supported",
            ),
            (
                "backendRefs: [{name: a}]",
                "spec.rules[0].backendRefs[0].port: required when the backend is a Service",
            ),
        ];
        for (rule, want) in cases {
            let got = refusal(grpc_route(rule));
            assert!(
                got.starts_with(&format!("GRPCRoute default/g: {want}")),
                "{rule}: {got}"
            );
        }
        let no_parent = parse(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g}\nspec: {}\n",
        );
        assert!(refusal(no_parent).contains("a mesh GRPCRoute needs a Service parent"));
    }

    #[test]
    fn a_bad_sticky_key_is_refused_by_name() {
        let split = |key: &str| {
            parse(&format!(
                "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata:\n  name: s\n  annotations: {{pillion.dev/sticky-key: \"{key}\"}}\nspec:\n  service: web\n  backends: [{{service: a, weight: 1}}]\n"
            ))
        };
        assert!(split("header:x-user-id").is_ok());
        assert!(split("cookie:session").is_ok());
        for bad in ["x-user-id", "query:user", "header:", "header:bad header"] {
            let e = split(bad).unwrap_err();
            assert_eq!(
                e.error.field, "metadata.annotations.pillion.dev/sticky-key",
                "{bad}"
            );
        }
    }

    #[test]
    fn durations_follow_gep_2257() {
        assert_eq!(parse_duration("10s"), Ok(10_000));
        assert_eq!(parse_duration("500ms"), Ok(500));
        assert_eq!(parse_duration("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration("0s"), Ok(0));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn negative_weight_names_the_field() {
        let err = parse(
            "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: {name: s}\n\
             spec:\n  service: web\n  backends:\n  - {service: a, weight: 5}\n  - {service: b, weight: -1}\n",
        )
        .unwrap_err();
        assert_eq!(err.error.field, "spec.backends[1].weight");
        assert_eq!(err.id.unwrap().to_string(), "TrafficSplit default/s");
    }

    #[test]
    fn unknown_field_in_split_is_refused() {
        let err = parse(
            "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {name: s}\n\
             spec:\n  service: web\n  backends:\n  - {service: a, wieght: 5}\n",
        )
        .unwrap_err();
        assert_eq!(err.error.field, "spec.backends[0].wieght");
        assert!(err.error.reason.contains("wieght"), "{}", err.error.reason);
    }

    #[test]
    fn wrong_type_names_the_field() {
        let err = parse(
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports:\n  - port: eighty\n",
        )
        .unwrap_err();
        assert_eq!(err.error.field, "spec.ports[0].port");
    }

    #[test]
    fn all_zero_weights_are_refused() {
        let err = parse(
            "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: {name: s}\n\
             spec:\n  service: web\n  backends:\n  - {service: a, weight: 0}\n",
        )
        .unwrap_err();
        assert_eq!(err.error.field, "spec.backends");
    }

    #[test]
    fn unknown_kinds_are_skipped() {
        let parsed = parse("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n").unwrap();
        assert!(matches!(parsed, Parsed::Skipped { .. }));
        let parsed =
            parse("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g}\n")
                .unwrap();
        assert!(matches!(parsed, Parsed::Skipped { .. }));
    }

    #[test]
    fn our_kinds_under_unknown_versions_are_refused() {
        let err = parse(
            "apiVersion: split.smi-spec.io/v1alpha3\nkind: TrafficSplit\nmetadata: {name: web}\n",
        )
        .unwrap_err();
        assert_eq!(err.error.field, "apiVersion");
        assert!(
            err.error.reason.contains("v1alpha3"),
            "{}",
            err.error.reason
        );
        assert_eq!(err.id.unwrap().to_string(), "TrafficSplit default/web");
        let err = parse(
            "apiVersion: split.smi-spec.io/v1alpha2\nkind: TraficSplit\nmetadata: {name: web}\n",
        )
        .unwrap_err();
        assert_eq!(err.error.field, "kind");
    }

    #[test]
    fn the_gateway_api_examples_parse() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/specs/gateway-api/examples"
        );
        let Ok(entries) = std::fs::read_dir(dir) else {
            return; // shared/ is beside the checkout in development and CI
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in serde_saphyr::from_multiple::<Value>(&text).unwrap() {
                let kind = doc["kind"].as_str().unwrap_or_default().to_string();
                let has_service_parent = doc["spec"]["parentRefs"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|p| p["kind"] == "Service"));
                let result = parse_document(doc);
                if kind == "HTTPRoute" && has_service_parent {
                    assert!(result.is_ok(), "{}: {:?}", path.display(), result.err());
                }
            }
        }
    }
}
