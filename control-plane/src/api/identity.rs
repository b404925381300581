//! The gRPC Identity service: checks that the token proves the identity asked for, then has the
//! CA sign the CSR's public key.
//!
//! Files mode proves identities with bootstrap tokens listed in a tokens file, one per line:
//! `<token> <namespace>/<service-account>` (blank lines and `#` comments allowed). The file is
//! read again whenever it changes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use pillion_proto::identity::v1 as pb;
use pillion_proto::names::Identity;
use tonic::{Request, Response, Status};

use crate::pki::ca::Ca;

/// Token → `(namespace, service account)`, as last read from the tokens file.
struct Tokens {
    path: PathBuf,
    stamp: Option<SystemTime>,
    map: HashMap<String, (String, String)>,
}

impl Tokens {
    fn refresh(&mut self) {
        let stamp = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if stamp.is_some() && stamp == self.stamp {
            return;
        }
        self.stamp = stamp;
        match std::fs::read_to_string(&self.path) {
            Ok(text) => match parse_tokens(&text) {
                Ok(map) => {
                    tracing::info!(file = %self.path.display(), tokens = map.len(), "identity tokens read");
                    self.map = map;
                }
                Err((line, reason)) => {
                    tracing::error!(file = %self.path.display(), line, %reason, "identity tokens refused; the previous ones stay in force");
                }
            },
            Err(e) => {
                tracing::error!(file = %self.path.display(), error = %e, "cannot read the identity tokens; the previous ones stay in force");
            }
        }
    }
}

fn parse_tokens(text: &str) -> Result<HashMap<String, (String, String)>, (usize, String)> {
    let mut map = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(token), Some(who), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err((
                i + 1,
                "expected `<token> <namespace>/<service-account>`".into(),
            ));
        };
        let Some((ns, sa)) = who.split_once('/') else {
            return Err((
                i + 1,
                format!("`{who}` is not <namespace>/<service-account>"),
            ));
        };
        if ns.is_empty() || sa.is_empty() {
            return Err((
                i + 1,
                format!("`{who}` is not <namespace>/<service-account>"),
            ));
        }
        map.insert(token.to_string(), (ns.to_string(), sa.to_string()));
    }
    Ok(map)
}

pub struct IdentityService {
    ca: Arc<Ca>,
    tokens: Option<Mutex<Tokens>>,
    /// Kubernetes mode: tokens are projected service-account tokens, checked by TokenReview.
    reviews: Option<TokenReviews>,
    metrics: Arc<crate::admin::Metrics>,
}

/// Asks the API server who a projected service-account token belongs to, for the audience
/// the injector gives proxies' tokens.
pub struct TokenReviews {
    pub client: kube::Client,
    pub audience: String,
}

impl TokenReviews {
    async fn holder(&self, token: &str) -> Option<(String, String)> {
        use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
        let done = match api.create(&kube::api::PostParams::default(), &review).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "TokenReview failed");
                return None;
            }
        };
        let status = done.status?;
        if status.authenticated != Some(true)
            || !status
                .audiences
                .unwrap_or_default()
                .contains(&self.audience)
        {
            return None;
        }
        // Service accounts authenticate as system:serviceaccount:<namespace>:<name>.
        let username = status.user?.username?;
        let rest = username.strip_prefix("system:serviceaccount:")?;
        let (ns, sa) = rest.split_once(':')?;
        Some((ns.to_string(), sa.to_string()))
    }
}

impl IdentityService {
    pub fn new(
        ca: Arc<Ca>,
        tokens_file: Option<PathBuf>,
        reviews: Option<TokenReviews>,
        metrics: Arc<crate::admin::Metrics>,
    ) -> Self {
        let tokens = tokens_file.map(|path| {
            let mut t = Tokens {
                path,
                stamp: None,
                map: HashMap::new(),
            };
            t.refresh();
            Mutex::new(t)
        });
        IdentityService {
            ca,
            tokens,
            reviews,
            metrics,
        }
    }

    /// Who the token says its bearer is.
    async fn holder(&self, token: &[u8]) -> Option<(String, String)> {
        let token = std::str::from_utf8(token).ok()?.trim();
        if let Some(reviews) = &self.reviews {
            return reviews.holder(token).await;
        }
        let mut tokens = self
            .tokens
            .as_ref()?
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        tokens.refresh();
        tokens.map.get(token).cloned()
    }
}

#[tonic::async_trait]
impl pb::identity_server::Identity for IdentityService {
    async fn certify(
        &self,
        request: Request<pb::CertifyRequest>,
    ) -> Result<Response<pb::CertifyResponse>, Status> {
        let peer = request.remote_addr();
        // A proxy that presents its certificate may renew only that identity.
        if let Some(holder) = crate::pki::serving::peer_identity(&request)
            && holder.spiffe_id() != request.get_ref().identity
        {
            tracing::warn!(holder = %holder.spiffe_id(), asked = %request.get_ref().identity, "certificate refused: the caller's certificate is for another identity");
            return Err(Status::permission_denied(
                "your certificate is for another identity",
            ));
        }
        let req = request.into_inner();
        let Some(identity) = Identity::from_spiffe_id(&req.identity) else {
            return Err(Status::invalid_argument(format!(
                "`{}` is not a SPIFFE ID like spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>",
                req.identity
            )));
        };
        if identity.trust_domain != self.ca.trust_domain {
            return Err(Status::permission_denied(format!(
                "trust domain `{}` is not this mesh's (`{}`)",
                identity.trust_domain, self.ca.trust_domain
            )));
        }
        match self.holder(&req.token).await {
            Some((ns, sa)) if ns == identity.namespace && sa == identity.service_account => {}
            Some((ns, sa)) => {
                tracing::warn!(?peer, asked = %req.identity, token_for = %format!("{ns}/{sa}"), "certificate refused: the token is for another identity");
                return Err(Status::permission_denied(format!(
                    "the token does not prove {}",
                    req.identity
                )));
            }
            None => {
                tracing::warn!(?peer, asked = %req.identity, "certificate refused: unknown or missing token");
                return Err(Status::unauthenticated("unknown or missing token"));
            }
        }
        let certified = self
            .ca
            .certify(&identity, &req.csr_der)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let valid_until_unix_ms = certified
            .not_after
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.metrics.certificates_issued.inc();
        tracing::info!(?peer, identity = %req.identity, valid_until_unix_ms, "certificate issued");
        Ok(Response::new(pb::CertifyResponse {
            leaf_der: certified.leaf_der,
            intermediates_der: certified.intermediates_der,
            valid_until_unix_ms,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_file_lines() {
        let map = parse_tokens("# comment\n\nabc default/web\n  xyz   shop/cart  \n").unwrap();
        assert_eq!(map["abc"], ("default".into(), "web".into()));
        assert_eq!(map["xyz"], ("shop".into(), "cart".into()));
        assert_eq!(parse_tokens("abc web").unwrap_err().0, 1);
        assert_eq!(parse_tokens("ok a/b\nabc a/b extra").unwrap_err().0, 2);
    }
}
