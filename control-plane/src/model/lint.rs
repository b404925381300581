//! Configuration that is valid but almost surely a mistake, reported as warnings: logged by the
//! control plane at every change, printed by `pillion check` at the field's line.

use std::collections::HashMap;
use std::fmt;

use super::{Model, parse_authority};
use crate::config::{
    HttpRouteMatch, HttpRouteRule, ObjectId, PolicyTarget, RouteKind, namespace_of,
};

/// One likely mistake: the object, the field (a path as in a refusal) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub object: ObjectId,
    pub field: String,
    pub reason: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.object.short())?;
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl Model {
    /// Configuration that is valid but almost surely not what its author meant.
    pub fn warnings(&self) -> Vec<Warning> {
        let mut out = Vec::new();
        self.lint_policies(&mut out);
        self.lint_splits(&mut out);
        self.lint_routes(&mut out);
        self.lint_attachments(&mut out);
        self.lint_canaries(&mut out);
        out
    }

    fn lint_canaries(&self, out: &mut Vec<Warning>) {
        for c in &self.canaries {
            let ns = namespace_of(&c.metadata);
            let roles = [
                (
                    "spec.service",
                    &c.spec.service,
                    "no client can address the release",
                ),
                (
                    "spec.stable",
                    &c.spec.stable,
                    "the stable share of requests fails",
                ),
                (
                    "spec.candidate",
                    &c.spec.candidate,
                    "the candidate's share of requests fails",
                ),
            ];
            for (field, name, effect) in roles {
                let name = parse_authority(name, ns).map_or(name.clone(), |t| t.name);
                let reason = match self.service_state(ns, &name) {
                    ServiceState::Ready => continue,
                    // The apex needs no endpoints of its own: the release routes it.
                    ServiceState::NoEndpoints if field == "spec.service" => continue,
                    ServiceState::Missing => format!("no Service {ns}/{name}: {effect}"),
                    ServiceState::NoEndpoints => {
                        format!("Service {ns}/{name} has no ready endpoint: {effect} (503)")
                    }
                };
                out.push(Warning {
                    object: ObjectId::of("Canary", &c.metadata),
                    field: field.into(),
                    reason,
                });
            }
        }
    }

    /// Whether Service `ns/name` exists, and if so whether any of its ports has a ready
    /// endpoint.
    fn service_state(&self, ns: &str, name: &str) -> ServiceState {
        match self.services.get(&(ns.to_string(), name.to_string())) {
            None => ServiceState::Missing,
            Some(svc) => {
                let ready = svc
                    .spec
                    .ports
                    .iter()
                    .any(|port| !self.endpoints(ns, name, port).is_empty());
                if ready || svc.spec.ports.is_empty() {
                    ServiceState::Ready
                } else {
                    ServiceState::NoEndpoints
                }
            }
        }
    }

    fn lint_policies(&self, out: &mut Vec<Warning>) {
        for p in &self.policies {
            let ns = namespace_of(&p.metadata);
            let target = &p.spec.target_ref;
            if target.kind != "Service" {
                continue;
            }
            let protects = self
                .policy_services(ns, &target.name, &p.spec.ports)
                .iter()
                .any(|(svc, _)| self.meshed_identities(ns, svc).next().is_some());
            if !protects {
                out.push(Warning {
                    object: ObjectId::of("AuthorizationPolicy", &p.metadata),
                    field: "spec.targetRef".into(),
                    reason: format!(
                        "no meshed workload is behind Service {ns}/{} (nor behind the backends \
                         of its TrafficSplits and HTTPRoutes): it protects nothing",
                        target.name
                    ),
                });
            }
        }
    }

    fn lint_splits(&self, out: &mut Vec<Warning>) {
        for split in &self.splits {
            let ns = namespace_of(&split.metadata);
            let object = || ObjectId::of("TrafficSplit", &split.metadata);
            let apex = parse_authority(&split.spec.service, ns)
                .map_or(split.spec.service.clone(), |t| t.name);
            if !self.services.contains_key(&(ns.to_string(), apex.clone())) {
                out.push(Warning {
                    object: object(),
                    field: "spec.service".into(),
                    reason: format!(
                        "no Service {ns}/{apex}: no client can address this split, it applies to nothing"
                    ),
                });
            }
            let same_apex = |other: &crate::config::TrafficSplit| {
                let other_ns = namespace_of(&other.metadata);
                other_ns == ns
                    && parse_authority(&other.spec.service, other_ns)
                        .is_some_and(|t| t.name == apex)
            };
            // Splits are oldest first: an earlier one with the same apex is the one used.
            if let Some(older) = self
                .splits
                .iter()
                .take_while(|s| !std::ptr::eq(*s, split))
                .find(|s| same_apex(s))
            {
                out.push(Warning {
                    object: object(),
                    field: "spec.service".into(),
                    reason: format!(
                        "TrafficSplit {ns}/{} (older) already splits Service {ns}/{apex}: this \
                         one is not used",
                        older.metadata.name
                    ),
                });
            }
            if let Some(route) = self.routes.iter().find(|r| {
                namespace_of(&r.metadata) == ns
                    && r.spec.parent_refs.iter().any(|p| {
                        p.kind.as_deref() == Some("Service")
                            && p.name == apex
                            && p.namespace.as_deref().unwrap_or(ns) == ns
                    })
            }) {
                out.push(Warning {
                    object: object(),
                    field: "spec.service".into(),
                    reason: format!(
                        "{} {ns}/{} also routes Service {ns}/{apex} and takes precedence: \
                         this split is not used",
                        route.kind.name(),
                        route.metadata.name
                    ),
                });
            }
            for (i, b) in split.spec.backends.iter().enumerate() {
                let name = parse_authority(&b.service, ns).map_or(b.service.clone(), |t| t.name);
                let reason = match self.service_state(ns, &name) {
                    ServiceState::Ready => continue,
                    ServiceState::Missing => {
                        format!("no Service {ns}/{name}; its share of requests fails with 500")
                    }
                    ServiceState::NoEndpoints if b.weight > 0 => format!(
                        "Service {ns}/{name} has no ready endpoint; its share of requests fails \
                         with 503"
                    ),
                    ServiceState::NoEndpoints => continue,
                };
                out.push(Warning {
                    object: object(),
                    field: format!("spec.backends[{i}].service"),
                    reason,
                });
            }
        }
    }

    fn lint_routes(&self, out: &mut Vec<Warning>) {
        // (parent namespace, parent name, port) -> the first route rule that claimed each match.
        let mut claimed: HashMap<(String, String, Option<i64>), HashMap<String, String>> =
            HashMap::new();
        // (route namespace, parent namespace, parent name, port) -> the kind of the oldest route
        // attached there, and that route: routes of the other kind are not used there.
        type Attachment = (String, String, String, Option<i64>);
        let mut kinds: HashMap<Attachment, (RouteKind, String)> = HashMap::new();
        // Oldest first, as precedence goes: a later identical match is the one shadowed.
        for route in &self.routes {
            let ns = namespace_of(&route.metadata);
            let object = || ObjectId::of(route.kind.name(), &route.metadata);
            let mut parents = Vec::new();
            for (i, p) in route.spec.parent_refs.iter().enumerate() {
                let field = format!("spec.parentRefs[{i}]");
                let is_service = p.kind.as_deref() == Some("Service")
                    && p.group.as_deref().unwrap_or_default().is_empty();
                if !is_service {
                    out.push(Warning {
                        object: object(),
                        field: format!("{field}.kind"),
                        reason: format!(
                            "parent kind {} is not a Service: Pillion routes for Service \
                             parents (`kind: Service`, Gateway API's default kind is Gateway); \
                             the mesh ignores this parent",
                            p.kind.as_deref().unwrap_or("Gateway (the default)")
                        ),
                    });
                    continue;
                }
                let parent_ns = p.namespace.as_deref().unwrap_or(ns);
                if !self
                    .services
                    .contains_key(&(parent_ns.to_string(), p.name.clone()))
                {
                    out.push(Warning {
                        object: object(),
                        field: format!("{field}.name"),
                        reason: format!(
                            "no Service {parent_ns}/{}: the route applies to nothing",
                            p.name
                        ),
                    });
                    continue;
                }
                let key = (
                    ns.to_string(),
                    parent_ns.to_string(),
                    p.name.clone(),
                    p.port,
                );
                let (kind, first) = kinds
                    .entry(key)
                    .or_insert_with(|| (route.kind, object().short()));
                if *kind != route.kind {
                    out.push(Warning {
                        object: object(),
                        field: format!("{field}.name"),
                        reason: format!(
                            "{first} is attached to Service {parent_ns}/{} too and is older: the \
                             Gateway API does not merge HTTPRoutes and GRPCRoutes, so this route \
                             is not used for that Service",
                            p.name
                        ),
                    });
                    continue;
                }
                parents.push((parent_ns.to_string(), p.name.clone(), p.port));
            }
            for (r, rule) in route.spec.rules.iter().enumerate() {
                for (b, backend) in rule.backend_refs.iter().flatten().enumerate() {
                    let is_service = backend.kind.as_deref().is_none_or(|k| k == "Service")
                        && backend.group.as_deref().unwrap_or_default().is_empty();
                    if !is_service || backend.weight == Some(0) {
                        continue;
                    }
                    let backend_ns = backend.namespace.as_deref().unwrap_or(ns);
                    let reason = match self.service_state(backend_ns, &backend.name) {
                        ServiceState::Ready => continue,
                        ServiceState::Missing => format!(
                            "no Service {backend_ns}/{}; its share of requests fails with 500",
                            backend.name
                        ),
                        ServiceState::NoEndpoints => format!(
                            "Service {backend_ns}/{} has no ready endpoint; its share of requests \
                             fails with 503",
                            backend.name
                        ),
                    };
                    out.push(Warning {
                        object: object(),
                        field: format!("spec.rules[{r}].backendRefs[{b}].name"),
                        reason,
                    });
                }
                for (f, filter) in rule.filters.iter().flatten().enumerate() {
                    let Some(mirror) = &filter.request_mirror else {
                        continue;
                    };
                    let target = &mirror.backend_ref;
                    let target_ns = target.namespace.as_deref().unwrap_or(ns);
                    let reason = if target_ns != ns {
                        format!(
                            "Service {target_ns}/{} is in another namespace: cross-namespace \
                             mirrors are not supported; no copies are sent",
                            target.name
                        )
                    } else {
                        match self.service_state(target_ns, &target.name) {
                            ServiceState::Ready => continue,
                            ServiceState::Missing => {
                                format!(
                                    "no Service {target_ns}/{}; no copies are sent",
                                    target.name
                                )
                            }
                            ServiceState::NoEndpoints => format!(
                                "Service {target_ns}/{} has no ready endpoint; no copies are sent",
                                target.name
                            ),
                        }
                    };
                    out.push(Warning {
                        object: object(),
                        field: format!(
                            "spec.rules[{r}].filters[{f}].requestMirror.backendRef.name"
                        ),
                        reason,
                    });
                }
                for (m, key) in match_keys(rule).into_iter().enumerate() {
                    for parent in &parents {
                        let here = format!("{} spec.rules[{r}]", object().short());
                        let first = claimed
                            .entry(parent.clone())
                            .or_default()
                            .entry(key.clone())
                            .or_insert_with(|| here.clone());
                        if *first != here {
                            let field = if rule.matches.as_ref().is_none_or(Vec::is_empty) {
                                format!("spec.rules[{r}]")
                            } else {
                                format!("spec.rules[{r}].matches[{m}]")
                            };
                            out.push(Warning {
                                object: object(),
                                field,
                                reason: format!(
                                    "the same match as {first} on Service {}/{}: requests it \
                                     matches go to that rule (the older route, or the first \
                                     rule), never to this one",
                                    parent.0, parent.1
                                ),
                            });
                        }
                    }
                }
            }
        }
    }

    fn lint_attachments(&self, out: &mut Vec<Warning>) {
        let attached = self
            .retries
            .iter()
            .map(|p| (p.target(), "RetryPolicy", &p.metadata))
            .chain(
                self.faults
                    .iter()
                    .map(|f| (f.target(), "FaultInjection", &f.metadata)),
            );
        for (target, kind, meta) in attached {
            let (what, exists) = match &target {
                PolicyTarget::Service { namespace, name } => (
                    format!("Service {namespace}/{name}"),
                    self.services
                        .contains_key(&(namespace.clone(), name.clone())),
                ),
                PolicyTarget::Route {
                    kind,
                    namespace,
                    name,
                } => (
                    format!("{} {namespace}/{name}", kind.name()),
                    self.routes.iter().any(|r| {
                        r.kind == *kind
                            && namespace_of(&r.metadata) == namespace
                            && r.metadata.name == *name
                    }),
                ),
            };
            if !exists {
                out.push(Warning {
                    object: ObjectId::of(kind, meta),
                    field: "spec.targetRef".into(),
                    reason: format!("there is no {what}; it applies to nothing"),
                });
            }
        }
    }
}

enum ServiceState {
    Missing,
    NoEndpoints,
    Ready,
}

/// Each match of a rule as a comparable key (a rule without matches matches every request,
/// as `PathPrefix /` does). Two equal keys match exactly the same requests.
fn match_keys(rule: &HttpRouteRule) -> Vec<String> {
    match rule.matches.as_deref() {
        None | Some([]) => vec![match_key(&HttpRouteMatch::default())],
        Some(matches) => matches.iter().map(match_key).collect(),
    }
}

fn match_key(m: &HttpRouteMatch) -> String {
    let path = m.path.as_ref();
    let kind = path.and_then(|p| p.kind.as_deref()).unwrap_or("PathPrefix");
    let value = path.and_then(|p| p.value.as_deref()).unwrap_or("/");
    let mut headers: Vec<String> = m
        .headers
        .iter()
        .flatten()
        .map(|h| {
            format!(
                "{}:{}={}",
                h.kind.as_deref().unwrap_or("Exact"),
                h.name.to_ascii_lowercase(),
                h.value
            )
        })
        .collect();
    headers.sort();
    let mut query: Vec<String> = m
        .query_params
        .iter()
        .flatten()
        .map(|q| {
            format!(
                "{}:{}={}",
                q.kind.as_deref().unwrap_or("Exact"),
                q.name,
                q.value
            )
        })
        .collect();
    query.sort();
    format!(
        "{kind} {value} method={} headers={headers:?} query={query:?}",
        m.method.as_deref().unwrap_or("*")
    )
}
