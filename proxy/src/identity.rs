//! The proxy's workload identity: a key pair made here and never sent anywhere, a certificate
//! for it from the control plane's CA, renewed at 70 % of its lifetime, and the rustls
//! configurations that present it (inbound server, outbound client) and check peers against
//! the trust anchors. A renewed certificate is used by new handshakes at once; established
//! connections are not touched.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pillion_proto::identity::v1 as pb;
use pillion_proto::names::Identity;
use rand::Rng;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::watch;

/// ALPN between proxies: HTTP/2 carries every HTTP request; the TCP protocol carries opaque
/// connections, one per TLS connection.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
pub const ALPN_TCP: &[u8] = b"pillion.tcp/1";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("PILLION_TRUST_ANCHORS: {0}")]
    Anchors(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("key generation: {0}")]
    Key(String),
}

/// The settings `PILLION_*` variables give.
#[derive(Debug, Clone)]
pub struct IdentitySettings {
    pub identity: Identity,
    pub token_file: PathBuf,
    /// PEM of one or more trust anchors.
    pub trust_anchors_pem: String,
}

type Current = watch::Receiver<Option<Arc<CertifiedKey>>>;

/// Hands rustls whatever certificate is current.
struct Resolver(Current);

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Resolver")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.borrow().clone()
    }
}

impl ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.borrow().clone()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

pub struct LocalIdentity {
    pub identity: Identity,
    pub spiffe_id: Arc<str>,
    pub server_config: Arc<ServerConfig>,
    pub client_config: Arc<ClientConfig>,
    current: Current,
    tx: watch::Sender<Option<Arc<CertifiedKey>>>,
    key: rcgen::KeyPair,
    settings: IdentitySettings,
    provider: Arc<CryptoProvider>,
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Parses trust anchors (one or more PEM certificates).
pub fn roots(pem: &str) -> Result<RootCertStore, IdentityError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| IdentityError::Anchors(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| IdentityError::Anchors(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(IdentityError::Anchors("no certificate in the PEM".into()));
    }
    Ok(roots)
}

impl LocalIdentity {
    pub fn new(settings: IdentitySettings) -> Result<Arc<Self>, IdentityError> {
        let provider = provider();
        let roots = Arc::new(roots(&settings.trust_anchors_pem)?);
        let (tx, current) = watch::channel(None);
        let resolver = Arc::new(Resolver(current.clone()));
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| IdentityError::Anchors(e.to_string()))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(resolver.clone());
        server.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec(), ALPN_TCP.to_vec()];
        let mut client = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_cert_resolver(resolver);
        client.alpn_protocols = vec![ALPN_H2.to_vec()];
        // ECDSA P-256, made here; only its public half leaves, inside the CSR.
        let key = rcgen::KeyPair::generate().map_err(|e| IdentityError::Key(e.to_string()))?;
        Ok(Arc::new(LocalIdentity {
            spiffe_id: Arc::from(settings.identity.spiffe_id()),
            identity: settings.identity.clone(),
            server_config: Arc::new(server),
            client_config: Arc::new(client),
            current,
            tx,
            key,
            settings,
            provider,
        }))
    }

    /// A client configuration that offers `alpn` (for connections of one kind).
    pub fn client_config_with_alpn(&self, alpn: &[u8]) -> Arc<ClientConfig> {
        let mut c = (*self.client_config).clone();
        c.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(c)
    }

    /// True once a certificate is held.
    pub fn is_ready(&self) -> bool {
        self.current.borrow().is_some()
    }

    /// Resolves once a certificate is held.
    pub async fn ready(&self) {
        let mut rx = self.current.clone();
        let _ = rx.wait_for(Option::is_some).await;
    }

    fn csr(&self) -> Result<Vec<u8>, IdentityError> {
        let mut params = rcgen::CertificateParams::default();
        if let Ok(uri) = self.spiffe_id.to_string().try_into() {
            params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
        }
        params
            .serialize_request(&self.key)
            .map(|csr| csr.der().to_vec())
            .map_err(|e| IdentityError::Key(e.to_string()))
    }

    fn certified_key(&self, resp: &pb::CertifyResponse) -> Result<CertifiedKey, IdentityError> {
        let mut chain = vec![CertificateDer::from(resp.leaf_der.clone())];
        chain.extend(
            resp.intermediates_der
                .iter()
                .map(|d| CertificateDer::from(d.clone())),
        );
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()));
        CertifiedKey::from_der(chain, key, &self.provider).map_err(IdentityError::Tls)
    }

    /// Obtains and renews the certificate for as long as the proxy runs.
    /// `expiry` shows when the certificate held expires (Unix seconds).
    pub async fn run(
        self: Arc<Self>,
        channel: tonic::transport::Channel,
        expiry: prometheus_client::metrics::gauge::Gauge<i64, std::sync::atomic::AtomicI64>,
    ) {
        let mut client = pb::identity_client::IdentityClient::new(channel);
        let mut backoff = Duration::from_millis(200);
        let mut expires: Option<SystemTime> = None;
        loop {
            let wait = match self.renew(&mut client).await {
                Ok((valid_from, valid_until)) => {
                    backoff = Duration::from_millis(200);
                    expires = Some(valid_until);
                    if let Ok(t) = valid_until.duration_since(UNIX_EPOCH) {
                        expiry.set(t.as_secs() as i64);
                    }
                    renew_after(valid_from, valid_until)
                }
                Err(e) => {
                    let left = expires.and_then(|t| t.duration_since(SystemTime::now()).ok());
                    tracing::warn!(error = %e, expires_in_s = left.map(|d| d.as_secs()), "cannot renew the certificate; retrying");
                    if left.is_none() && expires.is_some() {
                        // Expired: stop presenting it, peers would refuse it anyway.
                        self.tx.send_replace(None);
                    }
                    let wait = jitter(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    // Never sleep past the expiry of what we hold.
                    left.map_or(wait, |l| wait.min(l.max(Duration::from_millis(50))))
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// One certification; returns the validity of the new certificate.
    async fn renew(
        &self,
        client: &mut pb::identity_client::IdentityClient<tonic::transport::Channel>,
    ) -> Result<(SystemTime, SystemTime), String> {
        let token = std::fs::read(&self.settings.token_file).map_err(|e| {
            format!(
                "PILLION_IDENTITY_TOKEN_FILE {}: {e}",
                self.settings.token_file.display()
            )
        })?;
        let csr_der = self.csr().map_err(|e| e.to_string())?;
        let req = pb::CertifyRequest {
            identity: self.spiffe_id.to_string(),
            token,
            csr_der,
        };
        let resp = tokio::time::timeout(Duration::from_secs(10), client.certify(req))
            .await
            .map_err(|_| "the control plane did not answer in time".to_string())?
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        let key = self.certified_key(&resp).map_err(|e| e.to_string())?;
        let valid_until =
            UNIX_EPOCH + Duration::from_millis(resp.valid_until_unix_ms.max(0) as u64);
        let now = SystemTime::now();
        self.tx.send_replace(Some(Arc::new(key)));
        tracing::info!(identity = %self.spiffe_id, valid_for_s = valid_until.duration_since(now).map_or(0, |d| d.as_secs()), "certificate obtained");
        Ok((now, valid_until))
    }
}

/// 70 % of the way from `from` to `until`, give or take 5 % of the lifetime, so that a fleet
/// of proxies started together does not renew together.
fn renew_after(from: SystemTime, until: SystemTime) -> Duration {
    let life = until.duration_since(from).unwrap_or_default();
    let spread = life.as_millis() as u64 / 20;
    let offset = rand::rng().random_range(0..=spread * 2);
    (life * 7 / 10 + Duration::from_millis(offset)).saturating_sub(Duration::from_millis(spread))
}

fn jitter(d: Duration) -> Duration {
    let ms = d.as_millis() as u64;
    Duration::from_millis(ms / 2 + rand::rng().random_range(0..=ms / 2))
}

/// The SPIFFE ID in a verified peer certificate's URI SAN.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with("spiffe://") => {
            Some(uri.to_string())
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anchor_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn trust_bundles_may_hold_several_anchors() {
        let bundle = format!("{}{}", anchor_pem(), anchor_pem());
        assert_eq!(roots(&bundle).unwrap().len(), 2);
        assert!(roots("no pem here").is_err());
    }

    #[test]
    fn renewal_comes_at_about_seventy_percent() {
        let from = SystemTime::now();
        let until = from + Duration::from_secs(100);
        for _ in 0..100 {
            let d = renew_after(from, until).as_secs_f64();
            assert!((65.0..=75.0).contains(&d), "{d}");
        }
    }
}
