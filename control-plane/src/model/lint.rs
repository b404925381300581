//! Configuration that is valid but almost surely a mistake, reported as warnings.

use super::{Model, parse_authority};
use crate::config::{PolicyTarget, namespace_of};

impl Model {
    /// Configuration that is valid but almost surely not what its author meant: an
    /// AuthorizationPolicy that protects no workload, a TrafficSplit backend that names no
    /// Service. Logged as warnings at every change.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
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
                out.push(format!(
                    "AuthorizationPolicy {ns}/{}: no meshed workload is behind Service {ns}/{} \
                     (nor behind the backends of its TrafficSplits and HTTPRoutes): it protects nothing",
                    p.metadata.name, target.name
                ));
            }
        }
        for split in &self.splits {
            let ns = namespace_of(&split.metadata);
            for (i, b) in split.spec.backends.iter().enumerate() {
                let name = parse_authority(&b.service, ns).map_or(b.service.clone(), |t| t.name);
                if !self.services.contains_key(&(ns.to_string(), name.clone())) {
                    out.push(format!(
                        "TrafficSplit {ns}/{}: field `spec.backends[{i}].service`: no Service {ns}/{name}; \
                         its share of requests fails with 500",
                        split.metadata.name
                    ));
                }
            }
        }
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
                PolicyTarget::HttpRoute { namespace, name } => (
                    format!("HTTPRoute {namespace}/{name}"),
                    self.routes.iter().any(|r| {
                        namespace_of(&r.metadata) == namespace && r.metadata.name == *name
                    }),
                ),
            };
            if !exists {
                out.push(format!(
                    "{kind} {}/{}: field `spec.targetRef`: there is no {what}; it applies to nothing",
                    namespace_of(meta),
                    meta.name
                ));
            }
        }
        out
    }
}
