//! The webhook's serving certificate, read from files and read again when they change
//! (cert-manager and the chart's Secret both rotate them in place). A pair that does not load
//! is reported and the one in use stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

const POLL: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Reloading {
    current: RwLock<Arc<CertifiedKey>>,
    cert: PathBuf,
    key: PathBuf,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// Loads a certificate chain and its key; the error names the file and the reason.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("{}: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))?;
    Ok(certified)
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Reloading {
    /// Loads the pair now (an error here stops the injector: it cannot serve without one),
    /// then watches the files.
    pub fn start(cert: PathBuf, key: PathBuf) -> Result<Arc<Reloading>, String> {
        let first = load(&cert, &key)?;
        let me = Arc::new(Reloading {
            current: RwLock::new(Arc::new(first)),
            cert,
            key,
        });
        tokio::spawn(me.clone().watch());
        Ok(me)
    }

    async fn watch(self: Arc<Self>) {
        let mut seen = (stamp(&self.cert), stamp(&self.key));
        loop {
            tokio::time::sleep(POLL).await;
            let now = (stamp(&self.cert), stamp(&self.key));
            if now == seen {
                continue;
            }
            seen = now;
            match load(&self.cert, &self.key) {
                Ok(pair) => {
                    *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(pair);
                    tracing::info!(cert = %self.cert.display(), "serving certificate reloaded");
                }
                // Often a rotation caught between the two files: the next change retries.
                Err(e) => {
                    tracing::warn!(error = %e, "serving certificate not reloaded; the previous one stays")
                }
            }
        }
    }

    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, String> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}
