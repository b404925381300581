//! The mesh as the proxies see it: from the objects in force, the complete state of one
//! destination (`name.namespace.svc.cluster.local:port`).
//!
//! Conflicts the standards leave open are resolved here, deterministically:
//! - HTTPRoutes win over TrafficSplits on the same Service (the Gateway API is the newer,
//!   richer standard); the TrafficSplit is reported as ignored.
//! - Of several TrafficSplits for one root service, the oldest (`creationTimestamp`, then
//!   `namespace/name`) is used and the others are reported as ignored.
//! - Consumer HTTPRoutes (in the caller's namespace) take precedence over producer routes (in the
//!   Service's namespace), as GAMMA says.
//! - GRPCRoutes are HTTPRoutes to the model (`config/grpc.rs`), but where both kinds attach to a
//!   Service only the kind of the oldest route is used (the Gateway API does not merge them);
//!   the others are reported as ignored. What is said of HTTPRoutes here holds for both.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use pillion_proto::discovery::v1 as pb;

use crate::config::{
    self, EndpointSlice, HttpRoute, HttpRouteGroup, HttpRouteMatch, IntOrString, ObjectId,
    Resource, RouteKind, Service, ServicePort, TrafficSplit, namespace_of,
};

mod lint;
mod memo;
mod policy;

pub use lint::Warning;
pub use pillion_proto::names::{CLUSTER_DOMAIN, Target, parse_authority};

/// The objects in force, indexed for lookups, and the routing the canary controller holds.
/// Cloned (once per controller decision) to lay new canary routes over the same objects.
#[derive(Debug, Default, Clone)]
pub struct Model {
    services: HashMap<(String, String), Service>,
    /// (namespace, service name) → slices.
    slices: HashMap<(String, String), Vec<EndpointSlice>>,
    splits: Vec<TrafficSplit>,
    route_groups: HashMap<(String, String), HttpRouteGroup>,
    routes: Vec<HttpRoute>,
    policies: Vec<config::AuthorizationPolicy>,
    /// Oldest first: of several policies on one target, the oldest applies.
    retries: Vec<config::RetryPolicy>,
    faults: Vec<config::FaultInjection>,
    canaries: Vec<config::Canary>,
    /// Apex Service (namespace, name) → the routing its running Canary decided. Replaces the
    /// Service's TrafficSplit or HTTPRoutes while the Canary exists.
    canary_routes: HashMap<(String, String), CanaryRoute>,
    pub generation: u64,
    /// When this model was built (push latency is measured from here).
    pub published: Published,
    /// Each watch's answer, computed once for all watches that ask the same.
    pub memo: memo::Memo,
}

/// Where a Canary sends the apex Service's traffic now.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryRoute {
    /// `namespace/name` of the Canary (the rule's name in metrics and spans).
    pub canary: String,
    pub stable: String,
    pub candidate: String,
    /// The candidate's share, percent.
    pub weight: u32,
    /// A/B: requests matching these go to the candidate, the others to stable (the weight is
    /// then unused).
    pub ab: Option<Vec<pb::HeaderMatch>>,
    pub sticky: Option<pb::StickyKey>,
}

/// An instant that defaults to now.
#[derive(Debug, Clone, Copy)]
pub struct Published(std::time::Instant);

impl Default for Published {
    fn default() -> Self {
        Published(std::time::Instant::now())
    }
}

impl Published {
    pub fn elapsed(&self) -> std::time::Duration {
        self.0.elapsed()
    }
}

impl Model {
    pub fn new(objects: Vec<(ObjectId, Resource)>, generation: u64) -> Self {
        let mut model = Model {
            generation,
            ..Model::default()
        };
        for (id, resource) in objects {
            match resource {
                Resource::Service(s) => {
                    model.services.insert((id.namespace, id.name), s);
                }
                Resource::EndpointSlice(s) => {
                    let svc = s
                        .metadata
                        .labels
                        .get(config::SERVICE_NAME_LABEL)
                        .cloned()
                        .unwrap_or_default();
                    model.slices.entry((id.namespace, svc)).or_default().push(s);
                }
                Resource::TrafficSplit(s) => model.splits.push(s),
                Resource::HttpRouteGroup(g) => {
                    model.route_groups.insert((id.namespace, id.name), g);
                }
                Resource::HttpRoute(r) => model.routes.push(r),
                Resource::AuthorizationPolicy(p) => model.policies.push(p),
                Resource::RetryPolicy(p) => model.retries.push(p),
                Resource::FaultInjection(f) => model.faults.push(f),
                Resource::Canary(c) => model.canaries.push(c),
            }
        }
        // Oldest first, then by namespace/name: the Gateway API's tie-break, used for splits too.
        let age = |m: &config::Metadata| {
            (
                m.creation_timestamp.clone().unwrap_or_default(),
                namespace_of(m).to_string(),
                m.name.clone(),
            )
        };
        model.routes.sort_by_key(|r| age(&r.metadata));
        model.splits.sort_by_key(|s| age(&s.metadata));
        model.retries.sort_by_key(|p| age(&p.metadata));
        model.faults.sort_by_key(|f| age(&f.metadata));
        model.canaries.sort_by_key(|c| age(&c.metadata));
        model
    }

    /// The Canary objects, oldest first.
    pub fn canaries(&self) -> &[config::Canary] {
        &self.canaries
    }

    /// Every Service port as the authority proxies ask for (`name.namespace.svc.cluster.local:port`),
    /// sorted.
    pub fn service_authorities(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .services
            .iter()
            .flat_map(|((ns, name), svc)| {
                svc.spec
                    .ports
                    .iter()
                    .map(move |p| format!("{name}.{ns}.svc.{CLUSTER_DOMAIN}:{}", p.port))
            })
            .collect();
        out.sort();
        out
    }

    /// Whether a Service exists.
    pub fn has_service(&self, namespace: &str, name: &str) -> bool {
        self.services
            .contains_key(&(namespace.to_string(), name.to_string()))
    }

    /// The same objects with the canary controller's routes laid over them.
    pub fn with_canary_routes(&self, routes: HashMap<(String, String), CanaryRoute>) -> Self {
        let mut model = self.clone();
        model.canary_routes = routes;
        model.published = Published::default();
        model
    }

    /// The complete state for an authority, as sent to a proxy.
    pub fn resolve(&self, authority: &str, source_ns: &str) -> pb::destination_update::State {
        let not_in_mesh =
            |reason: String| pb::destination_update::State::NotInMesh(pb::NotInMesh { reason });
        if let Ok(addr) = authority.parse::<std::net::SocketAddr>() {
            return self
                .resolve_addr(addr, source_ns)
                .unwrap_or_else(|| not_in_mesh(format!("{addr} is no Service IP or endpoint")));
        }
        let Some(mut target) = parse_authority(authority, source_ns) else {
            return not_in_mesh(format!("`{authority}` is not a Service name"));
        };
        let Some(service) = self
            .services
            .get(&(target.namespace.clone(), target.name.clone()))
        else {
            return not_in_mesh(format!("no Service {}/{}", target.namespace, target.name));
        };
        // A portless authority: port 80 if the Service has it, else its only port.
        if !target.port_given {
            let has_80 = service.spec.ports.iter().any(|p| p.port == 80);
            if let ([only], false) = (service.spec.ports.as_slice(), has_80)
                && let Ok(port) = u16::try_from(only.port)
            {
                target.port = port;
            }
            target.port_given = true;
        }
        if !service
            .spec
            .ports
            .iter()
            .any(|p| p.port == i64::from(target.port))
        {
            return not_in_mesh(format!(
                "Service {}/{} has no port {}",
                target.namespace, target.name, target.port
            ));
        }
        pb::destination_update::State::Destination(self.destination(&target, source_ns))
    }

    /// Transparent mode knows only the original destination's address: a Service's cluster IP
    /// routes like the Service; an endpoint's own address goes to that endpoint alone (with its
    /// identity, so the connection is mTLS when it is meshed).
    fn resolve_addr(
        &self,
        addr: std::net::SocketAddr,
        source_ns: &str,
    ) -> Option<pb::destination_update::State> {
        let ip = addr.ip().to_string();
        for ((ns, name), svc) in &self.services {
            if svc.spec.cluster_ip.as_deref() == Some(ip.as_str())
                && svc
                    .spec
                    .ports
                    .iter()
                    .any(|p| p.port == i64::from(addr.port()))
            {
                let target = Target {
                    namespace: ns.clone(),
                    name: name.clone(),
                    port: addr.port(),
                    port_given: true,
                };
                return Some(pb::destination_update::State::Destination(
                    self.destination(&target, source_ns),
                ));
            }
        }
        let want = addr.to_string();
        for ((ns, name), svc) in &self.services {
            for port in &svc.spec.ports {
                if let Some(ep) = self
                    .endpoints(ns, name, port)
                    .into_iter()
                    .find(|e| e.address == want)
                {
                    return Some(pb::destination_update::State::Destination(
                        pb::Destination {
                            fqdn: want.clone(),
                            rules: vec![pb::Rule {
                                name: format!("{ns}/{name}/endpoint"),
                                backends: vec![pb::WeightedBackend {
                                    weight: 1,
                                    kind: Some(pb::weighted_backend::Kind::Service(pb::Backend {
                                        name: format!(
                                            "{name}.{ns}.svc.{CLUSTER_DOMAIN}:{}",
                                            port.port
                                        ),
                                        endpoints: vec![ep],
                                    })),
                                    filters: None,
                                }],
                                ..Default::default()
                            }],
                            matches: vec![match_all(0)],
                            source: format!("endpoint of Service {ns}/{name}"),
                        },
                    ));
                }
            }
        }
        None
    }

    /// The destination's routing, with the Service's RetryPolicy and FaultInjection on every
    /// rule that its HTTPRoute's own policies do not cover.
    fn destination(&self, target: &Target, source_ns: &str) -> pb::Destination {
        let mut dest = self.routing(target, source_ns);
        let service = config::PolicyTarget::Service {
            namespace: target.namespace.clone(),
            name: target.name.clone(),
        };
        let (retry, fault) = self.policies_for(&service);
        for rule in &mut dest.rules {
            if rule.retry.is_none() {
                rule.retry = retry.clone();
            }
            if rule.fault.is_none() {
                rule.fault = fault.clone();
            }
        }
        dest
    }

    /// The oldest RetryPolicy and FaultInjection attached to `target`.
    fn policies_for(
        &self,
        target: &config::PolicyTarget,
    ) -> (Option<pb::RetryPolicy>, Option<pb::Fault>) {
        let retry = self
            .retries
            .iter()
            .find(|p| p.target() == *target)
            .and_then(|p| p.to_pb().ok());
        let fault = self
            .faults
            .iter()
            .find(|f| f.target() == *target)
            .and_then(|f| f.to_pb().ok());
        (retry, fault)
    }

    fn routing(&self, target: &Target, source_ns: &str) -> pb::Destination {
        if let Some(canary) = self
            .canary_routes
            .get(&(target.namespace.clone(), target.name.clone()))
        {
            return self.destination_from_canary(target, canary);
        }
        let routes = self.routes_for(target, source_ns);
        if !routes.is_empty() {
            return self.destination_from_routes(target, &routes);
        }
        let splits: Vec<&TrafficSplit> = self
            .splits
            .iter()
            .filter(|s| {
                let ns = namespace_of(&s.metadata);
                parse_authority(&s.spec.service, ns)
                    .is_some_and(|t| t.namespace == target.namespace && t.name == target.name)
            })
            .collect();
        // Of several TrafficSplits for one service the oldest is used (a lint warning names
        // the others).
        if let Some(split) = splits.first() {
            return self.destination_from_split(target, split);
        }
        pb::Destination {
            fqdn: target.fqdn(),
            rules: vec![pb::Rule {
                name: format!("{}/{}", target.namespace, target.name),
                backends: vec![self.backend(&target.namespace, &target.name, target.port, 1)],
                ..Default::default()
            }],
            matches: vec![match_all(0)],
            source: format!("Service {}/{}", target.namespace, target.name),
        }
    }

    /// The routes attached to the Service (and port): consumer routes from the caller's
    /// namespace if there are any, else the producer routes from the Service's namespace; of
    /// those, only the kind (HTTPRoute or GRPCRoute) of the oldest, as the Gateway API accepts
    /// one kind where both attach (a lint warning names the others).
    fn routes_for(&self, target: &Target, source_ns: &str) -> Vec<&HttpRoute> {
        let mut routes = self.attached_routes(target, source_ns);
        if let Some(kind) = routes.first().map(|r| r.kind) {
            routes.retain(|r| r.kind == kind);
        }
        routes
    }

    /// [`Model::routes_for`] before choosing one kind.
    fn attached_routes(&self, target: &Target, source_ns: &str) -> Vec<&HttpRoute> {
        let attached = |r: &&HttpRoute| {
            let route_ns = namespace_of(&r.metadata);
            r.spec.parent_refs.iter().any(|p| {
                p.kind.as_deref() == Some("Service")
                    && p.group.as_deref().unwrap_or_default().is_empty()
                    && p.name == target.name
                    && p.namespace.as_deref().unwrap_or(route_ns) == target.namespace
                    && p.port.is_none_or(|port| port == i64::from(target.port))
            })
        };
        let consumer: Vec<&HttpRoute> = self
            .routes
            .iter()
            .filter(attached)
            .filter(|r| {
                let ns = namespace_of(&r.metadata);
                ns == source_ns && ns != target.namespace
            })
            .collect();
        if !consumer.is_empty() {
            return consumer;
        }
        self.routes
            .iter()
            .filter(attached)
            .filter(|r| namespace_of(&r.metadata) == target.namespace)
            .collect()
    }

    fn destination_from_routes(&self, target: &Target, routes: &[&HttpRoute]) -> pb::Destination {
        // A TrafficSplit on the same service is not used (a lint warning says so).
        let mut rules = Vec::new();
        // (sort key, match) for every match of every rule; sorted at the end.
        let mut keyed = Vec::new();
        for (route_idx, route) in routes.iter().enumerate() {
            let ns = namespace_of(&route.metadata);
            let (retry, fault) = self.policies_for(&config::PolicyTarget::Route {
                kind: route.kind,
                namespace: ns.to_string(),
                name: route.metadata.name.clone(),
            });
            let sticky = config::sticky_key(&route.metadata).ok().flatten();
            for (rule_idx, rule) in route.spec.rules.iter().enumerate() {
                let index = rules.len() as u32;
                let name = rule
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("rule-{rule_idx}"));
                let backends = rule
                    .backend_refs
                    .iter()
                    .flatten()
                    .map(|b| {
                        let weight = b.weight.unwrap_or(1).clamp(0, 1_000_000) as u32;
                        let is_service = b.group.as_deref().unwrap_or_default().is_empty()
                            && b.kind.as_deref().unwrap_or("Service") == "Service";
                        if !is_service {
                            return failure(
                                weight,
                                format!("backendRef kind {:?} is not supported", b.kind),
                            );
                        }
                        if b.namespace.as_deref().is_some_and(|n| n != ns) {
                            return failure(
                                weight,
                                "cross-namespace backendRefs are not supported".into(),
                            );
                        }
                        let port = b
                            .port
                            .and_then(|p| u16::try_from(p).ok())
                            .unwrap_or(target.port);
                        let mut backend = self.backend(ns, &b.name, port, weight);
                        backend.filters = self.filters(ns, rule, b.filters.as_deref());
                        backend
                    })
                    .collect::<Vec<_>>();
                // A rule with no backendRefs: the Gateway API says answer 500.
                let mut backends = if backends.is_empty() {
                    vec![failure(1, "rule has no backendRefs".into())]
                } else {
                    backends
                };
                // GRPCRoute says UNAVAILABLE where HTTPRoute says 500: 503 is what the proxies
                // answer gRPC callers with UNAVAILABLE.
                if route.kind == RouteKind::Grpc {
                    for b in &mut backends {
                        if let Some(pb::weighted_backend::Kind::Failure(f)) = &mut b.kind {
                            f.http_status = 503;
                        }
                    }
                }
                let timeouts = rule.timeouts.as_ref().map(|t| pb::Timeouts {
                    request_ms: t
                        .request
                        .as_deref()
                        .and_then(|s| config::parse_duration(s).ok())
                        .unwrap_or(0),
                    backend_request_ms: t
                        .backend_request
                        .as_deref()
                        .and_then(|s| config::parse_duration(s).ok())
                        .unwrap_or(0),
                });
                rules.push(pb::Rule {
                    name: format!("{ns}/{}/{name}", route.metadata.name),
                    backends,
                    timeouts,
                    retry: retry.clone(),
                    fault: fault.clone(),
                    sticky: sticky.clone(),
                    filters: self.filters(ns, rule, rule.filters.as_deref()),
                });
                let default_match = [HttpRouteMatch {
                    grpc_chars: (route.kind == RouteKind::Grpc).then_some((0, 0)),
                    ..HttpRouteMatch::default()
                }];
                let matches = match rule.matches.as_deref() {
                    Some(m) if !m.is_empty() => m,
                    _ => &default_match[..],
                };
                for (match_idx, m) in matches.iter().enumerate() {
                    let pm = to_pb_match(index, m);
                    let key = match m.grpc_chars {
                        Some(chars) => grpc_precedence(&pm, chars, route_idx, rule_idx, match_idx),
                        None => precedence(&pm, route_idx, rule_idx, match_idx),
                    };
                    keyed.push((key, pm));
                }
            }
        }
        keyed.sort_by_key(|k| k.0);
        let source = routes
            .iter()
            .map(|r| {
                format!(
                    "{} {}/{}",
                    r.kind.name(),
                    namespace_of(&r.metadata),
                    r.metadata.name
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        pb::Destination {
            fqdn: target.fqdn(),
            rules,
            matches: keyed.into_iter().map(|(_, m)| m).collect(),
            source,
        }
    }

    fn destination_from_split(&self, target: &Target, split: &TrafficSplit) -> pb::Destination {
        let ns = namespace_of(&split.metadata);
        let backends = split
            .spec
            .backends
            .iter()
            .filter_map(|b| {
                let weight = b.weight.clamp(0, 1_000_000) as u32;
                let backend_name = parse_authority(&b.service, ns).map(|t| t.name);
                let name = backend_name.as_deref().unwrap_or(&b.service);
                if let Some(svc) = self.services.get(&(ns.to_string(), name.to_string()))
                    && !svc.spec.ports.iter().any(|p| p.port == i64::from(target.port))
                {
                    // SMI: a backend without the root's port is not included.
                    tracing::warn!(backend = %name, port = target.port, split = %split.metadata.name, "backend service lacks the root service's port; excluded");
                    return None;
                }
                Some(self.backend(ns, name, target.port, weight))
            })
            .collect::<Vec<_>>();
        let split_name = format!("{ns}/{}", split.metadata.name);
        let root = pb::Rule {
            name: format!("{}/{}", target.namespace, target.name),
            backends: vec![self.backend(&target.namespace, &target.name, target.port, 1)],
            ..Default::default()
        };
        let weighted = pb::Rule {
            name: split_name.clone(),
            backends,
            sticky: config::sticky_key(&split.metadata).ok().flatten(),
            ..Default::default()
        };
        let groups: Vec<&HttpRouteGroup> = split
            .spec
            .matches
            .iter()
            .flatten()
            .filter_map(|m| self.route_groups.get(&(ns.to_string(), m.name.clone())))
            .collect();
        let (rules, matches) = if split.spec.matches.as_ref().is_some_and(|m| !m.is_empty()) {
            // v1alpha4 A/B: matching requests take the split; all others go to the root service.
            let mut matches: Vec<pb::RouteMatch> = groups
                .iter()
                .flat_map(|g| g.spec.matches.iter())
                .map(|m| pb::RouteMatch {
                    rule_index: 0,
                    path: m.path_regex.as_ref().map(|re| pb::PathMatch {
                        kind: pb::path_match::Kind::Regex as i32,
                        // SMI anchors path regexes at the start only.
                        value: format!("(?:{re}).*"),
                    }),
                    headers: m
                        .headers
                        .iter()
                        .flatten()
                        .map(|(name, re)| pb::HeaderMatch {
                            name: name.to_ascii_lowercase(),
                            value: Some(pb::header_match::Value::Regex(format!(".*(?:{re}).*"))),
                        })
                        .collect(),
                    query_params: vec![],
                    method: m
                        .methods
                        .as_ref()
                        .filter(|ms| ms.len() == 1 && ms[0] != "*")
                        .map(|ms| ms[0].clone())
                        .unwrap_or_default(),
                })
                .collect();
            matches.push(match_all(1));
            (vec![weighted, root], matches)
        } else {
            (vec![weighted], vec![match_all(0)])
        };
        pb::Destination {
            fqdn: target.fqdn(),
            rules,
            matches,
            source: format!("TrafficSplit {split_name}"),
        }
    }

    /// A Canary's routing: one weighted rule over stable and candidate, or for an A/B test, the
    /// matching requests to the candidate and the others to stable.
    fn destination_from_canary(&self, target: &Target, c: &CanaryRoute) -> pb::Destination {
        let ns = &target.namespace;
        let rule = |name: String, backends| pb::Rule {
            name,
            backends,
            sticky: c.sticky.clone(),
            ..Default::default()
        };
        let (rules, matches) = match &c.ab {
            Some(headers) => (
                vec![
                    rule(
                        format!("{}/candidate", c.canary),
                        vec![self.backend(ns, &c.candidate, target.port, 1)],
                    ),
                    rule(
                        c.canary.clone(),
                        vec![self.backend(ns, &c.stable, target.port, 1)],
                    ),
                ],
                vec![
                    pb::RouteMatch {
                        headers: headers.clone(),
                        ..match_all(0)
                    },
                    match_all(1),
                ],
            ),
            None => (
                vec![rule(
                    c.canary.clone(),
                    vec![
                        self.backend(ns, &c.stable, target.port, 100 - c.weight.min(100)),
                        self.backend(ns, &c.candidate, target.port, c.weight.min(100)),
                    ],
                )],
                vec![match_all(0)],
            ),
        };
        pb::Destination {
            fqdn: target.fqdn(),
            rules,
            matches,
            source: format!("Canary {}", c.canary),
        }
    }

    /// A rule's (or one of its backendRefs') filters as the proxies get them, mirrors resolved
    /// to their Service's endpoints (a Service not found, or in another namespace, gets no
    /// copies).
    fn filters(
        &self,
        ns: &str,
        rule: &config::HttpRouteRule,
        filters: Option<&[config::filters::HttpRouteFilter]>,
    ) -> Option<pb::Filters> {
        let prefix = config::filters::matched_prefix(rule.matches.as_deref());
        config::filters::to_pb(filters.unwrap_or_default(), prefix.as_deref(), |b| {
            if b.namespace.as_deref().is_some_and(|n| n != ns) {
                return failure(1, "cross-namespace mirrors are not supported".into());
            }
            let port = b.port.and_then(|p| u16::try_from(p).ok()).unwrap_or(0);
            self.backend(ns, &b.name, port, 1)
        })
    }

    /// A weighted backend: the Service's endpoints for `port`, or a 500 failure when the Service
    /// does not exist or lacks the port.
    fn backend(&self, ns: &str, name: &str, port: u16, weight: u32) -> pb::WeightedBackend {
        let Some(service) = self.services.get(&(ns.to_string(), name.to_string())) else {
            return failure(weight, format!("no Service {ns}/{name}"));
        };
        let Some(svc_port) = service
            .spec
            .ports
            .iter()
            .find(|p| p.port == i64::from(port))
        else {
            return failure(weight, format!("Service {ns}/{name} has no port {port}"));
        };
        let endpoints = self.endpoints(ns, name, svc_port);
        pb::WeightedBackend {
            weight,
            kind: Some(pb::weighted_backend::Kind::Service(pb::Backend {
                name: format!("{name}.{ns}.svc.{CLUSTER_DOMAIN}:{port}"),
                endpoints,
            })),
            filters: None,
        }
    }

    /// Ready endpoints of a Service port: the EndpointSlice port of the same name (Kubernetes'
    /// rule), or for a numeric targetPort with no named slice port, that number.
    fn endpoints(&self, ns: &str, name: &str, svc_port: &ServicePort) -> Vec<pb::Endpoint> {
        let port_name = svc_port.name.clone().unwrap_or_default();
        let mut out = Vec::new();
        for slice in self
            .slices
            .get(&(ns.to_string(), name.to_string()))
            .into_iter()
            .flatten()
        {
            let slice_port = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.clone().unwrap_or_default() == port_name);
            let number = match (slice_port.and_then(|p| p.port), &svc_port.target_port) {
                (Some(n), _) => n,
                (None, Some(IntOrString::Int(n))) => *n,
                (None, None) => svc_port.port,
                (None, Some(IntOrString::String(_))) => continue,
            };
            let Ok(number) = u16::try_from(number) else {
                continue;
            };
            let app_protocol = slice_port
                .and_then(|p| p.app_protocol.as_deref())
                .or(svc_port.app_protocol.as_deref());
            let hint = protocol_hint(app_protocol) as i32;
            let meshed = meshed(slice);
            for ep in &slice.endpoints {
                // Kubernetes: a missing `ready` condition means ready.
                if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                    continue;
                }
                let mut labels = BTreeMap::new();
                if let Some(pod) = ep.target_ref.as_ref().and_then(|r| r.name.clone()) {
                    labels.insert("pod".to_string(), pod);
                }
                if let Some(zone) = &ep.zone {
                    labels.insert("zone".to_string(), zone.clone());
                }
                if let Some(node) = &ep.node_name {
                    labels.insert("node".to_string(), node.clone());
                }
                for addr in &ep.addresses {
                    let address = if addr.contains(':') {
                        format!("[{addr}]:{number}")
                    } else {
                        format!("{addr}:{number}")
                    };
                    out.push(pb::Endpoint {
                        address,
                        weight: 1,
                        labels: labels.clone().into_iter().collect(),
                        protocol_hint: hint,
                        meshed: meshed.clone(),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.address.cmp(&b.address));
        out.dedup_by(|a, b| a.address == b.address);
        out
    }
}

/// Files mode: an EndpointSlice says that a Pillion proxy fronts its endpoints with the
/// annotations `pillion.dev/identity` (the SPIFFE ID the proxy presents) and, optionally,
/// `pillion.dev/proxy-port` (its inbound port at the endpoint's IP; without it the endpoint's
/// own port, as iptables redirects in Kubernetes). Validated when the slice is read.
fn meshed(slice: &EndpointSlice) -> Option<pb::MeshedEndpoint> {
    let identity = slice
        .metadata
        .annotations
        .get(config::IDENTITY_ANNOTATION)?;
    let proxy_port = slice
        .metadata
        .annotations
        .get(config::PROXY_PORT_ANNOTATION)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    Some(pb::MeshedEndpoint {
        identity: identity.clone(),
        proxy_port,
    })
}

fn protocol_hint(app_protocol: Option<&str>) -> pb::ProtocolHint {
    match app_protocol.map(str::to_ascii_lowercase).as_deref() {
        Some("kubernetes.io/h2c" | "h2c" | "grpc" | "http2") => pb::ProtocolHint::H2,
        Some("http" | "http1" | "http/1.1") => pb::ProtocolHint::Http1,
        Some("tcp" | "opaque") => pb::ProtocolHint::Opaque,
        _ => pb::ProtocolHint::Unspecified,
    }
}

fn failure(weight: u32, reason: String) -> pb::WeightedBackend {
    pb::WeightedBackend {
        weight,
        kind: Some(pb::weighted_backend::Kind::Failure(pb::Failure {
            http_status: 500,
            reason,
        })),
        filters: None,
    }
}

fn match_all(rule_index: u32) -> pb::RouteMatch {
    pb::RouteMatch {
        rule_index,
        path: Some(pb::PathMatch {
            kind: pb::path_match::Kind::Prefix as i32,
            value: "/".into(),
        }),
        ..Default::default()
    }
}

fn to_pb_match(rule_index: u32, m: &HttpRouteMatch) -> pb::RouteMatch {
    use pb::path_match::Kind;
    let path = m.path.as_ref().map_or(
        pb::PathMatch {
            kind: Kind::Prefix as i32,
            value: "/".into(),
        },
        |p| pb::PathMatch {
            kind: match p.kind.as_deref().unwrap_or("PathPrefix") {
                "Exact" => Kind::Exact,
                "RegularExpression" => Kind::Regex,
                _ => Kind::Prefix,
            } as i32,
            value: p.value.clone().unwrap_or_else(|| "/".into()),
        },
    );
    let value = |kind: Option<&str>, v: &str| match kind {
        Some("RegularExpression") => pb::header_match::Value::Regex(v.to_string()),
        _ => pb::header_match::Value::Exact(v.to_string()),
    };
    pb::RouteMatch {
        rule_index,
        path: Some(path),
        headers: m
            .headers
            .iter()
            .flatten()
            .map(|h| pb::HeaderMatch {
                name: h.name.to_ascii_lowercase(),
                value: Some(value(h.kind.as_deref(), &h.value)),
            })
            .collect(),
        query_params: m
            .query_params
            .iter()
            .flatten()
            .map(|q| pb::QueryParamMatch {
                name: q.name.clone(),
                value: Some(match value(q.kind.as_deref(), &q.value) {
                    pb::header_match::Value::Exact(v) => pb::query_param_match::Value::Exact(v),
                    pb::header_match::Value::Regex(v) => pb::query_param_match::Value::Regex(v),
                }),
            })
            .collect(),
        method: m.method.clone().unwrap_or_default(),
    }
}

type PrecedenceKey = (
    u8,
    Reverse<usize>,
    bool,
    Reverse<usize>,
    Reverse<usize>,
    usize,
    usize,
    usize,
);

/// The Gateway API's order: exact path, then longest prefix, then a method, then most header
/// matches, then most query matches; ties by route age/name (the order of `routes`), then rule
/// order. Regex paths are ranked between exact and prefix (the API leaves them open).
fn precedence(m: &pb::RouteMatch, route: usize, rule: usize, idx: usize) -> PrecedenceKey {
    use pb::path_match::Kind;
    let (rank, len) = match m.path.as_ref() {
        Some(p) if p.kind == Kind::Exact as i32 => (0, p.value.len()),
        Some(p) if p.kind == Kind::Regex as i32 => (1, p.value.len()),
        Some(p) => (2, p.value.len()),
        None => (2, 1),
    };
    (
        rank,
        Reverse(len),
        m.method.is_empty(),
        Reverse(m.headers.len()),
        Reverse(m.query_params.len()),
        route,
        rule,
        idx,
    )
}

/// GRPCRoute's order: most characters of matched service, then of method, then most header
/// matches; then the routes' and rules' own order. Keys of the same type as [`precedence`]'s, but
/// a Service's routes are all of one kind, so the two are never compared.
fn grpc_precedence(
    m: &pb::RouteMatch,
    (service, method): (usize, usize),
    route: usize,
    rule: usize,
    idx: usize,
) -> PrecedenceKey {
    (
        0,
        Reverse((service << 16) | method),
        true,
        Reverse(m.headers.len()),
        Reverse(0),
        route,
        rule,
        idx,
    )
}

/// A version string that changes exactly when the content (encoded) changes.
pub fn version_of_bytes(bytes: &[u8]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::files::Store;

    fn model(yaml: &str) -> Model {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mesh.yaml"), yaml).unwrap();
        let mut store = Store::new(dir.path());
        store.scan().unwrap();
        assert!(store.errors().is_empty(), "{:?}", store.errors());
        Model::new(store.objects(), 1)
    }

    fn dest(m: &Model, authority: &str) -> pb::Destination {
        match m.resolve(authority, "default") {
            pb::destination_update::State::Destination(d) => d,
            other => panic!("not a destination: {other:?}"),
        }
    }

    const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-v1}
spec:
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-v1-abc
  labels: {kubernetes.io/service-name: web-v1}
addressType: IPv4
ports: [{name: http, port: 9001, appProtocol: kubernetes.io/h2c}]
endpoints:
- addresses: ["127.0.0.1"]
- addresses: ["127.0.0.2"]
  conditions: {ready: false}
"#;

    #[test]
    fn filters_reach_the_proxies_with_their_prefix_and_mirrors_resolved() {
        let m = model(&format!(
            "{SERVICES}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
             metadata: {{name: r}}\nspec:\n  parentRefs: [{{kind: Service, group: '', name: web}}]\n  rules:\n\
             \x20 - matches: [{{path: {{type: PathPrefix, value: /v1}}}}]\n    filters:\n\
             \x20   - {{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /api}}}}}}\n\
             \x20   - {{type: RequestMirror, requestMirror: {{backendRef: {{name: web-v1, port: 80}}, percent: 25}}}}\n\
             \x20   - {{type: RequestMirror, requestMirror: {{backendRef: {{name: gone, port: 80}}}}}}\n\
             \x20   backendRefs:\n\
             \x20   - name: web-v1\n      port: 80\n      filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: X-V, value: '1'}}]}}}}]\n"
        ));
        let d = dest(&m, "web");
        let f = d.rules[0].filters.as_ref().expect("the rule's filters");
        let path = f.rewrite.as_ref().unwrap().path.as_ref().unwrap();
        assert_eq!(path.matched_prefix, "/v1");
        assert_eq!(
            path.kind,
            Some(pb::path_modifier::Kind::Prefix("/api".into()))
        );
        assert_eq!(f.mirrors.len(), 2);
        assert_eq!(f.mirrors[0].ppm, 250_000);
        match &f.mirrors[0].backend.as_ref().unwrap().kind {
            Some(pb::weighted_backend::Kind::Service(b)) => {
                assert_eq!(b.endpoints.len(), 1, "the mirror's endpoints, resolved");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            f.mirrors[1].backend.as_ref().unwrap().kind,
            Some(pb::weighted_backend::Kind::Failure(_))
        ));
        let b = d.rules[0].backends[0]
            .filters
            .as_ref()
            .expect("the backend's");
        let set = &b.request_headers.as_ref().unwrap().set;
        assert_eq!((set[0].name.as_str(), set[0].value.as_str()), ("x-v", "1"));
        // The missing mirror is named in a warning (`pillion check`, the control plane's log).
        let warnings = m.warnings();
        assert!(
            warnings.iter().any(|w| w.field
                == "spec.rules[0].filters[2].requestMirror.backendRef.name"
                && w.reason.contains("no Service default/gone")),
            "{warnings:?}"
        );
    }

    #[test]
    fn service_port_maps_to_slice_port_by_name() {
        let m = model(SERVICES);
        let d = dest(&m, "web-v1");
        let Some(pb::weighted_backend::Kind::Service(b)) = &d.rules[0].backends[0].kind else {
            panic!()
        };
        assert_eq!(b.endpoints.len(), 1, "the unready endpoint is left out");
        assert_eq!(b.endpoints[0].address, "127.0.0.1:9001");
        assert_eq!(b.endpoints[0].protocol_hint, pb::ProtocolHint::H2 as i32);
        assert!(matches!(
            m.resolve("web:81", "default"),
            pb::destination_update::State::NotInMesh(_)
        ));
        assert!(matches!(
            m.resolve("nope", "default"),
            pb::destination_update::State::NotInMesh(_)
        ));
    }

    #[test]
    fn a_portless_authority_goes_to_port_80_or_the_only_port() {
        let m = model(&format!(
            "{SERVICES}---\napiVersion: v1\nkind: Service\nmetadata: {{name: grpc}}\nspec:\n  ports: [{{port: 50051}}]\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {{name: two}}\nspec:\n  ports: [{{name: a, port: 81}}, {{name: b, port: 82}}]\n"
        ));
        assert_eq!(
            dest(&m, "grpc").fqdn,
            "grpc.default.svc.cluster.local:50051"
        );
        assert_eq!(dest(&m, "web").fqdn, "web.default.svc.cluster.local:80");
        assert!(matches!(
            m.resolve("two", "default"),
            pb::destination_update::State::NotInMesh(_)
        ));
        assert_eq!(dest(&m, "two:82").fqdn, "two.default.svc.cluster.local:82");
    }

    const MESHED_SPLIT: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: web-v1}
spec:
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-v1
  labels: {kubernetes.io/service-name: web-v1}
  annotations: {pillion.dev/identity: "spiffe://cluster.local/ns/default/sa/web"}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- addresses: ["127.0.0.1"]
---
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: web}
spec:
  service: web
  backends: [{service: web-v1, weight: 1}]
"#;

    fn policy(target: &str) -> String {
        format!(
            "---\napiVersion: pillion.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: p}}\n\
             spec:\n  targetRef: {{kind: Service, name: {target}}}\n  allow: [{{identities: [\"spiffe://cluster.local/ns/default/sa/client\"]}}]\n"
        )
    }

    #[test]
    fn a_policy_on_an_apex_service_protects_its_backends_workloads() {
        let m = model(&format!("{MESHED_SPLIT}{}", policy("web")));
        let auths = m.inbound_policy("spiffe://cluster.local/ns/default/sa/web");
        assert_eq!(auths.len(), 1, "{auths:?}");
        assert_eq!(auths[0].ports, vec![8080]);
        assert!(m.warnings().is_empty(), "{:?}", m.warnings());

        let m = model(&format!("{MESHED_SPLIT}{}", policy("nothing-here")));
        assert!(
            m.inbound_policy("spiffe://cluster.local/ns/default/sa/web")
                .is_empty()
        );
        let warnings = m.warnings();
        assert!(
            warnings.iter().any(|w| w
                .to_string()
                .starts_with("AuthorizationPolicy/p: spec.targetRef: ")
                && w.reason.contains("protects nothing")),
            "{warnings:?}"
        );
    }

    #[test]
    fn split_with_missing_backend_fails_its_share() {
        let m = model(&format!(
            "{SERVICES}---\napiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: {{name: web}}\n\
             spec:\n  service: web\n  backends:\n  - {{service: web-v1, weight: 3}}\n  - {{service: web-v9, weight: 1}}\n"
        ));
        let d = dest(&m, "web.default.svc.cluster.local:80");
        assert_eq!(d.source, "TrafficSplit default/web");
        let b = &d.rules[0].backends;
        assert_eq!(b[0].weight, 3);
        assert!(
            matches!(&b[1].kind, Some(pb::weighted_backend::Kind::Failure(f)) if f.http_status == 500)
        );
        let warnings = m.warnings();
        assert!(
            warnings
                .iter()
                .any(|w| w.field == "spec.backends[1].service" && w.reason.contains("web-v9")),
            "{warnings:?}"
        );
    }

    #[test]
    fn route_matches_are_ordered_by_precedence() {
        let m = model(&format!(
            "{SERVICES}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r}}\n\
             spec:\n  parentRefs: [{{group: '', kind: Service, name: web, port: 80}}]\n  rules:\n\
             \x20 - matches: [{{path: {{type: PathPrefix, value: /}}}}]\n    backendRefs: [{{name: web-v1, port: 80}}]\n\
             \x20 - matches: [{{path: {{type: PathPrefix, value: /api}}, headers: [{{name: X-V, value: two}}]}}, {{path: {{type: Exact, value: /x}}}}]\n    backendRefs: [{{name: web-v1, port: 80}}]\n\
             \x20   timeouts: {{request: 2s}}\n"
        ));
        let d = dest(&m, "web");
        let order: Vec<(String, u32)> = d
            .matches
            .iter()
            .map(|m| (m.path.as_ref().unwrap().value.clone(), m.rule_index))
            .collect();
        assert_eq!(
            order,
            vec![("/x".into(), 1), ("/api".into(), 1), ("/".into(), 0)]
        );
        assert_eq!(d.matches[1].headers[0].name, "x-v");
        assert_eq!(d.rules[1].timeouts.unwrap().request_ms, 2000);
    }

    #[test]
    fn a_route_policy_wins_over_its_services_and_a_service_policy_covers_the_rest() {
        let route = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\n\
             spec:\n  parentRefs: [{kind: Service, name: web, port: 80}]\n  rules:\n\
             \x20 - backendRefs: [{name: web-v1, port: 80}]\n";
        let policies = "---\napiVersion: pillion.dev/v1alpha1\nkind: RetryPolicy\nmetadata: {name: on-service}\n\
             spec:\n  targetRef: {kind: Service, name: web}\n  maxRetries: 1\n\
             ---\napiVersion: pillion.dev/v1alpha1\nkind: RetryPolicy\nmetadata: {name: on-route}\n\
             spec:\n  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}\n  maxRetries: 3\n\
             ---\napiVersion: pillion.dev/v1alpha1\nkind: FaultInjection\nmetadata: {name: chaos}\n\
             spec:\n  targetRef: {kind: Service, name: web-v1}\n  abort: {percent: 10}\n\
             ---\napiVersion: pillion.dev/v1alpha1\nkind: FaultInjection\nmetadata: {name: stray}\n\
             spec:\n  targetRef: {kind: Service, name: nothing}\n  delay: {percent: 10, fixedDelay: 1s}\n";
        let m = model(&format!("{SERVICES}{route}{policies}"));
        let rule = &dest(&m, "web").rules[0];
        let retry = rule.retry.as_ref().expect("the route's policy");
        assert_eq!(
            (retry.max_retries, retry.source.as_str()),
            (3, "RetryPolicy default/on-route")
        );
        assert!(rule.fault.is_none());
        // Without the route, the Service's own policy applies.
        let m = model(&format!("{SERVICES}{policies}"));
        assert_eq!(
            dest(&m, "web").rules[0]
                .retry
                .as_ref()
                .map(|r| r.max_retries),
            Some(1)
        );
        let v1 = &dest(&m, "web-v1").rules[0];
        assert_eq!(v1.fault.as_ref().map(|f| f.abort_ppm), Some(100_000));
        assert!(v1.retry.is_none());
        let warnings = m.warnings();
        assert!(
            warnings
                .iter()
                .any(|w| w.to_string().starts_with("FaultInjection/stray: ")
                    && w.reason.contains("no Service default/nothing")),
            "{warnings:?}"
        );
    }
    fn grpc_route(name: &str, created: &str, rules: &str) -> String {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\n\
             metadata: {{name: {name}, creationTimestamp: '{created}'}}\n\
             spec:\n  parentRefs: [{{kind: Service, group: '', name: web}}]\n  rules:\n{rules}"
        )
    }

    #[test]
    fn grpc_route_matches_are_ordered_by_service_then_method_then_headers() {
        let rules = "\x20 - matches: [{method: {method: Get}}]\n    backendRefs: [{name: web-v1, port: 80}]\n\
                     \x20 - matches: [{method: {service: a.B}}]\n    backendRefs: [{name: web-v1, port: 80}]\n\
                     \x20 - matches: [{method: {service: a.B, method: Get}}]\n    backendRefs: [{name: web-v1, port: 80}]\n\
                     \x20 - matches: [{method: {service: a.B, method: Get}, headers: [{name: x, value: gold}]}]\n    backendRefs: [{name: web-v1, port: 80}]\n\
                     \x20 - backendRefs: [{name: web-v1, port: 80}]\n";
        let m = model(&format!(
            "{SERVICES}{}",
            grpc_route("g", "2026-01-01T00:00:00Z", rules)
        ));
        let d = dest(&m, "web");
        assert_eq!(d.source, "GRPCRoute default/g");
        let order: Vec<u32> = d.matches.iter().map(|m| m.rule_index).collect();
        // Service and method with a header; without; the service alone; the method alone; all.
        assert_eq!(order, [3, 2, 1, 0, 4]);
        let path = |i: usize| d.matches[i].path.as_ref().unwrap().value.clone();
        assert_eq!(
            (path(1), path(2), path(3), path(4)),
            (
                "/a.B/Get".into(),
                "/a.B".into(),
                "/[^/]+/Get".into(),
                "/".into()
            )
        );
    }

    #[test]
    fn where_an_httproute_and_a_grpcroute_attach_only_the_older_kind_routes() {
        let http = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
             metadata: {name: h, creationTimestamp: '2026-02-01T00:00:00Z'}\n\
             spec:\n  parentRefs: [{kind: Service, group: '', name: web}]\n  rules:\n\
             \x20 - backendRefs: [{name: web-v1, port: 80}]\n";
        let grpc = |created| {
            grpc_route(
                "g",
                created,
                "\x20 - matches: [{method: {service: a.B}}]\n    backendRefs: [{name: web-v1, port: 80}]\n",
            )
        };
        let retry = "---\napiVersion: pillion.dev/v1alpha1\nkind: RetryPolicy\nmetadata: {name: on-grpc}\n\
             spec:\n  targetRef: {group: gateway.networking.k8s.io, kind: GRPCRoute, name: g}\n  maxRetries: 4\n";
        // The GRPCRoute is older: it alone routes, with the policy attached to it by kind.
        let m = model(&format!(
            "{SERVICES}{http}{}{retry}",
            grpc("2026-01-01T00:00:00Z")
        ));
        let d = dest(&m, "web");
        assert_eq!(d.source, "GRPCRoute default/g");
        assert_eq!(d.rules[0].retry.as_ref().map(|r| r.max_retries), Some(4));
        let warnings = m.warnings();
        assert!(
            warnings.iter().any(|w| w
                .to_string()
                .starts_with("HTTPRoute/h: spec.parentRefs[0].name: GRPCRoute/g is attached")),
            "{warnings:?}"
        );
        // The HTTPRoute is older: it routes, and the RetryPolicy does not attach to it.
        let m = model(&format!(
            "{SERVICES}{http}{}{retry}",
            grpc("2026-03-01T00:00:00Z")
        ));
        let d = dest(&m, "web");
        assert_eq!(d.source, "HTTPRoute default/h");
        assert!(d.rules[0].retry.is_none());
        assert!(
            m.warnings().iter().any(|w| w
                .to_string()
                .starts_with("GRPCRoute/g: spec.parentRefs[0].name: ")),
            "{:?}",
            m.warnings()
        );
    }
}
