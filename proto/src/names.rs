//! How authorities name Services: the rule the proxy and the control plane must share.

pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// A parsed authority: the Service and port it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub namespace: String,
    pub name: String,
    pub port: u16,
}

impl Target {
    pub fn fqdn(&self) -> String {
        format!(
            "{}.{}.svc.{CLUSTER_DOMAIN}:{}",
            self.name, self.namespace, self.port
        )
    }
}

/// Resolves an authority the way Kubernetes DNS resolves names from a pod in `source_ns`:
/// `web`, `web.ns`, `web.ns.svc`, `web.ns.svc.cluster.local`, each with an optional port (80 when
/// absent). Anything else (an IP address, an outside host name) is not a Service.
pub fn parse_authority(authority: &str, source_ns: &str) -> Option<Target> {
    let authority = authority.trim().trim_end_matches('.');
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse::<u16>().ok().filter(|p| *p != 0)?),
        Some(_) => return None, // an IPv6 literal
        None => (authority, 80),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = host.split('.').collect();
    if labels.iter().any(|l| l.is_empty()) {
        return None;
    }
    let suffix: Vec<&str> = CLUSTER_DOMAIN.split('.').collect();
    let (name, namespace) = match labels.as_slice() {
        [name] => (*name, source_ns),
        [name, ns] => (*name, *ns),
        [name, ns, "svc"] => (*name, *ns),
        [name, ns, "svc", rest @ ..] if rest == suffix.as_slice() => (*name, *ns),
        _ => return None,
    };
    Some(Target {
        namespace: namespace.to_string(),
        name: name.to_string(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_resolve_like_kubernetes_dns() {
        let t = |a| parse_authority(a, "shop");
        assert_eq!(t("web").unwrap().fqdn(), "web.shop.svc.cluster.local:80");
        assert_eq!(
            t("web.default:8080").unwrap().fqdn(),
            "web.default.svc.cluster.local:8080"
        );
        assert_eq!(
            t("web.default.svc").unwrap().fqdn(),
            "web.default.svc.cluster.local:80"
        );
        assert_eq!(
            t("web.default.svc.cluster.local.:81").unwrap().fqdn(),
            "web.default.svc.cluster.local:81"
        );
        assert_eq!(
            t("WEB.Default").unwrap().fqdn(),
            "web.default.svc.cluster.local:80"
        );
        assert!(t("example.com.au.x.y").is_none());
        assert!(t("127.0.0.1:80").is_none());
        assert!(t("[::1]:80").is_none());
        assert!(t("web:0").is_none());
    }
}
