//! Which authorizations apply to which proxies: a policy's target Service, and the workloads
//! behind the backends of that Service's splits and routes.

use super::{Model, parse_authority};
use crate::config::{self, namespace_of};

impl Model {
    /// The authorizations that apply to the proxies of `identity` (a SPIFFE ID).
    pub fn inbound_policy(&self, identity: &str) -> Vec<pillion_proto::policy::v1::Authorization> {
        let Some(id) = pillion_proto::names::Identity::from_spiffe_id(identity) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for p in &self.policies {
            let ns = namespace_of(&p.metadata);
            if ns != id.namespace {
                continue;
            }
            let target = &p.spec.target_ref;
            let ports: Vec<u32> = match target.kind.as_str() {
                "ServiceAccount" if target.name == id.service_account => {
                    p.spec.ports.iter().map(|p| *p as u32).collect()
                }
                "Service" => {
                    let mut ports = Vec::new();
                    for (svc, only) in self.policy_services(ns, &target.name, &p.spec.ports) {
                        let serves = self.meshed_identities(ns, &svc).any(|i| i == identity);
                        if serves {
                            ports.extend(self.service_app_ports(ns, &svc, &only));
                        }
                    }
                    ports.sort_unstable();
                    ports.dedup();
                    if ports.is_empty() {
                        continue;
                    }
                    ports
                }
                _ => continue,
            };
            out.push(pillion_proto::policy::v1::Authorization {
                name: format!("{ns}/{}", p.metadata.name),
                ports,
                identities: p
                    .spec
                    .allow
                    .iter()
                    .flat_map(|r| r.identities.clone())
                    .collect(),
                unauthenticated: p.spec.allow.iter().any(|r| r.unauthenticated),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The Services whose workloads a policy on Service `name` protects, each with the ports
    /// it covers (empty: all): the Service itself and, since an apex Service of a split often has
    /// no pods of its own, every backend its TrafficSplits and HTTPRoutes send to.
    pub(super) fn policy_services(
        &self,
        ns: &str,
        name: &str,
        ports: &[i64],
    ) -> Vec<(String, Vec<i64>)> {
        let mut out = vec![(name.to_string(), ports.to_vec())];
        for split in &self.splits {
            let split_ns = namespace_of(&split.metadata);
            let apex = parse_authority(&split.spec.service, split_ns);
            if split_ns != ns || apex.is_none_or(|t| t.namespace != ns || t.name != name) {
                continue;
            }
            for b in &split.spec.backends {
                if let Some(t) = parse_authority(&b.service, ns) {
                    out.push((t.name, ports.to_vec()));
                }
            }
        }
        for route in &self.routes {
            let route_ns = namespace_of(&route.metadata);
            let attached = route.spec.parent_refs.iter().any(|p| {
                p.kind.as_deref() == Some("Service")
                    && p.name == name
                    && p.namespace.as_deref().unwrap_or(route_ns) == ns
            });
            if !attached || route_ns != ns {
                continue;
            }
            for b in route
                .spec
                .rules
                .iter()
                .flat_map(|r| r.backend_refs.iter().flatten())
            {
                let is_service = b.group.as_deref().unwrap_or_default().is_empty()
                    && b.kind.as_deref().unwrap_or("Service") == "Service";
                if is_service && b.namespace.as_deref().is_none_or(|n| n == ns) {
                    let only = b.port.map_or_else(|| ports.to_vec(), |p| vec![p]);
                    out.push((b.name.clone(), only));
                }
            }
        }
        out
    }

    /// The SPIFFE IDs that the EndpointSlices of a Service say front its endpoints.
    pub(super) fn meshed_identities<'a>(
        &'a self,
        ns: &str,
        svc: &str,
    ) -> impl Iterator<Item = &'a str> {
        self.slices
            .get(&(ns.to_string(), svc.to_string()))
            .into_iter()
            .flatten()
            .filter_map(|s| {
                s.metadata
                    .annotations
                    .get(config::IDENTITY_ANNOTATION)
                    .map(String::as_str)
            })
    }

    /// The application ports behind some (or all, when `only` is empty) ports of a Service.
    fn service_app_ports(&self, ns: &str, name: &str, only: &[i64]) -> Vec<u32> {
        let Some(svc) = self.services.get(&(ns.to_string(), name.to_string())) else {
            return Vec::new();
        };
        let mut ports: Vec<u32> = svc
            .spec
            .ports
            .iter()
            .filter(|p| only.is_empty() || only.contains(&p.port))
            .flat_map(|p| self.endpoints(ns, name, p))
            .filter_map(|e| e.address.rsplit(':').next().and_then(|p| p.parse().ok()))
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}
