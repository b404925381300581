//! How authorities name Services: the rule the proxy and the control plane must share.

pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// A parsed authority: the Service and port it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub namespace: String,
    pub name: String,
    /// The port the authority named, or 80 when it named none.
    pub port: u16,
    /// Whether the authority named the port. A portless authority goes to port 80 when the
    /// Service has it, else to the Service's only port (what gRPC and etcd clients expect of
    /// `grpc-echo` for a Service listening on 50051).
    pub port_given: bool,
}

impl Target {
    /// `name.namespace.svc.cluster.local:port`, without the port when the authority named none
    /// (the control plane picks it).
    pub fn fqdn(&self) -> String {
        write_fqdn(
            &self.name,
            &self.namespace,
            self.port_given.then_some(self.port),
        )
    }
}

/// `name.namespace.svc.cluster.local[:port]`, lowercased. Built by hand rather than with
/// `format!`: the proxy does this for every request, and the formatting machinery cost ~1,600
/// instructions of the ~55,000 a request took.
fn write_fqdn(name: &str, namespace: &str, port: Option<u16>) -> String {
    let mut s = String::with_capacity(name.len() + namespace.len() + CLUSTER_DOMAIN.len() + 12);
    s.push_str(name);
    s.push('.');
    s.push_str(namespace);
    s.push_str(".svc.");
    s.push_str(CLUSTER_DOMAIN);
    s.make_ascii_lowercase();
    if let Some(mut n) = port {
        s.push(':');
        let mut digits = [0u8; 5];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        if let Ok(d) = std::str::from_utf8(&digits[at..]) {
            s.push_str(d);
        }
    }
    s
}

/// Longer authorities are no Service name (a DNS name is at most 253 bytes, a port 6 more).
pub const MAX_AUTHORITY_LEN: usize = 260;

/// What an authority names, borrowed from it: Service name, namespace, port, whether given.
type Named<'a> = (&'a str, &'a str, u16, bool);

/// Resolves an authority the way Kubernetes DNS resolves names from a pod in `source_ns`:
/// `web`, `web.ns`, `web.ns.svc`, `web.ns.svc.cluster.local`, each with an optional port.
/// Anything else (an IP address, an outside host name) is not a Service.
pub fn parse_authority(authority: &str, source_ns: &str) -> Option<Target> {
    let (name, namespace, port, port_given) = named(authority, source_ns)?;
    Some(Target {
        namespace: namespace.to_ascii_lowercase(),
        name: name.to_ascii_lowercase(),
        port,
        port_given,
    })
}

/// `parse_authority(authority, source_ns)?.fqdn()` in one allocation (the proxy's per-request
/// path).
pub fn fqdn_of(authority: &str, source_ns: &str) -> Option<String> {
    let (name, namespace, port, port_given) = named(authority, source_ns)?;
    Some(write_fqdn(name, namespace, port_given.then_some(port)))
}

fn named<'a>(authority: &'a str, source_ns: &'a str) -> Option<Named<'a>> {
    if authority.len() > MAX_AUTHORITY_LEN {
        return None;
    }
    // Searched byte by byte rather than with `str` patterns: this runs for every request the
    // proxy routes, and the generic searchers (`trim`, `rsplit_once`, `split`) cost ~500
    // instructions on a short name, more than the rest of the name's resolution.
    let authority = if authority.is_ascii() {
        authority.trim_ascii()
    } else {
        authority.trim()
    };
    let authority = trim_dots(authority);
    let (host, port, port_given) = match authority.bytes().rposition(|b| b == b':') {
        Some(at) => {
            let host = &authority[..at];
            if host.bytes().any(|b| b == b':') {
                return None; // an IPv6 literal
            }
            let port = authority[at + 1..]
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)?;
            (host, port, true)
        }
        None => (authority, 80, false),
    };
    let host = trim_dots(host);
    // At most five labels name a Service (`name.ns.svc.cluster.local`); no allocation.
    let mut labels = [""; 5];
    let mut count = 0;
    let mut start = 0;
    let bytes = host.as_bytes();
    for at in 0..=bytes.len() {
        match bytes.get(at) {
            Some(b'.') | None => {}
            Some(b) if b.is_ascii_alphanumeric() || *b == b'-' => continue,
            Some(_) => return None,
        }
        let label = &host[start..at];
        if label.is_empty() || label.len() > 63 || count == labels.len() {
            return None;
        }
        labels[count] = label;
        count += 1;
        start = at + 1;
    }
    let (name, namespace) = match &labels[..count] {
        [name] => (*name, source_ns),
        [name, ns] => (*name, *ns),
        [name, ns, svc] if svc.eq_ignore_ascii_case("svc") => (*name, *ns),
        [name, ns, svc, d1, d2]
            if svc.eq_ignore_ascii_case("svc")
                && d1.eq_ignore_ascii_case(DOMAIN_FIRST)
                && d2.eq_ignore_ascii_case(DOMAIN_REST) =>
        {
            (*name, *ns)
        }
        _ => return None,
    };
    Some((name, namespace, port, port_given))
}

/// `CLUSTER_DOMAIN`'s two labels (a test ties them to it).
const DOMAIN_FIRST: &str = "cluster";
const DOMAIN_REST: &str = "local";

/// Without trailing dots (a fully qualified name's, or a stray one before the port).
fn trim_dots(s: &str) -> &str {
    let keep = s.bytes().rposition(|b| b != b'.').map_or(0, |at| at + 1);
    &s[..keep]
}

/// A workload identity: a Kubernetes service account in a trust domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl Identity {
    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, the URI SAN of its
    /// certificates.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }

    /// The same identity as a DNS name, also in its certificates (as a DNS SAN), so that the
    /// standard TLS server-name check verifies a peer's identity:
    /// `<sa>.<ns>.serviceaccount.identity.pillion.<trust-domain>`.
    pub fn dns_name(&self) -> String {
        format!(
            "{}.{}.serviceaccount.identity.pillion.{}",
            self.service_account, self.namespace, self.trust_domain
        )
    }

    /// Parses a SPIFFE ID of Pillion's shape.
    pub fn from_spiffe_id(id: &str) -> Option<Identity> {
        let rest = id.strip_prefix("spiffe://")?;
        let (td, path) = rest.split_once('/')?;
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["ns", ns, "sa", sa] if [td, ns, sa].iter().all(|p| dns_label_ok(p)) => {
                Some(Identity {
                    trust_domain: td.to_string(),
                    namespace: ns.to_string(),
                    service_account: sa.to_string(),
                })
            }
            _ => None,
        }
    }
}

/// Lowercase letters, digits, `-` and `.`, not empty: what Kubernetes names and trust domains
/// are made of (and so safe inside a DNS name).
fn dns_label_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip() {
        let id = Identity::from_spiffe_id("spiffe://cluster.local/ns/shop/sa/cart").unwrap();
        assert_eq!(id.namespace, "shop");
        assert_eq!(id.spiffe_id(), "spiffe://cluster.local/ns/shop/sa/cart");
        assert_eq!(
            id.dns_name(),
            "cart.shop.serviceaccount.identity.pillion.cluster.local"
        );
        assert!(Identity::from_spiffe_id("spiffe://cluster.local/ns/shop/sa/").is_none());
        assert!(Identity::from_spiffe_id("spiffe://cluster.local/ns/Shop/sa/x").is_none());
        assert!(Identity::from_spiffe_id("https://cluster.local/ns/a/sa/b").is_none());
        assert!(Identity::from_spiffe_id("spiffe://cluster.local/ns/a/sa/b/c").is_none());
    }

    #[test]
    fn the_domain_labels_are_the_cluster_domain() {
        assert_eq!(format!("{DOMAIN_FIRST}.{DOMAIN_REST}"), CLUSTER_DOMAIN);
    }

    #[test]
    fn authorities_resolve_like_kubernetes_dns() {
        let t = |a| parse_authority(a, "shop");
        assert_eq!(t("web").unwrap().fqdn(), "web.shop.svc.cluster.local");
        assert_eq!(t("web").unwrap().port, 80);
        assert_eq!(t("web:80").unwrap().fqdn(), "web.shop.svc.cluster.local:80");
        assert_eq!(
            t("web.default:8080").unwrap().fqdn(),
            "web.default.svc.cluster.local:8080"
        );
        assert_eq!(
            t("web.default.svc").unwrap().fqdn(),
            "web.default.svc.cluster.local"
        );
        assert_eq!(
            t("web.default.svc.cluster.local.:81").unwrap().fqdn(),
            "web.default.svc.cluster.local:81"
        );
        assert_eq!(
            t("WEB.Default").unwrap().fqdn(),
            "web.default.svc.cluster.local"
        );
        assert!(parse_authority(&"a".repeat(300), "shop").is_none());
        assert!(t("we b").is_none());
        assert!(t("web/x").is_none());
        assert!(t("example.com.au.x.y").is_none());
        assert!(t("127.0.0.1:80").is_none());
        assert!(t("[::1]:80").is_none());
        assert!(t("web:0").is_none());
        assert_eq!(
            t("Web.Shop.SVC.Cluster.Local:65535").unwrap().fqdn(),
            "web.shop.svc.cluster.local:65535"
        );
        assert_eq!(t("web:1").unwrap().fqdn(), "web.shop.svc.cluster.local:1");
        assert!(t("web.shop.svc.cluster").is_none());
        assert!(t("web.shop.svc.cluster.local.x").is_none());
        assert!(t("web.shop.svc.other.local").is_none());
        assert!(t("web..shop").is_none());
        assert_eq!(
            t(" web.:8080 ").unwrap().fqdn(),
            "web.shop.svc.cluster.local:8080"
        );
        assert_eq!(
            t("\u{3000}web.").unwrap().fqdn(),
            "web.shop.svc.cluster.local"
        );
        assert!(t("web:").is_none());
        assert!(t(".web").is_none());
        assert!(t("").is_none());
        assert!(t(":80").is_none());
        assert!(t("wéb").is_none());
        assert!(t("a.b.c.d.e.f").is_none());
        // The proxy's one-allocation path agrees with parse + fqdn.
        for a in [
            "web",
            "Web.Shop:8080",
            "web.default.svc",
            "web.default.svc.cluster.local.:81",
            "web:0",
            "1.2.3.4",
        ] {
            assert_eq!(fqdn_of(a, "shop"), t(a).map(|t| t.fqdn()), "{a}");
        }
    }
}
