//! Inbound authorization: the authorizations the control plane serves for this proxy's
//! identity, kept current by a watch, and the decision for one caller on one port.

use std::sync::Arc;
use std::time::Duration;

use pillion_proto::policy::v1 as pb;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::config::InboundPolicy;

pub struct Authorization {
    pub name: Arc<str>,
    ports: Vec<u16>,
    identities: Vec<String>,
    unauthenticated: bool,
}

impl Authorization {
    fn applies_to(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.contains(&port)
    }

    fn allows(&self, client: Option<&str>) -> bool {
        match client {
            None => self.unauthenticated,
            Some(id) => self.identities.iter().any(|p| glob(p, id)),
        }
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, s: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = s.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// Why a caller was refused: the authorization set that did not allow it, or the default.
#[derive(Debug)]
pub struct Denied {
    pub by: Arc<str>,
}

#[derive(Clone)]
pub struct Policies {
    rx: watch::Receiver<Arc<Vec<Authorization>>>,
    default: InboundPolicy,
}

impl Policies {
    /// Only the default policy (a proxy without identity is not addressed by authorizations).
    pub fn fixed(default: InboundPolicy) -> Self {
        Policies {
            rx: watch::channel(Arc::new(Vec::new())).1,
            default,
        }
    }

    /// Watches the authorizations for `identity`, reconnecting with backoff; until the first
    /// answer (and whenever the control plane is away) the last known set applies.
    pub fn watch(
        channel: Channel,
        identity: String,
        workload: String,
        default: InboundPolicy,
    ) -> Self {
        let (tx, rx) = watch::channel(Arc::new(Vec::new()));
        tokio::spawn(async move {
            let mut client = pb::inbound_policy_client::InboundPolicyClient::new(channel);
            let mut backoff = Duration::from_millis(100);
            loop {
                let req = pb::InboundPolicyRequest {
                    identity: identity.clone(),
                    workload: workload.clone(),
                };
                match client.watch(req).await {
                    Ok(resp) => {
                        let mut stream = resp.into_inner();
                        while let Ok(Some(update)) = stream.message().await {
                            backoff = Duration::from_millis(100);
                            tracing::info!(version = %update.version, authorizations = update.authorizations.len(), "inbound policy updated");
                            tx.send_replace(Arc::new(compile(update)));
                        }
                    }
                    Err(status) => {
                        tracing::debug!(error = %status.message(), "inbound policy watch failed; retrying");
                    }
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
        Policies { rx, default }
    }

    /// Whether `client` (its SPIFFE ID; `None` for plaintext) may call application port `port`.
    pub fn decide(&self, port: u16, client: Option<&str>) -> Result<(), Denied> {
        let all = self.rx.borrow().clone();
        let applicable: Vec<&Authorization> = all.iter().filter(|a| a.applies_to(port)).collect();
        if let Some(first) = applicable.first() {
            return if applicable.iter().any(|a| a.allows(client)) {
                Ok(())
            } else {
                Err(Denied {
                    by: first.name.clone(),
                })
            };
        }
        let allowed = match self.default {
            InboundPolicy::AllUnauthenticated => true,
            InboundPolicy::AllAuthenticated => client.is_some(),
            InboundPolicy::Deny => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(Denied {
                by: Arc::from("default"),
            })
        }
    }

    pub fn describe(&self) -> serde_json::Value {
        let all = self.rx.borrow().clone();
        serde_json::json!(
            all.iter()
                .map(|a| serde_json::json!({
                    "name": &*a.name,
                    "ports": a.ports,
                    "identities": a.identities,
                    "unauthenticated": a.unauthenticated,
                }))
                .collect::<Vec<_>>()
        )
    }
}

fn compile(update: pb::InboundPolicyUpdate) -> Vec<Authorization> {
    update
        .authorizations
        .into_iter()
        .map(|a| Authorization {
            name: Arc::from(a.name),
            ports: a
                .ports
                .into_iter()
                .filter_map(|p| u16::try_from(p).ok())
                .collect(),
            identities: a.identities,
            unauthenticated: a.unauthenticated,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", "spiffe://x/ns/a/sa/b"));
        assert!(glob(
            "spiffe://cluster.local/ns/shop/*",
            "spiffe://cluster.local/ns/shop/sa/cart"
        ));
        assert!(!glob(
            "spiffe://cluster.local/ns/shop/*",
            "spiffe://cluster.local/ns/shopping/sa/x"
        ));
        assert!(glob("spiffe://*/ns/a/sa/b", "spiffe://td/ns/a/sa/b"));
        assert!(glob("spiffe://c/ns/a/sa/b", "spiffe://c/ns/a/sa/b"));
        assert!(!glob("spiffe://c/ns/a/sa/b", "spiffe://c/ns/a/sa/bb"));
        assert!(glob("a*b*c", "aXbYc"));
        assert!(!glob("a*b*c", "aXcYb"));
    }

    #[test]
    fn authorizations_override_the_default_on_their_ports() {
        let (tx, rx) = watch::channel(Arc::new(Vec::new()));
        let p = Policies {
            rx,
            default: InboundPolicy::AllUnauthenticated,
        };
        tx.send_replace(Arc::new(compile(pb::InboundPolicyUpdate {
            version: "1".into(),
            authorizations: vec![pb::Authorization {
                name: "default/web".into(),
                ports: vec![8080],
                identities: vec!["spiffe://cluster.local/ns/default/sa/client".into()],
                unauthenticated: false,
            }],
        })));
        assert!(
            p.decide(8080, Some("spiffe://cluster.local/ns/default/sa/client"))
                .is_ok()
        );
        assert_eq!(
            &*p.decide(8080, Some("spiffe://cluster.local/ns/default/sa/other"))
                .unwrap_err()
                .by,
            "default/web"
        );
        assert!(p.decide(8080, None).is_err());
        assert!(
            p.decide(9090, None).is_ok(),
            "other ports keep the default policy"
        );
    }
}
