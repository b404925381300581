//! The mesh's certificate authority: a trust anchor and an issuer that signs workload leaves.
//!
//! Layout of the CA directory (`PILLION_CA_DIR`), all PEM:
//! - `trust-anchors.pem`: the anchors proxies trust; may hold several, so anchors can rotate.
//! - `issuer.crt`, `issuer.key`: the intermediate that signs leaves (its key is 0600).
//! - `anchor.key`: only in a generated development CA (0600); a production anchor key stays
//!   offline and is not needed here.
//!
//! The CA takes nothing from a CSR but its public key (after checking the CSR's signature): the
//! names, lifetime, key usages and basic constraints of a leaf are the CA's decision.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pillion_proto::names::Identity;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateSigningRequestDer;

pub const ANCHORS_FILE: &str = "trust-anchors.pem";
pub const ISSUER_CERT_FILE: &str = "issuer.crt";
pub const ISSUER_KEY_FILE: &str = "issuer.key";
pub const ANCHOR_KEY_FILE: &str = "anchor.key";

/// Certificate times have one-second granularity and clocks drift: leaves start a little in the
/// past so a peer whose clock is slightly behind accepts them at once.
const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Bad { path: PathBuf, reason: String },
    #[error("cannot generate the CA: {0}")]
    Generate(rcgen::Error),
    #[error("the certificate signing request is not valid: {0}")]
    Csr(rcgen::Error),
    #[error("cannot sign: {0}")]
    Sign(rcgen::Error),
}

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    issuer_der: Vec<u8>,
    pub anchors_pem: String,
    pub trust_domain: String,
    pub leaf_lifetime: Duration,
}

/// A signed leaf and the chain to send with it.
pub struct Certified {
    pub leaf_der: Vec<u8>,
    pub intermediates_der: Vec<Vec<u8>>,
    pub not_after: SystemTime,
}

impl Ca {
    /// Loads the CA from `dir`, generating a development CA there first if it has none.
    pub fn load_or_generate(
        dir: &Path,
        trust_domain: &str,
        leaf_lifetime: Duration,
    ) -> Result<Ca, CaError> {
        if !dir.join(ISSUER_KEY_FILE).exists() {
            generate(dir, trust_domain)?;
        }
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| CaError::Io { path, source })
        };
        let bad = |name: &str, reason: String| CaError::Bad {
            path: dir.join(name),
            reason,
        };
        let key_pem = read(ISSUER_KEY_FILE)?;
        let cert_pem = read(ISSUER_CERT_FILE)?;
        let anchors_pem = read(ANCHORS_FILE)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| bad(ISSUER_KEY_FILE, e.to_string()))?;
        let issuer_der = pem_blocks(&cert_pem, "CERTIFICATE")
            .into_iter()
            .next()
            .ok_or_else(|| bad(ISSUER_CERT_FILE, "no CERTIFICATE block".into()))?;
        if pem_blocks(&anchors_pem, "CERTIFICATE").is_empty() {
            return Err(bad(ANCHORS_FILE, "no CERTIFICATE block".into()));
        }
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(|e| bad(ISSUER_CERT_FILE, e.to_string()))?;
        tracing::info!(dir = %dir.display(), %trust_domain, "certificate authority loaded");
        Ok(Ca {
            issuer,
            issuer_der,
            anchors_pem,
            trust_domain: trust_domain.to_string(),
            leaf_lifetime,
        })
    }

    /// Signs a leaf for `identity` with the public key of `csr_der`.
    pub fn certify(&self, identity: &Identity, csr_der: &[u8]) -> Result<Certified, CaError> {
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(CaError::Csr)?;
        self.sign(identity, &csr.public_key)
    }

    /// Signs a leaf for `identity` and `public_key` (also the control plane's own serving key).
    pub fn sign(
        &self,
        identity: &Identity,
        public_key: &impl rcgen::PublicKeyData,
    ) -> Result<Certified, CaError> {
        let now = SystemTime::now();
        let not_after = now + self.leaf_lifetime;
        let mut params = CertificateParams::default();
        params.not_before = (now - BACKDATE).into();
        params.not_after = not_after.into();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("{}.{}", identity.service_account, identity.namespace),
        );
        params.distinguished_name = dn;
        params.subject_alt_names = vec![
            SanType::URI(identity.spiffe_id().try_into().map_err(CaError::Sign)?),
            SanType::DnsName(identity.dns_name().try_into().map_err(CaError::Sign)?),
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(public_key, &self.issuer)
            .map_err(CaError::Sign)?;
        // Whole seconds: what the certificate can say.
        let secs = not_after
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(Certified {
            leaf_der: leaf.der().to_vec(),
            intermediates_der: vec![self.issuer_der.clone()],
            not_after: UNIX_EPOCH + Duration::from_secs(secs),
        })
    }
}

/// Writes a development CA: an anchor valid ten years and an issuer valid one year.
fn generate(dir: &Path, trust_domain: &str) -> Result<(), CaError> {
    std::fs::create_dir_all(dir).map_err(|source| CaError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let now = SystemTime::now();
    let year = Duration::from_secs(365 * 24 * 3600);
    let ca_params = |cn: String, lifetime: Duration, path_len: u8| {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.not_before = (now - BACKDATE).into();
        p.not_after = (now + lifetime).into();
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p
    };
    let anchor_key = KeyPair::generate().map_err(CaError::Generate)?;
    let anchor_params = ca_params(
        format!("Pillion trust anchor ({trust_domain})"),
        10 * year,
        1,
    );
    let anchor = anchor_params
        .self_signed(&anchor_key)
        .map_err(CaError::Generate)?;
    let issuer_key = KeyPair::generate().map_err(CaError::Generate)?;
    let mut issuer_params = ca_params(format!("Pillion issuer ({trust_domain})"), year, 0);
    issuer_params.use_authority_key_identifier_extension = true;
    let anchor_issuer = Issuer::new(anchor_params, anchor_key);
    let issuer = issuer_params
        .signed_by(&issuer_key, &anchor_issuer)
        .map_err(CaError::Generate)?;
    write(dir, ANCHORS_FILE, &anchor.pem(), false)?;
    write(
        dir,
        ANCHOR_KEY_FILE,
        &anchor_issuer.key().serialize_pem(),
        true,
    )?;
    write(dir, ISSUER_CERT_FILE, &issuer.pem(), false)?;
    write(dir, ISSUER_KEY_FILE, &issuer_key.serialize_pem(), true)?;
    tracing::warn!(dir = %dir.display(), "generated a development CA; use your own anchor in production");
    Ok(())
}

fn write(dir: &Path, name: &str, text: &str, secret: bool) -> Result<(), CaError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    if secret {
        opts.mode(0o600);
    }
    opts.open(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|source| CaError::Io { path, source })
}

/// The DER contents of every PEM block with `label`.
pub fn pem_blocks(pem: &str, label: &str) -> Vec<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    match label {
        "CERTIFICATE" => rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
            .filter_map(Result::ok)
            .map(|c| c.to_vec())
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_ca_signs_leaves_with_the_identity_and_keeps_keys_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca =
            Ca::load_or_generate(dir.path(), "cluster.local", Duration::from_secs(60)).unwrap();
        for key in [ISSUER_KEY_FILE, ANCHOR_KEY_FILE] {
            let mode = std::fs::metadata(dir.path().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        let key = KeyPair::generate().unwrap();
        // The CSR asks for a CA certificate and another name: the CA ignores both.
        let mut asked = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        asked.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = asked.serialize_request(&key).unwrap();
        let id = Identity::from_spiffe_id("spiffe://cluster.local/ns/shop/sa/cart").unwrap();
        let certified = ca.certify(&id, csr.der()).unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(&certified.leaf_der).unwrap();
        let sans: Vec<String> = leaf
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            sans,
            vec![
                "URI(spiffe://cluster.local/ns/shop/sa/cart)".to_string(),
                "DNSName(cart.shop.serviceaccount.identity.pillion.cluster.local)".to_string()
            ]
        );
        assert!(!leaf.is_ca());
        assert_eq!(
            leaf.public_key().raw,
            rcgen::PublicKeyData::subject_public_key_info(&key)
        );
        // A second start loads the same CA rather than generating another.
        let again =
            Ca::load_or_generate(dir.path(), "cluster.local", Duration::from_secs(60)).unwrap();
        assert_eq!(again.anchors_pem, ca.anchors_pem);
    }

    #[test]
    fn a_csr_with_a_bad_signature_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca =
            Ca::load_or_generate(dir.path(), "cluster.local", Duration::from_secs(60)).unwrap();
        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap();
        let mut der = csr.der().to_vec();
        let last = der.len() - 1;
        der[last] ^= 0xff;
        let id = Identity::from_spiffe_id("spiffe://cluster.local/ns/a/sa/b").unwrap();
        assert!(matches!(ca.certify(&id, &der), Err(CaError::Csr(_))));
    }
}
